from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from notify_server.db import Base, RowId


class Service(Base):
    __tablename__ = "services"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    account_sid: Mapped[str] = mapped_column(
        String(34), ForeignKey("accounts.sid", ondelete="CASCADE"), index=True
    )
    friendly_name: Mapped[str | None] = mapped_column(String(64))
    apn_credential_sid: Mapped[str | None] = mapped_column(String(34))
    gcm_credential_sid: Mapped[str | None] = mapped_column(String(34))
    fcm_credential_sid: Mapped[str | None] = mapped_column(String(34))
    messaging_service_sid: Mapped[str | None] = mapped_column(String(34))
    facebook_messenger_page_id: Mapped[str | None] = mapped_column(String(64))
    alexa_skill_id: Mapped[str | None] = mapped_column(String(128))
    default_apn_notification_protocol_version: Mapped[str] = mapped_column(String(64))
    default_gcm_notification_protocol_version: Mapped[str] = mapped_column(String(64))
    default_fcm_notification_protocol_version: Mapped[str] = mapped_column(String(64))
    default_alexa_notification_protocol_version: Mapped[str] = mapped_column(String(64))
    log_enabled: Mapped[bool]
    delivery_callback_url: Mapped[str | None] = mapped_column(String(2048))
    delivery_callback_enabled: Mapped[bool]
    date_created: Mapped[datetime]
    date_updated: Mapped[datetime]
