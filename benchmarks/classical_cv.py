"""Classical and fusion models on BUSI + BrEaST: grouped 5-fold CV and BUSI → BrEaST.

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020) and
BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024), benign + malignant.

Usage (one command; the integrator reruns it with the real split)::

    PYTHONPATH=src python benchmarks/classical_cv.py \\
        --manifest lesions.csv \\                 # BUSI + BrEaST lesion rows (cohort column)
        --radiomics radiomics_features.parquet \\ # `buscad radiomics extract` output (or
                                                  #  omitted: extracted here, cached)
        [--deep-features deep_features.parquet]  # image_id + deep_* columns (DLR, CLDLR)
        [-o benchmarks/results/classical_cv.json]

Folds: the manifest's ``split`` column when it holds ``fold0..fold4`` (as
``buscad data split`` writes it); otherwise a ``group`` column (near-duplicate
group, e.g. from ``buscad data audit``) feeds a stratified grouped 5-fold; with
neither, a clearly labelled *proxy* groups images whose 8x8 difference hash
(dHash of the whole frame) is within Hamming distance 6, unioned with
``patient_id``. The JSON says which source was used.

Outputs: the JSON, ``<out>_oof.csv`` (out-of-fold probabilities per image and
model: image ids, labels and numbers only, no pixels), and from the BUSI-trained
models ``<out>_radscore_busi.csv`` (rad-score formula) and
``<out>_integrated_busi_coef.csv`` (stacking coefficients, for a nomogram).

Models (all refit inside each fold, from :mod:`buscad.classical`):
radiomics (ICC ≥ 0.75 under ±2 px mask erosion/dilation → z-score → Spearman
0.9 → LASSO-logistic, C by inner CV → logistic), the same without shape
features, DLR (deep features → SVM), clinical (age; BUSI rows have no age:
median-imputed with a 0/1 missing indicator inside the pipeline, no row
dropped), CLDLR (age + deep → SVM), US (BrEaST lexicon + BI-RADS → logistic;
BrEaST rows only), and the integrated model (logistic regression stacked on
inner grouped out-of-fold probabilities of the single models).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.classical.clinical import ClinicalModel
from buscad.classical.cv import cross_val_predict_grouped, make_folds
from buscad.classical.deep import CLDLR, DLR
from buscad.classical.fusion import StackingIntegrator
from buscad.classical.lexicon import USModel
from buscad.classical.radscore import export_radscore_formula, radiomics_pipeline
from buscad.data.manifest import Manifest
from buscad.evaluate.delong import auc_ci, delong_test
from buscad.utils import atomic_write_json, atomic_write_table, atomic_write_text

BASELINE = {"busi_to_breast_mean_fusion": 0.823}
US_COLUMNS = [
    "shape",
    "margin",
    "echogenicity",
    "posterior_features",
    "calcifications",
    "halo",
    "skin_thickening",
    "birads",
]


def dhash(path: Path, size: int = 8) -> int:
    """Difference hash of an image: 64 bits of ``gray[:, j+1] > gray[:, j]`` on a 8x9 thumbnail."""
    from PIL import Image

    from buscad.data.io import read_image, to_uint8

    g, _ = read_image(path)
    t = np.asarray(Image.fromarray(to_uint8(g)).resize((size + 1, size), Image.BILINEAR), float)
    bits = (t[:, 1:] > t[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def proxy_groups(man: Manifest, max_hamming: int = 6) -> np.ndarray:
    """PROXY near-duplicate groups: union of dHash neighbours (≤ max_hamming bits) and patient_id."""
    n = len(man)
    hashes = np.array([dhash(man.image_path(i)) for i in range(n)], dtype=np.uint64)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    bits = np.unpackbits(hashes.view(np.uint8).reshape(n, 8), axis=1)
    for i in range(n):
        d = (bits[i + 1 :] != bits[i]).sum(axis=1)
        for j in np.flatnonzero(d <= max_hamming) + i + 1:
            parent[find(i)] = find(int(j))
    pid = man.df["patient_id"].astype(str).to_numpy()
    first: dict[str, int] = {}
    for i, p in enumerate(pid):
        if p in first:
            parent[find(i)] = find(first[p])
        else:
            first[p] = i
    return np.array([find(i) for i in range(n)])


def auc_entry(y: np.ndarray, p: np.ndarray) -> dict:
    r = auc_ci(y, p)
    return {
        "auc": round(r.auc, 4),
        "ci95": [round(r.lo, 4), round(r.hi, 4)],
        "n_pos": r.n_pos,
        "n_neg": r.n_neg,
        "text": str(r),
    }


def markdown(out: dict) -> str:
    """A short Markdown summary of the JSON (AUC [95% DeLong CI] per model and setting)."""
    names = [*out["pooled_cv"], "US", "radiologist_BIRADS_ordinal"]
    lines = [
        f"# classical_cv ({out['data']})",
        "",
        f"Folds: {out['folds']}. Deep features: {out['deep_features']} {out['deep_source']}",
        f"Stacking: {out.get('stack_method', 'proba')}. Clinical: {out['clinical_handling']}.",
        "",
        "| model | pooled CV | CV, BUSI rows | CV, BrEaST rows | BUSI → BrEaST |",
        "|---|---|---|---|---|",
    ]
    for k in names:
        cells = [
            out[sec].get(k, {}).get("text", out[sec].get(k, {}).get("note", ""))
            for sec in (
                "pooled_cv",
                "pooled_cv_on_busi_rows",
                "pooled_cv_on_breast_rows",
                "external_busi_to_breast",
            )
        ]
        if any(cells):
            lines.append(f"| {k} | " + " | ".join(c or "–" for c in cells) + " |")
    lines += ["", f"Targets: {json.dumps(out['targets'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument(
        "--radiomics", type=Path, help="radiomics feature Parquet (image_id + features)"
    )
    ap.add_argument("--deep-features", type=Path, help="deep feature Parquet (image_id + deep_*)")
    ap.add_argument("--params", type=Path, help="radiomics params YAML (only when extracting)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/classical_cv.json"))
    ap.add_argument("--no-external", action="store_true")
    ap.add_argument("--deep-source", default="", help="free text describing the deep features")
    ap.add_argument(
        "--stack-method",
        default="proba",
        choices=["proba", "logit"],
        help="what the integrated model's logistic regression stacks (default: probabilities)",
    )
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()

    man = Manifest.load(args.manifest).lesions()
    df = man.df.reset_index(drop=True)
    ids = df["image_id"].astype(str).to_numpy()
    y = man.y
    cohort = df["cohort"].astype(str).to_numpy() if "cohort" in df else np.array(["all"] * len(y))

    # ---- features
    if args.radiomics is not None:
        rad = pd.read_parquet(args.radiomics)
        rad = rad.set_index("image_id") if "image_id" in rad.columns else rad
    else:
        from buscad.radiomics.extract import extract_features

        res = extract_features(man, args.params, n_jobs=args.jobs, progress=True)
        for line in res.failures:
            print("radiomics skipped:", line, file=sys.stderr)
        rad = res.features
    rad.index = rad.index.astype(str)
    n_rad_missing = int((~pd.Index(ids).isin(rad.index)).sum())
    X = rad.reindex(ids).reset_index(drop=True)
    have_deep = args.deep_features is not None and args.deep_features.is_file()
    n_deep_missing = 0
    if have_deep:
        deep = pd.read_parquet(args.deep_features)
        deep = deep.set_index("image_id") if "image_id" in deep.columns else deep
        deep.index = deep.index.astype(str)
        dcols = [c for c in deep.columns if str(c).startswith("deep_")]
        n_deep_missing = int((~pd.Index(ids).isin(deep.index)).sum())
        X = pd.concat([X, deep[dcols].reindex(ids).reset_index(drop=True)], axis=1)
    clin_cols = [c for c in ["age", *US_COLUMNS] if c in df.columns]
    us_cols = [c for c in US_COLUMNS if c in df.columns]
    X = pd.concat([X, df[clin_cols].reset_index(drop=True)], axis=1)
    X.index = pd.RangeIndex(len(X))

    # ---- folds
    if "split" in df.columns and df["split"].astype(str).str.fullmatch(r"fold\d+").all():
        folds, groups, fold_source = (
            df["split"].astype(str).to_numpy(),
            None,
            "manifest split column",
        )
    elif "group" in df.columns:
        folds, groups = None, df["group"].astype(str).to_numpy()
        fold_source = "manifest group column, StratifiedGroupKFold(5, shuffle, seed 0)"
    else:
        folds, groups = None, proxy_groups(man)
        fold_source = (
            "PROXY groups (dHash 8x8 of the whole image, Hamming <= 6, union patient_id), "
            "StratifiedGroupKFold(5, shuffle, seed 0); rerun with the audited split"
        )
    # groups for the integrator's inner folds (and the BUSI-only training of the external test)
    if groups is not None:
        groups_inner = groups
    elif "group" in df.columns:
        groups_inner = df["group"].astype(str).to_numpy()
    else:
        groups_inner = df["patient_id"].astype(str).to_numpy()
    splits = make_folds(y, groups, folds)
    n_groups = len(set(groups)) if groups is not None else None

    # ---- models
    models: dict[str, object] = {
        "radiomics": radiomics_pipeline(),
        "radiomics_no_shape": radiomics_pipeline(exclude="_shape2D_"),
        "clinical": ClinicalModel(numeric=["age"], categorical=[]),
    }
    if have_deep:
        models["DLR"] = DLR(include="^deep_")
        models["CLDLR"] = CLDLR(include="^deep_", numeric=["age"])
    base_int = ["radiomics", "DLR", "CLDLR", "clinical"] if have_deep else ["radiomics", "clinical"]
    base_int_ns = [("radiomics_no_shape" if b == "radiomics" else b) for b in base_int]
    integrated = {
        "integrated": StackingIntegrator(
            [(b, models[b]) for b in base_int], stack_method=args.stack_method
        ),
        "integrated_no_shape": StackingIntegrator(
            [(b, models[b]) for b in base_int_ns], stack_method=args.stack_method
        ),
        "integrated_with_US": StackingIntegrator(
            [(b, models[b]) for b in base_int] + [("US", USModel(columns=us_cols))],
            stack_method=args.stack_method,
        ),
    }

    def run_cv(name: str, est: object, Xs: pd.DataFrame, ys: np.ndarray, **kw) -> np.ndarray:
        t0 = time.perf_counter()
        p = cross_val_predict_grouped(est, Xs, ys, **kw)
        print(f"{name}: {auc_ci(ys, p)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        return p

    cv_kw = {"folds": folds} if folds is not None else {"groups": groups}
    oof: dict[str, np.ndarray] = {}
    for name, est in models.items():
        oof[name] = run_cv(name, est, X, y, **cv_kw)
    for name, est in integrated.items():
        kw = {"folds": folds, "groups": groups_inner} if folds is not None else {"groups": groups}
        oof[name] = run_cv(name, est, X, y, **kw)
    # US model: BrEaST rows only, same folds restricted to them
    breast = cohort == "BrEaST"
    if breast.any() and all(c in df.columns for c in ("birads",)):
        kw = {"folds": folds[breast]} if folds is not None else {"groups": groups[breast]}
        oof_us = run_cv("US (BrEaST only)", USModel(columns=us_cols), X[breast], y[breast], **kw)
    else:
        oof_us = None

    fold_of = np.empty(len(y), dtype=object)
    for k, (_, te) in enumerate(splits):
        fold_of[te] = f"fold{k}" if folds is None else folds[te][0]
    pred = pd.DataFrame({"image_id": ids, "cohort": cohort, "y": y, "fold": fold_of})
    for k, v in oof.items():
        pred[k] = v
    if oof_us is not None:
        pred.loc[breast, "US"] = oof_us
    atomic_write_table(pred, args.out.with_name(f"{args.out.stem}_oof.csv"))

    pooled = {k: auc_entry(y, v) for k, v in oof.items()}
    on_breast = {k: auc_entry(y[breast], v[breast]) for k, v in oof.items()} if breast.any() else {}
    on_busi = {k: auc_entry(y[~breast], v[~breast]) for k, v in oof.items()} if breast.any() else {}
    if oof_us is not None:
        on_breast["US"] = auc_entry(y[breast], oof_us)
        on_breast["radiologist_BIRADS_ordinal"] = auc_entry(
            y[breast],
            df.loc[breast, "birads"]
            .map({"1": 1, "2": 2, "3": 3, "4a": 4, "4b": 5, "4c": 6, "5": 7})
            .astype(float)
            .to_numpy(),
        )
    singles = [k for k in models]
    best_single = max(singles, key=lambda k: pooled[k]["auc"])
    dl = delong_test(y, oof["integrated"], oof[best_single])
    comparisons = {
        "integrated_vs_best_single": {
            "best_single": best_single,
            "diff": round(dl.diff, 4),
            "p": float(f"{dl.p:.3g}"),
        }
    }

    # ---- external: train on BUSI, test on BrEaST
    external: dict[str, dict] = {}
    if not args.no_external and breast.any() and (~breast).any():
        Xtr, ytr, Xte, yte = X[~breast], y[~breast], X[breast], y[breast]
        g_tr = groups_inner[~breast]
        ext_models = {k: v for k, v in models.items() if k != "clinical"}
        ext_models["integrated"] = StackingIntegrator(
            [(b, models[b]) for b in base_int if b != "clinical"], stack_method=args.stack_method
        )
        ext_models["integrated_no_shape"] = StackingIntegrator(
            [(b, models[b]) for b in base_int_ns if b != "clinical"],
            stack_method=args.stack_method,
        )
        from sklearn.base import clone

        for name, est in ext_models.items():
            t0 = time.perf_counter()
            e = clone(est)
            if isinstance(e, StackingIntegrator):
                e.fit(Xtr, ytr, groups=g_tr)
            else:
                e.fit(Xtr, ytr)
            p = e.predict_proba(Xte)[:, 1]
            external[name] = auc_entry(yte, p)
            print(
                f"BUSI->BrEaST {name}: {external[name]['text']} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if name == "radiomics":
                export_radscore_formula(e, args.out.with_name(f"{args.out.stem}_radscore_busi.csv"))
            if name == "integrated":
                e.export_coefficients(
                    args.out.with_name(f"{args.out.stem}_integrated_busi_coef.csv")
                )
        external["clinical"] = {"note": "not estimable: BUSI has no clinical data (age)"}
        external["US"] = {"note": "not estimable: BUSI has no BI-RADS lexicon/category"}

    out = {
        "benchmark": "classical_cv",
        "data": "BUSI (Al-Dhabyani et al. 2020) + BrEaST-Lesions_USG (Pawlowska et al. 2024), "
        "benign + malignant",
        "n": len(y),
        "n_malignant": int(y.sum()),
        "n_by_cohort": {c: int((cohort == c).sum()) for c in np.unique(cohort)},
        "folds": fold_source,
        "n_groups": n_groups,
        "fold_sizes": [len(te) for _, te in splits],
        "radiomics_rows_missing": n_rad_missing,
        "deep_features": (str(args.deep_features) if have_deep else "absent: DLR/CLDLR pending"),
        "deep_source": args.deep_source,
        "deep_rows_missing": n_deep_missing,
        "clinical_handling": "age only (BI-RADS excluded, as Yang et al. 2024); BUSI rows have no "
        "age: median of the training fold imputed plus a 0/1 missing indicator, inside the "
        "pipeline; no row dropped",
        "stack_method": args.stack_method,
        "integrated_bases": {
            "integrated": base_int,
            "integrated_no_shape": base_int_ns,
            "integrated_with_US": [*base_int, "US"],
        },
        "pooled_cv": pooled,
        "pooled_cv_on_breast_rows": on_breast,
        "pooled_cv_on_busi_rows": on_busi,
        "comparisons": comparisons,
        "external_busi_to_breast": external,
        "baseline": BASELINE,
        "targets": {
            "integrated_ge_best_single": pooled["integrated"]["auc"] >= pooled[best_single]["auc"],
            "integrated_ge_0.94_pooled": pooled["integrated"]["auc"] >= 0.94,
            "external_integrated_gt_0.823": (
                external.get("integrated", {}).get("auc", 0)
                > BASELINE["busi_to_breast_mean_fusion"]
            ),
        },
        "seconds": round(time.perf_counter() - t_start, 1),
        "command": " ".join(sys.argv),
    }
    atomic_write_json(args.out, out)
    atomic_write_text(args.out.with_suffix(".md"), markdown(out))
    print(json.dumps(out["targets"]), "->", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
