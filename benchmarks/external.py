"""External-validation protocol: which recipe transfers between ultrasound scanners.

One command, seeded and resumable (every stage is cached under ``--out``)::

    PYTHONPATH=src .venv/bin/python benchmarks/external.py
    PYTHONPATH=src .venv/bin/python benchmarks/external.py --features-only   # inputs only

The nested choice refits every stacked fusion's members inside every outer
fold, so a full run costs several times the plain evaluation of the candidates.

Protocol
--------
1. Cohorts: ``buscad data import`` of BUSI and BrEaST-Lesions_USG (benign and
   malignant lesions with an expert outline), pooled and audited
   (:func:`buscad.data.audit.run.run_audit`); the study's ``drop_conflicts``
   policy drops duplicate groups whose members carry different labels, and the
   near-duplicate groups are the grouping unit of every split.
2. Inputs (benchmarks/external_features.py): frozen ImageNet EfficientNet-Lite
   features of the ROI, outline shape, gain-free echo ratios, pyradiomics, the
   audit's mask geometry, LiteMedSAM's image embedding pooled inside, around and
   below the outline (``medsam``). Computed once per image, without labels.
3. Three evaluations of every candidate: BUSI→BrEaST (fit on all of BUSI, score
   BrEaST), BrEaST→BUSI, and pooled grouped stratified 5-fold CV. Every
   hyper-parameter and threshold of a candidate is chosen on its training rows
   only (inner grouped CV); the test rows are scored once.
4. The recipe is chosen without the rows it is reported on (:func:`choose`,
   :func:`nested_cv`). Per external direction: grouped stratified 5-fold CV of
   the training cohort alone (outer CV; each candidate's own settings by inner
   grouped CV inside every outer training part) ranks the candidates by the AUC
   of their outer out-of-fold scores; the best is refit on the whole training
   cohort and the external cohort is scored once, by the recipe chosen without
   it. Pooled CV: the same choice is made inside every outer fold on its
   training part, so the pooled AUC is that of the whole procedure. The
   candidates are every recipe but the references, BASELINE.md's refits and
   the fine-tuned networks (trained once per direction, they cannot be refit
   per fold; see 7). The study's default (configs/busi_breast.yaml
   ``integrated``) is the same choice made on every pooled row. The former
   rule, the best worst-case AUC over the three evaluations, read on the rows
   it is reported on, survives only in the table "selected on these cohorts
   (optimistic)"; the per-evaluation tables of every candidate are
   comparisons, not selections.
5. References in the same rows: mask geometry alone and image size alone (the
   audit's shortcut references), every line of ../shared/BASELINE.md refit here,
   and BrEaST's radiologist (ordinal BI-RADS).
6. Metrics: AUC with DeLong 95% CI, sensitivity/specificity at the Youden
   threshold of the training rows' out-of-fold scores, specificity at the
   radiologist's sensitivity (BrEaST), calibration slope; the ablation table
   gives each lever's change of every external AUC with a paired DeLong p.
7. Fine-tuned networks (benchmarks/external_finetune.py, ``--finetuned DIR``):
   lite0 fine-tuned on the training cohort, plain and with the transfer recipe
   (layer-wise lr decay, mixup, usaugment ultrasound augmentations, balanced
   sampling), in the two external directions only. Their held-out grouped
   validation rows of the training cohort stand for the training rows'
   out-of-fold scores (thresholds, stacking weights); the external cohort is
   scored once. Reported beside the chosen recipes, never chosen.

Writes ``benchmarks/results/external.json`` and ``external.md``.

Deployed outlines (``--outlines box``)
-------------------------------------
The same protocol on the outline a clinician gets by drawing a box: zero-shot
LiteMedSAM (nothing trained, float encoder) prompted with the expert mask's
bounding box, for every image of both cohorts (:func:`external_features.box_outlines`;
their Dice against the expert masks is reported per cohort). The outline families
(geometry, morph, shape, echo, radiomics, medsam, medsam_max) are recomputed from
it; the deep families keep their crop, which is the box the user drew (the expert
mask's bounding box plus margin), and only their global pool (``g_*``): the
mask-guided pool reads the expert outline, so its candidates are left out. Every
model scores box outlines (the external cohort and every held-out row of the
training cohort's CV); two variants differ in what it is fit on: ``expert``
(the training cohort's expert outlines, as a model trained on a curated dataset
would be) and ``box`` (the box outlines, the ones deployed). The choice is the
honest one above, per variant. Fine-tuned networks are not evaluated. Writes
``external_box.json`` and ``external_box.md``; external.json is not touched::

    PYTHONPATH=src .venv/bin/python benchmarks/external.py --outlines box --threads 1

Automatic outlines (``--outlines auto``)
---------------------------------------
The same on the outline the detector draws with no box at all
(:func:`external_features.auto_outlines_part`): each row is outlined by a detector
trained on the same cohorts as the model that scores it, never on the row itself
(:class:`Data`): the external cohort of a direction by the detector trained on the
training cohort, a held-out row of the training cohort's CV (and of pooled CV) by the
detector trained on the other folds of its own cohort. Where no candidate is kept the
call is withheld, as ``buscad predict`` withholds it: the AUCs are over the outlined
rows, with their number, and the AUC over all rows with every withheld pair a coin
flip (:func:`withheld_auc`) beside. Variants: fit on the training cohort's expert
outlines, or on its out-of-fold automatic outlines. The detectors train in two
processes, one per cohort, then the features of each source::

    PYTHONPATH=src .venv/bin/python benchmarks/external.py --outlines auto --features-only \
        --auto-cohorts BUSI --auto-sources --threads 1 &   # and BrEaST, in parallel
    PYTHONPATH=src .venv/bin/python benchmarks/external.py --outlines auto --features-only \
        --auto-cohorts --auto-sources auto-oof --threads 1 &   # and auto-x, in parallel
    PYTHONPATH=src .venv/bin/python benchmarks/external.py --outlines auto --no-build

Data: BUSI (Al-Dhabyani W et al., Data in Brief 28:104863, 2020; CC0) and
BrEaST-Lesions_USG (Pawlowska A et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0), read in place from ../shared/data.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import external_features as EF  # noqa: E402

from buscad.classical.fusion import _nonnegative_logistic  # noqa: E402
from buscad.data.manifest import Manifest  # noqa: E402
from buscad.utils import atomic_write_table  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
DATA = ROOT.parent / "shared" / "data"
#: The radiologist calls BI-RADS 4b or higher malignant (BASELINE.md: sens 0.990, spec 0.714).
READER_CUT_CATEGORY = "4b"


# ================================================================= cohorts
def cohorts(out: Path, seed: int = 0, log=print) -> Manifest:
    """Imported, pooled and audited BUSI + BrEaST lesions (cached in ``out/cohorts``)."""
    folder = out / "cohorts"
    kept = folder / "kept.csv"
    if kept.is_file():
        return Manifest.load(kept)
    from buscad.data.audit.masks import GEOMETRY_FEATURES, SIZE_FEATURES
    from buscad.data.audit.run import run_audit
    from buscad.data.importers.registry import import_dataset
    from buscad.data.manifest import concat

    folder.mkdir(parents=True, exist_ok=True)
    sources = {
        "BUSI": ("busi", DATA / "BUSI" / "Dataset_BUSI_with_GT"),
        "BrEaST": ("breast-lesions-usg", DATA / "BrEaST-Lesions_USG"),
    }
    mans = []
    for name, (fmt, src) in sources.items():
        if not src.exists():
            raise SystemExit(f"{src}: dataset not found (see ../shared/data/README.md)")
        path = folder / f"{name.lower()}.csv"
        if not path.is_file():
            import_dataset(fmt, src, path, progress=False)
        m = Manifest.load(path)
        df = m.df
        keep = df["label"].isin(["benign", "malignant"]) & df["mask_path"].notna()
        m = m.subset(keep.to_numpy())
        mans.append(m.with_columns(cohort=name))
    pooled = concat(mans, root=folder)
    res = run_audit(pooled, folder / "audit", seed=seed, report=False, log=None)
    full = res.manifest.df.copy()
    for c in (*GEOMETRY_FEATURES, *SIZE_FEATURES):
        if c in res.flags:
            full[c] = res.flags[c].to_numpy()
    conflict = full.get("audit_label_conflict", pd.Series(False, index=full.index))
    conflict = conflict.fillna(False).astype(bool)
    atomic_write_table(full.loc[conflict, ["image_id", "cohort", "label"]], folder / "dropped.csv")
    full = full.loc[~conflict]
    full["group"] = full["cohort"] + "_" + full["dup_group"].astype(str)
    man = Manifest(full, root=res.manifest.root, source=res.manifest.source)
    man.save(kept)
    log(
        f"cohorts: {len(full)} lesions kept, {int(conflict.sum())} dropped (conflicting labels); "
        + ", ".join(f"{c} {n}" for c, n in full["cohort"].value_counts().items())
    )
    return Manifest.load(kept)


# ================================================================= engine
class Data:
    """The pooled rows and every feature family, aligned by ``image_id``.

    ``fit`` and ``score``: the outline source (``expert``, ``box``, ``auto``) of the
    tables a model is fit on and of those it scores (held-out rows, inner and outer),
    so a model trained on expert outlines and scored on the outlines deployed is
    ``Data(man, out, fit="expert", score="box")``.

    ``auto`` (:func:`external_features.auto_outlines_part`): a row is outlined by a
    detector trained on the same cohorts as the model that scores it. When the model's
    training rows include the row's cohort (held-out rows of a cohort's CV, pooled CV),
    the row's out-of-fold outline (``auto-oof``: the detector trained on the other folds
    of its cohort); when they are the other cohort only (the external rows of a
    direction), the outline of the detector trained on that cohort (``auto-x``). Models
    fit on ``auto`` read the training rows' ``auto-oof`` outlines. A row without an
    outline ("no lesion found") is withheld: no score (NaN), as ``buscad predict``
    withholds the call, and a model fit on ``auto`` does not train on it.
    """

    def __init__(self, man: Manifest, out: Path, fit: str = "expert", score: str = "expert"):
        from buscad.data.birads import birads_rank

        df = man.df.reset_index(drop=True)
        self.df = df
        self.ids = df["image_id"].astype(str).to_numpy()
        self.y = (df["label"] == "malignant").to_numpy().astype(int)
        self.cohort = df["cohort"].to_numpy()
        self.groups = df["group"].astype(str).to_numpy()
        self.reader = (
            np.asarray(birads_rank(df["birads"]), dtype=float)
            if "birads" in df
            else np.full(len(df), np.nan)
        )
        self.out = out
        #: role -> outline source: ``fit`` (training rows), ``score`` (held-out rows of a
        #: cohort the model trained on), ``score_x`` (rows of a cohort it did not train on)
        #: (``score_x`` only where it differs from ``score``: the cache keys of the
        #: expert and box runs stay as they were)
        self.sources = {
            "fit": "auto-oof" if fit == "auto" else fit,
            "score": "auto-oof" if score == "auto" else score,
        }
        if score == "auto":
            self.sources["score_x"] = "auto-x"
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}
        self._outlined: dict[str, np.ndarray] = {}

    def outlined(self, role: str) -> np.ndarray:
        """Bool per row: ``role``'s source has an outline for it (always, but for ``auto-*``)."""
        source = self.source(role)
        if source not in self._outlined:
            if source in EF.AUTO_SOURCES:
                t = pd.read_csv(
                    EF.outline_dir(self.out, source) / "outlines.csv", dtype={"image_id": str}
                ).set_index("image_id")
                have = t["found_any"].reindex(self.ids).fillna(False).astype(bool).to_numpy()
            else:
                have = np.ones(len(self.ids), bool)
            self._outlined[source] = have
        return self._outlined[source]

    def source(self, role: str) -> str:
        """The outline source of ``role`` (``score_x`` defaults to ``score``'s)."""
        return self.sources.get(role, self.sources["score"])

    def score_role(self, train: np.ndarray, test: np.ndarray) -> str:
        """``score_x`` when no row of ``train`` shares a cohort with ``test``'s rows, else ``score``."""
        return (
            "score_x"
            if not set(self.cohort[train].tolist()) & set(self.cohort[test].tolist())
            else "score"
        )

    def family(self, name: str, role: str = "score") -> pd.DataFrame:
        """One family's table in row order (missing rows NaN), from ``role``'s outlines.

        Outline families (:data:`external_features.OUTLINE_FAMILIES`) are read from
        the source's own tables; a deep family of a source other than ``expert``
        keeps its ``g_*`` columns only, from the source's own table when it has one
        (``auto``: the crop around the detector's outline), else the expert one (``box``:
        the crop is the box; ``m_*`` pools inside the expert outline).
        """
        source = self.source(role)
        if (name, source) not in self._cache:
            if name == "geometry" and source == "expert":
                from buscad.data.audit.masks import GEOMETRY_FEATURES

                t = self.df.set_index("image_id")[list(GEOMETRY_FEATURES)]
            elif name == "size":
                from buscad.data.audit.masks import SIZE_FEATURES

                t = self.df.set_index("image_id")[list(SIZE_FEATURES)]
            elif name in EF.OUTLINE_FAMILIES:
                t = EF.load(EF.outline_dir(self.out, source), name)
            else:
                own = EF.outline_dir(self.out, source)
                own_file = (own / "features" / f"{name}.parquet").is_file()
                t = EF.load(own if source != "expert" and own_file else self.out, name)
                if source != "expert":
                    t = t[[c for c in t.columns if c.startswith("g_")]]
            t.index = t.index.astype(str)
            self._cache[(name, source)] = t.reindex(self.ids).astype(float)
        return self._cache[(name, source)]


