"""Study arms and cohorts: staging each cohort (import, audit policy, fingerprint) and the training folds."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.config import StudyConfig
from buscad.data.manifest import Manifest
from buscad.errors import ConfigError
from buscad.study.stages import StageResult, StageRunner
from buscad.utils import atomic_write_json, file_sha256, stable_hash


@dataclass(frozen=True)
class Arm:
    """One direction of a study: the cohorts trained on and those validated externally."""

    name: str
    development: tuple[str, ...]
    external: tuple[str, ...]

    @property
    def train_label(self) -> str:
        """Cohort label of the training rows in the predictions table."""
        return f"{'+'.join(self.development)} train (CV)"

    @property
    def test_label(self) -> str:
        """Cohort label of the internal test rows."""
        return f"{'+'.join(self.development)} internal test"

    def external_label(self, cohort: str) -> str:
        """Cohort label of an external cohort."""
        return f"{cohort} external"


def study_arms(cfg: StudyConfig) -> list[Arm]:
    """The arms of a study: as configured, plus the reverse direction when asked."""
    dev = tuple(c.name for c in cfg.cohorts if c.role == "development")
    ext = tuple(c.name for c in cfg.cohorts if c.role == "external")
    arms = [Arm("→".join(["+".join(dev), "+".join(ext)]) if ext else "+".join(dev), dev, ext)]
    if cfg.reverse_external:
        if not ext:
            raise ConfigError("reverse_external", "needs at least one external cohort")
        arms.append(Arm("→".join(["+".join(ext), "+".join(dev)]), ext, dev))
    return arms


# ============================================================== data stages
def _manifest_fingerprint(path: Path, memo: Path | None = None) -> dict:
    """Fingerprint of a manifest and its files: table hash + SHA-256 of each image and mask.

    Content, not modification time: a dataset copied or re-extracted with new
    mtimes keeps its cache. Hashes are remembered in ``memo`` (JSON keyed by path,
    size and mtime), so an unchanged dataset is not read again.
    """
    man = Manifest.load(path, validate=False)
    known: dict[str, str] = {}
    if memo is not None and memo.is_file():
        with contextlib.suppress(OSError, ValueError):
            known = dict(json.loads(memo.read_text(encoding="utf-8")))
    n_known = len(known)
    files = []
    for i in range(len(man)):
        for p in [man.image_path(i), *man.mask_paths(i)]:
            try:
                st = p.stat()
            except OSError:
                files.append((str(p), "missing"))
                continue
            k = f"{p}|{st.st_size}|{st.st_mtime_ns}"
            if k not in known:
                known[k] = file_sha256(p)
            files.append((str(p), known[k]))
    if memo is not None and len(known) != n_known:
        atomic_write_json(memo, known)
    return {"table": file_sha256(path), "files": stable_hash(files, 32)}


def _stage_cohort(runner: StageRunner, cfg: StudyConfig, cohort) -> tuple[StageResult, Manifest]:
    if cohort.phantom is not None:
        ph = cohort.phantom

        def make(folder: Path) -> None:
            from buscad.data.phantom import PhantomSpec, generate_cohort

            spec = PhantomSpec(
                size=tuple(ph.size),
                malignant_fraction=ph.malignant_fraction,
                duplicate_fraction=ph.duplicate_fraction,
                conflict_fraction=ph.conflict_fraction,
                annotation_fraction=ph.annotation_fraction,
                colour_fraction=ph.colour_fraction,
                atypical=ph.atypical,
                cohorts=(cohort.name,),
                seed=ph.seed,
            )
            generate_cohort(ph.n, folder, spec)

        res = runner.run(f"data-{cohort.name}", {"phantom": ph.model_dump(mode="json")}, make)
        man = Manifest.load(res.path / "manifest.csv")
    else:
        path = cfg.resolve(cohort.manifest)
        if path is None or not path.exists():
            raise ConfigError(
                cfg.base_dir / "<config>", f"cohorts: {cohort.name}: manifest {path} not found"
            )
        fp = _manifest_fingerprint(path, runner.root / "file-hashes.json")

        def copy(folder: Path) -> None:
            m = Manifest.load(path)
            m.save(folder / "manifest.csv")

        res = runner.run(f"data-{cohort.name}", {"manifest": str(path), **fp}, copy)
        man = Manifest.load(res.path / "manifest.csv")
    df = man.df.copy()
    df["cohort"] = cohort.name
    df = df[df["label"].isin(cohort.labels)]
    return res, Manifest(df, root=man.root, source=man.source)


def _apply_audit_policy(
    cfg: StudyConfig, audited: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows kept and rows dropped (with the reason) under the config's audit policy."""
    drop = pd.Series("", index=audited.index, dtype=object)
    pol = cfg.audit
    if pol.duplicates == "drop_conflicts" and "audit_label_conflict" in audited:
        drop[audited["audit_label_conflict"].fillna(False).astype(bool)] = (
            "duplicate group with conflicting labels"
        )
    if pol.duplicates == "keep_one" and "dup_group" in audited:
        first = ~audited.duplicated("dup_group", keep="first")
        drop[~first & (drop == "")] = "near-duplicate of a kept image"
    if pol.drop_colour and "audit_colour_overlay" in audited:
        drop[audited["audit_colour_overlay"].fillna(False).astype(bool) & (drop == "")] = (
            "colour overlay"
        )
    if pol.drop_annotated and "audit_has_annotations" in audited:
        drop[audited["audit_has_annotations"].fillna(False).astype(bool) & (drop == "")] = (
            "burned-in annotations"
        )
    cols = ["image_id", "label", "cohort", *(["dup_group"] if "dup_group" in audited else [])]
    dropped = audited.loc[drop != "", cols].assign(reason=drop[drop != ""])
    return audited.loc[drop == ""].copy(), dropped


def dropped_text(dropped: pd.DataFrame) -> str:
    """What the audit policy dropped, counted as the audit counts it ('' when nothing).

    Images are counted per reason; a reason about duplicate groups also gives the number of
    groups (``dup_group``), so the line agrees with the audit's "N duplicate group(s) carry
    different labels": ``"dropped 4 image(s): 4 in 2 duplicate group(s) with conflicting
    labels"``.
    """
    if not len(dropped):
        return ""
    parts = []
    for reason, g in dropped.groupby("reason", sort=False):
        if str(reason).startswith("duplicate group"):
            rest = str(reason).removeprefix("duplicate group")
            groups = f"{g['dup_group'].nunique()} " if "dup_group" in g else ""
            parts.append(f"{len(g)} image(s) in {groups}duplicate group(s){rest}")
        else:
            parts.append(f"{len(g)} image(s) ({reason})")
    return f"audit policy dropped {len(dropped)} image(s): " + ", ".join(parts)


# ============================================================== helpers
def _folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of each row: grouped, stratified K-fold."""
    from buscad.classical.cv import make_folds

    fold = np.full(len(y), -1, dtype=int)
    for f, (_, te) in enumerate(make_folds(y, groups, None, k, seed)):
        fold[te] = f
    return fold
