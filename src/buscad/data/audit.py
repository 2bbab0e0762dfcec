"""Data-leakage audit of a manifest: duplicates, conflicts, overlays, masks, shortcuts.

``run_audit(manifest, out_dir)`` (CLI: ``buscad data audit MANIFEST -o DIR``) reads
every image once and writes CSV tables, ``summary.json``, one self-contained
``report.html`` and ``manifest_audited.csv`` (the input plus ``dup_group`` and
the audit flags). What it looks for:

Exact duplicates
    SHA-256 of the file bytes, and SHA-256 of the decoded grayscale pixels (as
    :func:`buscad.data.io.read_image` returns them: dtype, shape and bytes), so a
    PNG re-saved with other compression settings is still caught.

Near-duplicates (re-cropped, resized, or adjacent frames of one acquisition)
    A perceptual hash of the whole image does not survive re-cropping, so the
    search has two stages (:func:`find_near_duplicates`):

    1. *Candidates.* Each image is reduced to a thumbnail whose long side is
       ``candidate_size`` (96) pixels and band-pass filtered (difference of
       Gaussians, sigma 1 and 6 px). Its central square (side
       ``query_fraction`` = 0.5 of the short side) is resampled to an 8x8
       grid of cell means, mean-centred and scaled to unit norm (the *query*).
       Every image also yields *windows*: squares of side ``s x q`` (``q`` the
       median query side, ``s`` in 9 log-spaced scales from 0.55 to 1.8) at a
       stride of 6 px, described the same way (cell means from the integral
       image). For each ordered pair (i, j) the score
       ``S_ij`` is the largest dot product (a Pearson correlation of the two
       8x8 grids) between the query of i and any window of j; one matrix
       product does this for all pairs, and the window that matched gives the
       scale between the images. Pairs are ranked by
       ``Z_ij = (S_ij - mean_i) / sd_i + (S_ij - mean_j) / sd_j`` (row and
       column z-scores; the larger of ``Z_ij`` and ``Z_ji``), so that smooth
       images that correlate with everything do not crowd out true partners;
       each image keeps its ``top_k`` = 12 best partners as candidates.
    2. *Verification.* Thumbnails with long side ``thumb_size`` = 128 px are
       band-pass filtered (difference of Gaussians, sigma 2 and 8 px), which
       keeps tissue structure and removes the depth gradient and the overall
       brightness that all breast scans share. The central
       ``template_fraction`` = 0.6 of one image is resized over 7 scales (0.8
       to 1.25 times the candidate's scale) and located in the other with
       normalised cross-correlation
       ``NCC = sum((T - mean T)(I - mean I)) / sqrt(sum (T - mean T)^2 sum (I - mean I)^2)``
       (OpenCV ``TM_CCOEFF_NORMED``), in both directions. At the alignment found
       each way, a *texture NCC* is computed on a finer band (DoG sigma 1 and
       4 px) divided by its local RMS (Gaussian window sigma 4 px), so that fine
       texture counts as much as the strong edges of a lesion: two unrelated
       images with a similar dark oval in the middle agree on the band but not
       on the texture. A pair is a near-duplicate when all three hold:
       ``min(NCC_ij, NCC_ji) >= ncc_threshold`` (0.72),
       ``min(texture_ij, texture_ji) >= texture_threshold`` (0.35), and the
       two best scales describe one geometric relation,
       ``|log(k_ij * k_ji)| <= log(scale_tolerance)`` (1.15). Pairs with
       texture NCC >= ``same_scan_texture`` (0.7) are labelled ``same scan``
       (identical pixels up to cropping and resampling), the others
       ``similar frame`` (an adjacent frame or re-acquisition of the same view).

    Calibration (by eye, then checked on planted duplicates): on BUSI
    (Al-Dhabyani et al., Data in Brief 28:104863, 2020), among about 5700
    candidate pairs, the pairs judged by eye to be the same scan or an
    adjacent frame scored band NCC >= 0.74 and texture NCC >= 0.37; unrelated
    pairs above the band threshold mostly involve large anechoic cysts, whose
    smooth dark outlines look alike, and fail the scale or texture check. With
    these thresholds BUSI gives 153 groups (349 images); by eye, 40 random
    groups and all 8 label-conflict groups were true, and 15 of the 17
    ``similar frame`` pairs (the 2 false ones join two benign cysts). On the
    phantoms (planted 85-95 % re-crops resized by
    0.8-1.25; images far more alike than real scans) planted pairs score band
    NCC >= 0.95 and texture NCC >= 0.78, unrelated pairs band NCC <= 0.81 and
    texture NCC <= 0.29 (recall of planted pairs 1.0 on three phantom cohorts,
    no group joining unrelated images). Exact duplicates are always joined. Groups are the
    connected components of the accepted pairs (union-find), so a group can
    hold images that are linked only through a third one.

Label conflicts
    Duplicate groups whose members carry different labels.

Colour content
    :class:`~buscad.data.io.ImageMeta` ``has_colour`` and ``colour_fraction``
    (share of pixels with chroma ``max(R,G,B) - min(R,G,B) > 24``). Some
    scanners tint the whole B-mode image (BrEaST: a bluish grey map), which is
    colour but not an overlay, so :func:`colour_overlay_fraction` separates
    the two: each colour channel is compared with its median over all pixels
    of the same luma; a pixel is an *overlay* pixel when a channel deviates by
    more than 24. A tint is a function of luma and leaves no such pixel;
    Doppler boxes, coloured calipers, text and body markers do.
    ``colour_overlay`` = overlay fraction >= 5e-5 (about 15 pixels in a
    560x470 image); ``colour_tint`` = colour without overlay.

Burned-in annotations (calipers, text), see :func:`annotation_marks`
    On the grayscale image, a pixel is a *thin bright stroke* pixel when it is
    at least ``bright`` (180) and exceeds both pixels ``s`` px away on either
    side (``s`` = 2 or 3) by ``contrast`` (50) grey levels, horizontally (part
    of a vertical stroke) or vertically (part of a horizontal stroke). Ultrasound
    speckle and tissue are smooth at this scale; screen graphics are 1-3 px
    lines. A *caliper cross* is a pixel with horizontal-stroke pixels on
    ``arm`` (3) of the 3..arm+1 px to its left and to its right and
    vertical-stroke pixels likewise above and below (a ``+``). A *text word*
    is a cluster of stroke pixels (joined by a 3x5 dilation) that is 9-30 px
    high, 1.8-20 times as wide as high, 12-70 % filled with stroke pixels, with
    at least 30 % vertical and 10 % horizontal strokes, and less than 10 % of
    its pixels within 3 px of the image border (cut-off scanner labels at the
    edge are ignored). An image is flagged when it has a cross or a word.
    Measured: BUSI 188 of 780 flagged, 40 of a random 40 true by eye
    (precision 1.0, 95 % CI lower bound 0.91); 3 of a random 40 unflagged show
    text (one of them cut at the border), so recall is roughly 0.85. Phantoms
    (planted calipers and text): precision 15/16, recall 15/17. BrEaST-Lesions
    (Pawlowska et al., Sci Data 11:148, 2024): none flagged.

Mask problems
    Missing mask for a lesion, unreadable mask, size mismatch with the image,
    empty mask for a lesion, non-empty mask on a ``normal`` image, more than
    one connected component (8-connectivity), lesion touching the image border.

Distributions
    Per cohort and label: counts, image sizes, lesion area.

Annotation shortcuts (benign vs malignant rows only)
    Cross-validated AUC of models that should not know the answer: mask
    geometry (log area, area fraction; of the largest component: solidity =
    area / convex-hull area, convexity = convex-hull perimeter / perimeter,
    aspect ratio = box width / box height, box width and height and box centre
    relative to the image; see :func:`mask_geometry`) and
    image size (height, width, aspect). Each is a logistic regression on
    standardised features (median-imputed), 5-fold stratified CV grouped by
    near-duplicate group union patient (:func:`buscad.data.splits.split_groups`),
    AUC of the pooled out-of-fold probabilities (``roc_auc_score``). Each single
    feature is also scored alone without a model: ``AUC = max(A, 1 - A)`` with
    ``A`` the Mann-Whitney AUC of the raw value (direction chosen on the data,
    so slightly optimistic). Any shortcut with AUC >= ``shortcut_warn_auc``
    (0.8) raises a warning.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io as _io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.io import read_image, read_mask, to_uint8
from buscad.data.manifest import LESION_LABELS, Manifest
from buscad.errors import ImageReadError, MaskError
from buscad.utils import (
    array_sha256,
    atomic_path,
    atomic_write_json,
    atomic_write_table,
    atomic_write_text,
    connected_components,
    file_sha256,
    stable_hash,
)

#: Bump when the cached per-image record changes meaning.
_RECORD_VERSION = 4
#: Bump when the pair search changes meaning.
_PAIRS_VERSION = 4


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv-python-headless is a dependency
        raise ImportError("the audit needs OpenCV (pip install opencv-python-headless)") from exc
    return cv2


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class NearDuplicateParams:
    """Settings of the near-duplicate search (see the module docstring).

    Attributes
    ----------
    thumb_size : int
        Long side (px) of the verification thumbnails.
    candidate_size : int
        Long side (px) of the candidate thumbnails.
    candidate_band : tuple of float
        Gaussian sigmas (px) of the band-pass applied to the candidate thumbnails.
    query_fraction : float
        Side of the central query square as a fraction of the short side.
    descriptor_grid : int
        Query and window descriptors are ``descriptor_grid x descriptor_grid``.
    window_scales : tuple of float
        Window sides relative to the median query side.
    window_stride : int
        Window stride (px) in the candidate thumbnails.
    top_k : int
        Candidate partners kept per image.
    template_fraction : float
        Central part of an image used as template in verification.
    band : tuple of float
        Gaussian sigmas (px at ``thumb_size``) of the verification band-pass.
    texture_band : tuple of float
        Sigmas of the finer band of the texture check.
    texture_norm_sigma : float
        Gaussian window (px) of the local RMS that the texture band is divided by.
    scale_search : tuple
        ``(low, high, steps)``: scales searched around the candidate's scale.
    ncc_threshold : float
        Accept a pair when the smaller of the two directions' band NCC reaches this.
    texture_threshold : float
        ... and the smaller of the two texture NCCs reaches this.
    scale_tolerance : float
        ... and ``k_ij * k_ji`` lies within ``[1/tol, tol]``.
    same_scan_texture : float
        Texture NCC (both ways) from which a pair is called ``same scan``.
    """

    thumb_size: int = 128
    candidate_size: int = 96
    candidate_band: tuple[float, float] = (1.0, 6.0)
    query_fraction: float = 0.5
    descriptor_grid: int = 8
    window_scales: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.55, 1.8, 9))
    window_stride: int = 6
    top_k: int = 12
    template_fraction: float = 0.6
    band: tuple[float, float] = (2.0, 8.0)
    texture_band: tuple[float, float] = (1.0, 4.0)
    texture_norm_sigma: float = 4.0
    scale_search: tuple[float, float, int] = (0.8, 1.25, 7)
    ncc_threshold: float = 0.72
    texture_threshold: float = 0.35
    scale_tolerance: float = 1.15
    same_scan_texture: float = 0.7


@dataclass(frozen=True)
class AnnotationParams:
    """Settings of the burned-in annotation heuristic (see :func:`annotation_marks`)."""

    bright: int = 180
    contrast: int = 50
    stroke_offsets: tuple[int, ...] = (2, 3)
    arm: int = 3
    text_height: tuple[int, int] = (9, 30)
    text_aspect: tuple[float, float] = (1.8, 20.0)
    text_fill: tuple[float, float] = (0.12, 0.7)
    text_min_vertical: float = 0.3
    text_min_horizontal: float = 0.1
    border_px: int = 3
    border_max_fraction: float = 0.1


# --------------------------------------------------------------------------- records


@dataclass
class ImageRecord:
    """What the audit learnt from one image file (cached by file content).

    ``thumb`` is the grayscale image resized (area interpolation) so that its
    long side is ``NearDuplicateParams.thumb_size``; ``crosses`` and ``words``
    are boxes ``(x, y, w, h)`` in full-resolution pixels.
    """

    file_sha256: str = ""
    pixel_sha256: str = ""
    height: int = 0
    width: int = 0
    has_colour: bool = False
    colour_fraction: float = 0.0
    colour_overlay_fraction: float = 0.0
    thumb: np.ndarray | None = None
    crosses: list[tuple[int, int, int, int]] = field(default_factory=list)
    words: list[tuple[int, int, int, int]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the image could be read."""
        return not self.error and self.thumb is not None

    @property
    def has_annotations(self) -> bool:
        """True when a caliper cross or a text word was found."""
        return bool(self.crosses or self.words)


