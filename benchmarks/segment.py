"""Lesion segmentation on BUSI + BrEaST: box-prompted and automatic, external and pooled.

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020) benign + malignant
+ normal (the 133 normals are lesion-free negatives) and BrEaST-Lesions_USG
(Pawlowska et al., Sci Data 11:148, 2024) benign + malignant, tumour masks only
(``_other`` masks are not the target lesion), read in place from ``../shared/data``.

Experiments:

- ``busi2breast``: train on BUSI (all rows), test on BrEaST;
- ``breast2busi``: train on BrEaST, test on BUSI (normals included as negatives);
- ``pooled``: grouped 5-fold CV on both, folds from ``deep_cv.make_folds``
  (patient united with near-duplicate lesion crops, ``StratifiedGroupKFold``);
  BUSI normals (no lesion crop to group by) are spread over the folds by a
  seeded ``KFold``.

Per test set (:mod:`buscad.segment.evaluate`): box-prompted Dice / IoU / HD95 with
each side of the expert box jittered by ±15 % (an empty outline counts: Dice 0,
HD95 = image diagonal, and a box miss); automatic found rate (candidate box IoU
≥ 0.5 with the expert box), missed lesions, false candidates per image, Dice over
all lesion images (misses count 0) and, beside it, Dice where found; 95 %
bootstrap CIs over images. Baseline: the ellipse inscribed in the same jittered
boxes (:mod:`buscad.segment.baseline`, no network), per test set. Morphology:
Cohen's kappa of the descriptors (:mod:`buscad.segment.morphology`, fixed rules)
from the expert masks and from the box-prompted outlines against BrEaST's
radiologist (shape, margin; BrEaST has no orientation column). Speed: ONNX
Runtime ms per image at 256 px with 2 threads (box-prompted pass, batch 1).

Seeded; resumable: each (experiment, fold) trains into
``--work/<experiment>/<key>``, ``key`` = :func:`buscad.segment.train.training_key`
(a hash of the network and training settings and of the training rows' pixels
and labels); a finished ``segmenter.json`` there is reused only when its recorded
key matches (a stale or foreign model is retrained, never read), and training
resumes from its per-epoch checkpoint under the same rule. Descriptor kappas of
the box-prompted outlines use the jittered box of the evaluation (±``jitter``
per side, seeded), the box a user would draw, not the exact expert box. ``--pilot`` runs one direction for ``--epochs`` epochs and writes a
JSON marked ``"pilot": true``.

Example::

    nice -n 10 python benchmarks/segment.py --threads 2 --work /tmp/buscad_segment \
        --out benchmarks/results/segment.json
    python benchmarks/segment.py --baseline-only --out benchmarks/results/segment_ellipse.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import buscad._compat  # noqa: F401
from buscad.data.manifest import Manifest
from buscad.segment.base import SegConfig
from buscad.segment.baseline import EllipseBaseline
from buscad.segment.evaluate import evaluate_segmenter
from buscad.segment.infer import Segmenter
from buscad.segment.train import TrainConfig, load_items, train_segmenter, training_key
from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_manifest(data: Path) -> Manifest:
    """BUSI (benign, malignant, normal) + BrEaST (benign, malignant) with shape/margin."""
    from deep_cv import build_manifest as lesion_manifest
    from deep_cv import busi_normal_rows

    m = lesion_manifest(data)
    df = m.df.copy()
    normals = busi_normal_rows(data)
    br = data / "BrEaST-Lesions_USG"
    clin = pd.read_csv(br / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv")
    clin["image_id"] = "breast/" + clin["Image_filename"].str.replace(".png", "", regex=False)
    extra = clin.set_index("image_id")[["Shape", "Margin", "Pixel_size"]]
    df = df.join(extra, on="image_id")
    df["shape"], df["margin"] = df.pop("Shape"), df.pop("Margin")
    df["pixel_spacing_mm"] = pd.to_numeric(df.pop("Pixel_size"), errors="coerce") * 10.0
    df = pd.concat([df, pd.DataFrame(normals)], ignore_index=True)
    return Manifest(df, root=REPO)


def pooled_folds(m: Manifest, seed: int = 0) -> np.ndarray:
    """Fold per row: grouped stratified folds for lesions, seeded KFold for normals."""
    from deep_cv import make_folds
    from sklearn.model_selection import KFold

    df = m.df
    les = (df["label"] != "normal").to_numpy()
    folds = np.zeros(len(df), int)
    folds[les] = make_folds(m.subset(les), seed)
    idx = np.flatnonzero(~les)
    for k, (_, te) in enumerate(KFold(5, shuffle=True, random_state=seed).split(idx)):
        folds[idx[te]] = k
    return folds


def morphology_kappas(
    seg: Segmenter | None,
    items: list,
    ref: pd.DataFrame,
    seed: int,
    jitter: float = 0.15,
    n_boot: int = 1000,
) -> dict:
    """Kappas of descriptors from expert masks (and box outlines when ``seg``) vs BrEaST.

    The box outlines are prompted with the expert box jittered as in the evaluation
    (each side ``U(-jitter, +jitter)`` of the box side, seeded): the deployed box.
    """
    from buscad.segment.morphology import agreement, describe

    out: dict = {}
    sources = {"expert_mask": lambda it: it.mask}
    if seg is not None:
        from buscad.segment.base import mask_box
        from buscad.segment.train import jitter_box

        rng = np.random.default_rng(seed)
        boxes = {
            it.image_id: jitter_box(mask_box(it.mask), rng, jitter)  # type: ignore[arg-type]
            for it in items
            if it.mask.any()
        }
        sources["box_outline"] = lambda it: seg.predict(it.gray, box=boxes[it.image_id]).mask
        out["box_jitter"] = jitter
    for name, get in sources.items():
        desc = pd.DataFrame(
            [
                {"image_id": it.image_id, **describe(get(it)).as_dict()}
                for it in items
                if it.mask.any()
            ]
        ).set_index("image_id")
        out[name] = agreement(desc, ref, n_boot=n_boot, seed=seed)
    return out


def onnx_speed(seg: Segmenter, work: Path, threads: int = 2, repeats: int = 50) -> dict:
    """ms per 256 px box-prompted pass with ONNX Runtime (median and p95)."""
    from buscad.segment.base import OnnxRunner

    path = seg.export_onnx(work / "speed")
    run = OnnxRunner(path, threads=threads)
    x = np.random.default_rng(0).standard_normal((1, 2, 256, 256)).astype(np.float32)
    for _ in range(5):
        run(x)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        ts.append((time.perf_counter() - t0) * 1000)
    return {
        "threads": threads,
        "input": 256,
        "median_ms": float(np.median(ts)),
        "p95_ms": float(np.percentile(ts, 95)),
        "load_avg": os.getloadavg(),
    }


def cached_segmenter(wd: Path, key: str) -> Segmenter | None:
    """The finished segmenter in ``wd`` when its recorded training key is ``key``, else None.

    A model of other settings or data (another key, or none recorded) is reported and
    left to be retrained over.
    """
    if not (wd / "segmenter.json").is_file():
        return None
    seg = Segmenter.load(wd, backend="torch")
    got = seg.spec.get("training", {}).get("key")
    if got != key:
        print(f"stale segmenter in {wd} (key {got} != {key}): retraining", flush=True)
        return None
    return seg


def ellipse_baseline(test_items: list, args: argparse.Namespace) -> dict:
    """Box-prompted Dice / IoU / HD95 and misses of :class:`EllipseBaseline` on a test set."""
    o = evaluate_segmenter(EllipseBaseline(), test_items, None, seed=args.seed, n_boot=args.n_boot)
    keys = ("n_lesion_images", "box_dice", "box_iou", "box_hd95_px", "box_hd95_mm", "box_misses")
    return {k: o["overall"][k] for k in keys if k in o["overall"]}


def run_one(
    name: str, train_items: list, test_items: list, args: argparse.Namespace
) -> tuple[dict, Segmenter]:
    """Train (resumable, keyed by settings and data) and evaluate one split; cache its metrics."""
    cfg = SegConfig(input_size=args.size)
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        threads=args.threads,
        seed=args.seed,
        max_steps=args.max_steps,
    )
    key = training_key(train_items, cfg, tcfg)
    wd = Path(args.work) / name / key
    t0 = time.perf_counter()
    cached = cached_segmenter(wd, key)
    if cached is not None:
        seg = cached
        hist = seg.spec.get("training", {})
    else:
        seg, hist = train_segmenter(
            train_items, wd, cfg, tcfg, log=lambda s: print(name, s, flush=True)
        )
        hist = seg.spec.get("training", {})
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = evaluate_segmenter(seg, test_items, wd / "eval", seed=args.seed, n_boot=args.n_boot)
    res = {
        "key": key,
        "n_train": len(train_items),
        "n_test": len(test_items),
        "train_seconds": t_train,
        "eval_seconds": time.perf_counter() - t0,
        "epochs": hist.get("epochs_run"),
        "loss": hist.get("loss"),
        "metrics": summary,
        # the box-ellipse baseline on the same jittered boxes (no network): what the
        # box-prompted numbers must beat to show the network learned more than the box
        "box_ellipse_baseline": ellipse_baseline(test_items, args),
    }
    atomic_write_json(wd / "metrics.json", res)
    return res, seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/buscad_segment")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/segment.json"))
    ap.add_argument("--experiments", default="busi2breast,breast2busi,pooled")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pilot", action="store_true")
    ap.add_argument(
        "--baseline-only",
        action="store_true",
        help="Only the box-ellipse baseline on each cohort (no training), written to --out.",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    result: dict = {
        "pilot": bool(args.pilot),
        "complete": False,
        "args": vars(args),
        "load_avg_start": os.getloadavg(),
    }
    m = build_manifest(DATA)
    t0 = time.perf_counter()
    items = load_items(
        m, cache_side=2 * args.size, on_skip=lambda s: print("skipped:", s, flush=True)
    )
    result["load_seconds"] = time.perf_counter() - t0
    df = m.df.set_index("image_id")
    cohort = {it.image_id: it.cohort for it in items}
    busi = [it for it in items if cohort[it.image_id] == "BUSI"]
    breast = [it for it in items if cohort[it.image_id] == "BrEaST"]
    ref = df.loc[[it.image_id for it in breast], ["shape", "margin"]]
    if args.baseline_only:
        result["box_ellipse_baseline"] = {
            "BUSI": ellipse_baseline(busi, args),
            "BrEaST": ellipse_baseline(breast, args),
        }
        result["complete"] = True
        result["total_seconds"] = time.perf_counter() - t_start
        atomic_write_json(args.out, result)
        print("wrote", args.out)
        return
    result["morphology_expert_masks"] = morphology_kappas(None, breast, ref, args.seed)
    atomic_write_json(args.out, result)
    exps = [e for e in args.experiments.split(",") if e]
    seg_last = None
    for e in exps:
        if e == "busi2breast":
            res, seg_last = run_one(e, busi, breast, args)
            res["morphology_box_outlines"] = morphology_kappas(seg_last, breast, ref, args.seed)
            result[e] = res
        elif e == "breast2busi":
            result[e], seg_last = run_one(e, breast, busi, args)
        elif e == "pooled":
            folds = pooled_folds(m)
            fold_of = dict(zip(m.df["image_id"], folds, strict=True))
            result[e] = {}
            for k in range(5):
                tr = [it for it in items if fold_of[it.image_id] != k]
                te = [it for it in items if fold_of[it.image_id] == k]
                result[e][f"fold{k}"], seg_last = run_one(f"{e}/fold{k}", tr, te, args)
                atomic_write_json(args.out, result)
        atomic_write_json(args.out, result)
    if seg_last is not None:
        result["onnx_speed"] = onnx_speed(seg_last, Path(args.work))
    result["complete"] = not args.pilot
    result["total_seconds"] = time.perf_counter() - t_start
    result["load_avg_end"] = os.getloadavg()
    atomic_write_json(args.out, result)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
