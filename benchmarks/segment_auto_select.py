"""Choosing the detector head's width and epochs on BUSI only (no BrEaST, no LiteMedSAM decoding).

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC0), 647 lesion + 133 normal
images, LiteMedSAM embeddings from the on-disk cache. Grouped 3-fold CV (the audit's
near-duplicate groups, stratified by label, seed 0). Per setting, the out-of-fold heat-maps give
a decode-free proxy: the share of lesion images whose best heat-map box (components above 0.5 and
0.9, box enlarged 10 %) has box IoU >= 0.5 with the expert lesion's box (``|a ∩ b| / |a ∪ b|``),
and the share of normal images with no component. Printed, one line per setting; run with
``nice -n 19 python benchmarks/segment_auto_select.py``. Output of the run that chose 32 channels
and 30 epochs: ``benchmarks/results/segment_auto_select.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: name -> (DetectorConfig keywords, epochs); the last was stopped unfinished in the recorded run.
SETTINGS = {
    "c16_p2_e10": ({"channels": 16, "pool": 2}, 10),
    "c32_p2_e30": ({"channels": 32, "pool": 2}, 30),
    "c32_p2_e30_d1248": ({"channels": 32, "pool": 2, "dilations": [1, 2, 4, 8]}, 30),
    "c16_p1_e20": ({"channels": 16, "pool": 1}, 20),
}


def main() -> None:
    import torch
    from segment_auto import DATA, manifests

    from buscad.data.audit.duplicates import near_duplicate_groups
    from buscad.segment.base import box_iou, mask_box, sigmoid
    from buscad.segment.detector import DetectorConfig, cells_to_box, heat_components
    from buscad.segment.detector_train import (
        HeadTrainConfig,
        embed_manifest,
        grouped_folds,
        head_runner,
        lesions_of,
        train_head,
    )
    from buscad.segment.medsam import MedSAM, default_folder
    from buscad.utils import cache_root

    busi_m, _ = manifests(DATA)
    sam = MedSAM(default_folder(), threads=1, cache_size=2)
    data = embed_manifest(busi_m, sam, cache_root() / "litemedsam" / "embeddings")
    groups = near_duplicate_groups(busi_m).to_numpy()
    folds = grouped_folds(groups, busi_m.df.label.astype(str).to_numpy(), 3, 0)
    torch.set_num_threads(1)
    for name, (kw, epochs) in SETTINGS.items():
        cfg = DetectorConfig(**kw)
        hits, clean, cpu = [], [], 0.0
        for k in range(3):
            tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            tc = HeadTrainConfig(epochs=epochs, threads=1)
            m, h = train_head(data.train_input(cfg), data.targets, cfg, tc, rows=tr)
            cpu += h["cpu_s"]
            heat = sigmoid(head_runner(m)(data.embeddings[te].astype(np.float32))[:, 0])
            for j, i in enumerate(te):
                comps = heat_components(heat[j], data.shapes[i], cfg)
                if data.masks[i].any():
                    tb = mask_box(lesions_of(data.masks[i])[0])
                    ious = [box_iou(cells_to_box(c, data.shapes[i], 0.1), tb) for c, _, _ in comps]
                    hits.append(max(ious, default=0.0) >= 0.5)
                else:
                    clean.append(len(comps) == 0)
        print(
            f"{name}: lesion box-hit {np.mean(hits):.3f}  normals without component "
            f"{np.mean(clean):.3f}  cpu {cpu:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
