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
import io as _io
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile

from buscad.errors import ImageReadError, MaskError

#: Largest image accepted, in pixels (guards against decompression bombs).
#: 64 Mpx is far above any ultrasound frame (typically < 1 Mpx).
MAX_PIXELS = 64_000_000

#: A pixel counts as coloured when max(R,G,B) - min(R,G,B) exceeds this.
COLOUR_CHROMA_THRESHOLD = 24

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
        True when more than ``colour_fraction_min`` of the pixels are coloured.
    colour_fraction : float
        Fraction of pixels whose chroma ``max(R,G,B) - min(R,G,B)`` exceeds
        :data:`COLOUR_CHROMA_THRESHOLD` (0 for grayscale sources).
    transparent_fraction : float
        Fraction of pixels with alpha 0 (set to black in the returned array).
    pixel_spacing_mm : float or None
        Physical size of a pixel when the file says (DICOM ultrasound regions).
    photometric : str
        Source colour model (``L``, ``RGB``, ``RGBA``, ``P``, ``MONOCHROME1``...).
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
    size = p.stat().st_size
    if size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    with open(p, "rb") as fh:
        head = fh.read(352)
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


def _open_pil(p: Path) -> Image.Image:
    """Open with Pillow, turning bombs, truncation and garbage into ImageReadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                img = Image.open(p)
                if img.width * img.height > MAX_PIXELS:
                    raise ImageReadError(
                        p, f"image is {img.width}x{img.height} pixels, above the {MAX_PIXELS} limit"
                    )
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(p, f"refused as a possible decompression bomb ({exc})") from exc
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageReadError(p, "image file is truncated or corrupt") from exc
        raise ImageReadError(p, f"cannot decode image ({msg})") from exc
    except (ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        raise ImageReadError(p, f"cannot decode image ({exc})") from exc
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
        img = img.convert("RGB" if m == "RGBA" else "L")
    if img.mode == "RGB":
        rgb = np.asarray(img)
        gray, frac = _rgb_to_gray(rgb)
        bit = 8
    elif img.mode == "L":
        gray = np.asarray(img).copy()
        frac = 0.0
        bit = 8
    elif img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raw = np.asarray(img)
        gray, bit = _to_uint(raw)
        frac = 0.0
    else:  # pragma: no cover - exotic modes
        raise ImageReadError(p, f"unsupported pixel mode {mode!r}")
    if alpha is not None:
        gray = gray.copy()
        gray[alpha == 0] = 0
    has_colour = frac > 1e-4
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


def _rgb_to_gray(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Luma of an RGB array and the fraction of coloured pixels."""
    rgb16 = rgb.astype(np.int16)
    chroma = rgb16.max(axis=-1) - rgb16.min(axis=-1)
    frac = float((chroma > COLOUR_CHROMA_THRESHOLD).mean())
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    dtype = np.uint16 if rgb.dtype == np.uint16 else np.uint8
    top = np.iinfo(dtype).max
    return np.clip(np.rint(y), 0, top).astype(dtype), frac


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


def _read_dicom(p: Path) -> tuple[np.ndarray, ImageMeta]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(p, "pydicom is required to read DICOM files") from exc
    try:
        ds = pydicom.dcmread(p, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ImageReadError(p, f"cannot parse DICOM ({exc})") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated files
        raise ImageReadError(p, f"cannot parse DICOM ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise ImageReadError(p, "DICOM file has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            p,
            f"multi-frame DICOM ({frames} frames, e.g. a cine loop) is not supported; export one frame",
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(
            p, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})"
        ) from exc
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frac = 0.0
    try:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
            photometric_in = "RGB"
        elif photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
            photometric_in = "RGB"
        else:
            photometric_in = photometric
    except Exception as exc:
        raise ImageReadError(p, f"cannot convert DICOM colour space {photometric} ({exc})") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and photometric_in in ("RGB", "ARGB", "RGBA"):
        rgb = arr[..., :3]
        if rgb.dtype != np.uint8 and rgb.dtype != np.uint16:
            rgb, _ = _to_uint(rgb)
        gray, frac = _rgb_to_gray(rgb)
        bit = 16 if gray.dtype == np.uint16 else 8
    elif arr.ndim == 2:
        gray, bit = _to_uint(arr)
        if photometric == "MONOCHROME1":
            gray = np.iinfo(gray.dtype).max - gray if bit == 8 else (gray.max() - gray + gray.min())
            gray = gray.astype(np.uint8 if bit == 8 else np.uint16)
    else:
        raise ImageReadError(p, f"unsupported DICOM pixel array shape {arr.shape} ({photometric})")
    spacing = None
    try:
        regions = ds.get("SequenceOfUltrasoundRegions")
        if regions:
            dx = float(regions[0].PhysicalDeltaX)  # cm per pixel
            spacing = dx * 10.0
        elif "PixelSpacing" in ds:
            spacing = float(ds.PixelSpacing[0])
    except Exception:
        spacing = None
    meta = ImageMeta(
        path=str(p),
        format="dicom",
        height=int(gray.shape[0]),
        width=int(gray.shape[1]),
        bit_depth=bit,
        has_colour=frac > 1e-4,
        colour_fraction=float(frac),
        pixel_spacing_mm=spacing,
        photometric=photometric,
    )
    return np.ascontiguousarray(gray), meta


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
    """
    p = Path(path)
    fmt = sniff_format(p)
    if fmt == "dicom":
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as exc:
            raise ImageReadError(p, f"cannot read DICOM header ({exc})") from exc
    if fmt in ("png", "jpeg", "bmp", "tiff", "gif"):
        try:
            with Image.open(p) as img:
                return int(img.height), int(img.width)
        except Exception as exc:
            raise ImageReadError(p, f"cannot decode image header ({exc})") from exc
    raise ImageReadError(
        p, "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM content)"
    )


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
    if p.stat().st_size == 0:
        raise MaskError(p, "mask file is empty (0 bytes)")
    name = p.name.lower()
    head = p.open("rb").read(352)
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
        if arr.ndim == 3:
            nch = arr.shape[-1]
            if nch in (2, 4):
                colour = arr[..., : nch - 1]
                mask = colour.any(axis=-1) & (arr[..., -1] > 0)
            else:
                mask = arr.any(axis=-1)
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
        img = sitk.ReadImage(str(p))
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
        raise MaskError(p, f"not valid LabelMe JSON ({exc})") from exc
    if not isinstance(doc, dict) or "shapes" not in doc:
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
            h, w = image_size(image_path)
        elif embedded:
            with Image.open(_io.BytesIO(base64.b64decode(embedded))) as im:
                w, h = im.size
        else:
            raise MaskError(p, "LabelMe file lacks imageHeight/imageWidth")
    canvas = Image.new("1", (int(w), int(h)), 0)
    draw = ImageDraw.Draw(canvas)
    n = 0
    for shape in doc["shapes"]:
        pts = [tuple(map(float, pt)) for pt in shape.get("points", [])]
        kind = shape.get("shape_type") or "polygon"
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
