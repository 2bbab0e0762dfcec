"""Automatic lesion outlines put to work: ``roi: auto | box`` in studies, bundles and predict.

A tiny segmenter is trained here on phantoms (64 px, one thread, ~80 steps) and exported to
ONNX; it then outlines the study's rows and travels in the bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import buscad._compat  # noqa: F401  (before smp imports torchvision)
from buscad.config import config_from_dict
from buscad.errors import ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("segmentation_models_pytorch")

SIZE = [96, 112]


@pytest.fixture(scope="module")
def segmenter_dir(tiny_segmenter) -> Path:
    """A segmenter trained on its own phantoms (never the study's), saved with its ONNX file."""
    return tiny_segmenter[2]


# ------------------------------------------------------------------ config
def test_roi_config_defaults_and_errors(tmp_path: Path) -> None:
    base = {"cohorts": [{"name": "a", "phantom": {"n": 8}}]}
    cfg = config_from_dict(base)
    assert cfg.roi == "expert" and cfg.roi_modes == ["expert"] and cfg.segment.model is None
    with pytest.raises(
        ConfigError, match=r"roi: auto and box need segment\.model .* or segment\.train"
    ):
        config_from_dict({**base, "roi": "auto"})
    with pytest.raises(ConfigError, match="at most once"):
        config_from_dict({**base, "roi": ["expert", "expert"]})
    with pytest.raises(ConfigError, match="roi"):
        config_from_dict({**base, "roi": "drawn"})
    cfg = config_from_dict(
        {**base, "roi": ["expert", "auto"], "segment": {"model": "seg"}}, base_dir=tmp_path
    )
    assert cfg.roi_modes == ["expert", "auto"]
    assert cfg.resolve(cfg.segment.model) == (tmp_path / "seg").resolve()


# --------------------------------------------------------------- outlines
@pytest.mark.slow
def test_outline_manifest_auto_box_and_expert(segmenter_dir: Path, tmp_path: Path) -> None:
    from buscad.data.io import read_mask
    from buscad.data.manifest import Manifest
    from buscad.data.phantom import generate_cohort
    from buscad.study.roi import MORPH_COLUMNS, outline_manifest

    man = generate_cohort(10, tmp_path / "data", seed=7, size=tuple(SIZE))
    man = man.subset((man.df["label"] != "normal").to_numpy())
    s_auto = outline_manifest(man, "auto", tmp_path / "auto", segmenter_dir, morphology=True)
    auto = Manifest.load(tmp_path / "auto" / "manifest.csv")
    assert len(auto) == len(man) == s_auto["rows"]
    assert s_auto["found"] + s_auto["whole_image_fallback"] == len(man)
    assert s_auto["found"] >= len(man) // 2
    assert set(auto.df["roi_source"]) <= {"auto", "whole"}
    for i in range(len(auto)):  # every mask path is a new PNG in the stage folder
        p = auto.mask_paths(i)[0]
        assert p.parent == (tmp_path / "auto" / "masks").resolve()
        m = read_mask([p])
        if auto.df["roi_source"].iat[i] == "whole":
            assert m.all()
        else:
            assert 0 < auto.df["roi_confidence"].iat[i] <= 1 and 0 < m.sum() < m.size
    assert set(MORPH_COLUMNS) <= set(auto.df.columns)
    assert set(auto.df["morph_shape"].dropna()) <= {"oval", "round", "irregular"}
    # the geometry reference reads the predicted outline
    assert not np.allclose(auto.df["log_area"], _expert_log_area(man))
    # box: the expert box prompted through the segmenter overlaps the expert outline
    s_box = outline_manifest(man, "box", tmp_path / "box", segmenter_dir, jitter=0.1, seed=1)
    box = Manifest.load(tmp_path / "box" / "manifest.csv")
    assert set(box.df["roi_source"]) <= {"box", "whole"}
    assert s_box["median_dice_vs_expert"] > 0.6
    summary = json.loads((tmp_path / "box" / "roi.json").read_text())
    assert summary["segmenter"]["training"]["n_items"] > 0 and summary["jitter"] == 0.1
    # expert: masks untouched, only the computed descriptors added
    outline_manifest(man, "expert", tmp_path / "exp", morphology=True)
    exp = Manifest.load(tmp_path / "exp" / "manifest.csv")
    assert [[p.resolve() for p in exp.mask_paths(i)] for i in range(len(exp))] == [
        [p.resolve() for p in man.mask_paths(i)] for i in range(len(man))
    ]
    assert (exp.df["roi_dice"] == 1.0).all()
    assert exp.df["morph_solidity"].between(0, 1).all()


def _expert_log_area(man) -> np.ndarray:
    from buscad.data.audit.masks import mask_geometry
    from buscad.data.io import read_mask

    return np.array(
        [mask_geometry(read_mask(man.mask_paths(i)))["log_area"] for i in range(len(man))]
    )


# ------------------------------------------------------------------ study
@pytest.fixture(scope="module")
def roi_run(segmenter_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from buscad.study.runner import run_study

    raw = {
        "name": "roi",
        "cohorts": [
            {"name": "a", "phantom": {"n": 32, "seed": 11, "size": SIZE}},
            {"name": "b", "role": "external", "phantom": {"n": 16, "seed": 12, "size": SIZE}},
        ],
        "models": ["deep", "radiomics", "us", "integrated"],
        "deep": {
            "backbones": ["efficientnet_lite0"],
            "epochs": 1,
            "input_size": 48,
            "selection_folds": 2,
        },
        "clinical": {"us_columns": ["morph_shape", "morph_margin", "morph_orientation"]},
        "split": {"cv_folds": 2},
        "gallery_size": 0,
        "roi": ["expert", "auto"],
        "segment": {"model": str(segmenter_dir)},
    }
    cfg = config_from_dict(raw, base_dir=tmp_path_factory.mktemp("cfg"))
    out = tmp_path_factory.mktemp("run")
    return run_study(cfg, out), out


@pytest.mark.slow
def test_study_runs_expert_and_auto_side_by_side(roi_run) -> None:
    res, out = roi_run
    m = res.metrics
    assert list(m.columns[:2]) == ["arm", "roi"]
    assert set(m["roi"]) == {"expert", "auto"}
    for mode in ("expert", "auto"):
        got = set(m.loc[m["roi"] == mode, "model"])
        assert {"deep", "radiomics", "us", "integrated", "shortcut: mask geometry"} <= got, mode
    # both results are written and differ only through the outlines
    assert set(res.predictions) == {"a→b", "a→b [roi: auto]"}
    pe = pd.read_csv(res.predictions["a→b"])
    pa = pd.read_csv(res.predictions["a→b [roi: auto]"])
    assert (pe["case_id"] == pa["case_id"]).all() and (pe["label"] == pa["label"]).all()
    assert not np.allclose(pe["radiomics"], pa["radiomics"], equal_nan=True)
    assert not np.allclose(
        pe["shortcut: mask geometry"], pa["shortcut: mask geometry"], equal_nan=True
    )
    html = (out / "report.html").read_text()
    assert "Expert vs automatic lesion outlines" in html
    assert "computed descriptors" in html and "not out-of-fold" in html
    assert any("roi auto:" in w for w in res.warnings)
    saved = pd.read_csv(out / "metrics.csv")
    assert set(saved["roi"]) == {"expert", "auto"}
    # the auto stage's outlines are PNGs of the kept rows
    stage = next((out / "cache").glob("roi-auto-*"))
    roi = pd.read_csv(stage / "roi.csv")
    assert len(list((stage / "masks").glob("*.png"))) == len(roi) > 0


@pytest.mark.slow
def test_bundle_carries_segmenter_and_predicts_without_mask(roi_run, tmp_path: Path) -> None:
    from buscad.bundle.bundle import Bundle
    from buscad.data.io import read_image
    from buscad.data.manifest import Manifest

    _res, out = roi_run
    doc = json.loads((out / "bundle" / "bundle.json").read_text())
    assert doc["segmenter"]["models_trained_on"] == "auto"
    assert (out / "bundle" / "segmenter" / "segmenter.onnx").is_file()
    assert (out / "bundle" / "segmenter" / "segmenter.json").is_file()
    assert not list((out / "bundle").rglob("*.pkl"))
    b = Bundle.load(out / "bundle", engine="onnx", num_threads=1)
    assert b.has_segmenter
    stage = next((out / "cache").glob("data-b-*"))
    man = Manifest.load(stage / "manifest.csv")
    lesion = [i for i in range(len(man)) if man.df["label"].iat[i] != "normal"]
    preds = []
    for i in lesion[:6]:
        gray, _ = read_image(man.image_path(i))
        preds.append((i, gray, b.predict(gray, clinical={})))
    auto = [(i, g, p) for i, g, p in preds if p.roi_source == "auto"]
    assert auto, [p.notes for _, _, p in preds]
    i, gray, p = auto[0]
    assert 0.0 <= p.roi_confidence <= 1.0
    assert p.outline is not None and p.outline.shape == gray.shape
    x0, y0, x1, y1 = p.roi
    assert (x1 - x0) * (y1 - y0) < gray.size  # the lesion's crop, not the whole image
    # radiomics ran on the predicted outline; the US model on its computed descriptors
    assert p.model_scores["radiomics"] is not None and "radiomics" not in p.skipped_models
    if "us" in doc["models"]:
        assert p.model_scores["us"] is not None, p.skipped_models
    j = p.to_json()
    assert j["roi_source"] == "auto" and 0 <= j["roi_confidence"] <= 1 and "outline" not in j
    json.dumps(j)
    # a box prompts the segmenter
    from buscad.segment.base import mask_box

    pb = b.predict(gray, box=mask_box(p.outline), clinical={})
    assert pb.roi_source == "box" and 0 <= pb.roi_confidence <= 1
    # a given mask still wins; auto_roi=False is the old whole-image behaviour
    pm = b.predict(gray, mask=p.outline, clinical={})
    assert pm.roi_source == "mask" and pm.roi_confidence is None
    assert pm.ai_score == pytest.approx(p.ai_score, abs=1e-6)
    assert b.predict(gray, auto_roi=False).roi_source == "whole"
    # nothing to find: an honest note and the whole image
    pz = b.predict(np.full(gray.shape, 20, np.uint8), clinical={})
    assert pz.roi_source == "whole" and pz.roi_confidence is None
    assert pz.notes and "no lesion found" in pz.notes[0] and "whole image" in pz.notes[0]
    # ... and no AI call (docs/safety.md): the caution comes first in the headline
    assert pz.withheld and "no lesion found in the image by the segmenter" in pz.cautions
    assert pz.roi == (0, 0, gray.shape[1], gray.shape[0])
    assert "radiomics" in pz.skipped_models
    # a damaged segmenter is refused when the bundle is loaded, naming the file
    import shutil

    from buscad.errors import ModelFileError

    bad = shutil.copytree(out / "bundle", tmp_path / "bad")
    (bad / "segmenter" / "segmenter.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match=r"segmenter\.onnx.*SHA-256 does not match"):
        Bundle.load(bad, engine="onnx")
    (bad / "segmenter" / "segmenter.onnx").unlink()
    with pytest.raises(ModelFileError, match="segmenter ONNX model not found"):
        Bundle.load(bad, engine="onnx")


@pytest.mark.slow
def test_bundle_auto_roi_imports_no_torch(roi_run) -> None:
    _res, out = roi_run
    code = (
        "import sys, numpy as np\n"
        "from buscad.bundle.bundle import Bundle\n"
        f"b = Bundle.load({str(out / 'bundle')!r}, engine='onnx', num_threads=1)\n"
        "g = np.random.default_rng(0).integers(0, 255, (96, 112), dtype=np.uint8)\n"
        "p = b.predict(g, clinical={})\n"
        "p = b.predict(g, box=(20, 20, 60, 60), clinical={})\n"
        "assert p.roi_source in ('box', 'auto', 'whole'), p.roi_source\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok')\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"


def test_jitter_box_moves_each_side_within_the_fraction() -> None:
    from buscad.study.roi import jitter_box

    rng = np.random.default_rng(0)
    box = (10, 20, 50, 40)  # 40 wide, 20 high
    assert jitter_box(box, 0.0, rng) == (10, 20, 50, 40)
    got = np.array([jitter_box(box, 0.1, rng) for _ in range(200)])
    d = np.abs(got - np.array(box, float))
    assert d[:, [0, 2]].max() <= 4.0 and d[:, [1, 3]].max() <= 2.0
    assert d[:, [0, 2]].max() > 3.0  # it does move


def test_computed_descriptors_of_an_outline() -> None:
    from buscad.bundle.bundle import computed_descriptors

    yy, xx = np.mgrid[:80, :100]
    ellipse = ((xx - 50) / 30.0) ** 2 + ((yy - 40) / 12.0) ** 2 <= 1  # wide, smooth, parallel
    d = computed_descriptors(ellipse, ["morph_shape", "morph_orientation", "morph_solidity"])
    assert d["morph_shape"] == "oval" and d["morph_orientation"] == "parallel"
    assert 0.95 < d["morph_solidity"] <= 1.0
    assert computed_descriptors(np.zeros((8, 8), bool), ["morph_shape"]) == {}


@pytest.mark.slow
def test_study_trains_segmenters_per_fold_for_out_of_fold_outlines(tmp_path: Path) -> None:
    """``segment.train``: a training row of fold k is outlined by the segmenter of the other folds."""
    from buscad.study.runner import run_study

    raw = {
        "name": "oof",
        "cohorts": [
            {"name": "a", "phantom": {"n": 20, "seed": 21, "size": SIZE}},
            {"name": "b", "role": "external", "phantom": {"n": 8, "seed": 22, "size": SIZE}},
        ],
        "models": ["radiomics"],
        "split": {"cv_folds": 2},
        "gallery_size": 0,
        "roi": "auto",
        # the mechanics of out-of-fold outlines, not their quality: tiny segmenters
        "segment": {
            "train": {"input_size": 32, "epochs": 12, "max_steps": 12, "lr": 3e-3, "threads": 1}
        },
    }
    res = run_study(config_from_dict(raw, base_dir=tmp_path), tmp_path / "run")
    cache = tmp_path / "run" / "cache"
    names = sorted(p.name.rsplit("-", 1)[0] for p in cache.glob("segmenter-*"))
    assert names == [f"segmenter-a-to-b-{n}" for n in ("all", "f0", "f1")]
    stage = next(cache.glob("roi-auto-*"))
    roi = pd.read_csv(stage / "roi.csv")
    split = pd.read_csv(next(cache.glob("split-*")) / "manifest.csv")
    both = split.merge(roi, on="image_id")
    assert len(both) == len(split) == len(roi)
    tr = both["split"] == "train"
    assert (both.loc[tr, "roi_model"] == "f" + both.loc[tr, "cv_fold"].astype(str)).all()
    assert (both.loc[~tr, "roi_model"] == "all").all()
    info = json.loads((stage / "roi.json").read_text())
    assert info["outlines"].startswith("out-of-fold") and info["simplification"] is None
    assert set(info["segmenters"]) == {"all", "f0", "f1"}
    assert info["found"] + info["whole_image_fallback"] == len(roi)
    m = res.metrics
    assert set(m["roi"]) == {"auto"}
    assert set(m.loc[m["model"] == "radiomics", "cohort"]) == {
        "a train (CV)",
        "a internal test",
        "b external",
    }
    assert any("out-of-fold" in w for w in res.warnings)


@pytest.mark.slow
def test_expert_study_with_segment_train_bundles_one_segmenter(tmp_path: Path) -> None:
    """``roi: expert`` + ``segment.train``: the models read expert masks; only the segmenter on
    all training rows is trained, and the bundle carries it (predict outlines without a mask)."""
    from buscad.bundle.bundle import Bundle
    from buscad.study.runner import run_study

    raw = {
        "name": "expert-seg",
        "cohorts": [
            {"name": "a", "phantom": {"n": 20, "seed": 23, "size": SIZE}},
            {"name": "b", "role": "external", "phantom": {"n": 8, "seed": 24, "size": SIZE}},
        ],
        "models": ["deep"],
        "deep": {"backbones": ["efficientnet_lite0"], "epochs": 1, "input_size": 48},
        "split": {"cv_folds": 2},
        "gallery_size": 0,
        "roi": "expert",
        "segment": {
            "train": {"input_size": 32, "epochs": 12, "max_steps": 12, "lr": 3e-3, "threads": 1}
        },
    }
    res = run_study(config_from_dict(raw, base_dir=tmp_path), tmp_path / "run")
    cache = tmp_path / "run" / "cache"
    assert [p.name.rsplit("-", 1)[0] for p in cache.glob("segmenter-*")] == ["segmenter-a-to-b-all"]
    assert not list(cache.glob("roi-auto-*")) and "roi" not in res.metrics.columns
    doc = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert doc["segmenter"]["models_trained_on"] == "expert"
    assert doc["segmenter"]["training"]["steps"] == 12
    b = Bundle.load(tmp_path / "run" / "bundle")
    assert b.has_segmenter
    img = np.full((SIZE[0], SIZE[1]), 120, np.uint8)
    pred = b.predict(img, heatmap=False)
    assert pred.roi_source in ("auto", "whole")  # outlined, or "no lesion found" said so
    assert pred.roi_source == "auto" or any("no lesion found" in n for n in pred.notes)


def test_predict_batch_outlines_maskless_images_as_predict_does(
    segmenter_dir: Path, tmp_path: Path
) -> None:
    """A bundle with a segmenter: the batched path outlines each mask-less image as
    ``Bundle.predict`` does, reads given masks as given, and runs the CNN once for all."""
    from tests.scale_fixtures import heatmap_problems, make_bundle, make_manifest

    from buscad.bundle.batch import items_from_manifest, predict_batch
    from buscad.bundle.bundle import Bundle
    from buscad.data.io import read_image, read_mask

    b = Bundle.load(make_bundle(tmp_path / "bundle", segmenter=segmenter_dir), engine="onnx")
    items = items_from_manifest(make_manifest(tmp_path / "data", 5, seed=4))
    grays = [read_image(it.image)[0] for it in items]
    masks: list = [None] * 3
    masks += [read_mask(it.mask, shape=g.shape) for it, g in zip(items[3:], grays[3:], strict=True)]
    calls = []
    run = b._onnx.explain
    b._onnx.explain = lambda x: calls.append(len(x)) or run(x)
    got = predict_batch(b, grays, masks, [{}] * 5, heatmap=True)
    assert calls == [5]  # one CNN pass for the five images
    for k in range(5):
        one = b.predict(grays[k], mask=masks[k], heatmap=True)
        assert (got[k].roi, got[k].roi_source, got[k].notes) == (one.roi, one.roi_source, one.notes)
        assert got[k].roi_confidence == one.roi_confidence
        assert got[k].ai_score == pytest.approx(one.ai_score, abs=1e-6)
        assert got[k].model_scores["dlr"] == pytest.approx(one.model_scores["dlr"], abs=1e-6)
        np.testing.assert_allclose(got[k].heatmap, one.heatmap, atol=1e-4)
        assert heatmap_problems(got[k].heatmap, got[k].roi) == [], k  # not two all-zero maps
        if masks[k] is None:
            assert "segment" in got[k].timings_ms
    assert {p.roi_source for p in got[:3]} <= {"auto", "whole"} and got[3].roi_source == "mask"
    assert any(p.roi_source == "auto" for p in got[:3])
