"""Model bundles: what a study leaves for prediction, and the prediction path.

Owns: bundle (writing and loading a bundle, predicting), types (Prediction, Predictor), portable (pickle-free scikit-learn export), ``buscad predict``. May import: data, models, explain, radiomics, classical, evaluate; never study, reader or serve.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "Bundle": "buscad.bundle.bundle",
    "DECISION_SUPPORT_NOTE": "buscad.bundle.types",
    "DEEP_FEATURE": "buscad.bundle.bundle",
    "DEEP_SCORE": "buscad.bundle.bundle",
    "ENGINES": "buscad.bundle.bundle",
    "FORMAT": "buscad.bundle.bundle",
    "LIKELIHOOD_BANDS": "buscad.bundle.types",
    "LikelihoodBand": "buscad.bundle.types",
    "NOT_EXPORTED": "buscad.bundle.bundle",
    "PortableModel": "buscad.bundle.portable",
    "Prediction": "buscad.bundle.types",
    "Predictor": "buscad.bundle.types",
    "SUPPORTED_VERSIONS": "buscad.bundle.bundle",
    "VERSION": "buscad.bundle.bundle",
    "add_onnx": "buscad.bundle.bundle",
    "as_table": "buscad.bundle.portable",
    "calibrate": "buscad.bundle.bundle",
    "fit_platt": "buscad.bundle.bundle",
    "group_inputs": "buscad.bundle.bundle",
    "likelihood_band": "buscad.bundle.types",
    "load_portable": "buscad.bundle.portable",
    "save_portable": "buscad.bundle.portable",
    "write_bundle": "buscad.bundle.bundle",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
