"""Tokens of BI-RADS lexicon descriptor cells (no pandas: used at prediction time)."""

from __future__ import annotations

#: Lexicon cells that mean "no value".
LEXICON_MISSING = frozenset({"", "nan", "none", "not applicable", "not available", "na", "n/a"})


def lexicon_tokens(v: object, sep: str = "&") -> list[str]:
    """Tokens of one BI-RADS descriptor cell.

    The cell is lower-cased and split on ``sep`` (BrEaST writes multi-valued
    margins as ``"not circumscribed - angular&indistinct"``); the part before
    `` - `` is kept as its own token too. Missing cells give ``["missing"]``.
    """
    if v is None or (isinstance(v, float) and v != v):
        return ["missing"]
    s = str(v).strip().lower()
    if s in LEXICON_MISSING:
        return ["missing"]
    head, _, tail = s.partition(" - ")
    toks = [t.strip() for t in (tail if tail else head).split(sep) if t.strip()]
    return ([head.strip()] if tail else []) + toks


__all__ = ["LEXICON_MISSING", "lexicon_tokens"]
