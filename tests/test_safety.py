"""Knowing when not to answer (docs/safety.md): training record, study flags, OOD model, image checks.

Phantom-only tests always run; the real-data tests (BUSI, BrEaST) skip without ``../shared/data``.
pydicom's ultrasound examples ship with pydicom. Data: BUSI (Al-Dhabyani et al., Data in Brief
28:104863, 2020; CC0); BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; CC BY 4.0).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont
from tests.scale_fixtures import make_bundle, make_manifest

from buscad.bundle.bundle import Bundle, add_ood, write_bundle
from buscad.bundle.ood_encoder import SPACE, OODEncoder, encoder_path, region
from buscad.bundle.safety import (
    PHANTOM_BANNER,
    PROVENANCE_UNKNOWN,
    FeatureOOD,
    model_flags,
    study_flags,
    training_from_rows,
    training_record,
    with_image_checks,
)
from buscad.data import quality
from buscad.data.io import read_image, reader_settings
from buscad.errors import ModelFileError
from buscad.utils import file_sha256

PHANTOM_TRAINING = training_record(
    [{"name": "site_a", "phantom": True, "images": 40, "labels": {"benign": 20, "malignant": 20}}],
    64,
    "efficientnet_lite0",
)
PYDICOM_US = (
    "examples_rgb_color.dcm",  # colour Doppler of a lymph node, "BAPTIST MED CTR"
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "ExplVR_BigEnd.dcm",
    "examples_ybr_color.dcm",  # a cardiac echo cine
)


def _read(path: Path, mask: Path | None = None):
    gray, meta = read_image(path)
    m = None if mask is None else np.asarray(Image.open(mask)) > 0
    return gray, meta, m


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("phantoms")
    man = make_manifest(folder, 50, size=(128, 160))
    return folder, pd.read_csv(man)


@pytest.fixture(scope="module")
def phantom_bundle(tmp_path_factory, phantoms) -> Path:
    """A phantom-trained bundle: its OOD model fitted on 40 phantoms' encoder features
    (the regions the CNN reads, through the frozen ImageNet encoder; 5 folds)."""
    folder, df = phantoms
    out = make_bundle(tmp_path_factory.mktemp("b") / "bundle")
    b = Bundle.load(out)
    enc = OODEncoder(encoder_path())
    regions = []
    for r in df.iloc[:40].itertuples():
        gray, _, m = _read(folder / r.image_path, folder / r.mask_path)
        regions.append(region(gray, b._prepare(gray, m).roi))
    add_ood(out, enc.features(regions), PHANTOM_TRAINING, folds=np.arange(40) % 5, space=SPACE)
    return out


# ----------------------------------------------------------------------------- OOD model
def test_ood_model_limit_is_the_leave_one_out_percentile(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (300, 16)) + 5.0  # features are non-negative-ish after pooling
    ood = FeatureOOD.fit(train, k=5)
    # the limit: 99th percentile of each row's distance to its 5th nearest *other* row
    z = train / np.linalg.norm(train, axis=1, keepdims=True)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    loo = np.sort(d, axis=1)[:, 4]
    assert ood.limit == pytest.approx(np.percentile(loo, 99), rel=1e-4)
    # new rows of the same distribution pass (about 1% flagged); other distributions fail
    same = rng.normal(0, 1, (400, 16)) + 5.0
    flagged = (ood.distance(same) > ood.limit).mean()
    assert flagged < 0.06
    other = rng.normal(0, 1, (50, 16)) + np.r_[np.full(8, 9.0), np.full(8, 1.0)]
    assert (ood.distance(other) > ood.limit).all()
    # safetensors + JSON, never a pickle; the same numbers after loading
    entry = ood.save(tmp_path)
    raw = (tmp_path / "ood.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8 : 8 + n])["train"]["dtype"] == "F32"
    assert entry["k"] == 5 and entry["rows"] == 300 and entry["percentile"] == 99.0
    back = FeatureOOD.load(tmp_path, entry["sha256"])
    np.testing.assert_allclose(back.distance(other), ood.distance(other), rtol=1e-6)
    from buscad.errors import ModelFileError

    with pytest.raises(ModelFileError, match="SHA-256"):
        FeatureOOD.load(tmp_path, "0" * 64)


def test_ood_limit_out_of_fold_survives_near_duplicates():
    """Every training image has a near-twin (BUSI has many): the leave-one-out limit collapses
    to the twins' distance and flags fresh images of the same distribution; the out-of-fold
    limit (twins in one fold, distances to the other folds) does not."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, (150, 16)) + 5.0
    train = np.vstack([base, base + rng.normal(0, 1e-3, base.shape)])
    folds = np.tile(np.arange(150) % 5, 2)  # a twin shares its original's fold
    loo = FeatureOOD.fit(train, k=1)
    oof = FeatureOOD.fit(train, k=1, folds=folds)
    z = train / np.linalg.norm(train, axis=1, keepdims=True)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    d[folds[:, None] == folds[None, :]] = np.inf
    assert oof.limit == pytest.approx(np.percentile(d.min(1), 99), rel=1e-4)
    assert oof.limit_rule == "out-of-fold" and loo.limit_rule == "leave-one-out"
    fresh = rng.normal(0, 1, (400, 16)) + 5.0
    assert (loo.distance(fresh) > loo.limit).mean() > 0.9
    assert (oof.distance(fresh) > oof.limit).mean() < 0.06


