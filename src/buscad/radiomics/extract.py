"""Radiomics extraction (pyradiomics) over a manifest, cached on disk.

Design
------
:func:`extract_features` is the workhorse: for every manifest row it reads the
image with :func:`buscad.data.io.read_image` (mapped to ``uint8`` with
:func:`~buscad.data.io.to_uint8`) and the lesion mask with
:func:`~buscad.data.io.read_mask`, builds 2-D SimpleITK images (unit spacing)
and runs pyradiomics' ``RadiomicsFeatureExtractor`` with the settings of a
YAML params file (default: :data:`DEFAULT_PARAMS`, read from the packaged
``buscad/radiomics/params.yaml``; ``configs/radiomics.yaml`` is a copy).
pyradiomics never reads files itself.

Besides the original mask it extracts each *mask perturbation* of the params
file (``erode:2`` and ``dilate:2`` by default: the mask eroded / dilated by a
disc of that radius, standing in for a second annotator). Those columns are
named ``<feature>@<perturbation>`` (e.g. ``original_glcm_Contrast@erode2``) and
feed :class:`buscad.classical.selection.ICCFilter`, which is fitted on training rows only
and drops every ``@`` column, so the wide table is the ``X`` of the radiomics
pipeline as it stands.

Cache: one small JSON file per (image content hash, mask content hash,
settings hash), where the mask is the mask actually used (original or
perturbed) and the settings hash covers the pyradiomics parameters and the
pyradiomics version. A small index keyed by the image and mask *file* bytes
(SHA-256) and the perturbations points straight at a row's features, so a
second run over the same files only hashes them and loads one JSON per image
(an image re-encoded to other bytes with the same pixels still hits the
per-array cache). Default folder: ``radiomics/`` under
:func:`buscad.utils.cache_root` (``$BUSCAD_CACHE``, else
``$XDG_CACHE_HOME/buscad`` or ``~/.cache/buscad``); ``cache_dir`` overrides
it, ``cache_dir=False`` disables caching.

Failures (unreadable image, missing/empty mask, lesion below the minimum ROI
size, a pyradiomics error) are reported in :attr:`ExtractionResult.failures`
(one line each, naming the file) and the row is skipped; the batch goes on.
A perturbation that fails alone (an erosion that empties a tiny mask) leaves
NaN in its columns and is reported as well.

:class:`RadiomicsExtractor` wraps the function as a stateless scikit-learn
transformer over a :class:`~buscad.data.manifest.Manifest` (failed rows become
NaN rows so the output stays aligned with the input).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buscad._lazy import lazy_exports
from buscad.errors import BuscadError, ConfigError
from buscad.utils import array_sha256, atomic_write_text, file_sha256, stable_hash

if TYPE_CHECKING:  # pandas is imported where tables are built: one image's features need none
    import pandas as pd

#: Separator between a feature name and its mask perturbation in column names.
VIEW_SEP = "@"

#: Bumped when the cache file layout or the image/mask preparation changes.
CACHE_FORMAT = 1

#: pyradiomics feature classes valid for 2-D extraction.
FEATURE_CLASSES_2D: tuple[str, ...] = (
    "shape2D",
    "firstorder",
    "glcm",
    "glrlm",
    "glszm",
    "gldm",
    "ngtdm",
)
IMAGE_TYPES: tuple[str, ...] = (
    "Original",
    "Wavelet",
    "LoG",
    "Square",
    "SquareRoot",
    "Logarithm",
    "Exponential",
    "Gradient",
    "LBP2D",
)

#: The packaged default params file (package data, shipped in the wheel);
#: ``configs/radiomics.yaml`` is a copy to start from (a test checks they agree).
DEFAULT_PARAMS_FILE: Path = Path(__file__).with_name("params.yaml")


def _read_default_params() -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:  # a broken installation, not user input
        raise ConfigError(
            DEFAULT_PARAMS_FILE, f"packaged radiomics params unreadable ({exc})"
        ) from exc
    return raw


#: The default settings, read from :data:`DEFAULT_PARAMS_FILE`.
DEFAULT_PARAMS: dict[str, Any] = _read_default_params()

_PERTURB_RE = re.compile(r"^(erode|dilate):(\d+)$")


# ----------------------------------------------------------------------------- params


def load_params(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read and validate a radiomics params YAML file (``None``: the defaults).

    Parameters
    ----------
    path : path-like, optional
        YAML file in pyradiomics' layout (``setting``, ``imageType``,
        ``featureClass``) plus an optional ``buscad`` section
        (``perturbations``: list of ``erode:<px>`` / ``dilate:<px>``).

    Returns
    -------
    dict
        The params with every section present.

    Raises
    ------
    ConfigError
        Unreadable YAML, unknown sections, image types, feature classes or
        perturbations; the message names the file and the key.
    """
    if path is None:
        return copy.deepcopy(DEFAULT_PARAMS)
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "radiomics params file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(p, f"not valid YAML ({exc})") from exc
    return validate_params(raw, source=p)


