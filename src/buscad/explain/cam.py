"""Visual explanations: Grad-CAM, Grad-CAM++, HiResCAM and gradient saliency.

The CAM methods come from pytorch-grad-cam (Gildenblat et al.) and read the
layer named by each backbone's registry spec (with the token-to-grid reshape
for the ViT). ``saliency`` is the plain input gradient
``max_c |d p_malignant / d x_c|`` (Simonyan et al. 2014). Every map is scaled
to [0, 1] and has the input's spatial shape. Overlays are written as PNG; a
gallery puts several images and methods on one page.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import buscad._compat  # noqa: F401  (before pytorch_grad_cam)
from buscad.data.manifest import Manifest
from buscad.errors import ConfigError
from buscad.explain.heatmap import overlay, save_png
from buscad.models.heads import BuscadClassifier
from buscad.models.preprocess import Preprocessor
from buscad.models.registry import RESHAPES, get_spec, target_layer
from buscad.models.train import load_crops
from buscad.utils import atomic_path


def _cam_classes() -> dict:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM}


METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "saliency")


def saliency_map(model: BuscadClassifier, x: torch.Tensor, target_class: int = 1) -> np.ndarray:
    """Gradient saliency ``max_c |d softmax_k(model(x)) / d x_c|``, scaled to [0, 1] per image."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    p = torch.softmax(model(x), 1)[:, target_class]
    (g,) = torch.autograd.grad(p.sum(), x)
    s = g.abs().amax(1).cpu().numpy()
    return _scale01(s)


def _scale01(a: np.ndarray) -> np.ndarray:
    lo = a.reshape(len(a), -1).min(1)[:, None, None]
    hi = a.reshape(len(a), -1).max(1)[:, None, None]
    return ((a - lo) / np.where(hi - lo > 0, hi - lo, 1)).astype(np.float32)


def compute_cam(
    model: BuscadClassifier,
    x: torch.Tensor,
    method: str = "gradcam",
    target_class: int = 1,
) -> np.ndarray:
    """Class-activation maps ``(N, H, W)`` in [0, 1] for normalised inputs ``(N, 3, H, W)``.

    Parameters
    ----------
    method : {"gradcam", "gradcam++", "hirescam", "saliency"}
    target_class : int
        1 explains the malignant score.
    """
    if method == "saliency":
        return saliency_map(model, x, target_class)
    classes = _cam_classes()
    if method not in classes:
        raise ConfigError("--method", f"unknown explanation {method!r}; choose from {METHODS}")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    spec = get_spec(model.name)
    reshape = RESHAPES[spec.reshape] if spec.reshape else None
    model.eval()
    with classes[method](
        model=model, target_layers=[target_layer(model)], reshape_transform=reshape
    ) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(target_class)] * len(x))
    return _scale01(np.asarray(maps, dtype=np.float32))


def explain_manifest(
    model: BuscadClassifier,
    manifest: Manifest,
    preprocessor: Preprocessor,
    out_dir: str | os.PathLike[str],
    methods: Sequence[str] = ("gradcam",),
    gallery: bool = True,
    max_images: int | None = None,
) -> pd.DataFrame:
    """Overlays for every readable row of a manifest (and optionally a gallery).

    Writes ``<out_dir>/<image_id>_<method>.png`` and, with ``gallery``,
    ``<out_dir>/gallery.png`` (one row per image: the input, then one overlay per
    method, titled with the AI score). Returns a table ``image_id, score, method,
    path`` (also written as ``explanations.csv``).
    """
    from buscad.utils import atomic_write_table

    out = Path(out_dir)
    if max_images is not None:
        manifest = manifest.subset(np.arange(min(max_images, len(manifest))))
    crops, keep, skipped = load_crops(manifest, preprocessor)
    ids = manifest.df["image_id"].astype(str).to_numpy()[keep]
    rows, maps_all = [], {}
    x_all = preprocessor(crops) if len(crops) else None
    with torch.no_grad():
        scores = torch.softmax(model.eval()(x_all), 1)[:, 1].numpy() if x_all is not None else []
    for method in methods:
        maps = (
            np.concatenate(
                [compute_cam(model, x_all[i : i + 8], method) for i in range(0, len(crops), 8)]
            )
            if len(crops)
            else np.zeros((0,))
        )
        maps_all[method] = maps
        for j, iid in enumerate(ids):
            p = save_png(overlay(crops[j], maps[j]), out / f"{_safe(iid)}_{method}.png")
            rows.append(
                {"image_id": iid, "score": float(scores[j]), "method": method, "path": p.name}
            )
    table = pd.DataFrame(rows, columns=["image_id", "score", "method", "path"])
    atomic_write_table(table, out / "explanations.csv")
    if gallery and len(crops):
        make_gallery(crops, maps_all, ids, np.asarray(scores), out / "gallery.png")
    for s in skipped:
        print(f"skipped {s}")
    return table


def make_gallery(
    crops: np.ndarray,
    maps: dict[str, np.ndarray],
    ids: Sequence[str],
    scores: np.ndarray,
    path: str | os.PathLike[str],
) -> Path:
    """One PNG page: a row per image (input, then each method's overlay)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, k = len(crops), 1 + len(maps)
    fig = Figure(figsize=(2.2 * k, 2.2 * n))
    FigureCanvasAgg(fig)  # object-oriented API: no pyplot, no global backend switch
    axes = fig.subplots(n, k, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(crops[i], cmap="gray")
        axes[i, 0].set_title(f"{ids[i]}\nscore {scores[i]:.2f}", fontsize=7)
        for j, (m, a) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(overlay(crops[i], a[i]))
            axes[i, j].set_title(m, fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return p


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = ["METHODS", "compute_cam", "explain_manifest", "make_gallery", "overlay", "saliency_map"]
