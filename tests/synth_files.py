"""Builders of small synthetic image, mask and DICOM files for the I/O and importer tests.

Everything is made from code in a temporary folder; nothing is read from disk
except what these functions wrote.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Strings that must never leave a DICOM import (names, ids, dates).
PHI_NAME = "Kowalska^Anna"
PHI_ID = "PID-0042-SECRET"
PHI_BIRTH = "19610423"
PHI_STUDY_DATE = "20230117"


def gradient(h: int = 24, w: int = 32, dtype: type = np.uint8) -> np.ndarray:
    """A deterministic grayscale ramp (distinct value per column and row)."""
    top = 255 if dtype == np.uint8 else 4000
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 5) % (top + 1)).astype(dtype)


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    """Write an array with Pillow (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def write_mask(path: Path, shape: tuple[int, int], box: tuple[int, int, int, int]) -> Path:
    """Write a 0/255 PNG mask with a filled rectangle ``(y0, y1, x0, x1)``."""
    m = np.zeros(shape, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return write_png(path, m)


def truncated_png(path: Path, h: int = 40, w: int = 50) -> Path:
    """A PNG cut in the middle of its pixel data."""
    rng = np.random.default_rng(0)
    full = path.with_name(path.stem + "_full.png")
    write_png(full, rng.integers(0, 255, (h, w), dtype=np.uint8))
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> Path:
    """A tiny PNG whose header claims ``w x h`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def labelme(
    path: Path, image_name: str, shape: tuple[int, int], polygon: list[list[float]]
) -> Path:
    """Write a LabelMe JSON with one polygon, pointing at ``image_name`` beside it."""
    doc = {
        "version": "5.2.1",
        "flags": {},
        "shapes": [
            {
                "label": "lesion",
                "points": polygon,
                "group_id": None,
                "shape_type": "polygon",
                "flags": {},
            }
        ],
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": shape[0],
        "imageWidth": shape[1],
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def write_dicom(
    path: Path,
    arr: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    *,
    bits_stored: int | None = None,
    frames: int = 1,
    patient_id: str = PHI_ID,
    sop_uid: str | None = None,
    manufacturer: str = "Acme Medical",
    model: str = "SonoTest 9",
    spacing_cm: float | None = 0.01,
    palette: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Write a DICOM ultrasound file with pydicom's Dataset/FileMetaDataset API.

    ``arr`` is ``(H, W)`` (grayscale or palette indices), ``(H, W, 3)`` (RGB or
    YBR_FULL samples) or ``(F, H, W)`` with ``frames=F``; None writes no PixelData.
    The header carries a patient name, id, birth date and study date so tests can
    check that none of them leaks.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    sop = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop
    ds.Modality = "US"
    ds.PatientName = PHI_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = PHI_BIRTH
    ds.StudyDate = PHI_STUDY_DATE
    ds.ContentDate = PHI_STUDY_DATE
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if spacing_cm is not None:
        region = Dataset()
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = spacing_cm
        region.PhysicalDeltaY = spacing_cm
        ds.SequenceOfUltrasoundRegions = [region]
    if arr is not None:
        spp = 3 if (arr.ndim == 3 and frames == 1) else 1
        ds.Rows, ds.Columns = arr.shape[1:3] if frames > 1 else arr.shape[:2]
        ds.SamplesPerPixel = spp
        ds.PhotometricInterpretation = photometric
        if spp == 3:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        bits = arr.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits_stored or bits
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if palette is not None:
            for name, lut in zip(("Red", "Green", "Blue"), palette, strict=True):
                setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [len(lut), 0, 16])
                setattr(ds, f"{name}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
