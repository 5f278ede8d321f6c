"""worker places: each worker's boot id and pid namespace beside its host name, so that a worker
is looked up by its pid only from the same host, boot and pid namespace (containers that share
a host name but not a pid namespace must never free each other's jobs)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("workers", sa.Column("boot_id", sa.String(64), nullable=True))
    op.add_column("workers", sa.Column("pid_ns", sa.String(64), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("pid_ns")
        batch.drop_column("boot_id")
