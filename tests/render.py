"""Headless-Chromium checks shared by the report tests: nothing wider than an A4-landscape page.

Reports are opened in Debian's ``/usr/bin/chromium`` through Playwright at 1123 px (A4
landscape at 96 dpi) on screen and at the printable width in print, printed to PDF and
screenshotted; :data:`OVERFLOW_JS` lists every table, image, figure or text block whose
right edge is beyond the page, and :data:`RAW_SYNTAX` finds Python dict/list syntax or
escaped newlines in the visible text. :func:`live_server` serves an app on a free local
port for the pages a browser test opens.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, and nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: A4 landscape at 96 dpi: 297 mm wide; printable width with the stylesheet's 10 mm margins.
A4_LANDSCAPE_PX = 1123
A4_PRINTABLE_PX = round((297 - 2 * 10) / 25.4 * 96)
#: Visible text that means raw Python or JSON leaked into a report.
RAW_SYNTAX = re.compile(r"\{'|\['|\{\"|\\n|\bnan\b|\bTrue\b|\bFalse\b")

#: Elements whose right edge must stay inside the page (and their names, for messages).
OVERFLOW_JS = """(limit) => {
  const out = [];
  const de = document.documentElement;
  if (de.scrollWidth > limit + 1) out.push(`page scrollWidth ${de.scrollWidth}`);
  for (const el of document.querySelectorAll('table, img, pre, figure, section, p, ul, h1, h2')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > limit + 1) {
      const head = (el.innerText || el.getAttribute('alt') || '').slice(0, 50).replace(/\\s+/g, ' ');
      out.push(`${el.tagName.toLowerCase()} right edge ${Math.round(r.right)} px: ${head}`);
    }
  }
  return out;
}"""


def open_page(browser, html: Path, width: int, media: str):
    """``html`` opened in a new page ``width`` px wide, with CSS media ``screen`` or ``print``."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.emulate_media(media=media)
    page.goto(html.as_uri())
    return page


def save_shot(page, path: Path, height: int = 1500) -> None:
    """The top of the page as a small palette PNG (phantom data only)."""
    from PIL import Image

    img = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    img = img.crop((0, 0, img.width, min(img.height, height)))
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def check_page(browser, html: Path, pdf_to: Path, shot_to: Path | None = None) -> None:
    """Assert ``html`` fits A4 landscape on screen and in print, and reads in words.

    Writes the PDF to ``pdf_to`` and, when given, a screenshot of the page's top to ``shot_to``.
    """
    for width, media in ((A4_LANDSCAPE_PX, "screen"), (A4_PRINTABLE_PX, "print")):
        page = open_page(browser, html, width, media)
        wide = page.evaluate(OVERFLOW_JS, width)
        assert not wide, f"{html.name} ({media}, {width} px): {wide[:5]}"
        if media == "screen":
            text = page.evaluate("document.body.innerText")
            raw = RAW_SYNTAX.search(text)
            assert raw is None, f"{html} shows {text[raw.start() - 60 : raw.end() + 40]!r}"
            if shot_to is not None:
                save_shot(page, shot_to)
                assert 10_000 < shot_to.stat().st_size < 300_000
        else:
            pdf = page.pdf(landscape=True, format="A4", print_background=True)
            assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
            pdf_to.write_bytes(pdf)
        page.close()


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(10)
