"""OpenCV stand-ins for scipy.ndimage in the inference path: same labels, same filled holes.

``buscad predict`` must not import ``scipy.ndimage`` (about 0.3 s of every call on the
2-core machine); these helpers replace ``ndimage.label`` (8-connectivity) and
``ndimage.binary_fill_holes`` and must give identical arrays.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from buscad.segment.base import components, fill_holes


def _masks(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        m = rng.random((h, w)) < rng.uniform(0.1, 0.8)
        yield ndimage.binary_dilation(m) if i % 3 == 0 else m


@pytest.mark.parametrize("seed", [0, 1])
def test_components_number_as_scipy_label(seed: int) -> None:
    for m in _masks(seed, 300):
        lab, n = components(m)
        ref, n_ref = ndimage.label(m, structure=np.ones((3, 3), bool))
        assert n == n_ref
        np.testing.assert_array_equal(lab, ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_fill_holes_equals_scipy(seed: int) -> None:
    for m in _masks(seed, 300):
        np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


def test_ring_is_filled_and_diagonal_gap_is_not_a_way_out() -> None:
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert fill_holes(ring)[1:6, 1:6].all()
    # a hole whose only exit is a diagonal step is still a hole (4-connected background)
    m = np.ones((5, 5), bool)
    m[2, 2] = False
    m[1, 1] = False
    m[0, 0] = False
    filled = fill_holes(m)
    assert not filled[0, 0] and filled[1, 1] and filled[2, 2]
    assert not fill_holes(np.zeros((4, 4), bool)).any()


def test_segmenter_inference_does_not_import_scipy_ndimage() -> None:
    code = (
        "import sys, buscad.segment.infer, buscad.segment.detector, buscad.segment.morphology;"
        "print('scipy.ndimage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
