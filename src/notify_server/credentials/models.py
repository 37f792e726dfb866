from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from notify_server.db import Base, RowId


class Credential(Base):
    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    account_sid: Mapped[str] = mapped_column(
        String(34), ForeignKey("accounts.sid", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(16))
    friendly_name: Mapped[str | None] = mapped_column(String(64))
    sandbox: Mapped[bool | None]
    # Certificate, PrivateKey, ApiKey and Secret as one Fernet token; never returned.
    encrypted_secrets: Mapped[str | None] = mapped_column(Text)
    date_created: Mapped[datetime]
    date_updated: Mapped[datetime]
