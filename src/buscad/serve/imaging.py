"""Decoding uploads and drawing the web app's images, with no file kept on disk.

Uploaded bytes are handed to :func:`buscad.data.io.read_image` /
:func:`~buscad.data.io.read_mask` through an anonymous in-memory file
(``memfd_create``, read through ``/proc/self/fd/N``): it has no name in any
folder and the kernel frees it when the process ends, even after ``kill -9``.
Where memfd is missing, a temporary file ``buscad-upload-<pid>-*`` is used (in
``/dev/shm`` where it exists), deleted as soon as it is read; files of dead
processes are removed by :func:`clear_stale_uploads` when the app starts.
Errors never repeat the uploaded file's name or any DICOM header value: they
say "uploaded image" or "uploaded mask" and the problem.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from buscad.data.io import _sniff_bytes, burned_in_warning, read_image, read_mask, to_uint8
from buscad.errors import DecodeBudgetError, ImageReadError, MaskError
from buscad.explain.heatmap import JET

#: Formats accepted as images (detected from content).
IMAGE_FORMATS = ("png", "jpeg", "bmp", "tiff", "dicom")
#: Formats accepted as uploaded masks (detected from content).
MASK_FORMATS = ("png", "bmp", "tiff")
_MEMORY_DIR = "/dev/shm"
UPLOAD_PREFIX = "buscad-upload-"
#: Use an anonymous memfd for uploads where the OS has one (tests turn it off to
#: exercise the temporary-file fallback).
USE_MEMFD = True


class UploadError(ValueError):
    """An upload was refused; ``status`` is the HTTP status to answer with.

    Parameters
    ----------
    status : int
        400 (empty/malformed), 413 (too large), 415 (unsupported type) or 422
        (corrupt content, wrong size).
    message : str
        One line saying what is wrong.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = " ".join(str(message).split())
        super().__init__(self.message)


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image reduced to its pixels (no file name, no header)."""

    gray: np.ndarray
    format: str
    bit_depth: int
    warnings: tuple[str, ...] = ()
    colour_fraction: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.gray.shape[0]), int(self.gray.shape[1])


def _upload_dirs() -> list[Path]:
    dirs = [Path(tempfile.gettempdir())]
    if os.path.isdir(_MEMORY_DIR):
        dirs.insert(0, Path(_MEMORY_DIR))
    return dirs


@contextlib.contextmanager
def _memory_file(data: bytes, suffix: str) -> Iterator[Path]:
    """A path holding ``data``: an anonymous memfd where possible, else a temp file; removed on exit."""
    memfd = getattr(os, "memfd_create", None)
    if USE_MEMFD and memfd is not None and os.path.isdir(f"/proc/{os.getpid()}/fd"):
        fd = memfd(UPLOAD_PREFIX + "memfd", getattr(os, "MFD_CLOEXEC", 0))
        try:
            with os.fdopen(os.dup(fd), "wb") as fh:
                fh.write(data)
            yield Path(f"/proc/{os.getpid()}/fd/{fd}")
        finally:
            os.close(fd)
        return
    tmpdir = _MEMORY_DIR if os.path.isdir(_MEMORY_DIR) and os.access(_MEMORY_DIR, os.W_OK) else None
    fd, name = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=suffix, dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_uploads(dirs: list[Path] | None = None, max_age_s: float = 3600.0) -> list[Path]:
    """Remove buscad's upload files left behind by dead processes (e.g. after ``kill -9``).

    Only ``buscad-upload-*`` plain files owned by this user are touched: those
    named ``buscad-upload-<pid>-*`` whose process is gone, and older unnamed
    ones (``buscad-upload-<random>``, from earlier versions) not modified for
    ``max_age_s`` seconds.

    Returns
    -------
    list of Path
        The files removed.
    """
    import re
    import time

    removed = []
    for d in dirs if dirs is not None else _upload_dirs():
        try:
            entries = list(d.glob(UPLOAD_PREFIX + "*"))
        except OSError:
            continue
        for p in entries:
            try:
                st = p.lstat()
            except OSError:
                continue
            if not p.is_file() or p.is_symlink() or st.st_uid != os.getuid():
                continue
            m = re.fullmatch(re.escape(UPLOAD_PREFIX) + r"(\d+)-.*", p.name, flags=re.S)
            stale = not _alive(int(m.group(1))) if m else time.time() - st.st_mtime > max_age_s
            if stale:
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def sniff(data: bytes) -> str:
    """Format of uploaded bytes from their content (``unknown`` when unrecognised)."""
    return _sniff_bytes(data[:352])


def decode_image(data: bytes, max_bytes: int | None = None) -> DecodedImage:
    """Decode an uploaded PNG, JPEG, BMP, TIFF or DICOM image.

    Parameters
    ----------
    data : bytes
        The uploaded file's content.
    max_bytes : int, optional
        Largest accepted size.

    Returns
    -------
    DecodedImage
        Grayscale pixels; DICOM headers are never kept.

    Raises
    ------
    UploadError
        400 empty, 413 too large, 415 not an image, 422 corrupt or unsupported content.
    """
    if not data:
        raise UploadError(400, "uploaded image is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise UploadError(413, _too_large("image", len(data), max_bytes))
    fmt = sniff(data)
    if fmt not in IMAGE_FORMATS:
        what = "a GIF" if fmt == "gif" else "JSON" if fmt == "json" else "not a recognised image"
        raise UploadError(
            415,
            f"uploaded image is {what} by its content; expected PNG, JPEG, BMP, TIFF or DICOM",
        )
    suffix = ".dcm" if fmt == "dicom" else f".{fmt}"
    try:
        with _memory_file(data, suffix) as p:
            gray, meta = read_image(p)
    except DecodeBudgetError as exc:
        raise UploadError(413, f"uploaded image: {_problem(exc)}") from exc
    except ImageReadError as exc:
        raise UploadError(422, f"uploaded image: {_problem(exc)}") from exc
    if gray.ndim != 2 or min(gray.shape) < 8:
        raise UploadError(422, f"uploaded image is {gray.shape[::-1]} pixels; at least 8x8 needed")
    warn = burned_in_warning(gray, meta)
    return DecodedImage(
        gray=gray,
        format=meta.format,
        bit_depth=int(meta.bit_depth),
        warnings=(warn,) if warn else (),
        colour_fraction=float(meta.colour_fraction),
    )


def _problem(exc: ImageReadError) -> str:
    """The reader's problem text without the server-side path it was read from."""
    return exc.problem.replace(exc.path, "the upload")


