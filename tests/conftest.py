"""Shared fixtures: synthetic phantom cohorts and the optional real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from buscad.data.manifest import Manifest
from buscad.data.phantom import generate_cohort

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUSI_DIR = SHARED_DATA / "BUSI" / "Dataset_BUSI_with_GT"
BREAST_DIR = SHARED_DATA / "BrEaST-Lesions_USG"


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """40 clean phantoms (two cohorts, ~40% malignant, some second views). Read-only."""
    out = tmp_path_factory.mktemp("phantoms")
    return generate_cohort(40, out, seed=7, cohorts=("site_a", "site_b"))


@pytest.fixture(scope="session")
def messy_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """60 phantoms with planted near-duplicates (some relabelled), calipers, text and colour boxes."""
    out = tmp_path_factory.mktemp("messy")
    return generate_cohort(
        60,
        out,
        seed=11,
        duplicate_fraction=0.25,
        conflict_fraction=0.3,
        annotation_fraction=0.25,
        colour_fraction=0.15,
    )


@pytest.fixture(scope="session")
def busi_dir() -> Path:
    """The BUSI folder in ../shared/data; skips the test when it is absent."""
    if not BUSI_DIR.is_dir():
        pytest.skip(
            f"real data not available: {BUSI_DIR} is absent (tests on BUSI need ../shared/data)"
        )
    return BUSI_DIR


@pytest.fixture(scope="session")
def breast_dir() -> Path:
    """The BrEaST-Lesions_USG folder in ../shared/data; skips the test when it is absent."""
    if not BREAST_DIR.is_dir():
        pytest.skip(
            f"real data not available: {BREAST_DIR} is absent (tests on BrEaST need ../shared/data)"
        )
    return BREAST_DIR
