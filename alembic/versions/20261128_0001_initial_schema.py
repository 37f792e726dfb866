"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 18:16:16.190285
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("friendly_name", sa.String(length=64), nullable=True),
        sa.Column("auth_token_hash", sa.String(length=64), nullable=False),
        sa.Column("auth_token_sealed", sa.Text(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("sid", name=op.f("uq_accounts_sid")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column("friendly_name", sa.String(length=64), nullable=True),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_sid"],
            ["accounts.sid"],
            name=op.f("fk_api_keys_account_sid_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("sid", name=op.f("uq_api_keys_sid")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_account_sid"), ["account_sid"], unique=False)

    op.create_table(
        "credentials",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("friendly_name", sa.String(length=64), nullable=True),
        sa.Column("sandbox", sa.Boolean(), nullable=True),
        sa.Column("encrypted_secrets", sa.Text(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_sid"],
            ["accounts.sid"],
            name=op.f("fk_credentials_account_sid_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
        sa.UniqueConstraint("sid", name=op.f("uq_credentials_sid")),
    )
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credentials_account_sid"), ["account_sid"], unique=False
        )

    op.create_table(
        "services",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column("friendly_name", sa.String(length=64), nullable=True),
        sa.Column("apn_credential_sid", sa.String(length=34), nullable=True),
        sa.Column("gcm_credential_sid", sa.String(length=34), nullable=True),
        sa.Column("fcm_credential_sid", sa.String(length=34), nullable=True),
        sa.Column("messaging_service_sid", sa.String(length=34), nullable=True),
        sa.Column("facebook_messenger_page_id", sa.String(length=64), nullable=True),
        sa.Column("alexa_skill_id", sa.String(length=128), nullable=True),
        sa.Column(
            "default_apn_notification_protocol_version", sa.String(length=64), nullable=False
        ),
        sa.Column(
            "default_gcm_notification_protocol_version", sa.String(length=64), nullable=False
        ),
        sa.Column(
            "default_fcm_notification_protocol_version", sa.String(length=64), nullable=False
        ),
        sa.Column(
            "default_alexa_notification_protocol_version", sa.String(length=64), nullable=False
        ),
        sa.Column("log_enabled", sa.Boolean(), nullable=False),
        sa.Column("delivery_callback_url", sa.String(length=2048), nullable=True),
        sa.Column("delivery_callback_enabled", sa.Boolean(), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_sid"],
            ["accounts.sid"],
            name=op.f("fk_services_account_sid_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("sid", name=op.f("uq_services_sid")),
    )
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_services_account_sid"), ["account_sid"], unique=False)

    op.create_table(
        "bindings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column(
            "service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("binding_type", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=1024), nullable=False),
        sa.Column("address_key", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=1024), nullable=True),
        sa.Column("endpoint_key", sa.String(length=64), nullable=True),
        sa.Column("credential_sid", sa.String(length=34), nullable=True),
        sa.Column("notification_protocol_version", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_bindings_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bindings")),
        sa.UniqueConstraint(
            "service_id", "address_key", name=op.f("uq_bindings_service_id_address_key")
        ),
        sa.UniqueConstraint("sid", name=op.f("uq_bindings_sid")),
    )
    with op.batch_alter_table("bindings", schema=None) as batch_op:
        batch_op.create_index("ix_bindings_service_id_id", ["service_id", "id"], unique=False)
        batch_op.create_index(
            "ix_bindings_service_id_identity", ["service_id", "identity"], unique=False
        )
        batch_op.create_index(
            "uq_bindings_service_id_endpoint_key",
            ["service_id", "endpoint_key"],
            unique=True,
            sqlite_where=sa.text("endpoint_key IS NOT NULL"),
            postgresql_where=sa.text("endpoint_key IS NOT NULL"),
        )

    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column(
            "service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("delivery_callback_url", sa.String(length=2048), nullable=True),
        sa.Column("callback_sequence", sa.Integer(), nullable=False),
        sa.Column("callback_locked_until", sa.DateTime(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_notifications_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("sid", name=op.f("uq_notifications_sid")),
    )
    op.create_table(
        "binding_tags",
        sa.Column(
            "binding_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column(
            "service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["binding_id"],
            ["bindings.id"],
            name=op.f("fk_binding_tags_binding_id_bindings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_binding_tags_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("binding_id", "tag", name=op.f("pk_binding_tags")),
    )
    with op.batch_alter_table("binding_tags", schema=None) as batch_op:
        batch_op.create_index(
            "ix_binding_tags_service_id_tag", ["service_id", "tag", "binding_id"], unique=False
        )

    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "notification_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "binding_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("binding_sid", sa.String(length=34), nullable=True),
        sa.Column("identity", sa.String(length=256), nullable=True),
        sa.Column("binding_type", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=1024), nullable=False),
        sa.Column("credential_sid", sa.String(length=34), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("provider_message_id", sa.String(length=256), nullable=True),
        sa.Column("provider_status", sa.Integer(), nullable=True),
        sa.Column("provider_response", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("reported", sa.Boolean(), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["binding_id"],
            ["bindings.id"],
            name=op.f("fk_deliveries_binding_id_bindings"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_deliveries_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_deliveries_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deliveries_binding_id"), ["binding_id"], unique=False)
        batch_op.create_index(
            "ix_deliveries_notification_id_id", ["notification_id", "id"], unique=False
        )
        batch_op.create_index(
            "ix_deliveries_reported_status", ["reported", "status", "notification_id"], unique=False
        )
        batch_op.create_index(
            "ix_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_status_next_attempt_at")
        batch_op.drop_index("ix_deliveries_reported_status")
        batch_op.drop_index("ix_deliveries_notification_id_id")
        batch_op.drop_index(batch_op.f("ix_deliveries_binding_id"))

    op.drop_table("deliveries")
    with op.batch_alter_table("binding_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_binding_tags_service_id_tag")

    op.drop_table("binding_tags")
    op.drop_table("notifications")
    with op.batch_alter_table("bindings", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_bindings_service_id_endpoint_key",
            sqlite_where=sa.text("endpoint_key IS NOT NULL"),
            postgresql_where=sa.text("endpoint_key IS NOT NULL"),
        )
        batch_op.drop_index("ix_bindings_service_id_identity")
        batch_op.drop_index("ix_bindings_service_id_id")

    op.drop_table("bindings")
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_services_account_sid"))

    op.drop_table("services")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_account_sid"))

    op.drop_table("credentials")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_account_sid"))

    op.drop_table("api_keys")
    op.drop_table("accounts")
