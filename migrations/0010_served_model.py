"""served model: the model name and system fingerprint an OpenAI-compatible server answered
with, on every job and result it computed (NULL for in-process engines)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    for table in ("jobs", "job_results"):
        op.add_column(table, sa.Column("served_model", sa.Text(), nullable=True))
        op.add_column(table, sa.Column("system_fingerprint", sa.String(128), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    for table in ("jobs", "job_results"):
        op.drop_column(table, "system_fingerprint")
        op.drop_column(table, "served_model")
