"""Many bindings at once, straight into the tables: one INSERT ... SELECT over a generated
series (1,000,000 in seconds; through the API that would take an hour). For fan-out tests and
bench/expansion_bench.py."""

import uuid

from sqlalchemy import Engine, text

from notify_server.wire import utcnow

_COLUMNS = (
    "sid, account_sid, service_id, identity, binding_type, address, address_key, endpoint,"
    " endpoint_key, credential_sid, notification_protocol_version, tags, date_created,"
    " date_updated"
)
# Per binding number i: sid BS + run prefix + i in hex, identity user-i, address token-i.
_SQLITE = f"""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO bindings ({_COLUMNS})
SELECT 'BS' || :prefix || printf('%024x', i), :account_sid, :service_id, 'user-' || i,
       :binding_type, 'token-' || :prefix || '-' || i, :prefix || '-' || i, NULL, NULL, NULL,
       '3', :tags, :now, :now
FROM n
"""
_POSTGRESQL = f"""
INSERT INTO bindings ({_COLUMNS})
SELECT 'BS' || :prefix || lpad(to_hex(i), 24, '0'), :account_sid, :service_id, 'user-' || i,
       :binding_type, 'token-' || :prefix || '-' || i, :prefix || '-' || i, NULL, NULL, NULL,
       '3', :tags, :now, :now
FROM generate_series(1, :count) AS i
"""
_TAG = """
INSERT INTO binding_tags (binding_id, tag, service_id)
SELECT id, :tag, service_id FROM bindings WHERE service_id = :service_id AND id > :after
"""


def service_id(engine: Engine, service_sid: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT id FROM services WHERE sid = :sid"), {"sid": service_sid}
        ).scalar_one()


def insert_bindings(
    engine: Engine,
    account_sid: str,
    service_sid: str,
    count: int,
    *,
    binding_type: str = "apn",
    tag: str | None = None,
) -> None:
    """`count` bindings of the service, identities user-1 ... user-count, each tagged `tag`."""
    sql = _SQLITE if engine.dialect.name == "sqlite" else _POSTGRESQL
    now = utcnow()
    params = {
        "prefix": uuid.uuid4().hex[:8],
        "account_sid": account_sid,
        "service_id": service_id(engine, service_sid),
        "binding_type": binding_type,
        "tags": f'["{tag}"]' if tag else "[]",
        # As SQLAlchemy writes a DateTime in SQLite.
        "now": now.isoformat(" ", "microseconds") if engine.dialect.name == "sqlite" else now,
        "count": count,
    }
    with engine.begin() as conn:
        after = conn.execute(text("SELECT coalesce(max(id), 0) FROM bindings")).scalar_one()
        conn.execute(text(sql), params)
        if tag:
            conn.execute(
                text(_TAG), {"tag": tag, "service_id": params["service_id"], "after": after}
            )
