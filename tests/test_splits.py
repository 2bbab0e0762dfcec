"""Grouped, stratified splits: no patient and no near-duplicate group on both sides."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from buscad.data.groups import split_groups
from buscad.data.manifest import Manifest
from buscad.data.splits import _greedy_assign, assign_splits, describe_splits


def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit cache shared with tests/test_audit.py in one session."""
    return tmp_path_factory.getbasetemp() / "audit-cache"


@pytest.fixture(scope="module")
def messy_grouped(messy_phantoms, tmp_path_factory):
    """The messy phantoms with their near-duplicate groups computed once."""
    from buscad.data.audit.duplicates import near_duplicate_groups

    dup = near_duplicate_groups(messy_phantoms, cache_dir=_cache(tmp_path_factory))
    return messy_phantoms.with_columns(dup_group=dup.to_numpy())


def _one_side(df: pd.DataFrame, key: str) -> bool:
    return bool((df.groupby(key)["split"].nunique() == 1).all())


def test_split_groups_is_union_of_patient_and_duplicates():
    df = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "image_path": [f"{c}.png" for c in "abcdef"],
            "label": ["benign"] * 6,
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5"],
        }
    )
    man = Manifest(df)
    # b~c duplicates joins p1 and p2; d and e stay alone; f~a joins p5
    g = split_groups(man, dup_groups=[0, 1, 1, 2, 3, 0])
    assert g.name == "group"
    assert g.iat[0] == g.iat[1] == g.iat[2] == g.iat[5]
    assert len({g.iat[0], g.iat[3], g.iat[4]}) == 3
    # the dup_group column is used when present
    g2 = split_groups(man.with_columns(dup_group=[0, 1, 1, 2, 3, 0]))
    pd.testing.assert_series_equal(g, g2)
    with pytest.raises(ValueError, match="6 rows"):
        split_groups(man, dup_groups=[0, 1])


@pytest.mark.parametrize("method", ["holdout", "kfold"])
def test_no_group_or_patient_crosses_sides(messy_grouped, method):
    df0 = messy_grouped.df
    # the fixture holds what the test needs: planted duplicates and multi-image patients
    assert (df0["dup_group"].map(df0["dup_group"].value_counts()) > 1).sum() >= 30
    assert (df0["patient_id"].map(df0["patient_id"].value_counts()) > 1).sum() >= 10
    res = assign_splits(messy_grouped, method=method, k=5, seed=3)
    df = res.df
    expected = {"train", "test"} if method == "holdout" else {f"fold{i}" for i in range(5)}
    assert set(df["split"]) == expected
    assert _one_side(df, "dup_group")
    assert _one_side(df, "patient_id")
    assert _one_side(df, "group")
    # the planted source and its copy share a side
    pos = dict(zip(df["image_id"], df["split"], strict=True))
    for iid, src in zip(df["image_id"], df["phantom_source"].fillna(""), strict=True):
        if src:
            assert pos[iid] == pos[src]


def test_holdout_sizes_and_class_ratio(messy_grouped):
    res = assign_splits(messy_grouped, test_size=0.3, seed=0)
    df = res.df
    frac_test = (df["split"] == "test").mean()
    assert abs(frac_test - 0.3) < 0.06
    mal = df.groupby("split")["label"].apply(lambda s: (s == "malignant").mean())
    overall = (df["label"] == "malignant").mean()
    assert abs(mal["test"] - overall) < 0.08 and abs(mal["train"] - overall) < 0.08


def test_deterministic_for_a_seed_and_seeds_differ(messy_grouped):
    a = assign_splits(messy_grouped, seed=7).df["split"]
    b = assign_splits(messy_grouped, seed=7).df["split"]
    c = assign_splits(messy_grouped, seed=8).df["split"]
    pd.testing.assert_series_equal(a, b)
    assert (a != c).any()
    fa = assign_splits(messy_grouped, method="kfold", k=4, seed=1).df["split"]
    fb = assign_splits(messy_grouped, method="kfold", k=4, seed=1).df["split"]
    pd.testing.assert_series_equal(fa, fb)


