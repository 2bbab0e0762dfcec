"""The manifest: one row per image, the data contract every stage reads.

Required columns: ``image_id``, ``image_path``, ``label`` (``benign`` |
``malignant`` | ``normal``). Optional columns understood by buscad:
``mask_path`` (several files separated by ``;`` are unioned), ``patient_id``
(defaults to ``image_id``), ``cohort``, ``split``, ``age``, ``birads``
(``1 2 3 4 4a 4b 4c 5 6``), the BI-RADS lexicon descriptors (``shape``,
``margin``, ``echogenicity``, ``posterior_features``, ``calcifications``,
``orientation``) and ``device``. Unknown extra columns are kept untouched.

Paths in the file are relative to the manifest's folder (absolute paths are
accepted). CSV and Parquet are read and written; the format follows the suffix.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.data.io import split_mask_paths as _split_paths
from buscad.errors import ImageReadError, ManifestError, MaskError

LABELS: tuple[str, ...] = ("benign", "malignant", "normal")
LESION_LABELS: tuple[str, ...] = ("benign", "malignant")
BIRADS_CATEGORIES: tuple[str, ...] = ("0", "1", "2", "3", "4", "4a", "4b", "4c", "5", "6")
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "image_path", "label")
LEXICON_COLUMNS: tuple[str, ...] = (
    "shape",
    "margin",
    "echogenicity",
    "posterior_features",
    "calcifications",
    "orientation",
)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "mask_path",
    "patient_id",
    "cohort",
    "split",
    "age",
    "birads",
    *LEXICON_COLUMNS,
    "device",
)
#: Spellings of the contract's clinical and lexicon columns met in clinical sheets (compared after
#: lower-casing and dropping everything but letters and digits) -> the contract's name.
_HEADER_ALIASES: dict[str, str] = {
    "birads": "birads",
    "biradscategory": "birads",
    "biradsassessment": "birads",
    "acrbirads": "birads",
    "age": "age",
    "ageyears": "age",
    "patientage": "age",
    "cohort": "cohort",
    "centre": "cohort",
    "center": "cohort",
    "site": "cohort",
    "device": "device",
    "scanner": "device",
    "shape": "shape",
    "margin": "margin",
    "margins": "margin",
    "echogenicity": "echogenicity",
    "echopattern": "echogenicity",
    "posteriorfeatures": "posterior_features",
    "posterioracousticfeatures": "posterior_features",
    "calcifications": "calcifications",
    "calcification": "calcifications",
    "orientation": "orientation",
}


def canonical_column(name: object) -> str | None:
    """The manifest column a clinical sheet's header means, or None.

    ``"BI-RADS"``, ``"BIRADS category"`` -> ``"birads"``; ``"Age (years)"`` -> ``"age"``;
    ``"Posterior features"`` -> ``"posterior_features"``. Headers are compared after
    lower-casing and dropping everything but letters and digits.
    """
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    return _HEADER_ALIASES.get(key)


_LABEL_ALIASES = {
    "b": "benign",
    "benign": "benign",
    "0": "benign",
    "m": "malignant",
    "malignant": "malignant",
    "malign": "malignant",
    "1": "malignant",
    "n": "normal",
    "normal": "normal",
}


def normalize_label(value: object) -> str | None:
    """Map a label cell to ``benign``/``malignant``/``normal``; None when unknown.

    Accepts any case and surrounding spaces, and ``0``/``1`` for benign/malignant.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    return _LABEL_ALIASES.get(key)


_BIRADS_RE = re.compile(r"^(?:bi-?rads)?\s*([0-6])\s*([abc])?$")


