"""Radiomics extraction: params, golden values, cache, failures, perturbations, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from buscad.data.manifest import Manifest
from buscad.data.phantom import generate_cohort
from buscad.errors import ConfigError
from buscad.radiomics.estimator import RadiomicsExtractor
from buscad.radiomics.extract import (
    DEFAULT_PARAMS,
    extract_arrays,
    extract_features,
    load_params,
    perturb_mask,
    settings_hash,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """8 phantom lesions (no normals)."""
    return generate_cohort(8, tmp_path_factory.mktemp("rad_ph"), seed=5, normal_fraction=0.0)


# ------------------------------------------------------------------------ params


def test_default_params_equal_the_documented_yaml() -> None:
    assert load_params(REPO / "configs" / "radiomics.yaml") == load_params(None)
    assert load_params(None) == DEFAULT_PARAMS
    assert "shape2D" in DEFAULT_PARAMS["featureClass"]
    assert DEFAULT_PARAMS["setting"]["force2D"] is True


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("featureClass:\n  shape: []\n", r"featureClass\.shape: .*use shape2D"),
        ("imageType:\n  Fancy: {}\n", r"imageType\.Fancy: unknown image type"),
        ("buscad:\n  perturbations: ['shrink:2']\n", r"buscad\.perturbations: 'shrink:2'"),
        ("setting:\n  force2D: false\n", r"setting\.force2D: must be true"),
        ("colour: 1\n", r"unknown section\(s\) colour"),
        ("setting: [\n", r"not valid YAML"),
    ],
)
def test_bad_params_name_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_params(p)
    assert str(p) in str(info.value)


def test_settings_hash_changes_with_pyradiomics_settings_only() -> None:
    a = load_params(None)
    b = load_params(None)
    b["buscad"]["perturbations"] = ["erode:3"]
    c = load_params(None)
    c["setting"]["binWidth"] = 16
    assert settings_hash(a) == settings_hash(b)
    assert settings_hash(a) != settings_hash(c)


# ------------------------------------------------------------------------ masks


def test_perturb_mask_uses_a_disc_of_the_given_radius() -> None:
    m = np.zeros((41, 41), bool)
    m[10:31, 10:31] = True  # 21 x 21 square
    er = perturb_mask(m, "erode:2")
    assert er.sum() == 17 * 17 and er[12:29, 12:29].all()
    dl = perturb_mask(m, "dilate:2")
    # square grown by 2 on each side, minus the corners a radius-2 disc cannot reach
    assert dl[8:33, 10:31].all() and dl[10:31, 8:33].all()
    assert not dl[8, 8] and dl.sum() == 25 * 25 - 4 * 3
    assert (perturb_mask(m, "erode:0") == m).all()
    with pytest.raises(ValueError, match="not a mask perturbation"):
        perturb_mask(m, "open:2")


# ------------------------------------------------------------------------ independent references
#
# Values checked against what is known without running pyradiomics: closed forms of
# the shape features of simple digital masks (marching squares on a pixel grid, the
# pixel-coordinate covariance) and the first-order features recomputed with NumPy from
# pyradiomics' published definitions (https://pyradiomics.readthedocs.io/en/latest/
# features.html, voxelArrayShift 0, binWidth 8, one pixel = 1 unit²).

_H = _W = 120
_YY, _XX = np.mgrid[:_H, :_W]


def _shape(mask: np.ndarray) -> dict[str, float]:
    f = extract_arrays(np.full(mask.shape, 100, np.uint8), mask, load_params(None))
    return {k.removeprefix("original_shape2D_"): v for k, v in f.items() if "shape2D" in k}


def _cov_eigen(mask: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the population covariance of the ROI pixel coordinates."""
    pts = np.argwhere(mask).astype(float)
    return np.linalg.eigvalsh(np.cov(pts.T, ddof=0))


