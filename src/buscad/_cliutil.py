"""Assembly of command groups from the modules that define them."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import typer


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


# ----------------------------------------------------------------- help screens
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


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute."""
    p = Path(path).absolute()
    here = Path(cwd).absolute() if cwd is not None else Path.cwd()
    try:
        return str(p.relative_to(here))
    except ValueError:
        return str(p)


def output_lines(outputs: Mapping[str, str | os.PathLike[str]]) -> list[str]:
    """One aligned ``  name  path`` line per output (paths by :func:`display_path`)."""
    width = max((len(k) for k in outputs), default=0)
    return [f"  {k:<{width}}  {display_path(v)}" for k, v in outputs.items()]
