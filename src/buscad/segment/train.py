"""Training the lesion segmenter on a buscad manifest.

Each training sample is drawn from one manifest row:

- a lesion image (``benign`` / ``malignant`` with ``mask_path``) becomes a
  *box-prompted* sample with probability ``box_fraction``: one lesion (a
  connected component of the mask) is picked, its box's four sides are moved
  independently by ``U(-jitter, +jitter)`` times the box width (height), and the
  crop/prompt is built by the same :func:`buscad.segment.base.make_input` used
  at inference; the target is that lesion only. Otherwise it is an
  *automatic* sample: whole image, empty prompt, target = the whole mask;
- a ``normal`` image (empty or no mask) is an automatic sample with an empty
  target: the lesion-free negatives that teach "no lesion found".

Only ``mask_path`` is read: BrEaST's ``other_mask_path`` (cysts and other
structures) is not the target lesion and is never used.

Augmentation (albumentations, on the whole image and mask before the crop):
horizontal flip, small affine (scale 0.85-1.15, shift 5 %, rotation 10°),
brightness/contrast, gamma (gain and TGC changes), elementwise multiplicative
noise (speckle-like) and a mild Gaussian blur (point-spread changes); no
vertical flips (depth has a direction in ultrasound: skin on top, shadowing below).

Loss: binary cross-entropy on logits plus soft Dice
(``1 - (2 Σ p t + ε) / (Σ p + Σ t + ε)``, smp's ``DiceLoss``). AdamW with a
cosine learning-rate schedule. Resumable: after every epoch the network, the
AdamW moments and the history are written to ``out/checkpoint.*`` (safetensors
+ JSON); a rerun with the same ``out`` continues from there only when the
checkpoint's *resume key* equals the run's: :func:`training_key` of the
architecture, the training settings other than ``epochs``, ``max_steps`` and
``threads`` (a longer run may continue a shorter one) and
:func:`data_fingerprint` of the training rows. A checkpoint written for other
settings or other data (or one without a key) is not read: training starts
afresh, says so through ``log``, and overwrites it after the first epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import buscad._compat  # noqa: F401
from buscad._compat import torch
from buscad.data.manifest import Manifest
from buscad.errors import BuscadError, ModelFileError
from buscad.segment.base import (
    SegConfig,
    _resize,
    components,
    make_input,
    mask_box,
    normalise,
    training_rows,
)
from buscad.segment.infer import Segmenter
from buscad.segment.model import build_module, load_imagenet_encoder, torch_runner
from buscad.utils import (
    array_sha256,
    atomic_path,
    atomic_write_json,
    seed_everything,
    stable_hash,
)


@dataclass
class TrainConfig:
    """Training settings.

    Attributes
    ----------
    epochs : int
        Passes over the training rows.
    batch_size : int
        Samples per step.
    lr, weight_decay : float
        AdamW settings; the learning rate follows a cosine from ``lr`` to ``lr / 20``.
    box_fraction : float
        Share of lesion samples that are box-prompted (the rest are automatic).
    jitter : float
        Each box side moves by up to this fraction of the box width/height.
    pretrained : {"imagenet", "random"}
        Encoder initialisation (ImageNet = the packaged EfficientNet-Lite0 file).
    augment : bool
        Apply the albumentations pipeline.
    cache_side : int
        Images are kept in memory with their longer side at most this many pixels.
    max_steps : int or None
        Stop after this many steps in total (tests and pilots).
    seed : int
        Seeds sampling, augmentation and initialisation.
    threads : int or None
        ``torch.set_num_threads`` for the run.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    box_fraction: float = 0.5
    jitter: float = 0.15
    pretrained: str = "imagenet"
    augment: bool = True
    cache_side: int = 512
    max_steps: int | None = None
    seed: int = 0
    threads: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Item:
    """One manifest row in memory: uint8 gray image, boolean mask, label.

    ``spacing_mm`` is the pixel spacing of the stored (possibly shrunk) arrays:
    the manifest's ``pixel_spacing_mm`` times original height / stored height.
    """

    image_id: str
    gray: np.ndarray
    mask: np.ndarray
    label: str
    cohort: str = ""
    spacing_mm: float | None = None


