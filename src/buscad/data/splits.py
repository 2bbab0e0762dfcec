"""Grouped, stratified splits: no patient and no scan ever sits on both sides.

A *leakage group* (:func:`buscad.data.groups.split_groups`) is a connected component (union-find)
of two relations: same ``patient_id``, and same near-duplicate group
(``dup_group`` from :mod:`buscad.data.audit`: exact copies, re-crops, resized
copies and adjacent frames of one scan). Whole groups are assigned to one side.

:func:`assign_splits` (CLI: ``buscad data split``) writes a ``split`` column:

``holdout``
    ``train`` / ``test`` with ``test_size`` of the images in ``test``
    (default 7:3, as in the studies);
``kfold``
    ``fold0`` .. ``fold{k-1}``;
``external``
    rows of the named cohort(s) become ``external`` and the rest ``train``.
    ``external_cohorts`` can also be given with ``holdout`` or ``kfold``: the
    named cohorts become ``external`` and the rest is split as requested.
    Rows of other cohorts that share a leakage group with an external row
    become ``excluded`` (never trained on, never tested), with a warning.

Stratification on groups (greedy balancing): groups are shuffled with the
seed, then taken largest first; each goes to the side that minimises
``sum_c (n_sc + g_c - f_s N_c)^2 / max(f_s N_c, 1) + (m_s + |g| - f_s M)^2 / max(f_s M, 1)``
where ``n_sc`` is the count of stratum ``c`` already on side ``s``, ``g_c``
the group's count, ``f_s`` the side's target fraction, ``N_c`` the stratum's
total, ``m_s`` the images on side ``s`` and ``M`` all images; ties are broken
in a seeded random order. The result is deterministic for a seed, and
different seeds give different splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from buscad.data.groups import split_groups
from buscad.data.manifest import Manifest

METHODS: tuple[str, ...] = ("holdout", "kfold", "external")


def _greedy_assign(
    groups: np.ndarray,
    strata: np.ndarray,
    fractions: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Assign each group to a side (index into ``fractions``); returns side per row."""
    uniq_g, g_idx = np.unique(groups, return_inverse=True)
    uniq_s, s_idx = np.unique(strata.astype(str), return_inverse=True)
    G, C, S = len(uniq_g), len(uniq_s), len(fractions)
    counts = np.zeros((G, C))
    np.add.at(counts, (g_idx, s_idx), 1)
    sizes = counts.sum(axis=1)
    f = np.asarray(fractions, float)
    target = f[:, None] * counts.sum(axis=0)[None, :]  # S x C
    target_size = f * sizes.sum()
    have = np.zeros((S, C))
    have_size = np.zeros(S)
    order = rng.permutation(G)
    order = order[np.argsort(-sizes[order], kind="stable")]
    side_of_group = np.zeros(G, dtype=int)
    for g in order:
        c = counts[g]
        new = have + c[None, :]
        dev_new = ((new - target) ** 2 / np.maximum(target, 1)).sum(axis=1)
        dev_old = ((have - target) ** 2 / np.maximum(target, 1)).sum(axis=1)
        size_new = (have_size + sizes[g] - target_size) ** 2 / np.maximum(target_size, 1)
        size_old = (have_size - target_size) ** 2 / np.maximum(target_size, 1)
        cost = (dev_new - dev_old) + (size_new - size_old)
        tie_order = rng.permutation(S)
        best = tie_order[np.argmin(cost[tie_order])]
        side_of_group[g] = best
        have[best] += c
        have_size[best] += sizes[g]
    return side_of_group[g_idx]


