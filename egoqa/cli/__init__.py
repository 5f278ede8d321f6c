"""The commands: each parses its options, calls one function of a stage below, and prints.

May import every room; nothing imports `cli` (the console script and `python -m egoqa` enter at
`egoqa.cli.app:main`).
"""