@pytest.mark.parametrize(("n", "top", "left"), [(40, 30, 20), (17, 5, 60)])
def test_shape_of_a_square_matches_its_closed_form(n: int, top: int, left: int) -> None:
    m = np.zeros((_H, _W), bool)
    m[top : top + n, left : left + n] = True
    f = _shape(m)
    # n² pixels; the marching-squares contour runs half a pixel outside the pixel
    # centres with the four corners cut by a diagonal of legs 1/2
    assert f["PixelSurface"] == n * n
    assert f["MeshSurface"] == pytest.approx(n * n - 4 * 0.125, abs=1e-9)
    assert f["Perimeter"] == pytest.approx(4 * (n - 1) + 4 * np.sqrt(0.5), abs=1e-9)
    # coordinates uniform on 0..n-1 in both axes: variance (n² - 1)/12, axis length 4 sqrt(var)
    assert f["Elongation"] == pytest.approx(1.0, abs=1e-12)
    assert f["MajorAxisLength"] == pytest.approx(4 * np.sqrt((n * n - 1) / 12), rel=1e-12)
    # Sphericity = 2 sqrt(pi A) / P
    area, perim = n * n - 0.5, 4 * (n - 1) + 4 * np.sqrt(0.5)
    assert f["Sphericity"] == pytest.approx(2 * np.sqrt(np.pi * area) / perim, rel=1e-12)


def test_shape_of_a_rectangle_gives_its_exact_elongation() -> None:
    m = np.zeros((_H, _W), bool)
    m[30:50, 10:90] = True  # 20 x 80 pixels
    f = _shape(m)
    assert f["PixelSurface"] == 1600
    assert f["Perimeter"] == pytest.approx(2 * (19 + 79) + 4 * np.sqrt(0.5), abs=1e-9)
    assert f["Elongation"] == pytest.approx(np.sqrt((20**2 - 1) / (80**2 - 1)), rel=1e-12)
    assert f["MinorAxisLength"] == pytest.approx(4 * np.sqrt((20**2 - 1) / 12), rel=1e-12)


def test_shape_of_a_disc_and_an_ellipse_approach_the_continuous_values() -> None:
    r = 40
    disc = np.hypot(_YY - 60, _XX - 60) <= r
    f = _shape(disc)
    assert f["PixelSurface"] == int(disc.sum())
    assert f["PixelSurface"] == pytest.approx(np.pi * r * r, rel=5e-3)
    assert f["MeshSurface"] == pytest.approx(np.pi * r * r, rel=5e-3)
    # a staircase boundary is longer than the circle, by less than 7 % with marching squares
    assert 2 * np.pi * r < f["Perimeter"] < 1.07 * 2 * np.pi * r
    assert f["MaximumDiameter"] == pytest.approx(2 * r + 1)  # vertices at ±(r + 1/2)
    assert f["Elongation"] == pytest.approx(1.0, abs=1e-9)
    assert f["MajorAxisLength"] == pytest.approx(2 * r, rel=1e-3)  # 4 sqrt(r²/4)
    a, b = 50, 25
    ell = ((_YY - 60) / b) ** 2 + ((_XX - 60) / a) ** 2 <= 1
    f = _shape(ell)
    lam = _cov_eigen(ell)
    assert f["Elongation"] == pytest.approx(np.sqrt(lam[0] / lam[1]), rel=1e-9)
    assert f["MajorAxisLength"] == pytest.approx(4 * np.sqrt(lam[1]), rel=1e-9)
    assert f["Elongation"] == pytest.approx(b / a, rel=5e-3)
    assert f["PixelSurface"] == pytest.approx(np.pi * a * b, rel=5e-3)
    assert f["MaximumDiameter"] == pytest.approx(2 * a + 1)


