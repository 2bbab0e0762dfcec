"""Who is asking: the study tokens (``Authorization: Bearer``) and the checks built on them.

A reader study hands out two kinds of token: the organiser's, and one per reader, which
acts for that reader only (:class:`buscad.reader.store.Identity`). The reader-study routes
(:mod:`buscad.serve.routes.study`) and, while a study is served, the open case screen's AI
routes (:mod:`buscad.serve.routes.predict`) check them here. OpenAPI documents the scheme
as ``StudyToken`` (HTTP bearer).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from buscad.reader.store import Identity
from buscad.serve.routes.state import AppState, get_state

#: The bearer scheme of every study token (``StudyToken`` in the OpenAPI schema).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="StudyToken",
    description="Organiser or reader token of the reader study",
)

#: The request's ``Authorization: Bearer`` credentials, or None when it sent none.
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def study(state: AppState) -> Any:
    """The served :class:`~buscad.reader.store.ReaderStudy`; 404 when off or not created yet."""
    from buscad.reader.store import ReaderStudy, ReaderStudyError

    if state.study_path is None:
        raise HTTPException(404, "reader-study mode is off: start with --study-db PATH")
    try:
        return ReaderStudy.open(state.study_path, clock=state.study_clock)
    except ReaderStudyError as exc:
        raise HTTPException(404, "no reader study yet: the organiser creates it") from exc


def prepared(state: AppState) -> Any:
    """The study database, ready for tokens even before a study is created; 404 when off."""
    from buscad.reader.store import ReaderStudy

    if state.study_path is None:
        raise HTTPException(404, "reader-study mode is off: start with --study-db PATH")
    return ReaderStudy.prepare(state.study_path, clock=state.study_clock)


def identify(st: Any, cred: HTTPAuthorizationCredentials | None) -> Identity:
    """The token's identity: 401 without a valid ``Authorization: Bearer`` token."""
    if cred is None or not cred.credentials:
        raise HTTPException(
            401, "this needs a study token: send 'Authorization: Bearer <token>'", _CHALLENGE
        )
    who = st.authenticate(cred.credentials)
    if who is None:
        raise HTTPException(
            401, "the study token is not valid (wrong, rotated or revoked)", _CHALLENGE
        )
    return who


def as_organiser(st: Any, cred: HTTPAuthorizationCredentials | None) -> Identity:
    """The organiser's identity: 401 without a valid token, 403 for a reader's."""
    who = identify(st, cred)
    if not who.is_organiser:
        raise HTTPException(403, "this needs the organiser's token")
    return who


def as_reader(st: Any, cred: HTTPAuthorizationCredentials | None, reader_id: str) -> Identity:
    """A reader acting for themself only (the reader id comes from the token)."""
    who = identify(st, cred)
    if who.role != "reader" or who.reader_id != reader_id:
        raise HTTPException(403, "a reader's token acts for that reader only")
    return who


async def case_screen_state(
    state: Annotated[AppState, Depends(get_state)], cred: Credentials
) -> AppState:
    """The app state for an open-case-screen route (a FastAPI dependency).

    403 while the case screen is off. While a reader study is served (the screen kept
    on with ``--open-case-screen``), the routes that run the models need the
    organiser's token too: a reader must never get AI output for a study case
    outside round 2 by uploading its image (401 without a token, 403 for a reader's).
    """
    state.require_case_screen()
    if state.study_path is not None:
        await anyio.to_thread.run_sync(lambda: as_organiser(prepared(state), cred))
    return state


#: The state of a case-screen route, after :func:`case_screen_state`'s checks.
CaseScreen = Annotated[AppState, Depends(case_screen_state)]
