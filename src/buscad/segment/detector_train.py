"""Training of the lesion detector head on cached LiteMedSAM embeddings (PyTorch), and its score rule.

What is trained (:mod:`buscad.segment.detector` describes inference):

- the head (:func:`build_head`) maps LiteMedSAM's ``(256, 64, 64)`` image
  embedding to ``64 x 64`` logits ``z``; loss per batch
  ``BCE(sigmoid z, t) + (1 - mean over lesion images of 2 Σ p t / (Σ p + Σ t + 1))``
  with ``t`` = :func:`~buscad.segment.detector.heat_target` (normal images enter
  the BCE term only), Adam with weight decay, a fixed number of epochs, seeded;
- the score rule (:func:`choose_rule`) on *out-of-fold* proposals: grouped
  folds (:func:`grouped_folds`) each train a head on the other folds and propose
  candidates on their own rows; a proposal is positive when its outline has mask
  IoU >= 0.5 with an expert lesion. A logistic regression of that label on the
  four features gives ``w, b``; the threshold ``t`` maximises
  ``found(t) / lesions - false(t) / images`` over the same rows (ties: the higher
  ``t``), where ``found`` and ``false`` come from the greedy matching of
  :func:`image_outcome` after the whole step-5 selection.

Expert lesions of an image (:func:`lesions_of`): the 8-connected components of
its expert mask that are at least 10 % of the largest one (smaller specks join
no lesion and are ignored).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from buscad.segment.base import Candidate, components
from buscad.segment.detector import (
    ALL_FEATURES,
    EMBED_CHANNELS,
    FORMAT,
    FORMAT_VERSION,
    GRID,
    HEAD_DOC,
    JSON_NAME,
    ONNX_NAME,
    WEIGHTS_NAME,
    DetectorConfig,
    Proposal,
    ScoreRule,
    heat_target,
    mask_iou,
    propose,
    select,
)

#: IoU with an expert lesion above which a candidate has found it.
MATCH_IOU = 0.5


@dataclass
class HeadTrainConfig:
    """Optimisation settings of the head.

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay, seed : as named
    threads : int, optional
        torch intra-op threads.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int | None = None


