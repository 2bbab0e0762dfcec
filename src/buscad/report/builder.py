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


def plain_value(v: Any) -> str:
    """A value as words a reader can read: no Python dict/list syntax, no escaped newlines.

    Mappings become ``key: value; key: value``, sequences ``a, b, c``, floats four
    significant digits, booleans ``yes``/``no``, newlines spaces.
    """
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {plain_value(x)}" for k, x in v.items()) or "none"
    if isinstance(v, list | tuple | set):
        return ", ".join(plain_value(x) for x in v) or "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return ""
    return " ".join(str(v).split())


def model_abbr(name: Any) -> str:
    """HTML of a model's plain label with its short name (and description) as a tooltip."""
    from buscad.labels import model_description, model_label

    short = str(name)
    label = model_label(short)
    if label == short:
        return html.escape(short)
    tip = short + (f": {model_description(short)}" if model_description(short) else "")
    return f'<abbr title="{html.escape(tip)}">{html.escape(label)}</abbr>'


@dataclass
class Table:
    """A DataFrame rendered as an HTML table with an optional caption.

    Cells are shown with :func:`plain_value` (no dict syntax, no newlines); the values
    of ``model_columns`` are model short names, shown as their plain label with the
    short name as a tooltip (:func:`model_abbr`), followed by ``model_notes[name]`` in
    brackets when given (e.g. "uses the reader's BI-RADS"). Tables wrap to the page width.
    """

    df: pd.DataFrame
    caption: str = ""
    index: bool = False
    float_format: str = "{:.4g}"
    model_columns: Sequence[str] = ()
    model_notes: Mapping[str, str] = field(default_factory=dict)

    def to_html(self) -> str:
        df = self.df.copy()
        for c in df.columns:
            if df[c].dtype == object:
                df[c] = [v if isinstance(v, float) else plain_value(v) for v in df[c]]
        if self.index and df.index.dtype == object:
            df.index = [plain_value(v) for v in df.index]
        marks: dict[str, str] = {}
        for c in self.model_columns:
            if c in df.columns:
                vals = []
                for v in df[c]:
                    key = f"@@model{len(marks)}@@"
                    note = self.model_notes.get(str(v))
                    marks[key] = model_abbr(v) + (f" ({html.escape(note)})" if note else "")
                    vals.append(key)
                df[c] = vals
        body = df.to_html(
            index=self.index,
            escape=True,
            na_rep="",
            border=0,
            classes="tbl",
            float_format=lambda v: self.float_format.format(v),
        )
        for key, markup in marks.items():
            body = body.replace(key, markup, 1)
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
class FigureRow:
    """Figures side by side, wrapping to the next line when the page is narrow (e.g. one per cohort)."""

    figures: Sequence[Figure]

    def to_html(self) -> str:
        return '<div class="figrow">' + "".join(f.to_html() for f in self.figures) + "</div>"


@dataclass
class Collapsed:
    """Blocks behind a closed ``<details>`` disclosure: read on demand, out of the first screen."""

    summary: str
    blocks: Sequence[Any]

    def to_html(self) -> str:
        body = Section("", self.blocks).render_blocks()
        return (
            f'<details class="more"><summary>{html.escape(self.summary)}</summary>{body}</details>'
        )


@dataclass
class KeyValue:
    """A two-column key/value table (configuration, environment, hashes).

    Nested values are written out in words (:func:`plain_value`), never as Python syntax.
    """

    items: Mapping[str, Any]
    caption: str = ""

    def to_html(self) -> str:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(plain_value(v))}</td></tr>"
            for k, v in self.items.items()
        )
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return f'<figure class="table">{cap}<table class="kv">{rows}</table></figure>'


@dataclass
class Tile:
    """One labelled image of a :class:`Gallery`: a caption line per item, a class for its frame."""

    source: Any
    lines: Sequence[str]
    kind: str = ""


@dataclass
class Gallery:
    """Labelled image tiles (e.g. Grad-CAM of correct and incorrect cases), each with its caption."""

    tiles: Sequence[Tile]
    caption: str = ""

    def to_html(self) -> str:
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        out = []
        for t in self.tiles:
            img = Figure(t.source)._data_uri()
            lines = "<br>".join(html.escape(x) for x in t.lines)
            cls = f"tile {html.escape(t.kind)}".strip()
            alt = html.escape(t.lines[0] if t.lines else "image")
            out.append(
                f'<figure class="{cls}"><img src="{img}" alt="{alt}">'
                f"<figcaption>{lines}</figcaption></figure>"
            )
        body = "".join(out) or "<p class='note'>no case</p>"
        return f'<figure class="gallery">{cap}<div class="tiles">{body}</div></figure>'


@dataclass
class Details:
    """A collapsible block (closed by default) holding preformatted text, e.g. a config as YAML."""

    summary: str
    text: str

    def to_html(self) -> str:
        return (
            f"<details><summary>{html.escape(self.summary)}</summary>"
            f"<pre>{html.escape(self.text)}</pre></details>"
        )


@dataclass
class Links:
    """A list of links (relative paths inside the run folder) with a line of text each."""

    links: Sequence[tuple[str, str, str]]

    def to_html(self) -> str:
        items = "".join(
            f'<li><a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'
            + (f" ({html.escape(note)})" if note else "")
            + "</li>"
            for text, href, note in self.links
        )
        return f'<ul class="links">{items}</ul>'


@dataclass
class Bullets:
    """A bulleted list of plain-text lines (HTML escaped)."""

    items: Sequence[str]
    cls: str = ""

    def to_html(self) -> str:
        items = "".join(f"<li>{html.escape(plain_value(x))}</li>" for x in self.items)
        cls = f' class="{html.escape(self.cls)}"' if self.cls else ""
        return f"<ul{cls}>{items}</ul>"


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
