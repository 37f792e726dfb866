"""Bindings by service, type and id: a list filtered by binding type (Tag=fcm, the console's
type filter, a query notification to one type) walks only that type's bindings (issue 11)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bindings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_bindings_service_id_binding_type_id",
            ["service_id", "binding_type", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("bindings", schema=None) as batch_op:
        batch_op.drop_index("ix_bindings_service_id_binding_type_id")
