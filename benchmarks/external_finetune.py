"""Fine-tuned EfficientNet-Lite0 for the two external directions of benchmarks/external.py.

For each direction (``busi2breast``: fit on all of BUSI, score BrEaST; ``breast2busi``:
fit on BrEaST, score BUSI) and each recipe variant, :func:`buscad.models.train.train_model`
fine-tunes the packaged ImageNet lite0 on the training cohort's ROI crops; its early
stopping and every choice read only the grouped validation rows it holds out of the
training cohort (15 % of the near-duplicate groups of each class, ``group`` column).
The external cohort is scored once, with the best-validation weights. Writes, per run,
under ``--out/<direction>/<variant>/``:

- ``scores.csv``: ``image_id``, ``role`` (``val``: the held-out training rows;
  ``external``), ``score`` (P(malignant));
- ``run.json``: the TrainConfig, best epoch, validation AUC, seconds, external AUC;
- ``train/``: ``metrics.csv`` and the checkpoint of :func:`train_model`.

``benchmarks/external.py --finetuned DIR`` reads ``scores.csv`` as the candidates
``fine-tuned lite0 (<variant>)`` and their fusions (validation rows stand for the
training rows' out-of-fold scores: thresholds and fusion weights never see the
external cohort).

Usage (2 CPU cores; ~35-45 s per epoch of BUSI at 192 px)::

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/external_finetune.py \\
        --cohorts ../main/runs/external/cohorts/kept.csv --out runs/external-ft \\
        --direction busi2breast breast2busi --variant plain recipe

Data: BUSI (Al-Dhabyani W et al., Data in Brief 28:104863, 2020; CC0) and
BrEaST-Lesions_USG (Pawlowska A et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0). No pixel leaves ``--out`` (which git ignores).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.data.manifest import Manifest
from buscad.evaluate.delong import auc_ci
from buscad.models.train import TrainConfig, load_crops, predict_crops, train_model

ROOT = Path(__file__).resolve().parents[1]
DIRECTIONS = {"busi2breast": ("BUSI", "BrEaST"), "breast2busi": ("BrEaST", "BUSI")}
#: The plain recipe of benchmarks/deep_cv.py (10 epochs, patience 3, class-weighted loss,
#: buscad's Augment) at 192 px.
BASE = TrainConfig(
    backbone="efficientnet_lite0",
    pretrained="imagenet",
    epochs=10,
    patience=3,
    batch_size=16,
    lr=3e-4,
    input_size=192,
    margin=0.1,
    seed=0,
    progress=True,
)
#: The transfer recipe's levers (issue 14), alone and together.
LEVERS = {
    "llrd": {"layer_decay": 0.7},
    "mixup": {"mixup": 0.2},
    "usaug": {"us_augment": True},
    "balance": {"balance_by": "cohort"},
}
VARIANTS: dict[str, dict] = {
    "plain": {},
    "recipe": {k: v for d in LEVERS.values() for k, v in d.items()},
    **{f"plain+{k}": v for k, v in LEVERS.items()},
}


def run_one(man: Manifest, direction: str, variant: str, cfg: TrainConfig, out: Path) -> dict:
    """Train on the direction's training cohort, score its validation rows and the external one."""
    folder = out / direction / variant
    done = folder / "run.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = DIRECTIONS[direction]
    cohort = man.df["cohort"].to_numpy()
    train = man.subset(cohort == src)
    ext = man.subset(cohort == dst)
    t0 = time.perf_counter()
    res = train_model(train, cfg, folder / "train")
    seconds = time.perf_counter() - t0
    # the validation rows train_model held out (same rule, same seed)
    from buscad.models.train import split_train_val

    lesions = train.lesions()
    _, va = split_train_val(lesions, cfg.val_fraction, cfg.seed)
    rows = []
    for role, m in (
        ("val", lesions.subset(np.isin(np.arange(len(lesions)), va))),
        ("external", ext),
    ):
        crops, keep, _ = load_crops(m, res.preprocessor)
        s = predict_crops(res.model, crops, res.preprocessor, 64)
        ids = m.df["image_id"].astype(str).to_numpy()[keep]
        rows.append(pd.DataFrame({"image_id": ids, "role": role, "score": s, "y": m.y[keep]}))
    sc = pd.concat(rows, ignore_index=True)
    sc.drop(columns="y").to_csv(folder / "scores.csv", index=False)
    e = sc[sc.role == "external"]
    a = auc_ci(e["y"].to_numpy(), e["score"].to_numpy())
    v = sc[sc.role == "val"]
    info = {
        "direction": direction,
        "variant": variant,
        "config": asdict(cfg),
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "val_auc": res.best_val_auc,
        "val_auc_check": auc_ci(v["y"].to_numpy(), v["score"].to_numpy()).auc,
        "n_val": len(v),
        "external_auc": a.auc,
        "external_ci": [a.lo, a.hi],
        "n_external": len(e),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(float(res.history["seconds"].mean()), 1),
    }
    done.write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cohorts", type=Path, default=ROOT / "runs" / "external" / "cohorts" / "kept.csv"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "external-ft")
    ap.add_argument("--direction", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    ap.add_argument("--variant", nargs="+", default=["plain", "recipe"], choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=BASE.epochs)
    ap.add_argument("--input-size", type=int, default=BASE.input_size)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="smoke runs")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    man = Manifest.load(a.cohorts)
    base = replace(
        BASE,
        epochs=a.epochs,
        input_size=a.input_size,
        num_threads=a.threads,
        max_steps=a.max_steps,
    )
    for variant in a.variant:
        for direction in a.direction:
            cfg = replace(base, **VARIANTS[variant])
            info = run_one(man, direction, variant, cfg, a.out)
            print(
                f"{direction} {variant}: external AUC {info['external_auc']:.3f} "
                f"[{info['external_ci'][0]:.3f}-{info['external_ci'][1]:.3f}], val AUC "
                f"{info['val_auc']:.3f} (best epoch {info['best_epoch']}/{info['epochs_run']}, "
                f"{info['train_seconds']:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