def validate_params(raw: dict[str, Any], source: str | os.PathLike[str] = "<params>") -> dict:
    """Check a params mapping and fill missing sections with the defaults.

    Raises
    ------
    ConfigError
        Naming the offending key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(source, "radiomics params must be a mapping")
    unknown = set(raw) - {"setting", "imageType", "featureClass", "buscad"}
    if unknown:
        raise ConfigError(
            source,
            f"unknown section(s) {', '.join(sorted(unknown))}; "
            "expected setting, imageType, featureClass, buscad",
        )
    out: dict[str, Any] = {
        "setting": dict(raw.get("setting") or DEFAULT_PARAMS["setting"]),
        "imageType": dict(raw.get("imageType") or {"Original": {}}),
        "featureClass": dict(raw.get("featureClass") or DEFAULT_PARAMS["featureClass"]),
        "buscad": dict(raw.get("buscad") or {}),
    }
    for k in out["imageType"]:
        if k not in IMAGE_TYPES:
            raise ConfigError(
                source, f"imageType.{k}: unknown image type; use one of {', '.join(IMAGE_TYPES)}"
            )
    for k, v in list(out["imageType"].items()):
        out["imageType"][k] = v or {}
    for k, v in list(out["featureClass"].items()):
        if k not in FEATURE_CLASSES_2D:
            hint = " (use shape2D for 2-D images)" if k == "shape" else ""
            raise ConfigError(
                source,
                f"featureClass.{k}: not a 2-D pyradiomics feature class{hint}; "
                f"use {', '.join(FEATURE_CLASSES_2D)}",
            )
        out["featureClass"][k] = list(v or [])
    if not out["setting"].get("force2D", False):
        raise ConfigError(source, "setting.force2D: must be true for 2-D ultrasound images")
    perts = out["buscad"].get("perturbations", DEFAULT_PARAMS["buscad"]["perturbations"])
    for s in perts or []:
        if not _PERTURB_RE.match(str(s)):
            raise ConfigError(
                source, f"buscad.perturbations: {s!r} is not of the form erode:<px> or dilate:<px>"
            )
    out["buscad"]["perturbations"] = [str(s) for s in perts or []]
    return out


def pyradiomics_params(params: dict[str, Any]) -> dict[str, Any]:
    """The part of ``params`` handed to pyradiomics (the ``buscad`` section removed)."""
    return {k: copy.deepcopy(params[k]) for k in ("setting", "imageType", "featureClass")}


def settings_hash(params: dict[str, Any]) -> str:
    """Hash of the pyradiomics parameters, the pyradiomics version and the cache format."""
    import radiomics

    return stable_hash(
        {
            "pyradiomics": pyradiomics_params(params),
            "version": str(radiomics.__version__),
            "format": CACHE_FORMAT,
        }
    )


# ----------------------------------------------------------------------------- masks


def perturbation_name(spec: str) -> str:
    """Column suffix of a perturbation: ``"erode:2"`` → ``"erode2"``."""
    m = _PERTURB_RE.match(spec)
    if not m:
        raise ValueError(f"not a mask perturbation: {spec!r} (use erode:<px> or dilate:<px>)")
    return f"{m.group(1)}{m.group(2)}"


def perturb_mask(mask: np.ndarray, spec: str) -> np.ndarray:
    """Erode or dilate a boolean mask by a disc of the given radius (pixels).

    ``erode:r`` keeps pixels whose whole disc ``x² + y² ≤ r²`` lies inside the
    mask; ``dilate:r`` adds every pixel within that disc of the mask.
    """
    from scipy import ndimage

    m = _PERTURB_RE.match(spec)
    if not m:
        raise ValueError(f"not a mask perturbation: {spec!r} (use erode:<px> or dilate:<px>)")
    op, r = m.group(1), int(m.group(2))
    if r == 0:
        return mask.astype(bool).copy()
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (xx**2 + yy**2) <= r * r
    if op == "erode":
        return ndimage.binary_erosion(mask, structure=disc, border_value=0)
    return ndimage.binary_dilation(mask, structure=disc)


# ----------------------------------------------------------------------------- extraction


def default_cache_dir() -> Path:
    """``radiomics/`` under buscad's cache folder (:func:`buscad.utils.cache_root`)."""
    from buscad.utils import cache_root

    return cache_root() / "radiomics"