def _key(idx: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]


class Candidate:
    """A model: named inputs (``family[:column regex]``) and a scikit-learn recipe.

    ``kind``: ``lr`` (z-score, L2 logistic regression, C fixed a priori),
    ``lrcv`` (C by inner grouped CV), ``l1cv`` (L1 logistic, C by inner grouped
    CV: the BASELINE radiomics line), ``svm`` (z-score, RBF SVM, Platt
    probabilities), ``radiomics`` (buscad's ICC + mRMR/LASSO rad-score).
    """

    def __init__(
        self,
        name: str,
        inputs: list[str],
        kind: str = "lr",
        C: float = 1.0,
        note: str = "",
        harmonise: bool = False,
        scores: dict[str, Path] | None = None,
    ):
        self.name, self.inputs, self.kind, self.C, self.note = name, inputs, kind, C, note
        self.harmonise = harmonise
        #: ``finetuned`` kind: direction (``busi2breast``/``breast2busi``) -> scores.csv
        self.scores = scores or {}

    def matrix(self, data: Data, role: str = "score") -> pd.DataFrame:
        """The inputs of every row, from the outlines of ``role`` (``fit``/``score``)."""
        import re

        parts = []
        for spec in self.inputs:
            fam, _, rx = spec.partition(":")
            t = data.family(fam, role)
            if rx:
                t = t[[c for c in t.columns if re.search(rx, c)]]
            # one family keeps its own column names (the rad-score pipeline selects by them)
            parts.append(t.add_prefix(f"{fam}:") if len(self.inputs) > 1 else t)
        X = pd.concat(parts, axis=1)
        if self.harmonise:
            # label-free site harmonisation: robust z-score of every feature within its
            # cohort (median and IQR of that cohort's images; no label is read)
            for coh in np.unique(data.cohort):
                r = data.cohort == coh
                med = X.loc[r].median()
                iqr = (X.loc[r].quantile(0.75) - X.loc[r].quantile(0.25)).replace(0, 1.0)
                X.loc[r] = (X.loc[r] - med) / iqr
        return X

    def estimator(self, seed: int):
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from buscad.classical.base import PlattSVC

        pre = [SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()]
        if self.kind == "lr":
            return make_pipeline(*pre, LogisticRegression(C=self.C, max_iter=5000))
        if self.kind == "svm":
            return make_pipeline(*pre, PlattSVC(C=self.C))
        if self.kind in ("lrcv", "l1cv"):
            from sklearn.linear_model import LogisticRegressionCV

            l1 = self.kind == "l1cv"
            return make_pipeline(
                *pre,
                LogisticRegressionCV(
                    Cs=np.logspace(-3, 1, 9) if l1 else np.logspace(-4, 0, 9),
                    cv=5,
                    penalty="l1" if l1 else "l2",
                    solver="liblinear" if l1 else "lbfgs",
                    scoring="roc_auc",
                    max_iter=5000,
                    random_state=seed,
                ),
            )
        if self.kind == "radiomics":
            from buscad.classical import radiomics_pipeline

            return radiomics_pipeline(random_state=seed)
        raise ValueError(self.kind)


class Combo:
    """A fusion of candidates' probabilities.

    ``mean``: mean of the members' logits, ``logit p = (1/K) Σ logit p_k``;
    ``pmean``: mean of their probabilities (BASELINE.md's fusion);
    ``platt``: one member recalibrated, ``logit p' = a logit p + b`` with ``a, b``
    fit on its out-of-fold scores of the training rows (AUC unchanged; calibration).
    ``stack``: ``logit p = a + Σ w_k logit p_k`` with ``w_k ≥ 0``, fit by
    penalised log-loss on the members' inner out-of-fold scores of the training
    rows (:class:`buscad.classical.StackingIntegrator` with ``positive=True``,
    ``C = 1``), so a member that does not help gets weight 0 and the fusion
    cannot invert a component.
    """

    def __init__(self, name: str, members: list[str], how: str = "mean", note=""):
        self.name, self.members, self.how, self.note = name, members, how, note
        self.inputs: list[str] = []


#: The direction folder of benchmarks/external_finetune.py for each external protocol.
FT_DIRECTIONS = {"BUSI→BrEaST": "busi2breast", "BrEaST→BUSI": "breast2busi"}


def supported(c: Candidate | Combo, cands: dict) -> set[str] | None:
    """The protocols a candidate can be evaluated under (None: all of them).

    A fine-tuned network has scores for the directions it was trained for only; a
    fusion, for the protocols all its members have.
    """
    if isinstance(c, Combo):
        out: set[str] | None = None
        for m in c.members:
            s = supported(cands[m], cands)
            if s is not None:
                out = s if out is None else out & s
        return out
    if c.kind == "finetuned":
        return {p for p, d in FT_DIRECTIONS.items() if d in c.scores}
    return None