def normalize_birads(value: object) -> str | None:
    """Normalise a BI-RADS cell to ``1 2 3 4 4a 4b 4c 5 6`` (or ``0``); None when missing.

    ``"4A"``, ``"BI-RADS 4b"``, ``4.0`` and ``" 5 "`` are understood.

    Raises
    ------
    ValueError
        For a non-empty value that is not a BI-RADS category.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value).strip().lower().replace("_", "").replace("category", "").strip()
    if s in ("", "nan", "na", "n/a", "none", "not available", "-"):
        return None
    if re.fullmatch(r"[0-6]\.0", s):
        s = s[0]
    m = _BIRADS_RE.match(s)
    if not m:
        raise ValueError(f"not a BI-RADS category: {value!r}")
    digit, sub = m.group(1), m.group(2)
    if sub and digit != "4":
        raise ValueError(f"not a BI-RADS category: {value!r} (only 4 has subcategories a/b/c)")
    return digit + (sub or "")


@dataclass(frozen=True)
class Problem:
    """One validation finding in a manifest row."""

    row: int
    image_id: str
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row} (image_id {self.image_id!r}) {self.column}: {self.message}"


class Manifest:
    """A validated table of images with paths resolved against its folder.

    Parameters
    ----------
    df : pandas.DataFrame
        The rows. Labels are normalised, ``image_id`` and ``patient_id`` made
        strings, and ``patient_id`` filled from ``image_id`` where missing.
    root : path-like
        Folder that relative ``image_path``/``mask_path`` values are relative to.
    source : path-like, optional
        The file the manifest was read from (used in error messages).

    Attributes
    ----------
    df : pandas.DataFrame
        The table (a copy; mutate through :meth:`with_columns` or directly).
    root : pathlib.Path
        Resolution folder for relative paths.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        root: str | os.PathLike[str] = ".",
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.source = Path(source) if source is not None else self.root / "<manifest>"
        self.df = self._normalise(df.copy())

    # ------------------------------------------------------------------ I/O
    @classmethod
    def load(cls, path: str | os.PathLike[str], validate: bool = True) -> Manifest:
        """Read a manifest from CSV or Parquet.

        Parameters
        ----------
        path : path-like
            ``.csv`` or ``.parquet`` file.
        validate : bool, default True
            Check the columns, labels and ids (not the files: see :meth:`validate`).

        Raises
        ------
        ManifestError
            Missing file, unreadable table, missing required columns, unknown labels,
            duplicate ``image_id`` values.
        """
        p = Path(path)
        if not p.exists():
            raise ManifestError(p, "manifest file not found")
        try:
            if p.suffix.lower() == ".parquet":
                df = pd.read_parquet(p)
            else:
                df = pd.read_csv(p, dtype={"image_id": str, "patient_id": str, "birads": str})
        except Exception as exc:
            raise ManifestError(p, f"cannot read table ({type(exc).__name__}: {exc})") from exc
        m = cls(df, root=p.parent, source=p)
        if validate:
            m.check_schema()
        return m

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest (CSV or Parquet by suffix), atomically.

        Relative paths are rewritten so they stay correct relative to the new
        file's folder.
        """
        from buscad.utils import atomic_write_table

        p = Path(path)
        new_root = p.parent.resolve()
        df = self.df.copy()
        for col in ("image_path", "mask_path"):
            if col in df.columns:
                df[col] = [self._rebase(v, new_root) for v in df[col]]
        atomic_write_table(df, p)
        return p

    def _rebase(self, value: object, new_root: Path) -> object:
        parts = _split_paths(value)
        if not parts:
            return value if not _is_missing(value) else ""
        out = []
        for part in parts:
            absolute = self.resolve(part)
            try:
                out.append(Path(os.path.relpath(absolute, new_root)).as_posix())
            except ValueError:  # different drive on Windows
                out.append(str(absolute))
        return ";".join(out)

    # ------------------------------------------------------------- normalise
    @staticmethod
    def _normalise(df: pd.DataFrame) -> pd.DataFrame:
        df.columns = [str(c).strip() for c in df.columns]
        if "image_id" in df.columns:
            df["image_id"] = df["image_id"].map(lambda v: "" if _is_missing(v) else str(v).strip())
        if "label" in df.columns:
            df["label_raw"] = df["label"] if "label_raw" not in df.columns else df["label_raw"]
            df["label"] = [
                normalize_label(v) or ("" if _is_missing(v) else str(v)) for v in df["label"]
            ]
            if (df["label_raw"].astype(str) == df["label"].astype(str)).all():
                df = df.drop(columns="label_raw")
        if "image_id" in df.columns:
            if "patient_id" not in df.columns:
                df["patient_id"] = df["image_id"]
            else:
                df["patient_id"] = [
                    iid if _is_missing(pid) or str(pid).strip() == "" else str(pid).strip()
                    for pid, iid in zip(df["patient_id"], df["image_id"], strict=True)
                ]
        if "birads" in df.columns:
            df["birads"] = [_safe_birads(v) for v in df["birads"]]
        if "age" in df.columns:
            df["age"] = pd.to_numeric(df["age"], errors="coerce")
        for col in ("image_path", "mask_path"):
            if col in df.columns:
                df[col] = df[col].map(lambda v: "" if _is_missing(v) else str(v))
        return df.reset_index(drop=True)

    # ------------------------------------------------------------ validation
    def check_schema(self) -> None:
        """Raise :class:`ManifestError` for structural problems (no file access)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in self.df.columns]
        if missing:
            raise ManifestError(
                self.source,
                f"missing required column(s) {', '.join(missing)}; "
                f"found {', '.join(map(str, self.df.columns)) or 'none'}",
            )
        problems = self.schema_problems()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ManifestError(self.source, f"{problems[0]}{more}")

    def schema_problems(self) -> list[Problem]:
        """List row-level problems that need no file access."""
        out: list[Problem] = []
        df = self.df
        for i, (iid, lab, path) in enumerate(
            zip(df["image_id"], df["label"], df["image_path"], strict=True)
        ):
            if not iid:
                out.append(Problem(i, iid, "image_id", "empty image_id"))
            if lab not in LABELS:
                out.append(
                    Problem(
                        i,
                        iid,
                        "label",
                        f"unknown label {lab!r}; expected one of {', '.join(LABELS)}",
                    )
                )
            if not path:
                out.append(Problem(i, iid, "image_path", "empty image_path"))
        dup = df["image_id"][df["image_id"].duplicated(keep=False) & (df["image_id"] != "")]
        for i, iid in dup.items():
            out.append(Problem(int(i), iid, "image_id", f"duplicate image_id {iid!r}"))
        if "birads" in df.columns:
            for i, v in enumerate(df["birads"]):
                if isinstance(v, str) and v.startswith("!"):
                    out.append(Problem(i, df["image_id"].iat[i], "birads", v[1:]))
        out.sort(key=lambda p: p.row)
        return out

    def validate(self, check_files: bool = True, check_masks: bool = True) -> list[Problem]:
        """Return every problem found: schema, missing/unreadable files, mask sizes.

        Parameters
        ----------
        check_files : bool
            Check that each image exists and its header decodes.
        check_masks : bool
            Check that each mask exists, decodes and has its image's size.
        """
        problems = list(self.schema_problems())
        if not check_files:
            return problems
        from buscad.data.io import image_size, read_mask

        for i, row in enumerate(self.df.itertuples(index=False)):
            iid = row.image_id
            try:
                hw = image_size(self.resolve(row.image_path))
            except ImageReadError as exc:
                problems.append(Problem(i, iid, "image_path", str(exc)))
                continue
            if check_masks and "mask_path" in self.df.columns and row.mask_path:
                try:
                    read_mask(self.mask_paths(i), shape=hw)
                except MaskError as exc:
                    problems.append(Problem(i, iid, "mask_path", str(exc)))
        return problems

    def check(self, check_files: bool = True) -> None:
        """Raise :class:`ManifestError` naming the first problem and the count of others."""
        problems = self.validate(check_files=check_files)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ManifestError(self.source, f"{problems[0]}{more}")

    # --------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        counts = self.df["label"].value_counts().to_dict() if "label" in self.df else {}
        return f"Manifest({len(self)} rows, {counts}, root={str(self.root)!r})"

    def resolve(self, rel: str | os.PathLike[str]) -> Path:
        """Absolute path of a manifest path value."""
        p = Path(str(rel))
        return p if p.is_absolute() else (self.root / p)

    def image_path(self, i: int) -> Path:
        """Absolute image path of row ``i`` (positional)."""
        return self.resolve(self.df["image_path"].iat[i])

    def mask_paths(self, i: int) -> list[Path]:
        """Absolute mask paths of row ``i`` (empty list when it has none)."""
        if "mask_path" not in self.df.columns:
            return []
        return [self.resolve(p) for p in _split_paths(self.df["mask_path"].iat[i])]

    def subset(self, rows: pd.Series | np.ndarray | Iterable[bool] | Iterable[int]) -> Manifest:
        """A new manifest with the selected rows (boolean mask or positions)."""
        sel = np.asarray(list(rows) if not isinstance(rows, (pd.Series, np.ndarray)) else rows)
        df = self.df[sel] if sel.dtype == bool else self.df.iloc[sel]
        return Manifest(df, root=self.root, source=self.source)

    def lesions(self) -> Manifest:
        """Only benign and malignant rows (the classification task)."""
        return self.subset(self.df["label"].isin(LESION_LABELS).to_numpy())

    @property
    def y(self) -> np.ndarray:
        """Binary target: 1 for malignant, 0 otherwise."""
        return (self.df["label"] == "malignant").to_numpy().astype(int)

    def with_columns(self, **cols: object) -> Manifest:
        """A copy with columns added or replaced."""
        df = self.df.copy()
        for k, v in cols.items():
            df[k] = v
        return Manifest(df, root=self.root, source=self.source)


def concat(manifests: Iterable[Manifest], root: str | os.PathLike[str] | None = None) -> Manifest:
    """Concatenate manifests, making every path absolute (or relative to ``root``).

    Raises
    ------
    ManifestError
        When two manifests share an ``image_id``.
    """
    frames = []
    mans = list(manifests)
    for m in mans:
        df = m.df.copy()
        df["image_path"] = [str(m.resolve(p)) for p in df["image_path"]]
        if "mask_path" in df.columns:
            df["mask_path"] = [
                ";".join(str(m.resolve(x)) for x in _split_paths(v)) for v in df["mask_path"]
            ]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True, sort=False)
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ManifestError(
            mans[0].source,
            f"image_id {dup.iat[0]!r} occurs in more than one manifest; prefix ids per cohort",
        )
    out = Manifest(df, root=root or Path.cwd(), source=mans[0].source)
    return out


def _is_missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        return bool(pd.isna(v)) if not isinstance(v, (list, tuple, np.ndarray)) else False
    except (TypeError, ValueError):
        return False


def _safe_birads(v: object) -> object:
    try:
        out = normalize_birads(v)
    except ValueError as exc:
        return "!" + str(exc)  # reported by schema_problems()
    return out if out is not None else np.nan
