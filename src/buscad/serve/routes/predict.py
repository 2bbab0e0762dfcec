"""The open case screen's API: ``/api/preview``, ``/api/outline``, ``/api/predict``,
``/api/heatmap``, ``/api/report``.

The screen is off while a reader study is served, unless the server runs with
``--open-case-screen``; then every route here needs the organiser's token
(:func:`~buscad.serve.routes.auth.case_screen_state`). Each reads one multipart upload
(:meth:`AppState.read_form`), decodes it on the bounded
decode pool and runs the predictor on the inference pool; nothing is stored.
"""

from __future__ import annotations

import json

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from buscad.serve import imaging
from buscad.serve.imaging import UploadError
from buscad.serve.report import render_html, render_pdf
from buscad.serve.routes.auth import CaseScreen
from buscad.serve.routes.state import (
    OUTLINE_SCHEMA,
    UPLOAD_SCHEMA,
    _b64,
    _clean,
    _no_store,
    parse_exam,
)

router = APIRouter(tags=["predict"])


@router.post("/api/preview", openapi_extra=UPLOAD_SCHEMA)
async def preview(request: Request, state: CaseScreen) -> Response:
    """The uploaded image as a de-identified 8-bit PNG (pixels only; DICOM headers dropped).

    Warnings about the image (e.g. possible burned-in patient text) come in the
    ``X-Buscad-Warnings`` header as a JSON list.
    """
    form = await state.read_form(request)
    img = await state.run_decode(imaging.decode_image, form.image, state.max_bytes)
    png = await anyio.to_thread.run_sync(imaging.gray_png, img.gray)
    warn = json.dumps(list(img.warnings), ensure_ascii=True)
    return Response(png, media_type="image/png", headers={**_no_store(), "X-Buscad-Warnings": warn})


