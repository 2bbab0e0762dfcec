"""Exact and near-duplicate search (band-pass thumbnails, multi-scale NCC verification) and duplicate groups."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.data.audit.annotations import _cv2
from buscad.data.audit.scan import (
    ImageRecord,
    NearDuplicateParams,
    _thumbnail,
    default_cache_dir,
    scan_images,
)
from buscad.data.manifest import Manifest
from buscad.progress import track
from buscad.utils import (
    atomic_write_table,
    connected_components,
    stable_hash,
)

#: Bump when the pair search changes meaning.
_PAIRS_VERSION = 4


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
    for a, b in track(sorted(pairs), "audit: near-duplicate check", "candidate pairs"):
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
