"""What the segmenter's model, ONNX export and inference share, with no PyTorch: the saved format, the input (gray image + box channel), boxes and candidates, and the ONNX Runtime runner."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from buscad.errors import ModelFileError

if TYPE_CHECKING:
    from buscad.data.manifest import Manifest

#: Model-file format written in the JSON sidecar.
FORMAT = "buscad-segmenter"


FORMAT_VERSION = 1


#: File names inside a segmenter folder.
JSON_NAME = "segmenter.json"


WEIGHTS_NAME = "segmenter.safetensors"


ONNX_NAME = "segmenter.onnx"


Box = tuple[int, int, int, int]


#: ``runner(x)``: ``x`` float32 ``(N, 2, S, S)`` -> logits float32 ``(N, 1, S, S)``.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class SegConfig:
    """Architecture and inference settings of a segmenter (stored in its JSON).

    Attributes
    ----------
    arch : str
        segmentation-models-pytorch architecture (``"Unet"``).
    encoder : str
        smp encoder name; ``"tu-tf_efficientnet_lite0"`` is timm's EfficientNet-Lite0.
    decoder_channels : list of int
        Widths of the five decoder stages.
    input_size : int
        Square network input side in pixels.
    margin : float
        Box-prompted crop: the box is enlarged by this fraction of its width
        (height) on the left and right (top and bottom).
    threshold : float
        Pixel probability above which a pixel is lesion.
    min_area : float
        Smallest automatic candidate, as a fraction of the image area.
    confidence_threshold : float
        Smallest mean probability of a kept automatic candidate.
    max_candidates : int
        At most this many automatic candidates (highest confidence first).
    refine : bool
        Re-outline each automatic candidate with a box-prompted pass.
    """

    arch: str = "Unet"
    encoder: str = "tu-tf_efficientnet_lite0"
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 8])
    input_size: int = 256
    margin: float = 0.25
    threshold: float = 0.5
    min_area: float = 0.002
    confidence_threshold: float = 0.6
    max_candidates: int = 5
    refine: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> SegConfig:
        """Config from a dict, ignoring unknown keys."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class Candidate:
    """One lesion found in the image.

    Attributes
    ----------
    box : tuple of int
        ``(x0, y0, x1, y1)``, end exclusive, in image pixels.
    mask : numpy.ndarray
        Boolean ``(H, W)`` outline of this candidate.
    confidence : float
        Mean lesion probability inside ``mask`` (U-Net), or LiteMedSAM's IoU-head
        estimate for a LiteMedSAM outline.
    predicted_dice : float or None
        The outline's predicted Dice with the true lesion (LiteMedSAM outlines:
        :class:`buscad.segment.medsam.OutlineConfidence`); None when the outline
        has no calibrated estimate (the U-Net's own outlines).
    flagged : bool
        ``predicted_dice`` is below the calibration's flag threshold: the user
        should check or redraw the outline. Always False without ``predicted_dice``.
    """

    box: Box
    mask: np.ndarray
    confidence: float
    predicted_dice: float | None = None
    flagged: bool = False

    @property
    def area(self) -> int:
        """Pixels inside the outline."""
        return int(self.mask.sum())


@dataclass
class SegResult:
    """Outcome of :meth:`Segmenter.predict`.

    Attributes
    ----------
    mask : numpy.ndarray
        Boolean ``(H, W)`` union of the candidates' outlines.
    prob : numpy.ndarray
        Float32 ``(H, W)`` lesion probability (0 outside the crop in box mode).
    candidates : list of Candidate
        Highest confidence first; one at most in box mode.
    found : bool
        False means "no lesion found".
    mode : {"box", "auto"}
        Which mode produced it.
    """

    mask: np.ndarray
    prob: np.ndarray
    candidates: list[Candidate]
    found: bool
    mode: str


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box ``(x0, y0, x1, y1)`` (end exclusive) of a mask, None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes: ``|a ∩ b| / (|a| + |b| - |a ∩ b|)``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def clip_box(box: Sequence[float], shape: tuple[int, int]) -> Box:
    """Round a box to integers inside an image of ``shape`` (at least 1 px each way)."""
    h, w = shape
    x0 = int(np.clip(np.floor(box[0]), 0, w - 1))
    y0 = int(np.clip(np.floor(box[1]), 0, h - 1))
    x1 = int(np.clip(np.ceil(box[2]), x0 + 1, w))
    y1 = int(np.clip(np.ceil(box[3]), y0 + 1, h))
    return x0, y0, x1, y1


