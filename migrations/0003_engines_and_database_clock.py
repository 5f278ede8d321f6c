"""engines: jobs, workers and learned batch limits by engine (model, revision, dtype, attention,
quantisation, max pixels); the device and dtype each job actually ran in; workers' GPUs and
lease; the read-only role of
`egoqa sql` on PostgreSQL; no `cancelled` state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 21:00:00.000000

Existing jobs get the engine their spec and their run's config describe (the spec gains an
`engine` object); learned batch limits were per model and start afresh per engine.
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _engine_id(engine: dict) -> str:
    # Frozen copy of egoqa.plan.config.engine_id: a migration must not change with the code.
    text = json.dumps(engine, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _backfill_engines(conn) -> None:
    configs = dict(
        conn.execute(
            sa.text(
                """SELECT ij.job_id, MAX(r.config) FROM item_jobs ij
                     JOIN run_items ri ON ri.id = ij.item_id JOIN runs r ON r.id = ri.run_id
                    GROUP BY ij.job_id"""
            )
        ).all()
    )
    for job_id, spec_text in conn.execute(sa.text("SELECT id, spec FROM jobs")).all():
        spec = json.loads(spec_text)
        config = json.loads(configs.get(job_id) or "{}")
        engine = {
            "backend": config.get("backend", "transformers"),
            "model": spec.get("model"),
            "revision": spec.get("revision"),
            "dtype": spec.get("dtype", "bfloat16"),
            "attn_implementation": config.get("attn_implementation", "sdpa"),
            "quantization": None,
            "max_pixels": None,
            "trust_remote_code": config.get("trust_remote_code", False),
        }
        spec["engine"] = engine
        conn.execute(
            sa.text("UPDATE jobs SET engine = :e, spec = :s WHERE id = :id"),
            {"e": _engine_id(engine), "s": _canonical(spec), "id": job_id},
        )


def _rehash_runs(conn) -> None:
    """A run's hash now covers its config and its style's content (frozen copy of plan_hash)."""
    for run_id, config_text, style_text in conn.execute(
        sa.text("SELECT id, config, style FROM runs")
    ).all():
        config = json.loads(config_text)
        config.setdefault("quantization", None)
        config.setdefault("max_pixels", None)
        doc = {"config": config, "style": json.loads(style_text)}
        conn.execute(
            sa.text("UPDATE runs SET config = :c, config_hash = :h WHERE id = :id"),
            {
                "c": json.dumps(config, sort_keys=True, separators=(",", ":")),
                "h": hashlib.sha256(_canonical(doc).encode()).hexdigest(),
                "id": run_id,
            },
        )


def upgrade() -> None:
    """Upgrade schema."""
    # Plain ADD COLUMN (no table copy): SQLite cannot rename a copied table under the views.
    conn = op.get_bind()
    op.add_column("jobs", sa.Column("engine", sa.String(64), nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("device", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("dtype", sa.String(32), nullable=True))
    _backfill_engines(conn)
    _rehash_runs(conn)
    conn.execute(
        sa.text(
            "UPDATE jobs SET state = 'failed', error_kind = 'cancelled' WHERE state = 'cancelled'"
        )
    )
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index(
        "ix_jobs_claim", "jobs", ["state", "engine", "priority", "clip_id", "turn_index", "id"]
    )
    op.add_column("job_results", sa.Column("device", sa.String(64), nullable=True))
    op.add_column("job_results", sa.Column("dtype", sa.String(32), nullable=True))
    op.add_column("workers", sa.Column("engine", sa.String(64), nullable=True))
    op.add_column("workers", sa.Column("gpus", sa.String(255), nullable=True))
    op.add_column("workers", sa.Column("lease_s", sa.Float(), nullable=True))
    op.drop_table("batch_limits")
    op.create_table(
        "batch_limits",
        sa.Column("engine", sa.String(length=64), nullable=False),
        sa.Column("media_key", sa.String(length=128), nullable=False),
        sa.Column("max_ok", sa.Integer(), nullable=True),
        sa.Column("min_fail", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("engine", "media_key"),
    )
    op.create_table(
        "sql_readers",
        sa.Column("role", sa.String(length=63), nullable=False),
        sa.Column("password", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("role"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("sql_readers")
    op.drop_table("batch_limits")
    op.create_table(
        "batch_limits",
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("media_key", sa.String(length=128), nullable=False),
        sa.Column("max_ok", sa.Integer(), nullable=True),
        sa.Column("min_fail", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model", "media_key"),
    )
    # DROP COLUMN in place (SQLite >= 3.35): no table copy under the views.
    op.drop_column("workers", "lease_s")
    op.drop_column("workers", "gpus")
    op.drop_column("workers", "engine")
    op.drop_column("job_results", "dtype")
    op.drop_column("job_results", "device")
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index(
        "ix_jobs_claim", "jobs", ["state", "model", "priority", "clip_id", "turn_index", "id"]
    )
    op.drop_column("jobs", "dtype")
    op.drop_column("jobs", "device")
    op.drop_column("jobs", "engine")
