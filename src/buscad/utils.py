"""Small shared helpers: atomic writes, content hashes, seeding, paths as the user sees them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from buscad.errors import InputFileError, ModelFileError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The temporary file lives in the same folder, so the final ``os.replace`` is
    atomic on POSIX and Windows: readers see the old file or the new one, never
    a half-written one. On error the temporary file is removed.

    The temporary name keeps ``path``'s suffix, so writers that choose the
    format from the suffix (Pillow, pandas) behave as for ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get normal permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (NumPy scalars and arrays are converted)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def atomic_write_table(df: Any, path: str | os.PathLike[str], index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV, Parquet or XLSX (by suffix) atomically."""
    p = Path(path)
    with atomic_path(p) as tmp:
        suf = p.suffix.lower()
        if suf == ".parquet":
            df.to_parquet(tmp, index=index)
        elif suf in (".xlsx", ".xls"):
            df.to_excel(tmp, index=index)
        elif suf == ".md":
            tmp.write_text(markdown_table(df.reset_index() if index else df), encoding="utf-8")
        else:
            df.to_csv(tmp, index=index)
    return p


def markdown_table(df: Any) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (no external dependency).

    Non-finite floats become empty cells; ``|`` and newlines inside cells are escaped.
    """

    def cell(v: object) -> str:
        if isinstance(v, float) and not np.isfinite(v):
            return ""
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (``hashlib.file_digest``)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def cache_root() -> Path:
    """buscad's one cache folder (not created here).

    ``$BUSCAD_CACHE`` when set; else the deprecated ``$BUSCAD_CACHE_DIR`` (with a
    ``DeprecationWarning``); else ``$XDG_CACHE_HOME/buscad``, or
    ``~/.cache/buscad`` when ``XDG_CACHE_HOME`` is unset. Each user of the cache
    takes a subfolder: ``audit/``, ``radiomics/``, ``weights/``.
    """
    root = os.environ.get("BUSCAD_CACHE")
    if root:
        return Path(root).expanduser()
    old = os.environ.get("BUSCAD_CACHE_DIR")
    if old:
        warnings.warn(
            "BUSCAD_CACHE_DIR is deprecated; set BUSCAD_CACHE instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return Path(old).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "buscad"


def load_versioned_json(
    path: str | os.PathLike[str],
    kind: str,
    supported_versions: int | Iterable[int],
    error: type[InputFileError] = ModelFileError,
) -> dict[str, Any]:
    """Read a JSON document that declares ``{"format": kind, "version": v, ...}``.

    The one loader of buscad's versioned files (bundles, portable models,
    checkpoints).

    Parameters
    ----------
    path : path-like
        The JSON file.
    kind : str
        The expected ``format`` value, e.g. ``"buscad-bundle"``.
    supported_versions : int or iterable of int
        Versions this buscad reads.
    error : type of InputFileError, default ModelFileError
        Raised, naming the file, on a missing file, bad JSON, another format
        or an unsupported version.

    Returns
    -------
    dict
        The document.
    """
    p = Path(path)
    versions = (
        {int(supported_versions)}
        if isinstance(supported_versions, int)
        else {int(v) for v in supported_versions}
    )
    if not p.is_file():
        raise error(p, f"{kind} file not found")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(p, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != kind:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise error(p, f"not a {kind} file (format={found!r})")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
        readable = ", ".join(str(v) for v in sorted(versions))
        raise error(
            p, f"{kind} version {version!r} is not supported (this buscad reads {readable})"
        )
    return doc


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short SHA-256 of the canonical JSON form of ``obj`` (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def did_you_mean(name: str, candidates: Iterable[object]) -> str | None:
    """The candidate a misspelt ``name`` most likely meant, or None.

    First a candidate equal to ``name`` after lower-casing and keeping only letters
    and digits (``"BI-RADS"`` -> ``"birads"``, ``"Age"`` -> ``"age"``), then the
    closest by :func:`difflib.get_close_matches` (ratio >= 0.6, case-insensitive).
    ``name`` itself is never suggested.
    """
    import difflib

    def key(s: object) -> str:
        return "".join(ch for ch in str(s).lower() if ch.isalnum())

    cands = [str(c) for c in candidates if str(c) != str(name)]
    same = [c for c in cands if key(c) == key(name)]
    if same:
        return same[0]
    lower: dict[str, str] = {}
    for c in cands:
        lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(str(name).lower(), list(lower), n=1, cutoff=0.6)
    return lower[close[0]] if close else None


def array_sha256(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def connected_components(n: int, pairs: Any) -> np.ndarray:
    """Union-find over ``pairs`` of node indices: one component id per node.

    Ids are numbered in order of each component's first (lowest-index) member,
    so the labelling does not depend on the order of ``pairs``.
    """
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and (when imported) torch; return a NumPy Generator."""
    import random
    import sys

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds legacy global users too
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)
    return np.random.default_rng(seed)


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute."""
    p = Path(path).absolute()
    here = Path(cwd).absolute() if cwd is not None else Path.cwd()
    try:
        return str(p.relative_to(here))
    except ValueError:
        return str(p)


def output_lines(outputs: Mapping[str, str | os.PathLike[str]]) -> list[str]:
    """One aligned ``  name  path`` line per output (paths by :func:`display_path`)."""
    width = max((len(k) for k in outputs), default=0)
    return [f"  {k:<{width}}  {display_path(v)}" for k, v in outputs.items()]