def crop_region(box: Sequence[float], shape: tuple[int, int], margin: float) -> Box:
    """The crop of a box-prompted pass: the box enlarged by ``margin`` per side, clipped."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    return clip_box(
        (box[0] - margin * bw, box[1] - margin * bh, box[2] + margin * bw, box[3] + margin * bh),
        shape,
    )


def normalise(gray: np.ndarray) -> np.ndarray:
    """Gray image to the network's scale: ``(g / 255 - 0.5) / 0.5`` (float32).

    Non-``uint8`` input is first windowed to ``uint8`` by
    :func:`buscad.data.io.to_uint8`; colour input is averaged to gray.
    """
    from buscad.data.io import to_uint8

    g = np.asarray(gray)
    if g.ndim == 3:
        g = g[..., :3].mean(axis=-1)
        g = g.astype(np.uint8) if g.max() <= 255 else g
    g = to_uint8(g) if g.dtype != np.uint8 else g
    return (g.astype(np.float32) / 127.5) - 1.0


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D array to ``(height, width)``."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(a, (int(size[1]), int(size[0])), interpolation=interp)


def make_input(
    norm: np.ndarray, size: int, box: Sequence[float] | None = None, margin: float = 0.25
) -> tuple[np.ndarray, Box]:
    """The network input ``(2, size, size)`` and the crop it shows.

    Parameters
    ----------
    norm : numpy.ndarray
        Normalised ``(H, W)`` image (:func:`normalise`).
    size : int
        Network input side.
    box : sequence of float, optional
        Prompt box; None for the automatic (whole-image) mode.
    margin : float
        Crop margin per side, as a fraction of the box side.

    Returns
    -------
    x : numpy.ndarray
        Float32 ``(2, size, size)``: image and prompt channels.
    crop : tuple of int
        ``(x0, y0, x1, y1)`` of the image region shown.
    """
    h, w = norm.shape
    crop = (0, 0, w, h) if box is None else crop_region(box, (h, w), margin)
    x0, y0, x1, y1 = crop
    img = _resize(norm[y0:y1, x0:x1], (size, size))
    prompt = np.zeros((size, size), np.float32)
    if box is not None:
        sx, sy = size / (x1 - x0), size / (y1 - y0)
        bx0 = int(np.clip(round((box[0] - x0) * sx), 0, size - 1))
        by0 = int(np.clip(round((box[1] - y0) * sy), 0, size - 1))
        bx1 = int(np.clip(round((box[2] - x0) * sx), bx0 + 1, size))
        by1 = int(np.clip(round((box[3] - y0) * sy), by0 + 1, size))
        prompt[by0:by1, bx0:bx1] = 1.0
    return np.stack([img, prompt]).astype(np.float32), crop


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-z))`` (float32, overflow-safe)."""
    return (0.5 * (1.0 + np.tanh(0.5 * z.astype(np.float32)))).astype(np.float32)


