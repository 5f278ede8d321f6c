"""zoom levels: each job's note (a zoom level's window, chosen window and why it stopped) and its
stop reason; `turns` shows both, and `failures` also lists every zoom that stopped short

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 01:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The views as revision 0002 wrote them, frozen here (a migration never imports another).
TURNS_DOC = """\
turns: every job a run reaches, once per run (a per-clip turn shared by all queries on a clip
appears once, with annotation_uid and query NULL). Its prompt, chosen response and all sampled
responses (JSON list), how it ended, and what it cost: attempts, latency, tokens, batch size,
worker, and start / finish times (ISO-8601 UTC). A zoom level's note (JSON: depth, window,
chosen window, final window, reason) and, where the zoom stopped short, its stop reason."""

FAILURES_DOC = """\
failures: the failed jobs of each run, once per run: which turn and clip, the kind of failure
(oom, video, upstream, lease_expired, ...) and its message; and every recursive zoom that
stopped short of its target window (kind zoom:REASON, message the level's note). egoqa retry
--run NAME re-queues the failed jobs and the dependents they failed."""

OLD_FAILURES_DOC = """\
failures: the failed jobs of each run, once per run: which turn and clip, the kind of failure
(oom, video, upstream, lease_expired, ...) and its message. egoqa retry --run NAME re-queues
them and the dependents they failed."""

OLD_TURNS_DOC = TURNS_DOC.split(" A zoom level")[0]


def _utc(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        fmt = '\'YYYY-MM-DD"T"HH24\\:MI\\:SS.MS"Z"\''
        return f"to_char(to_timestamp(j.{column}) AT TIME ZONE 'UTC', {fmt}) AS {column}"
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', j.{column}, 'unixepoch') AS {column}"


def turns_sql(dialect: str, zoom: bool) -> str:
    extra = ",\n       j.note AS note, j.stop_reason AS stop_reason" if zoom else ""
    return f"""
SELECT r.name AS run, x.turn_index AS turn_index, x.turn_name AS turn, j.id AS job_id,
       c.clip_uid AS clip_uid, q.annotation_uid AS annotation_uid, q.text AS query,
       j.state AS state, j.prompt AS prompt, j.response AS response, j.responses AS responses,
       j.finish_reason AS finish_reason, j.error_kind AS error_kind, j.error AS error,
       j.attempts AS attempts, j.latency_s AS latency_s, j.prompt_tokens AS prompt_tokens,
       j.visual_tokens AS visual_tokens, j.completion_tokens AS completion_tokens,
       j.batch_size AS batch_size, j.worker_id AS worker_id,
       {_utc("started_at", dialect)},
       {_utc("finished_at", dialect)}{extra}
  FROM (SELECT DISTINCT ri.run_id AS run_id, ij.turn_index AS turn_index,
               ij.turn_name AS turn_name, ij.job_id AS job_id
          FROM item_jobs ij JOIN run_items ri ON ri.id = ij.item_id) x
  JOIN runs r ON r.id = x.run_id
  JOIN jobs j ON j.id = x.job_id
  JOIN clips c ON c.id = j.clip_id
  LEFT JOIN queries q ON q.id = j.query_id
"""


FAILURES_SQL = """
SELECT run, job_id, turn, clip_uid, error_kind AS kind, error AS message, attempts
  FROM turns
 WHERE state = 'failed'
"""
ZOOM_STOPS_SQL = """
UNION ALL
SELECT run, job_id, turn, clip_uid, 'zoom:' || stop_reason AS kind, note AS message, attempts
  FROM turns
 WHERE stop_reason IS NOT NULL
"""


def _create(name: str, doc: str, body: str, dialect: str) -> None:
    comment = "\n".join("-- " + line for line in doc.splitlines())
    op.execute(f"CREATE VIEW {name} AS\n{comment}{body}")
    if dialect == "postgresql":
        op.execute(f"COMMENT ON VIEW {name} IS '{doc.replace(chr(39), chr(39) * 2)}'")


def _views(zoom: bool) -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS failures")
    op.execute("DROP VIEW IF EXISTS turns")
    _create("turns", TURNS_DOC if zoom else OLD_TURNS_DOC, turns_sql(dialect, zoom), dialect)
    failures = FAILURES_SQL + (ZOOM_STOPS_SQL if zoom else "")
    _create("failures", FAILURES_DOC if zoom else OLD_FAILURES_DOC, failures, dialect)


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("jobs", sa.Column("note", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("stop_reason", sa.String(32), nullable=True))
    _views(zoom=True)


def downgrade() -> None:
    """Downgrade schema."""
    _views(zoom=False)
    op.drop_column("jobs", "stop_reason")
    op.drop_column("jobs", "note")
