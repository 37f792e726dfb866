"""`notify-server import`: copy Services, Bindings and Credential metadata from a Notify API.

The source is Twilio (https://notify.twilio.com) or another notify-server. Every SID, field and
date is kept, so a client that stored a SID keeps working once it points here. Each page is
written in its own transaction and upserted by SID: an import that stops half-way is simply
run again, and copies nothing twice. Each page's transaction also records where the next page
is (import_progress): run again, an interrupted import resumes there instead of asking the
source for everything again; a completed one forgets it, so the next run copies it all anew.
"""

import argparse
import email.utils
import getpass
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any, cast
from urllib.parse import urljoin

import httpx
import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    String,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column
from tqdm import tqdm

from notify_server.accounts import repository as accounts
from notify_server.accounts.operations import ensure_account, hash_secret
from notify_server.bindings.repository import (
    LOCK_ENDPOINT,
    LOCK_IDENTITY,
    WRITTEN_COLUMNS,
    binding_tags,
    bindings,
    digest,
    lock_key,
)
from notify_server.bindings.schemas import BINDING_TYPES
from notify_server.config import Settings
from notify_server.credentials.repository import credentials
from notify_server.crypto import SecretBox
from notify_server.db import Base, make_engine, transaction
from notify_server.services.repository import CREDENTIAL_COLUMNS, services
from notify_server.wire import is_sid, utcnow

PAGE_SIZE = 1000
MAX_RETRIES = 6
# The first retry waits about this long, doubling each time (0.5-1x jitter), up to MAX_DELAY.
# An environment knob, not a setting: only tests want it shorter.
RETRY_DELAY = float(os.environ.get("NOTIFY_IMPORT_RETRY_SECONDS", "1"))
MAX_DELAY = 60.0
# A Retry-After longer than this is cut short: we would rather retry (or fail) than hang.
MAX_RETRY_AFTER = 300.0
# Conflicts and invalid records listed one by one in the summary; the rest are counted.
LISTED = 20
# SQL IN lists stay well under every driver's parameter limit.
CHUNK = 500
DEFAULT_PROTOCOL_VERSION = "3"
FIXED_FORMAT_VERSION = "default"
# Bindings whose protocol version defaults to the Service's default_<type>_... field.
_SERVICE_DEFAULT_VERSION = {
    "apn": "default_apn_notification_protocol_version",
    "gcm": "default_gcm_notification_protocol_version",
    "fcm": "default_fcm_notification_protocol_version",
    "alexa": "default_alexa_notification_protocol_version",
}


RUN_AGAIN = "What was copied stays copied: run the same command again to finish"
TOKEN_VARIABLE = "NOTIFY_IMPORT_AUTH_TOKEN"


class ImportFailed(Exception):
    pass


class InvalidRecord(Exception):
    pass


# --- the source ----------------------------------------------------------------------------


