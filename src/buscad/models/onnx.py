"""ONNX export of trained classifiers and ONNX Runtime inference.

The exported graph is ``model -> softmax``: input ``image`` ``(N, 3, S, S)``
(normalised as the checkpoint's preprocessing says), output ``probabilities``
``(N, 2)`` in the checkpoint's class order. The batch dimension is dynamic. The
checkpoint JSON is copied beside the ``.onnx`` file (``.onnx.json``) so the
preprocessing travels with it.

With ``explain=True`` the graph has two more outputs, so that the AI score, the
deep features and the Grad-CAM heatmap come from one forward pass and no
autograd is needed at inference time:

- ``features`` ``(N, d)``: the pooled penultimate-layer features (the DLR input);
- ``cam`` ``(N, h, w)``: the Grad-CAM map of the malignant logit at the spec's
  target layer, before scaling to [0, 1].

Grad-CAM (Selvaraju et al. 2017) weights the target layer's channels ``A_k`` by
the spatial mean of the gradient of the class logit ``y`` and keeps the positive
part: ``cam = ReLU(Σ_k α_k A_k)`` with ``α_k = (1/hw) Σ_ij ∂y/∂A_k(i, j)``. When
the target layer feeds global average pooling ``f_k = (1/hw) Σ_ij A_k(i, j)`` and
then the studies' head ``y = W2[1] · ReLU(W1 f + b1) + b2[1]`` (dropout is the
identity at inference), the gradient is the same at every position:
``∂y/∂A_k(i, j) = g_k / hw`` with ``g = W1ᵀ (W2[1] ⊙ 1[W1 f + b1 > 0])``, so
``α = g / hw`` exactly. :func:`export_onnx` checks that the target layer really
is pooled that way (``f == mean(A)`` on a test input) and refuses otherwise
(VGG's and AlexNet's max-pooling, DenseNet's final ReLU, the ViT's tokens): those
models explain through pytorch-grad-cam instead (:func:`buscad.explain.cam.compute_cam`).

This module imports PyTorch only to export; :class:`OnnxClassifier` needs only
NumPy and ONNX Runtime, which keeps ``buscad predict`` quick to start.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buscad.errors import ModelFileError
from buscad.utils import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from buscad.models.heads import BuscadClassifier

OPSET = 17


def _explain_wrapper(model: BuscadClassifier, input_size: int) -> Any:
    """A module returning ``(probabilities, features, cam)``; see the module docstring."""
    import torch
    from torch import nn

    import buscad._compat  # noqa: F401
    from buscad.models.heads import ClassifierHead
    from buscad.models.registry import get_spec, target_layer

    spec = get_spec(model.name)
    head = model.head
    if spec.reshape or not isinstance(head, ClassifierHead) or head.num_classes != 2:
        raise ValueError(f"{model.name}: Grad-CAM cannot be exported (token outputs or other head)")
    layer = target_layer(model)

    class Explain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self._act: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            handle = layer.register_forward_hook(lambda m, i, o: setattr(self, "_act", o))
            try:
                f = self.model.features(x)
            finally:
                handle.remove()
            a = self._act
            assert a is not None
            h = head.fc1(f)
            logits = head.fc2(torch.relu(h))
            g = ((h > 0).to(h.dtype) * head.fc2.weight[1]) @ head.fc1.weight
            cam = torch.relu((a * g[:, :, None, None]).sum(1)) / (a.shape[2] * a.shape[3])
            return torch.softmax(logits, 1), f, cam

    w = Explain().eval()
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        w(x)
        a = w._act
        f = model.features(x)
    if a is None or a.ndim != 4 or a.shape[1] != f.shape[1]:
        raise ValueError(
            f"{model.name}: the Grad-CAM layer is not a feature map of the pooled width"
        )
    if not torch.allclose(a.mean((2, 3)), f, rtol=1e-4, atol=1e-5):
        raise ValueError(
            f"{model.name}: the Grad-CAM layer does not feed global average pooling, "
            "so its Grad-CAM cannot be computed in the exported graph"
        )
    return w


def export_onnx(
    model: BuscadClassifier,
    path: str | os.PathLike[str],
    input_size: int,
    spec: dict | None = None,
    opset: int = OPSET,
    explain: bool = False,
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
    explain : bool
        Add the ``features`` and ``cam`` outputs (see the module docstring).

    Raises
    ------
    ValueError
        ``explain=True`` for a backbone whose Grad-CAM layer is not globally
        average-pooled into the head.
    """
    import torch

    import buscad._compat  # noqa: F401
    from buscad.models.heads import ProbabilityWrapper

    p = Path(path)
    was_training = model.training
    model = model.cpu().eval()
    if explain:
        wrapper = _explain_wrapper(model, input_size)
        outputs = ["probabilities", "features", "cam"]
    else:
        wrapper = ProbabilityWrapper(model)
        outputs = ["probabilities"]
    x = torch.zeros(1, 3, input_size, input_size)
    with atomic_path(p) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (x,),
            str(tmp),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    model.train(was_training)  # the exporter leaves modules in training mode
    if spec is not None:
        atomic_write_json(
            p.with_suffix(".onnx.json"), {**spec, "onnx": {"opset": opset, "outputs": outputs}}
        )
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
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.explains = {"features", "cam"} <= set(self.output_names)

    @staticmethod
    def _array(x: Any) -> np.ndarray:
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()
        return np.ascontiguousarray(x, np.float32)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Probabilities ``(N, 2)`` of normalised inputs ``(N, 3, S, S)`` (array or tensor)."""
        return self.session.run(["probabilities"], {self.input_name: self._array(x)})[0]

    def score(self, x: Any) -> np.ndarray:
        """Malignant probability ``(N,)``."""
        return self.predict_proba(x)[:, 1]

    def explain(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(probabilities (N, 2), features (N, d), cam (N, h, w))`` of an ``explain=True`` export.

        ``cam`` is the raw Grad-CAM map; :func:`scale_cam` brings it to [0, 1].
        """
        if not self.explains:
            raise ModelFileError("<onnx>", "this ONNX model was exported without explain=True")
        probs, feats, cam = self.session.run(
            ["probabilities", "features", "cam"], {self.input_name: self._array(x)}
        )
        return probs, feats, cam


def scale_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One raw CAM ``(h, w)`` -> ``size = (height, width)`` in [0, 1].

    As pytorch-grad-cam does: ``(cam - min) / max(cam - min)`` (zero map stays
    zero), then a bilinear resize.
    """
    from PIL import Image

    c = np.asarray(cam, dtype=np.float32)
    c = c - c.min()
    top = float(c.max())
    if top > 0:
        c = c / top
    out = np.asarray(
        Image.fromarray(c, mode="F").resize((size[1], size[0]), Image.BILINEAR), np.float32
    )
    return np.clip(out, 0.0, 1.0)


__all__ = ["OPSET", "OnnxClassifier", "export_onnx", "scale_cam"]
