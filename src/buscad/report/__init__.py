"""Self-contained HTML reports (tables, figures, text), model cards and TRIPOD+AI checklists.

The builder is generic: a report is a list of :class:`Section` objects holding
blocks (:class:`Text`, :class:`Table`, :class:`Figure`, :class:`KeyValue`,
:class:`Html`). The HTML has all CSS inline and figures embedded as base64 PNG,
so it opens offline with no external scripts, fonts or images.

Every HTML page buscad writes (this builder's reports, the data audit, the reader-study
analysis, the web app's case report) is a Jinja2 template in ``templates/`` extending
``base.html.j2``, with the one stylesheet ``templates/buscad.css`` inlined
(:mod:`buscad.report.render`).

Owns: the generic HTML report builder, the report templates and their shared stylesheet,
model cards and TRIPOD+AI checklists. May import: utils only (it sits below data, so the
audit can render its page here).
"""

from buscad.report.builder import (
    Bullets,
    Collapsed,
    Details,
    Figure,
    FigureRow,
    Gallery,
    Html,
    KeyValue,
    Links,
    Section,
    Table,
    Text,
    Tile,
    build_report,
    environment_info,
    model_abbr,
    plain_value,
    render_report,
)
from buscad.report.cards import (
    model_card,
    model_card_blocks,
    model_card_markdown,
    tripod_ai_checklist,
)

__all__ = [
    "Bullets",
    "Collapsed",
    "Details",
    "Figure",
    "FigureRow",
    "Gallery",
    "Html",
    "KeyValue",
    "Links",
    "Section",
    "Table",
    "Text",
    "Tile",
    "build_report",
    "environment_info",
    "model_abbr",
    "model_card",
    "model_card_blocks",
    "model_card_markdown",
    "plain_value",
    "render_report",
    "tripod_ai_checklist",
]
