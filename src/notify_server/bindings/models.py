from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from notify_server.db import Base, RowId


class Binding(Base):
    __tablename__ = "bindings"
    __table_args__ = (
        # Keys are SHA-256 digests: an index over 1024-character addresses would break
        # PostgreSQL's B-tree row limit.
        UniqueConstraint("service_id", "address_key"),
        # Partial: most bindings have no Endpoint, and a NULL entry would still cost a write.
        Index(
            "uq_bindings_service_id_endpoint_key",
            "service_id",
            "endpoint_key",
            unique=True,
            sqlite_where=text("endpoint_key IS NOT NULL"),
            postgresql_where=text("endpoint_key IS NOT NULL"),
        ),
        Index("ix_bindings_service_id_identity", "service_id", "identity"),
        # Keyset paging walks a service's bindings in id order.
        Index("ix_bindings_service_id_id", "service_id", "id"),
        # The same walk filtered by type (Tag=fcm; the console's type filter): at 1,000,000
        # bindings a rare type took 130-220 ms through ix_bindings_service_id_id, ~2 ms here.
        Index("ix_bindings_service_id_binding_type_id", "service_id", "binding_type", "id"),
    )

    # The integer id orders lists and carries the keyset PageToken.
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    account_sid: Mapped[str] = mapped_column(String(34))
    service_id: Mapped[int] = mapped_column(RowId, ForeignKey("services.id", ondelete="CASCADE"))
    identity: Mapped[str] = mapped_column(String(256))
    binding_type: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(1024))
    address_key: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(1024))
    endpoint_key: Mapped[str | None] = mapped_column(String(64))
    credential_sid: Mapped[str | None] = mapped_column(String(34))
    notification_protocol_version: Mapped[str] = mapped_column(String(64))
    # The tags in the order given, as JSON; binding_tags indexes them for filters.
    tags: Mapped[str] = mapped_column(Text)
    date_created: Mapped[datetime]
    date_updated: Mapped[datetime]


class BindingTag(Base):
    __tablename__ = "binding_tags"
    __table_args__ = (Index("ix_binding_tags_service_id_tag", "service_id", "tag", "binding_id"),)

    binding_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("bindings.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[int] = mapped_column(RowId, ForeignKey("services.id", ondelete="CASCADE"))
