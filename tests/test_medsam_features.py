"""The ``medsam`` feature family and model on synthetic phantoms.

A stand-in LiteMedSAM encoder (one small ONNX graph with the real one's input and
output: ``image (1, 3, 256, 256) -> (1, 256, 64, 64)``, 4x4 average pooling then a
1x1 convolution and ReLU) keeps these tests fast and free of the packaged
checkpoint; the pooling, cache, model, study and bundle code is the real one.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from buscad.errors import ModelFileError
from buscad.segment.medsam import (
    EMBEDDING_SHAPE,
    ENCODER_NAME,
    MANIFEST_NAME,
    EmbeddingCache,
    image_key,
)
from buscad.segment.medsam_features import (
    COLUMNS,
    MAX_COLUMNS,
    Encoder,
    MedSAMFeatures,
    max_pooled_features,
    pooled_features,
    region_weights,
)
from buscad.utils import atomic_write_json, file_sha256


def fake_encoder(folder: Path, seed: int = 0) -> Path:
    """A converted-LiteMedSAM-like folder holding a stand-in encoder graph and its manifest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (256, 3, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.5, 256).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node("Conv", ["p", "w", "b"], ["c"]),
            helper.make_node("Relu", ["c"], ["embedding"]),
        ],
        "stand_in_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 256, 256])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 256, 64, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / ENCODER_NAME)
    atomic_write_json(
        folder / MANIFEST_NAME,
        {
            "format": "buscad-litemedsam",
            "version": 1,
            "sha256": {ENCODER_NAME: file_sha256(folder / ENCODER_NAME)},
        },
    )
    return folder


# ----------------------------------------------------------------- pooling
def test_pooled_features_are_the_region_means_of_a_constructed_embedding() -> None:
    # a 256 x 256 image is not resized: embedding cell (i, j) is pixels 4i..4i+3, 4j..4j+3
    mask = np.zeros((256, 256), bool)
    mask[64:128, 64:128] = True  # cells 16..31 x 16..31, whole
    e = np.full(EMBEDDING_SHAPE, -5.0, np.float32)
    e[0, :, 16:32, 16:32] = (np.arange(256) + 1.0)[:, None, None]  # lesion: c + 1
    e[0, :, 36:48, 16:32] = 7.0  # deeper part of the posterior band
    f = pooled_features(e, mask)
    assert f.shape == (768,) and len(COLUMNS) == 768
    assert COLUMNS[0] == "medsam_in_000" and COLUMNS[256] == "medsam_ring_000"
    assert COLUMNS[-1] == "medsam_below_255"
    np.testing.assert_allclose(f[:256], np.arange(256) + 1.0)  # inside: exactly c + 1
    # ring: r = round(sqrt(4096 / pi) / 4) = 9 px outside the square, cells 13..15 and 32..34
    np.testing.assert_allclose(f[256:512], -5.0)
    # posterior band: rows 128..191 (cells 32..47) below columns 64..127: 4 cell rows of -5,
    # 12 of 7 -> (4 * -5 + 12 * 7) / 16 = 4
    np.testing.assert_allclose(f[512:], 4.0)
    # the max-pool ablation: the largest value over the cells at least half inside
    g = max_pooled_features(e, mask)
    np.testing.assert_allclose(g, np.concatenate([np.arange(256) + 1.0, [-5.0] * 256, [7.0] * 256]))
    assert MAX_COLUMNS[0] == "medsam_max_in_000" and len(MAX_COLUMNS) == 768


def test_padding_is_never_pooled_and_a_bottom_lesion_has_no_posterior_band() -> None:
    # 100 x 200: s = 1.28, the image fills rows 0..127 of the frame; rows 128.. are padding
    mask = np.zeros((100, 200), bool)
    mask[50:, 50:150] = True  # touches the bottom edge
    e = np.ones(EMBEDDING_SHAPE, np.float32)
    e[0, :, 32:, :] = 100.0  # padding cells
    f = pooled_features(e, mask)
    np.testing.assert_allclose(f[:512], 1.0)  # inside and ring: no padding value leaks in
    assert np.isnan(f[512:]).all()  # no band below a lesion on the bottom edge


def test_region_weights_follow_the_encoder_geometry() -> None:
    r = np.zeros((100, 200), bool)
    r[:, :100] = True  # the left half of the image -> frame columns 0..127, rows 0..127
    w = region_weights(r)
    assert w.shape == (64, 64)
    np.testing.assert_allclose(w[:32, :32], 1.0)
    assert w[:, 32:].sum() == 0 and w[32:].sum() == 0  # right half and padding
    assert w.sum() * 16 == pytest.approx(128 * 128)


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"embedding shape \(1, 128, 64, 64\), expected"):
        pooled_features(np.zeros((1, 128, 64, 64)), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="the mask is empty"):
        pooled_features(np.zeros(EMBEDDING_SHAPE), np.zeros((8, 8), bool))


