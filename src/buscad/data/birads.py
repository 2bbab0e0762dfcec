"""BI-RADS categories as an ordinal scale, and the cut that turns them into a malignant call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from buscad.data.manifest import normalize_birads

#: Ordinal rank of each BI-RADS category (plain ``4`` below ``4a``; see the module doc).
BIRADS_RANK: dict[str, int] = {
    "1": 1,
    "2": 2,
    "3": 3,
    "4": 4,
    "4a": 5,
    "4b": 6,
    "4c": 7,
    "5": 8,
    "6": 9,
}


DEFAULT_CUT = "4b"


# --------------------------------------------------------------------- inputs
def birads_rank(values: Sequence[object] | pd.Series) -> np.ndarray:
    """Ordinal ranks of BI-RADS values (float; NaN for missing or category 0).

    Raises
    ------
    ValueError
        For a value that is not a BI-RADS category.
    """
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        cat = normalize_birads(v)
        if cat is not None and cat in BIRADS_RANK:
            out[i] = BIRADS_RANK[cat]
    return out


def rank_category(rank: float) -> str:
    """The BI-RADS category of an ordinal rank, as written in reports (``7`` -> ``"4C"``).

    A rank between categories is rounded up (a read is malignant when ``rank >= cut``).
    """
    r = int(np.ceil(rank - 1e-9))
    for cat, v in BIRADS_RANK.items():
        if v >= r:
            return cat.upper()
    return max(BIRADS_RANK, key=BIRADS_RANK.__getitem__).upper()


def cut_words(rank: float) -> str:
    """A threshold on BI-RADS ranks in words: ``"BI-RADS 4C or higher"``."""
    return f"BI-RADS {rank_category(rank)} or higher"


def cut_rank(cut: str) -> int:
    """Rank of the binarisation cut: a read is malignant when ``rank >= cut_rank``."""
    cat = normalize_birads(cut)
    if cat not in BIRADS_RANK or cat in ("1", "6"):
        raise ValueError(f"binarisation cut must be one of 2 3 4 4a 4b 4c 5, got {cut!r}")
    return BIRADS_RANK[cat]
