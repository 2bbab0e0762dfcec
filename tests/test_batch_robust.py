"""Batches that always finish: `buscad data import` and `buscad predict` over hostile files."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.synth_files import gradient, write_png
from typer.testing import CliRunner

from buscad.cli import app
from buscad.data.importers import registry as importers
from buscad.data.importers.registry import import_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import malformed

# 128 MiB inflated is above the 64 MiB default budget and quick to build.
DICOM_BOMB_BYTES = 2**27


def _good(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        arr = (gradient(40, 48).astype(np.int32) + rng.integers(0, 20, (40, 48))).astype(np.uint8)
        out.append(write_png(folder / f"good_{i:02d}.png", arr))
    return out


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> dict:
    """benign/: 10 good images, every bomb/crash image, and good images with hostile masks."""
    root = tmp_path_factory.mktemp("hostile")
    cls = root / "benign"
    good = _good(cls, 10)
    bombs = malformed.bomb_files(
        tmp_path_factory.mktemp("bombs"), dicom_element_bytes=DICOM_BOMB_BYTES
    )
    bad_images, bad_masks = [], []
    for name, path in bombs.items():
        _suffix, _build, kind = malformed.BOMB_CLASSES[name]
        if kind == "image":
            dest = cls / path.name
            dest.write_bytes(path.read_bytes())
            bad_images.append(dest)
        else:  # a LabelMe mask: give it a good image of its own, which must then be skipped
            img = write_png(cls / f"{name}.png", gradient(40, 48))
            dest = cls / f"{name}_mask.json"
            dest.write_bytes(path.read_bytes())
            bad_masks.append((img, dest))
    return {"root": root, "good": good, "bad_images": bad_images, "bad_masks": bad_masks}


def test_import_keeps_the_good_and_lists_every_bad_file(hostile_folder, tmp_path):
    out = tmp_path / "manifest.csv"
    rep = import_dataset("folders", hostile_folder["root"], out, progress=False)
    assert rep.n_kept == 10
    kept = pd.read_csv(out)
    assert sorted(Path(p).name for p in kept["image_path"]) == [
        p.name for p in hostile_folder["good"]
    ]
    assert "burned_in" in kept.columns and not kept["burned_in"].any()
    skipped = pd.read_csv(out.with_name("manifest.skipped.csv"))
    reasons = dict(zip(skipped["file"].map(lambda f: Path(f).name), skipped["reason"], strict=True))
    expect = {
        "bomb_bmp_rle8.bmp": "pixel limit",
        "bomb_png_rgba.png": "pixel limit",
        "bomb_dicom_deflated_private.dcm": "inflates to more than",
        "bomb_jpeg_progressive_scans.jpg": "scan bomb",
        "bomb_tiff_missing_dims.tif": "has no ImageWidth",
        "labelme_deep_mask.json": "nested deeper than 64",
        "labelme_nul_path_mask.json": "NUL byte",
        "labelme_long_path_mask.json": "characters long",
    }
    for name, words in expect.items():
        assert words in reasons[name], (name, reasons.get(name))
    assert len(skipped) == len(expect)


def test_import_reports_an_unexpected_reader_failure_and_goes_on(
    hostile_folder, tmp_path, monkeypatch
):
    real = importers.read_image

    def flaky(path, *a, **k):
        if Path(path).name == "good_03.png":
            raise KeyError("boom")
        return real(path, *a, **k)

    monkeypatch.setattr(importers, "read_image", flaky)
    out = tmp_path / "m.csv"
    rep = import_dataset("folders", hostile_folder["root"], out, progress=False)
    assert rep.n_kept == 9
    reasons = {Path(f).name: r for f, r in rep.skipped}
    assert reasons["good_03.png"].startswith("internal error reading ")
    assert reasons["good_03.png"].endswith("good_03.png: KeyError: 'boom'")
    assert out.with_name("m.skipped.csv").exists()


class _Bundle:
    """A tiny stand-in bundle: the test predictor of tests/serve_predictor.py."""

    def __init__(self) -> None:
        from tests.serve_predictor import ContrastPredictor

        self.p = ContrastPredictor()
        self.name, self.engine = "contrast-test", "numpy"

    def predict(self, gray, mask=None, clinical=None, heatmap=True):
        return self.p.predict(gray, mask=mask, clinical=clinical, heatmap=heatmap)


def test_predict_writes_a_summary_row_for_every_image(hostile_folder, tmp_path, monkeypatch):
    from buscad import bundle

    monkeypatch.setattr(bundle.Bundle, "load", classmethod(lambda cls, *a, **k: _Bundle()))
    images = hostile_folder["good"] + hostile_folder["bad_images"]
    images += [m for _, m in hostile_folder["bad_masks"]]  # LabelMe files given as images
    out = tmp_path / "pred"
    res = CliRunner().invoke(
        app,
        ["predict", str(tmp_path / "no-bundle"), *map(str, images), "-o", str(out), "--no-heatmap"],
    )
    assert res.exit_code == 0, res.output
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [str(p) for p in images]
    good = {str(p) for p in hostile_folder["good"]}
    for r in rows:
        if r["image"] in good:
            assert r["error"] == "" and 0.0 <= float(r["ai_score"]) <= 1.0
        else:
            assert r["error"].startswith(r["image"] + ": "), r
    errors = {Path(r["image"]).name: r["error"] for r in rows}
    assert "pixel limit" in errors["bomb_png_rgba.png"]
    assert "scan bomb" in errors["bomb_jpeg_progressive_scans.jpg"]
    assert "is a JSON file" in errors["labelme_deep_mask.json"]
    doc = json.loads((out / "good_00.json").read_text())
    assert doc["warnings"] == []


def test_predict_reports_internal_errors_and_goes_on(hostile_folder, tmp_path, monkeypatch):
    from buscad import bundle

    class Broken(_Bundle):
        def predict(self, gray, **kw):
            if self.p.calls == 1:  # the second image
                self.p.calls += 1
                raise ZeroDivisionError("division by zero")
            return super().predict(gray, **kw)

    monkeypatch.setattr(bundle.Bundle, "load", classmethod(lambda cls, *a, **k: Broken()))
    images = hostile_folder["good"][:3]
    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["predict", "b", *map(str, images), "-o", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert [bool(r["error"]) for r in rows] == [False, True, False]
    assert rows[1]["error"] == (
        f"internal error reading {images[1]}: ZeroDivisionError: division by zero"
    )