def _shrink(gray: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = gray.shape
    s = side / max(h, w)
    if s >= 1:
        return gray, mask
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return _resize(gray, size), _resize(mask.astype(np.uint8), size, nearest=True) > 0


def load_items(
    manifest: Manifest, cache_side: int = 512, on_skip: Callable[[str], None] | None = None
) -> list[Item]:
    """Read the rows usable for training (lesions with a mask, and normals).

    A row whose image or mask cannot be read is skipped and reported through
    ``on_skip`` (one line naming the file); a lesion row without ``mask_path``
    is skipped too.
    """
    df = manifest.df
    items: list[Item] = []
    for i, label, gray, mask in training_rows(manifest, on_skip):
        row = df.iloc[i]
        h0 = gray.shape[0]
        gray, mask = _shrink(gray, mask, cache_side)
        cohort = str(row.get("cohort", "")) if "cohort" in df.columns else ""
        sp = pd.to_numeric(row.get("pixel_spacing_mm"), errors="coerce")
        sp = float(sp) * h0 / gray.shape[0] if pd.notna(sp) and sp > 0 else None
        items.append(Item(str(row["image_id"]), gray, mask, label, cohort, sp))
    return items


def augmenter(seed: int) -> Callable[..., dict]:
    """The albumentations pipeline (see the module docstring), seeded."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.85, 1.15),
                translate_percent=(-0.05, 0.05),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.RandomGamma(gamma_limit=(70, 150), p=0.3),
            A.MultiplicativeNoise(multiplier=(0.8, 1.2), elementwise=True, p=0.3),
            A.GaussianBlur(sigma_limit=(0.3, 1.2), p=0.2),
        ],
        seed=seed,
    )


def jitter_box(
    box: tuple[int, int, int, int], rng: np.random.Generator, jitter: float
) -> tuple[float, float, float, float]:
    """Move each side of ``box`` by ``U(-jitter, jitter)`` times the box width/height."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    d = rng.uniform(-jitter, jitter, size=4)
    nx0, ny0 = x0 + d[0] * bw, y0 + d[1] * bh
    nx1, ny1 = x1 + d[2] * bw, y1 + d[3] * bh
    return nx0, ny0, max(nx1, nx0 + 1), max(ny1, ny0 + 1)


def make_sample(
    item: Item,
    cfg: SegConfig,
    tcfg: TrainConfig,
    rng: np.random.Generator,
    aug: Callable[..., dict] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(input (2, S, S), target (1, S, S))`` pair from a row (see the module docstring)."""
    gray, mask = item.gray, item.mask
    if aug is not None:
        out = aug(image=gray, mask=mask.astype(np.uint8))
        gray, mask = out["image"], out["mask"] > 0
    norm = normalise(gray)
    s = cfg.input_size
    if mask.any() and rng.random() < tcfg.box_fraction:
        lab, n = components(mask)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        k = int(rng.choice(n, p=sizes / sizes.sum())) + 1  # larger lesions more often
        lesion = lab == k
        box = jitter_box(mask_box(lesion), rng, tcfg.jitter)  # type: ignore[arg-type]
        x, (x0, y0, x1, y1) = make_input(norm, s, box, cfg.margin)
        target = lesion[y0:y1, x0:x1]
    else:
        x, _ = make_input(norm, s, None, cfg.margin)
        target = mask
    t = _resize(target.astype(np.uint8), (s, s), nearest=True).astype(np.float32)
    return x, t[None]


# ------------------------------------------------------------------ cache keys

#: Training settings that may change between a checkpoint and the run resuming it.
RESUME_FREE: tuple[str, ...] = ("epochs", "max_steps", "threads")


def data_fingerprint(items: list[Item]) -> str:
    """SHA-256 of the training rows: each item's id, label and image and mask arrays, in order.

    ``sha256(id_1 ‖ label_1 ‖ sha256(gray_1) ‖ sha256(mask_1) ‖ …)`` (array hashes by
    :func:`buscad.utils.array_sha256`: dtype, shape and bytes).
    """
    import hashlib

    h = hashlib.sha256()
    for it in items:
        for part in (it.image_id, it.label, array_sha256(it.gray), array_sha256(it.mask)):
            h.update(part.encode())
            h.update(b"\0")
    return h.hexdigest()


def training_key(
    items: list[Item],
    config: SegConfig,
    train_config: TrainConfig,
    resume: bool = False,
    fingerprint: str | None = None,
) -> str:
    """Short hash of what a trained segmenter depends on: settings and data.

    :func:`buscad.utils.stable_hash` of the network config, the training config
    (without ``threads``; with ``resume`` also without ``epochs`` and ``max_steps``,
    see :data:`RESUME_FREE`) and :func:`data_fingerprint` of ``items`` (or the
    precomputed ``fingerprint``).
    """
    drop = RESUME_FREE if resume else ("threads",)
    tc = {k: v for k, v in asdict(train_config).items() if k not in drop}
    fp = fingerprint or data_fingerprint(items)
    return stable_hash({"config": config.to_dict(), "train_config": tc, "data": fp})


# ------------------------------------------------------------------ checkpoints


def _save_checkpoint(
    out: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    ostate = opt.state_dict()
    for idx, st in ostate["state"].items():
        for name, v in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(v).detach().contiguous()
    with atomic_path(out / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(out / "checkpoint.json", meta)


def _load_checkpoint(
    out: Path,
    module: torch.nn.Module,
    opt: torch.optim.Optimizer,
    key: str,
    log: Callable[[str], None] | None = None,
) -> dict | None:
    """The checkpoint's meta after loading its tensors, or None (none, or another ``key``)."""
    from safetensors.torch import load_file

    meta_p, w_p = out / "checkpoint.json", out / "checkpoint.safetensors"
    if not (meta_p.is_file() and w_p.is_file()):
        return None
    try:
        meta = json.loads(meta_p.read_text())
    except Exception as exc:
        raise ModelFileError(meta_p, f"cannot resume from the checkpoint ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("resume_key") != key:
        if log:
            log(
                f"not resuming: {meta_p} was written for other settings or data "
                f"(resume key {meta.get('resume_key') if isinstance(meta, dict) else None} "
                f"!= {key}); training afresh"
            )
        return None
    try:
        tensors = load_file(str(w_p))
    except Exception as exc:
        raise ModelFileError(w_p, f"cannot resume from the checkpoint ({exc})") from exc
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ostate = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    ostate["state"] = state
    opt.load_state_dict(ostate)
    return meta


# ------------------------------------------------------------------------ train


def train_segmenter(
    items: list[Item],
    out: str | os.PathLike[str] | None = None,
    config: SegConfig | None = None,
    train_config: TrainConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Segmenter, dict]:
    """Train a segmenter on ``items`` (from :func:`load_items`).

    Parameters
    ----------
    items : list of Item
        Training rows.
    out : path-like, optional
        Folder for the resumable checkpoint and the final ``segmenter.*`` files. A
        checkpoint there is resumed only when its resume key matches (see the module
        docstring). The saved JSON's ``training`` record holds ``key`` (:func:`training_key`
        with every setting but ``threads``: what a cache of finished models compares),
        ``resume_key`` and ``data_sha256``.
    config, train_config : SegConfig, TrainConfig
        Network and training settings.
    log : callable, optional
        Receives one line per epoch.

    Returns
    -------
    segmenter : Segmenter
        The trained model (PyTorch backend).
    history : dict
        ``loss`` per epoch (mean of BCE + Dice over its steps), ``steps``,
        ``seconds`` per epoch, the encoder's weight provenance.
    """
    cfg = config or SegConfig()
    tcfg = train_config or TrainConfig()
    if not items:
        raise BuscadError("no usable training rows (lesions with masks or normals)")
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    rng = seed_everything(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    module = build_module(cfg)
    weights = (
        load_imagenet_encoder(module, cfg)
        if tcfg.pretrained == "imagenet"
        else {"weights": "random"}
    )
    import segmentation_models_pytorch as smp

    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    bce = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.AdamW(module.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = math.ceil(len(items) / tcfg.batch_size)
    total = tcfg.epochs * steps_per_epoch
    if tcfg.max_steps is not None:
        total = min(total, int(tcfg.max_steps))

    def lr_at(step: int) -> float:
        return tcfg.lr * (
            0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1)))
        )

    history: dict = {"loss": [], "step_loss": [], "seconds": [], "steps": 0, "weights": weights}
    start_epoch = 0
    fingerprint = data_fingerprint(items)
    resume_key = training_key(items, cfg, tcfg, resume=True, fingerprint=fingerprint)
    outp = Path(out) if out is not None else None
    if outp is not None:
        outp.mkdir(parents=True, exist_ok=True)
        meta = _load_checkpoint(outp, module, opt, resume_key, log)
        if meta is not None:
            history = meta["history"]
            start_epoch = int(meta["epoch"])
            rng = np.random.default_rng(meta["rng_seed"])
            if log:
                log(f"resumed after epoch {start_epoch}")
    step = history["steps"]
    for epoch in range(start_epoch, tcfg.epochs):
        if step >= total:
            break
        aug = augmenter(tcfg.seed * 1000 + epoch) if tcfg.augment else None
        module.train()
        t0 = time.perf_counter()
        losses = []
        order = rng.permutation(len(items))
        for b in range(0, len(order), tcfg.batch_size):
            if step >= total:
                break
            pairs = [
                make_sample(items[j], cfg, tcfg, rng, aug) for j in order[b : b + tcfg.batch_size]
            ]
            x = torch.from_numpy(np.stack([p[0] for p in pairs]))
            y = torch.from_numpy(np.stack([p[1] for p in pairs]))
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = module(x)
            loss = bce(logits, y) + dice(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        history["loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["step_loss"].extend(losses)
        history["seconds"].append(time.perf_counter() - t0)
        history["steps"] = step
        if log:
            log(
                f"epoch {epoch + 1}/{tcfg.epochs}: loss {history['loss'][-1]:.4f}, "
                f"{len(losses)} steps, {history['seconds'][-1]:.1f} s"
            )
        if outp is not None:
            _save_checkpoint(
                outp,
                module,
                opt,
                {
                    "epoch": epoch + 1,
                    "history": history,
                    "rng_seed": int(rng.integers(2**31)),
                    "config": cfg.to_dict(),
                    "train_config": asdict(tcfg),
                    "resume_key": resume_key,
                    "data_sha256": fingerprint,
                },
            )
            rng = np.random.default_rng(
                json.loads((outp / "checkpoint.json").read_text())["rng_seed"]
            )
    module.eval()
    seg = Segmenter(torch_runner(module), cfg, {"encoder_weights": weights}, module)
    record = {
        "training": {
            "train_config": asdict(tcfg),
            "key": training_key(items, cfg, tcfg, fingerprint=fingerprint),
            "resume_key": resume_key,
            "data_sha256": fingerprint,
            "n_items": len(items),
            "n_normal": sum(it.label == "normal" for it in items),
            "epochs_run": len(history["loss"]),
            "loss": history["loss"],
            "steps": history["steps"],
        }
    }
    if outp is not None:
        seg.save(outp, record)
    else:
        seg.spec.update(record)
    return seg, history


__all__ = [
    "Item",
    "TrainConfig",
    "augmenter",
    "data_fingerprint",
    "jitter_box",
    "load_items",
    "make_sample",
    "train_segmenter",
    "training_key",
]
