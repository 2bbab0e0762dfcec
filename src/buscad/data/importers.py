"""Importers: turn a public dataset, a folder tree, a table or DICOM files into a manifest.

Each importer is a function registered under a format name with
:func:`register_importer`; it scans its source and returns candidate rows
(absolute paths, a label, ids and any clinical columns). :func:`import_dataset`
then checks every row by actually reading its image (:func:`~buscad.data.io.read_image`)
and masks (:func:`~buscad.data.io.read_mask` with the image's shape). A row that
fails is skipped with its reason and the import goes on; the kept rows are
written as a manifest whose paths are relative to the manifest file.

Formats
-------
``busi``
    BUSI class folders (Al-Dhabyani et al., Data in Brief 28:104863, 2020).
``breast-lesions-usg``
    BrEaST-Lesions_USG with its clinical CSV (Pawlowska et al., Sci Data 11:148, 2024).
``folders``
    One folder per class, masks found beside the images by a name pattern.
``csv``
    Any CSV/TSV/XLSX/Parquet table with a path and a label column.
``dicom``
    A folder of DICOM files, de-identified (see :func:`import_dicom`).

Command line: ``buscad data import FORMAT SOURCE -o MANIFEST``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.io import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    burned_in_warning,
    dicom_pixel_spacing_mm,
    quiet_dicom,
    read_dicom_header,
    read_image,
    read_mask,
    reader_settings,
    split_mask_paths,
)
from buscad.data.manifest import LABELS, Manifest, normalize_birads, normalize_label
from buscad.errors import ConfigError, ImageReadError, InputFileError, MaskError

#: Columns holding ``;``-separated file paths; written relative to the manifest.
PATH_COLUMNS: tuple[str, ...] = ("image_path", "mask_path", "other_mask_path")

#: Path columns holding masks that are read and checked against the image size.
MASK_COLUMNS: tuple[str, ...] = ("mask_path", "other_mask_path")

#: Columns the importer adds from what it read: size, colour and burned-in text of each
#: image (``burned_in``: DICOM ``BurnedInAnnotation = YES`` or text-like marks found by
#: :func:`~buscad.data.io.burned_in_warning`).
IMAGE_INFO_COLUMNS: tuple[str, ...] = ("image_height", "image_width", "has_colour", "burned_in")

#: Environment variable holding the salt for DICOM patient and image keys.
SALT_ENV = "BUSCAD_SALT"

_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


# ----------------------------------------------------------------------------- results


@dataclass
class ImportContext:
    """What an importer may use besides its options.

    Attributes
    ----------
    out_manifest : pathlib.Path
        The manifest that will be written (salt files go beside it).
    skipped : list of (str, str)
        ``(file, reason)`` of every file the scan rejected.
    notes : list of (str, str)
        ``(file, note)``: non-fatal remarks (e.g. an image without a mask).
    progress : bool or None
        Show progress bars (None: only on a terminal).
    burned_in : int
        Kept images flagged with burned-in text (see :data:`IMAGE_INFO_COLUMNS`).
    """

    out_manifest: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    progress: bool | None = None
    burned_in: int = 0

    def skip(self, file: str | os.PathLike[str], reason: str) -> None:
        """Record a rejected file and why."""
        self.skipped.append((str(file), " ".join(str(reason).split())))

    def note(self, file: str | os.PathLike[str], message: str) -> None:
        """Record a non-fatal remark about a file."""
        self.notes.append((str(file), " ".join(str(message).split())))


@dataclass
class ImportReport:
    """The outcome of :func:`import_dataset`.

    Attributes
    ----------
    fmt : str
        The importer used.
    source : pathlib.Path
        What was imported.
    manifest : Manifest
        The kept rows (paths resolved against the manifest's folder).
    skipped : list of (str, str)
        ``(file, reason)`` for every skipped file or row.
    notes : list of (str, str)
        Non-fatal remarks.
    manifest_path : pathlib.Path or None
        The manifest written (None when no row was kept: nothing is written).
    skipped_path : pathlib.Path or None
        The ``<manifest>.skipped.csv`` written, if any.
    seconds : float
        Wall time of the import.
    n_burned_in : int
        Kept images that may show burned-in text (``burned_in`` column).
    """

    fmt: str
    source: Path
    manifest: Manifest
    skipped: list[tuple[str, str]]
    notes: list[tuple[str, str]]
    manifest_path: Path | None
    skipped_path: Path | None
    seconds: float
    n_burned_in: int = 0

    @property
    def n_kept(self) -> int:
        """Number of rows kept."""
        return len(self.manifest)

    @property
    def n_skipped(self) -> int:
        """Number of files or rows skipped."""
        return len(self.skipped)

    def label_counts(self) -> dict[str, int]:
        """Kept rows per label, in the order benign, malignant, normal."""
        vc = self.manifest.df["label"].value_counts() if self.n_kept else pd.Series(dtype=int)
        return {lab: int(vc.get(lab, 0)) for lab in LABELS if int(vc.get(lab, 0))}

    def summary(self) -> str:
        """One line: ``kept N rows, skipped M`` with the label counts."""
        counts = ", ".join(f"{k} {v}" for k, v in self.label_counts().items())
        return f"kept {self.n_kept} rows, skipped {self.n_skipped}" + (
            f" ({counts})" if counts else ""
        )


# ---------------------------------------------------------------------------- registry

Importer = Callable[..., list[dict[str, Any]]]

#: Registered importers: format name -> function ``(source, ctx, **options) -> rows``.
IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str) -> Callable[[Importer], Importer]:
    """Register an importer function under a format name (decorator).

    The function is called as ``fn(source: Path, ctx: ImportContext, **options)``
    and returns a list of row dicts with absolute ``image_path`` (and optional
    ``mask_path``, ``;``-joined), ``label``, ``image_id`` and any other columns.
    Its keyword-only parameters are the options the format accepts.
    """

    def deco(fn: Importer) -> Importer:
        if name in IMPORTERS:
            raise ValueError(f"importer {name!r} is already registered")
        IMPORTERS[name] = fn
        return fn

    return deco


def importer_options(fmt: str) -> dict[str, Any]:
    """The options a format accepts, with their defaults."""
    fn = _get_importer(fmt)
    return {
        n: (None if p.default is inspect.Parameter.empty else p.default)
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _get_importer(fmt: str) -> Importer:
    try:
        return IMPORTERS[fmt]
    except KeyError:
        raise ConfigError(
            f"format {fmt!r}", f"unknown import format; choose one of {', '.join(IMPORTERS)}"
        ) from None


# ------------------------------------------------------------------------------ driver


def import_dataset(
    fmt: str,
    source: str | os.PathLike[str],
    out_manifest: str | os.PathLike[str],
    *,
    progress: bool | None = None,
    write_skipped: bool = True,
    any_modality: bool = False,
    **options: Any,
) -> ImportReport:
    """Import a dataset into a manifest, checking every image and mask.

    Parameters
    ----------
    fmt : str
        A registered format (see :data:`IMPORTERS`): ``busi``,
        ``breast-lesions-usg``, ``folders``, ``csv``, ``dicom``.
    source : path-like
        The dataset folder (or table file for ``csv``).
    out_manifest : path-like
        Manifest to write (``.csv`` or ``.parquet``), atomically. Paths in it are
        relative to its folder.
    progress : bool, optional
        Show a progress bar (default: only on a terminal).
    write_skipped : bool, default True
        Write ``<manifest stem>.skipped.csv`` (columns ``file, reason``) beside the
        manifest when something was skipped (a stale one is removed otherwise).
    any_modality : bool, default False
        Accept DICOM files of any modality (default: ultrasound only; see
        :func:`~buscad.data.io.read_image`).
    **options
        The format's options (see :func:`importer_options`).

    Returns
    -------
    ImportReport
        Kept rows, skipped files with reasons, notes, written paths.

    Raises
    ------
    ConfigError
        Unknown format or an option the format does not accept.
    InputFileError
        The source is missing or does not have the format's layout.
    """
    t0 = time.perf_counter()
    fn = _get_importer(fmt)
    accepted = importer_options(fmt)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"format {fmt!r}",
            f"option(s) {', '.join(unknown)} do not apply; it accepts "
            f"{', '.join(accepted) or 'no options'}",
        )
    src = Path(os.path.abspath(source))
    if not src.exists():
        raise InputFileError(src, "source not found")
    out = Path(os.path.abspath(out_manifest))
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(out, "manifest must end in .csv or .parquet")
    ctx = ImportContext(out_manifest=out, progress=progress)
    with reader_settings(allow_modality=True if any_modality else None):
        rows = fn(src, ctx, **{k: v for k, v in options.items() if v is not None})
        kept = _check_rows(rows, ctx, desc=f"import {fmt}")
    df = _frame(kept, root=out.parent.resolve())
    manifest = Manifest(df, root=out.parent, source=out)
    manifest_path = None
    if len(manifest):
        manifest.check_schema()
        manifest_path = manifest.save(out)
    skipped_path = _write_skipped(out, ctx.skipped) if write_skipped else None
    return ImportReport(
        fmt=fmt,
        source=src,
        manifest=manifest,
        skipped=ctx.skipped,
        notes=ctx.notes,
        manifest_path=manifest_path,
        skipped_path=skipped_path,
        seconds=time.perf_counter() - t0,
        n_burned_in=ctx.burned_in,
    )


def _progress(
    iterable: Iterable[Any], total: int, desc: str, enabled: bool | None
) -> Iterable[Any]:
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit="img",
        disable=(None if enabled is None else not enabled),
        leave=False,
        mininterval=0.5,
    )


def _check_rows(rows: list[dict[str, Any]], ctx: ImportContext, desc: str) -> list[dict[str, Any]]:
    """Read every row's image and masks; keep the good rows, skip the rest with reasons.

    An image listed more than once under different labels is skipped every
    time (no label can be trusted); listed more than once under the same label,
    its first row is kept. Every per-file failure is caught: buscad's typed
    errors give their own reason, anything else is recorded as
    ``internal error reading FILE: <ExcType>: message``, and the import goes on.
    """
    kept: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    images: dict[str, tuple[str, str]] = {}
    labels_of: dict[str, set[str]] = {}
    for row in rows:
        lab = normalize_label(row.get("label"))
        if row.get("image_path") and lab is not None:
            labels_of.setdefault(_path_key(row["image_path"]), set()).add(lab)
    for row in _progress(rows, len(rows), desc, ctx.progress):
        img = str(row.get("image_path") or "")
        if not img:
            ctx.skip(row.get("_origin", "<row>"), "no image path")
            continue
        label = normalize_label(row.get("label"))
        if label is None:
            ctx.skip(
                img,
                f"unknown label {row.get('label')!r}; expected one of {', '.join(LABELS)}",
            )
            continue
        iid = str(row.get("image_id") or "")
        if not iid:
            ctx.skip(img, "no image_id")
            continue
        if iid in ids:
            ctx.skip(img, f"duplicate image_id {iid!r} (already used by {ids[iid]})")
            continue
        key = _path_key(img)
        if len(labels_of.get(key, ())) > 1:
            ctx.skip(
                img,
                f"listed with conflicting labels ({', '.join(sorted(labels_of[key]))}); "
                f"this row says {label}",
            )
            continue
        if key in images:
            ctx.skip(img, f"listed twice: already imported as {images[key][0]!r}")
            continue
        try:
            gray, meta = read_image(img)
            for col in MASK_COLUMNS:
                paths = split_mask_paths(row.get(col))
                if paths:
                    read_mask(paths, shape=gray.shape)
            warning = burned_in_warning(gray, meta)
        except (ImageReadError, MaskError) as exc:
            ctx.skip(exc.path, exc.problem)
            continue
        except Exception as exc:  # a reader bug must not abort the batch
            ctx.skip(img, internal_error(img, exc))
            continue
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        if str(row.get("label")).strip() != label and "label_raw" not in row:
            row["label_raw"] = row.get("label")
        row["label"] = label
        row["image_height"], row["image_width"] = int(gray.shape[0]), int(gray.shape[1])
        row["has_colour"] = bool(meta.has_colour)
        row["burned_in"] = warning is not None
        if warning is not None:
            ctx.burned_in += 1
            ctx.note(img, f"burned-in text: {warning}")
        if meta.pixel_spacing_mm is not None and _missing(row.get("pixel_spacing_mm")):
            row["pixel_spacing_mm"] = meta.pixel_spacing_mm
        ids[iid] = img
        images[key] = (iid, label)
        kept.append(row)
    return kept


def internal_error(file: object, exc: BaseException) -> str:
    """``internal error reading FILE: <ExcType>: message`` (one line, bounded)."""
    msg = " ".join(str(exc).split())[:200]
    return f"internal error reading {file}: {type(exc).__name__}: {msg}"


def _path_key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


_FIRST_COLUMNS = ("image_id", "image_path", "label", "mask_path", "patient_id", "cohort")


def _relative(value: object, root: Path) -> str:
    """``;``-joined paths made relative to ``root`` (absolute across drives)."""
    out = []
    for part in split_mask_paths(value):
        try:
            out.append(Path(os.path.relpath(part, root)).as_posix())
        except ValueError:  # another drive on Windows
            out.append(str(part))
    return ";".join(out)


def _frame(rows: list[dict[str, Any]], root: Path) -> pd.DataFrame:
    """The kept rows as a table, paths relative to ``root``, main columns first."""
    if not rows:
        return pd.DataFrame(columns=list(_FIRST_COLUMNS[:3]))
    df = pd.DataFrame(rows)
    first = [c for c in _FIRST_COLUMNS if c in df.columns]
    info = [c for c in IMAGE_INFO_COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in first and c not in info]
    df = df[first + rest + info]
    for col in PATH_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(lambda v: "" if _missing(v) else _relative(v, root))
    return df


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> Path | None:
    from buscad.utils import atomic_write_table

    path = out.with_name(out.stem + ".skipped.csv")
    if not skipped:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    atomic_write_table(pd.DataFrame(skipped, columns=["file", "reason"]), path)
    return path


# ---------------------------------------------------------------------------- helpers


def _missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _abs(p: str | os.PathLike[str]) -> str:
    return os.path.abspath(p)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _is_junk(p: Path) -> bool:
    return p.name.startswith(".") or p.name.lower() in _IGNORED_NAMES


def _strip_mask_suffix(name: str) -> str | None:
    low = name.lower()
    for suf in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: len(name) - len(suf)]
    return None


def _files(root: Path, recursive: bool = True) -> list[Path]:
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        f
        for f in it
        if f.is_file()
        and not _is_junk(f)
        and not any(part.startswith(".") for part in f.parts[len(root.parts) : -1])
    )


def _unique_id(base: str, taken: set[str], salt_text: str) -> str:
    iid = base
    if iid in taken:
        iid = f"{base}_{hashlib.sha256(salt_text.encode()).hexdigest()[:6]}"
    taken.add(iid)
    return iid


# ------------------------------------------------------------------------------- BUSI

_BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_IMAGE = re.compile(r"^(?P<cls>[a-z]+) \((?P<num>\d+)\)$", re.IGNORECASE)
_BUSI_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


def _busi_root(source: Path) -> Path:
    def has_classes(d: Path) -> bool:
        return any((d / c).is_dir() for c in _BUSI_CLASSES)

    if has_classes(source):
        return source
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        if has_classes(sub):
            return sub
    raise InputFileError(source, "no benign/, malignant/ or normal/ folder found (BUSI layout)")


@register_importer("busi")
def import_busi(
    source: Path, ctx: ImportContext, *, cohort: str = "BUSI", id_prefix: str = "busi"
) -> list[dict[str, Any]]:
    """BUSI: ``benign/``, ``malignant/``, ``normal/`` with ``<class> (N).png`` images.

    Masks are ``<class> (N)_mask.png`` plus ``<class> (N)_mask_1.png``... when an
    image shows several lesions; they are joined with ``;`` in ``mask_path`` and
    unioned when read. ``normal`` images keep their (empty) masks. The label
    comes from the folder; an image whose file name names another class is
    skipped as conflicting. ``image_id`` is ``busi_<class>_<N>``; BUSI has no
    patient ids, so ``patient_id`` defaults to ``image_id``.

    Parameters
    ----------
    cohort : str, default "BUSI"
        Value of the ``cohort`` column.
    id_prefix : str, default "busi"
        Prefix of ``image_id``.
    """
    root = _busi_root(source)
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _is_junk(p)):
        cls = folder.name.lower()
        if cls not in _BUSI_CLASSES:
            ctx.skip(folder, f"folder is not a BUSI class ({', '.join(_BUSI_CLASSES)})")
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for f in _files(folder, recursive=False):
            stem = f.name[: -len(f.suffix)] if f.suffix else f.name
            mm = _BUSI_MASK.match(stem)
            if mm and f.suffix.lower() in MASK_SUFFIXES:
                masks.setdefault(mm.group("stem").lower(), []).append((int(mm.group("k") or 0), f))
            elif f.suffix.lower() in IMAGE_SUFFIXES and _BUSI_IMAGE.match(stem):
                images[stem.lower()] = f
            else:
                ctx.skip(f, "unrecognised file name for the BUSI layout ('<class> (N).png')")
        for key, f in sorted(images.items(), key=lambda kv: _busi_sort_key(kv[0])):
            m = _BUSI_IMAGE.match(key)
            assert m is not None
            name_cls, num = m.group("cls").lower(), int(m.group("num"))
            if name_cls != cls:
                ctx.skip(
                    f,
                    f"conflicting class: the file name says {name_cls} but it is in the "
                    f"{cls}/ folder",
                )
                masks.pop(key, None)
                continue
            mlist = [p for _, p in sorted(masks.pop(key, []))]
            if not mlist:
                ctx.note(f, "no mask file found")
            rows.append(
                {
                    "image_id": f"{id_prefix}_{cls}_{num}",
                    "image_path": _abs(f),
                    "label": cls,
                    "mask_path": ";".join(_abs(p) for p in mlist),
                    "patient_id": f"{id_prefix}_{cls}_{num}",
                    "cohort": cohort,
                    "source_file": f"{cls}/{f.name}",
                }
            )
        for key, ms in sorted(masks.items()):
            for _, p in sorted(ms):
                ctx.skip(p, f"mask without its image ('{key}.png' not found)")
    return rows


def _busi_sort_key(stem: str) -> tuple[str, int]:
    m = _BUSI_IMAGE.match(stem)
    return (m.group("cls"), int(m.group("num"))) if m else (stem, 0)


# ----------------------------------------------------------------------------- BrEaST

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


# ---------------------------------------------------------------------------- folders


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``{stem}_mask*`` -> a regex with group ``stem`` over a file name without suffix."""
    parts = re.split(r"(\{stem\}|\*)", pattern)
    rx = "".join(
        "(?P<stem>.+?)" if p == "{stem}" else ".*" if p == "*" else re.escape(p) for p in parts
    )
    return re.compile(f"^{rx}$", re.IGNORECASE)


@register_importer("folders")
def import_folders(
    source: Path,
    ctx: ImportContext,
    *,
    mask_pattern: str = "{stem}_mask*",
    mask_dir: str | None = None,
    cohort: str | None = None,
    id_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """One sub-folder per class: ``benign/``, ``malignant/``, ``normal/`` (any case).

    Folder names go through :func:`~buscad.data.manifest.normalize_label`
    (``B``/``M``/``0``/``1`` work too); a folder that is not a class is skipped
    and reported. Images are searched recursively inside each class folder.
    Masks are the files whose name without suffix matches ``mask_pattern``
    (``{stem}`` is the image's name without suffix, ``*`` any text), in the
    image's folder or, with ``mask_dir``, in the same relative place under it.
    Several matches are unioned. A mask-like file whose image is missing is
    skipped. ``image_id`` is ``<prefix>_<relative path without suffix>``.

    Parameters
    ----------
    mask_pattern : str, default "{stem}_mask*"
        Mask names; an empty string means no masks.
    mask_dir : str, optional
        Separate mask tree mirroring the class folders.
    cohort : str, optional
        ``cohort`` column (default: the source folder's name).
    id_prefix : str, optional
        ``image_id`` prefix (default: the source folder's name).
    """
    prefix = _slug(id_prefix or source.name) or "img"
    cohort = cohort or source.name
    rx = _pattern_regex(mask_pattern) if mask_pattern else None
    mroot = Path(os.path.abspath(mask_dir)) if mask_dir else None
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    class_dirs = sorted(p for p in source.iterdir() if p.is_dir() and not _is_junk(p))
    if not class_dirs:
        raise InputFileError(source, "no class sub-folders (benign/, malignant/, normal/) found")
    for folder in class_dirs:
        label = normalize_label(folder.name)
        if label is None:
            ctx.skip(folder, f"folder name {folder.name!r} is not a class ({', '.join(LABELS)})")
            continue
        files = _files(folder)
        mask_files = _files(mroot / folder.name) if mroot and (mroot / folder.name).is_dir() else []
        # index candidate masks by (relative folder, stem they belong to)
        claimed: dict[tuple[str, str], list[Path]] = {}
        mask_set: set[Path] = set()
        base_for_masks = mroot / folder.name if mroot else folder
        for f in mask_files if mroot else files:
            name = _strip_mask_suffix(f.name)
            if rx is None or name is None:
                continue
            m = rx.match(name)
            if m:
                rel_dir = f.parent.relative_to(base_for_masks).as_posix()
                claimed.setdefault((rel_dir, m.group("stem").lower()), []).append(f)
                mask_set.add(f)
        images = [f for f in files if f not in mask_set and f.suffix.lower() in IMAGE_SUFFIXES]
        image_keys = set()
        for f in images:
            rel = f.relative_to(folder)
            rel_dir = rel.parent.as_posix()
            key = (rel_dir, f.stem.lower())
            image_keys.add(key)
            masks = sorted(claimed.get(key, []))
            rel_noext = f"{folder.name}/{rel.with_suffix('').as_posix()}"
            rows.append(
                {
                    "image_id": _unique_id(f"{prefix}_{_slug(rel_noext)}", taken, rel.as_posix()),
                    "image_path": _abs(f),
                    "label": label,
                    "mask_path": ";".join(_abs(p) for p in masks),
                    "cohort": cohort,
                    "source_file": f"{folder.name}/{rel.as_posix()}",
                }
            )
        for key, ms in sorted(claimed.items()):
            if key not in image_keys:
                for p in ms:
                    ctx.skip(p, f"mask without its image ('{key[1]}' not found)")
        for f in files:
            if f not in mask_set and f.suffix.lower() not in IMAGE_SUFFIXES:
                ctx.note(f, "not an image file name; ignored")
    return rows


# -------------------------------------------------------------------------------- csv


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


# ------------------------------------------------------------------------------ dicom


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


# -------------------------------------------------------------------------------- CLI


def register(data_app: Any) -> None:
    """Add ``buscad data import`` to the ``buscad data`` group."""
    import typer

    formats = "; ".join(
        f"{name} ({(fn.__doc__ or '').strip().splitlines()[0].replace('``', '').rstrip('.')})"
        for name, fn in IMPORTERS.items()
    )

    @data_app.command("import")
    def import_cmd(
        fmt: str = typer.Argument(..., metavar="FORMAT", help=f"One of: {formats}"),
        source: Path = typer.Argument(..., help="Dataset folder, or the table for csv."),
        out: Path = typer.Option(..., "-o", "--out", help="Manifest to write (.csv or .parquet)."),
        cohort: str | None = typer.Option(None, help="Value of the cohort column."),
        id_prefix: str | None = typer.Option(None, help="Prefix of generated image ids."),
        clinical_csv: str | None = typer.Option(None, help="breast-lesions-usg: clinical table."),
        mask_pattern: str | None = typer.Option(
            None, help="folders: mask names, e.g. '{stem}_mask*' ('' = no masks)."
        ),
        mask_dir: str | None = typer.Option(None, help="folders: separate mask tree."),
        path_col: str | None = typer.Option(None, help="csv: image path column."),
        label_col: str | None = typer.Option(None, help="csv: label column."),
        mask_col: str | None = typer.Option(None, help="csv: mask path column."),
        id_col: str | None = typer.Option(None, help="csv: image id column."),
        patient_col: str | None = typer.Option(None, help="csv: patient id column."),
        base_dir: str | None = typer.Option(None, help="csv: folder the paths are relative to."),
        sheet: str | None = typer.Option(None, help="csv: Excel sheet name."),
        label: str | None = typer.Option(None, help="dicom: one label for every file."),
        label_map: str | None = typer.Option(
            None, help="dicom: table with file and label columns."
        ),
        salt: str | None = typer.Option(
            None, help=f"dicom: secret salt for patient/image keys (or ${SALT_ENV})."
        ),
        skipped_file: bool = typer.Option(
            True, "--skipped-file/--no-skipped-file", help="Write <manifest>.skipped.csv."
        ),
        progress: bool | None = typer.Option(
            None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."
        ),
        any_modality: bool = typer.Option(
            False,
            "--any-modality",
            help="dicom: accept every modality (default: ultrasound, or no Modality, only).",
        ),
    ) -> None:
        """Import a dataset into a manifest; every image and mask is read and checked."""
        from buscad.errors import BuscadError

        given = {
            "cohort": cohort,
            "id_prefix": id_prefix,
            "clinical_csv": clinical_csv,
            "mask_pattern": mask_pattern,
            "mask_dir": mask_dir,
            "path_col": path_col,
            "label_col": label_col,
            "mask_col": mask_col,
            "id_col": id_col,
            "patient_col": patient_col,
            "base_dir": base_dir,
            "sheet": sheet,
            "label": label,
            "label_map": label_map,
            "salt": salt,
        }
        options = {k: v for k, v in given.items() if v is not None}
        try:
            report = import_dataset(
                fmt,
                source,
                out,
                progress=progress,
                write_skipped=skipped_file,
                any_modality=any_modality,
                **options,
            )
        except BuscadError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(report.summary())
        if report.n_burned_in:
            typer.echo(
                f"WARNING: {report.n_burned_in} image(s) may show burned-in text (names, IDs, "
                "dates): see the burned_in column and the notes below",
                err=True,
            )
        for file, reason in report.skipped:
            typer.echo(f"  skipped {file}: {reason}")
        for file, note in report.notes:
            typer.echo(f"  note {file}: {note}")
        if report.manifest_path is None:
            typer.echo("nothing kept: no manifest written", err=True)
            raise typer.Exit(1)
        typer.echo(f"wrote {report.manifest_path} ({report.seconds:.1f} s)")
        if report.skipped_path is not None:
            typer.echo(f"wrote {report.skipped_path}")


__all__ = [
    "IMPORTERS",
    "ImportContext",
    "ImportReport",
    "import_dataset",
    "importer_options",
    "register",
    "register_importer",
]
