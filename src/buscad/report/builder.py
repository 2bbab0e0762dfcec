"""Generic HTML report builder (Jinja2, one self-contained file)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from buscad.report.render import render_page, trusted
from buscad.utils import atomic_write_text

#: Packages whose versions go into every report's environment section.
REPORT_PACKAGES = (
    "buscad",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "statsmodels",
    "matplotlib",
    "jinja2",
    "torch",
    "torchvision",
    "timm",
)


@dataclass
class Text:
    """Paragraphs of plain text (blank lines separate paragraphs; HTML is escaped)."""

    text: str

    def to_html(self) -> str:
        paras = [p.strip() for p in str(self.text).split("\n\n") if p.strip()]
        return "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paras)


@dataclass
class Table:
    """A DataFrame rendered as an HTML table with an optional caption."""

    df: pd.DataFrame
    caption: str = ""
    index: bool = False
    float_format: str = "{:.4g}"

    def to_html(self) -> str:
        df = self.df
        body = df.to_html(
            index=self.index,
            escape=True,
            na_rep="",
            border=0,
            classes="tbl",
            float_format=lambda v: self.float_format.format(v),
        )
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return f'<figure class="table">{cap}<div class="scroll">{body}</div></figure>'


@dataclass
class Figure:
    """A figure: a PNG/SVG file path, PNG bytes, or a matplotlib figure; embedded as base64.

    SVG files are embedded as a base64 ``data:image/svg+xml`` image (no script
    can run from it). A matplotlib figure is rendered to PNG.
    """

    source: Any
    caption: str = ""
    width: str = "100%"

    def _data_uri(self) -> str:
        src = self.source
        if isinstance(src, str | Path):
            path = Path(src)
            mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
            data = path.read_bytes()
        elif isinstance(src, bytes | bytearray):
            mime, data = "image/png", bytes(src)
        elif hasattr(src, "savefig"):
            buf = io.BytesIO()
            src.savefig(buf, format="png", bbox_inches="tight", dpi=150)
            mime, data = "image/png", buf.getvalue()
        else:
            raise TypeError(f"Figure: cannot embed {type(src).__name__}")
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def to_html(self) -> str:
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        alt = html.escape(self.caption or "figure")
        return (
            f'<figure class="fig"><img src="{self._data_uri()}" alt="{alt}" '
            f'style="max-width:{self.width}">{cap}</figure>'
        )


@dataclass
class KeyValue:
    """A two-column key/value table (configuration, environment, hashes)."""

    items: Mapping[str, Any]
    caption: str = ""

    def to_html(self) -> str:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.items.items()
        )
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return f'<figure class="table">{cap}<table class="kv">{rows}</table></figure>'


@dataclass
class Html:
    """Trusted raw HTML (use only for markup built by buscad itself)."""

    html: str

    def to_html(self) -> str:
        return self.html


@dataclass
class Section:
    """A titled report section holding blocks (Text, Table, Figure, KeyValue, Html or str)."""

    title: str
    blocks: Sequence[Any] = field(default_factory=list)
    anchor: str = ""

    def render_blocks(self) -> str:
        out = []
        for b in self.blocks:
            if isinstance(b, str):
                b = Text(b)
            elif isinstance(b, pd.DataFrame):
                b = Table(b)
            out.append(b.to_html())
        return "\n".join(out)


def _slug(text: str, used: set[str]) -> str:
    base = "".join(c.lower() if c.isalnum() else "-" for c in text).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def environment_info(
    seed: int | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Python, platform and package versions (read from metadata, nothing imported)."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "generated (UTC)": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if seed is not None:
        info["seed"] = str(seed)
    for pkg in REPORT_PACKAGES:
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    info.update({str(k): str(v) for k, v in (extra or {}).items()})
    return info


def render_report(
    sections: Sequence[Section], title: str, subtitle: str = "", footer: str = ""
) -> str:
    """Render sections to a self-contained HTML string (see :func:`build_report`)."""
    used: set[str] = set()
    rendered = []
    for s in sections:
        anchor = s.anchor or _slug(s.title, used)
        rendered.append({"title": s.title, "anchor": anchor, "body": trusted(s.render_blocks())})
    return render_page(
        "report.html.j2", title=title, subtitle=subtitle, sections=rendered, footer=footer
    )


def build_report(
    sections: Sequence[Section],
    out_path: str | Path,
    title: str,
    subtitle: str = "",
    footer: str = "",
) -> Path:
    """Write one self-contained HTML report and return its path.

    Parameters
    ----------
    sections : sequence of Section
        The report body in order; a table of contents links to each.
    out_path : path
        Output ``.html`` file (written atomically).
    title, subtitle, footer : str
        Page heading, line under it and closing note.
    """
    text = render_report(sections, title, subtitle, footer)
    return atomic_write_text(out_path, text)
