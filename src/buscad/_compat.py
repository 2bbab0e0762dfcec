"""Compatibility shims that must run before torchvision, timm or pytorch-grad-cam import.

PyPI's ``torchvision`` wheels are CUDA builds. Paired with the CPU build of torch,
``import torchvision`` fails with ``operator torchvision::nms does not exist``
because the compiled extension that registers the ``nms``/``qnms`` operator
schemas cannot load. Declaring the two schemas (no kernels) is enough for the
import to succeed; buscad never calls those detection ops.

Every buscad module that needs torchvision, timm or grad-cam does
``from buscad._compat import torch`` (or ``import buscad._compat``) first.
This is the only place the shim lives.
"""

from __future__ import annotations

import torch

_LIB: torch.library.Library | None = None


def ensure_torchvision_ops() -> bool:
    """Declare ``torchvision::nms`` and ``torchvision::qnms`` when they are missing.

    Returns
    -------
    bool
        True when the schemas had to be declared here, False when torchvision's
        own extension (or an earlier call) already registered them.
    """
    global _LIB
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access is the probe
        return False
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib  # keep a reference: the fragment is dropped when garbage-collected
    return True


ensure_torchvision_ops()

__all__ = ["ensure_torchvision_ops", "torch"]
