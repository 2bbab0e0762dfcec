"""The importer registry and the shared import run: candidate rows in, checked manifest and skipped list out."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.io import (
    MASK_SUFFIXES,
    burned_in_warning,
    read_image,
    read_mask,
    reader_settings,
    split_mask_paths,
)
from buscad.data.manifest import LABELS, Manifest, normalize_label
from buscad.errors import ConfigError, ImageReadError, InputFileError, MaskError, internal_error

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
        Show progress (None: inside buscad.progress.reporting, i.e. the command line).
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
        Show progress (default: inside buscad.progress.reporting, i.e. the command line).
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
    from buscad.progress import track

    return track(iterable, desc, "files", total, enabled=enabled)


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
