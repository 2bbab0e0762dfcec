"""The transfer recipe of TrainConfig: layer-wise lr decay, mixup, ultrasound augmentations,
balanced sampling (issue 14). Phantoms and tiny inputs only."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

import buscad._compat  # noqa: F401
from buscad.data.manifest import Manifest
from buscad.errors import ConfigError, ManifestError
from buscad.models.train import (
    RECIPE_OFF,
    TrainConfig,
    balanced_weights,
    layer_decay_param_groups,
    layer_groups,
    train_model,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        backbone="rcdnet",
        pretrained=None,
        epochs=1,
        batch_size=8,
        lr=3e-3,
        input_size=32,
        warmup_epochs=0.3,
        progress=False,
        max_steps=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_recipe_is_off_by_default_and_leaves_the_hash_alone():
    cfg = TrainConfig()
    assert {k: getattr(cfg, k) for k in RECIPE_OFF} == RECIPE_OFF
    ident = cfg.identity()
    assert not set(RECIPE_OFF) & set(ident)  # old runs and caches keep their hashes
    assert {k: v for k, v in asdict(cfg).items() if k not in RECIPE_OFF} == ident
    on = TrainConfig(layer_decay=0.7, mixup=0.2, us_augment=True, balance_by="cohort")
    assert {"layer_decay", "mixup", "us_augment", "balance_by"} <= set(on.identity())
    assert "layer_decay" not in TrainConfig(layer_decay=1.0).identity()


@pytest.mark.parametrize(
    "kw", [{"layer_decay": 0.0}, {"layer_decay": 1.5}, {"mixup": -0.1}, {"balance_by": " "}]
)
def test_recipe_options_are_validated(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


def test_layer_decay_lrs_follow_the_depth_from_the_head():
    from buscad.models.registry import create_backbone

    torch.manual_seed(0)
    model = create_backbone("efficientnet_lite0")  # timm: stages from its group_matcher
    stages = layer_groups(model.backbone)
    assert stages[0][0].startswith("conv_stem") and any("conv_head" in n for n in stages[-1])
    groups = layer_decay_param_groups(model, 1e-3, 0.01, 0.5)
    assert [g["depth"] for g in groups] == list(range(len(stages) + 1))
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** g["depth"])
    assert groups[0]["params"] == list(model.head.parameters())
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))  # every parameter once
    # a non-timm trunk: its parameterised children, a lone `features` opened
    mb = layer_groups(create_backbone("mobilenet_v2").backbone)
    assert [".".join(s[0].split(".")[:2]) for s in mb][:2] == ["features.0", "features.1"]
    assert len(mb) == 19


def test_layer_decay_reaches_the_optimiser(phantom_cohort: Manifest, monkeypatch):
    seen: list[list[float]] = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            seen.append([g["lr"] for g in self.param_groups])

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    res = train_model(phantom_cohort, _cfg(layer_decay=0.5, max_steps=1, warmup_epochs=0))
    assert np.isfinite(res.history["train_loss"]).all()
    n = len(layer_groups(res.model.backbone))  # rcdnet: stages from its children
    assert seen[0] == pytest.approx([3e-3 * 0.5**d for d in range(n + 1)])
    train_model(phantom_cohort, _cfg(max_steps=1))
    assert seen[1] == [3e-3]  # off: one group at lr


def test_mixup_mixes_images_and_labels():
    from torchvision.transforms.v2 import MixUp

    torch.manual_seed(0)
    x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)] * 2)
    y = torch.tensor([0, 1, 0, 1])
    xm, ym = MixUp(alpha=0.4, num_classes=2)(x, y)
    assert ym.shape == (4, 2) and torch.allclose(ym.sum(1), torch.ones(4))
    assert ((ym > 0) & (ym < 1)).any()  # soft labels
    lam = ym[0, 0]  # image 0 (label 0) mixed with image 3 (label 1): x = 1 - lam
    assert torch.allclose(xm[0], torch.full_like(xm[0], 1 - float(lam)), atol=1e-6)


def test_ultrasound_augment_keeps_shape_dtype_and_is_seeded():
    from buscad.models.preprocess import UltrasoundAugment

    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    aug = UltrasoundAugment(p=1.0)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and (a - x).abs().mean() > 0.01
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    aug(x, torch.Generator().manual_seed(3))
    assert np.array_equal(state, np.random.get_state()[1])  # noqa: NPY002  (restored)
    with pytest.raises(ConfigError):
        UltrasoundAugment(p=2)


def test_balanced_weights_give_every_cell_the_same_mass():
    g = np.array(["a"] * 8 + ["b"] * 2)
    y = np.array([0] * 6 + [1] * 2 + [0, 1])
    w = balanced_weights(g, y)
    assert w.sum() == pytest.approx(1.0)
    for gv in ("a", "b"):
        for c in (0, 1):
            assert w[(g == gv) & (y == c)].sum() == pytest.approx(0.25)
    w2 = balanced_weights([None, None, "x", "x"], np.array([0, 1, 0, 1]))  # missing: own group
    assert w2 == pytest.approx([0.25] * 4)


def test_recipe_trains_a_few_steps(phantom_cohort: Manifest):
    cfg = _cfg(mixup=0.2, us_augment=True, balance_by="cohort", layer_decay=0.8, max_steps=2)
    res = train_model(phantom_cohort, cfg)
    assert res.history["step"].iloc[-1] == 2 and np.isfinite(res.history["train_loss"]).all()
    with pytest.raises(ManifestError, match="balance_by"):
        train_model(phantom_cohort, _cfg(balance_by="scanner"))


def test_ultrasound_augment_never_returns_nan(monkeypatch):
    from buscad.models.preprocess import UltrasoundAugment

    aug = UltrasoundAugment(p=1.0)
    comp = aug.compose()

    class Broken:  # fails on one image, as usaugment's bilateral filter can
        def set_random_seed(self, seed):
            comp.set_random_seed(seed)

        def __call__(self, image, scan_mask):
            out = comp(image=image, scan_mask=scan_mask)["image"]
            return {"image": np.full_like(out, np.nan) if image[0, 0] > 0.5 else out}

    monkeypatch.setattr(aug, "_compose", Broken())
    x = torch.full((2, 1, 16, 16), 0.25)
    x[1] = 0.75
    y = aug(x, torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all() and torch.equal(y[1], x[1])
