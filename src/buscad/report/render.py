"""Jinja2 rendering of every buscad HTML page, with the one shared stylesheet inlined.

Every report (the generic report, the data audit, the reader-study analysis, the
web app's case report) extends ``templates/base.html.j2`` and carries
``templates/buscad.css`` in its one ``<style>`` block, so each file opens offline
on its own. Autoescape is on: values are escaped unless wrapped in
:class:`markupsafe.Markup` (only markup built by buscad itself).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib import resources
from typing import Any

STYLESHEET = "buscad.css"


@functools.cache
def stylesheet() -> str:
    """The shared report stylesheet, exactly as inlined into each page's ``<style>`` block."""
    return resources.files("buscad.report").joinpath("templates", STYLESHEET).read_text("utf-8")


def stylesheet_sha256() -> str:
    """Base64 SHA-256 of :func:`stylesheet` (a Content-Security-Policy ``style-src`` hash).

    ``sha256-`` + base64(SHA-256(UTF-8 bytes of the ``<style>`` element's text)), as CSP
    Level 2 defines for hash sources.
    """
    digest = hashlib.sha256(stylesheet().encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


@functools.cache
def environment() -> Any:
    """The Jinja2 environment over ``buscad/report/templates`` (autoescape on)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("buscad.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
    )


def render_page(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with the shared stylesheet as ``css``.

    Parameters
    ----------
    template : str
        Template file name (e.g. ``"audit.html.j2"``); it extends ``base.html.j2``.
    **context
        Template variables; wrap trusted pre-built markup in :class:`markupsafe.Markup`.

    Returns
    -------
    str
        The self-contained HTML page.
    """
    from markupsafe import Markup

    return environment().get_template(template).render(css=Markup(stylesheet()), **context)


def trusted(markup: str) -> Any:
    """Mark HTML built by buscad itself (never user text) as safe for the templates."""
    from markupsafe import Markup

    return Markup(markup)
