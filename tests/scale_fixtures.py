"""A small real bundle (random EfficientNet-Lite0 at 64 px + a DLR model) and phantom manifests.

Shared by tests/test_scale_*.py, tests/test_dicom_sr.py and benchmarks/scale.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_bundle(
    out: Path,
    *,
    input_size: int = 64,
    classical: bool = True,
    seed: int = 0,
    segmenter: Path | None = None,
) -> Path:
    """Write a bundle with an ONNX CNN (random weights), optionally a DLR model and a segmenter."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from buscad.bundle.bundle import write_bundle
    from buscad.bundle.portable import save_portable
    from buscad.models.checkpoint import save_checkpoint
    from buscad.models.preprocess import Preprocessor
    from buscad.models.registry import create_backbone, get_spec

    torch.manual_seed(seed)
    work = out.parent / f"{out.name}_work"
    work.mkdir(parents=True, exist_ok=True)
    model = create_backbone("efficientnet_lite0", pretrained=None, dropout=0.0).eval()
    spec = get_spec("efficientnet_lite0")
    pre = Preprocessor(input_size=input_size, mean=spec.mean, std=spec.std)
    save_checkpoint(model, work / "model", {}, preprocessor=pre)
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * 20)
    oof = np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.15, len(y)), 0.01, 0.99)
    extra = {}
    if classical:
        d = spec.feature_dim
        cols = [f"deep_{j:04d}" for j in range(d)]
        X = pd.DataFrame(rng.normal(0, 1, (40, d)), columns=cols)
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
        save_portable(est, work / "dlr", {"inputs": cols})
        extra["classical"] = {"dlr": {"stem": work / "dlr", "threshold": 0.5}}
    if segmenter is not None:
        extra["segmenter"] = segmenter
    return write_bundle(out, work / "model", oof, y, name="scale-test", **extra)


def make_manifest(
    folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (96, 128)
) -> Path:
    """``n`` phantom-like PNGs (a dark ellipse on speckle) with masks, and a manifest.csv."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    rows = []
    for i in range(n):
        cy, cx = rng.integers(30, h - 30), rng.integers(30, w - 30)
        ry, rx = rng.integers(8, 20), rng.integers(8, 25)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img = rng.normal(120, 25, (h, w))
        img[inside] -= 70
        name = f"img/case_{i:05d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
        mname = f"img/case_{i:05d}_mask.png"
        Image.fromarray(inside.astype(np.uint8) * 255).save(folder / mname)
        rows.append({"image_id": f"case_{i:05d}", "image_path": name, "mask_path": mname})
    f = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    return f
