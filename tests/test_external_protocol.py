"""The external-validation protocol chooses its recipe without the external cohort.

``benchmarks/external.py``'s :func:`choose` ranks candidates by grouped CV of the
training cohort alone and scores the external cohort once; :func:`nested_cv`
makes the same choice inside every outer fold. Synthetic cohorts: two informative
feature blocks (``a*`` and ``b*``) and pure noise (``n*``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import external as EX

N_TRAIN, N_EXT = 150, 90


def _cohorts(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (training cohort ``T`` then external cohort ``E``) and their feature family ``f``."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_EXT
    X = rng.normal(size=(n, 9))
    cols = [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)] + [f"n{i}" for i in range(3)]
    ids = [f"img{i:03d}" for i in range(n)]
    y = (X[:, 0] + X[:, 1] + 0.8 * rng.normal(size=n) > 0).astype(int)
    df = pd.DataFrame(
        {
            "image_id": ids,
            "label": np.where(y == 1, "malignant", "benign"),
            "cohort": ["T"] * N_TRAIN + ["E"] * N_EXT,
            # pairs of near-duplicates share a group
            "group": [f"g{i // 2}" for i in range(n)],
        }
    )
    feats = pd.DataFrame(X, columns=cols)
    feats.insert(0, "image_id", ids)
    return df, feats


def _candidates() -> dict:
    c = {
        "a LR": EX.Candidate("a LR", ["f:^a"]),
        "b LR": EX.Candidate("b LR", ["f:^b"]),
        "noise LR": EX.Candidate("noise LR", ["f:^n"]),
        "a LR, C by CV": EX.Candidate("a LR, C by CV", ["f:^a"], kind="lrcv"),
        "stack: b + noise": EX.Combo("stack: b + noise", ["b LR", "noise LR"], how="stack"),
    }
    return c


def _choose(tmp: Path, df: pd.DataFrame, feats: pd.DataFrame) -> tuple[dict, EX.Data]:
    (tmp / "features").mkdir(parents=True)
    feats.to_parquet(tmp / "features" / "f.parquet", index=False)
    data = EX.Data(SimpleNamespace(df=df), tmp)
    cands = _candidates()
    eng = EX.Engine(data, cands, seed=0)
    train = np.flatnonzero(data.cohort == "T")
    ext = np.flatnonzero(data.cohort == "E")
    return EX.choose(eng, EX.selection_pool(cands), train, ext), data


def test_choice_ignores_the_external_labels(tmp_path):
    df, feats = _cohorts()
    ref, data = _choose(tmp_path / "true", df, feats)
    ext = np.flatnonzero(data.cohort == "E")
    perm = df.copy()
    labels = perm["label"].to_numpy()
    rng = np.random.default_rng(1)
    labels[ext] = labels[ext][rng.permutation(len(ext))]
    perm["label"] = labels
    assert (perm["label"] != df["label"]).sum() > 20  # the external labels really moved
    got, data_p = _choose(tmp_path / "permuted", perm, feats)

    assert got["chosen"] == ref["chosen"]
    assert ref["chosen"].startswith("a LR")
    assert got["cv_auc"] == ref["cv_auc"]
    np.testing.assert_array_equal(got["score"], ref["score"])
    # the external AUC does read the labels: the same scores, different AUCs
    from buscad.evaluate.delong import roc_auc

    assert roc_auc(data.y[ext], ref["score"]) > 0.85
    assert abs(roc_auc(data_p.y[ext], got["score"]) - 0.5) < 0.15


def test_choice_follows_the_training_labels(tmp_path):
    df, feats = _cohorts()
    ref, data = _choose(tmp_path / "a", df, feats)
    assert ref["chosen"].startswith("a LR")
    assert ref["cv_auc"]["a LR"] > 0.8 > 0.6 > ref["cv_auc"]["noise LR"]
    # relabel the training cohort from the b block: the choice moves to a b recipe
    x = feats[["b0", "b1"]].to_numpy().sum(1)
    relabel = df.copy()
    train = np.flatnonzero(data.cohort == "T")
    lab = relabel["label"].to_numpy()
    lab[train] = np.where(x[train] > 0, "malignant", "benign")
    relabel["label"] = lab
    got, _ = _choose(tmp_path / "b", relabel, feats)
    assert got["chosen"] in ("b LR", "stack: b + noise"), got["cv_auc"]
    assert got["cv_auc"][got["chosen"]] > 0.9
    assert got["cv_auc"]["a LR"] < 0.7


def test_nested_cv_chooses_inside_every_fold(tmp_path):
    df, feats = _cohorts()
    (tmp_path / "features").mkdir()
    feats.to_parquet(tmp_path / "features" / "f.parquet", index=False)
    data = EX.Data(SimpleNamespace(df=df), tmp_path)
    cands = _candidates()
    eng = EX.Engine(data, cands, seed=0)
    rows = np.arange(len(df))
    pool = EX.selection_pool(cands)
    nest = EX.nested_cv(eng, pool, rows, folds=3)
    tests = np.concatenate([te for _, te in nest["pairs"]])
    np.testing.assert_array_equal(np.sort(tests), rows)  # every row scored once
    for (tr, te), f in zip(nest["pairs"], nest["folds"], strict=True):
        assert not set(tr) & set(te)
        # the fold's choice is the training part's own choice
        assert f["chosen"] == EX.choose(eng, pool, tr, te[:0], folds=3)["chosen"]
        assert f["inner_cv_auc"] >= f["runner_up_cv_auc"]
    ev = EX.evaluate(eng, nest["chosen"], nest["pairs"])
    assert ev["metrics"]["n"] == len(rows)
    assert ev["metrics"]["auc"] > 0.8


# ------------------------------------------------------ outline sources (--outlines box)
def _outline_tables(tmp: Path, df: pd.DataFrame, feats: pd.DataFrame) -> pd.DataFrame:
    """Expert ``shape`` table = the informative features; ``box`` table = them plus noise."""
    import external_features as EF

    rng = np.random.default_rng(3)
    box = feats.copy()
    cols = [c for c in feats.columns if c != "image_id"]
    box[cols] = box[cols] + rng.normal(scale=1.5, size=(len(box), len(cols)))
    for source, t in (("expert", feats), ("box", box)):
        folder = EF.outline_dir(tmp, source) / "features"
        folder.mkdir(parents=True, exist_ok=True)
        t.to_parquet(folder / "shape.parquet", index=False)
    # a deep family: global (g_) and mask-guided (m_) pools
    deep = pd.DataFrame(
        {"image_id": feats["image_id"], "g_0000": feats["a0"], "m_0000": feats["b0"]}
    )
    deep.to_parquet(tmp / "features" / "deep_lite0_m0.1_s224.parquet", index=False)
    return box


def test_fit_and_score_outline_sources(tmp_path):
    """A model is fit on the ``fit`` source's rows and scores the ``score`` source's rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    df, feats = _cohorts()
    box = _outline_tables(tmp_path, df, feats)
    cands = {"a LR": EX.Candidate("a LR", ["shape:^a"])}
    train = np.flatnonzero(df["cohort"] == "T")
    ext = np.flatnonzero(df["cohort"] == "E")
    y = (df["label"] == "malignant").to_numpy().astype(int)
    cols = ["a0", "a1", "a2"]
    got = {}
    for fit in ("expert", "box"):
        data = EX.Data(SimpleNamespace(df=df), tmp_path, fit=fit, score="box")
        got[fit] = EX.Engine(data, cands, seed=0).predict("a LR", train, ext)
        src = feats if fit == "expert" else box
        sc = StandardScaler().fit(src[cols].iloc[train])
        lr = LogisticRegression(max_iter=5000).fit(sc.transform(src[cols].iloc[train]), y[train])
        want = lr.predict_proba(sc.transform(box[cols].iloc[ext]))[:, 1]
        np.testing.assert_allclose(got[fit], want, rtol=1e-6)
    assert not np.allclose(got["expert"], got["box"])
    # expert → expert reads the expert table only
    data = EX.Data(SimpleNamespace(df=df), tmp_path)
    s = EX.Engine(data, cands, seed=0).predict("a LR", train, ext)
    assert not np.allclose(s, got["expert"])


