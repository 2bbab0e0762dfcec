"""The buscad web app: AI decision support for one image, and reader-study sessions.

``create_app(predictor)`` builds a FastAPI app around any object that follows
:class:`buscad.bundle_types.Predictor` (normally a loaded model bundle).

Pages: ``/`` (open an image, draw a box or upload a mask, see the AI score,
the likelihood band, the Grad-CAM overlay and each model's score, print or
save a one-page report) and ``/reader`` (reader-study sessions and the
organiser's panel). The JSON API under ``/api`` does the same for programs;
its OpenAPI description is at ``/openapi.json`` and ``/docs``.

Robustness: request bodies above the upload limit are refused with 413 before
they are read; file types are checked by content; a corrupt or unsupported
file gets a 4xx with a one-line message; model inference runs in a worker
thread (``workers`` at a time), never on the event loop. Nothing uploaded is
written to disk: uploads are decoded from memory and forgotten when the
response is sent; a report is saved only when the user downloads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from buscad import __version__
from buscad.bundle_types import Prediction, Predictor
from buscad.errors import BuscadError, InputFileError
from buscad.serve import imaging
from buscad.serve.imaging import UploadError
from buscad.serve.report import ReportContext, render_html, render_pdf

log = logging.getLogger("buscad.serve")
STATIC_DIR = Path(__file__).with_name("static")
#: Slack on top of the file limit for the multipart envelope and form fields.
_FORM_SLACK = 256 * 1024

WHOLE_IMAGE_NOTE = (
    "No box or mask was given: the whole image was read. Draw a box around the lesion "
    "(or upload its mask) for a lesion-level score."
)


# ------------------------------------------------------------------ limits


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


class StudyCreate(BaseModel):
    """Organiser's request to create the reader study."""

    manifest: str = Field(..., description="Manifest path on the server")
    washout_days: float = Field(14.0, ge=0, description="Days between rounds 1 and 2")
    seed: int = Field(0, description="Study seed for the readers' case orders")
    readers: list[str] = Field(default_factory=list, description="Reader pseudonyms to enrol")


class SessionRequest(BaseModel):
    """A reader opening (or resuming) their session."""

    reader_id: str = Field(..., description="Pseudonym, e.g. R01 (never a name)")


