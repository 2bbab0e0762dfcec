"""ONNX export of the segmentation network, the parity check with PyTorch, and cached sessions.

The graph maps ``image`` float32 ``(N, 2, S, S)`` to ``logits`` ``(N, 1, S, S)``
(dynamic batch; ``S`` fixed at export). Running it needs only ONNX Runtime
(:class:`buscad.segment.base.OnnxRunner`).

:func:`ort_session` opens an ONNX Runtime session whose graph optimisation runs
once per machine: the first session of a graph (``ORT_ENABLE_ALL``) also writes
ONNX Runtime's optimised graph (``SessionOptions.optimized_model_filepath``) to
``onnxruntime/<version>-<cpu>/<sha16>.onnx`` under :func:`buscad.utils.cache_root`
with a JSON record (the source graph's SHA-256, the ONNX Runtime version, the CPU
tag and the optimised file's SHA-256); later sessions load that file with the
optimisations off. Both run the same kernels on the same graph, so their outputs
are the same numbers; only the start-up is shorter. The optimised graph may hold
CPU-specific layouts (NCHWc blocks), hence the version and CPU in the folder name.
A record or file that does not check out is logged, the source graph is loaded
and the cache is rewritten.

With ``fusions`` (LiteMedSAM's encoder: :data:`ENCODER_FUSIONS`) the cached graph is
built from the source graph first rewritten by ``onnxruntime.transformers``'
optimiser (e.g. a MatMul's bias added inside the exact GELU that follows it,
``BiasGelu``); the rewrite is kept only when its output on seeded uniform inputs
is within :data:`FUSION_TOLERANCE` (max abs) of the source graph's, and the record
names the fusions, the fused operators and that difference.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from buscad.errors import ModelFileError
from buscad.utils import atomic_path, atomic_write_json, cache_root, file_sha256

OPSET = 17


def export_module(
    module: Any, path: str | os.PathLike[str], input_size: int, opset: int = OPSET
) -> Path:
    """Export the network to ``path`` (TorchScript exporter, dynamic batch, atomically)."""
    import buscad._compat  # noqa: F401
    from buscad._compat import torch

    p = Path(path)
    was_training = module.training
    module = module.cpu().eval()
    x = torch.zeros(1, 2, input_size, input_size)
    with atomic_path(p) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    module.train(was_training)
    return p


def parity(module: Any, onnx_path: str | os.PathLike[str], x: np.ndarray) -> dict[str, float]:
    """Largest differences between PyTorch and ONNX Runtime on the batch ``x``.

    Returns
    -------
    dict
        ``max_abs_logit`` = max |l_torch - l_onnx| and ``max_abs_prob`` =
        max |sigmoid(l_torch) - sigmoid(l_onnx)|.
    """
    from buscad.segment.base import OnnxRunner, sigmoid
    from buscad.segment.model import torch_runner

    a = torch_runner(module)(x)
    b = OnnxRunner(onnx_path, threads=1)(x)
    return {
        "max_abs_logit": float(np.abs(a - b).max()),
        "max_abs_prob": float(np.abs(sigmoid(a) - sigmoid(b)).max()),
    }


#: Format of the JSON record beside a cached optimised graph.
OPTIMISED_FORMAT = "buscad-ort-optimised"

log = logging.getLogger("buscad.segment")

#: ``onnxruntime.transformers`` fusions for LiteMedSAM's TinyViT encoder: exact GELU
#: kept (no tanh approximation); its LayerNorm fusion left off (its RMS-norm pattern
#: matches the neck's LayerNorm2d and changes the embedding by 0.34), ONNX Runtime
#: fuses the LayerNorms itself.
ENCODER_FUSIONS = {
    "model_type": "vit",
    "enable_gelu_approximation": False,
    "enable_layer_norm": False,
}

#: Largest max abs difference from the source graph's outputs a fused graph may have.
FUSION_TOLERANCE = 1e-4


@functools.lru_cache(maxsize=1)
def cpu_tag() -> str:
    """Twelve hex digits naming this CPU for ONNX Runtime's layouts.

    SHA-256 of ``platform.machine()`` and, on Linux, the first ``model name`` and
    ``flags`` lines of ``/proc/cpuinfo`` (else ``platform.processor()``).
    """
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            seen: dict[str, str] = {}
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags") and key not in seen:
                    seen[key] = value.strip()
                if len(seen) == 2:
                    break
        parts += [seen.get("model name", ""), seen.get("flags", "")]
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def optimised_folder() -> Path:
    """``cache_root() / "onnxruntime" / "<ORT version>-<cpu_tag()>"`` (not created here)."""
    import onnxruntime as ort

    return cache_root() / "onnxruntime" / f"{ort.__version__}-{cpu_tag()}"


def _options(threads: int | None, level: str = "ORT_ENABLE_ALL") -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


def _open(path: Path, opts: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _fuse(src: Path, dst: Path, fusions: dict) -> dict[str, int]:
    """``onnxruntime.transformers``' optimiser (``fusions``) of ``src`` into ``dst``; fused op counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions(fusions["model_type"])
    for key, value in fusions.items():
        if key != "model_type":
            setattr(opts, key, value)
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that num_heads / hidden_size are not given
    try:
        model = optimize_model(
            str(src),
            model_type=fusions["model_type"],
            num_heads=0,
            hidden_size=0,
            opt_level=0,
            optimization_options=opts,
            use_gpu=False,
        )
        model.save_model_to_file(str(dst))
        stats = model.get_fused_operator_statistics()
    finally:
        quiet.setLevel(level)
    return {k: int(v) for k, v in stats.items() if v}


