"""Image and mask readers behind one small interface.

``read_image(path) -> (gray, ImageMeta)`` reads PNG, JPEG, BMP, TIFF and DICOM
(8- and 16-bit, RGB, RGBA with transparent regions, palette) into a 2-D
grayscale array and says whether the pixels carried colour (Doppler boxes,
coloured marks). ``read_mask(paths, shape)`` reads binary PNG/BMP/TIFF masks
(any nonzero pixel is lesion; several files are unioned), LabelMe JSON polygons
and NIfTI label maps (as ITK-SNAP writes them).

Every failure raises :class:`~buscad.errors.ImageReadError` or
:class:`~buscad.errors.MaskError` whose one-line message names the file.
The format is detected from the file's content, not its extension.

The package's modules name their concern; everything public is imported here, so
``from buscad.data.io import read_image`` (and every other name) works as before:

- ``image``: :func:`read_image`, :func:`image_size`, :func:`burned_in_warning`;
- ``budget``: the decode budget (:class:`DecodeBudget`, the ``MAX_*`` constants) and
  :func:`reader_settings`;
- ``sniff``: format detection from content, image and mask suffixes;
- ``raster``: PNG/BMP/TIFF/JPEG/GIF header checks and Pillow decoding;
- ``dicom``: DICOM parsing within the budget, modality, frames, spacing, burned-in flag;
- ``colour``: luma, colour fraction, 8/16-bit sample mapping;
- ``meta``: :class:`ImageMeta`;
- ``masks``: :func:`read_mask` and mask writing; ``labelme``: LabelMe JSON;
- ``messages``: the readers' one-line error messages.

The ``MAX_*`` constants are read from this package at call time
(:meth:`DecodeBudget.resolved`): setting ``buscad.data.io.MAX_PIXELS`` changes the
default budget of every reader.
"""

from __future__ import annotations

from buscad.data.io.budget import (
    MAX_DECODED_BYTES,
    MAX_ELEMENT_BYTES,
    MAX_FILE_BYTES,
    MAX_FRAMES,
    MAX_JPEG_SCAN_PIXELS,
    MAX_JPEG_SCANS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_PIXELS,
    MAX_TIFF_PAGES,
    DecodeBudget,
    ReaderSettings,
    reader_settings,
)
from buscad.data.io.colour import (
    COLOUR_CHROMA_THRESHOLD,
    COLOUR_FRACTION_MIN,
    TINT_MAX_GAIN,
    colour_fraction,
    to_uint8,
)
from buscad.data.io.dicom import (
    MODALITY_NAMES,
    ULTRASOUND_MODALITIES,
    dicom_pixel_spacing_mm,
    quiet_dicom,
    read_dicom_header,
)
from buscad.data.io.image import (
    burned_in_warning,
    image_size,
    read_image,
)
from buscad.data.io.labelme import (
    MAX_IMAGE_PATH,
    json_depth,
    read_labelme,
)
from buscad.data.io.masks import (
    read_mask,
    split_mask_paths,
    write_mask_png,
)
from buscad.data.io.meta import (
    ImageMeta,
)
from buscad.data.io.sniff import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    iter_image_files,
    sniff_format,
)
from buscad.data.io.sniff import _sniff_bytes as _sniff_bytes

__all__ = [
    "COLOUR_CHROMA_THRESHOLD",
    "COLOUR_FRACTION_MIN",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "MAX_DECODED_BYTES",
    "MAX_ELEMENT_BYTES",
    "MAX_FILE_BYTES",
    "MAX_FRAMES",
    "MAX_IMAGE_PATH",
    "MAX_JPEG_SCANS",
    "MAX_JPEG_SCAN_PIXELS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_PIXELS",
    "MAX_TIFF_PAGES",
    "MODALITY_NAMES",
    "TINT_MAX_GAIN",
    "ULTRASOUND_MODALITIES",
    "DecodeBudget",
    "ImageMeta",
    "ReaderSettings",
    "burned_in_warning",
    "colour_fraction",
    "dicom_pixel_spacing_mm",
    "image_size",
    "iter_image_files",
    "json_depth",
    "quiet_dicom",
    "read_dicom_header",
    "read_image",
    "read_labelme",
    "read_mask",
    "reader_settings",
    "sniff_format",
    "split_mask_paths",
    "to_uint8",
    "write_mask_png",
]
