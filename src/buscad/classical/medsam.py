"""The ``medsam`` model: LiteMedSAM embedding features → z-score → L2 logistic regression, C by grouped CV."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from buscad.classical.base import _binary_y, _WrappedClassifier
from buscad.classical.selection import FeatureSubset

#: The grid of inverse penalties searched, ``10^-4 ... 10^0`` (9 values, log-spaced).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 0, 9))


class MedSAMModel(_WrappedClassifier):
    """Pooled LiteMedSAM embedding features → median imputation → z-score → L2 logistic regression.

    The inputs are the ``medsam`` feature family
    (:mod:`buscad.segment.medsam_features`: the image embedding averaged inside
    the lesion, in a ring around it and in the posterior band below it). The
    model is ``P(malignant) = 1 / (1 + exp(-(b + w · z)))`` with ``z`` the
    z-scored features (means and SDs of the training rows; a missing value is
    the training median) and ``w, b`` minimising the L2-penalised log-loss
    ``½|w|² + C Σ log-loss``. ``C`` is chosen from ``Cs`` by inner grouped
    stratified ``cv``-fold CV of the training rows (rows of one group never
    straddle an inner fold; :func:`buscad.classical.cv.make_folds`): the ``C``
    with the highest mean fold AUC, the smallest on ties, then refit on every
    training row (:class:`~sklearn.linear_model.LogisticRegressionCV`). With fewer
    than 2 rows of a class per fold possible, ``C = 1``.

    Parameters
    ----------
    include : str or list of str, optional
        Regex of the feature columns (None: every column).
    Cs : sequence of float
        The ``C`` grid (default :data:`DEFAULT_CS`).
    cv : int
        Inner folds.
    random_state : int, optional
        Seed of the inner folds.

    Attributes
    ----------
    C_ : float
        The chosen ``C``.
    """

    def __init__(
        self,
        include: str | Sequence[str] | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        cv: int = 5,
        random_state: int | None = 0,
    ):
        self.include = include
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None) -> MedSAMModel:
        """Choose ``C`` by inner grouped CV and fit on these rows (``groups``: one label per row)."""
        from sklearn.linear_model import LogisticRegression

        from buscad.classical.cv import make_folds

        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        k = min(int(self.cv), int(np.bincount(yb, minlength=2).min()))
        if groups is not None and len(np.unique(np.asarray(groups))) < k:
            k = len(np.unique(np.asarray(groups)))
        if k >= 2:
            splits = make_folds(yb, groups, None, k, self.random_state)
            head: Any = LogisticRegressionCV(
                Cs=list(self.Cs),
                cv=splits,
                scoring="roc_auc",
                max_iter=5000,
                l1_ratios=(0.0,),  # L2 only
                use_legacy_attributes=False,
            )
        else:
            head = LogisticRegression(C=1.0, max_iter=5000)
        self.pipeline_ = Pipeline(
            [
                ("subset", FeatureSubset(include=self.include)),
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("zscore", StandardScaler()),
                ("lr", head),
            ]
        )
        self.pipeline_.fit(df, yb)
        self.C_ = float(np.ravel(head.C_)[0]) if k >= 2 else 1.0
        return self

    _allow_nan = True
