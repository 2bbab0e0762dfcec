"""Generators of malformed and hostile input files, shared by the tests and the fuzz campaigns.

Everything is made by code from a seed: small valid seeds (PNG, JPEG, BMP,
TIFF, GIF, DICOM, LabelMe JSON, NIfTI) and mutations of them (truncations, bit
flips, header fields overwritten with lies or huge values, duplicated or
inserted bytes, deep JSON nesting), plus the named bomb and crash classes of
the security review (:func:`bomb_files`).

This module lives in ``benchmarks/`` (not in the package: test-data generators
stay out of ``buscad``). ``tests/test_reader_fuzz.py`` and
``benchmarks/fuzz.py`` import it by putting ``benchmarks/`` on ``sys.path``;
the web fuzz campaign (``benchmarks/fuzz_web.py``) can do the same::

    sys.path.insert(0, str(Path(__file__).parent))
    from malformed import malformed_inputs, bomb_files
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["BOMB_CLASSES", "HEADER_MARKER", "bomb_files", "malformed_inputs", "seed_files"]

#: Text planted in DICOM header fields of the ``dicom_marked`` seeds: no reader message
#: (error or warning) may ever contain it (messages name a field, never echo its value).
HEADER_MARKER = "ZQXMARK"

#: The ``dicom_marked`` seeds: header fields given the marker as text, with the VR written
#: (``LO`` for numeric fields: a hostile file may declare any VR).
MARKED_FIELDS: tuple[dict[str, str], ...] = (
    {"Manufacturer": "LO", "ManufacturerModelName": "LO", "SeriesDescription": "LO"},
    {"Modality": "CS"},
    {"PhotometricInterpretation": "CS"},
    {"NumberOfFrames": "LO"},
    {"Rows": "LO"},
    {"SamplesPerPixel": "LO", "BurnedInAnnotation": "CS"},
)


def _pil_bytes(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _dicom_bytes(
    arr: np.ndarray,
    *,
    modality: str = "US",
    transfer: str = "explicit",
    marked: dict[str, str] | None = None,
) -> bytes:
    """A small DICOM file (Explicit VR LE, or deflated) written with pydicom.

    ``marked`` maps header keywords to the VR under which they get :data:`HEADER_MARKER`.
    """
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        UltrasoundImageStorage,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = (
        DeflatedExplicitVRLittleEndian if transfer == "deflated" else ExplicitVRLittleEndian
    )
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Modality = modality
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    for keyword, vr in (marked or {}).items():
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr, HEADER_MARKER)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _nifti_bytes(arr: np.ndarray, gz: bool) -> bytes:
    import tempfile

    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / ("m.nii.gz" if gz else "m.nii")
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(f))
        return f.read_bytes()


def _labelme(h: int, w: int, image_path: str = "img.png") -> bytes:
    doc = {
        "version": "5.2.1",
        "shapes": [
            {
                "label": "lesion",
                "points": [[2, 2], [w - 3, 3], [w // 2, h - 3]],
                "shape_type": "polygon",
            },
            {"label": "x", "points": [[1, 1], [5, 6]], "shape_type": "rectangle"},
        ],
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
    }
    return json.dumps(doc).encode()


def seed_files() -> list[tuple[str, str, bytes]]:
    """Small valid files of every format: ``(kind, suffix, bytes)``."""
    rng = np.random.default_rng(0)
    g = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    rgb = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 12:40] = 255
    tif = io.BytesIO()
    Image.fromarray(g).save(tif, format="TIFF", save_all=True, append_images=[Image.fromarray(m)])
    out = [
        ("png", ".png", _pil_bytes(g, "PNG")),
        ("png", ".png", _pil_bytes(rgba, "PNG")),
        ("png", ".png", _pil_bytes((g // 40).astype(np.uint8), "PNG", bits=4)),
        ("png", ".png", _pil_bytes((g.astype(np.uint16) * 200), "PNG")),
        ("png", ".png", _pil_bytes(m, "PNG")),
        ("jpeg", ".jpg", _pil_bytes(g, "JPEG", quality=80)),
        ("jpeg", ".jpg", _pil_bytes(rgb, "JPEG", progressive=True)),
        ("bmp", ".bmp", _pil_bytes(g, "BMP")),
        ("bmp", ".bmp", _pil_bytes(rgb, "BMP")),
        ("tiff", ".tif", _pil_bytes(g, "TIFF", compression="tiff_deflate")),
        ("tiff", ".tif", tif.getvalue()),
        ("gif", ".gif", _pil_bytes(g, "GIF")),
        ("dicom", ".dcm", _dicom_bytes(g)),
        ("dicom", ".dcm", _dicom_bytes(rgb)),
        ("dicom", ".dcm", _dicom_bytes(g, transfer="deflated")),
        ("dicom", ".dcm", _dicom_bytes(g.astype(np.uint16) * 16, modality="OT")),
        ("json", ".json", _labelme(48, 64)),
        ("nifti", ".nii", _nifti_bytes((m > 0).astype(np.uint8), gz=False)),
        ("nifti", ".nii.gz", _nifti_bytes((m > 0).astype(np.uint8), gz=True)),
    ]
    out += [("dicom_marked", ".dcm", _dicom_bytes(g, marked=f)) for f in MARKED_FIELDS]
    return out


_HUGE = (
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x80\x00\x00\x00",
    b"\x00\x01\x00\x00",
    b"\xff\xff",
    b"\x00\x00",
)


def _mutate(data: bytes, kind: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of ``data``: ``(mutation name, new bytes)``."""
    n = len(data)
    op = int(rng.integers(0, 8))
    if op == 0:  # truncation
        cut = int(rng.integers(0, n))
        return "truncate", data[:cut]
    if op == 1:  # bit flips
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 12))):
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return "bitflip", bytes(b)
    if op == 2:  # header field lie: overwrite bytes near the start with huge/zero values
        b = bytearray(data)
        val = _HUGE[int(rng.integers(0, len(_HUGE)))]
        i = int(rng.integers(0, min(n, 400)))
        b[i : i + len(val)] = val
        return "header_lie", bytes(b)
    if op == 3:  # random byte overwrite anywhere
        b = bytearray(data)
        i = int(rng.integers(0, n))
        k = int(rng.integers(1, 64))
        b[i : i + k] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        return "overwrite", bytes(b)
    if op == 4:  # duplicate a slice (repeated chunks/segments/elements)
        i = int(rng.integers(0, n))
        j = min(n, i + int(rng.integers(1, 512)))
        reps = int(rng.integers(2, 50))
        return "duplicate", data[:j] + data[i:j] * reps + data[j:]
    if op == 5:  # insert garbage
        i = int(rng.integers(0, n))
        k = int(rng.integers(1, 256))
        return "insert", data[:i] + rng.integers(0, 256, k, dtype=np.uint8).tobytes() + data[i:]
    if op == 6 and kind == "json":  # structural JSON lies
        return "json_lie", _json_lie(rng)
    # op 6 (non-JSON) / 7: keep only the header, then zeros or garbage
    cut = int(rng.integers(8, max(9, min(n, 600))))
    tail = b"\x00" * int(rng.integers(0, 4096))
    return "header_only", data[:cut] + tail