def default_cache_dir() -> Path:
    """Folder of the audit's per-image cache.

    buscad's one cache folder, :func:`buscad.utils.cache_root` (``$BUSCAD_CACHE``,
    else the deprecated ``$BUSCAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/buscad`` or
    ``~/.cache/buscad``); the audit uses its ``audit/`` subfolder.
    """
    from buscad.utils import cache_root

    return cache_root()


def _record_key(sha: str, nd: NearDuplicateParams, ap: AnnotationParams) -> str:
    return stable_hash([_RECORD_VERSION, sha, nd.thumb_size, asdict(ap)], length=32)


def _load_record(path: Path) -> ImageRecord | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            thumb = z["thumb"].copy()
    except Exception:
        return None
    rec = ImageRecord(**{k: v for k, v in meta.items() if k not in ("crosses", "words")})
    rec.crosses = [tuple(b) for b in meta.get("crosses", [])]
    rec.words = [tuple(b) for b in meta.get("words", [])]
    rec.thumb = thumb
    return rec


def _save_record(path: Path, rec: ImageRecord) -> None:
    meta = {k: v for k, v in asdict(rec).items() if k != "thumb"}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, thumb=rec.thumb, meta=np.array(json.dumps(meta)))


def _thumbnail(gray8: np.ndarray, long_side: int) -> np.ndarray:
    cv2 = _cv2()
    h, w = gray8.shape
    s = long_side / max(h, w)
    size = (max(8, round(w * s)), max(8, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray8, size, interpolation=interp)


def scan_image(
    path: str | os.PathLike[str],
    nd: NearDuplicateParams | None = None,
    ap: AnnotationParams | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ImageRecord:
    """Read one image and compute its audit record (hashes, colour, thumbnail, marks).

    Parameters
    ----------
    path : path-like
        Image file.
    nd, ap : params, optional
        Near-duplicate and annotation settings (the thumbnail size and the
        annotation settings are part of the cache key).
    cache_dir : path-like, optional
        Cache root (default :func:`default_cache_dir`); records are stored under
        ``audit/`` keyed by the file's SHA-256.
    use_cache : bool
        Read and write the cache.

    Returns
    -------
    ImageRecord
        With ``error`` set (one line naming the file) when the image cannot be read.
    """
    nd = nd or NearDuplicateParams()
    ap = ap or AnnotationParams()
    p = Path(path)
    try:
        sha = file_sha256(p)
    except OSError as exc:
        return ImageRecord(error=str(ImageReadError(p, f"cannot read file ({exc.strerror})")))
    cpath = None
    if use_cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = _record_key(sha, nd, ap)
        cpath = root / "audit" / key[:2] / f"{key}.npz"
        if cpath.exists():
            rec = _load_record(cpath)
            if rec is not None:
                return rec
    try:
        gray, meta = read_image(p)
    except ImageReadError as exc:
        return ImageRecord(file_sha256=sha, error=str(exc))
    g8 = to_uint8(gray)
    crosses, words = annotation_marks(g8, ap)
    rec = ImageRecord(
        file_sha256=sha,
        pixel_sha256=array_sha256(gray),
        height=int(gray.shape[0]),
        width=int(gray.shape[1]),
        has_colour=bool(meta.has_colour),
        colour_fraction=float(meta.colour_fraction),
        colour_overlay_fraction=(
            _overlay_of_file(p, float(meta.colour_fraction)) if meta.has_colour else 0.0
        ),
        thumb=_thumbnail(g8, nd.thumb_size),
        crosses=crosses,
        words=words,
    )
    if cpath is not None:
        with contextlib.suppress(OSError):  # a read-only cache is not an error
            _save_record(cpath, rec)
    return rec


COLOUR_OVERLAY_DEVIATION = 24
COLOUR_OVERLAY_MIN_FRACTION = 5e-5


def colour_overlay_fraction(
    rgb: np.ndarray, valid: np.ndarray | None = None, deviation: int = COLOUR_OVERLAY_DEVIATION
) -> float:
    """Share of pixels whose colour departs from the image's own grey-to-colour map.

    For each channel ``c`` and each luma value ``Y`` (ITU-R 601, rounded), let
    ``m_c(Y)`` be the median of channel ``c`` over the valid pixels of that
    luma. A pixel is an overlay pixel when ``max_c |c - m_c(Y)| > deviation``.
    A grey image or a uniformly tinted one (a colour map applied to B-mode)
    gives 0; Doppler boxes and coloured marks give their pixel share.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` array (8-bit values).
    valid : numpy.ndarray, optional
        Boolean ``(H, W)`` mask of pixels to use (e.g. alpha > 0).
    deviation : int
        Channel deviation (grey levels) that makes an overlay pixel.

    Returns
    -------
    float
        Overlay pixels / all pixels.
    """
    arr = np.asarray(rgb)[..., :3].astype(np.int32)
    ok = np.ones(arr.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    if not ok.any():
        return 0.0
    y = np.clip(np.rint(arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114), 0, 255)
    luma = y.astype(np.int64)[ok]
    dev = np.zeros(luma.shape, np.int32)
    n_luma = np.bincount(luma, minlength=256)
    half = (n_luma + 1) // 2  # rank of the (lower) median within each luma bin
    for c in range(3):
        v = arr[..., c][ok].astype(np.int64)
        hist = np.bincount(luma * 256 + v, minlength=65536).reshape(256, 256)
        med = (np.cumsum(hist, axis=1) < half[:, None]).sum(axis=1)
        dev = np.maximum(dev, np.abs(v - med[luma]).astype(np.int32))
    return float((dev > deviation).sum() / ok.size)


def _overlay_of_file(p: Path, fallback: float) -> float:
    """:func:`colour_overlay_fraction` of a colour file (``fallback`` when Pillow cannot read it)."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            valid = None
            if im.mode in ("RGBA", "LA"):
                valid = np.asarray(im)[..., -1] > 0
            rgb = np.asarray(im.convert("RGB"))
    except Exception:
        return fallback
    if rgb.dtype != np.uint8:  # pragma: no cover - 16-bit colour is rare
        return fallback
    return colour_overlay_fraction(rgb, valid)


def scan_images(
    manifest: Manifest,
    nd: NearDuplicateParams | None = None,
    ap: AnnotationParams | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[ImageRecord]:
    """:func:`scan_image` for every row of ``manifest`` (unreadable rows keep their error)."""
    out = []
    n = len(manifest)
    for i in range(n):
        out.append(scan_image(manifest.image_path(i), nd, ap, cache_dir, use_cache))
        if progress is not None:
            progress(i + 1, n)
    return out


# --------------------------------------------------------------------------- annotations


def _ends_kernel(s: int, axis: int) -> np.ndarray:
    k = np.zeros((2 * s + 1, 1) if axis == 0 else (1, 2 * s + 1), np.uint8)
    k.flat[0] = 1
    k.flat[-1] = 1
    return k


def _arm_kernel(lo: int, hi: int, axis: int) -> np.ndarray:
    r = max(abs(lo), abs(hi))
    k = np.zeros(2 * r + 1, np.float32)
    k[r + lo : r + hi + 1] = 1
    return k.reshape(-1, 1) if axis == 0 else k.reshape(1, -1)


def annotation_marks(
    gray8: np.ndarray, params: AnnotationParams | None = None
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
    """Find burned-in caliper crosses and text words in a grayscale image.

    Parameters
    ----------
    gray8 : numpy.ndarray
        ``uint8`` grayscale image.
    params : AnnotationParams, optional
        Thresholds (defaults as documented in the module docstring).

    Returns
    -------
    crosses, words : list of tuple
        Boxes ``(x, y, w, h)`` of caliper ``+`` marks and of text words.

    Notes
    -----
    Stroke pixel (offset ``s``): ``g >= bright`` and
    ``g - max(g[y, x - s], g[y, x + s]) >= contrast`` (vertical stroke) or
    ``g - max(g[y - s, x], g[y + s, x]) >= contrast`` (horizontal stroke).
    A cross centre has at least ``arm`` horizontal-stroke pixels among
    ``x - arm - 1 .. x - 2`` and among ``x + 2 .. x + arm + 1`` (stroke rows
    dilated by one pixel) and likewise vertically.
    """
    cv2 = _cv2()
    p = params or AnnotationParams()
    g = np.ascontiguousarray(gray8, dtype=np.uint8)
    H, W = g.shape
    g16 = g.astype(np.int16)
    bright = g >= p.bright
    hl = np.zeros(g.shape, bool)
    vl = np.zeros(g.shape, bool)
    for s in p.stroke_offsets:
        hl |= (g16 - cv2.dilate(g, _ends_kernel(s, 0)).astype(np.int16)) >= p.contrast
        vl |= (g16 - cv2.dilate(g, _ends_kernel(s, 1)).astype(np.int16)) >= p.contrast
    hl &= bright
    vl &= bright
    a = p.arm
    crosses: list[tuple[int, int, int, int]] = []
    if 2 * (a + 3) < H and 2 * (a + 3) < W:
        hld = cv2.dilate(hl.astype(np.uint8), np.ones((3, 1), np.uint8)).astype(np.float32)
        vld = cv2.dilate(vl.astype(np.uint8), np.ones((1, 3), np.uint8)).astype(np.float32)

        def arms(img: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
            k = _arm_kernel(lo, hi, axis)
            return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_CONSTANT) >= a - 0.5

        centre = (
            arms(hld, -(a + 1), -2, 1)
            & arms(hld, 2, a + 1, 1)
            & arms(vld, -(a + 1), -2, 0)
            & arms(vld, 2, a + 1, 0)
            & bright
        )
        m = a + 3
        centre[:m] = False
        centre[-m:] = False
        centre[:, :m] = False
        centre[:, -m:] = False
        if centre.any():
            n, _, _, cen = cv2.connectedComponentsWithStats(centre.astype(np.uint8))
            half = a + 2
            crosses = [
                (round(cx) - half, round(cy) - half, 2 * half + 1, 2 * half + 1)
                for cx, cy in cen[1:n]
            ]
    stroke = hl | vl
    words: list[tuple[int, int, int, int]] = []
    if stroke.any():
        blob = cv2.dilate(stroke.astype(np.uint8), np.ones((3, 5), np.uint8))
        n, lab, st, _ = cv2.connectedComponentsWithStats(blob)
        h0, h1 = p.text_height
        r0, r1 = p.text_aspect
        hh, ww = st[:, 3], st[:, 2]
        ok = (hh >= h0) & (hh <= h1) & (ww >= r0 * hh) & (ww <= r1 * hh)
        ok[0] = False
        b = p.border_px
        for c in np.flatnonzero(ok):
            x, y, w, h, _ = (int(v) for v in st[c])
            sub = stroke[y : y + h, x : x + w] & (lab[y : y + h, x : x + w] == c)
            tot = int(sub.sum())
            if tot == 0:
                continue
            ys, xs = np.nonzero(sub)
            yy, xx = ys + y, xs + x
            edge = (yy < b) | (xx < b) | (yy >= H - b) | (xx >= W - b)
            if edge.mean() >= p.border_max_fraction:
                continue
            fill = tot / (w * h)
            nv = int((vl[y : y + h, x : x + w] & sub).sum())
            nh = int((hl[y : y + h, x : x + w] & sub).sum())
            if (
                p.text_fill[0] <= fill <= p.text_fill[1]
                and nv >= p.text_min_vertical * tot
                and nh >= p.text_min_horizontal * tot
            ):
                words.append((x, y, w, h))
    return crosses, words


# --------------------------------------------------------------------------- duplicates


def exact_duplicate_pairs(records: Sequence[ImageRecord]) -> pd.DataFrame:
    """Pairs of rows with identical file bytes or identical decoded pixels.

    Returns
    -------
    pandas.DataFrame
        Columns ``i``, ``j`` (row positions, ``i < j``) and ``kind``
        (``exact file`` or ``exact pixels``); each row joined to the first row
        carrying the same hash.
    """
    rows = []
    first_file: dict[str, int] = {}
    first_pix: dict[str, int] = {}
    for j, r in enumerate(records):
        if r.file_sha256:
            i = first_file.setdefault(r.file_sha256, j)
            if i != j:
                rows.append((i, j, "exact file"))
                continue
        if r.pixel_sha256:
            i = first_pix.setdefault(r.pixel_sha256, j)
            if i != j:
                rows.append((i, j, "exact pixels"))
    return pd.DataFrame(rows, columns=["i", "j", "kind"])


def _dog(t: np.ndarray, sigmas: tuple[float, float]) -> np.ndarray:
    cv2 = _cv2()
    f = t.astype(np.float32)
    return cv2.GaussianBlur(f, (0, 0), sigmas[0]) - cv2.GaussianBlur(f, (0, 0), sigmas[1])


def _local_norm(d: np.ndarray, sigma: float) -> np.ndarray:
    """Divide a band-pass image by its local RMS (Gaussian window ``sigma``)."""
    cv2 = _cv2()
    e = cv2.GaussianBlur(d * d, (0, 0), sigma)
    return (d / np.sqrt(e + 1e-2 * float(e.mean()) + 1e-6)).astype(np.float32)


def _znorm(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(n, 1e-6)).astype(np.float32)


def _candidates(thumbs: list[np.ndarray], p: NearDuplicateParams) -> tuple[np.ndarray, np.ndarray]:
    """Coarse window-correlation scores ``S[i, j]`` and implied scales ``K[i, j]``.

    ``S[i, j]`` is the best correlation of image i's central query with any
    window of image j; ``K[i, j]`` = window side / query side (pixels of j per
    pixel of i, both at the candidate thumbnail scale).
    """
    cv2 = _cv2()
    n = len(thumbs)
    d = p.descriptor_grid
    small = [_dog(_thumbnail(t, p.candidate_size), p.candidate_band) for t in thumbs]

    def cells(ii: np.ndarray, side: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """d x d cell means of the square windows (side px) at origins ys x xs.

        Cell boundaries are ``round(k * side / d)``; sums come from the integral
        image, so every window of every origin costs four lookups per cell.
        """
        b = np.rint(np.arange(d + 1) * side / d).astype(int)
        Y = ys[:, None] + b[None, :]
        X = xs[:, None] + b[None, :]
        sums = ii[Y[:, :, None, None], X[None, None, :, :]]  # ny, d+1, nx, d+1
        box = np.diff(np.diff(sums, axis=1), axis=3)  # ny, d, nx, d
        area = np.outer(np.diff(b), np.diff(b))
        out = box / np.maximum(area, 1)[None, :, None, :]
        return out.transpose(0, 2, 1, 3).reshape(-1, d * d)

    q_sides = np.zeros(n)
    queries = np.zeros((n, d * d), np.float32)
    for i, t in enumerate(small):
        h, w = t.shape
        q = max(d, round(p.query_fraction * min(h, w)))
        y0, x0 = (h - q) // 2, (w - q) // 2
        ii = cv2.integral(t.astype(np.float64))
        queries[i] = cells(ii, q, np.array([y0]), np.array([x0]))[0]
        q_sides[i] = q
    queries = _znorm(queries)
    q_canon = float(np.median(q_sides))
    S = np.full((n, n), -1.0, np.float32)
    K = np.ones((n, n), np.float32)
    for j, t in enumerate(small):
        h, w = t.shape
        ii = cv2.integral(t.astype(np.float64))
        wins, sides = [], []
        for r in p.window_scales:
            s = round(q_canon * r)
            if s > min(h, w) or s < d:
                continue
            ys = np.arange(0, h - s + 1, p.window_stride)
            xs = np.arange(0, w - s + 1, p.window_stride)
            wins.append(cells(ii, s, ys, xs))
            sides.extend([s] * (len(ys) * len(xs)))
        if not wins:
            continue
        R = _znorm(np.concatenate(wins).astype(np.float32))
        C = queries @ R.T
        best = C.argmax(axis=1)
        S[:, j] = C[np.arange(n), best]
        K[:, j] = np.asarray(sides, np.float32)[best] / q_sides
    np.fill_diagonal(S, -1.0)
    return S, K


def _rank_score(S: np.ndarray) -> np.ndarray:
    """Symmetric candidate ranking: row plus column z-scores of ``S``, max of both directions.

    ``Z_ij = (S_ij - mean_i) / sd_i + (S_ij - mean_j) / sd_j`` (row and column
    statistics without the diagonal), then ``max(Z_ij, Z_ji)``. An image whose
    windows correlate with everything (smooth, low-texture) no longer crowds out
    the true partner of every other image.
    """
    X = S.astype(np.float64).copy()
    np.fill_diagonal(X, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        zr = (X - np.nanmean(X, axis=1, keepdims=True)) / np.nanstd(X, axis=1, keepdims=True)
        zc = (X - np.nanmean(X, axis=0, keepdims=True)) / np.nanstd(X, axis=0, keepdims=True)
    Z = np.nan_to_num(zr + zc, nan=-1e9, posinf=-1e9, neginf=-1e9)
    Z = np.maximum(Z, Z.T)
    np.fill_diagonal(Z, -np.inf)
    return Z


def _match(
    A: np.ndarray, B: np.ndarray, scales: np.ndarray, frac: float
) -> tuple[float, float, tuple[int, int]]:
    """Best NCC of B's central ``frac`` region, resized by each scale, inside A."""
    cv2 = _cv2()
    hb, wb = B.shape
    th, tw = max(4, int(hb * frac)), max(4, int(wb * frac))
    y0, x0 = (hb - th) // 2, (wb - tw) // 2
    T0 = B[y0 : y0 + th, x0 : x0 + tw]
    best = (-1.0, float("nan"), (0, 0))
    for k in scales:
        nh, nw = round(th * k), round(tw * k)
        if nh > A.shape[0] or nw > A.shape[1] or nh < 8 or nw < 8:
            continue
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        T = cv2.resize(T0, (nw, nh), interpolation=interp)
        if float(cv2.meanStdDev(T)[1][0, 0]) < 1e-3:
            continue
        res = cv2.matchTemplate(A, T, cv2.TM_CCOEFF_NORMED)
        _, mx, _, loc = cv2.minMaxLoc(res)
        if np.isfinite(mx) and mx > best[0]:
            best = (float(mx), float(k), (int(loc[0]), int(loc[1])))
    return best


def _ncc_at(A: np.ndarray, B: np.ndarray, k: float, loc: tuple[int, int], frac: float) -> float:
    """NCC of B's central region, resized by ``k``, at position ``loc`` of A."""
    cv2 = _cv2()
    hb, wb = B.shape
    th, tw = max(4, int(hb * frac)), max(4, int(wb * frac))
    y0, x0 = (hb - th) // 2, (wb - tw) // 2
    nh, nw = round(th * k), round(tw * k)
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    T = cv2.resize(B[y0 : y0 + th, x0 : x0 + tw], (nw, nh), interpolation=interp)
    x, y = loc
    P = A[y : y + nh, x : x + nw]
    if P.shape != T.shape:
        return float("nan")
    a = P - P.mean()
    b = T - T.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def find_near_duplicates(
    records: Sequence[ImageRecord],
    params: NearDuplicateParams | None = None,
    return_candidates: bool = False,
) -> pd.DataFrame:
    """Verified near-duplicate pairs among readable records (two-stage search).

    Parameters
    ----------
    records : sequence of ImageRecord
        From :func:`scan_images`; unreadable ones are skipped.
    params : NearDuplicateParams, optional
        Thresholds (see the module docstring).
    return_candidates : bool
        Return every verified candidate pair (accepted or not), for calibration.

    Returns
    -------
    pandas.DataFrame
        Columns ``i``, ``j`` (row positions, ``i < j``), ``candidate`` (coarse
        score), ``ncc_ij``, ``ncc_ji`` (band-pass NCC of j found in i and of i
        found in j), ``ncc`` (their minimum), ``scale_ij``, ``scale_ji``,
        ``texture_ncc`` (minimum texture NCC at the same alignment),
        ``accepted`` and ``kind`` (``same scan`` or ``similar frame``).
    """
    p = params or NearDuplicateParams()
    idx = [i for i, r in enumerate(records) if r.ok]
    cols = [
        "i", "j", "candidate", "ncc_ij", "ncc_ji", "ncc", "scale_ij", "scale_ji",
        "texture_ncc", "accepted", "kind",
    ]  # fmt: skip
    if len(idx) < 2:
        return pd.DataFrame(columns=cols)
    thumbs = [records[i].thumb for i in idx]
    S, K = _candidates(thumbs, p)
    Ss = np.maximum(S, S.T)
    rank_score = _rank_score(S)
    n = len(idx)
    k = min(p.top_k, n - 1)
    pairs: set[tuple[int, int]] = set()
    part = np.argpartition(-rank_score, kth=k - 1, axis=1)[:, :k] if k < n else None
    for a in range(n):
        partners = part[a] if part is not None else range(n)
        for b in partners:
            if a != b:
                pairs.add((min(a, int(b)), max(a, int(b))))
    band = [_dog(t, p.band) for t in thumbs]
    texture = [_local_norm(_dog(t, p.texture_band), p.texture_norm_sigma) for t in thumbs]
    lo, hi, steps = p.scale_search
    rel = np.geomspace(lo, hi, int(steps))
    rows = []
    for a, b in sorted(pairs):
        # j=b found in i=a: template from b, scale = pixels of a per pixel of b
        n1, k1, l1 = _match(band[a], band[b], K[b, a] * rel, p.template_fraction)
        if n1 < p.ncc_threshold and not return_candidates:
            continue  # min(n1, n2) cannot reach the threshold
        n2, k2, l2 = _match(band[b], band[a], K[a, b] * rel, p.template_fraction)
        ncc = min(n1, n2)
        kk = k1 * k2 if np.isfinite(k1) and np.isfinite(k2) else float("nan")
        consistent = bool(np.isfinite(kk) and abs(np.log(kk)) <= np.log(p.scale_tolerance))
        if not (return_candidates or (ncc >= p.ncc_threshold and consistent)):
            continue
        tex = float("nan")
        if np.isfinite(kk):
            tex = min(
                _ncc_at(texture[a], texture[b], k1, l1, p.template_fraction),
                _ncc_at(texture[b], texture[a], k2, l2, p.template_fraction),
            )
        accepted = bool(
            ncc >= p.ncc_threshold
            and consistent
            and np.isfinite(tex)
            and tex >= p.texture_threshold
        )
        if accepted or return_candidates:
            kind = (
                "same scan"
                if (np.isfinite(tex) and tex >= p.same_scan_texture)
                else "similar frame"
            )
            rows.append((idx[a], idx[b], float(Ss[a, b]), n1, n2, ncc, k1, k2, tex, accepted, kind))
    return pd.DataFrame(rows, columns=cols)


def _pairs_cached(
    records: Sequence[ImageRecord],
    params: NearDuplicateParams,
    cache_dir: str | os.PathLike[str] | None,
    use_cache: bool,
) -> pd.DataFrame:
    if not use_cache:
        return find_near_duplicates(records, params)
    key = stable_hash(
        [_PAIRS_VERSION, [r.file_sha256 if r.ok else "" for r in records], asdict(params)],
        length=32,
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "audit" / "pairs" / f"{key}.csv"
    if path.exists():
        try:
            return pd.read_csv(path)
        except Exception:
            pass
    out = find_near_duplicates(records, params)
    with contextlib.suppress(OSError):
        atomic_write_table(out, path)
    return out


def duplicate_groups(
    n: int, exact: pd.DataFrame, near: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Group ids (union-find) from exact and accepted near-duplicate pairs.

    Returns
    -------
    dup_group, exact_group : numpy.ndarray
        One id per row (singletons get their own id), numbered in order of
        first appearance; ``exact_group`` uses the exact pairs only.
    """
    ex = [(int(a), int(b)) for a, b in zip(exact.get("i", []), exact.get("j", []), strict=True)]
    acc = near[near["accepted"].astype(bool)] if len(near) else near
    nr = [(int(a), int(b)) for a, b in zip(acc.get("i", []), acc.get("j", []), strict=True)]
    return connected_components(n, ex + nr), connected_components(n, ex)


def group_names(
    labels: np.ndarray, records: Sequence[ImageRecord], image_ids: Sequence[str]
) -> np.ndarray:
    """Content-derived group ids: ``"g"`` + the smallest member's file SHA-256 (12 hex).

    The id of a group does not depend on row order or on the other images of
    the manifest, so manifests audited separately can be concatenated without
    two unrelated groups sharing an id. Unreadable images are ``"id:<image_id>"``.
    """
    keys = [
        ("g" + r.file_sha256[:12]) if r.file_sha256 else f"id:{iid}"
        for r, iid in zip(records, image_ids, strict=True)
    ]
    best: dict[int, str] = {}
    for lab, key in zip(labels, keys, strict=True):
        if int(lab) not in best or key < best[int(lab)]:
            best[int(lab)] = key
    return np.array([best[int(lab)] for lab in labels], dtype=object)


def near_duplicate_groups(
    manifest: Manifest,
    params: NearDuplicateParams | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    records: Sequence[ImageRecord] | None = None,
) -> pd.Series:
    """Near-duplicate group of every manifest row (exact duplicates included).

    Parameters
    ----------
    manifest : Manifest
        Images to compare.
    params : NearDuplicateParams, optional
        Search settings.
    cache_dir : path-like, optional
        Per-image and pair cache (default :func:`default_cache_dir`).
    use_cache : bool
        Use the cache.
    records : sequence of ImageRecord, optional
        Already scanned records (skips reading the images).

    Returns
    -------
    pandas.Series
        ``dup_group`` per row (see :func:`group_names`), index aligned with
        ``manifest.df``; images without a duplicate (and unreadable ones) get
        their own id.
    """
    params = params or NearDuplicateParams()
    if records is None:
        records = scan_images(manifest, nd=params, cache_dir=cache_dir, use_cache=use_cache)
    exact = exact_duplicate_pairs(records)
    near = _pairs_cached(records, params, cache_dir, use_cache)
    groups, _ = duplicate_groups(len(records), exact, near)
    names = group_names(groups, records, manifest.df["image_id"])
    return pd.Series(names, index=manifest.df.index, name="dup_group")


# --------------------------------------------------------------------------- masks


MASK_FLAGS: tuple[str, ...] = (
    "mask_missing",
    "mask_unreadable",
    "mask_size_mismatch",
    "mask_empty",
    "mask_on_normal",
    "mask_multiple_components",
    "mask_touches_border",
)

GEOMETRY_FEATURES: tuple[str, ...] = (
    "log_area",
    "area_fraction",
    "solidity",
    "convexity",
    "aspect_ratio",
    "bbox_width",
    "bbox_height",
    "bbox_cx",
    "bbox_cy",
)

SIZE_FEATURES: tuple[str, ...] = ("height", "width", "aspect")


def mask_geometry(mask: np.ndarray) -> dict[str, float]:
    """Shape descriptors of a binary lesion mask.

    Area is measured on the whole mask; the shape descriptors on its largest
    8-connected component (the main lesion), so that a second lesion drawn in
    the same image does not make the outline look irregular.

    Returns
    -------
    dict
        ``area_px`` (pixel count of the mask), ``log_area`` = ln(area_px),
        ``area_fraction`` = area_px / image pixels; for the largest component:
        ``solidity`` = pixels / pixels of its filled convex hull,
        ``convexity`` = convex-hull perimeter / outer contour perimeter
        (``cv2.arcLength``), ``aspect_ratio`` = box width / box height,
        ``bbox_width``/``bbox_height`` relative to the image width/height,
        ``bbox_cx``/``bbox_cy`` box centre relative to the image;
        ``n_components``. NaN where undefined (empty mask).
    """
    cv2 = _cv2()
    H, W = mask.shape
    m = np.ascontiguousarray(mask.astype(np.uint8))
    area = int(m.sum())
    nan = float("nan")
    out = dict.fromkeys(("area_px", *GEOMETRY_FEATURES, "n_components"), nan)
    out["area_px"] = float(area)
    out["n_components"] = 0.0
    if area == 0:
        return out
    ncomp, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    main = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (lab == main).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.vstack([c.reshape(-1, 2) for c in contours])
    hull = cv2.convexHull(pts)
    hull_img = np.zeros_like(comp)
    cv2.fillConvexPoly(hull_img, hull, 1)
    hull_area = int(hull_img.sum())
    perim = float(sum(cv2.arcLength(c, True) for c in contours))
    hull_perim = float(cv2.arcLength(hull, True))
    x, y, bw, bh = (int(v) for v in stats[main, :4])
    out.update(
        log_area=float(np.log(area)),
        area_fraction=area / (H * W),
        solidity=int(comp.sum()) / hull_area if hull_area else nan,
        convexity=hull_perim / perim if perim > 0 else nan,
        aspect_ratio=bw / bh,
        bbox_width=bw / W,
        bbox_height=bh / H,
        bbox_cx=(x + bw / 2) / W,
        bbox_cy=(y + bh / 2) / H,
        n_components=float(ncomp - 1),
    )
    return out


def mask_findings(manifest: Manifest, records: Sequence[ImageRecord]) -> pd.DataFrame:
    """Mask problems and geometry per row (aligned with ``manifest.df``).

    A lesion row (benign/malignant) without a mask path or with a missing file
    is ``mask_missing``; a mask that does not decode is ``mask_unreadable``
    (``mask_error`` holds the message); ``mask_size_mismatch`` when a mask
    file's size differs from the image's; ``mask_empty`` for a lesion whose
    mask has no pixel; ``mask_on_normal`` for a ``normal`` row with lesion
    pixels; ``mask_multiple_components`` for more than one 8-connected
    component; ``mask_touches_border`` when a lesion pixel lies on the image's
    outermost row or column.
    """
    rows = []
    for i, rec in enumerate(records):
        label = manifest.df["label"].iat[i]
        lesion = label in LESION_LABELS
        paths = manifest.mask_paths(i)
        row: dict[str, Any] = dict.fromkeys(MASK_FLAGS, False)
        row["mask_files"] = len(paths)
        row["mask_error"] = ""
        geo = mask_geometry(np.zeros((1, 1), bool))
        if not paths:
            row["mask_missing"] = lesion
        else:
            masks = []
            for mp in paths:
                try:
                    masks.append(read_mask([mp]))
                except MaskError as exc:
                    if "not found" in exc.problem:
                        row["mask_missing"] = True
                    else:
                        row["mask_unreadable"] = True
                    row["mask_error"] = str(exc)
            shape = (rec.height, rec.width) if rec.ok else None
            if masks:
                if shape is not None and any(mk.shape != shape for mk in masks):
                    row["mask_size_mismatch"] = True
                    bad = next(mk for mk in masks if mk.shape != shape)
                    row["mask_error"] = row["mask_error"] or (
                        f"mask size {bad.shape[1]}x{bad.shape[0]} differs from image size "
                        f"{shape[1]}x{shape[0]}"
                    )
                same = [mk for mk in masks if mk.shape == masks[0].shape]
                union = np.logical_or.reduce(same) if len(same) > 1 else same[0]
                if not row["mask_size_mismatch"]:
                    geo = mask_geometry(union)
                    any_px = bool(union.any())
                    row["mask_empty"] = lesion and not any_px and not row["mask_missing"]
                    row["mask_on_normal"] = (label == "normal") and any_px
                    row["mask_multiple_components"] = geo["n_components"] > 1
                    row["mask_touches_border"] = bool(
                        union[0].any() or union[-1].any() or union[:, 0].any() or union[:, -1].any()
                    )
        row.update({("lesion_" + k if k == "area_px" else k): v for k, v in geo.items()})
        rows.append(row)
    df = pd.DataFrame(rows, index=manifest.df.index)
    df["mask_problem"] = [
        ";".join(f.removeprefix("mask_") for f in MASK_FLAGS if r[f]) for _, r in df.iterrows()
    ]
    return df


# --------------------------------------------------------------------------- shortcuts


def _single_feature_auc(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(x)
    if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
        return float("nan"), ""
    a = float(roc_auc_score(y[ok], x[ok]))
    return (a, "higher = malignant") if a >= 0.5 else (1 - a, "lower = malignant")


def shortcut_auc(
    features: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    feature_sets: dict[str, Sequence[str]],
    n_splits: int = 5,
    seed: int = 0,
    warn_auc: float = 0.8,
) -> pd.DataFrame:
    """AUC of trivial models and single features that should not know the label.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per image (benign/malignant rows only).
    y : numpy.ndarray
        1 = malignant.
    groups : numpy.ndarray
        Leakage groups (near-duplicate union patient); no group is split across folds.
    feature_sets : dict
        Name -> columns; each set is fitted as a standardised logistic regression.
    n_splits : int
        Folds of ``StratifiedGroupKFold`` (fewer when a class has fewer groups).
    seed : int
        Fold shuffling seed.
    warn_auc : float
        ``warning`` is True when the AUC reaches this.

    Returns
    -------
    pandas.DataFrame
        Columns ``shortcut``, ``kind`` (``model`` or ``feature``), ``features``,
        ``auc``, ``direction`` (features), ``n``, ``n_malignant``, ``folds``,
        ``warning``. Model AUC = ``roc_auc_score`` of the pooled out-of-fold
        probabilities; feature AUC = ``max(A, 1 - A)`` of the raw values.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    rows = []
    n, npos = len(y), int(y.sum())
    min_groups = min(len(np.unique(groups[y == c])) for c in (0, 1)) if 0 < npos < n else 0
    folds = min(n_splits, min_groups)
    for name, cols in feature_sets.items():
        X = features[list(cols)].to_numpy(dtype=float)
        auc = float("nan")
        if folds >= 2:
            usable = [c for c in range(X.shape[1]) if np.isfinite(X[:, c]).any()]
            if usable:
                Xu = X[:, usable]
                oof = np.full(n, np.nan)
                cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
                for tr, te in cv.split(Xu, y, groups):
                    if len(np.unique(y[tr])) < 2:
                        continue
                    model = make_pipeline(
                        SimpleImputer(strategy="median"),
                        StandardScaler(),
                        LogisticRegression(max_iter=2000),
                    )
                    model.fit(Xu[tr], y[tr])
                    oof[te] = model.predict_proba(Xu[te])[:, 1]
                ok = np.isfinite(oof)
                if ok.sum() > 1 and len(np.unique(y[ok])) == 2:
                    auc = float(roc_auc_score(y[ok], oof[ok]))
        rows.append(
            dict(
                shortcut=name, kind="model", features=",".join(cols), auc=auc, direction="",
                n=n, n_malignant=npos, folds=folds,
            )
        )  # fmt: skip
        for c in cols:
            a, d = _single_feature_auc(features[c].to_numpy(dtype=float), y)
            rows.append(
                dict(
                    shortcut=f"{name}: {c}", kind="feature", features=c, auc=a, direction=d,
                    n=n, n_malignant=npos, folds=0,
                )
            )  # fmt: skip
    out = pd.DataFrame(rows)
    out["warning"] = out["auc"].fillna(0) >= warn_auc
    return out


# --------------------------------------------------------------------------- result


@dataclass
class AuditResult:
    """Everything :func:`run_audit` found and wrote.

    Attributes
    ----------
    out_dir : pathlib.Path
        Output folder.
    flags : pandas.DataFrame
        One row per image with every flag (``flags.csv``).
    duplicates : pandas.DataFrame
        Group ids per image (``duplicates.csv``).
    pairs : pandas.DataFrame
        Exact and accepted near-duplicate pairs (``duplicate_pairs.csv``).
    conflicts : pandas.DataFrame
        Members of groups with more than one label (``conflicts.csv``).
    shortcuts : pandas.DataFrame
        Shortcut AUCs (``shortcuts.csv``).
    distribution : pandas.DataFrame
        Counts, sizes and lesion areas per cohort and label (``distribution.csv``).
    summary : dict
        The numbers of ``summary.json``.
    warnings : list of str
        Plain-language warnings (also in the summary and the report).
    manifest : Manifest
        Input plus ``dup_group`` and the audit flags (``manifest_audited.csv``).
    report : pathlib.Path
        ``report.html``.
    """

    out_dir: Path
    flags: pd.DataFrame
    duplicates: pd.DataFrame
    pairs: pd.DataFrame
    conflicts: pd.DataFrame
    shortcuts: pd.DataFrame
    distribution: pd.DataFrame
    summary: dict
    warnings: list[str]
    manifest: Manifest
    report: Path


def _distribution(flags: pd.DataFrame) -> pd.DataFrame:
    def q(s: pd.Series, v: float) -> float:
        s = s.dropna()
        return float(s.quantile(v)) if len(s) else float("nan")

    rows = []
    keys = [("all", "all", flags)]
    for (c, lab), sub in flags.groupby(["cohort", "label"], sort=True):
        keys.append((str(c), str(lab), sub))
    for c, sub in flags.groupby("cohort", sort=True):
        keys.append((str(c), "all", sub))
    for cohort, label, sub in keys:
        rows.append(
            dict(
                cohort=cohort,
                label=label,
                n=len(sub),
                height_median=q(sub["height"], 0.5),
                height_min=sub["height"].min(),
                height_max=sub["height"].max(),
                width_median=q(sub["width"], 0.5),
                width_min=sub["width"].min(),
                width_max=sub["width"].max(),
                lesion_area_frac_median=q(sub["area_fraction"], 0.5),
                lesion_area_frac_q25=q(sub["area_fraction"], 0.25),
                lesion_area_frac_q75=q(sub["area_fraction"], 0.75),
                n_colour=int(sub["has_colour"].sum()),
                n_colour_overlay=int(sub["colour_overlay"].sum()),
                n_annotated=int(sub["has_annotations"].sum()),
                n_mask_problem=int((sub["mask_problem"] != "").sum()),
            )
        )
    return pd.DataFrame(rows)


def run_audit(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    *,
    near_duplicates: bool = True,
    nd_params: NearDuplicateParams | None = None,
    annotation_params: AnnotationParams | None = None,
    shortcut_warn_auc: float = 0.8,
    n_splits: int = 5,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    report: bool = True,
    max_report_groups: int = 150,
    log: Callable[[str], None] | None = None,
) -> AuditResult:
    """Audit a manifest for leakage and shortcuts and write the tables and the report.

    Parameters
    ----------
    manifest : Manifest
        Rows to audit (any labels; shortcuts use benign/malignant rows only).
    out_dir : path-like
        Output folder (created). Files: ``flags.csv``, ``duplicates.csv``,
        ``duplicate_pairs.csv``, ``conflicts.csv``, ``shortcuts.csv``,
        ``distribution.csv``, ``summary.json``, ``report.html``,
        ``manifest_audited.csv`` (all written atomically).
    near_duplicates : bool
        Run the near-duplicate search (exact duplicates are always found).
    nd_params, annotation_params : optional
        Settings of the near-duplicate search and the annotation heuristic.
    shortcut_warn_auc : float
        Warn when a shortcut's AUC reaches this.
    n_splits, seed : int
        Grouped CV of the shortcut models.
    cache_dir : path-like, optional
        Cache root (default :func:`default_cache_dir`).
    use_cache : bool
        Use the per-image and pair caches.
    report : bool
        Write ``report.html``.
    max_report_groups : int
        Thumbnail groups shown per report section (all are in the CSVs).
    log : callable, optional
        Receives one-line progress messages.

    Returns
    -------
    AuditResult
    """
    from buscad.data.splits import split_groups

    say = log or (lambda _msg: None)
    nd = nd_params or NearDuplicateParams()
    ap = annotation_params or AnnotationParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = manifest.df
    n = len(df)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    records = scan_images(manifest, nd, ap, cache_dir=cache_dir, use_cache=use_cache)
    timings["scan_s"] = time.perf_counter() - t0
    unreadable = [i for i, r in enumerate(records) if not r.ok]
    for i in unreadable:
        say(f"skipped: {records[i].error}")
    say(f"read {n - len(unreadable)} of {n} images in {timings['scan_s']:.1f} s")

    t1 = time.perf_counter()
    exact = exact_duplicate_pairs(records)
    if near_duplicates:
        near = _pairs_cached(records, nd, cache_dir, use_cache)
    else:
        near = find_near_duplicates([], nd)
    dup_labels, exact_labels = duplicate_groups(n, exact, near)
    dup_group = group_names(dup_labels, records, df["image_id"])
    exact_group = group_names(exact_labels, records, df["image_id"])
    timings["duplicates_s"] = time.perf_counter() - t1
    say(f"duplicate search in {timings['duplicates_s']:.1f} s")

    # ---- per-image flags
    masks = mask_findings(manifest, records)
    flags = pd.DataFrame(
        {
            "image_id": df["image_id"],
            "label": df["label"],
            "cohort": df["cohort"] if "cohort" in df.columns else "",
            "patient_id": df["patient_id"],
            "readable": [r.ok for r in records],
            "read_error": [r.error for r in records],
            "file_sha256": [r.file_sha256 for r in records],
            "pixel_sha256": [r.pixel_sha256 for r in records],
            "height": [r.height if r.ok else np.nan for r in records],
            "width": [r.width if r.ok else np.nan for r in records],
            "has_colour": [r.has_colour for r in records],
            "colour_fraction": [round(r.colour_fraction, 6) for r in records],
            "colour_overlay_fraction": [round(r.colour_overlay_fraction, 6) for r in records],
            "colour_overlay": [
                r.colour_overlay_fraction >= COLOUR_OVERLAY_MIN_FRACTION for r in records
            ],
            "has_annotations": [r.has_annotations for r in records],
            "n_calipers": [len(r.crosses) for r in records],
            "n_text": [len(r.words) for r in records],
        },
        index=df.index,
    )
    flags["cohort"] = flags["cohort"].fillna("").astype(str)
    flags["aspect"] = flags["width"] / flags["height"]
    flags["colour_tint"] = flags["has_colour"] & ~flags["colour_overlay"]
    flags = pd.concat([flags, masks], axis=1)
    gsize = pd.Series(dup_group).map(pd.Series(dup_group).value_counts()).to_numpy()
    esize = pd.Series(exact_group).map(pd.Series(exact_group).value_counts()).to_numpy()
    flags["dup_group"] = dup_group
    flags["dup_group_size"] = gsize
    flags["exact_group"] = exact_group
    flags["exact_duplicate"] = esize > 1
    flags["near_duplicate"] = gsize > 1
    labels_per_group = flags.groupby("dup_group")["label"].agg(lambda s: sorted(set(s)))
    flags["group_labels"] = flags["dup_group"].map(lambda g: "/".join(labels_per_group[g]))
    flags["label_conflict"] = flags["dup_group"].map(lambda g: len(labels_per_group[g]) > 1)

    # ---- pairs table (exact + accepted near)
    pair_rows = []
    for r in exact.itertuples(index=False):
        pair_rows.append(dict(i=r.i, j=r.j, kind=r.kind, ncc=1.0, texture_ncc=1.0))
    if len(near):
        acc = near[near["accepted"].astype(bool)]
        exact_set = {(int(a), int(b)) for a, b in zip(exact["i"], exact["j"], strict=True)}
        for r in acc.itertuples(index=False):
            if (int(r.i), int(r.j)) in exact_set:
                continue
            pair_rows.append(
                dict(i=int(r.i), j=int(r.j), kind=r.kind, ncc=r.ncc, texture_ncc=r.texture_ncc)
            )
    pairs = pd.DataFrame(pair_rows, columns=["i", "j", "kind", "ncc", "texture_ncc"])
    pairs.insert(0, "image_id_a", [df["image_id"].iat[int(i)] for i in pairs["i"]])
    pairs.insert(1, "image_id_b", [df["image_id"].iat[int(j)] for j in pairs["j"]])
    pairs.insert(2, "label_a", [df["label"].iat[int(i)] for i in pairs["i"]])
    pairs.insert(3, "label_b", [df["label"].iat[int(j)] for j in pairs["j"]])
    pairs["dup_group"] = [dup_group[int(i)] for i in pairs["i"]]
    pairs = pairs.drop(columns=["i", "j"])

    duplicates = flags[
        ["image_id", "label", "cohort", "patient_id", "dup_group", "dup_group_size",
         "exact_group", "exact_duplicate", "label_conflict", "file_sha256", "pixel_sha256"]
    ].copy()  # fmt: skip
    conflicts = flags.loc[
        flags["label_conflict"],
        ["dup_group", "image_id", "label", "cohort", "patient_id", "group_labels"],
    ].sort_values(["dup_group", "image_id"])

    # ---- shortcuts
    t2 = time.perf_counter()
    lesion = flags["label"].isin(LESION_LABELS).to_numpy() & flags["readable"].to_numpy()
    sub = manifest.subset(lesion)
    groups = split_groups(sub, dup_groups=pd.Series(dup_group[lesion], index=sub.df.index))
    feats = flags.loc[lesion, list(GEOMETRY_FEATURES) + list(SIZE_FEATURES)].astype(float)
    yl = (flags.loc[lesion, "label"] == "malignant").to_numpy().astype(int)
    shortcuts = shortcut_auc(
        feats,
        yl,
        groups.to_numpy(),
        {"mask geometry": GEOMETRY_FEATURES, "image size": SIZE_FEATURES},
        n_splits=n_splits,
        seed=seed,
        warn_auc=shortcut_warn_auc,
    )
    timings["shortcuts_s"] = time.perf_counter() - t2

    distribution = _distribution(flags)

    # ---- warnings and summary
    warnings: list[str] = []
    for r in shortcuts[shortcuts["warning"]].itertuples(index=False):
        if r.kind == "model":
            warnings.append(
                f"Shortcut: {r.shortcut} alone predicts malignancy with cross-validated AUC "
                f"{r.auc:.3f} (>= {shortcut_warn_auc}); a model may learn how the images or "
                f"masks were made instead of the lesion."
            )
        else:
            warnings.append(
                f"Shortcut: the single feature {r.features} gives AUC {r.auc:.3f} ({r.direction})."
            )
    n_conf_groups = int(flags.loc[flags["label_conflict"], "dup_group"].nunique())
    near_groups = flags.loc[flags["near_duplicate"], "dup_group"]
    if n_conf_groups:
        warnings.append(
            f"{n_conf_groups} duplicate group(s) carry different labels (see conflicts.csv)."
        )
    if len(near_groups):
        warnings.append(
            f"{near_groups.nunique()} duplicate group(s) hold {len(near_groups)} images: an "
            f"image-level random split leaks them across train and test; use "
            f"`buscad data split` (grouped)."
        )
    exact_pairs = int((pairs["kind"].str.startswith("exact")).sum()) if len(pairs) else 0
    summary: dict[str, Any] = {
        "n_images": n,
        "n_unreadable": len(unreadable),
        "labels": {str(k): int(v) for k, v in df["label"].value_counts().items()},
        "cohorts": {str(k): int(v) for k, v in flags["cohort"].value_counts().items()},
        "exact_duplicate_pairs": exact_pairs,
        "exact_duplicate_file_pairs": int((pairs["kind"] == "exact file").sum()),
        "exact_duplicate_images": int(flags["exact_duplicate"].sum()),
        "near_duplicate_search": bool(near_duplicates),
        "near_duplicate_pairs": int(len(pairs) - exact_pairs),
        "duplicate_groups": int(near_groups.nunique()),
        "images_in_duplicate_groups": len(near_groups),
        "largest_duplicate_group": int(flags["dup_group_size"].max()) if n else 0,
        "conflict_groups": n_conf_groups,
        "conflict_images": int(flags["label_conflict"].sum()),
        "colour_images": int(flags["has_colour"].sum()),
        "colour_overlay_images": int(flags["colour_overlay"].sum()),
        "colour_tint_images": int(flags["colour_tint"].sum()),
        "annotated_images": int(flags["has_annotations"].sum()),
        "annotated_calipers": int((flags["n_calipers"] > 0).sum()),
        "annotated_text": int((flags["n_text"] > 0).sum()),
        "mask_problems": {f: int(flags[f].sum()) for f in MASK_FLAGS},
        "shortcuts": {
            r.shortcut: (None if not np.isfinite(r.auc) else round(float(r.auc), 4))
            for r in shortcuts.itertuples(index=False)
        },
        "shortcut_warn_auc": shortcut_warn_auc,
        "warnings": warnings,
        "method": {
            "near_duplicates": asdict(nd),
            "annotations": asdict(ap),
            "shortcut_cv": f"{n_splits}-fold StratifiedGroupKFold (groups: near-duplicate "
            f"group union patient), seed {seed}, logistic regression on standardised features",
        },
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }

    # ---- write
    atomic_write_table(flags, out / "flags.csv")
    atomic_write_table(duplicates, out / "duplicates.csv")
    atomic_write_table(pairs, out / "duplicate_pairs.csv")
    atomic_write_table(conflicts, out / "conflicts.csv")
    atomic_write_table(shortcuts, out / "shortcuts.csv")
    atomic_write_table(distribution, out / "distribution.csv")
    audited = manifest.with_columns(
        dup_group=dup_group,
        dup_group_size=gsize,
        audit_exact_duplicate=flags["exact_duplicate"].to_numpy(),
        audit_label_conflict=flags["label_conflict"].to_numpy(),
        audit_has_colour=flags["has_colour"].to_numpy(),
        audit_colour_overlay=flags["colour_overlay"].to_numpy(),
        audit_has_annotations=flags["has_annotations"].to_numpy(),
        audit_mask_problem=flags["mask_problem"].to_numpy(),
    )
    audited.save(out / "manifest_audited.csv")
    report_path = out / "report.html"
    timings["total_s"] = time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    result = AuditResult(
        out_dir=out,
        flags=flags,
        duplicates=duplicates,
        pairs=pairs,
        conflicts=conflicts,
        shortcuts=shortcuts,
        distribution=distribution,
        summary=summary,
        warnings=warnings,
        manifest=audited,
        report=report_path,
    )
    if report:
        atomic_write_text(report_path, render_report(result, manifest, records, max_report_groups))
    atomic_write_json(out / "summary.json", summary)
    return result


# --------------------------------------------------------------------------- report


def _thumb_png(
    manifest: Manifest,
    i: int,
    size: int = 180,
    boxes: Sequence[tuple[int, int, int, int]] = (),
    outline_mask: bool = False,
) -> str:
    """Base64 PNG thumbnail of row ``i`` (RGB kept), with boxes and mask outline in red."""
    from PIL import Image, ImageDraw

    overlay = bool(boxes) or (outline_mask and bool(manifest.mask_paths(i)))
    path = manifest.image_path(i)
    im = None
    try:
        with Image.open(path) as src:
            src.load()
            if src.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "L", "LA", "1"):
                colour = src.mode not in ("L", "LA", "1")
                im = src.convert("RGB" if (colour or overlay) else "L")
    except Exception:
        im = None
    if im is None:  # 16-bit, DICOM and other sources: through the project's reader
        try:
            gray, _ = read_image(path)
        except ImageReadError:
            return ""
        im = Image.fromarray(to_uint8(gray)).convert("RGB" if overlay else "L")
    W, H = im.size
    if outline_mask and manifest.mask_paths(i):
        try:
            cv2 = _cv2()
            m = read_mask(manifest.mask_paths(i)).astype(np.uint8)
            if m.shape == (H, W):
                edge = m - cv2.erode(m, np.ones((3, 3), np.uint8))
                edge = cv2.dilate(edge, np.ones((max(1, W // 200),) * 2, np.uint8))
                arr = np.asarray(im).copy()
                arr[edge > 0] = (255, 40, 40)
                im = Image.fromarray(arr)
        except MaskError:
            pass
    if boxes:
        d = ImageDraw.Draw(im)
        lw = max(1, W // 250)
        for x, y, w, h in boxes:
            d.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=(255, 40, 40), width=lw)
    im.thumbnail((size, size))
    if im.mode == "L":  # 32 grey levels: invisible at this size, half the bytes
        im = im.point(lambda v: v & 0xF8)
    buf = _io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f0f0f0} .warn{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;margin:6px 0}
.group{display:inline-block;border:1px solid #bbb;margin:4px;padding:4px;vertical-align:top;background:#fafafa}
.group.conflict{border:2px solid #c00;background:#fff0f0} figure{display:inline-block;margin:2px;text-align:center}
figcaption{font-size:.72em;max-width:180px;overflow-wrap:anywhere} img{display:block;margin:auto}
.note{color:#555;font-size:.85em} code{background:#f4f4f4;padding:0 3px}
"""


def _table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df is None or len(df) == 0:
        return "<p class='note'>none</p>"
    shown = df.head(max_rows)
    more = (
        f"<p class='note'>{len(df) - max_rows} more rows in the CSV.</p>"
        if len(df) > max_rows
        else ""
    )
    return (
        shown.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3g}", na_rep="") + more
    )


def _figure(b64: str, caption: str) -> str:
    img = f"<img src='data:image/png;base64,{b64}' alt=''>" if b64 else "<p>(unreadable)</p>"
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render_report(
    result: AuditResult,
    manifest: Manifest,
    records: Sequence[ImageRecord],
    max_groups: int = 150,
) -> str:
    """One self-contained HTML page: summary, method, thumbnails of every flagged group.

    Thumbnails are embedded as base64 PNG; the page references no external asset.
    """
    flags = result.flags
    s = result.summary
    nd = s["method"]["near_duplicates"]
    an = s["method"]["annotations"]
    parts: list[str] = []
    esc = html.escape
    parts.append(f"<h1>Data audit: {esc(str(manifest.source.name))}</h1>")
    parts.append(
        f"<p class='note'>{s['n_images']} images; labels {esc(json.dumps(s['labels']))}; "
        f"cohorts {esc(json.dumps(s['cohorts']))}; audit time {s['timings_s'].get('total_s', 0):.1f} s.</p>"
    )
    for w in result.warnings:
        parts.append(f"<div class='warn'>{esc(w)}</div>")
    summ = pd.DataFrame(
        [
            ("exact duplicate pairs (file or pixels)", s["exact_duplicate_pairs"]),
            ("near-duplicate pairs (verified)", s["near_duplicate_pairs"]),
            ("duplicate groups (size >= 2)", s["duplicate_groups"]),
            ("images in duplicate groups", s["images_in_duplicate_groups"]),
            ("groups with conflicting labels", s["conflict_groups"]),
            ("images with colour", s["colour_images"]),
            ("  with colour overlays (Doppler, coloured marks)", s["colour_overlay_images"]),
            ("  tinted only (colour map, no overlay)", s["colour_tint_images"]),
            ("images with burned-in annotations", s["annotated_images"]),
            ("  with caliper crosses", s["annotated_calipers"]),
            ("  with text", s["annotated_text"]),
            *[(f"mask: {k.removeprefix('mask_')}", v) for k, v in s["mask_problems"].items()],
            ("unreadable images", s["n_unreadable"]),
        ],
        columns=["finding", "count"],
    )
    parts.append("<h2>Summary</h2>" + _table_html(summ))
    parts.append(
        "<h2>Method and thresholds</h2><ul>"
        "<li><b>Exact duplicates</b>: SHA-256 of the file bytes and of the decoded grayscale pixels.</li>"
        f"<li><b>Near-duplicates</b>: candidates from an {nd['descriptor_grid']}x{nd['descriptor_grid']} "
        f"correlation of each image's central square (side {nd['query_fraction']} of the short side, "
        f"thumbnail long side {nd['candidate_size']} px) against multi-scale windows of every other image "
        f"(stride {nd['window_stride']} px); top {nd['top_k']} partners per image. Verification: "
        f"band-pass (DoG sigma {nd['band'][0]}/{nd['band'][1]} px at {nd['thumb_size']} px) normalised "
        f"cross-correlation of the central {nd['template_fraction']} of one image searched in the other "
        f"over {nd['scale_search'][2]} scales ({nd['scale_search'][0]}-{nd['scale_search'][1]} x the candidate "
        f"scale), both directions. Accepted when min NCC &ge; {nd['ncc_threshold']} and the two scales agree "
        f"within a factor {nd['scale_tolerance']} and the texture NCC (DoG sigma "
        f"{nd['texture_band'][0]}/{nd['texture_band'][1]} px divided by its local RMS) &ge; "
        f"{nd['texture_threshold']}; <i>same scan</i> when the texture NCC &ge; "
        f"{nd['same_scan_texture']}, otherwise "
        "<i>similar frame</i>. Groups = connected components (union-find) of the accepted pairs.</li>"
        f"<li><b>Burned-in annotations</b>: thin bright strokes (pixel &ge; {an['bright']} and &ge; "
        f"{an['contrast']} grey levels above both pixels {an['stroke_offsets']} px away across the stroke); "
        f"a caliper is a '+' with {an['arm']}-px stroke arms on all four sides; a text word is a stroke "
        f"cluster {an['text_height'][0]}-{an['text_height'][1]} px high, {an['text_aspect'][0]}-"
        f"{an['text_aspect'][1]}x as wide, away from the image border. Boxes are drawn in red.</li>"
        "<li><b>Colour</b>: share of pixels with max(R,G,B) - min(R,G,B) &gt; 24; <i>overlay</i> "
        "pixels deviate by more than 24 in a channel from the image's median colour at the same "
        "luma (a uniform tint gives none); colour overlay when they are &ge; 5e-5 of the image.</li>"
        "<li><b>Shortcuts</b>: " + esc(s["method"]["shortcut_cv"]) + "; single features scored "
        "alone as max(AUC, 1 - AUC). Warning at AUC &ge; " + f"{s['shortcut_warn_auc']}.</li></ul>"
    )
    parts.append(
        "<h2>Annotation shortcuts (benign vs malignant)</h2>" + _table_html(result.shortcuts)
    )
    parts.append("<h2>Class and size distribution</h2>" + _table_html(result.distribution))

    # duplicate groups
    multi = flags[flags["dup_group_size"] > 1]
    groups = list(dict.fromkeys(multi["dup_group"]))
    conflict_set = set(flags.loc[flags["label_conflict"], "dup_group"])
    groups.sort(key=lambda g: g not in conflict_set)  # stable: conflicts first, then by row
    pair_info = {}
    for r in result.pairs.itertuples(index=False):
        pair_info.setdefault(r.dup_group, []).append(
            f"{r.image_id_a}~{r.image_id_b}: {r.kind} {r.ncc:.2f}"
        )
    parts.append(
        f"<h2>Duplicate groups ({len(groups)}; conflicting labels first, framed in red)</h2>"
    )
    if conflict_set:
        parts.append("<h3>Label conflicts</h3>" + _table_html(result.conflicts))
    for g in groups[:max_groups]:
        rows = np.flatnonzero(flags["dup_group"].to_numpy() == g)
        figs = "".join(
            _figure(
                _thumb_png(manifest, int(i), 140),
                f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] "
                f"{int(flags['width'].iat[i]) if flags['readable'].iat[i] else '?'}x"
                f"{int(flags['height'].iat[i]) if flags['readable'].iat[i] else '?'}",
            )
            for i in rows
        )
        cls = "group conflict" if g in conflict_set else "group"
        info = esc("; ".join(pair_info.get(g, [])[:4]))
        parts.append(f"<div class='{cls}'><div class='note'>group {g}: {info}</div>{figs}</div>")
    if len(groups) > max_groups:
        parts.append(
            f"<p class='note'>{len(groups) - max_groups} more groups in duplicates.csv.</p>"
        )

    def gallery(title: str, rows: np.ndarray, caption: Callable[[int], str], **kw: Any) -> None:
        parts.append(f"<h2>{esc(title)} ({len(rows)})</h2>")
        figs = []
        for i in rows[:max_groups]:
            boxes = (records[i].crosses + records[i].words) if kw.get("boxes") else ()
            figs.append(
                _figure(
                    _thumb_png(manifest, int(i), 160, boxes, kw.get("mask", False)), caption(int(i))
                )
            )
        parts.append("<div>" + "".join(figs) + "</div>")
        if len(rows) > max_groups:
            parts.append(f"<p class='note'>{len(rows) - max_groups} more in flags.csv.</p>")

    gallery(
        "Colour content",
        np.flatnonzero(flags["has_colour"].to_numpy()),
        lambda i: (
            f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] colour "
            f"{flags['colour_fraction'].iat[i]:.3f}, overlay {flags['colour_overlay_fraction'].iat[i]:.4f}"
        ),
    )
    gallery(
        "Burned-in annotations",
        np.flatnonzero(flags["has_annotations"].to_numpy()),
        lambda i: (
            f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] calipers {flags['n_calipers'].iat[i]}, text {flags['n_text'].iat[i]}"
        ),
        boxes=True,
    )
    gallery(
        "Mask problems",
        np.flatnonzero((flags["mask_problem"] != "").to_numpy()),
        lambda i: (
            f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] {flags['mask_problem'].iat[i]}"
        ),
        mask=True,
    )
    unread = np.flatnonzero(~flags["readable"].to_numpy())
    if len(unread):
        parts.append(
            "<h2>Unreadable images</h2>"
            + _table_html(flags.iloc[unread][["image_id", "read_error"]])
        )
    parts.append(
        "<p class='note'>Written by buscad data audit. Tables: flags.csv, duplicates.csv, "
        "duplicate_pairs.csv, conflicts.csv, shortcuts.csv, distribution.csv, summary.json.</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>buscad data audit</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


# --------------------------------------------------------------------------- CLI


def register(data_app: Any) -> None:
    """Add ``buscad data audit`` to the ``buscad data`` group."""
    import typer

    @data_app.command("audit")
    def audit_cmd(
        manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for tables and report."),
        no_near_duplicates: bool = typer.Option(
            False, "--no-near-duplicates", help="Skip the near-duplicate search (exact only)."
        ),
        ncc_threshold: float = typer.Option(
            NearDuplicateParams.ncc_threshold, help="Near-duplicate acceptance NCC."
        ),
        top_k: int = typer.Option(NearDuplicateParams.top_k, help="Candidates kept per image."),
        shortcut_auc_warn: float = typer.Option(
            0.8, "--shortcut-auc", help="Warn when a shortcut's AUC reaches this."
        ),
        seed: int = typer.Option(0, help="Seed of the shortcut cross-validation."),
        cache_dir: Path | None = typer.Option(
            None, help="Cache folder (default $BUSCAD_CACHE or ~/.cache/buscad)."
        ),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache."),
    ) -> None:
        """Audit a manifest: duplicates, label conflicts, colour, burned-in marks, masks, shortcuts."""
        man = Manifest.load(manifest)
        nd = NearDuplicateParams(ncc_threshold=ncc_threshold, top_k=top_k)
        res = run_audit(
            man,
            out,
            near_duplicates=not no_near_duplicates,
            nd_params=nd,
            shortcut_warn_auc=shortcut_auc_warn,
            seed=seed,
            cache_dir=cache_dir,
            use_cache=not no_cache,
            log=lambda m: typer.echo(m, err=True),
        )
        s = res.summary
        typer.echo(
            f"{s['n_images']} images: {s['exact_duplicate_pairs']} exact duplicate pair(s), "
            f"{s['duplicate_groups']} duplicate group(s) holding {s['images_in_duplicate_groups']} "
            f"images, {s['conflict_groups']} with conflicting labels; {s['colour_images']} with "
            f"colour ({s['colour_overlay_images']} with overlays), {s['annotated_images']} with burned-in annotations; mask problems "
            f"{sum(s['mask_problems'].values())}"
        )
        for r in res.shortcuts[res.shortcuts["kind"] == "model"].itertuples(index=False):
            typer.echo(f"shortcut AUC {r.shortcut}: {r.auc:.3f}")
        for w in res.warnings:
            typer.echo(f"WARNING: {w}")
        typer.echo(f"wrote {out / 'report.html'} and {out / 'manifest_audited.csv'}")
