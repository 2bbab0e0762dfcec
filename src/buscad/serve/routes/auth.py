"""Who is asking: the study tokens (``Authorization: Bearer``) and the checks built on them.

A reader study hands out two kinds of token: the organiser's, and one per reader, which
acts for that reader only (:class:`buscad.reader.store.Identity`). The reader-study routes
(:mod:`buscad.serve.routes.study`) take the authenticated study from one dependency,
:func:`authenticated`, through the annotations :data:`AnyToken`, :data:`Organiser`,
:data:`OrganiserBeforeStudy`, :data:`OwnReader` and :data:`OwnReaderOrOrganiser`; while
a study is served, the open case screen's routes (:mod:`buscad.serve.routes.predict`)
need the organiser's token (:data:`CaseScreen`). The checks run in a worker thread (the
store is SQLite) and answer 404 (no study), 401 (no or an invalid token) or 403 (the
wrong role), in that order. OpenAPI documents the scheme as ``StudyToken`` (HTTP bearer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

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


Role = Literal["any", "organiser", "reader", "reader_or_organiser"]


@dataclass(frozen=True)
class StudyAccess:
    """The served reader study and who the request's token belongs to.

    Attributes
    ----------
    study : ReaderStudy
        The study store (:class:`buscad.reader.store.ReaderStudy`).
    who : Identity
        The token's identity (organiser, or a reader and their pseudonym).
    """

    study: Any
    who: Identity


async def authenticated(
    state: AppState,
    cred: HTTPAuthorizationCredentials | None,
    role: Role = "any",
    reader_id: str | None = None,
    *,
    before_study: bool = False,
) -> StudyAccess:
    """The study and the token's identity, checked for ``role`` (the one dependency's core).

    Parameters
    ----------
    state : AppState
        The app's state (the study's paths and clock).
    cred : HTTPAuthorizationCredentials or None
        The request's bearer token.
    role : {"any", "organiser", "reader", "reader_or_organiser"}
        Who may call: any valid token, the organiser, the reader ``reader_id`` with
        their own token, or that reader or the organiser.
    reader_id : str, optional
        The reader the route acts for (its ``{reader_id}`` path parameter).
    before_study : bool, default False
        Accept a database without a study yet (the organiser creating it).

    Raises
    ------
    HTTPException
        404 when reader-study mode is off or no study exists (unless
        ``before_study``), 401 without a valid token, 403 for the wrong role.
    """

    def check() -> StudyAccess:
        st = prepared(state) if before_study else study(state)
        if role == "organiser":
            who = as_organiser(st, cred)
        elif role == "reader":
            who = as_reader(st, cred, str(reader_id))
        else:
            who = identify(st, cred)
            if role == "reader_or_organiser" and not who.is_organiser:
                as_reader(st, cred, str(reader_id))
        return StudyAccess(st, who)

    return await anyio.to_thread.run_sync(check)


State = Annotated[AppState, Depends(get_state)]


async def _any_token(state: State, cred: Credentials) -> StudyAccess:
    return await authenticated(state, cred)


async def _organiser(state: State, cred: Credentials) -> StudyAccess:
    return await authenticated(state, cred, "organiser")


async def _organiser_before_study(state: State, cred: Credentials) -> StudyAccess:
    return await authenticated(state, cred, "organiser", before_study=True)


async def _own_reader(reader_id: str, state: State, cred: Credentials) -> StudyAccess:
    return await authenticated(state, cred, "reader", reader_id)


async def _own_reader_or_organiser(reader_id: str, state: State, cred: Credentials) -> StudyAccess:
    return await authenticated(state, cred, "reader_or_organiser", reader_id)


#: Any valid study token (organiser or reader).
AnyToken = Annotated[StudyAccess, Depends(_any_token)]
#: The organiser's token, the study created.
Organiser = Annotated[StudyAccess, Depends(_organiser)]
#: The organiser's token, before or after the study is created.
OrganiserBeforeStudy = Annotated[StudyAccess, Depends(_organiser_before_study)]
#: The token of the reader named by the route's ``{reader_id}`` (acting for themself).
OwnReader = Annotated[StudyAccess, Depends(_own_reader)]
#: The reader named by ``{reader_id}`` with their own token, or the organiser.
OwnReaderOrOrganiser = Annotated[StudyAccess, Depends(_own_reader_or_organiser)]


async def case_screen_state(state: State, cred: Credentials) -> AppState:
    """The app state for an open-case-screen route (a FastAPI dependency).

    403 while the case screen is off. While a reader study is served (the screen kept
    on with ``--open-case-screen``), the routes that run the models need the
    organiser's token too: a reader must never get AI output for a study case
    outside round 2 by uploading its image (401 without a token, 403 for a reader's).
    """
    state.require_case_screen()
    if state.study_path is None:
        return state
    if cred is None or not cred.credentials:
        raise HTTPException(
            401,
            "while a reader study is served the case screen needs the organiser's token: "
            "enter it on /reader in this browser tab, then come back",
            _CHALLENGE,
        )
    await anyio.to_thread.run_sync(lambda: as_organiser(prepared(state), cred))
    return state


#: The state of a case-screen route, after :func:`case_screen_state`'s checks.
CaseScreen = Annotated[AppState, Depends(case_screen_state)]
