"""Classical and fusion models (scikit-learn estimators): radiomics rad-score, clinical, BI-RADS lexicon (US), DLR, CLDLR and the stacking integrator, with grouped cross-validation.

Owns: feature selection (ICC, Spearman, LASSO), the model estimators and their grouped CV. May import: buscad.data, buscad.radiomics, buscad.evaluate.univariate (the shared univariate-test policy), buscad.utils and buscad.errors; never the study, bundle, reader or serve layers.

Classical and fusion models as scikit-learn estimators.

Every stage follows scikit-learn's conventions (``__init__`` only stores
parameters, ``fit`` returns ``self``, fitted attributes end in ``_``,
``get_params``/``set_params``/``clone`` work) and composes in a
:class:`~sklearn.pipeline.Pipeline`, so selection, scaling and imputation are
refit inside every cross-validation fold. Feature tables flow as pandas
DataFrames (call ``pipeline.set_output(transform="pandas")``, as the builders
here do) so column names survive selection and can be exported.

Stages
------
- :class:`FeatureSubset`: keep / drop columns by regular expression (e.g. drop
  ``_shape2D_`` features, pick ``deep_`` columns).
- :class:`ICCFilter`: inter-observer stability, ICC(3,1) of each radiomics
  feature across the original and perturbed masks (columns ``f``, ``f@erode2``,
  ``f@dilate2`` from :mod:`buscad.radiomics`), keeps ICC ≥ 0.75.
- :class:`SpearmanRedundancyFilter`: drops the less relevant of every pair with
  ``|rho| > threshold``.
- :class:`LassoSelector`: L1 logistic regression, penalty chosen by inner CV.
- :class:`RadScore`: logistic regression on the selected features;
  :func:`export_radscore_formula` writes the rad-score formula as CSV.
- :class:`ClinicalSelector` / :class:`ClinicalModel`: univariate tests, then
  logistic regression or SVM; imputation with missing indicators inside.
- :class:`LexiconEncoder` / :class:`USModel`: BI-RADS lexicon + category,
  one-hot → logistic regression.
- :class:`DLR`: deep features → scaler → SVM with probabilities.
- :class:`CLDLR`: clinical + deep features → SVM.
- :class:`MedSAMModel`: LiteMedSAM embedding features (:mod:`buscad.segment.medsam_features`)
  → z-score → L2 logistic regression, C by inner grouped CV.
- :class:`StackingIntegrator`: logistic regression on the single models'
  out-of-fold probabilities; coefficients exported for a nomogram.
- :func:`cross_val_predict_grouped`: pooled out-of-fold probabilities with the
  whole pipeline refit per fold, grouped by the split's groups.

Studies followed: Li et al., Front Oncol 2026 (radiomics: LASSO → logistic
regression; integrated model fusing the single models' probabilities) and
Yang et al., Sci Rep 2024;14:31479 (DLR = deep features → SVM; clinical
parameters with univariate P < 0.05, t or Mann-Whitney tests, BI-RADS excluded
from the clinical model; CLDLR = clinical + deep features → SVM).
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "CLDLR": "buscad.classical.deep",
    "ClinicalModel": "buscad.classical.clinical",
    "ClinicalSelector": "buscad.classical.clinical",
    "ColumnScore": "buscad.classical.fusion",
    "DLR": "buscad.classical.deep",
    "FeatureSubset": "buscad.classical.selection",
    "ICCFilter": "buscad.classical.selection",
    "LassoSelector": "buscad.classical.selection",
    "LexiconEncoder": "buscad.classical.lexicon",
    "MedSAMModel": "buscad.classical.medsam",
    "PlattSVC": "buscad.classical.base",
    "RADIOMICS_COLUMNS": "buscad.classical.radscore",
    "RadScore": "buscad.classical.radscore",
    "SpearmanRedundancyFilter": "buscad.classical.selection",
    "StackingIntegrator": "buscad.classical.fusion",
    "USModel": "buscad.classical.lexicon",
    "US_COLUMNS": "buscad.classical.lexicon",
    "VIEW_SEP": "buscad.classical.base",
    "apply_radscore_formula": "buscad.classical.radscore",
    "clinical_preprocessor": "buscad.classical.clinical",
    "cross_val_predict_grouped": "buscad.classical.cv",
    "export_radscore_formula": "buscad.classical.radscore",
    "icc_3_1": "buscad.classical.selection",
    "make_classifier": "buscad.classical.base",
    "make_folds": "buscad.classical.cv",
    "model_inputs": "buscad.classical.inputs",
    "radiomics_pipeline": "buscad.classical.radscore",
    "univariate_test": "buscad.classical.clinical",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
