"""API tests of the web app (predict, heatmap, report, bad input, privacy, limits)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from buscad.bundle.types import DECISION_SUPPORT_NOTE, likelihood_band
from buscad.data.io import read_image, read_mask
from buscad.data.phantom import generate_cohort
from buscad.serve.app import WHOLE_IMAGE_NOTE, create_app
from serve_predictor import DATES, PATIENT_ID, PATIENT_NAME, ContrastPredictor, make_dicom


def local(app) -> TestClient:
    """A test client that calls the app as 127.0.0.1 (the Host header is checked)."""
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return generate_cohort(4, tmp_path_factory.mktemp("serve_api"), seed=3, normal_fraction=0.0)


@pytest.fixture(scope="module")
def case(cohort):
    """(png bytes, gray, mask, mask png bytes) of a phantom with a lesion."""
    p = cohort.image_path(0)
    gray, _ = read_image(p)
    mask = read_mask(cohort.mask_paths(0), gray.shape)
    return p.read_bytes(), gray, mask, cohort.mask_paths(0)[0].read_bytes()


@pytest.fixture()
def predictor() -> ContrastPredictor:
    return ContrastPredictor()


@pytest.fixture()
def client(predictor):
    with local(create_app(predictor)) as c:
        yield c


def post(client, url="/api/predict", image=None, name="scan.png", **data):
    files = {"image": (name, image, "application/octet-stream")}
    if "mask" in data:
        files["mask"] = ("mask.png", data.pop("mask"), "image/png")
    return client.post(url, files=files, data=data)


def test_predict_box_matches_the_predictor(client, case, predictor):
    png, gray, _, _ = case
    r = post(client, image=png, box="30,40,150,160")
    assert r.status_code == 200, r.text
    d = r.json()
    direct = ContrastPredictor().predict(gray, box=(30, 40, 150, 160))
    assert d["ai_score"] == pytest.approx(direct.ai_score)
    assert d["model_scores"]["texture"] == pytest.approx(direct.model_scores["texture"])
    assert d["roi"] == [30, 40, 150, 160] and d["roi_source"] == "box"
    assert d["roi_note"] is None
    assert d["threshold"] == 0.5 and d["decision"] == direct.decision
    assert d["band"]["category"] == likelihood_band(d["ai_score"]).category
    assert d["band"]["note"] == DECISION_SUPPORT_NOTE
    assert d["skipped_models"] == {"clinical": "needs age"}
    assert d["image"] == {"width": gray.shape[1], "height": gray.shape[0], "format": "png"}
    assert d["bundle"] == {"name": "contrast-test", "version": "0.0-test"}
    import base64

    hm = Image.open(io.BytesIO(base64.b64decode(d["heatmap_png"])))
    assert hm.mode == "RGBA" and hm.size == (gray.shape[1], gray.shape[0])
    alpha = np.asarray(hm)[..., 3]
    assert alpha[:40].max() == 0 and alpha[40:160, 30:150].max() == 255  # zero outside the ROI
    # a different box gives a different score: not a constant
    d2 = post(client, image=png, box="0,0,60,60").json()
    assert d2["ai_score"] != pytest.approx(d["ai_score"])


def test_predict_whole_image_says_so(client, case):
    png, gray, _, _ = case
    d = post(client, image=png).json()
    assert d["roi_source"] == "whole" and d["roi"] == [0, 0, gray.shape[1], gray.shape[0]]
    assert d["roi_note"] == WHOLE_IMAGE_NOTE


def test_mask_wins_over_box_and_clinical_inputs_reach_models(client, case):
    png, _, mask, mask_png = case
    ys, xs = np.nonzero(mask)
    d = post(client, image=png, mask=mask_png, box="0,0,20,20", clinical=json.dumps({"age": 66}))
    assert d.status_code == 200, d.text
    d = d.json()
    assert d["roi_source"] == "mask"
    assert d["roi"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert d["model_scores"]["clinical"] == pytest.approx(1 / (1 + np.exp(-(66 - 50) / 8)))
    assert d["skipped_models"] == {}


def test_heatmap_endpoint_and_no_heatmap_option(client, case):
    png, gray, _, _ = case
    r = post(client, "/api/heatmap", image=png, box="30,40,150,160")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (gray.shape[1], gray.shape[0])
    d = post(client, image=png, heatmap="false").json()
    assert d["heatmap_png"] is None


def test_report_html_and_pdf(client, case):
    png, _, _, _ = case
    r = post(
        client,
        "/api/report?format=html",
        image=png,
        name="Jane_Doe_scan.png",
        box="30,40,150,160",
        exam="ACC-2026-0042",
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert re.match(
        r'attachment; filename="buscad-report-\d{8}-\d{6}\.html"', r.headers["content-disposition"]
    )
    html = r.text
    score = post(client, image=png, box="30,40,150,160").json()["ai_score"]
    assert f"{100 * score:.1f}%" in html
    assert "AI call: " in html and "50.0% threshold" in html
    # the exam number as the user typed it, in the report's first lines
    assert re.search(r"Exam / accession number</th><td[^>]*>ACC-2026-0042<", html)
    assert "contrast-test" in html and "0.0-test" in html
    assert "it is not a BI-RADS assessment" in html  # the decision-support note
    assert html.count("data:image/png;base64,") == 2  # image and overlay
    assert "Jane_Doe" not in html  # the upload's file name never appears
    assert re.search(r"Report date</th><td>\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", html)
    r = post(client, "/api/report?format=pdf", image=png)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", r.content)) == 1  # one page
    assert post(client, "/api/report?format=docx", image=png).status_code == 422
    r = post(client, "/api/report?format=html", image=png, exam="x" * 65)
    assert r.status_code == 422 and "at most 64" in r.text


def test_dicom_is_deidentified_everywhere(client, case, caplog):
    _, gray, _, _ = case
    dcm = make_dicom(gray)
    secrets = [PATIENT_NAME, "Janeqx", PATIENT_ID, *DATES, "Hospital Zyx"]
    with caplog.at_level("DEBUG"):
        r = post(client, image=dcm, name="scan.dcm", box="30,40,150,160")
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["image"]["format"] == "dicom"
        ref = post(client, image=case[0], box="30,40,150,160").json()
        assert d["ai_score"] == pytest.approx(ref["ai_score"])  # same pixels, same score
        prev = post(client, "/api/preview", image=dcm, name="scan.dcm")
        html = post(client, "/api/report?format=html", image=dcm, name="scan.dcm").content
        pdf = post(client, "/api/report?format=pdf", image=dcm, name="scan.dcm").content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(prev.content))), gray)
    blobs = [r.content, prev.content, html, pdf, caplog.text.encode()]
    for s in secrets:
        for b in blobs:
            assert s.encode() not in b


BAD_INPUTS = [
    ("empty", b"", 400, r"uploaded image is empty \(0 bytes\)"),
    (
        "text named .png",
        b"just some text, not pixels\n" * 20,
        415,
        r"not a recognised image by its content",
    ),
]


@pytest.mark.parametrize(
    ("label", "data", "status", "msg"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_images_get_4xx_then_predict_works(client, case, label, data, status, msg):
    r = post(client, image=data, name="scan.png")
    assert r.status_code == status
    assert re.search(msg, r.json()["detail"])
    assert post(client, image=case[0]).status_code == 200


def test_truncated_dicom_then_predict_works(client, case):
    dcm = make_dicom(case[1])
    r = post(client, image=dcm[: len(dcm) // 2], name="scan.dcm")
    assert r.status_code == 422
    assert r.json()["detail"].startswith("uploaded image: cannot decode DICOM pixel data")
    assert post(client, image=case[0]).status_code == 200


def test_60mb_upload_refused_then_predict_works(client, case):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (60 * 2**20)
    r = post(client, image=big)
    assert r.status_code == 413
    assert "larger than the 50 MB limit" in r.json()["detail"]
    assert post(client, image=case[0]).status_code == 200


def test_upload_limit_is_configurable(case, predictor):
    with local(create_app(predictor, max_upload_mb=0.05)) as c:
        r = post(c, image=case[0] + b"\0" * 60_000)
        assert r.status_code == 413
        assert r.json()["detail"] == "uploaded image is 0.1 MB, above the 0.05 MB limit"
        small = Image.fromarray(case[1][:64, :64])
        buf = io.BytesIO()
        small.save(buf, format="PNG")
        assert post(c, image=buf.getvalue()).status_code == 200


def test_wrong_size_mask_then_predict_works(client, case):
    png, gray, _, _ = case
    buf = io.BytesIO()
    Image.fromarray(np.full((50, 60), 255, np.uint8)).save(buf, format="PNG")
    r = post(client, image=png, mask=buf.getvalue())
    assert r.status_code == 422
    assert r.json()["detail"] == (
        f"uploaded mask: mask size 60x50 differs from image size {gray.shape[1]}x{gray.shape[0]}"
    )
    buf = io.BytesIO()
    Image.fromarray(np.zeros(gray.shape, np.uint8)).save(buf, format="PNG")
    r = post(client, image=png, mask=buf.getvalue())
    assert r.status_code == 422 and "blank" in r.json()["detail"]
    assert post(client, image=png).status_code == 200


@pytest.mark.parametrize(
    ("box", "msg"),
    [("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("10,10,12,12", "less than 4x4")],
)
def test_bad_box(client, case, box, msg):
    r = post(client, image=case[0], box=box)
    assert r.status_code == 422 and msg in r.json()["detail"]


def test_malformed_requests(client, case):
    r = client.post("/api/predict", content=case[0], headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/api/predict", files={"other": ("x.png", case[0])})
    assert r.status_code == 400 and "field 'image'" in r.json()["detail"]
    r = post(client, image=case[0], clinical="{not json")
    assert r.status_code == 422 and "clinical must be a JSON object" in r.json()["detail"]


def test_box_is_clipped_to_the_image(client, case):
    _, gray, _, _ = case
    d = post(client, image=case[0], box=f"-20,-5,{gray.shape[1] + 50},100").json()
    assert d["roi"] == [0, 0, gray.shape[1], 100]


def test_nothing_uploaded_is_left_on_disk(client, case, tmp_path, monkeypatch):
    import tempfile

    shm = Path("/dev/shm")
    before = set(shm.glob("buscad-upload-*")) if shm.is_dir() else set()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for _ in range(3):
        assert post(client, image=case[0], mask=case[3]).status_code == 200
    assert post(client, image=b"garbage" * 10).status_code == 415
    after = set(shm.glob("buscad-upload-*")) if shm.is_dir() else set()
    assert after == before
    assert list(tmp_path.iterdir()) == []


def test_info_and_openapi(client):
    info = client.get("/api/info").json()
    assert info["threshold"] == 0.5 and info["clinical_inputs"] == ["age"]
    assert info["max_upload_mb"] == 50 and info["reader_study"] is False
    assert info["inputs"] == [{"name": "age", "label": "Age (years)", "choices": None}]
    assert info["models"][2] == {
        "name": "clinical",
        "label": "Clinical model",
        "description": "logistic regression on the selected clinical variables",
    }
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "image" in body["multipart/form-data"]["schema"]["properties"]
    for path in ("/api/report", "/api/study/readers/{reader_id}/reads", "/api/study/export.csv"):
        assert path in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in re.sub(r"<!--.*?-->", "", page.text).replace("http-equiv", "")
    assert client.get("/static/app.js").status_code == 200


def test_inference_runs_off_the_event_loop(case):
    slow = ContrastPredictor(delay_s=0.6)
    app = create_app(slow)

    async def go() -> tuple[float, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            t0 = time.perf_counter()
            task = asyncio.create_task(c.post("/api/predict", files={"image": ("a.png", case[0])}))
            await asyncio.sleep(0.1)
            h = await c.get("/api/health")
            t_health = time.perf_counter() - t0
            r = await task
            assert h.status_code == 200 and r.status_code == 200
            return t_health, time.perf_counter() - t0

    t_health, t_predict = asyncio.run(go())
    assert t_health < 0.5 < t_predict


def test_serve_command(monkeypatch, tmp_path):
    import uvicorn
    from typer.testing import CliRunner

    import buscad.serve.cli as serve_cli
    from buscad.cli import app as cli_app

    seen = {}
    monkeypatch.setattr(serve_cli, "load_predictor", lambda p: ContrastPredictor())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    r = CliRunner().invoke(
        cli_app, ["serve", str(tmp_path), "--study-db", str(tmp_path / "s.sqlite")]
    )
    assert r.exit_code == 0, r.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000  # local only by default
    assert "serving contrast-test on http://127.0.0.1:8000/" in r.output
    with local(seen["app"]) as c:
        assert c.get("/api/info").json()["reader_study"] is True
    r = CliRunner().invoke(cli_app, ["serve", str(tmp_path), "--max-upload-mb", "0"])
    assert r.exit_code != 0 and "must be > 0" in r.output


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize(
    "head",
    [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0",
        b"BM",
        b"II*\x00",
        b"\0" * 128 + b"DICM",
        b"GIF89a",
    ],
    ids=["png", "jpeg", "bmp", "tiff", "dicom", "gif"],
)
def test_garbage_behind_a_valid_signature_is_a_4xx(client, case, head):
    rng = np.random.default_rng(len(head))
    r = post(client, image=head + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert 400 <= r.status_code < 500
    assert r.json()["detail"].startswith("uploaded image")
    assert post(client, image=case[0]).status_code == 200


def test_predictor_refusal_is_a_422_and_app_survives_restart(case):
    class Picky(ContrastPredictor):
        def predict(self, gray, mask=None, box=None, clinical=None, heatmap=True):
            if clinical and clinical.get("age", 0) > 120:
                raise ValueError(f"age {clinical['age']} is out of range")
            return super().predict(gray, mask, box, clinical, heatmap)

    app = create_app(Picky())
    for _ in range(2):  # the same app, started and stopped twice
        with local(app) as c:
            r = post(c, image=case[0], clinical='{"age": 300}')
            assert r.status_code == 422
            assert (
                r.json()["detail"] == "the model could not read this input: age 300 is out of range"
            )
            assert post(c, image=case[0], clinical='{"age": 40}').status_code == 200


class LexiconPredictor(ContrastPredictor):
    """The test predictor with lexicon inputs whose allowed values the models learnt."""

    def __init__(self) -> None:
        super().__init__()
        self.clinical_inputs = ["age", "margin", "birads", "skin_note"]

    def input_choices(self) -> dict[str, list[str]]:
        return {"margin": ["circumscribed", "not circumscribed"]}


def test_info_sends_allowed_values_of_lexicon_inputs():
    with local(create_app(LexiconPredictor())) as c:
        fields = {f["name"]: f for f in c.get("/api/info").json()["inputs"]}
    assert fields["margin"] == {
        "name": "margin",
        "label": "Margin",
        "choices": ["circumscribed", "not circumscribed"],
    }
    # the reader's BI-RADS: the manifest contract's categories when no model lists them
    assert fields["birads"]["choices"] == ["1", "2", "3", "4", "4a", "4b", "4c", "5", "6"]
    assert fields["birads"]["label"] == "Radiologist's BI-RADS category"
    assert fields["age"]["choices"] is None and fields["skin_note"]["label"] == "Skin note"
