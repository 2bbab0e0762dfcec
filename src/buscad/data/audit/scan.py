"""Per-image scan of the audit (hashes, thumbnails, colour, annotation marks), cached per file content."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from buscad.data.audit.annotations import AnnotationParams, _cv2, annotation_marks
from buscad.data.io import read_image, to_uint8
from buscad.data.manifest import Manifest
from buscad.errors import ImageReadError
from buscad.utils import (
    array_sha256,
    atomic_path,
    file_sha256,
    stable_hash,
)

#: Bump when the cached per-image record changes meaning.
_RECORD_VERSION = 4


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
    """:func:`scan_image` for every row of ``manifest`` (unreadable rows keep their error).

    Per-image progress with ETA is shown inside :func:`buscad.progress.reporting`;
    ``progress(done, total)`` is also called after each image.
    """
    from buscad.progress import track

    out = []
    n = len(manifest)
    for i in track(range(n), "audit: reading images", "images"):
        out.append(scan_image(manifest.image_path(i), nd, ap, cache_dir, use_cache))
        if progress is not None:
            progress(i + 1, n)
    return out


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
