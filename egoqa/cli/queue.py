"""The queue's commands: `enqueue` plans a run, `status` and `runs` watch it, `sql` reads it,
`retry` re-queues what failed, `db` creates and upgrades the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from egoqa.cli.common import (
    STATE,
    CsvOpt,
    JsonOpt,
    RunOpt,
    VerboseOpt,
    emit_table,
    open_database,
)
from egoqa.errors import EgoqaError

# --- enqueue ---------------------------------------------------------------------------------


def enqueue(
    annotations: Annotated[
        Path, typer.Option("--annotations", "-a", help="Ego4D NLQ file (nlq_val.json, ...).")
    ],
    videos: Annotated[
        Path,
        typer.Option(
            "--videos", help="Directory of <clip_uid>.mp4 (or <video_uid>.mp4 full videos)."
        ),
    ],
    config: Annotated[
        str,
        typer.Option(
            "--config",
            "-c",
            help="Preset name (baseline, coarse, dense, coarse_cot, demo), TOML file, or prior:NAME.",
        ),
    ],
    metadata: Annotated[
        Path | None, typer.Option("--metadata", help="Optional ego4d.json metadata.")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Run name (default: the config's name).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set sampler.frames=16."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Take only the first N usable queries.")
    ] = None,
    recompute: Annotated[
        bool,
        typer.Option(
            "--recompute", help="Re-queue this plan's existing jobs (old results kept as history)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
    fit: Annotated[
        Path | None,
        typer.Option(
            "--fit", help="Training annotations a prior learns from (prior:length_prior)."
        ),
    ] = None,
) -> None:
    """Plan a run: read the annotations, write clips, queries and jobs. Idempotent.

    `--config prior:whole_clip|uniform_random|length_prior` computes a prior-only baseline now.
    """
    if config.startswith("proposals:") and fit is None:
        from egoqa.cli.proposals import enqueue_proposals

        if set_ or recompute:
            raise EgoqaError(
                f"{config} scores an imported set as it is: it takes no --set or --recompute "
                "(import the set again to change it)"
            )
        enqueue_proposals(annotations, videos, config, metadata, run, limit, as_json)
        return
    if config.startswith("prior:") or fit is not None:
        from egoqa.cli.report import enqueue_prior

        enqueue_prior(
            annotations, videos, config, metadata, run, set_, limit, recompute, fit, as_json
        )
        return
    from egoqa.plan.config import load_config
    from egoqa.plan.dataset import load_nlq, require_queries
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style

    cfg = load_config(config, set_ or ())
    style = load_style(cfg.style)
    dataset = load_nlq(annotations, videos, metadata, limit=limit)
    _show_skipped(dataset.skipped)
    require_queries(dataset, annotations, videos)  # before a database (or a run) is made
    db = open_database(create=True)
    name = run or Path(config).stem
    from egoqa.plan.proposals import for_run

    dataset, windows = for_run(db, dataset, style, cfg, str(annotations))
    report = enqueue_run(
        db,
        dataset,
        cfg,
        style,
        name,
        annotations=str(annotations),
        recompute=recompute,
        proposals=windows,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
    turns = ", ".join(f"{k} {v}" for k, v in report.per_turn.items())
    typer.echo(
        f"run {report.run}: {report.queries} queries on {report.clips} clips "
        f"(skipped: {skipped})\n"
        f"jobs: {report.jobs_total} planned, {report.jobs_new} new, {report.jobs_reused} reused"
        f"{f', {report.recomputed} re-queued' if recompute else ''} — per turn: {turns}"
    )
    if report.replanned:
        typer.echo(f"re-planned run {report.run}: {report.replanned}", err=True)
    if report.repointed:
        typer.echo(
            f"{report.repointed} queries now point at new jobs (their inputs or the plan "
            "changed); their earlier answers stay as history",
            err=True,
        )


def _show_skipped(skipped: list, shown: int = 5) -> None:
    """The first few skipped records, each named so it can be found in the file."""
    for s in skipped[:shown]:
        typer.echo(f"  skipped {s.reason} ({s.where()}): {s.detail}", err=True)
    if len(skipped) > shown:
        typer.echo(f"  ... and {len(skipped) - shown} more skipped records", err=True)


# --- status / runs / sql / retry -------------------------------------------------------------


def status(run: RunOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Jobs by run × turn × state, engines, and the leases workers hold now."""
    from egoqa.store import read as st
    from egoqa.store import workers as registry
    from egoqa.store.usage import mixed_fingerprints

    db = open_database(readonly=True)
    table, engines = st.progress(db, run), st.engines(db)
    held = [
        {"worker": w, "host": h, "pid": p, "jobs": n, "lease_ends_in_s": round(max(0.0, t or 0))}
        for w, h, p, n, t in registry.held_jobs(db)
    ]
    if as_json:
        doc = {"progress": table.records(), "jobs": st.job_states(db)}
        doc |= {"engines": engines.records(), "held": held, "zoom_stops": st.zoom_stops(db)}
        doc["mixed_fingerprints"] = mixed_fingerprints(db)
        typer.echo(json.dumps(doc, indent=2))
        return
    emit_table("progress (distinct jobs; per-clip turns counted once)", table.columns, table.rows)
    emit_table("engines (egoqa work --engine ID serves one)", engines.columns, engines.rows)
    if held:
        emit_table("held by workers now", list(held[0]), [tuple(h.values()) for h in held])
    stops = st.zoom_stops(db)
    if stops:
        title = "zoom stops by reason (each in the failures view)"
        emit_table(title, ["reason", "levels"], list(stops.items()))
    for m in mixed_fingerprints(db):
        typer.echo(
            f"warning: engine {m['engine']} ({m['model']}): its results came from "
            f"{m['fingerprints']} server fingerprints and {m['served_models']} served model "
            "name(s): the server changed during the run (see system_fingerprint in the jobs table)",
            err=True,
        )
    states = st.job_states(db)
    typer.echo("all jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"))


