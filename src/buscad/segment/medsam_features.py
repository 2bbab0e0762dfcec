"""Lesion features pooled from LiteMedSAM's image embedding (the ``medsam`` feature family).

LiteMedSAM's image encoder (:mod:`buscad.segment.medsam`; Ma et al., MedSAM, Nat
Commun 15:654, 2024) turns an image into a ``(256, 64, 64)`` embedding ``E`` of the
image resized (longest side 256, aspect kept) and zero-padded at the bottom and
right to ``256 x 256`` (:func:`buscad.segment.medsam.preprocess`). Each of the
``64 x 64`` cells covers ``4 x 4`` pixels of that padded frame. The embedding is
pooled over three regions of the lesion outline
(:func:`buscad.segment.descriptors.lesion_regions`, the regions of the echo ratios):

- ``in``: the lesion (the outline's largest component);
- ``ring``: a ring outside the outline (a quarter of the equivalent radius wide);
- ``below``: the posterior band under the lesion (its width, as deep as it is tall),
  where acoustic shadowing or enhancement shows.

Region ``R`` (an ``H x W`` boolean mask of the original image) becomes cell
weights ``w_R`` on the embedding grid with the encoder's own geometry: ``R`` as
0/1 floats resized to ``(h', w')`` (:func:`~buscad.segment.medsam.resized_size`,
``cv2.INTER_AREA``), zero-padded to ``256 x 256`` at the bottom and right, then
averaged over each ``4 x 4`` block: ``w_R[i, j]`` is the share of cell ``(i, j)``
inside ``R``. The pooled feature of channel ``c`` is the weighted mean

    ``f_R[c] = sum_ij w_R[i, j] E[c, i, j] / sum_ij w_R[i, j]``

(NaN for every channel when ``sum w_R = 0``, e.g. no posterior band for a lesion
on the bottom edge). Columns: ``medsam_in_000`` ... ``medsam_in_255``, then
``medsam_ring_*``, then ``medsam_below_*`` (768 in all, :data:`COLUMNS`).

Embeddings are cached on disk (:class:`~buscad.segment.medsam.EmbeddingCache`): key
``<cache>/<first 12 hex of the encoder graph's SHA-256>/<image SHA-256>.npy``, the
image's SHA-256 being :func:`buscad.segment.medsam.image_key` of the 8-bit gray
image (shape, dtype and bytes). The default cache is
``buscad.utils.cache_root() / "litemedsam" / "embeddings"``, the one
``benchmarks/segment_medsam.py`` fills, so a second run never re-encodes an image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from buscad.errors import ModelFileError
from buscad.segment.medsam import (
    EMBEDDING_SHAPE,
    ENCODER_NAME,
    MANIFEST_NAME,
    SIZE,
    Embedding,
    EmbeddingCache,
    gray_uint8,
    preprocess,
    resized_size,
)

if TYPE_CHECKING:
    import pandas as pd

    from buscad.data.manifest import Manifest

#: Column prefix of the family (what models and bundles recognise).
PREFIX = "medsam_"
#: Regions pooled, in column order: name -> :func:`~buscad.segment.descriptors.lesion_regions` key.
REGIONS: dict[str, str] = {"in": "lesion", "ring": "ring", "below": "posterior"}
#: Every column, in order.
COLUMNS: tuple[str, ...] = tuple(
    f"{PREFIX}{r}_{c:03d}" for r in REGIONS for c in range(EMBEDDING_SHAPE[1])
)
#: Columns of :func:`max_pooled_features` (the ``medsam_max`` ablation family).
MAX_COLUMNS: tuple[str, ...] = tuple(c.replace(PREFIX, f"{PREFIX}max_", 1) for c in COLUMNS)
#: Regular expression of the family's columns.
COLUMN_PATTERN = rf"^{PREFIX}(?:{'|'.join(REGIONS)})_\d{{3}}$"
#: Bumped when the pooled features change meaning.
FEATURES_VERSION = 1


# ------------------------------------------------------------------ pooling
def region_weights(region: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Share of each embedding cell inside ``region``, ``(size/4, size/4)`` float64.

    ``region`` (``H x W``) resized to the encoder's ``(h', w')`` by area
    (``cv2.INTER_AREA``), zero-padded at the bottom and right to ``size x size``,
    then averaged over ``4 x 4`` blocks.
    """
    r = np.asarray(region, dtype=np.float32)
    nh, nw = resized_size(r.shape, size)
    frame = np.zeros((size, size), np.float64)
    frame[:nh, :nw] = cv2.resize(r, (nw, nh), interpolation=cv2.INTER_AREA)
    g = size // 4
    return frame.reshape(g, 4, g, 4).mean(axis=(1, 3))


