"""The buscad web app: ``create_app(predictor)`` and ``buscad serve BUNDLE``.

FastAPI is imported only when :func:`create_app` is first used, so the CLI
stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from buscad.serve.app import create_app

        return create_app
    raise AttributeError(name)
