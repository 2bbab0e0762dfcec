"""Radiomics: pyradiomics extraction with caching and mask perturbations, and a scikit-learn transformer over it.

Owns: extract (parameters, extraction, cache), estimator (RadiomicsExtractor), ``buscad radiomics``. May import: buscad.data, buscad.utils, buscad.errors.

Radiomics extraction (pyradiomics) over a manifest, cached on disk.

Design
------
:func:`extract_features` is the workhorse: for every manifest row it reads the
image with :func:`buscad.data.io.read_image` (mapped to ``uint8`` with
:func:`~buscad.data.io.to_uint8`) and the lesion mask with
:func:`~buscad.data.io.read_mask`, builds 2-D SimpleITK images (unit spacing)
and runs pyradiomics' ``RadiomicsFeatureExtractor`` with the settings of a
YAML params file (default: :data:`DEFAULT_PARAMS`, the same as
``configs/radiomics.yaml``). pyradiomics never reads files itself.

Besides the original mask it extracts each *mask perturbation* of the params
file (``erode:2`` and ``dilate:2`` by default: the mask eroded / dilated by a
disc of that radius, standing in for a second annotator). Those columns are
named ``<feature>@<perturbation>`` (e.g. ``original_glcm_Contrast@erode2``) and
feed :class:`buscad.classical.selection.ICCFilter`, which is fitted on training rows only
and drops every ``@`` column, so the wide table is the ``X`` of the radiomics
pipeline as it stands.

Cache: one small JSON file per (image content hash, mask content hash,
settings hash), where the mask is the mask actually used (original or
perturbed) and the settings hash covers the pyradiomics parameters and the
pyradiomics version. A small index keyed by the image and mask *file* bytes
(SHA-256) and the perturbations points straight at a row's features, so a
second run over the same files only hashes them and loads one JSON per image
(an image re-encoded to other bytes with the same pixels still hits the
per-array cache). Default folder: ``radiomics/`` under
:func:`buscad.utils.cache_root` (``$BUSCAD_CACHE``, else
``$XDG_CACHE_HOME/buscad`` or ``~/.cache/buscad``); ``cache_dir`` overrides
it, ``cache_dir=False`` disables caching.

Failures (unreadable image, missing/empty mask, lesion below the minimum ROI
size, a pyradiomics error) are reported in :attr:`ExtractionResult.failures`
(one line each, naming the file) and the row is skipped; the batch goes on.
A perturbation that fails alone (an erosion that empties a tiny mask) leaves
NaN in its columns and is reported as well.

:class:`RadiomicsExtractor` wraps the function as a stateless scikit-learn
transformer over a :class:`~buscad.data.manifest.Manifest` (failed rows become
NaN rows so the output stays aligned with the input).
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
