"""The reading side's commands: `report` (tables, files, the HTML explorer), `export`, `cluster`,
and the enqueue of prior-only baselines (runs that need no model).

`report` and `export` read the database only (`--rescore` aside) and never import torch,
transformers or decord (`--html` imports the frame decoder for thumbnails, and only then).
`egoqa.cli` is imported inside the commands: it imports this module while it is being built.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

RunName = Annotated[str, typer.Option("--run", help="The run (see `egoqa runs`).")]


class ExportFormat(enum.StrEnum):
    NLQ = "nlq"


def report(
    run: RunName,
    compare: Annotated[
        list[str] | None,
        typer.Option("--compare", help="Another run to show side by side (repeat for more)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write results.json, results.csv and PNG charts here."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary and breakdowns as JSON.")
    ] = False,
    rescore: Annotated[
        bool,
        typer.Option("--rescore", help="Recompute scores from the stored responses first."),
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write the run explorer (a static site: DIR/index.html)."),
    ] = None,
    thumbs: Annotated[
        int,
        typer.Option("--thumbs", min=0, help="With --html: frame thumbnails per turn (0: none)."),
    ] = 8,
) -> None:
    """A run's metrics: overall, by query type, template and cluster, outcomes, failures (every
    query counts); `--html DIR` writes a browsable explorer of every query."""
    from egoqa import report as rp
    from egoqa.cli import emit_table, open_database

    db = open_database(readonly=not rescore)
    if rescore:
        typer.echo(f"rescored {rp.rescore(db, run)} queries of run {run}", err=True)
    if html is not None:
        from egoqa.explorer import write_explorer

        page = write_explorer(db, run, html, compare or (), thumbs=thumbs)
        typer.echo(f"wrote the explorer: {page}", err=True)
    built = rp.build(db, run, compare or (), require_finished=html is None)
    if out is not None:
        for path in rp.write(db, built, out):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(built, indent=2))
    else:
        for title, columns, rows in rp.tables(built):
            emit_table(title, columns, rows)
    if built["summary"]["unscored"]:
        typer.echo(
            f"{built['summary']['unscored']} finished queries are not scored yet (counted as "
            f"misses): run `egoqa report --run {run} --rescore`",
            err=True,
        )


def export(
    run: RunName,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="nlq: the official Ego4D NLQ prediction file.")
    ] = ExportFormat.NLQ,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Write a run's predictions for the official evaluation (every query; misses as [[0.0, 0.0]])."""
    from egoqa import report as rp
    from egoqa.cli import open_database

    predictions = rp.export_nlq(open_database(readonly=True), run)
    text = json.dumps(predictions) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    results = predictions["results"]
    misses = sum(1 for p in results if p["predicted_times"] == [[0.0, 0.0]])
    typer.echo(
        f"wrote {len(results)} predictions ({misses} misses) of run {run} to {output}", err=True
    )


def cluster(
    run: RunName,
    embeddings: Annotated[
        Path | None,
        typer.Option(
            "--embeddings",
            help="A local sentence-transformers model directory (default: TF-IDF of the words).",
        ),
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", min=1, help="Number of clusters (default: by silhouette).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="k-means seed.")] = 0,
) -> None:
    """Group the run's queries by meaning (k-means, k by silhouette) and store it for `report`."""
    from egoqa.cli import emit_table, open_database
    from egoqa.clusters import check_embeddings, cluster_run

    check_embeddings(embeddings)
    result = cluster_run(open_database(), run, seed=seed, k=k, embeddings=embeddings)
    sizes = {c: result.assignments.count(c) for c in result.labels}
    rows = [(c, sizes[c], label) for c, label in result.labels.items()]
    emit_table(f"run {run}: {result.k} clusters ({result.method})", ["cluster", "n", "words"], rows)


def enqueue_prior(
    annotations: Path,
    videos: Path,
    config: str,
    metadata: Path | None,
    run: str | None,
    overrides: list[str] | None,
    limit: int | None,
    recompute: bool,
    fit: Path | None,
    as_json: bool,
) -> None:
    """`egoqa enqueue --config prior:NAME`: predictions written and scored now, no worker needed."""
    from egoqa.cli import open_database
    from egoqa.dataset import load_nlq
    from egoqa.errors import ConfigError
    from egoqa.priors import enqueue_prior_run, is_prior, parse_prior

    if not is_prior(config):
        raise ConfigError(f"--fit is for prior runs (--config prior:length_prior), not {config!r}")
    if recompute:
        raise ConfigError(
            "--recompute: a prior run is computed at enqueue; there is no job to redo"
        )
    prior = parse_prior(config, list(overrides or ()), fit)
    dataset = load_nlq(annotations, videos, metadata, limit=limit)
    name = run or config
    plan = enqueue_prior_run(open_database(create=True), dataset, prior, name, str(annotations))
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=2))
        return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(plan.skipped.items())) or "none"
    typer.echo(
        f"run {plan.run}: {plan.queries} queries on {plan.clips} clips (skipped: {skipped})\n"
        f"{prior.model}: {plan.jobs_new} predictions written, {plan.jobs_reused} already there; "
        f"scored now, no worker needed — see `egoqa report --run {plan.run}`"
    )


def demo_explorer(directory: Path) -> Path:
    """The demo's last step: cluster the demo run's queries, write its explorer, print the path."""
    from egoqa.cli import open_database
    from egoqa.clusters import cluster_run
    from egoqa.explorer import write_explorer

    db = open_database()
    cluster_run(db, "demo")
    page = write_explorer(db, "demo", directory / "explorer").absolute()
    typer.echo(f"explorer: {page}")
    return page


def register(app: typer.Typer) -> None:
    """Add `report`, `export` and `cluster` to the egoqa app."""
    app.command()(report)
    app.command()(export)
    app.command()(cluster)
