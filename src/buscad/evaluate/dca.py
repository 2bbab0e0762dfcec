"""Decision curve analysis (Vickers & Elkin, 2006, Med Decis Making 26:565)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def net_benefit(y: np.ndarray, p: np.ndarray, pt: float) -> float:
    """Net benefit of treating cases with ``p >= pt``.

    ``NB(pt) = TP/N - FP/N * pt / (1 - pt)``, ``0 < pt < 1``.
    """
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if not 0 < pt < 1:
        raise ValueError(f"threshold probability must be in (0, 1), got {pt}")
    call = p >= pt
    n = len(y)
    tp = np.sum(call & (y == 1))
    fp = np.sum(call & (y == 0))
    return float(tp / n - fp / n * pt / (1 - pt))


def decision_curve(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: np.ndarray | None = None,
) -> pd.DataFrame:
    """Net benefit of each model, treat-all and treat-none over threshold probabilities.

    ``treat_all(pt) = prev - (1 - prev) pt / (1 - pt)`` with ``prev`` the event
    rate; ``treat_none = 0``. Default thresholds 0.01, 0.02, ..., 0.99.
    Returns a long table ``threshold, strategy, net_benefit``.
    """
    y = np.asarray(y).astype(int).ravel()
    if thresholds is None:
        thresholds = np.round(np.arange(1, 100) / 100, 2)
    prev = y.mean()
    rows = []
    for pt in thresholds:
        odds = pt / (1 - pt)
        rows.append((pt, "treat all", float(prev - (1 - prev) * odds)))
        rows.append((pt, "treat none", 0.0))
        for name, p in scores.items():
            rows.append((pt, name, net_benefit(y, p, pt)))
    return pd.DataFrame(rows, columns=["threshold", "strategy", "net_benefit"])
