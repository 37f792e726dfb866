"""Indexes of the notification listing (newest first per service) and of the Deliveries
listing's Status and BindingType filters (issue 11)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index("ix_notifications_service_id_id", ["service_id", "id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_notification_id_status_id",
            ["notification_id", "status", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_deliveries_notification_id_binding_type_id",
            ["notification_id", "binding_type", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_notification_id_binding_type_id")
        batch_op.drop_index("ix_deliveries_notification_id_status_id")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_service_id_id")
