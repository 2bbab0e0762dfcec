"""Image checks at prediction time: colour (Doppler) content and text burned into the pixels.

A B-mode model reads gray speckle. Two things in an image make its answer
unreliable and are looked for here, with no pandas and no PyTorch:

- **Colour / Doppler**: the fraction of coloured pixels, measured by
  :func:`buscad.data.io.colour_fraction` when the file is read
  (:attr:`buscad.data.io.ImageMeta.colour_fraction`). A few coloured marks
  (a coloured cursor, a logo) stay under :data:`DOPPLER_FRACTION_MIN`; a colour
  Doppler box, an elastogram or a colour-mapped display is above it.
- **Burned-in text**: the audit's stroke detector
  (:func:`buscad.data.audit.annotations.annotation_marks`), run at the image's
  own scale and, for images whose short side is under :data:`UPSCALE_BELOW`
  pixels, also on the image upscaled twice (its text is then often under the
  detector's 9-pixel minimum height: pydicom's ``examples_rgb_color.dcm``
  carries 7-pixel "BAPTIST MED CTR"; the 2x pass finds it). Word boxes are mapped back to the
  image's pixels and merged.

:func:`text_near` says whether a word lies over or near the region the models
read, and :func:`peak_on_text` whether the Grad-CAM peak sits on a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: An image is a colour (Doppler) image when more than this fraction of its pixels is coloured
#: (:func:`buscad.data.io.colour_fraction`). Measured: pydicom's colour ultrasound examples
#: (Doppler, colour-mapped) 5-92 %; BUSI 7 of 780 images above 0.5 % (colour flow or
#: yellow calipers inside a Doppler box), the rest at most 0.37 % (a Doppler box outline, one
#: small flow spot, coloured text); BrEaST 0 of 256 (its blue gray tint is not colour).
DOPPLER_FRACTION_MIN = 0.005

#: Images whose short side is under this many pixels are also searched for text upscaled 2x.
UPSCALE_BELOW = 400

#: A word is "near" the region read when it lies within this fraction of the region's
#: larger side from it (:func:`text_near`).
NEAR_FRACTION = 0.1
#: Extra pixels searched around the near zone, so a word reaching into it is seen whole.
WORD_PAD = 48

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ImageChecks:
    """What the checks found in one image.

    Attributes
    ----------
    colour_fraction : float or None
        Fraction of coloured pixels (None: not known, e.g. only the gray pixels were given).
    text_boxes : list of tuple
        ``(x, y, w, h)`` of each word of burned-in text, in image pixels.
    """

    colour_fraction: float | None = None
    text_boxes: list[Box] = field(default_factory=list)

    @property
    def doppler(self) -> bool:
        """Whether the image is a colour (Doppler) image (:data:`DOPPLER_FRACTION_MIN`)."""
        return self.colour_fraction is not None and self.colour_fraction > DOPPLER_FRACTION_MIN

    def colour_text(self) -> str | None:
        """The colour caution in words, or None."""
        if not self.doppler:
            return None
        return (
            f"colour image ({100 * (self.colour_fraction or 0.0):.0f}% of the pixels coloured, "
            "e.g. colour Doppler): the model reads gray B-mode images only"
        )


def text_boxes(gray: np.ndarray, around: tuple[int, int, int, int] | None = None) -> list[Box]:
    """Boxes ``(x, y, w, h)`` of the words of text burned into a grayscale image.

    The audit's detector at scale 1 and, when the image's short side is under
    :data:`UPSCALE_BELOW`, at scale 2 (bicubic); boxes in image pixels, duplicates
    (same box at both scales, within 2 pixels) merged. With ``around = (x0, y0, x1,
    y1)`` only the region grown by :data:`NEAR_FRACTION` of its larger side plus
    :data:`WORD_PAD` pixels is searched (what :func:`text_near` can report; a
    prediction's check stays cheap). Never raises: an image the detector cannot
    read has no boxes.
    """
    try:
        import cv2

        from buscad.data.audit.annotations import annotation_marks
        from buscad.data.io import to_uint8

        g = to_uint8(np.asarray(gray))
        if g.ndim != 2 or min(g.shape) < 16:
            return []
        upscale = min(g.shape) < UPSCALE_BELOW
        ox = oy = 0
        if around is not None:
            x0, y0, x1, y1 = around
            m = int(NEAR_FRACTION * max(x1 - x0, y1 - y0)) + WORD_PAD
            ox, oy = max(0, x0 - m), max(0, y0 - m)
            g = g[oy : min(g.shape[0], y1 + m), ox : min(g.shape[1], x1 + m)]
            if min(g.shape) < 16:
                return []
        boxes = list(annotation_marks(g)[1])
        if upscale:
            up = cv2.resize(g, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            for x, y, w, h in annotation_marks(up)[1]:
                b = (x // 2, y // 2, max(1, w // 2), max(1, h // 2))
                if not any(max(abs(p - q) for p, q in zip(b, o, strict=True)) <= 2 for o in boxes):
                    boxes.append(b)
        return [(int(x) + ox, int(y) + oy, int(w), int(h)) for x, y, w, h in boxes]
    except Exception:  # advisory: never fail a prediction because of it
        return []


def image_checks(gray: np.ndarray, colour_fraction: float | None = None) -> ImageChecks:
    """Run the checks on one image (``colour_fraction`` from the file's reader, when known)."""
    return ImageChecks(colour_fraction, text_boxes(gray))


def text_near(boxes: list[Box], roi: Box, near: float = NEAR_FRACTION) -> list[Box]:
    """The words over or near the region read ``roi = (x0, y0, x1, y1)``.

    A word ``(x, y, w, h)`` is near when its box intersects the region grown on
    every side by ``near`` times the region's larger side.
    """
    x0, y0, x1, y1 = roi
    m = near * max(x1 - x0, y1 - y0)
    return [
        b
        for b in boxes
        if b[0] < x1 + m and b[0] + b[2] > x0 - m and b[1] < y1 + m and b[1] + b[3] > y0 - m
    ]


def heat_peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """``(x, y)`` of the heatmap's maximum (None when the map is empty or flat zero)."""
    hm = np.asarray(heatmap)
    if hm.size == 0 or not np.isfinite(hm).any() or float(np.nanmax(hm)) <= 0:
        return None
    y, x = np.unravel_index(int(np.nanargmax(hm)), hm.shape)
    return int(x), int(y)


def peak_on_text(peak: tuple[int, int] | None, boxes: list[Box], pad: int = 2) -> bool:
    """Whether the heatmap's peak lies on a word (its box grown by ``pad`` pixels)."""
    if peak is None:
        return False
    x, y = peak
    return any(
        bx - pad <= x < bx + bw + pad and by - pad <= y < by + bh + pad for bx, by, bw, bh in boxes
    )


def peak_outside(peak: tuple[int, int] | None, region: np.ndarray, pad: int = 0) -> bool:
    """Whether the heatmap's peak lies outside a boolean region (grown by ``pad`` pixels)."""
    if peak is None or region is None or not np.asarray(region).any():
        return False
    x, y = peak
    r = np.asarray(region, bool)
    if pad:
        ys, xs = max(0, y - pad), max(0, x - pad)
        return not bool(r[ys : y + pad + 1, xs : x + pad + 1].any())
    return not bool(r[y, x])


__all__ = [
    "DOPPLER_FRACTION_MIN",
    "ImageChecks",
    "heat_peak",
    "image_checks",
    "peak_on_text",
    "peak_outside",
    "text_boxes",
    "text_near",
]