def _json_lie(rng: np.random.Generator) -> bytes:
    depth = int(rng.integers(1, 5000))
    choices = [
        b'{"shapes": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"shapes": [], "imagePath": "' + b"a" * int(rng.integers(200, 5000)) + b'.png"}',
        b'{"shapes": [{"points": [[1e308, 1e308], [-1e308, 0], [0, 1e308]]}], '
        b'"imageHeight": 10, "imageWidth": 10, "imagePath": "x.png", "imageData": "AA=="}',
        b'{"shapes": [{"points": "abc"}], "imageHeight": "9999999999", "imageWidth": 1e400}',
        b'{"shapes": [], "imagePath": "a\\u0000b.png", "imageData": "iVBORw0KGgo="}',
        b'{"shapes": [], "imagePath": "/etc/passwd", "imageHeight": 4, "imageWidth": 4}',
        b'{"shapes": [], "imagePath": "../../x.png", "imageHeight": 4, "imageWidth": 4}',
        b'{"shapes": [{"points": [[0, 0], [3, 3]], "shape_type": "circle"}], '
        b'"imageHeight": 100000, "imageWidth": 100000, "imageData": "x"}',
        b'{"shapes": {"a": 1}}',
        b"[" * depth,
        b'{"shapes": [{"points": [[0, 0], [1, 1], [2, 0]]}], "imageHeight": -5, "imageWidth": 3, '
        b'"imageData": "AAAA"}',
    ]
    return choices[int(rng.integers(0, len(choices)))]


