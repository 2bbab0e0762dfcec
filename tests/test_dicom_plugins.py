"""DICOM done right: pydicom's bundled example files, modality check, frames, burned-in text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from tests.synth_files import gradient, write_dicom
from typer.testing import CliRunner

from buscad.cli import app
from buscad.data.importers.registry import import_dataset
from buscad.data.io import (
    ImageMeta,
    burned_in_warning,
    read_image,
    reader_settings,
    sniff_format,
)
from buscad.errors import ImageReadError, UnsupportedModalityError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
US_EXAMPLES = {
    # name: (shape, frames)
    "examples_rgb_color.dcm": ((240, 320), 1),  # preamble looks like a TIFF header
    "examples_jpeg2k.dcm": ((480, 640), 1),  # JPEG 2000
    "examples_palette.dcm": ((350, 800), 1),
    "examples_ybr_color.dcm": ((240, 320), 30),  # 30-frame JPEG baseline
    "ExplVR_BigEnd.dcm": ((60, 80), 1),
}

pytestmark = pytest.mark.skipif(
    not all((TEST_FILES / n).exists() for n in [*US_EXAMPLES, "CT_small.dcm", "MR_small.dcm"]),
    reason="pydicom's bundled example files are not installed",
)


def test_tiff_like_preamble_is_dicom():
    f = TEST_FILES / "examples_rgb_color.dcm"
    assert f.read_bytes()[:4] == b"II*\x00"
    assert sniff_format(f) == "dicom"


@pytest.mark.parametrize("name", sorted(US_EXAMPLES))
def test_pydicom_ultrasound_examples_read(name):
    shape, frames = US_EXAMPLES[name]
    gray, meta = read_image(TEST_FILES / name)
    assert gray.shape == shape and gray.dtype == np.uint8
    assert meta.format == "dicom"
    assert meta.extra["n_frames"] == frames and meta.extra["frame"] == 0
    assert meta.extra["modality"] == "US"
    assert gray.std() > 5  # real pixels, not a blank decode


def test_cine_frames_decode_separately():
    f = TEST_FILES / "examples_ybr_color.dcm"
    first, _ = read_image(f)
    last, meta = read_image(f, frame=29)
    assert meta.extra["frame"] == 29
    ref = pydicom.dcmread(f).pixel_array[29]
    luma = np.rint(ref[..., 0] * 0.299 + ref[..., 1] * 0.587 + ref[..., 2] * 0.114)
    assert np.abs(last.astype(float) - luma).max() <= 1
    assert not np.array_equal(first, last)


@pytest.mark.parametrize(
    ("name", "words"),
    [("CT_small.dcm", "modality CT (computed tomography)"), ("MR_small.dcm", "modality MR")],
)
def test_other_modalities_refused_naming_it(name, words):
    f = TEST_FILES / name
    with pytest.raises(UnsupportedModalityError, match=r"is not ultrasound") as err:
        read_image(f)
    assert words in str(err.value) and str(err.value).startswith(str(f) + ": ")
    gray, _ = read_image(f, allow_modality=True)
    assert gray.shape == ((128, 128) if name == "CT_small.dcm" else (64, 64))
    with reader_settings(allow_modality=["CT", "MR"]):
        read_image(f)


def test_secondary_capture_without_modality_is_accepted(tmp_path):
    f = write_dicom(tmp_path / "sc.dcm", gradient(), extra={"Modality": ""})
    gray, meta = read_image(f)
    assert gray.shape == (24, 32) and "modality" not in meta.extra


def test_unsupported_compression_names_the_syntax():
    f = TEST_FILES / "JPEG-lossy.dcm"  # NM, JPEG Extended 12-bit: no installed plugin decodes it
    with pytest.raises(ImageReadError, match=r"JPEG Extended \(Process 2 and 4\)"):
        read_image(f, allow_modality=True)


def test_burned_in_annotation_flag_and_warning(tmp_path):
    f = write_dicom(tmp_path / "b.dcm", gradient(), extra={"BurnedInAnnotation": "YES"})
    gray, meta = read_image(f)
    assert meta.burned_in_annotation is True
    assert "BurnedInAnnotation = YES" in burned_in_warning(gray, meta)
    g2, m2 = read_image(
        write_dicom(tmp_path / "n.dcm", gradient(), extra={"BurnedInAnnotation": "NO"})
    )
    assert m2.burned_in_annotation is False and burned_in_warning(g2, m2) is None


def test_text_detector_warns_on_burned_in_words():
    gray, meta = read_image(TEST_FILES / "examples_palette.dcm")
    w = burned_in_warning(gray, meta)
    assert w is not None and "text-like marks burned into the pixels" in w
    blank = ImageMeta("x", "png", 64, 64, 8, False, 0.0)
    assert burned_in_warning(np.full((64, 64), 40, np.uint8), blank) is None


def test_import_and_predict_the_examples(tmp_path, monkeypatch):
    src = tmp_path / "dicoms"
    src.mkdir()
    for n in [*US_EXAMPLES, "CT_small.dcm", "MR_small.dcm"]:
        (src / n).write_bytes((TEST_FILES / n).read_bytes())
    out = tmp_path / "m.csv"
    rep = import_dataset("dicom", src, out, progress=False, label="benign", salt="s")
    assert rep.n_kept == len(US_EXAMPLES)
    reasons = {Path(f).name: r for f, r in rep.skipped}
    assert "modality CT (computed tomography) is not ultrasound" in reasons["CT_small.dcm"]
    assert "modality MR (magnetic resonance) is not ultrasound" in reasons["MR_small.dcm"]
    assert rep.n_burned_in >= 1
    rep2 = import_dataset(
        "dicom",
        src,
        tmp_path / "all.csv",
        progress=False,
        label="benign",
        salt="s",
        any_modality=True,
    )
    assert rep2.n_kept == len(US_EXAMPLES) + 2
    res = CliRunner().invoke(
        app,
        ["data", "import", "dicom", str(src), "-o", str(tmp_path / "cli.csv"), "--label", "benign"],
    )
    assert res.exit_code == 0 and "image(s) may show burned-in text" in res.output

    from tests.test_batch_robust import _Bundle

    from buscad import bundle

    monkeypatch.setattr(bundle.Bundle, "load", classmethod(lambda cls, *a, **k: _Bundle()))
    files = sorted(src.iterdir())
    res = CliRunner().invoke(app, ["predict", "b", *map(str, files), "-o", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "WARNING: " in res.output
    import csv

    with open(tmp_path / "p" / "summary.csv", newline="") as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    assert len(rows) == len(files)
    assert "modality CT" in rows["CT_small.dcm"]["error"]
    assert rows["examples_palette.dcm"]["warnings"].count("text-like marks") == 1
    for n in US_EXAMPLES:
        assert rows[n]["error"] == "" and rows[n]["ai_score"] != ""