class Source:
    """GETs against a Notify-compatible API, with retries on 429, 5xx and transport errors."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        progress: "Progress",
        *,
        retries: int = MAX_RETRIES,
        delay: float = RETRY_DELAY,
    ) -> None:
        self.base_url = base_url
        self._progress = progress
        self._retries = retries
        self._delay = delay
        self._client = httpx.Client(
            auth=(username, password),
            timeout=httpx.Timeout(60.0, connect=10.0),
            headers={"Accept": "application/json", "User-Agent": "notify-server-import"},
        )

    def close(self) -> None:
        self._client.close()

    def get(self, url: str, *, missing_ok: bool = False) -> dict | None:
        for attempt in range(self._retries + 1):
            wait: float | None = None
            try:
                response = self._client.get(url)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if status == 200:
                    return _json_object(response, url)
                if status in (401, 403):
                    raise ImportFailed(
                        f"the source rejected the credentials ({status} on GET {url}):"
                        " check --account-sid and --auth-token"
                    )
                if status == 404 and missing_ok:
                    return None
                if status != 429 and status < 500:
                    raise ImportFailed(
                        f"the source answered {status} to GET {url}: {_error_message(response)}"
                    )
                problem = f"HTTP {status}"
                wait = _retry_after(response)
            if attempt == self._retries:
                raise ImportFailed(
                    f"the source kept failing ({problem}) on GET {url}; gave up after"
                    f" {self._retries} retries. {RUN_AGAIN}"
                )
            if wait is None:
                wait = min(self._delay * 2**attempt, MAX_DELAY) * random.uniform(0.5, 1.0)
            self._progress.note(
                f"source: {problem} on GET {url}; retry {attempt + 1}/{self._retries}"
                f" in {wait:.1f} s"
            )
            time.sleep(wait)
        raise AssertionError("unreachable")

    def pages(self, url: str) -> Iterator[tuple[list[dict], str | None]]:
        """Each page's records and the next page's URL, following meta.next_page_url verbatim
        (as the SDKs do)."""
        next_url: str | None = url
        seen: set[str] = set()
        while next_url:
            if next_url in seen:
                raise ImportFailed(
                    f"GET {next_url}: the source's next_page_url leads back to a page already"
                    " read; it would never end"
                )
            seen.add(next_url)
            body = self.get(next_url)
            assert body is not None
            meta = body.get("meta")
            if not isinstance(meta, dict):
                raise ImportFailed(f"GET {next_url}: the answer is not a list page (no meta)")
            key = meta.get("key")
            records = body.get(key) if isinstance(key, str) else None
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ImportFailed(f"GET {next_url}: the answer has no list of records")
            following = meta.get("next_page_url")
            # Absolute from Twilio and notify-server; a relative one is taken from the source.
            next_url = urljoin(self.base_url + "/", following) if following else None
            yield records, next_url


def _json_object(response: httpx.Response, url: str) -> dict:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ImportFailed(f"GET {url}: the source did not answer JSON") from None
    if not isinstance(body, dict):
        raise ImportFailed(f"GET {url}: the source did not answer a JSON object")
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --- progress and the summary ----------------------------------------------------------------


class Progress:
    """A progress bar (tqdm) on a terminal, a line per page otherwise, nothing but the summary
    if quiet. The source says how many services there are, not how many records: the
    bindings bar counts services (percentage, rate, ETA), with the bindings copied beside."""

    def __init__(self, stream: IO[str], *, quiet: bool) -> None:
        self._stream = stream
        self._quiet = quiet
        self._tty = stream.isatty()
        self._bar: tqdm | None = None

    def start(self, what: str, total: int | None = None, unit: str = "record") -> None:
        self.done()
        if self._tty and not self._quiet:
            self._bar = tqdm(
                desc=what, total=total, unit=f" {unit}", file=self._stream, dynamic_ncols=True
            )

    def page(self, what: str, count: int, started: float) -> None:
        """`count` records of `what` copied so far in this phase."""
        if self._quiet:
            return
        rate = count / max(time.monotonic() - started, 1e-6)
        if self._bar is not None:
            if self._bar.total is None:
                self._bar.update(count - self._bar.n)
            else:
                self._bar.set_postfix_str(f"{what}: {count} copied, {rate:.0f}/s")
            return
        self._stream.write(f"{what}: {count} copied ({rate:.0f}/s)\n")
        self._stream.flush()

    def step(self) -> None:
        """One more of the bar's total done (a service's bindings)."""
        if self._bar is not None:
            self._bar.update(1)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def note(self, text: str) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
            return
        self._stream.write(text + "\n")
        self._stream.flush()


@dataclass
class Tally:
    new: int = 0
    updated: int = 0
    unchanged: int = 0

    def line(self, name: str) -> str:
        copied = self.new + self.updated + self.unchanged
        return (
            f"{name}: {copied} copied ({self.new} new, {self.updated} updated,"
            f" {self.unchanged} unchanged)"
        )


@dataclass
class Report:
    source_url: str
    local_account: str = ""
    account_note: str = ""
    services: Tally = field(default_factory=Tally)
    bindings: Tally = field(default_factory=Tally)
    credentials: Tally = field(default_factory=Tally)
    conflicts: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    # sid -> (type, friendly_name) of the copied credentials that hold no secrets here.
    needs_secrets: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # Where an earlier, interrupted run of this import had stopped, if this one resumed there.
    resumed_at: str | None = None

    def lines(self, local_url: str) -> list[str]:
        lines = [f"import from {self.source_url}"]
        if self.local_account:
            lines[0] += f" into local account {self.local_account}{self.account_note}"
        if self.resumed_at:
            lines.append(
                f"resumed at {self.resumed_at}, where an interrupted run stopped: what it"
                " copied is not counted below (--restart copies everything again)"
            )
        lines += [
            self.services.line("services"),
            self.bindings.line("bindings"),
            self.credentials.line("credentials"),
            f"conflicts skipped: {len(self.conflicts)}",
        ]
        lines += _listed(self.conflicts)
        if self.cleared:
            lines.append(f"credential references cleared: {len(self.cleared)}")
            lines += _listed(self.cleared)
        if self.invalid:
            lines.append(f"invalid records skipped: {len(self.invalid)}")
            lines += _listed(self.invalid)
        lines.append(f"credentials needing secrets: {len(self.needs_secrets)}")
        if self.needs_secrets:
            lines.append(
                "  secrets are write-only at the source: post each credential's secrets here again"
            )
        for sid, (kind, name) in self.needs_secrets.items():
            label = f' "{name}"' if name else ""
            lines.append(f"  {sid} ({kind}{label}):")
            lines += [f"    {command}" for command in _secret_commands(local_url, self, sid, kind)]
        return lines


def _listed(items: Sequence[str]) -> list[str]:
    lines = [f"  {item}" for item in items[:LISTED]]
    if len(items) > LISTED:
        lines.append(f"  ... and {len(items) - LISTED} more")
    return lines


def _secret_commands(local_url: str, report: Report, sid: str, kind: str) -> list[str]:
    curl = f'curl -X POST {local_url}/v1/Credentials/{sid} -u "{report.local_account}:$AUTH_TOKEN"'
    if kind == "apn":
        return [
            f"{curl} --data-urlencode Certificate@cert.pem --data-urlencode PrivateKey@key.pem",
            f"or token auth: {curl} --data-urlencode TokenKey@AuthKey.p8"
            " -d KeyId=... -d TeamId=... -d BundleId=...",
        ]
    # GCM bindings are delivered through FCM: both take a service account key.
    return [f"{curl} --data-urlencode ServiceAccount@service-account.json"]


# --- records from the wire -------------------------------------------------------------------


def parse_date(value: object) -> datetime:
    """Twilio's YYYY-MM-DDTHH:MM:SSZ (RFC 2822 and other ISO forms too), as naive UTC."""
    if not isinstance(value, str):
        raise InvalidRecord(f"date {value!r} is not a string")
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                raise InvalidRecord(f"date {value!r} is not a date") from None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # 9999-12-31T23:59:59-14:00 is past the last datetime in UTC
            raise InvalidRecord(f"date {value!r} is out of range") from None
    return parsed.replace(microsecond=0)


