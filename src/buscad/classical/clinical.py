"""Clinical model: univariate screening (the shared policy of buscad.evaluate.univariate), preprocessing and logistic regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import (
    check_is_fitted,
    validate_data,
)

from buscad.classical.base import _binary_y, _frame, _TagsMixin, _WrappedClassifier, make_classifier


def _infer_columns(
    df: pd.DataFrame, numeric: Sequence[str] | None, categorical: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    if numeric is None and categorical is None:
        num = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        cat = [c for c in df.columns if c not in num]
        return num, cat
    num, cat = list(numeric or []), list(categorical or [])
    absent = [c for c in num + cat if c not in df.columns]
    if absent:
        raise ValueError(f"clinical column(s) not in X: {', '.join(map(str, absent))}")
    return num, cat


def univariate_test(x: pd.Series, y: np.ndarray, kind: str) -> tuple[str, float]:
    """P-value of one clinical variable against the binary label (missing values left out).

    Delegates to buscad's one univariate-test policy,
    :func:`buscad.evaluate.univariate.univariate_test` (the test Table 1 uses
    too): ``kind="numeric"``: Welch's t ``t = (m1 - m0) / sqrt(s1²/n1 + s0²/n0)``
    when Shapiro-Wilk does not reject normality (P > 0.05) in either class
    (each with ≥ 3 values), else the two-sided Mann-Whitney U test;
    ``kind="categorical"``: Pearson's chi-square ``Σ (O - E)² / E`` without
    continuity correction, Fisher's exact test for a 2 × 2 table with an
    expected count < 5. Returns ``(test name, P)``; ``("none", 1.0)`` when the
    variable has fewer than 2 observed values in a class, is constant or has a
    single category (it cannot be selected).
    """
    from buscad.evaluate.univariate import univariate_test as policy

    ok = x.notna().to_numpy()
    yv = np.asarray(y)[ok]
    if kind == "numeric" and min((yv == 1).sum(), (yv == 0).sum()) < 2:
        return "none", 1.0
    name, p = policy(x, np.asarray(y), kind)
    if not np.isfinite(p):
        return "none", 1.0
    return name, p


class ClinicalSelector(_TagsMixin, TransformerMixin, BaseEstimator):
    """Keep clinical variables that differ between the classes on the training rows (P < alpha).

    Tests per :func:`univariate_test` (buscad's one policy, shared with Table 1:
    Welch t or Mann-Whitney U for numbers, chi-square without continuity
    correction or Fisher's exact test for categories), on the observed values
    of the rows passed to ``fit``. As in Yang et al. 2024, variables with
    P < 0.05 enter the clinical model.

    Parameters
    ----------
    numeric, categorical : list of str, optional
        Column names; both None: numeric dtypes are numeric, the rest categorical.
    alpha : float, default 0.05
    min_keep : int, default 1
        When fewer variables pass, keep this many with the smallest P (a model
        needs an input; reported in ``forced_``). Variables that cannot be
        tested (fewer than 2 observed values per class, e.g. a column that is
        missing on every training row) are never kept.

    Attributes
    ----------
    p_values_ : pandas.Series
    tests_ : pandas.Series
        Test used per variable.
    selected_ : list of str
    forced_ : bool
    """

    def __init__(
        self,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        alpha: float = 0.05,
        min_keep: int = 1,
    ):
        self.numeric = numeric
        self.categorical = categorical
        self.alpha = alpha
        self.min_keep = min_keep

    def fit(self, X: Any, y: Any) -> ClinicalSelector:
        """Run the tests on these rows."""
        df = _frame(X)
        if not isinstance(X, pd.DataFrame):
            validate_data(self, X, ensure_all_finite="allow-nan", dtype=None)
        else:
            self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        self.n_features_in_ = df.shape[1]
        yb = _binary_y(self, y)
        num, cat = _infer_columns(df, self.numeric, self.categorical)
        pv, tests = {}, {}
        for c in num:
            tests[c], pv[c] = univariate_test(df[c], yb, "numeric")
        for c in cat:
            tests[c], pv[c] = univariate_test(df[c], yb, "categorical")
        self.p_values_ = pd.Series(pv, dtype=float)
        self.tests_ = pd.Series(tests, dtype=object)
        sel = [c for c in num + cat if pv[c] < self.alpha]
        self.forced_ = len(sel) < self.min_keep
        if self.forced_:
            testable = self.p_values_[self.tests_ != "none"].sort_values(kind="stable")
            sel = list(testable.index[: self.min_keep])
        self.numeric_ = [c for c in num if c in sel]
        self.categorical_ = [c for c in cat if c in sel]
        self.selected_ = self.numeric_ + self.categorical_
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        """The selected columns."""
        check_is_fitted(self, "selected_")
        return _frame(X)[self.selected_]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the selected columns."""
        check_is_fitted(self, "selected_")
        return np.asarray(self.selected_, dtype=object)

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.bundle.portable`): the selected columns by name."""
        check_is_fitted(self, "selected_")
        return {"type": "select_names", "names": list(self.selected_)}, {}

    _allow_nan = True
    _string_input = True


def clinical_preprocessor(numeric: Sequence[str], categorical: Sequence[str]) -> ColumnTransformer:
    """Imputation fitted on the training rows: numbers → median + missing indicator → z-score;
    categories → constant ``"missing"`` → one-hot (unknown categories ignored)."""
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(
            (
                "num",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    StandardScaler(),
                ),
                list(numeric),
            )
        )
    if categorical:
        parts.append(
            (
                "cat",
                make_pipeline(
                    _ToStr(),
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                list(categorical),
            )
        )
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=True)


class _PriorClassifier(ClassifierMixin, BaseEstimator):
    """P(malignant) = the training prevalence for every row (input ignored, may have 0 columns)."""

    def fit(self, X: Any, y: Any) -> _PriorClassifier:
        yb = np.asarray(y)
        self.classes_ = np.unique(yb)
        self.prior_ = np.array([np.mean(yb == c) for c in self.classes_])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "prior_")
        return np.tile(self.prior_, (len(X), 1))

    def to_portable(self) -> tuple[dict, dict]:
        check_is_fitted(self, "prior_")
        return {"type": "constant", "p": float(self.prior_[-1])}, {}


class _ToStr(TransformerMixin, BaseEstimator):
    """Categories as strings, missing values as NaN (for SimpleImputer/OneHotEncoder)."""

    def fit(self, X: Any, y: Any = None) -> _ToStr:
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        df = _frame(X)
        out = df.astype(object).where(df.notna(), np.nan)
        return out.map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v)).to_numpy(
            object
        )

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(input_features if input_features is not None else [], dtype=object)

    def to_portable(self) -> tuple[dict, dict]:
        return {"type": "tostr"}, {}


class ClinicalModel(_WrappedClassifier):
    """Clinical model: univariate selection → imputation/encoding → logistic regression or SVM.

    Parameters
    ----------
    numeric, categorical : list of str, optional
        Clinical columns (both None: every column, typed by dtype). Other
        columns of ``X`` are ignored, so the model can take the full table.
    alpha : float, default 0.05
        Univariate P threshold (:class:`ClinicalSelector`).
    classifier : {"logistic", "svm"}, default "logistic"
    C : float, default 1.0
    random_state : int, default 0

    Notes
    -----
    Missing values never drop rows: numbers are imputed with the training
    median plus a 0/1 missing indicator, categories get a ``missing`` level,
    both learnt in ``fit`` (so inside each CV fold).

    Attributes
    ----------
    selector_ : ClinicalSelector
    pipeline_ : sklearn.pipeline.Pipeline
    classes_ : numpy.ndarray
    """

    def __init__(
        self,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        alpha: float = 0.05,
        classifier: str = "logistic",
        C: float = 1.0,
        random_state: int | None = 0,
    ):
        self.numeric = numeric
        self.categorical = categorical
        self.alpha = alpha
        self.classifier = classifier
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> ClinicalModel:
        """Select, then fit the preprocessing and the classifier on these rows."""
        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        sel = ClinicalSelector(self.numeric, self.categorical, self.alpha).fit(df, yb)
        self.selector_ = sel
        if not sel.selected_:  # nothing testable (e.g. no clinical data in training): prior only
            self.pipeline_ = Pipeline([("select", sel), ("clf", _PriorClassifier())])
            self.pipeline_.steps[1][1].fit(sel.transform(df), yb)
            return self
        self.pipeline_ = Pipeline(
            [
                ("select", sel),
                ("prep", clinical_preprocessor(sel.numeric_, sel.categorical_)),
                ("clf", make_classifier(self.classifier, self.C, self.random_state)),
            ]
        )
        # the selector is already fitted; refit the rest
        Xt = sel.transform(df)
        self.pipeline_.steps[1] = ("prep", self.pipeline_.steps[1][1].fit(Xt, yb))
        self.pipeline_.steps[2][1].fit(self.pipeline_.steps[1][1].transform(Xt), yb)
        return self

    _allow_nan = True
    _string_input = True