def decode_mask(data: bytes, shape: tuple[int, int], max_bytes: int | None = None) -> np.ndarray:
    """Decode an uploaded binary mask (PNG, BMP or TIFF; nonzero = lesion).

    Raises
    ------
    UploadError
        Empty, too large, wrong type, corrupt, wrong size or blank mask.
    """
    if not data:
        raise UploadError(400, "uploaded mask is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise UploadError(413, _too_large("mask", len(data), max_bytes))
    fmt = sniff(data)
    if fmt not in MASK_FORMATS:
        raise UploadError(415, "uploaded mask is not a PNG, BMP or TIFF image by its content")
    try:
        with _memory_file(data, f".{fmt}") as p:
            mask = read_mask([p], shape)
    except DecodeBudgetError as exc:
        raise UploadError(413, f"uploaded mask: {_problem(exc)}") from exc
    except (MaskError, ImageReadError) as exc:
        raise UploadError(422, f"uploaded mask: {_problem(exc)}") from exc
    if not mask.any():
        raise UploadError(422, "uploaded mask is blank: no lesion pixel (nonzero) in it")
    return mask


def _too_large(what: str, n: int, limit: int) -> str:
    return f"uploaded {what} is {n / 2**20:.1f} MB, above the {limit / 2**20:.3g} MB limit"


def parse_box(text: str | None, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Parse ``"x0,y0,x1,y1"`` (image pixels) and clip it to the image.

    Returns None for an empty value.

    Raises
    ------
    UploadError
        422 when malformed or smaller than 4x4 pixels inside the image.
    """
    if text is None or not str(text).strip():
        return None
    if len(str(text)) > 100:
        raise UploadError(422, "box must be four numbers x0,y0,x1,y1 (at most 100 characters)")
    parts = [s for s in str(text).replace(";", ",").split(",") if s.strip()]
    try:
        vals = [float(s) for s in parts]
    except ValueError as exc:
        raise UploadError(422, f"box {text!r} must be four numbers x0,y0,x1,y1") from exc
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise UploadError(422, f"box {text!r} must be four numbers x0,y0,x1,y1")
    h, w = shape
    x0, x1 = sorted((vals[0], vals[2]))
    y0, y1 = sorted((vals[1], vals[3]))
    bx0, by0 = int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.floor(y0), 0, h))
    bx1, by1 = int(np.clip(np.ceil(x1), 0, w)), int(np.clip(np.ceil(y1), 0, h))
    if bx1 - bx0 < 4 or by1 - by0 < 4:
        raise UploadError(
            422, f"box {text!r} covers less than 4x4 pixels of the {w}x{h} image; draw a larger box"
        )
    return bx0, by0, bx1, by1


# ----------------------------------------------------------------- rendering


#: The one heatmap colour map (matplotlib's jet), as uint8.
_LUT = np.rint(JET * 255).astype(np.uint8)


def gray_png(gray: np.ndarray) -> bytes:
    """PNG bytes of a grayscale image (16-bit images windowed to 8 bits)."""
    return encode_png(Image.fromarray(to_uint8(gray), mode="L"))


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """Colour a [0, 1] heatmap; alpha = ``min(1, 1.5 h)`` so zero (outside the ROI) is clear."""
    h = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    idx = np.rint(h * 255).astype(np.uint8)
    rgba = np.empty((*h.shape, 4), dtype=np.uint8)
    rgba[..., :3] = _LUT[idx]
    rgba[..., 3] = np.rint(np.minimum(1.0, 1.5 * h) * 255).astype(np.uint8)
    return rgba


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """PNG (RGBA) of the coloured heatmap, to stack over the image with any opacity."""
    return encode_png(Image.fromarray(heatmap_rgba(heatmap), mode="RGBA"))


#: Colour of the segmenter's lesion outline on every screen and report (cyan; the
#: region box is green, an uploaded mask yellow).
OUTLINE_RGB = (0, 229, 255)
#: Most outline polygons sent to a client (the largest are kept).
MAX_POLYGONS = 16


def outline_polygons(mask: np.ndarray, max_polygons: int = MAX_POLYGONS) -> list[list[list[int]]]:
    """The outer contours of a binary mask as polygons ``[[x, y], ...]`` in image pixels.

    Pixel centres of each region's boundary (OpenCV's ``findContours``, external
    contours, straight runs compressed), largest region first, at most
    ``max_polygons``. A client draws them over the image at any zoom.
    """
    import cv2

    m = np.ascontiguousarray(np.asarray(mask, dtype=bool).astype(np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=lambda c: -cv2.contourArea(c) - len(c))[:max_polygons]
    return [c.reshape(-1, 2).astype(int).tolist() for c in contours]


def mask_png(mask: np.ndarray) -> bytes:
    """A binary mask as an 8-bit PNG (255 = lesion), the form an upload's ``mask`` takes."""
    return encode_png(Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, "L"))


