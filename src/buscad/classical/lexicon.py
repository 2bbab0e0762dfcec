"""BI-RADS lexicon encoding and the ultrasound-descriptor (US) model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import (
    check_is_fitted,
)

from buscad.classical.base import _binary_y, _frame, _WrappedClassifier, make_classifier
from buscad.data.lexicon import LEXICON_MISSING, lexicon_tokens
from buscad.data.manifest import LEXICON_COLUMNS


class LexiconEncoder(TransformerMixin, BaseEstimator):
    """One-hot encoding of BI-RADS lexicon descriptors and the BI-RADS category.

    Each cell is split on ``sep`` (BrEaST writes multi-valued margins as
    ``"not circumscribed - angular&indistinct"``) and the part before `` - ``
    is kept as its own token too, so ``margin=not circumscribed`` is a feature.
    Every ``column=token`` seen in the training rows becomes a 0/1 column;
    missing cells (and ``not applicable``/``not available``) become
    ``column=missing``; tokens unseen in training are ignored.

    Parameters
    ----------
    columns : list of str, optional
        Columns to encode (None: all).
    sep : str, default "&"

    Attributes
    ----------
    vocabulary_ : list of str
        Output column names ``column=token``.
    """

    _MISSING = LEXICON_MISSING

    def __init__(self, columns: Sequence[str] | None = None, sep: str = "&"):
        self.columns = columns
        self.sep = sep

    def _tokens(self, v: Any) -> list[str]:
        return lexicon_tokens(v, self.sep)

    def fit(self, X: Any, y: Any = None) -> LexiconEncoder:
        """Learn the vocabulary from these rows."""
        df = _frame(X)
        self.columns_ = list(self.columns) if self.columns is not None else list(df.columns)
        absent = [c for c in self.columns_ if c not in df.columns]
        if absent:
            raise ValueError(f"LexiconEncoder: column(s) not in X: {', '.join(absent)}")
        vocab: list[str] = []
        for c in self.columns_:
            seen = sorted({t for v in df[c] for t in self._tokens(v)})
            vocab += [f"{c}={t}" for t in seen]
        self.vocabulary_ = vocab
        self.n_features_in_ = df.shape[1]
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        """0/1 indicator table (columns ``vocabulary_``)."""
        check_is_fitted(self, "vocabulary_")
        df = _frame(X)
        pos = {v: i for i, v in enumerate(self.vocabulary_)}
        out = np.zeros((len(df), len(pos)))
        for c in self.columns_:
            for r, v in enumerate(df[c].tolist()):
                for t in self._tokens(v):
                    j = pos.get(f"{c}={t}")
                    if j is not None:
                        out[r, j] = 1.0
        return pd.DataFrame(out, columns=self.vocabulary_, index=df.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The ``column=token`` names."""
        check_is_fitted(self, "vocabulary_")
        return np.asarray(self.vocabulary_, dtype=object)

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.bundle.portable`): columns, vocabulary and separator."""
        check_is_fitted(self, "vocabulary_")
        spec = {"type": "lexicon", "columns": list(self.columns_), "sep": self.sep}
        return {**spec, "vocabulary": list(self.vocabulary_)}, {}


#: Conventional-ultrasound model inputs: the radiologist's lexicon and category.
US_COLUMNS: tuple[str, ...] = (*LEXICON_COLUMNS, "halo", "skin_thickening", "birads")


class USModel(_WrappedClassifier):
    """Conventional-ultrasound model: BI-RADS lexicon + category one-hot → logistic regression.

    Parameters
    ----------
    columns : list of str, optional
        Descriptor columns; default: those of :data:`US_COLUMNS` present in ``X``
        (every column when none is).
    C : float, default 1.0
        Inverse L2 strength of the logistic regression.
    random_state : int, default 0
    """

    def __init__(
        self, columns: Sequence[str] | None = None, C: float = 1.0, random_state: int | None = 0
    ):
        self.columns = columns
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> USModel:
        """Encode and fit on these rows."""
        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        if self.columns is not None:
            cols = list(self.columns)
        else:
            cols = [c for c in US_COLUMNS if c in df.columns] or list(df.columns)
        self.columns_ = cols
        self.pipeline_ = Pipeline(
            [
                ("encode", LexiconEncoder(cols)),
                ("clf", make_classifier("logistic", self.C, self.random_state)),
            ]
        ).fit(df, yb)
        return self

    _allow_nan = True
    _string_input = True