def test_deep_families_keep_the_box_crop_global_pool_only(tmp_path):
    df, feats = _cohorts()
    (tmp_path / "features").mkdir()
    _outline_tables(tmp_path, df, feats)
    expert = EX.Data(SimpleNamespace(df=df), tmp_path)
    box = EX.Data(SimpleNamespace(df=df), tmp_path, score="box")
    fam = "deep_lite0_m0.1_s224"
    assert list(expert.family(fam).columns) == ["g_0000", "m_0000"]
    assert list(box.family(fam).columns) == ["g_0000"]
    np.testing.assert_array_equal(box.family(fam)["g_0000"], expert.family(fam)["g_0000"])
    fams = {fam, "shape", "geometry", "size"}
    every, _ = EX.candidates(fams)
    glob, _ = EX.candidates(fams, global_pool_only=True)
    dropped = set(every) - set(glob)
    assert dropped == {"lite0 ROI mask-pool LR", "lite0 ROI global+mask-pool LR"}
    assert "lite0 ROI LR C=0.1" in glob and "smoothed outline shape" in glob


def test_score_cache_key_names_the_outlines_only_where_read(tmp_path):
    fams = {"deep_lite0_m0.1_s224", "shape", "echo", "geometry", "size"}
    cands, _ = EX.candidates(fams)
    expert = {"fit": "expert", "score": "expert"}
    mixed = {"fit": "expert", "score": "box"}
    boxed = {"fit": "box", "score": "box"}
    key = EX.spec_key
    for name in ("lite0 ROI LR C=0.1", "ref: image size"):  # no outline read: shared
        c = cands[name]
        assert key(c, cands, 0) == key(c, cands, 0, expert) == key(c, cands, 0, mixed)
        assert key(c, cands, 0, mixed) == key(c, cands, 0, boxed)
    desc = "descriptors: geometry + smoothed shape + echo"
    c = cands[desc]
    assert key(c, cands, 0) == key(c, cands, 0, expert)  # expert runs keep their cache
    assert len({key(c, cands, 0, s) for s in (expert, mixed, boxed)}) == 3


