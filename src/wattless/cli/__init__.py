"""The command line: one verb per job. Each verb parses, calls the Python API, prints.

    energy.py   profile, targets, models, calibrate
    train.py    optimize
    search.py   search, report, demo
    export.py   export, bench
    serve.py    serve, cascade calibrate, cascade eval
    compare.py  compare (one model on digital, analog and neuromorphic targets)
    console.py  the one console (stdout) and the error console
    errors.py   one line on stderr and an exit code for every failure
"""

from __future__ import annotations

import sys

import typer

from wattless.cli import compare, energy, export, search, serve, train
from wattless.cli.errors import run

__all__ = ["app", "main"]

app = typer.Typer(
    name="wattless",
    help="Make neural networks structurally stingy and prove it in joules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _verbs in (energy, train, search, export, serve, compare):
    _verbs.register(app)


def main() -> None:
    """Run the command line: a WattlessError is one line and exit code 2, never a traceback."""
    sys.exit(run(app))