def build_head(config: DetectorConfig) -> Any:
    """The head of ``config`` (:data:`buscad.segment.detector.HEAD_DOC`), final bias at ``logit(0.01)``."""
    import torch
    from torch import nn

    c, k = config.channels, int(config.pool)
    layers: list[nn.Module] = [nn.AvgPool2d(k)] if k > 1 else []
    if config.normalize:
        layers.append(nn.InstanceNorm2d(EMBED_CHANNELS, affine=False, eps=1e-5))
    layers += [nn.Conv2d(EMBED_CHANNELS, c, 1), nn.ReLU()]
    for d in config.dilations:
        layers += [nn.Conv2d(c, c, 3, padding=int(d), dilation=int(d)), nn.ReLU()]
    last = nn.Conv2d(c, 1, 1)
    with torch.no_grad():
        last.bias.fill_(float(np.log(0.01 / 0.99)))
    layers.append(last)
    if k > 1:
        layers.append(nn.Upsample(scale_factor=k, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


def n_parameters(module: Any) -> int:
    """Number of trainable values of a module."""
    return int(sum(p.numel() for p in module.parameters()))


def train_head(
    embeddings: np.ndarray,
    targets: np.ndarray,
    config: DetectorConfig,
    train: HeadTrainConfig | None = None,
    log: Callable[[str], None] | None = None,
    rows: Sequence[int] | None = None,
) -> tuple[Any, dict]:
    """Train a head on ``(N, 256, 64, 64)`` embeddings (any float dtype) and ``(N, 64, 64)`` targets.

    ``rows`` restricts training to those rows (default: all). With ``config.pool = k > 1``
    the embeddings may also be given already average-pooled, ``(N, 256, 64 / k, 64 / k)``
    (:meth:`EmbeddedSet.pooled`): the head's pooling layer is then skipped in training,
    which gives the same function at a fraction of the memory traffic.

    Returns
    -------
    module : torch.nn.Module
        The trained head (eval mode).
    history : dict
        ``loss`` per epoch, ``steps``, ``cpu_s`` (process CPU time) and ``wall_s``.
    """
    import torch

    tc = train or HeadTrainConfig()
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    module = build_head(config)
    k = int(config.pool)
    net = module[1:] if k > 1 and embeddings.shape[-1] == GRID // k else module
    opt = torch.optim.AdamW(module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    use = np.arange(len(embeddings)) if rows is None else np.asarray(rows, int)
    n = len(use)
    steps_per_epoch = -(-n // tc.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tc.lr, total_steps=max(1, tc.epochs * steps_per_epoch)
    )
    tgt = torch.from_numpy(np.asarray(targets, np.float32))
    hist: dict = {"loss": [], "steps": 0, "n_images": n}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    module.train()
    for epoch in range(tc.epochs):
        order = use[rng.permutation(n)]
        total = 0.0
        for s in range(0, n, tc.batch_size):
            idx = np.sort(order[s : s + tc.batch_size])
            x = torch.from_numpy(np.ascontiguousarray(embeddings[idx])).float()
            t = tgt[idx]
            z = net(x)[:, 0]
            loss = head_loss(z, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            hist["steps"] += 1
        hist["loss"].append(total / n)
        if log:
            log(f"epoch {epoch + 1}/{tc.epochs} loss {total / n:.4f}")
    hist["cpu_s"] = time.process_time() - cpu0
    hist["wall_s"] = time.perf_counter() - wall0
    return module.eval(), hist


def head_loss(z: Any, t: Any) -> Any:
    """``BCE(sigmoid z, t) + 1 - mean_lesion 2 Σ p t / (Σ p + Σ t + 1)`` (module docstring)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(z, t)
    p = torch.sigmoid(z)
    has = t.flatten(1).sum(1) > 0
    if not bool(has.any()):
        return bce
    inter = (p * t).flatten(1).sum(1)
    dice = 2 * inter / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1.0)
    return bce + 1.0 - dice[has].mean()


def head_runner(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    """NumPy ``(N, 256, 64, 64)`` -> logits ``(N, 1, 64, 64)`` through the PyTorch head."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return run


def export_head(module: Any, path: str | os.PathLike[str], opset: int = 17) -> Path:
    """ONNX graph ``embedding (N, 256, 64, 64) -> logits (N, 1, 64, 64)`` (dynamic batch, atomic)."""
    import warnings

    import torch

    from buscad.utils import atomic_path

    p = Path(path)
    module = module.cpu().eval()
    with atomic_path(p) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, EMBED_CHANNELS, GRID, GRID),),
            str(tmp),
            input_names=["embedding"],
            output_names=["logits"],
            dynamic_axes={"embedding": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return p


def save_detector(
    folder: str | os.PathLike[str],
    module: Any,
    config: DetectorConfig,
    rule: ScoreRule,
    encoder_sha256: str,
    extra: dict | None = None,
) -> Path:
    """Write ``detector.safetensors``, ``detector.onnx`` and ``detector.json`` (with their SHA-256).

    Parameters
    ----------
    folder : path-like
        Output folder (created).
    module : torch.nn.Module
        The trained head.
    config : DetectorConfig
        Its architecture and proposal settings.
    rule : ScoreRule
        Score rule and threshold.
    encoder_sha256 : str
        SHA-256 of the LiteMedSAM encoder graph whose embeddings it was trained on.
    extra : dict, optional
        Provenance (training data, record) added to the JSON.
    """
    from safetensors.torch import save_file

    from buscad.utils import atomic_path, atomic_write_json, file_sha256

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    export_head(module, out / ONNX_NAME)
    doc = {
        **(extra or {}),
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "head": HEAD_DOC,
        "n_parameters": n_parameters(module),
        "config": config.to_dict(),
        "rule": rule.to_dict(),
        "encoder_sha256": encoder_sha256,
        "sha256": {n: file_sha256(out / n) for n in (WEIGHTS_NAME, ONNX_NAME)},
    }
    atomic_write_json(out / JSON_NAME, doc)
    return out


def load_head(folder: str | os.PathLike[str]) -> Any:
    """The PyTorch head of a saved detector (its safetensors, checked against the JSON)."""
    from safetensors.torch import load_file

    from buscad.errors import ModelFileError
    from buscad.segment.detector import read_spec
    from buscad.utils import file_sha256

    f = Path(folder)
    spec = read_spec(f)
    w = f / WEIGHTS_NAME
    if not w.is_file():
        raise ModelFileError(w, "detector weights not found")
    if file_sha256(w) != (spec.get("sha256") or {}).get(WEIGHTS_NAME):
        raise ModelFileError(w, f"SHA-256 does not match {JSON_NAME} (file changed?)")
    module = build_head(DetectorConfig.from_dict(spec.get("config") or {}))
    module.load_state_dict(load_file(str(w)))
    return module.eval()


# ------------------------------------------------------------- data and folds
@dataclass
class EmbeddedSet:
    """Images as cached embeddings with their expert masks.

    Attributes
    ----------
    ids : list of str
        Image ids.
    embeddings : numpy.ndarray
        float16 ``(N, 256, 64, 64)``.
    shapes : list of tuple
        ``(H, W)`` of each image.
    masks : list of numpy.ndarray
        Boolean expert masks (all False for normal images).
    targets : numpy.ndarray
        float32 ``(N, 64, 64)`` (:func:`~buscad.segment.detector.heat_target`).
    """

    ids: list[str]
    embeddings: np.ndarray
    shapes: list[tuple[int, int]]
    masks: list[np.ndarray]
    targets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.targets = (
            np.stack([heat_target(m) for m in self.masks]).astype(np.float32)
            if self.masks
            else np.zeros((0, GRID, GRID), np.float32)
        )

    def __len__(self) -> int:
        return len(self.ids)

    def pooled(self, k: int) -> np.ndarray:
        """float32 ``(N, 256, 64 / k, 64 / k)``: each ``k x k`` block averaged (computed once)."""
        cache = self.__dict__.setdefault("_pooled", {})
        if k not in cache:
            n, c, g = len(self), EMBED_CHANNELS, GRID // k
            out = np.empty((n, c, g, g), np.float32)
            for s in range(0, n, 32):
                e = self.embeddings[s : s + 32].astype(np.float32)
                out[s : s + 32] = e.reshape(len(e), c, g, k, g, k).mean(axis=(3, 5))
            cache[k] = out
        return cache[k]

    def train_input(self, config: DetectorConfig) -> np.ndarray:
        """What :func:`train_head` reads for ``config``: the pooled embeddings when ``pool > 1``."""
        return self.pooled(int(config.pool)) if int(config.pool) > 1 else self.embeddings

    def embedding(self, i: int) -> Any:
        """Row ``i`` as a :class:`buscad.segment.medsam.Embedding` (float32)."""
        from buscad.segment.medsam import Embedding, resized_size

        shape = self.shapes[i]
        return Embedding(self.embeddings[i : i + 1].astype(np.float32), resized_size(shape), shape)


def embed_manifest(
    manifest: Any,
    sam: Any,
    cache: str | os.PathLike[str],
    on_skip: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EmbeddedSet:
    """Embed every usable row of a manifest through LiteMedSAM's on-disk cache.

    Lesion rows need a mask (``mask_path``); ``normal`` rows get an empty one. A row
    whose image or mask cannot be read is skipped and reported through ``on_skip``.
    """
    from buscad.segment.base import training_rows

    df = manifest.df
    ids, embs, shapes, masks = [], [], [], []
    t0 = time.perf_counter()
    for i, _label, gray, mask in training_rows(manifest, on_skip):
        emb = sam.embed_cached(gray, cache)
        ids.append(str(df["image_id"].iat[i]))
        embs.append(emb.array[0].astype(np.float16))
        shapes.append(tuple(gray.shape[:2]))
        masks.append(mask.astype(bool))
        if log and len(ids) % 100 == 0:
            log(f"embedded {len(ids)} images ({time.perf_counter() - t0:.0f} s)")
    arr = np.stack(embs) if embs else np.zeros((0, EMBED_CHANNELS, GRID, GRID), np.float16)
    return EmbeddedSet(ids, arr, shapes, masks)  # type: ignore[arg-type]


def grouped_folds(
    groups: Sequence[Any], strata: Sequence[Any], n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Fold ``0 .. n_folds - 1`` per row: groups never split, strata balanced (StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    g = np.asarray([str(v) for v in groups])
    y = np.asarray([str(v) for v in strata])
    k = min(n_folds, len(set(g)))
    folds = np.zeros(len(g), int)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, test) in enumerate(cv.split(np.zeros(len(g)), y, g)):
        folds[test] = f
    return folds


# ------------------------------------------------------- proposals and scores
def lesions_of(mask: np.ndarray, min_share: float = 0.1) -> list[np.ndarray]:
    """Expert lesions: 8-connected components at least ``min_share`` of the largest one's area."""
    lab, n = components(np.asarray(mask, bool))
    if not n:
        return []
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return [lab == k + 1 for k in range(n) if areas[k] >= min_share * areas.max()]


@dataclass
class ImageProposals:
    """One image's scored-to-be proposals and their overlaps with each other and with the truth.

    Attributes
    ----------
    proposals : list of Proposal
    lesion_iou : numpy.ndarray
        ``(P, L)`` mask IoU of each proposal with each expert lesion.
    pair_iou : numpy.ndarray
        ``(P, P)`` mask IoU between proposals.
    """

    proposals: list[Proposal]
    lesion_iou: np.ndarray
    pair_iou: np.ndarray

    @property
    def n_lesions(self) -> int:
        """Expert lesions in the image."""
        return int(self.lesion_iou.shape[1])

    @classmethod
    def build(cls, proposals: list[Proposal], mask: np.ndarray) -> ImageProposals:
        """Overlaps of ``proposals`` with the lesions of ``mask`` (:func:`lesions_of`)."""
        les = lesions_of(mask)
        ms = [p.candidate.mask for p in proposals]
        li = np.array([[mask_iou(m, t) for t in les] for m in ms]).reshape(len(ms), len(les))
        pi = np.array([[mask_iou(a, b) for b in ms] for a in ms]).reshape(len(ms), len(ms))
        return cls(proposals, li, pi)

    def features(self) -> np.ndarray:
        """``(P, len(ALL_FEATURES))`` features."""
        return (
            np.stack([p.features for p in self.proposals])
            if self.proposals
            else np.zeros((0, len(ALL_FEATURES)))
        )

    def kept(
        self, rule: ScoreRule, config: DetectorConfig, threshold: float | None = None
    ) -> list[int]:
        """Indices of the proposals the rule keeps, best first (:func:`~buscad.segment.detector.select`)."""
        if not self.proposals:
            return []
        t = rule.threshold if threshold is None else threshold
        return select(
            rule.score(self.features()), lambda i, j: float(self.pair_iou[i, j]), t, config
        )


def image_outcome(lesion_iou: np.ndarray, kept: Sequence[int]) -> tuple[int, int]:
    """``(found, false)``: greedy one-to-one matching in rank order at mask IoU >= 0.5.

    Each kept candidate takes the unmatched lesion it overlaps most if that IoU is
    at least :data:`MATCH_IOU`; otherwise it is a false candidate.
    """
    used: set[int] = set()
    false = 0
    for i in kept:
        best, best_v = -1, MATCH_IOU
        for j in range(lesion_iou.shape[1]):
            if j not in used and lesion_iou[i, j] >= best_v:
                best, best_v = j, float(lesion_iou[i, j])
        if best < 0:
            false += 1
        else:
            used.add(best)
    return len(used), false


def sweep(
    images: Sequence[ImageProposals], rule: ScoreRule, config: DetectorConfig, threshold: float
) -> dict[str, float]:
    """``found`` / lesions, ``false`` / images and the share of lesion-free images with no candidate."""
    found = false = lesions = free = free_none = 0
    for im in images:
        f, x = image_outcome(im.lesion_iou, im.kept(rule, config, threshold))
        found, false, lesions = found + f, false + x, lesions + im.n_lesions
        if im.n_lesions == 0:
            free += 1
            free_none += int(x == 0)
    n = max(len(images), 1)
    return {
        "found_share": found / max(lesions, 1),
        "false_per_image": false / n,
        "no_lesion_specificity": free_none / free if free else float("nan"),
    }


#: Default of :func:`choose_rule`'s settings: take the detector config's.
FROM_CONFIG: Any = object()


def choose_rule(
    images: Sequence[ImageProposals],
    config: DetectorConfig,
    C: float = 1.0,
    features: Sequence[str] = FROM_CONFIG,
    max_false: float | None = FROM_CONFIG,
    min_specificity: float | None = FROM_CONFIG,
) -> ScoreRule:
    """Logistic score of ``features`` and threshold from out-of-fold proposals (module docstring).

    ``features``, ``max_false`` and ``min_specificity`` default to the config's
    ``score_features``, ``rule_max_false`` and ``rule_min_specificity`` (None: unbounded).

    Threshold: without ``max_false`` and ``min_specificity``, the one maximising
    ``found / lesions - false / images``; with them, the one maximising
    ``found / lesions`` among those with ``false / images <= max_false`` and a share
    of lesion-free images without a candidate ``>= min_specificity`` (the highest
    threshold when none qualifies).

    The features are standardised (``(f - mean) / sd`` over the proposals) for the
    L2-regularised fit (inverse strength ``C``) and the weights mapped back to the raw
    features. Without proposals of both classes the score is the constant 0.5 (the
    threshold then keeps all or none, whichever the objective prefers).
    """
    from sklearn.linear_model import LogisticRegression

    if features is FROM_CONFIG:
        features = config.score_features
    if max_false is FROM_CONFIG:
        max_false = config.rule_max_false
    if min_specificity is FROM_CONFIG:
        min_specificity = config.rule_min_specificity
    names = list(features)
    cols = [ALL_FEATURES.index(f) for f in names]
    X = np.concatenate([im.features() for im in images] + [np.zeros((0, len(ALL_FEATURES)))])
    X = X[:, cols]
    y = np.concatenate(
        [
            (im.lesion_iou.max(axis=1) >= MATCH_IOU)
            if im.n_lesions
            else np.zeros(len(im.proposals), bool)
            for im in images
        ]
        + [np.zeros(0, bool)]
    ).astype(int)
    if len(set(y.tolist())) < 2:  # no proposal, or one class: a constant score 0.5
        rule = ScoreRule([0.0] * len(names), 0.0, 0.5, features=names)
        note = "single class: constant score"
    else:
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        lr = LogisticRegression(C=C, max_iter=2000).fit((X - mu) / sd, y)
        w = lr.coef_[0] / sd
        b = float(lr.intercept_[0] - (lr.coef_[0] * mu / sd).sum())
        rule = ScoreRule([float(v) for v in w], b, 0.5, features=names)
        note = f"logistic regression (L2, C={C}, standardised features)"
    grid = np.unique(np.round(np.concatenate([rule.score(X), np.linspace(0, 1, 101)]), 4))
    # kept(t) is the prefix of kept(0) with score >= t (select() only stops at the
    # threshold), and the greedy matching is incremental: one pass per image.
    curves = []
    for im in images:
        kept = im.kept(rule, config, 0.0)
        sc = rule.score(im.features())[kept] if kept else np.zeros(0)
        f = [image_outcome(im.lesion_iou, kept[:n]) for n in range(len(kept) + 1)]
        curves.append((sc, np.array(f).reshape(-1, 2), im.n_lesions))
    lesions = max(sum(c[2] for c in curves), 1)
    found, false, clean = np.zeros(len(grid)), np.zeros(len(grid)), np.zeros(len(grid))
    for sc, f, nl in curves:
        n = (sc[None, :] >= grid[:, None]).sum(axis=1)
        found, false = found + f[n, 0], false + f[n, 1]
        if nl == 0:
            clean += f[n, 1] == 0
    n_free = sum(c[2] == 0 for c in curves)
    if max_false is None and min_specificity is None:
        j = found / lesions - false / max(len(images), 1)
        objective = "max found/lesions - false/images (ties: higher threshold)"
    else:
        ok = np.ones(len(grid), bool)
        if max_false is not None:
            ok &= false / max(len(images), 1) <= max_false
        if min_specificity is not None and n_free:
            ok &= clean / n_free >= min_specificity
        ok[-1] = True  # the highest threshold is always allowed
        j = np.where(ok, found / lesions, -np.inf)
        objective = (
            f"max found/lesions subject to false/images <= {max_false} and lesion-free images "
            f"without a candidate >= {min_specificity} (ties: higher threshold)"
        )
    best = len(j) - 1 - int(np.argmax(j[::-1]))  # ties: the higher threshold
    best_t = float(grid[best]) if len(grid) else 0.5
    rule.threshold = best_t
    at = sweep(images, rule, config, best_t)
    rule.doc = {
        "score": note,
        "fitted_on": "out-of-fold proposals of grouped cross-validation folds",
        "label": f"outline mask IoU >= {MATCH_IOU} with an expert lesion",
        "threshold_objective": objective,
        "n_images": len(images),
        "n_proposals": len(y),
        "n_positive": int(y.sum()),
        "at_threshold": at,
    }
    return rule


def outline_fn(sam: Any, emb: Any) -> Callable[[tuple[int, int, int, int]], Candidate]:
    """LiteMedSAM's box outline on a fixed embedding (as :class:`~buscad.segment.infer.Segmenter` draws it)."""
    from buscad.segment.base import sigmoid
    from buscad.segment.infer import box_candidate

    def outline(box: tuple[int, int, int, int]) -> Candidate:
        logit, iou = sam.decode(emb, box)
        return box_candidate(sigmoid(logit), box, 0.5, iou)

    return outline


def proposals_for(
    data: EmbeddedSet,
    rows: Sequence[int],
    heads: Callable[[np.ndarray], np.ndarray],
    sam: Any,
    config: DetectorConfig,
    batch: int = 16,
) -> dict[int, ImageProposals]:
    """Proposals of ``rows`` from a head runner (``heads(x) -> logits``), with their overlaps."""
    from buscad.segment.base import sigmoid

    out: dict[int, ImageProposals] = {}
    rows = list(rows)
    for s in range(0, len(rows), batch):
        idx = rows[s : s + batch]
        heat = sigmoid(heads(data.embeddings[idx].astype(np.float32))[:, 0])
        for k, i in enumerate(idx):
            props = propose(heat[k], data.shapes[i], outline_fn(sam, data.embedding(i)), config)
            out[i] = ImageProposals.build(props, data.masks[i])
    return out


@dataclass
class FitResult:
    """Outcome of :func:`fit_detector`.

    Attributes
    ----------
    module : torch.nn.Module
        The head trained on all rows.
    rule : ScoreRule
        Chosen on the out-of-fold proposals.
    folds : numpy.ndarray
        Fold of each row.
    oof : dict
        Row -> :class:`ImageProposals` from the head that did not see the row's fold.
    record : dict
        Training record (folds, CPU seconds of every training, losses, the rule's provenance).
    """

    module: Any
    rule: ScoreRule
    folds: np.ndarray
    oof: dict[int, ImageProposals]
    record: dict


def fit_detector(
    data: EmbeddedSet,
    groups: Sequence[Any],
    strata: Sequence[Any],
    sam: Any,
    config: DetectorConfig | None = None,
    train: HeadTrainConfig | None = None,
    n_folds: int = 5,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Grouped cross-validation for the score rule, then the head on all rows.

    Parameters
    ----------
    data : EmbeddedSet
        Training images (lesions and normals).
    groups : sequence
        Group of each row (near-duplicates / patients): a group is never split.
    strata : sequence
        Stratum of each row (e.g. the label) balanced over the folds.
    sam : MedSAM
        LiteMedSAM, to outline the out-of-fold proposals.
    config, train : optional
        Detector and optimisation settings.
    n_folds : int
        Folds of the grouped cross-validation.
    """
    cfg = config or DetectorConfig()
    tc = train or HeadTrainConfig()
    say = log or (lambda _m: None)
    folds = grouped_folds(groups, strata, n_folds, tc.seed)
    oof: dict[int, ImageProposals] = {}
    runs = []
    for k in range(int(folds.max()) + 1):
        tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        m, h = train_head(data.train_input(cfg), data.targets, cfg, tc, rows=tr)
        oof.update(proposals_for(data, te, head_runner(m), sam, cfg))
        runs.append({"fold": k, "n_train": len(tr), "cpu_s": h["cpu_s"], "loss": h["loss"][-1]})
        say(f"fold {k + 1}: trained on {len(tr)} images ({h['cpu_s']:.0f} s CPU)")
    rule = choose_rule([oof[i] for i in range(len(data))], cfg)
    say(f"score threshold {rule.threshold:.3f}: {rule.doc['at_threshold']}")
    module, h = train_head(data.train_input(cfg), data.targets, cfg, tc)
    say(f"final head: {len(data)} images ({h['cpu_s']:.0f} s CPU)")
    record = {
        "n_images": len(data),
        "n_lesion_images": int(sum(bool(m.any()) for m in data.masks)),
        "n_folds": int(folds.max()) + 1,
        "train": {k: v for k, v in vars(tc).items()},
        "cv_runs": runs,
        "final": {"cpu_s": h["cpu_s"], "wall_s": h["wall_s"], "loss": h["loss"]},
        "cpu_s_total": float(sum(r["cpu_s"] for r in runs) + h["cpu_s"]),
    }
    return FitResult(module, rule, folds, oof, record)


__all__ = [
    "EmbeddedSet",
    "FitResult",
    "HeadTrainConfig",
    "ImageProposals",
    "build_head",
    "choose_rule",
    "embed_manifest",
    "export_head",
    "fit_detector",
    "grouped_folds",
    "head_loss",
    "head_runner",
    "image_outcome",
    "lesions_of",
    "load_head",
    "n_parameters",
    "outline_fn",
    "proposals_for",
    "save_detector",
    "sweep",
    "train_head",
]
