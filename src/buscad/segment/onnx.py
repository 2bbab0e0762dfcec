"""ONNX export of the segmentation network and the parity check with PyTorch.

The graph maps ``image`` float32 ``(N, 2, S, S)`` to ``logits`` ``(N, 1, S, S)``
(dynamic batch; ``S`` fixed at export). Running it needs only ONNX Runtime
(:class:`buscad.segment.base.OnnxRunner`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from buscad.utils import atomic_path

OPSET = 17


def export_module(
    module: Any, path: str | os.PathLike[str], input_size: int, opset: int = OPSET
) -> Path:
    """Export the network to ``path`` (TorchScript exporter, dynamic batch, atomically)."""
    import buscad._compat  # noqa: F401
    from buscad._compat import torch

    p = Path(path)
    was_training = module.training
    module = module.cpu().eval()
    x = torch.zeros(1, 2, input_size, input_size)
    with atomic_path(p) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    module.train(was_training)
    return p


def parity(module: Any, onnx_path: str | os.PathLike[str], x: np.ndarray) -> dict[str, float]:
    """Largest differences between PyTorch and ONNX Runtime on the batch ``x``.

    Returns
    -------
    dict
        ``max_abs_logit`` = max |l_torch - l_onnx| and ``max_abs_prob`` =
        max |sigmoid(l_torch) - sigmoid(l_onnx)|.
    """
    from buscad.segment.base import OnnxRunner, sigmoid
    from buscad.segment.model import torch_runner

    a = torch_runner(module)(x)
    b = OnnxRunner(onnx_path, threads=1)(x)
    return {
        "max_abs_logit": float(np.abs(a - b).max()),
        "max_abs_prob": float(np.abs(sigmoid(a) - sigmoid(b)).max()),
    }


__all__ = ["OPSET", "export_module", "parity"]
