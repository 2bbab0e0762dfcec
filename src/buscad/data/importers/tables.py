"""Importer for any table (CSV, TSV, XLSX, Parquet) naming image, label and mask columns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from buscad.data.importers.registry import (
    ImportContext,
    _abs,
    _missing,
    _slug,
    _unique_id,
    register_importer,
)
from buscad.data.io import (
    split_mask_paths,
)
from buscad.data.manifest import canonical_column
from buscad.errors import InputFileError


def _read_table(path: Path, sheet: str | None = None) -> pd.DataFrame:
    suf = path.suffix.lower()
    try:
        if suf in (".xlsx", ".xlsm", ".xls"):
            return pd.read_excel(path, sheet_name=sheet or 0)
        if suf == ".parquet":
            return pd.read_parquet(path)
        if suf in (".tsv", ".tab"):
            return pd.read_csv(path, sep="\t")
        df = pd.read_csv(path)
        if df.shape[1] == 1 and ";" in str(df.columns[0]):  # European-style CSV
            df = pd.read_csv(path, sep=";")
        return df
    except Exception as exc:
        raise InputFileError(path, f"cannot read table ({type(exc).__name__}: {exc})") from exc


@register_importer("csv")
def import_csv(
    source: Path,
    ctx: ImportContext,
    *,
    path_col: str = "image_path",
    label_col: str = "label",
    mask_col: str | None = None,
    id_col: str | None = None,
    patient_col: str | None = None,
    base_dir: str | None = None,
    sheet: str | None = None,
    cohort: str | None = None,
) -> list[dict[str, Any]]:
    """Any table (CSV, TSV, XLSX, Parquet) with an image-path and a label column.

    Paths are relative to ``base_dir`` (default: the table's folder); a mask
    cell may hold several paths separated by ``;``. The named columns become
    ``image_path``, ``label``, ``mask_path``, ``image_id`` and ``patient_id``;
    every other column is kept as is (a column that would be overwritten is
    kept as ``<name>_src``). Without an id column, ``image_id`` is built from the
    image's path.

    Parameters
    ----------
    path_col, label_col : str
        Image-path and label columns (defaults ``image_path``, ``label``).
    mask_col, id_col, patient_col : str, optional
        Mask, id and patient columns (defaults: ``mask_path``, ``image_id``,
        ``patient_id`` when present).
    base_dir : str, optional
        Folder the paths are relative to.
    sheet : str, optional
        Excel sheet name (default: the first sheet).
    cohort : str, optional
        Fills ``cohort`` when the table has no such column.
    """
    if source.is_dir():
        raise InputFileError(source, "the csv format needs a table file, not a folder")
    df = _read_table(source, sheet)
    df.columns = [str(c).strip() for c in df.columns]
    cols = list(df.columns)

    def need(name: str, what: str) -> str:
        if name not in cols:
            raise InputFileError(
                source, f"no {what} column {name!r}; columns are {', '.join(cols) or 'none'}"
            )
        return name

    def maybe(name: str | None, default: str, what: str) -> str | None:
        if name:
            return need(name, what)
        return default if default in cols else None

    mapping = {
        need(path_col, "image path"): "image_path",
        need(label_col, "label"): "label",
    }
    for opt, default, target, what in (
        (mask_col, "mask_path", "mask_path", "mask"),
        (id_col, "image_id", "image_id", "id"),
        (patient_col, "patient_id", "patient_id", "patient"),
    ):
        col = maybe(opt, default, what)
        if col:
            mapping[col] = target
    # common spellings of the contract's clinical and lexicon columns ("BI-RADS", "Age")
    for c in cols:
        target = canonical_column(c)
        if c in mapping or target is None or target == c:
            continue
        if target in cols or target in mapping.values():
            ctx.note(source, f"column {c!r} kept as it is: the table also has {target!r}")
            continue
        mapping[c] = target
        ctx.note(source, f"column {c!r} read as {target!r}")
    base = Path(os.path.abspath(base_dir)) if base_dir else source.parent
    renamed = {c: (mapping.get(c) or (f"{c}_src" if c in mapping.values() else c)) for c in cols}
    taken: set[str] = set()
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(df.to_dict("records")):
        origin = f"{source}: row {i + 2}"
        row = {renamed[k]: v for k, v in rec.items()}
        raw_path = row.get("image_path")
        if _missing(raw_path):
            ctx.skip(origin, "empty image path")
            continue
        img = Path(str(raw_path).strip())
        img = img if img.is_absolute() else base / img
        row["image_path"] = _abs(img)
        masks = []
        for mp in split_mask_paths(row.get("mask_path")):
            q = Path(mp)
            masks.append(_abs(q if q.is_absolute() else base / q))
        if "mask_path" in row:
            row["mask_path"] = ";".join(masks)
        if _missing(row.get("image_id")):
            rel = os.path.relpath(row["image_path"], base)
            row["image_id"] = _unique_id(
                _slug(str(Path(rel).with_suffix(""))) or f"row{i + 2}", taken, rel
            )
        else:
            row["image_id"] = str(row["image_id"]).strip()
            if row["image_id"].endswith(".0") and isinstance(rec.get(id_col or "image_id"), float):
                row["image_id"] = row["image_id"][:-2]
        if cohort and _missing(row.get("cohort")):
            row["cohort"] = cohort
        row["_origin"] = origin
        rows.append(row)
    return rows