def _text(record: dict, key: str, limit: int, *, required: bool = False) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise InvalidRecord(f"{key} is missing")
        return None
    if not isinstance(value, str):
        raise InvalidRecord(f"{key} is not a string")
    if len(value) > limit:
        raise InvalidRecord(f"{key} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidRecord(f"{key} contains a NUL character")
    return value


def _sid(record: dict, prefix: str, key: str = "sid") -> str:
    value = record.get(key)
    if not isinstance(value, str) or not is_sid(value, prefix):
        raise InvalidRecord(f"{key} {value!r} is not a {prefix} SID")
    return value


def _optional_sid(record: dict, key: str, prefix: str) -> str | None:
    return None if record.get(key) is None else _sid(record, prefix, key)


def _bool(record: dict, key: str, default: bool) -> bool:
    value = record.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRecord(f"{key} {value!r} is not a boolean")


def _dates(record: dict) -> dict[str, datetime]:
    return {
        "date_created": parse_date(record.get("date_created")),
        "date_updated": parse_date(record.get("date_updated")),
    }


def credential_values(record: dict) -> dict:
    kind = _text(record, "type", 16, required=True)
    if kind not in ("apn", "gcm", "fcm"):
        raise InvalidRecord(f"type {kind!r} is not apn, gcm or fcm")
    sandbox = record.get("sandbox")
    # Twilio sends the strings "True"/"False" (APN only), null otherwise.
    if sandbox is not None:
        sandbox = _bool(record, "sandbox", False)
    return {
        "sid": _sid(record, "CR"),
        "type": kind,
        "friendly_name": _text(record, "friendly_name", 64),
        "sandbox": sandbox,
        **_dates(record),
    }


def service_values(record: dict) -> dict:
    values: dict[str, Any] = {
        "sid": _sid(record, "IS"),
        "friendly_name": _text(record, "friendly_name", 64),
        "messaging_service_sid": _text(record, "messaging_service_sid", 34),
        "facebook_messenger_page_id": _text(record, "facebook_messenger_page_id", 64),
        "alexa_skill_id": _text(record, "alexa_skill_id", 128),
        "log_enabled": _bool(record, "log_enabled", True),
        "delivery_callback_url": _text(record, "delivery_callback_url", 2048),
        "delivery_callback_enabled": _bool(record, "delivery_callback_enabled", False),
        **_dates(record),
    }
    for column in CREDENTIAL_COLUMNS:
        values[column] = _optional_sid(record, column, "CR")
    for column in _SERVICE_DEFAULT_VERSION.values():
        values[column] = _text(record, column, 64) or DEFAULT_PROTOCOL_VERSION
    return values


def binding_values(record: dict, service: dict) -> dict:
    binding_type = _text(record, "binding_type", 32, required=True)
    if binding_type not in BINDING_TYPES:
        raise InvalidRecord(
            f"binding_type {binding_type!r} is not one of {', '.join(BINDING_TYPES)}"
        )
    tags = record.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidRecord("tags is not a list of strings")
    if any(len(t) > 64 or not t or "\x00" in t for t in tags):
        raise InvalidRecord("a tag is empty, longer than 64 characters or holds a NUL")
    version = _text(record, "notification_protocol_version", 64)
    if version is None:
        default_column = _SERVICE_DEFAULT_VERSION.get(binding_type)
        version = service[default_column] if default_column else FIXED_FORMAT_VERSION
    identity = _text(record, "identity", 256, required=True)
    address = _text(record, "address", 1024, required=True)
    endpoint = _text(record, "endpoint", 1024)
    assert identity is not None and address is not None
    return {
        "sid": _sid(record, "BS"),
        "identity": identity,
        "binding_type": binding_type,
        "address": address,
        "address_key": digest(identity, binding_type, address),
        "endpoint": endpoint,
        "endpoint_key": digest(endpoint) if endpoint is not None else None,
        "credential_sid": _optional_sid(record, "credential_sid", "CR"),
        "notification_protocol_version": version,
        "tags": tags,
        **_dates(record),
    }


def _valid(
    records: Iterable[dict], build: Callable[[dict], dict], kind: str, report: Report
) -> list[dict]:
    kept = []
    sids: set[str] = set()
    for record in records:
        try:
            values = build(record)
            # Twice in one page: the second would fail the page's unique insert, and every
            # run again with it.
            if values["sid"] in sids:
                raise InvalidRecord("appears twice in the source's list")
        except InvalidRecord as exc:
            report.invalid.append(f"{kind} {record.get('sid')}: {exc}")
        else:
            sids.add(values["sid"])
            kept.append(values)
    return kept


# --- SQL -------------------------------------------------------------------------------------


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _rows_by_sid(conn: Connection, table: Table, sids: Sequence[str]) -> dict[str, Row]:
    found: dict[str, Row] = {}
    for chunk in _chunks(sids):
        for row in conn.execute(select(table).where(table.c.sid.in_(chunk))):
            found[row.sid] = row
    return found


def _credential_owners(conn: Connection, sids: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(sids))
    owners: dict[str, str] = {}
    for chunk in _chunks(wanted):
        query = select(credentials.c.sid, credentials.c.account_sid).where(
            credentials.c.sid.in_(chunk)
        )
        owners.update({row.sid: row.account_sid for row in conn.execute(query)})
    return owners


def _changed(row: Row, values: dict, columns: Iterable[str]) -> bool:
    return any(getattr(row, column) != values[column] for column in columns)


def write_credentials(
    conn: Connection, account_sid: str, records: list[dict], report: Report
) -> None:
    existing = _rows_by_sid(conn, credentials, [v["sid"] for v in records])
    columns = ("type", "friendly_name", "sandbox", "date_created", "date_updated")
    for values in records:
        row = existing.get(values["sid"])
        if row is None:
            # Secrets cannot be read back: the credential arrives without them.
            conn.execute(
                insert(credentials).values(
                    **values, account_sid=account_sid, encrypted_secrets=None
                )
            )
            report.credentials.new += 1
        elif row.account_sid != account_sid:
            report.conflicts.append(
                f"credential {values['sid']}: the SID belongs to another local account"
            )
            continue
        elif _changed(row, values, columns):
            conn.execute(
                update(credentials)
                .where(credentials.c.id == row.id)
                .values({c: values[c] for c in columns})
            )
            report.credentials.updated += 1
        else:
            report.credentials.unchanged += 1
        if row is None or row.encrypted_secrets is None:
            report.needs_secrets[values["sid"]] = (values["type"], values["friendly_name"])


def _foreign_credentials(
    conn: Connection,
    account_sid: str,
    values: dict,
    columns: Sequence[str],
    what: str,
    report: Report,
) -> None:
    """Clear a credential SID that names ANOTHER local account's credential, and say so.

    Delivery looks credentials up by SID alone: such a reference would send with secrets that
    are not this account's. A SID known nowhere here is kept, as the source has it.
    """
    owners = _credential_owners(conn, [values[c] for c in columns if values[c]])
    for column in columns:
        owner = owners.get(values[column])
        if owner is not None and owner != account_sid:
            report.cleared.append(
                f"{what}: {column} {values[column]} is another local account's credential"
            )
            values[column] = None


def write_services(
    conn: Connection, account_sid: str, records: list[dict], report: Report
) -> dict[str, dict]:
    """Upsert the services; returns the copied ones (with their local id), by SID."""
    existing = _rows_by_sid(conn, services, [v["sid"] for v in records])
    columns = [c for c in records[0] if c != "sid"] if records else []
    copied: dict[str, dict] = {}
    for values in records:
        sid = values["sid"]
        row = existing.get(sid)
        if row is not None and row.account_sid != account_sid:
            report.conflicts.append(
                f"service {sid}: the SID belongs to another local account: it and its bindings"
                " were skipped"
            )
            continue
        _foreign_credentials(
            conn, account_sid, values, CREDENTIAL_COLUMNS, f"service {sid}", report
        )
        if row is None:
            conn.execute(insert(services).values(**values, account_sid=account_sid))
            report.services.new += 1
        elif _changed(row, values, columns):
            conn.execute(
                update(services)
                .where(services.c.id == row.id)
                .values({c: values[c] for c in columns})
            )
            report.services.updated += 1
        else:
            report.services.unchanged += 1
        copied[sid] = values
    ids = _rows_by_sid(conn, services, list(copied))
    for sid, values in copied.items():
        values["id"] = ids[sid].id
    return copied


_BINDING_COLUMNS = (*WRITTEN_COLUMNS, "date_created")
_UPDATE_BINDING = (
    update(bindings)
    .where(bindings.c.id == bindparam("binding_id"))
    .values({c: bindparam(c) for c in _BINDING_COLUMNS})
)
_DELETE_TAGS = delete(binding_tags).where(
    binding_tags.c.binding_id.in_(bindparam("ids", expanding=True))
)


_LOCK_ALL = text(
    "SELECT pg_advisory_xact_lock(:namespace, key) FROM unnest(CAST(:keys AS integer[])) AS key"
)


def lock_all(
    conn: Connection, namespace: int, service_sid: str, values: Iterable[str | None]
) -> None:
    """bindings.repository.lock_registration for many values in one round trip; in key order, so two
    imports never wait on each other crosswise. SQLite needs none (BEGIN IMMEDIATE)."""
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({lock_key(service_sid, v) for v in values if v is not None})
    if keys:
        conn.execute(_LOCK_ALL, {"namespace": namespace, "keys": keys})


def _holders(conn: Connection, service_id: int, column: str, keys: Sequence[str]) -> dict[str, str]:
    """Which binding of the service holds each unique key (address_key or endpoint_key)."""
    held: dict[str, str] = {}
    for chunk in _chunks(sorted(set(keys))):
        query = select(bindings.c[column], bindings.c.sid).where(
            bindings.c.service_id == service_id, bindings.c[column].in_(chunk)
        )
        held.update({row[0]: row.sid for row in conn.execute(query)})
    return held


def write_bindings(
    conn: Connection, account_sid: str, service: dict, records: list[dict], report: Report
) -> None:
    """Upsert one page of a service's bindings, keeping the schema's uniqueness rules.

    A binding whose identity+type+address (or endpoint) is held here by ANOTHER binding of the
    service (say one registered after the switch) is a conflict: skipped, reported.
    """
    service_id = service["id"]
    # The API's locks, so a registration arriving meanwhile cannot slip in between the checks
    # below and the writes; and its order (endpoints, then identities): no deadlock.
    lock_all(conn, LOCK_ENDPOINT, service["sid"], [v["endpoint_key"] for v in records])
    lock_all(conn, LOCK_IDENTITY, service["sid"], [v["identity"] for v in records])
    existing = _rows_by_sid(conn, bindings, [v["sid"] for v in records])
    by_address = _holders(conn, service_id, "address_key", [v["address_key"] for v in records])
    by_endpoint = _holders(
        conn, service_id, "endpoint_key", [v["endpoint_key"] for v in records if v["endpoint_key"]]
    )
    _foreign_binding_credentials(conn, account_sid, records, report)
    inserts: list[dict] = []
    updates: list[dict] = []
    for values in records:
        sid = values["sid"]
        row = existing.get(sid)
        if row is not None and row.account_sid != account_sid:
            report.conflicts.append(f"binding {sid}: the SID belongs to another local account")
            continue
        if row is not None and row.service_id != service_id:
            report.conflicts.append(f"binding {sid}: the SID belongs to another local service")
            continue
        holder = by_address.get(values["address_key"])
        if holder is not None and holder != sid:
            report.conflicts.append(
                f"binding {sid}: binding {holder} here has the same identity, binding type and"
                " address"
            )
            continue
        holder = by_endpoint.get(values["endpoint_key"]) if values["endpoint_key"] else None
        if holder is not None and holder != sid:
            report.conflicts.append(f"binding {sid}: binding {holder} here has the same endpoint")
            continue
        params = {**values, "tags": orjson.dumps(values["tags"]).decode()}
        if row is None:
            inserts.append({**params, "account_sid": account_sid, "service_id": service_id})
            report.bindings.new += 1
        else:
            if by_address.get(row.address_key) == sid:
                del by_address[row.address_key]
            if row.endpoint_key and by_endpoint.get(row.endpoint_key) == sid:
                del by_endpoint[row.endpoint_key]
            if _changed(row, params, _BINDING_COLUMNS):
                updates.append({**params, "binding_id": row.id})
                report.bindings.updated += 1
            else:
                report.bindings.unchanged += 1
        by_address[values["address_key"]] = sid
        if values["endpoint_key"]:
            by_endpoint[values["endpoint_key"]] = sid

    # Updates first: one may free the key an insert of this page takes.
    if updates:
        conn.execute(
            _UPDATE_BINDING, [{k: u[k] for k in (*_BINDING_COLUMNS, "binding_id")} for u in updates]
        )
        for chunk in _chunks([u["binding_id"] for u in updates]):
            conn.execute(_DELETE_TAGS, {"ids": list(chunk)})
    if inserts:
        # In the source's order: local ids, hence list order, follow it.
        conn.execute(
            insert(bindings),
            [
                {k: i[k] for k in ("sid", "account_sid", "service_id", *_BINDING_COLUMNS)}
                for i in inserts
            ],
        )
    written = [*updates, *inserts]
    if written:
        ids = {
            row.sid: row.id
            for chunk in _chunks([w["sid"] for w in inserts])
            for row in conn.execute(
                select(bindings.c.sid, bindings.c.id).where(bindings.c.sid.in_(chunk))
            )
        }
        tag_rows = [
            {
                "binding_id": w.get("binding_id") or ids[w["sid"]],
                "service_id": service_id,
                "tag": tag,
            }
            for w in written
            for tag in dict.fromkeys(orjson.loads(w["tags"]))
        ]
        if tag_rows:
            conn.execute(insert(binding_tags), tag_rows)


def _foreign_binding_credentials(
    conn: Connection, account_sid: str, records: list[dict], report: Report
) -> None:
    owners = _credential_owners(conn, [v["credential_sid"] for v in records if v["credential_sid"]])
    if all(owner == account_sid for owner in owners.values()):
        return
    for values in records:
        _foreign_credentials(
            conn, account_sid, values, ("credential_sid",), f"binding {values['sid']}", report
        )


# --- where an interrupted import stopped -----------------------------------------------------


class ImportProgress(Base):
    __tablename__ = "import_progress"

    # Import.key: the same source, source account, local account and --service list.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # JSON {"done": [stream, ...], "next": {stream: next page URL}}; streams are
    # "credentials" and "bindings IS..."; URLs relative to the source's base URL.
    state: Mapped[str] = mapped_column(Text)
    date_updated: Mapped[datetime]


import_progress = cast(Table, ImportProgress.__table__)


class Resume:
    """This import's progress: loaded at the start, saved in each page's own transaction (so
    it never disagrees with what was written), forgotten when the import completes."""

    def __init__(self, key: str, base_url: str, state: dict | None) -> None:
        self.key = key
        self._base_url = base_url
        state = state or {}
        self._done: list[str] = list(state.get("done", []))
        self._next: dict[str, str] = dict(state.get("next", {}))
        self.resuming = bool(self._done or self._next)

    @classmethod
    def load(cls, engine: Engine, key: str, base_url: str, *, restart: bool) -> "Resume":
        with transaction(engine, write=False) as conn:
            row = conn.execute(
                select(import_progress.c.state).where(import_progress.c.key == key)
            ).scalar_one_or_none()
        return cls(key, base_url, None if restart or row is None else orjson.loads(row))

    def done(self, stream: str) -> bool:
        return stream in self._done

    def first_url(self, stream: str, url: str) -> str:
        """Where `stream` starts: its saved next page, else `url`."""
        saved = self._next.get(stream)
        return self._base_url + saved if saved else url

    def where(self) -> str:
        """Where an earlier run stopped, for the summary."""
        return next(iter(self._next), None) or f"the stream after {self._done[-1]}"

    def save(self, conn: Connection, stream: str, next_url: str | None) -> None:
        if next_url is None:
            self._next.pop(stream, None)
            self._done.append(stream)
        else:
            self._next[stream] = next_url.removeprefix(self._base_url)
        state = orjson.dumps({"done": self._done, "next": self._next}).decode()
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        upsert = insert(import_progress).values(key=self.key, state=state, date_updated=utcnow())
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[import_progress.c.key],
                set_={"state": upsert.excluded.state, "date_updated": upsert.excluded.date_updated},
            )
        )

    def forget(self, engine: Engine) -> None:
        with transaction(engine, write=True) as conn:
            conn.execute(delete(import_progress).where(import_progress.c.key == self.key))


