"""Importer for one folder per class, masks found by pattern or in a mask folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from buscad.data.importers.registry import (
    ImportContext,
    _abs,
    _files,
    _is_junk,
    _slug,
    _strip_mask_suffix,
    _unique_id,
    register_importer,
)
from buscad.data.io import (
    IMAGE_SUFFIXES,
)
from buscad.data.manifest import LABELS, normalize_label
from buscad.errors import InputFileError


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``{stem}_mask*`` -> a regex with group ``stem`` over a file name without suffix."""
    parts = re.split(r"(\{stem\}|\*)", pattern)
    rx = "".join(
        "(?P<stem>.+?)" if p == "{stem}" else ".*" if p == "*" else re.escape(p) for p in parts
    )
    return re.compile(f"^{rx}$", re.IGNORECASE)


@register_importer("folders")
def import_folders(
    source: Path,
    ctx: ImportContext,
    *,
    mask_pattern: str = "{stem}_mask*",
    mask_dir: str | None = None,
    cohort: str | None = None,
    id_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """One sub-folder per class: ``benign/``, ``malignant/``, ``normal/`` (any case).

    Folder names go through :func:`~buscad.data.manifest.normalize_label`
    (``B``/``M``/``0``/``1`` work too); a folder that is not a class is skipped
    and reported. Images are searched recursively inside each class folder.
    Masks are the files whose name without suffix matches ``mask_pattern``
    (``{stem}`` is the image's name without suffix, ``*`` any text), in the
    image's folder or, with ``mask_dir``, in the same relative place under it.
    Several matches are unioned. A mask-like file whose image is missing is
    skipped. ``image_id`` is ``<prefix>_<relative path without suffix>``.

    Parameters
    ----------
    mask_pattern : str, default "{stem}_mask*"
        Mask names; an empty string means no masks.
    mask_dir : str, optional
        Separate mask tree mirroring the class folders.
    cohort : str, optional
        ``cohort`` column (default: the source folder's name).
    id_prefix : str, optional
        ``image_id`` prefix (default: the source folder's name).
    """
    prefix = _slug(id_prefix or source.name) or "img"
    cohort = cohort or source.name
    rx = _pattern_regex(mask_pattern) if mask_pattern else None
    mroot = Path(os.path.abspath(mask_dir)) if mask_dir else None
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    class_dirs = sorted(p for p in source.iterdir() if p.is_dir() and not _is_junk(p))
    if not class_dirs:
        raise InputFileError(source, "no class sub-folders (benign/, malignant/, normal/) found")
    for folder in class_dirs:
        label = normalize_label(folder.name)
        if label is None:
            ctx.skip(folder, f"folder name {folder.name!r} is not a class ({', '.join(LABELS)})")
            continue
        files = _files(folder)
        mask_files = _files(mroot / folder.name) if mroot and (mroot / folder.name).is_dir() else []
        # index candidate masks by (relative folder, stem they belong to)
        claimed: dict[tuple[str, str], list[Path]] = {}
        mask_set: set[Path] = set()
        base_for_masks = mroot / folder.name if mroot else folder
        for f in mask_files if mroot else files:
            name = _strip_mask_suffix(f.name)
            if rx is None or name is None:
                continue
            m = rx.match(name)
            if m:
                rel_dir = f.parent.relative_to(base_for_masks).as_posix()
                claimed.setdefault((rel_dir, m.group("stem").lower()), []).append(f)
                mask_set.add(f)
        images = [f for f in files if f not in mask_set and f.suffix.lower() in IMAGE_SUFFIXES]
        image_keys = set()
        for f in images:
            rel = f.relative_to(folder)
            rel_dir = rel.parent.as_posix()
            key = (rel_dir, f.stem.lower())
            image_keys.add(key)
            masks = sorted(claimed.get(key, []))
            rel_noext = f"{folder.name}/{rel.with_suffix('').as_posix()}"
            rows.append(
                {
                    "image_id": _unique_id(f"{prefix}_{_slug(rel_noext)}", taken, rel.as_posix()),
                    "image_path": _abs(f),
                    "label": label,
                    "mask_path": ";".join(_abs(p) for p in masks),
                    "cohort": cohort,
                    "source_file": f"{folder.name}/{rel.as_posix()}",
                }
            )
        for key, ms in sorted(claimed.items()):
            if key not in image_keys:
                for p in ms:
                    ctx.skip(p, f"mask without its image ('{key[1]}' not found)")
        for f in files:
            if f not in mask_set and f.suffix.lower() not in IMAGE_SUFFIXES:
                ctx.note(f, "not an image file name; ignored")
    return rows
