"""The reader-study API under ``/api/study``: create, enrol, sessions, cases, reads, export.

Every route but ``GET /api/study`` needs a study token (``Authorization: Bearer``): the
organiser's, or a reader's own, which acts for that reader only. A route declares who may
call it by the type of its ``access`` parameter (:data:`~buscad.serve.routes.auth.Organiser`,
:data:`~buscad.serve.routes.auth.OwnReader`, ...): one dependency,
:func:`~buscad.serve.routes.auth.authenticated`, opens the study and checks the token
before the route runs. Manifests are chosen by name inside the server's ``study_dir``,
never by a client path. Store calls run in a worker thread (:func:`in_thread`), which also
maps the store's errors to 404/409/422.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field, StrictInt

from buscad.bundle.types import Prediction
from buscad.errors import BuscadError, InputFileError
from buscad.serve import imaging
from buscad.serve.routes.auth import (
    AnyToken,
    Credentials,
    Organiser,
    OrganiserBeforeStudy,
    OwnReader,
    OwnReaderOrOrganiser,
    identify,
    prepared,
    study,
)
from buscad.serve.routes.state import AppState, _no_store, get_state

log = logging.getLogger("buscad.serve")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

router = APIRouter(tags=["reader study"])
State = Annotated[AppState, Depends(get_state)]


def _reader_id(value: str) -> str:
    from buscad.reader.store import valid_reader_id

    if not valid_reader_id(value):
        raise ValueError(
            "reader id must be a pseudonym of 1-64 letters, digits, '_', '.', '-' (e.g. R01)"
        )
    return value


#: A reader pseudonym, checked with ``re.fullmatch`` (a trailing newline is refused).
ReaderId = Annotated[
    str,
    Field(max_length=64, description="Pseudonym, e.g. R01 (never a name)"),
    AfterValidator(_reader_id),
]


class StudyCreate(BaseModel):
    """Organiser's request to create the reader study."""

    manifest: str = Field(
        ...,
        max_length=128,
        description="Manifest file NAME in the server's study folder (--study-dir), not a path",
    )
    washout_days: float = Field(
        14.0, ge=0, le=3650, allow_inf_nan=False, description="Days between rounds 1 and 2"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Study seed for the readers' case orders")
    readers: list[ReaderId] = Field(
        default_factory=list, max_length=200, description="Reader pseudonyms to enrol"
    )


class ReaderRequest(BaseModel):
    """The organiser enrolling a reader or renewing their token."""

    reader_id: ReaderId


class SessionRequest(BaseModel):
    """A reader opening (or resuming) their session (the reader comes from the token)."""

    reader_id: ReaderId | None = Field(None, description="Optional; must be the token's reader")


class ReadRequest(BaseModel):
    """One read submitted by a reader."""

    case_id: str = Field(..., min_length=1, max_length=128)
    round: StrictInt = Field(..., ge=1, le=2, description="1 = without AI, 2 = with AI")
    birads: str = Field(..., max_length=8, description="BI-RADS category: 1, 2, 3, 4a, 4b, 4c or 5")
    confidence: float | None = Field(
        None,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Reader's probability of malignancy 0-100 (optional)",
    )
    client_time_s: float | None = Field(
        None, description="Seconds from the case being shown to submission, measured in the browser"
    )


# ------------------------------------------------------------ helpers
async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    from buscad.reader.store import (
        DuplicateReadError,
        ReaderStudyError,
        RoundNotOpenError,
    )

    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except DuplicateReadError as exc:
        raise HTTPException(409, str(exc)) from exc
    except RoundNotOpenError as exc:
        raise HTTPException(409, str(exc)) from exc
    except ReaderStudyError as exc:
        msg = str(exc)
        raise HTTPException(404 if msg.startswith("unknown reader") else 422, msg) from exc
    except InputFileError as exc:  # a study image or mask went missing on the server
        log.warning("study case could not be read: %s", exc.problem)
        raise HTTPException(
            500, "a study case could not be read on the server; the organiser can check the log"
        ) from exc


def reader_state(st: Any, rid: str) -> dict[str, Any]:
    p = st.progress(rid)
    if p.round1_done < p.n_cases:
        status, rnd = "round1", 1
    elif p.round2_done >= p.n_cases:
        status, rnd = "done", None
    elif p.round2_open:
        status, rnd = "round2", 2
    else:
        status, rnd = "washout", None
    return {**p.as_dict(), "status": status, "round": rnd}


def link(request: Request, token: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/reader#token={token}"


def manifest_file(state: AppState, name: str) -> Path:
    """The manifest NAME inside --study-dir (never a client path)."""
    if state.study_dir is None:
        raise HTTPException(
            404, "creating a study from the web needs `buscad serve --study-dir DIR`"
        )
    if not _NAME_RE.fullmatch(name):
        raise HTTPException(
            422,
            "manifest must be a file name in the server's study folder "
            "(letters, digits, '_', '.', '-'; at most 128), not a path",
        )
    root = state.study_dir.resolve()
    if not _is_manifest(root, name):
        raise HTTPException(404, f"no manifest named {name!r} in the study folder")
    return root / name


def _is_manifest(root: Path, name: str) -> bool:
    """Whether ``root / name`` is a regular file inside ``root`` (resolved; not a symlink).

    The one rule of both the listing and the creation of a study: a symlink is
    never listed nor used, wherever it points.
    """
    p = root / name
    try:
        return (
            _NAME_RE.fullmatch(name) is not None
            and not p.is_symlink()
            and p.is_file()
            and p.resolve().parent == root
        )
    except OSError:
        return False


@router.get("/api/study")
async def study_info(
    state: State,
    request: Request,
    cred: Credentials,
) -> dict[str, Any]:
    """Whether a study exists; with the organiser's token, the study and every reader's progress."""
    if state.study_path is None:
        return {"enabled": False, "exists": False}

    def get() -> dict[str, Any]:
        st = prepared(state)
        out: dict[str, Any] = {
            "enabled": True,
            "exists": st.has_study(),
            "create_from_web": state.study_dir is not None,
        }
        if cred is None:
            return out
        who = identify(st, cred)
        out["role"] = who.role
        if who.role == "reader":
            out["reader_id"] = who.reader_id
        if not who.is_organiser or not out["exists"]:
            return out
        st = study(state)
        inf = st.info()
        return {
            **out,
            "study_id": inf["id"],
            "n_cases": int(inf["n_cases"]),
            "washout_days": float(inf["washout_days"]),
            "created_at": inf["created_at"],
            "readers": [reader_state(st, r) for r in st.readers()],
        }

    return await in_thread(get)


@router.get("/api/study/manifests")
async def study_manifests(state: State, access: OrganiserBeforeStudy) -> dict[str, Any]:
    """Manifest names in the server's study folder (organiser)."""

    def names() -> dict[str, Any]:
        if state.study_dir is None:
            return {"manifests": []}
        root = state.study_dir.resolve()
        found = sorted(
            p.name
            for p in root.iterdir()
            if p.suffix in (".csv", ".parquet") and _is_manifest(root, p.name)
        )
        return {"manifests": found}

    return await in_thread(names)


@router.post("/api/study", status_code=201)
async def study_create(
    state: State,
    req: StudyCreate,
    request: Request,
    access: OrganiserBeforeStudy,
) -> dict[str, Any]:
    """Create the study from a manifest NAME in the server's study folder (organiser).

    Each reader listed gets a token, returned here once.
    """
    from buscad.reader.store import ReaderStudy, ReaderStudyError

    def create() -> dict[str, Any]:
        path = manifest_file(state, req.manifest)
        try:
            st = ReaderStudy.create(
                state.study_path,  # type: ignore[arg-type]
                path,
                washout_days=req.washout_days,
                seed=req.seed,
                clock=state.study_clock,
            )
        except ReaderStudyError as exc:
            if "already holds" in str(exc):
                raise HTTPException(409, "the study database already holds a study") from exc
            log.warning("study not created: %s", exc)
            raise HTTPException(
                422, f"manifest {req.manifest!r} cannot make a study (no usable case)"
            ) from exc
        except BuscadError as exc:
            log.warning("study not created: %s", exc)
            raise HTTPException(
                422,
                f"manifest {req.manifest!r} is not a valid manifest; check it on the server "
                "with `buscad audit`",
            ) from exc
        tokens = {}
        for rid in req.readers:
            st.add_reader(rid)
            tok = st.issue_reader_token(rid)
            tokens[rid] = {"token": tok, "link": link(request, tok)}
        return {
            "study_id": st.study_id,
            "n_cases": len(st.case_ids()),
            "readers": st.readers(),
            "tokens": tokens,
        }

    return await in_thread(create)


@router.post("/api/study/readers", status_code=201)
async def enrol(req: ReaderRequest, request: Request, access: Organiser) -> dict[str, Any]:
    """Enrol a reader (if new) and issue their token, shown once; an old token stops working."""

    def issue() -> dict[str, Any]:
        st = access.study
        new = req.reader_id not in st.readers()
        if new:
            st.add_reader(req.reader_id)
        tok = st.issue_reader_token(req.reader_id)
        return {
            "reader_id": req.reader_id,
            "new": new,
            "token": tok,
            "link": link(request, tok),
        }

    return await in_thread(issue)


@router.delete("/api/study/readers/{reader_id}/token")
async def revoke(reader_id: str, access: Organiser) -> dict[str, Any]:
    """Revoke a reader's token (organiser); their reads are kept."""

    def rv() -> dict[str, Any]:
        return {"reader_id": reader_id, "revoked": access.study.revoke_reader_token(reader_id)}

    return await in_thread(rv)


@router.post("/api/study/sessions")
async def session(access: AnyToken, req: SessionRequest | None = None) -> dict[str, Any]:
    """Open or resume the session of the token's reader."""

    def open_session() -> dict[str, Any]:
        st, who = access.study, access.who
        if who.role != "reader":
            raise HTTPException(403, "a reader's session needs that reader's token")
        if req is not None and req.reader_id is not None and req.reader_id != who.reader_id:
            raise HTTPException(403, "a reader's token acts for that reader only")
        rid = str(who.reader_id)
        return {"reader_id": rid, **reader_state(st, rid)}

    return await in_thread(open_session)


@router.get("/api/study/readers/{reader_id}")
async def reader_progress(reader_id: str, access: OwnReaderOrOrganiser) -> dict[str, Any]:
    """A reader's progress and which round is open (that reader or the organiser)."""
    return await in_thread(reader_state, access.study, reader_id)


def load_case(
    state: AppState, st: Any, case_id: str
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...], dict[str, Any]]:
    """A study case: its image, mask, image warnings and the manifest row's model inputs.

    The inputs are the clinical and lexicon columns the served models read
    (``predictor.clinical_inputs``) that the manifest row has, as ``buscad predict
    --manifest`` pairs them, so round 2 shows the models that have their inputs.
    """
    from buscad.bundle.batch import row_inputs
    from buscad.data.io import burned_in_warning, read_image, read_mask
    from buscad.data.manifest import Manifest

    if case_id not in set(st.case_ids()):
        raise HTTPException(404, "this case is not in the study")
    hit = state.cases.get(("img", case_id))
    if hit is not None:
        return hit
    man = state.cases.get(("manifest", str(st.manifest_path)))
    if man is None:
        man = Manifest.load(st.manifest_path)
        state.cases.put(("manifest", str(st.manifest_path)), man)
    idx = int(np.flatnonzero(man.df["image_id"].astype(str).to_numpy() == case_id)[0])
    gray, meta = read_image(man.image_path(idx))
    mpaths = man.mask_paths(idx)
    mask = read_mask(mpaths, gray.shape) if mpaths else None
    if mask is not None and not mask.any():
        mask = None
    warn = burned_in_warning(gray, meta)
    inputs = row_inputs(man.df, idx, list(getattr(state.predictor, "clinical_inputs", [])))
    out = (gray, mask, (warn,) if warn else (), inputs)
    state.cases.put(("img", case_id), out)
    return out


def case_prediction(state: AppState, st: Any, case_id: str) -> Prediction:
    hit = state.cases.get(("pred", case_id))
    if hit is not None:
        return hit
    gray, mask, _, inputs = load_case(state, st, case_id)
    pred = state.predict_blocking(gray=gray, mask=mask, clinical=inputs or None, heatmap=True)
    state.cases.put(("pred", case_id), pred)
    return pred


def case_outline(state: AppState, st: Any, case_id: str, pred: Prediction) -> dict[str, Any] | None:
    """The region the models read in round 2, as polygons: the manifest's mask, else the
    segmenter's outline (None when the models read a box or the whole image).

    Only ever sent with the AI result (round 2), never in round 1.
    """
    _, mask, _, _ = load_case(state, st, case_id)
    region = mask if mask is not None else pred.outline
    if region is None or not region.any():
        return None
    return {
        "source": pred.roi_source,
        "confidence": pred.roi_confidence,
        "text": pred.roi_text,
        "polygons": imaging.outline_polygons(region),
    }


@router.get("/api/study/readers/{reader_id}/next")
async def next_case(state: State, reader_id: str, access: OwnReader) -> dict[str, Any]:
    """The reader's next case in their random order (round 2 carries the AI result).

    ``case`` is null when nothing is open: round 1 and 2 done, or the washout
    is running (``status`` says which and ``round2_opens_at`` when).
    """

    def nxt() -> dict[str, Any]:
        st = access.study
        progress = reader_state(st, reader_id)
        if progress["round"] is None:
            return {**progress, "case": None}
        rnd = int(progress["round"])
        cid = st.next_case(reader_id, rnd)
        if cid is None:  # pragma: no cover - progress says otherwise
            return {**progress, "case": None}
        done = progress["round1_done"] if rnd == 1 else progress["round2_done"]
        _, _, warnings, _ = load_case(state, st, cid)
        case: dict[str, Any] = {
            "case_id": cid,
            "round": rnd,
            "position": done + 1,
            "n_cases": progress["n_cases"],
            "image_url": f"/api/study/cases/{cid}/image.png",
            "warnings": list(warnings),
            "ai": None,
        }
        if rnd == 2:
            pred = case_prediction(state, st, cid)
            ai = state.prediction_json(pred, None)
            ai["heatmap_url"] = (
                f"/api/study/cases/{cid}/heatmap.png" if pred.heatmap is not None else None
            )
            ai["outline"] = case_outline(state, st, cid, pred)
            case["ai"] = ai
        state.served[(reader_id, rnd, cid)] = time.monotonic()
        return {**progress, "case": case}

    return await in_thread(nxt)


@router.get("/api/study/cases/{case_id}/image.png")
async def case_image(state: State, case_id: str, access: AnyToken) -> Response:
    """A study case's image as an 8-bit PNG (pixels only; any study token)."""

    def png() -> bytes:
        gray, _, _, _ = load_case(state, access.study, case_id)
        return imaging.gray_png(gray)

    return Response(await in_thread(png), media_type="image/png", headers=_no_store())


@router.get("/api/study/cases/{case_id}/heatmap.png")
async def case_heatmap(state: State, case_id: str, access: AnyToken) -> Response:
    """A case's heatmap, only for the token's reader once their round 2 is open."""

    def png() -> bytes:
        st, who = access.study, access.who
        if who.role != "reader" or reader_state(st, str(who.reader_id))["status"] not in (
            "round2",
            "done",
        ):
            raise HTTPException(403, "the AI heatmap is shown to readers in round 2 only")
        pred = case_prediction(state, st, case_id)
        if pred.heatmap is None:
            raise HTTPException(404, "no heatmap for this case")
        return imaging.heatmap_png(pred.heatmap)

    return Response(await in_thread(png), media_type="image/png", headers=_no_store())


@router.post("/api/study/readers/{reader_id}/reads", status_code=201)
async def submit(
    state: State,
    reader_id: str,
    req: ReadRequest,
    access: OwnReader,
) -> dict[str, Any]:
    """Record one read of the token's reader at once (append-only, synced to disk).

    ``time_taken_s`` stored is the browser's measure when given and consistent
    with the server's (served -> submitted), else the server's.
    """
    now = time.monotonic()

    def record() -> dict[str, Any]:
        st = access.study
        t0 = state.served.get((reader_id, req.round, req.case_id))
        server_s = None if t0 is None else max(0.0, now - t0)
        client_s = req.client_time_s
        if client_s is not None and (not math.isfinite(client_s) or client_s < 0):
            client_s = None
        if client_s is not None and (server_s is None or client_s <= server_s + 2.0):
            taken = client_s
        else:
            taken = server_s
        ai = None
        if req.round == 2:
            st.next_case(reader_id, 2)  # refuses a closed round 2 before any AI runs
            pred = state.cases.get(("pred", req.case_id))
            if pred is None and req.case_id in set(st.case_ids()):
                pred = case_prediction(state, st, req.case_id)
            ai = None if pred is None else float(pred.ai_score)
        rid = st.record(
            reader_id,
            req.case_id,
            req.round,
            req.birads,
            confidence=req.confidence,
            time_taken_s=taken,
            ai_score=ai,
        )
        state.served.pop((reader_id, req.round, req.case_id), None)
        return {
            "read_id": rid,
            "time_taken_s": taken,
            "server_time_s": server_s,
            "client_time_s": client_s,
            **reader_state(st, reader_id),
        }

    return await in_thread(record)


@router.get("/api/study/export.csv")
async def export(access: Organiser) -> Response:
    """Every read as CSV (organiser): reader, case, round, BI-RADS, confidence, AI score, time."""

    def csv() -> str:
        return access.study.reads().to_csv(index=False)

    return Response(
        await in_thread(csv),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="reads.csv"', **_no_store()},
    )