def test_greedy_balancing_on_synthetic_groups():
    rng = np.random.default_rng(0)
    sizes = rng.choice([1, 1, 1, 2, 3, 5], size=300)
    groups = np.repeat(np.arange(300), sizes)
    # labels mostly constant within a group, 35% malignant overall
    glab = rng.random(300) < 0.35
    labels = np.where(glab[groups], "malignant", "benign")
    side = _greedy_assign(groups, labels, [0.7, 0.3], np.random.default_rng(1))
    # whole groups on one side
    assert all(len(set(side[groups == g])) == 1 for g in range(300))
    test = side == 1
    assert abs(test.mean() - 0.3) < 0.02
    for lab in ("benign", "malignant"):
        sel = labels == lab
        assert abs(test[sel].mean() - 0.3) < 0.03
    folds = _greedy_assign(groups, labels, [0.2] * 5, np.random.default_rng(2))
    counts = np.bincount(folds, minlength=5)
    assert counts.min() >= 0.9 * len(groups) / 5 and counts.max() <= 1.1 * len(groups) / 5
    mal = [(labels[folds == f] == "malignant").mean() for f in range(5)]
    assert max(mal) - min(mal) < 0.05


def test_external_split_by_cohort(phantom_cohort):
    man = phantom_cohort
    assert set(man.df["cohort"]) == {"site_a", "site_b"}
    res = assign_splits(
        man, method="holdout", external_cohorts="site_b", dup_groups=np.arange(len(man))
    )
    df = res.df
    assert (df.loc[df["cohort"] == "site_b", "split"] == "external").all()
    assert set(df.loc[df["cohort"] == "site_a", "split"]) == {"train", "test"}
    only = assign_splits(
        man, method="external", external_cohorts=["site_a"], dup_groups=np.arange(len(man))
    )
    assert set(only.df.loc[only.df["cohort"] == "site_b", "split"]) == {"train"}
    assert set(only.df.loc[only.df["cohort"] == "site_a", "split"]) == {"external"}


def test_external_rows_sharing_a_group_are_excluded(phantom_cohort):
    man = phantom_cohort
    dup = np.arange(len(man))
    a = int(np.flatnonzero(man.df["cohort"] == "site_a")[0])
    b = int(np.flatnonzero(man.df["cohort"] == "site_b")[0])
    dup[a] = dup[b]  # one scan appears in both cohorts
    with pytest.warns(UserWarning, match="excluded"):
        res = assign_splits(man, external_cohorts="site_b", dup_groups=dup)
    assert res.df["split"].iat[a] == "excluded"
    assert res.df["split"].iat[b] == "external"


def test_bad_arguments(phantom_cohort):
    man = phantom_cohort
    dup = np.arange(len(man))
    with pytest.raises(ValueError, match="unknown split method 'random'"):
        assign_splits(man, method="random", dup_groups=dup)
    with pytest.raises(ValueError, match="test_size must be between 0 and 1"):
        assign_splits(man, test_size=1.5, dup_groups=dup)
    with pytest.raises(ValueError, match="external cohort\\(s\\) nowhere not found"):
        assign_splits(man, external_cohorts="nowhere", dup_groups=dup)
    with pytest.raises(ValueError, match="needs the external cohort"):
        assign_splits(man, method="external", dup_groups=dup)
    with pytest.raises(ValueError, match="stratify column 'birads_x'"):
        assign_splits(man, stratify="birads_x", dup_groups=dup)
    with pytest.raises(ValueError, match="only 1 leakage group"):
        assign_splits(man, dup_groups=np.zeros(len(man), int))


