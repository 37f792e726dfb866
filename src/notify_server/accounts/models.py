from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from notify_server.db import Base, RowId


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    friendly_name: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of a random 128-bit token: a slow password hash buys nothing here.
    auth_token_hash: Mapped[str] = mapped_column(String(64))
    # The token itself, encrypted: delivery callbacks are signed with it, as Twilio signs.
    auth_token_sealed: Mapped[str | None] = mapped_column(Text)
    # Where the account's next notification starts in the fair delivery queue.
    fair_clock: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    date_created: Mapped[datetime]
    date_updated: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    account_sid: Mapped[str] = mapped_column(
        String(34), ForeignKey("accounts.sid", ondelete="CASCADE"), index=True
    )
    friendly_name: Mapped[str | None] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    date_created: Mapped[datetime]