def test_ood_encoder_onnx_matches_pytorch():
    """The bundle's ONNX encoder gives the frozen ImageNet trunk's pooled features."""
    import torch

    from buscad.bundle.ood_encoder import _trunk

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    x = np.stack([region(gray, (10, 20, 210, 180)), region(gray, (0, 0, 400, 300))])
    assert x.shape == (2, 224, 224) and x.dtype == np.uint8
    f = OODEncoder(encoder_path()).features(x)
    t = (torch.from_numpy(x).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        ref = _trunk()(t[:, None].expand(-1, 3, -1, -1)).numpy()
    assert f.shape == (2, 1280)
    np.testing.assert_allclose(f, ref, atol=1e-4)
    assert np.abs(f[0] - f[1]).max() > 1e-2  # different regions, different features


def test_whole_frame_check_marks_automatic_outlines_only(tmp_path, phantom_bundle, phantoms):
    """The whole-frame OOD model: when the segmenter searched the frame (``auto``), a frame
    unlike the training frames gets a caution in words even if the region read looks
    familiar; with a mask the user gave, only the region is judged."""
    import dataclasses

    folder, df = phantoms
    out = tmp_path / "bundle"
    shutil.copytree(phantom_bundle, out)
    b = Bundle.load(out)
    enc = OODEncoder(encoder_path())
    regions, frames = [], []
    for r in df.iloc[:40].itertuples():
        gray, _, m = _read(folder / r.image_path, folder / r.mask_path)
        regions.append(region(gray, b._prepare(gray, m).roi))
        frames.append(region(gray, (0, 0, gray.shape[1], gray.shape[0])))
    folds = np.arange(40) % 5
    entry = add_ood(
        out, enc.features(regions), PHANTOM_TRAINING, folds, SPACE, enc.features(frames)
    )
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["ood_frame"]["file"] == "ood_frame" and entry["file"] == "ood"
    assert (out / "ood_frame.safetensors").is_file()
    b = Bundle.load(out)
    assert b.ood_frame is not None and b.ood_frame.limit_rule == "out-of-fold"
    # a training lesion pasted into a checkerboard: the region is familiar, the frame is not
    gray, _, m = _read(folder / df.image_path[0], folder / df.mask_path[0])
    yy, xx = np.indices(gray.shape)
    noisy = (((yy // 12 + xx // 12) % 2) * 255).astype(np.uint8)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    noisy[y0:y1, x0:x1] = gray[y0:y1, x0:x1]
    prep = b._prepare(noisy, m)
    feats = b._score_and_cam(prep.crop, False)[2]
    given = b._cautions(prep, feats, None)
    auto = b._cautions(dataclasses.replace(prep, source="auto"), feats, None)
    frame_note = "the whole image is unlike the images the model was trained on"
    assert not any(frame_note in c for c in given[0] + given[1])
    assert any(frame_note in c for c in auto[1]), auto
    # an ordinary training frame read automatically gets no frame caution
    gray, _, m = _read(folder / df.image_path[1], folder / df.mask_path[1])
    prep = b._prepare(gray, m)
    auto = b._cautions(dataclasses.replace(prep, source="auto"), feats, None)
    assert not any(frame_note in c for c in auto[0] + auto[1])


# ----------------------------------------------------------------------------- study checks
def test_model_flags_rules():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    good = y + rng.normal(0, 0.3, len(y))
    assert model_flags(y, good) == []
    reverse = model_flags(y, -good, "the CNN")
    assert len(reverse) == 1 and reverse[0].startswith("the CNN is not shown to be better than")
    assert "(it ranks cases in reverse)" in reverse[0]
    # chance: the CI's lower bound does not exceed 0.5 (an AUC below 0.5 always fails)
    chance = (np.arange(len(y)) % 4 < 2).astype(float)  # AUC exactly 0.5
    assert model_flags(y, chance)[0].startswith("the model is not shown to be better than chance")
    const = np.where(np.arange(len(y)) < 54, 0.3, good)  # 90% of the rows share one score
    assert any("same score to 90%" in f for f in model_flags(y, const))
    cal = 1 / (1 + np.exp(-good))
    flags = study_flags(y, good, -6.24, 1.5, cal)
    assert any("calibration slope is -6.24" in f for f in flags)
    assert any("threshold 150.0% lies outside" in f for f in flags)
    assert study_flags(y, good, 1.1, float(np.median(cal)), cal) == []


def test_flags_text_says_which_calls_are_withheld():
    from buscad.bundle.safety import flags_text

    assert flags_text([]) is None
    deep = flags_text(["CNN AUC 0.28"], "deep")
    assert deep == (
        "The bundle's CNN failed the study's checks, so every AI call of the bundle is "
        "withheld: CNN AUC 0.28"
    )
    assert flags_text(["CNN AUC 0.28"], None) == deep
    other = flags_text(["a", "b"], "integrated")
    assert "every AI call the CNN gives (when the study's headline model cannot score" in other
    assert other.endswith(": a; b")


def test_training_record_from_rows():
    rows = pd.DataFrame(
        {
            "cohort": ["a", "a", "a", "b", "b"],
            "device": ["phantom-a"] * 3 + ["GE", "GE"],
            "label": ["benign", "malignant", "benign", "benign", "malignant"],
        }
    )
    spec = {"preprocessing": {"input_size": 96}, "backbone": {"name": "rcdnet"}}
    rec = training_from_rows(rows, [], spec)
    assert rec["phantom"] is True and rec["images"] == 5 and rec["input_size"] == 96
    assert rec["cohorts"][0] == {
        "name": "a",
        "phantom": True,
        "images": 3,
        "labels": {"benign": 2, "malignant": 1},
    }
    assert rec["cohorts"][1]["phantom"] is False and rec["backbone"] == "rcdnet"
    assert training_from_rows(rows[rows.cohort == "b"], [], spec)["phantom"] is False
    assert training_from_rows(rows[rows.cohort == "b"], ["b"], spec)["phantom"] is True


def test_a_reversed_model_is_flagged_in_the_bundle_and_every_prediction(tmp_path, phantoms):
    folder, df = phantoms
    src = make_bundle(tmp_path / "src", classical=False)
    y = np.array([0, 1] * 20)
    rng = np.random.default_rng(0)
    oof = np.clip(0.5 - 0.3 * (y - 0.5) + rng.normal(0, 0.1, len(y)), 0.01, 0.99)  # reversed
    out = write_bundle(tmp_path / "flagged", tmp_path / "src_work" / "model", oof, y, name="rev")
    shutil.rmtree(src)
    doc = json.loads((out / "bundle.json").read_text())
    assert any("ranks cases in reverse" in f for f in doc["flags"])
    assert any("calibration slope" in f for f in doc["flags"])  # Platt fits a negative slope
    b = Bundle.load(out)
    gray, _, m = _read(folder / df.image_path[0], folder / df.mask_path[0])
    p = b.predict(gray, mask=m)
    assert p.withheld
    assert p.cautions[0].startswith("the model failed the study's own checks (the CNN is not")
    assert p.assessment_text.startswith("AI assessment by the Deep-learning model (CNN) withheld:")
    # written before the training record existed: still loads, says provenance unknown
    for k in ("training", "flags", "ood"):
        doc.pop(k)
    (out / "bundle.json").write_text(json.dumps(doc))
    old = Bundle.load(out)
    assert old.training_text == PROVENANCE_UNKNOWN and old.banner is None and old.ood is None
    p = old.predict(gray, mask=m)
    assert not p.withheld and p.training == PROVENANCE_UNKNOWN and p.ood_ratio is None


# ----------------------------------------------------------------------------- image checks
def _doppler(gray: np.ndarray) -> np.ndarray:
    """A colour-Doppler-like RGB image: red and blue flow blobs on the gray B-mode."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    rgb[40:60, 50:80] = (220, 40, 20)
    rgb[70:85, 90:120] = (30, 60, 230)
    return rgb


def _stamp(gray: np.ndarray, text: str, xy: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(gray)
    ImageDraw.Draw(im).text(xy, text, fill=255, font=ImageFont.load_default(size=16))
    return np.asarray(im)


def test_phantom_bundle_marks_colour_and_text_images(tmp_path, phantom_bundle, phantoms):
    folder, df = phantoms
    b = Bundle.load(phantom_bundle)
    assert b.banner == PHANTOM_BANNER
    assert b.training_text.startswith("trained on 40 images: site_a (40 synthetic phantoms")
    gray, _, m = _read(folder / df.image_path[45], folder / df.mask_path[45])
    # a held-out phantom like the training ones: a plain call, under the banner
    p = b.predict(gray, mask=m)
    assert p.banner == PHANTOM_BANNER and p.text().startswith(f"[{PHANTOM_BANNER}] AI assessment")
    assert p.ood_ratio is not None
    # colour (Doppler): the reader measures the colour, the call is withheld, the caution first
    Image.fromarray(_doppler(gray)).save(tmp_path / "doppler.png")
    g2, meta = read_image(tmp_path / "doppler.png")
    assert quality.ImageChecks(meta.colour_fraction).doppler
    p2 = with_image_checks(b.predict(g2, mask=m), meta)
    assert p2.withheld and p2.cautions[0].startswith("colour image (")
    assert p2.assessment_text.startswith(
        "AI assessment by the Deep-learning model (CNN) withheld: colour image ("
    )
    # text stamped beside the lesion: found, and the call is marked unreliable
    ys, xs = np.nonzero(m)
    stamped = _stamp(gray, "RT UOQ 3CM", (int(xs.min()), max(0, int(ys.min()) - 20)))
    boxes = quality.text_boxes(stamped)
    assert boxes, "the stamped text was not found"
    p3 = b.predict(stamped, mask=m)
    assert any(c.startswith("text is burned into the image over or near") for c in p3.cautions)
    assert "unreliable for this image" in p3.assessment_text or p3.withheld
    # the same image with no text: no text caution
    assert not any("text is burned" in c for c in p.cautions)


def test_gradcam_peak_on_text_or_outside_the_outline(phantom_bundle, phantoms, monkeypatch):
    folder, df = phantoms
    b = Bundle.load(phantom_bundle)
    gray, _, m = _read(folder / df.image_path[46], folder / df.mask_path[46])
    ys, xs = np.nonzero(m)
    stamped = _stamp(gray, "BAPTIST", (int(xs.min()), int(ys.min())))
    x, y, w, h = quality.text_boxes(stamped)[0]
    prep = b._prepare(stamped, m)
    raw, _, feats = b._score_and_cam(prep.crop, False)
    x0, y0, x1, y1 = prep.roi
    hm = np.zeros(stamped.shape, np.float32)
    hm[y + h // 2, x + w // 2] = 1.0  # the peak on the word
    monkeypatch.setattr("buscad.models.onnx.scale_cam", lambda cam, size: cam)
    cam = hm[y0:y1, x0:x1]
    p = b._finish(prep, raw, cam, feats, None)
    assert "the Grad-CAM peak lies on burned-in text, not on tissue" in p.cautions
    prep = b._prepare(gray, m)
    hm = np.zeros(gray.shape, np.float32)
    hm[y0 + 1, x0 + 1] = 1.0  # a corner of the region read, outside the outline
    p = b._finish(prep, raw, hm[y0:y1, x0:x1], feats, None)
    assert "the Grad-CAM peak lies outside the lesion outline" in p.cautions
    assert quality.peak_outside((5, 5), np.ones((10, 10), bool)) is False


def test_pydicom_ultrasound_examples_are_caught(phantom_bundle):
    pydicom_data = pytest.importorskip("pydicom.data")
    b = Bundle.load(phantom_bundle)
    colour, text = {}, {}
    for name in PYDICOM_US:
        with reader_settings(allow_modality=True):
            gray, meta = read_image(pydicom_data.get_testdata_file(name))
        checks = quality.image_checks(gray, meta.colour_fraction)
        colour[name], text[name] = checks.doppler, checks.text_boxes
        p = with_image_checks(b.predict(gray), meta)
        # never an unmarked call: the banner, and the call withheld or marked unreliable
        assert p.banner == PHANTOM_BANNER
        assert p.cautions and p.text().startswith(f"[{PHANTOM_BANNER}] AI assessment")
    assert colour == {
        "examples_rgb_color.dcm": True,
        "examples_palette.dcm": True,
        "examples_jpeg2k.dcm": True,
        "ExplVR_BigEnd.dcm": True,
        "examples_ybr_color.dcm": False,  # a gray echo with a few coloured icons
    }
    # "BAPTIST MED CTR" (7-pixel text) in the top-left corner of the colour-Doppler example
    assert any(x < 60 and y < 20 for x, y, _, _ in text["examples_rgb_color.dcm"])
    assert text["examples_palette.dcm"] and text["examples_jpeg2k.dcm"]


def test_predict_cli_says_banner_and_cautions_first(tmp_path, phantom_bundle, phantoms):
    from typer.testing import CliRunner

    from buscad.cli import app

    folder, df = phantoms
    gray, _, _ = _read(folder / df.image_path[47])
    Image.fromarray(_doppler(gray)).save(tmp_path / "doppler.png")
    r = CliRunner().invoke(
        app, ["predict", str(phantom_bundle), str(tmp_path / "doppler.png"), "-o", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    assert f"*** {PHANTOM_BANNER} ***" in r.output
    line = next(x for x in r.output.splitlines() if x.startswith(str(tmp_path / "doppler.png")))
    assert (
        f": [{PHANTOM_BANNER}] AI assessment by the Deep-learning model (CNN) withheld: colour"
        in (line)
    )
    doc = json.loads((tmp_path / "doppler.json").read_text())
    assert doc["banner"] == PHANTOM_BANNER and doc["withheld"] is True
    assert doc["cautions"][0].startswith("colour image")
    assert doc["assessment_text"] in line
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["withheld"].tolist() == ["yes"]


# ----------------------------------------------------------------------------- real data
def test_busi_colour_and_text_images(busi_dir):
    root = busi_dir
    doppler = ["benign (277)", "benign (323)", "benign (255)", "benign (240)", "benign (261)"]
    for stem in doppler:
        gray, meta = read_image(root / "benign" / f"{stem}.png")
        assert quality.image_checks(gray, meta.colour_fraction).doppler, stem
    gray, meta = read_image(root / "benign" / "benign (277).png")
    # the yellow "RT UOQ" body marker at the lower left
    assert any(70 < x < 110 and 360 < y < 390 for x, y, _, _ in quality.text_boxes(gray))
    plain = [root / "benign" / f"benign ({i}).png" for i in range(1, 31)]
    flagged = [
        p.name for p in plain if quality.ImageChecks(read_image(p)[1].colour_fraction).doppler
    ]
    assert len(flagged) <= 1, flagged  # gray B-mode images are not called colour


def test_breast_images_are_never_called_colour(breast_dir):
    files = sorted((breast_dir / "BrEaST-Lesions_USG-images_and_masks").glob("case0[0-4]?.png"))
    assert len(files) >= 40
    called = [
        f.name for f in files if quality.ImageChecks(read_image(f)[1].colour_fraction).doppler
    ]
    assert called == []  # their blue gray tint is not colour


def test_phantom_bundle_on_real_busi_images_never_gives_an_unmarked_call(phantom_bundle, busi_dir):
    b = Bundle.load(phantom_bundle)
    for label in ("benign", "malignant", "normal"):
        for i in range(1, 11):
            gray, meta = read_image(busi_dir / label / f"{label} ({i}).png")
            p = with_image_checks(b.predict(gray, heatmap=False), meta)
            assert p.banner == PHANTOM_BANNER
            assert p.withheld or p.cautions, (label, i, p.text())


# ----------------------------------------------------------------------------- a broken study
@pytest.mark.slow
def test_label_shuffled_phantom_study_cannot_make_an_unflagged_bundle(tmp_path):
    """Labels shuffled: whatever the CNN learns, its bundle is flagged and every call withheld."""
    from buscad.config import config_from_dict
    from buscad.data.phantom import generate_cohort
    from buscad.study.runner import run_study

    man = generate_cohort(48, tmp_path / "data", seed=3, size=(96, 112))
    df = man.df.copy()
    df["label"] = np.random.default_rng(0).permutation(df["label"].to_numpy())
    df.to_csv(tmp_path / "data" / "shuffled.csv", index=False)
    cfg = config_from_dict(
        {
            "name": "shuffled",
            "seed": 0,
            "cohorts": [{"name": "a", "manifest": str(tmp_path / "data" / "shuffled.csv")}],
            "models": ["deep"],
            "deep": {
                "backbones": ["efficientnet_lite0"],
                "epochs": 1,
                "input_size": 32,
                "selection_folds": 2,
                "batch_size": 16,
            },
            "split": {"cv_folds": 2},
            "gallery_size": 0,
        },
        base_dir=tmp_path,
    )
    res = run_study(cfg, tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert doc["flags"], "a label-shuffled study produced an unflagged bundle"
    assert any("not shown to be better than chance" in f for f in doc["flags"])
    # what the bundle was trained on, and its OOD model, are in the bundle
    assert doc["training"]["phantom"] is True and doc["training"]["images"] > 20
    assert doc["training"]["input_size"] == 32
    assert doc["ood"]["rows"] == doc["training"]["images"]
    assert (tmp_path / "run" / "bundle" / "ood.safetensors").is_file()
    # in the frozen encoder's space, its limit from out-of-fold distances, the encoder inside
    assert doc["ood"]["space"] == SPACE and "out-of-fold" in doc["ood"]["limit_rule"]
    enc = tmp_path / "run" / "bundle" / doc["ood"]["encoder"]
    assert enc.is_file() and doc["ood"]["encoder_sha256"] == file_sha256(enc)
    assert any("every AI call of the bundle is withheld" in w for w in res.warnings)
    b = Bundle.load(tmp_path / "run" / "bundle")
    row = df.iloc[0]
    gray, _ = read_image(tmp_path / "data" / row["image_path"])
    p = b.predict(gray)
    assert p.withheld and p.banner == PHANTOM_BANNER
    assert p.cautions[0].startswith("the model failed the study's own checks")
    enc.write_bytes(enc.read_bytes() + b"\0")  # a changed encoder is refused
    with pytest.raises(ModelFileError, match="SHA-256"):
        Bundle.load(tmp_path / "run" / "bundle")


# ----------------------------------------------------------------------------- the app
def test_app_shows_banner_and_cautions_first(browser, phantom_bundle, phantoms, tmp_path):
    """A colour image in the browser: banner on top, the withheld headline, no score shown."""
    from tests.render import live_server

    from buscad.serve.app import create_app

    folder, df = phantoms
    gray, _, _ = _read(folder / df.image_path[48])
    Image.fromarray(_doppler(gray)).save(tmp_path / "doppler.png")
    shots = Path(os.environ.get("BUSCAD_SCREENSHOT_DIR") or tmp_path)
    with live_server(create_app(Bundle.load(phantom_bundle), open_case_screen=True)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("#bundle-banner:not([hidden])")
        assert page.inner_text("#bundle-banner") == PHANTOM_BANNER
        assert "synthetic phantoms" in page.inner_text("#model-line")
        page.set_input_files("#image-input", str(tmp_path / "doppler.png"))
        page.wait_for_selector("#analyse:enabled")
        page.click("#analyse")
        page.wait_for_selector("#message.ok")
        # the headline, then its cautions as a list: the words of the JSON's assessment_text
        head = page.inner_text("#assessment")
        assert head == "AI assessment by the Deep-learning model (CNN) withheld:"
        assert page.inner_text("#cautions").startswith("colour image (")
        assert page.locator("#score-box").is_hidden() and page.locator("#band-box").is_hidden()
        assert page.inner_text("#result-banner") == PHANTOM_BANNER
        # the banner comes before the headline, the headline before everything else
        order = page.evaluate(
            "['result-banner','assessment','cautions','other-models']"
            ".map(i => document.getElementById(i).getBoundingClientRect().top)"
        )
        assert order == sorted(order)
        assert page.locator("#models").is_hidden()  # the other models are collapsed
        page.click("#others-text")
        assert page.locator("#models").is_visible()
        page.fill("#exam", "ACC-77")
        with page.expect_download() as dl:
            page.click("#save-html")
        html = Path(dl.value.path()).read_text(encoding="utf-8")
        assert ">ACC-77<" in html and "withheld: colour image" in html
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "app-withheld.png"))
        page.close()
