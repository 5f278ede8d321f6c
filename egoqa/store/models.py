"""SQLAlchemy 2 models: the schema the migrations create.

Times are UTC seconds since the epoch (REAL): the same arithmetic on SQLite and PostgreSQL,
and cheap to compare in the claim statement. Views present them as timestamps.
"""

from __future__ import annotations

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from egoqa.store.states import JobState  # noqa: F401 -- re-exported with the schema


class Base(DeclarativeBase):
    pass


class Clip(Base):
    __tablename__ = "clips"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clip_uid: Mapped[str] = mapped_column(String(64), unique=True)
    video_uid: Mapped[str | None] = mapped_column(String(64))
    video_path: Mapped[str] = mapped_column(Text)
    offset_sec: Mapped[float] = mapped_column(Float, default=0.0)
    duration_sec: Mapped[float] = mapped_column(Float)
    identity: Mapped[str] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(16))


class Query(Base):
    """One version of a query: a (clip, annotation_uid, query_idx) whose content (text, answer
    window, template, split...) changed between annotation files has a row per content, and each
    run's items point at the version they were enqueued with."""

    __tablename__ = "queries"
    __table_args__ = (
        UniqueConstraint(
            "clip_id", "annotation_uid", "query_idx", "version", name="uq_queries_version"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id"), index=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    query_idx: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    query_type: Mapped[str] = mapped_column(String(32))
    template: Mapped[str | None] = mapped_column(Text)
    gt_start: Mapped[float | None] = mapped_column(Float)
    gt_end: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[str] = mapped_column(Text, default="{}")
    version: Mapped[str] = mapped_column(String(64))  # hash of the content above and the split
    split: Mapped[str | None] = mapped_column(String(16))  # the clip's split in that file


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    config: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(String(64))
    style: Mapped[str] = mapped_column(Text)
    graded_turn: Mapped[str] = mapped_column(String(64))
    annotations: Mapped[str | None] = mapped_column(Text)
    provenance: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[float] = mapped_column(Float)


class RunItem(Base):
    """One query of a run, its graded job, and its scores (recomputable with --rescore)."""

    __tablename__ = "run_items"
    __table_args__ = (UniqueConstraint("run_id", "query_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"))
    graded_job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    scored_at: Mapped[float | None] = mapped_column(Float)
    segments: Mapped[str | None] = mapped_column(Text)
    n_segments: Mapped[int | None] = mapped_column(Integer)
    correct: Mapped[int | None] = mapped_column(Integer)
    iou_top1: Mapped[float | None] = mapped_column(Float)
    r1_03: Mapped[int | None] = mapped_column(Integer)
    r1_05: Mapped[int | None] = mapped_column(Integer)
    r5_03: Mapped[int | None] = mapped_column(Integer)
    r5_05: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(16))
    best_correct: Mapped[int | None] = mapped_column(Integer)
    best_r1_03: Mapped[int | None] = mapped_column(Integer)
    best_r1_05: Mapped[int | None] = mapped_column(Integer)
    best_iou_top1: Mapped[float | None] = mapped_column(Float)


class ItemJob(Base):
    """Every turn's job for one run item (the chain the report walks)."""

    __tablename__ = "item_jobs"
    item_id: Mapped[int] = mapped_column(ForeignKey("run_items.id"), primary_key=True)
    turn_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    turn_name: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "state", "engine", "priority", "clip_id", "turn_index", "id"),
        Index("ix_jobs_lease", "state", "lease_expires_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    # What computes it (model, revision, dtype, attention, quantisation, max pixels): a worker
    # serves one engine. The full engine is in the spec; this is its hash.
    engine: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(Text)
    turn_name: Mapped[str] = mapped_column(String(64))
    turn_index: Mapped[int] = mapped_column(Integer)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id"))
    query_id: Mapped[int | None] = mapped_column(ForeignKey("queries.id"))
    spec: Mapped[str] = mapped_column(Text)
    media_key: Mapped[str] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    prompt: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    responses: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    visual_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(64))  # where it actually ran
    dtype: Mapped[str | None] = mapped_column(String(32))  # what the weights actually were
    # A zoom level's decision (JSON: depth, window, chosen, final window, reason) and, where the
    # zoom stopped short of its target window, why.
    note: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    # What an OpenAI-compatible server said answered: its model name and system fingerprint.
    served_model: Mapped[str | None] = mapped_column(Text)
    system_fingerprint: Mapped[str | None] = mapped_column(String(128))
    worker_id: Mapped[str | None] = mapped_column(String(128))


