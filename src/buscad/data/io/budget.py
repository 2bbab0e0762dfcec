"""The decode budget: limits checked from headers before anything is decoded, and the
reader settings (budget and accepted modalities) in force for a context.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from buscad.errors import DecodeBudgetError, ImageReadError

#: Default largest decoded frame, in pixels (decompression-bomb guard): 4 Mpx = 2048 x 2048,
#: above any ultrasound frame (typically < 1 Mpx) and full-HD screen captures. Reading an
#: image at this limit adds about 200 MB of memory (benchmarks/fuzz.py, budget edge);
#: larger images need ``read_image(..., budget=DecodeBudget(max_pixels=...))``.
MAX_PIXELS = 2**22


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
        """The same budget with every ``None`` replaced by its module constant.

        The constants are read from the package :mod:`buscad.data.io`, where they are
        public (``buscad.data.io.MAX_PIXELS = ...`` changes every reader's default); it is
        always loaded before this module, so this reads its namespace without importing it.
        """
        g = vars(sys.modules[__package__ or "buscad.data.io"])
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
