"""Per-image inputs of the external-validation protocol (benchmarks/external.py), cached.

Every family is one Parquet file keyed by ``image_id`` under ``<out>/features/``:
it is computed once for the pooled BUSI + BrEaST rows that survive the audit and
reused by every candidate model. Nothing here sees a label.

Families
--------
geometry     the audit's mask geometry and image size (inputs of the shortcut references)
morph        buscad.segment.morphology measures of the expert outline
shape        the outline measured after smoothing it (style-robust shape; see ``smooth_shape``)
echo         intensity ratios a sonographer reads (lesion vs surrounding fat/glandular ring,
             posterior region), each a ratio or a z-score inside the image, so gain-free
deep_<bb>_m<margin>_s<size>
             frozen ImageNet EfficientNet-Lite features of the ROI crop (box + margin),
             averaged over the crop and its mirror image (test-time augmentation); columns
             ``g_*`` are the global average pool, ``m_*`` the mask-guided pool (features
             averaged over the lesion's pixels only)
radiomics    pyradiomics 2D features with configs/radiomics.yaml (buscad.radiomics)
medsam       LiteMedSAM's image embedding mean-pooled inside the expert outline, in a ring
             around it and in the posterior band below it (buscad.segment.medsam_features;
             768 columns); embeddings from the on-disk cache (key: image SHA-256 under the
             encoder graph's SHA-256), the packaged checkpoint converted once when missing
medsam_max   the same regions max-pooled (cells at least half inside; an ablation)

Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020, CC0) and
BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024, CC BY 4.0), read in place.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import buscad._compat  # noqa: F401
from buscad.data.io import read_image, read_mask, to_uint8
from buscad.data.manifest import Manifest
from buscad.segment.descriptors import echo_features, smooth_shape
from buscad.utils import atomic_write_table

#: (backbone, margin, input size) of the frozen-feature families.
DEEP_VARIANTS: tuple[tuple[str, float | None, int], ...] = (
    ("efficientnet_lite0", None, 224),  # the whole image (BASELINE.md's first line)
    ("efficientnet_lite0", 0.1, 224),
    ("efficientnet_lite0", 0.5, 224),
    ("efficientnet_lite0", 0.1, 320),
    ("efficientnet_lite1", 0.1, 240),
    ("efficientnet_lite1", 0.5, 240),
    ("efficientnet_lite2", 0.1, 260),
    ("efficientnet_lite2", 0.5, 260),
)
#: Variants whose crop is contrast-normalised first (CLAHE, OpenCV, clip 2.0, 8x8 tiles):
#: a per-image gain/contrast harmonisation across scanners.
NORM_VARIANTS: tuple[tuple[str, float | None, int], ...] = (
    ("efficientnet_lite0", 0.1, 224),
    ("efficientnet_lite0", 0.5, 224),
)


def deep_family(backbone: str, margin: float | None, size: int, norm: bool = False) -> str:
    """Name of a frozen-feature family (margin None: the whole image)."""
    where = "whole" if margin is None else f"m{margin:g}"
    return f"deep_{backbone.replace('efficientnet_', '')}_{where}_s{size}" + (
        "_clahe" if norm else ""
    )


# ------------------------------------------------------------------ reading
def _load(man: Manifest, i: int) -> tuple[np.ndarray, np.ndarray]:
    gray, _ = read_image(man.image_path(i))
    mask = read_mask(man.mask_paths(i), gray.shape)
    g = to_uint8(gray) if gray.dtype != np.uint8 else gray
    return g, mask.astype(bool)


# -------------------------------------------------------------------- deep
def _deep_table(
    man: Manifest, backbone: str, margin: float | None, size: int, norm: bool = False
) -> pd.DataFrame:
    import torch

    from buscad.models.preprocess import Preprocessor, resize, roi_box
    from buscad.models.registry import create_backbone

    torch.manual_seed(0)
    model = create_backbone(backbone, "imagenet").eval()
    trunk = model.backbone  # timm EfficientNet with the classifier removed
    pre = Preprocessor(
        roi="roi", margin=margin or 0.0, input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    ids, g_rows, m_rows = [], [], []
    batch_x, batch_m, batch_id = [], [], []

    def flush() -> None:
        if not batch_x:
            return
        x = pre(np.stack(batch_x))
        mk = torch.from_numpy(np.stack(batch_m)).float()[:, None]
        with torch.no_grad():
            g_sum = 0
            m_sum = 0
            for flip in (False, True):
                xi = torch.flip(x, dims=[3]) if flip else x
                mi = torch.flip(mk, dims=[3]) if flip else mk
                fmap = trunk.forward_features(xi)  # (N, 1280, h, w) after conv_head + bn2
                g_sum = g_sum + fmap.mean(dim=(2, 3))
                mm = torch.nn.functional.interpolate(mi, size=fmap.shape[2:], mode="area")
                m_sum = m_sum + (fmap * mm).sum(dim=(2, 3)) / mm.sum(dim=(2, 3)).clamp_min(1e-6)
        g_rows.append((g_sum / 2).numpy())
        m_rows.append((m_sum / 2).numpy())
        ids.extend(batch_id)
        batch_x.clear()
        batch_m.clear()
        batch_id.clear()

    for i in range(len(man)):
        g, mask = _load(man, i)
        y0, y1, x0, x1 = (0, g.shape[0], 0, g.shape[1]) if margin is None else roi_box(mask, margin)
        crop = resize(g[y0:y1, x0:x1], size)
        if norm:
            crop = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(crop)
        batch_x.append(crop)
        batch_m.append(resize((mask[y0:y1, x0:x1] * 255).astype(np.uint8), size) / 255.0)
        batch_id.append(man.df["image_id"].iat[i])
        if len(batch_x) == 32:
            flush()
    flush()
    G, M = np.concatenate(g_rows), np.concatenate(m_rows)
    cols = [f"g_{j:04d}" for j in range(G.shape[1])] + [f"m_{j:04d}" for j in range(M.shape[1])]
    t = pd.DataFrame(np.hstack([G, M]).astype(np.float32), columns=cols)
    t.insert(0, "image_id", ids)
    return t


# ---------------------------------------------------------------- families
def _per_image(man: Manifest, fn) -> pd.DataFrame:
    rows = []
    for i in range(len(man)):
        g, mask = _load(man, i)
        rows.append({"image_id": man.df["image_id"].iat[i], **fn(g, mask)})
    return pd.DataFrame(rows)


def _morph(g: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from buscad.segment.morphology import describe

    d = describe(mask).as_dict()
    return {
        f"morph_{k}": float(v)
        for k, v in d.items()
        if isinstance(v, (int, float))
        and v is not None
        and not k.endswith("mm2")
        and not k.endswith("_mm")
    }


def _radiomics(man: Manifest, out: Path) -> pd.DataFrame:
    from buscad.radiomics.extract import extract_features, load_params

    params = load_params(Path(__file__).resolve().parents[1] / "configs" / "radiomics.yaml")
    res = extract_features(man, params, cache_dir=out / "radiomics-cache", n_jobs=2)
    return res.features.reset_index() if "image_id" not in res.features else res.features


def _medsam(man: Manifest, pool: str = "mean") -> pd.DataFrame:
    from buscad.segment.medsam_convert import ensure_converted
    from buscad.segment.medsam_features import MedSAMFeatures

    folder = ensure_converted()  # converted once (PyTorch); the graph loads only for a miss
    table, failures = MedSAMFeatures(folder, threads=2).table(man, progress=False, pool=pool)
    if failures:
        print(f"medsam: {len(failures)} row(s) without features, e.g. {failures[0]}")
    return table


def families() -> list[str]:
    """Every family :func:`build` computes (besides ``geometry``, read from the audit)."""
    deep = [deep_family(*v) for v in DEEP_VARIANTS]
    return ["morph", "shape", "echo", "radiomics", "medsam", "medsam_max", *deep] + [
        deep_family(*v, True) for v in NORM_VARIANTS
    ]


def build(man: Manifest, out: Path, families: list[str] | None = None, log=print) -> dict:
    """Compute (or reuse) every family's table; returns ``family -> seconds``."""
    folder = out / "features"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = {
        "morph": lambda: _per_image(man, _morph),
        "shape": lambda: _per_image(man, lambda g, m: smooth_shape(m)),
        "echo": lambda: _per_image(man, echo_features),
        "radiomics": lambda: _radiomics(man, out),
        "medsam": lambda: _medsam(man),
        "medsam_max": lambda: _medsam(man, "max"),
    }
    for bb, margin, size in DEEP_VARIANTS:
        jobs[deep_family(bb, margin, size)] = lambda bb=bb, margin=margin, size=size: _deep_table(
            man, bb, margin, size
        )
    for bb, margin, size in NORM_VARIANTS:
        jobs[deep_family(bb, margin, size, True)] = lambda bb=bb, margin=margin, size=size: (
            _deep_table(man, bb, margin, size, True)
        )
    times = {}
    for name, fn in jobs.items():
        if families and name not in families:
            continue
        path = folder / f"{name}.parquet"
        if path.is_file():
            continue
        t0 = time.perf_counter()
        table = fn()
        atomic_write_table(table, path)
        times[name] = round(time.perf_counter() - t0, 1)
        log(f"features {name}: {table.shape} in {times[name]} s")
    return times


def load(out: Path, name: str) -> pd.DataFrame:
    """One family's table indexed by ``image_id``."""
    return pd.read_parquet(out / "features" / f"{name}.parquet").set_index("image_id")
