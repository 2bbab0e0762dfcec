"""Deep features for the deep-learning-radiomics (DLR) models.

"Deep features" are the backbone's globally pooled features, the input of the
studies' 512-unit head (:meth:`BuscadClassifier.features`), as Yang et al.
(Sci Rep 2024) feed VGG11 features into their DLR models. They are written to
Parquet keyed by ``image_id``, one column per feature (``deep_0000``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import buscad._compat  # noqa: F401
from buscad.data.manifest import Manifest
from buscad.models.heads import BuscadClassifier
from buscad.models.preprocess import Preprocessor
from buscad.models.train import load_crops
from buscad.progress import Progress
from buscad.utils import atomic_write_table


@torch.no_grad()
def extract_features(
    model: BuscadClassifier,
    manifest: Manifest,
    preprocessor: Preprocessor,
    batch_size: int = 32,
    device: str = "cpu",
    prefix: str = "deep_",
) -> tuple[pd.DataFrame, list[str]]:
    """Pooled backbone features of every readable row.

    Returns
    -------
    table : pandas.DataFrame
        ``image_id`` then ``{prefix}0000 ...`` float32 columns.
    skipped : list of str
        ``"image_id: problem"`` for rows that could not be read.
    """
    crops, keep, skipped = load_crops(manifest, preprocessor)
    model.eval().to(device)
    feats = []
    with Progress(len(crops), "deep features", "images") as bar:
        for i in range(0, len(crops), batch_size):
            x = preprocessor(crops[i : i + batch_size]).to(device)
            feats.append(model.features(x).float().cpu().numpy())
            bar.update(len(x))
    dim = model.feature_dim
    arr = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    cols = [f"{prefix}{j:04d}" for j in range(arr.shape[1])]
    table = pd.DataFrame(arr.astype(np.float32), columns=cols)
    table.insert(0, "image_id", manifest.df["image_id"].astype(str).to_numpy()[keep])
    return table, skipped


def write_features(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the feature table as Parquet (atomically)."""
    p = Path(path)
    if p.suffix.lower() != ".parquet":
        p = p.with_suffix(".parquet")
    atomic_write_table(table, p)
    return p


__all__ = ["extract_features", "write_features"]
