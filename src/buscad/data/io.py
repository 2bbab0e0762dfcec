"""Image and mask readers behind one small interface.

``read_image(path) -> (gray, ImageMeta)`` reads PNG, JPEG, BMP, TIFF and DICOM
(8- and 16-bit, RGB, RGBA with transparent regions, palette) into a 2-D
grayscale array and says whether the pixels carried colour (Doppler boxes,
coloured marks). ``read_mask(paths, shape)`` reads binary PNG/BMP/TIFF masks
(any nonzero pixel is lesion; several files are unioned), LabelMe JSON polygons
and NIfTI label maps (as ITK-SNAP writes them).

Every failure raises :class:`~buscad.errors.ImageReadError` or
:class:`~buscad.errors.MaskError` whose one-line message names the file.
The format is detected from the file's content, not its extension.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import io as _io
import json
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFile

from buscad.errors import (
    DecodeBudgetError,
    ImageReadError,
    MaskDecodeBudgetError,
    MaskError,
    UnsupportedModalityError,
)

#: Default largest decoded frame, in pixels (decompression-bomb guard): 4 Mpx = 2048 x 2048,
#: above any ultrasound frame (typically < 1 Mpx) and full-HD screen captures. Reading an
#: image at this limit adds about 200 MB of memory (benchmarks/fuzz.py, budget edge);
#: larger images need ``read_image(..., budget=DecodeBudget(max_pixels=...))``.
MAX_PIXELS = 2**22

#: A pixel counts as coloured when it departs from the image's gray tint by more than
#: this many 8-bit levels in some channel (see :func:`colour_fraction`).
COLOUR_CHROMA_THRESHOLD = 24

#: A fitted gray tint ``C ~ a_C Y + b_C`` is accepted only when every ``|a_C - 1|`` is at
#: most this (and every ``|b_C|`` at most the chroma threshold); otherwise no tint is assumed.
TINT_MAX_GAIN = 0.25

#: An image "has colour" when more than this fraction of its opaque pixels is coloured.
COLOUR_FRACTION_MIN = 1e-4

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".json", ".nii", ".nii.gz", ".nrrd", ".mha")

# Never decode partial files silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageMeta:
    """What the reader learnt about an image besides its pixels.

    Attributes
    ----------
    path : str
        The file read.
    format : str
        ``png``, ``jpeg``, ``bmp``, ``tiff`` or ``dicom``.
    height, width : int
        Size of the returned array.
    bit_depth : int
        8 or 16: the dtype of the returned array (``uint8`` or ``uint16``).
    has_colour : bool
        True when more than :data:`COLOUR_FRACTION_MIN` of the pixels are coloured.
    colour_fraction : float
        Fraction of opaque pixels that are coloured (see :func:`colour_fraction`:
        colour beyond the image's own gray tint); 0 for grayscale sources.
    transparent_fraction : float
        Fraction of pixels with alpha 0 (set to black in the returned array).
    pixel_spacing_mm : float or None
        Physical size of a pixel when the file says (DICOM ultrasound regions).
    photometric : str
        Source colour model (``L``, ``RGB``, ``RGBA``, ``P``, ``MONOCHROME1``...).
    burned_in_annotation : bool or None
        DICOM ``BurnedInAnnotation`` (0028,0301): True for ``YES``, False for ``NO``,
        None when absent or not DICOM.
    """

    path: str
    format: str
    height: int
    width: int
    bit_depth: int
    has_colour: bool
    colour_fraction: float
    transparent_fraction: float = 0.0
    pixel_spacing_mm: float | None = None
    photometric: str = "L"
    extra: dict = field(default_factory=dict)
    burned_in_annotation: bool | None = None

    def as_dict(self) -> dict:
        """Return the metadata as a plain dict (JSON-serialisable)."""
        return asdict(self)


def sniff_format(path: str | Path) -> str:
    """Return the image format from the file's first bytes.

    A ``DICM`` marker at offset 128 wins over every other magic number (the
    DICOM preamble is free-form and may look like a TIFF header).

    Parameters
    ----------
    path : path-like
        File to inspect.

    Returns
    -------
    str
        One of ``png``, ``jpeg``, ``bmp``, ``tiff``, ``gif``, ``dicom``,
        ``nifti``, ``json`` or ``unknown``.

    Raises
    ------
    ImageReadError
        When the file is missing, empty or cannot be opened (any path, even
        one with a NUL byte or too long for the system, gives this error).
    """
    p = Path(path)
    try:
        if not p.exists():
            raise ImageReadError(p, "file not found")
        if p.is_dir():
            raise ImageReadError(p, "is a directory, not an image file")
        size = p.stat().st_size
        if size == 0:
            raise ImageReadError(p, "file is empty (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(352)
    except ImageReadError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or _short(exc)
        raise ImageReadError(_safe_name(p), f"cannot open the file ({reason})") from exc
    return _sniff_bytes(head, p.name)


def _safe_name(p: str | Path) -> str:
    """The path for an error message: NUL bytes shown as ``\\0``, at most 300 characters."""
    text = str(p).replace("\x00", "\\0")
    return text if len(text) <= 300 else text[:150] + "..." + text[-147:]


_PIL_FORMATS = ("png", "jpeg", "bmp", "tiff", "gif")


def _sniff_bytes(head: bytes, name: str = "") -> str:
    # DICOM first: its 128-byte preamble is free-form and may itself look like a TIFF
    # header (dual-personality files such as pydicom's examples_rgb_color.dcm).
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"\x1f\x8b" and name.lower().endswith(".nii.gz"):
        return "nifti"
    if len(head) >= 348 and int.from_bytes(head[0:4], "little") in (348, 540):
        return "nifti"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "json"
    # Headerless DICOM (no 128-byte preamble) is rare but exists; trust the suffix.
    if name.lower().endswith((".dcm", ".dicom")):
        return "dicom"
    return "unknown"


def read_image(
    path: str | Path,
    budget: DecodeBudget | None = None,
    *,
    allow_modality: bool | Iterable[str] | None = None,
    frame: int = 0,
) -> tuple[np.ndarray, ImageMeta]:
    """Read an ultrasound image as a 2-D grayscale array, within a decode budget.

    Parameters
    ----------
    path : path-like
        PNG, JPEG, BMP, TIFF, GIF (first frame) or DICOM file (native or
        compressed transfer syntaxes through pydicom's pixel-data plugins).
    budget : DecodeBudget, optional
        Pixel, byte, scan and element limits checked from the headers before any
        decode (default: the :func:`reader_settings` budget, else the module
        constants).
    allow_modality : bool or iterable of str, optional
        DICOM modalities accepted besides ultrasound (``True``: any). Default:
        the :func:`reader_settings` value, which is ultrasound only
        (:data:`ULTRASOUND_MODALITIES` and files without a Modality element).
    frame : int, default 0
        For multi-frame DICOM (cine loops): the frame to decode; only that
        frame is decoded. ``meta.extra`` holds ``n_frames`` and ``frame``.

    Returns
    -------
    gray : numpy.ndarray
        ``(H, W)`` array, ``uint8`` for 8-bit sources and ``uint16`` for
        16-bit ones. Colour sources are converted with ITU-R 601 luma
        ``Y = 0.299 R + 0.587 G + 0.114 B``; transparent pixels (alpha 0) are 0.
    meta : ImageMeta
        Format, size, bit depth, colour content and ``burned_in_annotation``.

    Raises
    ------
    DecodeBudgetError
        The headers declare more than the budget (decompression, CPU or element bombs).
    UnsupportedModalityError
        A DICOM file of another modality (CT, MR, NM...).
    ImageReadError
        Missing, empty, truncated, unrecognised, multi-page (non-DICOM) or
        pixel-less files, and any other failure. Nothing else escapes.
    """
    p = Path(path)
    fmt = "unknown"
    try:
        b = _budget(budget)
        allow = (
            _SETTINGS.get().allow_modality
            if allow_modality is None
            else _modality_arg(allow_modality)
        )
        fmt = sniff_format(p)
        if fmt == "dicom":
            return _read_dicom(p, b, allow, int(frame))
        if fmt in _PIL_FORMATS:
            info = _check_header(p, fmt, b)
            return _read_pil(p, fmt, b, info)
        if fmt == "json":
            raise ImageReadError(
                p, "is a JSON file, not an image (LabelMe annotations go in mask_path)"
            )
        raise ImageReadError(
            p, "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM content)"
        )
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(_safe_name(p), "not enough memory to read the image") from exc
    except Exception as exc:  # RecursionError, struct.error, zlib.error, SyntaxError...
        detail = _kind(exc) if fmt == "dicom" else f"{type(exc).__name__}: {_short(exc)}"
        raise ImageReadError(_safe_name(p), f"cannot read the image ({detail})") from exc


def burned_in_warning(gray: np.ndarray, meta: ImageMeta) -> str | None:
    """One-line warning when the pixels may carry burned-in text (dates, IDs, names).

    Two sources: the DICOM header's ``BurnedInAnnotation = YES``
    (:attr:`ImageMeta.burned_in_annotation`), and the audit's text detector
    (:func:`buscad.data.audit.annotations.annotation_marks` on the 8-bit image), which
    finds bright, thin, text-like strokes; ``N`` words found give
    ``"N text-like marks burned into the pixels"``.

    Parameters
    ----------
    gray : numpy.ndarray
        The decoded grayscale pixels.
    meta : ImageMeta
        What the reader learnt about the file.

    Returns
    -------
    str or None
        The warning, or None when nothing suggests burned-in text.
    """
    parts = []
    if meta.burned_in_annotation:
        parts.append(
            "the DICOM header says BurnedInAnnotation = YES: the pixels may show patient "
            "text (names, IDs, dates)"
        )
    try:
        from buscad.data.audit.annotations import (
            annotation_marks,  # lazy: audit imports this module
        )

        g = np.asarray(gray)
        if g.ndim == 2 and g.size:
            _, words = annotation_marks(to_uint8(g))
            if words:
                parts.append(
                    f"{len(words)} text-like marks burned into the pixels (they may show "
                    "names, IDs or dates; check before sharing)"
                )
    except Exception:  # the detector is advisory; never fail a read because of it
        pass
    return "; ".join(parts) if parts else None


def _short(exc: BaseException, limit: int = 200) -> str:
    """One-line, bounded description of a library exception for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(exc: BaseException) -> str:
    """The exception's class name only: for errors raised while a DICOM header is parsed.

    pydicom's messages quote element values (``invalid literal for int():
    '<text>'``); whatever a scanner wrote in a header must never reach an error
    message, so DICOM errors name the field and the problem, never the value.
    """
    return type(exc).__name__


# --------------------------------------------------------------------------- decode budget

#: Default largest decoded frame in bytes (all samples, before any conversion).
MAX_DECODED_BYTES = 64 * 2**20

#: Default largest file a reader opens, in bytes.
MAX_FILE_BYTES = 1024 * 2**20

#: Default largest number of scans (SOS markers) in a JPEG: progressive files have ~10.
MAX_JPEG_SCANS = 100

#: Default largest ``scans x pixels`` of a JPEG (each progressive scan revisits every block).
MAX_JPEG_SCAN_PIXELS = 400_000_000

#: Default largest DICOM element other than the pixel data, in bytes.
MAX_ELEMENT_BYTES = 16 * 2**20

#: Default largest number of frames a DICOM file may declare.
MAX_FRAMES = 10_000

#: Default largest number of pages walked in a TIFF.
MAX_TIFF_PAGES = 1024

#: Default largest nesting depth of a LabelMe JSON file.
MAX_JSON_DEPTH = 64

#: Default largest LabelMe JSON file, in bytes (it may embed the image as base64).
MAX_JSON_BYTES = 64 * 2**20

#: Largest length of a LabelMe ``imagePath`` (characters) and of each of its parts (UTF-8 bytes).
MAX_IMAGE_PATH = 255


@dataclass(frozen=True)
class DecodeBudget:
    """Limits a reader checks from headers before it decodes anything.

    Every field left ``None`` takes the module constant of the same meaning at
    call time (:data:`MAX_PIXELS`, :data:`MAX_DECODED_BYTES`,
    :data:`MAX_FILE_BYTES`, :data:`MAX_JPEG_SCANS`, :data:`MAX_JPEG_SCAN_PIXELS`,
    :data:`MAX_ELEMENT_BYTES`, :data:`MAX_FRAMES`, :data:`MAX_TIFF_PAGES`,
    :data:`MAX_JSON_DEPTH`, :data:`MAX_JSON_BYTES`), so changing a constant
    changes the default for every reader.

    Attributes
    ----------
    max_pixels : int or None
        Pixels of one decoded frame, ``width x height``.
    max_bytes : int or None
        Bytes of one decoded frame, ``width x height x samples x ceil(bits / 8)``
        (for a deflated DICOM: the inflated data set).
    max_file_bytes : int or None
        Size of the file.
    max_jpeg_scans : int or None
        Scans (SOS markers) of a JPEG.
    max_jpeg_scan_pixels : int or None
        ``scans x width x height`` of a JPEG (CPU bound of progressive decoding).
    max_element_bytes : int or None
        Any DICOM element but the pixel data (refused before it is read).
    max_frames : int or None
        Frames a DICOM file may declare.
    max_tiff_pages : int or None
        Pages walked in a TIFF.
    max_json_depth : int or None
        Nesting depth of a LabelMe JSON file.
    max_json_bytes : int or None
        Size of a LabelMe JSON file.
    """

    max_pixels: int | None = None
    max_bytes: int | None = None
    max_file_bytes: int | None = None
    max_jpeg_scans: int | None = None
    max_jpeg_scan_pixels: int | None = None
    max_element_bytes: int | None = None
    max_frames: int | None = None
    max_tiff_pages: int | None = None
    max_json_depth: int | None = None
    max_json_bytes: int | None = None

    def resolved(self) -> DecodeBudget:
        """The same budget with every ``None`` replaced by its module constant."""
        g = globals()
        names = {
            "max_pixels": "MAX_PIXELS",
            "max_bytes": "MAX_DECODED_BYTES",
            "max_file_bytes": "MAX_FILE_BYTES",
            "max_jpeg_scans": "MAX_JPEG_SCANS",
            "max_jpeg_scan_pixels": "MAX_JPEG_SCAN_PIXELS",
            "max_element_bytes": "MAX_ELEMENT_BYTES",
            "max_frames": "MAX_FRAMES",
            "max_tiff_pages": "MAX_TIFF_PAGES",
            "max_json_depth": "MAX_JSON_DEPTH",
            "max_json_bytes": "MAX_JSON_BYTES",
        }
        return DecodeBudget(
            **{
                f: int(getattr(self, f) if getattr(self, f) is not None else g[c])
                for f, c in names.items()
            }
        )


#: Modalities accepted by default: ultrasound, and "other" (secondary captures of a
#: scanner's screen). Files without a Modality element are accepted too.
ULTRASOUND_MODALITIES: tuple[str, ...] = ("US", "OT")

#: Plain-English names of common DICOM modalities, for error messages.
MODALITY_NAMES: dict[str, str] = {
    "US": "ultrasound",
    "IVUS": "intravascular ultrasound",
    "OT": "other",
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "CR": "computed radiography",
    "DX": "digital radiography",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "RF": "radio fluoroscopy",
    "IO": "intra-oral radiography",
    "PX": "panoramic X-ray",
    "ES": "endoscopy",
    "XC": "external-camera photography",
    "OP": "ophthalmic photography",
    "SM": "slide microscopy",
    "RTIMAGE": "radiotherapy image",
    "RTDOSE": "radiotherapy dose",
    "RTSTRUCT": "radiotherapy structure set",
    "RTPLAN": "radiotherapy plan",
    "SR": "structured report",
    "SEG": "segmentation",
    "PR": "presentation state",
    "DOC": "document",
}


@dataclass(frozen=True)
class ReaderSettings:
    """Defaults the readers use when a call does not pass its own.

    Attributes
    ----------
    budget : DecodeBudget
        The decode budget.
    allow_modality : bool or tuple of str
        ``False``: only :data:`ULTRASOUND_MODALITIES` (and files without a
        Modality); ``True``: any modality; a tuple: these modality codes too.
    """

    budget: DecodeBudget = field(default_factory=DecodeBudget)
    allow_modality: bool | tuple[str, ...] = False


_SETTINGS: contextvars.ContextVar[ReaderSettings] = contextvars.ContextVar(
    "buscad_reader_settings",
    default=ReaderSettings(),  # noqa: B039 - frozen dataclass, immutable
)


@contextlib.contextmanager
def reader_settings(
    *, budget: DecodeBudget | None = None, allow_modality: bool | Iterable[str] | None = None
) -> Iterator[ReaderSettings]:
    """Set the decode budget and accepted modalities for the readers in this context.

    Parameters
    ----------
    budget : DecodeBudget, optional
        Budget used by every reader call that does not pass one.
    allow_modality : bool or iterable of str, optional
        ``True`` accepts any DICOM modality (``--any-modality``); codes add to
        :data:`ULTRASOUND_MODALITIES`.

    Yields
    ------
    ReaderSettings
        The settings in force (per thread / asyncio task: a context variable).
    """
    cur = _SETTINGS.get()
    new = ReaderSettings(
        budget=budget if budget is not None else cur.budget,
        allow_modality=cur.allow_modality
        if allow_modality is None
        else _modality_arg(allow_modality),
    )
    token = _SETTINGS.set(new)
    try:
        yield new
    finally:
        _SETTINGS.reset(token)


def _modality_arg(value: bool | Iterable[str]) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return True if value.strip().lower() == "any" else (value.strip().upper(),)
    return tuple(str(v).strip().upper() for v in value)


def _budget(budget: DecodeBudget | None) -> DecodeBudget:
    return (budget if budget is not None else _SETTINGS.get().budget).resolved()


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def _refuse_size(
    p: Path, w: int, h: int, samples: float, bits: int, b: DecodeBudget, what: str = "image"
) -> None:
    """Raise DecodeBudgetError when ``w x h`` pixels or their decoded bytes exceed the budget.

    Decoded bytes are ``w x h x samples x ceil(bits / 8)``.
    """
    if w <= 0 or h <= 0:
        raise ImageReadError(p, f"{what} header declares an empty size {w}x{h}")
    if w * h > b.max_pixels:
        raise DecodeBudgetError(
            p,
            f"{what} is {w}x{h} pixels, above the {b.max_pixels} pixel limit "
            "(possible decompression bomb)",
        )
    n = int(w * h * samples * max(1, (int(bits) + 7) // 8))
    if n > b.max_bytes:
        raise DecodeBudgetError(
            p,
            f"{what} of {w}x{h} pixels would decode to {_mib(n)}, above the "
            f"{_mib(b.max_bytes)} decode budget (possible decompression bomb)",
        )


def _check_file_size(p: Path, b: DecodeBudget, limit: int | None = None) -> int:
    size = p.stat().st_size
    lim = b.max_file_bytes if limit is None else limit
    if size > lim:
        raise DecodeBudgetError(p, f"file is {_mib(size)}, above the {_mib(lim)} file budget")
    return size


def _check_header(p: Path, fmt: str, b: DecodeBudget) -> dict:
    """Check an image's declared size against the budget from its headers alone.

    Returns what the walk learnt (``pages`` for TIFF, ``scans`` for JPEG).
    """
    _check_file_size(p, b)
    with open(p, "rb") as fh:
        if fmt == "png":
            return _check_png(p, fh, b)
        if fmt == "bmp":
            return _check_bmp(p, fh, b)
        if fmt == "tiff":
            return _check_tiff(p, fh, b)
        if fmt == "jpeg":
            return _check_jpeg(p, fh, b)
        if fmt == "gif":
            head = fh.read(10)
            if len(head) < 10:
                raise ImageReadError(p, "GIF header is truncated")
            w, h = struct.unpack("<HH", head[6:10])
            _refuse_size(p, w, h, 4, 8, b)
            return {}
    return {}


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _check_png(p: Path, fh: BinaryIO, b: DecodeBudget) -> dict:
    """PNG: IHDR size, bit depth and colour type; IDAT total against deflate's 1032:1 ceiling."""
    fh.seek(8)
    w = h = 0
    idat = 0
    n_chunks = 0
    seen_ihdr = False
    while True:
        hdr = fh.read(8)
        if len(hdr) < 8:
            break
        length, kind = struct.unpack(">I4s", hdr)
        n_chunks += 1
        if n_chunks > 100_000:
            raise ImageReadError(p, "PNG has more than 100000 chunks (corrupt or hostile file)")
        if kind == b"IHDR":
            data = fh.read(13)
            if len(data) < 13:
                raise ImageReadError(p, "PNG header (IHDR) is truncated")
            w, h, depth, ctype = struct.unpack(">IIBB", data[:10])
            if ctype not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
                raise ImageReadError(
                    p, f"PNG header has an invalid colour type {ctype} / bit depth {depth}"
                )
            # Pillow decodes palettes to RGB(A) and sub-byte depths to one byte per sample.
            samples = 4 if ctype == 3 else _PNG_CHANNELS[ctype]
            _refuse_size(p, w, h, samples, depth, b)
            seen_ihdr = True
            fh.seek(length - 13 + 4, 1)
            continue
        if kind == b"IDAT":
            idat += length
        elif kind == b"IEND":
            break
        fh.seek(length + 4, 1)
    if not seen_ihdr:
        raise ImageReadError(p, "PNG has no header chunk (IHDR): corrupt or truncated")
    if idat == 0:
        raise ImageReadError(p, "PNG has no image data (IDAT chunk), file truncated or corrupt")
    raw = h * (1 + (w * _PNG_CHANNELS.get(ctype, 4) * depth + 7) // 8)
    if raw > idat * 1032 + 1024:  # deflate cannot expand more than ~1032:1
        raise ImageReadError(
            p,
            f"PNG declares {w}x{h} pixels ({_mib(raw)}) but holds only {idat} bytes of "
            "compressed data: truncated or corrupt",
        )
    return {}


def _check_bmp(p: Path, fh: BinaryIO, b: DecodeBudget) -> dict:
    """BMP: DIB header width, height, bits per pixel and compression; uncompressed data present."""
    head = fh.read(54)
    if len(head) < 26:
        raise ImageReadError(p, "BMP header is truncated")
    offset = struct.unpack("<I", head[10:14])[0]
    dib = struct.unpack("<I", head[14:18])[0]
    if dib == 12:
        w, h, _planes, bpp = struct.unpack("<HHHH", head[18:26])
        comp = 0
    else:
        if len(head) < 34:
            raise ImageReadError(p, "BMP header is truncated")
        w, h, _planes, bpp, comp = struct.unpack("<iiHHI", head[18:34])
    h = abs(h)
    if w <= 0 or h <= 0 or bpp not in (1, 2, 4, 8, 16, 24, 32):
        raise ImageReadError(p, f"BMP header is invalid (size {w}x{h}, {bpp} bits per pixel)")
    _refuse_size(p, w, h, max(1, bpp // 8) if bpp > 8 else 4, 8, b)
    if comp in (0, 3, 6):  # uncompressed / bit fields: every row must be in the file
        need = ((w * bpp + 31) // 32) * 4 * h
        have = p.stat().st_size - offset
        if have < need:
            raise ImageReadError(
                p, f"BMP declares {w}x{h} pixels ({need} bytes) but holds {max(have, 0)}: truncated"
            )
    return {}


_TIFF_TYPES = {1: 1, 3: 2, 4: 4, 16: 8}


def _check_tiff(p: Path, fh: BinaryIO, b: DecodeBudget) -> dict:
    """TIFF: walk every page (IFD); each needs ImageWidth/ImageLength and must fit the budget."""
    head = fh.read(8)
    if len(head) < 8:
        raise ImageReadError(p, "TIFF header is truncated")
    end = "<" if head[:2] == b"II" else ">"
    offset = struct.unpack(end + "I", head[4:8])[0]
    size = p.stat().st_size
    seen: set[int] = set()
    pages = 0
    while offset:
        if offset in seen:
            raise ImageReadError(p, f"TIFF page {pages + 1} loops back to an earlier page")
        if offset + 2 > size:
            raise ImageReadError(p, f"TIFF page {pages + 1} lies beyond the end of the file")
        seen.add(offset)
        pages += 1
        if pages > b.max_tiff_pages:
            raise DecodeBudgetError(p, f"TIFF has more than {b.max_tiff_pages} pages")
        fh.seek(offset)
        (n,) = struct.unpack(end + "H", fh.read(2))
        data = fh.read(12 * n + 4)
        if len(data) < 12 * n + 4:
            raise ImageReadError(p, f"TIFF page {pages} directory is truncated")
        tags: dict[int, int] = {}
        for i in range(n):
            tag, typ, count, raw = struct.unpack(end + "HHI4s", data[12 * i : 12 * i + 12])
            if tag not in (256, 257, 258, 277) or typ not in _TIFF_TYPES or count < 1:
                continue
            width = _TIFF_TYPES[typ]
            if width * count <= 4:
                chunk = raw[:width]
            else:  # value stored elsewhere: read its first item
                (where,) = struct.unpack(end + "I", raw)
                fh.seek(where)
                chunk = fh.read(width)
                if len(chunk) < width:
                    continue
            fmt_ = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
            tags[tag] = struct.unpack(end + fmt_, chunk)[0]
        if 256 not in tags or 257 not in tags:
            raise ImageReadError(
                p, f"TIFF page {pages} has no ImageWidth/ImageLength (missing dimensions)"
            )
        _refuse_size(
            p,
            tags[256],
            tags[257],
            max(1, tags.get(277, 1)),
            tags.get(258, 8),
            b,
            f"TIFF page {pages}",
        )
        offset = struct.unpack(end + "I", data[12 * n : 12 * n + 4])[0]
    if pages == 0:
        raise ImageReadError(p, "TIFF has no page")
    return {"pages": pages}


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _check_jpeg(p: Path, fh: BinaryIO, b: DecodeBudget) -> dict:
    """JPEG: frame size (SOF) and number of scans (SOS), walking the markers to EOI."""
    data = fh.read()  # bounded by the file budget; JPEGs are small
    pos, n = 2, len(data)
    w = h = comps = 0
    scans = 0
    while pos < n:
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                break
            pos = nxt
            continue
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7 or marker == 0x00:
            continue
        if pos + 2 > n:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker in _JPEG_SOF and pos + 8 <= n and not w:
            h = int.from_bytes(data[pos + 3 : pos + 5], "big")
            w = int.from_bytes(data[pos + 5 : pos + 7], "big")
            comps = data[pos + 7]
            _refuse_size(p, max(w, 1), max(h, 1), max(comps, 1), 8, b)
        pos += length
        if marker == 0xDA:  # SOS: skip the entropy-coded data that follows
            scans += 1
            if scans > b.max_jpeg_scans:
                raise DecodeBudgetError(
                    p,
                    f"JPEG has more than {b.max_jpeg_scans} scans (progressive scan bomb)",
                )
            if w and scans * w * h > b.max_jpeg_scan_pixels:
                raise DecodeBudgetError(
                    p,
                    f"JPEG has {scans}+ scans of {w}x{h} pixels, above the "
                    f"{b.max_jpeg_scan_pixels} scan-pixel budget (progressive scan bomb)",
                )
            while True:
                nxt = data.find(b"\xff", pos)
                if nxt < 0 or nxt + 1 >= n:
                    pos = n
                    break
                m = data[nxt + 1]
                if m == 0x00 or 0xD0 <= m <= 0xD7 or m == 0xFF:
                    pos = nxt + (2 if m != 0xFF else 1)
                    continue
                pos = nxt
                break
    if not w or not h:
        raise ImageReadError(p, "JPEG has no frame header (SOF) with a size: truncated or corrupt")
    return {"scans": scans}


def _open_pil(p: Path, b: DecodeBudget | None = None) -> Image.Image:
    """Open and decode with Pillow, turning bombs, truncation and garbage into ImageReadError.

    The size Pillow reads from the header is checked against the budget
    (:class:`DecodeBudget`) before any pixel is decoded; Pillow's own
    decompression-bomb warning is turned into an error as a second guard.
    The file is closed on every error; on success the caller closes the image
    (multi-frame formats keep their file open after ``load``).
    """
    b = _budget(b)
    img: Image.Image | None = None
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data"
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(p)
                samples = max(1, len(img.getbands())) if img.mode != "P" else 4
                bits = 16 if img.mode.startswith("I;16") else 32 if img.mode in ("I", "F") else 8
                _refuse_size(p, img.width, img.height, samples, bits, b)
                img.load()
        except BaseException:
            if img is not None:  # a refused or undecodable image: close its file now
                img.close()
            raise
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeBudgetError(
            p, f"refused as a possible decompression bomb ({_short(exc)})"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(
            p, "cannot identify image content (corrupt or truncated header)"
        ) from exc
    except OSError as exc:
        msg = str(exc).lower()
        if "truncated" in msg or "broken data stream" in msg or "unexpected end" in msg:
            raise ImageReadError(p, "image file is truncated or corrupt") from exc
        raise ImageReadError(p, f"cannot decode image ({_short(exc)})") from exc
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to decode the image") from exc
    except Exception as exc:  # Pillow raises SyntaxError, struct.error, EOFError... on garbage
        raise ImageReadError(
            p, f"image file is corrupt ({type(exc).__name__}: {_short(exc)})"
        ) from exc
    return img


def _read_pil(
    p: Path, fmt: str, b: DecodeBudget | None = None, info: dict | None = None
) -> tuple[np.ndarray, ImageMeta]:
    pages = int((info or {}).get("pages", 1))
    if pages > 1 and fmt != "gif":
        raise ImageReadError(p, f"multi-frame image ({pages} frames) is not supported")
    with _open_pil(p, b) as src:
        return _pil_to_gray(p, fmt, src)


def _pil_to_gray(p: Path, fmt: str, img: Image.Image) -> tuple[np.ndarray, ImageMeta]:
    """Grayscale pixels and metadata of an opened Pillow image (see :func:`read_image`)."""
    mode = img.mode
    transparent = 0.0
    alpha: np.ndarray | None = None
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "PA":
        img = img.convert("RGBA")
    m = img.mode
    if m in ("RGBA", "LA"):
        arr = np.asarray(img)
        alpha = arr[..., -1]
        transparent = float((alpha == 0).mean())
        if m == "RGBA":
            gray, frac = _rgb_to_gray(arr[..., :3], alpha > 0)
        else:
            gray, frac = arr[..., 0].copy(), 0.0
        bit = 8
    elif m == "RGB":
        gray, frac = _rgb_to_gray(np.asarray(img))
        bit = 8
    elif m == "L":
        gray = np.asarray(img).copy()
        frac = 0.0
        bit = 8
    elif m in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raw = np.asarray(img)
        gray, bit = _to_uint(raw)
        frac = 0.0
    else:  # pragma: no cover - exotic modes
        raise ImageReadError(p, f"unsupported pixel mode {mode!r}")
    if alpha is not None:
        gray = gray.copy()
        gray[alpha == 0] = 0
    has_colour = frac > COLOUR_FRACTION_MIN
    meta = ImageMeta(
        path=str(p),
        format="jpeg" if fmt == "jpeg" else fmt,
        height=int(gray.shape[0]),
        width=int(gray.shape[1]),
        bit_depth=bit,
        has_colour=bool(has_colour),
        colour_fraction=float(frac),
        transparent_fraction=transparent,
        photometric=mode,
    )
    return np.ascontiguousarray(gray), meta


def _rgb_to_gray(rgb: np.ndarray, opaque: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Luma of an RGB array and the fraction of coloured pixels.

    Luma is ITU-R 601, ``Y = 0.299 R + 0.587 G + 0.114 B``, rounded. The
    colour fraction is computed by :func:`colour_fraction`.
    """
    dtype = np.uint16 if rgb.dtype == np.uint16 else np.uint8
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
    frac = colour_fraction(rgb, opaque, luma=y)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(y), 0, top).astype(dtype), frac


def colour_fraction(
    rgb: np.ndarray, opaque: np.ndarray | None = None, *, luma: np.ndarray | None = None
) -> float:
    """Fraction of pixels whose colour departs from the image's own gray tint.

    Some scanners display B-mode through a tinted gray map (BrEaST images are
    slightly blue: ``B ~ 1.1 Y``), which is not a colour overlay. So each
    channel ``C`` is modelled as a linear function of luma, ``C ~ a_C Y + b_C``
    (least squares over the opaque pixels, refitted once without the pixels
    flagged by the first fit), and a pixel is *coloured* when
    ``max_C |C - (a_C Y + b_C)| > t`` with ``t`` = :data:`COLOUR_CHROMA_THRESHOLD`
    (times 257 for 16-bit channels). A fit is only trusted as a tint when
    ``|a_C - 1| <= TINT_MAX_GAIN`` and ``|b_C| <= t`` for every channel; otherwise
    ``a = 1, b = 0`` is used (images with few gray levels, or mostly colour). Pure gray images (``R = G = B``) give
    ``a = 1, b = 0`` and reduce to the plain chroma test
    ``max(R,G,B) - min(R,G,B) > t``, which is also checked first: an image with
    no pixel above ``t`` in chroma is not coloured and is not fitted.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` uint8 or uint16.
    opaque : numpy.ndarray, optional
        Boolean ``(H, W)``: the pixels to count (alpha > 0). All by default.
    luma : numpy.ndarray, optional
        Precomputed float luma (saves time).

    Returns
    -------
    float
        ``#coloured opaque pixels / #opaque pixels`` (0 when none is opaque).
    """
    t = float(COLOUR_CHROMA_THRESHOLD * (257 if rgb.dtype == np.uint16 else 1))
    chans = [rgb[..., i] for i in range(3)]
    hi = np.maximum(np.maximum(chans[0], chans[1]), chans[2])
    lo = np.minimum(np.minimum(chans[0], chans[1]), chans[2])
    raw = (hi.astype(np.float32) - lo) > t
    if opaque is not None:
        raw &= opaque
    n_opaque = int(opaque.sum()) if opaque is not None else raw.size
    if n_opaque == 0 or not raw.any():
        return 0.0
    fchans = [c.astype(np.float32) for c in chans]
    y = (
        luma
        if luma is not None
        else (
            fchans[0] * np.float32(0.299)
            + fchans[1] * np.float32(0.587)
            + fchans[2] * np.float32(0.114)
        )
    )
    keep = np.ones(y.shape, bool) if opaque is None else opaque
    stride = max(1, y.size // 50_000)  # fit on a regular subsample: fast and plenty
    fit = keep.reshape(-1)[::stride].copy()
    ys = y.reshape(-1)[::stride]
    cs = [c.reshape(-1)[::stride] for c in fchans]
    identity = [(1.0, 0.0)] * 3
    coefs = identity
    for _ in range(2):
        if fit.sum() < 10:
            break
        yf = ys[fit].astype(np.float64)
        my, vy = yf.mean(), yf.var()
        coefs = []
        for c in cs:
            cf = c[fit].astype(np.float64)
            a = float(((yf - my) * (cf - cf.mean())).mean() / vy) if vy > 0 else 1.0
            coefs.append((a, float(cf.mean() - a * my)))
        if not all(abs(a - 1.0) <= TINT_MAX_GAIN and abs(b0) <= t for a, b0 in coefs):
            coefs = identity  # not a gray tint: a few gray levels or real colour dominate
        res = np.zeros(ys.shape, np.float32)
        for c, (a, b0) in zip(cs, coefs, strict=True):
            np.maximum(res, np.abs(c - (np.float32(a) * ys + np.float32(b0))), out=res)
        fit = keep.reshape(-1)[::stride] & (res <= t)
    res = np.zeros(y.shape, np.float32)
    for c, (a, b0) in zip(fchans, coefs, strict=True):
        np.maximum(res, np.abs(c - (np.float32(a) * y + np.float32(b0))), out=res)
    coloured = res > t
    if opaque is not None:
        coloured &= opaque
    return float(coloured.sum() / n_opaque)


def _to_uint(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Map an integer/float array to uint8 (if it fits) or uint16."""
    raw = np.asarray(raw)
    if raw.dtype == np.uint8:
        return raw.copy(), 8
    if np.issubdtype(raw.dtype, np.floating):
        lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
        scale = 65535.0 / (hi - lo) if hi > lo else 0.0
        return np.rint((np.nan_to_num(raw, nan=lo) - lo) * scale).astype(np.uint16), 16
    lo, hi = int(raw.min()), int(raw.max())
    if lo >= 0 and hi <= 255 and raw.dtype.itemsize == 1:
        return raw.astype(np.uint8), 8
    if lo >= 0 and hi <= 65535:
        return raw.astype(np.uint16), 16
    # signed or wider range: shift and rescale into 16 bits
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.rint((raw.astype(np.float64) - lo) * scale).astype(np.uint16), 16


@contextlib.contextmanager
def quiet_dicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records while reading a file.

    pydicom reports invalid element values in its warnings and in the
    ``pydicom`` logger, quoting the values (``Invalid value for VR DA:
    '<birth date>'``): a malformed date or name would end up in the console or
    a log file. Readers in buscad wrap every
    pydicom call and every header access in this context; problems that matter
    surface as :class:`~buscad.errors.ImageReadError` messages, which never
    quote header values.
    """
    logger = logging.getLogger("pydicom")
    old_level, old_disabled = logger.level, logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(old_level)
        logger.disabled = old_disabled


_DEFLATED = "1.2.840.10008.1.2.1.99"


def _dicom_meta(p: Path) -> tuple[str, int]:
    """Transfer syntax UID of a DICOM file and the offset where its data set starts."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(p, "rb") as fh:
        read_preamble(fh, force=True)
        meta = _read_file_meta_info(fh)
        return str(meta.get("TransferSyntaxUID", "") or "").strip(), fh.tell()


def _check_deflated(p: Path, start: int, b: DecodeBudget) -> None:
    """Inflate a deflated data set in bounded steps; refuse it when it exceeds ``max_bytes``."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(p, "rb") as fh:
        fh.seek(start)
        while True:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            while chunk:
                out = d.decompress(chunk, 1 << 20)
                total += len(out)
                if total > b.max_bytes:
                    raise DecodeBudgetError(
                        p,
                        f"deflated DICOM inflates to more than {_mib(b.max_bytes)}, above the "
                        "decode budget (possible decompression bomb)",
                    )
                chunk = d.unconsumed_tail
            if d.eof:
                break


def _dcmread(
    p: Path, stop_before_pixels: bool = False, budget: DecodeBudget | None = None
) -> object:
    """Parse a DICOM file with pydicom within the budget; every failure is an ImageReadError.

    Elements longer than ``max_element_bytes`` are deferred (never read) and
    refused, except the pixel data, which is not read here when
    ``stop_before_pixels``. A deflated data set is first inflated with a bounded
    budget.
    """
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(p, "pydicom is required to read DICOM files") from exc
    b = _budget(budget)
    _check_file_size(p, b)
    with open(p, "rb") as fh:
        head = fh.read(132)
    has_preamble = len(head) >= 132 and head[128:132] == b"DICM"
    try:
        with quiet_dicom():
            tsyntax, start = _dicom_meta(p)
    except Exception as exc:
        raise ImageReadError(
            p, f"cannot parse the DICOM file meta information ({_kind(exc)})"
        ) from exc
    if tsyntax == _DEFLATED:
        _check_deflated(p, start, b)
    try:
        with quiet_dicom():
            ds = pydicom.dcmread(
                p,
                force=True,
                stop_before_pixels=stop_before_pixels,
                defer_size=b.max_element_bytes,
            )
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to parse the DICOM file") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated or garbage files
        raise ImageReadError(
            p, f"cannot parse DICOM, file truncated or corrupt ({_kind(exc)})"
        ) from exc
    try:
        with quiet_dicom():
            plausible = has_preamble or any(
                k in ds
                for k in ("SOPClassUID", "PixelData", "Rows", "Modality")  # type: ignore[operator]
            )
    except Exception:
        plausible = has_preamble
    if not plausible:
        # force=True parses almost anything; demand real DICOM elements.
        raise ImageReadError(p, "not a DICOM file (no DICM preamble and no DICOM elements)")
    with quiet_dicom():
        for tag in list(ds.keys()):  # type: ignore[attr-defined]
            elem = ds.get_item(tag, keep_deferred=True)  # type: ignore[attr-defined]
            length = int(getattr(elem, "length", 0) or 0)
            if tag == 0x7FE00010 or length == 0xFFFFFFFF:
                continue
            if length > b.max_element_bytes:
                raise DecodeBudgetError(
                    p,
                    f"DICOM element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is {_mib(length)}, "
                    f"above the {_mib(b.max_element_bytes)} element budget",
                )
    return ds


def read_dicom_header(path: str | Path, budget: DecodeBudget | None = None) -> object:
    """Read a DICOM file's header (no pixel data) as a :class:`pydicom.Dataset`.

    Parameters
    ----------
    path : path-like
        A DICOM file.

    Returns
    -------
    pydicom.Dataset
        The header elements. Callers must not copy identifying elements
        (names, ids, dates) anywhere; see :mod:`buscad.data.importers`.

    Raises
    ------
    DecodeBudgetError
        An element above the budget (refused before it is read), or a deflated
        data set that inflates beyond it.
    ImageReadError
        Missing, empty, non-DICOM or unparseable files, and any other failure.
    """
    p = Path(path)
    try:
        fmt = sniff_format(p)
        if fmt != "dicom":
            raise ImageReadError(p, f"not a DICOM file (content looks like {fmt})")
        return _dcmread(p, stop_before_pixels=True, budget=budget)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(_safe_name(p), f"cannot read the DICOM header ({_kind(exc)})") from exc


def dicom_pixel_spacing_mm(ds: object) -> float | None:
    """Pixel size in mm of a DICOM dataset, or None when the header does not say.

    Taken from the first ultrasound region's ``PhysicalDeltaX`` when its units
    are cm (``PhysicalUnitsXDirection == 3``; mm = 10 x cm), else from
    ``PixelSpacing`` or ``ImagerPixelSpacing`` (already mm).
    """
    with quiet_dicom():
        return _dicom_spacing_mm(ds)


def _dicom_spacing_mm(ds: object) -> float | None:
    """Pixel size in mm from an ultrasound region (cm units) or PixelSpacing; None if absent."""
    try:
        regions = ds.get("SequenceOfUltrasoundRegions")  # type: ignore[attr-defined]
        if regions:
            r = regions[0]
            if int(r.get("PhysicalUnitsXDirection", 3)) == 3:  # 3 = cm
                return float(r.PhysicalDeltaX) * 10.0
        for key in ("PixelSpacing", "ImagerPixelSpacing"):
            if key in ds:
                return float(ds[key].value[0])  # type: ignore[index]
    except Exception:
        return None
    return None


def _read_dicom(
    p: Path, b: DecodeBudget, allow_modality: bool | tuple[str, ...], frame: int
) -> tuple[np.ndarray, ImageMeta]:
    """Read one frame of a DICOM image (grayscale, RGB, YBR or palette colour)."""
    with quiet_dicom():
        return _read_dicom_quietly(p, b, allow_modality, frame)


def _check_modality(p: Path, ds: object, allow: bool | tuple[str, ...]) -> str:
    """Refuse non-ultrasound modalities unless allowed; return the modality code ("" if none)."""
    try:
        modality = str(ds.get("Modality", "") or "").strip().upper()  # type: ignore[attr-defined]
    except Exception:
        modality = ""
    if allow is True or not modality or modality in ULTRASOUND_MODALITIES:
        return modality
    if isinstance(allow, tuple) and modality in allow:
        return modality
    # only a code of the table is shown: the header's own text never reaches a message
    name = MODALITY_NAMES.get(modality)
    shown = f"{modality} ({name})" if name else "(not a known modality code)"
    raise UnsupportedModalityError(
        p,
        f"modality {shown} is not ultrasound; "
        "use --any-modality (allow_modality=True) to read it anyway",
    )


def _read_dicom_quietly(
    p: Path, b: DecodeBudget, allow_modality: bool | tuple[str, ...], frame: int
) -> tuple[np.ndarray, ImageMeta]:
    ds = _dcmread(p, stop_before_pixels=True, budget=b)
    modality = _check_modality(p, ds, allow_modality)
    if "PixelData" not in ds and "Rows" not in ds:  # type: ignore[operator]
        raise ImageReadError(
            p, "DICOM file has no pixel data (PixelData element missing or file truncated)"
        )
    frames = _header_int(p, ds, "NumberOfFrames", 1)
    rows = _header_int(p, ds, "Rows")
    cols = _header_int(p, ds, "Columns")
    spp = _header_int(p, ds, "SamplesPerPixel", 1)
    bits = _header_int(p, ds, "BitsAllocated", 8)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()  # type: ignore[attr-defined]
    samples = 3 if photometric == "PALETTE COLOR" else max(spp, 1)  # palettes become RGB
    _refuse_size(p, cols, rows, samples, max(bits, 8), b)
    if frames < 1 or frames > b.max_frames:
        raise DecodeBudgetError(
            p, f"DICOM declares {frames} frames, outside 1..{b.max_frames} (frame budget)"
        )
    if not 0 <= frame < frames:
        raise ImageReadError(p, f"frame {frame} asked for, but the DICOM has {frames} frame(s)")
    burned = _burned_in_flag(ds)
    try:
        tsyntax = ds.file_meta.get("TransferSyntaxUID", None)  # type: ignore[attr-defined]
    except Exception:
        tsyntax = None
    try:
        arr = _dicom_frame(p, ds, frame, frames, b)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to decode the DICOM pixel data") from exc
    except Exception as exc:
        odd = (
            ""
            if photometric in _PHOTOMETRIC
            else "; PhotometricInterpretation is not a standard value"
        )
        raise ImageReadError(
            p,
            f"cannot decode DICOM pixel data ({_transfer_syntax_name(tsyntax)}): truncated, "
            f"corrupt or an unsupported compression ({_kind(exc)}{odd})",
        ) from exc
    frac = 0.0
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise ImageReadError(
                p, f"cannot apply the DICOM palette colour table ({_kind(exc)})"
            ) from exc
        if arr.dtype == np.uint16:  # palette colours are 8-bit on screen; keep 8 bits
            arr = np.rint(arr / 257.0).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb, _ = _to_uint(rgb)
        gray, frac = _rgb_to_gray(rgb)
        bit = 16 if gray.dtype == np.uint16 else 8
    elif arr.ndim == 2:
        if photometric == "MONOCHROME1":  # 0 is white: invert within the stored bit range
            arr = _invert_monochrome1(arr, ds)
        gray, bit = _to_uint(arr)
    else:
        shown = (
            photometric if photometric in _PHOTOMETRIC else "an unknown PhotometricInterpretation"
        )
        raise ImageReadError(p, f"unsupported DICOM pixel array shape {arr.shape} ({shown})")
    extra: dict = {"n_frames": frames, "frame": frame}
    if modality:
        extra["modality"] = modality
    meta = ImageMeta(
        path=str(p),
        format="dicom",
        height=int(gray.shape[0]),
        width=int(gray.shape[1]),
        bit_depth=bit,
        has_colour=frac > COLOUR_FRACTION_MIN,
        colour_fraction=float(frac),
        pixel_spacing_mm=_dicom_spacing_mm(ds),
        photometric=photometric,
        extra=extra,
        burned_in_annotation=burned,
    )
    return np.ascontiguousarray(gray), meta


#: PhotometricInterpretation values of the DICOM standard (PS3.3 C.7.6.3.1.2): the only ones
#: a message may name.
_PHOTOMETRIC = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
    }
)


def _header_int(p: Path, ds: object, name: str, default: int | None = None) -> int:
    """Integer value of header field ``name``; a missing or non-integer value is an ImageReadError.

    The message names the field, never its value (see :func:`_kind`).
    """
    try:
        value = ds.get(name, None)  # type: ignore[attr-defined]
    except Exception as exc:
        raise ImageReadError(p, f"DICOM header field {name} cannot be read ({_kind(exc)})") from exc
    if value is None or value == "":
        if default is None:
            raise ImageReadError(p, f"DICOM header lacks {name} (no valid image size)")
        return default
    try:
        return int(value)
    except Exception as exc:
        raise ImageReadError(p, f"DICOM header field {name} is not an integer") from exc


def _transfer_syntax_name(tsyntax: object) -> str:
    """pydicom's name of a transfer syntax it knows; never the header's own text."""
    try:
        from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

        uid = str(tsyntax or "")
        if uid in UID_dictionary:
            return str(UID_dictionary[uid][0])
    except Exception:
        pass
    return "an unknown transfer syntax" if tsyntax else "no transfer syntax"


def _burned_in_flag(ds: object) -> bool | None:
    """``BurnedInAnnotation`` (0028,0301): True for YES, False for NO, None when absent."""
    try:
        v = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()  # type: ignore[attr-defined]
    except Exception:
        return None
    return True if v == "YES" else False if v == "NO" else None


def _dicom_frame(p: Path, ds: object, frame: int, frames: int, b: DecodeBudget) -> np.ndarray:
    """Decode only frame ``frame`` with pydicom's pixel-data plugins.

    Reading from the path lets pydicom seek to that frame (native data) or
    fragment (compressed data) instead of loading every frame. Deflated data
    sets (already bounded by :func:`_check_deflated`) and files pydicom cannot
    read by path are decoded from the full data set.
    """
    from pydicom.pixels import pixel_array

    tsyntax = None
    try:
        tsyntax = ds.file_meta.get("TransferSyntaxUID", None)  # type: ignore[attr-defined]
    except Exception:
        tsyntax = None
    if tsyntax and str(tsyntax) != _DEFLATED:
        try:
            with open(p, "rb") as fh:
                return pixel_array(fh, index=frame)
        except MemoryError:
            raise
        except Exception:  # e.g. no PixelData there, an odd offset table: read the file whole
            pass
    full = _dcmread(p, stop_before_pixels=False, budget=b)
    if "PixelData" not in full:  # type: ignore[operator]
        raise ImageReadError(
            p, "DICOM file has no pixel data (PixelData element missing or file truncated)"
        )
    try:
        if not full.file_meta.get("TransferSyntaxUID"):  # type: ignore[attr-defined]
            from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

            full.file_meta.TransferSyntaxUID = (  # type: ignore[attr-defined]
                ImplicitVRLittleEndian if full.is_implicit_VR else ExplicitVRLittleEndian  # type: ignore[attr-defined]
            )
    except AttributeError:
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ImplicitVRLittleEndian

        full.file_meta = FileMetaDataset()  # type: ignore[attr-defined]
        full.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # type: ignore[attr-defined]
    pix = full.get_item(0x7FE00010, keep_deferred=True)  # type: ignore[attr-defined]
    length = int(getattr(pix, "length", 0) or 0)
    if length != 0xFFFFFFFF and length > b.max_bytes + 2**20:
        raise DecodeBudgetError(
            p,
            f"DICOM pixel data is {_mib(length)}, above the {_mib(b.max_bytes)} decode budget "
            "for a file read whole",
        )
    return pixel_array(full, index=frame)


def _invert_monochrome1(arr: np.ndarray, ds: object) -> np.ndarray:
    """Invert MONOCHROME1 pixels: ``v' = (2**BitsStored - 1) - v`` (unsigned), ``-1 - v`` (signed)."""
    try:
        bits = int(getattr(ds, "BitsStored", 0) or arr.dtype.itemsize * 8)
    except Exception:  # not an integer: the sample width is the stored range
        bits = arr.dtype.itemsize * 8
    if np.issubdtype(arr.dtype, np.signedinteger):
        return (-1 - arr.astype(np.int64)).astype(arr.dtype)
    top = (1 << bits) - 1
    out = top - np.clip(arr.astype(np.int64), 0, top)
    return out.astype(arr.dtype)


def image_size(path: str | Path, budget: DecodeBudget | None = None) -> tuple[int, int]:
    """Return ``(height, width)`` of an image without decoding its pixels.

    Parameters
    ----------
    path : path-like
        Any file :func:`read_image` accepts.
    budget : DecodeBudget, optional
        Limits checked from the headers (see :func:`read_image`).

    Returns
    -------
    tuple of int
        ``(height, width)``.

    Raises
    ------
    DecodeBudgetError
        Images above the budget.
    ImageReadError
        Unreadable headers, and any other failure.
    """
    p = Path(path)
    fmt = "unknown"
    try:
        b = _budget(budget)
        fmt = sniff_format(p)
        if fmt == "dicom":
            ds = _dcmread(p, stop_before_pixels=True, budget=b)
            try:
                with quiet_dicom():
                    h, w = int(ds.Rows), int(ds.Columns)  # type: ignore[attr-defined]
            except Exception as exc:
                raise ImageReadError(p, "DICOM header has no Rows/Columns") from exc
            _refuse_size(p, w, h, 1, 8, b)
        elif fmt in _PIL_FORMATS:
            _check_header(p, fmt, b)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(p) as img:
                        h, w = int(img.height), int(img.width)
            except Exception as exc:
                raise ImageReadError(
                    p, f"cannot decode image header, corrupt or truncated ({_short(exc)})"
                ) from exc
            _refuse_size(p, w, h, 1, 8, b)
        else:
            raise ImageReadError(
                p, "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM content)"
            )
    except ImageReadError:
        raise
    except Exception as exc:
        detail = _kind(exc) if fmt == "dicom" else f"{type(exc).__name__}: {_short(exc)}"
        raise ImageReadError(_safe_name(p), f"cannot read the image header ({detail})") from exc
    return h, w


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """Map a grayscale array to ``uint8``.

    ``uint8`` input is returned unchanged; anything else is windowed linearly
    from its 0.5th to 99.5th percentile onto 0..255.
    """
    if gray.dtype == np.uint8:
        return gray
    g = gray.astype(np.float32)
    lo, hi = np.percentile(g, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((g - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- masks


def split_mask_paths(value: object) -> list[str]:
    """Split a manifest ``mask_path`` cell into its paths (``;``-separated).

    Empty cells, NaN and None give an empty list.
    """
    if value is None:
        return []
    if isinstance(value, float) and np.isnan(value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [s.strip() for s in str(value).split(";") if s.strip()]


def read_mask(
    paths: str | Path | Sequence[str | Path],
    shape: tuple[int, int] | None = None,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Read one or several lesion masks and return their union.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        Binary raster masks (PNG/BMP/TIFF: any nonzero pixel of any colour
        channel is lesion; fully transparent pixels are not), LabelMe JSON files
        (``polygon``, ``rectangle``, ``circle`` and ``point``-free shapes are
        rasterised), or NIfTI/NRRD/MHA label maps (any nonzero voxel; a single
        slice is squeezed to 2-D, ITK-SNAP style). Several files are unioned.
    shape : tuple of int, optional
        The image's ``(height, width)``. When given, every mask must match it.
    budget : DecodeBudget, optional
        Limits checked from the headers before decoding (see :func:`read_image`).

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)`` array.

    Raises
    ------
    MaskDecodeBudgetError
        A mask above the budget (also a :class:`~buscad.errors.DecodeBudgetError`).
    MaskError
        Missing, unreadable or multi-slice files, size mismatches, and any
        other failure. Nothing else escapes.
    """
    if isinstance(paths, (str, Path)):
        plist = split_mask_paths(str(paths)) if isinstance(paths, str) else [paths]
    else:
        plist = list(paths)
    if not plist:
        raise MaskError("<mask>", "no mask path given")
    union: np.ndarray | None = None
    for mp in plist:
        m = _read_one_mask_safe(Path(mp), shape, _budget(budget))
        if union is None:
            union = m
        else:
            if m.shape != union.shape:
                raise MaskError(
                    mp,
                    f"mask size {m.shape[1]}x{m.shape[0]} differs from the other mask files "
                    f"({union.shape[1]}x{union.shape[0]})",
                )
            union |= m
    assert union is not None
    return union


@contextlib.contextmanager
def _mask_errors(p: Path, what: str) -> Iterator[None]:
    """Turn every failure inside the block into a :class:`MaskError` about ``what`` in ``p``."""
    try:
        yield
    except MaskError:
        raise
    except DecodeBudgetError as exc:
        raise MaskDecodeBudgetError(exc.path, exc.problem) from exc
    except ImageReadError as exc:
        raise MaskError(exc.path, exc.problem) from exc
    except MemoryError as exc:
        raise MaskError(_safe_name(p), f"not enough memory to read the {what}") from exc
    except Exception as exc:
        raise MaskError(
            _safe_name(p), f"cannot read the {what} ({type(exc).__name__}: {_short(exc)})"
        ) from exc


def _read_one_mask_safe(p: Path, shape: tuple[int, int] | None, b: DecodeBudget) -> np.ndarray:
    """:func:`_read_one_mask` with every failure turned into a MaskError."""
    with _mask_errors(p, "mask"):
        return _read_one_mask(p, shape, b)


def _read_one_mask(p: Path, shape: tuple[int, int] | None, b: DecodeBudget) -> np.ndarray:
    if not p.exists():
        raise MaskError(p, "mask file not found")
    if p.is_dir():
        raise MaskError(p, "is a directory, not a mask file")
    name = p.name.lower()
    try:
        if p.stat().st_size == 0:
            raise MaskError(p, "mask file is empty (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise MaskError(p, f"cannot open the mask file ({exc.strerror or exc})") from exc
    kind = _sniff_bytes(head, name)
    if kind == "json" or name.endswith(".json"):
        mask, _ = read_labelme(p, budget=b)
    elif kind == "nifti" or name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        mask = _read_itk_mask(p, b)
    elif kind in ("png", "bmp", "tiff", "gif", "jpeg"):
        info = _check_header(p, kind, b)
        if int(info.get("pages", 1)) > 1:
            raise MaskError(p, f"multi-page mask ({info['pages']} pages) is not supported")
        with _open_pil(p, b) as img:
            arr = np.asarray(img.convert("RGBA") if img.mode in ("P", "PA", "LA") else img)
        if kind == "jpeg":  # lossy: ringing makes "any nonzero" meaningless; use half scale
            arr = np.where(arr > 127, arr, 0).astype(np.uint8)
        if arr.ndim == 3:
            nch = arr.shape[-1]
            n_colour = nch - 1 if nch in (2, 4) else nch
            # channel by channel: much faster than .any(axis=-1) on interleaved data
            mask = arr[..., 0] != 0
            for c in range(1, n_colour):
                mask |= arr[..., c] != 0
            if n_colour != nch:  # fully transparent pixels are not lesion
                mask &= arr[..., -1] > 0
        else:
            mask = arr != 0
    else:
        raise MaskError(p, "not a recognised mask (expected PNG/BMP/TIFF, LabelMe JSON or NIfTI)")
    mask = np.ascontiguousarray(mask.astype(bool))
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise MaskError(
            p,
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {shape[1]}x{shape[0]}",
        )
    return mask


def _read_itk_mask(p: Path, b: DecodeBudget) -> np.ndarray:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover
        raise MaskError(p, "SimpleITK is required to read NIfTI masks") from exc
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        _check_file_size(p, b)
        reader.ReadImageInformation()
        size = [int(v) for v in reader.GetSize()]
        n_vox = int(np.prod(size, dtype=np.float64))
        n_comp = max(1, int(reader.GetNumberOfComponents()))
        if n_vox > b.max_pixels:
            raise MaskDecodeBudgetError(
                p, f"label map has {n_vox} voxels, above the {b.max_pixels} pixel limit"
            )
        n_bytes = n_vox * n_comp * 8  # worst case: 64-bit voxels
        if n_bytes > b.max_bytes:
            raise MaskDecodeBudgetError(
                p,
                f"label map of {n_vox} voxels x {n_comp} components may decode to "
                f"{_mib(n_bytes)}, above the {_mib(b.max_bytes)} decode budget",
            )
        img = reader.Execute()
    except MaskError:
        raise
    except Exception as exc:
        raise MaskError(
            p, f"cannot read label map ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from exc
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) or (y, x)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr.any(axis=-1)
    if arr.ndim != 2:
        raise MaskError(p, f"label map has shape {arr.shape}; expected one 2-D slice")
    return arr != 0


_JSON_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{}]')


def json_depth(text: str, limit: int) -> int:
    """Nesting depth of a JSON text, counting ``[`` and ``{`` outside strings.

    Stops as soon as the depth exceeds ``limit`` (and returns ``limit + 1``), so
    a hostile file is measured in one linear pass, without recursion.
    """
    depth = best = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        elif c in "]}":
            depth -= 1
    return best


def _check_image_path(p: Path, value: object) -> str:
    """A LabelMe ``imagePath`` that is safe to join to the JSON's folder, else MaskError.

    Refused: non-strings, NUL bytes, more than :data:`MAX_IMAGE_PATH` characters
    or a part longer than 255 UTF-8 bytes, absolute paths (POSIX or Windows) and
    ``..`` parts.
    """
    if not isinstance(value, str):
        raise MaskError(p, f"LabelMe imagePath is not a string ({type(value).__name__})")
    if "\x00" in value:
        raise MaskError(p, "LabelMe imagePath contains a NUL byte")
    if len(value) > MAX_IMAGE_PATH:
        raise MaskError(
            p, f"LabelMe imagePath is {len(value)} characters long (limit {MAX_IMAGE_PATH})"
        )
    norm = value.replace("\\", "/")
    if (
        PurePosixPath(norm).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or (PureWindowsPath(value).drive)
    ):
        raise MaskError(p, "LabelMe imagePath is absolute; it must be relative to the JSON file")
    parts = PurePosixPath(norm).parts
    if ".." in parts:
        raise MaskError(p, "LabelMe imagePath leaves the JSON file's folder ('..')")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        raise MaskError(p, "LabelMe imagePath has a part longer than 255 bytes")
    return norm


def read_labelme(
    path: str | Path, *, require_image: bool = True, budget: DecodeBudget | None = None
) -> tuple[np.ndarray, Path | None]:
    """Rasterise a LabelMe JSON annotation into a boolean mask.

    Parameters
    ----------
    path : path-like
        LabelMe ``.json`` with ``shapes``, ``imageHeight``, ``imageWidth`` and
        ``imagePath`` (relative to the JSON file) or embedded ``imageData``.
    require_image : bool, default True
        Raise when ``imagePath`` points at a missing file and no image is embedded.

    Returns
    -------
    mask : numpy.ndarray
        Boolean ``(imageHeight, imageWidth)`` array: union of all shapes.
    image_path : pathlib.Path or None
        The referenced image, resolved against the JSON's folder.

    Raises
    ------
    MaskDecodeBudgetError
        A file, nesting depth or canvas above the budget.
    MaskError
        Invalid JSON, unsafe ``imagePath`` (NUL byte, too long, absolute,
        ``..``), bad shapes, and any other failure. Nothing else escapes.
    """
    p = Path(path)
    with _mask_errors(p, "LabelMe file"):
        return _read_labelme(p, require_image, _budget(budget))


def _read_labelme(p: Path, require_image: bool, b: DecodeBudget) -> tuple[np.ndarray, Path | None]:
    try:
        size = p.stat().st_size
        if size > b.max_json_bytes:
            raise MaskDecodeBudgetError(
                p, f"LabelMe file is {_mib(size)}, above the {_mib(b.max_json_bytes)} JSON budget"
            )
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MaskError(p, f"not valid LabelMe JSON ({_short(exc)})") from exc
    depth = json_depth(text, b.max_json_depth)
    if depth > b.max_json_depth:
        raise MaskDecodeBudgetError(
            p, f"LabelMe JSON is nested deeper than {b.max_json_depth} levels"
        )
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MaskError(p, f"not valid LabelMe JSON ({_short(exc)})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise MaskError(p, "not a LabelMe annotation (no 'shapes' list)")
    image_path: Path | None = None
    if doc.get("imagePath"):
        rel = _check_image_path(p, doc["imagePath"])
        image_path = (p.parent / rel).resolve()
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    embedded = doc.get("imageData")
    if require_image and (image_path is None or not image_path.exists()) and not embedded:
        raise MaskError(
            p, f"LabelMe imagePath points at a missing image ({doc.get('imagePath')!r})"
        )
    if not (h and w):
        if image_path is not None and image_path.exists():
            try:
                h, w = image_size(image_path, b)
            except ImageReadError as exc:
                raise MaskError(p, f"its image cannot be read: {exc}") from exc
        elif embedded:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(_io.BytesIO(base64.b64decode(str(embedded)))) as im:
                        w, h = im.size
            except Exception as exc:
                raise MaskError(p, f"embedded imageData cannot be decoded ({_short(exc)})") from exc
        else:
            raise MaskError(p, "LabelMe file lacks imageHeight/imageWidth")
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MaskError(
            p, f"imageHeight/imageWidth are not integers ({repr(h)[:40]}, {repr(w)[:40]})"
        ) from exc
    if h <= 0 or w <= 0:
        raise MaskError(p, f"implausible image size {w}x{h} in the LabelMe file")
    if h * w > b.max_pixels:
        raise MaskDecodeBudgetError(
            p, f"LabelMe image size {w}x{h} is above the {b.max_pixels} pixel limit"
        )
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    n = 0
    for k, shape in enumerate(doc["shapes"]):
        try:
            pts = [(float(pt[0]), float(pt[1])) for pt in shape.get("points", [])]
            kind = shape.get("shape_type") or "polygon"
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise MaskError(p, f"shape #{k} has malformed points ({_short(exc)})") from exc
        if not all(np.isfinite(v) for pt in pts for v in pt):
            raise MaskError(p, f"shape #{k} has non-finite point coordinates")
        try:
            if kind == "polygon" and len(pts) >= 3:
                draw.polygon(pts, fill=1, outline=1)
            elif kind == "rectangle" and len(pts) == 2:
                (x0, y0), (x1, y1) = pts
                draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=1)
            elif kind == "circle" and len(pts) == 2:
                (cx, cy), (px, py) = pts
                r = float(np.hypot(px - cx, py - cy))
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
            else:
                continue
        except (OverflowError, ValueError, TypeError) as exc:
            raise MaskError(p, f"shape #{k} cannot be drawn ({_short(exc)})") from exc
        n += 1
    if n == 0:
        raise MaskError(p, "LabelMe file has no polygon, rectangle or circle shapes")
    return np.asarray(canvas, dtype=bool), image_path


def write_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """Write a boolean mask as an 8-bit PNG (0/255), atomically."""
    from buscad.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask, dtype=bool) * 255).astype(np.uint8), mode="L").save(
            tmp, format="PNG"
        )


def iter_image_files(root: str | Path, recursive: bool = True) -> Iterable[Path]:
    """Yield files below ``root`` whose suffix looks like an image, in sorted order."""
    root = Path(root)
    pattern = "**/*" if recursive else "*"
    for f in sorted(root.glob(pattern)):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            yield f
