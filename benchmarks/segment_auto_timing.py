"""Time per image of the automatic outline (detector + LiteMedSAM) of a saved detector, on BrEaST.

BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; TCIA DOI 10.7937/9WKK-Q141;
CC BY 4.0): the first ``--n`` images of ``segment_auto.py``'s BrEaST manifest, read in place.
Reported (ms per image, median and 95th percentile): ``Segmenter.predict`` without a box with the
embedding cached (detector head + LiteMedSAM decoder passes) and the encoder alone. Written into
the ``cost.time_per_image`` of ``--results`` (``segment_auto.json``) with the machine's load.

Run: ``python benchmarks/segment_auto_timing.py --threads 2 --n 15``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from segment_auto import DATA, REPO, manifests, timing

    import buscad._compat  # noqa: F401
    from buscad.segment.base import SegConfig
    from buscad.segment.detector import Detector
    from buscad.segment.detector_train import embed_manifest
    from buscad.segment.infer import MEDSAM_ARCH, Segmenter
    from buscad.segment.medsam import MedSAM, default_cache, default_folder
    from buscad.utils import atomic_write_json, cache_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--n-encoder", type=int, default=5)
    ap.add_argument("--detector", default=str(cache_root() / "detector" / "busi_v2"))
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/segment_auto.json"))
    a = ap.parse_args()
    _, breast_m = manifests(DATA)
    breast_m.df = breast_m.df.iloc[: a.n].reset_index(drop=True)
    sam = MedSAM(default_folder(), threads=a.threads, cache_size=2)
    data = embed_manifest(breast_m, sam, default_cache())
    det = Detector.load(a.detector, encoder_sha256=sam.model_hash, threads=a.threads)
    seg = Segmenter(None, SegConfig(arch=MEDSAM_ARCH, threshold=0.5), box_model=sam, detector=det)
    load = os.getloadavg()[0]
    speed = timing(seg, sam, data, breast_m, list(range(len(data))), a.n_encoder)
    speed |= {
        "threads": a.threads,
        "load_average_1min_before": load,
        "images": "BrEaST, first rows",
    }
    res = json.loads(Path(a.results).read_text())
    res["cost"]["time_per_image"] = speed
    atomic_write_json(a.results, res)
    print(json.dumps(speed))


if __name__ == "__main__":
    main()