def _quiet_pyradiomics() -> None:
    logging.getLogger("radiomics").setLevel(logging.ERROR)


#: ``prctl`` option that asks the kernel to signal this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when the process that started it dies (Linux).

    A ``ProcessPoolExecutor`` worker forked from a process that is killed with
    ``SIGKILL`` (``kill -9``, the OOM killer) otherwise sleeps forever on a pipe
    whose write end it holds itself. ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the
    kernel kill it when its parent (the thread that forked it) goes; a parent
    that died before the call is caught by comparing ``getppid()``. Elsewhere
    (no ``prctl``) this does nothing.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(parent_pid: int) -> None:
    """Initializer of the extraction workers: die with the parent, quiet pyradiomics."""
    _die_with_parent(parent_pid)
    _quiet_pyradiomics()


_EXTRACTORS: dict[str, Any] = {}


def _extractor(params: dict[str, Any]) -> Any:
    key = stable_hash(pyradiomics_params(params))
    ex = _EXTRACTORS.get(key)
    if ex is None:
        _quiet_pyradiomics()
        from radiomics import featureextractor

        ex = featureextractor.RadiomicsFeatureExtractor(pyradiomics_params(params))
        _EXTRACTORS[key] = ex
    return ex


_COLUMN_RE = re.compile(
    r"^(?P<img>[A-Za-z0-9.-]+)_(?P<cls>"
    + "|".join(FEATURE_CLASSES_2D)
    + r")_(?P<feat>[A-Za-z0-9]+)$"
)
_IMAGE_TYPE_OF = {t.lower(): t for t in IMAGE_TYPES} | {"lbp": "LBP2D"}


