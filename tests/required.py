"""Tools the suite needs beyond the Python dependencies: Chromium, Playwright, Ray.

On a developer's machine a test whose tool is missing is skipped with the reason. In
CI (``CI=true``, as ``.ci/run`` is run there) the same test fails instead, so a clean
CI run cannot pass while silently skipping the browser or Ray tests. Tests that need
the real data in ``../shared/data`` do not use this: they stay skipped, with the
reason printed in the summary (``make test`` passes ``-rs``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the suite runs in CI: the environment variable ``CI`` is ``true``."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip with ``reason``; under ``CI=true`` fail with it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs it; nothing may skip for it)", False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def require_module(name: str, reason: str, *, allow_module_level: bool = False) -> ModuleType:
    """Import ``name``; when it is missing, :func:`missing` with ``reason``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(reason, allow_module_level=allow_module_level)
