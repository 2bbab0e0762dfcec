"""Outline confidence: predicted Dice of LiteMedSAM outlines, the flag, and where they show.

The calibration (:class:`buscad.segment.medsam.OutlineConfidence`) is unit-tested;
the flow (Segmenter -> Bundle -> ``/api/outline`` -> accepted ``/api/predict`` ->
case report -> the app in Chromium) runs on a real phantom bundle with the
session's tiny U-Net (tests/conftest.py ``tiny_segmenter``) whose box outliner is
a stand-in for LiteMedSAM: an ellipse inscribed in the box with a fixed IoU-head
estimate, so the test decides whether the outline is flagged. The packaged
calibration itself is checked against its protocol (fitted on BUSI, threshold
on the predicted Dice). The screenshot goes to ``$BUSCAD_SCREENSHOT_DIR`` (else
the test's temporary folder).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import buscad._compat  # noqa: F401  (before smp imports torchvision)
from buscad.errors import ModelFileError
from buscad.segment.medsam import (
    CONFIDENCE_FILE,
    CONFIDENCE_FORMAT,
    OutlineConfidence,
    default_confidence,
    iou_to_dice,
)

IDENTITY = {"format": CONFIDENCE_FORMAT, "knots_x": [0.0, 1.0], "knots_y": [0.0, 1.0]}


def rule(threshold: float = 0.8, **kw) -> OutlineConfidence:
    return OutlineConfidence.from_dict({**IDENTITY, "threshold": threshold, **kw})


def test_iou_to_dice_and_the_calibrated_prediction():
    assert iou_to_dice(0.5) == pytest.approx(2 / 3)
    assert iou_to_dice(1.0) == 1.0 and iou_to_dice(0.0) == 0.0
    np.testing.assert_allclose(iou_to_dice(np.array([-0.2, 0.25, 1.3])), [0.0, 0.4, 1.0])
    r = OutlineConfidence.from_dict(
        {**IDENTITY, "knots_x": [0.6, 0.9, 0.95], "knots_y": [0.3, 0.8, 0.9], "threshold": 0.85}
    )
    u = 0.925 / 1.075  # IoU whose Dice is 0.925: halfway between the last two knots
    assert r.predicted_dice(u) == pytest.approx(0.85)
    assert r.predicted_dice(0.1) == pytest.approx(0.3)  # constant below the first knot
    assert r.predicted_dice(1.0) == pytest.approx(0.9)  # and above the last
    assert r.flagged(0.849) and not r.flagged(0.85)


@pytest.mark.parametrize(
    "doc, msg",
    [
        ({**IDENTITY, "format": "x", "threshold": 0.8}, "format must be"),
        ({**IDENTITY}, "threshold"),
        ({**IDENTITY, "knots_y": [1.0, 0.0], "threshold": 0.8}, "increasing"),
        ({**IDENTITY, "knots_x": [0.0], "knots_y": [0.0], "threshold": 0.8}, "increasing"),
        ({**IDENTITY, "threshold": 1.5}, r"outside \[0, 1\]"),
    ],
)
def test_bad_calibration_is_a_one_line_error(doc, msg, tmp_path):
    with pytest.raises(ModelFileError, match=msg) as e:
        OutlineConfidence.from_dict(doc, tmp_path / "c.json")
    assert "\n" not in str(e.value) and "c.json" in str(e.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot read the outline-confidence JSON"):
        OutlineConfidence.read(tmp_path / "bad.json")


def test_packaged_calibration_was_fitted_on_busi_for_this_checkpoint():
    if not CONFIDENCE_FILE.is_file():
        pytest.skip(f"{CONFIDENCE_FILE} not written (benchmarks/segment_confidence.py --write)")
    r = default_confidence()
    assert r is not None and r.doc["fitted_on"].startswith("BUSI")
    assert "Al-Dhabyani" in r.doc["citation"]
    assert default_confidence("0" * 64) is None  # another checkpoint: no calibration
    # monotone, in [0, 1], and the threshold catches the share it was fitted for
    assert np.all(np.diff(r.knots_y) >= 0) and 0 <= r.knots_y[0] <= r.knots_y[-1] <= 1
    assert r.doc["fit_share_poor_flagged"] >= 0.7
    assert r.flagged(r.knots_y[0]) or r.threshold <= r.knots_y[0]


# ------------------------------------------------------------------ the flow on a bundle
class StubBoxModel:
    """Stands in for LiteMedSAM: the ellipse inscribed in the box, a fixed IoU estimate."""

    def __init__(self, iou: float, confidence: OutlineConfidence) -> None:
        self.iou = iou
        self.confidence = confidence
        self.calls = 0

    def logits(self, gray: np.ndarray, box) -> tuple[np.ndarray, float]:
        self.calls += 1
        h, w = np.shape(gray)[:2]
        yy, xx = np.mgrid[:h, :w]
        x0, y0, x1, y1 = box
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
        return np.where(inside, 4.0, -4.0).astype(np.float32), self.iou


@pytest.fixture(scope="module")
def seg_folder(tiny_segmenter):
    pytest.importorskip("onnxruntime")
    return tiny_segmenter[2]


@pytest.fixture(scope="module")
def bundle(seg_folder, tmp_path_factory: pytest.TempPathFactory):
    """A phantom bundle whose box outlines come from the stand-in (IoU 0.5: flagged at 0.8)."""
    from tests.scale_fixtures import make_bundle

    from buscad.bundle.bundle import Bundle

    out = tmp_path_factory.mktemp("conf-bundle") / "bundle"
    make_bundle(out, segmenter=seg_folder)
    b = Bundle.load(out, engine="onnx", num_threads=1)
    b.segmenter.box_model = StubBoxModel(0.5, rule(0.8))
    return b


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory):
    """A lesion phantom of the usual size: (path, gray, lesion box)."""
    from buscad.data.io import read_image, read_mask
    from buscad.data.phantom import generate_cohort
    from buscad.segment.base import mask_box

    man = generate_cohort(2, tmp_path_factory.mktemp("conf-cases"), seed=21, normal_fraction=0.0)
    gray, _ = read_image(man.image_path(0))
    return man.image_path(0), gray, mask_box(read_mask(man.mask_paths(0), gray.shape))


def test_segmenter_sets_predicted_dice_and_flag_only_for_calibrated_outlines(seg_folder, case):
    from buscad.segment.infer import Segmenter

    _, gray, box = case
    seg = Segmenter.load(seg_folder, backend="onnx", threads=1)
    plain = seg.predict(gray, box=box)  # the U-Net's own outline: no Dice estimate, no flag
    assert plain.found and plain.candidates[0].predicted_dice is None
    assert not plain.candidates[0].flagged
    seg.box_model = StubBoxModel(0.5, rule(0.8))
    c = seg.predict(gray, box=box).candidates[0]
    assert c.confidence == pytest.approx(0.5)
    assert c.predicted_dice == pytest.approx(2 / 3) and c.flagged
    seg.box_model = StubBoxModel(0.95, rule(0.8))
    c = seg.predict(gray, box=box).candidates[0]
    assert c.predicted_dice == pytest.approx(1.9 / 1.95) and not c.flagged
    # automatic candidates refined in their box carry the refinement's estimate
    auto = seg.predict(gray)
    if auto.found:
        assert all(k.predicted_dice == pytest.approx(1.9 / 1.95) for k in auto.candidates)
        assert auto.candidates[0].confidence != pytest.approx(0.95)  # the U-Net's ranking kept


def test_segmenter_json_calibration_wins(seg_folder, tmp_path, monkeypatch):
    """``litemedsam.confidence`` in segmenter.json replaces the packaged calibration."""
    import shutil

    import buscad.segment.infer as infer

    folder = tmp_path / "seg"
    shutil.copytree(seg_folder, folder)
    spec = json.loads((folder / "segmenter.json").read_text())
    spec["litemedsam"] = {"confidence": {**IDENTITY, "threshold": 0.3}}
    (folder / "segmenter.json").write_text(json.dumps(spec))
    holder = StubBoxModel(0.5, rule(0.8))
    monkeypatch.setattr("buscad.segment.medsam.default_folder", lambda: tmp_path)
    monkeypatch.setattr("buscad.segment.medsam.MedSAM", lambda *a, **k: _Manifested(holder))
    seg = infer.Segmenter.load(folder, backend="onnx", threads=1)
    assert seg.box_model.confidence.threshold == 0.3
    spec["litemedsam"]["confidence"] = {**IDENTITY, "threshold": 2}
    (folder / "segmenter.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match=r"segmenter\.json.*outside"):
        infer.Segmenter.load(folder, backend="onnx", threads=1)


class _Manifested(StubBoxModel):
    def __init__(self, like: StubBoxModel) -> None:
        super().__init__(like.iou, like.confidence)
        self.manifest = {"sha256": {}}


def test_bundle_prediction_json_report_and_caution(bundle, case):
    _, gray, box = case
    o = bundle.outline(gray, box)
    mask, conf, _note = o  # still unpacks as before
    assert mask is not None and conf == pytest.approx(0.5)
    assert o.flagged and o.predicted_dice == pytest.approx(2 / 3) and o.threshold == 0.8
    p = bundle.predict(gray, box=box, heatmap=False)
    assert p.roi_source == "box" and p.outline_flagged
    assert p.predicted_dice == pytest.approx(2 / 3)
    flag = [c for c in p.cautions if "outline may be wrong" in c]
    assert flag == [
        "the segmenter's outline may be wrong (predicted Dice 0.67, below 0.80): check the "
        "outline or redraw the box before trusting the result"
    ]
    assert not p.withheld and "unreliable for this image" in p.text()
    d = p.to_json()
    assert d["predicted_dice"] == pytest.approx(2 / 3) and d["outline_flagged"] is True
    assert "predicted Dice 0.67, flagged: check or redraw" in d["roi_text"]
    # a mask given by a person: no estimate, no flag
    q = bundle.predict(gray, mask=mask, heatmap=False)
    assert q.predicted_dice is None and not q.outline_flagged
    assert not any("outline may be wrong" in c for c in q.cautions)


def test_cli_line_and_json_carry_the_estimate(seg_folder, case, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import buscad.segment.infer as infer
    from buscad.cli import build_app

    app = build_app(("buscad.segment.cli",))
    path, _, box = case
    real = infer.Segmenter.load

    def load(*a, **k):
        seg = real(*a, **k)
        seg.box_model = StubBoxModel(0.5, rule(0.8))
        return seg

    monkeypatch.setattr(infer.Segmenter, "load", staticmethod(load))
    res = CliRunner().invoke(
        app,
        ["segment", "predict", "--model", str(seg_folder), str(path), "-o", str(tmp_path),
         "--box", ",".join(map(str, box))],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "predicted Dice 0.67; FLAGGED: check the outline or redraw the box" in res.output
    c = json.loads((tmp_path / "results.json").read_text())["results"][0]["candidates"][0]
    assert c["predicted_dice"] == pytest.approx(2 / 3) and c["outline_flagged"] is True


@pytest.fixture(scope="module")
def client(bundle):
    from buscad.serve.app import create_app

    with TestClient(create_app(bundle), base_url="http://127.0.0.1") as c:
        yield c


def test_api_outline_flag_survives_acceptance(client, case):
    path, _, box = case
    png = path.read_bytes()
    d = client.post(
        "/api/outline",
        files={"image": ("scan.png", png, "image/png")},
        data={"box": ",".join(map(str, box))},
    ).json()
    assert d["found"] and d["outline_flagged"] is True and d["flag_threshold"] == 0.8
    assert d["predicted_dice"] == pytest.approx(2 / 3, abs=1e-6)
    files = {
        "image": ("scan.png", png, "image/png"),
        "mask": ("outline.png", base64.b64decode(d["mask_png"]), "image/png"),
    }
    p = client.post("/api/predict", files=files, data={"outline_token": d["outline_token"]}).json()
    assert p["roi_accepted"] and p["outline_flagged"] is True
    assert p["predicted_dice"] == pytest.approx(2 / 3, abs=1e-6)
    assert any("the user checked and accepted it" in c for c in p["cautions"])
    # the flag is inside the HMAC: a token claiming "not flagged" is refused
    parts = d["outline_token"].split(".")  # mode.c.cccccc.p.pppppp.flag.mac
    assert parts[0] == "box" and parts[5] == "1"
    forged = ".".join([*parts[:5], "0", parts[6]])
    r = client.post("/api/predict", files=files, data={"outline_token": forged})
    assert r.status_code == 422 and "does not match" in r.json()["detail"]
    r = client.post(
        "/api/report?format=html", files=files, data={"outline_token": d["outline_token"]}
    )
    assert r.status_code == 200 and "predicted Dice 0.67, flagged" in r.text


# ------------------------------------------------------------------ the page, in Chromium
@pytest.fixture(scope="module")
def server(bundle):
    from tests.render import live_server

    from buscad.serve.app import create_app

    with live_server(create_app(bundle)) as url:
        yield url


def test_app_shows_the_flag_and_asks_to_check_before_analyse(browser, server, case, tmp_path):
    path, gray, box = case
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model-line:has-text('scale-test')")
        page.set_input_files("#image-input", str(path))
        page.wait_for_selector("#outline-status:has-text('Outline')")
        # a box around the lesion: the stand-in outlines it, flagged
        bb = page.locator("#draw").bounding_box()
        h, w = gray.shape
        x0, y0, x1, y1 = box
        page.mouse.move(bb["x"] + x0 * bb["width"] / w, bb["y"] + y0 * bb["height"] / h)
        page.mouse.down()
        page.mouse.move(bb["x"] + x1 * bb["width"] / w, bb["y"] + y1 * bb["height"] / h, steps=4)
        page.mouse.up()
        page.wait_for_selector("#outline-status:has-text('FLAGGED')")
        status = page.inner_text("#outline-status")
        assert "predicted Dice 0.67" in status and "below 0.80" in status
        assert "before Analyse" in status
        assert "flagged" in page.get_attribute("#outline-panel", "class")
        assert page.is_disabled("#analyse")  # not before the user has checked it
        assert page.inner_text("#accept-outline") == "I checked it: accept outline"
        assert "possibly wrong" in page.inner_text("#message")
        out = Path(os.environ.get("BUSCAD_SCREENSHOT_DIR") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            out / "app-outline-flagged.png", optimize=True
        )
        page.click("#accept-outline")
        page.wait_for_selector("#outline-status:has-text('you checked and accepted')")
        page.click("#analyse")
        page.wait_for_selector("#message.ok")
        assert "flagged" in page.inner_text("#roi-text")
        assert "the user checked and accepted it" in page.inner_text("body")
    finally:
        page.close()
