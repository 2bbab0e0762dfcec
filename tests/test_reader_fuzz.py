"""Fuzz: 2,000 seeded malformed files through every reader; only buscad's typed errors escape.

The generators live in ``benchmarks/malformed.py`` (shared with ``benchmarks/fuzz.py``
and the web fuzz campaign); the larger campaign with time and memory figures is
``benchmarks/fuzz.py``.
"""

from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from buscad.data.io import (
    DecodeBudget,
    image_size,
    read_image,
    read_mask,
)
from buscad.errors import DecodeBudgetError, ImageReadError, InputFileError, MaskError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from malformed import malformed_inputs, reader_calls, seed_files

N_INPUTS = 2000

# an unclosed file anywhere in these tests is an error, not a warning
pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")


def run_readers(path: Path) -> list[str]:
    """Every reader on one file; returns the outcome of each (``ok`` or the error class)."""
    out = []
    calls = reader_calls(path)
    for name, call in calls:
        try:
            call()
            out.append(f"{name}:ok")
        except InputFileError as exc:
            assert "\n" not in str(exc)
            assert str(exc).startswith(exc.path + ": ")
            expected = MaskError if name in ("mask", "labelme") else ImageReadError
            assert isinstance(exc, expected), (name, type(exc), str(exc))
            out.append(f"{name}:{type(exc).__name__}")
    return out


def test_seeds_are_valid_and_read(tmp_path):
    (tmp_path / "img.png").write_bytes(seed_files()[0][2])
    for i, (kind, suffix, data) in enumerate(seed_files()):
        f = tmp_path / f"seed{i}{suffix}"
        f.write_bytes(data)
        res = run_readers(f)
        if kind in ("png", "jpeg", "bmp", "tiff", "gif", "dicom"):
            ok = "image:ok" in res or (kind == "tiff" and "multi-frame" in _err(f))
            assert ok, (kind, res, _err(f))
        if kind in ("json", "nifti"):
            assert "mask:ok" in res, (kind, res)


def _err(f: Path) -> str:
    try:
        read_image(f)
    except ImageReadError as exc:
        return str(exc)
    return ""


def test_fuzz_only_typed_errors_escape(tmp_path):
    counts: dict[str, int] = {}
    n = 0
    unclosed: list[str] = []
    batch: list[str] = []
    start = 0  # first warning of the batch
    with warnings.catch_warnings(record=True) as caught:
        # an unclosed file warns when it is collected: collect every 100 inputs (a full
        # collection per input would double the test's time) and name the batch that leaked
        warnings.simplefilter("always", ResourceWarning)
        for i, (label, suffix, data) in enumerate(malformed_inputs(N_INPUTS, seed=1234)):
            f = tmp_path / f"in{i % 50}{suffix}"
            f.write_bytes(data)
            try:
                outcomes = run_readers(f)
            except Exception as exc:  # an untyped exception (or a bad message) fails the test
                raise AssertionError(f"input #{i} ({label}): {type(exc).__name__}: {exc}") from exc
            batch.append(f"#{i} {label}")
            if len(batch) == 100 or i == N_INPUTS - 1:
                gc.collect()
                leaks = [w for w in caught[start:] if issubclass(w.category, ResourceWarning)]
                unclosed += [f"{w.message} (one of {batch[0]}..{batch[-1]})" for w in leaks]
                batch, start = [], len(caught)
            for outcome in outcomes:
                counts[outcome] = counts.get(outcome, 0) + 1
            n += 1
    assert n == N_INPUTS
    assert unclosed == [], f"{len(unclosed)} files left open, e.g. {unclosed[:3]}"
    # the corpus reaches both outcomes of the main readers
    assert counts.get("image:ok", 0) > 50 and counts.get("image:ImageReadError", 0) > 500
    assert counts.get("mask:ok", 0) > 50 and counts.get("mask:MaskError", 0) > 500


def test_budget_is_configurable(tmp_path):
    f = tmp_path / "g.png"
    f.write_bytes(seed_files()[0][2])  # 64 x 48 gray
    read_image(f)
    with pytest.raises(DecodeBudgetError, match="above the 1000 pixel limit"):
        read_image(f, budget=DecodeBudget(max_pixels=1000))
    with pytest.raises(DecodeBudgetError, match="decode to 3072 bytes, above the 3000 bytes"):
        read_image(f, budget=DecodeBudget(max_bytes=3000))
    from buscad.data.io import reader_settings

    with reader_settings(budget=DecodeBudget(max_pixels=10)):
        with pytest.raises(DecodeBudgetError):
            image_size(f)
        with pytest.raises(MaskError, match="pixel limit"):
            read_mask(f)
    assert image_size(f) == (48, 64)
    assert np.asarray(read_mask(f)).shape == (48, 64)
