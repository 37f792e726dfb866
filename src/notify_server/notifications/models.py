from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from notify_server.db import Base, RowId


class Notification(Base):
    __tablename__ = "notifications"
    # A service's notifications newest first (our listing), and the rows ON DELETE CASCADE
    # of a service finds.
    __table_args__ = (Index("ix_notifications_service_id_id", "service_id", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    account_sid: Mapped[str] = mapped_column(String(34))
    service_id: Mapped[int] = mapped_column(RowId, ForeignKey("services.id", ondelete="CASCADE"))
    # The 201 body's fields (identities, tags, title, data, apn, ...) as JSON: what the
    # channels render from and what the API echoes.
    content: Mapped[str] = mapped_column(Text)
    delivery_callback_url: Mapped[str | None] = mapped_column(String(2048))
    # Delivery callbacks: the next SequenceId, and a lease so one worker reports at a time.
    callback_sequence: Mapped[int] = mapped_column(default=0)
    callback_locked_until: Mapped[datetime | None]
    date_created: Mapped[datetime]


# Literal SQL, not bound parameters: only then can either database match a query to a
# partial index.
FRESH = text("status = 'pending' AND attempts = 0")
RETRY = text("status = 'pending' AND attempts > 0")
LEASED = text("status = 'sending'")


class Delivery(Base):
    """The outbox: one row per target. A small notification's rows are written in the
    request's transaction; a large one's by the workers, chunk by chunk (Expansion)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_notification_id_id", "notification_id", "id"),
        # The Deliveries listing's Status and BindingType filters, and a notification's
        # delivery summary (counts per status, from the index alone).
        Index("ix_deliveries_notification_id_status_id", "notification_id", "status", "id"),
        Index(
            "ix_deliveries_notification_id_binding_type_id",
            "notification_id",
            "binding_type",
            "id",
        ),
        # One row per binding and notification: the backstop of chunked expansion. Binding
        # first, so it also serves the lookups of ON DELETE SET NULL.
        Index(
            "uq_deliveries_binding_id_notification_id",
            "binding_id",
            "notification_id",
            unique=True,
        ),
        # Delivery callbacks look for final rows not yet reported. Rows of a notification
        # without a callback URL are born reported, so they never show up here.
        Index("ix_deliveries_reported_status", "reported", "status", "notification_id"),
        # Workers claim first attempts in fair order (see delivery/repository.py), retries
        # when due, and sending rows whose lease ran out. One partial index each, so no scan
        # passes over another's rows, and none that SQLite's planner, which keeps no
        # statistics, could take instead of the right one.
        Index(
            "ix_deliveries_fresh",
            "fair_key",
            "id",
            "next_attempt_at",
            sqlite_where=FRESH,
            postgresql_where=FRESH,
        ),
        Index(
            "ix_deliveries_retry",
            "next_attempt_at",
            sqlite_where=RETRY,
            postgresql_where=RETRY,
        ),
        Index(
            "ix_deliveries_sending",
            "next_attempt_at",
            sqlite_where=LEASED,
            postgresql_where=LEASED,
        ),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("notifications.id", ondelete="CASCADE")
    )
    service_id: Mapped[int] = mapped_column(RowId, ForeignKey("services.id", ondelete="CASCADE"))
    # Null for a ToBinding target, or once the binding is deleted.
    binding_id: Mapped[int | None] = mapped_column(
        RowId, ForeignKey("bindings.id", ondelete="SET NULL")
    )
    binding_sid: Mapped[str | None] = mapped_column(String(34))
    identity: Mapped[str | None] = mapped_column(String(256))
    binding_type: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(1024))
    credential_sid: Mapped[str | None] = mapped_column(String(34))
    # pending -> sending -> sent | failed
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    # When a pending row is due, or when a sending row's lease runs out.
    next_attempt_at: Mapped[datetime]
    # The row's place in its account's share of the delivery queue (virtual time).
    fair_key: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    expires_at: Mapped[datetime]
    provider_message_id: Mapped[str | None] = mapped_column(String(256))
    provider_status: Mapped[int | None]
    provider_response: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    # Whether a delivery callback has reported this row's final state; or why it never will.
    reported: Mapped[bool] = mapped_column(default=False)
    callback_error: Mapped[str | None] = mapped_column(Text)
    date_created: Mapped[datetime]
    date_updated: Mapped[datetime]


class Expansion(Base):
    """A query notification whose targets are still being written to the outbox.

    The request writes the first chunk itself; when more match, it leaves this record and
    the workers write the rest, one chunk of bindings per transaction, in binding id order.
    Gone once the last chunk is written.
    """

    __tablename__ = "expansions"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("notifications.id", ondelete="CASCADE"), unique=True
    )
    account_sid: Mapped[str] = mapped_column(String(34))
    service_id: Mapped[int] = mapped_column(RowId, ForeignKey("services.id", ondelete="CASCADE"))
    # What to match, as JSON lists of strings.
    identities: Mapped[str] = mapped_column(Text)
    tags: Mapped[str] = mapped_column(Text)
    binding_types: Mapped[str] = mapped_column(Text)
    # Bindings after `after_binding_id` up to `last_binding_id` (the newest binding when the
    # notification was created) are still to be written.
    after_binding_id: Mapped[int] = mapped_column(BigInteger)
    last_binding_id: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime]
    reported: Mapped[bool]
    # Workers take the expansion least recently advanced, so several share the workers.
    advanced_at: Mapped[datetime]
