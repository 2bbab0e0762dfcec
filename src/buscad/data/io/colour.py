"""Colour measures and sample conversions: ITU-R 601 luma, the colour fraction beyond
an image's gray tint, and mapping samples to 8 or 16 bits.
"""

from __future__ import annotations

import numpy as np

#: A pixel counts as coloured when it departs from the image's gray tint by more than
#: this many 8-bit levels in some channel (see :func:`colour_fraction`).
COLOUR_CHROMA_THRESHOLD = 24


#: A fitted gray tint ``C ~ a_C Y + b_C`` is accepted only when every ``|a_C - 1|`` is at
#: most this (and every ``|b_C|`` at most the chroma threshold); otherwise no tint is assumed.
TINT_MAX_GAIN = 0.25


#: An image "has colour" when more than this fraction of its opaque pixels is coloured.
COLOUR_FRACTION_MIN = 1e-4


def _rgb_to_gray(rgb: np.ndarray, opaque: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Luma of an RGB array and the fraction of coloured pixels.

    Luma is ITU-R 601, ``Y = 0.299 R + 0.587 G + 0.114 B``, rounded. The
    colour fraction is computed by :func:`colour_fraction`.
    """
    dtype = np.uint16 if rgb.dtype == np.uint16 else np.uint8
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
    frac = colour_fraction(rgb, opaque, luma=y)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(y), 0, top).astype(dtype), frac


def colour_fraction(
    rgb: np.ndarray, opaque: np.ndarray | None = None, *, luma: np.ndarray | None = None
) -> float:
    """Fraction of pixels whose colour departs from the image's own gray tint.

    Some scanners display B-mode through a tinted gray map (BrEaST images are
    slightly blue: ``B ~ 1.1 Y``), which is not a colour overlay. So each
    channel ``C`` is modelled as a linear function of luma, ``C ~ a_C Y + b_C``
    (least squares over the opaque pixels, refitted once without the pixels
    flagged by the first fit), and a pixel is *coloured* when
    ``max_C |C - (a_C Y + b_C)| > t`` with ``t`` = :data:`COLOUR_CHROMA_THRESHOLD`
    (times 257 for 16-bit channels). A fit is only trusted as a tint when
    ``|a_C - 1| <= TINT_MAX_GAIN`` and ``|b_C| <= t`` for every channel; otherwise
    ``a = 1, b = 0`` is used (images with few gray levels, or mostly colour). Pure gray images (``R = G = B``) give
    ``a = 1, b = 0`` and reduce to the plain chroma test
    ``max(R,G,B) - min(R,G,B) > t``, which is also checked first: an image with
    no pixel above ``t`` in chroma is not coloured and is not fitted.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` uint8 or uint16.
    opaque : numpy.ndarray, optional
        Boolean ``(H, W)``: the pixels to count (alpha > 0). All by default.
    luma : numpy.ndarray, optional
        Precomputed float luma (saves time).

    Returns
    -------
    float
        ``#coloured opaque pixels / #opaque pixels`` (0 when none is opaque).
    """
    t = float(COLOUR_CHROMA_THRESHOLD * (257 if rgb.dtype == np.uint16 else 1))
    chans = [rgb[..., i] for i in range(3)]
    hi = np.maximum(np.maximum(chans[0], chans[1]), chans[2])
    lo = np.minimum(np.minimum(chans[0], chans[1]), chans[2])
    raw = (hi.astype(np.float32) - lo) > t
    if opaque is not None:
        raw &= opaque
    n_opaque = int(opaque.sum()) if opaque is not None else raw.size
    if n_opaque == 0 or not raw.any():
        return 0.0
    fchans = [c.astype(np.float32) for c in chans]
    y = (
        luma
        if luma is not None
        else (
            fchans[0] * np.float32(0.299)
            + fchans[1] * np.float32(0.587)
            + fchans[2] * np.float32(0.114)
        )
    )
    keep = np.ones(y.shape, bool) if opaque is None else opaque
    stride = max(1, y.size // 50_000)  # fit on a regular subsample: fast and plenty
    fit = keep.reshape(-1)[::stride].copy()
    ys = y.reshape(-1)[::stride]
    cs = [c.reshape(-1)[::stride] for c in fchans]
    identity = [(1.0, 0.0)] * 3
    coefs = identity
    for _ in range(2):
        if fit.sum() < 10:
            break
        yf = ys[fit].astype(np.float64)
        my, vy = yf.mean(), yf.var()
        coefs = []
        for c in cs:
            cf = c[fit].astype(np.float64)
            a = float(((yf - my) * (cf - cf.mean())).mean() / vy) if vy > 0 else 1.0
            coefs.append((a, float(cf.mean() - a * my)))
        if not all(abs(a - 1.0) <= TINT_MAX_GAIN and abs(b0) <= t for a, b0 in coefs):
            coefs = identity  # not a gray tint: a few gray levels or real colour dominate
        res = np.zeros(ys.shape, np.float32)
        for c, (a, b0) in zip(cs, coefs, strict=True):
            np.maximum(res, np.abs(c - (np.float32(a) * ys + np.float32(b0))), out=res)
        fit = keep.reshape(-1)[::stride] & (res <= t)
    res = np.zeros(y.shape, np.float32)
    for c, (a, b0) in zip(fchans, coefs, strict=True):
        np.maximum(res, np.abs(c - (np.float32(a) * y + np.float32(b0))), out=res)
    coloured = res > t
    if opaque is not None:
        coloured &= opaque
    return float(coloured.sum() / n_opaque)


def _to_uint(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Map an integer/float array to uint8 (if it fits) or uint16."""
    raw = np.asarray(raw)
    if raw.dtype == np.uint8:
        return raw.copy(), 8
    if np.issubdtype(raw.dtype, np.floating):
        lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
        scale = 65535.0 / (hi - lo) if hi > lo else 0.0
        return np.rint((np.nan_to_num(raw, nan=lo) - lo) * scale).astype(np.uint16), 16
    lo, hi = int(raw.min()), int(raw.max())
    if lo >= 0 and hi <= 255 and raw.dtype.itemsize == 1:
        return raw.astype(np.uint8), 8
    if lo >= 0 and hi <= 65535:
        return raw.astype(np.uint16), 16
    # signed or wider range: shift and rescale into 16 bits
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.rint((raw.astype(np.float64) - lo) * scale).astype(np.uint16), 16


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """Map a grayscale array to ``uint8``.

    ``uint8`` input is returned unchanged; anything else is windowed linearly
    from its 0.5th to 99.5th percentile onto 0..255.
    """
    if gray.dtype == np.uint8:
        return gray
    g = gray.astype(np.float32)
    lo, hi = np.percentile(g, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((g - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
