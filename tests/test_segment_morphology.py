"""BI-RADS-aligned descriptors from analytic masks, and their agreement statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from buscad.errors import MaskError
from buscad.segment.morphology import (
    agreement,
    describe,
    kappa_ci,
    reference_category,
)

YY, XX = np.mgrid[0:200, 0:200]


def ellipse(a: float, b: float, angle: float = 0.0) -> np.ndarray:
    """Filled ellipse, horizontal semi-axis ``a``, vertical ``b``, rotated by ``angle`` rad."""
    dx, dy = XX - 100.0, YY - 100.0
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    return (u / a) ** 2 + (v / b) ** 2 < 1


def star(points: int = 7, r0: float = 40, amp: float = 25) -> np.ndarray:
    th = np.arctan2(YY - 100, XX - 100)
    return np.hypot(YY - 100, XX - 100) < r0 + amp * np.cos(points * th)


def test_circle_is_round_circumscribed_parallel() -> None:
    m = describe(ellipse(50, 50))
    assert (m.shape, m.margin, m.orientation) == ("round", "circumscribed", "parallel")
    assert m.solidity > 0.98 and m.ellipse_misfit < 0.02
    assert m.axis_ratio == pytest.approx(1.0, abs=0.03)


def test_wide_ellipse_is_oval_parallel() -> None:
    m = describe(ellipse(60, 30))
    assert (m.shape, m.margin, m.orientation) == ("oval", "circumscribed", "parallel")
    assert m.axis_ratio == pytest.approx(2.0, rel=0.05)
    assert m.depth_width_ratio == pytest.approx(0.5, rel=0.05)


def test_tall_ellipse_is_not_parallel() -> None:
    m = describe(ellipse(30, 65, angle=0.2))
    assert m.orientation == "not parallel"
    assert m.shape == "oval" and m.depth_width_ratio > 1.5


def test_star_is_irregular_not_circumscribed() -> None:
    m = describe(star())
    assert (m.shape, m.margin) == ("irregular", "not circumscribed")
    assert m.solidity < 0.7 and m.convexity_depth > 0.3


def test_mildly_lobulated_outline_is_not_circumscribed() -> None:
    m = describe(star(points=5, r0=45, amp=6))
    assert m.margin == "not circumscribed"


def test_sizes_in_mm_and_largest_component() -> None:
    mask = ellipse(40, 20)
    mask[5:8, 5:8] = True  # speck: ignored
    m = describe(mask, spacing_mm=0.1)
    assert m.width_mm == pytest.approx(8.0, abs=0.15)
    assert m.depth_mm == pytest.approx(4.0, abs=0.15)
    assert m.area_mm2 == pytest.approx(np.pi * 4 * 2, rel=0.03)
    assert describe(mask).width_mm is None


def test_empty_mask_is_a_mask_error() -> None:
    with pytest.raises(MaskError, match="too small to describe"):
        describe(np.zeros((20, 20), bool))


def test_reference_categories_of_breast_cells() -> None:
    assert reference_category("margin", "not circumscribed - angular&indistinct") == (
        "not circumscribed"
    )
    assert reference_category("margin", "circumscribed") == "circumscribed"
    assert reference_category("margin", "spiculated") == "not circumscribed"
    assert reference_category("shape", "Oval") == "oval"
    assert reference_category("shape", "not applicable") is None
    assert reference_category("orientation", "not parallel") == "not parallel"


def test_kappa_values_and_ci() -> None:
    a = np.array(["x", "y"] * 50)
    k, lo, hi = kappa_ci(a, a, n_boot=200)
    assert k == 1.0 and lo == 1.0 and hi == 1.0
    rng = np.random.default_rng(0)
    b = np.where(rng.random(100) < 0.2, np.where(a == "x", "y", "x"), a)  # 20 % flipped
    k, lo, hi = kappa_ci(a, b, n_boot=500)
    po = np.mean(a == b)
    assert k == pytest.approx((po - 0.5) / 0.5, abs=0.03)  # balanced marginals: p_e ~ 0.5
    assert lo < k < hi


def test_agreement_joins_and_maps_reference() -> None:
    pred = pd.DataFrame(
        {"shape": ["oval", "irregular", "round", "oval"], "margin": ["circumscribed"] * 4},
        index=["a", "b", "c", "d"],
    )
    ref = pd.DataFrame(
        {
            "shape": ["oval", "irregular", "round", "not applicable"],
            "margin": ["circumscribed", "not circumscribed - angular", "circumscribed", "x"],
        },
        index=["a", "b", "c", "d"],
    )
    out = agreement(pred, ref, n_boot=100)
    assert out["shape"]["n"] == 3 and out["shape"]["kappa"] == 1.0
    assert out["shape_irregular"]["kappa"] == 1.0
    assert out["margin"]["n"] == 3 and out["margin"]["accuracy"] == pytest.approx(2 / 3)
    assert "orientation" not in out


def test_phantom_descriptors_agree_with_their_lexicon(phantom_cohort) -> None:
    """On phantoms the rules recover the generator's shape/orientation far above chance."""
    from buscad.data.io import read_mask

    man = phantom_cohort.lesions()
    rows = {}
    for i in range(len(man)):
        m = read_mask(man.mask_paths(i))
        rows[man.df["image_id"].iloc[i]] = describe(m).as_dict()
    pred = pd.DataFrame.from_dict(rows, orient="index")
    ref = man.df.set_index("image_id")[["shape", "orientation", "margin"]]
    out = agreement(pred, ref, n_boot=200)
    assert out["orientation"]["kappa"] > 0.5  # 10 % reader noise in the generator's labels
    assert out["shape"]["kappa"] > 0.7 and out["shape_irregular"]["kappa"] > 0.7
    assert out["margin"]["kappa"] > 0.5
