"""query versions: a query row is one version of (clip, annotation_uid, query_idx), told apart by
`version` (a hash of its text, type, template, answer window, extra fields and split) and holding
its `split`; each run's items point at the versions it was enqueued with, so enqueueing another
file never rewrites an earlier run's queries

Existing rows become the first version of their query (their content hashed here the way the
code hashes it). No view changes: `results`, `turns`, `clusters` read `queries` by id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:00:00.000000

"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KEY = ("clip_id", "annotation_uid", "query_idx")
NEW_KEY = (*OLD_KEY, "version")
NEW_NAME = "uq_queries_version"

# SQLite cannot drop a table's UNIQUE constraint: the table is rebuilt. Views are dropped first
# (a rename re-checks every view) and re-created from their stored text afterwards.
_SQLITE_TABLE = """
CREATE TABLE queries (
    id INTEGER NOT NULL,
    clip_id INTEGER NOT NULL,
    annotation_uid VARCHAR(64) NOT NULL,
    query_idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    query_type VARCHAR(32) NOT NULL,
    template TEXT,
    gt_start FLOAT,
    gt_end FLOAT,
    extra TEXT NOT NULL,
    {columns}
    PRIMARY KEY (id),
    FOREIGN KEY(clip_id) REFERENCES clips (id),
    {unique}
)"""
_VERSIONED = "version VARCHAR(64) NOT NULL,\n    split VARCHAR(16),"
_COPIED = (
    "id, clip_id, annotation_uid, query_idx, text, query_type, template, gt_start, gt_end, extra"
)


def _version(row) -> str:
    """The hash egoqa.store.catalog.query_version computes (frozen here)."""
    keys = ("text", "query_type", "template", "gt_start", "gt_end", "extra", "split")
    doc = json.dumps({k: row[k] for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def _fill_versions() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            """SELECT q.id, q.text, q.query_type, q.template, q.gt_start, q.gt_end, q.extra,
                      c.split FROM queries q JOIN clips c ON c.id = q.clip_id"""
        )
    ).mappings()
    updates = [{"id": r["id"], "v": _version(r), "s": r["split"]} for r in rows]
    if updates:
        bind.execute(sa.text("UPDATE queries SET version = :v, split = :s WHERE id = :id"), updates)


def _sqlite_rebuild(versioned: bool) -> None:
    bind = op.get_bind()
    views = bind.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")
    ).all()
    for name, _ in reversed(views):
        bind.exec_driver_sql(f"DROP VIEW {name}")
    # the parent table is dropped and re-made with the same ids: check references at commit
    op.execute("PRAGMA defer_foreign_keys = ON")
    columns = _VERSIONED if versioned else ""
    key = ", ".join(NEW_KEY if versioned else OLD_KEY)
    unique = f"CONSTRAINT {NEW_NAME} UNIQUE ({key})" if versioned else f"UNIQUE ({key})"
    # the rows wait in a copy while `queries` is re-made under its own name: inserting them
    # again settles the references the drop left open (a rename would not)
    op.execute(f"CREATE TEMP TABLE queries_copy AS SELECT {_COPIED} FROM queries")
    op.execute("DROP TABLE queries")
    op.execute(_SQLITE_TABLE.format(columns=columns, unique=unique))
    version = ", version" if versioned else ""
    blank = ", ''" if versioned else ""
    op.execute(
        f"INSERT INTO queries ({_COPIED}{version}) SELECT {_COPIED}{blank} FROM queries_copy"
    )
    op.execute("DROP TABLE queries_copy")
    op.execute("CREATE INDEX ix_queries_clip_id ON queries (clip_id)")
    for _, sql in views:
        bind.exec_driver_sql(sql)  # as stored: no bind parameters parsed out of its comments


def _old_unique_name() -> str:
    for uc in sa.inspect(op.get_bind()).get_unique_constraints("queries"):
        if tuple(uc["column_names"]) == OLD_KEY:
            return uc["name"]
    raise RuntimeError("queries has no unique constraint on (clip_id, annotation_uid, query_idx)")


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild(versioned=True)
    else:
        op.drop_constraint(_old_unique_name(), "queries", type_="unique")
        op.add_column("queries", sa.Column("version", sa.String(64), nullable=True))
        op.add_column("queries", sa.Column("split", sa.String(16), nullable=True))
    _fill_versions()
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("queries", "version", nullable=False)
        op.create_unique_constraint(NEW_NAME, "queries", list(NEW_KEY))


_LATEST = """
SELECT q.id AS old, (SELECT MAX(x.id) FROM queries x WHERE x.clip_id = q.clip_id
        AND x.annotation_uid = q.annotation_uid AND x.query_idx = q.query_idx) AS new
  FROM queries q
"""


def _keep_latest_versions() -> None:
    """Before the one-row-per-query schema: every reference moves to the query's newest version
    (what the old schema held: the last enqueue's content), then the older versions go."""
    bind = op.get_bind()
    moves = [dict(r) for r in bind.execute(sa.text(_LATEST)).mappings() if r["old"] != r["new"]]
    for table in ("run_items", "jobs", "query_clusters"):
        sql = f"UPDATE {table} SET query_id = :new WHERE query_id = :old"
        if moves:
            bind.execute(sa.text(sql), moves)
    if moves:
        bind.execute(sa.text("DELETE FROM queries WHERE id = :old"), moves)


def downgrade() -> None:
    """Downgrade schema."""
    _keep_latest_versions()
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild(versioned=False)
        return
    op.drop_constraint(NEW_NAME, "queries", type_="unique")
    op.drop_column("queries", "split")
    op.drop_column("queries", "version")
    op.create_unique_constraint(None, "queries", list(OLD_KEY))
