"""skipped records: the annotation files a run was enqueued from (`run_sources`) and the records
of each that could not be enqueued, with their query ids and reasons (`skipped_records`)

The export writes every skipped query as a miss, so a submission counts every query of the
file; the report shows how many were skipped beside the scores.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "run_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("annotations", sa.Text(), nullable=False),
        sa.Column("enqueued_at", sa.Float(), nullable=False),
        sa.Column("queries", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "annotations"),
    )
    op.create_index(op.f("ix_run_sources_run_id"), "run_sources", ["run_id"], unique=False)
    op.create_table(
        "skipped_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("clip_uid", sa.String(length=64), nullable=True),
        sa.Column("annotation_uid", sa.String(length=64), nullable=True),
        sa.Column("query_idx", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["source_id"], ["run_sources.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_skipped_records_source_id"), "skipped_records", ["source_id"], unique=False
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f("ix_skipped_records_source_id"), table_name="skipped_records")
    op.drop_table("skipped_records")
    op.drop_index(op.f("ix_run_sources_run_id"), table_name="run_sources")
    op.drop_table("run_sources")
