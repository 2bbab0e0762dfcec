"""One training loop for every backbone, plus batch scoring.

:func:`train_model` fine-tunes any registered backbone with the studies' head:
AdamW, a per-step schedule of linear warm-up then cosine decay, class-balanced
cross-entropy (class weight ``w_c = N / (2 n_c)``), early stopping on the
validation AUC, deterministic seeds, CPU or CUDA (automatic mixed precision on
CUDA), a progress bar, per-epoch metrics in ``metrics.csv``, and a resumable
state (``last.*``) written after every epoch. The best epoch (highest validation
AUC) is saved as the checkpoint ``model.safetensors`` + ``model.json``.

Distributed data-parallel training: launched by ``torchrun`` (``WORLD_SIZE`` >
1 in the environment), :func:`train_model` joins the process group (NCCL on
CUDA, gloo on CPU), wraps the model in ``DistributedDataParallel`` and gives
each rank its share of every global batch through a ``DistributedSampler``
over the epoch's permutation (the same on every rank: identical seeds), so
global batch ``k`` holds the same images as in one process; ``batch_size``
stays the *global* batch (``batch_size // world`` per rank). On CUDA the
BatchNorm layers become ``SyncBatchNorm`` (statistics of the global batch);
on CPU (gloo) each rank normalises its own share, so the loss curve matches
one process within tolerance rather than exactly. BatchNorm
buffers are broadcast from rank 0 before validation, so every rank takes the
same early-stopping decision; only rank 0 writes ``metrics.csv``, the
checkpoints and the progress. See docs/scale.md for the launch lines.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import buscad._compat  # noqa: F401
from buscad.data.manifest import Manifest
from buscad.errors import BuscadError, ConfigError, ManifestError
from buscad.evaluate.delong import roc_auc
from buscad.models import checkpoint as ckpt
from buscad.models.heads import BuscadClassifier
from buscad.models.preprocess import Augment, Preprocessor, UltrasoundAugment
from buscad.models.registry import create_backbone, get_spec
from buscad.progress import Progress, track
from buscad.utils import atomic_write_table, stable_hash


@dataclass
class TrainConfig:
    """Settings of one training run (all JSON-serialisable; stored in provenance).

    ``lr`` is AdamW's peak learning rate, reached after ``warmup_epochs`` of linear
    warm-up and then decayed by a cosine to ``lr * min_lr_ratio`` at the last step.
    ``patience`` epochs without a better validation AUC stop the run.
    ``input_size=None`` uses the backbone's default; ``max_steps`` caps the
    optimisation steps (tests, smoke runs). ``progress``: True shows the
    epochs (loss, validation AUC, ETA) and batches, False hides them, None
    (default) shows them inside :func:`buscad.progress.reporting` (the command
    line, a study) only.

    The transfer recipe (every option off by default, and an option left off
    leaves the run, its hash and its results exactly as before):

    ``layer_decay``
        Layer-wise learning-rate decay: the head trains at ``lr``, the backbone's
        stage at depth ``d`` from the head at ``lr * layer_decay ** d`` (the top
        stage ``d = 1`` ... the stem). Stages of a timm backbone come from timm's
        ``group_matcher(coarse=True)`` (:func:`timm.models.group_parameters`),
        others from the trunk's parameterised children (:func:`layer_groups`).
        None (or 1) is off.
    ``mixup``
        Mixup's Beta(alpha, alpha) parameter
        (:class:`torchvision.transforms.v2.MixUp`): each batch is mixed with itself
        rolled by one and the labels become the mixed one-hot vectors. 0 is off.
    ``us_augment``
        Ultrasound augmentations of the ``usaugment`` package plus gain, speckle
        and resolution loss (:class:`buscad.models.preprocess.UltrasoundAugment`),
        on the training crops only, before :class:`Augment`.
    ``balance_by``
        A manifest column (e.g. ``cohort``): every epoch draws its
        ``len(train)`` samples with replacement, with weights that give each
        (column value x class) cell the same mass (:func:`balanced_weights`);
        the loss's class weights are then off (the sampling already balances).
    """

    backbone: str = "efficientnet_lite0"
    pretrained: str | None = "imagenet"
    weights_file: str | None = None
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    patience: int = 6
    class_balanced: bool = True
    label_smoothing: float = 0.0
    dropout: float = 0.5
    hidden: int = 512
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    augment: bool = True
    roi: str = "roi"
    margin: float = 0.1
    input_size: int | None = None
    val_fraction: float = 0.15
    max_steps: int | None = None
    num_threads: int | None = None
    progress: bool | None = None
    layer_decay: float | None = None
    mixup: float = 0.0
    us_augment: bool = False
    balance_by: str | None = None

    def __post_init__(self) -> None:
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(
                "layer_decay", f"must be in (0, 1] (None: off), got {self.layer_decay}"
            )
        if not 0 <= self.mixup <= 10:
            raise ConfigError("mixup", f"alpha must be in [0, 10] (0: off), got {self.mixup}")
        if self.balance_by is not None and not str(self.balance_by).strip():
            raise ConfigError("balance_by", "give a manifest column name (None: off)")

    def identity(self) -> dict:
        """The settings that define the run (hashes, provenance of a study's stages).

        The recipe options (``layer_decay``, ``mixup``, ``us_augment``,
        ``balance_by``) appear only when switched on, so runs and caches made
        before they existed keep their hashes.
        """
        d = asdict(self)
        for k, off in RECIPE_OFF.items():
            if d[k] == off or (k == "layer_decay" and d[k] == 1.0):
                del d[k]
        return d

    def preprocessor(self) -> Preprocessor:
        """The preprocessing for this backbone and these settings."""
        spec = get_spec(self.backbone)
        return Preprocessor(
            roi=self.roi,
            margin=self.margin,
            input_size=self.input_size or spec.input_size,
            mean=spec.mean,
            std=spec.std,
        )


#: The recipe options and their "off" values (see :meth:`TrainConfig.identity`).
RECIPE_OFF: dict[str, object] = {
    "layer_decay": None,
    "mixup": 0.0,
    "us_augment": False,
    "balance_by": None,
}


@dataclass
class TrainResult:
    """What :func:`train_model` returns."""

    model: BuscadClassifier
    preprocessor: Preprocessor
    history: pd.DataFrame
    best_epoch: int
    best_val_auc: float
    checkpoint: Path | None
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------- data helpers
def load_crops(manifest: Manifest, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Preprocessed uint8 crops ``(N, S, S)`` for every readable row.

    Returns
    -------
    crops : numpy.ndarray
        Crops of the rows that could be read.
    keep : numpy.ndarray
        Positional indices (into ``manifest``) of those rows.
    skipped : list of str
        One ``"image_id: problem"`` line per skipped row.
    """
    crops, keep, skipped = [], [], []
    for i in track(range(len(manifest)), "reading images", "images", closing=False):
        try:
            crops.append(pre.load(manifest.image_path(i), manifest.mask_paths(i)))
            keep.append(i)
        except BuscadError as exc:
            skipped.append(f"{manifest.df['image_id'].iat[i]}: {exc}")
    s = pre.input_size
    arr = np.stack(crops) if crops else np.zeros((0, s, s), np.uint8)
    return arr, np.asarray(keep, dtype=int), skipped


def distributed_context(device: str = "auto") -> tuple[int, int, int, bool]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1.

    Returns
    -------
    rank, world, local_rank : int
        0, 1, 0 without ``torchrun``.
    created : bool
        This call initialised the process group (the caller destroys it).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, 0, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), local, created


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict_crops(
    model: nn.Module,
    crops: np.ndarray,
    pre: Preprocessor,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Malignant probability of each uint8 crop (model in eval mode)."""
    dev = torch.device(device)
    model.eval().to(dev)
    out = []
    for i in range(0, len(crops), batch_size):
        x = pre(crops[i : i + batch_size]).to(dev)
        out.append(torch.softmax(model(x).float(), 1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def predict_scores(
    model: nn.Module,
    data: Manifest | Sequence[str | os.PathLike[str]] | np.ndarray,
    preprocessor: Preprocessor,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """AI scores (malignant probability) for a manifest, image paths or crops.

    Parameters
    ----------
    data : Manifest, sequence of paths, or numpy.ndarray
        A manifest (masks used in ROI mode), image files (``whole`` mode only), or
        already preprocessed uint8 crops ``(N, S, S)``.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` scores; NaN for rows that could not be read (a manifest's
        unreadable images are skipped, not fatal).
    """
    if isinstance(data, np.ndarray):
        return predict_crops(model, data, preprocessor, batch_size, device)
    if isinstance(data, Manifest):
        crops, keep, _ = load_crops(data, preprocessor)
        scores = np.full(len(data), np.nan)
        scores[keep] = predict_crops(model, crops, preprocessor, batch_size, device)
        return scores
    paths = list(data)
    arrs, keep = [], []
    for i, p in enumerate(paths):
        try:
            arrs.append(preprocessor.load(p))
            keep.append(i)
        except BuscadError:
            continue
    scores = np.full(len(paths), np.nan)
    if arrs:
        scores[keep] = predict_crops(model, np.stack(arrs), preprocessor, batch_size, device)
    return scores


def split_train_val(
    manifest: Manifest, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positional train/validation indices of a manifest's training rows.

    Rows with ``split == "val"`` are the validation set when there are any;
    otherwise a stratified hold-out of ``val_fraction`` of the groups
    (``group`` column if present, else ``patient_id``, else ``image_id``) is drawn
    with ``seed``, so no group is on both sides. ``split`` values ``train``/``val``
    are used; a manifest without ``split`` is all training data.
    """
    df = manifest.df
    split = df["split"].astype(str).str.lower() if "split" in df else pd.Series("train", df.index)
    tr = np.flatnonzero(split.to_numpy() == "train")
    va = np.flatnonzero(split.to_numpy() == "val")
    if len(va):
        return tr, va
    gcol = next((c for c in ("group", "patient_id", "image_id") if c in df.columns), "image_id")
    groups = df[gcol].astype(str).to_numpy()[tr]
    y = manifest.y[tr]
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(tr), bool)
    for cls in (0, 1):
        g = np.unique(groups[y == cls])
        rng.shuffle(g)
        k = max(1, round(val_fraction * len(g))) if len(g) > 1 else 0
        val_mask |= np.isin(groups, g[:k])
    return tr[~val_mask], tr[val_mask]


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy ``-mean(y log p + (1 - y) log(1 - p))``, p clipped to 1e-7."""
    if len(y) == 0:
        return float("nan")
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _lr_lambda(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


# ------------------------------------------------------------ recipe helpers
def layer_groups(backbone: nn.Module) -> list[list[str]]:
    """The backbone's parameter names by stage, from the stem (first) to the top (last).

    A timm model's stages are its ``group_matcher(coarse=True)`` groups (grouped by
    :func:`timm.models.group_parameters`: stem, each block stage, the head
    convolution); any other trunk's are its parameterised children in order of
    registration, a single parameterised child (``features``) being opened into
    its children.
    """
    if hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(backbone, backbone.group_matcher(coarse=True))
        return [list(v) for _, v in sorted(grouped.items(), key=lambda kv: kv[0])]
    prefix, module = "", backbone
    while True:
        kids = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        if len(kids) != 1 or not list(kids[0][1].children()):
            break
        prefix, module = f"{prefix}{kids[0][0]}.", kids[0][1]
    own = [f"{prefix}{p}" for p, _ in module.named_parameters(recurse=False)]
    stages = [[f"{prefix}{n}.{p}" for p, _ in m.named_parameters()] for n, m in kids]
    return [own, *stages] if own else stages


def layer_decay_param_groups(
    model: BuscadClassifier, lr: float, weight_decay: float, decay: float
) -> list[dict]:
    """AdamW parameter groups with layer-wise learning-rate decay.

    The head gets ``lr``; the backbone stage at depth ``d`` from the head (the top
    stage ``d = 1``, the stem ``d = len(stages)``) gets ``lr * decay ** d``. Each
    group also carries ``lr_scale`` (``decay ** d``) and ``depth``.
    """
    stages = layer_groups(model.backbone)
    params = dict(model.backbone.named_parameters())
    groups = [
        {
            "params": [p for p in model.head.parameters() if p.requires_grad],
            "lr": lr,
            "weight_decay": weight_decay,
            "lr_scale": 1.0,
            "depth": 0,
        }
    ]
    seen: set[str] = set()
    for depth, names in enumerate(reversed(stages), start=1):
        ps = [params[n] for n in names if n in params and params[n].requires_grad]
        seen.update(names)
        if ps:
            scale = decay**depth
            groups.append(
                {
                    "params": ps,
                    "lr": lr * scale,
                    "weight_decay": weight_decay,
                    "lr_scale": scale,
                    "depth": depth,
                }
            )
    rest = [p for n, p in params.items() if n not in seen and p.requires_grad]
    if rest:  # parameters no stage claims train with the top stage
        groups[min(1, len(groups) - 1)]["params"].extend(rest)
    return groups


def balanced_weights(groups: Sequence[object], y: np.ndarray) -> np.ndarray:
    """Sampling weights giving every (group x class) cell the same total mass.

    ``w_i = 1 / (K * n_cell(i))`` with ``K`` non-empty cells, so the weights sum to 1
    and each cell's sum is ``1 / K``. Missing group values form their own group.
    """
    g = pd.Series(list(groups), dtype=object).fillna("<missing>").astype(str).to_numpy()
    cell = pd.Series([f"{a}\x00{b}" for a, b in zip(g, np.asarray(y), strict=True)])
    counts = cell.map(cell.value_counts()).to_numpy(dtype=float)
    k = cell.nunique()
    return 1.0 / (k * counts)


# --------------------------------------------------------------------- training
def train_model(
    manifest: Manifest,
    config: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    train_idx: np.ndarray | None = None,
    val_idx: np.ndarray | None = None,
    resume: bool = True,
) -> TrainResult:
    """Fine-tune ``config.backbone`` on a manifest's training rows.

    Parameters
    ----------
    manifest : Manifest
        Benign/malignant rows (other labels are dropped). Training rows are
        ``split == "train"`` (all rows when there is no ``split`` column);
        validation rows as in :func:`split_train_val`.
    config : TrainConfig
        Hyper-parameters.
    out_dir : path-like, optional
        Where ``metrics.csv``, ``last.*`` (resumable state) and the best
        checkpoint ``model.*`` go. None keeps everything in memory.
    train_idx, val_idx : numpy.ndarray, optional
        Positional rows overriding the split.
    resume : bool
        Continue from ``out_dir/last.*`` when present and its config matches.

    Returns
    -------
    TrainResult
    """
    manifest = manifest.lesions()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if train_idx is None or val_idx is None:
        train_idx, val_idx = split_train_val(manifest, config.val_fraction, config.seed)
    if len(train_idx) == 0:
        raise ManifestError(manifest.source, "no training rows (split == 'train')")
    pre = config.preprocessor()
    rank, world, local_rank, created_group = distributed_context(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)  # noqa: NPY002
    crops, keep, skipped = load_crops(manifest, pre)
    pos = {int(k): j for j, k in enumerate(keep)}
    tr = np.array([pos[i] for i in train_idx if int(i) in pos], dtype=int)
    va = np.array([pos[i] for i in val_idx if int(i) in pos], dtype=int)
    y_all = manifest.y[keep]
    ytr, yva = y_all[tr], y_all[va]
    if len(np.unique(ytr)) < 2:
        raise ManifestError(manifest.source, "training rows need both benign and malignant cases")
    sample_w: torch.Tensor | None = None
    if config.balance_by:
        if config.balance_by not in manifest.df.columns:
            raise ManifestError(
                manifest.source,
                f"balance_by: no column {config.balance_by!r} "
                f"(columns: {', '.join(map(str, manifest.df.columns))})",
            )
        cells = manifest.df[config.balance_by].to_numpy()[keep][tr]
        sample_w = torch.as_tensor(balanced_weights(cells, ytr), dtype=torch.float64)

    dev = resolve_device(config.device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
    use_amp = config.amp and dev.type == "cuda"
    model = create_backbone(
        config.backbone,
        pretrained=config.pretrained,
        weights_file=config.weights_file,
        input_size=pre.input_size,
        hidden=config.hidden,
        dropout=config.dropout,
    ).to(dev)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if dev.type == "cuda":  # BatchNorm over the global batch (SyncBatchNorm is CUDA-only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

        net = DistributedDataParallel(
            model, device_ids=[local_rank] if dev.type == "cuda" else None
        )
    per_rank = max(1, config.batch_size // world)
    if config.layer_decay is not None and config.layer_decay < 1:
        opt = torch.optim.AdamW(
            layer_decay_param_groups(model, config.lr, config.weight_decay, config.layer_decay),
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        _lr_lambda(total, int(config.warmup_epochs * steps_per_epoch), config.min_lr_ratio),
    )
    counts = np.bincount(ytr, minlength=2).astype(float)
    weight = (
        torch.tensor(len(ytr) / (2 * counts), dtype=torch.float32, device=dev)
        if config.class_balanced and sample_w is None  # balanced sampling replaces the weights
        else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    aug = Augment() if config.augment else None
    us_aug = UltrasoundAugment() if config.us_augment else None
    mixup = None
    if config.mixup > 0:
        from torchvision.transforms.v2 import MixUp

        mixup = MixUp(alpha=config.mixup, num_classes=2)
    gen = torch.Generator().manual_seed(config.seed)
    cfg_hash = stable_hash({**config.identity(), "progress": None, "n_train": len(tr)})
    out = Path(out_dir) if out_dir is not None else None

    history: list[dict] = []
    start_epoch, step = 0, 0
    best_auc, best_epoch, bad_epochs = -math.inf, -1, 0
    best_state: dict | None = None
    if out is not None and resume:
        st = ckpt.load_training_state(out / "last")
        if st is not None and st[1].get("config_hash") == cfg_hash:
            tensors, meta = st
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            ckpt.optimizer_from_flat(opt, tensors, meta["optimizer"])
            sched.load_state_dict(meta["scheduler"])
            gen.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors["rng.torch"])
            start_epoch, step = meta["epoch"] + 1, meta["step"]
            best_auc, best_epoch, bad_epochs = meta["best_auc"], meta["best_epoch"], meta["bad"]
            history = meta["history"]
            if (out / "model.json").is_file():
                best_state = ckpt.load_checkpoint(out / "model")[0].state_dict()
            if meta.get("stopped"):
                start_epoch = config.epochs

    progress = False if rank != 0 else config.progress
    stop = bool(config.max_steps and step >= config.max_steps)
    epochs = Progress(
        config.epochs - start_epoch,
        f"{config.backbone} training",
        "epochs",
        enabled=progress,
        every=True,
    )
    for epoch in range(start_epoch, config.epochs):
        if stop:
            break
        model.train()
        t0 = time.perf_counter()
        if sample_w is not None:  # (balance_by column x class)-balanced draw, with replacement
            perm = torch.multinomial(sample_w, len(tr), replacement=True, generator=gen).numpy()
        else:
            perm = torch.randperm(len(tr), generator=gen).numpy()
        if world > 1:  # this rank's share of every global batch (same perm on every rank)
            from torch.utils.data import DistributedSampler

            share = DistributedSampler(
                range(len(perm)), num_replicas=world, rank=rank, shuffle=False
            )
            perm = perm[list(share)]
        losses = []
        bar = Progress(
            -(-len(perm) // per_rank),
            f"{config.backbone} epoch {epoch + 1}/{config.epochs}",
            "batches",
            enabled=progress,
            closing=False,
        )
        for b in range(0, len(perm), per_rank):
            idx = tr[perm[b : b + per_rank]]
            if len(idx) < 2 and len(tr) >= 2:
                continue  # BatchNorm needs 2+ samples
            x = pre.to_tensor(crops[idx])
            if us_aug is not None:
                x = us_aug(x, gen)
            if aug is not None:
                x = aug(x, gen)
            yb = torch.as_tensor(y_all[idx], dtype=torch.long)
            if mixup is not None:  # soft targets: the mixed one-hot labels
                x, yb = mixup(x, yb)
            x = pre.normalise(x).to(dev, non_blocking=True)
            yb = yb.to(dev)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(net(x).float(), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            lv = loss.detach().float()
            if world > 1:  # the mean of the ranks' losses: the loss of the global batch
                import torch.distributed as dist

                dist.all_reduce(lv)
                lv = lv / world
            losses.append(float(lv))
            bar.update(loss=losses[-1])
            if config.max_steps and step >= config.max_steps:
                stop = True
                break
        bar.close()
        if world > 1:  # same BatchNorm statistics everywhere -> same validation on every rank
            import torch.distributed as dist

            for buf in model.buffers():
                dist.broadcast(buf, 0)
        val_scores = predict_crops(model, crops[va], pre, 64, dev) if len(va) else np.zeros(0)
        val_auc = roc_auc(yva, val_scores) if len(np.unique(yva)) == 2 else float("nan")
        val_loss = _log_loss(yva, val_scores)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss,
            "val_auc": val_auc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        score = val_auc if not math.isnan(val_auc) else -row["train_loss"]
        improved = score > best_auc
        if improved:
            best_auc, best_epoch, bad_epochs = score, epoch + 1, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            bad_epochs += 1
        if bad_epochs >= config.patience:
            stop = True
        epochs.update(loss=row["train_loss"], **{"val AUC": val_auc})
        if out is not None and rank == 0:
            atomic_write_table(pd.DataFrame(history), out / "metrics.csv")
            if improved:
                _save_best(model, out, pre, config, manifest, epoch + 1, best_auc)
            mt, meta_opt = ckpt.optimizer_to_flat(opt)
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors.update(mt)
            tensors["rng.generator"] = gen.get_state()
            tensors["rng.torch"] = torch.get_rng_state()
            ckpt.save_training_state(
                out / "last",
                tensors,
                {
                    "config_hash": cfg_hash,
                    "epoch": epoch,
                    "step": step,
                    "best_auc": best_auc,
                    "best_epoch": best_epoch,
                    "bad": bad_epochs,
                    "history": history,
                    "optimizer": meta_opt,
                    "scheduler": sched.state_dict(),
                    "stopped": stop,
                },
            )
    epochs.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written its files
        if created_group:
            dist.destroy_process_group()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        preprocessor=pre,
        history=pd.DataFrame(history),
        best_epoch=best_epoch,
        best_val_auc=float(best_auc) if best_epoch > 0 else float("nan"),
        checkpoint=(out / "model.json") if out is not None and best_epoch > 0 else None,
        skipped=skipped,
    )


def _save_best(
    model: BuscadClassifier,
    out: Path,
    pre: Preprocessor,
    config: TrainConfig,
    manifest: Manifest,
    epoch: int,
    val_auc: float,
) -> None:
    ckpt.save_checkpoint(
        model,
        out / "model",
        {
            "provenance": {
                "training": {
                    "config": asdict(config),
                    "manifest": str(manifest.source),
                    "n_images": len(manifest),
                    "best_epoch": epoch,
                    "val_auc": val_auc,
                }
            }
        },
        preprocessor=pre,
    )


def parse_backbones(text: str) -> list[str]:
    """Comma-separated backbone names, validated against the registry."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError("--backbones", "no backbone given")
    return [get_spec(n).name for n in names]


__all__ = [
    "RECIPE_OFF",
    "TrainConfig",
    "TrainResult",
    "balanced_weights",
    "layer_decay_param_groups",
    "layer_groups",
    "load_crops",
    "predict_crops",
    "predict_scores",
    "split_train_val",
    "train_model",
]
