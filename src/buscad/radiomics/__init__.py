"""Radiomics: pyradiomics extraction with caching and mask perturbations, and a scikit-learn transformer over it.

Owns: extract (parameters, extraction, cache), estimator (RadiomicsExtractor), ``buscad radiomics``. May import: buscad.data, buscad.utils, buscad.errors.

The extraction settings, caching and mask perturbations are described in
:mod:`buscad.radiomics.extract`.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "CACHE_FORMAT": "buscad.radiomics.extract",
    "DEFAULT_PARAMS": "buscad.radiomics.extract",
    "ExtractionResult": "buscad.radiomics.extract",
    "FEATURE_CLASSES_2D": "buscad.radiomics.extract",
    "IMAGE_TYPES": "buscad.radiomics.extract",
    "RadiomicsExtractor": "buscad.radiomics.estimator",
    "VIEW_SEP": "buscad.radiomics.extract",
    "default_cache_dir": "buscad.radiomics.extract",
    "extract_arrays": "buscad.radiomics.extract",
    "extract_features": "buscad.radiomics.extract",
    "load_params": "buscad.radiomics.extract",
    "original_columns": "buscad.radiomics.extract",
    "perturb_mask": "buscad.radiomics.extract",
    "perturbation_name": "buscad.radiomics.extract",
    "pyradiomics_params": "buscad.radiomics.extract",
    "restrict_params": "buscad.radiomics.extract",
    "settings_hash": "buscad.radiomics.extract",
    "validate_params": "buscad.radiomics.extract",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
