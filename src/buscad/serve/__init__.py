"""The buscad web app: ``create_app(predictor)`` and ``buscad serve BUNDLE``.

FastAPI is imported only when :func:`create_app` is first used, so the CLI
stays fast.

Owns: the FastAPI app (pages, the predict/report API, reader-study routes), upload decoding
with its limits, the one-page case report and ``buscad serve``. May import: bundle (the
Predictor it serves), reader (the study store), explain (colour map), data (readers), report
(the case report's template and stylesheet), errors, utils. Nothing imports serve except the
command line. Layout: ``app`` (create_app), ``routes/`` (one router per area), ``middleware``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from buscad.serve.app import create_app

        return create_app
    raise AttributeError(name)
