"""DICOM importer: de-identified (salted hashes of PatientID/SOPInstanceUID; no names, IDs or dates written)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from buscad.data.importers.registry import (
    SALT_ENV,
    ImportContext,
    _abs,
    _files,
    _missing,
    _progress,
    register_importer,
)
from buscad.data.importers.tables import _read_table
from buscad.data.io import (
    dicom_pixel_spacing_mm,
    quiet_dicom,
    read_dicom_header,
)
from buscad.errors import ConfigError, ImageReadError, InputFileError, internal_error


def _salt(ctx: ImportContext, salt: str | None) -> str:
    """Salt from the option, else $BUSCAD_SALT, else a private file beside the manifest."""
    if salt:
        return salt
    env = os.environ.get(SALT_ENV, "")
    if env:
        return env
    path = ctx.out_manifest.with_name(ctx.out_manifest.stem + ".salt")
    if path.exists():
        text = path.read_text(encoding="utf-8").strip()
        if text:
            ctx.note(path, "reused the salt in this file for patient and image keys")
            return text
    from buscad.utils import atomic_write_text

    value = secrets.token_hex(32)
    atomic_write_text(path, value + "\n")
    with contextlib.suppress(OSError):
        path.chmod(0o600)
    ctx.note(
        path,
        "wrote a random salt for patient and image keys; keep this file private and pass it "
        f"again (--salt or ${SALT_ENV}) to get the same keys in later imports",
    )
    return value


def _hash(salt: str, value: str, n: int = 16) -> str:
    return hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()[:n]


def _label_map(path: Path) -> dict[str, str]:
    df = _read_table(path)
    cols = {str(c).strip().lower(): c for c in df.columns}
    fcol = next(
        (cols[c] for c in ("file", "filename", "file_name", "path", "image") if c in cols), None
    )
    lcol = cols.get("label")
    if fcol is None or lcol is None:
        raise InputFileError(path, "label map needs a 'file' (or 'filename') and a 'label' column")
    out = {}
    for f, lab in zip(df[fcol], df[lcol], strict=True):
        if not _missing(f):
            out[Path(str(f).strip()).as_posix().lower()] = lab
    return out


def _dicom_age(value: object) -> float:
    """DICOM PatientAge (``057Y``, ``006M``) in years; ages of 90 or more become 90."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value or ""))
    if not m:
        return np.nan
    n, unit = int(m.group(1)), m.group(2) or "Y"
    years = {"D": n / 365.25, "W": n / 52.18, "M": n / 12.0, "Y": float(n)}[unit]
    return min(years, 90.0)


#: The only header elements the DICOM importer reads (identifiers only to hash them).
DICOM_FIELDS: tuple[str, ...] = (
    "SOPInstanceUID",
    "PatientID",
    "Manufacturer",
    "ManufacturerModelName",
    "Modality",
    "PatientAge",
)


def _dicom_fields(ds: Any) -> dict[str, str]:
    """The :data:`DICOM_FIELDS` as stripped strings ("" when absent or unreadable)."""
    out = {}
    with quiet_dicom():
        for key in DICOM_FIELDS:
            try:
                out[key] = str(ds.get(key, "") or "").strip()
            except Exception:
                out[key] = ""
    return out


@register_importer("dicom")
def import_dicom(
    source: Path,
    ctx: ImportContext,
    *,
    label: str | None = None,
    label_map: str | None = None,
    salt: str | None = None,
    cohort: str | None = None,
) -> list[dict[str, Any]]:
    """A folder of DICOM files (searched recursively), imported de-identified.

    What reaches the manifest: ``image_path`` (the DICOM file, kept in place),
    ``image_id`` = ``img_`` + salted SHA-256 of ``SOPInstanceUID`` (of the file's
    bytes when absent), ``patient_id`` = ``pt_`` + salted SHA-256 of
    ``PatientID`` (``SHA-256(salt + "\\0" + value)``, 16 hex digits), ``label``,
    ``cohort``, ``device`` (``Manufacturer`` + ``ManufacturerModelName``),
    ``modality``, ``pixel_spacing_mm`` (ultrasound region or ``PixelSpacing``) and
    ``age`` in years from ``PatientAge`` (90 and above recorded as 90).

    What is dropped: everything else, in particular the patient's name, id,
    birth date, sex, address, every date and time, accession numbers,
    institution and physician names, and all UIDs (only salted hashes remain).
    None of them is written to the manifest, the skipped list or the log.

    The salt comes from ``salt``, else the ``BUSCAD_SALT`` environment
    variable, else a random one written to ``<manifest>.salt`` beside the
    manifest (reused on later imports); keep that file private.

    Parameters
    ----------
    label : str, optional
        Label for every file (``benign``/``malignant``/``normal``).
    label_map : str, optional
        Table with ``file`` (name or path relative to ``source``) and ``label``
        columns; files not in it are skipped.
    salt : str, optional
        Secret salt for the keys.
    cohort : str, optional
        ``cohort`` column (default: the source folder's name).
    """
    if not label and not label_map:
        raise ConfigError(
            source, "the dicom format needs --label (one label for all files) or --label-map"
        )
    mapping = _label_map(Path(label_map)) if label_map else {}
    key_salt = _salt(ctx, salt)
    cohort = cohort or source.name
    files = [source] if source.is_file() else _files(source)
    rows: list[dict[str, Any]] = []
    for f in _progress(files, len(files), "read DICOM headers", ctx.progress):
        if f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = read_dicom_header(f)
        except ImageReadError as exc:
            ctx.skip(exc.path, exc.problem)
            continue
        except Exception as exc:  # a reader bug must not abort the batch
            ctx.skip(f, internal_error(f, exc))
            continue
        rel = f.relative_to(source).as_posix() if source.is_dir() else f.name
        if mapping:
            lab = mapping.get(rel.lower(), mapping.get(f.name.lower()))
            if lab is None:
                ctx.skip(f, f"no label for this file in {Path(label_map).name}")  # type: ignore[arg-type]
                continue
        else:
            lab = label
        tags = _dicom_fields(ds)
        sop, pid = tags["SOPInstanceUID"], tags["PatientID"]
        if sop:
            iid = "img_" + _hash(key_salt, sop)
        else:
            from buscad.utils import file_sha256

            iid = "img_" + _hash(key_salt, file_sha256(f))
        device = f"{tags['Manufacturer']} {tags['ManufacturerModelName']}".strip()
        rows.append(
            {
                "image_id": iid,
                "image_path": _abs(f),
                "label": lab,
                "patient_id": "pt_" + _hash(key_salt, pid) if pid else None,
                "cohort": cohort,
                "device": device or None,
                "modality": tags["Modality"] or None,
                "pixel_spacing_mm": dicom_pixel_spacing_mm(ds),
                "age": _dicom_age(tags["PatientAge"]),
            }
        )
        if not pid:
            ctx.note(f, "no PatientID: patient_id falls back to image_id")
    return rows
