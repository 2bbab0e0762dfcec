"""RadiomicsExtractor: pyradiomics extraction as a scikit-learn transformer (image and mask paths in, features out)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


# =============================================================================== radiomics
class RadiomicsExtractor(TransformerMixin, BaseEstimator):
    """Stateless scikit-learn transformer: Manifest → radiomics feature table.

    Parameters
    ----------
    params : str, path-like or None
        YAML params file (None: :data:`buscad.radiomics.extract.DEFAULT_PARAMS`).
    cache_dir : str, path-like, bool or None
        See :func:`buscad.radiomics.extract.extract_features`.
    n_jobs : int, default 1
        Worker processes.
    progress : bool, optional
        Show per-image progress (default: inside :func:`buscad.progress.reporting` only).

    Notes
    -----
    ``transform`` returns one row per manifest row (indexed by ``image_id``);
    rows whose extraction failed are all-NaN and listed in ``failures_`` (so a
    downstream imputer, not a silent drop, decides what happens to them).
    """

    def __init__(
        self,
        params: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        n_jobs: int = 1,
        progress: bool | None = None,
    ) -> None:
        self.params = params
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.progress = progress

    def fit(self, X: Any, y: Any = None) -> RadiomicsExtractor:
        """Validate the params (nothing is learnt); return self."""
        from buscad.radiomics.extract import load_params

        self.params_ = load_params(self.params)
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        """Feature table for the manifest ``X`` (rows aligned with it)."""
        from buscad.radiomics.extract import extract_features, load_params

        params = getattr(self, "params_", None) or load_params(self.params)
        res = extract_features(
            X, params, cache_dir=self.cache_dir, n_jobs=self.n_jobs, progress=self.progress
        )
        self.failures_ = res.failures
        for line in res.failures:
            warnings.warn(f"radiomics: skipped {line}", stacklevel=2)
        ids = [str(v) for v in X.df["image_id"]]
        return res.features.reindex(pd.Index(ids, name="image_id"))
