"""Shared state of the web app (:class:`AppState`, on ``app.state.buscad``) and upload parsing.

The routers get the state with the :func:`get_state` dependency: the predictor and its
inference pool, the bounded decode pool, the upload limit, whether the open case screen
is on, the reader study's paths and clock, and the in-memory case cache.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from buscad.bundle.types import Outline, Prediction, Predictor
from buscad.errors import BuscadError
from buscad.serve import imaging
from buscad.serve.imaging import UploadError
from buscad.serve.middleware import FORM_SLACK
from buscad.serve.report import ReportContext

CLINICAL_MAX_KEYS, CLINICAL_MAX_CHARS, CLINICAL_MAX_DIGITS = 64, 4096, 30

WHOLE_IMAGE_NOTE = (
    "No box or mask was given: the whole image was read. Draw a box around the lesion "
    "(or upload its mask) for a lesion-level score."
)
OUTLINE_UNAVAILABLE = (
    "automatic outlining is unavailable for this bundle (it has no lesion segmenter): "
    "draw a box, upload a mask or read the whole image"
)
#: An outline token: ``mode.confidence.hmac`` (:meth:`AppState.outline_token`).
_TOKEN_RE = re.compile(r"(auto|box)\.([01]\.\d{6})((?:\.[01]\.\d{6}\.[01])?)\.([0-9a-f]{64})")


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
    outline_token: str | None = None
    auto_outline: bool = True


#: Longest exam/accession number the case report accepts.
EXAM_MAX_CHARS = 64


def parse_exam(text: str | None) -> str:
    """The exam/accession number the user typed: stripped, printable, at most 64 characters.

    Raises
    ------
    UploadError
        422 when it is longer or holds control characters.
    """
    t = (text or "").strip()
    if len(t) > EXAM_MAX_CHARS:
        raise UploadError(422, f"exam number is {len(t)} characters; at most {EXAM_MAX_CHARS}")
    if not t.isprintable():
        raise UploadError(422, "exam number holds control characters")
    return t


#: The multipart form fields of the upload routes (OpenAPI properties).
UPLOAD_FIELDS: dict[str, dict[str, Any]] = {
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
    "outline_token": {
        "type": "string",
        "description": "The outline_token of POST /api/outline when the mask "
        "sent is that outline, accepted by the user (recorded as such)",
    },
    "auto_outline": {
        "type": "boolean",
        "default": True,
        "description": "Let the bundle's segmenter outline the lesion when "
        "no mask is given; false reads the box or the whole image as drawn",
    },
    "exam": {
        "type": "string",
        "maxLength": EXAM_MAX_CHARS,
        "description": "Exam or accession number as typed by the user, printed on the case "
        "report (never read from the DICOM header)",
    },
}


def _multipart(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart upload with these fields (``image`` required)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": fields}
                }
            },
        }
    }


UPLOAD_SCHEMA = _multipart(UPLOAD_FIELDS)
OUTLINE_SCHEMA = _multipart({k: UPLOAD_FIELDS[k] for k in ("image", "box")})


def _flag(fields: dict[str, str], name: str, default: bool = True) -> bool:
    """A boolean form field (``false``, ``0``, ``no``, ``off`` are false)."""
    text = fields.get(name)
    if text is None or not text.strip():
        return default
    return text.strip().lower() not in ("0", "false", "no", "off")


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


@dataclass(eq=False)
class AppState:
    """What every route of one app shares (one per :func:`buscad.serve.app.create_app`).

    Inference runs on its own small pool: the same thread(s) every time (torch keeps
    per-thread state and the allocator per-thread arenas, so memory stays flat). Uploads
    are decoded on a second pool, ``max_decodes`` at a time.
    """

    predictor: Predictor
    max_upload_mb: float
    workers: int
    case_screen: bool
    study_path: Path | None
    study_dir: Path | None
    study_clock: Callable[[], datetime] | None
    decode_timeout_s: float
    max_decodes: int
    cases: _CaseCache = field(default_factory=_CaseCache, init=False)
    served: dict[tuple[str, int, str], float] = field(default_factory=dict, init=False)
    _pool: list[ThreadPoolExecutor] = field(default_factory=list, init=False, repr=False)
    _decode_pool: list[ThreadPoolExecutor] = field(default_factory=list, init=False, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _decode_slots: threading.BoundedSemaphore = field(init=False, repr=False)
    #: Key of the outline tokens: per app, never stored (a restart invalidates old tokens).
    _outline_key: bytes = field(default_factory=lambda: os.urandom(32), init=False, repr=False)

    def __post_init__(self) -> None:
        self._decode_slots = threading.BoundedSemaphore(int(self.max_decodes))

    @property
    def max_bytes(self) -> int:
        """Largest accepted upload in bytes (image and mask together)."""
        return int(self.max_upload_mb * 2**20)

    # ------------------------------------------------------------ pools
    def executor(self) -> ThreadPoolExecutor:
        """The inference pool (created on first use)."""
        with self._pool_lock:
            if not self._pool:
                self._pool.append(
                    ThreadPoolExecutor(
                        max_workers=max(1, int(self.workers)), thread_name_prefix="predict"
                    )
                )
            return self._pool[0]

    def decoder(self) -> ThreadPoolExecutor:
        """The decode pool (created on first use)."""
        with self._pool_lock:
            if not self._decode_pool:
                self._decode_pool.append(
                    ThreadPoolExecutor(
                        max_workers=int(self.max_decodes) + 1, thread_name_prefix="decode"
                    )
                )
            return self._decode_pool[0]

    def shutdown(self) -> None:
        """Stop both pools (at the app's shutdown); running jobs are not waited for."""
        with self._pool_lock:
            while self._pool:
                self._pool.pop().shutdown(wait=False, cancel_futures=True)
            while self._decode_pool:
                self._decode_pool.pop().shutdown(wait=False, cancel_futures=True)

    async def run_decode(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a decode with a bounded number at once and a time limit.

        The slot is released by the decode thread itself when it really ends, so
        a decode that outlives its request still counts against the limit.
        """
        decode_timeout_s = self.decode_timeout_s
        slots = self._decode_slots
        deadline = time.monotonic() + decode_timeout_s
        while not slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise UploadError(
                    503, "the server is busy decoding other uploads; try again in a moment"
                )
            await asyncio.sleep(0.01)

        def job() -> Any:
            try:
                return fn(*args)
            finally:
                slots.release()

        try:
            fut = self.decoder().submit(job)
        except BaseException:
            slots.release()
            raise
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(fut)), timeout=decode_timeout_s
            )
        except TimeoutError as exc:
            raise UploadError(
                422, f"the upload took longer than {decode_timeout_s:g} s to decode; it was refused"
            ) from exc

    def predict_blocking(self, **kw: Any) -> Prediction:
        """Run the predictor on the inference pool and wait (for worker threads)."""
        return self.executor().submit(functools.partial(self.predictor.predict, **kw)).result()

    async def run_predict(self, **kw: Any) -> Prediction:
        """Run the predictor off the event loop; bad input becomes a 422."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.executor(), functools.partial(self.predictor.predict, **kw)
            )
        except (BuscadError, ValueError) as exc:
            raise UploadError(422, f"the model could not read this input: {exc}") from exc

    @property
    def outline_available(self) -> bool:
        """Whether the predictor outlines lesions itself (a bundle with a segmenter)."""
        return bool(getattr(self.predictor, "has_segmenter", False)) and callable(
            getattr(self.predictor, "outline", None)
        )

    def require_outline(self) -> None:
        """409 when the predictor has no segmenter (automatic outlining unavailable)."""
        if not self.outline_available:
            raise UploadError(409, OUTLINE_UNAVAILABLE)

    async def run_outline(self, gray: np.ndarray, box: tuple[int, int, int, int] | None) -> Outline:
        """The predictor's outline (:meth:`buscad.bundle.Bundle.outline`) off the event loop."""
        loop = asyncio.get_running_loop()
        outline = self.predictor.outline  # type: ignore[attr-defined]
        try:
            return await loop.run_in_executor(
                self.executor(), functools.partial(outline, gray, box)
            )
        except (BuscadError, ValueError) as exc:
            raise UploadError(422, f"the segmenter could not read this image: {exc}") from exc

    def _outline_mac(self, gray: np.ndarray, mask: np.ndarray, mode: str, conf: str) -> str:
        h = hmac.new(self._outline_key, b"buscad-outline-v1", hashlib.sha256)
        g = np.ascontiguousarray(gray)
        h.update(f"{g.shape}|{g.dtype.str}|{mode}|{conf}|".encode())
        h.update(hashlib.sha256(g.tobytes()).digest())
        h.update(hashlib.sha256(np.packbits(np.asarray(mask, dtype=bool))).digest())
        return h.hexdigest()

    def outline_token(
        self,
        gray: np.ndarray,
        mask: np.ndarray,
        mode: str,
        confidence: float,
        predicted_dice: float | None = None,
        flagged: bool = False,
    ) -> str:
        """A token saying this mask is the segmenter's outline (``mode``) of this image.

        ``mode.confidence.hmac``, or ``mode.confidence.predicted_dice.flag.hmac``
        when the outline has a predicted Dice (flag ``1``: flagged): an
        HMAC-SHA256, under a key that lives only in this process, of the image's
        pixels, the mask, the mode, the confidence and the predicted Dice and flag.
        Nothing is stored: the client sends the mask back with the token when the
        user accepts the outline, and :meth:`check_outline_token` recomputes it.
        """
        conf = f"{min(max(float(confidence), 0.0), 1.0):.6f}"
        if predicted_dice is not None:
            pd = min(max(float(predicted_dice), 0.0), 1.0)
            conf += f".{pd:.6f}.{int(bool(flagged))}"
        return f"{mode}.{conf}.{self._outline_mac(gray, mask, mode, conf)}"

    def check_outline_token(
        self, token: str, gray: np.ndarray, mask: np.ndarray
    ) -> tuple[str, float, float | None, bool]:
        """``(mode, confidence, predicted Dice or None, flagged)`` of a valid outline token.

        Raises
        ------
        UploadError
            422 when the token is malformed or was not issued for this image and mask.
        """
        m = _TOKEN_RE.fullmatch(token.strip())
        if m is None:
            raise UploadError(422, "outline_token is not an outline token of POST /api/outline")
        mode, conf, extra, mac = m.groups()
        if not hmac.compare_digest(mac, self._outline_mac(gray, mask, mode, conf + extra)):
            raise UploadError(
                422,
                "outline_token does not match this image and mask (edited, another image, or "
                "the server restarted): outline the image again",
            )
        if not extra:
            return mode, float(conf), None, False
        pd, flag = extra[1:].rsplit(".", 1)
        return mode, float(conf), float(pd), flag == "1"

    def require_case_screen(self) -> None:
        """403 while the open case screen is off (a reader study is served)."""
        if not self.case_screen:
            raise UploadError(
                403,
                "the open case screen is off while a reader study is served "
                "(the organiser may start the server with --open-case-screen)",
            )

    # ---------------------------------------------------------- parsing
    async def read_form(self, request: Request) -> UploadForm:
        """The multipart form of an upload, kept in memory and bounded."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise UploadError(415, "send the image as multipart/form-data (field 'image')")
        parser = _MemoryMultiPartParser(
            request.headers,
            request.stream(),
            max_files=2,
            max_fields=8,
            max_part_size=64 * 1024,
            spool_bytes=self.max_bytes + FORM_SLACK + 1,
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
            if len(data) > self.max_bytes:
                raise UploadError(413, imaging._too_large("image", len(data), self.max_bytes))
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
        token = fields.get("outline_token", "").strip() or None
        if token is not None and mask_data is None:
            raise UploadError(422, "outline_token needs the outline itself in the 'mask' field")
        return UploadForm(
            image=data,
            mask=mask_data,
            box=fields.get("box"),
            clinical=clinical,
            heatmap=_flag(fields, "heatmap"),
            fields=fields,
            outline_token=token,
            auto_outline=_flag(fields, "auto_outline"),
        )

    async def predict_upload(
        self, form: UploadForm, heatmap: bool | None = None
    ) -> tuple[imaging.DecodedImage, Prediction]:
        """Decode the upload and run the predictor on it.

        A mask sent with a valid ``outline_token`` is the segmenter's outline, accepted
        by the user: the prediction reads it as a mask and records it as the outline
        (``roi_source`` ``auto`` or ``box``, its confidence, predicted Dice and flag,
        ``roi_accepted``); a flagged outline keeps its caution, saying the user
        accepted it.
        ``auto_outline=false`` stops a predictor with a segmenter from outlining
        the lesion itself (the box or the whole image is read as drawn).
        """
        img = await self.run_decode(imaging.decode_image, form.image, self.max_bytes)
        mask = None
        if form.mask is not None:
            mask = await self.run_decode(imaging.decode_mask, form.mask, img.shape, self.max_bytes)
        accepted = None
        if form.outline_token is not None and mask is not None:
            accepted = self.check_outline_token(form.outline_token, img.gray, mask)
        box = imaging.parse_box(form.box, img.shape)
        extra = {"auto_roi": False} if self.outline_available and not form.auto_outline else {}
        pred = await self.run_predict(
            gray=img.gray,
            mask=mask,
            box=box if mask is None else None,
            clinical=form.clinical or None,
            heatmap=form.heatmap if heatmap is None else heatmap,
            **extra,
        )
        if accepted is not None:
            import dataclasses

            from buscad.bundle.safety import flagged_outline_text

            mode, conf, pd, flagged = accepted
            cautions = list(pred.cautions)
            if flagged and pd is not None:
                thr = getattr(self.predictor, "outline_threshold", None)
                cautions.append(flagged_outline_text(pd, thr, accepted=True))
            pred = dataclasses.replace(
                pred,
                roi_source=mode,
                roi_confidence=conf,
                predicted_dice=pd,
                outline_flagged=flagged,
                roi_accepted=True,
                outline=mask,
                cautions=cautions,
            )
        from buscad.bundle.safety import with_image_checks

        return img, with_image_checks(pred, img)

    def prediction_json(self, pred: Prediction, img: imaging.DecodedImage | None) -> dict[str, Any]:
        """The JSON of a prediction (NaN as null), with the bundle and the image's facts."""
        d = _clean(pred.to_json())
        d["roi_note"] = WHOLE_IMAGE_NOTE if pred.roi_source == "whole" else None
        d["bundle"] = {"name": self.predictor.name, "version": _bundle_version(self.predictor)}
        if img is not None:
            h, w = img.shape
            d["image"] = {"width": w, "height": h, "format": img.format}
            d["warnings"] = list(img.warnings)
        return d

    def report_ctx(self, img: imaging.DecodedImage, exam: str = "") -> ReportContext:
        """What the case report shows besides the prediction (no file name, no header).

        ``exam`` is the exam/accession number the user typed (:func:`parse_exam`).
        """
        return ReportContext(
            bundle_name=str(self.predictor.name),
            bundle_version=_bundle_version(self.predictor),
            created_at=datetime.now(UTC),
            image_size=img.shape,
            warnings=img.warnings,
            training=str(getattr(self.predictor, "training_text", "") or ""),
            exam=exam,
        )


def get_state(request: Request) -> AppState:
    """The app's :class:`AppState` (a FastAPI dependency; adds nothing to the OpenAPI)."""
    return request.app.state.buscad


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
