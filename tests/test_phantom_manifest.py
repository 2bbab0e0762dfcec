"""Phantom generator and manifest contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from buscad.data.io import read_image, read_mask
from buscad.data.manifest import Manifest, normalize_birads, normalize_label
from buscad.data.phantom import generate_cohort
from buscad.errors import ManifestError


def test_phantom_cohort_is_deterministic(tmp_path):
    a = generate_cohort(6, tmp_path / "a", seed=3)
    b = generate_cohort(6, tmp_path / "b", seed=3)
    for i in range(len(a)):
        ia, _ = read_image(a.image_path(i))
        ib, _ = read_image(b.image_path(i))
        np.testing.assert_array_equal(ia, ib)
    pd.testing.assert_frame_equal(a.df, b.df)


def test_phantom_masks_fit_and_classes_differ(phantom_cohort):
    man = phantom_cohort
    assert len(man) == 40
    assert set(man.df["label"]) == {"benign", "malignant"}
    assert man.validate() == []
    for i in range(len(man)):
        img, meta = read_image(man.image_path(i))
        m = read_mask(man.mask_paths(i), shape=img.shape)
        assert m.any()
        assert meta.bit_depth == 8 and not meta.has_colour
    age = man.df.groupby("label")["age"].mean()
    assert age["malignant"] > age["benign"] + 5


def test_planted_problems_are_recorded(messy_phantoms):
    df = messy_phantoms.df
    dups = df[df["phantom_source"].fillna("") != ""]
    assert len(dups) == 15
    assert (
        dups["patient_id"]
        != df.set_index("image_id").loc[dups["phantom_source"], "patient_id"].to_numpy()
    ).all()
    coloured = df[df["has_colour_box"]]
    assert len(coloured) > 0
    for iid in coloured["image_id"]:
        i = int(np.flatnonzero(df["image_id"] == iid)[0])
        _, meta = read_image(messy_phantoms.image_path(i))
        assert meta.has_colour


def test_manifest_roundtrip_rebases_paths(phantom_cohort, tmp_path):
    out = tmp_path / "elsewhere" / "m.parquet"
    phantom_cohort.save(out)
    back = Manifest.load(out)
    assert back.image_path(0).resolve() == phantom_cohort.image_path(0).resolve()
    assert back.mask_paths(0)[0].resolve() == phantom_cohort.mask_paths(0)[0].resolve()
    assert list(back.df["image_id"]) == list(phantom_cohort.df["image_id"])


def test_manifest_keeps_extra_columns_and_defaults_patient(tmp_path):
    df = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "image_path": ["a.png", "b.png"],
            "label": ["Benign", "MALIGNANT"],
            "my_score": [1.5, 2.5],
        }
    )
    df.to_csv(tmp_path / "m.csv", index=False)
    m = Manifest.load(tmp_path / "m.csv")
    assert list(m.df["label"]) == ["benign", "malignant"]
    assert list(m.df["patient_id"]) == ["a", "b"]
    assert list(m.df["my_score"]) == [1.5, 2.5]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ({"image_id": ["a"], "image_path": ["a.png"]}, "missing required column.*label"),
        ({"image_id": ["a"], "image_path": ["a.png"], "label": ["cyst"]}, "unknown label 'cyst'"),
        (
            {
                "image_id": ["a", "a"],
                "image_path": ["a.png", "b.png"],
                "label": ["benign", "benign"],
            },
            "duplicate image_id 'a'",
        ),
        (
            {"image_id": ["a"], "image_path": ["a.png"], "label": ["benign"], "birads": ["7"]},
            "not a BI-RADS category",
        ),
    ],
)
def test_manifest_schema_errors_name_the_file(tmp_path, rows, match):
    p = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    with pytest.raises(ManifestError, match=match) as ei:
        Manifest.load(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_manifest_file_checks(phantom_cohort, tmp_path):
    df = phantom_cohort.df.head(3).copy()
    df["image_path"] = [str(phantom_cohort.image_path(i)) for i in range(3)]
    df["mask_path"] = [str(phantom_cohort.mask_paths(i)[0]) for i in range(3)]
    df.loc[0, "image_path"] = str(tmp_path / "gone.png")
    df.loc[1, "mask_path"] = str(phantom_cohort.mask_paths(2)[0]).replace("_mask", "_nomask")
    m = Manifest(df, root=tmp_path, source=tmp_path / "m.csv")
    problems = m.validate()
    assert [p.column for p in problems] == ["image_path", "mask_path"]
    assert "file not found" in problems[0].message
    with pytest.raises(ManifestError, match=r"gone.png: file not found \(and 1 more\)"):
        m.check()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("4A", "4a"),
        ("BI-RADS 4b", "4b"),
        (4.0, "4"),
        (" 5 ", "5"),
        ("not available", None),
        (float("nan"), None),
    ],
)
def test_normalize_birads(raw, expected):
    assert normalize_birads(raw) == expected


def test_normalize_birads_rejects():
    with pytest.raises(ValueError, match="only 4 has subcategories"):
        normalize_birads("3a")


def test_normalize_label():
    assert normalize_label(" Malignant ") == "malignant"
    assert normalize_label(1) == "malignant"
    assert normalize_label("cyst") is None
