"""The int8 LiteMedSAM encoder (opt-in) against the float one: embedding difference and box Dice cost.

Data, read in place from ``../shared/data``: BUSI (Al-Dhabyani et al., Data in
Brief 28:104863, 2020; CC0), benign + malignant lesions, all of an image's masks
united; BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI
10.7937/9WKK-Q141; CC BY 4.0), benign + malignant, tumour masks only.

The int8 graph is :func:`buscad.segment.medsam_convert.quantise_encoder`'s
(dynamic quantisation of the MatMul weights, int8 per output channel), written
beside the float graph in the converted folder and recorded in its manifest.

1. Embedding difference on the first ``--n-diff`` BUSI lesion images (seeded
   order): per image the maximum absolute difference ``max |e8 - e|``, the same
   relative to the float embedding's range ``max |e8 - e| / max |e|``, and the
   relative L2 difference ``||e8 - e||_2 / ||e||_2``; their mean and maximum.
2. Box Dice on every lesion of both cohorts with the float and with the int8
   embeddings (each cached on disk under its own graph's SHA-256), the same
   decoder and the same boxes: the shipped decoder and the BUSI-fine-tuned one
   (``--finetuned``), the expert box and the jittered box (each side moved by
   ``U(-0.1, 0.1)`` of the box's side, seeded per lesion, as in
   ``segment_finetune.py``); Dice ``2|A∩B| / (|A| + |B|)`` over all lesions
   (empty outline = 0) with the inference post-processing. The cost is
   ``mean(Dice_float - Dice_int8)`` with its percentile-bootstrap 95 % CI (1000
   resamples over lesions, seeded). Decision rule, fixed in advance, on BUSI only:
   the int8 graph qualifies when every BUSI cost (both decoders, both prompts) is
   <= 0.005; BrEaST's cost is reported beside it.

Example::

    OMP_NUM_THREADS=1 nice python benchmarks/segment_encoder_int8.py \\
        --out benchmarks/results/segment_encoder_int8.json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(medsam_cache()))
    ap.add_argument(
        "--finetuned", default=str(cache_root() / "litemedsam" / "finetuned" / "f564c862dd60")
    )
    ap.add_argument("--n-diff", type=int, default=30)
    ap.add_argument("--max-cost", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=0, help="First N lesions per cohort (smoke runs).")
    args = ap.parse_args()

    from segment_finetune import DATA, prepare
    from segment_medsam import load_lesions

    from buscad.segment.evaluate import bootstrap_ci
    from buscad.segment.medsam import MedSAM, read_manifest
    from buscad.segment.medsam_convert import ensure_converted, quantise_encoder
    from buscad.segment.medsam_finetune import outline_dice

    t0 = time.perf_counter()
    base = ensure_converted()
    q = quantise_encoder(base)
    fsam = MedSAM(base, threads=1, cache_size=0)
    qsam = MedSAM(base, threads=1, cache_size=0, encoder_variant="int8")
    decoders = {"shipped": fsam, "busi_finetuned": MedSAM(args.finetuned, threads=1, cache_size=0)}
    manifest = read_manifest(base)
    result: dict = {
        "benchmark": "int8 LiteMedSAM encoder vs float: embedding difference and box Dice cost",
        "command": " ".join(sys.argv),
        "datasets": {
            "BUSI": "Al-Dhabyani et al., Data in Brief 28:104863, 2020 (CC0)",
            "BrEaST": "Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141 "
            "(CC BY 4.0)",
        },
        "int8_graph": {"file": str(q), **manifest["encoder_variants"]["int8"]},
        "float_sha256": fsam.model_hash,
        "decision_rule": f"every BUSI cost (both decoders, both prompts) <= {args.max_cost}",
        "load_avg_start": os.getloadavg(),
    }

    def save() -> None:
        result["load_avg_now"] = os.getloadavg()
        atomic_write_json(args.out, result)

    items = load_lesions(DATA, ["BUSI", "BrEaST"])
    by = {
        c: [it for it in items if it["cohort"] == c][: args.limit or None]
        for c in ("BUSI", "BrEaST")
    }

    # 1. embedding difference on the first n BUSI images
    diffs = []
    for it in by["BUSI"][: args.n_diff]:
        e = fsam.embed_cached(it["gray"], args.cache).array
        e8 = qsam.embed_cached(it["gray"], args.cache).array
        d = np.abs(e8 - e)
        diffs.append(
            [d.max(), d.max() / np.abs(e).max(), np.linalg.norm(e8 - e) / np.linalg.norm(e)]
        )
    dv = np.asarray(diffs, float)
    result["embedding_difference"] = {
        "cohort": "BUSI",
        "n_images": len(dv),
        **{
            name: {"mean": float(dv[:, j].mean()), "max": float(dv[:, j].max())}
            for j, name in enumerate(["max_abs", "max_abs_rel_to_range", "rel_l2"])
        },
    }
    save()
    print(result["embedding_difference"], flush=True)

    # 2. box Dice, float vs int8 embeddings, same decoders and boxes
    result["dice"] = {}
    for cohort, its in by.items():
        prepare(fsam, its, args.cache, args.seed, args.jitter)  # float embedding + both boxes
        dice = {
            (d, p, e): [] for d in decoders for p in ("box", "jitter") for e in ("float", "int8")
        }
        for k, it in enumerate(its):
            embs = {
                "float": fsam.embed_cached(it["gray"], args.cache),
                "int8": qsam.embed_cached(it["gray"], args.cache),
            }
            for dname, dec in decoders.items():
                for p, b in it["boxes"].items():
                    for ename, emb in embs.items():
                        dice[(dname, p, ename)].append(outline_dice(dec, emb, it["mask"], b)[0])
            if (k + 1) % 100 == 0:
                print(f"{cohort} {k + 1}/{len(its)} {time.perf_counter() - t0:.0f} s", flush=True)
        out: dict = {"n_lesions": len(its)}
        for dname in decoders:
            for p in ("box", "jitter"):
                f = np.asarray(dice[(dname, p, "float")])
                i8 = np.asarray(dice[(dname, p, "int8")])
                out[f"{dname}/{p}"] = {
                    "dice_float": float(f.mean()),
                    "dice_int8": float(i8.mean()),
                    "cost": [
                        float(x) for x in bootstrap_ci(f - i8, np.mean, args.n_boot, args.seed)
                    ],
                }
        result["dice"][cohort] = out
        save()
        print(cohort, out, flush=True)
    busi = result["dice"]["BUSI"]
    worst = max(v["cost"][0] for k, v in busi.items() if k != "n_lesions")
    result["decision"] = {
        "worst_busi_cost": worst,
        "qualifies": bool(worst <= args.max_cost),
    }
    result["seconds"] = time.perf_counter() - t0
    save()
    print(result["decision"], "wrote", args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
