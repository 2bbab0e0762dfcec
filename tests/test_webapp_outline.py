"""The web app's automatic lesion outline: ``POST /api/outline``, accepting it, and round 2.

A real phantom bundle (random CNN at 64 px, ONNX) carries the session's tiny segmenter
(tests/conftest.py ``tiny_segmenter``); the outline route must give exactly the outline
``Bundle.predict`` reads, and an accepted outline must be analysed and recorded as such.
The screenshot test writes ``docs/img/app-outline.png`` (``$BUSCAD_SCREENSHOT_DIR``
elsewhere when set).
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
from buscad.data.io import read_image, read_mask
from buscad.data.phantom import generate_cohort
from buscad.serve.app import create_app
from serve_predictor import ContrastPredictor

pytest.importorskip("onnxruntime")
pytest.importorskip("segmentation_models_pytorch")

SIZE = (96, 112)  # the tiny segmenter's training size
REPO = Path(__file__).resolve().parents[1]


def local(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 0


def test_roi_text_says_where_the_region_came_from():
    from buscad.bundle.types import roi_text

    assert roi_text("auto", 0.871, accepted=True) == (
        "the lesion outlined automatically by the bundle's segmenter (confidence 0.87), "
        "accepted by the user"
    )
    assert roi_text("auto", 0.6).endswith("not shown to the user before the analysis")
    assert roi_text("box", 0.7, True).startswith("the segmenter's outline inside the box")
    assert roi_text("box") == "the box drawn on the image"
    assert roi_text("mask") == "the lesion mask given with the image (drawn by a person)"
    assert roi_text("whole").startswith("the whole image")


@pytest.fixture(scope="module")
def bundle(tiny_segmenter, tmp_path_factory: pytest.TempPathFactory):
    """A real bundle with the session's tiny segmenter, loaded for ONNX Runtime."""
    from tests.scale_fixtures import make_bundle

    from buscad.bundle.bundle import Bundle

    out = tmp_path_factory.mktemp("outline-bundle") / "bundle"
    make_bundle(out, segmenter=tiny_segmenter[2])
    b = Bundle.load(out, engine="onnx", num_threads=1)
    assert b.has_segmenter
    return b


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory):
    """Phantoms the segmenter never saw (seed 4, a quarter lesion-free): (png, gray, truth, label)."""
    man = generate_cohort(
        12, tmp_path_factory.mktemp("outline-cases"), seed=4, normal_fraction=0.25, size=SIZE
    )
    out = []
    for i in range(len(man)):
        gray, _ = read_image(man.image_path(i))
        paths = man.mask_paths(i)
        truth = read_mask(paths, gray.shape) if paths else np.zeros(gray.shape, bool)
        out.append((man.image_path(i).read_bytes(), gray, truth, man.df["label"].iat[i]))
    return man, out


@pytest.fixture(scope="module")
def client(bundle):
    with local(create_app(bundle)) as c:
        yield c


def outline(client, png: bytes, box: str | None = None):
    data = {"box": box} if box else {}
    return client.post("/api/outline", files={"image": ("scan.png", png, "image/png")}, data=data)


def lesion_outline(client, phantoms):
    """The first lesion phantom the segmenter finds: (png, gray, truth, outline JSON)."""
    _, cases = phantoms
    for png, gray, truth, label in cases:
        if label == "normal":
            continue
        d = outline(client, png).json()
        if d["found"]:
            return png, gray, truth, d
    pytest.fail("the segmenter found no lesion in any phantom")


