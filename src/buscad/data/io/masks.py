"""Lesion masks: binary rasters, LabelMe JSON and NIfTI/NRRD/MHA label maps, unioned."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from buscad.data.io.budget import DecodeBudget, _budget, _check_file_size, _mib
from buscad.data.io.labelme import read_labelme
from buscad.data.io.messages import _mask_errors
from buscad.data.io.raster import _check_header, _open_pil
from buscad.data.io.sniff import _sniff_bytes
from buscad.errors import MaskDecodeBudgetError, MaskError


def split_mask_paths(value: object) -> list[str]:
    """Split a manifest ``mask_path`` cell into its paths (``;``-separated).

    Empty cells, NaN and None give an empty list.
    """
    if value is None:
        return []
    if isinstance(value, float) and np.isnan(value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [s.strip() for s in str(value).split(";") if s.strip()]


def read_mask(
    paths: str | Path | Sequence[str | Path],
    shape: tuple[int, int] | None = None,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Read one or several lesion masks and return their union.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        Binary raster masks (PNG/BMP/TIFF: any nonzero pixel of any colour
        channel is lesion; fully transparent pixels are not), LabelMe JSON files
        (``polygon``, ``rectangle``, ``circle`` and ``point``-free shapes are
        rasterised), or NIfTI/NRRD/MHA label maps (any nonzero voxel; a single
        slice is squeezed to 2-D, ITK-SNAP style). Several files are unioned.
    shape : tuple of int, optional
        The image's ``(height, width)``. When given, every mask must match it.
    budget : DecodeBudget, optional
        Limits checked from the headers before decoding (see :func:`read_image`).

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)`` array.

    Raises
    ------
    MaskDecodeBudgetError
        A mask above the budget (also a :class:`~buscad.errors.DecodeBudgetError`).
    MaskError
        Missing, unreadable or multi-slice files, size mismatches, and any
        other failure. Nothing else escapes.
    """
    if isinstance(paths, (str, Path)):
        plist = split_mask_paths(str(paths)) if isinstance(paths, str) else [paths]
    else:
        plist = list(paths)
    if not plist:
        raise MaskError("<mask>", "no mask path given")
    union: np.ndarray | None = None
    for mp in plist:
        m = _read_one_mask_safe(Path(mp), shape, _budget(budget))
        if union is None:
            union = m
        else:
            if m.shape != union.shape:
                raise MaskError(
                    mp,
                    f"mask size {m.shape[1]}x{m.shape[0]} differs from the other mask files "
                    f"({union.shape[1]}x{union.shape[0]})",
                )
            union |= m
    assert union is not None
    return union


def _read_one_mask_safe(p: Path, shape: tuple[int, int] | None, b: DecodeBudget) -> np.ndarray:
    """:func:`_read_one_mask` with every failure turned into a MaskError."""
    with _mask_errors(p, "mask"):
        return _read_one_mask(p, shape, b)


def _read_one_mask(p: Path, shape: tuple[int, int] | None, b: DecodeBudget) -> np.ndarray:
    if not p.exists():
        raise MaskError(p, "mask file not found")
    if p.is_dir():
        raise MaskError(p, "is a directory, not a mask file")
    name = p.name.lower()
    try:
        if p.stat().st_size == 0:
            raise MaskError(p, "mask file is empty (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise MaskError(p, f"cannot open the mask file ({exc.strerror or exc})") from exc
    kind = _sniff_bytes(head, name)
    if kind == "json" or name.endswith(".json"):
        mask, _ = read_labelme(p, budget=b)
    elif kind == "nifti" or name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        mask = _read_itk_mask(p, b)
    elif kind in ("png", "bmp", "tiff", "gif", "jpeg"):
        info = _check_header(p, kind, b)
        if int(info.get("pages", 1)) > 1:
            raise MaskError(p, f"multi-page mask ({info['pages']} pages) is not supported")
        with _open_pil(p, b) as img:
            arr = np.asarray(img.convert("RGBA") if img.mode in ("P", "PA", "LA") else img)
        if kind == "jpeg":  # lossy: ringing makes "any nonzero" meaningless; use half scale
            arr = np.where(arr > 127, arr, 0).astype(np.uint8)
        if arr.ndim == 3:
            nch = arr.shape[-1]
            n_colour = nch - 1 if nch in (2, 4) else nch
            # channel by channel: much faster than .any(axis=-1) on interleaved data
            mask = arr[..., 0] != 0
            for c in range(1, n_colour):
                mask |= arr[..., c] != 0
            if n_colour != nch:  # fully transparent pixels are not lesion
                mask &= arr[..., -1] > 0
        else:
            mask = arr != 0
    else:
        raise MaskError(p, "not a recognised mask (expected PNG/BMP/TIFF, LabelMe JSON or NIfTI)")
    mask = np.ascontiguousarray(mask.astype(bool))
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise MaskError(
            p,
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {shape[1]}x{shape[0]}",
        )
    return mask


def _read_itk_mask(p: Path, b: DecodeBudget) -> np.ndarray:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover
        raise MaskError(p, "SimpleITK is required to read NIfTI masks") from exc
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        _check_file_size(p, b)
        reader.ReadImageInformation()
        size = [int(v) for v in reader.GetSize()]
        n_vox = int(np.prod(size, dtype=np.float64))
        n_comp = max(1, int(reader.GetNumberOfComponents()))
        if n_vox > b.max_pixels:
            raise MaskDecodeBudgetError(
                p, f"label map has {n_vox} voxels, above the {b.max_pixels} pixel limit"
            )
        n_bytes = n_vox * n_comp * 8  # worst case: 64-bit voxels
        if n_bytes > b.max_bytes:
            raise MaskDecodeBudgetError(
                p,
                f"label map of {n_vox} voxels x {n_comp} components may decode to "
                f"{_mib(n_bytes)}, above the {_mib(b.max_bytes)} decode budget",
            )
        img = reader.Execute()
    except MaskError:
        raise
    except Exception as exc:
        raise MaskError(
            p, f"cannot read label map ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from exc
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) or (y, x)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr.any(axis=-1)
    if arr.ndim != 2:
        raise MaskError(p, f"label map has shape {arr.shape}; expected one 2-D slice")
    return arr != 0


def write_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """Write a boolean mask as an 8-bit PNG (0/255), atomically."""
    from buscad.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask, dtype=bool) * 255).astype(np.uint8), mode="L").save(
            tmp, format="PNG"
        )