def test_dice():
    import external_features as EF

    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True  # 16 px
    b[4:8, 2:6] = True  # 16 px, 8 shared
    assert EF.dice(a, b) == 0.5
    assert EF.dice(a, a) == 1.0
    assert EF.dice(a, np.zeros_like(a)) == 0.0


def test_box_outlines_on_real_images(tmp_path):
    """LiteMedSAM prompted with the expert box outlines real lesions close to the expert mask."""
    import external_features as EF

    from buscad.data.io import read_mask
    from buscad.data.manifest import Manifest
    from buscad.segment.medsam import default_folder

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    busi = data / "BUSI" / "Dataset_BUSI_with_GT" / "benign"
    breast = data / "BrEaST-Lesions_USG" / "BrEaST-Lesions_USG-images_and_masks"
    if not (busi.is_dir() and breast.is_dir()):
        pytest.skip("BUSI / BrEaST-Lesions_USG not found under ../shared/data")
    if not (default_folder() / "litemedsam.json").is_file():
        pytest.skip("converted LiteMedSAM not in the cache (buscad segment medsam)")
    rows = [
        ("busi_benign_1", busi / "benign (1).png", busi / "benign (1)_mask.png", "BUSI"),
        ("breast_case072", breast / "case072.png", breast / "case072_tumor.png", "BrEaST"),
    ]
    df = pd.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "image_path": [str(r[1]) for r in rows],
            "mask_path": [str(r[2]) for r in rows],
            "label": ["benign", "malignant"],
            "cohort": [r[3] for r in rows],
        }
    )
    man = Manifest(df, root=tmp_path)
    box = EF.box_outlines(man, tmp_path, threads=1, log=lambda *_: None)
    t = pd.read_csv(EF.outline_dir(tmp_path, "box") / "outlines.csv")
    assert list(t["image_id"]) == [r[0] for r in rows]
    assert not t["fallback"].any()
    for i in range(len(rows)):
        got = read_mask(box.mask_paths(i))
        truth = read_mask(man.mask_paths(i))
        assert got.shape == truth.shape
        assert t["dice"].iat[i] == pytest.approx(EF.dice(got, truth))
        assert 0.8 < t["dice"].iat[i] < 1.0  # an outline of its own, near the expert's


