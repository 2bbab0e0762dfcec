"""Automatic lesion candidates from LiteMedSAM's image embedding: a small heat-map head (no PyTorch).

The detector reuses the image embedding LiteMedSAM computes anyway
(:meth:`buscad.segment.medsam.MedSAM.embed`, float32 ``(1, 256, 64, 64)`` of the
256-px padded image) and adds a tiny convolutional head (:data:`HEAD_DOC`) that
predicts a ``64 x 64`` lesion heat-map ``h = sigmoid(head(embedding))``. Its
training target (:func:`heat_target`) is the expert mask in the same padded
256-px frame, area-averaged to ``64 x 64`` (normal images: all zeros).

Candidates (:meth:`Detector.propose`):

1. ``h`` is zeroed outside the resized image (the padding);
2. for each level ``t`` in ``heat_thresholds`` and ``r * max h`` for each ``r``
   in ``heat_ratios`` (the image's own maximum: levels that do not depend on the
   heat-map's absolute calibration), each 8-connected component of ``h > t``
   with at least ``min_cells`` cells is a proposal (the same cell box found at
   two levels once) (at most ``max_components``, highest ``max h`` first); its
   cell box ``(c0, r0, c1, r1)`` becomes image pixels ``4 (c0, r0, c1, r1) / s``
   (``s = 256 / max(H, W)``), enlarged by each ``m`` in ``margins`` times its
   width / height on each side;
3. LiteMedSAM outlines each box (the caller's box-prompted outline); of a
   component's boxes, the outline with the highest IoU-head estimate is kept;
   then, ``refine`` times, LiteMedSAM is prompted again with that outline's
   bounding box enlarged by 5 % per side and its new outline replaces it when
   not empty;
4. score ``p = sigmoid(w . f + b)`` of the rule's features ``f`` (named in the
   JSON; of :data:`ALL_FEATURES`, :func:`candidate_features`): ``logit max h``,
   ``logit mean h`` (over the component), ``u`` (LiteMedSAM's IoU-head
   estimate), ``log a`` (``a``: outline area / image area), the component's
   ``max h`` over the image's, the heat inside the outline and its contrast with
   a ring around it, the outline's compactness and its share of the prompt box
   (``logit q = log(q / (1 - q))``, ``q`` clipped to ``[1e-4, 1 - 1e-4]``): a
   logistic regression of "this outline has mask IoU >= 0.5 with an expert
   lesion" fitted on out-of-fold candidates (:class:`ScoreRule`); format 1 used
   the first four (:data:`FEATURES`);
5. candidates with ``p >= threshold`` are kept, highest first; one whose outline
   has mask IoU > ``nms_iou`` with a better kept one is dropped; at most
   ``max_candidates``. None kept: "no lesion found".

With ``normalize`` the head first standardises each embedding channel over the
image (instance normalisation), a guard against a scanner's or a cohort's shift
of the embedding.

The head is stored as ``detector.safetensors`` (PyTorch weights, for
re-training or export), ``detector.onnx`` (what inference runs, ONNX Runtime)
and ``detector.json`` (format, settings, score rule, the SHA-256 of both files
and of the LiteMedSAM encoder graph whose embeddings it was trained on). A
segmenter folder carries it as ``detector/``; :meth:`Detector.load` refuses a
file whose digest differs from the JSON and an encoder other than the one the
head was trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from buscad.errors import ModelFileError
from buscad.segment.base import Candidate, clip_box, components, mask_box
from buscad.segment.medsam import SIZE as FRAME
from buscad.segment.medsam import resized_size

#: Format written in :data:`JSON_NAME`.
FORMAT = "buscad-lesion-detector"
FORMAT_VERSION = 2

#: Sub-folder of a segmenter folder that carries the detector, and its files.
DETECTOR_DIR = "detector"
JSON_NAME = "detector.json"
WEIGHTS_NAME = "detector.safetensors"
ONNX_NAME = "detector.onnx"

#: Side of LiteMedSAM's embedding grid and of the heat-map; each cell is 4 px of the 256 frame.
GRID = 64
#: Channels of LiteMedSAM's image embedding.
EMBED_CHANNELS = 256

#: The score features of format version 1 (a rule without a ``features`` list uses these).
FEATURES = ("logit_heat_max", "logit_heat_mean", "iou_head", "log_area")

#: Every feature :func:`candidate_features` computes, in this order (module docstring, step 4).
ALL_FEATURES = (
    *FEATURES,
    "heat_ratio",
    "logit_heat_in",
    "heat_contrast",
    "compactness",
    "box_fill",
)

#: Values of settings that format 1 did not have (:meth:`DetectorConfig.from_dict`).
LEGACY: dict = {
    "heat_ratios": [],
    "normalize": False,
    "score_features": list(FEATURES),
    "rule_max_false": None,
    "rule_min_specificity": None,
}

#: Settings chosen by BUSI grouped cross-validation (``benchmarks/segment_auto_select.py``,
#: ``results/segment_auto_select.json``); ``buscad segment detector`` trains with them.
RECOMMENDED: dict = {
    "normalize": True,
    "heat_ratios": [0.3, 0.5, 0.7],
    "score_features": [*FEATURES, "heat_ratio"],
    "rule_max_false": 0.2,
    "rule_min_specificity": 0.85,
}

HEAD_DOC = (
    "avgpool(k) when k > 1, instance normalisation when normalize, conv1x1(256->c) ReLU, conv3x3(c->c, dilation d) ReLU for each d "
    "in dilations, conv1x1(c->1), bilinear upsampling x k back to 64 x 64 when k > 1"
)


@dataclass
class DetectorConfig:
    """Head architecture and proposal settings (stored in the JSON).

    Attributes
    ----------
    channels : int
        Width ``c`` of the head.
    dilations : list of int
        One 3x3 convolution per entry, with that dilation.
    pool : int
        The embedding is average-pooled by ``k = pool`` first (the head runs on a
        ``64 / k`` grid, ``k^2`` times cheaper) and its logits upsampled back.
    heat_thresholds : list of float
        Heat-map cells above each threshold form proposals' components.
    heat_ratios : list of float
        Also, for each ``r``, cells above ``r * max h`` (the image's own maximum over
        its valid cells) form components: candidates that do not depend on the
        heat-map's absolute calibration (the score rule then decides "no lesion").
    min_cells : int
        Smallest component (cells of the 64 x 64 grid).
    max_components : int
        At most this many components are outlined (highest heat-map maximum first).
    margins : list of float
        A component's box is enlarged by each of these fractions of its width / height
        per side; LiteMedSAM outlines each and the outline its IoU head rates best is kept.
    max_candidates : int
        At most this many candidates are returned.
    nms_iou : float
        A candidate whose outline overlaps a better one's by more than this mask IoU is dropped.
    refine : int
        Re-prompts of LiteMedSAM with the box of its own outline.
    normalize : bool
        Each (pooled) embedding channel is standardised over the image's grid first,
        ``(x - mean) / sqrt(var + 1e-5)`` (instance normalisation, no learnt scale).
    score_features : list of str
        Features (of :data:`ALL_FEATURES`) the score rule is fitted on.
    rule_max_false, rule_min_specificity : float, optional
        When set, the score threshold maximises the found share under these bounds on
        false candidates per image and on lesion-free images without a candidate
        (:func:`buscad.segment.detector_train.choose_rule`); unset: found - false.
    """

    channels: int = 32
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4])
    pool: int = 2
    heat_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.9])
    heat_ratios: list[float] = field(default_factory=list)
    min_cells: int = 2
    max_components: int = 6
    margins: list[float] = field(default_factory=lambda: [0.1])
    max_candidates: int = 3
    nms_iou: float = 0.5
    refine: int = 0
    normalize: bool = False
    score_features: list[str] = field(default_factory=lambda: list(FEATURES))
    rule_max_false: float | None = None
    rule_min_specificity: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        """Config from a dict, ignoring unknown keys; missing keys take :data:`LEGACY` values.

        (A format-1 JSON lacks the later keys: its detector keeps behaving as it was saved.)
        """
        names = set(cls.__dataclass_fields__)
        return cls(**{**LEGACY, **{k: v for k, v in d.items() if k in names}})

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class ScoreRule:
    """``p = sigmoid(w . f + b)`` of the named features; a candidate is kept when ``p >= threshold``.

    Attributes
    ----------
    weights : list of float
        ``w``, one per feature.
    bias : float
        ``b``.
    threshold : float
        Smallest kept score; the image is "no lesion found" when no candidate reaches it.
    doc : dict
        Provenance (how ``w``, ``b`` and ``threshold`` were chosen).
    features : list of str
        Names (of :data:`ALL_FEATURES`) the weights apply to; default :data:`FEATURES`.
    """

    weights: list[float]
    bias: float
    threshold: float
    doc: dict = field(default_factory=dict)
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def columns(self) -> list[int]:
        """Indices of :attr:`features` in :data:`ALL_FEATURES`."""
        return [ALL_FEATURES.index(f) for f in self.features]

    def score(self, features: np.ndarray) -> np.ndarray:
        """``sigmoid(f @ w + b)`` of ``(n, len(ALL_FEATURES))`` (or ``(len(ALL_FEATURES),)``) features.

        ``f`` is the rule's columns of them; features with exactly ``len(self.features)``
        columns are taken as already selected.
        """
        x = np.asarray(features, np.float64)
        if x.shape[-1] != len(self.features):
            x = x[..., self.columns()]
        z = x @ np.asarray(self.weights, np.float64) + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "features": list(self.features),
            "weights": [float(v) for v in self.weights],
            "bias": float(self.bias),
            "threshold": float(self.threshold),
            **({"doc": self.doc} if self.doc else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str | os.PathLike[str] = JSON_NAME) -> ScoreRule:
        """Read and check a score rule.

        Raises
        ------
        ModelFileError
            Missing keys, an unknown feature, or a threshold outside [0, 1].
        """
        try:
            names = [str(f) for f in d.get("features", FEATURES)]
            unknown = [f for f in names if f not in ALL_FEATURES]
            if unknown or not names:
                raise ValueError(f"unknown features {unknown}; known: {list(ALL_FEATURES)}")
            w = [float(v) for v in d["weights"]]
            b, t = float(d["bias"]), float(d["threshold"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(where, f"not a detector score rule ({exc})") from exc
        if len(w) != len(names):
            raise ModelFileError(where, f"score rule needs {len(names)} weights, got {len(w)}")
        if not 0.0 <= t <= 1.0:
            raise ModelFileError(where, f"score threshold {t} is outside [0, 1]")
        return cls(w, b, t, dict(d.get("doc") or {}), names)


# ------------------------------------------------------------------ geometry
def heat_target(mask: np.ndarray) -> np.ndarray:
    """Training target ``(64, 64)`` float32 in [0, 1] of an expert mask (empty for normals).

    The mask is resized like the image (longest side to 256, ``cv2.INTER_AREA`` of
    its 0/1 values), zero-padded at the bottom and right to ``256 x 256``, then each
    ``4 x 4`` block is averaged: the cell's lesion fraction.
    """
    m = np.asarray(mask).astype(np.float32)
    nh, nw = resized_size(m.shape[:2])
    frame = np.zeros((FRAME, FRAME), np.float32)
    frame[:nh, :nw] = cv2.resize(m, (nw, nh), interpolation=cv2.INTER_AREA)
    k = FRAME // GRID
    return frame.reshape(GRID, k, GRID, k).mean(axis=(1, 3))


def valid_cells(shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(64, 64)``: cells that show the image (not the padding), ``ceil(h' / 4) x ceil(w' / 4)``."""
    nh, nw = resized_size(shape)
    v = np.zeros((GRID, GRID), bool)
    v[: -(-nh // 4), : -(-nw // 4)] = True
    return v


def cells_to_box(
    cells: tuple[int, int, int, int], shape: tuple[int, int], margin: float
) -> tuple[int, int, int, int]:
    """Cell box ``(c0, r0, c1, r1)`` (end exclusive) to image pixels, enlarged by ``margin`` per side."""
    s = FRAME / max(shape)
    x0, y0, x1, y1 = (4 * v / s for v in cells)
    bw, bh = x1 - x0, y1 - y0
    return clip_box((x0 - margin * bw, y0 - margin * bh, x1 + margin * bw, y1 + margin * bh), shape)


def _logit(q: float) -> float:
    q = float(np.clip(q, 1e-4, 1 - 1e-4))
    return float(np.log(q / (1 - q)))


def _perimeter(mask: np.ndarray) -> float:
    """Length of the outer contours of a boolean mask (``cv2.arcLength``, closed), in pixels."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return float(sum(cv2.arcLength(c, True) for c in cs))


def candidate_features(
    heat_max: float,
    heat_mean: float,
    iou: float,
    area_frac: float,
    heat: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """:data:`ALL_FEATURES` of one candidate (module docstring, step 4).

    ``heat`` is the image's ``(64, 64)`` heat-map with the padding zeroed, ``mask``
    the outline, ``box`` the prompt box; without them the last five features are 0.
    With ``g`` = the outline's cell fractions (:func:`heat_target` of ``mask``) and
    ``R`` = the valid cells within 3 cells of ``g > 0`` but outside it:

    - ``heat_ratio = max h (component) / max h (image)``;
    - ``logit_heat_in = logit(Σ g h / Σ g)``;
    - ``heat_contrast = Σ g h / Σ g - mean_R h`` (0 when ``R`` is empty);
    - ``compactness = 4 π |mask| / perimeter²`` (1 for a disk);
    - ``box_fill = |mask| / box area``.
    """
    f = np.zeros(len(ALL_FEATURES))
    f[:4] = [_logit(heat_max), _logit(heat_mean), float(iou), float(np.log(max(area_frac, 1e-6)))]
    if heat is None or mask is None or box is None or not mask.any():
        return f
    f[4] = heat_max / max(float(heat.max()), 1e-6)
    g = heat_target(mask)
    inside = float((g * heat).sum() / max(float(g.sum()), 1e-6))
    core = (g > 0).astype(np.uint8)
    ring = (cv2.dilate(core, np.ones((7, 7), np.uint8)) > 0) & ~(g > 0) & valid_cells(mask.shape)
    f[5] = _logit(inside)
    f[6] = inside - float(heat[ring].mean()) if ring.any() else 0.0
    area = float(mask.sum())
    f[7] = min(4 * np.pi * area / max(_perimeter(mask), 1.0) ** 2, 1.0)
    f[8] = area / max(float((box[2] - box[0]) * (box[3] - box[1])), 1.0)
    return f


@dataclass
class Proposal:
    """One outlined heat-map component before scoring.

    Attributes
    ----------
    candidate : Candidate
        LiteMedSAM's outline of the component's enlarged box.
    features : numpy.ndarray
        :data:`ALL_FEATURES` ``(9,)``.
    box : tuple of int
        The enlarged heat-map box LiteMedSAM was prompted with (image pixels).
    """

    candidate: Candidate
    features: np.ndarray
    box: tuple[int, int, int, int]


def heat_components(
    heat: np.ndarray, shape: tuple[int, int], config: DetectorConfig
) -> list[tuple[tuple[int, int, int, int], float, float]]:
    """``(cell box, max h, mean h)`` of the heat-map's components (module docstring, step 2)."""
    h = np.where(valid_cells(shape), heat, 0.0)
    top = float(h.max())
    levels = [float(t) for t in config.heat_thresholds]
    levels += [float(r) * top for r in config.heat_ratios if float(r) * top > 0]
    out, seen = [], set()
    for t in levels:
        lab, n = components(h > t)
        for k in range(1, n + 1):
            cell = lab == k
            if int(cell.sum()) < config.min_cells:
                continue
            rows, cols = np.flatnonzero(cell.any(axis=1)), np.flatnonzero(cell.any(axis=0))
            cb = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            if cb not in seen:
                seen.add(cb)
                out.append((cb, float(h[cell].max()), float(h[cell].mean())))
    out.sort(key=lambda t: -t[1])
    return out[: config.max_components]


def propose(
    heat: np.ndarray,
    shape: tuple[int, int],
    outline: Callable[[tuple[int, int, int, int]], Candidate],
    config: DetectorConfig,
) -> list[Proposal]:
    """Outline each heat-map component (``outline(box)``: LiteMedSAM's box outline) with its features.

    Of a component's boxes (one per margin) the non-empty outline with the highest
    IoU-head estimate is kept (ties: the first margin); a component whose outlines
    are all empty is dropped.
    """
    area = float(shape[0] * shape[1])
    h = np.where(valid_cells(shape), heat, 0.0)
    out = []
    for cells, hmax, hmean in heat_components(heat, shape, config):
        best: tuple[Candidate, tuple[int, int, int, int]] | None = None
        for m in config.margins:
            box = cells_to_box(cells, shape, m)
            c = outline(box)
            if c.mask.any() and (best is None or c.confidence > best[0].confidence):
                best = (c, box)
        if best is None:
            continue
        cand, box = best
        for _ in range(int(config.refine)):
            b = mask_box(cand.mask)
            assert b is not None
            bw, bh = b[2] - b[0], b[3] - b[1]
            box2 = clip_box(
                (b[0] - 0.05 * bw, b[1] - 0.05 * bh, b[2] + 0.05 * bw, b[3] + 0.05 * bh), shape
            )
            c = outline(box2)
            if c.mask.any():
                cand, box = c, box2
        f = candidate_features(hmax, hmean, cand.confidence, cand.area / area, h, cand.mask, box)
        out.append(Proposal(cand, f, box))
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """``|a ∩ b| / |a ∪ b|`` of two boolean masks (0 when both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


def select(
    scores: np.ndarray,
    overlap: Callable[[int, int], float],
    threshold: float,
    config: DetectorConfig,
) -> list[int]:
    """Indices kept by step 5: ``score >= threshold``, best first, no overlap > ``nms_iou``, at most ``max_candidates``.

    ``overlap(i, j)`` is the mask IoU of proposals ``i`` and ``j``.
    """
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if scores[i] < threshold or len(kept) >= config.max_candidates:
            break
        if any(overlap(int(i), k) > config.nms_iou for k in kept):
            continue
        kept.append(int(i))
    return kept


def rank(proposals: Sequence[Proposal], rule: ScoreRule, config: DetectorConfig) -> list[Candidate]:
    """Scored, thresholded, de-duplicated candidates, best first (module docstring, step 5).

    Each kept candidate's ``confidence`` becomes its score ``p``.
    """
    if not proposals:
        return []
    scores = rule.score(np.stack([p.features for p in proposals]))
    masks = [p.candidate.mask for p in proposals]
    keep = select(scores, lambda i, j: mask_iou(masks[i], masks[j]), rule.threshold, config)
    out = []
    for i in keep:
        c = proposals[i].candidate
        out.append(Candidate(c.box, c.mask, float(scores[i]), c.predicted_dice, c.flagged))
    return out


# ------------------------------------------------------------------- runtime
def _sha256(path: Path) -> str:
    from buscad.utils import file_sha256

    return file_sha256(path)


def read_spec(folder: str | os.PathLike[str]) -> dict:
    """``detector.json`` of a detector folder, checked for format.

    Raises
    ------
    ModelFileError
        Missing, unreadable or not a detector JSON, or a newer format version.
    """
    jpath = Path(folder) / JSON_NAME
    try:
        spec = json.loads(jpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(jpath, f"cannot read the detector JSON ({exc})") from exc
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError(jpath, f"not a lesion detector (format must be {FORMAT!r})")
    if int(spec.get("version", 0)) > FORMAT_VERSION:
        raise ModelFileError(jpath, f"detector format version {spec.get('version')} is newer")
    return spec


class Detector:
    """The heat-map head (ONNX Runtime) with its proposal settings and score rule.

    Parameters
    ----------
    head : callable
        ``head(x)``: float32 ``(N, 256, 64, 64)`` embeddings -> logits ``(N, 1, 64, 64)``.
    config : DetectorConfig
        Proposal settings.
    rule : ScoreRule
        Candidate score and "no lesion found" threshold.
    spec : dict, optional
        The JSON (provenance).
    """

    def __init__(
        self,
        head: Callable[[np.ndarray], np.ndarray],
        config: DetectorConfig,
        rule: ScoreRule,
        spec: dict | None = None,
    ) -> None:
        self.head = head
        self.config = config
        self.rule = rule
        self.spec = spec or {}

    @property
    def encoder_sha256(self) -> str | None:
        """SHA-256 of the LiteMedSAM encoder graph whose embeddings the head was trained on."""
        return self.spec.get("encoder_sha256")

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        encoder_sha256: str | None = None,
        threads: int | None = None,
    ) -> Detector:
        """Load a detector folder; check its files' digests and the encoder it expects.

        Parameters
        ----------
        folder : path-like
            Folder with ``detector.json`` and ``detector.onnx``.
        encoder_sha256 : str, optional
            SHA-256 of the encoder graph that will embed the images; refused when it
            is not the one the head was trained on.
        threads : int, optional
            ONNX Runtime intra-op threads.

        Raises
        ------
        ModelFileError
            Missing files, a digest that does not match the JSON, or another encoder.
        """
        from buscad.segment.base import OnnxRunner

        f = Path(folder)
        spec = read_spec(f)
        jpath = f / JSON_NAME
        onnx_path = f / ONNX_NAME
        if not onnx_path.is_file():
            raise ModelFileError(onnx_path, "detector ONNX graph not found")
        digests = spec.get("sha256") or {}
        if not digests.get(ONNX_NAME):
            raise ModelFileError(jpath, f"no SHA-256 recorded for {ONNX_NAME}")
        for name, want in digests.items():
            p = f / name
            if p.is_file() and _sha256(p) != want:
                raise ModelFileError(p, f"SHA-256 does not match {JSON_NAME} (file changed?)")
        trained_on = spec.get("encoder_sha256")
        if encoder_sha256 and trained_on and encoder_sha256 != trained_on:
            raise ModelFileError(
                jpath,
                f"the detector was trained on embeddings of LiteMedSAM encoder "
                f"{trained_on[:12]}, not of this segmenter's encoder {encoder_sha256[:12]}",
            )
        config = DetectorConfig.from_dict(spec.get("config") or {})
        rule = ScoreRule.from_dict(spec.get("rule") or {}, jpath)
        return cls(OnnxRunner(onnx_path, threads), config, rule, spec)

    def heat(self, embedding: np.ndarray) -> np.ndarray:
        """Heat-map ``(64, 64)`` float32 in [0, 1] of one ``(1, 256, 64, 64)`` embedding."""
        from buscad.segment.base import sigmoid

        x = np.ascontiguousarray(
            np.asarray(embedding, np.float32).reshape(1, EMBED_CHANNELS, GRID, GRID)
        )
        return sigmoid(self.head(x)[0, 0])

    def propose(
        self,
        embedding: np.ndarray,
        shape: tuple[int, int],
        outline: Callable[[tuple[int, int, int, int]], Candidate],
        heat: np.ndarray | None = None,
    ) -> list[Candidate]:
        """Ranked candidates of one image (module docstring); empty: "no lesion found".

        ``heat``: the embedding's :meth:`heat` when the caller already has it (else computed).
        """
        h = self.heat(embedding) if heat is None else heat
        props = propose(h, shape, outline, self.config)
        return rank(props, self.rule, self.config)


__all__ = [
    "ALL_FEATURES",
    "DETECTOR_DIR",
    "FEATURES",
    "RECOMMENDED",
    "Detector",
    "DetectorConfig",
    "Proposal",
    "ScoreRule",
    "candidate_features",
    "cells_to_box",
    "heat_components",
    "heat_target",
    "mask_iou",
    "propose",
    "rank",
    "read_spec",
    "select",
    "valid_cells",
]
