"""The radiomics rad-score: ICC -> Spearman -> LASSO -> logistic regression, and its exported formula."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import (
    check_is_fitted,
    validate_data,
)

from buscad.classical.base import _binary_y, _BinaryClassifierMixin, _names
from buscad.classical.selection import (
    FeatureSubset,
    ICCFilter,
    LassoSelector,
    SpearmanRedundancyFilter,
)
from buscad.utils import atomic_write_table


class RadScore(_BinaryClassifierMixin, BaseEstimator):
    """Logistic regression on the selected radiomics features: the rad-score model.

    ``rad-score = b0 + Σ_j b_j x_j`` (the log-odds of malignancy);
    ``P(malignant) = 1 / (1 + exp(-rad-score))``.

    Parameters
    ----------
    C : float, default 1.0
        Inverse L2 strength (mild, on z-scored inputs: keeps the fit finite
        when the selected features separate the training rows perfectly).
    random_state : int, default 0

    Attributes
    ----------
    coef_ : numpy.ndarray
        ``(n_features,)`` coefficients.
    intercept_ : float
        ``b0``.
    classes_ : numpy.ndarray
    """

    def __init__(self, C: float = 1.0, random_state: int | None = 0):
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> RadScore:
        """Fit the logistic regression."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        yb = _binary_y(self, y)
        lr = LogisticRegression(C=self.C, max_iter=5000, random_state=self.random_state)
        lr.fit(X, yb)
        self.coef_ = lr.coef_.ravel().copy()
        self.intercept_ = float(lr.intercept_[0])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The rad-score ``b0 + X @ b``."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[1 - p, p]`` with ``p = 1 / (1 + exp(-rad-score))``."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """``classes_[1]`` where the rad-score is positive."""
        score = self.decision_function(X)
        return self.classes_[(score > 0).astype(int)]

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.bundle.portable`): a logistic model."""
        check_is_fitted(self, "coef_")
        return {"type": "logistic", "intercept": self.intercept_, "classes": [0, 1]}, {
            "coef": self.coef_
        }

    def export_formula(self, path: str | os.PathLike[str]) -> Path:
        """Write ``term, coefficient`` rows (``(intercept)`` first) to a CSV file."""
        check_is_fitted(self, "coef_")
        names = _names(self, len(self.coef_))
        df = pd.DataFrame(
            {
                "term": ["(intercept)", *map(str, names)],
                "coefficient": [self.intercept_, *self.coef_],
            }
        )
        return atomic_write_table(df, path)


#: Column names of pyradiomics features (image type prefix), with or without ``@view``.
RADIOMICS_COLUMNS = r"^[A-Za-z0-9.-]+_(shape2D|firstorder|glcm|glrlm|glszm|gldm|ngtdm)_"


def radiomics_pipeline(
    icc_threshold: float = 0.75,
    spearman_threshold: float = 0.9,
    lasso_cv: int = 5,
    C: float = 1.0,
    exclude: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = RADIOMICS_COLUMNS,
    random_state: int | None = 0,
) -> Pipeline:
    """The radiomics model: subset → ICC filter → impute → z-score → Spearman → LASSO → rad-score.

    The subset keeps the pyradiomics columns (``include``, default
    :data:`RADIOMICS_COLUMNS`, so the pipeline can take a table that also holds
    clinical or deep columns) minus ``exclude`` (``"_shape2D_"`` removes the
    shape features, including their perturbed copies). The imputer (median of the
    training rows) only acts on rows whose extraction failed.
    """
    steps: list[tuple[str, Any]] = [("subset", FeatureSubset(include=include, exclude=exclude))]
    steps += [
        ("icc", ICCFilter(threshold=icc_threshold)),
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("zscore", StandardScaler()),
        ("spearman", SpearmanRedundancyFilter(threshold=spearman_threshold)),
        ("lasso", LassoSelector(cv=lasso_cv, random_state=random_state)),
        ("radscore", RadScore(C=C, random_state=random_state)),
    ]
    return Pipeline(steps).set_output(transform="pandas")


def export_radscore_formula(pipeline: Pipeline, path: str | os.PathLike[str]) -> pd.DataFrame:
    """Write the rad-score formula of a fitted radiomics pipeline as CSV, on the raw feature scale.

    With the z-score ``z_j = (x_j - mean_j) / sd_j`` folded in,
    ``rad-score = b0 - Σ_j b_j mean_j / sd_j + Σ_j (b_j / sd_j) x_j``. Columns:
    ``term`` (``(intercept)`` then the feature names), ``coefficient`` (raw
    scale: apply to the extracted feature values), ``z_coefficient`` (``b_j``),
    ``mean`` and ``sd`` (training z-score). ``P = 1 / (1 + exp(-rad-score))``
    reproduces ``pipeline.predict_proba(X)[:, 1]`` for rows without missing
    features (see :func:`apply_radscore_formula`).

    Raises
    ------
    ValueError
        When the last step is not a fitted :class:`RadScore` or the pipeline
        carries no feature names (fit it on a DataFrame with pandas output).
    """
    final = pipeline.steps[-1][1]
    if not isinstance(final, RadScore):
        raise ValueError("export_radscore_formula: the pipeline's last step must be a RadScore")
    check_is_fitted(final, "coef_")
    if getattr(final, "feature_names_in_", None) is None:
        raise ValueError(
            "export_radscore_formula: no feature names; fit on a DataFrame with "
            'pipeline.set_output(transform="pandas")'
        )
    names = [str(n) for n in final.feature_names_in_]
    mean = pd.Series(0.0, index=names)
    sd = pd.Series(1.0, index=names)
    scalers = [step for _, step in pipeline.steps[:-1] if isinstance(step, StandardScaler)]
    if len(scalers) > 1:
        raise ValueError("export_radscore_formula: more than one StandardScaler in the pipeline")
    if scalers:
        sc = scalers[0]
        cols = [str(c) for c in sc.feature_names_in_]
        if sc.with_mean:
            mean = pd.Series(sc.mean_, index=cols).reindex(names)
        if sc.with_std:
            sd = pd.Series(sc.scale_, index=cols).reindex(names)
    b = pd.Series(final.coef_, index=names)
    raw = b / sd
    intercept = final.intercept_ - float((b * mean / sd).sum())
    df = pd.DataFrame(
        {
            "term": ["(intercept)", *names],
            "coefficient": [intercept, *raw.to_numpy()],
            "z_coefficient": [final.intercept_, *b.to_numpy()],
            "mean": [np.nan, *mean.to_numpy()],
            "sd": [np.nan, *sd.to_numpy()],
        }
    )
    atomic_write_table(df, path)
    return df


def apply_radscore_formula(formula: str | os.PathLike[str] | pd.DataFrame, X: pd.DataFrame):
    """Rad-score and probability from an exported formula CSV and raw features.

    Returns
    -------
    tuple of numpy.ndarray
        ``(rad_score, probability)`` with ``probability = 1 / (1 + exp(-rad_score))``.
    """
    f = formula if isinstance(formula, pd.DataFrame) else pd.read_csv(formula)
    inter = float(f.loc[f["term"] == "(intercept)", "coefficient"].iloc[0])
    terms = f[f["term"] != "(intercept)"]
    missing = [t for t in terms["term"] if t not in X.columns]
    if missing:
        raise ValueError(f"rad-score formula needs column(s) absent from X: {', '.join(missing)}")
    score = inter + X[list(terms["term"])].to_numpy(float) @ terms["coefficient"].to_numpy(float)
    return score, 1.0 / (1.0 + np.exp(-score))