# ------------------------------------------------- automatic outlines (--outlines auto)
def _auto_tables(tmp: Path, df: pd.DataFrame, feats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``auto-oof`` and ``auto-x`` shape tables (noisy copies) and which rows each outlined.

    ``auto-oof`` withholds every 7th row, ``auto-x`` every 5th; a withheld row has no
    feature row (as :func:`external_features.build_auto` writes them).
    """
    import external_features as EF

    _outline_tables(tmp, df, feats)
    rng = np.random.default_rng(5)
    cols = [c for c in feats.columns if c != "image_id"]
    out = {}
    for source, every in (("auto-oof", 7), ("auto-x", 5)):
        t = feats.copy()
        t[cols] = t[cols] + rng.normal(scale=1.0, size=(len(t), len(cols)))
        have = np.arange(len(t)) % every != 0
        folder = EF.outline_dir(tmp, source)
        (folder / "features").mkdir(parents=True, exist_ok=True)
        t[have].to_parquet(folder / "features" / "shape.parquet", index=False)
        pd.DataFrame({"image_id": t["image_id"], "cohort": df["cohort"], "found_any": have}).to_csv(
            folder / "outlines.csv", index=False
        )
        out[source] = t.assign(have=have)
    return out


def test_automatic_outlines_come_from_a_detector_that_never_saw_the_row(tmp_path):
    """External rows read ``auto-x``, held-out training-cohort rows ``auto-oof``; none read → NaN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    df, feats = _cohorts()
    (tmp_path / "features").mkdir()
    auto = _auto_tables(tmp_path, df, feats)
    cands = {"a LR": EX.Candidate("a LR", ["shape:^a"])}
    y = (df["label"] == "malignant").to_numpy().astype(int)
    train = np.flatnonzero(df["cohort"] == "T")
    ext = np.flatnonzero(df["cohort"] == "E")
    cols = ["a0", "a1", "a2"]
    for fit in ("expert", "auto"):
        data = EX.Data(SimpleNamespace(df=df), tmp_path, fit=fit, score="auto")
        assert data.score_role(train, ext) == "score_x"
        assert data.score_role(train[:100], train[100:]) == "score"
        assert data.score_role(np.arange(len(df)), ext) == "score"  # pooled: both cohorts
        eng = EX.Engine(data, cands, seed=0)
        src = feats if fit == "expert" else auto["auto-oof"]
        rows = train if fit == "expert" else train[auto["auto-oof"]["have"].to_numpy()[train]]
        sc = StandardScaler().fit(src[cols].iloc[rows])
        lr = LogisticRegression(max_iter=5000).fit(sc.transform(src[cols].iloc[rows]), y[rows])
        for tr, te, source in ((train, ext, "auto-x"), (train[:100], train[100:], "auto-oof")):
            got = eng.predict("a LR", tr, te)
            t = auto[source]
            have = t["have"].to_numpy()[te]
            assert np.isnan(got[~have]).all() and np.isfinite(got[have]).all()
            if tr is train:
                want = lr.predict_proba(sc.transform(t[cols].iloc[te[have]]))[:, 1]
                np.testing.assert_allclose(got[have], want, rtol=1e-6)
    # the metrics read the outlined rows and say how many were withheld
    ev = EX.evaluate(eng, "a LR", [(train, ext)])
    m = ev["metrics"]
    n_have = int(auto["auto-x"]["have"].to_numpy()[ext].sum())
    assert m["n"] == n_have and m["n_rows"] == len(ext) and m["n_withheld"] == len(ext) - n_have
    r = EX.choose(eng, ["a LR"], train, ext)
    assert np.isfinite(r["cv_auc"]["a LR"])
    assert m["auc_all_rows_withheld_as_coin"] < m["auc"]  # withheld pairs pull towards 0.5


def test_withheld_auc():
    """Every pair with a withheld (NaN) row counts ½; with none withheld it is the Mann-Whitney AUC."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = y + rng.normal(size=60)
    assert EX.withheld_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    # 2 malignant (0.9, NaN), 2 benign (0.1, 0.95): pairs 1, 0, ½, ½ -> 2/4
    y2 = np.array([1, 1, 0, 0])
    s2 = np.array([0.9, np.nan, 0.1, 0.95])
    assert EX.withheld_auc(y2, s2) == pytest.approx(0.5)
    s3 = np.array([0.9, np.nan, 0.1, 0.2])  # pairs 1, 1, ½, ½ -> 3/4
    assert EX.withheld_auc(y2, s3) == pytest.approx(0.75)


def test_score_cache_key_of_automatic_outlines_names_them_for_every_candidate(tmp_path):
    fams = {"deep_lite0_m0.1_s224", "shape", "echo", "geometry", "size"}
    cands, _ = EX.candidates(fams)
    df, feats = _cohorts()
    (tmp_path / "features").mkdir()
    _auto_tables(tmp_path, df, feats)
    data = EX.Data(SimpleNamespace(df=df), tmp_path, fit="expert", score="auto")
    assert data.sources == {"fit": "expert", "score": "auto-oof", "score_x": "auto-x"}
    c = cands["lite0 ROI LR C=0.1"]  # reads no outline, but its crop and withheld rows change
    assert EX.spec_key(c, cands, 0, data.sources) != EX.spec_key(c, cands, 0)
    box = EX.Data(SimpleNamespace(df=df), tmp_path, score="box")
    assert box.sources == {"fit": "expert", "score": "box"}  # box runs keep their cache keys