def runs(as_json: JsonOpt = False, as_csv: CsvOpt = False, verbose: VerboseOpt = 0) -> None:
    """The runs in this database."""
    from egoqa.store import read as st

    t = st.runs(open_database(readonly=True))
    emit_table("runs", t.columns, t.rows, as_json=as_json, as_csv=as_csv)


def sql(
    statement: Annotated[
        str, typer.Argument(help='One SQL statement, e.g. "SELECT * FROM progress".')
    ],
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, help="Cancel the statement after this many seconds."),
    ] = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run a read-only SQL query (the database refuses writes); Ctrl-C cancels it."""
    from egoqa.store import read as st
    from egoqa.store.sqlrole import open_sql_db

    t = st.read_only_sql(open_sql_db(open_database(readonly=True)), statement, timeout)
    emit_table(None, t.columns, t.rows, as_json=as_json, as_csv=as_csv)


def retry(run: RunOpt = None, verbose: VerboseOpt = 0) -> None:
    """Re-queue failed jobs (and the dependents they failed); release dead workers' jobs."""
    from egoqa.cli.work import release_dead_workers
    from egoqa.store import graph
    from egoqa.store import read as st

    db = open_database()
    release_dead_workers(db)
    n = graph.retry(db, st.failed_job_ids(db, run))
    typer.echo(f"re-queued {n} failed job(s)")


# --- work -----------------------------------------------------------------------------------


def db_upgrade(verbose: VerboseOpt = 0) -> None:
    """Create the schema or upgrade it to this egoqa's version (and, on PostgreSQL, the
    read-only role `egoqa sql` runs as)."""
    from egoqa.store.db import open_db, schema_state, shown_url
    from egoqa.store.sqlrole import ensure_reader

    db = open_db(STATE.db, create=True)
    reader = ensure_reader(db)
    where = f"; egoqa sql runs as the read-only role {reader}" if reader else ""
    typer.echo(f"{shown_url(db.url)}: schema at {schema_state(db.engine).current}{where}")


def db_current(verbose: VerboseOpt = 0) -> None:
    """Show the database's schema revision and this egoqa's."""
    from egoqa.store.db import friendly_errors, make_engine, resolve_url, schema_state, shown_url

    url = resolve_url(STATE.db)
    with friendly_errors(url):
        s = schema_state(make_engine(url, readonly=True))
    if s.ok:
        hint = ""
    elif s.newer:
        hint = " — newer than this egoqa: upgrade egoqa (pip install -U egoqa) to use it"
    else:
        hint = " — run `egoqa db upgrade`"
    typer.echo(f"{shown_url(url)}: schema {s.current or 'none'}, egoqa head {s.head}{hint}")


def register(app: typer.Typer, db_app: typer.Typer) -> None:
    """Add the queue's commands to the egoqa app, and `db`'s to its group."""
    app.command()(enqueue)
    app.command()(status)
    app.command()(runs)
    app.command()(sql)
    app.command()(retry)
    db_app.command("upgrade")(db_upgrade)
    db_app.command("current")(db_current)
