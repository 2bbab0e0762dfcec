"""Box-prompt inference settings of the BUSI-fine-tuned LiteMedSAM decoder, chosen on BUSI grouped CV.

Data, read in place from ``../shared/data``: BUSI (Al-Dhabyani et al., Data in
Brief 28:104863, 2020; CC0), benign + malignant lesions, all of an image's masks
united; BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0), benign + malignant, tumour masks only. MedSAM's
training corpus may include BUSI (BUSI numbers may be in-sample for the base
model); nothing here was trained or chosen on BrEaST.

Protocol:

1. Selection on BUSI only, out of fold: the five fold decoders of
   ``benchmarks/segment_finetune.py --train BUSI`` (``litemedsam/finetune_cv/BUSI_fold<k>``
   in the cache, each fine-tuned without fold ``k``; the same seeded
   ``StratifiedGroupKFold`` over the audit's near-duplicate groups, rebuilt here
   and checked against the recorded per-fold Dice) outline their held-out
   lesions, with the expert box and the jittered box (each side moved by
   ``U(-0.1, 0.1)`` of the box's side, seeded per lesion, as in that benchmark).
   Every setting of :class:`buscad.segment.medsam.BoxEnsemble` in the grid (kind x
   step x mean x threshold) is scored by the Dice over all lesions (an empty
   outline scores 0) with the inference post-processing
   (:func:`buscad.segment.infer.box_candidate`: the component overlapping the box
   most, holes filled); the raw thresholded map (no post-processing) is recorded
   beside the single box. Criterion, fixed in advance: the mean of the exact-box and
   jittered-box CV Dice; a setting replaces the single box at 0.5 only if its
   criterion is higher by more than ``--min-gain``; among settings within
   ``--min-gain`` of the best, the fewest boxes wins.
2. BrEaST once: the refit decoder (fine-tuned on all of BUSI) with the chosen
   setting and with the single box at 0.5, expert and jittered boxes, Dice and
   IoU over all lesions with percentile-bootstrap 95 % CIs (1000 resamples over
   lesions, seeded) and the paired difference with its CI.

The redraw time of a ``K``-box ensemble (one decoder run with ``K`` boxes + the
up-sampling, 2 threads) is measured by ``segment_speed.py --ensemble KIND:STEP``.

Example::

    OMP_NUM_THREADS=1 nice python benchmarks/segment_box_select.py \\
        --out benchmarks/results/segment_box_select.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from buscad.segment.medsam import default_cache as medsam_cache
from buscad.utils import atomic_write_json, cache_root

sys.path.insert(0, str(Path(__file__).resolve().parent))


def grid(steps: list[float], means: list[str], thresholds: list[float]) -> list:
    """Every setting: the single box per threshold, then kind x step x mean x threshold."""
    from buscad.segment.medsam import ENSEMBLE_KINDS, BoxEnsemble

    out = [BoxEnsemble("single", 0.0, "logit", t) for t in thresholds]
    for kind in ENSEMBLE_KINDS[1:]:
        for step in steps:
            for mean in means:
                out += [BoxEnsemble(kind, step, mean, t) for t in thresholds]
    return out


def name_of(e) -> str:
    return f"{e.kind}/{e.step:g}/{e.mean}/t{e.threshold:g}"


def score_lesion(sam, emb, truth: np.ndarray, box, settings: list) -> tuple[np.ndarray, np.ndarray]:
    """Dice of every setting on one lesion and prompt (one decoder run), and the raw Dice per threshold.

    ``Dice = 2|A∩B| / (|A| + |B|)`` (0 when the outline is empty).
    """
    from buscad.segment.infer import box_candidate
    from buscad.segment.medsam import postprocess

    allb: dict[tuple, int] = {}
    per = []
    for e in settings:
        bs = e.boxes(box, emb.shape)
        per.append([allb.setdefault(tuple(b), len(allb)) for b in bs])
    low, iou = sam.decode_low_res(emb, list(allb))
    b0 = tuple(int(v) for v in box)
    full: dict[tuple, np.ndarray] = {}
    dice = np.zeros(len(settings))
    raw: dict[float, float] = {}
    tsum = int(truth.sum())
    for i, (e, idx) in enumerate(zip(settings, per, strict=True)):
        key = (tuple(idx), e.mean)
        if key not in full:  # the map at threshold 0.5; thresholds compare its probability
            z = e.combine(low[idx]) if len(idx) > 1 else low[idx[0]]
            if len(idx) > 1:  # combine() shifted the map by -logit(threshold): undo it
                z = z + np.float32(np.log(e.threshold / (1 - e.threshold)))
            full[key] = postprocess(z, emb.new_size, emb.shape)
        # probability > t  <=>  logit > logit(t): the logits are thresholded directly
        lt = float(np.log(e.threshold / (1 - e.threshold)))
        zmap = full[key]
        m = box_candidate(zmap, b0, lt, float(iou[idx[0]])).mask
        dice[i] = 2 * int((m & truth).sum()) / max(int(m.sum()) + tsum, 1)
        if e.kind == "single":
            r = zmap > lt
            raw[e.threshold] = 2 * int((r & truth).sum()) / max(int(r.sum()) + tsum, 1)
    return dice, np.array([raw[t] for t in sorted(raw)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(medsam_cache()))
    ap.add_argument(
        "--refit", default=str(cache_root() / "litemedsam" / "finetuned" / "f564c862dd60")
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.10)
    ap.add_argument("--steps", type=float, nargs="*", default=[0.05])
    ap.add_argument("--means", nargs="*", default=["logit"], choices=["logit", "prob"])
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.2, 0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--min-gain", type=float, default=0.001)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="First N lesions per cohort (smoke runs).")
    ap.add_argument("--no-external", action="store_true", help="Selection only.")
    args = ap.parse_args()

    from segment_finetune import DATA, embedding, groups_of, labels_of, paired, prepare, summary
    from segment_medsam import load_lesions
    from sklearn.model_selection import StratifiedGroupKFold

    from buscad.segment.medsam import MedSAM, read_manifest
    from buscad.segment.medsam_convert import ensure_converted

    t0 = time.perf_counter()
    zs = MedSAM(ensure_converted(), threads=args.threads, cache_size=0)
    settings = grid(args.steps, args.means, args.thresholds)
    result: dict = {
        "benchmark": "LiteMedSAM box-prompt inference settings (test-time box ensemble, threshold, "
        "post-processing) of the BUSI-fine-tuned decoder, chosen on BUSI grouped CV",
        "command": " ".join(sys.argv),
        "datasets": {
            "BUSI": "Al-Dhabyani et al., Data in Brief 28:104863, 2020 (CC0)",
            "BrEaST": "Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141 "
            "(CC BY 4.0)",
        },
        "note": "Selection on BUSI out-of-fold outlines only; BrEaST scored once with the "
        "chosen setting. MedSAM's training corpus may include BUSI.",
        "criterion": "mean of exact-box and jittered-box BUSI CV Dice (all lesions); the single "
        f"box at 0.5 is replaced only for a gain > {args.min_gain}; fewest boxes among settings "
        f"within {args.min_gain} of the best",
        "load_avg_start": os.getloadavg(),
    }

    def save() -> None:
        result["load_avg_now"] = os.getloadavg()
        atomic_write_json(args.out, result)

    tr = load_lesions(DATA, ["BUSI"])
    # the folds of segment_finetune.run_cv need the whole cohort; --limit trims after
    prepare(zs, tr, args.cache, args.seed, args.jitter)
    groups, labels = groups_of(tr, "BUSI"), labels_of(tr)
    folds = np.zeros(len(tr), int)
    sgk = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    for k, (_, te) in enumerate(sgk.split(np.zeros(len(tr)), labels, groups)):
        folds[te] = k
    keep = np.arange(len(tr))[: args.limit or None]
    prompts = ("box", "jitter")
    dice = {p: np.full((len(tr), len(settings)), np.nan) for p in prompts}
    raw = {p: np.full((len(tr), len(args.thresholds)), np.nan) for p in prompts}
    fold_root = cache_root() / "litemedsam" / "finetune_cv"
    for k in range(args.folds):
        sam = MedSAM(fold_root / f"BUSI_fold{k}", threads=args.threads, cache_size=0)
        for i in keep[folds[keep] == k]:
            it = tr[i]
            emb = embedding(it)
            for p in prompts:
                dice[p][i], raw[p][i] = score_lesion(sam, emb, it["mask"], it["boxes"][p], settings)
        done_k = keep[folds[keep] <= k]
        result["progress"] = {
            "folds_done": k + 1,
            "criterion_so_far": {
                name_of(e): float(np.mean([dice[p][done_k, j].mean() for p in prompts]))
                for j, e in enumerate(settings)
            },
        }
        save()
        print(f"fold {k} done {time.perf_counter() - t0:.0f} s", flush=True)
    done = keep
    base = next(j for j, e in enumerate(settings) if e.kind == "single" and e.threshold == 0.5)
    per_fold = [
        {
            "fold": k,
            "n_held_out": int((folds[done] == k).sum()),
            "dice_jitter_single_0.5": float(np.mean(dice["jitter"][done[folds[done] == k], base])),
        }
        for k in range(args.folds)
    ]
    crit = np.mean([dice[p][done].mean(axis=0) for p in prompts], axis=0)
    table = [
        {
            "setting": name_of(e),
            **e.to_dict(),
            "boxes": e.size,
            "cv_dice_box": float(dice["box"][done, j].mean()),
            "cv_dice_jitter": float(dice["jitter"][done, j].mean()),
            "criterion": float(crit[j]),
        }
        for j, e in enumerate(settings)
    ]
    best = float(crit.max())
    if best - crit[base] > args.min_gain:
        near = [j for j in range(len(settings)) if crit[j] >= best - args.min_gain]
        chosen = min(near, key=lambda j: (settings[j].size, -crit[j]))
    else:
        chosen = base
    result.pop("progress", None)
    result["busi_cv"] = {
        "n_lesions": len(done),
        "folds": per_fold,
        "fold_decoders": [str(fold_root / f"BUSI_fold{k}") for k in range(args.folds)],
        "settings": table,
        "raw_threshold_no_postprocessing": {
            p: {f"t{t:g}": float(raw[p][done, c].mean()) for c, t in enumerate(args.thresholds)}
            for p in prompts
        },
        "chosen": table[chosen],
        "baseline": table[base],
    }
    save()
    print("chosen", table[chosen], "baseline", table[base], flush=True)
    if args.no_external:
        return

    # 2. BrEaST once, the refit decoder, chosen vs the single box
    te = load_lesions(DATA, ["BrEaST"])[: args.limit or None]
    prepare(zs, te, args.cache, args.seed, args.jitter)
    sam = MedSAM(args.refit, threads=args.threads, cache_size=0)
    pick = [base, chosen] if chosen != base else [base]
    ext = {p: np.zeros((len(te), len(pick))) for p in prompts}
    for i, it in enumerate(te):
        emb = embedding(it)
        for p in prompts:
            ext[p][i] = score_lesion(
                sam, emb, it["mask"], it["boxes"][p], [settings[j] for j in pick]
            )[0]

    def as_v(d: np.ndarray) -> np.ndarray:  # summary() wants Dice, IoU, found columns
        iou = d / np.maximum(2 - d, 1e-12)
        return np.stack([d, iou, (d > 0).astype(float)], axis=1)

    result["external"] = {
        "cohort": "BrEaST",
        "decoder": str(args.refit),
        "decoder_manifest": read_manifest(args.refit),
        **{
            p: {
                "single_0.5": summary(as_v(ext[p][:, 0]), args.n_boot, args.seed),
                **(
                    {
                        "chosen": summary(as_v(ext[p][:, 1]), args.n_boot, args.seed),
                        "paired_dice_gain": paired(
                            as_v(ext[p][:, 1]), as_v(ext[p][:, 0]), args.n_boot, args.seed
                        ),
                    }
                    if len(pick) > 1
                    else {}
                ),
            }
            for p in prompts
        },
        "note": "IoU per lesion is Dice / (2 - Dice) (one mask pair); found = Dice > 0.",
    }
    result["seconds"] = time.perf_counter() - t0
    save()
    print({p: result["external"][p] for p in prompts})
    print("wrote", args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
