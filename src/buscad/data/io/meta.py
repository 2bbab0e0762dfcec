"""What a reader learnt about an image besides its pixels (:class:`ImageMeta`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ImageMeta:
    """What the reader learnt about an image besides its pixels.

    Attributes
    ----------
    path : str
        The file read.
    format : str
        ``png``, ``jpeg``, ``bmp``, ``tiff`` or ``dicom``.
    height, width : int
        Size of the returned array.
    bit_depth : int
        8 or 16: the dtype of the returned array (``uint8`` or ``uint16``).
    has_colour : bool
        True when more than :data:`COLOUR_FRACTION_MIN` of the pixels are coloured.
    colour_fraction : float
        Fraction of opaque pixels that are coloured (see :func:`colour_fraction`:
        colour beyond the image's own gray tint); 0 for grayscale sources.
    transparent_fraction : float
        Fraction of pixels with alpha 0 (set to black in the returned array).
    pixel_spacing_mm : float or None
        Physical size of a pixel when the file says (DICOM ultrasound regions).
    photometric : str
        Source colour model (``L``, ``RGB``, ``RGBA``, ``P``, ``MONOCHROME1``...).
    burned_in_annotation : bool or None
        DICOM ``BurnedInAnnotation`` (0028,0301): True for ``YES``, False for ``NO``,
        None when absent or not DICOM.
    """

    path: str
    format: str
    height: int
    width: int
    bit_depth: int
    has_colour: bool
    colour_fraction: float
    transparent_fraction: float = 0.0
    pixel_spacing_mm: float | None = None
    photometric: str = "L"
    extra: dict = field(default_factory=dict)
    burned_in_annotation: bool | None = None

    def as_dict(self) -> dict:
        """Return the metadata as a plain dict (JSON-serialisable)."""
        return asdict(self)
