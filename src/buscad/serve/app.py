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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, Field, StrictInt
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from buscad import __version__
from buscad.bundle.types import Prediction, Predictor
from buscad.errors import BuscadError, InputFileError
from buscad.serve import imaging
from buscad.serve.imaging import UploadError
from buscad.serve.report import REPORT_CSS, ReportContext, render_html, render_pdf

log = logging.getLogger("buscad.serve")
STATIC_DIR = Path(__file__).with_name("static")
#: Slack on top of the file limit for the multipart envelope and form fields.
_FORM_SLACK = 256 * 1024

#: Host names always accepted (this machine); ``allowed_hosts`` adds more.
LOCAL_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Manifest names and other client-given names: full match only.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_BEARER = HTTPBearer(auto_error=False, description="Organiser or reader token of the study")
#: Clinical inputs: at most this many keys, characters, and digits in a number.
CLINICAL_MAX_KEYS, CLINICAL_MAX_CHARS, CLINICAL_MAX_DIGITS = 64, 4096, 30


def _sha256_b64(text: str) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


#: The app's Content-Security-Policy. The hash admits the case report's one
#: ``<style>`` block (printed from an ``srcdoc`` frame); no inline script anywhere.
CSP = (
    "default-src 'self'; script-src 'self'; "
    f"style-src 'self' 'sha256-{_sha256_b64(REPORT_CSS)}'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
#: Swagger UI sets inline styles: /docs alone also allows them (scripts stay 'self').
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

WHOLE_IMAGE_NOTE = (
    "No box or mask was given: the whole image was read. Draw a box around the lesion "
    "(or upload its mask) for a lesion-level score."
)


# ------------------------------------------------------------------ limits


class SecurityHeaders:
    """ASGI middleware adding :data:`CSP` and :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope.get("path") == "/docs" else CSP

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                h = MutableHeaders(scope=msg)
                h["Content-Security-Policy"] = csp
                for k, v in SECURITY_HEADERS.items():
                    h[k] = v
            await send(msg)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimit:
    """ASGI middleware refusing request bodies above ``max_bytes`` with 413.

    A declared ``Content-Length`` above the limit is refused before anything
    is read; a chunked body is counted as it streams and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > limit:
                    await self._refuse(send, n)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge(seen)
            return msg

        try:
            await self.app(scope, counted, send)
        except _TooLarge as exc:
            await self._refuse(send, exc.n)

    async def _refuse(self, send: Send, n: int) -> None:
        mb = self.max_bytes - _FORM_SLACK
        body = json.dumps(
            {"detail": f"upload is larger than the {mb / 2**20:.3g} MB limit ({n / 2**20:.1f} MB)"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, n: int) -> None:
        self.n = n


class _MemoryMultiPartParser(MultiPartParser):
    """Multipart parser that keeps file parts in memory (never spooled to disk)."""

    def __init__(self, *args: Any, spool_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spool_max_size = spool_bytes


@dataclass
class UploadForm:
    """The fields of a predict/report request."""

    image: bytes
    mask: bytes | None = None
    box: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    heatmap: bool = True
    fields: dict[str, str] = field(default_factory=dict)


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, BMP, TIFF or DICOM (type checked by content)",
                        },
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "Optional binary lesion mask (PNG/BMP/TIFF, image size)",
                        },
                        "box": {
                            "type": "string",
                            "description": "Optional lesion box 'x0,y0,x1,y1' in image pixels",
                            "example": "40,50,140,130",
                        },
                        "clinical": {
                            "type": "string",
                            "description": 'Optional JSON object of clinical inputs, e.g. {"age": 54}',
                        },
                        "heatmap": {
                            "type": "boolean",
                            "default": True,
                            "description": "Compute the Grad-CAM heatmap",
                        },
                    },
                }
            }
        },
    }
}


# ----------------------------------------------------------- study models


def _reader_id(value: str) -> str:
    from buscad.reader.store import valid_reader_id

    if not valid_reader_id(value):
        raise ValueError(
            "reader id must be a pseudonym of 1-64 letters, digits, '_', '.', '-' (e.g. R01)"
        )
    return value


#: A reader pseudonym, checked with ``re.fullmatch`` (a trailing newline is refused).
ReaderId = Annotated[
    str,
    Field(max_length=64, description="Pseudonym, e.g. R01 (never a name)"),
    AfterValidator(_reader_id),
]


