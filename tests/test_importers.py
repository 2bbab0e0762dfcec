"""Importers: synthetic layouts of every format, batches with broken files, DICOM privacy,
and the real BUSI and BrEaST imports (when ../shared/data is present)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from buscad.cli import app
from buscad.data import importers as imp
from buscad.data.importers.registry import (
    IMPORTERS,
    import_dataset,
    importer_options,
    register_importer,
)
from buscad.data.io import quiet_dicom, read_image, read_mask
from buscad.data.manifest import Manifest
from buscad.errors import ConfigError, InputFileError
from synth_files import (
    PHI_BIRTH,
    PHI_ID,
    PHI_NAME,
    PHI_STUDY_DATE,
    gradient,
    labelme,
    truncated_png,
    write_dicom,
    write_mask,
    write_png,
)

SHAPE = (24, 32)


def img(path: Path, shape: tuple[int, int] = SHAPE, seed: int = 0) -> Path:
    """A small distinct grayscale PNG."""
    return write_png(path, (gradient(*shape) + seed * 7).astype(np.uint8))


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["data", "import", *map(str, args)])
    return result.exit_code, result.output


def reasons(report) -> dict[str, str]:
    return {Path(f).name: r for f, r in report.skipped}


# ------------------------------------------------------------------------------ registry


def test_registry_lists_formats_and_options():
    assert {"busi", "breast-lesions-usg", "folders", "csv", "dicom"} <= set(IMPORTERS)
    assert importer_options("csv")["path_col"] == "image_path"
    assert "salt" in importer_options("dicom")
    with pytest.raises(ValueError, match="already registered"):
        register_importer("busi")(lambda source, ctx: [])


def test_unknown_format_and_foreign_option(tmp_path):
    with pytest.raises(ConfigError, match="unknown import format; choose one of busi"):
        import_dataset("nope", tmp_path, tmp_path / "m.csv")
    with pytest.raises(ConfigError, match="path_col do not apply; it accepts cohort"):
        import_dataset("busi", tmp_path, tmp_path / "m.csv", path_col="x")
    with pytest.raises(InputFileError, match="source not found"):
        import_dataset("busi", tmp_path / "absent", tmp_path / "m.csv")
    with pytest.raises(InputFileError, match="no benign/, malignant/ or normal/ folder"):
        import_dataset("busi", tmp_path, tmp_path / "m.csv")
    code, out = run_cli("nope", tmp_path, "-o", tmp_path / "m.csv")
    assert code == 2 and "unknown import format" in out


# ---------------------------------------------------------------------------------- BUSI


@pytest.fixture
def busi_layout(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset_BUSI_with_GT"
    b, m, n = root / "benign", root / "malignant", root / "normal"
    img(b / "benign (1).png", seed=1)
    write_mask(b / "benign (1)_mask.png", SHAPE, (2, 8, 2, 8))
    img(b / "benign (2).png", seed=2)
    write_mask(b / "benign (2)_mask.png", SHAPE, (2, 6, 2, 6))
    write_mask(b / "benign (2)_mask_1.png", SHAPE, (10, 14, 20, 26))
    img(m / "malignant (1).png", seed=3)
    write_mask(m / "malignant (1)_mask.png", SHAPE, (5, 15, 5, 15))
    img(n / "normal (1).png", seed=4)
    write_png(n / "normal (1)_mask.png", np.zeros(SHAPE, np.uint8))
    # problems, each to be skipped with its reason
    img(m / "benign (5).png", seed=5)  # conflicting: a benign file in malignant/
    write_mask(b / "benign (9)_mask.png", SHAPE, (1, 3, 1, 3))  # mask without image
    (b / "benign (3).png").write_bytes(b"")  # zero-byte image
    write_mask(b / "benign (3)_mask.png", SHAPE, (1, 3, 1, 3))
    (b / "notes.txt").write_text("scanner notes")  # not a BUSI file name
    (b / ".DS_Store").write_bytes(b"\x00junk")  # hidden: ignored silently
    return root


def test_busi_layout_with_mask_union_and_problems(busi_layout, tmp_path):
    out = tmp_path / "out" / "busi.csv"
    rep = import_dataset("busi", busi_layout, out)
    assert rep.n_kept == 4 and rep.n_skipped == 4
    df = rep.manifest.df
    assert list(df["image_id"]) == [
        "busi_benign_1",
        "busi_benign_2",
        "busi_malignant_1",
        "busi_normal_1",
    ]
    assert rep.label_counts() == {"benign": 2, "malignant": 1, "normal": 1}
    assert set(df["cohort"]) == {"BUSI"}
    why = reasons(rep)
    assert "the file name says benign but it is in the malignant/ folder" in why["benign (5).png"]
    assert "mask without its image" in why["benign (9)_mask.png"]
    assert "empty (0 bytes)" in why["benign (3).png"]
    assert "unrecognised file name" in why["notes.txt"]
    # the union of the two masks of benign (2)
    back = Manifest.load(out)
    assert back.validate() == []
    i = int(np.flatnonzero(back.df["image_id"] == "busi_benign_2")[0])
    assert len(back.mask_paths(i)) == 2
    m = read_mask(back.mask_paths(i), shape=SHAPE)
    assert m.sum() == 16 + 24
    # normal rows keep their empty mask
    j = int(np.flatnonzero(back.df["image_id"] == "busi_normal_1")[0])
    assert not read_mask(back.mask_paths(j), shape=SHAPE).any()
    # paths are relative to the manifest file
    text = out.read_text()
    assert str(tmp_path) not in text
    assert "../Dataset_BUSI_with_GT/benign/benign (1).png" in text
    assert list(back.df["image_height"]) == [24] * 4
    skipped = pd.read_csv(out.with_name("busi.skipped.csv"))
    assert len(skipped) == 4 and list(skipped.columns) == ["file", "reason"]


def test_busi_cli_prints_counts_and_reasons(busi_layout, tmp_path):
    out = tmp_path / "m.parquet"
    code, text = run_cli("busi", busi_layout.parent, "-o", out, "--cohort", "BUSI-test")
    assert code == 0, text
    assert "kept 4 rows, skipped 4" in text
    assert f"skipped {busi_layout / 'malignant' / 'benign (5).png'}: conflicting class" in text
    assert Manifest.load(out).df["cohort"].iat[0] == "BUSI-test"
    assert f"wrote {out}" in text


def test_import_with_nothing_kept_writes_nothing(tmp_path):
    root = tmp_path / "b"
    (root / "benign").mkdir(parents=True)
    (root / "benign" / "benign (1).png").write_text("text, not an image")
    out = tmp_path / "m.csv"
    rep = import_dataset("busi", root, out)
    assert rep.n_kept == 0 and rep.manifest_path is None and not out.exists()
    code, text = run_cli("busi", root, "-o", out)
    assert code == 1 and "kept 0 rows, skipped 1" in text and "nothing kept" in text


# --------------------------------------------------------------- bad input, in a batch


def _bad_files(d: Path) -> dict[str, Path]:
    """The six bad inputs of the acceptance list (plus their good partners)."""
    d.mkdir(parents=True, exist_ok=True)
    zero = d / "zero.png"
    zero.write_bytes(b"")
    text = d / "text.png"
    text.write_text("I am not a PNG\n")
    wrong = img(d / "wrongsize.png", seed=6)
    wrong_mask = write_mask(d / "wrongsize_mask.png", (10, 10), (1, 4, 1, 4))
    lm_img = img(d / "labelme_case.png", seed=7)
    lm = labelme(d / "labelme_case_mask.json", "gone.png", SHAPE, [[1, 1], [9, 1], [9, 9]])
    return {
        "zero": zero,
        "trunc": truncated_png(d / "trunc.png"),
        "text": text,
        "nopix": write_dicom(d / "nopix.dcm", None),
        "wrong": wrong,
        "wrong_mask": wrong_mask,
        "lm_img": lm_img,
        "lm": lm,
    }


EXPECTED_REASONS = {
    "zero.png": r"empty \(0 bytes\)",
    "trunc.png": "truncated",
    "text.png": "not a recognised image",
    "nopix.dcm": "no pixel data",
    "wrongsize_mask.png": "mask size 10x10 differs from image size 32x24",
    "labelme_case_mask.json": "missing image",
}


def test_csv_batch_skips_every_bad_input_and_keeps_the_rest(tmp_path):
    d = tmp_path / "data"
    bad = _bad_files(d)
    good = [img(d / f"good{i}.png", seed=10 + i) for i in range(3)]
    write_mask(d / "good0_mask.png", SHAPE, (3, 9, 3, 9))
    rows = [
        {"file": "good0.png", "dx": "M", "seg": "good0_mask.png", "age": 61},
        {"file": "good1.png", "dx": "b", "seg": "", "age": 45},
        {"file": "good2.png", "dx": "benign", "seg": "", "age": 50},
        {"file": "zero.png", "dx": "benign", "seg": "", "age": 1},
        {"file": "trunc.png", "dx": "benign", "seg": "", "age": 2},
        {"file": "text.png", "dx": "benign", "seg": "", "age": 3},
        {"file": "nopix.dcm", "dx": "malignant", "seg": "", "age": 4},
        {"file": "wrongsize.png", "dx": "benign", "seg": "wrongsize_mask.png", "age": 5},
        {"file": "labelme_case.png", "dx": "benign", "seg": "labelme_case_mask.json", "age": 6},
        {"file": "missing.png", "dx": "benign", "seg": "", "age": 7},
        {"file": "good2.png", "dx": "malignant", "seg": "", "age": 8},  # conflicting duplicate
        {"file": "good1.png", "dx": "maybe", "seg": "", "age": 9},  # unknown label
        {"file": "good1.png", "dx": "benign", "seg": "", "age": 9},  # same label again
        {"file": "", "dx": "benign", "seg": "", "age": 10},  # no path
    ]
    table = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    out = tmp_path / "m.csv"
    rep = import_dataset(
        "csv", table, out, path_col="file", label_col="dx", mask_col="seg", base_dir=str(d)
    )
    assert rep.n_kept == 2  # good2 is listed as benign and as malignant: both rows dropped
    assert sorted(rep.manifest.df["label"]) == ["benign", "malignant"]
    assert rep.n_skipped == 12
    for file, reason in rep.skipped:
        assert "\n" not in reason and "\n" not in file
    why = reasons(rep)
    for name, pattern in EXPECTED_REASONS.items():
        assert name in why, (name, rep.skipped)
        assert pd.Series([why[name]]).str.contains(pattern).iat[0], (name, why[name])
    files = {f for f, _ in rep.skipped}
    assert str(bad["zero"]) in files and str(bad["wrong_mask"]) in files and str(bad["lm"]) in files
    assert "file not found" in why["missing.png"]
    conflict = [r for f, r in rep.skipped if f == str(good[2])]
    assert len(conflict) == 2
    assert all("conflicting labels (benign, malignant)" in r for r in conflict)
    assert any("unknown label 'maybe'" in r for _, r in rep.skipped)
    assert any(f == str(good[1]) and "listed twice" in r for f, r in rep.skipped)
    assert any(f.endswith("row 15") and r == "empty image path" for f, r in rep.skipped)
    back = Manifest.load(out)
    assert back.validate() == []
    assert list(back.df["age"]) == [61, 45]
    assert "label_raw" in back.df.columns and back.df["label_raw"].iat[0] == "M"


def test_folders_batch_with_bad_files(tmp_path):
    root = tmp_path / "cases"
    bad = _bad_files(root / "benign")
    img(root / "benign" / "ok.png", seed=1)
    write_mask(root / "benign" / "ok_mask.png", SHAPE, (2, 9, 2, 9))
    img(root / "malignant" / "sub" / "deep.png", seed=2)
    write_mask(root / "malignant" / "sub" / "deep_mask_1.png", SHAPE, (2, 5, 2, 5))
    write_mask(root / "malignant" / "sub" / "deep_mask_2.png", SHAPE, (8, 12, 8, 12))
    out = tmp_path / "m.csv"
    code, text = run_cli("folders", root, "-o", out)
    assert code == 0, text
    assert "kept 2 rows, skipped 6" in text
    for name in EXPECTED_REASONS:
        assert any(name in line and "skipped" in line for line in text.splitlines()), name
    assert f"skipped {bad['trunc']}: image file is truncated" in text
    back = Manifest.load(out)
    assert back.validate() == []
    deep = int(np.flatnonzero(back.df["label"] == "malignant")[0])
    assert len(back.mask_paths(deep)) == 2
    assert read_mask(back.mask_paths(deep), shape=SHAPE).sum() == 9 + 16


# ------------------------------------------------------------------------------ folders


def test_folders_labels_ids_masks_dir_and_unknown_folder(tmp_path):
    root = tmp_path / "site_x"
    img(root / "B" / "a b.png", seed=1)
    img(root / "B" / "a_b.png", seed=2)  # same slug as "a b": id made unique
    img(root / "Malignant" / "c.png", seed=3)
    img(root / "unsure" / "d.png", seed=4)
    (root / "B" / "readme.txt").write_text("hi")
    masks = tmp_path / "masks"
    write_mask(masks / "B" / "a b.nii.png", SHAPE, (1, 2, 1, 2))  # does not match pattern
    write_mask(masks / "Malignant" / "c_seg.png", SHAPE, (4, 8, 4, 8))
    write_mask(masks / "Malignant" / "zz_seg.png", SHAPE, (4, 8, 4, 8))  # orphan
    rep = import_dataset(
        "folders",
        root,
        tmp_path / "m.csv",
        mask_pattern="{stem}_seg",
        mask_dir=str(masks),
        id_prefix="x",
    )
    df = rep.manifest.df.set_index("source_file")
    assert rep.n_kept == 3
    assert (
        df.loc["B/a b.png", "label"] == "benign"
        and df.loc["Malignant/c.png", "label"] == "malignant"
    )
    assert df.loc["B/a b.png", "image_id"] == "x_B_a_b"
    assert df.loc["B/a_b.png", "image_id"].startswith("x_B_a_b_")
    assert df.loc["Malignant/c.png", "mask_path"].endswith("masks/Malignant/c_seg.png")
    assert df.loc["B/a b.png", "mask_path"] == ""
    assert set(df["cohort"]) == {"site_x"}
    why = reasons(rep)
    assert "is not a class" in why["unsure"]
    assert "mask without its image" in why["zz_seg.png"]
    assert any(Path(f).name == "readme.txt" for f, _ in rep.notes)


# ---------------------------------------------------------------------------------- csv


def test_csv_xlsx_with_named_columns_keeps_other_columns(tmp_path):
    d = tmp_path / "imgs"
    img(d / "p1_a.png", seed=1)
    img(d / "p1_b.png", seed=2)
    write_mask(d / "p1_a_m1.png", SHAPE, (1, 4, 1, 4))
    write_mask(d / "p1_a_m2.png", SHAPE, (10, 12, 10, 12))
    table = tmp_path / "sheet.xlsx"
    pd.DataFrame(
        {
            "ID": [101, 102],
            "Path": ["imgs/p1_a.png", str(d / "p1_b.png")],  # relative and absolute
            "Class": ["Malignant", "Benign"],
            "Masks": ["imgs/p1_a_m1.png;imgs/p1_a_m2.png", None],
            "Woman": ["W1", "W1"],
            "BI-RADS": ["4C", "3"],
            "image_path": ["old", "old"],  # clashes with the target name: kept as _src
        }
    ).to_excel(table, index=False)
    out = tmp_path / "out" / "m.csv"
    rep = import_dataset(
        "csv",
        table,
        out,
        path_col="Path",
        label_col="Class",
        mask_col="Masks",
        id_col="ID",
        patient_col="Woman",
        cohort="clinic",
    )
    assert rep.n_kept == 2 and rep.n_skipped == 0
    back = Manifest.load(out)
    df = back.df
    assert list(df["image_id"]) == ["101", "102"]
    assert list(df["patient_id"]) == ["W1", "W1"]
    assert list(df["label"]) == ["malignant", "benign"]
    # a clinical sheet's "BI-RADS" header becomes the contract's birads column, with a note
    assert "BI-RADS" not in df.columns and list(df["birads"].str.lower()) == ["4c", "3"]
    assert any("'BI-RADS' read as 'birads'" in msg for _, msg in rep.notes)
    assert list(df["image_path_src"]) == ["old", "old"]
    assert set(df["cohort"]) == {"clinic"}
    assert read_mask(back.mask_paths(0), shape=SHAPE).sum() == 9 + 4
    assert back.mask_paths(1) == []


def test_csv_missing_column_is_a_one_line_error(tmp_path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"a": [1]}).to_csv(table, index=False)
    with pytest.raises(
        InputFileError, match="no image path column 'image_path'; columns are a"
    ) as e:
        import_dataset("csv", table, tmp_path / "m.csv")
    assert str(table) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------- BrEaST

BREAST_HEADER = (
    "CaseID,Image_filename,Mask_tumor_filename,Mask_other_filename,Pixel_size,Age,"
    "Tissue_composition,Signs,Symptoms,Shape,Margin,Echogenicity,Posterior_features,Halo,"
    "Calcifications,Skin_thickening,Interpretation,BIRADS,Verification,Diagnosis,Classification"
)
BREAST_ROWS = [
    "1,case001.png,case001_tumor.png,,0.0078125,57,heterogeneous: predominantly fat,no,no,"
    "irregular,not circumscribed - indistinct,hypoechoic,shadowing,yes,in a mass,no,"
    "Suspicion of malignancy,4C,confirmed by biopsy,Invasive carcinoma of no special type (NST),"
    "malignant",
    "2,case002.png,case002_tumor.png,case002_other1.png&case002_other2.png,0.006462036,"
    "not available,not available,palpable,not available,oval,circumscribed,anechoic,enhancement,"
    "no,no,no,Cyst,2,confirmed by follow-up care,not applicable,benign",
    "3,case003.png,,,0.01,44,homogeneous: fat,no,no,not applicable,not applicable,"
    "not applicable,not applicable,not applicable,not applicable,no,not applicable,1,"
    "not applicable,not applicable,normal",
    "4,case004.png,case004_tumor.png,,0.01,70,not available,no,no,oval,circumscribed,"
    "hypoechoic,no,no,no,no,Fibroadenoma,3,confirmed by biopsy,Fibroadenoma,benign",
]


@pytest.fixture
def breast_layout(tmp_path: Path) -> Path:
    root = tmp_path / "BrEaST-Lesions_USG"
    im = root / "BrEaST-Lesions_USG-images_and_masks"
    rgba = np.zeros((*SHAPE, 4), np.uint8)
    rgba[..., :3] = gradient()[..., None]
    rgba[..., 3] = 255
    rgba[:, :4, 3] = 0  # transparent band, as in the real files
    write_png(im / "case001.png", rgba)
    write_mask(im / "case001_tumor.png", SHAPE, (4, 10, 6, 16))
    img(im / "case002.png", seed=2)
    write_mask(im / "case002_tumor.png", SHAPE, (4, 10, 6, 16))
    write_mask(im / "case002_other1.png", SHAPE, (15, 18, 2, 5))
    write_mask(im / "case002_other2.png", SHAPE, (19, 22, 2, 5))
    img(im / "case003.png", seed=3)
    # case004 is listed but missing; case005 is on disk but not listed
    img(im / "case005.png", seed=5)
    (root / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv").write_text(
        "\n".join([BREAST_HEADER, *BREAST_ROWS]) + "\n"
    )
    (root / "BrEaST-Lesions-USG-data-dictionary.csv").write_text("Type,description\n")
    return root


def test_breast_lesions_usg_layout(breast_layout, tmp_path):
    out = tmp_path / "breast.csv"
    rep = import_dataset("breast-lesions-usg", breast_layout, out)
    assert rep.n_kept == 3 and rep.n_skipped == 2
    why = reasons(rep)
    assert (
        "listed in BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv row 5 but not found"
        in why["case004.png"]
    )
    assert "image not listed" in why["case005.png"]
    back = Manifest.load(out)
    assert back.validate() == []
    df = back.df.set_index("case_id")
    assert list(df.index) == ["case001", "case002", "case003"]
    assert list(df["label"]) == ["malignant", "benign", "normal"]
    assert df.loc["case001", "age"] == 57 and np.isnan(df.loc["case002", "age"])
    assert list(df["birads"]) == ["4c", "2", "1"]
    assert df.loc["case001", "shape"] == "irregular"
    assert df.loc["case001", "margin"] == "not circumscribed - indistinct"
    assert df.loc["case002", "posterior_features"] == "enhancement"
    assert df.loc["case001", "halo"] == "yes" and df.loc["case001", "calcifications"] == "in a mass"
    assert df.loc["case003", "shape"] == "not applicable"
    assert pd.isna(df.loc["case002", "tissue_composition"])  # "not available" -> missing
    assert df.loc["case001", "verification"] == "confirmed by biopsy"
    assert df.loc["case001", "diagnosis"].startswith("Invasive carcinoma")
    assert df.loc["case001", "pixel_size_cm"] == pytest.approx(0.0078125)
    assert df.loc["case001", "pixel_spacing_mm"] == pytest.approx(0.078125)
    assert df.loc["case001", "image_id"] == "breast_case001"
    assert df.loc["case001", "patient_id"] == "breast_case001"
    assert set(df["cohort"]) == {"BrEaST"}
    assert df.loc["case003", "mask_path"] == ""
    # the tumour mask is the lesion; the "other" masks are kept apart
    assert df.loc["case002", "mask_path"].endswith("case002_tumor.png")
    others = str(df.loc["case002", "other_mask_path"]).split(";")
    assert [Path(o).name for o in others] == ["case002_other1.png", "case002_other2.png"]
    assert not os.path.isabs(others[0])
    assert read_mask(back.mask_paths(0), shape=SHAPE).sum() == 60


def test_breast_wrong_size_other_mask_skips_row(breast_layout, tmp_path):
    im = breast_layout / "BrEaST-Lesions_USG-images_and_masks"
    write_mask(im / "case002_other2.png", (5, 5), (1, 2, 1, 2))
    rep = import_dataset("breast-lesions-usg", breast_layout, tmp_path / "b.csv")
    assert "differs from image size" in reasons(rep)["case002_other2.png"]
    assert "breast_case002" not in set(rep.manifest.df["image_id"])


# -------------------------------------------------------------------------------- DICOM


@pytest.fixture
def dicom_folder(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    write_dicom(d / "a" / "IM0001.dcm", gradient(), sop_uid="1.2.3.4.5.1")
    write_dicom(d / "a" / "IM0002.dcm", gradient()[::-1].copy(), sop_uid="1.2.3.4.5.2")
    write_dicom(d / "b" / "IM0003", gradient(), patient_id="OTHER-77", sop_uid="1.2.3.4.5.3")
    write_dicom(d / "b" / "ct.dcm", gradient(), extra={"Modality": "CT"})  # not ultrasound
    write_dicom(d / "b" / "nopix.dcm", None)
    (d / "b" / "report.txt").write_text("free text")
    return d


def test_dicom_import_is_deidentified(dicom_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "file": ["a/IM0001.dcm", "IM0002.dcm", "b/IM0003", "ct.dcm", "nopix.dcm"],
            "label": ["malignant", "benign", "benign", "benign", "benign"],
        }
    ).to_csv(labels, index=False)
    out = tmp_path / "out" / "dicom.csv"
    code, text = run_cli("dicom", dicom_folder, "-o", out, "--label-map", labels)
    assert code == 0, text
    assert "kept 3 rows, skipped 3" in text
    salt_file = out.with_name("dicom.salt")
    assert salt_file.exists() and "keep this file private" in text
    assert oct(salt_file.stat().st_mode & 0o777) == "0o600"
    df = Manifest.load(out).df.set_index("image_path")
    assert set(df["device"]) == {"Acme Medical SonoTest 9"}
    assert df["pixel_spacing_mm"].tolist() == pytest.approx([0.1] * 3)
    assert (df["modality"] == "US").all()
    pids = df["patient_id"].tolist()
    assert pids[0] == pids[1] != pids[2] and all(p.startswith("pt_") for p in pids)
    assert all(i.startswith("img_") and len(i) == 20 for i in df["image_id"])
    assert sorted(df["label"]) == ["benign", "benign", "malignant"]
    assert any(p.endswith("a/IM0001.dcm") for p in df.index)  # kept in place
    written = out.read_text() + out.with_name("dicom.skipped.csv").read_text() + text
    for secret in (
        PHI_NAME,
        "Kowalska",
        PHI_ID,
        "OTHER-77",
        PHI_BIRTH,
        PHI_STUDY_DATE,
        "1.2.3.4.5",
    ):
        assert secret not in written, secret
    why = {Path(f).name: r for f, r in pd.read_csv(out.with_name("dicom.skipped.csv")).values}
    assert "modality CT (computed tomography) is not ultrasound" in why["ct.dcm"]
    assert "no pixel data" in why["nopix.dcm"]
    assert "not a DICOM file" in why["report.txt"]


def test_dicom_keys_follow_the_salt(dicom_folder, tmp_path, monkeypatch):
    a = import_dataset("dicom", dicom_folder, tmp_path / "a.csv", label="benign", salt="s1")
    b = import_dataset("dicom", dicom_folder, tmp_path / "b.csv", label="benign", salt="s1")
    c = import_dataset("dicom", dicom_folder, tmp_path / "c.csv", label="benign", salt="s2")
    assert list(a.manifest.df["image_id"]) == list(b.manifest.df["image_id"])
    assert list(a.manifest.df["patient_id"]) != list(c.manifest.df["patient_id"])
    assert not (tmp_path / "a.salt").exists()  # an explicit salt writes no file
    monkeypatch.setenv(imp.SALT_ENV, "s1")
    e = import_dataset("dicom", dicom_folder, tmp_path / "e.csv", label="benign")
    assert list(e.manifest.df["patient_id"]) == list(a.manifest.df["patient_id"])
    monkeypatch.delenv(imp.SALT_ENV)
    f1 = import_dataset("dicom", dicom_folder, tmp_path / "f.csv", label="benign")
    f2 = import_dataset("dicom", dicom_folder, tmp_path / "f.csv", label="benign")
    assert list(f1.manifest.df["image_id"]) == list(f2.manifest.df["image_id"])  # salt file reused
    with pytest.raises(ConfigError, match="needs --label"):
        import_dataset("dicom", dicom_folder, tmp_path / "g.csv")


# ---------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def busi_import(busi_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("busi") / "busi.csv"
    return import_dataset("busi", busi_dir, out, progress=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_busi_import(busi_import):
    rep = busi_import
    print(f"BUSI import: {rep.summary()}")
    assert rep.n_kept == 780 and rep.n_skipped == 0
    assert rep.label_counts() == {"benign": 437, "malignant": 210, "normal": 133}
    n_masks = rep.manifest.df["mask_path"].str.count(";") + 1
    assert int((n_masks > 1).sum()) == 17  # 16 images with 2 masks, 1 with 3
    assert int(n_masks.max()) == 3
    assert rep.manifest.df["image_id"].is_unique
    assert int(rep.manifest.df["has_colour"].sum()) == 14


@pytest.fixture(scope="module")
def breast_import(breast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("breast") / "breast.csv"
    rep = import_dataset("breast-lesions-usg", breast_dir, out, progress=False)
    return rep, out


@pytest.mark.realdata
@pytest.mark.slow
def test_real_breast_import(breast_import, breast_dir):
    rep, out = breast_import
    print(f"BrEaST import: {rep.summary()}")
    assert rep.n_kept == 256 and rep.n_skipped == 0
    assert rep.label_counts() == {"benign": 154, "malignant": 98, "normal": 4}
    clinical = pd.read_csv(next(breast_dir.glob("*clinical-data*.csv")), dtype=str)
    df = Manifest.load(out).df
    age_known = int((clinical["Age"].str.strip().str.lower() != "not available").sum())
    assert int(df["age"].notna().sum()) == age_known == 214
    assert int(df["birads"].notna().sum()) == int(clinical["BIRADS"].notna().sum()) == 256
    assert set(df["birads"]) == {"1", "2", "3", "4a", "4b", "4c", "5"}
    assert int((df["mask_path"] != "").sum()) == int(clinical["Mask_tumor_filename"].notna().sum())
    n_other = df["other_mask_path"].fillna("").str.len().gt(0).sum()
    assert n_other == int(clinical["Mask_other_filename"].notna().sum()) == 7
    assert not df["has_colour"].any()  # the blue-tinted gray map is not colour


def test_dicom_malformed_header_values_never_reach_logs_or_warnings(tmp_path, caplog):
    d = tmp_path / "dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the bad values while writing
        write_dicom(
            d / "x.dcm",
            gradient(),
            extra={
                "PatientBirthDate": f"{PHI_BIRTH} Kowalska",  # invalid DA quoting PHI
                "StudyDate": f"bad{PHI_STUDY_DATE}",
                "PatientAge": "057Y",
            },
        )
        write_dicom(d / "old.dcm", gradient(), extra={"PatientAge": "097Y"})
    caplog.clear()  # writing the bad values above was logged by pydicom itself
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = import_dataset("dicom", d, tmp_path / "m.csv", label="benign", salt="k")
        # reading the images again (as training would) stays quiet too
        for i in range(len(rep.manifest)):
            read_image(rep.manifest.image_path(i))
    assert rep.n_kept == 2
    names = rep.manifest.df["image_path"].map(lambda s: Path(s).name)
    ages = dict(zip(names, rep.manifest.df["age"], strict=True))
    assert ages == {"x.dcm": 57, "old.dcm": 90}  # 90 and above recorded as 90
    seen = caplog.text + " ".join(str(w.message) for w in caught) + (tmp_path / "m.csv").read_text()
    for secret in (PHI_BIRTH, PHI_STUDY_DATE, "Kowalska", PHI_ID):
        assert secret not in seen, secret


def test_quiet_dicom_silences_pydicom_value_reports(caplog):
    from pydicom.dataset import Dataset

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_dicom():
            Dataset().PatientBirthDate = "bad Kowalska"  # pydicom validates and quotes it
    assert "Kowalska" not in caplog.text and not caught
    with warnings.catch_warnings(record=True) as caught:  # the control: pydicom does quote it
        warnings.simplefilter("always")
        Dataset().PatientBirthDate = "bad Kowalska"
    assert "Kowalska" in caplog.text + " ".join(str(w.message) for w in caught)
