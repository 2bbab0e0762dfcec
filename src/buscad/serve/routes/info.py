"""App information: ``/api/health`` and ``/api/info``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from buscad import __version__
from buscad.serve.routes.state import WHOLE_IMAGE_NOTE, AppState, _bundle_version, _note, get_state

router = APIRouter(tags=["app"])


@router.get("/api/health")
async def health() -> dict[str, Any]:
    """Liveness check."""
    return {"status": "ok"}


@router.get("/api/info")
async def info(state: Annotated[AppState, Depends(get_state)]) -> dict[str, Any]:
    """The bundle served, its threshold and models, and the app's limits."""
    predictor = state.predictor
    return {
        "buscad_version": __version__,
        "bundle": {"name": predictor.name, "version": _bundle_version(predictor)},
        "threshold": float(predictor.threshold),
        "primary_model": predictor.primary_model,
        "model_names": list(predictor.model_names),
        "clinical_inputs": list(predictor.clinical_inputs),
        "max_upload_mb": state.max_upload_mb,
        "reader_study": state.study_path is not None,
        "case_screen": state.case_screen,
        "decision_support_note": _note(),
        "whole_image_note": WHOLE_IMAGE_NOTE,
    }
