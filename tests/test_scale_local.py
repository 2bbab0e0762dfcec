"""`buscad predict --manifest`: batched ONNX scoring, resumable Parquet shards, exactly once."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tests.scale_fixtures import heatmap_problems, make_bundle, make_manifest
from typer.testing import CliRunner

from buscad.cli import app


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    bundle = make_bundle(root / "bundle", input_size=128)  # a 4 x 4 Grad-CAM grid
    manifest = make_manifest(root / "data", 24)
    return bundle, manifest


def test_predict_batch_matches_predict(setup):
    from buscad.bundle.batch import items_from_manifest, predict_batch
    from buscad.bundle.bundle import Bundle
    from buscad.data.io import read_image, read_mask

    bundle, manifest = setup
    b = Bundle.load(bundle, engine="onnx")
    items = items_from_manifest(manifest)[:6]
    grays = [read_image(it.image)[0] for it in items]
    masks = [read_mask(it.mask, shape=g.shape) for it, g in zip(items, grays, strict=True)]
    masks[2] = None  # whole image
    masks[3] = np.zeros_like(masks[3])  # empty mask: this image fails, the others do not
    got = predict_batch(b, grays, masks, [{}] * 6, heatmap=True)
    assert "mask is empty" in str(got[3])
    for k in (0, 1, 2, 4, 5):
        one = b.predict(grays[k], mask=masks[k], heatmap=True)
        assert got[k].roi == one.roi and got[k].roi_source == one.roi_source
        assert got[k].ai_score == pytest.approx(one.ai_score, abs=1e-6)
        assert got[k].model_scores["dlr"] == pytest.approx(one.model_scores["dlr"], abs=1e-6)
        np.testing.assert_allclose(got[k].heatmap, one.heatmap, atol=1e-4)
        assert heatmap_problems(got[k].heatmap, got[k].roi) == [], k  # not two all-zero maps
    assert got[2].roi_source == "whole"


def test_heatmap_check_rejects_the_maps_of_a_random_head(setup, tmp_path):
    """The old assertion (batched map == single map) passes on two all-zero maps, which is what
    a random-weight CNN's Grad-CAM is; :func:`heatmap_problems` rejects them."""
    from buscad.bundle.bundle import Bundle
    from buscad.data.io import read_image

    _, manifest = setup
    gray = read_image(manifest.parent / "img" / "case_00000.png")[0]
    zero = np.zeros(gray.shape, np.float32)
    np.testing.assert_allclose(zero, zero, atol=1e-4)  # the old test's only check
    whole = (0, 0, gray.shape[1], gray.shape[0])
    assert any(p.startswith("peak 0 (all zero: True)") for p in heatmap_problems(zero, whole))
    random_head = Bundle.load(make_bundle(tmp_path / "random", lesion_head=False), engine="onnx")
    pred = random_head.predict(gray, heatmap=True)
    assert not pred.heatmap.any()  # a random head: Grad-CAM is zero everywhere
    assert heatmap_problems(pred.heatmap, pred.roi) != []


def test_heatmap_points_at_the_lesion(setup):
    """The probe head's Grad-CAM is hotter on the lesion than around it: on whole images,
    and inside the lesion's crop (lesion vs the crop's margin)."""
    from buscad.bundle.batch import items_from_manifest, predict_batch
    from buscad.bundle.bundle import Bundle
    from buscad.data.io import read_image, read_mask

    bundle, manifest = setup
    b = Bundle.load(bundle, engine="onnx")
    items = items_from_manifest(manifest)[:8]
    grays = [read_image(it.image)[0] for it in items]
    masks = [read_mask(it.mask, shape=g.shape) for it, g in zip(items, grays, strict=True)]
    for given in (None, masks):
        preds = predict_batch(b, grays, given or [None] * 8, [{}] * 8, heatmap=True)
        for m, p in zip(masks, preds, strict=True):
            assert heatmap_problems(p.heatmap, p.roi) == []
            x0, y0, x1, y1 = p.roi
            shown = np.zeros_like(m)
            shown[y0:y1, x0:x1] = True
            gap = p.heatmap[m].mean() - p.heatmap[shown & ~m].mean()
            assert gap > 0.05, (p.roi_source, gap)


