"""The HTML pages: the open case screen, the reader-study page, the API docs, static files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from buscad.serve.routes.state import AppState, get_state

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index(state: Annotated[AppState, Depends(get_state)]) -> Response:
    if not state.case_screen:
        return RedirectResponse("/reader", status_code=303)
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/docs", include_in_schema=False)
async def docs() -> Response:
    """Swagger UI 5 from local files (the fastapi-offline package's copy); no CDN."""
    if swagger_ui_dir() is None:  # pragma: no cover
        raise HTTPException(404, "API docs need the fastapi-offline package; see /openapi.json")
    return FileResponse(STATIC_DIR / "docs.html")


@router.get("/reader", include_in_schema=False)
async def reader_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "reader.html")


def mount_static(app: FastAPI) -> None:
    """Serve ``/static`` (the app's pages' JS and CSS) and ``/docs-assets`` (Swagger UI)."""
    swagger = swagger_ui_dir()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=str(swagger)), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's JS and CSS shipped by ``fastapi-offline`` (None if absent).

    Located without importing the package. Swagger UI 5 reads OpenAPI 3.1, which
    FastAPI writes (the ``swagger-ui-bundle`` package's Swagger UI 4 cannot).
    """
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None
