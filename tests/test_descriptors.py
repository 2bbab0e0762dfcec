"""Lesion descriptors (smoothed shape, echo ratios), the outline model's inputs, positive stacking."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from buscad.segment.descriptors import (
    DESCRIPTOR_NAMES,
    echo_features,
    lesion_descriptors,
    smooth_shape,
)


def _ellipse(h=200, w=240, centre=(120, 90), axes=(60, 30), angle=0.0) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
    return m.astype(bool)


def _jagged(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same lesion traced pixel by pixel: ±2 px notches along the whole outline."""
    rng = np.random.default_rng(seed)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = contours[0].reshape(-1, 2).astype(float)
    ctr = c.mean(0)
    r = c - ctr
    scale = 1 + rng.choice([-1, 1], len(c)) * 2.5 / np.linalg.norm(r, axis=1)
    pts = np.round(ctr + r * scale[:, None]).astype(np.int32)
    out = np.zeros_like(mask, np.uint8)
    cv2.fillPoly(out, [pts], 1)
    return out.astype(bool)


def test_smooth_shape_of_an_ellipse():
    d = smooth_shape(_ellipse(axes=(60, 30)))
    assert d["sm_solidity"] == pytest.approx(1.0, abs=0.01)
    assert d["sm_axis_ratio"] == pytest.approx(2.0, rel=0.05)
    assert d["sm_depth_width"] == pytest.approx(0.5, rel=0.05)  # wider than tall: parallel
    assert d["sm_ellipse_misfit"] < 0.03
    assert d["sm_angle"] == pytest.approx(0.0, abs=2.0)
    # circularity 4πA/P² of a 2:1 ellipse (Ramanujan's perimeter): 0.842
    assert d["sm_circularity"] == pytest.approx(0.842, abs=0.02)
    tall = smooth_shape(_ellipse(axes=(30, 60)))
    assert tall["sm_depth_width"] == pytest.approx(2.0, rel=0.05)
    assert tall["sm_angle"] == pytest.approx(90.0, abs=2.0)


def test_smoothing_ignores_how_finely_the_outline_was_traced():
    from buscad.data.geometry import mask_geometry

    smooth, jag = _ellipse(), _jagged(_ellipse())
    raw_drop = mask_geometry(smooth)["convexity"] - mask_geometry(jag)["convexity"]
    sm_drop = smooth_shape(smooth)["sm_convexity"] - smooth_shape(jag)["sm_convexity"]
    assert raw_drop > 0.15  # the raw outline's convexity reads the tracing
    assert abs(sm_drop) < 0.02  # the smoothed one does not
    # a lobulated lesion (5 lobes) keeps its lobulation after smoothing
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    r = 50 * (1 + 0.2 * np.cos(5 * t))
    pts = np.stack([120 + r * np.cos(t), 100 + r * np.sin(t)], 1).astype(np.int32)
    lob = np.zeros((200, 240), np.uint8)
    cv2.fillPoly(lob, [pts], 1)
    d = smooth_shape(lob.astype(bool))
    assert d["sm_solidity"] < 0.9 and d["sm_hf_energy"] > 3 * smooth_shape(smooth)["sm_hf_energy"]


def _scene(gain: float = 1.0, shadow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = np.full((200, 240), 120.0) + rng.normal(0, 8, (200, 240))
    mask = _ellipse(axes=(40, 25), centre=(120, 70))
    img[mask] = 50 + rng.normal(0, 4, mask.sum())
    if shadow:
        img[96:200, 80:161] *= 0.4  # below the lesion, its width
    return np.clip(img * gain, 0, 255), mask


def test_echo_ratios_read_echogenicity_and_shadowing_and_ignore_gain():
    img, mask = _scene()
    e = echo_features(img, mask)
    assert e["echo_lesion_ring"] == pytest.approx(50 / 120, rel=0.1)  # hypoechoic
    assert e["echo_posterior"] == pytest.approx(1.0, abs=0.05)  # no posterior feature
    shadowed = echo_features(*_scene(shadow=True))
    assert shadowed["echo_posterior"] == pytest.approx(0.4, abs=0.05)
    brighter = echo_features(*_scene(gain=1.5))
    for k in ("echo_lesion_ring", "echo_cv", "echo_posterior", "echo_edge", "echo_entropy"):
        assert brighter[k] == pytest.approx(e[k], rel=0.02), k


def test_lesion_descriptors_names_and_degenerate_outlines():
    img, mask = _scene()
    d = lesion_descriptors(img, mask)
    assert tuple(d) == DESCRIPTOR_NAMES and all(np.isfinite(v) for v in d.values())
    empty = lesion_descriptors(img, np.zeros_like(mask))
    assert tuple(empty) == DESCRIPTOR_NAMES and all(np.isnan(v) for v in empty.values())
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_descriptors(img, mask[:10])


def test_bundle_computes_the_outline_models_inputs():
    from buscad.bundle.bundle import computed_descriptors
    from buscad.data.geometry import mask_geometry

    img, mask = _scene()
    cols = ["solidity", "aspect_ratio", "morph_sm_solidity", "morph_echo_posterior", "morph_shape"]
    d = computed_descriptors(mask, cols, img)
    assert set(d) == set(cols)
    assert d["solidity"] == mask_geometry(mask)["solidity"]
    assert d["morph_echo_posterior"] == lesion_descriptors(img, mask)["echo_posterior"]
    # without the image only the outline's own measures
    assert "morph_echo_posterior" not in computed_descriptors(mask, cols)
    assert computed_descriptors(np.zeros_like(mask), cols, img) == {}


def test_positive_stacking_drops_an_inverted_model():
    """A base model whose score is inverted gets weight 0 under ``positive=True``, < 0 without."""
    from buscad.classical import ColumnScore, StackingIntegrator

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.15, n), 0.01, 0.99)
    bad = np.clip(0.5 - 0.2 * (y - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)  # inverted
    X = pd.DataFrame({"g": good, "b": bad})
    bases = [("good", ColumnScore("g")), ("bad", ColumnScore("b"))]
    free = StackingIntegrator(bases, stack_method="logit").fit(X, y)
    pos = StackingIntegrator(bases, stack_method="logit", positive=True).fit(X, y)
    assert free.coef_[1] < -0.1
    assert pos.coef_[1] == 0.0 and pos.coef_[0] > 0
    p = pos.predict_proba(X)[:, 1]
    assert np.all((p > 0) & (p < 1))
    # same weights through the portable (pickle-free) form
    _spec, arrays = pos.to_portable()
    assert np.array_equal(arrays["coef"], pos.coef_)


def test_equal_weight_fusion_is_the_mean_of_the_base_logits():
    from buscad.classical import ColumnScore, StackingIntegrator

    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.uniform(0.05, 0.95, 50), "b": rng.uniform(0.05, 0.95, 50)})
    y = rng.integers(0, 2, 50)
    m = StackingIntegrator(
        [("a", ColumnScore("a")), ("b", ColumnScore("b"))], stack_method="logit", weights="equal"
    ).fit(X, y)
    lg = np.log(X / (1 - X)).to_numpy()
    want = 1 / (1 + np.exp(-lg.mean(1)))
    np.testing.assert_allclose(m.predict_proba(X)[:, 1], want, rtol=1e-9)
    assert m.oof_proba_ is None and list(m.coef_) == [0.5, 0.5] and m.intercept_ == 0.0
    with pytest.raises(ValueError, match="weights must be"):
        StackingIntegrator([("a", ColumnScore("a"))], weights="median").fit(X, y)
