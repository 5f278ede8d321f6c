"""The reading side's commands: `report` (tables, files, the HTML explorer), `export`, `cluster`,
and the enqueue of prior-only baselines (runs that need no model).

`report` and `export` read the database only (`--rescore` aside) and never import torch,
transformers or decord (`--html` imports the frame decoder for thumbnails, and only then)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from egoqa.cli.common import VerboseOpt, echo_finished_run

RunName = Annotated[str, typer.Option("--run", help="The run (see `egoqa runs`).")]


class ExportFormat(enum.StrEnum):
    NLQ = "nlq"


class Scoring(enum.StrEnum):
    EGOQA = "egoqa"
    ORIGINAL = "original"


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
    scoring: Annotated[
        Scoring,
        typer.Option(
            "--scoring",
            help="egoqa: coverage and the official NLQ metrics; original: the original "
            "pipeline's coverage exactly (its segment pattern, whole seconds, its categories).",
        ),
    ] = Scoring.EGOQA,
    verbose: VerboseOpt = 0,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write the run explorer (a static site: DIR/index.html)."),
    ] = None,
    thumbs: Annotated[
        int | None,
        typer.Option(
            "--thumbs", min=0, help="With --html: frame thumbnails per turn (0: none; default 8)."
        ),
    ] = None,
) -> None:
    """A run's metrics by query type, template and cluster, outcomes and failures; --html: explorer.

    Every enqueued query counts (a failure or an unparseable answer is a miss). `--out DIR`
    writes results.json, results.csv and charts; `--html DIR` a browsable explorer of every query.
    """
    from egoqa.cli.common import emit_table, open_database
    from egoqa.report import summary as rp
    from egoqa.report.files import write
    from egoqa.report.tables import tables

    _check_report_options(scoring, html, thumbs)
    compare = list(dict.fromkeys(c for c in compare or () if c != run))  # each run once
    if scoring is Scoring.ORIGINAL:
        _report_original(run, compare, out, as_json)
        return
    db = open_database(readonly=not rescore)
    if rescore:
        typer.echo(f"rescored {rp.rescore(db, run)} queries of run {run}", err=True)
    if html is not None:
        from egoqa.report.explorer import write_explorer

        page = write_explorer(db, run, html, compare, thumbs=8 if thumbs is None else thumbs)
        typer.echo(f"wrote the explorer: {page}", err=True)
    built = rp.build(db, run, compare or (), require_finished=html is None)
    if out is not None:
        for path in write(db, built, out):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(built, indent=2))
    else:
        for t in tables(built):
            emit_table(t.title, t.columns, t.rows, fit_first=t.fit_first)
    _notes(built["summary"], run)
    if compare:
        _compare_note(db, [run, *compare])


def _check_report_options(scoring, html: Path | None, thumbs: int | None) -> None:
    """Options that would do nothing here are refused, not ignored."""
    from egoqa.errors import EgoqaError

    if html is not None and scoring is Scoring.ORIGINAL:
        raise EgoqaError(
            "--html writes the explorer of the default scoring: drop --html or --scoring original"
        )
    if thumbs is not None and html is None:
        raise EgoqaError("--thumbs sets the explorer's thumbnails: add --html DIR, or drop it")


def _compare_note(db, runs: list[str]) -> None:
    """Runs over different queries are each scored over their own: say so beside the table."""
    from egoqa.report.summary import query_sets

    sets = query_sets(db, runs)
    common = set.intersection(*sets.values())
    if any(len(s) != len(common) for s in sets.values()):
        sizes = ", ".join(f"{r} {len(s)}" for r, s in sets.items())
        typer.echo(
            f"note: the runs compared hold different queries ({sizes}; {len(common)} in common):"
            " each is scored over its own",
            err=True,
        )


def _notes(summary: dict, run: str) -> None:
    if summary.get("unscored"):
        typer.echo(
            f"{summary['unscored']} finished queries are not scored yet (counted as "
            f"misses): run `egoqa report --run {run} --rescore`",
            err=True,
        )
    if summary.get("ground_truth") is False:
        typer.echo(
            f"run {run} has no ground truth (a test split): there is nothing to score; "
            f"`egoqa export --run {run} -o predictions.json` writes the file to submit",
            err=True,
        )


def _report_original(run: str, compare, out: Path | None, as_json: bool) -> None:
    from egoqa.cli.common import emit_table, open_database
    from egoqa.errors import EgoqaError
    from egoqa.report import original

    if compare:
        raise EgoqaError("--compare goes with the default scoring: drop it or --scoring original")
    built = original.build(open_database(readonly=True), run)
    if out is not None:
        for path in original.write(built, out):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in built.items() if k != "instances"}, indent=2))
        return
    for title, columns, rows in original.tables(built):
        emit_table(title, columns, rows)


def export(
    run: RunName,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="nlq: the official Ego4D NLQ prediction file.")
    ] = ExportFormat.NLQ,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default, or '-': stdout)."),
    ] = None,
    only_enqueued: Annotated[
        bool,
        typer.Option(
            "--only-enqueued",
            help="Leave out the queries that were skipped when the run was enqueued.",
        ),
    ] = False,
    allow_oracle: Annotated[
        bool,
        typer.Option(
            "--allow-oracle",
            help="Export a run whose zoom the ground truth chose (refused by default).",
        ),
    ] = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Write a run's predictions for the evaluation server (every query; misses as [[0.0, 0.0]]).

    Every query of the run's annotation file is written: the ones that could not be enqueued
    count as misses too, so the score is not inflated by leaving them out.
    """
    from egoqa.cli.common import open_database
    from egoqa.report.export import export_nlq
    from egoqa.report.output import check_file_target, write_text

    if output == Path("-"):  # the usual name for standard output
        output = None
    if output is not None:
        check_file_target(output, "-o")  # before any work is done for it
    db = open_database(readonly=True)
    done = export_nlq(db, run, only_enqueued=only_enqueued, allow_oracle=allow_oracle)
    text = json.dumps(done.predictions) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_text(output, text, "-o")
    typer.echo(_export_summary(done, run, output), err=True)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _export_summary(done, run: str, output: Path | None) -> str:
    """What the file holds, and what it does not, in one line."""
    where = f"to {output}" if output is not None else "to stdout"
    line = (
        f"wrote {done.written} predictions of run {run} {where}: {done.enqueued} enqueued "
        f"({done.misses} misses)"
    )
    if done.skipped:
        n = sum(done.skipped.values())
        line += f", {n} skipped when enqueued, written as misses ({_counts(done.skipped)})"
    if done.left_out:
        n = sum(done.left_out.values())
        line += f"; {n} skipped queries left out by --only-enqueued ({_counts(done.left_out)})"
    if done.no_query_id:
        n = sum(done.no_query_id.values())
        line += f"; {n} skipped records carry no query id and cannot be exported"
        line += f" ({_counts(done.no_query_id)})"
    if not done.skips_recorded:
        line += (
            "; this run holds no record of what its annotation file skipped: enqueue it "
            "again (nothing is recomputed) to count those queries"
        )
    return line


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
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=2**32 - 1, help="k-means seed (0 to 2^32-1).")
    ] = 0,
    verbose: VerboseOpt = 0,
) -> None:
    """Group the run's queries by meaning (k-means, k by silhouette) and store it for `report`."""
    from egoqa.cli.common import emit_table, open_database
    from egoqa.report.clusters import check_embeddings, cluster_run

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
    from egoqa.cli.common import open_database
    from egoqa.errors import ConfigError
    from egoqa.plan.dataset import load_nlq
    from egoqa.plan.priors import enqueue_prior_run, is_prior, parse_prior

    if not is_prior(config):
        raise ConfigError(f"--fit is for prior runs (--config prior:length_prior), not {config!r}")
    if recompute:
        raise ConfigError(
            "--recompute: a prior run is computed at enqueue; there is no job to redo"
        )
    prior = parse_prior(config, list(overrides or ()), fit)
    if fit is not None and _same_file(fit, annotations):
        typer.echo(
            f"warning: --fit {fit} is the file being evaluated: the prior learns from the very "
            "answers it is scored on (an upper bound, not a baseline); fit on a training split",
            err=True,
        )
    dataset = load_nlq(annotations, videos, metadata, limit=limit)
    name = run or config
    plan = enqueue_prior_run(open_database(create=True), dataset, prior, name, str(annotations))
    echo_finished_run(plan, prior.model, as_json)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def demo_explorer(directory: Path, compare: tuple[str, ...] = ()) -> Path:
    """The demo's last step: cluster the demo run's queries, write its explorer (beside the runs
    in `compare`), print the path."""
    from egoqa.cli.common import open_database
    from egoqa.report.clusters import cluster_run
    from egoqa.report.explorer import write_explorer

    db = open_database()
    cluster_run(db, "demo")
    page = write_explorer(db, "demo", directory / "explorer", compare).absolute()
    typer.echo(f"explorer: {page}")
    return page


def register(app: typer.Typer) -> None:
    """Add `report`, `export` and `cluster` to the egoqa app."""
    app.command()(report)
    app.command()(export)
    app.command()(cluster)
