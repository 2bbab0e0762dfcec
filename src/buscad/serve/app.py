"""The buscad web app: AI decision support for one image, and reader-study sessions.

``create_app(predictor)`` builds a FastAPI app around any object that follows
:class:`buscad.bundle.types.Predictor` (normally a loaded model bundle).

Pages: ``/`` (open an image, draw a box or upload a mask, see the AI score,
the likelihood band, the Grad-CAM overlay and each model's score, print or
save a one-page report) and ``/reader`` (reader-study sessions and the
organiser's panel). The JSON API under ``/api`` does the same for programs;
its OpenAPI description is at ``/openapi.json`` and ``/docs``.

Robustness: request bodies above the upload limit are refused with 413 before
they are read; file types are checked by content; a corrupt or unsupported
file gets a 4xx with a one-line message; uploads are decoded on a bounded pool
(``max_decodes`` at a time, each within ``decode_timeout_s``); model inference
runs in a worker thread (``workers`` at a time), never on the event loop.
Nothing uploaded is written to disk: uploads are decoded from an anonymous
in-memory file and forgotten when the response is sent; a report is saved only
when the user downloads it.

Security: every response carries a Content-Security-Policy (no inline script,
no framing), ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
``Referrer-Policy: no-referrer``; the Host header must name this machine
(``allowed_hosts``), against DNS rebinding. Reader-study routes need a bearer
token (the organiser's, or the reader's own); study manifests are chosen by
name inside the server's ``study_dir``, never by a client path; and while a
study is served the open case screen is off unless ``open_case_screen``.

Layout: this module builds the app; the routes are FastAPI routers by area in
:mod:`buscad.serve.routes` (``pages``, ``info``, ``predict``, ``study``) sharing one
:class:`~buscad.serve.routes.state.AppState` on ``app.state.buscad``; middleware, limits
and error handlers are in :mod:`buscad.serve.middleware`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI

from buscad import __version__
from buscad.bundle.types import Predictor
from buscad.serve import imaging
from buscad.serve.middleware import (
    CSP,
    DOCS_CSP,
    LOCAL_HOSTS,
    SECURITY_HEADERS,
    BodySizeLimit,
    SecurityHeaders,
    add_error_handlers,
    add_middleware,
)
from buscad.serve.routes import info, pages, predict, study
from buscad.serve.routes.pages import STATIC_DIR
from buscad.serve.routes.state import WHOLE_IMAGE_NOTE, AppState, parse_clinical


def create_app(
    predictor: Predictor,
    *,
    study_db: Path | str | None = None,
    study_dir: Path | str | None = None,
    max_upload_mb: float = 50,
    workers: int = 1,
    study_clock: Callable[[], datetime] | None = None,
    open_case_screen: bool | None = None,
    allowed_hosts: list[str] | tuple[str, ...] = (),
    decode_timeout_s: float = 20.0,
    max_decodes: int = 2,
) -> FastAPI:
    """Build the web app around a predictor.

    Parameters
    ----------
    predictor : Predictor
        A loaded model bundle (or anything following the protocol).
    study_db : path-like, optional
        SQLite file of the reader study (created by the organiser from the app
        or with ``buscad reader create``); None disables reader-study mode.
    study_dir : path-like, optional
        Folder of the manifests the organiser may create a study from in the
        app (by file name only); None: studies are created with ``buscad reader
        create`` only.
    max_upload_mb : float, default 50
        Largest accepted request: the image and an optional mask together (plus a
        small allowance for the form); larger bodies are refused with 413 before
        they are read.
    workers : int, default 1
        Predictions run at once, on a dedicated pool of this many threads (also
        used for the reader study's AI results). Torch on few cores gains
        nothing from more.
    study_clock : callable, optional
        Clock for the reader study (tests inject a fake one).
    open_case_screen : bool, optional
        Serve the open case screen (``/``, ``/api/predict``, ``/api/heatmap``,
        ``/api/report``, ``/api/preview``). Default: on without a study, off with
        one (a reader in round 1 must not get AI output for a study case).
    allowed_hosts : sequence of str
        Host names accepted besides :data:`LOCAL_HOSTS` (e.g. the name the server
        is reached by); any other ``Host`` header gets 400 (DNS rebinding).
    decode_timeout_s : float, default 20
        Longest wait for a decoding slot (then 503) and longest decode of one
        upload (then 422).
    max_decodes : int, default 2
        Uploads decoded at once; a slot is freed only when its decode has ended.

    Returns
    -------
    fastapi.FastAPI
    """
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    if decode_timeout_s <= 0 or max_decodes < 1:
        raise ValueError("decode_timeout_s must be > 0 and max_decodes >= 1")
    imaging.clear_stale_uploads()  # files a killed earlier process left behind
    study_path = Path(study_db) if study_db is not None else None
    state = AppState(
        predictor,
        max_upload_mb=max_upload_mb,
        workers=workers,
        case_screen=(study_path is None) if open_case_screen is None else bool(open_case_screen),
        study_path=study_path,
        study_dir=Path(study_dir) if study_dir is not None else None,
        study_clock=study_clock,
        decode_timeout_s=decode_timeout_s,
        max_decodes=max_decodes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        title="buscad",
        version=__version__,
        description=(
            "Breast ultrasound AI decision support: calibrated probability of malignancy, "
            "BI-RADS-aligned likelihood band (decision support only), Grad-CAM heatmap, case "
            "reports, and reader-study sessions. Research software, not a medical device."
        ),
    )
    add_middleware(app, state.max_bytes, allowed_hosts)
    add_error_handlers(app)
    app.state.buscad = state
    app.state.predictor = predictor
    app.state.max_bytes = state.max_bytes
    if study_path is not None:
        from buscad.reader.store import ReaderStudy

        ReaderStudy.prepare(study_path)  # tables for the tokens, before any study exists
    app.include_router(pages.router)
    pages.mount_static(app)
    app.include_router(info.router)
    app.include_router(predict.router)
    app.include_router(study.router)
    return app


__all__ = [
    "CSP",
    "DOCS_CSP",
    "LOCAL_HOSTS",
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "WHOLE_IMAGE_NOTE",
    "BodySizeLimit",
    "SecurityHeaders",
    "create_app",
    "parse_clinical",
]
