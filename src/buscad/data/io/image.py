"""The image readers' entry points: :func:`read_image`, :func:`image_size` and
:func:`burned_in_warning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from buscad.data.io.budget import _SETTINGS, DecodeBudget, _budget, _modality_arg, _refuse_size
from buscad.data.io.colour import to_uint8
from buscad.data.io.dicom import _dcmread, _read_dicom, quiet_dicom
from buscad.data.io.messages import _kind, _safe_name, _short
from buscad.data.io.meta import ImageMeta
from buscad.data.io.raster import _check_header, _read_pil
from buscad.data.io.sniff import _PIL_FORMATS, sniff_format
from buscad.errors import ImageReadError


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
