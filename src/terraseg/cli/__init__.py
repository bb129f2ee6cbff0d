"""The ``terraseg`` command: a thin layer that parses arguments and calls the library.

Every sub-command has ``--help`` with an example. User errors (a missing file, an unknown
class, a bad option) print one line ``error: ...`` on stderr and exit with status 1.
Each sub-command lives in its own module, imported here to register it on :data:`app`.
"""

from __future__ import annotations

import sys

from terraseg.cli import (  # noqa: F401  (register sub-commands)
    adapt,
    aggregate,
    bags,
    convert_masks,
    distill,
    ensemble,
    eval_masks,
    infer,
    inspect,
    ontology,
    query,
    report,
    run,
    sim,
    train,
)
from terraseg.cli.app import app, user_errors

__all__ = ["app", "main", "user_errors"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="terraseg")
