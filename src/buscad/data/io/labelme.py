"""LabelMe JSON annotations: bounded parsing, safe ``imagePath`` and rasterised shapes."""

from __future__ import annotations

import base64
import io as _io
import json
import re
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageDraw

from buscad.data.io.budget import DecodeBudget, _budget, _mib
from buscad.data.io.image import image_size
from buscad.data.io.messages import _mask_errors, _short
from buscad.errors import ImageReadError, MaskDecodeBudgetError, MaskError

#: Largest length of a LabelMe ``imagePath`` (characters) and of each of its parts (UTF-8 bytes).
MAX_IMAGE_PATH = 255


_JSON_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{}]')


def json_depth(text: str, limit: int) -> int:
    """Nesting depth of a JSON text, counting ``[`` and ``{`` outside strings.

    Stops as soon as the depth exceeds ``limit`` (and returns ``limit + 1``), so
    a hostile file is measured in one linear pass, without recursion.
    """
    depth = best = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        elif c in "]}":
            depth -= 1
    return best


def _check_image_path(p: Path, value: object) -> str:
    """A LabelMe ``imagePath`` that is safe to join to the JSON's folder, else MaskError.

    Refused: non-strings, NUL bytes, more than :data:`MAX_IMAGE_PATH` characters
    or a part longer than 255 UTF-8 bytes, absolute paths (POSIX or Windows) and
    ``..`` parts.
    """
    if not isinstance(value, str):
        raise MaskError(p, f"LabelMe imagePath is not a string ({type(value).__name__})")
    if "\x00" in value:
        raise MaskError(p, "LabelMe imagePath contains a NUL byte")
    if len(value) > MAX_IMAGE_PATH:
        raise MaskError(
            p, f"LabelMe imagePath is {len(value)} characters long (limit {MAX_IMAGE_PATH})"
        )
    norm = value.replace("\\", "/")
    if (
        PurePosixPath(norm).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or (PureWindowsPath(value).drive)
    ):
        raise MaskError(p, "LabelMe imagePath is absolute; it must be relative to the JSON file")
    parts = PurePosixPath(norm).parts
    if ".." in parts:
        raise MaskError(p, "LabelMe imagePath leaves the JSON file's folder ('..')")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        raise MaskError(p, "LabelMe imagePath has a part longer than 255 bytes")
    return norm


def read_labelme(
    path: str | Path, *, require_image: bool = True, budget: DecodeBudget | None = None
) -> tuple[np.ndarray, Path | None]:
    """Rasterise a LabelMe JSON annotation into a boolean mask.

    Parameters
    ----------
    path : path-like
        LabelMe ``.json`` with ``shapes``, ``imageHeight``, ``imageWidth`` and
        ``imagePath`` (relative to the JSON file) or embedded ``imageData``.
    require_image : bool, default True
        Raise when ``imagePath`` points at a missing file and no image is embedded.

    Returns
    -------
    mask : numpy.ndarray
        Boolean ``(imageHeight, imageWidth)`` array: union of all shapes.
    image_path : pathlib.Path or None
        The referenced image, resolved against the JSON's folder.

    Raises
    ------
    MaskDecodeBudgetError
        A file, nesting depth or canvas above the budget.
    MaskError
        Invalid JSON, unsafe ``imagePath`` (NUL byte, too long, absolute,
        ``..``), bad shapes, and any other failure. Nothing else escapes.
    """
    p = Path(path)
    with _mask_errors(p, "LabelMe file"):
        return _read_labelme(p, require_image, _budget(budget))


def _read_labelme(p: Path, require_image: bool, b: DecodeBudget) -> tuple[np.ndarray, Path | None]:
    try:
        size = p.stat().st_size
        if size > b.max_json_bytes:
            raise MaskDecodeBudgetError(
                p, f"LabelMe file is {_mib(size)}, above the {_mib(b.max_json_bytes)} JSON budget"
            )
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MaskError(p, f"not valid LabelMe JSON ({_short(exc)})") from exc
    depth = json_depth(text, b.max_json_depth)
    if depth > b.max_json_depth:
        raise MaskDecodeBudgetError(
            p, f"LabelMe JSON is nested deeper than {b.max_json_depth} levels"
        )
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MaskError(p, f"not valid LabelMe JSON ({_short(exc)})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise MaskError(p, "not a LabelMe annotation (no 'shapes' list)")
    image_path: Path | None = None
    if doc.get("imagePath"):
        rel = _check_image_path(p, doc["imagePath"])
        image_path = (p.parent / rel).resolve()
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    embedded = doc.get("imageData")
    if require_image and (image_path is None or not image_path.exists()) and not embedded:
        raise MaskError(
            p, f"LabelMe imagePath points at a missing image ({doc.get('imagePath')!r})"
        )
    if not (h and w):
        if image_path is not None and image_path.exists():
            try:
                h, w = image_size(image_path, b)
            except ImageReadError as exc:
                raise MaskError(p, f"its image cannot be read: {exc}") from exc
        elif embedded:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(_io.BytesIO(base64.b64decode(str(embedded)))) as im:
                        w, h = im.size
            except Exception as exc:
                raise MaskError(p, f"embedded imageData cannot be decoded ({_short(exc)})") from exc
        else:
            raise MaskError(p, "LabelMe file lacks imageHeight/imageWidth")
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MaskError(
            p, f"imageHeight/imageWidth are not integers ({repr(h)[:40]}, {repr(w)[:40]})"
        ) from exc
    if h <= 0 or w <= 0:
        raise MaskError(p, f"implausible image size {w}x{h} in the LabelMe file")
    if h * w > b.max_pixels:
        raise MaskDecodeBudgetError(
            p, f"LabelMe image size {w}x{h} is above the {b.max_pixels} pixel limit"
        )
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    n = 0
    for k, shape in enumerate(doc["shapes"]):
        try:
            pts = [(float(pt[0]), float(pt[1])) for pt in shape.get("points", [])]
            kind = shape.get("shape_type") or "polygon"
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise MaskError(p, f"shape #{k} has malformed points ({_short(exc)})") from exc
        if not all(np.isfinite(v) for pt in pts for v in pt):
            raise MaskError(p, f"shape #{k} has non-finite point coordinates")
        try:
            if kind == "polygon" and len(pts) >= 3:
                draw.polygon(pts, fill=1, outline=1)
            elif kind == "rectangle" and len(pts) == 2:
                (x0, y0), (x1, y1) = pts
                draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=1)
            elif kind == "circle" and len(pts) == 2:
                (cx, cy), (px, py) = pts
                r = float(np.hypot(px - cx, py - cy))
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
            else:
                continue
        except (OverflowError, ValueError, TypeError) as exc:
            raise MaskError(p, f"shape #{k} cannot be drawn ({_short(exc)})") from exc
        n += 1
    if n == 0:
        raise MaskError(p, "LabelMe file has no polygon, rectangle or circle shapes")
    return np.asarray(canvas, dtype=bool), image_path
