"""BI-RADS morphology descriptors from deployable outlines vs BrEaST's radiologist (Cohen's kappa).

Data, read in place from ``../shared/data``: BrEaST-Lesions_USG (Pawlowska et al.,
Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141; CC BY 4.0), benign + malignant,
tumour masks only, and the radiologist's ``Shape`` and ``Margin`` lexicon cells.
The detector of the automatic outlines was trained on BUSI (Al-Dhabyani et al., Data
in Brief 28:104863, 2020; CC0) only; nothing here is trained or tuned on BrEaST.

The descriptors (:func:`buscad.segment.morphology.describe`) are fixed rules of the
outline (no fitting); each outline source gives one table, compared with the
radiologist by :func:`buscad.segment.morphology.agreement`:
``κ = (p_o - p_e) / (1 - p_e)`` (``p_o`` the observed agreement, ``p_e`` the
agreement expected from the two tables' marginals), 95 % percentile bootstrap CI
over lesions (1000 resamples, seeded).

Outline sources (the inference path: LiteMedSAM logits at probability 0.5, the
component overlapping the box, holes filled):

- ``expert_mask``: the expert's outline (the reference kappas of earlier rounds);
- ``litemedsam_box`` / ``litemedsam_jitter``: zero-shot LiteMedSAM prompted with the
  expert mask's bounding box, exact and with each side moved by ``U(-10 %, +10 %)``
  of the box side (seeded: what a clinician's box gives);
- ``busi_finetuned_box`` / ``busi_finetuned_jitter``: the same with the decoder
  fine-tuned on BUSI (``--finetuned``);
- ``automatic``: the BUSI-trained detector's first candidate outlined by LiteMedSAM
  (``--detector``); lesions where it found nothing have no descriptors and are
  counted under ``n_no_outline`` (the kappa is over the lesions it outlined).

Embeddings come from the LiteMedSAM cache (``--cache``, as the other benchmarks).

Example::

    python benchmarks/segment_morphology.py \\
        --finetuned ~/.cache/buscad/litemedsam/finetuned/f564c862dd60 \\
        --detector ~/.cache/buscad/detector/busi
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--finetuned", type=Path, default=None)
    ap.add_argument("--detector", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jitter", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "segment_morphology.json"
    )
    args = ap.parse_args(argv)
    if not (args.data / "BrEaST-Lesions_USG").is_dir():
        print(f"{args.data}: BrEaST-Lesions_USG not found", file=sys.stderr)
        return 2

    from segment import build_manifest  # BrEaST's Shape / Margin columns joined
    from segment_auto import CITATIONS
    from segment_medsam import jitter, load_lesions

    from buscad.segment.base import SegConfig, mask_box
    from buscad.segment.detector import Detector
    from buscad.segment.detector_train import outline_fn
    from buscad.segment.infer import MEDSAM_ARCH, Segmenter
    from buscad.segment.medsam import MedSAM, default_cache, image_key
    from buscad.segment.medsam_convert import ensure_converted
    from buscad.segment.morphology import agreement, describe

    t_start = time.perf_counter()
    cache = args.cache or default_cache()
    items = load_lesions(args.data, ["BrEaST"])
    if args.limit:
        items = items[: args.limit]
    df = build_manifest(args.data).df.set_index("image_id")
    ref = df.loc[[it["image_id"] for it in items], ["shape", "margin"]]
    zero = MedSAM(ensure_converted(), threads=args.threads)
    ft = MedSAM(args.finetuned, threads=args.threads) if args.finetuned else None
    seg = None
    if args.detector:
        seg = Segmenter(
            None,
            SegConfig(arch=MEDSAM_ARCH, threshold=0.5),
            box_model=zero,
            detector=Detector.load(args.detector, encoder_sha256=zero.model_hash),
        )
    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[dict]] = {}
    no_outline: dict[str, int] = {}

    def add(source: str, image_id: str, mask: np.ndarray) -> None:
        if not mask.any():
            no_outline[source] = no_outline.get(source, 0) + 1
            return
        rows.setdefault(source, []).append({"image_id": image_id, **describe(mask).as_dict()})

    for k, it in enumerate(items):
        gray, truth = it["gray"], it["mask"]
        box = mask_box(truth)
        jbox = jitter(box, args.jitter, rng, gray.shape)
        emb = zero.embed_cached(gray, cache)
        add("expert_mask", it["image_id"], truth)
        outline = outline_fn(zero, emb)  # the inference outline of a box prompt
        add("litemedsam_box", it["image_id"], outline(box).mask)
        add("litemedsam_jitter", it["image_id"], outline(jbox).mask)
        if ft is not None:
            outline = outline_fn(ft, emb)
            add("busi_finetuned_box", it["image_id"], outline(box).mask)
            add("busi_finetuned_jitter", it["image_id"], outline(jbox).mask)
        if seg is not None:
            zero._cache.clear()
            zero._cache[image_key(gray)] = emb
            add("automatic", it["image_id"], seg.predict(gray).mask)
        if k % 50 == 0:
            print(f"{k + 1}/{len(items)} {time.perf_counter() - t_start:.0f} s", flush=True)

    result: dict = {
        "benchmark": "segment_morphology",
        "datasets": {k: CITATIONS[k] for k in ("BrEaST", "BUSI")},
        "n_lesions": len(items),
        "jitter": args.jitter,
        "seed": args.seed,
        "finetuned": str(args.finetuned) if args.finetuned else None,
        "detector": str(args.detector) if args.detector else None,
        "note": "Descriptors are fixed rules of the outline; nothing is fitted or tuned on "
        "BrEaST. Kappa of each source vs the BrEaST radiologist, 95 % bootstrap CI over "
        "lesions. 'automatic': over the lesions the BUSI-trained detector outlined.",
        "sources": {},
    }
    for source, rs in rows.items():
        desc = pd.DataFrame(rs).set_index("image_id")
        res = agreement(desc, ref, n_boot=args.n_boot, seed=args.seed)
        res["n_outlined"] = len(rs)
        res["n_no_outline"] = no_outline.get(source, 0)
        result["sources"][source] = res
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["loadavg_end"] = os.getloadavg()
    atomic_write_json(args.out, result)
    for source, res in result["sources"].items():
        line = ", ".join(
            f"{d} {res[d]['kappa']:.3f} [{res[d]['low']:.3f}-{res[d]['high']:.3f}]"
            for d in ("shape", "shape_irregular", "margin")
            if d in res
        )
        print(f"{source} (n {res['n_outlined']}): {line}")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