@router.post("/api/outline", openapi_extra=OUTLINE_SCHEMA)
async def outline(request: Request, state: CaseScreen) -> JSONResponse:
    """The bundle's automatic lesion outline: what the models would read.

    Without ``box`` the segmenter looks at the whole image (automatic mode, the most
    confident candidate); with ``box`` it outlines the lesion inside it
    (box-prompted). The same outline ``/api/predict`` reads when no mask is given
    (:meth:`buscad.bundle.Bundle.outline`). ``found`` is false ("no lesion found")
    when there is none. Otherwise: ``polygons`` (outer contours, ``[[x, y], ...]``
    in image pixels), ``box`` (the outline's ``x0,y0,x1,y1``), ``confidence`` (mean
    lesion probability inside it, or LiteMedSAM's IoU-head estimate),
    ``predicted_dice`` (calibrated, LiteMedSAM outlines; else null),
    ``outline_flagged`` (predicted Dice below ``flag_threshold``: the app asks the
    user to check or redraw the outline before Analyse), ``mask_png`` (base64 binary PNG of the image's
    size) and ``outline_token``. To analyse the outline the user accepted, send
    ``mask_png`` as ``mask`` with ``outline_token`` to ``/api/predict`` or
    ``/api/report``: the result records it as the segmenter's outline accepted by
    the user. 409 when the bundle has no segmenter.
    """
    import time

    state.require_outline()
    form = await state.read_form(request)
    img = await state.run_decode(imaging.decode_image, form.image, state.max_bytes)
    box = imaging.parse_box(form.box, img.shape)
    t0 = time.perf_counter()
    res = await state.run_outline(img.gray, box)
    mask, confidence, note = res
    seg_ms = (time.perf_counter() - t0) * 1000
    mode = "box" if box is not None else "auto"
    h, w = img.shape
    d: dict = {
        "found": mask is not None,
        "mode": mode,
        "prompt_box": list(box) if box is not None else None,
        "confidence": None,
        "predicted_dice": None,
        "outline_flagged": False,
        "flag_threshold": getattr(res, "threshold", None),
        "box": None,
        "area_px": 0,
        "polygons": [],
        "mask_png": None,
        "outline_token": None,
        "note": note,
        "image": {"width": w, "height": h, "format": img.format},
        "warnings": list(img.warnings),
        "timings_ms": {"segment": round(seg_ms, 2)},
    }
    if mask is not None:
        ys, xs = mask.nonzero()
        polys, png = await anyio.to_thread.run_sync(
            lambda: (imaging.outline_polygons(mask), imaging.mask_png(mask))
        )
        conf = float(confidence) if confidence is not None else 0.0
        d.update(
            confidence=conf,
            predicted_dice=getattr(res, "predicted_dice", None),
            outline_flagged=bool(getattr(res, "flagged", False)),
            box=[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            area_px=int(mask.sum()),
            polygons=polys,
            mask_png=_b64(png),
            outline_token=state.outline_token(
                img.gray,
                mask,
                mode,
                conf,
                getattr(res, "predicted_dice", None),
                bool(getattr(res, "flagged", False)),
            ),
        )
    return JSONResponse(_clean(d), headers=_no_store())


@router.post("/api/predict", openapi_extra=UPLOAD_SCHEMA)
async def predict(request: Request, state: CaseScreen) -> JSONResponse:
    """Score one image: AI score, threshold, decision, likelihood band, model scores.

    The region read is the mask if given, else the box, else the whole image
    (``roi_source``; ``roi_note`` says so). With ``heatmap`` (default) the
    response carries ``heatmap_png``: a base64 RGBA PNG to stack over the image.
    ``warnings`` lists concerns about the image (e.g. burned-in patient text).
    """
    form = await state.read_form(request)
    img, pred = await state.predict_upload(form)
    d = state.prediction_json(pred, img)
    if pred.heatmap is not None:
        png = await anyio.to_thread.run_sync(imaging.heatmap_png, pred.heatmap)
        d["heatmap_png"] = _b64(png)
    else:
        d["heatmap_png"] = None
    return JSONResponse(d, headers=_no_store())


@router.post("/api/heatmap", openapi_extra=UPLOAD_SCHEMA)
async def heatmap(request: Request, state: CaseScreen) -> Response:
    """The Grad-CAM heatmap as an RGBA PNG (image size; transparent outside the region)."""
    form = await state.read_form(request)
    _, pred = await state.predict_upload(form, heatmap=True)
    if pred.heatmap is None:
        raise HTTPException(422, "the model gave no heatmap for this image")
    png = await anyio.to_thread.run_sync(imaging.heatmap_png, pred.heatmap)
    return Response(png, media_type="image/png", headers=_no_store())


@router.post("/api/report", openapi_extra=UPLOAD_SCHEMA)
async def report(request: Request, state: CaseScreen, format: str = "html") -> Response:
    """One-page case report as HTML (``format=html``) or PDF (``format=pdf``).

    ``exam`` (form field): the exam or accession number the user typed, printed on
    the report; it is never read from the DICOM header. Nothing is stored on the
    server: the report is the response.
    """
    if format not in ("html", "pdf"):
        raise UploadError(422, f"format must be html or pdf, got {format[:20]!r}")
    form = await state.read_form(request)
    exam = parse_exam(form.fields.get("exam"))
    img, pred = await state.predict_upload(form, heatmap=True)
    ctx = state.report_ctx(img, exam)
    stamp = ctx.created_at.strftime("%Y%m%d-%H%M%S")
    if format == "pdf":
        body = await anyio.to_thread.run_sync(render_pdf, pred, img.gray, ctx)
        media = "application/pdf"
    else:
        body = (await anyio.to_thread.run_sync(render_html, pred, img.gray, ctx)).encode()
        media = "text/html; charset=utf-8"
    headers = {
        "Content-Disposition": f'attachment; filename="buscad-report-{stamp}.{format}"',
        **_no_store(),
    }
    return Response(body, media_type=media, headers=headers)
