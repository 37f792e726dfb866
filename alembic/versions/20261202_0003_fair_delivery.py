"""Fair delivery across accounts (claims on partial indexes); callback refusals recorded

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FRESH = sa.text("status = 'pending' AND attempts = 0")
RETRY = sa.text("status = 'pending' AND attempts > 0")
SENDING = sa.text("status = 'sending'")


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fair_clock", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fair_key", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("callback_error", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_deliveries_fresh",
            ["fair_key", "id", "next_attempt_at"],
            unique=False,
            sqlite_where=FRESH,
            postgresql_where=FRESH,
        )
        batch_op.create_index(
            "ix_deliveries_retry",
            ["next_attempt_at"],
            unique=False,
            sqlite_where=RETRY,
            postgresql_where=RETRY,
        )
        batch_op.create_index(
            "ix_deliveries_sending",
            ["next_attempt_at"],
            unique=False,
            sqlite_where=SENDING,
            postgresql_where=SENDING,
        )
        # Its place is taken by the three partial indexes; left, SQLite chose it for them.
        batch_op.drop_index("ix_deliveries_status_next_attempt_at")


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )
        batch_op.drop_index("ix_deliveries_sending")
        batch_op.drop_index("ix_deliveries_retry")
        batch_op.drop_index("ix_deliveries_fresh")
        batch_op.drop_column("callback_error")
        batch_op.drop_column("fair_key")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("fair_clock")
