"""Model checkpoints: safetensors weights plus a JSON spec. Loading never unpickles.

A checkpoint ``STEM`` is two files:

``STEM.safetensors``
    The model's ``state_dict`` (bit-exact tensors).
``STEM.json``
    ``format``, ``version``, ``backbone`` (the registry spec), ``head``,
    ``preprocessing`` (a :class:`buscad.models.preprocess.Preprocessor`), ``class_order``,
    ``provenance`` (initial weights, training data, seed, software versions) and
    the SHA-256 of the weights file, checked on load.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import buscad._compat  # noqa: F401
from buscad.errors import ModelFileError
from buscad.models.heads import CLASS_ORDER, BuscadClassifier
from buscad.models.preprocess import Preprocessor
from buscad.utils import atomic_path, atomic_write_json, file_sha256, load_versioned_json

FORMAT = "buscad-classifier"
VERSION = 1


def _stem(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def software_versions() -> dict:
    """Versions recorded in provenance."""
    import buscad

    return {
        "buscad": buscad.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    model: BuscadClassifier,
    path_stem: str | os.PathLike[str],
    spec_json: dict | None = None,
    preprocessor: Preprocessor | None = None,
) -> Path:
    """Write ``STEM.safetensors`` and ``STEM.json``; returns the JSON path.

    Parameters
    ----------
    model : BuscadClassifier
        Built by :func:`buscad.models.registry.create_backbone`.
    path_stem : path-like
        Output path without suffix (a ``.json``/``.safetensors`` suffix is dropped).
    spec_json : dict, optional
        Extra fields merged into the JSON (e.g. ``{"provenance": {...}}``; a
        ``provenance`` dict is merged into the default one).
    preprocessor : Preprocessor, optional
        Default: the backbone's input size and normalisation, ROI mode.
    """
    from buscad.models.registry import get_spec

    stem = _stem(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    spec = get_spec(model.name)
    if preprocessor is None:
        preprocessor = Preprocessor(input_size=spec.input_size, mean=spec.mean, std=spec.std)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    wpath = stem.with_suffix(".safetensors")
    with atomic_path(wpath) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    extra = dict(spec_json or {})
    prov = {
        "initial_weights": getattr(model, "weights_provenance", {"weights": "unknown"}),
        "software": software_versions(),
    }
    prov.update(extra.pop("provenance", {}))
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": spec.to_dict(),
        "head": model.head.config(),
        "preprocessing": preprocessor.to_dict(),
        "class_order": list(CLASS_ORDER),
        "score": "softmax probability of 'malignant' (class index 1)",
        "provenance": prov,
        "weights_file": wpath.name,
        "weights_sha256": file_sha256(wpath),
    }
    doc.update(extra)
    return atomic_write_json(stem.with_suffix(".json"), doc)


def read_spec(path: str | os.PathLike[str]) -> dict:
    """The JSON spec of a checkpoint (validated: format and version, as every versioned file)."""
    jpath = _stem(path).with_suffix(".json")
    if not jpath.is_file():
        raise ModelFileError(jpath, "checkpoint spec (JSON) not found")
    return load_versioned_json(jpath, FORMAT, (VERSION,), error=ModelFileError)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str = "cpu", verify: bool = True
) -> tuple[BuscadClassifier, dict]:
    """Rebuild a model from ``STEM.json`` + ``STEM.safetensors``.

    Returns
    -------
    model : BuscadClassifier
        In eval mode, on ``map_location``.
    spec : dict
        The JSON document; ``Preprocessor.from_dict(spec["preprocessing"])`` gives
        the preprocessing.

    Raises
    ------
    ModelFileError
        Missing/corrupt files, a SHA-256 mismatch, or weights that do not fit.
    """
    from buscad.models.registry import create_backbone

    doc = read_spec(path)
    stem = _stem(path)
    wpath = stem.parent / doc.get("weights_file", stem.with_suffix(".safetensors").name)
    if not wpath.is_file():
        raise ModelFileError(wpath, "checkpoint weights not found")
    if verify and doc.get("weights_sha256") and file_sha256(wpath) != doc["weights_sha256"]:
        raise ModelFileError(wpath, "weights SHA-256 does not match the checkpoint spec")
    head = doc["head"]
    bb = doc["backbone"]
    model = create_backbone(
        bb["name"],
        pretrained=None,
        num_classes=head["num_classes"],
        input_size=doc["preprocessing"]["input_size"] if bb.get("reshape") == "vit" else None,
        hidden=head["hidden"],
        dropout=head["dropout"],
    )
    try:
        state = load_file(str(wpath), device=map_location)
    except Exception as exc:
        raise ModelFileError(
            wpath, f"unreadable safetensors ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(wpath, f"weights do not fit {bb['name']}: {str(exc)[:200]}") from exc
    model.weights_provenance = doc.get("provenance", {}).get("initial_weights", {})
    return model.to(map_location).eval(), doc


# ------------------------------------------------------- resumable training state
def save_training_state(path: str | os.PathLike[str], tensors: dict, meta: dict) -> None:
    """Write resumable training state: ``PATH.safetensors`` (tensors) + ``PATH.json`` (rest)."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    atomic_write_json(stem.with_suffix(".json"), meta)


def load_training_state(path: str | os.PathLike[str]) -> tuple[dict, dict] | None:
    """Inverse of :func:`save_training_state`; None when absent."""
    import json

    stem = _stem(path)
    j, w = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if not (j.is_file() and w.is_file()):
        return None
    try:
        return dict(load_file(str(w))), json.loads(j.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ModelFileError(w, f"unreadable training state ({type(exc).__name__})") from exc


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as flat tensors (``opt.<param>.<key>``) plus JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in meta["scalars"].items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


__all__ = [
    "FORMAT",
    "load_checkpoint",
    "load_training_state",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "read_spec",
    "save_checkpoint",
    "save_training_state",
]
