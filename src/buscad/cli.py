"""The ``buscad`` command line: a thin layer over the library.

Each command group lives beside the code it drives and exposes
``register(app)``; this module only assembles them. Heavy libraries are
imported inside the commands, so ``buscad --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from buscad import __version__
from buscad._cliutil import HelpGroup, register_modules
from buscad.errors import BuscadError

#: Modules that add commands to the top-level app through ``register(app)``.
COMMAND_MODULES: tuple[str, ...] = (
    "buscad.data.cli",
    "buscad.models.cli",
    "buscad.radiomics.cli",
    "buscad.evaluate.cli",
    "buscad.study.cli",
    "buscad.bundle.cli",
    "buscad.explain.cli",
    "buscad.serve.cli",
    "buscad.demo",
    "buscad.reader.cli",
    "buscad.segment.cli",
)

#: Top-level command -> the module that registers it. ``main`` imports only that
#: module when the command line names one, so ``buscad predict`` does not load
#: pandas, SciPy or PyTorch for commands it does not run (``tests/test_cli.py``
#: checks this table against what the modules register).
COMMANDS: dict[str, str] = {
    "data": "buscad.data.cli",
    "train": "buscad.models.cli",
    "compare-backbones": "buscad.models.cli",
    "features": "buscad.models.cli",
    "explain": "buscad.explain.cli",
    "export-onnx": "buscad.models.cli",
    "radiomics": "buscad.radiomics.cli",
    "evaluate": "buscad.evaluate.cli",
    "predict": "buscad.bundle.cli",
    "study": "buscad.study.cli",
    "serve": "buscad.serve.cli",
    "demo": "buscad.demo",
    "reader": "buscad.reader.cli",
    "segment": "buscad.segment.cli",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"buscad {__version__}")
        raise typer.Exit()


def build_app(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """The ``buscad`` Typer app with the commands of ``modules``."""
    app = typer.Typer(
        name="buscad",
        help="Breast UltraSound Computer-Aided Diagnosis: honest benign/malignant studies from one config.",
        no_args_is_help=True,
        add_completion=False,
        cls=HelpGroup,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        ctx: typer.Context,
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ) -> None:
        """buscad command line."""
        from buscad.progress import reporting

        # every long loop of the command shows its progress on standard error: a bar on a
        # terminal, plain periodic lines in a log (buscad.progress)
        ctx.with_resource(reporting())

    register_modules(app, modules)
    return app


_APP: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    """``buscad.cli.app``: the full app, built on first use."""
    global _APP
    if name == "app":
        if _APP is None:
            _APP = build_app()
        return _APP
    raise AttributeError(f"module 'buscad.cli' has no attribute {name!r}")


#: Commands whose process ends without interpreter teardown when run from the shell:
#: every output is written and flushed by then, and unloading ONNX Runtime and
#: SimpleITK would add 0.15-0.25 s to a command meant to answer in under a second.
FAST_EXIT_COMMANDS: frozenset[str] = frozenset({"predict"})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: turns buscad's own errors into one-line messages."""
    args = sys.argv[1:] if argv is None else list(argv)
    modules = (COMMANDS[args[0]],) if args and args[0] in COMMANDS else COMMAND_MODULES
    code: int | str | None = 0
    try:
        build_app(modules)(args=args, prog_name="buscad")
    except BuscadError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 2
    except SystemExit as exc:
        code = exc.code
    if argv is None and args and args[0] in FAST_EXIT_COMMANDS:
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