def paste(prob_small: np.ndarray, crop: Box, shape: tuple[int, int]) -> np.ndarray:
    """Resize a crop's probability map back and place it into a zero ``(H, W)`` map."""
    x0, y0, x1, y1 = crop
    out = np.zeros(shape, np.float32)
    out[y0:y1, x0:x1] = _resize(prob_small, (y1 - y0, x1 - x0))
    return out


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components: ``(labels, n)`` with labels 1..n in raster order (as scipy's ``label``).

    OpenCV's labelling, not scipy's: ``scipy.ndimage`` costs ~0.3 s to import, which
    ``buscad predict`` would pay on every call.
    """
    n, lab, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8
    )
    if n <= 2:
        return lab.astype(np.int32, copy=False), int(n) - 1
    # relabel in the raster order of each component's first pixel (scipy's numbering)
    width = lab.shape[1]
    first = np.empty(n - 1, np.int64)
    for k in range(1, n):
        y = int(stats[k, cv2.CC_STAT_TOP])
        first[k - 1] = y * width + int(np.argmax(lab[y] == k))
    lut = np.zeros(n, np.int32)
    lut[1 + np.argsort(first)] = np.arange(1, n, dtype=np.int32)
    return lut[lab], int(n) - 1


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region not 4-connected to the border filled.

    The same as ``scipy.ndimage.binary_fill_holes`` (default structure): the
    background reachable from outside the image through 4-neighbours stays
    background, everything else is foreground (a flood fill of a 1-pixel border).
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m.copy()
    pad = np.pad(m, 1).astype(np.uint8)
    ff = np.zeros((pad.shape[0] + 2, pad.shape[1] + 2), np.uint8)
    cv2.floodFill(pad, ff, (0, 0), 2, flags=4)
    return (pad != 2)[1:-1, 1:-1]


def training_rows(
    manifest: Manifest, on_skip: Callable[[str], None] | None = None
) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
    """``(row, label, uint8 gray, bool mask)`` of each row usable for training, read one at a time.

    Lesion rows need a mask (``mask_path``); ``normal`` rows get an empty one (a mask
    given with a normal image is ignored). A lesion row without ``mask_path``, or a
    row whose image or mask cannot be read, is skipped and reported through
    ``on_skip`` (one line naming the row or the file).
    """
    from buscad.data.io import read_image, read_mask, to_uint8
    from buscad.errors import BuscadError

    df = manifest.df
    for i in range(len(df)):
        label = str(df["label"].iat[i])
        paths = manifest.mask_paths(i)
        if label != "normal" and not paths:
            if on_skip:
                on_skip(f"{df['image_id'].iat[i]}: no mask_path for a {label} image")
            continue
        try:
            gray = to_uint8(read_image(manifest.image_path(i))[0])
            mask = read_mask(paths, shape=gray.shape) if paths else np.zeros(gray.shape[:2], bool)
        except BuscadError as exc:
            if on_skip:
                on_skip(str(exc))
            continue
        if label == "normal":
            mask = np.zeros_like(mask)
        yield i, label, gray, mask


def _sidecar_paths(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(json, safetensors, onnx)`` for a segmenter folder or one of its files."""
    p = Path(path)
    if p.is_dir():
        return p / JSON_NAME, p / WEIGHTS_NAME, p / ONNX_NAME
    stem = p.with_suffix("")
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors"), stem.with_suffix(".onnx")


def read_spec(path: str | os.PathLike[str]) -> dict:
    """The JSON sidecar of a segmenter (checked for format)."""
    jpath = _sidecar_paths(path)[0]
    if not jpath.is_file():
        raise ModelFileError(jpath, "segmenter JSON not found")
    try:
        spec = json.loads(jpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(jpath, f"cannot read the segmenter JSON ({exc})") from exc
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError(jpath, f"not a buscad segmenter (format must be {FORMAT!r})")
    if int(spec.get("version", 0)) > FORMAT_VERSION:
        raise ModelFileError(jpath, f"segmenter format version {spec.get('version')} is newer")
    return spec


class OnnxRunner:
    """ONNX Runtime session of an exported segmenter (input ``image``, output ``logits``)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelFileError(path, f"cannot load the ONNX model ({exc})") from exc
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 ``(N, 2, S, S)`` batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