def import_key(
    source_url: str, source_account: str, local_account: str, services: list[str]
) -> str:
    what = [source_url, source_account, local_account, *sorted(set(services))]
    return hashlib.sha256("\n".join(what).encode()).hexdigest()


# --- the command -----------------------------------------------------------------------------


def run_import(args: argparse.Namespace, settings: Settings, box: SecretBox) -> int:
    stderr = sys.stderr
    progress = Progress(stderr, quiet=args.quiet)
    source_url = args.source_url.rstrip("/").removesuffix("/v1")
    report = Report(source_url)
    local_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")

    problem = _usage_problem(args)
    if problem:
        print(f"notify-server import: {problem}", file=stderr)
        return 2
    if args.auth_token:
        print(
            "notify-server import: --auth-token is deprecated (`ps` and shell history show it):"
            f" set {TOKEN_VARIABLE} instead",
            file=stderr,
        )
    token = _auth_token(args)
    if token is None:
        print(
            f"notify-server import: no auth token for {args.account_sid}: set {TOKEN_VARIABLE}"
            " (or run on a terminal, to be asked for it)",
            file=stderr,
        )
        return 2
    args.auth_token = token
    engine = make_engine(settings.database_url)
    source = Source(source_url, args.account_sid, token, progress)
    failure, code = None, 0
    try:
        _copy(args, source, engine, box, progress, report)
    except ImportFailed as exc:
        failure, code = str(exc), 1
    except SQLAlchemyError as exc:
        detail = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()
        failure, code = f"the local database failed: {detail}. {RUN_AGAIN}", 1
    except KeyboardInterrupt:
        failure, code = f"interrupted. {RUN_AGAIN}", 130
    finally:
        source.close()
        engine.dispose()
    progress.done()
    print("\n".join(report.lines(local_url)), flush=True)
    if failure:
        print(f"notify-server import: {failure}", file=stderr)
    return code


