"""Backbone comparison on one fixed split: the studies' comparison table.

Each backbone is trained by the same :func:`buscad.models.train.train_model` on
the manifest's ``train`` rows and scored on ``train`` and ``test``. The
threshold is Youden's J on the training scores, applied unchanged to test.
Outputs: ``comparison.csv`` / ``comparison.md`` (AUC with DeLong 95% CI,
accuracy, sensitivity, specificity, precision, F1 per backbone and set),
``predictions.csv`` and ``roc.png``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.data.manifest import Manifest
from buscad.errors import ManifestError
from buscad.evaluate.delong import auc_ci
from buscad.evaluate.metrics import binary_metrics, youden_threshold
from buscad.models.train import TrainConfig, load_crops, predict_crops, train_model
from buscad.utils import atomic_path, atomic_write_table, atomic_write_text

TABLE_COLUMNS = [
    "backbone",
    "set",
    "n",
    "n_malignant",
    "auc",
    "auc_lo",
    "auc_hi",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "threshold",
]


def metrics_row(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """AUC (DeLong 95% CI) and threshold metrics of one score vector.

    ``precision = TP / (TP + FP)``; the other formulas are those of
    :func:`buscad.evaluate.metrics.binary_metrics`.
    """
    a = auc_ci(y, s)
    b = binary_metrics(y, s, threshold)
    return {
        "n": len(y),
        "n_malignant": int(np.sum(y)),
        "auc": a.auc,
        "auc_lo": a.lo,
        "auc_hi": a.hi,
        "accuracy": b.accuracy,
        "sensitivity": b.sensitivity,
        "specificity": b.specificity,
        "precision": b.ppv,
        "f1": b.f1,
        "threshold": threshold,
    }


def to_markdown(table: pd.DataFrame) -> str:
    """The comparison table as Markdown (AUC shown as ``0.912 [0.871–0.953]``)."""
    from buscad.utils import markdown_table

    shown = pd.DataFrame(
        {
            "backbone": table["backbone"],
            "set": table["set"],
            "n": table["n"],
            "AUC [95% CI]": [
                f"{a:.3f} [{lo:.3f}–{hi:.3f}]"
                for a, lo, hi in zip(table["auc"], table["auc_lo"], table["auc_hi"], strict=True)
            ],
            **{
                k: table[k].map(lambda v: f"{v:.3f}")
                for k in ("accuracy", "sensitivity", "specificity", "precision", "f1")
            },
        }
    ).rename(columns={"f1": "F1"})
    return markdown_table(shown)


def plot_roc(preds: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """ROC curves of every backbone on the test set (solid) and train set (dotted)."""
    from sklearn.metrics import roc_curve

    from buscad.evaluate.plots import legend_below, new_figure

    fig, ax = new_figure((5, 5))
    for i, (name, g) in enumerate(preds.groupby("backbone", sort=False)):
        colour = f"C{i % 10}"
        for split, style in (("test", "-"), ("train", ":")):
            d = g[g["set"] == split]
            if d["y"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(d["y"], d["score"])
            a = auc_ci(d["y"].to_numpy(), d["score"].to_numpy()).auc
            ax.plot(fpr, tpr, style, color=colour, label=f"{name} {split} AUC {a:.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    legend_below(ax)  # outside the plot area, never over a curve
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    return p


def compare_backbones(
    manifest: Manifest,
    backbones: Sequence[str],
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
) -> pd.DataFrame:
    """Train every backbone on the same split and write the comparison table.

    Parameters
    ----------
    manifest : Manifest
        Needs a ``split`` column with ``train`` and ``test`` rows (``val`` rows,
        when present, are the early-stopping set).
    backbones : sequence of str
        Registry names.
    config : TrainConfig
        Shared settings; ``backbone`` is replaced per entry.
    out_dir : path-like
        One sub-folder per backbone (checkpoint, metrics.csv) plus the tables.

    Returns
    -------
    pandas.DataFrame
        One row per backbone and set, columns :data:`TABLE_COLUMNS`.
    """
    m = manifest.lesions()
    if "split" not in m.df.columns:
        raise ManifestError(m.source, "compare-backbones needs a 'split' column (train/test)")
    split = m.df["split"].astype(str).str.lower().to_numpy()
    if not (split == "train").any() or not (split == "test").any():
        raise ManifestError(m.source, "the split column needs both 'train' and 'test' rows")
    out = Path(out_dir)
    rows, preds = [], []
    for name in backbones:
        res = train_model(m, replace(config, backbone=name), out / name)
        crops, keep, _ = load_crops(m, res.preprocessor)
        scores = predict_crops(res.model, crops, res.preprocessor, 32, "cpu")
        y, sp = m.y[keep], split[keep]
        ids = m.df["image_id"].astype(str).to_numpy()[keep]
        tr = sp == "train"
        thr = youden_threshold(y[tr], scores[tr])
        for set_name in ("train", "test"):
            sel = sp == set_name
            rows.append(
                {"backbone": name, "set": set_name, **metrics_row(y[sel], scores[sel], thr)}
            )
            preds.append(
                pd.DataFrame(
                    {
                        "backbone": name,
                        "set": set_name,
                        "image_id": ids[sel],
                        "y": y[sel],
                        "score": scores[sel],
                    }
                )
            )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    pred = pd.concat(preds, ignore_index=True)
    atomic_write_table(table, out / "comparison.csv")
    atomic_write_text(out / "comparison.md", to_markdown(table))
    atomic_write_table(pred, out / "predictions.csv")
    plot_roc(pred, out / "roc.png")
    return table


__all__ = ["TABLE_COLUMNS", "compare_backbones", "metrics_row", "plot_roc", "to_markdown"]
