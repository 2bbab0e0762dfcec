"""The ``buscad`` command line: a thin layer over the library.

Each command group lives beside the code it drives and exposes
``register(app)``; this module only assembles them. Heavy libraries are
imported inside the commands, so ``buscad --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from buscad import __version__
from buscad._cliutil import register_modules
from buscad.errors import BuscadError

app = typer.Typer(
    name="buscad",
    help="Breast UltraSound Computer-Aided Diagnosis: honest benign/malignant studies from one config.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Modules that add commands to the top-level app through ``register(app)``.
COMMAND_MODULES: tuple[str, ...] = (
    "buscad.data.cli",
    "buscad.models.cli",
    "buscad.radiomics_cli",
    "buscad.evaluate.cli",
    "buscad.study_cli",
    "buscad.serve.cli",
    "buscad.demo",
    "buscad.reader.cli",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"buscad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """buscad command line."""


register_modules(app, COMMAND_MODULES)


def main() -> None:
    """Console-script entry point: turns buscad's own errors into one-line messages."""
    try:
        app()
    except BuscadError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
