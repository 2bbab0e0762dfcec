"""The ``buscad`` command line: a thin layer over the library.

Each command group lives beside the code it drives and exposes
``register(app)``; this module only assembles them. Heavy libraries are
imported inside the commands, so ``buscad --help`` stays fast.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable

import typer

from buscad import __version__
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
    "demo": "buscad.data.cli",
    "reader": "buscad.reader.cli",
    "segment": "buscad.segment.cli",
}


# ------------------------------------------------ assembly and help screens
def register_modules(app: typer.Typer, names: Iterable[str]) -> list[str]:
    """Import each module and call its ``register(app)``; return the names registered.

    A module that does not exist yet (that part of buscad is not built) is
    skipped; any other import error propagates, so a broken module is never
    hidden.
    """
    done = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        mod.register(app)
        done.append(name)
    return done


def _type_word(param: typer.core.TyperOption | typer.core.TyperArgument) -> str | None:
    """What an option's value is, in one word of the help screen (None for a flag)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if param.metavar:
        return param.metavar
    desc = param.type_descriptor
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if desc.is_path:
        return "PATH"
    name = param._bare_type(desc.annotation)
    if desc.is_list:
        name = name.removeprefix("list[").removesuffix("]")
    return {
        "int": "INTEGER",
        "float": "NUMBER",
        "str": "TEXT",
        "bool": "BOOLEAN",
        "Path": "PATH",
    }.get(name, "TEXT")


def _range_words(lo: object, hi: object) -> str | None:
    if lo is not None and hi is not None:
        return f"from {lo} to {hi}"
    if lo is not None:
        return f"at least {lo}"
    if hi is not None:
        return f"at most {hi}"
    return None


class _HelpOption(typer.core.TyperOption):
    """An option whose help shows ``PATH``/``INTEGER``/``TEXT`` (nothing for a flag)."""

    def display_type_rich(self, ctx: typer._click.Context) -> str | None:  # type: ignore[name-defined]
        return _type_word(self)

    def _get_number_range_help_str(self) -> str | None:
        if self.count:
            return None
        return _range_words(self.min, self.max)


class _HelpArgument(typer.core.TyperArgument):
    """An argument shown by its upper-case name (``MANIFEST``, ``IMAGES...``), no type label."""

    def _name_word(self) -> str:
        return self.metavar or str(self.name).upper()

    def display_type_rich(self, ctx: typer._click.Context) -> str | None:  # type: ignore[name-defined]
        return None

    def _rich_display_name(self) -> str:
        return self._name_word() + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self._name_word() + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"

    def _get_number_range_help_str(self) -> str | None:
        return _range_words(self.min, self.max)


_LITERAL = re.compile(r"``([^`]+)``")


def _plain(text: str | None) -> str | None:
    """Help text without reStructuredText literals (``x`` -> x): docstrings are also numpydoc."""
    return None if text is None else _LITERAL.sub(r"\1", text)


def tidy_help(cmd: object) -> None:
    """Make every help screen of a command tree free of type artefacts.

    Typer shows ``<bool>`` beside flags, ``<list[Path]>`` and ``<int range>`` beside
    options and ``{manifest}`` for arguments; buscad's help shows flags bare,
    ``PATH``, ``INTEGER``, ``NUMBER`` or ``TEXT`` beside options (or their
    ``metavar``), ranges in words (``at least 1``) and arguments by their
    upper-case name. Rich markup is off, so text such as ``buscad[ray]`` prints
    as written, and reStructuredText literals in docstrings lose their backquotes.
    """
    for attr in ("help", "short_help"):
        if isinstance(getattr(cmd, attr, None), str):
            setattr(cmd, attr, _plain(getattr(cmd, attr)))
    for p in getattr(cmd, "params", []):
        if isinstance(getattr(p, "help", None), str):
            p.help = _plain(p.help)
        if type(p) is typer.core.TyperOption:
            p.__class__ = _HelpOption
        elif type(p) is typer.core.TyperArgument:
            p.__class__ = _HelpArgument
    if hasattr(cmd, "rich_markup_mode"):
        cmd.rich_markup_mode = None
    for sub in getattr(cmd, "commands", {}).values():
        tidy_help(sub)


class HelpGroup(typer.core.TyperGroup):
    """The root group of ``buscad``: tidies every command's help (:func:`tidy_help`)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        tidy_help(self)


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