def restrict_params(params: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """Params that compute only ``columns`` (pyradiomics names such as ``original_glcm_Contrast``).

    A deployed radiomics model reads the handful of features its LASSO kept;
    enabling only those (and only their image types) gives the same values in a
    fraction of the time. Unparseable names raise ``ValueError``.
    """
    classes: dict[str, set[str]] = {}
    types: set[str] = set()
    for c in columns:
        m = _COLUMN_RE.match(c)
        kind = _IMAGE_TYPE_OF.get(m.group("img").split("-")[0].lower()) if m else None
        if m is None or kind is None or kind not in params["imageType"]:
            raise ValueError(f"{c!r} is not a feature these radiomics params compute")
        classes.setdefault(m.group("cls"), set()).add(m.group("feat"))
        types.add(kind)
    out = copy.deepcopy(params)
    out["imageType"] = {t: v for t, v in params["imageType"].items() if t in types}
    out["featureClass"] = {k: sorted(v) for k, v in classes.items()}
    return out


def extract_arrays(gray: np.ndarray, mask: np.ndarray, params: dict[str, Any]) -> dict[str, float]:
    """pyradiomics features of one 2-D image and mask (no cache, no perturbation).

    Parameters
    ----------
    gray : numpy.ndarray
        ``(H, W)`` grayscale image; non-``uint8`` input is mapped with
        :func:`buscad.data.io.to_uint8`.
    mask : numpy.ndarray
        ``(H, W)`` boolean lesion mask.
    params : dict
        Validated params (:func:`load_params`).

    Returns
    -------
    dict
        ``{feature name: value}`` without pyradiomics' ``diagnostics_*`` keys.

    Raises
    ------
    ValueError
        Shape mismatch, empty mask or a pyradiomics error.
    """
    import SimpleITK as sitk

    from buscad.data.io import to_uint8

    if gray.ndim != 2 or mask.shape != gray.shape:
        raise ValueError(f"image {gray.shape} and mask {mask.shape} must be equal 2-D shapes")
    n = int(np.count_nonzero(mask))
    min_size = int(params["setting"].get("minimumROISize", 1) or 1)
    if n < min_size:
        raise ValueError(f"lesion mask has {n} pixel(s), fewer than minimumROISize {min_size}")
    img = sitk.GetImageFromArray(to_uint8(gray).astype(np.float32))
    msk = sitk.GetImageFromArray(mask.astype(np.uint8))
    try:
        res = _extractor(params).execute(img, msk, label=1)
    except Exception as exc:  # pyradiomics raises bare ValueError/AssertionError/RuntimeError
        raise ValueError(f"pyradiomics failed ({type(exc).__name__}: {exc})") from exc
    return {k: float(v) for k, v in res.items() if not k.startswith("diagnostics_")}


@dataclass
class ExtractionResult:
    """Output of :func:`extract_features`.

    Attributes
    ----------
    features : pandas.DataFrame
        One row per successfully extracted image, indexed by ``image_id``;
        original-mask columns first, then ``<feature>@<perturbation>`` columns.
    failures : list of str
        One line per skipped image or failed perturbation, naming the file.
    n_cached, n_computed : int
        Feature sets (image × mask variant) read from the cache / computed.
    """

    features: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0


def _cache_file(cache_dir: Path, img_hash: str, mask_hash: str, s_hash: str) -> Path:
    return cache_dir / s_hash / img_hash[:2] / f"{img_hash[:24]}_{mask_hash[:24]}.json"


def _extract_row(
    image_id: str,
    image_path: str,
    mask_paths: Sequence[str],
    params: dict[str, Any],
    cache_dir: str | None,
) -> tuple[str, dict[str, float] | None, list[str], int, int]:
    """Worker: features of one manifest row (all variants). Never raises."""
    from buscad.data.io import read_image, read_mask, to_uint8

    failures: list[str] = []
    n_cached = n_computed = 0
    s_hash = settings_hash(params)
    perts = list(params["buscad"]["perturbations"])
    index_file: Path | None = None
    if cache_dir:
        # shortcut: file bytes -> the row's features, so a cached rerun skips decoding
        try:
            fkey = stable_hash(
                [file_sha256(image_path), [file_sha256(p) for p in mask_paths], perts], 32
            )
        except OSError:
            fkey = None
        if fkey is not None:
            index_file = Path(cache_dir) / s_hash / "files" / f"{fkey}.json"
            if index_file.is_file():
                try:
                    row = json.loads(index_file.read_text(encoding="utf-8"))
                    return image_id, row["features"], row["failures"], 1 + len(perts), 0
                except (OSError, ValueError, KeyError):
                    pass
    try:
        gray, _meta = read_image(image_path)
        gray = to_uint8(gray)
        if not mask_paths:
            raise BuscadError(f"{image_path}: no lesion mask in the manifest")
        mask = read_mask([Path(p) for p in mask_paths], shape=gray.shape)
    except BuscadError as exc:
        return image_id, None, [f"{image_id}: {exc}"], 0, 0
    img_hash = array_sha256(gray)
    variants = [("", None), *((perturbation_name(s), s) for s in perts)]
    out: dict[str, float] = {}
    base_names: list[str] | None = None
    for suffix, spec in variants:
        m = mask if spec is None else perturb_mask(mask, spec)
        cfile = (
            _cache_file(Path(cache_dir), img_hash, array_sha256(m), s_hash) if cache_dir else None
        )
        feats: dict[str, float] | None = None
        if cfile is not None and cfile.is_file():
            try:
                feats = json.loads(cfile.read_text(encoding="utf-8"))["features"]
                n_cached += 1
            except (OSError, ValueError, KeyError):
                feats = None
        if feats is None:
            try:
                feats = extract_arrays(gray, m, params)
            except ValueError as exc:
                where = "" if spec is None else f" (mask perturbation {spec})"
                msg = f"{image_id}: {image_path}{where}: {exc}"
                if spec is None:
                    return image_id, None, [msg], n_cached, n_computed
                failures.append(msg)
                feats = dict.fromkeys(base_names or [], float("nan"))
            else:
                n_computed += 1
                if cfile is not None:
                    payload = {"image_sha256": img_hash, "features": feats}
                    atomic_write_text(cfile, json.dumps(payload))
        if spec is None:
            base_names = list(feats)
        for k, v in feats.items():
            out[k if not suffix else f"{k}{VIEW_SEP}{suffix}"] = v
    if index_file is not None:
        atomic_write_text(index_file, json.dumps({"features": out, "failures": failures}))
    return image_id, out, failures, n_cached, n_computed


def extract_features(
    manifest: Any,
    params: dict[str, Any] | str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    n_jobs: int = 1,
    progress: bool | None = None,
) -> ExtractionResult:
    """Extract radiomics features for every row of a manifest (cached, parallel).

    Parameters
    ----------
    manifest : Manifest
        Rows with ``image_path`` and ``mask_path``.
    params : dict or path-like, optional
        Params (:func:`load_params`) or a YAML path; default :data:`DEFAULT_PARAMS`.
    cache_dir : path-like or bool, optional
        Cache folder; ``None`` / ``True``: :func:`default_cache_dir`; ``False``: no cache.
    n_jobs : int, default 1
        Worker processes (``concurrent.futures.ProcessPoolExecutor``); 1 runs in-process.
    progress : bool, optional
        Show per-image progress with ETA (:class:`buscad.progress.Progress`); default:
        inside a :func:`buscad.progress.reporting` block (command line, study) only.

    Returns
    -------
    ExtractionResult
        Features (rows in manifest order, failures left out) and the failure lines.
    """
    if params is None or isinstance(params, (str, os.PathLike)):
        params = load_params(params)
    else:
        params = validate_params(params)
    if cache_dir is None or cache_dir is True:
        cdir: str | None = str(default_cache_dir())
    elif cache_dir is False:
        cdir = None
    else:
        cdir = str(Path(cache_dir))
    jobs = [
        (
            str(manifest.df["image_id"].iat[i]),
            str(manifest.image_path(i)),
            [str(p) for p in manifest.mask_paths(i)],
        )
        for i in range(len(manifest))
    ]
    results: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    n_cached = n_computed = 0
    from buscad.progress import Progress

    bar = Progress(len(jobs), "radiomics", "images", enabled=progress)
    if n_jobs <= 1:
        _quiet_pyradiomics()
        outs = (_extract_row(*job, params, cdir) for job in jobs)
        for iid, feats, fails, nc, nn in outs:
            _collect(results, failures, iid, feats, fails)
            n_cached += nc
            n_computed += nn
            bar.update(1)
    else:
        with ProcessPoolExecutor(
            max_workers=n_jobs, initializer=_init_worker, initargs=(os.getpid(),)
        ) as pool:
            futs = [pool.submit(_extract_row, *job, params, cdir) for job in jobs]
            for fut in as_completed(futs):
                iid, feats, fails, nc, nn = fut.result()
                _collect(results, failures, iid, feats, fails)
                n_cached += nc
                n_computed += nn
                bar.update(1)
    bar.close()
    order = [j[0] for j in jobs if j[0] in results]
    import pandas as pd

    df = pd.DataFrame([results[i] for i in order], index=pd.Index(order, name="image_id"))
    if len(df.columns):
        base = [c for c in df.columns if VIEW_SEP not in c]
        df = df[base + [c for c in df.columns if VIEW_SEP in c]]
    failures.sort()
    return ExtractionResult(df, failures, n_cached, n_computed)


def _collect(
    results: dict, failures: list[str], iid: str, feats: dict | None, fails: list[str]
) -> None:
    failures.extend(fails)
    if feats is not None:
        results[iid] = feats


def original_columns(columns: Sequence[str]) -> list[str]:
    """The original-mask feature columns (no ``@`` perturbation suffix)."""
    return [c for c in columns if VIEW_SEP not in str(c)]


# ----------------------------------------------------------------------------- estimator


# the scikit-learn transformer lives in buscad.classical, so that extracting one
# image's features (buscad predict) does not import scikit-learn
__getattr__, _dir = lazy_exports(__name__, {"RadiomicsExtractor": "buscad.classical"}, globals())