def test_first_order_features_match_their_published_formulas() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (_H, _W)).astype(np.uint8)
    m = np.zeros((_H, _W), bool)
    m[30:70, 20:60] = True
    m[75:90, 70:110] = True  # two parts: the ROI need not be one blob
    f = extract_arrays(img, m, load_params(None))
    fo = {k.removeprefix("original_firstorder_"): v for k, v in f.items() if "firstorder" in k}
    x = img[m].astype(float)
    n, mu = x.size, x.mean()
    dev = x - mu
    m2 = np.mean(dev**2)
    # grey levels binned with a fixed width of 8 (edges at multiples of 8)
    _, counts = np.unique(np.floor(x / 8), return_counts=True)
    p = counts / n
    expected = {
        "Mean": mu,
        "Minimum": x.min(),
        "Maximum": x.max(),
        "Range": np.ptp(x),
        "Median": np.median(x),
        "10Percentile": np.percentile(x, 10),
        "90Percentile": np.percentile(x, 90),
        "InterquartileRange": np.percentile(x, 75) - np.percentile(x, 25),
        "Energy": np.sum(x**2),
        "TotalEnergy": np.sum(x**2),  # x pixel area 1
        "RootMeanSquared": np.sqrt(np.mean(x**2)),
        "Variance": m2,  # population variance
        "MeanAbsoluteDeviation": np.mean(np.abs(dev)),
        "Skewness": np.mean(dev**3) / m2**1.5,
        "Kurtosis": np.mean(dev**4) / m2**2,
        "Entropy": -np.sum(p * np.log2(p)),
        "Uniformity": np.sum(p**2),
    }
    for name, value in expected.items():
        assert fo[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_a_phantom_gives_finite_features_of_every_class(tmp_path: Path) -> None:
    """The full default set on a phantom: 102 features x 3 masks, finite, and the
    pixel counts of the original and perturbed masks are what the masks hold."""
    from buscad.data.io import read_image, read_mask

    man = generate_cohort(2, tmp_path, seed=2024, normal_fraction=0.0)
    res = extract_features(man.subset([0]), cache_dir=False)
    assert res.failures == []
    row = res.features.iloc[0]
    # 102 original-mask features (shape2D 10, firstorder 18, glcm 24, glrlm 16,
    # glszm 16, gldm 14, ngtdm 5) x 3 masks
    assert res.features.shape == (1, 306)
    assert np.isfinite(row.to_numpy(float)).all()
    gray, _ = read_image(man.image_path(0))
    mask = read_mask(man.mask_paths(0), gray.shape)
    assert row["original_shape2D_PixelSurface"] == mask.sum()
    assert row["original_shape2D_PixelSurface@dilate2"] == perturb_mask(mask, "dilate:2").sum()
    assert row["original_firstorder_Mean"] == pytest.approx(gray[mask].mean(), rel=1e-9)
    eroded = perturb_mask(mask, "erode:2")
    assert row["original_firstorder_Mean@erode2"] == pytest.approx(gray[eroded].mean(), rel=1e-9)


# ------------------------------------------------------------------------ cache + failures


def test_second_run_reads_everything_from_the_cache(
    small_cohort: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import buscad.radiomics.extract as rad

    cache = tmp_path / "cache"
    first = extract_features(small_cohort, cache_dir=cache)
    assert first.n_computed == 24 and first.n_cached == 0

    def no_pyradiomics(*args: object, **kwargs: object) -> dict[str, float]:
        raise AssertionError("pyradiomics ran although every row is cached")

    with monkeypatch.context() as mp:
        mp.setattr(rad, "extract_arrays", no_pyradiomics)
        second = extract_features(small_cohort, cache_dir=cache, n_jobs=1)
    assert second.n_computed == 0 and second.n_cached == 24
    pd.testing.assert_frame_equal(first.features, second.features)
    # one small JSON file per (image hash, mask hash, settings hash) ...
    files = list(cache.rglob("*.json"))
    assert len([f for f in files if f.parent.name != "files"]) == 24
    # ... plus one index entry per image (file bytes -> row)
    assert len([f for f in files if f.parent.name == "files"]) == 8
    # the per-array cache alone (index removed) still avoids recomputation
    for f in files:
        if f.parent.name == "files":
            f.unlink()
    third = extract_features(small_cohort, cache_dir=cache)
    assert third.n_computed == 0
    pd.testing.assert_frame_equal(first.features, third.features)


def test_env_var_sets_the_cache_folder(
    small_cohort: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUSCAD_CACHE", str(tmp_path / "envcache"))
    extract_features(small_cohort.subset([0]))
    assert len(list((tmp_path / "envcache" / "radiomics").rglob("*.json"))) == 3 + 1


def test_a_failing_image_is_reported_and_skipped(small_cohort: Manifest, tmp_path: Path) -> None:
    df = small_cohort.df.iloc[:3].copy()
    bad_img = tmp_path / "broken.png"
    bad_img.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    empty_mask = tmp_path / "empty_mask.png"
    from PIL import Image

    Image.fromarray(np.zeros((224, 256), np.uint8)).save(empty_mask)
    df["image_path"] = [str(small_cohort.image_path(i)) for i in range(3)]
    df["mask_path"] = [str(small_cohort.mask_paths(i)[0]) for i in range(3)]
    df.loc[df.index[0], "image_path"] = str(bad_img)
    df.loc[df.index[1], "mask_path"] = str(empty_mask)
    man = Manifest(df, root=tmp_path)
    res = extract_features(man, cache_dir=False)
    assert list(res.features.index) == [df["image_id"].iat[2]]
    assert len(res.failures) == 2
    assert any("broken.png" in f for f in res.failures)
    assert any("0 pixel(s), fewer than minimumROISize" in f for f in res.failures)
    # the transformer keeps rows aligned: failures are all-NaN rows
    with pytest.warns(UserWarning, match="radiomics: skipped"):
        out = RadiomicsExtractor(cache_dir=False).fit(man).transform(man)
    assert out.shape[0] == 3 and out.iloc[:2].isna().all().all() and out.iloc[2].notna().all()


def test_parallel_extraction_matches_serial(small_cohort: Manifest, tmp_path: Path) -> None:
    sub = small_cohort.subset([0, 1, 2, 3])
    serial = extract_features(sub, cache_dir=tmp_path / "a", n_jobs=1)
    parallel = extract_features(sub, cache_dir=tmp_path / "b", n_jobs=2, progress=True)
    assert parallel.n_computed == 12
    pd.testing.assert_frame_equal(serial.features, parallel.features)


def test_cli_extract_writes_parquet(small_cohort: Manifest, tmp_path: Path) -> None:
    from buscad.cli import app

    out = tmp_path / "feats.parquet"
    runner = CliRunner()
    args = ["radiomics", "extract", str(small_cohort.source), "-o", str(out)]
    args += ["--params", str(REPO / "configs" / "radiomics.yaml")]
    args += ["--cache-dir", str(tmp_path / "c")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "8 image(s) x 306 column(s)" in res.output
    table = pd.read_parquet(out)
    assert list(table["image_id"]) == list(small_cohort.df["image_id"])
    assert "original_glcm_Contrast@erode2" in table.columns


@pytest.mark.realdata
def test_real_busi_images_with_several_masks_extract(busi_dir: Path, tmp_path: Path) -> None:
    """BUSI images whose lesion has two mask files: the union is extracted, no failure."""
    rows = []
    for stem in ("benign (100)", "benign (163)"):
        img = busi_dir / "benign" / f"{stem}.png"
        masks = [
            busi_dir / "benign" / f"{stem}_mask.png",
            busi_dir / "benign" / f"{stem}_mask_1.png",
        ]
        if img.is_file() and all(m.is_file() for m in masks):
            rows.append(
                {
                    "image_id": stem,
                    "image_path": str(img),
                    "label": "benign",
                    "mask_path": ";".join(map(str, masks)),
                }
            )
    if not rows:
        pytest.skip("BUSI benign (100)/(163) with two mask files not found")
    man = Manifest(pd.DataFrame(rows[:2]), root=tmp_path)
    res = extract_features(man, cache_dir=False)
    assert res.failures == [] and len(res.features) == len(rows[:2])
    from buscad.data.io import read_image, read_mask

    gray, _ = read_image(man.image_path(0))
    union = read_mask(man.mask_paths(0), gray.shape)
    assert res.features["original_shape2D_PixelSurface"].iloc[0] == union.sum()


def test_restricted_params_compute_only_the_named_features_with_the_same_values(
    tmp_path: Path,
) -> None:
    from buscad.data.io import read_image, read_mask
    from buscad.radiomics.extract import extract_arrays, restrict_params

    man = generate_cohort(2, tmp_path, seed=3)
    gray, _ = read_image(man.image_path(0))
    mask = read_mask(man.mask_paths(0), gray.shape)
    params = load_params(None)
    full = extract_arrays(gray, mask, params)
    cols = ["original_glcm_Contrast", "original_shape2D_Perimeter", "original_firstorder_Mean"]
    some = extract_arrays(gray, mask, restrict_params(params, cols))
    assert sorted(some) == sorted(cols)
    assert all(some[c] == pytest.approx(full[c], rel=1e-12) for c in cols)
    with pytest.raises(ValueError, match="'wavelet-LH_glcm_Contrast' is not a feature"):
        restrict_params(params, ["wavelet-LH_glcm_Contrast"])
