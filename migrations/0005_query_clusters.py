"""query clusters: the `query_clusters` table, and `results` re-created with the clip's length and
the run's latest query clustering (cluster, cluster_label, cluster_method) as its last columns

Every column `results` had keeps its name, position and meaning; the four new ones come after.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 21:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The body of `results` as revision 0002 wrote it (a migration is frozen: it never imports another).
_SCORED = "j.state = 'done' AND ri.scored_at >= j.finished_at"
_MISSED = "j.state IN ('failed', 'cancelled')"


def _score(column: str, miss: str = "0") -> str:
    return f"CASE WHEN {_SCORED} THEN ri.{column} WHEN {_MISSED} THEN {miss} END AS {column}"


_COLUMNS = f"""
SELECT r.name AS run, c.clip_uid AS clip_uid, q.annotation_uid AS annotation_uid,
       q.query_idx AS query_idx, q.text AS query, q.query_type AS query_type,
       q.template AS template, q.gt_start AS gt_start, q.gt_end AS gt_end, j.state AS state,
       CASE WHEN j.state = 'done' THEN j.response END AS response,
       {_score("segments", "'[]'")},
       {_score("n_segments")},
       {_score("correct")},
       {_score("iou_top1", "0.0")},
       {_score("r1_03")},
       {_score("r1_05")},
       {_score("r5_03")},
       {_score("r5_05")},
       {_score("outcome", "'failed'")},
       {_score("best_correct")},
       {_score("best_r1_03")},
       {_score("best_r1_05")},
       {_score("best_iou_top1", "0.0")},
       j.error_kind AS error_kind, ri.graded_job_id AS graded_job_id"""

_FROM = """
  FROM run_items ri
  JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id
  JOIN clips c ON c.id = q.clip_id
  JOIN jobs j ON j.id = ri.graded_job_id
"""

RESULTS_0002_DOC = """\
results: one row per run x query (every enqueued query, finished or not). The graded turn's
job state and response, the segments parsed from it (JSON [[start, end, confidence], ...],
clip seconds, best first) and its scores: coverage (correct = the ground truth lies inside a
predicted segment), top-1 tIoU, Recall@1/@5 at tIoU > 0.3 / 0.5, the outcome, and best-of-n
(any sample hits) where the graded turn drew n samples. Scores are NULL while the graded job
is pending and 0 (outcome 'failed') when it failed. Recompute with egoqa report --rescore."""

RESULTS_DOC = (
    RESULTS_0002_DOC
    + """
clip_duration is the clip's length in seconds; cluster, cluster_label and cluster_method are
the query's group by meaning from the run's latest `egoqa cluster` (NULL before one ran)."""
)

# The latest clustering of the run: a run clustered by two methods still has one row per query.
# The ORDER BY follows ix_query_clusters_latest exactly, so the latest method is one index seek
# (with `method` sorted apart, each row sorted the whole clustering: 25 s for 4,548 queries).
RESULTS_SQL = (
    _COLUMNS
    + """,
       c.duration_sec AS clip_duration, qc.cluster AS cluster, qc.label AS cluster_label,
       qc.method AS cluster_method"""
    + _FROM
    + """  LEFT JOIN query_clusters qc ON qc.run_id = ri.run_id AND qc.query_id = ri.query_id
   AND qc.method = (SELECT x.method FROM query_clusters x WHERE x.run_id = ri.run_id
                     ORDER BY x.computed_at DESC, x.method DESC LIMIT 1)
"""
)


def _create_results(doc: str, body: str, dialect: str) -> None:
    comment = "\n".join("-- " + line for line in doc.splitlines())
    op.execute(f"CREATE VIEW results AS\n{comment}{body}")
    if dialect == "postgresql":  # PostgreSQL keeps the parsed query, not the comment
        op.execute(f"COMMENT ON VIEW results IS '{doc.replace(chr(39), chr(39) * 2)}'")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "query_clusters",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("cluster", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        # (run, query) lead: `results` finds a query's rows by them
        sa.PrimaryKeyConstraint("run_id", "query_id", "method"),
    )
    with op.batch_alter_table("query_clusters", schema=None) as batch_op:
        batch_op.create_index(
            "ix_query_clusters_latest", ["run_id", "computed_at", "method"], unique=False
        )
    op.execute("DROP VIEW results")
    _create_results(RESULTS_DOC, RESULTS_SQL, op.get_bind().dialect.name)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP VIEW results")
    _create_results(RESULTS_0002_DOC, _COLUMNS + _FROM, op.get_bind().dialect.name)
    with op.batch_alter_table("query_clusters", schema=None) as batch_op:
        batch_op.drop_index("ix_query_clusters_latest")
    op.drop_table("query_clusters")
