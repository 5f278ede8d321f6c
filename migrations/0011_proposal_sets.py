"""proposal sets: candidate windows imported from a grounding model's prediction file
(`egoqa proposals import`), one row per set and one per query of it, ranked windows as JSON

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "proposal_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "proposals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("clip_uid", sa.String(length=64), nullable=False),
        sa.Column("annotation_uid", sa.String(length=64), nullable=False),
        sa.Column("query_idx", sa.Integer(), nullable=False),
        sa.Column("windows", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["set_id"], ["proposal_sets.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("set_id", "clip_uid", "annotation_uid", "query_idx"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("proposals")
    op.drop_table("proposal_sets")
