"""Which input columns each classical or fusion model reads (for bundles and the app)."""

from __future__ import annotations

import numpy as np
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
