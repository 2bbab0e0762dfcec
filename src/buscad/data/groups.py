"""Leakage groups: rows that must stay on one side of every split.

A *leakage group* is a connected component of two relations: same
``patient_id``, and same near-duplicate group (``dup_group``, written by the
audit: exact copies, re-crops, resized copies and adjacent frames of one scan).
This module only combines groups that are given; finding near-duplicates is the
audit's job (:func:`buscad.data.audit.duplicates.near_duplicate_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.manifest import Manifest, _is_missing
from buscad.utils import connected_components


def _union_find(n: int, keys: Sequence[np.ndarray]) -> np.ndarray:
    """Connected components of rows sharing a value in any of ``keys``."""
    pairs = []
    for key in keys:
        first: dict[Any, int] = {}
        for i, v in enumerate(key):
            if _is_missing(v) or v == "":
                continue
            j = first.setdefault(v, i)
            if j != i:
                pairs.append((i, j))
    return connected_components(n, pairs)


def split_groups(
    manifest: Manifest,
    dup_groups: pd.Series | np.ndarray | None = None,
) -> pd.Series:
    """Leakage group of every row: union of same patient and same near-duplicate group.

    Parameters
    ----------
    manifest : Manifest
        Rows to group (``patient_id`` defaults to ``image_id``).
    dup_groups : Series or array, optional
        Near-duplicate group per row. When None, the manifest's ``dup_group``
        column (written by the audit) is used.

    Returns
    -------
    pandas.Series
        Integer ``group`` per row (numbered by first appearance), index aligned
        with ``manifest.df``.

    Raises
    ------
    ValueError
        No groups given and no ``dup_group`` column, or groups of the wrong length.
    """
    df = manifest.df
    if dup_groups is None:
        if "dup_group" not in df.columns:
            raise ValueError(
                "no near-duplicate groups: give dup_groups or a dup_group column "
                "(`buscad data audit` writes one; `buscad data split` runs the search itself)"
            )
        dup = df["dup_group"].to_numpy()
    else:
        dup = np.asarray(dup_groups)
        if len(dup) != len(df):
            raise ValueError(f"dup_groups has {len(dup)} values for {len(df)} rows")
    # prefix so that a patient id and a group id never collide
    pid = np.array(["p:" + str(v) for v in df["patient_id"]], dtype=object)
    dg = np.array([None if _is_missing(v) else "d:" + str(v) for v in dup], dtype=object)
    return pd.Series(_union_find(len(df), [pid, dg]), index=df.index, name="group")