class JobDep(Base):
    __tablename__ = "job_deps"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True, index=True)


class JobResult(Base):
    """Append-only: one row per successful completion (the history --recompute keeps)."""

    __tablename__ = "job_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    lease_token: Mapped[str] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(128))
    prompt: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    responses: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    latency_s: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    visual_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(64))
    dtype: Mapped[str | None] = mapped_column(String(32))
    served_model: Mapped[str | None] = mapped_column(Text)
    system_fingerprint: Mapped[str | None] = mapped_column(String(128))
    finished_at: Mapped[float] = mapped_column(Float)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    # with host, where `pid` means this process (see store.workers.Place)
    boot_id: Mapped[str | None] = mapped_column(String(64))
    pid_ns: Mapped[str | None] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    engine: Mapped[str | None] = mapped_column(String(64))
    gpus: Mapped[str | None] = mapped_column(String(255))  # CUDA_VISIBLE_DEVICES of the worker
    lease_s: Mapped[float | None] = mapped_column(Float)  # its renewal period is a third of this
    model: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[float | None] = mapped_column(Float)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)


class BatchLimit(Base):
    """Largest batch that worked and smallest that ran out of memory, per engine x media spec."""

    __tablename__ = "batch_limits"
    engine: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    max_ok: Mapped[int | None] = mapped_column(Integer)
    min_fail: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float)


class SqlReader(Base):
    """PostgreSQL only: the login role `egoqa sql` runs as (it can only read egoqa's tables and
    views), created by `egoqa db upgrade`. Readable by the database owner alone."""

    __tablename__ = "sql_readers"
    role: Mapped[str] = mapped_column(String(63), primary_key=True)
    password: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class ShotDetection(Base):
    """Cuts found in a window of a video file (file seconds), per detector and thresholds."""

    __tablename__ = "shot_detections"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    video: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(Text)
    start_sec: Mapped[float] = mapped_column(Float)
    end_sec: Mapped[float] = mapped_column(Float)
    cuts: Mapped[str] = mapped_column(Text)
    frames: Mapped[int] = mapped_column(Integer)
    fps: Mapped[float] = mapped_column(Float)
    library: Mapped[str] = mapped_column(String(64))
    elapsed_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class RunSource(Base):
    """One annotation file a run was enqueued from: how many queries it gave, how many it skipped."""

    __tablename__ = "run_sources"
    __table_args__ = (UniqueConstraint("run_id", "annotations"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    annotations: Mapped[str] = mapped_column(Text)
    enqueued_at: Mapped[float] = mapped_column(Float)
    queries: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[int] = mapped_column(Integer)


class SkippedRecord(Base):
    """A record of a run's annotation file that could not be enqueued, and why; the export
    writes those with a full query id as misses, so every query of the file is counted."""

    __tablename__ = "skipped_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("run_sources.id"), index=True)
    clip_uid: Mapped[str | None] = mapped_column(String(64))
    annotation_uid: Mapped[str | None] = mapped_column(String(64))
    query_idx: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)


class QueryCluster(Base):
    """A run's queries grouped by meaning: one row per (run, method, query), with its cluster's
    label (the most characteristic words). The `results` view joins the run's latest method."""

    __tablename__ = "query_clusters"
    __table_args__ = (Index("ix_query_clusters_latest", "run_id", "computed_at", "method"),)
    # (run, query) first: `results` looks a row up by them, then picks the method
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"), primary_key=True)
    method: Mapped[str] = mapped_column(String(128), primary_key=True)
    cluster: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(Text)
    computed_at: Mapped[float] = mapped_column(Float)


class ProposalSet(Base):
    """Candidate windows imported from a grounding model's prediction file, by name."""

    __tablename__ = "proposal_sets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[float] = mapped_column(Float)


class Proposal(Base):
    """One query's ranked candidate windows in a proposal set (JSON [[start, end], ...])."""

    __tablename__ = "proposals"
    __table_args__ = (UniqueConstraint("set_id", "clip_uid", "annotation_uid", "query_idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("proposal_sets.id"))
    clip_uid: Mapped[str] = mapped_column(String(64))
    annotation_uid: Mapped[str] = mapped_column(String(64))
    query_idx: Mapped[int] = mapped_column(Integer)
    windows: Mapped[str] = mapped_column(Text)
