"""`buscad predict --dicom-sr`: a TID 1500 SR that reads back, and no header value anywhere else."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from tests.scale_fixtures import make_bundle
from tests.synth_files import (
    PHI_BIRTH,
    PHI_ID,
    PHI_NAME,
    PHI_STUDY_DATE,
    write_dicom,
    write_mask,
)
from typer.testing import CliRunner

from buscad.cli import app

pytest.importorskip("highdicom", reason="highdicom is not installed")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    bundle = make_bundle(root / "bundle", classical=False)
    rng = np.random.default_rng(1)
    arr = rng.integers(60, 200, (80, 100)).astype(np.uint8)
    arr[30:55, 40:75] = 20
    study, sop = generate_uid(), generate_uid()
    dcm = write_dicom(
        root / "in" / "us1.dcm",
        arr,
        sop_uid=sop,
        extra={"StudyInstanceUID": study, "SeriesInstanceUID": generate_uid()},
    )
    mask = write_mask(root / "in" / "us1_mask.png", arr.shape, (30, 55, 40, 75))
    out, sr_dir = root / "pred", root / "sr"
    res = CliRunner().invoke(
        app,
        ["predict", str(bundle), str(dcm), "--mask", str(mask), "-o", str(out),
         "--dicom-sr", str(sr_dir)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"root": root, "out": out, "sr": sr_dir, "sop": sop, "study": study, "dcm": dcm}


def test_sr_round_trip(scored):
    from buscad.bundle.sr import read_sr_result

    files = list(scored["sr"].glob("*.dcm"))
    assert [f.name for f in files] == ["us1_sr.dcm"]
    doc = json.loads((scored["out"] / "us1.json").read_text())
    got = read_sr_result(files[0])
    assert got["ai_score"] == pytest.approx(doc["ai_score"], abs=1e-9)
    assert got["threshold"] == pytest.approx(doc["threshold"], abs=1e-9)
    assert got["decision"] == doc["decision"]
    assert got["referenced_sop_instance_uid"] == scored["sop"]
    pts = got["outline"]
    assert np.array_equal(pts[0], pts[-1])  # closed
    # the mask box (40, 30)-(75, 55): its contour's corners (last pixel inclusive)
    assert (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()) == (
        40, 30, 74, 54,
    )  # fmt: skip
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "SR" and ds.StudyInstanceUID == scored["study"]
    assert str(ds.PatientName) == PHI_NAME and ds.PatientID == PHI_ID  # copied, as required
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # the algorithm identification names the model that gave the AI score, not just the bundle
    assert doc["headline_model"] == "deep"
    texts: list[str] = []

    def walk(d) -> None:
        for el in d:
            if el.VR == "SQ":
                for item in el.value:
                    walk(item)
            elif el.keyword == "TextValue":
                texts.append(str(el.value))

    walk(ds)
    assert "model=deep (Deep-learning model (CNN))" in texts


def test_no_other_output_carries_header_values(scored):
    outputs = [f for f in scored["out"].rglob("*") if f.is_file()]
    assert {f.name for f in outputs} >= {"us1.json", "us1_overlay.png", "summary.csv"}
    for f in outputs:
        data = f.read_bytes()
        for secret in (PHI_NAME, PHI_NAME.replace("^", " "), PHI_ID, PHI_BIRTH, PHI_STUDY_DATE):
            assert secret.encode() not in data, (f.name, secret)


def test_sr_written_only_when_asked_and_skipped_for_non_dicom(scored, tmp_path):
    from buscad.bundle.sr import write_sr
    from buscad.errors import ImageReadError

    bundle = scored["root"] / "bundle"
    out = tmp_path / "p"
    res = CliRunner().invoke(app, ["predict", str(bundle), str(scored["dcm"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert not list(tmp_path.rglob("*_sr.dcm"))
    bare = write_dicom(tmp_path / "bare.dcm", np.zeros((20, 20), np.uint8))  # no study UID
    doc = {"ai_score": 0.3, "threshold": 0.5, "decision": "benign", "roi": [0, 0, 20, 20]}
    with pytest.raises(ImageReadError, match="no StudyInstanceUID"):
        write_sr(bare, doc, bundle, tmp_path / "sr")


def test_sr_from_a_manifest_run(scored, tmp_path):
    import pandas as pd

    from buscad.bundle.sr import read_sr_result

    m = tmp_path / "m.csv"
    pd.DataFrame({"image_id": ["us1"], "image_path": [str(scored["dcm"])]}).to_csv(m, index=False)
    out, sr_dir = tmp_path / "p", tmp_path / "sr"
    res = CliRunner().invoke(
        app,
        ["predict", str(scored["root"] / "bundle"), "--manifest", str(m), "-o", str(out),
         "--no-heatmap", "--dicom-sr", str(sr_dir)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    row = pd.read_csv(out / "summary.csv").iloc[0]
    got = read_sr_result(sr_dir / "us1_sr.dcm")
    assert got["ai_score"] == pytest.approx(row["ai_score"], abs=1e-9)
    x0, _y0, _x1, y1 = map(int, row["roi"].split())  # no mask: the whole image
    assert (got["outline"][:, 0].min(), got["outline"][:, 1].max()) == (x0, y1)
    for f in out.rglob("*"):
        if f.is_file():
            assert (
                PHI_ID.encode() not in f.read_bytes() and PHI_BIRTH.encode() not in f.read_bytes()
            )
