"""Fan-out expanded by the workers in chunks: expansions; one outbox row per binding

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "expansions",
        sa.Column("id", RowId, nullable=False),
        sa.Column("notification_id", RowId, nullable=False),
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column("service_id", RowId, nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("binding_types", sa.Text(), nullable=False),
        sa.Column("after_binding_id", sa.BigInteger(), nullable=False),
        sa.Column("last_binding_id", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("reported", sa.Boolean(), nullable=False),
        sa.Column("advanced_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_expansions_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_expansions_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expansions")),
        sa.UniqueConstraint("notification_id", name=op.f("uq_expansions_notification_id")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        # Also serves ON DELETE SET NULL's lookups by binding, as the index it replaces did.
        batch_op.create_index(
            "uq_deliveries_binding_id_notification_id",
            ["binding_id", "notification_id"],
            unique=True,
        )
        batch_op.drop_index("ix_deliveries_binding_id")


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_binding_id", ["binding_id"], unique=False)
        batch_op.drop_index("uq_deliveries_binding_id_notification_id")
    op.drop_table("expansions")
