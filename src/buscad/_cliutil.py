"""Assembly of command groups from the modules that define them."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

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