def _run(args):
    res = CliRunner().invoke(app, ["predict", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def test_manifest_run_matches_image_list_and_resumes_exactly_once(setup, tmp_path):
    from buscad.bundle import batch
    from buscad.bundle.bundle import Bundle

    bundle, manifest = setup
    df = pd.read_csv(manifest)
    df.loc[5, "image_path"] = "img/missing.png"  # a failed row, not a crashed run
    df.to_csv(manifest.with_name("m2.csv"), index=False)
    m2 = manifest.with_name("m2.csv")
    full = tmp_path / "full"
    _run([bundle, "--manifest", m2, "-o", full, "--no-heatmap", "--batch-size", "4",
          "--per-image-json"])  # fmt: skip
    s = json.loads((full / "summary.json").read_text())
    assert (s["n_items"], s["n_rows"], s["n_failed"], s["duplicates"], s["missing"]) == (
        24,
        24,
        1,
        0,
        0,
    )
    rows = pd.read_csv(full / "summary.csv")
    assert rows["image_id"].tolist() == df["image_id"].tolist()
    assert "missing.png" in rows.loc[5, "error"] and np.isnan(rows.loc[5, "ai_score"])
    assert rows["error"].isna().sum() == 23
    doc = json.loads((full / "case_00000.json").read_text())
    assert doc["image_id"] == "case_00000" and doc["ai_score"] == pytest.approx(rows["ai_score"][0])
    assert rows.loc[0, "roi"] == " ".join(map(str, doc["roi"]))

    # the image-list path (one Bundle.predict per image) gives the same scores
    imgs = [manifest.parent / p for p in df["image_path"][:3]]
    masks = [manifest.parent / p for p in df["mask_path"][:3]]
    lst = tmp_path / "list"
    _run([bundle, *imgs, *[a for m in masks for a in ("--mask", m)], "-o", lst, "--no-heatmap"])
    one = pd.read_csv(lst / "summary.csv")
    assert "image_id" not in one.columns
    np.testing.assert_allclose(one["ai_score"], rows["ai_score"][:3], atol=1e-6)
    np.testing.assert_allclose(one["p_dlr"], rows["p_dlr"][:3], atol=1e-6)

    # a run killed after 10 images: finished shards stay, the rerun scores the rest only
    b = Bundle.load(bundle)
    items = batch.items_from_manifest(m2, b.clinical_inputs)
    part = tmp_path / "part"
    batch.run_local(b, items[:10], part, heatmap=False, batch_size=4)
    n_shards = len(list((part / batch.PARTS).glob("*.parquet")))
    res = _run([bundle, "--manifest", m2, "-o", part, "--no-heatmap", "--batch-size", "4"])
    assert "10 already scored" in res.output
    s2 = json.loads((part / "summary.json").read_text())
    assert (s2["n_rows"], s2["duplicates"], s2["missing"], s2["this_run_rows"]) == (24, 0, 0, 14)
    assert len(list((part / batch.PARTS).glob("*.parquet"))) > n_shards
    again = pd.read_csv(part / "summary.csv")
    pd.testing.assert_frame_equal(
        again.drop(columns="ms"), rows.drop(columns="ms"), check_exact=False, atol=1e-6
    )
    # a third run has nothing left to do and writes no row
    _run([bundle, "--manifest", m2, "-o", part, "--no-heatmap"])
    assert json.loads((part / "summary.json").read_text())["this_run_rows"] == 0
    assert len(batch.collect(part)) == 24
    assert not list(part.glob("*.json"))[1:]  # only summary.json: no per-image JSON by default
    assert [f.name for f in part.glob("*.json")] == ["summary.json"]


def test_manifest_needs_image_path_and_unique_ids(tmp_path):
    from buscad.bundle.batch import items_from_manifest
    from buscad.errors import ManifestError

    f = tmp_path / "m.csv"
    pd.DataFrame({"image_id": ["a", "a"], "image_path": ["x.png", "y.png"]}).to_csv(f, index=False)
    with pytest.raises(ManifestError, match="duplicate image_id 'a'"):
        items_from_manifest(f)
    pd.DataFrame({"image_id": ["a"]}).to_csv(f, index=False)
    with pytest.raises(ManifestError, match="needs an 'image_path' column"):
        items_from_manifest(f)
