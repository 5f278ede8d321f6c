"""`egoqa proposals import`: a grounding model's candidate windows into the database, and the
enqueue of `--config proposals:NAME` (the set scored as it is, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from egoqa.cli.common import PlainFlagsGroup, VerboseOpt, echo_finished_run

proposals_app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Candidate windows from a grounding model (GroundNLQ, OSGNet, SnAG...): import them.",
    no_args_is_help=True,
)


@proposals_app.command("import")
def import_(
    file: Annotated[
        Path, typer.Argument(help="An NLQ prediction file: results[].predicted_times, best first.")
    ],
    name: Annotated[str, typer.Option("--name", help="The set's name (replaces a set of it).")],
    verbose: VerboseOpt = 0,
) -> None:
    """Store a prediction file's windows as a proposal set, for `--config proposals:NAME` and
    the `rerank_proposals` style (`--set proposals=NAME`)."""
    from egoqa.cli.common import open_database
    from egoqa.plan.proposals import import_file

    n = import_file(open_database(create=True), file, name)
    typer.echo(
        f"proposal set {name}: {n} queries from {file}; score it alone with `egoqa enqueue "
        f"--config proposals:{name}`, rerank it with `--config coarse --set style=rerank_proposals "
        f"--set proposals={name}`"
    )


def enqueue_proposals(
    annotations: Path,
    videos: Path,
    config: str,
    metadata: Path | None,
    run: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """`egoqa enqueue --config proposals:NAME`: the set's windows written and scored now."""
    from egoqa.cli.common import open_database
    from egoqa.plan.dataset import load_nlq
    from egoqa.plan.proposals import PREFIX, enqueue_baseline

    name = config.removeprefix(PREFIX)
    dataset = load_nlq(annotations, videos, metadata, limit=limit)
    db = open_database(create=True)
    plan = enqueue_baseline(db, dataset, name, run or config, str(annotations))
    echo_finished_run(plan, config, as_json)


def register(app: typer.Typer) -> None:
    """Add the `proposals` group to the egoqa app."""
    app.add_typer(proposals_app, name="proposals")