def assign_splits(
    manifest: Manifest,
    method: str = "holdout",
    test_size: float = 0.3,
    k: int = 5,
    seed: int = 0,
    external_cohorts: str | Sequence[str] | None = None,
    stratify: str | None = "label",
    dup_groups: pd.Series | np.ndarray | None = None,
) -> Manifest:
    """Grouped, stratified split of a manifest into the ``split`` column.

    Parameters
    ----------
    manifest : Manifest
        Rows to split.
    method : {"holdout", "kfold", "external"}
        See the module docstring.
    test_size : float
        Share of ``test`` images for ``holdout`` (0 < test_size < 1).
    k : int
        Folds for ``kfold`` (>= 2).
    seed : int
        Seed of the group order and ties.
    external_cohorts : str or sequence of str, optional
        Cohort names (``cohort`` column) that become ``external``; required
        for ``method="external"``.
    stratify : str or None
        Column to balance across sides (default ``label``); None balances sizes only.
    dup_groups : Series or array, optional
        Near-duplicate groups (see :func:`buscad.data.groups.split_groups`); default
        the manifest's ``dup_group`` column.

    Returns
    -------
    Manifest
        A copy with ``split`` (``train``/``test``, ``fold0``.., ``external``,
        ``excluded``) and ``group`` (leakage group id) columns.

    Raises
    ------
    ValueError
        Unknown method, bad sizes, unknown cohort or stratification column, or
        fewer groups than sides.
    """
    if method not in METHODS:
        raise ValueError(f"unknown split method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "holdout" and not 0 < test_size < 1:
        raise ValueError(f"test_size must be between 0 and 1, got {test_size}")
    if method == "kfold" and k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    df = manifest.df
    if stratify is not None and stratify not in df.columns:
        raise ValueError(
            f"stratify column {stratify!r} is not in the manifest ({', '.join(map(str, df.columns))})"
        )
    ext = [external_cohorts] if isinstance(external_cohorts, str) else list(external_cohorts or [])
    ext = [c.strip() for e in ext for c in str(e).split(",") if c.strip()]
    if method == "external" and not ext:
        raise ValueError("method 'external' needs the external cohort name(s)")
    groups = split_groups(manifest, dup_groups).to_numpy()
    split = np.array([""] * len(df), dtype=object)
    is_ext = np.zeros(len(df), dtype=bool)
    if ext:
        if "cohort" not in df.columns:
            raise ValueError("external split needs a 'cohort' column")
        known = set(df["cohort"].astype(str))
        missing = [c for c in ext if c not in known]
        if missing:
            raise ValueError(
                f"external cohort(s) {', '.join(missing)} not found; cohorts are "
                f"{', '.join(sorted(known))}"
            )
        is_ext = df["cohort"].astype(str).isin(ext).to_numpy()
        split[is_ext] = "external"
        shared = np.isin(groups, groups[is_ext]) & ~is_ext
        if shared.any():
            warnings.warn(
                f"{int(shared.sum())} row(s) share a patient or near-duplicate group with the "
                "external cohort; they are marked 'excluded'",
                stacklevel=2,
            )
            split[shared] = "excluded"
    rest = split == ""
    if method == "external":
        split[rest] = "train"
    elif rest.any():
        if method == "holdout":
            names, fractions = ["train", "test"], [1 - test_size, test_size]
        else:
            names, fractions = [f"fold{i}" for i in range(k)], [1 / k] * k
        n_groups = len(np.unique(groups[rest]))
        if n_groups < len(names):
            raise ValueError(
                f"only {n_groups} leakage group(s) for {len(names)} sides; cannot split"
            )
        strata = (
            df[stratify].astype(str).to_numpy()[rest]
            if stratify is not None
            else np.zeros(int(rest.sum()), dtype=str)
        )
        rng = np.random.default_rng(seed)
        side = _greedy_assign(groups[rest], strata, fractions, rng)
        split[rest] = np.asarray(names, dtype=object)[side]
    return manifest.with_columns(split=split, group=groups)


def describe_splits(manifest: Manifest, stratify: str = "label") -> pd.DataFrame:
    """Per-split counts of each ``stratify`` value, images and leakage groups.

    Returns
    -------
    pandas.DataFrame
        Index = split; one column per value, then ``n`` and ``groups``.
    """
    df = manifest.df
    if "split" not in df.columns:
        raise ValueError("manifest has no 'split' column")
    tab = (
        pd.crosstab(df["split"], df[stratify])
        if stratify in df.columns
        else pd.DataFrame(index=sorted(df["split"].unique()))
    )
    tab["n"] = df.groupby("split").size()
    if "group" in df.columns:
        tab["groups"] = df.groupby("split")["group"].nunique()
    return tab


__all__ = ["METHODS", "assign_splits", "describe_splits"]