def test_describe_and_cli(messy_grouped, tmp_path, tmp_path_factory):
    from typer.testing import CliRunner

    from buscad.cli import app

    src = tmp_path / "in.csv"
    messy_grouped.save(src)
    out = tmp_path / "split.csv"
    r = CliRunner().invoke(
        app,
        ["data", "split", str(src), "-o", str(out), "--method", "kfold", "--k", "3", "--seed", "2"],
    )
    assert r.exit_code == 0, r.output
    assert "fold2" in r.output and "leakage groups" in r.output
    back = Manifest.load(out)
    assert set(back.df["split"]) == {"fold0", "fold1", "fold2"}
    tab = describe_splits(back)
    assert tab["n"].sum() == len(back)
    assert {"benign", "malignant", "groups"} <= set(tab.columns)
    same = assign_splits(messy_grouped, method="kfold", k=3, seed=2)
    assert list(back.df["split"]) == list(same.df["split"])
    # without a dup_group column the CLI searches near-duplicates itself (cached)
    plain = messy_grouped.df.drop(columns=["dup_group"])
    Manifest(plain, root=messy_grouped.root).save(tmp_path / "plain.csv")
    r = CliRunner().invoke(
        app,
        ["data", "split", str(tmp_path / "plain.csv"), "-o", str(tmp_path / "s2.csv"),
         "--cache-dir", str(_cache(tmp_path_factory))],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    s2 = Manifest.load(tmp_path / "s2.csv").df
    assert _one_side(s2.assign(dup_group=messy_grouped.df["dup_group"]), "dup_group")
    r = CliRunner().invoke(app, ["data", "split", str(src), "-o", str(out), "--method", "nope"])
    assert r.exit_code != 0


def test_cli_external_cohort(phantom_cohort, tmp_path):
    from typer.testing import CliRunner

    from buscad.cli import app

    src = tmp_path / "in.csv"
    phantom_cohort.with_columns(dup_group=np.arange(len(phantom_cohort))).save(src)
    out = tmp_path / "ext.csv"
    r = CliRunner().invoke(
        app, ["data", "split", str(src), "-o", str(out), "--external-cohort", "site_b"]
    )
    assert r.exit_code == 0, r.output
    assert "external" in r.output
    df = Manifest.load(out).df
    assert (df.loc[df["cohort"] == "site_b", "split"] == "external").all()
    assert set(df.loc[df["cohort"] == "site_a", "split"]) == {"train", "test"}
    r = CliRunner().invoke(
        app, ["data", "split", str(src), "-o", str(out), "--external-cohort", "site_z"]
    )
    assert r.exit_code != 0
    assert "site_z not found" in str(r.exception) + r.output


@pytest.mark.realdata
@pytest.mark.slow
def test_busi_grouped_split_keeps_groups_together(busi_dir, tmp_path_factory):
    """BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020); no patient ids, so groups
    are the near-duplicate groups."""
    import re

    from buscad.data.audit.duplicates import near_duplicate_groups

    rows = []
    for label in ("benign", "malignant", "normal"):
        for f in sorted((busi_dir / label).glob("*.png")):
            if "_mask" not in f.name:
                n = re.search(r"\((\d+)\)", f.name).group(1)
                masks = sorted(f.parent.glob(f"{f.stem}_mask*.png"))
                rows.append(
                    dict(image_id=f"busi_{label}_{n}", image_path=str(f), label=label,
                         mask_path=";".join(map(str, masks)), cohort="BUSI")
                )  # fmt: skip
    man = Manifest(pd.DataFrame(rows), root=busi_dir)
    assert len(man) == 780
    dup = near_duplicate_groups(man, cache_dir=_cache(tmp_path_factory))
    assert (dup.map(dup.value_counts()) > 1).sum() >= 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = assign_splits(man.lesions(), dup_groups=dup[man.df["label"] != "normal"].to_numpy())
    df = res.df.assign(dup_group=dup[man.df["label"] != "normal"].to_numpy())
    assert _one_side(df, "dup_group") and _one_side(df, "patient_id")
    assert abs((df["split"] == "test").mean() - 0.3) < 0.03
    folds = assign_splits(man, method="kfold", dup_groups=dup.to_numpy()).df.assign(
        dup_group=dup.to_numpy()
    )
    assert _one_side(folds, "dup_group")