def malformed_inputs(n: int, seed: int = 0) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``n`` malformed inputs as ``(label, suffix, bytes)``, reproducibly from ``seed``.

    ``label`` is ``<format>/<mutation>``. One input in 25 is a valid seed file
    (so the readers' success paths are exercised as well).
    """
    rng = np.random.default_rng(seed)
    seeds = seed_files()
    for i in range(n):
        kind, suffix, data = seeds[int(rng.integers(0, len(seeds)))]
        if i % 25 == 0:
            yield f"{kind}/valid", suffix, data
            continue
        name, out = _mutate(data, kind, rng)
        if rng.random() < 0.2:  # stack a second mutation
            name2, out = _mutate(out or data, kind, rng)
            name = f"{name}+{name2}"
        yield f"{kind}/{name}", suffix, out


# ------------------------------------------------------------------------------ bombs


def reader_calls(path: Path) -> list[tuple[str, object]]:
    """Every buscad reader that applies to ``path``, as ``(name, zero-argument call)`` pairs.

    Shared by ``tests/test_reader_fuzz.py`` and ``benchmarks/fuzz.py`` so both exercise
    the same readers: sniffing, image (+ burned-in warning), size and mask on every
    file, plus LabelMe for ``.json`` and the DICOM header for ``.dcm``.
    """
    from buscad.data.io import (
        burned_in_warning,
        image_size,
        read_dicom_header,
        read_image,
        read_labelme,
        read_mask,
        sniff_format,
    )

    calls: list[tuple[str, object]] = [
        ("sniff", lambda: sniff_format(path)),
        ("image", lambda: burned_in_warning(*read_image(path))),
        ("size", lambda: image_size(path)),
        ("mask", lambda: read_mask(path)),
    ]
    if path.suffix == ".json":
        calls.append(("labelme", lambda: read_labelme(path, require_image=False)))
    if path.suffix == ".dcm":
        calls.append(("dicom_header", lambda: read_dicom_header(path)))
    return calls


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_rgba_bomb(w: int = 7000, h: int = 7000) -> bytes:
    """A real RGBA PNG of ``w x h`` zero pixels (~196 MB decoded from ~200 KB)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 4 * w)
    parts = [comp.compress(row) for _ in range(h)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def bmp_rle8_bomb(w: int = 8000, h: int = 8000) -> bytes:
    """An RLE8 BMP of ``w x h`` pixels in a few KB (end-of-bitmap right away)."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x00\x01"  # end of bitmap: the decoder fills the rest
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + dib + palette + pixels + b"\x00" * 8000


def jpeg_scan_bomb(scans: int = 3000) -> bytes:
    """A progressive JPEG whose last scan is repeated ``scans`` times (CPU bomb)."""
    y, x = np.mgrid[0:512, 0:512]
    flat = ((x // 64 + y // 64) % 2 * 60 + 90).astype(np.uint8)  # blocks: tiny scans
    base = _pil_bytes(flat, "JPEG", progressive=True)
    last = base.rfind(b"\xff\xda")
    eoi = base.rfind(b"\xff\xd9")
    scan = base[last:eoi]
    reps = max(1, scans - base.count(b"\xff\xda") + 1)
    return base[:last] + scan * reps + b"\xff\xd9"


def tiff_missing_dims() -> bytes:
    """A two-page TIFF whose second page has no ImageWidth (Pillow: TypeError)."""
    buf = io.BytesIO()
    a = Image.fromarray(np.zeros((16, 16), np.uint8))
    a.save(buf, format="TIFF", save_all=True, append_images=[a.copy()])
    b = bytearray(buf.getvalue())
    first = struct.unpack("<I", b[4:8])[0]
    n = struct.unpack("<H", b[first : first + 2])[0]
    second = struct.unpack("<I", b[first + 2 + 12 * n : first + 6 + 12 * n])[0]
    n2 = struct.unpack("<H", b[second : second + 2])[0]
    for i in range(n2):
        at = second + 2 + 12 * i
        if struct.unpack("<H", b[at : at + 2])[0] == 256:
            b[at : at + 2] = struct.pack("<H", 0x9999)  # an unknown tag instead of ImageWidth
    return bytes(b)


def dicom_deflated_bomb(element_bytes: int = 2**30) -> bytes:
    """A deflated DICOM holding a private OB element of ``element_bytes`` zeros."""
    base = _dicom_bytes(np.zeros((8, 8), np.uint8), transfer="deflated")
    # file meta ends where the deflated stream starts: re-parse it with pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fh = io.BytesIO(base)
    read_preamble(fh, force=True)
    _read_file_meta_info(fh)
    start = fh.tell()
    body = zlib.decompress(base[start:], -zlib.MAX_WBITS)
    creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 6) + b"BUSCAD"
    big_head = struct.pack("<HH", 0x0009, 0x1000) + b"OB\x00\x00" + struct.pack("<I", element_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # private group 0009 sorts after group 0008 but before 0010: put it at the front (valid
    # enough for a parser; the point is its length)
    parts = [comp.compress(creator + big_head)]
    chunk = b"\x00" * (1 << 20)
    for _ in range(element_bytes // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(b"\x00" * (element_bytes % len(chunk))))
    parts.append(comp.compress(body))
    parts.append(comp.flush())
    return base[:start] + b"".join(parts)


def labelme_deep(depth: int = 100_000) -> bytes:
    """LabelMe JSON nested ``depth`` levels deep (json: RecursionError)."""
    return b'{"shapes": [], "x": ' + b"[" * depth + b"]" * depth + b"}"


def labelme_nul() -> bytes:
    """LabelMe JSON whose imagePath holds a NUL byte (pathlib: ValueError)."""
    return b'{"shapes": [{"points": [[0,0],[3,0],[3,3]]}], "imagePath": "a\\u0000b.png"}'


def labelme_long_path(n: int = 300) -> bytes:
    """LabelMe JSON with an ``n``-character imagePath (OSError ENAMETOOLONG)."""
    name = "a" * n + ".png"
    return json.dumps(
        {"shapes": [{"points": [[0, 0], [3, 0], [3, 3]]}], "imagePath": name}
    ).encode()


#: The named bomb and crash classes: name -> (suffix, builder, kind). ``kind`` is
#: ``image`` (given as an image) or ``mask`` (a LabelMe file, given as a mask).
BOMB_CLASSES = {
    "bmp_rle8": (".bmp", bmp_rle8_bomb, "image"),
    "png_rgba": (".png", png_rgba_bomb, "image"),
    "dicom_deflated_private": (".dcm", dicom_deflated_bomb, "image"),
    "jpeg_progressive_scans": (".jpg", jpeg_scan_bomb, "image"),
    "tiff_missing_dims": (".tif", tiff_missing_dims, "image"),
    "labelme_deep": (".json", labelme_deep, "mask"),
    "labelme_nul_path": (".json", labelme_nul, "mask"),
    "labelme_long_path": (".json", labelme_long_path, "mask"),
}


def bomb_files(folder: Path, *, dicom_element_bytes: int = 2**30) -> dict[str, Path]:
    """Write one file of each :data:`BOMB_CLASSES` entry into ``folder``; name -> path.

    ``dicom_element_bytes`` sets the private element of the deflated DICOM (1 GiB
    by default; the tests use less to stay fast, still above the decode budget).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (suffix, build, _kind) in BOMB_CLASSES.items():
        data = (
            build(dicom_element_bytes) if name == "dicom_deflated_private" else build()  # type: ignore[call-arg]
        )
        path = folder / f"bomb_{name}{suffix}"
        path.write_bytes(data)
        out[name] = path
    return out
