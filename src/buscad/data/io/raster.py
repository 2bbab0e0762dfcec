"""PNG, BMP, TIFF, JPEG and GIF: header checks against the decode budget, then
Pillow decoding into grayscale.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

from buscad.data.io.budget import DecodeBudget, _budget, _check_file_size, _mib, _refuse_size
from buscad.data.io.colour import COLOUR_FRACTION_MIN, _rgb_to_gray, _to_uint
from buscad.data.io.messages import _short
from buscad.data.io.meta import ImageMeta
from buscad.errors import DecodeBudgetError, ImageReadError

# Never decode partial files silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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