def _auth_token(args: argparse.Namespace) -> str | None:
    """The source's token: --auth-token (deprecated: `ps` and shell history show it), else
    NOTIFY_IMPORT_AUTH_TOKEN, else asked for on a terminal without echo."""
    if args.auth_token:
        return str(args.auth_token)
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if token:
        return token
    if not sys.stdin.isatty():
        return None
    try:
        token = getpass.getpass(f"auth token of {args.account_sid} at {args.source_url}: ")
    except EOFError:
        return None
    return token.strip() or None


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not (is_sid(args.account_sid, "AC") or is_sid(args.account_sid, "SK")):
        return (
            "--account-sid must be an account SID (AC...) or an API key SID (SK...):"
            f" {args.account_sid!r}"
        )
    if args.account_sid.startswith("SK") and not args.local_account:
        return "with an API key as --account-sid, name the local account with --local-account"
    if args.local_account and not is_sid(args.local_account, "AC"):
        return f"--local-account must be an account SID (AC...): {args.local_account!r}"
    for sid in args.service or ():
        if not is_sid(sid, "IS"):
            return f"--service must be a service SID (IS...): {sid!r}"
    if not args.source_url.startswith(("http://", "https://")):
        return f"--from must be an http(s) URL: {args.source_url!r}"
    return None


