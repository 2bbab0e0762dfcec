"""CPU speed of the AI score and the heatmap, per image, batch 1.

Measures, in one run with ``--threads`` torch / ONNX Runtime threads (default 2):

- ``preprocess_ms``: read image + mask, ROI crop, resize (phantom images, or BUSI
  when ``--real`` and ../shared/data exist; no pixels are written anywhere);
- ``torch_score_ms``: PyTorch forward + softmax of one 224 px input;
- ``ort_score_ms``: ONNX Runtime, same input;
- ``gradcam_ms``: PyTorch Grad-CAM of the malignant class (forward + backward);
- ``score_plus_gradcam_ms``: ONNX Runtime score then the PyTorch Grad-CAM heatmap;
- ``ort_score_plus_gradcam_ms``: one ONNX Runtime pass of the ``explain=True``
  graph (score, deep features and Grad-CAM; see :mod:`buscad.models.onnx`) plus
  scaling the map to [0, 1] at 224 px, i.e. what a model bundle's "score + heatmap"
  costs in ``buscad predict`` and the web app (excluding preprocessing).

Each figure is the median of ``--repeats`` timed calls after 5 warm-up calls.
Weights do not change speed: efficientnet_lite0 uses its ImageNet weights with a
random head, rcdnet random weights. The 1-minute load average is recorded because
the measuring machine may be shared.

Example::

    python benchmarks/deep_speed.py --threads 2 --out benchmarks/results/deep_speed.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import buscad._compat  # noqa: F401
from buscad.explain.cam import compute_cam
from buscad.models.onnx import OnnxClassifier, export_onnx, scale_cam
from buscad.models.preprocess import Preprocessor
from buscad.models.registry import create_backbone, get_spec
from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1000)


def bench_model(name: str, threads: int, repeats: int, tmp: Path) -> dict:
    """Timings of one backbone (see the module docstring)."""
    spec = get_spec(name)
    pretrained = "imagenet" if spec.package else None
    torch.manual_seed(0)
    m = create_backbone(name, pretrained=pretrained).eval()
    x = torch.randn(1, 3, 224, 224)
    onnx_path = export_onnx(m, tmp / f"{name}.onnx", 224)
    sess = OnnxClassifier(onnx_path, num_threads=threads)
    with torch.inference_mode():
        ref = m.predict_proba(x).numpy()
    diff = float(np.abs(sess.predict_proba(x) - ref).max())
    explain = OnnxClassifier(
        export_onnx(m, tmp / f"{name}_explain.onnx", 224, explain=True), num_threads=threads
    )
    cam_ref = compute_cam(m, x, "gradcam")[0]

    def ort_explain() -> np.ndarray:
        _, _, cam = explain.explain(x)
        return scale_cam(cam[0], (224, 224))

    def torch_score() -> None:
        with torch.inference_mode():
            m.predict_proba(x)

    r = {
        "weights": m.weights_provenance["weights"],
        "params_million": sum(p.numel() for p in m.parameters()) / 1e6,
        "onnx_vs_torch_max_abs_diff": diff,
        "torch_score_ms": median_ms(torch_score, repeats),
        "ort_score_ms": median_ms(lambda: sess.predict_proba(x), repeats),
        "gradcam_ms": median_ms(lambda: compute_cam(m, x, "gradcam"), repeats),
        "score_plus_gradcam_ms": median_ms(
            lambda: (sess.predict_proba(x), compute_cam(m, x, "gradcam")), repeats
        ),
        "ort_score_plus_gradcam_ms": median_ms(ort_explain, repeats),
        "ort_gradcam_vs_pytorch_grad_cam_max_abs_diff": float(
            np.abs(ort_explain() - cam_ref).max()
        ),
    }
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description="CPU speed of score and heatmap")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--models", default="efficientnet_lite0,rcdnet")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deep_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from buscad.data.phantom import generate_cohort

    tmp = Path(tempfile.mkdtemp(prefix="buscad_speed_"))
    ph = generate_cohort(20, tmp / "ph", seed=1)
    res: dict = {
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_1min_start": os.getloadavg()[0],
        "models": {},
    }
    pre0 = Preprocessor(input_size=224)
    res["preprocess_ms_phantom_224x256"] = median_ms(
        lambda: pre0.load(ph.image_path(3), ph.mask_paths(3)), args.repeats
    )
    busi = REPO.parent / "shared" / "data" / "BUSI" / "Dataset_BUSI_with_GT" / "malignant"
    if busi.is_dir():
        img = busi / "malignant (1).png"
        masks = sorted(busi.glob("malignant (1)_mask*.png"))
        res["preprocess_ms_busi"] = median_ms(lambda: pre0.load(img, masks), args.repeats)
    for name in [s for s in args.models.split(",") if s]:
        r = bench_model(name, args.threads, args.repeats, tmp)
        res["models"][name] = r
        print(
            name, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True
        )
    res["loadavg_1min_end"] = os.getloadavg()[0]
    res["targets"] = {
        "ort_score_ms": 15,
        "score_plus_gradcam_ms": 150,
        "ort_score_plus_gradcam_ms": 150,
    }
    atomic_write_json(args.out, res)
    print({k: v for k, v in res.items() if k != "models"})


if __name__ == "__main__":
    main()