def test_outline_on_a_lesion_overlaps_the_truth_and_is_what_predict_reads(client, bundle, phantoms):
    _, cases = phantoms
    lesions = [c for c in cases if c[3] != "normal"]
    found = [outline(client, png).json() for png, *_ in lesions]
    assert sum(d["found"] for d in found) >= len(lesions) // 2, [d["note"] for d in found]
    ious = []
    for (_, gray, truth, _), d in zip(lesions, found, strict=True):
        if not d["found"]:
            assert "no lesion found in the image" in d["note"]
            continue
        mask = decode_mask_png(d["mask_png"])
        assert mask.shape == gray.shape
        ys, xs = np.nonzero(mask)
        assert d["box"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        assert d["area_px"] == int(mask.sum())
        assert d["mode"] == "auto" and d["prompt_box"] is None
        assert 0.5 <= d["confidence"] <= 1.0
        pts = np.array([p for poly in d["polygons"] for p in poly])
        assert (pts.min(0) >= [xs.min(), ys.min()]).all()
        assert (pts.max(0) <= [xs.max(), ys.max()]).all()
        assert d["outline_token"].startswith("auto.")
        ious.append(iou(mask, truth))
        # the one outline path: the same mask and confidence as Bundle.outline/predict read
        direct, conf, _ = bundle.outline(gray)
        assert (direct == mask).all() and conf == pytest.approx(d["confidence"], abs=1e-6)
    assert np.median(ious) >= 0.5, ious


def test_no_lesion_found_on_lesion_free_phantoms(client, phantoms):
    _, cases = phantoms
    normals = [png for png, _, _, label in cases if label == "normal"]
    answers = [outline(client, png).json() for png in normals]
    assert normals and sum(not d["found"] for d in answers) >= (2 * len(normals)) // 3
    d = next(d for d in answers if not d["found"])
    assert d["note"] == "no lesion found in the image by the segmenter"
    assert d["polygons"] == [] and d["mask_png"] is None and d["outline_token"] is None
    assert d["confidence"] is None and d["box"] is None


def test_box_prompt_is_honoured(client, bundle, phantoms):
    _, cases = phantoms
    png, gray, truth, _ = next(c for c in cases if c[3] != "normal")
    ys, xs = np.nonzero(truth)
    h, w = gray.shape
    bx = (max(0, xs.min() - 3), max(0, ys.min() - 3), min(w, xs.max() + 4), min(h, ys.max() + 4))
    d = outline(client, png, ",".join(map(str, bx))).json()
    assert d["mode"] == "box" and d["prompt_box"] == list(map(int, bx))
    assert d["found"], d["note"]
    mask = decode_mask_png(d["mask_png"])
    assert iou(mask, truth) >= 0.5
    # box-prompted: the outline never leaves the box enlarged by the segmenter's margin
    m = bundle.segmenter.config.margin
    bw, bh = bx[2] - bx[0], bx[3] - bx[1]
    x0, y0, x1, y1 = d["box"]
    assert x0 >= bx[0] - m * bw - 1 and x1 <= bx[2] + m * bw + 1
    assert y0 >= bx[1] - m * bh - 1 and y1 <= bx[3] + m * bh + 1
    assert d["outline_token"].startswith("box.")
    direct, _, _ = bundle.outline(gray, tuple(int(v) for v in bx))
    assert (direct == mask).all()
    # accepted, it is analysed and recorded as the outline inside the user's box
    files = {
        "image": ("scan.png", png, "image/png"),
        "mask": ("outline.png", base64.b64decode(d["mask_png"]), "image/png"),
    }
    p = client.post("/api/predict", files=files, data={"outline_token": d["outline_token"]})
    assert p.status_code == 200, p.text
    p = p.json()
    assert p["roi_source"] == "box" and p["roi_accepted"] is True
    assert p["roi_text"].startswith("the segmenter's outline inside the box drawn on the image")
    assert p["roi_text"].endswith("accepted by the user")


def test_accepted_outline_is_analysed_and_recorded(client, bundle, phantoms):
    png, gray, _, d = lesion_outline(client, phantoms)
    mask_png = base64.b64decode(d["mask_png"])
    files = {
        "image": ("scan.png", png, "image/png"),
        "mask": ("outline.png", mask_png, "image/png"),
    }
    r = client.post("/api/predict", files=files, data={"outline_token": d["outline_token"]})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["roi_source"] == "auto" and p["roi_accepted"] is True
    assert p["roi_confidence"] == pytest.approx(d["confidence"], abs=1e-6)
    assert "outlined automatically" in p["roi_text"] and "accepted by the user" in p["roi_text"]
    # every model ran on that outline: the same numbers as the bundle given it as a mask
    direct = bundle.predict(gray, mask=decode_mask_png(d["mask_png"]), heatmap=False)
    assert p["ai_score"] == pytest.approx(direct.ai_score, abs=1e-6)
    assert p["model_scores"]["dlr"] == pytest.approx(direct.model_scores["dlr"], abs=1e-6)
    assert p["roi"] == list(direct.roi)
    # the case report says where the outline came from
    r = client.post(
        "/api/report?format=html", files=files, data={"outline_token": d["outline_token"]}
    )
    assert r.status_code == 200 and "accepted by the user" in r.text
    assert "cyan line: the lesion outline" in r.text
    if os.environ.get("BUSCAD_OUTLINE_REPORT"):  # to look at the report by eye
        Path(os.environ["BUSCAD_OUTLINE_REPORT"]).write_text(r.text, encoding="utf-8")
    r = client.post(
        "/api/report?format=pdf", files=files, data={"outline_token": d["outline_token"]}
    )
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    # the same mask without the token is a user's mask; a box read as drawn; the whole image
    p = client.post("/api/predict", files=files).json()
    assert p["roi_source"] == "mask" and not p["roi_accepted"]
    assert "drawn by a person" in p["roi_text"]
    files1 = {"image": ("scan.png", png, "image/png")}
    p = client.post(
        "/api/predict", files=files1, data={"box": "10,10,60,60", "auto_outline": "false"}
    ).json()
    assert p["roi_source"] == "box" and p["roi_confidence"] is None
    assert p["roi_text"] == "the box drawn on the image"
    p = client.post("/api/predict", files=files1, data={"auto_outline": "false"}).json()
    assert p["roi_source"] == "whole" and p["roi_note"]
    # without auto_outline=false the bundle outlines by itself, unseen, and says so
    p = client.post("/api/predict", files=files1).json()
    assert p["roi_source"] == "auto" and not p["roi_accepted"]
    assert "not shown to the user" in p["roi_text"]


def test_tampered_or_missing_outline_is_a_one_line_422(client, phantoms):
    png, _, _, d = lesion_outline(client, phantoms)
    edited = decode_mask_png(d["mask_png"]).copy()
    ys, xs = np.nonzero(edited)
    edited[ys[0], xs[0]] = False  # one pixel changed: no longer the segmenter's outline
    files = {
        "image": ("scan.png", png, "image/png"),
        "mask": ("outline.png", png_bytes(edited.astype(np.uint8) * 255), "image/png"),
    }
    cases = [
        (files, {"outline_token": d["outline_token"]}, "does not match this image and mask"),
        (files, {"outline_token": "auto.0.9.deadbeef"}, "not an outline token"),
        (
            {"image": ("scan.png", png, "image/png")},
            {"outline_token": d["outline_token"]},
            "needs the outline itself",
        ),
    ]
    for f, data, msg in cases:
        r = client.post("/api/predict", files=f, data=data)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert msg in detail and "\n" not in detail


@pytest.mark.parametrize(
    ("data", "box", "status", "msg"),
    [
        (b"", None, 400, "empty"),
        (b"not an image at all" * 10, None, 415, "not a recognised image"),
        (None, "1,2,3", 422, "four numbers"),
        (None, "500,500,900,900", 422, "less than 4x4"),
    ],
)
def test_outline_bad_input_is_a_one_line_4xx(client, phantoms, data, box, status, msg):
    png = phantoms[1][0][0]
    r = outline(client, png if data is None else data, box)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert msg in detail and "\n" not in detail
    assert outline(client, png).status_code == 200  # the server goes on


def test_without_segmenter_outline_is_unavailable(client, phantoms):
    png = phantoms[1][0][0]
    with local(create_app(ContrastPredictor())) as c:
        info = c.get("/api/info").json()
        assert info["outline_available"] is False
        assert "unavailable for this bundle" in info["outline_note"]
        r = outline(c, png)
        assert r.status_code == 409
        assert "automatic outlining is unavailable" in r.json()["detail"]
        # everything else as before: box, mask or whole image
        r = c.post("/api/predict", files={"image": ("s.png", png, "image/png")})
        assert r.status_code == 200 and r.json()["roi_source"] == "whole"
        assert "/api/outline" in c.get("/openapi.json").json()["paths"]
    info = client.get("/api/info").json()
    assert info["outline_available"] is True and info["outline_note"] is None


# ------------------------------------------------------------------ reader study round 2
def test_round2_shows_the_region_read_round1_does_not(bundle, phantoms, tmp_path):
    from buscad.reader.store import ReaderStudy

    man, cases = phantoms
    df = man.df.copy()
    lesions = [i for i in range(len(df)) if df["label"].iat[i] != "normal"][:2]
    df = df.iloc[lesions].reset_index(drop=True)
    df.loc[1, "mask_path"] = ""  # this case has no mask: round 2 shows the segmenter's outline
    for col in ("image_path", "mask_path"):
        df[col] = [str(man.source.parent / p) if p else "" for p in df[col].fillna("")]
    src = tmp_path / "cases.csv"
    df.to_csv(src, index=False)
    st = ReaderStudy.create(tmp_path / "study.sqlite", src, washout_days=0, seed=1)
    st.add_reader("R01")
    st.add_reader("R02")
    tok, other = st.issue_reader_token("R01"), st.issue_reader_token("R02")
    h = {"Authorization": f"Bearer {tok}"}
    app = create_app(bundle, study_db=tmp_path / "study.sqlite")
    with local(app) as c:
        url = "/api/study/readers/R01/next"
        assert c.get(url).status_code == 401
        assert c.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 403
        assert c.post("/api/outline", files={"image": ("s.png", cases[0][0])}).status_code == 403
        for _ in range(2):  # round 1: no AI, no outline
            case = c.get(url, headers=h).json()["case"]
            assert case["round"] == 1 and case["ai"] is None
            assert "outline" not in json.dumps(case) and "polygons" not in json.dumps(case)
            body = {"case_id": case["case_id"], "round": 1, "birads": "3"}
            assert c.post("/api/study/readers/R01/reads", json=body, headers=h).status_code == 201
        seen = {}
        for _ in range(2):  # round 2: the AI with the region it read
            case = c.get(url, headers=h).json()["case"]
            assert case["round"] == 2 and case["ai"] is not None
            seen[case["case_id"]] = case["ai"]
            body = {"case_id": case["case_id"], "round": 2, "birads": "4a"}
            assert c.post("/api/study/readers/R01/reads", json=body, headers=h).status_code == 201
    with_mask, without = (str(df["image_id"].iat[k]) for k in (0, 1))
    o = seen[with_mask]["outline"]
    assert o["source"] == "mask" and "drawn by a person" in o["text"]
    truth = read_mask([Path(df["mask_path"].iat[0])], cases[lesions[0]][1].shape)
    ys, xs = np.nonzero(truth)
    pts = np.array([p for poly in o["polygons"] for p in poly])
    assert pts[:, 0].min() == xs.min() and pts[:, 0].max() == xs.max()
    assert pts[:, 1].min() == ys.min() and pts[:, 1].max() == ys.max()
    o = seen[without]["outline"]
    if seen[without]["roi_source"] == "auto":
        assert o["source"] == "auto" and 0 <= o["confidence"] <= 1 and o["polygons"]
        assert "outlined automatically" in o["text"]
    else:  # the segmenter found nothing: the whole image was read, nothing to outline
        assert o is None and seen[without]["roi_source"] == "whole"


# ------------------------------------------------------------------ the page, in Chromium
@pytest.fixture(scope="module")
def server(bundle):
    from tests.render import live_server

    with live_server(create_app(bundle)) as url:
        yield url


def test_app_outlines_on_open_accept_and_analyse(browser, server, client, tmp_path):
    # a phantom of the usual size (as the case-screen screenshot), which reads like a scan
    man = generate_cohort(3, tmp_path / "big", seed=21, normal_fraction=0.0)
    for i in range(len(man)):
        png = man.image_path(i).read_bytes()
        d = outline(client, png).json()
        gray, _ = read_image(man.image_path(i))
        if (
            d["found"]
            and iou(decode_mask_png(d["mask_png"]), read_mask(man.mask_paths(i), gray.shape)) >= 0.7
        ):
            break
    else:
        pytest.fail("the segmenter outlined none of the phantoms well")
    f = man.image_path(i)
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model-line:has-text('scale-test')")
        assert "outlines the lesion" in page.inner_text("#lesion-hint")
        page.set_input_files("#image-input", str(f))
        page.wait_for_selector("#outline-status:has-text('proposed')")
        assert page.is_disabled("#analyse")  # not before the user has seen and accepted it
        # redraw: a box around the lesion outlines it again inside the box
        bb = page.locator("#draw").bounding_box()
        h, w = gray.shape
        x0, y0, x1, y1 = d["box"]
        page.mouse.move(bb["x"] + (x0 - 6) * bb["width"] / w, bb["y"] + (y0 - 6) * bb["height"] / h)
        page.mouse.down()
        page.mouse.move(
            bb["x"] + (x1 + 6) * bb["width"] / w, bb["y"] + (y1 + 6) * bb["height"] / h, steps=4
        )
        page.mouse.up()
        page.wait_for_selector("#outline-status:has-text('inside your box')")
        assert page.is_disabled("#analyse")
        # back to the automatic outline, accepted
        page.click("#auto-outline")
        page.wait_for_selector("#outline-status:has-text('automatic')")
        assert page.inner_text("#box-text") == "No box drawn."
        page.click("#accept-outline")
        page.wait_for_selector("#outline-status:has-text('accepted')")
        page.click("#analyse")
        page.wait_for_selector("#message.ok")
        assert "accepted by the user" in page.inner_text("#roi-text")
        # the outline is drawn in cyan on the canvas over the image
        cyan = page.evaluate(
            "(() => { const c = document.getElementById('draw');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 0; i < d.length; i += 4)"
            " if (d[i + 3] > 200 && d[i] < 80 && d[i + 1] > 180 && d[i + 2] > 200) n++;"
            " return n; })()"
        )
        assert cyan > 50
        page.locator("#opacity").fill("35")
        page.evaluate("window.scrollTo(0, 0)")
        out = Path(os.environ.get("BUSCAD_SCREENSHOT_DIR") or REPO / "docs" / "img")
        out.mkdir(parents=True, exist_ok=True)
        img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            out / "app-outline.png", optimize=True
        )
        assert (out / "app-outline.png").stat().st_size > 10_000
    finally:
        page.close()