class ReadRequest(BaseModel):
    """One read submitted by a reader."""

    case_id: str
    round: int = Field(..., description="1 = without AI, 2 = with AI")
    birads: str = Field(..., description="BI-RADS category: 1, 2, 3, 4a, 4b, 4c or 5")
    confidence: float | None = Field(
        None, description="Reader's probability of malignancy 0-100 (optional)"
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
    max_upload_mb: float = 50,
    workers: int = 1,
    study_clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """Build the web app around a predictor.

    Parameters
    ----------
    predictor : Predictor
        A loaded model bundle (or anything following the protocol).
    study_db : path-like, optional
        SQLite file of the reader study (created by the organiser from the app
        or with ``buscad reader create``); None disables reader-study mode.
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

    Returns
    -------
    fastapi.FastAPI
    """
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    max_bytes = int(max_upload_mb * 2**20)
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

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        with pool_lock:
            while pool:
                pool.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="buscad",
        version=__version__,
        description=(
            "Breast ultrasound AI decision support: calibrated probability of malignancy, "
            "BI-RADS-aligned likelihood band (decision support only), Grad-CAM heatmap, case "
            "reports, and reader-study sessions. Research software, not a medical device."
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes + _FORM_SLACK)
    app.state.predictor = predictor
    app.state.max_bytes = max_bytes
    study_path = Path(study_db) if study_db is not None else None
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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.error("internal error: %s", type(exc).__name__)
        return JSONResponse({"detail": "internal error; the server keeps running"}, 500)

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
        clinical: dict[str, Any] = {}
        if fields.get("clinical", "").strip():
            try:
                clinical = json.loads(fields["clinical"])
            except json.JSONDecodeError as exc:
                raise UploadError(422, f"clinical must be a JSON object ({exc.msg})") from exc
            if not isinstance(clinical, dict):
                raise UploadError(422, 'clinical must be a JSON object such as {"age": 54}')
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
        img = await anyio.to_thread.run_sync(imaging.decode_image, form.image, max_bytes)
        mask = None
        if form.mask is not None:
            mask = await anyio.to_thread.run_sync(
                imaging.decode_mask, form.mask, img.shape, max_bytes
            )
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
        return d

    def report_ctx(img: imaging.DecodedImage) -> ReportContext:
        return ReportContext(
            bundle_name=str(predictor.name),
            bundle_version=_bundle_version(predictor),
            created_at=datetime.now(UTC),
            image_size=img.shape,
        )

    # ------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

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
            "decision_support_note": _note(),
            "whole_image_note": WHOLE_IMAGE_NOTE,
        }

    @app.post("/api/preview", tags=["predict"], openapi_extra=_UPLOAD_SCHEMA)
    async def preview(request: Request) -> Response:
        """The uploaded image as a de-identified 8-bit PNG (pixels only; DICOM headers dropped)."""
        form = await read_form(request)
        img = await anyio.to_thread.run_sync(imaging.decode_image, form.image, max_bytes)
        png = await anyio.to_thread.run_sync(imaging.gray_png, img.gray)
        return Response(png, media_type="image/png", headers=_no_store())

    @app.post("/api/predict", tags=["predict"], openapi_extra=_UPLOAD_SCHEMA)
    async def predict(request: Request) -> JSONResponse:
        """Score one image: AI score, threshold, decision, likelihood band, model scores.

        The region read is the mask if given, else the box, else the whole image
        (``roi_source``; ``roi_note`` says so). With ``heatmap`` (default) the
        response carries ``heatmap_png``: a base64 RGBA PNG to stack over the image.
        """
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
        if format not in ("html", "pdf"):
            raise UploadError(422, f"format must be html or pdf, got {format!r}")
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
    def study():
        from buscad.reader.store import ReaderStudy, ReaderStudyError

        if study_path is None:
            raise HTTPException(404, "reader-study mode is off: start with --study-db PATH")
        try:
            return ReaderStudy.open(study_path, clock=study_clock)
        except ReaderStudyError as exc:
            raise HTTPException(404, f"no reader study yet: {exc.args[0]}") from exc

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
        except InputFileError as exc:  # a study image, mask or manifest went missing
            raise HTTPException(500, f"study case could not be read: {exc.problem}") from exc

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

    @app.get("/api/study", tags=["reader study"])
    async def study_info() -> dict[str, Any]:
        """The study (cases, washout) and every reader's progress."""
        if study_path is None:
            return {"enabled": False, "exists": False}
        if not study_path.is_file():
            return {"enabled": True, "exists": False}

        def get() -> dict[str, Any]:
            st = study()
            inf = st.info()
            return {
                "enabled": True,
                "exists": True,
                "study_id": inf["id"],
                "n_cases": int(inf["n_cases"]),
                "washout_days": float(inf["washout_days"]),
                "created_at": inf["created_at"],
                "readers": [reader_state(st, r) for r in st.readers()],
            }

        return await in_thread(get)

    @app.post("/api/study", tags=["reader study"], status_code=201)
    async def study_create(req: StudyCreate) -> dict[str, Any]:
        """Create the study from a manifest on the server (organiser)."""
        from buscad.errors import BuscadError
        from buscad.reader.store import ReaderStudy

        if study_path is None:
            raise HTTPException(404, "reader-study mode is off: start with --study-db PATH")

        def create() -> dict[str, Any]:
            try:
                st = ReaderStudy.create(
                    study_path,
                    Path(req.manifest).expanduser(),
                    washout_days=req.washout_days,
                    seed=req.seed,
                    clock=study_clock,
                )
            except BuscadError as exc:
                if "already holds" in str(exc):
                    raise HTTPException(409, str(exc)) from exc
                raise HTTPException(422, str(exc)) from exc
            for rid in req.readers:
                st.add_reader(rid)
            return {"study_id": st.study_id, "n_cases": len(st.case_ids()), "readers": st.readers()}

        return await in_thread(create)

    @app.post("/api/study/sessions", tags=["reader study"])
    async def session(req: SessionRequest) -> dict[str, Any]:
        """Open a reader's session: enrols a new pseudonym, resumes a known one."""

        def open_session() -> dict[str, Any]:
            st = study()
            new = req.reader_id not in st.readers()
            if new:
                st.add_reader(req.reader_id)
            return {"reader_id": req.reader_id, "new": new, **reader_state(st, req.reader_id)}

        return await in_thread(open_session)

    @app.get("/api/study/readers/{reader_id}", tags=["reader study"])
    async def reader_progress(reader_id: str) -> dict[str, Any]:
        """A reader's progress and which round is open."""
        return await in_thread(lambda: reader_state(study(), reader_id))

    def load_case(st, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        from buscad.data.io import read_image, read_mask
        from buscad.data.manifest import Manifest

        hit = cases.get(("img", case_id))
        if hit is not None:
            return hit
        if case_id not in set(st.case_ids()):
            raise HTTPException(404, f"case {case_id!r} is not in the study")
        man = cases.get(("manifest", str(st.manifest_path)))
        if man is None:
            man = Manifest.load(st.manifest_path)
            cases.put(("manifest", str(st.manifest_path)), man)
        idx = int(np.flatnonzero(man.df["image_id"].astype(str).to_numpy() == case_id)[0])
        gray, _ = read_image(man.image_path(idx))
        mpaths = man.mask_paths(idx)
        mask = read_mask(mpaths, gray.shape) if mpaths else None
        if mask is not None and not mask.any():
            mask = None
        cases.put(("img", case_id), (gray, mask))
        return gray, mask

    def case_prediction(st, case_id: str) -> Prediction:
        hit = cases.get(("pred", case_id))
        if hit is not None:
            return hit
        gray, mask = load_case(st, case_id)
        pred = predict_blocking(gray=gray, mask=mask, heatmap=True)
        cases.put(("pred", case_id), pred)
        return pred

    @app.get("/api/study/readers/{reader_id}/next", tags=["reader study"])
    async def next_case(reader_id: str) -> dict[str, Any]:
        """The reader's next case in their random order (round 2 carries the AI result).

        ``case`` is null when nothing is open: round 1 and 2 done, or the washout
        is running (``status`` says which and ``round2_opens_at`` when).
        """

        def nxt() -> dict[str, Any]:
            st = study()
            state = reader_state(st, reader_id)
            if state["round"] is None:
                return {**state, "case": None}
            rnd = int(state["round"])
            cid = st.next_case(reader_id, rnd)
            if cid is None:  # pragma: no cover - state says otherwise
                return {**state, "case": None}
            done = state["round1_done"] if rnd == 1 else state["round2_done"]
            case: dict[str, Any] = {
                "case_id": cid,
                "round": rnd,
                "position": done + 1,
                "n_cases": state["n_cases"],
                "image_url": f"/api/study/cases/{cid}/image.png",
                "ai": None,
            }
            if rnd == 2:
                pred = case_prediction(st, cid)
                ai = prediction_json(pred, None)
                ai["heatmap_url"] = (
                    f"/api/study/cases/{cid}/heatmap.png?reader_id={reader_id}"
                    if pred.heatmap is not None
                    else None
                )
                case["ai"] = ai
            else:
                load_case(st, cid)
            served[(reader_id, rnd, cid)] = time.monotonic()
            return {**state, "case": case}

        return await in_thread(nxt)

    @app.get("/api/study/cases/{case_id}/image.png", tags=["reader study"])
    async def case_image(case_id: str) -> Response:
        """A study case's image as an 8-bit PNG (pixels only)."""

        def png() -> bytes:
            gray, _ = load_case(study(), case_id)
            return imaging.gray_png(gray)

        return Response(await in_thread(png), media_type="image/png", headers=_no_store())

    @app.get("/api/study/cases/{case_id}/heatmap.png", tags=["reader study"])
    async def case_heatmap(case_id: str, reader_id: str) -> Response:
        """A case's heatmap, only for a reader whose round 2 is open (no AI in round 1)."""

        def png() -> bytes:
            st = study()
            if reader_state(st, reader_id)["status"] not in ("round2", "done"):
                raise HTTPException(403, "the AI heatmap is shown in round 2 only")
            pred = case_prediction(st, case_id)
            if pred.heatmap is None:
                raise HTTPException(404, "no heatmap for this case")
            return imaging.heatmap_png(pred.heatmap)

        return Response(await in_thread(png), media_type="image/png", headers=_no_store())

    @app.post("/api/study/readers/{reader_id}/reads", tags=["reader study"], status_code=201)
    async def submit(reader_id: str, req: ReadRequest) -> dict[str, Any]:
        """Record one read at once (append-only, synced to disk before the answer).

        ``time_taken_s`` stored is the browser's measure when given and consistent
        with the server's (served -> submitted), else the server's.
        """
        now = time.monotonic()

        def record() -> dict[str, Any]:
            st = study()
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
    async def export() -> Response:
        """Every read as CSV (reader, case, round, BI-RADS, confidence, AI score, time, when)."""

        def csv() -> str:
            return study().reads().to_csv(index=False)

        return Response(
            await in_thread(csv),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="reads.csv"', **_no_store()},
        )

    return app


# --------------------------------------------------------------- helpers


def _bundle_version(predictor: Predictor) -> str | None:
    v = getattr(predictor, "version", None)
    return None if v is None else str(v)


def _note() -> str:
    from buscad.bundle_types import DECISION_SUPPORT_NOTE

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


__all__ = ["WHOLE_IMAGE_NOTE", "BodySizeLimit", "create_app"]
