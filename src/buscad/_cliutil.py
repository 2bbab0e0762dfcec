"""Assembly of command groups from the modules that define them."""

from __future__ import annotations

import importlib
import os
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
