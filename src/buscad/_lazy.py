"""Names a module re-exports from others, imported on first use (PEP 562).

Used where importing the defining module eagerly would make a light command
heavy: ``buscad.data`` (pandas), ``buscad.evaluate`` (SciPy),
``buscad.radiomics.estimator.RadiomicsExtractor`` (scikit-learn).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    module: str, table: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``module``, resolving ``table[name]`` (a module path).

    Assign both at module level: ``__getattr__, __dir__ = lazy_exports(__name__, TABLE, globals())``.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *table])

    return __getattr__, __dir__
