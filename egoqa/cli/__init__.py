"""The commands: each parses its options, calls one function of a stage below, and prints.

May import every room; nothing imports `cli` (the console script and `python -m egoqa` enter at
`egoqa.cli:main`, which runs `egoqa.cli.app`).
"""


def main() -> None:
    """The console script's entry point (`egoqa = "egoqa.cli:main"`): the app of `cli.app`."""
    from egoqa.cli.app import main as run

    run()
