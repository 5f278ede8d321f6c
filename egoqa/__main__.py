"""`python -m egoqa` runs the CLI (the supervisor starts its workers this way)."""

from egoqa.cli.app import main

main()
