"""report views: `results` (run x query, with scores), `turns` (every job of a run), `failures`

Views are not models, so `alembic check` ignores them. Each view's SQL opens with a comment that
says what a row is (kept by SQLite in `sqlite_master.sql`; PostgreSQL gets it as COMMENT ON VIEW).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Scores show only for a graded job that is done and was scored after it finished, so a
# re-queued or recomputed job never shows its previous result; a failed (or cancelled) job is a
# miss on every metric; a pending one shows NULL.
_SCORED = "j.state = 'done' AND ri.scored_at >= j.finished_at"
_MISSED = "j.state IN ('failed', 'cancelled')"


def _score(column: str, miss: str = "0") -> str:
    return f"CASE WHEN {_SCORED} THEN ri.{column} WHEN {_MISSED} THEN {miss} END AS {column}"


RESULTS_DOC = """\
results: one row per run x query (every enqueued query, finished or not). The graded turn's
job state and response, the segments parsed from it (JSON [[start, end, confidence], ...],
clip seconds, best first) and its scores: coverage (correct = the ground truth lies inside a
predicted segment), top-1 tIoU, Recall@1/@5 at tIoU > 0.3 / 0.5, the outcome, and best-of-n
(any sample hits) where the graded turn drew n samples. Scores are NULL while the graded job
is pending and 0 (outcome 'failed') when it failed. Recompute with egoqa report --rescore."""

RESULTS_SQL = f"""
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
       j.error_kind AS error_kind, ri.graded_job_id AS graded_job_id
  FROM run_items ri
  JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id
  JOIN clips c ON c.id = q.clip_id
  JOIN jobs j ON j.id = ri.graded_job_id
"""

TURNS_DOC = """\
turns: every job a run reaches, once per run (a per-clip turn shared by all queries on a clip
appears once, with annotation_uid and query NULL). Its prompt, chosen response and all sampled
responses (JSON list), how it ended, and what it cost: attempts, latency, tokens, batch size,
worker, and start / finish times (ISO-8601 UTC)."""


def _utc(column: str, dialect: str) -> str:
    """An epoch-seconds column as ISO-8601 UTC text, identical on both backends."""
    if dialect == "postgresql":
        # Colons escaped: op.execute() parses ":name" as a bind parameter.
        fmt = '\'YYYY-MM-DD"T"HH24\\:MI\\:SS.MS"Z"\''
        return f"to_char(to_timestamp(j.{column}) AT TIME ZONE 'UTC', {fmt}) AS {column}"
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', j.{column}, 'unixepoch') AS {column}"


def turns_sql(dialect: str) -> str:
    return f"""
SELECT r.name AS run, x.turn_index AS turn_index, x.turn_name AS turn, j.id AS job_id,
       c.clip_uid AS clip_uid, q.annotation_uid AS annotation_uid, q.text AS query,
       j.state AS state, j.prompt AS prompt, j.response AS response, j.responses AS responses,
       j.finish_reason AS finish_reason, j.error_kind AS error_kind, j.error AS error,
       j.attempts AS attempts, j.latency_s AS latency_s, j.prompt_tokens AS prompt_tokens,
       j.visual_tokens AS visual_tokens, j.completion_tokens AS completion_tokens,
       j.batch_size AS batch_size, j.worker_id AS worker_id,
       {_utc("started_at", dialect)},
       {_utc("finished_at", dialect)}
  FROM (SELECT DISTINCT ri.run_id AS run_id, ij.turn_index AS turn_index,
               ij.turn_name AS turn_name, ij.job_id AS job_id
          FROM item_jobs ij JOIN run_items ri ON ri.id = ij.item_id) x
  JOIN runs r ON r.id = x.run_id
  JOIN jobs j ON j.id = x.job_id
  JOIN clips c ON c.id = j.clip_id
  LEFT JOIN queries q ON q.id = j.query_id
"""


FAILURES_DOC = """\
failures: the failed jobs of each run, once per run: which turn and clip, the kind of failure
(oom, video, upstream, lease_expired, ...) and its message. egoqa retry --run NAME re-queues
them and the dependents they failed."""

FAILURES_SQL = """
SELECT run, job_id, turn, clip_uid, error_kind AS kind, error AS message, attempts
  FROM turns
 WHERE state = 'failed'
"""


def _create(name: str, doc: str, body: str, dialect: str) -> None:
    comment = "\n".join("-- " + line for line in doc.splitlines())
    op.execute(f"CREATE VIEW {name} AS\n{comment}{body}")
    if dialect == "postgresql":  # PostgreSQL keeps the parsed query, not the comment
        op.execute(f"COMMENT ON VIEW {name} IS '{doc.replace(chr(39), chr(39) * 2)}'")


def upgrade() -> None:
    """Upgrade schema."""
    dialect = op.get_bind().dialect.name
    _create("results", RESULTS_DOC, RESULTS_SQL, dialect)
    _create("turns", TURNS_DOC, turns_sql(dialect), dialect)
    _create("failures", FAILURES_DOC, FAILURES_SQL, dialect)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP VIEW IF EXISTS failures")
    op.execute("DROP VIEW IF EXISTS turns")
    op.execute("DROP VIEW IF EXISTS results")
