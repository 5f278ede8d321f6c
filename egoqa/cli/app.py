"""The `egoqa` command line: thin commands that parse, call one core function, and render.

Data goes to stdout (rich tables, or --json / --csv); logs and progress go to stderr. Only
`EgoqaError`s are turned into one-line messages; anything else is a bug and shows a traceback.
Heavy modules (torch, transformers, decord) are imported by `work` and `dev` alone.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from egoqa import __version__
from egoqa.cli.common import (
    STATE,
    PlainFlagsGroup,
    configure_logging,
)
from egoqa.errors import EgoqaError

app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Multi-turn prompting of Qwen2.5-VL over Ego4D NLQ, as a resumable job system.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Create, upgrade and inspect the database schema.",
    no_args_is_help=True,
)
dev_app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Offline inputs (a tiny Qwen2.5-VL, a synthetic dataset) and a local OpenAI-compatible server.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"egoqa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="EGOQA_DB", help="Database path or URL (default ./egoqa.db)."),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option(
            "-v",
            "--verbose",
            count=True,
            show_default=False,
            help="More logging on stderr (-vv for debug).",
        ),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Plan with `enqueue`, run with `work`, watch with `status`, read with `report` and `sql`."""
    STATE.db = db
    configure_logging(verbose)


from egoqa.cli import dev, proposals, queue, report, work  # noqa: E402

# In the order `egoqa --help` lists them: the queue, working, the demo, reading.
queue.register(app, db_app)
work.register(app)
dev.register(app, dev_app)
report.register(app)
proposals.register(app)


def main() -> None:
    """Console entry point: the error boundary for the project's own errors."""
    from egoqa.work.stopping import unblock_stop_signals

    unblock_stop_signals()  # Ctrl-C and SIGTERM reach every command, whatever mask we inherited
    try:
        app()
    except EgoqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