class StudyCreate(BaseModel):
    """Organiser's request to create the reader study."""

    manifest: str = Field(
        ...,
        max_length=128,
        description="Manifest file NAME in the server's study folder (--study-dir), not a path",
    )
    washout_days: float = Field(
        14.0, ge=0, le=3650, allow_inf_nan=False, description="Days between rounds 1 and 2"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Study seed for the readers' case orders")
    readers: list[ReaderId] = Field(
        default_factory=list, max_length=200, description="Reader pseudonyms to enrol"
    )


class ReaderRequest(BaseModel):
    """The organiser enrolling a reader or renewing their token."""

    reader_id: ReaderId


class SessionRequest(BaseModel):
    """A reader opening (or resuming) their session (the reader comes from the token)."""

    reader_id: ReaderId | None = Field(None, description="Optional; must be the token's reader")


class ReadRequest(BaseModel):
    """One read submitted by a reader."""

    case_id: str = Field(..., min_length=1, max_length=128)
    round: StrictInt = Field(..., ge=1, le=2, description="1 = without AI, 2 = with AI")
    birads: str = Field(..., max_length=8, description="BI-RADS category: 1, 2, 3, 4a, 4b, 4c or 5")
    confidence: float | None = Field(
        None,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Reader's probability of malignancy 0-100 (optional)",
    )
    client_time_s: float | None = Field(
        None, description="Seconds from the case being shown to submission, measured in the browser"
    )


# --------------------------------------------------------------- the app


class _CaseCache:
    """Small LRU of decoded study cases and their predictions (in memory only)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


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
    max_bytes = int(max_upload_mb * 2**20)
    imaging.clear_stale_uploads()  # files a killed earlier process left behind
    # Inference runs on its own small pool: the same thread(s) every time (torch keeps
    # per-thread state and the allocator per-thread arenas, so memory stays flat).
    pool: list[ThreadPoolExecutor] = []
    pool_lock = threading.Lock()

    def executor() -> ThreadPoolExecutor:
        with pool_lock:
            if not pool:
                pool.append(
                    ThreadPoolExecutor(
                        max_workers=max(1, int(workers)), thread_name_prefix="predict"
                    )
                )
            return pool[0]

    decode_slots = threading.BoundedSemaphore(int(max_decodes))
    decode_pool: list[ThreadPoolExecutor] = []

    def decoder() -> ThreadPoolExecutor:
        with pool_lock:
            if not decode_pool:
                decode_pool.append(
                    ThreadPoolExecutor(
                        max_workers=int(max_decodes) + 1, thread_name_prefix="decode"
                    )
                )
            return decode_pool[0]

    async def run_decode(fn: Callable[..., Any], *args: Any) -> Any:
        """Run a decode with a bounded number at once and a time limit.

        The slot is released by the decode thread itself when it really ends, so
        a decode that outlives its request still counts against the limit.
        """
        deadline = time.monotonic() + decode_timeout_s
        while not decode_slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise UploadError(
                    503, "the server is busy decoding other uploads; try again in a moment"
                )
            await asyncio.sleep(0.01)

        def job() -> Any:
            try:
                return fn(*args)
            finally:
                decode_slots.release()

        try:
            fut = decoder().submit(job)
        except BaseException:
            decode_slots.release()
            raise
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(fut)), timeout=decode_timeout_s
            )
        except TimeoutError as exc:
            raise UploadError(
                422, f"the upload took longer than {decode_timeout_s:g} s to decode; it was refused"
            ) from exc

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        with pool_lock:
            while pool:
                pool.pop().shutdown(wait=False, cancel_futures=True)
            while decode_pool:
                decode_pool.pop().shutdown(wait=False, cancel_futures=True)

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
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes + _FORM_SLACK)
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=[*LOCAL_HOSTS, *[h for h in allowed_hosts if h]]
    )
    app.add_middleware(SecurityHeaders)  # outermost: also on 400/413 answers of the others
    app.state.predictor = predictor
    app.state.max_bytes = max_bytes
    study_path = Path(study_db) if study_db is not None else None
    study_dir = Path(study_dir) if study_dir is not None else None
    case_screen = (study_path is None) if open_case_screen is None else bool(open_case_screen)
    if study_path is not None:
        from buscad.reader.store import ReaderStudy

        ReaderStudy.prepare(study_path)  # tables for the tokens, before any study exists
    cases = _CaseCache()
    served: dict[tuple[str, int, str], float] = {}

    def predict_blocking(**kw: Any) -> Prediction:
        """Run the predictor on the inference pool and wait (for worker threads)."""
        return executor().submit(functools.partial(predictor.predict, **kw)).result()

    async def run_predict(**kw: Any) -> Prediction:
        """Run the predictor off the event loop; bad input becomes a 422."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor(), functools.partial(predictor.predict, **kw)
            )
        except (BuscadError, ValueError) as exc:
            raise UploadError(422, f"the model could not read this input: {exc}") from exc

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming the fields and problems; never echoes the input (it may be NaN or huge)."""
        errors = [
            {
                "loc": [str(x)[:64] for x in e.get("loc", ())],
                "msg": str(e.get("msg", ""))[:200],
                "type": str(e.get("type", ""))[:64],
            }
            for e in exc.errors()[:20]
        ]
        text = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(
            {"detail": " ".join(f"invalid request: {text}".split()), "errors": errors}, 422
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.error("internal error: %s", type(exc).__name__)
        # this answer bypasses the middleware: add the security headers here
        return JSONResponse(
            {"detail": "internal error; the server keeps running"},
            500,
            headers={"Content-Security-Policy": CSP, **SECURITY_HEADERS},
        )

    def require_case_screen() -> None:
        if not case_screen:
            raise UploadError(
                403,
                "the open case screen is off while a reader study is served "
                "(the organiser may start the server with --open-case-screen)",
            )

    # ---------------------------------------------------------- parsing
    async def read_form(request: Request) -> UploadForm:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise UploadError(415, "send the image as multipart/form-data (field 'image')")
        parser = _MemoryMultiPartParser(
            request.headers,
            request.stream(),
            max_files=2,
            max_fields=8,
            max_part_size=64 * 1024,
            spool_bytes=max_bytes + _FORM_SLACK + 1,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise UploadError(400, f"malformed form: {exc.message}") from exc
        try:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise UploadError(400, "no image: send the file in the form field 'image'")
            data = await image.read()
            if len(data) > max_bytes:
                raise UploadError(413, imaging._too_large("image", len(data), max_bytes))
            mask_data = None
            mask = form.get("mask")
            if isinstance(mask, UploadFile):
                mask_data = await mask.read()
                if not mask_data and not mask.filename:
                    mask_data = None  # an empty file input sends an empty, unnamed part
            elif isinstance(mask, str) and mask:
                raise UploadError(400, "the 'mask' field must be a file")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()
        clinical = parse_clinical(fields.get("clinical", ""))
        hm = fields.get("heatmap", "true").strip().lower() not in ("0", "false", "no", "off")
        return UploadForm(
            image=data,
            mask=mask_data,
            box=fields.get("box"),
            clinical=clinical,
            heatmap=hm,
            fields=fields,
        )

    async def predict_upload(form: UploadForm, heatmap: bool | None = None):
        img = await run_decode(imaging.decode_image, form.image, max_bytes)
        mask = None
        if form.mask is not None:
            mask = await run_decode(imaging.decode_mask, form.mask, img.shape, max_bytes)
        box = imaging.parse_box(form.box, img.shape)
        pred = await run_predict(
            gray=img.gray,
            mask=mask,
            box=box if mask is None else None,
            clinical=form.clinical or None,
            heatmap=form.heatmap if heatmap is None else heatmap,
        )
        return img, pred

    def prediction_json(pred: Prediction, img: imaging.DecodedImage | None) -> dict[str, Any]:
        d = _clean(pred.to_json())
        d["roi_note"] = WHOLE_IMAGE_NOTE if pred.roi_source == "whole" else None
        d["bundle"] = {"name": predictor.name, "version": _bundle_version(predictor)}
        if img is not None:
            h, w = img.shape
            d["image"] = {"width": w, "height": h, "format": img.format}
            d["warnings"] = list(img.warnings)
        return d

    def report_ctx(img: imaging.DecodedImage) -> ReportContext:
        return ReportContext(
            bundle_name=str(predictor.name),
            bundle_version=_bundle_version(predictor),
            created_at=datetime.now(UTC),
            image_size=img.shape,
            warnings=img.warnings,
        )

    # ------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        if not case_screen:
            return RedirectResponse("/reader", status_code=303)
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    swagger_ui_path = _swagger_ui_dir()
    if swagger_ui_path is not None:
        app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """Swagger UI 5 from local files (the fastapi-offline package's copy); no CDN."""
        if swagger_ui_path is None:  # pragma: no cover
            raise HTTPException(404, "API docs need the fastapi-offline package; see /openapi.json")
        return FileResponse(STATIC_DIR / "docs.html")

    @app.get("/reader", include_in_schema=False)
    async def reader_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "reader.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # -------------------------------------------------------------- API
    @app.get("/api/health", tags=["app"])
    async def health() -> dict[str, Any]:
        """Liveness check."""
        return {"status": "ok"}

    @app.get("/api/info", tags=["app"])
    async def info() -> dict[str, Any]:
        """The bundle served, its threshold and models, and the app's limits."""
        return {
            "buscad_version": __version__,
            "bundle": {"name": predictor.name, "version": _bundle_version(predictor)},
            "threshold": float(predictor.threshold),
            "primary_model": predictor.primary_model,
            "model_names": list(predictor.model_names),
            "clinical_inputs": list(predictor.clinical_inputs),
            "max_upload_mb": max_upload_mb,
            "reader_study": study_path is not None,
            "case_screen": case_screen,
            "decision_support_note": _note(),
            "whole_image_note": WHOLE_IMAGE_NOTE,
        }

    @app.post("/api/preview", tags=["predict"], openapi_extra=_UPLOAD_SCHEMA)
    async def preview(request: Request) -> Response:
        """The uploaded image as a de-identified 8-bit PNG (pixels only; DICOM headers dropped).

        Warnings about the image (e.g. possible burned-in patient text) come in the
        ``X-Buscad-Warnings`` header as a JSON list.
        """
        require_case_screen()
        form = await read_form(request)
        img = await run_decode(imaging.decode_image, form.image, max_bytes)
        png = await anyio.to_thread.run_sync(imaging.gray_png, img.gray)
        warn = json.dumps(list(img.warnings), ensure_ascii=True)
        return Response(
            png, media_type="image/png", headers={**_no_store(), "X-Buscad-Warnings": warn}
        )

    @app.post("/api/predict", tags=["predict"], openapi_extra=_UPLOAD_SCHEMA)
    async def predict(request: Request) -> JSONResponse:
        """Score one image: AI score, threshold, decision, likelihood band, model scores.

        The region read is the mask if given, else the box, else the whole image
        (``roi_source``; ``roi_note`` says so). With ``heatmap`` (default) the
        response carries ``heatmap_png``: a base64 RGBA PNG to stack over the image.
        ``warnings`` lists concerns about the image (e.g. burned-in patient text).
        """
        require_case_screen()
        form = await read_form(request)
        img, pred = await predict_upload(form)
        d = prediction_json(pred, img)
        if pred.heatmap is not None:
            png = await anyio.to_thread.run_sync(imaging.heatmap_png, pred.heatmap)
            d["heatmap_png"] = _b64(png)
        else:
            d["heatmap_png"] = None
        return JSONResponse(d, headers=_no_store())

    @app.post("/api/heatmap", tags=["predict"], openapi_extra=_UPLOAD_SCHEMA)
    async def heatmap(request: Request) -> Response:
        """The Grad-CAM heatmap as an RGBA PNG (image size; transparent outside the region)."""
        require_case_screen()
        form = await read_form(request)
        _, pred = await predict_upload(form, heatmap=True)
        if pred.heatmap is None:
            raise HTTPException(422, "the model gave no heatmap for this image")
        png = await anyio.to_thread.run_sync(imaging.heatmap_png, pred.heatmap)
        return Response(png, media_type="image/png", headers=_no_store())

    @app.post("/api/report", tags=["predict"], openapi_extra=_UPLOAD_SCHEMA)
    async def report(request: Request, format: str = "html") -> Response:
        """One-page case report as HTML (``format=html``) or PDF (``format=pdf``).

        Nothing is stored on the server: the report is the response.
        """
        require_case_screen()
        if format not in ("html", "pdf"):
            raise UploadError(422, f"format must be html or pdf, got {format[:20]!r}")
        form = await read_form(request)
        img, pred = await predict_upload(form, heatmap=True)
        ctx = report_ctx(img)
        stamp = ctx.created_at.strftime("%Y%m%d-%H%M%S")
        if format == "pdf":
            body = await anyio.to_thread.run_sync(render_pdf, pred, img.gray, ctx)
            media = "application/pdf"
        else:
            body = (await anyio.to_thread.run_sync(render_html, pred, img.gray, ctx)).encode()
            media = "text/html; charset=utf-8"
        headers = {
            "Content-Disposition": f'attachment; filename="buscad-report-{stamp}.{format}"',
            **_no_store(),
        }
        return Response(body, media_type=media, headers=headers)

    # ------------------------------------------------------ reader study
    from buscad.reader.store import Identity

    def study():
        from buscad.reader.store import ReaderStudy, ReaderStudyError

        if study_path is None:
            raise HTTPException(404, "reader-study mode is off: start with --study-db PATH")
        try:
            return ReaderStudy.open(study_path, clock=study_clock)
        except ReaderStudyError as exc:
            raise HTTPException(404, "no reader study yet: the organiser creates it") from exc

    def prepared():
        from buscad.reader.store import ReaderStudy

        if study_path is None:
            raise HTTPException(404, "reader-study mode is off: start with --study-db PATH")
        return ReaderStudy.prepare(study_path, clock=study_clock)

    def identify(st, cred: HTTPAuthorizationCredentials | None) -> Identity:
        """The token's identity: 401 without a valid ``Authorization: Bearer`` token."""
        challenge = {"WWW-Authenticate": "Bearer"}
        if cred is None or not cred.credentials:
            raise HTTPException(
                401, "this needs a study token: send 'Authorization: Bearer <token>'", challenge
            )
        who = st.authenticate(cred.credentials)
        if who is None:
            raise HTTPException(
                401, "the study token is not valid (wrong, rotated or revoked)", challenge
            )
        return who

    def as_organiser(st, cred: HTTPAuthorizationCredentials | None) -> Identity:
        who = identify(st, cred)
        if not who.is_organiser:
            raise HTTPException(403, "this needs the organiser's token")
        return who

    def as_reader(st, cred: HTTPAuthorizationCredentials | None, reader_id: str) -> Identity:
        """A reader acting for themself only (the reader id comes from the token)."""
        who = identify(st, cred)
        if who.role != "reader" or who.reader_id != reader_id:
            raise HTTPException(403, "a reader's token acts for that reader only")
        return who

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        from buscad.reader.store import (
            DuplicateReadError,
            ReaderStudyError,
            RoundNotOpenError,
        )

        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except DuplicateReadError as exc:
            raise HTTPException(409, str(exc)) from exc
        except RoundNotOpenError as exc:
            raise HTTPException(409, str(exc)) from exc
        except ReaderStudyError as exc:
            msg = str(exc)
            raise HTTPException(404 if msg.startswith("unknown reader") else 422, msg) from exc
        except InputFileError as exc:  # a study image or mask went missing on the server
            log.warning("study case could not be read: %s", exc.problem)
            raise HTTPException(
                500, "a study case could not be read on the server; the organiser can check the log"
            ) from exc

    def reader_state(st, rid: str) -> dict[str, Any]:
        p = st.progress(rid)
        if p.round1_done < p.n_cases:
            status, rnd = "round1", 1
        elif p.round2_done >= p.n_cases:
            status, rnd = "done", None
        elif p.round2_open:
            status, rnd = "round2", 2
        else:
            status, rnd = "washout", None
        return {**p.as_dict(), "status": status, "round": rnd}

    def link(request: Request, token: str) -> str:
        return f"{str(request.base_url).rstrip('/')}/reader#token={token}"

    def manifest_file(name: str) -> Path:
        """The manifest NAME inside --study-dir (never a client path)."""
        if study_dir is None:
            raise HTTPException(
                404, "creating a study from the web needs `buscad serve --study-dir DIR`"
            )
        if not _NAME_RE.fullmatch(name):
            raise HTTPException(
                422,
                "manifest must be a file name in the server's study folder "
                "(letters, digits, '_', '.', '-'; at most 128), not a path",
            )
        root = study_dir.resolve()
        p = (root / name).resolve()
        if p.parent != root or not p.is_file():
            raise HTTPException(404, f"no manifest named {name!r} in the study folder")
        return p

    @app.get("/api/study", tags=["reader study"])
    async def study_info(
        request: Request, cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)
    ) -> dict[str, Any]:
        """Whether a study exists; with the organiser's token, the study and every reader's progress."""
        if study_path is None:
            return {"enabled": False, "exists": False}

        def get() -> dict[str, Any]:
            st = prepared()
            out: dict[str, Any] = {
                "enabled": True,
                "exists": st.has_study(),
                "create_from_web": study_dir is not None,
            }
            if cred is None:
                return out
            who = identify(st, cred)
            out["role"] = who.role
            if who.role == "reader":
                out["reader_id"] = who.reader_id
            if not who.is_organiser or not out["exists"]:
                return out
            st = study()
            inf = st.info()
            return {
                **out,
                "study_id": inf["id"],
                "n_cases": int(inf["n_cases"]),
                "washout_days": float(inf["washout_days"]),
                "created_at": inf["created_at"],
                "readers": [reader_state(st, r) for r in st.readers()],
            }

        return await in_thread(get)

    @app.get("/api/study/manifests", tags=["reader study"])
    async def study_manifests(
        cred: HTTPAuthorizationCredentials | None = Depends(_BEARER),
    ) -> dict[str, Any]:
        """Manifest names in the server's study folder (organiser)."""

        def names() -> dict[str, Any]:
            as_organiser(prepared(), cred)
            if study_dir is None:
                return {"manifests": []}
            found = sorted(
                p.name
                for p in study_dir.iterdir()
                if p.is_file() and p.suffix in (".csv", ".parquet") and _NAME_RE.fullmatch(p.name)
            )
            return {"manifests": found}

        return await in_thread(names)

    @app.post("/api/study", tags=["reader study"], status_code=201)
    async def study_create(
        req: StudyCreate,
        request: Request,
        cred: HTTPAuthorizationCredentials | None = Depends(_BEARER),
    ) -> dict[str, Any]:
        """Create the study from a manifest NAME in the server's study folder (organiser).

        Each reader listed gets a token, returned here once.
        """
        from buscad.reader.store import ReaderStudy, ReaderStudyError

        def create() -> dict[str, Any]:
            as_organiser(prepared(), cred)
            path = manifest_file(req.manifest)
            try:
                st = ReaderStudy.create(
                    study_path,  # type: ignore[arg-type]
                    path,
                    washout_days=req.washout_days,
                    seed=req.seed,
                    clock=study_clock,
                )
            except ReaderStudyError as exc:
                if "already holds" in str(exc):
                    raise HTTPException(409, "the study database already holds a study") from exc
                log.warning("study not created: %s", exc)
                raise HTTPException(
                    422, f"manifest {req.manifest!r} cannot make a study (no usable case)"
                ) from exc
            except BuscadError as exc:
                log.warning("study not created: %s", exc)
                raise HTTPException(
                    422,
                    f"manifest {req.manifest!r} is not a valid manifest; check it on the server "
                    "with `buscad audit`",
                ) from exc
            tokens = {}
            for rid in req.readers:
                st.add_reader(rid)
                tok = st.issue_reader_token(rid)
                tokens[rid] = {"token": tok, "link": link(request, tok)}
            return {
                "study_id": st.study_id,
                "n_cases": len(st.case_ids()),
                "readers": st.readers(),
                "tokens": tokens,
            }

        return await in_thread(create)

    @app.post("/api/study/readers", tags=["reader study"], status_code=201)
    async def enrol(
        req: ReaderRequest,
        request: Request,
        cred: HTTPAuthorizationCredentials | None = Depends(_BEARER),
    ) -> dict[str, Any]:
        """Enrol a reader (if new) and issue their token, shown once; an old token stops working."""

        def issue() -> dict[str, Any]:
            st = study()
            as_organiser(st, cred)
            new = req.reader_id not in st.readers()
            if new:
                st.add_reader(req.reader_id)
            tok = st.issue_reader_token(req.reader_id)
            return {
                "reader_id": req.reader_id,
                "new": new,
                "token": tok,
                "link": link(request, tok),
            }

        return await in_thread(issue)

    @app.delete("/api/study/readers/{reader_id}/token", tags=["reader study"])
    async def revoke(
        reader_id: str, cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)
    ) -> dict[str, Any]:
        """Revoke a reader's token (organiser); their reads are kept."""

        def rv() -> dict[str, Any]:
            st = study()
            as_organiser(st, cred)
            return {"reader_id": reader_id, "revoked": st.revoke_reader_token(reader_id)}

        return await in_thread(rv)

    @app.post("/api/study/sessions", tags=["reader study"])
    async def session(
        cred: HTTPAuthorizationCredentials | None = Depends(_BEARER),
        req: SessionRequest | None = None,
    ) -> dict[str, Any]:
        """Open or resume the session of the token's reader."""

        def open_session() -> dict[str, Any]:
            st = study()
            who = identify(st, cred)
            if who.role != "reader":
                raise HTTPException(403, "a reader's session needs that reader's token")
            if req is not None and req.reader_id is not None and req.reader_id != who.reader_id:
                raise HTTPException(403, "a reader's token acts for that reader only")
            rid = str(who.reader_id)
            return {"reader_id": rid, **reader_state(st, rid)}

        return await in_thread(open_session)

    @app.get("/api/study/readers/{reader_id}", tags=["reader study"])
    async def reader_progress(
        reader_id: str, cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)
    ) -> dict[str, Any]:
        """A reader's progress and which round is open (that reader or the organiser)."""

        def get() -> dict[str, Any]:
            st = study()
            who = identify(st, cred)
            if not who.is_organiser:
                as_reader(st, cred, reader_id)
            return reader_state(st, reader_id)

        return await in_thread(get)

    def load_case(st, case_id: str) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
        from buscad.data.io import burned_in_warning, read_image, read_mask
        from buscad.data.manifest import Manifest

        if case_id not in set(st.case_ids()):
            raise HTTPException(404, "this case is not in the study")
        hit = cases.get(("img", case_id))
        if hit is not None:
            return hit
        man = cases.get(("manifest", str(st.manifest_path)))
        if man is None:
            man = Manifest.load(st.manifest_path)
            cases.put(("manifest", str(st.manifest_path)), man)
        idx = int(np.flatnonzero(man.df["image_id"].astype(str).to_numpy() == case_id)[0])
        gray, meta = read_image(man.image_path(idx))
        mpaths = man.mask_paths(idx)
        mask = read_mask(mpaths, gray.shape) if mpaths else None
        if mask is not None and not mask.any():
            mask = None
        warn = burned_in_warning(gray, meta)
        out = (gray, mask, (warn,) if warn else ())
        cases.put(("img", case_id), out)
        return out

    def case_prediction(st, case_id: str) -> Prediction:
        hit = cases.get(("pred", case_id))
        if hit is not None:
            return hit
        gray, mask, _ = load_case(st, case_id)
        pred = predict_blocking(gray=gray, mask=mask, heatmap=True)
        cases.put(("pred", case_id), pred)
        return pred

    @app.get("/api/study/readers/{reader_id}/next", tags=["reader study"])
    async def next_case(
        reader_id: str, cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)
    ) -> dict[str, Any]:
        """The reader's next case in their random order (round 2 carries the AI result).

        ``case`` is null when nothing is open: round 1 and 2 done, or the washout
        is running (``status`` says which and ``round2_opens_at`` when).
        """

        def nxt() -> dict[str, Any]:
            st = study()
            as_reader(st, cred, reader_id)
            state = reader_state(st, reader_id)
            if state["round"] is None:
                return {**state, "case": None}
            rnd = int(state["round"])
            cid = st.next_case(reader_id, rnd)
            if cid is None:  # pragma: no cover - state says otherwise
                return {**state, "case": None}
            done = state["round1_done"] if rnd == 1 else state["round2_done"]
            _, _, warnings = load_case(st, cid)
            case: dict[str, Any] = {
                "case_id": cid,
                "round": rnd,
                "position": done + 1,
                "n_cases": state["n_cases"],
                "image_url": f"/api/study/cases/{cid}/image.png",
                "warnings": list(warnings),
                "ai": None,
            }
            if rnd == 2:
                pred = case_prediction(st, cid)
                ai = prediction_json(pred, None)
                ai["heatmap_url"] = (
                    f"/api/study/cases/{cid}/heatmap.png" if pred.heatmap is not None else None
                )
                case["ai"] = ai
            served[(reader_id, rnd, cid)] = time.monotonic()
            return {**state, "case": case}

        return await in_thread(nxt)

    @app.get("/api/study/cases/{case_id}/image.png", tags=["reader study"])
    async def case_image(
        case_id: str, cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)
    ) -> Response:
        """A study case's image as an 8-bit PNG (pixels only; any study token)."""

        def png() -> bytes:
            st = study()
            identify(st, cred)
            gray, _, _ = load_case(st, case_id)
            return imaging.gray_png(gray)

        return Response(await in_thread(png), media_type="image/png", headers=_no_store())

    @app.get("/api/study/cases/{case_id}/heatmap.png", tags=["reader study"])
    async def case_heatmap(
        case_id: str, cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)
    ) -> Response:
        """A case's heatmap, only for the token's reader once their round 2 is open."""

        def png() -> bytes:
            st = study()
            who = identify(st, cred)
            if who.role != "reader" or reader_state(st, str(who.reader_id))["status"] not in (
                "round2",
                "done",
            ):
                raise HTTPException(403, "the AI heatmap is shown to readers in round 2 only")
            pred = case_prediction(st, case_id)
            if pred.heatmap is None:
                raise HTTPException(404, "no heatmap for this case")
            return imaging.heatmap_png(pred.heatmap)

        return Response(await in_thread(png), media_type="image/png", headers=_no_store())

    @app.post("/api/study/readers/{reader_id}/reads", tags=["reader study"], status_code=201)
    async def submit(
        reader_id: str,
        req: ReadRequest,
        cred: HTTPAuthorizationCredentials | None = Depends(_BEARER),
    ) -> dict[str, Any]:
        """Record one read of the token's reader at once (append-only, synced to disk).

        ``time_taken_s`` stored is the browser's measure when given and consistent
        with the server's (served -> submitted), else the server's.
        """
        now = time.monotonic()

        def record() -> dict[str, Any]:
            st = study()
            as_reader(st, cred, reader_id)
            t0 = served.get((reader_id, req.round, req.case_id))
            server_s = None if t0 is None else max(0.0, now - t0)
            client_s = req.client_time_s
            if client_s is not None and (not math.isfinite(client_s) or client_s < 0):
                client_s = None
            if client_s is not None and (server_s is None or client_s <= server_s + 2.0):
                taken = client_s
            else:
                taken = server_s
            ai = None
            if req.round == 2:
                st.next_case(reader_id, 2)  # refuses a closed round 2 before any AI runs
                pred = cases.get(("pred", req.case_id))
                if pred is None and req.case_id in set(st.case_ids()):
                    pred = case_prediction(st, req.case_id)
                ai = None if pred is None else float(pred.ai_score)
            rid = st.record(
                reader_id,
                req.case_id,
                req.round,
                req.birads,
                confidence=req.confidence,
                time_taken_s=taken,
                ai_score=ai,
            )
            served.pop((reader_id, req.round, req.case_id), None)
            return {
                "read_id": rid,
                "time_taken_s": taken,
                "server_time_s": server_s,
                "client_time_s": client_s,
                **reader_state(st, reader_id),
            }

        return await in_thread(record)

    @app.get("/api/study/export.csv", tags=["reader study"])
    async def export(cred: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> Response:
        """Every read as CSV (organiser): reader, case, round, BI-RADS, confidence, AI score, time."""

        def csv() -> str:
            st = study()
            as_organiser(st, cred)
            return st.reads().to_csv(index=False)

        return Response(
            await in_thread(csv),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="reads.csv"', **_no_store()},
        )

    return app


# --------------------------------------------------------------- helpers


class _ClinicalError(ValueError):
    pass


def _clinical_int(text: str) -> int:
    if len(text.lstrip("-")) > CLINICAL_MAX_DIGITS:
        raise _ClinicalError(f"a number has more than {CLINICAL_MAX_DIGITS} digits")
    return int(text)


def _clinical_float(text: str) -> float:
    if len(text) > CLINICAL_MAX_DIGITS + 10:
        raise _ClinicalError(f"a number has more than {CLINICAL_MAX_DIGITS} digits")
    x = float(text)
    if not math.isfinite(x):
        raise _ClinicalError("numbers must be finite")
    return x


def _clinical_constant(text: str) -> float:
    raise _ClinicalError(f"{text} is not a number")


def parse_clinical(text: str) -> dict[str, Any]:
    """Parse the ``clinical`` form field: a flat JSON object of numbers, text, booleans or nulls.

    Bounds: at most :data:`CLINICAL_MAX_CHARS` characters, :data:`CLINICAL_MAX_KEYS`
    keys of at most 64 characters, text values of at most 256 characters, numbers
    of at most :data:`CLINICAL_MAX_DIGITS` digits and finite; no nesting.

    Raises
    ------
    UploadError
        422 with a one-line reason.
    """
    if not text or not text.strip():
        return {}
    if len(text) > CLINICAL_MAX_CHARS:
        raise UploadError(422, f"clinical is longer than {CLINICAL_MAX_CHARS} characters")
    try:
        obj = json.loads(
            text,
            parse_int=_clinical_int,
            parse_float=_clinical_float,
            parse_constant=_clinical_constant,
        )
    except _ClinicalError as exc:
        raise UploadError(422, f"clinical: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise UploadError(422, f"clinical must be a JSON object ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:
        raise UploadError(422, 'clinical must be a flat JSON object such as {"age": 54}') from exc
    if not isinstance(obj, dict):
        raise UploadError(422, 'clinical must be a JSON object such as {"age": 54}')
    if len(obj) > CLINICAL_MAX_KEYS:
        raise UploadError(422, f"clinical has more than {CLINICAL_MAX_KEYS} keys")
    for k, v in obj.items():
        if len(k) > 64:
            raise UploadError(422, "clinical keys must be at most 64 characters")
        if isinstance(v, (dict, list)):
            raise UploadError(422, "clinical values must be numbers or short text, not nested")
        if isinstance(v, str) and len(v) > 256:
            raise UploadError(422, "clinical text values must be at most 256 characters")
    return obj


def _swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's JS and CSS shipped by ``fastapi-offline`` (None if absent).

    Located without importing the package. Swagger UI 5 reads OpenAPI 3.1, which
    FastAPI writes (the ``swagger-ui-bundle`` package's Swagger UI 4 cannot).
    """
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def _bundle_version(predictor: Predictor) -> str | None:
    v = getattr(predictor, "version", None)
    return None if v is None else str(v)


def _note() -> str:
    from buscad.bundle.types import DECISION_SUPPORT_NOTE

    return DECISION_SUPPORT_NOTE


def _b64(png: bytes) -> str:
    import base64

    return base64.b64encode(png).decode("ascii")


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store"}


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, NumPy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


__all__ = [
    "CSP",
    "LOCAL_HOSTS",
    "WHOLE_IMAGE_NOTE",
    "BodySizeLimit",
    "SecurityHeaders",
    "create_app",
    "parse_clinical",
]
