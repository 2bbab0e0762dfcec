"""Format detection from a file's first bytes (content, not extension), and the
image and mask file suffixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from buscad.data.io.messages import _safe_name, _short
from buscad.errors import ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".json", ".nii", ".nii.gz", ".nrrd", ".mha")


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


def iter_image_files(root: str | Path, recursive: bool = True) -> Iterable[Path]:
    """Yield files below ``root`` whose suffix looks like an image, in sorted order."""
    root = Path(root)
    pattern = "**/*" if recursive else "*"
    for f in sorted(root.glob(pattern)):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            yield f
