"""App information: ``/api/health`` and ``/api/info``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from buscad import __version__
from buscad.serve.routes.state import (
    OUTLINE_UNAVAILABLE,
    WHOLE_IMAGE_NOTE,
    AppState,
    _bundle_version,
    _note,
    get_state,
)

router = APIRouter(tags=["app"])


@router.get("/api/health")
async def health() -> dict[str, Any]:
    """Liveness check."""
    return {"status": "ok"}


def input_fields(predictor: Any) -> list[dict[str, Any]]:
    """What the case screen asks for: each clinical/lexicon input with its label and choices.

    ``choices`` are the values the bundled models learnt for a categorical input
    (``predictor.input_choices()``, e.g. the lexicon's shapes); the radiologist's
    BI-RADS offers the manifest contract's categories when no model lists them.
    ``choices`` is None for a number (``age``) or free text.
    """
    from buscad.labels import input_label

    learnt = predictor.input_choices() if hasattr(predictor, "input_choices") else {}
    out = []
    for name in predictor.clinical_inputs:
        choices = learnt.get(name)
        if choices is None and name == "birads":
            from buscad.data.manifest import BIRADS_CATEGORIES

            choices = [c for c in BIRADS_CATEGORIES if c != "0"]
        out.append(
            {
                "name": name,
                "label": input_label(name),
                "choices": None if choices is None else [str(c) for c in choices],
            }
        )
    return out


@router.get("/api/info")
async def info(state: Annotated[AppState, Depends(get_state)]) -> dict[str, Any]:
    """The bundle served, its threshold and models, the inputs it asks for, and the app's limits.

    ``models`` gives each model's plain label and description (the short name is
    ``name``); ``inputs`` each clinical/lexicon input's label and allowed values
    (:func:`input_fields`); ``outline_available`` whether the bundle outlines the
    lesion itself (``POST /api/outline``), else ``outline_note`` says why not.
    ``banner`` is the phantom banner (None for a bundle trained on real images),
    ``training`` what the bundle was trained on, ``flags`` what the study found
    broken about its CNN and ``flags_text`` what that means for its calls
    (:func:`buscad.bundle.safety.flags_text`). ``headline_model`` is the
    model that gives the AI assessment when it can score an image (the study's headline
    model, else ``primary_model``, the CNN, which gives it otherwise).
    """
    from buscad.bundle.safety import flags_text
    from buscad.labels import model_description, model_label

    predictor = state.predictor
    return {
        "buscad_version": __version__,
        "bundle": {"name": predictor.name, "version": _bundle_version(predictor)},
        # what every screen shows first about the bundle (docs/safety.md)
        "banner": getattr(predictor, "banner", None),
        "training": getattr(predictor, "training_text", None),
        "flags": list(getattr(predictor, "flags", []) or []),
        "flags_text": flags_text(
            getattr(predictor, "flags", []) or [],
            getattr(predictor, "headline_model", predictor.primary_model),
        ),
        "threshold": float(predictor.threshold),
        "primary_model": predictor.primary_model,
        "headline_model": getattr(predictor, "headline_model", predictor.primary_model),
        "model_names": list(predictor.model_names),
        "models": [
            {"name": n, "label": model_label(n), "description": model_description(n)}
            for n in predictor.model_names
        ],
        "clinical_inputs": list(predictor.clinical_inputs),
        "inputs": input_fields(predictor),
        "max_upload_mb": state.max_upload_mb,
        "reader_study": state.study_path is not None,
        "case_screen": state.case_screen,
        "decision_support_note": _note(),
        "whole_image_note": WHOLE_IMAGE_NOTE,
        "outline_available": state.outline_available,
        "outline_note": None if state.outline_available else OUTLINE_UNAVAILABLE,
    }