def pooled_features(embedding: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 768 pooled features (:data:`COLUMNS` order) of one image's embedding and outline.

    Parameters
    ----------
    embedding : numpy.ndarray
        ``(1, 256, 64, 64)`` (or ``(256, 64, 64)``) of the image the mask outlines.
    mask : numpy.ndarray
        ``(H, W)`` lesion outline of the original image.

    Returns
    -------
    numpy.ndarray
        float64 ``(768,)``: ``f_in``, ``f_ring``, ``f_below`` (module docstring).

    Raises
    ------
    ValueError
        Wrong embedding shape or an empty mask.
    """
    return _pool(embedding, mask, "mean")


def max_pooled_features(embedding: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Max-pooled features (:data:`MAX_COLUMNS` order): an ablation, not the study model's input.

    ``g_R[c] = max E[c, i, j]`` over the cells with ``w_R[i, j] >= min(0.5, max w_R)``
    (at least half inside the region; the most covered cells of a region smaller
    than half a cell); NaN when ``w_R`` is all zero. Arguments and errors as
    :func:`pooled_features`.
    """
    return _pool(embedding, mask, "max")


def _pool(embedding: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    from buscad.segment.descriptors import lesion_regions

    e = np.asarray(embedding, dtype=np.float64)
    if e.shape == EMBEDDING_SHAPE[1:]:
        e = e[None]
    if e.shape != EMBEDDING_SHAPE:
        raise ValueError(f"embedding shape {e.shape}, expected {EMBEDDING_SHAPE}")
    regions = lesion_regions(mask)
    flat = e[0].reshape(e.shape[1], -1)
    out = []
    for key in REGIONS.values():
        w = region_weights(regions[key]).ravel()
        total = w.sum()
        if total <= 0:
            out.append(np.full(e.shape[1], np.nan))
        elif how == "mean":
            out.append(flat @ w / total)
        else:
            out.append(flat[:, w >= min(0.5, w.max())].max(axis=1))
    return np.concatenate(out)


def feature_dict(embedding: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """:func:`pooled_features` as ``column -> value``."""
    return dict(zip(COLUMNS, pooled_features(embedding, mask).tolist(), strict=True))


# ------------------------------------------------------------------ encoder
class Encoder:
    """LiteMedSAM's image encoder alone (one ONNX graph; ONNX Runtime, no PyTorch).

    Parameters
    ----------
    path : path-like
        ``encoder.onnx`` (:mod:`buscad.segment.medsam_convert`).
    sha256 : str, optional
        Expected SHA-256 of the graph (checked when given).
    threads : int, optional
        ONNX Runtime intra-op threads.

    Raises
    ------
    ModelFileError
        Missing graph, a digest that does not match, or a graph ONNX Runtime cannot load.
    """

    def __init__(
        self, path: str | os.PathLike[str], sha256: str | None = None, threads: int | None = None
    ) -> None:
        from buscad.segment.medsam import _session
        from buscad.utils import file_sha256

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(self.path, "LiteMedSAM encoder graph not found")
        digest = file_sha256(self.path)
        if sha256 and digest != sha256:
            raise ModelFileError(self.path, "SHA-256 of the LiteMedSAM encoder does not match")
        #: SHA-256 of the encoder graph (the embedding cache's model key).
        self.model_hash = digest
        self.session = _session(self.path, threads)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], threads: int | None = None) -> Encoder:
        """The encoder of a converted LiteMedSAM folder, checked against its manifest."""
        f = Path(folder)
        return cls(f / ENCODER_NAME, _manifest_encoder_hash(f), threads)

    def embed(self, gray: np.ndarray, key: str | None = None) -> Embedding:
        """The image embedding (:func:`~buscad.segment.medsam.preprocess` then the encoder)."""
        x, new_size = preprocess(gray)
        arr = self.session.run(None, {"image": x})[0]  # type: ignore[attr-defined]
        shape = tuple(np.shape(gray)[:2])
        return Embedding(np.asarray(arr, np.float32), new_size, shape)  # type: ignore[arg-type]


class MedSAMFeatures:
    """The ``medsam`` feature family of images and outlines, through the embedding cache.

    Parameters
    ----------
    encoder : Encoder or str or path-like, optional
        An :class:`Encoder` (or a converted LiteMedSAM folder, loaded lazily: a run
        whose embeddings are all cached never loads the graph). None: cache only.
    cache : path-like, optional
        The embedding cache (default :func:`~buscad.segment.medsam.default_cache`).
    model_hash : str, optional
        The encoder graph's SHA-256; needed with ``encoder=None`` (read-only cache),
        else read from the encoder's manifest.
    threads : int, optional
        ONNX Runtime intra-op threads of a lazily loaded encoder.
    """

    def __init__(
        self,
        encoder: Encoder | str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] | None = None,
        model_hash: str | None = None,
        threads: int | None = None,
    ) -> None:
        self._encoder = encoder if isinstance(encoder, Encoder) else None
        self._folder = None if encoder is None or isinstance(encoder, Encoder) else Path(encoder)
        self.threads = threads
        if self._encoder is not None:
            model_hash = self._encoder.model_hash
        elif self._folder is not None and model_hash is None:
            model_hash = _manifest_encoder_hash(self._folder)
        if not model_hash:
            raise ValueError("give an encoder or the model_hash of a read-only embedding cache")
        self.model_hash = model_hash
        can_compute = self._encoder is not None or self._folder is not None
        self.cache = EmbeddingCache(cache, model_hash, self._compute if can_compute else None)

    def _compute(self, gray: np.ndarray, key: str) -> Embedding:
        if self._encoder is None:
            assert self._folder is not None
            self._encoder = Encoder.from_folder(self._folder, self.threads)
        return self._encoder.embed(gray, key)

    def embedding(self, gray: np.ndarray) -> Embedding:
        """The (cached) embedding of an image (8-bit gray: :func:`~buscad.segment.medsam.gray_uint8`)."""
        return self.cache.get(gray_uint8(gray))

    def features(self, gray: np.ndarray, mask: np.ndarray, pool: str = "mean") -> dict[str, float]:
        """``column -> value`` of one image and its lesion outline.

        ``pool``: ``mean`` (:data:`COLUMNS`, the model's inputs) or ``max``
        (:data:`MAX_COLUMNS`, an ablation).

        Raises
        ------
        MaskError
            The mask does not match the image's size, or is empty.
        ModelFileError
            The embedding is not cached and cannot be computed.
        """
        from buscad.errors import MaskError

        g = gray_uint8(gray)
        m = np.asarray(mask, bool)
        if m.shape != g.shape:
            raise MaskError(
                "<mask>",
                f"mask size {m.shape[1]}x{m.shape[0]} differs from image size "
                f"{g.shape[1]}x{g.shape[0]}",
            )
        if not m.any():
            raise MaskError("<mask>", "mask is empty")
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
        cols = COLUMNS if pool == "mean" else MAX_COLUMNS
        values = _pool(self.cache.get(g).array, m, pool)
        return dict(zip(cols, values.tolist(), strict=True))

    def table(
        self, manifest: Manifest, progress: bool | None = None, pool: str = "mean"
    ) -> tuple[pd.DataFrame, list[str]]:
        """Features of every row of a manifest (its image and ``mask_path`` outline).

        Returns
        -------
        (pandas.DataFrame, list of str)
            ``image_id`` then :data:`COLUMNS` (``pool="max"``: :data:`MAX_COLUMNS`;
            NaN for rows that could not be read:
            no image, no or an empty mask), and one ``"<image_id>: <problem>"``
            line per such row.
        """
        import pandas as pd

        from buscad.data.io import read_image, read_mask, to_uint8
        from buscad.errors import InputFileError
        from buscad.progress import track

        rows, failures = [], []
        ids = manifest.df["image_id"].astype(str).tolist()
        for i in track(range(len(manifest)), "medsam features", "images", enabled=progress):
            try:
                gray, _ = read_image(manifest.image_path(i))
                g = to_uint8(gray) if gray.dtype != np.uint8 else gray
                paths = manifest.mask_paths(i)
                if not paths:
                    raise ValueError("no outline (mask_path) for this row")
                rows.append(self.features(g, read_mask(paths, g.shape), pool))
            except (InputFileError, ValueError) as exc:
                if isinstance(exc, ModelFileError):
                    raise
                failures.append(f"{ids[i]}: {exc}")
                rows.append({})
        cols = list(COLUMNS if pool == "mean" else MAX_COLUMNS)
        out = pd.DataFrame(rows, columns=cols, dtype=np.float64)
        out.insert(0, "image_id", ids)
        return out, failures


def _manifest_encoder_hash(folder: Path) -> str:
    import json

    p = folder / MANIFEST_NAME
    try:
        return str(json.loads(p.read_text(encoding="utf-8"))["sha256"][ENCODER_NAME])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(p, f"cannot read the LiteMedSAM manifest ({exc})") from exc


__all__ = [
    "COLUMNS",
    "COLUMN_PATTERN",
    "EMBEDDING_SHAPE",
    "FEATURES_VERSION",
    "MAX_COLUMNS",
    "PREFIX",
    "REGIONS",
    "Encoder",
    "MedSAMFeatures",
    "feature_dict",
    "max_pooled_features",
    "pooled_features",
    "region_weights",
]
