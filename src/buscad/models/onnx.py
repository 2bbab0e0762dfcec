"""ONNX export of trained classifiers and ONNX Runtime inference.

The exported graph is ``model -> softmax``: input ``image`` ``(N, 3, S, S)``
(normalised as the checkpoint's preprocessing says), output ``probabilities``
``(N, 2)`` in the checkpoint's class order. The batch dimension is dynamic. The
checkpoint JSON is copied beside the ``.onnx`` file (``.onnx.json``) so the
preprocessing travels with it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

import buscad._compat  # noqa: F401
from buscad.errors import ModelFileError
from buscad.models.heads import BuscadClassifier, ProbabilityWrapper
from buscad.utils import atomic_path, atomic_write_json

OPSET = 17


def export_onnx(
    model: BuscadClassifier,
    path: str | os.PathLike[str],
    input_size: int,
    spec: dict | None = None,
    opset: int = OPSET,
) -> Path:
    """Export ``softmax(model(x))`` to ONNX (TorchScript exporter, dynamic batch).

    Parameters
    ----------
    model : BuscadClassifier
        Trained model (exported in eval mode, on CPU).
    path : path-like
        Output ``.onnx`` file.
    input_size : int
        Square input side.
    spec : dict, optional
        The checkpoint JSON, written beside as ``<path>.json``.
    """
    p = Path(path)
    was_training = model.training
    wrapper = ProbabilityWrapper(model.cpu().eval())
    x = torch.zeros(1, 3, input_size, input_size)
    with atomic_path(p) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (x,),
            str(tmp),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    model.train(was_training)  # the exporter leaves modules in training mode
    if spec is not None:
        atomic_write_json(p.with_suffix(".onnx.json"), {**spec, "onnx": {"opset": opset}})
    return p


class OnnxClassifier:
    """ONNX Runtime session of an exported classifier.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file.
    num_threads : int, optional
        Intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, path: str | os.PathLike[str], num_threads: int | None = None) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise ModelFileError(p, "ONNX model not found")
        so = ort.SessionOptions()
        if num_threads:
            so.intra_op_num_threads = num_threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(p, f"ONNX Runtime cannot load it ({type(exc).__name__})") from exc
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities ``(N, 2)`` of normalised inputs ``(N, 3, S, S)``."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def score(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Malignant probability ``(N,)``."""
        return self.predict_proba(x)[:, 1]


__all__ = ["OPSET", "OnnxClassifier", "export_onnx"]
