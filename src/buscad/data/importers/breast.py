"""BrEaST-Lesions_USG importer (Pawlowska et al., Sci Data 11:148, 2024): clinical sheet, BI-RADS, lexicon, pixel size."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.importers.registry import ImportContext, _abs, _files, register_importer
from buscad.data.io import (
    IMAGE_SUFFIXES,
)
from buscad.data.manifest import normalize_birads
from buscad.errors import InputFileError

#: BrEaST clinical-table columns -> manifest columns.
BREAST_COLUMNS: dict[str, str] = {
    "caseid": "case_number",
    "case_id": "case_number",
    "image_filename": "_image",
    "mask_tumor_filename": "_mask",
    "mask_other_filename": "_other",
    "pixel_size": "pixel_size_cm",
    "age": "age",
    "tissue_composition": "tissue_composition",
    "signs": "signs",
    "symptoms": "symptoms",
    "shape": "shape",
    "margin": "margin",
    "echogenicity": "echogenicity",
    "posterior_features": "posterior_features",
    "halo": "halo",
    "calcifications": "calcifications",
    "skin_thickening": "skin_thickening",
    "interpretation": "interpretation",
    "birads": "birads",
    "verification": "verification",
    "diagnosis": "diagnosis",
    "classification": "label",
}


_NOT_AVAILABLE = {"not available", "n/a", "na", "nan", ""}


def _find_one(source: Path, patterns: tuple[str, ...], what: str) -> Path:
    for pat in patterns:
        found = sorted(source.rglob(pat))
        if found:
            return found[-1]  # the latest dated release sorts last
    raise InputFileError(source, f"no {what} found (looked for {', '.join(patterns)})")


@register_importer("breast-lesions-usg")
def import_breast_lesions_usg(
    source: Path,
    ctx: ImportContext,
    *,
    cohort: str = "BrEaST",
    id_prefix: str = "breast",
    clinical_csv: str | None = None,
) -> list[dict[str, Any]]:
    """BrEaST-Lesions_USG: ``caseNNN.png`` images with the clinical CSV.

    The tumour masks ``caseNNN_tumor.png`` become ``mask_path``; the
    ``caseNNN_other*.png`` masks (cysts and other structures, not the target
    lesion) go to ``other_mask_path``. From the clinical CSV
    (``BrEaST-Lesions-USG-clinical-data-*.csv``, found by glob) every column is
    kept under a snake-case name: ``age`` ("not available" -> missing), ``birads``
    normalised to 1/2/3/4a/4b/4c/5, the lexicon descriptors ``shape``,
    ``margin``, ``echogenicity``, ``posterior_features``, ``halo``,
    ``calcifications``, ``skin_thickening`` (values as published, "not
    applicable" kept), ``tissue_composition``, ``signs``, ``symptoms``,
    ``interpretation``, ``verification``, ``diagnosis``, ``pixel_size_cm``
    (cm per pixel) and ``pixel_spacing_mm`` (= 10 x ``pixel_size_cm``).
    ``Classification`` becomes ``label``. Each case is one patient:
    ``patient_id`` = ``image_id`` = ``breast_caseNNN`` (``case_id`` keeps ``caseNNN``).

    Parameters
    ----------
    cohort : str, default "BrEaST"
        Value of the ``cohort`` column.
    id_prefix : str, default "breast"
        Prefix of ``image_id`` and ``patient_id``.
    clinical_csv : str, optional
        The clinical table, when it is not inside ``source``.
    """
    table = (
        Path(clinical_csv)
        if clinical_csv
        else _find_one(source, ("*clinical-data*.csv", "*clinical*.csv"), "clinical-data CSV")
    )
    try:
        raw = pd.read_csv(table, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputFileError(table, f"cannot read the clinical table ({exc})") from exc
    rename: dict[str, str] = {}
    for col in raw.columns:
        key = re.sub(r"[^a-z0-9]+", "_", col.strip().lower()).strip("_")
        rename[col] = BREAST_COLUMNS.get(key, key)
    df = raw.rename(columns=rename)
    for need in ("_image", "label"):
        if need not in df.columns:
            inv = {v: k for k, v in BREAST_COLUMNS.items()}
            raise InputFileError(
                table, f"missing column {inv[need]!r} (columns: {', '.join(raw.columns)})"
            )
    files: dict[str, Path] = {}
    for f in _files(source):
        files.setdefault(f.name.lower(), f)
    used: set[str] = set()
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(df.to_dict("records")):
        name = str(rec.pop("_image")).strip()
        origin = f"{table}: row {i + 2}"
        if not name:
            ctx.skip(origin, "empty Image_filename")
            continue
        img = files.get(name.lower())
        if img is None:
            ctx.skip(f"{source / name}", f"listed in {table.name} row {i + 2} but not found")
            continue
        used.add(name.lower())
        row: dict[str, Any] = {}
        stem = img.stem
        row["image_id"] = f"{id_prefix}_{stem}"
        row["image_path"] = _abs(img)
        for col in ("_mask", "_other"):
            names = [n.strip() for n in str(rec.pop(col, "") or "").split("&") if n.strip()]
            paths = []
            for n in names:
                used.add(n.lower())
                found = files.get(n.lower())
                paths.append(_abs(found) if found else _abs(img.parent / n))
            row["mask_path" if col == "_mask" else "other_mask_path"] = ";".join(paths)
        for k, v in rec.items():
            row[k] = np.nan if str(v).strip().lower() in _NOT_AVAILABLE else str(v).strip()
        row["age"] = pd.to_numeric(row.get("age"), errors="coerce")
        try:
            row["birads"] = normalize_birads(row.get("birads"))
        except ValueError as exc:
            ctx.note(img, f"{exc}; BI-RADS left empty")
            row["birads"] = None
        size = pd.to_numeric(row.get("pixel_size_cm"), errors="coerce")
        row["pixel_size_cm"] = size
        row["pixel_spacing_mm"] = size * 10.0 if pd.notna(size) else np.nan
        row["patient_id"] = row["image_id"]
        row["case_id"] = stem
        row["cohort"] = cohort
        row["_origin"] = origin
        rows.append(row)
    for key, f in sorted(files.items()):
        if key in used or f.suffix.lower() not in IMAGE_SUFFIXES or f.resolve() == table.resolve():
            continue
        kind = "mask" if "_tumor" in key or "_other" in key else "image"
        ctx.skip(f, f"{kind} not listed in {table.name}")
    return rows