def _copy(
    args: argparse.Namespace,
    source: Source,
    engine: Engine,
    box: SecretBox,
    progress: Progress,
    report: Report,
) -> None:
    # Read the services first: a wrong token or an unknown --service fails before any write.
    service_records = _source_services(source, args.service)
    report.local_account = _local_account(args, engine, box, report)
    account_sid = report.local_account
    key = import_key(source.base_url, args.account_sid, account_sid, args.service or [])
    resume = Resume.load(engine, key, source.base_url, restart=args.restart)
    if resume.resuming:
        report.resumed_at = resume.where()

    if not resume.done("credentials"):
        started, count = time.monotonic(), 0
        progress.start("credentials", unit="credential")
        url = resume.first_url(
            "credentials", f"{source.base_url}/v1/Credentials?PageSize={PAGE_SIZE}"
        )
        for page, next_url in source.pages(url):
            records = _valid(page, credential_values, "credential", report)
            with transaction(engine, write=True) as conn:
                write_credentials(conn, account_sid, records, report)
                resume.save(conn, "credentials", next_url)
            count += len(records)
            progress.page("credentials", count, started)
        progress.done()

    started = time.monotonic()
    records = _valid(service_records, service_values, "service", report)
    with transaction(engine, write=True) as conn:
        copied = write_services(conn, account_sid, records, report)
    progress.start("services", total=len(records), unit="service")
    progress.page("services", len(copied), started)
    for _ in records:
        progress.step()
    progress.done()

    progress.start("bindings", total=len(copied), unit="service")
    for sid, service in copied.items():
        stream = f"bindings {sid}"
        if resume.done(stream):
            progress.step()
            continue
        started, count = time.monotonic(), 0
        url = f"{source.base_url}/v1/Services/{sid}/Bindings?PageSize={PAGE_SIZE}"
        for page, next_url in source.pages(resume.first_url(stream, url)):
            records = _valid(page, partial(binding_values, service=service), "binding", report)
            with transaction(engine, write=True) as conn:
                write_bindings(conn, account_sid, service, records, report)
                resume.save(conn, stream, next_url)
            count += len(records)
            progress.page(stream, count, started)
        progress.step()
    progress.done()
    resume.forget(engine)


