"""Which input columns each classical or fusion model reads (for bundles and the app)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import (
    check_is_fitted,
)

from buscad.classical.base import _WrappedClassifier
from buscad.classical.clinical import ClinicalModel
from buscad.classical.deep import CLDLR
from buscad.classical.fusion import ColumnScore, StackingIntegrator
from buscad.classical.lexicon import USModel


def model_inputs(est: BaseEstimator) -> list[str]:
    """Names of the input columns a fitted model actually reads.

    What a deployed model must be given: the radiomics features the LASSO kept
    (not the hundreds extracted), the deep features, the clinical variables the
    univariate tests kept, the lexicon columns, and for the integrated model the
    union over its base models. Columns are named as in ``fit``'s table.
    """
    if isinstance(est, StackingIntegrator):
        check_is_fitted(est, "estimators_")
        out: list[str] = []
        for _, e in est.estimators_:
            out += [c for c in model_inputs(e) if c not in out]
        return out
    if isinstance(est, ColumnScore):
        return [est.column]
    if isinstance(est, USModel):
        return list(est.columns_)
    if isinstance(est, ClinicalModel):
        return list(est.selector_.selected_)
    if isinstance(est, CLDLR):
        return list(est.clinical_columns_) + list(est.deep_columns_)
    if isinstance(est, _WrappedClassifier):
        return _pipeline_inputs(est.pipeline_, list(map(str, est.feature_names_in_)))
    if isinstance(est, Pipeline):
        return _pipeline_inputs(est, list(map(str, est.feature_names_in_)))
    names = getattr(est, "feature_names_in_", None)
    return list(map(str, names)) if names is not None else []


def _pipeline_inputs(pipe: Pipeline, names: list[str]) -> list[str]:
    """Follow the leading selectors (and column-wise imputers/scalers) of a pipeline."""
    cols = np.asarray(names, dtype=object)
    for _, step in pipe.steps:
        if isinstance(step, SelectorMixin):
            cols = cols[step.get_support()]
        elif not isinstance(step, (SimpleImputer, StandardScaler)) or getattr(
            step, "indicator_", None
        ):
            break
    return [str(c) for c in cols]


def _is_deep_feature(column: str) -> bool:
    return re.match(r"^deep_\d+$", column) is not None


def input_gaps(est: BaseEstimator, X: pd.DataFrame) -> pd.DataFrame:
    """Per row of ``X``: how many of a fitted model's inputs are missing, and whether it can score it.

    The inputs are :func:`model_inputs` less the deep features (computed from the
    image for every readable row) and scores of other models (``ColumnScore``
    columns, e.g. ``_deep_score``). A row is *scorable* unless every one of its
    clinical/lexicon/outline inputs is missing, or every one of its radiomics
    features is (the rule :class:`buscad.bundle.Bundle` applies at prediction
    time): the model would otherwise score it from imputed constants alone.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``X``: ``n_inputs`` (inputs counted), ``n_missing`` (of those,
        NaN in the row) and ``scorable`` (bool).
    """
    from buscad.classical.radscore import RADIOMICS_COLUMNS

    scores = _score_columns(est)
    cols = [c for c in model_inputs(est) if not _is_deep_feature(c) and c not in scores]
    cols = [c for c in cols if c in X.columns]
    rad = [c for c in cols if re.match(RADIOMICS_COLUMNS, c)]
    rest = [c for c in cols if c not in rad]
    miss = X[cols].isna() if cols else pd.DataFrame(index=X.index)
    scorable = pd.Series(True, index=X.index)
    for group in (rest, rad):
        if group:
            scorable &= ~miss[group].all(axis=1)
    return pd.DataFrame(
        {
            "n_inputs": len(cols),
            "n_missing": miss.sum(axis=1).astype(int) if cols else 0,
            "scorable": scorable,
        },
        index=X.index,
    )


def _score_columns(est: BaseEstimator) -> set[str]:
    """The ``ColumnScore`` columns a model (or its stacked bases) reads."""
    if isinstance(est, ColumnScore):
        return {est.column}
    if isinstance(est, StackingIntegrator):
        return {c for _, e in est.estimators_ for c in _score_columns(e)}
    return set()
