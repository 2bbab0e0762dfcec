"""BUSI importer (Al-Dhabyani et al., Data in Brief 28:104863, 2020): class folders, ``_mask_N`` masks unioned."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from buscad.data.importers.registry import ImportContext, _abs, _files, _is_junk, register_importer
from buscad.data.io import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
)
from buscad.errors import InputFileError

_BUSI_CLASSES = ("benign", "malignant", "normal")


_BUSI_IMAGE = re.compile(r"^(?P<cls>[a-z]+) \((?P<num>\d+)\)$", re.IGNORECASE)


_BUSI_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


def _busi_root(source: Path) -> Path:
    def has_classes(d: Path) -> bool:
        return any((d / c).is_dir() for c in _BUSI_CLASSES)

    if has_classes(source):
        return source
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        if has_classes(sub):
            return sub
    raise InputFileError(source, "no benign/, malignant/ or normal/ folder found (BUSI layout)")


@register_importer("busi")
def import_busi(
    source: Path, ctx: ImportContext, *, cohort: str = "BUSI", id_prefix: str = "busi"
) -> list[dict[str, Any]]:
    """BUSI: ``benign/``, ``malignant/``, ``normal/`` with ``CLASS (N).png`` images.

    Masks are ``<class> (N)_mask.png`` plus ``<class> (N)_mask_1.png``... when an
    image shows several lesions; they are joined with ``;`` in ``mask_path`` and
    unioned when read. ``normal`` images keep their (empty) masks. The label
    comes from the folder; an image whose file name names another class is
    skipped as conflicting. ``image_id`` is ``busi_<class>_<N>``; BUSI has no
    patient ids, so ``patient_id`` defaults to ``image_id``.

    Parameters
    ----------
    cohort : str, default "BUSI"
        Value of the ``cohort`` column.
    id_prefix : str, default "busi"
        Prefix of ``image_id``.
    """
    root = _busi_root(source)
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _is_junk(p)):
        cls = folder.name.lower()
        if cls not in _BUSI_CLASSES:
            ctx.skip(folder, f"folder is not a BUSI class ({', '.join(_BUSI_CLASSES)})")
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for f in _files(folder, recursive=False):
            stem = f.name[: -len(f.suffix)] if f.suffix else f.name
            mm = _BUSI_MASK.match(stem)
            if mm and f.suffix.lower() in MASK_SUFFIXES:
                masks.setdefault(mm.group("stem").lower(), []).append((int(mm.group("k") or 0), f))
            elif f.suffix.lower() in IMAGE_SUFFIXES and _BUSI_IMAGE.match(stem):
                images[stem.lower()] = f
            else:
                ctx.skip(f, "unrecognised file name for the BUSI layout ('<class> (N).png')")
        for key, f in sorted(images.items(), key=lambda kv: _busi_sort_key(kv[0])):
            m = _BUSI_IMAGE.match(key)
            assert m is not None
            name_cls, num = m.group("cls").lower(), int(m.group("num"))
            if name_cls != cls:
                ctx.skip(
                    f,
                    f"conflicting class: the file name says {name_cls} but it is in the "
                    f"{cls}/ folder",
                )
                masks.pop(key, None)
                continue
            mlist = [p for _, p in sorted(masks.pop(key, []))]
            if not mlist:
                ctx.note(f, "no mask file found")
            rows.append(
                {
                    "image_id": f"{id_prefix}_{cls}_{num}",
                    "image_path": _abs(f),
                    "label": cls,
                    "mask_path": ";".join(_abs(p) for p in mlist),
                    "patient_id": f"{id_prefix}_{cls}_{num}",
                    "cohort": cohort,
                    "source_file": f"{cls}/{f.name}",
                }
            )
        for key, ms in sorted(masks.items()):
            for _, p in sorted(ms):
                ctx.skip(p, f"mask without its image ('{key}.png' not found)")
    return rows


def _busi_sort_key(stem: str) -> tuple[str, int]:
    m = _BUSI_IMAGE.match(stem)
    return (m.group("cls"), int(m.group("num"))) if m else (stem, 0)