# ------------------------------------------------------------------- cache
def test_cache_key_reuse_and_missing_or_unreadable_entries(tmp_path: Path) -> None:
    enc = Encoder.from_folder(fake_encoder(tmp_path / "enc"))
    gray = np.random.default_rng(1).integers(0, 255, (90, 120), dtype=np.uint8)
    mask = np.zeros(gray.shape, bool)
    mask[30:60, 40:80] = True
    calls = []

    def compute(g, k):
        calls.append(k)
        return enc.embed(g, k)

    cache = EmbeddingCache(tmp_path / "emb", enc.model_hash, compute)
    a = cache.get(gray)
    path = tmp_path / "emb" / enc.model_hash[:12] / f"{image_key(gray)}.npy"
    assert path.is_file() and calls == [image_key(gray)]
    b = cache.get(gray)  # read back, not recomputed
    assert len(calls) == 1 and np.array_equal(a.array, b.array)
    assert b.new_size == (192, 256) and b.shape == (90, 120)
    # a read-only cache serves the stored embedding...
    ro = MedSAMFeatures(None, tmp_path / "emb", model_hash=enc.model_hash)
    d = ro.features(gray, mask)
    np.testing.assert_allclose([d[c] for c in COLUMNS], pooled_features(a.array, mask))
    # ...and names the file when it lacks one or cannot read it
    other = gray.copy()
    other[0, 0] ^= 1
    miss = tmp_path / "emb" / enc.model_hash[:12] / f"{image_key(other)}.npy"
    with pytest.raises(ModelFileError, match="no cached LiteMedSAM embedding") as err:
        ro.features(other, mask)
    assert str(miss) in str(err.value) and "no encoder to compute it" in str(err.value)
    path.write_bytes(b"not a numpy file")
    with pytest.raises(ModelFileError, match="unreadable cached LiteMedSAM embedding") as err:
        ro.features(gray, mask)
    assert str(err.value).startswith(f"{path}: ")
    # with an encoder the corrupt entry is recomputed and replaced
    c = cache.get(gray)
    assert len(calls) == 2 and np.array_equal(c.array, a.array)
    assert np.load(path).shape == EMBEDDING_SHAPE


def test_encoder_digest_is_checked(tmp_path: Path) -> None:
    folder = fake_encoder(tmp_path / "enc")
    with pytest.raises(ModelFileError, match="SHA-256 of the LiteMedSAM encoder does not match"):
        Encoder(folder / ENCODER_NAME, "0" * 64)
    with pytest.raises(ModelFileError, match="encoder graph not found"):
        Encoder(tmp_path / "nothing.onnx")


# ------------------------------------------------------------------- study
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from buscad.config import config_from_dict
    from buscad.data.phantom import generate_cohort
    from buscad.study.runner import StudyRun

    root = tmp_path_factory.mktemp("medsam")
    generate_cohort(40, root / "a", seed=5, size=(96, 112), cohorts=("a",))
    generate_cohort(16, root / "b", seed=6, size=(96, 112), cohorts=("b",))
    enc = fake_encoder(root / "litemedsam")
    cfg = config_from_dict(
        {
            "name": "medsam",
            "cohorts": [
                {"name": "a", "manifest": str(root / "a" / "manifest.csv")},
                {"name": "b", "role": "external", "manifest": str(root / "b" / "manifest.csv")},
            ],
            "models": ["deep", "outline", "medsam", "integrated"],
            "deep": {
                "backbones": ["efficientnet_lite0"],
                "pretrained": "none",
                "epochs": 1,
                "input_size": 32,
                "selection_folds": 2,
                "batch_size": 8,
            },
            "medsam": {"folder": str(enc), "cache": str(root / "emb")},
            "split": {"cv_folds": 3, "test_size": 0.25},
            "gallery_size": 0,
        },
        base_dir=root,
    )
    res = StudyRun(cfg, root / "run", stream=io.StringIO()).run()
    return res, root, cfg


def test_study_model_is_fold_clean_reported_and_fused(study) -> None:
    res, root, _ = study
    pred = pd.read_csv(next(iter(res.predictions.values())))
    assert {"medsam", "integrated"} <= set(pred.columns)
    assert pred["medsam"].notna().all()
    m = res.metrics[res.metrics["model"] == "medsam"]
    assert len(m) >= 2 and m["auc"].notna().all()  # reported alone, every cohort
    fusion = json.loads(next((root / "run" / "cache").glob("models-*/fusion.json")).read_text())
    assert "medsam" in fusion["weights"]  # an integrated-model member
    # the training rows' scores are out-of-fold: the exported refit model scores them
    # differently from predictions.csv, and it reproduces the non-training rows exactly
    from buscad.bundle.portable import load_portable

    cls = next((root / "run" / "cache").glob("models-*"))
    model = load_portable(cls / "export" / "medsam")
    feats = pd.read_parquet(next((root / "run" / "cache").glob("medsam-*/features.parquet")))
    feats = feats.set_index("image_id").loc[pred["case_id"].astype(str)]
    p = model.predict_proba(feats)[:, 1]
    split = pd.read_csv(next((root / "run" / "cache").glob("split-*/manifest.csv")))
    train = pred["case_id"].isin(split.loc[split["split"] == "train", "image_id"]).to_numpy()
    ext = ~train
    assert train.sum() >= 20 and ext.sum() >= 16
    np.testing.assert_allclose(p[ext], pred.loc[ext, "medsam"], atol=1e-6)
    assert not np.allclose(p[train], pred.loc[train, "medsam"], atol=1e-3)
    spec = json.loads((cls / "export" / "medsam.json").read_text())
    assert spec["metadata"]["inputs"] == list(COLUMNS)


