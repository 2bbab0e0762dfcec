"""The shared loaders: versioned JSON (bundles, portable models, checkpoints), the cache
folder and file hashing; and the error branches of ``Bundle.load``."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from buscad.bundle.bundle import Bundle
from buscad.errors import ConfigError, ModelFileError
from buscad.utils import cache_root, file_sha256, load_versioned_json


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ------------------------------------------------------------------ load_versioned_json


def test_load_versioned_json_reads_a_supported_document(tmp_path):
    f = _write(tmp_path / "m.json", {"format": "kind-a", "version": 2, "x": [1, 2]})
    assert load_versioned_json(f, "kind-a", (1, 2)) == {
        "format": "kind-a",
        "version": 2,
        "x": [1, 2],
    }
    assert load_versioned_json(f, "kind-a", 2)["x"] == [1, 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"m\.json: not valid JSON \("),
        (
            json.dumps({"format": "other", "version": 1}),
            r"m\.json: not a kind-a file \(format='other'\)",
        ),
        (json.dumps([1, 2]), r"m\.json: not a kind-a file \(format='list'\)"),
        (
            json.dumps({"format": "kind-a", "version": 3}),
            r"m\.json: kind-a version 3 is not supported \(this buscad reads 1, 2\)",
        ),
        (
            json.dumps({"format": "kind-a"}),
            r"m\.json: kind-a version None is not supported",
        ),
        (
            json.dumps({"format": "kind-a", "version": "1"}),
            r"m\.json: kind-a version '1' is not supported",
        ),
    ],
)
def test_load_versioned_json_bad_files_give_one_line_typed_errors(tmp_path, content, message):
    f = tmp_path / "m.json"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ModelFileError, match=message) as exc:
        load_versioned_json(f, "kind-a", (1, 2))
    assert "\n" not in str(exc.value)
    assert exc.value.path == str(f)


def test_load_versioned_json_missing_file_and_error_type(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.json: kind-a file not found"):
        load_versioned_json(tmp_path / "nope.json", "kind-a", 1)
    with pytest.raises(ConfigError, match=r"nope\.json: kind-a file not found"):
        load_versioned_json(tmp_path / "nope.json", "kind-a", 1, error=ConfigError)


# ------------------------------------------------------------------ cache_root


def test_cache_root_rules(monkeypatch, tmp_path):
    for var in ("BUSCAD_CACHE", "BUSCAD_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "buscad"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "buscad"
    monkeypatch.setenv("BUSCAD_CACHE_DIR", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match="BUSCAD_CACHE_DIR is deprecated"):
        assert cache_root() == tmp_path / "old"
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "new"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BUSCAD_CACHE wins, no warning
        assert cache_root() == tmp_path / "new"


def test_every_cache_user_follows_cache_root(monkeypatch, tmp_path):
    from buscad.data.audit.scan import default_cache_dir as audit_cache
    from buscad.models.weights import cache_dir as weights_cache
    from buscad.radiomics.extract import default_cache_dir as radiomics_cache

    monkeypatch.delenv("BUSCAD_CACHE_DIR", raising=False)
    monkeypatch.delenv("BUSCAD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "buscad"
    assert (audit_cache(), weights_cache(), radiomics_cache()) == (
        root,
        root / "weights",
        root / "radiomics",
    )
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "c"))
    assert audit_cache() == tmp_path / "c"
    assert weights_cache() == tmp_path / "c" / "weights"
    assert radiomics_cache() == tmp_path / "c" / "radiomics"


def test_file_sha256_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 9000  # > 2 MiB: more than one read block
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    assert file_sha256(f) == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ Bundle.load errors


def _fake_bundle(root: Path, **deep: object) -> Path:
    """A bundle folder with just enough for Bundle.load to reach its checks."""
    onnx = root / "models" / "deep.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"not really onnx")
    _write(root / "models" / "deep.json", {"format": "buscad-classifier", "version": 1})
    doc = {
        "format": "buscad-bundle",
        "version": 1,
        "models": {
            "deep": {
                "checkpoint": "models/deep",
                "onnx": "models/deep.onnx",
                "onnx_sha256": hashlib.sha256(b"not really onnx").hexdigest(),
                "onnx_cam": "gradcam",
                **deep,
            }
        },
    }
    _write(root / "bundle.json", doc)
    return root


def test_bundle_load_no_bundle_json(tmp_path):
    with pytest.raises(ModelFileError, match=r"not a buscad bundle \(no bundle\.json\)"):
        Bundle.load(tmp_path)


def test_bundle_load_bad_json(tmp_path):
    (tmp_path / "bundle.json").write_text('{"format": "buscad-bundle", ', encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"bundle\.json: not valid JSON") as exc:
        Bundle.load(tmp_path)
    assert "\n" not in str(exc.value)


def test_bundle_load_wrong_version_and_format(tmp_path):
    _write(tmp_path / "bundle.json", {"format": "buscad-bundle", "version": 99, "models": {}})
    with pytest.raises(
        ModelFileError, match=r"bundle\.json: buscad-bundle version 99 is not supported"
    ):
        Bundle.load(tmp_path)
    _write(tmp_path / "bundle.json", {"format": "something-else", "version": 1})
    with pytest.raises(ModelFileError, match=r"bundle\.json: not a buscad-bundle file"):
        Bundle.load(tmp_path)


def test_bundle_load_missing_model_files(tmp_path):
    b = _fake_bundle(tmp_path)
    (b / "models" / "deep.json").unlink()
    with pytest.raises(ModelFileError, match=r"deep\.json: cannot read the model spec"):
        Bundle.load(b)
    b = _fake_bundle(tmp_path / "b2")
    (b / "models" / "deep.onnx").unlink()
    with pytest.raises(ModelFileError, match=r"deep\.onnx: ONNX model not found"):
        Bundle.load(b, engine="onnx")


def test_bundle_load_hash_mismatch(tmp_path):
    b = _fake_bundle(tmp_path, onnx_sha256="0" * 64)
    with pytest.raises(ModelFileError, match=r"deep\.onnx: SHA-256 does not match bundle\.json"):
        Bundle.load(b, engine="onnx")


def test_bundle_load_onnx_requested_without_onnx(tmp_path):
    b = _fake_bundle(tmp_path, onnx=None, onnx_skipped="ONNX export skipped: no opset")
    with pytest.raises(ModelFileError, match="ONNX export skipped: no opset"):
        Bundle.load(b, engine="onnx")
    with pytest.raises(ValueError, match="engine must be one of"):
        Bundle.load(b, engine="tensorrt")
