"""The web app's middleware and limits: security headers, request body size, trusted hosts.

Also the exception handlers that turn bad input into a 4xx with a one-line message
(and an unexpected error into a bare 500 that carries the security headers too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from buscad.report.render import stylesheet_sha256
from buscad.serve.imaging import UploadError

log = logging.getLogger("buscad.serve")

#: Room for the multipart form around the image and mask (boundaries, small fields).
FORM_SLACK = 256 * 1024

#: Host names always accepted (the loopback names); others are added with ``allowed_hosts``.
LOCAL_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")

#: The app's Content-Security-Policy. The hash admits the case report's one ``<style>``
#: block (the shared report stylesheet, printed from an ``srcdoc`` frame); it is computed
#: from the stylesheet file itself, so the two cannot drift apart. No inline script anywhere.
CSP = (
    "default-src 'self'; script-src 'self'; "
    f"style-src 'self' 'sha256-{stylesheet_sha256()}'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
#: Swagger UI sets inline styles: /docs alone also allows them (scripts stay 'self').
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware adding :data:`CSP` and :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope.get("path") == "/docs" else CSP

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                h = MutableHeaders(scope=msg)
                h["Content-Security-Policy"] = csp
                for k, v in SECURITY_HEADERS.items():
                    h[k] = v
            await send(msg)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimit:
    """ASGI middleware refusing request bodies above ``max_bytes`` with 413.

    A declared ``Content-Length`` above the limit is refused before anything
    is read; a chunked body is counted as it streams and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > limit:
                    await self._refuse(send, n)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge(seen)
            return msg

        try:
            await self.app(scope, counted, send)
        except _TooLarge as exc:
            await self._refuse(send, exc.n)

    async def _refuse(self, send: Send, n: int) -> None:
        mb = self.max_bytes - FORM_SLACK
        body = json.dumps(
            {"detail": f"upload is larger than the {mb / 2**20:.3g} MB limit ({n / 2**20:.1f} MB)"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, n: int) -> None:
        self.n = n


def add_middleware(app: FastAPI, max_bytes: int, allowed_hosts: Sequence[str] = ()) -> None:
    """Body size limit, trusted hosts and security headers (outermost), in that order."""
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes + FORM_SLACK)
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=[*LOCAL_HOSTS, *[h for h in allowed_hosts if h]]
    )
    app.add_middleware(SecurityHeaders)  # outermost: also on 400/413 answers of the others


def add_error_handlers(app: FastAPI) -> None:
    """Bad input becomes a 4xx with a one-line ``detail``; nothing else leaks."""

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming the fields and problems; never echoes the input (it may be NaN or huge)."""
        errors = [
            {
                "loc": [str(x)[:64] for x in e.get("loc", ())],
                "msg": str(e.get("msg", ""))[:200],
                "type": str(e.get("type", ""))[:64],
            }
            for e in exc.errors()[:20]
        ]
        text = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(
            {"detail": " ".join(f"invalid request: {text}".split()), "errors": errors}, 422
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.error("internal error: %s", type(exc).__name__)
        # this answer bypasses the middleware: add the security headers here
        return JSONResponse(
            {"detail": "internal error; the server keeps running"},
            500,
            headers={"Content-Security-Policy": CSP, **SECURITY_HEADERS},
        )
