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
import io as _io
import json
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile

from buscad.errors import ImageReadError, MaskError

#: Largest image accepted, in pixels (guards against decompression bombs).
#: 64 Mpx is far above any ultrasound frame (typically < 1 Mpx).
MAX_PIXELS = 64_000_000

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
        When the file is missing or empty.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image file")
    try:
        size = p.stat().st_size
        if size == 0:
            raise ImageReadError(p, "file is empty (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise ImageReadError(p, f"cannot open the file ({exc.strerror or exc})") from exc
    return _sniff_bytes(head, p.name)


def _sniff_bytes(head: bytes, name: str = "") -> str:
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
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
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


def read_image(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read an ultrasound image as a 2-D grayscale array.

    Parameters
    ----------
    path : path-like
        PNG, JPEG, BMP, TIFF or single-frame DICOM file.

    Returns
    -------
    gray : numpy.ndarray
        ``(H, W)`` array, ``uint8`` for 8-bit sources and ``uint16`` for
        16-bit ones. Colour sources are converted with ITU-R 601 luma
        ``Y = 0.299 R + 0.587 G + 0.114 B``; transparent pixels (alpha 0) are 0.
    meta : ImageMeta
        Format, size, bit depth and colour content.

    Raises
    ------
    ImageReadError
        Missing, empty, truncated, unrecognised, oversized, multi-frame or
        pixel-less files. The message names the file and the problem.
    """
    p = Path(path)
    fmt = sniff_format(p)
    if fmt == "dicom":
        return _read_dicom(p)
    if fmt in ("png", "jpeg", "bmp", "tiff", "gif"):
        return _read_pil(p, fmt)
    if fmt == "json":
        raise ImageReadError(
            p, "is a JSON file, not an image (LabelMe annotations go in mask_path)"
        )
    raise ImageReadError(
        p, "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM content)"
    )


def burned_in_warning(gray: np.ndarray, meta: ImageMeta) -> str | None:
    """One-line warning when the pixels may carry burned-in text (dates, IDs, names).

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
    if meta.burned_in_annotation:
        return (
            "the DICOM header says BurnedInAnnotation = YES: the pixels may show patient "
            "text (names, IDs, dates)"
        )
    return None


def _short(exc: BaseException, limit: int = 200) -> str:
    """One-line, bounded description of a library exception for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_pil(p: Path) -> Image.Image:
    """Open and decode with Pillow, turning bombs, truncation and garbage into ImageReadError.

    The pixel count is checked from the header before any pixel is decoded
    (decompression-bomb guard: :data:`MAX_PIXELS`).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data"
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                img = Image.open(p)
                if img.width * img.height > MAX_PIXELS:
                    raise ImageReadError(
                        p,
                        f"image is {img.width}x{img.height} pixels, above the {MAX_PIXELS} "
                        "pixel limit (possible decompression bomb)",
                    )
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
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


def _read_pil(p: Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    img = _open_pil(p)
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1 and fmt != "gif":
        raise ImageReadError(p, f"multi-frame image ({n_frames} frames) is not supported")
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


def _dcmread(p: Path, stop_before_pixels: bool = False) -> object:
    """Parse a DICOM file with pydicom, turning every failure into ImageReadError."""
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(p, "pydicom is required to read DICOM files") from exc
    with open(p, "rb") as fh:
        head = fh.read(132)
    has_preamble = len(head) >= 132 and head[128:132] == b"DICM"
    try:
        with quiet_dicom():
            ds = pydicom.dcmread(p, force=True, stop_before_pixels=stop_before_pixels)
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to parse the DICOM file") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated or garbage files
        raise ImageReadError(
            p,
            f"cannot parse DICOM, file truncated or corrupt ({type(exc).__name__}: {_short(exc)})",
        ) from exc
    if not has_preamble:
        # force=True parses almost anything; demand real DICOM elements.
        try:
            with quiet_dicom():
                plausible = any(k in ds for k in ("SOPClassUID", "PixelData", "Rows", "Modality"))
        except Exception:
            plausible = False
        if not plausible:
            raise ImageReadError(p, "not a DICOM file (no DICM preamble and no DICOM elements)")
    return ds


def read_dicom_header(path: str | Path) -> object:
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
    ImageReadError
        Missing, empty, non-DICOM or unparseable files.
    """
    p = Path(path)
    fmt = sniff_format(p)
    if fmt != "dicom":
        raise ImageReadError(p, f"not a DICOM file (content looks like {fmt})")
    return _dcmread(p, stop_before_pixels=True)


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


def _read_dicom(p: Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a single-frame DICOM image (grayscale, RGB, YBR or palette colour)."""
    with quiet_dicom():
        return _read_dicom_quietly(p)


def _read_dicom_quietly(p: Path) -> tuple[np.ndarray, ImageMeta]:
    ds = _dcmread(p)
    if "PixelData" not in ds:
        raise ImageReadError(
            p, "DICOM file has no pixel data (PixelData element missing or file truncated)"
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise ImageReadError(p, f"DICOM header lacks a valid image size ({_short(exc)})") from exc
    if frames > 1:
        raise ImageReadError(
            p,
            f"multi-frame DICOM ({frames} frames, e.g. a cine loop) is not supported; "
            "export a single frame",
        )
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(
            p,
            f"image is {cols}x{rows} pixels, above the {MAX_PIXELS} pixel limit "
            "(possible decompression bomb)",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        # pydicom >= 3 converts YBR_* to RGB here (as_rgb=True by default).
        arr = ds.pixel_array
    except MemoryError as exc:
        raise ImageReadError(p, "not enough memory to decode the DICOM pixel data") from exc
    except Exception as exc:
        raise ImageReadError(
            p,
            f"cannot decode DICOM pixel data, truncated or unsupported "
            f"({type(exc).__name__}: {_short(exc)})",
        ) from exc
    frac = 0.0
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise ImageReadError(
                p, f"cannot apply the DICOM palette colour table ({_short(exc)})"
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
        raise ImageReadError(p, f"unsupported DICOM pixel array shape {arr.shape} ({photometric})")
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
    )
    return np.ascontiguousarray(gray), meta


def _invert_monochrome1(arr: np.ndarray, ds: object) -> np.ndarray:
    """Invert MONOCHROME1 pixels: ``v' = (2**BitsStored - 1) - v`` (unsigned), ``-1 - v`` (signed)."""
    bits = int(getattr(ds, "BitsStored", 0) or arr.dtype.itemsize * 8)
    if np.issubdtype(arr.dtype, np.signedinteger):
        return (-1 - arr.astype(np.int64)).astype(arr.dtype)
    top = (1 << bits) - 1
    out = top - np.clip(arr.astype(np.int64), 0, top)
    return out.astype(arr.dtype)


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(height, width)`` of an image without decoding all of its pixels.

    Parameters
    ----------
    path : path-like
        Any file :func:`read_image` accepts.

    Returns
    -------
    tuple of int
        ``(height, width)``.

    Raises
    ------
    ImageReadError
        Unreadable headers and images above :data:`MAX_PIXELS`.
    """
    p = Path(path)
    fmt = sniff_format(p)
    if fmt == "dicom":
        ds = _dcmread(p, stop_before_pixels=True)
        try:
            with quiet_dicom():
                h, w = int(ds.Rows), int(ds.Columns)  # type: ignore[attr-defined]
        except Exception as exc:
            raise ImageReadError(p, "DICOM header has no Rows/Columns") from exc
    elif fmt in ("png", "jpeg", "bmp", "tiff", "gif"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(p) as img:
                    h, w = int(img.height), int(img.width)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(
                p, f"refused as a possible decompression bomb ({_short(exc)})"
            ) from exc
        except Exception as exc:
            raise ImageReadError(
                p, f"cannot decode image header, corrupt or truncated ({_short(exc)})"
            ) from exc
    else:
        raise ImageReadError(
            p, "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM content)"
        )
    if h * w > MAX_PIXELS:
        raise ImageReadError(
            p,
            f"image is {w}x{h} pixels, above the {MAX_PIXELS} pixel limit (possible decompression bomb)",
        )
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

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)`` array.

    Raises
    ------
    MaskError
        Missing, unreadable or multi-slice files, and size mismatches.
    """
    if isinstance(paths, (str, Path)):
        plist = split_mask_paths(str(paths)) if isinstance(paths, str) else [paths]
    else:
        plist = list(paths)
    if not plist:
        raise MaskError("<mask>", "no mask path given")
    union: np.ndarray | None = None
    for mp in plist:
        m = _read_one_mask(Path(mp), shape)
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


def _read_one_mask(p: Path, shape: tuple[int, int] | None) -> np.ndarray:
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
        mask, _ = read_labelme(p)
    elif kind == "nifti" or name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        mask = _read_itk_mask(p)
    elif kind in ("png", "bmp", "tiff", "gif", "jpeg"):
        try:
            img = _open_pil(p)
        except ImageReadError as exc:
            raise MaskError(p, exc.problem) from exc
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


def _read_itk_mask(p: Path) -> np.ndarray:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover
        raise MaskError(p, "SimpleITK is required to read NIfTI masks") from exc
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        n_vox = int(np.prod(reader.GetSize()))
        if n_vox > MAX_PIXELS:
            raise MaskError(p, f"label map has {n_vox} voxels, above the {MAX_PIXELS} limit")
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


def read_labelme(path: str | Path, *, require_image: bool = True) -> tuple[np.ndarray, Path | None]:
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
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaskError(p, f"not valid LabelMe JSON ({_short(exc)})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise MaskError(p, "not a LabelMe annotation (no 'shapes' list)")
    image_path: Path | None = None
    if doc.get("imagePath"):
        image_path = (p.parent / str(doc["imagePath"]).replace("\\", "/")).resolve()
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    embedded = doc.get("imageData")
    if require_image and (image_path is None or not image_path.exists()) and not embedded:
        raise MaskError(
            p, f"LabelMe imagePath points at a missing image ({doc.get('imagePath')!r})"
        )
    if not (h and w):
        if image_path is not None and image_path.exists():
            try:
                h, w = image_size(image_path)
            except ImageReadError as exc:
                raise MaskError(p, f"its image cannot be read: {exc}") from exc
        elif embedded:
            try:
                with Image.open(_io.BytesIO(base64.b64decode(embedded))) as im:
                    w, h = im.size
            except Exception as exc:
                raise MaskError(p, f"embedded imageData cannot be decoded ({_short(exc)})") from exc
        else:
            raise MaskError(p, "LabelMe file lacks imageHeight/imageWidth")
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MaskError(p, f"imageHeight/imageWidth are not integers ({h!r}, {w!r})") from exc
    if h <= 0 or w <= 0 or h * w > MAX_PIXELS:
        raise MaskError(p, f"implausible image size {w}x{h} in the LabelMe file")
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
