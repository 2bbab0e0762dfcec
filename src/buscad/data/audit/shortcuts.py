"""Shortcut references: how well mask geometry or image size alone separates the labels (grouped CV AUC)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _single_feature_auc(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(x)
    if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
        return float("nan"), ""
    a = float(roc_auc_score(y[ok], x[ok]))
    return (a, "higher = malignant") if a >= 0.5 else (1 - a, "lower = malignant")


def shortcut_auc(
    features: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    feature_sets: dict[str, Sequence[str]],
    n_splits: int = 5,
    seed: int = 0,
    warn_auc: float = 0.8,
) -> pd.DataFrame:
    """AUC of trivial models and single features that should not know the label.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per image (benign/malignant rows only).
    y : numpy.ndarray
        1 = malignant.
    groups : numpy.ndarray
        Leakage groups (near-duplicate union patient); no group is split across folds.
    feature_sets : dict
        Name -> columns; each set is fitted as a standardised logistic regression.
    n_splits : int
        Folds of ``StratifiedGroupKFold`` (fewer when a class has fewer groups).
    seed : int
        Fold shuffling seed.
    warn_auc : float
        ``warning`` is True when the AUC reaches this.

    Returns
    -------
    pandas.DataFrame
        Columns ``shortcut``, ``kind`` (``model`` or ``feature``), ``features``,
        ``auc``, ``direction`` (features), ``n``, ``n_malignant``, ``folds``,
        ``warning``. Model AUC = ``roc_auc_score`` of the pooled out-of-fold
        probabilities; feature AUC = ``max(A, 1 - A)`` of the raw values.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    rows = []
    n, npos = len(y), int(y.sum())
    min_groups = min(len(np.unique(groups[y == c])) for c in (0, 1)) if 0 < npos < n else 0
    folds = min(n_splits, min_groups)
    for name, cols in feature_sets.items():
        X = features[list(cols)].to_numpy(dtype=float)
        auc = float("nan")
        if folds >= 2:
            usable = [c for c in range(X.shape[1]) if np.isfinite(X[:, c]).any()]
            if usable:
                Xu = X[:, usable]
                oof = np.full(n, np.nan)
                cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
                for tr, te in cv.split(Xu, y, groups):
                    if len(np.unique(y[tr])) < 2:
                        continue
                    model = make_pipeline(
                        SimpleImputer(strategy="median"),
                        StandardScaler(),
                        LogisticRegression(max_iter=2000),
                    )
                    model.fit(Xu[tr], y[tr])
                    oof[te] = model.predict_proba(Xu[te])[:, 1]
                ok = np.isfinite(oof)
                if ok.sum() > 1 and len(np.unique(y[ok])) == 2:
                    auc = float(roc_auc_score(y[ok], oof[ok]))
        rows.append(
            dict(
                shortcut=name, kind="model", features=",".join(cols), auc=auc, direction="",
                n=n, n_malignant=npos, folds=folds,
            )
        )  # fmt: skip
        for c in cols:
            a, d = _single_feature_auc(features[c].to_numpy(dtype=float), y)
            rows.append(
                dict(
                    shortcut=f"{name}: {c}", kind="feature", features=c, auc=a, direction=d,
                    n=n, n_malignant=npos, folds=0,
                )
            )  # fmt: skip
    out = pd.DataFrame(rows)
    out["warning"] = out["auc"].fillna(0) >= warn_auc
    return out
