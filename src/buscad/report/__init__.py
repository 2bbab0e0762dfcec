"""Self-contained HTML reports (tables, figures, text), model cards and TRIPOD+AI checklists.

The builder is generic: a report is a list of :class:`Section` objects holding
blocks (:class:`Text`, :class:`Table`, :class:`Figure`, :class:`KeyValue`,
:class:`Html`). The HTML has all CSS inline and figures embedded as base64 PNG,
so it opens offline with no external scripts, fonts or images.

Owns: the generic HTML report builder, model cards and TRIPOD+AI checklists. May import:
utils only.
"""

from buscad.report.builder import (
    Figure,
    Html,
    KeyValue,
    Section,
    Table,
    Text,
    build_report,
    environment_info,
    render_report,
)
from buscad.report.cards import (
    model_card,
    model_card_blocks,
    model_card_markdown,
    tripod_ai_checklist,
)

__all__ = [
    "Figure",
    "Html",
    "KeyValue",
    "Section",
    "Table",
    "Text",
    "build_report",
    "environment_info",
    "model_card",
    "model_card_blocks",
    "model_card_markdown",
    "render_report",
    "tripod_ai_checklist",
]
