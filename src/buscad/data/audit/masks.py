"""Mask findings and mask-geometry features (the shortcut reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.audit.scan import ImageRecord
from buscad.data.geometry import GEOMETRY_FEATURES, mask_geometry  # noqa: F401 (re-exported)
from buscad.data.io import read_mask
from buscad.data.manifest import LESION_LABELS, Manifest
from buscad.errors import MaskError

MASK_FLAGS: tuple[str, ...] = (
    "mask_missing",
    "mask_unreadable",
    "mask_size_mismatch",
    "mask_empty",
    "mask_on_normal",
    "mask_multiple_components",
    "mask_touches_border",
)


SIZE_FEATURES: tuple[str, ...] = ("height", "width", "aspect")


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