def _source_services(source: Source, wanted: list[str] | None) -> list[dict]:
    if not wanted:
        return [
            record
            for page, _ in source.pages(f"{source.base_url}/v1/Services?PageSize={PAGE_SIZE}")
            for record in page
        ]
    found = []
    for sid in dict.fromkeys(wanted):
        record = source.get(f"{source.base_url}/v1/Services/{sid}", missing_ok=True)
        if record is None:
            raise ImportFailed(f"service {sid} was not found at the source")
        found.append(record)
    return found


def _local_account(args: argparse.Namespace, engine: Engine, box: SecretBox, report: Report) -> str:
    if args.local_account:
        with transaction(engine, write=False) as conn:
            exists = accounts.account_exists(conn, args.local_account)
        if not exists:
            raise ImportFailed(
                f"no local account {args.local_account} (create one with"
                " `notify-server accounts create`, or leave out --local-account)"
            )
        return str(args.local_account)
    # The source's own account SID and token: the same credentials work here after the switch.
    with transaction(engine, write=True) as conn:
        current = accounts.account_token_hash(conn, args.account_sid)
        ensure_account(conn, box, args.account_sid, args.auth_token)
    if current is None:
        report.account_note = " (created, with the source's auth token)"
    elif current != hash_secret(args.auth_token):
        report.account_note = " (its auth token is now the source's)"
    return str(args.account_sid)