def test_second_run_reads_every_embedding_from_the_cache(study) -> None:
    """Every image the study read is in the cache: features come back without the encoder."""
    _, root, _ = study
    from buscad.data.manifest import Manifest

    man = Manifest.load(root / "b" / "manifest.csv")
    h = file_sha256(root / "litemedsam" / ENCODER_NAME)
    stored = sorted((root / "emb" / h[:12]).glob("*.npy"))
    assert len(stored) >= len(man)  # every image of both cohorts was encoded once
    ro, failures = MedSAMFeatures(None, root / "emb", model_hash=h).table(man, progress=False)
    assert not failures and ro[list(COLUMNS)].notna().all().all()


def test_bundle_scores_medsam_without_pytorch(study, tmp_path: Path) -> None:
    res, root, _ = study
    bundle = root / "run" / "bundle"
    doc = json.loads((bundle / "bundle.json").read_text())
    assert doc["models"]["medsam"]["inputs"]["medsam"] == list(COLUMNS)
    assert doc["medsam"]["encoder"] == "medsam/encoder.onnx"
    assert doc["medsam"]["encoder_sha256"] == file_sha256(bundle / "medsam" / "encoder.onnx")
    # an external image with its expert mask: the bundle's score is the study's prediction
    from buscad.data.io import read_image, read_mask
    from buscad.data.manifest import Manifest

    man = Manifest.load(root / "b" / "manifest.csv")
    pred = pd.read_csv(next(iter(res.predictions.values()))).set_index("case_id")
    i = 0
    gray, _ = read_image(man.image_path(i))
    np.save(tmp_path / "g.npy", gray)
    np.save(tmp_path / "m.npy", read_mask(man.mask_paths(i), gray.shape))
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from buscad.bundle.bundle import Bundle\n"
        f"b = Bundle.load({str(bundle)!r}, engine='onnx')\n"
        f"p = b.predict(np.load({str(tmp_path / 'g.npy')!r}), "
        f"mask=np.load({str(tmp_path / 'm.npy')!r}), heatmap=False)\n"
        "q = b.predict(np.load(" + repr(str(tmp_path / "g.npy")) + "), auto_roi=False)\n"
        "print(repr(p.model_scores['medsam']), repr(q.model_scores['medsam']))\n"
        "print(q.skipped_models['medsam'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.splitlines()
    with_mask, without = first.split()
    want = pred.loc[str(man.df["image_id"].iat[i]), "medsam"]
    assert float(with_mask) == pytest.approx(want, abs=1e-6)
    assert without == "None" and "needs the lesion outline" in second


def test_bundle_refuses_a_changed_encoder(study, tmp_path: Path) -> None:
    import shutil

    from buscad.bundle.bundle import Bundle

    _, root, _ = study
    copy = tmp_path / "bundle"
    shutil.copytree(root / "run" / "bundle", copy)
    with open(copy / "medsam" / "encoder.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match=r"encoder\.onnx: SHA-256 does not match bundle\.json"):
        Bundle.load(copy)


def test_bundle_reuses_the_segmenters_litemedsam_encoder(tmp_path: Path) -> None:
    import shutil

    from buscad.bundle.bundle import add_medsam_encoder

    src = fake_encoder(tmp_path / "enc")
    digest = file_sha256(src / ENCODER_NAME)
    alone = add_medsam_encoder(tmp_path / "b1", src)
    assert alone["encoder"] == "medsam/encoder.onnx" and alone["encoder_sha256"] == digest
    assert file_sha256(tmp_path / "b1" / "medsam" / ENCODER_NAME) == digest
    carried = tmp_path / "b2" / "segmenter" / "litemedsam"
    carried.mkdir(parents=True)
    shutil.copyfile(src / ENCODER_NAME, carried / ENCODER_NAME)
    shared = add_medsam_encoder(tmp_path / "b2", src)
    assert shared["encoder"] == "segmenter/litemedsam/encoder.onnx"
    assert not (tmp_path / "b2" / "medsam").exists()