def mask_edge(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a binary mask, ``width`` pixels thick, inside the mask."""
    from scipy import ndimage

    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, iterations=max(1, int(width)), border_value=0)


def composite(
    gray: np.ndarray,
    heatmap: np.ndarray | None = None,
    roi: tuple[int, int, int, int] | None = None,
    opacity: float = 0.5,
    outline: np.ndarray | None = None,
) -> Image.Image:
    """RGB image with the heatmap blended at ``opacity``, the ROI boxed and the outline drawn.

    ``outline`` (a boolean mask of the image's size) is drawn as its boundary in
    :data:`OUTLINE_RGB`.
    """
    base = Image.fromarray(to_uint8(gray), mode="L").convert("RGB")
    if heatmap is not None:
        rgba = heatmap_rgba(heatmap).astype(np.float32)
        a = rgba[..., 3:4] / 255.0 * float(opacity)
        arr = np.asarray(base, dtype=np.float32) * (1 - a) + rgba[..., :3] * a
        base = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    if roi is not None:
        x0, y0, x1, y1 = roi
        width = max(1, round(max(base.size) / 250))
        ImageDraw.Draw(base).rectangle(
            [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(0, 230, 118), width=width
        )
    if outline is not None and np.shape(outline) == np.shape(gray):
        arr = np.asarray(base).copy()
        arr[mask_edge(outline, max(1, round(max(base.size) / 300)))] = OUTLINE_RGB
        base = Image.fromarray(arr, mode="RGB")
    return base


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of a Pillow image (no text chunks, so no metadata)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