def max_abs_difference(a: Path, b: Path, seed: int = 0) -> float:
    """``max |y_a - y_b|`` over every output of two graphs on the same seeded inputs.

    Float inputs are uniform in ``[0, 1)``, integer inputs 0; dynamic dimensions are 1.
    """
    rng = np.random.default_rng(seed)
    sa, sb = _open(a, _options(1)), _open(b, _options(1))
    feed = {}
    for spec in sa.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if "float" in spec.type:
            feed[spec.name] = rng.random(shape, dtype=np.float32)
        else:
            feed[spec.name] = np.zeros(shape, np.int64)
    ya, yb = sa.run(None, feed), sb.run(None, feed)
    return max(
        float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(ya, yb, strict=True)
    )


def _check_optimised(
    graph: Path, record: Path, source_sha256: str, fusions: dict | None = None
) -> str | None:
    """Why the cached optimised ``graph`` cannot stand in for the source graph (None: it can)."""
    import onnxruntime as ort

    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable record {record.name} ({exc})"
    if not isinstance(doc, dict) or doc.get("format") != OPTIMISED_FORMAT:
        return f"{record.name} is not a {OPTIMISED_FORMAT} record"
    if doc.get("source_sha256") != source_sha256:
        return "made from another source graph"
    if doc.get("fusions") != fusions:
        return "made with other fusions"
    if doc.get("onnxruntime") != ort.__version__ or doc.get("cpu") != cpu_tag():
        return "made by another ONNX Runtime or CPU"
    if not graph.is_file():
        return "file missing"
    if file_sha256(graph) != doc.get("sha256"):
        return "SHA-256 does not match its record"
    return None


def _fused_source(src: Path, fused: Path, fusions: dict) -> dict:
    """Write the fused graph of ``src`` to ``fused``; whether it may be used, and why (record)."""
    fused.parent.mkdir(parents=True, exist_ok=True)
    try:
        ops = _fuse(src, fused, fusions)
        diff = max_abs_difference(src, fused)
    except Exception as exc:  # the optimiser or the check failed: the source graph is used
        log.info("%s: transformer fusions not applied (%s)", src, exc)
        return {"used": False, "error": str(exc)}
    used = diff <= FUSION_TOLERANCE
    if not used:
        log.info(
            "%s: transformer fusions not applied (max abs difference %.3g > %g)",
            src,
            diff,
            FUSION_TOLERANCE,
        )
    return {"used": used, "fused_operators": ops, "max_abs_difference": diff}


