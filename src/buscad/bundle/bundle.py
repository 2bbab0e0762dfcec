"""The model bundle a study run leaves behind: what ``buscad predict`` and ``buscad serve`` load.

A bundle is a folder::

    bundle.json          format, name, primary model, headline model, threshold, calibration,
                         provenance, metrics
    model.safetensors    the chosen CNN (weights)      ┐ written by
    model.json           its spec and preprocessing    ┘ buscad.models.checkpoint
    model.onnx           the same CNN for ONNX Runtime, with its Grad-CAM in the graph
    models/NAME.*        each classical/fusion model (buscad.bundle.portable: safetensors + JSON)
    segmenter/           optional lesion segmenter: segmenter.onnx + segmenter.json
    ood.safetensors      the training images' features        ┐ out-of-distribution model
    ood.json             its space, k and limit               │ (buscad.bundle.safety)
    ood_frame.*          the same of the whole training images │ (checked in automatic mode)
    ood_encoder.onnx     the frozen encoder of those features ┘ (buscad.bundle.ood_encoder)
    medsam/encoder.onnx  LiteMedSAM's image encoder, when a model reads the ``medsam`` features
                         (unless segmenter/litemedsam/ already holds the same graph)
    model_card.md        intended use, data, metrics, limitations

Nothing in it is a pickle. The AI score is the CNN's malignant probability
passed through a Platt calibration ``p = 1 / (1 + exp(-(a · logit(s) + b)))``
fitted on the training rows' *out-of-fold* scores; the decision threshold is
Youden's on those calibrated out-of-fold scores (training data only).

Inference engines: when ``model.onnx`` is there (every backbone whose Grad-CAM
layer is average-pooled into the head: see :mod:`buscad.models.onnx`) and the
bundle's explanation is Grad-CAM, the score and the heatmap come from one ONNX
Runtime pass and PyTorch is not even imported; otherwise (or with
``engine="torch"``) the PyTorch checkpoint and pytorch-grad-cam are used. Both
give the same numbers (``tests/test_study.py::test_bundle_predict_and_serve``).

The classical and fusion models (radiomics, DLR, clinical, US, CLDLR, outline,
integrated) are the study's models refit on all training rows; each scores an
image from what it read in training: the CNN's deep features of the same ROI
(DLR, CLDLR), pyradiomics features of the lesion mask (radiomics: needs a mask,
not a box), clinical or BI-RADS lexicon inputs (clinical, US, CLDLR: missing
values are imputed as in training, but a model none of whose inputs is given is
skipped), the outline's geometry, smoothed shape and echo ratios computed from
whatever outline the prediction uses (outline: :func:`computed_descriptors`),
LiteMedSAM's image embedding pooled inside, around and below that outline (medsam:
the bundle's ``medsam/encoder.onnx`` on ONNX Runtime, :mod:`buscad.segment.medsam_features`),
and the CNN's raw score plus the other models' inputs (integrated).
Their probabilities are reported as the models give them, with each model's
Youden threshold on its out-of-fold training scores. A model that cannot run says
why in ``skipped_models``.

The headline (the AI score, its band and the call): the study's headline model
(``headline_model`` in ``bundle.json``: the integrated model, or its best member when
the fusion loses on honest held-out scores) when the bundle carries it and it scored
the image, its probability at its own threshold; otherwise the calibrated CNN at the
bundle's threshold, and ``headline_note`` says why the named model was not used. The
Grad-CAM heatmap is always the CNN's.

Automatic ROI: a bundle with a segmenter (:mod:`buscad.segment`, ONNX Runtime only,
no PyTorch) outlines the lesion itself when no mask is given: box-prompted when a
box is given (``roi_source = "box"``), automatic otherwise (``roi_source = "auto"``,
the most confident candidate). The outline's confidence (mean lesion probability
inside it, or LiteMedSAM's IoU-head estimate) is in the prediction with, for
LiteMedSAM outlines, the calibrated predicted Dice (``predicted_dice``) and
``outline_flagged`` (predicted Dice below the calibration's threshold: a caution
asks the user to check or redraw it), and radiomics reads the predicted outline. When
no lesion is found, the box (if any) or the whole image is read and a note says so.

Knowing when not to answer (:mod:`buscad.bundle.safety`, docs/safety.md): ``bundle.json``
records what the bundle was trained on (``training``: cohorts, phantom or real, image
counts, input size) and what the study found broken about its models (``flags``), and
``ood.*`` models the training images in the CNN's feature space. Every prediction lists
its ``cautions`` and withholds the AI call (``withheld``) when the image is unlike the
training images, no lesion was found, or the primary model failed the study's checks;
text burned in over or near the region read, or a Grad-CAM peak on text or outside the
outline, marks the call unreliable. A phantom-trained bundle's results carry a banner.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from buscad.bundle.types import Outline, Prediction, likelihood_band
from buscad.errors import MaskError, ModelFileError
from buscad.labels import inputs_text
from buscad.utils import atomic_write_json, atomic_write_text, file_sha256

FORMAT = "buscad-bundle"
VERSION = 1
#: Bundle versions :meth:`Bundle.load` reads.
SUPPORTED_VERSIONS = (1,)
NOT_EXPORTED = "evaluated in the study report; not in this bundle"
#: Inputs that are neither deep features, radiomics features nor the CNN score.
DEEP_FEATURE = re.compile(r"^deep_\d+$")
DEEP_SCORE = "_deep_score"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def fit_platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt calibration of scores on their logit: ``p = sigmoid(a · logit(s) + b)``.

    Fitted by (nearly unpenalised) logistic regression of ``y`` on ``logit(s)``.
    """
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(scores)[:, None], np.asarray(y, int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def calibrate(scores: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """Apply :func:`fit_platt`'s calibration."""
    return 1.0 / (1.0 + np.exp(-(a * _logit(np.atleast_1d(scores)) + b)))


def write_bundle(
    out: str | os.PathLike[str],
    checkpoint_stem: str | os.PathLike[str],
    oof_scores: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    metrics: list[dict] | None = None,
    model_card: str = "",
    provenance: dict | None = None,
    cam_method: str = "gradcam",
    onnx: bool = True,
    classical: dict[str, dict] | None = None,
    radiomics_params: dict | None = None,
    configured: list[str] | dict[str, str] | None = None,
    segmenter: str | os.PathLike[str] | None = None,
    roi: str = "expert",
    reader_column: str | None = None,
    training: dict | None = None,
    train_features: np.ndarray | None = None,
    ood_folds: np.ndarray | None = None,
    ood_space: str = "cnn",
    frame_features: np.ndarray | None = None,
    headline: dict[str, Any] | None = None,
    medsam: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a bundle from a deep checkpoint and its out-of-fold training scores.

    Parameters
    ----------
    onnx : bool
        Also export ``model.onnx`` with the Grad-CAM outputs (skipped, with the
        reason in ``bundle.json``, for backbones whose Grad-CAM cannot be in the
        graph).
    classical : dict, optional
        ``name -> {"stem": path of a buscad.bundle.portable model, "threshold": float,
        "reads_reader": bool}``; the model's JSON metadata must list its ``inputs``.
        ``reads_reader`` (default: whether its inputs hold ``reader_column``) marks a
        model that reads the radiologist's own BI-RADS; it is written to
        ``bundle.json`` for every model and the app labels such a model.
    radiomics_params : dict, optional
        Validated pyradiomics settings (needed when a model reads radiomics).
    configured : list of str or dict, optional
        The study's non-deep models; those not in ``classical`` are listed as
        not exported (a dict gives the reason for each, e.g. "not built: no
        clinical values in the training rows").
    segmenter : path-like, optional
        A segmenter folder (:class:`buscad.segment.Segmenter`); its ONNX file (exported
        from the PyTorch weights when missing) and JSON go to ``segmenter/``.
    roi : str
        Where the models' training outlines came from (``expert``, ``auto`` or ``box``).
    reader_column : str, optional
        The column holding the reader's BI-RADS in the study (recorded in ``bundle.json``).
    training : dict, optional
        What the bundle was trained on (:func:`buscad.bundle.safety.training_record`).
    train_features : numpy.ndarray, optional
        ``(n, d)`` features of the training images: the out-of-distribution model
        (:class:`buscad.bundle.safety.FeatureOOD`) is fitted on them.
    ood_folds : numpy.ndarray, optional
        The training rows' cross-validation folds: the OOD limit is set on out-of-fold
        distances (leave-one-out without them).
    ood_space : str
        What ``train_features`` are: ``cnn`` (the CNN's own features) or
        :data:`buscad.bundle.ood_encoder.SPACE` (the frozen encoder's, copied into the
        bundle as ``ood_encoder.onnx``).
    frame_features : numpy.ndarray, optional
        The encoder's features of the whole training images, same rows and folds: the
        whole-frame OOD model (``ood_frame``), checked when the segmenter searched the
        frame for the outline.
    headline : dict, optional
        The study's headline model (``headline_model`` in ``bundle.json``):
        ``{"model": name, ...}``, the integrated model, or its best member when the
        fusion fell below it on honest held-out scores (:func:`buscad.study.fit.fusion_summary`).
        Predictions take their AI score, band and call from it when it can score the
        image (:meth:`Bundle.headline_for`); ``primary_model`` stays the CNN, the fallback.
    medsam : path-like, optional
        A converted LiteMedSAM folder (needed when a model reads the ``medsam``
        features): its encoder graph is copied to ``medsam/encoder.onnx``.

    The study's checks (:func:`buscad.bundle.safety.study_flags` on ``oof_scores``,
    :func:`~buscad.bundle.safety.model_flags` on a classical model's ``oof`` and ``y``
    when its ``classical`` entry has them) are written as ``flags``: a flagged bundle
    is still written, and its predictions withhold their AI call.

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    import shutil

    from buscad.evaluate.metrics import youden_threshold

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(checkpoint_stem)
    for suffix in (".safetensors", ".json"):  # names kept: the JSON names its weights file
        shutil.copyfile(stem.with_suffix(suffix), out / stem.with_suffix(suffix).name)
    ok = ~np.isnan(np.asarray(oof_scores, dtype=float))
    s, yy = np.asarray(oof_scores, dtype=float)[ok], np.asarray(y, dtype=int)[ok]
    a, b = fit_platt(s, yy)
    threshold = youden_threshold(yy, calibrate(s, a, b))
    from buscad.bundle.safety import OOD_FRAME_FILE, model_flags, study_flags

    flags = study_flags(yy, s, a, threshold, calibrate(s, a, b))
    deep: dict[str, Any] = {"checkpoint": stem.name, "cam": cam_method, "reads_reader": False}
    models: dict[str, Any] = {"deep": deep}
    for mname, info in (classical or {}).items():
        src = Path(info["stem"])
        (out / "models").mkdir(exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(src.with_suffix(suffix), out / "models" / f"{mname}{suffix}")
        meta = json.loads(src.with_suffix(".json").read_text(encoding="utf-8"))["metadata"]
        reads = info.get("reads_reader")
        models[mname] = {
            "file": f"models/{mname}",
            "threshold": float(info["threshold"]),
            "threshold_rule": "youden on out-of-fold training scores",
            "inputs": group_inputs(meta["inputs"]),
            "reads_reader": bool(
                reads if reads is not None else reader_column and reader_column in meta["inputs"]
            ),
        }
        if info.get("oof") is not None:
            models[mname]["flags"] = model_flags(info["y"], info["oof"])
    needs_radiomics = any(m.get("inputs", {}).get("radiomics") for m in models.values())
    if needs_radiomics and radiomics_params is None:
        raise ValueError("a bundled model reads radiomics features: pass radiomics_params")
    needs_medsam = any(m.get("inputs", {}).get("medsam") for m in models.values())
    if needs_medsam and medsam is None:
        raise ValueError("a bundled model reads the LiteMedSAM features: pass medsam")
    # the segmenter first: a LiteMedSAM segmenter's encoder serves the medsam model too
    seg_entry = add_segmenter(out, segmenter, roi) if segmenter is not None else None
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "primary_model": "deep",
        "headline_model": headline,
        "reader_column": reader_column,
        "models": models,
        "calibration": {
            "method": "platt-logit",
            "a": a,
            "b": b,
            "fitted_on": "out-of-fold training scores",
        },
        "threshold": float(threshold),
        "threshold_rule": "youden on calibrated out-of-fold training scores",
        "not_exported": {
            n: (configured.get(n) if isinstance(configured, dict) else None) or NOT_EXPORTED
            for n in (configured or [])
            if n not in models
        },
        "radiomics_params": radiomics_params if needs_radiomics else None,
        "medsam": add_medsam_encoder(out, medsam) if needs_medsam else None,
        "segmenter": seg_entry,
        "metrics": metrics or [],
        "provenance": provenance or {},
        "training": training,
        "flags": flags,
        "ood": _save_ood(out, train_features, ood_folds, ood_space)
        if train_features is not None
        else None,
        "ood_frame": _save_ood(out, frame_features, ood_folds, ood_space, OOD_FRAME_FILE)
        if frame_features is not None
        else None,
    }
    atomic_write_json(out / "bundle.json", doc)
    atomic_write_text(out / "model_card.md", model_card or f"# {name}\n")
    if onnx:
        add_onnx(out)
    return out


def _save_ood(
    out: Path, feats: np.ndarray, folds: np.ndarray | None, space: str, name: str = "ood"
) -> dict[str, Any]:
    """Fit :class:`~buscad.bundle.safety.FeatureOOD`, write it (and its encoder) into ``out``."""
    from buscad.bundle.safety import FeatureOOD

    entry = FeatureOOD.fit(feats, folds=folds, space=space).save(out, name)
    if space != "cnn":
        import shutil

        from buscad.bundle.ood_encoder import ENCODER_FILE, SPACE, encoder_path

        if space != SPACE:
            raise ValueError(f"unknown OOD feature space {space!r}")
        shutil.copyfile(encoder_path(), out / ENCODER_FILE)
        entry.update(encoder=ENCODER_FILE, encoder_sha256=file_sha256(out / ENCODER_FILE))
    return entry


def add_ood(
    bundle: str | os.PathLike[str],
    train_features: np.ndarray,
    training: dict | None = None,
    folds: np.ndarray | None = None,
    space: str = "cnn",
    frame_features: np.ndarray | None = None,
) -> dict:
    """Fit the out-of-distribution model on training features and record it in ``bundle.json``.

    :func:`write_bundle` does this when given ``train_features``; this brings an older
    bundle up to date (with ``training``, the record of what it was trained on, when known).

    Returns
    -------
    dict
        The ``ood`` entry of ``bundle.json``.
    """
    out = Path(bundle)
    doc = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    from buscad.bundle.safety import OOD_FRAME_FILE

    doc["ood"] = _save_ood(out, train_features, folds, space)
    if frame_features is not None:
        doc["ood_frame"] = _save_ood(out, frame_features, folds, space, OOD_FRAME_FILE)
    if training is not None:
        doc["training"] = training
    atomic_write_json(out / "bundle.json", doc)
    return doc["ood"]


def add_segmenter(out: Path, segmenter: str | os.PathLike[str], roi: str = "expert") -> dict:
    """Copy a segmenter into ``out/segmenter`` as ONNX + JSON; its ``bundle.json`` entry.

    A segmenter without an ONNX file is exported from its PyTorch weights.
    """
    import shutil

    from buscad.segment.base import JSON_NAME, ONNX_NAME, _sidecar_paths, read_spec
    from buscad.segment.infer import MEDSAM_ARCH, MEDSAM_DIR, add_medsam
    from buscad.utils import file_sha256

    spec = read_spec(segmenter)
    jpath, _, opath = _sidecar_paths(segmenter)
    dest = out / "segmenter"
    dest.mkdir(parents=True, exist_ok=True)
    medsam_only = (spec.get("config") or {}).get("arch") == MEDSAM_ARCH
    if opath.is_file() or medsam_only:
        if opath.is_file():
            shutil.copyfile(opath, dest / ONNX_NAME)
        shutil.copyfile(jpath, dest / JSON_NAME)
    else:
        from buscad.segment.infer import Segmenter

        Segmenter.load(segmenter, backend="torch").export_onnx(dest)
        spec = read_spec(dest)
    entry: dict = {"folder": "segmenter"}
    if (dest / ONNX_NAME).is_file():
        entry["onnx_sha256"] = file_sha256(dest / ONNX_NAME)
    if spec.get("litemedsam") or (jpath.parent / MEDSAM_DIR).is_dir():
        carried = jpath.parent / MEDSAM_DIR
        add_medsam(dest, carry=True, source=carried if carried.is_dir() else None)
        spec = read_spec(dest)
        entry["litemedsam_sha256"] = spec["litemedsam"]["sha256"]
    if (jpath.parent / "detector").is_dir():  # the lesion detector travels with LiteMedSAM
        from buscad.segment.infer import add_detector

        add_detector(dest, jpath.parent / "detector")
        spec = read_spec(dest)
        entry["detector_json_sha256"] = spec["detector"]["json_sha256"]
    training = dict(spec.get("training") or {})
    training.pop("loss", None)
    return {**entry, "training": training, "models_trained_on": roi}


def group_inputs(inputs: list[str]) -> dict[str, Any]:
    """Sort a model's input columns by where they come from at prediction time."""
    from buscad.classical.radscore import RADIOMICS_COLUMNS
    from buscad.segment.medsam_features import COLUMN_PATTERN

    deep = [c for c in inputs if DEEP_FEATURE.match(c)]
    rad = [c for c in inputs if re.match(RADIOMICS_COLUMNS, c) and c not in deep]
    med = [c for c in inputs if re.match(COLUMN_PATTERN, c)]
    rest = [
        c for c in inputs if c not in deep and c not in rad and c not in med and c != DEEP_SCORE
    ]
    return {
        "deep_features": len(deep),
        "deep_score": DEEP_SCORE in inputs,
        "radiomics": rad,
        "medsam": med,
        "clinical": rest,
    }


def add_medsam_encoder(out: Path, folder: str | os.PathLike[str]) -> dict:
    """Copy a converted LiteMedSAM folder's encoder graph to ``out/medsam``; its ``bundle.json`` entry.

    The graph's SHA-256 must match the folder's manifest (checked again when the
    bundle loads). When the bundle's segmenter already carries the same graph
    (``segmenter/litemedsam/encoder.onnx``), the entry names that file and nothing
    is copied. The entry names the graph, its SHA-256 and the version of the
    pooled features (:data:`buscad.segment.medsam_features.FEATURES_VERSION`).
    """
    import shutil

    from buscad.segment.medsam import ENCODER_NAME
    from buscad.segment.medsam_features import FEATURES_VERSION, Encoder
    from buscad.utils import file_sha256

    src = Encoder.from_folder(folder)  # checks the graph against the manifest
    carried = out / "segmenter" / "litemedsam" / ENCODER_NAME
    if carried.is_file() and file_sha256(carried) == src.model_hash:
        rel = carried.relative_to(out).as_posix()
    else:
        (out / "medsam").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.path, out / "medsam" / ENCODER_NAME)
        rel = f"medsam/{ENCODER_NAME}"
    return {
        "encoder": rel,
        "encoder_sha256": src.model_hash,
        "features_version": FEATURES_VERSION,
    }


def add_onnx(bundle: str | os.PathLike[str]) -> dict:
    """Export the bundle's CNN to ``model.onnx`` with its Grad-CAM and record it in ``bundle.json``.

    :func:`write_bundle` calls it; it also brings a bundle written before
    ONNX export existed up to date. When the backbone's Grad-CAM layer is not
    average-pooled into the head (see :mod:`buscad.models.onnx`), nothing is
    exported and the reason is recorded as ``onnx_skipped``.

    Returns
    -------
    dict
        The deep model's entry of ``bundle.json`` after the export.
    """
    from buscad.models.checkpoint import load_checkpoint
    from buscad.models.onnx import export_onnx
    from buscad.utils import file_sha256

    out = Path(bundle)
    doc = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    deep = doc["models"]["deep"]
    model, spec = load_checkpoint(out / deep["checkpoint"])
    for k in ("onnx", "onnx_sha256", "onnx_cam", "onnx_skipped"):
        deep.pop(k, None)
    try:
        f = export_onnx(
            model, out / "model.onnx", int(spec["preprocessing"]["input_size"]), explain=True
        )
        deep.update(onnx=f.name, onnx_sha256=file_sha256(f), onnx_cam="gradcam")
    except ValueError as exc:
        deep["onnx_skipped"] = str(exc)
    atomic_write_json(out / "bundle.json", doc)
    return deep


ENGINES: tuple[str, ...] = ("auto", "onnx", "torch")


def is_computed(column: str) -> bool:
    """Whether a model input is computed from the outline (``morph_*``, mask geometry), never asked."""
    from buscad.data.geometry import GEOMETRY_FEATURES

    return column.startswith("morph_") or column in GEOMETRY_FEATURES


def computed_descriptors(
    mask: np.ndarray, columns: list[str], gray: np.ndarray | None = None
) -> dict[str, Any]:
    """Values of ``columns`` that are computed from the outline (and image), never read.

    ``morph_<field>``: :func:`buscad.segment.morphology.describe` and, with the
    image, :func:`buscad.segment.descriptors.lesion_descriptors`; the audit's
    mask-geometry names (:data:`buscad.data.geometry.GEOMETRY_FEATURES`):
    :func:`buscad.data.geometry.mask_geometry`. Computed by fixed rules, never
    the reader's lexicon. Columns that cannot be computed are left out.
    """
    from buscad.data.geometry import GEOMETRY_FEATURES, mask_geometry
    from buscad.segment.descriptors import DESCRIPTOR_NAMES, lesion_descriptors

    if not mask.any():
        return {}
    d: dict[str, Any] = {}
    morph = [c.removeprefix("morph_") for c in columns if c.startswith("morph_")]
    if any(m not in DESCRIPTOR_NAMES for m in morph):
        from buscad.errors import BuscadError
        from buscad.segment.morphology import describe  # pandas and SciPy: only when asked for

        with contextlib.suppress(BuscadError, ValueError):
            d.update({f"morph_{k}": v for k, v in describe(mask).as_dict().items()})
    if gray is not None and any(m in DESCRIPTOR_NAMES for m in morph):
        d.update({f"morph_{k}": v for k, v in lesion_descriptors(gray, mask).items()})
    if any(c in GEOMETRY_FEATURES for c in columns):
        d.update(mask_geometry(mask))
    return {c: d[c] for c in columns if c in d}


@dataclass
class _Prepared:
    """One image ready for the CNN (:meth:`Bundle._prepare`): what :meth:`Bundle._finish` needs.

    ``mask`` is what the mask-reading models read (the given mask or the segmenter's
    outline; None when a box or the whole image is read).
    """

    gray: np.ndarray
    roi: tuple[int, int, int, int]
    source: str
    mask: np.ndarray | None
    outline: np.ndarray | None
    confidence: float | None
    notes: list[str]
    crop: np.ndarray
    timings: dict[str, float]
    found: bool | None = None
    predicted_dice: float | None = None
    outline_flagged: bool = False
    flag_threshold: float | None = None


class Bundle:
    """A loaded bundle; implements :class:`buscad.bundle.types.Predictor`.

    Use :meth:`load`. ``predict`` is thread-safe (one inference at a time).

    Attributes
    ----------
    engine : str
        ``onnx`` (ONNX Runtime: score and Grad-CAM in one pass, no PyTorch) or
        ``torch`` (the checkpoint with pytorch-grad-cam).
    """

    def __init__(self, path: Path, doc: dict, spec: dict, engine: str, num_threads: int | None):
        from buscad.models.preprocess import Preprocessor

        self.path = path
        self.doc = doc
        self.spec = spec
        self.engine = engine
        self.pre = Preprocessor.from_dict(spec["preprocessing"])
        self.name = str(doc.get("name", path.name))
        self.threshold = float(doc["threshold"])
        self.primary_model = str(doc["primary_model"])
        named = doc.get("headline_model")
        #: the study's headline model (``headline_model`` in bundle.json), else the primary model
        self.headline_model = (
            str(named["model"])
            if isinstance(named, dict) and named.get("model")
            else self.primary_model
        )
        self.classical: dict[str, Any] = {}
        for mname, info in doc["models"].items():
            if mname != "deep":
                from buscad.bundle.portable import load_portable

                self.classical[mname] = load_portable(path / info["file"])
        ne = doc.get("not_exported") or {}
        self.not_exported: dict[str, str] = {
            n: (ne[n] if isinstance(ne, dict) else NOT_EXPORTED)
            for n in ne
            if n not in self.classical
        }
        self.model_names = ["deep", *self.classical, *self.not_exported]
        #: models that read the reader's own BI-RADS (``reads_reader`` in bundle.json)
        self.reader_models: list[str] = [
            n for n, m in doc["models"].items() if isinstance(m, dict) and m.get("reads_reader")
        ]
        # what a user is asked for; outline measures (morph_*, mask geometry) are computed
        self.clinical_inputs: list[str] = list(
            dict.fromkeys(
                c
                for n in self.classical
                for c in doc["models"][n]["inputs"]["clinical"]
                if not is_computed(c)
            )
        )
        self.version = str(doc.get("version"))
        from buscad.bundle.safety import OOD_FRAME_FILE, FeatureOOD, banner, training_text

        #: what the bundle was trained on (None: provenance unknown) and its banner
        self.training: dict | None = doc.get("training")
        self.training_text = training_text(self.training)
        self.banner = banner(self.training)
        #: what the study found broken about the primary model (its calls are withheld)
        self.flags: list[str] = list(doc.get("flags") or [])
        ood = doc.get("ood")
        self.ood = FeatureOOD.load(path, ood.get("sha256")) if ood else None
        frame = doc.get("ood_frame")
        self.ood_frame = (
            FeatureOOD.load(path, frame.get("sha256"), OOD_FRAME_FILE) if frame else None
        )
        self._ood_encoder: Any = None
        if ood and ood.get("encoder"):
            from buscad.bundle.ood_encoder import OODEncoder

            enc = path / ood["encoder"]
            if enc.is_file() and ood.get("encoder_sha256") != file_sha256(enc):
                raise ModelFileError(enc, "SHA-256 does not match bundle.json")
            self._ood_encoder = OODEncoder(enc, num_threads)
        self._lock = threading.Lock()
        self._model: Any = None
        self._onnx: Any = None
        self._radiomics_params: dict | None = None
        self._medsam: Any = None
        self._segmenter: Any = None
        self._num_threads = num_threads
        deep = doc["models"]["deep"]
        if engine == "onnx":
            from buscad.models.onnx import OnnxClassifier

            self._onnx = OnnxClassifier(path / deep["onnx"], num_threads=num_threads)
        else:
            self._model = self._load_torch()

    def _load_torch(self) -> Any:
        from buscad.models.checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.path / self.doc["models"]["deep"]["checkpoint"])
        return model

    @property
    def model(self) -> Any:
        """The PyTorch model (loaded on first use when the engine is ONNX)."""
        if self._model is None:
            self._model = self._load_torch()
        return self._model

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        engine: str = "auto",
        num_threads: int | None = None,
    ) -> Bundle:
        """Load a bundle folder.

        Parameters
        ----------
        engine : {"auto", "onnx", "torch"}
            ``auto``: ONNX Runtime when the bundle has an ONNX model whose
            explanation matches the bundle's and ``onnxruntime`` is installed,
            else PyTorch.
        num_threads : int, optional
            ONNX Runtime intra-op threads.

        Raises
        ------
        ModelFileError
            Not a bundle, an unknown version, missing/corrupt model files (the
            segmenter's included), or ``engine="onnx"`` for a bundle without an ONNX model.
        """
        from buscad.utils import file_sha256, load_versioned_json

        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        p = Path(path)
        f = p / "bundle.json"
        if not f.is_file():
            raise ModelFileError(p, "not a buscad bundle (no bundle.json)")
        doc = load_versioned_json(f, FORMAT, SUPPORTED_VERSIONS, error=ModelFileError)
        deep = doc["models"]["deep"]
        spec_file = (p / deep["checkpoint"]).with_suffix(".json")
        try:
            spec = json.loads(spec_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(spec_file, f"cannot read the model spec ({exc})") from exc
        has_onnx = bool(deep.get("onnx")) and deep.get("onnx_cam") == deep.get("cam", "gradcam")
        if engine == "onnx" and not has_onnx:
            raise ModelFileError(
                p, deep.get("onnx_skipped", "this bundle has no ONNX model of its explanation")
            )
        if engine == "auto":
            import importlib.util

            engine = "onnx" if has_onnx and importlib.util.find_spec("onnxruntime") else "torch"
        if engine == "onnx":
            onnx_file = p / deep["onnx"]
            if not onnx_file.is_file():
                raise ModelFileError(onnx_file, "ONNX model not found")
            if deep.get("onnx_sha256") and file_sha256(onnx_file) != deep["onnx_sha256"]:
                raise ModelFileError(onnx_file, "SHA-256 does not match bundle.json")
        med = doc.get("medsam")
        if med:  # checked now, loaded on first use
            enc = p / med["encoder"]
            if not enc.is_file():
                raise ModelFileError(enc, "LiteMedSAM encoder graph not found")
            if file_sha256(enc) != med.get("encoder_sha256"):
                raise ModelFileError(enc, "SHA-256 does not match bundle.json")
        seg = doc.get("segmenter")
        if seg:  # checked now, loaded on first use (a prediction with a mask never needs it)
            seg_file = p / seg["folder"] / "segmenter.onnx"
            if not seg_file.is_file() and not seg.get("litemedsam_sha256"):
                raise ModelFileError(seg_file, "segmenter ONNX model not found")
            if seg.get("onnx_sha256") and file_sha256(seg_file) != seg["onnx_sha256"]:
                raise ModelFileError(seg_file, "SHA-256 does not match bundle.json")
        return cls(p, doc, spec, engine, num_threads)

    @property
    def has_segmenter(self) -> bool:
        """Whether the bundle carries a lesion segmenter (automatic ROI without a mask)."""
        return bool(self.doc.get("segmenter"))

    @property
    def segmenter(self) -> Any:
        """The bundle's :class:`buscad.segment.Segmenter` (ONNX Runtime; loaded on first use)."""
        if self._segmenter is None and self.has_segmenter:
            from buscad.segment.infer import Segmenter
            from buscad.utils import file_sha256

            info = self.doc["segmenter"]
            folder = self.path / info["folder"]
            onnx_file = folder / "segmenter.onnx"
            if not onnx_file.is_file() and not info.get("litemedsam_sha256"):
                raise ModelFileError(onnx_file, "segmenter ONNX model not found")
            if info.get("onnx_sha256") and file_sha256(onnx_file) != info["onnx_sha256"]:
                raise ModelFileError(onnx_file, "SHA-256 does not match bundle.json")
            checked = info.get("litemedsam_sha256") or {}
            for name, digest in checked.items():
                graph = folder / "litemedsam" / name
                if not graph.is_file() or file_sha256(graph) != digest:
                    raise ModelFileError(
                        graph, "LiteMedSAM graph missing or SHA-256 does not match bundle.json"
                    )
            # hashed once: LiteMedSAM compares its manifest with these digests
            self._segmenter = Segmenter.load(
                folder, backend="onnx", threads=self._num_threads, checked=checked
            )
        return self._segmenter

    def outline(self, gray: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Outline:
        """The segmenter's outline (:class:`~buscad.bundle.types.Outline`).

        It unpacks as ``(mask or None, confidence, note)`` and carries
        ``predicted_dice`` and ``flagged`` (LiteMedSAM outlines). Box-prompted when
        ``box`` is given, else automatic (the most confident candidate); ``mask`` is
        None when no lesion is found, with a note saying so.
        The one outline path: :meth:`predict` reads this outline when no mask is
        given, and the web app's ``POST /api/outline`` shows it to the user first.
        Thread-safe (one inference at a time).
        """
        from buscad.data.io import to_uint8

        with self._lock:
            res = self.segmenter.predict(to_uint8(gray), box=box)
        if not res.found:
            where = "in the box" if box is not None else "in the image"
            return Outline(None, None, f"no lesion found {where} by the segmenter")
        best = res.candidates[0]
        note = None
        if len(res.candidates) > 1:
            note = (
                f"the segmenter found {len(res.candidates)} candidate lesions; the most "
                f"confident ({best.confidence:.2f}) is outlined"
            )
        pd = best.predicted_dice
        return Outline(
            best.mask.astype(bool),
            float(best.confidence),
            note,
            None if pd is None else float(pd),
            bool(best.flagged),
            self.outline_threshold,
        )

    @property
    def outline_threshold(self) -> float | None:
        """The segmenter's flag threshold on the predicted Dice (None: no calibration)."""
        rule = getattr(getattr(self.segmenter, "box_model", None), "confidence", None)
        return None if rule is None else float(rule.threshold)

    def _roi(
        self, gray: np.ndarray, mask: np.ndarray | None, box: tuple[int, int, int, int] | None
    ) -> tuple[tuple[int, int, int, int], str]:
        from buscad.models.preprocess import roi_box

        h, w = gray.shape
        if mask is not None:
            if mask.shape != gray.shape:
                raise MaskError(
                    "<mask>",
                    f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {w}x{h}",
                )
            if not mask.any():
                raise MaskError("<mask>", "mask is empty")
            y0, y1, x0, x1 = roi_box(mask, self.pre.margin)
            return (x0, y0, x1, y1), "mask"
        if box is not None:
            m = np.zeros(gray.shape, bool)
            x0, y0, x1, y1 = (int(v) for v in box)
            m[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = True
            if not m.any():
                raise ValueError("the box lies outside the image")
            y0, y1, x0, x1 = roi_box(m, self.pre.margin)
            return (x0, y0, x1, y1), "box"
        return (0, 0, w, h), "whole"

    def _score_and_cam(
        self, crop: np.ndarray, heatmap: bool
    ) -> tuple[float, np.ndarray | None, np.ndarray]:
        """Raw malignant probability, the CAM (raw or [0, 1]; None without heatmap), deep features."""
        if self.engine == "onnx":
            x = self.pre.to_array(crop[None])
            probs, feats, cam = self._onnx.explain(x)
            return float(probs[0, 1]), (cam[0] if heatmap else None), feats[0]
        import torch

        from buscad.explain.cam import compute_cam

        x = self.pre(crop[None])
        with torch.no_grad():
            raw = float(torch.softmax(self.model(x).float(), 1)[0, 1])
            feats = self.model.features(x).float().numpy()[0]
        if not heatmap:
            return raw, None, feats
        cam = compute_cam(self.model, x, self.doc["models"]["deep"].get("cam", "gradcam"))[0]
        return raw, cam, feats

    def _classical_scores(
        self,
        gray: np.ndarray,
        mask: np.ndarray | None,
        clinical: dict[str, Any],
        raw: float,
        feats: np.ndarray,
    ) -> tuple[dict[str, float | None], dict[str, str], list[dict[str, Any]]]:
        """Each bundled classical/fusion model's P(malignant) or why it did not run, and the inputs.

        The inputs are :func:`buscad.bundle.types.input_sources` of every clinical,
        lexicon and outline column the models read.
        """
        from buscad.bundle.portable import as_table
        from buscad.bundle.types import input_sources

        given = {k: v for k, v in clinical.items() if v is not None and str(v).strip() != ""}
        needs = {n: self.doc["models"][n]["inputs"] for n in self.classical}
        computed = sorted({c for n in needs for c in needs[n]["clinical"] if is_computed(c)})
        values: dict[str, Any] = {}
        if computed and mask is not None:  # computed from the outline, never the reader's
            values = computed_descriptors(mask, computed, gray)
        inputs = input_sources(
            [c for n in needs for c in needs[n]["clinical"]],
            given,
            values,
            computed,
        )
        given = {**values, **given}
        skipped: dict[str, str] = {}
        for name, need in needs.items():
            if need["radiomics"] and mask is None:
                skipped[name] = "needs the lesion mask (radiomics reads its outline and texture)"
            elif mask is None and (
                need.get("medsam") or (need["clinical"] and set(need["clinical"]) <= set(computed))
            ):
                skipped[name] = "needs the lesion outline (a mask, a box or the bundle's segmenter)"
            elif need["clinical"] and not any(c in given for c in need["clinical"]):
                skipped[name] = "needs at least one of its inputs: " + inputs_text(need["clinical"])
        radiomics: dict[str, float] = {}
        if any(needs[n]["radiomics"] for n in needs if n not in skipped):
            try:
                radiomics = self._radiomics(gray, mask)
            except ValueError as exc:
                for n in needs:
                    if needs[n]["radiomics"] and n not in skipped:
                        skipped[n] = f"radiomics failed: {exc}"
        medsam: dict[str, float] = {}
        if any(needs[n].get("medsam") for n in needs if n not in skipped):
            try:
                medsam = self._medsam_features(gray, mask)
            except (ValueError, ModelFileError, MaskError) as exc:
                for n in needs:
                    if needs[n].get("medsam") and n not in skipped:
                        skipped[n] = f"LiteMedSAM features failed: {exc}"
        # one table (column -> value, no pandas) for every model
        row = as_table(
            {
                **dict(zip(self._deep_names(len(feats)), np.asarray(feats).tolist(), strict=True)),
                DEEP_SCORE: raw,
                **given,
                **radiomics,
                **medsam,
            }
        )
        scores = {
            n: None if n in skipped else float(m.predict_proba(row)[0, 1])
            for n, m in self.classical.items()
        }
        return scores, skipped, inputs

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a bundle lives as long as its process
    def _deep_names(self, n: int) -> tuple[str, ...]:
        """``deep_0000`` ... : the deep-feature column names the classical models read."""
        return tuple(f"deep_{j:04d}" for j in range(n))

    def input_choices(self) -> dict[str, list[str]]:
        """The values each categorical input may take: those the bundled models learnt.

        Read from the models themselves (the BI-RADS lexicon encoder's vocabulary,
        ``column=token``; ``missing`` is left out), so the web app offers exactly
        the values a model can use. Inputs not listed are numbers or free text.
        """
        found: dict[str, list[str]] = {}

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if node.get("type") == "lexicon":
                    for v in node.get("vocabulary", []):
                        col, _, tok = str(v).partition("=")
                        if tok and tok != "missing":
                            found.setdefault(col, [])
                            if tok not in found[col]:
                                found[col].append(tok)
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        for m in self.classical.values():
            walk(getattr(m, "spec", None))
        return {c: found[c] for c in self.clinical_inputs if c in found}

    def _radiomics(self, gray: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
        """The radiomics features the bundled models read (only those are computed)."""
        from buscad.radiomics.extract import extract_arrays, restrict_params

        assert mask is not None
        if self._radiomics_params is None:
            cols = {
                c
                for i in self.doc["models"].values()
                for c in i.get("inputs", {}).get("radiomics", [])
            }
            self._radiomics_params = restrict_params(self.doc["radiomics_params"], sorted(cols))
        return extract_arrays(gray, mask, self._radiomics_params)

    def _medsam_features(self, gray: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
        """The ``medsam`` features of the image and outline (the bundle's encoder, ONNX Runtime).

        The encoder is loaded on first use; the embedding is not cached on disk.
        """
        from buscad.segment.medsam_features import Encoder, feature_dict

        assert mask is not None  # checked against the image by _roi
        if self._medsam is None:
            info = self.doc["medsam"]
            self._medsam = Encoder(
                self.path / info["encoder"], info["encoder_sha256"], self._num_threads
            )
        return feature_dict(self._medsam.embed(gray).array, np.asarray(mask, bool))

    def predict(
        self,
        gray: np.ndarray,
        mask: np.ndarray | None = None,
        box: tuple[int, int, int, int] | None = None,
        clinical: dict[str, Any] | None = None,
        heatmap: bool = True,
        auto_roi: bool = True,
    ) -> Prediction:
        """Score one grayscale image.

        A mask wins over a box. Without a mask, a bundle with a segmenter outlines
        the lesion (box-prompted with a box, automatic without; ``auto_roi=False``
        turns this off); otherwise the box, else the whole image, is read.
        """
        prep = self._prepare(gray, mask, box, auto_roi)
        with self._lock:
            t1 = time.perf_counter()
            raw, cam, feats = self._score_and_cam(prep.crop, heatmap)
            prep.timings["model"] = (time.perf_counter() - t1) * 1000
        return self._finish(prep, raw, cam, feats, clinical)

    def _prepare(
        self,
        gray: np.ndarray,
        mask: np.ndarray | None = None,
        box: tuple[int, int, int, int] | None = None,
        auto_roi: bool = True,
    ) -> _Prepared:
        """What :meth:`predict` does before the CNN: 8 bits, the outline (segmenter), ROI, crop.

        Raises the ROI's error (e.g. an empty mask) as :meth:`predict` does.
        """
        from buscad.data.io import to_uint8
        from buscad.models.preprocess import resize

        t0 = time.perf_counter()
        g = to_uint8(gray)
        confidence: float | None = None
        notes: list[str] = []
        outline = None
        timings: dict[str, float] = {}
        checked = Outline(None, None, None)
        if mask is None and auto_roi and self.has_segmenter:
            t = time.perf_counter()
            checked = self.outline(g, box)
            outline, confidence, note = checked
            timings["segment"] = (time.perf_counter() - t) * 1000
            if note and outline is None:
                fallback = "the box" if box is not None else "the whole image"
                note = f"{note}; {fallback} was read"
            if note:
                notes.append(note)
        if outline is not None:
            roi, _ = self._roi(g, outline, None)
            source = "box" if box is not None else "auto"
            read = outline
        else:
            roi, source = self._roi(g, mask, box)
            read = mask if source == "mask" else None
        x0, y0, x1, y1 = roi
        crop = resize(g[y0:y1, x0:x1], self.pre.input_size)
        timings = {"preprocess": (time.perf_counter() - t0) * 1000, **timings}
        found = (outline is not None) if "segment" in timings else None
        return _Prepared(
            g,
            roi,
            source,
            read,
            outline,
            confidence,
            notes,
            crop,
            timings,
            found,
            checked.predicted_dice if outline is not None else None,
            checked.flagged and outline is not None,
            checked.threshold,
        )

    def _finish(
        self,
        prep: _Prepared,
        raw: float,
        cam: np.ndarray | None,
        feats: np.ndarray,
        clinical: dict[str, Any] | None,
    ) -> Prediction:
        """What :meth:`predict` does after the CNN: heatmap, the other models, calibration."""
        from buscad.models.onnx import scale_cam

        g, (x0, y0, x1, y1), timings = prep.gray, prep.roi, prep.timings
        hm = None
        if cam is not None:
            t2 = time.perf_counter()
            hm = np.zeros(g.shape, np.float32)
            hm[y0:y1, x0:x1] = scale_cam(cam, (y1 - y0, x1 - x0))
            timings["heatmap"] = (time.perf_counter() - t2) * 1000
        others: dict[str, float | None] = {}
        skipped: dict[str, str] = {}
        inputs: list[dict[str, Any]] = []
        if self.classical:
            t3 = time.perf_counter()
            others, skipped, inputs = self._classical_scores(
                g, prep.mask, clinical or {}, raw, feats
            )
            timings["classical"] = (time.perf_counter() - t3) * 1000
        skipped.update(self.not_exported)
        cal = self.doc["calibration"]
        p = float(calibrate(raw, cal["a"], cal["b"])[0])
        head, why = self.headline_for(others, skipped)
        models = self.doc["models"]
        score = p if head == "deep" else float(others[head])  # type: ignore[arg-type]
        threshold = self.threshold if head == "deep" else float(models[head]["threshold"])
        t4 = time.perf_counter()
        withhold, soft, ratio = self._cautions(prep, feats, hm, head)
        timings["checks"] = (time.perf_counter() - t4) * 1000
        thresholds = {
            n: float(models[n]["threshold"]) for n in self.classical if "threshold" in models[n]
        }
        return Prediction(
            ai_score=score,
            primary_model=head,
            threshold=threshold,
            decision="malignant" if score >= threshold else "benign",
            band=likelihood_band(score),
            model_scores={"deep": p, **others, **dict.fromkeys(self.not_exported)},
            skipped_models=skipped,
            reader_models=list(self.reader_models),
            roi=(int(x0), int(y0), int(x1), int(y1)),
            roi_source=prep.source,
            roi_confidence=prep.confidence,
            predicted_dice=prep.predicted_dice,
            outline_flagged=prep.outline_flagged,
            notes=prep.notes,
            outline=prep.outline,
            heatmap=hm,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            inputs=inputs,
            cautions=[*withhold, *soft],
            withheld=bool(withhold),
            banner=self.banner,
            training=self.training_text,
            ood_ratio=ratio,
            model_thresholds=thresholds
            if head == "deep"
            else {"deep": self.threshold, **thresholds},
            model_flags={n: list(m["flags"]) for n, m in models.items() if m.get("flags")},
            headline_note=why,
        )

    def headline_for(
        self, scores: dict[str, float | None], skipped: dict[str, str]
    ) -> tuple[str, str | None]:
        """The model giving one image's headline, and why the study's headline model does not.

        The study's headline model (:attr:`headline_model`) when the bundle carries it
        with a threshold and it scored the image (``scores``: the other models'
        probabilities; ``skipped``: why a model did not run), else ``"deep"`` (the
        calibrated CNN) with the reason in words.
        """
        from buscad.labels import model_label

        name = self.headline_model
        if name in ("deep", self.primary_model):
            return "deep", None
        head = f"the study's headline model, the {model_label(name)},"
        if name not in self.classical:
            return "deep", f"{head} is not in this bundle"
        if "threshold" not in self.doc["models"][name]:
            return "deep", f"{head} has no decision threshold in this bundle"
        s = scores.get(name)
        if s is None or not np.isfinite(s):
            why = skipped.get(name)
            return "deep", f"{head} could not score this image" + (f" ({why})" if why else "")
        return name, None

    def _cautions(
        self, prep: _Prepared, feats: np.ndarray, hm: np.ndarray | None, head: str = "deep"
    ) -> tuple[list[str], list[str], float | None]:
        """Why the call is withheld, why it is unreliable (in words), and the OOD ratio.

        Withheld: the headline model ``head`` failed the study's checks (the bundle's
        ``flags`` for the CNN, its own ``flags`` entry for another model), the image is
        outside the training images in feature space (:class:`~buscad.bundle.safety.FeatureOOD`
        ratio > 1), or the segmenter found no lesion in the image. Unreliable: text burned
        in over or near the region read (:func:`buscad.data.quality.text_near`), the
        Grad-CAM peak on text or outside the lesion outline, the whole image read without
        an outline, no lesion found inside the box drawn (the box is read as drawn), or
        the segmenter's outline flagged as poor (predicted Dice below its threshold).
        """
        from buscad.bundle.safety import flagged_outline_text, ood_frame_text, ood_text
        from buscad.data import quality

        withhold: list[str] = []
        soft: list[str] = []
        ratio = None
        flags = self.flags if head == "deep" else self.doc["models"][head].get("flags") or []
        if flags:
            withhold.append("the model failed the study's own checks (" + "; ".join(flags) + ")")
        if self.ood is not None:
            if self._ood_encoder is not None:
                from buscad.bundle.ood_encoder import region

                feats = self._ood_encoder.features(region(prep.gray, prep.roi))
            ratio = self.ood.ratio(feats)
            if ratio > 1.0:
                withhold.append(ood_text(ratio))
        if self.ood_frame is not None and self._ood_encoder is not None and prep.source == "auto":
            from buscad.bundle.ood_encoder import region

            h, w = prep.gray.shape[:2]
            frame = self.ood_frame.ratio(
                self._ood_encoder.features(region(prep.gray, (0, 0, w, h)))
            )
            if frame > 1.0:
                soft.append(ood_frame_text(frame))
        if prep.found is False and prep.source == "box":  # the box drawn is read as drawn
            soft.append("no lesion found in the box by the segmenter: the whole box was read")
        elif prep.found is False:
            withhold.append("no lesion found in the image by the segmenter")
        elif prep.source == "whole":
            soft.append("no lesion was outlined: the whole image was read")
        if prep.outline_flagged and prep.predicted_dice is not None:
            soft.append(flagged_outline_text(prep.predicted_dice, prep.flag_threshold))
        # only the region read and its surroundings are searched for text (cheap per image)
        boxes = quality.text_boxes(prep.gray, None if prep.source == "whole" else prep.roi)
        near = quality.text_near(boxes, prep.roi)
        if near:
            soft.append(
                f"text is burned into the image over or near the region read ({len(near)} "
                "text-like marks): the model may read the text"
            )
        if hm is not None:
            peak = quality.heat_peak(hm)
            if quality.peak_on_text(peak, boxes):
                soft.append("the Grad-CAM peak lies on burned-in text, not on tissue")
            elif prep.mask is not None:
                x0, y0, x1, y1 = prep.roi
                pad = max(2, int(0.05 * max(x1 - x0, y1 - y0)))
                if quality.peak_outside(peak, prep.mask, pad):
                    soft.append("the Grad-CAM peak lies outside the lesion outline")
        return withhold, soft, ratio
