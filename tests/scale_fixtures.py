"""A small real bundle (EfficientNet-Lite0 at 64 px + a DLR model) and phantom manifests.

The CNN's backbone is random, but its head is a *lesion probe* (:func:`lesion_probe_head`):
a random head gives an all-zero Grad-CAM (every position's class evidence is negative),
and comparing two all-zero heatmaps tests nothing. :func:`heatmap_problems` is the check
the heatmap tests apply.

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
    lesion_head: bool = True,
) -> Path:
    """Write a bundle with an ONNX CNN, optionally a DLR model and a segmenter.

    The backbone has random weights; with ``lesion_head`` (the default) the head is
    :func:`lesion_probe_head`, else random as well (its Grad-CAM is all zero).
    """
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
    if lesion_head:
        lesion_probe_head(model, pre, seed=seed)
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


def _phantom(
    rng: np.random.Generator, size: tuple[int, int], lesion: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A dark ellipse on Gaussian speckle (uint8) and its mask (empty without ``lesion``)."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.integers(30, h - 30), rng.integers(30, w - 30)
    ry, rx = rng.integers(8, 20), rng.integers(8, 25)
    inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & lesion
    img = rng.normal(120, 25, (h, w))
    img[inside] -= 70
    return np.clip(img, 0, 255).astype(np.uint8), inside


def lesion_probe_head(model, pre, n: int = 16, seed: int = 0) -> None:
    """Make the head of a random-backbone classifier a linear lesion detector, in place.

    The probe direction ``c`` is that of a logistic regression (L2, ``C = 0.1``) of
    "lesion cell" (the lesion covers over 15 % of the cell) on the Grad-CAM layer's
    activations ``a(i, j)``, fitted on ``n`` whole phantoms (half with a lesion,
    :func:`_phantom`) and on the lesions' crops (``pre.crop``, as a bundle shows them).
    With ``f`` the pooled features, the head
    computes ``logit_malignant = t (c · f - m)``, ``m`` and ``t = 0.4 / sd`` the mean and
    standard deviation of ``c · f`` over those images (raw scores near 0.5, where the
    bundle's calibration expects them). The exported Grad-CAM is then
    ``ReLU(c · a(i, j))`` scaled to [0, 1]: the probe's lesion evidence per cell.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from buscad.models.preprocess import resize
    from buscad.models.registry import target_layer

    rng = np.random.default_rng(1000 + seed)
    s = pre.input_size
    imgs, masks = [], []
    for k in range(n):
        img, m = _phantom(rng, (96, 128), lesion=bool(k % 2))
        views = [(img, m)]
        if m.any():
            views.append((pre.crop(img, m), pre.crop(m.astype(np.uint8) * 255, m) > 127))
        for v, vm in views:
            imgs.append(resize(v, s))
            masks.append(resize(vm.astype(np.uint8) * 255, s) > 127)
    acts: dict = {}
    hook = target_layer(model).register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        with torch.no_grad():
            f = model.features(pre(np.stack(imgs))).numpy()
    finally:
        hook.remove()
    a = acts["a"].numpy()
    g = a.shape[2]
    w = s // g
    rows = a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
    cells = [
        ms[i * w : (i + 1) * w, j * w : (j + 1) * w].mean() > 0.15
        for ms in masks
        for i in range(g)
        for j in range(g)
    ]
    c = LogisticRegression(C=0.1, max_iter=500).fit(rows, np.array(cells)).coef_[0]
    z = f @ c
    t = 0.4 / max(float(z.std()), 1e-6)
    lift = 100.0 + 10 * float(np.abs(z).max())  # keeps the hidden unit active
    head = model.head
    with torch.no_grad():
        for p in (head.fc1.weight, head.fc1.bias, head.fc2.weight, head.fc2.bias):
            p.zero_()
        head.fc1.weight[0] = torch.as_tensor(c, dtype=torch.float32)
        head.fc1.bias[0] = lift
        head.fc2.weight[1, 0] = t
        head.fc2.bias[1] = -t * (lift + float(z.mean()))


def heatmap_problems(hm: np.ndarray | None, region: tuple[int, int, int, int]) -> list[str]:
    """Why a full-image heatmap is trivial inside ``region`` ``(x0, y0, x1, y1)`` (empty: it is not).

    It must exist, be finite, stay in [0, 1], reach 0.8 (scaled maps peak at 1 before the
    bilinear resize), vary (standard deviation > 0.05) inside the region, and be 0 outside it.
    """
    if hm is None:
        return ["no heatmap"]
    x0, y0, x1, y1 = region
    inside = hm[y0:y1, x0:x1]
    out = []
    if not np.isfinite(hm).all():
        out.append("not finite")
    if hm.min() < 0 or hm.max() > 1:
        out.append(f"outside [0, 1]: {hm.min():.3g}..{hm.max():.3g}")
    if inside.max() < 0.8:
        out.append(f"peak {inside.max():.3g} (all zero: {not inside.any()})")
    if inside.std() <= 0.05:
        out.append(f"flat: standard deviation {inside.std():.3g}")
    rest = hm.copy()
    rest[y0:y1, x0:x1] = 0
    if rest.any():
        out.append("heat outside the region shown to the CNN")
    return out


def make_manifest(
    folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (96, 128)
) -> Path:
    """``n`` phantom-like PNGs (a dark ellipse on speckle) with masks, and a manifest.csv."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img, inside = _phantom(rng, size)
        name = f"img/case_{i:05d}.png"
        Image.fromarray(img).save(folder / name)
        mname = f"img/case_{i:05d}_mask.png"
        Image.fromarray(inside.astype(np.uint8) * 255).save(folder / mname)
        rows.append({"image_id": f"case_{i:05d}", "image_path": name, "mask_path": mname})
    f = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    return f