def ort_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    sha256: str | None = None,
    cache: bool = True,
    fusions: dict | None = None,
) -> tuple[Any, Path]:
    """An ONNX Runtime CPU session of ``path``; with ``cache``, through the optimised-graph cache.

    Parameters
    ----------
    path : path-like
        The source ONNX graph.
    threads : int, optional
        Intra-op threads (inter-op: 1).
    sha256 : str, optional
        The source graph's SHA-256 when already known (checked by the caller); else
        it is computed.
    cache : bool
        Use (and fill) the cache of :func:`optimised_folder` (module docstring); off:
        the source graph with ``ORT_ENABLE_ALL``, nothing written.
    fusions : dict, optional
        ``onnxruntime.transformers`` fusions applied before ONNX Runtime's own when the
        cache entry is built (``model_type`` and ``FusionOptions`` attributes, e.g.
        :data:`ENCODER_FUSIONS`); kept only within :data:`FUSION_TOLERANCE`.

    Returns
    -------
    session : onnxruntime.InferenceSession
    loaded : pathlib.Path
        The file the session was loaded from: the cached optimised graph, or ``path``
        (also when this call built the cache entry; the first build of an entry with
        ``fusions`` optimises and runs the source twice to check them: seconds, once).

    Raises
    ------
    ModelFileError
        ONNX Runtime cannot load the source graph.
    """
    import onnxruntime as ort

    src = Path(path)
    if cache:
        digest = sha256 or file_sha256(src)
        folder = optimised_folder()
        graph = folder / f"{digest[:16]}.onnx"
        record = graph.with_suffix(".json")
        if record.is_file() or graph.is_file():
            problem = _check_optimised(graph, record, digest, fusions)
            if problem is None:
                try:
                    return _open(graph, _options(threads, "ORT_DISABLE_ALL")), graph
                except Exception as exc:  # any load failure falls back to the source graph
                    problem = f"ONNX Runtime cannot load it ({exc})"
            log.warning(
                "cached optimised ONNX graph %s unusable (%s): loading %s and rewriting the cache",
                graph,
                problem,
                src,
            )
        session = None
        fused = graph.with_name(f".{graph.stem}.{os.getpid()}.fused.onnx")
        try:
            built = src
            fusion_doc: dict = {}
            if fusions:
                fusion_doc = _fused_source(src, fused, fusions)
                built = fused if fusion_doc["used"] else src
            with atomic_path(graph) as tmp:
                opts = _options(threads)
                opts.optimized_model_filepath = str(tmp)
                opts.log_severity_level = 3  # ORT warns that NCHWc layouts are CPU-specific
                session = _open(built, opts)
            atomic_write_json(
                record,
                {
                    "format": OPTIMISED_FORMAT,
                    "source": src.name,
                    "source_sha256": digest,
                    "onnxruntime": ort.__version__,
                    "cpu": cpu_tag(),
                    "level": "ORT_ENABLE_ALL",
                    "fusions": fusions,
                    **({"fusion": fusion_doc} if fusions else {}),
                    "sha256": file_sha256(graph),
                },
            )
        except Exception as exc:  # a cache that cannot be written is skipped
            log.debug("optimised ONNX graph of %s not cached (%s)", src, exc)
        finally:
            with contextlib.suppress(OSError):
                fused.unlink(missing_ok=True)
        if session is not None:
            return session, src
    try:
        return _open(src, _options(threads)), src
    except Exception as exc:
        raise ModelFileError(src, f"cannot load the ONNX model ({exc})") from exc


__all__ = [
    "ENCODER_FUSIONS",
    "FUSION_TOLERANCE",
    "OPSET",
    "OPTIMISED_FORMAT",
    "cpu_tag",
    "export_module",
    "max_abs_difference",
    "optimised_folder",
    "ort_session",
    "parity",
]