def _platt(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration ``logit p' = a logit p + b`` fit on training-row OOF scores."""
    from buscad.bundle.bundle import fit_platt

    return fit_platt(p, y)


def _fuse(how: str, P: np.ndarray, fit_on: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """A :class:`Combo`'s rule applied to member scores ``P`` (one column per member).

    ``platt`` and ``stack`` fit their parameters on ``fit_on``, the members' out-of-fold
    scores of the training rows with labels ``y``.
    """
    if how == "mean":
        return 1 / (1 + np.exp(-_logit(P).mean(1)))
    if how == "pmean":
        return P.mean(1)
    # rows every member scored (a fine-tuned net's training-row scores are its
    # held-out validation rows only)
    ok = np.isfinite(fit_on).all(1)
    fit_on, y = fit_on[ok], y[ok]
    if how == "platt":
        a, b = _platt(fit_on[:, 0], y)
        return 1 / (1 + np.exp(-(a * _logit(P[:, 0]) + b)))
    b0, b = _nonnegative_logistic(_logit(fit_on), y, C=1.0)
    return 1 / (1 + np.exp(-(b0 + _logit(P) @ b)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


#: Bumped when a candidate's recipe changes meaning (invalidates the score cache).
ENGINE_VERSION = 1
#: Combos' training-row scores changed meaning in version 2 (no nested refits).
COMBO_VERSION = 2


def spec_key(c: Candidate | Combo, cands: dict, seed: int, sources: dict | None = None) -> str:
    """Hash of everything a candidate's scores depend on (members included).

    ``sources`` (:attr:`Data.sources`) enters the hash of a candidate that reads an
    outline family when a source is not ``expert``, so a candidate of the deep
    families alone shares its scores across outline sources (its inputs are the same);
    with automatic outlines it enters every candidate's hash (crops and withheld rows
    differ).
    """
    import hashlib
    import json

    if isinstance(c, Combo):
        d = {
            "how": c.how,
            "members": [spec_key(cands[m], cands, seed, sources) for m in c.members],
            "v": COMBO_VERSION,
        }
    elif c.kind == "finetuned":
        d = {
            "finetuned": {
                k: hashlib.sha1(Path(f).read_bytes()).hexdigest() for k, f in c.scores.items()
            }
        }
    else:
        d = {"inputs": c.inputs, "kind": c.kind, "C": c.C, "harmonise": c.harmonise}
        reads_outline = any(i.partition(":")[0] in EF.OUTLINE_FAMILIES for i in c.inputs)
        # automatic outlines change every candidate: the crops, and which rows are withheld
        auto = bool(sources) and bool(set(sources.values()) & set(EF.AUTO_SOURCES))
        if (reads_outline or auto) and sources and set(sources.values()) != {"expert"}:
            d["outlines"] = dict(sources)
    d.update(seed=seed, v=ENGINE_VERSION)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class Engine:
    """Fits and scores candidates on index sets, memoised in memory and on disk.

    Every score vector is saved under ``<out>/scores/<candidate hash>.npz`` as soon as its
    candidate is done, so a killed run resumes where it stopped.
    """

    def __init__(self, data: Data, cands: dict, seed: int = 0, inner_folds: int = 5):
        self.data, self.cands, self.seed, self.k = data, cands, seed, inner_folds
        self.memo: dict[tuple, np.ndarray] = {}
        self.mats: dict[tuple[str, str], pd.DataFrame] = {}
        self.folder = data.out / "scores"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._saved: dict[str, int] = {}
        for name, c in cands.items():
            f = self.folder / f"{spec_key(c, cands, seed, data.sources)}.npz"
            if f.is_file():
                with np.load(f) as z:
                    for k in z.files:
                        a, b = k.split("__")
                        self.memo[(name, a, b)] = z[k]

    def save_all(self) -> None:
        """Save every candidate whose memo grew since the last save."""
        counts: dict[str, int] = {}
        for k in self.memo:
            counts[k[0]] = counts.get(k[0], 0) + 1
        for name, n in counts.items():
            if self._saved.get(name) != n:
                self.save(name)
                self._saved[name] = n

    def save(self, name: str) -> None:
        """Write the candidate's memoised scores (atomically)."""
        import os

        arrays = {f"{k[1]}__{k[2]}": v for k, v in self.memo.items() if k[0] == name}
        key = spec_key(self.cands[name], self.cands, self.seed, self.data.sources)
        f = self.folder / f"{key}.npz"
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npz")  # runs of two variants share files
        np.savez(tmp, **arrays)
        os.replace(tmp, f)

    def _X(self, name: str, role: str = "score") -> pd.DataFrame:
        key = (name, self.data.source(role))
        if key not in self.mats:
            self.mats[key] = self.cands[name].matrix(self.data, role)
        return self.mats[key]

    def predict(self, name: str, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        """P(malignant) of rows ``te`` from the candidate fit on rows ``tr``."""
        key = (name, _key(tr), _key(te))
        if key in self.memo:
            return self.memo[key]
        c = self.cands[name]
        if isinstance(c, Combo):
            P = np.column_stack([self.predict(m, tr, te) for m in c.members])
            needs_fit = c.how in ("platt", "stack")
            fit_on = np.column_stack([self.oof(m, tr) for m in c.members]) if needs_fit else None
            s = _fuse(c.how, P, fit_on, self.data.y[tr])
        elif c.kind == "finetuned":
            s = self._finetuned(c, tr)[0].reindex(self.data.ids[te]).to_numpy(dtype=float)
        else:
            # fit on the training rows' ``fit`` outlines (those that have one), score the
            # test rows' outlines (:meth:`Data.score_role`); a row without one is withheld
            role = self.data.score_role(tr, te)
            X, Xs = self._X(name, "fit"), self._X(name, role)
            fit = tr[self.data.outlined("fit")[tr]]
            est = c.estimator(self.seed)
            if c.kind in ("lrcv", "l1cv"):
                from sklearn.model_selection import StratifiedGroupKFold

                cv = StratifiedGroupKFold(self.k, shuffle=True, random_state=self.seed)
                splits = list(cv.split(fit, self.data.y[fit], self.data.groups[fit]))
                est.steps[-1][1].set_params(cv=splits)
            est.fit(X.iloc[fit], self.data.y[fit])
            s = est.predict_proba(Xs.iloc[te])[:, 1]
            s = np.where(self.data.outlined(role)[te], s, np.nan)
        self.memo[key] = s
        return s

    def oof(self, name: str, tr: np.ndarray) -> np.ndarray:
        """Inner grouped out-of-fold scores of the training rows ``tr`` (thresholds, stacking)."""
        from buscad.classical.cv import make_folds

        key = (name, _key(tr), "oof")
        if key in self.memo:
            return self.memo[key]
        c = self.cands[name]
        if isinstance(c, Combo):
            # a fusion's training-row scores: its rule applied to the members' out-of-fold
            # scores (no second level of nesting; a stack's few weights are fit on them)
            mo = np.column_stack([self.oof(m, tr) for m in c.members])
            s = _fuse(c.how, mo, mo, self.data.y[tr])
            self.memo[key] = s
            return s
        if getattr(c, "kind", "") == "finetuned":  # its held-out validation rows, NaN elsewhere
            s = self._finetuned(c, tr)[1].reindex(self.data.ids[tr]).to_numpy(dtype=float)
            self.memo[key] = s
            return s
        s = np.full(len(tr), np.nan)
        for a, b in make_folds(self.data.y[tr], self.data.groups[tr], None, self.k, self.seed):
            s[b] = self.predict(name, tr[a], tr[b])
        self.memo[key] = s
        return s

    def _finetuned(self, c: Candidate, tr: np.ndarray) -> tuple[pd.Series, pd.Series]:
        """A fine-tuned net's (external, validation) scores by image id, for training rows ``tr``."""
        cohorts = set(self.data.cohort[tr])
        direction = {"BUSI": "busi2breast", "BrEaST": "breast2busi"}.get(
            next(iter(cohorts)) if len(cohorts) == 1 else ""
        )
        if direction not in c.scores:
            raise KeyError(f"{c.name}: no fine-tuned scores for these training rows")
        t = pd.read_csv(c.scores[direction], dtype={"image_id": str}).set_index("image_id")
        return (
            t.loc[t["role"] == "external", "score"],
            t.loc[t["role"] == "val", "score"],
        )


# =============================================================== protocols
def protocols(data: Data, seed: int, folds: int = 5) -> dict[str, list]:
    """Train/test index pairs of the three evaluations and of BrEaST's in-domain CV.

    ``BrEaST CV`` is not a target: it is the ceiling the same inputs reach on
    BrEaST when trained on BrEaST (grouped 5-fold), beside which the BUSI→BrEaST
    number is read.
    """
    from buscad.classical.cv import make_folds

    busi = np.flatnonzero(data.cohort == "BUSI")
    breast = np.flatnonzero(data.cohort == "BrEaST")
    pooled = make_folds(data.y, data.groups, None, folds, seed)
    inner = make_folds(data.y[breast], data.groups[breast], None, folds, seed)
    return {
        "BUSI→BrEaST": [(busi, breast)],
        "BrEaST→BUSI": [(breast, busi)],
        "pooled CV": pooled,
        # in-domain ceiling: how far the same inputs get when trained on BrEaST itself
        "BrEaST CV": [(breast[a], breast[b]) for a, b in inner],
    }


def reader_calls(y: np.ndarray, ranks: np.ndarray):
    """Metrics of the radiologist's calls: BI-RADS rank ≥ :data:`READER_CUT_CATEGORY` is malignant."""
    from buscad.data.birads import cut_rank
    from buscad.evaluate.metrics import binary_metrics

    return binary_metrics(y, (ranks >= cut_rank(READER_CUT_CATEGORY)).astype(float), 0.5)


def reader_row(data: Data, rows: np.ndarray, note: str) -> dict:
    """The radiologist's AUC [DeLong CI] and calls (:func:`reader_calls`) on ``rows``."""
    from buscad.evaluate.delong import auc_ci

    a = auc_ci(data.y[rows], data.reader[rows])
    r = reader_calls(data.y[rows], data.reader[rows])
    return {
        "n": len(rows),
        "auc": a.auc,
        "auc_lo": a.lo,
        "auc_hi": a.hi,
        "sensitivity": r.sensitivity,
        "specificity": r.specificity,
        "note": note,
    }


def evaluate(eng: Engine, name: str | list[str], pairs: list, thresholds: bool = True) -> dict:
    """Scores of the test rows (out-of-fold for CV) and their metrics.

    ``name`` is one candidate, or one per pair (:func:`nested_cv`'s per-fold
    choices); each pair's threshold is the Youden threshold of that candidate's
    inner out-of-fold scores of the pair's training rows.
    """
    from buscad.evaluate.calibration import calibration_slope_intercept
    from buscad.evaluate.delong import auc_ci
    from buscad.evaluate.metrics import binary_metrics, sensitivity_threshold, youden_threshold

    d = eng.data
    n = len(d.y)
    score = np.full(n, np.nan)
    call = np.zeros(n, dtype=bool)
    names = [name] * len(pairs) if isinstance(name, str) else list(name)
    for nm, (tr, te) in zip(names, pairs, strict=True):
        score[te] = eng.predict(nm, tr, te)
        if thresholds:
            o = eng.oof(nm, tr)
            ok = np.isfinite(o)  # a fine-tuned net: its held-out validation rows
            t = youden_threshold(d.y[tr][ok], o[ok])
            call[te] = score[te] >= t
    te_all = np.concatenate([te for _, te in pairs])
    fin = np.isfinite(score[te_all])  # withheld rows (automatic outlines: none found)
    y_all = d.y[te_all]
    y, s = y_all[fin], score[te_all][fin]
    a = auc_ci(y, s)
    row = {"n": len(y), "auc": a.auc, "auc_lo": a.lo, "auc_hi": a.hi}
    if not fin.all():
        row["n_rows"], row["n_withheld"] = len(te_all), int((~fin).sum())
        row["auc_all_rows_withheld_as_coin"] = withheld_auc(y_all, score[te_all])
    if thresholds:
        m = binary_metrics(y, call[te_all][fin].astype(float), 0.5)
        row.update(sensitivity=m.sensitivity, specificity=m.specificity, accuracy=m.accuracy)
    row["calibration_slope"] = calibration_slope_intercept(y, s).slope
    rs = d.reader[te_all][fin]
    if np.isfinite(rs).all():
        r = reader_calls(y, rs)
        t = sensitivity_threshold(y, s, r.sensitivity)
        row["spec_at_reader_sens"] = binary_metrics(y, s, t).specificity
        row["reader_sens"], row["reader_spec"] = r.sensitivity, r.specificity
    return {"metrics": row, "score": score, "rows": te_all}


def withheld_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC over every malignant/benign pair, a withheld row (NaN) a coin flip.

    ``(Σ_{i∈M, j∈B} [s_i > s_j] + ½ [s_i = s_j or s_i or s_j withheld]) / (|M| |B|)``:
    the AUC of the whole cohort when a withheld call gives no information.
    """
    pos, neg = s[y == 1], s[y == 0]
    fp, fn = np.isfinite(pos), np.isfinite(neg)
    p, n = pos[fp], neg[fn]
    gt = (p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()
    coin = len(pos) * len(neg) - len(p) * len(n)
    return float((gt + 0.5 * coin) / (len(pos) * len(neg)))


def finite_rows(rows: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    """The rows every score vector scored (finite)."""
    ok = np.ones(len(rows), bool)
    for sc in scores:
        ok &= np.isfinite(sc[rows])
    return rows[ok]


# ======================================================= honest selection
def selection_pool(cands: dict) -> list[str]:
    """The candidates the recipe is chosen among, in listing order (ties go to the earlier).

    References (``ref:``) and BASELINE.md's refits are comparisons, not recipes.
    Fine-tuned networks and fusions with them are left out: they are trained once
    per direction (benchmarks/external_finetune.py, hours each on 2 cores), so they
    cannot be refit inside an outer fold of the training cohort.
    """
    return [
        n
        for n, c in cands.items()
        if not n.startswith(("ref:", "BASELINE")) and supported(c, cands) is None
    ]


def choose(
    eng: Engine,
    names: list[str],
    train: np.ndarray,
    test: np.ndarray,
    folds: int = 5,
    log=None,
) -> dict:
    """Choose the recipe on the rows ``train`` alone, then score the rows ``test`` once.

    1. Outer grouped stratified ``folds``-fold CV of ``train``
       (:func:`buscad.classical.cv.make_folds` on the training rows' labels and
       near-duplicate groups, seed ``eng.seed``): every candidate in ``names`` is fit
       on each outer training part, its own settings (``lrcv``/``l1cv``'s C, a
       stack's or Platt's weights) chosen by inner grouped CV within that part
       (:meth:`Engine.predict`), and scores the held-out outer part.
    2. Each candidate's outer-CV AUC is the Mann-Whitney AUC of its concatenated
       held-out scores, ``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`` over the training rows'
       malignant/benign pairs; the highest wins (ties: the earlier in ``names``).
    3. The winner is refit on all of ``train`` (its settings again by inner CV)
       and scores ``test`` once.

    Only ``eng.data.y[train]`` is read; no label of a ``test`` row is.

    Returns
    -------
    dict
        ``chosen`` (name), ``cv_auc`` (name -> outer-CV AUC on ``train``, in
        ``names`` order) and ``score`` (P(malignant) of the ``test`` rows from the
        chosen recipe).
    """
    from buscad.classical.cv import make_folds
    from buscad.evaluate.delong import roc_auc

    d = eng.data
    y = d.y[train]
    outer = make_folds(y, d.groups[train], None, folds, eng.seed)
    cv_auc: dict[str, float] = {}
    for name in names:
        s = np.full(len(train), np.nan)
        for a, b in outer:
            s[b] = eng.predict(name, train[a], train[b])
        ok = np.isfinite(s)  # rows withheld (no automatic outline) choose nothing
        cv_auc[name] = float(roc_auc(y[ok], s[ok]))
        eng.save_all()
        if log:
            log(f"  {name:60s} outer-CV AUC {cv_auc[name]:.3f}")
    best = max(cv_auc.values())
    chosen = next(n for n in names if cv_auc[n] == best)
    score = eng.predict(chosen, train, test) if len(test) else np.empty(0)
    return {"chosen": chosen, "cv_auc": cv_auc, "score": score}


def nested_cv(eng: Engine, names: list[str], rows: np.ndarray, folds: int = 5, log=None) -> dict:
    """Grouped ``folds``-fold CV of ``rows`` with the choice made inside every outer fold.

    The outer folds are :func:`buscad.classical.cv.make_folds` of ``rows`` (those of
    the ``pooled CV`` protocol when ``rows`` is every row); in each, :func:`choose`
    picks the recipe on the outer training part alone (its own grouped CV) and
    scores the held-out part once. The out-of-fold scores therefore estimate the
    whole procedure, choice included.

    Returns
    -------
    dict
        ``pairs`` (outer train/test row indices), ``chosen`` (the recipe of each
        outer fold) and ``folds`` (per fold: chosen recipe, its inner CV AUC, the
        runner-up and its inner CV AUC).
    """
    from buscad.classical.cv import make_folds

    d = eng.data
    outer = make_folds(d.y[rows], d.groups[rows], None, folds, eng.seed)
    pairs, chosen, info = [], [], []
    for i, (a, b) in enumerate(outer):
        tr, te = rows[a], rows[b]
        if log:
            log(f"nested CV, outer fold {i}: choosing on {len(tr)} rows")
        r = choose(eng, names, tr, te, folds)
        rank = sorted(r["cv_auc"], key=lambda n: -r["cv_auc"][n])
        pairs.append((tr, te))
        chosen.append(r["chosen"])
        info.append(
            {
                "fold": i,
                "n_train": len(tr),
                "n_test": len(te),
                "chosen": r["chosen"],
                "inner_cv_auc": r["cv_auc"][r["chosen"]],
                "runner_up": rank[1] if len(rank) > 1 else None,
                "runner_up_cv_auc": r["cv_auc"][rank[1]] if len(rank) > 1 else None,
            }
        )
    return {"pairs": pairs, "chosen": chosen, "folds": info}


# ============================================================== candidates
L0 = "deep_lite0_m0.1_s224"
#: The ``medsam`` family's candidate (benchmarks/medsam_features.py measures it alone).
MEDSAM = "LiteMedSAM features LR C by CV"
#: The same with the regions' max-pooled embedding added (an ablation).
MEDSAM_MAX = "LiteMedSAM features mean+max pool LR C by CV"
#: BrEaST's in-domain CV: a ceiling for BUSI→BrEaST, run for the chosen recipes only.
CEILING = "BrEaST CV"
#: The evaluations of the former, optimistic rule (best worst-case AUC over them).
TARGETS = ("BUSI→BrEaST", "BrEaST→BUSI", "pooled CV")


def candidates(
    families: set[str], finetuned: Path | None = None, global_pool_only: bool = False
) -> tuple[dict, list[tuple[str, str, str]]]:
    """Every candidate (name -> Candidate/Combo) and the ablation pairs (lever, from, to).

    Only candidates whose inputs were computed are returned; ``finetuned`` is the
    ``--out`` folder of benchmarks/external_finetune.py (its runs become candidates).
    ``global_pool_only``: leave out candidates that read a deep family's ``m_*``
    columns (pooled inside the expert outline; outline sources other than ``expert``).
    """
    c: dict[str, Candidate | Combo] = {}

    def add(x):
        c[x.name] = x

    # references
    add(Candidate("ref: mask geometry", ["geometry"], note="audit's shortcut reference"))
    add(Candidate("ref: image size", ["size"], note="audit's shortcut reference"))
    # BASELINE.md, refit in the same rows
    add(Candidate("BASELINE whole-image lite0 → LR", ["deep_lite0_whole_s224:^g_"]))
    add(Candidate("BASELINE ROI lite0 → LR", [f"{L0}:^g_"]))
    add(Candidate("BASELINE ROI lite0 → SVM", [f"{L0}:^g_"], kind="svm"))
    add(Candidate("BASELINE radiomics L1-LR", ["radiomics:^[^@]*$"], kind="l1cv"))
    add(
        Combo(
            "BASELINE mean fusion",
            ["BASELINE ROI lite0 → LR", "BASELINE radiomics L1-LR"],
            how="pmean",
        )
    )
    # buscad's rad-score (ICC on mask perturbations, selection, LASSO) as the study runs it
    add(Candidate("radiomics rad-score (study)", ["radiomics"], kind="radiomics"))
    # radiomics restricted to scanner-robust families
    add(Candidate("radiomics shape2D L1-LR", ["radiomics:^original_shape2D_[^@]*$"], kind="l1cv"))
    add(
        Candidate(
            "radiomics no-texture L1-LR",
            ["radiomics:^original_(shape2D|firstorder)_[^@]*$"],
            kind="l1cv",
        )
    )
    # frozen deep features: regularisation, pooling, context, scale, backbone
    for C in (0.1, 0.01):
        add(Candidate(f"lite0 ROI LR C={C}", [f"{L0}:^g_"], C=C))
    add(Candidate("lite0 ROI LR C by CV", [f"{L0}:^g_"], kind="lrcv"))
    add(Candidate("lite0 ROI mask-pool LR", [f"{L0}:^m_"], C=0.1))
    add(Candidate("lite0 ROI global+mask-pool LR", [f"{L0}"], C=0.1))
    add(Candidate("lite0 ROI+50% LR", ["deep_lite0_m0.5_s224:^g_"], C=0.1))
    add(Candidate("lite0 ROI 320px LR", ["deep_lite0_m0.1_s320:^g_"], C=0.1))
    add(Candidate("lite1 ROI LR", ["deep_lite1_m0.1_s240:^g_"], C=0.1))
    add(Candidate("lite1 ROI+50% LR", ["deep_lite1_m0.5_s240:^g_"], C=0.1))
    add(Candidate("lite2 ROI LR", ["deep_lite2_m0.1_s260:^g_"], C=0.1))
    add(Candidate("lite2 ROI+50% LR", ["deep_lite2_m0.5_s260:^g_"], C=0.1))
    deep_members = [
        "lite0 ROI LR C=0.1",
        "lite0 ROI+50% LR",
        "lite0 ROI 320px LR",
        "lite1 ROI LR",
        "lite1 ROI+50% LR",
        "lite2 ROI LR",
        "lite2 ROI+50% LR",
    ]
    add(Combo("deep ensemble (lite0/1/2 × 2 crops, mean logit)", deep_members))
    for fam, label in (
        (L0, "lite0 ROI"),
        ("deep_lite0_m0.5_s224", "lite0 ROI+50%"),
        ("deep_lite0_m0.1_s320", "lite0 ROI 320px"),
        ("deep_lite1_m0.1_s240", "lite1 ROI"),
        ("deep_lite1_m0.5_s240", "lite1 ROI+50%"),
        ("deep_lite2_m0.1_s260", "lite2 ROI"),
        ("deep_lite2_m0.5_s260", "lite2 ROI+50%"),
    ):
        add(Candidate(f"{label} LR C=0.01", [f"{fam}:^g_"], C=0.01))
    reg_members = [
        f"{x} LR C=0.01"
        for x in (
            "lite0 ROI",
            "lite0 ROI+50%",
            "lite0 ROI 320px",
            "lite1 ROI",
            "lite1 ROI+50%",
            "lite2 ROI",
            "lite2 ROI+50%",
        )
    ]
    add(Combo("deep ensemble, members C=0.01", reg_members))
    add(
        Combo(
            "deep ensemble lite0/1/2 ROI, C=0.01",
            reg_members[:1] + reg_members[3:4] + reg_members[5:6],
        )
    )
    add(Candidate("lite0 ROI LR, CLAHE", ["deep_lite0_m0.1_s224_clahe:^g_"], C=0.1))
    add(Candidate("lite0 ROI+50% LR, CLAHE", ["deep_lite0_m0.5_s224_clahe:^g_"], C=0.1))
    lite0 = ["lite0 ROI LR C=0.1", "lite0 ROI+50% LR", "lite0 ROI 320px LR"]
    add(Combo("deep ensemble lite0 × 3 crops", lite0))
    # outline and echo descriptors
    add(Candidate("smoothed outline shape", ["shape"]))
    add(Candidate("morphology (segment)", ["morph"]))
    add(Candidate("echo ratios", ["echo"]))
    add(Candidate("smoothed shape + echo", ["shape", "echo"]))
    desc = "descriptors: geometry + smoothed shape + echo"
    add(Candidate(desc, ["geometry", "shape", "echo"]))
    add(Candidate(desc + ", C=0.1", ["geometry", "shape", "echo"], C=0.1))
    add(Candidate(desc + ", site-harmonised", ["geometry", "shape", "echo"], harmonise=True))
    # LiteMedSAM's image embedding pooled inside / around / below the outline (the study's
    # ``medsam`` model: z-score, L2 logistic regression, C by inner grouped CV)
    add(Candidate(MEDSAM, ["medsam"], kind="lrcv", note="buscad.classical.MedSAMModel"))
    add(Candidate(MEDSAM_MAX, ["medsam", "medsam_max"], kind="lrcv", note="+ max pooling"))
    # fusion
    ens = "deep ensemble (lite0/1/2 × 2 crops, mean logit)"
    ens01 = "deep ensemble, members C=0.01"
    add(Combo("fusion mean: descriptors + deep ensemble C=0.01", [desc, ens01]))
    add(
        Combo(
            "fusion mean: descriptors + lite0/1/2 ROI C=0.01",
            [desc, "deep ensemble lite0/1/2 ROI, C=0.01"],
        )
    )
    add(Combo("fusion stack: descriptors + deep ensemble C=0.01", [desc, ens01], how="stack"))
    add(
        Combo(
            "fusion stack: descriptors + deep ensemble C=0.01 + radiomics shape2D",
            [desc, ens01, "radiomics shape2D L1-LR"],
            how="stack",
        )
    )
    add(Combo("fusion mean: descriptors + deep ensemble", [desc, ens]))
    add(Combo("fusion stack: descriptors + deep ensemble", [desc, ens], how="stack"))
    add(
        Combo(
            "fusion stack: descriptors + lite0 ensemble",
            [desc, "deep ensemble lite0 × 3 crops"],
            how="stack",
        )
    )
    add(
        Combo(
            "fusion stack: descriptors + deep ensemble + radiomics shape2D",
            [desc, ens, "radiomics shape2D L1-LR"],
            how="stack",
        )
    )
    add(
        Combo(
            "fusion stack: descriptors + deep ensemble + radiomics",
            [desc, ens, "BASELINE radiomics L1-LR"],
            how="stack",
        )
    )
    add(
        Combo(
            "fusion mean: descriptors + deep ensemble + radiomics shape2D",
            [desc, ens, "radiomics shape2D L1-LR"],
        )
    )

    add(Combo(f"fusion stack: descriptors + {MEDSAM}", [desc, MEDSAM], how="stack"))
    add(
        Combo(
            f"fusion stack: descriptors + deep ensemble C=0.01 + {MEDSAM}",
            [desc, ens01, MEDSAM],
            how="stack",
        )
    )
    add(Combo(f"fusion mean: descriptors + deep ensemble + {MEDSAM}", [desc, ens, MEDSAM]))
    add(
        Combo(
            "fusion mean: descriptors + deep ensemble, recalibrated",
            ["fusion mean: descriptors + deep ensemble"],
            how="platt",
        )
    )

    ft_ablation = finetuned_candidates(finetuned, add, desc, ens) if finetuned else []

    def ok(x) -> bool:
        if isinstance(x, Combo):
            return all(m in c and ok(c[m]) for m in x.members)
        if global_pool_only and any(
            i.startswith("deep_") and not i.endswith(":^g_") for i in x.inputs
        ):
            return False
        return all(i.partition(":")[0] in families for i in x.inputs)

    c = {k: v for k, v in c.items() if ok(v)}
    ablation = [
        ("L2 C 1 → 0.1", "BASELINE ROI lite0 → LR", "lite0 ROI LR C=0.1"),
        ("L2 C 1 → CV", "BASELINE ROI lite0 → LR", "lite0 ROI LR C by CV"),
        ("mask-guided pooling", "lite0 ROI LR C=0.1", "lite0 ROI mask-pool LR"),
        ("global + mask pooling", "lite0 ROI LR C=0.1", "lite0 ROI global+mask-pool LR"),
        ("context: margin 10% → 50%", "lite0 ROI LR C=0.1", "lite0 ROI+50% LR"),
        ("scale 224 → 320 px", "lite0 ROI LR C=0.1", "lite0 ROI 320px LR"),
        ("backbone lite0 → lite1", "lite0 ROI LR C=0.1", "lite1 ROI LR"),
        ("backbone lite0 → lite2", "lite0 ROI LR C=0.1", "lite2 ROI LR"),
        ("ensemble of 7 frozen models", "lite0 ROI LR C=0.1", ens),
        ("ensemble members L2 C 0.1 → 0.01", ens, "deep ensemble, members C=0.01"),
        (
            "fusion with the C=0.01 ensemble (mean)",
            "fusion mean: descriptors + deep ensemble",
            "fusion mean: descriptors + deep ensemble C=0.01",
        ),
        (
            "fusion C=0.01 ensemble: mean → stack",
            "fusion mean: descriptors + deep ensemble C=0.01",
            "fusion stack: descriptors + deep ensemble C=0.01",
        ),
        ("radiomics: all → shape2D", "BASELINE radiomics L1-LR", "radiomics shape2D L1-LR"),
        (
            "radiomics: all → shape+first-order",
            "BASELINE radiomics L1-LR",
            "radiomics no-texture L1-LR",
        ),
        ("CLAHE contrast normalisation", "lite0 ROI LR C=0.1", "lite0 ROI LR, CLAHE"),
        ("CLAHE, margin 50%", "lite0 ROI+50% LR", "lite0 ROI+50% LR, CLAHE"),
        ("outline: raw geometry → smoothed", "ref: mask geometry", "smoothed outline shape"),
        ("+ echo ratios to smoothed shape", "smoothed outline shape", "smoothed shape + echo"),
        ("descriptors: + raw geometry", "smoothed shape + echo", desc),
        ("descriptors: L2 C 1 → 0.1", desc, desc + ", C=0.1"),
        ("descriptors: site harmonisation", desc, desc + ", site-harmonised"),
        (
            "fusion: descriptors + deep ensemble (mean)",
            desc,
            "fusion mean: descriptors + deep ensemble",
        ),
        (
            "fusion: mean → non-negative stack",
            "fusion mean: descriptors + deep ensemble",
            "fusion stack: descriptors + deep ensemble",
        ),
        (
            "fusion: full → lite0-only ensemble",
            "fusion stack: descriptors + deep ensemble",
            "fusion stack: descriptors + lite0 ensemble",
        ),
        (
            "fusion: + radiomics shape2D",
            "fusion stack: descriptors + deep ensemble",
            "fusion stack: descriptors + deep ensemble + radiomics shape2D",
        ),
        (
            "fusion: + all radiomics",
            "fusion stack: descriptors + deep ensemble",
            "fusion stack: descriptors + deep ensemble + radiomics",
        ),
        ("LiteMedSAM features vs frozen lite0", "lite0 ROI LR C by CV", MEDSAM),
        ("LiteMedSAM features: + max pooling", MEDSAM, MEDSAM_MAX),
        (
            "descriptors: + LiteMedSAM features (stack)",
            desc,
            f"fusion stack: descriptors + {MEDSAM}",
        ),
        (
            "fusion C=0.01 stack: + LiteMedSAM features",
            "fusion stack: descriptors + deep ensemble C=0.01",
            f"fusion stack: descriptors + deep ensemble C=0.01 + {MEDSAM}",
        ),
        (
            "fusion mean: + LiteMedSAM features",
            "fusion mean: descriptors + deep ensemble",
            f"fusion mean: descriptors + deep ensemble + {MEDSAM}",
        ),
        *ft_ablation,
    ]
    return c, [a for a in ablation if a[1] in c and a[2] in c]


#: Labels of benchmarks/external_finetune.py's variants (the folder names).
FT_LABELS = {
    "plain": "plain",
    "recipe": "recipe: LLRD + mixup + US aug + balanced",
    "plain+llrd": "plain + layer-wise lr decay",
    "plain+mixup": "plain + mixup",
    "plain+usaug": "plain + usaugment",
    "plain+balance": "plain + balanced sampling",
}


def finetuned_candidates(folder: Path, add, desc: str, ens: str) -> list[tuple[str, str, str]]:
    """The fine-tuned runs under ``folder`` as candidates, their fusions with the best
    frozen recipe, and their ablation pairs."""
    best = "fusion mean: descriptors + deep ensemble"
    names: dict[str, str] = {}
    for variant, label in FT_LABELS.items():
        files = {
            d: folder / d / variant / "scores.csv"
            for d in FT_DIRECTIONS.values()
            if (folder / d / variant / "scores.csv").is_file()
        }
        if not files:
            continue
        n = names[variant] = f"fine-tuned lite0 ({label})"
        add(Candidate(n, [], kind="finetuned", scores=files, note="external_finetune.py"))
        if variant in ("plain", "recipe"):
            add(
                Combo(
                    f"fusion mean: descriptors + deep ensemble + ft lite0 {variant}", [desc, ens, n]
                )
            )
            add(
                Combo(
                    f"fusion stack: descriptors + deep ensemble + ft lite0 {variant}",
                    [desc, ens, n],
                    how="stack",
                )
            )
    # every fine-tuned variant against the previous best recipe (paired DeLong)
    pairs = [(f"previous best → ft lite0 ({FT_LABELS[v]})", best, n) for v, n in names.items()]
    if "plain" in names:
        pairs.append(
            ("fine-tune lite0 (plain) vs frozen lite0 LR", "lite0 ROI LR C by CV", names["plain"])
        )
        for v, lever in (
            ("recipe", "fine-tune: plain → whole recipe"),
            ("plain+llrd", "fine-tune: + layer-wise lr decay 0.7"),
            ("plain+mixup", "fine-tune: + mixup α=0.2"),
            ("plain+usaug", "fine-tune: + usaugment"),
            ("plain+balance", "fine-tune: + cohort×class balanced sampling"),
        ):
            if v in names:
                pairs.append((lever, names["plain"], names[v]))
    for v in ("plain", "recipe"):
        if v in names:
            pairs.append(
                (
                    f"best + ft lite0 {v} (mean)",
                    best,
                    f"fusion mean: descriptors + deep ensemble + ft lite0 {v}",
                )
            )
            pairs.append(
                (
                    f"best + ft lite0 {v} (stack on val rows)",
                    best,
                    f"fusion stack: descriptors + deep ensemble + ft lite0 {v}",
                )
            )
    return pairs


# ================================================================ report
def _fmt(v: float | None, d: int = 3) -> str:
    return "" if v is None or v != v else f"{v:.{d}f}"


def run(data: Data, cands: dict, ablation: list, seed: int, log=print) -> dict:
    """Evaluate every candidate under every protocol; the ablation table; the chosen recipe."""
    import time

    from buscad.evaluate.delong import auc_ci, delong_test

    eng = Engine(data, cands, seed)
    prot = protocols(data, seed)
    results: dict[str, dict] = {p: {} for p in prot}
    scores: dict[tuple[str, str], np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in cands:
        t0 = time.perf_counter()
        ok = supported(cands[name], cands)
        for p, pairs in prot.items():
            if (ok is not None and p not in ok) or p == CEILING:
                continue
            ev = evaluate(eng, name, pairs)
            scores[(p, name)] = ev["score"]
            row = ev["metrics"]
            if p == "pooled CV":
                for coh in ("BUSI", "BrEaST"):
                    r = finite_rows(np.flatnonzero(data.cohort == coh), ev["score"])
                    row[f"auc_{coh}"] = auc_ci(data.y[r], ev["score"][r]).auc
            results[p][name] = row
        eng.save_all()
        seconds[name] = round(time.perf_counter() - t0, 1)
        log(
            f"{name:60s} "
            + " ".join(f"{p}={results[p][name]['auc']:.3f}" for p in prot if name in results[p])
            + f" ({seconds[name]} s)"
        )
    # the radiologist's BI-RADS on BrEaST rows (external in BUSI→BrEaST)
    br = np.flatnonzero(data.cohort == "BrEaST")
    if np.isfinite(data.reader[br]).all():
        ref = "ref: BrEaST radiologist BI-RADS"
        results["BUSI→BrEaST"][ref] = reader_row(
            data, br, f"ordinal BI-RADS; calls at {READER_CUT_CATEGORY} or higher"
        )
        scores[("BUSI→BrEaST", ref)] = data.reader.copy()
        # automatic outlines: the radiologist on the rows the models scored, for reading beside
        seen = br[data.outlined(data.score_role(np.flatnonzero(data.cohort == "BUSI"), br))[br]]
        if len(seen) < len(br):
            results["BUSI→BrEaST"][f"{ref}, outlined rows"] = reader_row(
                data, seen, "the rows with an automatic outline only (the others are withheld)"
            )
    abl = []
    for lever, a, b in ablation:
        row = {"lever": lever, "from": a, "to": b}
        for p, pairs in prot.items():
            if a not in results[p] or b not in results[p]:
                continue
            rows = np.concatenate([te for _, te in pairs])
            rows = finite_rows(rows, scores[(p, b)], scores[(p, a)])
            t = delong_test(data.y[rows], scores[(p, b)][rows], scores[(p, a)][rows])
            row[p] = {
                "from": results[p][a]["auc"],
                "to": results[p][b]["auc"],
                "delta": t.diff,
                "p": t.p,
            }
        abl.append(row)
    # the honest protocol: the recipe chosen on the training rows alone, the test rows scored once
    pool = selection_pool(cands)
    honest: dict[str, dict] = {}
    for p in ("BUSI→BrEaST", "BrEaST→BUSI"):
        ((tr, te),) = prot[p]
        log(f"{p}: choosing among {len(pool)} candidates on the {len(tr)} training rows")
        r = choose(eng, pool, tr, te, log=log)
        ch = r["chosen"]
        # the same fit, scored once
        assert np.array_equal(r["score"], scores[(p, ch)][te], equal_nan=True)
        rank = sorted(pool, key=lambda n: -r["cv_auc"][n])
        honest[p] = {
            "trained_on": str(data.cohort[tr[0]]),
            "chosen": ch,
            "training_cv_auc": r["cv_auc"][ch],
            "metrics": results[p][ch],
            "candidates": [
                {"name": n, "training_cv_auc": r["cv_auc"][n], "external_auc": results[p][n]["auc"]}
                for n in rank
            ],
        }
        log(
            f"{p}: chose {ch} (training CV {r['cv_auc'][ch]:.3f}), external {results[p][ch]['auc']:.3f}"
        )
    nest = nested_cv(eng, pool, np.arange(len(data.y)), log=log)
    ev = evaluate(eng, nest["chosen"], nest["pairs"])
    row = ev["metrics"]
    for coh in ("BUSI", "BrEaST"):
        rr = finite_rows(np.flatnonzero(data.cohort == coh), ev["score"])
        row[f"auc_{coh}"] = auc_ci(data.y[rr], ev["score"][rr]).auc
    honest["pooled CV"] = {"folds": nest["folds"], "metrics": row}
    scores[("pooled CV", "honest")] = ev["score"]
    log(f"pooled CV, choice inside each outer fold: AUC {row['auc']:.3f}")
    # the study's default: the same procedure run on every row (its grouped CV of all rows,
    # i.e. the ``pooled CV`` column); nested CV above is the estimate of how it does
    every = np.arange(len(data.y))
    full = choose(eng, pool, every, every[:0])
    study = {
        "chosen": full["chosen"],
        "cv_auc": full["cv_auc"][full["chosen"]],
        "rule": "the recipe with the highest grouped 5-fold CV AUC over all pooled rows "
        "(the choice of nested pooled CV, made on every row)",
    }
    # the in-domain ceiling, for the chosen recipes only (a reference, never a target)
    for name in dict.fromkeys([honest[p]["chosen"] for p in FT_DIRECTIONS] + [study["chosen"]]):
        results[CEILING][name] = evaluate(eng, name, prot[CEILING])["metrics"]
        eng.save_all()
    # the former rule, kept as an optimistic reference only: best worst-case AUC over the
    # three evaluations, read on the very cohorts it is reported on
    worst = {n: min(results[p][n]["auc"] for p in TARGETS) for n in pool}
    return {
        "results": results,
        "ablation": abl,
        "honest": honest,
        "study_default": study,
        "optimistic": {"chosen": max(worst, key=worst.get), "worst_case_auc": worst},
        "seconds": seconds,
        "scores": scores,
        "candidates": {n: list(getattr(c, "members", [])) for n, c in cands.items()},
    }


#: Acceptance targets of issue 14 (AUC of the chosen recipe).
TARGET_AUC = {"BUSI→BrEaST": 0.90, "BrEaST→BUSI": 0.92, "pooled CV": 0.95}
#: BASELINE.md's published numbers (its own throwaway script, 647 BUSI rows, conflicts kept).
BASELINE_PUBLISHED = {
    "BASELINE ROI lite0 → LR": {"pooled CV": None, "BUSI→BrEaST": 0.817},
    "BASELINE radiomics L1-LR": {"BUSI→BrEaST": 0.787},
    "BASELINE mean fusion": {"BUSI→BrEaST": 0.823},
}


def targets_section(res: dict) -> list[str]:
    """Markdown lines: the honestly chosen recipes against every acceptance target, met or not.

    Each direction's value is the external AUC of the recipe chosen on its training
    cohort alone; the pooled value is nested CV's (the choice inside each outer fold).
    """
    r, h = res["results"], res["honest"]
    cands = res.get("candidates", {})
    L = [
        "## Targets (issue 14), recipes chosen without the test rows",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    val = {p: h[p]["metrics"]["auc"] for p in TARGET_AUC}
    for p, t in TARGET_AUC.items():
        L.append(f"| {p} AUC ≥ {t} | {val[p]:.3f} | {'yes' if val[p] >= t else '**no**'} |")
    for p in ("BUSI→BrEaST", "BrEaST→BUSI"):
        if "ref: mask geometry" not in r[p]:  # a partial run (--only)
            continue
        ch, v, g = h[p]["chosen"], val[p], r[p]["ref: mask geometry"]["auc"]
        L.append(
            f"| {p}: not below mask geometry ({g:.3f}) | {v:.3f} | {'yes' if v >= g else '**no**'} |"
        )
        members = cands.get(ch, [])
        if members:
            best = max(r[p][m]["auc"] for m in members)
            ok = v >= best - 0.01
            L.append(
                f"| {p}: fusion ≥ best component − 0.01 ({best:.3f}) | {v:.3f} | "
                f"{'yes' if ok else '**no**'} |"
            )
    for name in [n for n in r["pooled CV"] if n.startswith("BASELINE")]:
        worse = [p for p in TARGET_AUC if val[p] < r[p][name]["auc"]]
        L.append(
            f"| beats {name} in all three | "
            + ", ".join(f"{val[p]:.3f} vs {r[p][name]['auc']:.3f}" for p in TARGET_AUC)
            + f" | {'yes' if not worse else '**no** (' + ', '.join(worse) + ')'} |"
        )
    sp = h["BUSI→BrEaST"]["metrics"].get("spec_at_reader_sens")
    rad = r["BUSI→BrEaST"].get("ref: BrEaST radiologist BI-RADS", {})
    if sp is not None and rad:
        L.append(
            f"| BrEaST: specificity at the radiologist's sensitivity ({rad['sensitivity']:.3f}) "
            f"beside the radiologist's {rad['specificity']:.3f} | {sp:.3f} | reported |"
        )
    ch = h["BUSI→BrEaST"]["chosen"]
    ceiling = r.get("BrEaST CV", {}).get(ch, {}).get("auc")
    if ceiling is not None:
        L += [
            "",
            f"In-domain ceiling: BUSI→BrEaST's recipe trained on BrEaST itself (grouped 5-fold) "
            f"reaches {ceiling:.3f} on BrEaST, beside which its {val['BUSI→BrEaST']:.3f} from BUSI "
            "is read.",
        ]
    return [*L, ""]


def honest_section(res: dict, top: int = 10) -> list[str]:
    """Markdown lines: per evaluation, the recipe chosen without its test rows, and the runners-up."""
    h, study = res["honest"], res["study_default"]
    L = [
        "## Recipe chosen without the test rows",
        "",
        "Each external direction: the recipe (and every hyper-parameter) chosen by grouped 5-fold "
        "CV of the training cohort alone (nested: each candidate's own settings by inner grouped "
        "CV inside every outer training part; the choice by outer-CV AUC), refit on the whole "
        "training cohort, the external cohort scored once. Pooled CV: the choice made inside "
        "every outer fold on its training part, so the AUC is that of the whole procedure. "
        "Candidates: every recipe below except references, BASELINE refits and fine-tuned "
        "networks (not refit per fold).",
        "",
        "| evaluation | trained on | chosen recipe | training-cohort CV AUC | "
        "AUC [95% CI] (DeLong) | sens | spec | cal. slope |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in ("BUSI→BrEaST", "BrEaST→BUSI"):
        m = h[p]["metrics"]
        L.append(
            f"| {p} | {h[p]['trained_on']} | {h[p]['chosen']} | {h[p]['training_cv_auc']:.3f} | "
            f"{_fmt(m['auc'])} [{_fmt(m['auc_lo'])}–{_fmt(m['auc_hi'])}] | "
            f"{_fmt(m.get('sensitivity'))} | {_fmt(m.get('specificity'))} | "
            f"{_fmt(m.get('calibration_slope'), 2)} |"
        )
    m = h["pooled CV"]["metrics"]
    L += [
        f"| pooled CV (nested) | outer training parts | per fold, below | — | "
        f"{_fmt(m['auc'])} [{_fmt(m['auc_lo'])}–{_fmt(m['auc_hi'])}] | "
        f"{_fmt(m.get('sensitivity'))} | {_fmt(m.get('specificity'))} | "
        f"{_fmt(m.get('calibration_slope'), 2)} |",
        "",
        f"Nested pooled CV by cohort: BUSI rows {_fmt(m.get('auc_BUSI'))}, BrEaST rows "
        f"{_fmt(m.get('auc_BrEaST'))}.",
        "",
        "| outer fold | training rows | chosen recipe (inner CV AUC) | runner-up (inner CV AUC) |",
        "|---|---|---|---|",
    ]
    for f in h["pooled CV"]["folds"]:
        L.append(
            f"| {f['fold']} | {f['n_train']} | {f['chosen']} ({f['inner_cv_auc']:.3f}) | "
            f"{f['runner_up']} ({_fmt(f['runner_up_cv_auc'])}) |"
        )
    L += [
        "",
        f"**Pooled-CV choice (for reading only): {study['chosen']}** (CV AUC "
        f"{study['cv_auc']:.3f}). Rule: {study['rule']}; nested pooled CV above estimates how "
        "this procedure does. It reads both cohorts' labels, so it sets nothing in a study that "
        "reports either cohort as external: the study's integrated model is fixed in advance "
        "(every image-based model, weights learnt on the training rows; configs/busi_breast.yaml).",
        "",
    ]
    for p in ("BUSI→BrEaST", "BrEaST→BUSI"):
        L += [
            f"### {p}: candidates ranked by {h[p]['trained_on']} CV",
            "",
            "The external AUC of a runner-up is shown for reading only; it chose nothing.",
            "",
            f"| rank | candidate | {h[p]['trained_on']} CV AUC | external AUC |",
            "|---|---|---|---|",
        ]
        for i, c in enumerate(h[p]["candidates"][:top], 1):
            L.append(
                f"| {i} | {c['name']} | {c['training_cv_auc']:.3f} | {c['external_auc']:.3f} |"
            )
        L.append("")
    return L


def optimistic_section(res: dict, top: int = 5) -> list[str]:
    """Markdown lines: the former rule (best worst-case AUC over the targets), optimistic."""
    r, o = res["results"], res["optimistic"]
    rank = sorted(o["worst_case_auc"], key=lambda n: -o["worst_case_auc"][n])[:top]
    L = [
        "## Selected on these cohorts (optimistic)",
        "",
        "The former rule: the recipe with the best worst-case AUC over "
        + ", ".join(TARGETS)
        + ", read on the very rows it is reported on. These figures are post-selection and "
        "overstate what a recipe chosen in advance would reach; they are not the results.",
        "",
        "| candidate | " + " | ".join(TARGETS) + " | worst |",
        "|---|" + "---|" * (len(TARGETS) + 1),
    ]
    for n in rank:
        L.append(
            f"| {n} | "
            + " | ".join(f"{r[p][n]['auc']:.3f}" for p in TARGETS)
            + f" | {o['worst_case_auc'][n]:.3f} |"
        )
    return [*L, ""]


def finetuned_runs(folder: Path | None) -> list[dict]:
    """``run.json`` of every benchmarks/external_finetune.py run under ``folder``."""
    if folder is None or not folder.is_dir():
        return []
    import json

    runs = [json.loads(f.read_text()) for f in sorted(folder.glob("*/*/run.json"))]
    order = list(FT_LABELS)
    return sorted(
        runs,
        key=lambda r: (r["direction"], order.index(r["variant"]) if r["variant"] in order else 99),
    )


def finetuned_section(runs: list[dict]) -> list[str]:
    """Markdown lines: one row per fine-tuning run (settings, validation, external AUC)."""
    if not runs:
        return []
    L = [
        "## Fine-tuned lite0 runs (benchmarks/external_finetune.py)",
        "",
        "Fit on the training cohort (its held-out grouped validation rows choose the epoch); "
        "the external cohort scored once. Recipe options off unless named.",
        "",
        "| direction | variant | recipe options | best epoch / run | val AUC (n) | "
        "external AUC [95% CI] | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r["config"]
        opts = ", ".join(
            f"{k}={c[k]}"
            for k in ("layer_decay", "mixup", "us_augment", "balance_by")
            if c.get(k) not in (None, 0, 0.0, False)
        )
        L.append(
            f"| {r['direction']} | {r['variant']} | {opts or '—'} | "
            f"{r['best_epoch']} / {r['epochs_run']} | {r['val_auc']:.3f} ({r['n_val']}) | "
            f"{r['external_auc']:.3f} [{r['external_ci'][0]:.3f}–{r['external_ci'][1]:.3f}] | "
            f"{r['seconds_per_epoch']:.0f} |"
        )
    c = runs[0]["config"]
    L += [
        "",
        f"Common settings: {c['backbone']} ({c['pretrained']} weights, packaged), "
        f"{c['input_size']} px ROI crops (margin {c['margin']}), {c['epochs']} epochs max, "
        f"patience {c['patience']}, batch {c['batch_size']}, AdamW lr {c['lr']} with "
        f"{c['warmup_epochs']} warm-up epoch and cosine decay, seed {c['seed']}; "
        f"{c['num_threads']} CPU threads. Levers: `layer_decay` 0.7 per backbone stage "
        "(head at lr, stem at lr × 0.7^8), `mixup` α 0.2, `us_augment` (usaugment depth "
        "attenuation, shadow, haze, speckle reduction + gain, speckle noise, resolution loss, "
        "p 0.3 each), `balance_by` cohort (one training cohort per direction, so it reduces to "
        "class-balanced sampling in place of the class-weighted loss). The fusions' thresholds "
        "and stacking weights read the fine-tuned net's validation rows only; the ablation "
        "table below compares each with the previous best (paired DeLong).",
        "",
    ]
    return L


def tables_section(res: dict) -> list[str]:
    """Markdown lines: every candidate's metrics per evaluation, then the ablation table."""
    prot = list(res["results"])
    L: list[str] = []
    for p in prot:
        L += [
            f"## {p}: " + ("the chosen recipes" if p == CEILING else "every candidate"),
            "",
            "In-domain ceiling (grouped 5-fold CV of BrEaST), run for the chosen recipes only."
            if p == CEILING
            else "Every candidate evaluated in these rows (thresholds and settings from the "
            "training rows); a comparison table, not a selection: its best row is optimistic.",
            "",
            "| model | AUC [95% CI] | sens | spec | spec @ reader sens | "
            "cal. slope |" + (" BUSI rows | BrEaST rows |" if p == "pooled CV" else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if p == "pooled CV" else ""),
        ]
        rows = sorted(res["results"][p].items(), key=lambda kv: -kv[1]["auc"])
        for name, r in rows:
            L.append(
                f"| {name} | {_fmt(r['auc'])} [{_fmt(r['auc_lo'])}–{_fmt(r['auc_hi'])}] | "
                f"{_fmt(r.get('sensitivity'))} | {_fmt(r.get('specificity'))} | "
                f"{_fmt(r.get('spec_at_reader_sens'))} | {_fmt(r.get('calibration_slope'), 2)} |"
                + (
                    f" {_fmt(r.get('auc_BUSI'))} | {_fmt(r.get('auc_BrEaST'))} |"
                    if p == "pooled CV"
                    else ""
                )
            )
        L.append("")
    abl_prot = [p for p in prot if p != CEILING]
    L += [
        "## Ablation",
        "",
        "Each lever's change of AUC (to − from) with the paired DeLong p.",
        "",
        "| lever | " + " | ".join(abl_prot) + " |",
        "|---|" + "---|" * len(abl_prot),
    ]
    for a in res["ablation"]:
        L.append(
            f"| {a['lever']} | "
            + " | ".join(
                f"{_fmt(a[p]['from'])} → {_fmt(a[p]['to'])} ({a[p]['delta']:+.3f}, p={a[p]['p']:.3g})"
                if p in a
                else "not run"
                for p in abl_prot
            )
            + " |"
        )
    return L


#: The datasets, cited in every output.
CITE = [
    "BUSI: Al-Dhabyani W et al., Data in Brief 28:104863 (2020), CC0",
    "BrEaST-Lesions_USG: Pawlowska A et al., Sci Data 11:148 (2024), "
    "TCIA DOI 10.7937/9WKK-Q141, CC BY 4.0",
]


def write(
    res: dict, data: Data, path_json: Path, path_md: Path, seed: int, ft_runs: list | None = None
) -> None:
    from buscad.utils import atomic_write_json, atomic_write_text

    cite = CITE
    n = {c: int((data.cohort == c).sum()) for c in ("BUSI", "BrEaST")}
    m = {c: int(data.y[data.cohort == c].sum()) for c in ("BUSI", "BrEaST")}
    doc = {
        "data": cite,
        "rows": {c: {"lesions": n[c], "malignant": m[c]} for c in n},
        "seed": seed,
        "families": res.get("families"),
        "families_missing": res.get("families_missing"),
        "protocol": __doc__.split("Protocol\n--------\n")[1].split("\nWrites")[0],
        "honest": res["honest"],
        "study_default": res["study_default"],
        "selected_on_these_cohorts_optimistic": res["optimistic"],
        "targets": TARGET_AUC,
        "baseline_published": BASELINE_PUBLISHED,
        "results": res["results"],
        "ablation": res["ablation"],
        "seconds_per_candidate": res["seconds"],
    }
    if ft_runs:
        doc["finetuned_runs"] = ft_runs
    atomic_write_json(path_json, doc)
    L = [
        "# External validation: BUSI ↔ BrEaST-Lesions_USG",
        "",
        f"Written by `benchmarks/external.py` (seed {seed}). Data: {cite[0]}; {cite[1]}.",
        f"Rows after the audit: BUSI {n['BUSI']} lesions ({m['BUSI']} malignant), "
        f"BrEaST {n['BrEaST']} ({m['BrEaST']} malignant); near-duplicate groups never cross a split.",
        "",
    ]
    if res.get("families_missing"):
        L += [
            "**Not every feature family was computed: "
            + ", ".join(res["families_missing"])
            + " are missing, so the candidates that read them (and the fusions built on them) "
            "were neither evaluated nor eligible.**",
            "",
        ]
    L += []
    L += honest_section(res)
    L += targets_section(res)
    L += optimistic_section(res)
    L += finetuned_section(ft_runs or [])
    L += tables_section(res)
    atomic_write_text(path_md, "\n".join(L) + "\n")


def outline_summary(out: Path, source: str = "box") -> dict:
    """Per cohort: the outlines' Dice against the expert masks and how many fell back.

    Dice ``2|A∩B| / (|A| + |B|)`` per lesion (:func:`external_features.dice`);
    reported as mean, median, 5th percentile (linear interpolation) and minimum,
    with the count of lesions below 0.5 and of empty outlines replaced by the box's
    inscribed ellipse (``fallback``); the IoU head's median estimate; the decoder's
    median ms per image (one ONNX Runtime thread, embedding cached).
    """
    t = pd.read_csv(EF.outline_dir(out, source) / "outlines.csv")
    doc = {}
    for coh, g in t.groupby("cohort", sort=False):
        d = g["dice"].to_numpy(float)
        doc[str(coh)] = {
            "n": len(d),
            "dice_mean": float(d.mean()),
            "dice_median": float(np.median(d)),
            "dice_p05": float(np.percentile(d, 5)),
            "dice_min": float(d.min()),
            "n_dice_below_0.5": int((d < 0.5).sum()),
            "n_fallback_ellipse": int(g["fallback"].astype(bool).sum()),
            "iou_pred_median": float(g["iou_pred"].median()),
            "decode_ms_median": float(g["decode_ms"].median()),
        }
    return doc


def auto_summary(out: Path) -> dict:
    """Per automatic source and cohort: rows outlined, lesions found, Dice with the expert.

    ``outlined`` = rows with a kept candidate / rows; ``found`` = rows whose top
    candidate has mask IoU ``>= 0.5`` with an expert lesion / rows; Dice
    ``2|A∩B| / (|A| + |B|)`` of the top candidate's outline with the expert mask, over
    all rows (0 when withheld) and over the outlined rows.
    """
    doc: dict[str, dict] = {}
    for source in EF.AUTO_SOURCES:
        t = pd.read_csv(EF.outline_dir(out, source) / "outlines.csv")
        doc[source] = {}
        for coh, g in t.groupby("cohort", sort=False):
            o = g["found_any"].astype(bool)
            doc[source][str(coh)] = {
                "n": len(g),
                "detector_trained_on": str(g["detector_trained_on"].iat[0]),
                "outlined": float(o.mean()),
                "found": float(g["found"].astype(bool).mean()),
                "dice_all": float(g["dice"].mean()),
                "dice_outlined": float(g.loc[o, "dice"].mean()) if o.any() else None,
            }
    return doc


#: Deployed-outline modes' training variants: outline source the models are fit on -> label.
TRAIN_VARIANTS = {
    "box": {
        "expert": "trained on expert outlines, scored on box outlines",
        "box": "trained and scored on box outlines",
    },
    "auto": {
        "expert": "trained on expert outlines, scored on automatic outlines",
        "auto": "trained and scored on automatic outlines (the training rows' out-of-fold ones)",
    },
}


def compare_variants(runs: dict[str, dict], data: Data, mode: str = "box") -> dict:
    """Per evaluation and candidate: AUC trained on expert vs on ``mode`` outlines, paired DeLong.

    Both variants score the same rows (``mode`` outlines); ``delta`` = AUC(``mode``-trained)
    − AUC(expert-trained) and ``p`` the paired DeLong test of the two score vectors on
    the rows both scored.
    """
    from buscad.evaluate.delong import delong_test

    a, b = runs["expert"], runs[mode]
    prot = protocols(data, 0)
    out: dict[str, dict] = {}
    for p in TARGETS:
        rows = np.concatenate([te for _, te in prot[p]])
        out[p] = {}
        for name in a["results"][p]:
            if name not in b["results"][p] or (p, name) not in a["scores"]:
                continue
            if (p, name) not in b["scores"]:
                continue
            sb, sa = b["scores"][(p, name)], a["scores"][(p, name)]
            r = finite_rows(rows, sb, sa)
            t = delong_test(data.y[r], sb[r], sa[r])
            out[p][name] = {
                "auc_expert_trained": a["results"][p][name]["auc"],
                f"auc_{mode}_trained": b["results"][p][name]["auc"],
                "delta": t.diff,
                "p": t.p,
            }
        hon = {}
        for v, r in runs.items():
            hon[v] = r["honest"][p]["metrics"]["auc"]
        out[p]["honest (recipe chosen on the training cohort)"] = {
            "auc_expert_trained": hon["expert"],
            f"auc_{mode}_trained": hon[mode],
        }
    return out


def write_box(
    runs: dict[str, dict],
    data: Data,
    out: Path,
    path_json: Path,
    path_md: Path,
    seed: int,
    mode: str = "box",
) -> None:
    """external_box.json/.md (or external_auto's): both training variants on deployed outlines."""
    import json
    import os
    import re

    from buscad.utils import atomic_write_json, atomic_write_text

    n = {c: int((data.cohort == c).sum()) for c in ("BUSI", "BrEaST")}
    m = {c: int(data.y[data.cohort == c].sum()) for c in ("BUSI", "BrEaST")}
    variants = TRAIN_VARIANTS[mode]
    dice = outline_summary(out) if mode == "box" else auto_summary(out)
    # the expert-outline run, for reading beside (its own results folder, else the repo's)
    ref_path = next(
        (
            f
            for f in (path_json.parent / "external.json", ROOT / "benchmarks/results/external.json")
            if f.is_file()
        ),
        None,
    )
    ref = json.loads(ref_path.read_text()) if ref_path else None
    # the mode's paragraph of external_features' "Outline sources"
    box_text = f"``{mode}`` (" + EF.__doc__.split(f"``{mode}`` (")[1].split("\n\n")[0]
    doc = {
        "data": CITE,
        "rows": {c: {"lesions": n[c], "malignant": m[c]} for c in n},
        "seed": seed,
        "outlines": mode,
        "outline_source": " ".join(box_text.split()),
        "expert_reference": os.path.relpath(ref_path, ROOT) if ref_path else None,
        "outline_dice": dice,
        "protocol": __doc__.split("Protocol\n--------\n")[1].split("\nWrites")[0],
        "variants": {
            v: {
                "label": variants[v],
                "families": r.get("families"),
                "honest": r["honest"],
                "study_default": r["study_default"],
                "results": r["results"],
                "ablation": r["ablation"],
                "seconds_per_candidate": r["seconds"],
                # this invocation only: scores cached under --out are reused, not recomputed
                "wall_seconds_this_run": r.get("wall_seconds"),
            }
            for v, r in runs.items()
        },
    }
    if len(runs) == 2:
        doc[f"expert_vs_{mode}_training"] = compare_variants(runs, data, mode)
    atomic_write_json(path_json, doc)
    what = {"box": "box-prompted", "auto": "automatic"}[mode]
    L = [
        f"# External validation on the deployed ({what}) outlines: BUSI ↔ BrEaST-Lesions_USG",
        "",
        f"Written by `benchmarks/external.py --outlines {mode}` (seed {seed}). Data: {CITE[0]}; "
        f"{CITE[1]}.",
        f"Rows after the audit: BUSI {n['BUSI']} lesions ({m['BUSI']} malignant), "
        f"BrEaST {n['BrEaST']} ({m['BrEaST']} malignant); near-duplicate groups never cross a split.",
        "",
        "Outlines: "
        + re.sub(
            r":func:|``", lambda m_: "`" if m_.group() == "``" else "", " ".join(box_text.split())
        ),
        "",
        f"Every model scores {what} outlines (test rows and every held-out row of the training "
        "cohort's CV alike). Variants: "
        + "; ".join(f"`{v}`: {lab}" for v, lab in variants.items() if v in runs)
        + ". The recipe is chosen by the same honest protocol (grouped CV of the training "
        "cohort only; nested for pooled CV). Fine-tuned networks are not evaluated here.",
        "",
    ]
    if mode == "box":
        L += [
            "## Outline Dice against the expert masks",
            "",
            "| cohort | n | Dice mean | median | 5th pct | min | Dice < 0.5 | empty → ellipse | "
            "IoU-head median | decoder ms (median, shared CPU under load) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for coh, d in dice.items():
            L.append(
                f"| {coh} | {d['n']} | {d['dice_mean']:.3f} | {d['dice_median']:.3f} | "
                f"{d['dice_p05']:.3f} | {d['dice_min']:.3f} | {d['n_dice_below_0.5']} | "
                f"{d['n_fallback_ellipse']} | {d['iou_pred_median']:.3f} | "
                f"{d['decode_ms_median']:.0f} |"
            )
    else:
        L += [
            "## The detector's outlines (external_auto.json)",
            "",
            "A row without a kept candidate is withheld (no score: `buscad predict` withholds "
            "the call). AUCs below are over the outlined rows (n); `all rows` counts every "
            "pair with a withheld row as a coin flip. Found: the top candidate's mask IoU "
            "≥ 0.5 with an expert lesion.",
            "",
            "| outlines | cohort | detector trained on | n | outlined | found | Dice (all) | "
            "Dice (outlined) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for source, per in dice.items():
            for coh, d in per.items():
                L.append(
                    f"| {source} | {coh} | {d['detector_trained_on']} | {d['n']} | "
                    f"{d['outlined']:.3f} | {d['found']:.3f} | {d['dice_all']:.3f} | "
                    f"{_fmt(d['dice_outlined'])} |"
                )
    L += [
        "",
        "## Recipe chosen without the test rows, per training variant",
        "",
        "| evaluation | outlines (fit → scored) | chosen recipe | training-cohort CV AUC | "
        "AUC [95% CI] (DeLong) | n scored / rows | AUC, all rows (withheld = coin) |",
        "|---|---|---|---|---|---|---|",
    ]

    def honest_row(p: str, outlines: str, h: dict) -> str:
        m_ = h["metrics"]
        return (
            f"| {p} | {outlines} | {h.get('chosen', 'per outer fold')} | "
            f"{_fmt(h.get('training_cv_auc'))} | {_fmt(m_['auc'])} "
            f"[{_fmt(m_['auc_lo'])}–{_fmt(m_['auc_hi'])}] | "
            f"{m_['n']} / {m_.get('n_rows', m_['n'])} | "
            f"{_fmt(m_.get('auc_all_rows_withheld_as_coin', m_['auc']))} |"
        )

    for p in TARGETS:
        if ref:
            L.append(honest_row(p, "expert → expert (external.json)", ref["honest"][p]))
        L += [honest_row(p, f"{v} → {mode}", r["honest"][p]) for v, r in runs.items()]
    L.append("")
    if f"expert_vs_{mode}_training" in doc:
        cmp_ = doc[f"expert_vs_{mode}_training"]
        L += [
            "## Does training on the deployed outlines transfer better?",
            "",
            f"Each candidate's AUC on {what} outlines when fit on expert outlines vs on "
            f"{what} outlines (the same rows; Δ = {mode}-trained − expert-trained, paired "
            "DeLong p). Expert → expert: external.json, for reading. Candidates that are the "
            "same in both variants (they read no outline) are left out.",
            "",
            f"| evaluation | candidate | expert → expert | expert → {mode} | {mode} → {mode} | Δ (p) |",
            "|---|---|---|---|---|---|",
        ]
        for p in TARGETS:
            for name, c in cmp_[p].items():
                if "delta" in c and abs(c["auc_expert_trained"] - c[f"auc_{mode}_trained"]) < 1e-12:
                    continue
                e = ref["results"][p].get(name, {}).get("auc") if ref else None
                L.append(
                    f"| {p} | {name} | {_fmt(e)} | {_fmt(c['auc_expert_trained'])} | "
                    f"{_fmt(c[f'auc_{mode}_trained'])} | "
                    + (f"{c['delta']:+.3f} ({c['p']:.3g})" if "delta" in c else "")
                    + " |"
                )
        L.append("")
    for v, r in runs.items():
        L += [f"# Variant `{v}`: {variants[v]}", ""]
        L += honest_section(r)
        L += targets_section(r)
        L += tables_section(r)
    atomic_write_text(path_md, "\n".join(L) + "\n")


def restrict(cands: dict, ablation: list, only: list[str]) -> tuple[dict, list]:
    """The candidates named in ``only`` and, recursively, their members."""
    keep, todo = set(), list(only)
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo += list(getattr(cands.get(n), "members", []))
    cands = {k: v for k, v in cands.items() if k in keep}
    return cands, [x for x in ablation if x[1] in cands and x[2] in cands]


def main_deployed(a: argparse.Namespace) -> int:
    """``--outlines box|auto``: both training variants scored on the deployed outlines."""
    import time

    mode = a.outlines
    man = cohorts(a.out, a.seed)
    if not a.no_build:
        EF.build(man, a.out, a.families, threads=a.threads)
        if mode == "box":
            EF.build_box(man, a.out, a.threads)
        else:
            for c in a.auto_cohorts:
                EF.auto_outlines_part(man, a.out, c, DATA, threads=a.threads, seed=a.seed)
            for s in a.auto_sources:
                EF.build_auto(man, a.out, s, threads=a.threads)
    if a.features_only:
        return 0
    sources = ["box"] if mode == "box" else list(EF.AUTO_SOURCES)
    expert = {p.stem for p in (a.out / "features").glob("*.parquet")} | {"geometry", "size"}
    fams = {
        f
        for f in expert
        if f not in EF.OUTLINE_FAMILIES
        or f == "size"
        or all((EF.outline_dir(a.out, s) / "features" / f"{f}.parquet").is_file() for s in sources)
    }
    variants = TRAIN_VARIANTS[mode]
    runs = {}
    for v in a.train_outlines or list(variants):
        if v not in variants:
            raise SystemExit(f"--train-outlines {v}: not a variant of --outlines {mode}")
        data = Data(man, a.out, fit=v, score=mode)
        cands, ablation = candidates(fams, None, global_pool_only=True)
        if a.only:
            cands, ablation = restrict(cands, ablation, a.only)
        print(f"== {variants[v]}: {len(cands)} candidates", flush=True)
        t0 = time.perf_counter()
        runs[v] = run(data, cands, ablation, a.seed)
        runs[v]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        runs[v]["families"] = sorted(fams)
        for p, h in runs[v]["honest"].items():
            print(f"{v} → {mode}, {p}: {h.get('chosen', 'per fold')} AUC {h['metrics']['auc']:.3f}")
    name = f"external_{mode}"
    write_box(
        runs,
        Data(man, a.out, score=mode),
        a.out,
        a.results / f"{name}.json",
        a.results / f"{name}.md",
        a.seed,
        mode,
    )
    print(f"wrote {a.results / (name + '.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "external")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="*", default=None, help="compute only these families")
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument("--no-build", action="store_true", help="evaluate the families already cached")
    ap.add_argument("--only", nargs="*", default=None, help="evaluate only these candidates")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument(
        "--finetuned",
        type=Path,
        default=ROOT / "runs" / "external-ft",
        help="benchmarks/external_finetune.py's --out (its runs become candidates)",
    )
    ap.add_argument(
        "--outlines",
        choices=("expert", "box", "auto"),
        default="expert",
        help="outline source of the outline families (box: zero-shot LiteMedSAM prompted "
        "with the expert mask's box; writes external_box.json)",
    )
    ap.add_argument(
        "--train-outlines",
        nargs="+",
        choices=("expert", "box", "auto"),
        default=None,
        help="--outlines box|auto: the outline source(s) the models are fit on (default: "
        "expert and the deployed one)",
    )
    ap.add_argument(
        "--auto-cohorts",
        nargs="*",
        choices=("BUSI", "BrEaST"),
        default=["BUSI", "BrEaST"],
        help="--outlines auto: train the detectors of these cohorts (one process each runs in parallel)",
    )
    ap.add_argument(
        "--auto-sources",
        nargs="*",
        choices=EF.AUTO_SOURCES,
        default=list(EF.AUTO_SOURCES),
        help="--outlines auto: compute the features of these outline sources",
    )
    ap.add_argument("--threads", type=int, default=2, help="radiomics processes, ONNX threads")
    a = ap.parse_args(argv)
    if a.outlines in ("box", "auto"):
        return main_deployed(a)
    man = cohorts(a.out, a.seed)
    if not a.no_build:
        EF.build(man, a.out, a.families, threads=a.threads)
    if a.features_only:
        return 0
    data = Data(man, a.out)
    fams = {p.stem for p in (a.out / "features").glob("*.parquet")} | {"geometry", "size"}
    cands, ablation = candidates(fams, a.finetuned if a.finetuned.is_dir() else None)
    if a.only:
        cands, ablation = restrict(cands, ablation, a.only)
    res = run(data, cands, ablation, a.seed)
    every = set(EF.families()) | {"geometry", "size"}
    res["families"], res["families_missing"] = sorted(fams), sorted(every - fams)
    ft = finetuned_runs(a.finetuned)
    write(res, data, a.results / "external.json", a.results / "external.md", a.seed, ft)
    for p, h in res["honest"].items():
        print(f"{p}: {h.get('chosen', 'chosen per outer fold')} AUC {h['metrics']['auc']:.3f}")
    print(
        f"pooled-CV choice: {res['study_default']['chosen']}; wrote {a.results / 'external.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
