"""Latency and memory of the web app's predict API (with heatmap) under concurrent clients.

Starts ``buscad serve``'s app in a child process pinned to ``--cores`` CPU
cores, sends ``--requests`` POST /api/predict requests (phantom images, a box
around each lesion, heatmap on) from ``--clients`` concurrent clients, and
records p50/p95 latency and the server's resident memory (RSS) after the first
``--warm`` requests and after the run.

Predictors:

- ``--bundle PATH``: a real model bundle (the number that counts; target p95
  <= 300 ms with the default bundle on 2 cores, RSS after the run within 10 %
  of RSS after the first 20 requests);
- ``--predictor torch-standin``: an untrained timm EfficientNet-B0 at 224x224
  with pytorch-grad-cam Grad-CAM, i.e. the compute of a typical CNN bundle
  without its weights (scores are meaningless; latency and memory are real);
- ``--predictor test``: the image-statistics predictor of the test suite (no
  neural network; measures the app's own overhead).

Usage::

    nice -n 10 python benchmarks/serve_latency.py --predictor torch-standin
    python benchmarks/serve_latency.py --bundle runs/demo/bundle

Writes ``benchmarks/results/serve_latency.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import os, sys, json
cores = json.loads(sys.argv[1]); kind = sys.argv[2]; arg = sys.argv[3]; port = int(sys.argv[4])
os.sched_setaffinity(0, set(cores))
import uvicorn
sys.path[:0] = [os.path.join(sys.argv[5], "src"), os.path.join(sys.argv[5], "tests"),
                os.path.join(sys.argv[5], "benchmarks")]
if kind == "bundle":
    from buscad.serve.cli import load_predictor
    from pathlib import Path
    predictor = load_predictor(Path(arg))
elif kind == "torch-standin":
    from serve_latency import TorchStandIn
    predictor = TorchStandIn(threads=len(cores))
else:
    from serve_predictor import ContrastPredictor
    predictor = ContrastPredictor()
try:
    import torch
    torch.set_num_threads(len(cores))
except ImportError:
    pass
from buscad.serve.app import create_app
uvicorn.run(create_app(predictor), host="127.0.0.1", port=port, log_level="warning",
            access_log=False)
"""


class TorchStandIn:
    """Untrained EfficientNet-B0 + Grad-CAM following the Predictor protocol (benchmark only).

    The region (mask bounding box, box, or whole image) is cropped, resized to
    224x224 and scored; Grad-CAM on the last convolution is resized back into
    the region. Weights are random: the score means nothing.
    """

    name = "torch-standin-efficientnet_b0-untrained"
    version = "benchmark"
    threshold = 0.5
    primary_model = "efficientnet_b0"

    def __init__(self, threads: int = 2) -> None:
        # isort: off
        import buscad._compat  # noqa: F401  (before timm / grad-cam)
        import timm
        import torch
        from pytorch_grad_cam import GradCAM

        # isort: on

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.model_names = [self.primary_model]
        self.clinical_inputs: list[str] = []
        self.torch = torch
        self.model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1).eval()
        self.cam = GradCAM(model=self.model, target_layers=[self.model.conv_head])

    def predict(self, gray, mask=None, box=None, clinical=None, heatmap=True):
        import torch.nn.functional as F
        from PIL import Image

        from buscad.bundle.types import Prediction, likelihood_band

        t0 = time.perf_counter()
        h, w = gray.shape
        if mask is not None:
            ys, xs = np.nonzero(mask)
            roi, src = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), "mask"
        elif box is not None:
            roi, src = tuple(int(v) for v in box), "box"
        else:
            roi, src = (0, 0, w, h), "whole"
        x0, y0, x1, y1 = roi
        crop = np.asarray(gray[y0:y1, x0:x1], dtype=np.float32)
        crop = np.asarray(Image.fromarray(crop).resize((224, 224), Image.BILINEAR))
        crop = (crop / max(float(crop.max()), 1.0) - 0.45) / 0.25
        x = self.torch.from_numpy(np.repeat(crop[None, None], 3, axis=1).copy())
        with self.torch.no_grad():
            p = float(self.torch.sigmoid(self.model(x))[0, 0])
        t1 = time.perf_counter()
        hm = None
        if heatmap:
            from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

            cam = self.cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])[0]
            cam_t = self.torch.from_numpy(cam)[None, None]
            up = F.interpolate(cam_t, size=(y1 - y0, x1 - x0), mode="bilinear")[0, 0].numpy()
            hm = np.zeros((h, w), np.float32)
            hm[y0:y1, x0:x1] = np.clip(up, 0, 1)
        t2 = time.perf_counter()
        return Prediction(
            ai_score=p,
            primary_model=self.primary_model,
            threshold=self.threshold,
            decision="malignant" if p >= self.threshold else "benign",
            band=likelihood_band(p),
            model_scores={self.primary_model: p},
            roi=roi,
            roi_source=src,
            heatmap=hm,
            timings_ms={"score": (t1 - t0) * 1e3, "heatmap": (t2 - t1) * 1e3},
        )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases(n: int, workdir: Path) -> list[tuple[bytes, str]]:
    sys.path.insert(0, str(REPO / "src"))
    from buscad.data.io import read_mask
    from buscad.data.phantom import generate_cohort

    man = generate_cohort(n, workdir, seed=99, normal_fraction=0.0)
    out = []
    for i in range(len(man)):
        mp = man.mask_paths(i)
        data = man.image_path(i).read_bytes()
        if mp:
            m = read_mask(mp, None)
            ys, xs = np.nonzero(m)
            pad = 8
            box = f"{max(xs.min() - pad, 0)},{max(ys.min() - pad, 0)},{xs.max() + pad},{ys.max() + pad}"
        else:
            box = ""
        out.append((data, box))
    return out


async def _run(base: str, cases, n: int, clients: int, start: int) -> list[float]:
    lat: list[float] = []
    q: asyncio.Queue[int] = asyncio.Queue()
    for i in range(start, start + n):
        q.put_nowait(i)

    async def worker(c: httpx.AsyncClient) -> None:
        while True:
            try:
                i = q.get_nowait()
            except asyncio.QueueEmpty:
                return
            data, box = cases[i % len(cases)]
            t0 = time.perf_counter()
            r = await c.post(
                f"{base}/api/predict",
                files={"image": ("case.png", data, "image/png")},
                data={"box": box, "heatmap": "true"},
            )
            dt = time.perf_counter() - t0
            if r.status_code != 200 or not r.json().get("heatmap_png"):
                raise RuntimeError(f"request {i} failed: {r.status_code} {r.text[:200]}")
            lat.append(dt * 1e3)

    async with httpx.AsyncClient(timeout=120) as c:
        await asyncio.gather(*(worker(c) for _ in range(clients)))
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="model bundle folder")
    ap.add_argument(
        "--predictor",
        choices=("test", "torch-standin"),
        default="torch-standin",
        help="stand-in predictor when no --bundle is given",
    )
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/serve_latency.json")
    args = ap.parse_args(argv)
    avail = sorted(os.sched_getaffinity(0))
    load0 = os.getloadavg()[0]
    cores = avail[: args.cores]
    kind, arg = ("bundle", str(args.bundle)) if args.bundle else (args.predictor, "")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(cores), kind, arg, str(port), str(REPO)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        info = httpx.get(f"{base}/api/info").json()
        with tempfile.TemporaryDirectory() as td:
            cases = _cases(16, Path(td))
        lat = asyncio.run(_run(base, cases, args.warm, args.clients, 0))
        rss_warm = _rss_mb(proc.pid)
        lat += asyncio.run(_run(base, cases, args.requests - args.warm, args.clients, args.warm))
        rss_end = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    a = np.asarray(lat)
    growth = 100.0 * (rss_end - rss_warm) / rss_warm
    label = {
        "bundle": f"model bundle {args.bundle}",
        "torch-standin": "untrained EfficientNet-B0 + Grad-CAM stand-in (real compute, meaningless scores)",
        "test": "image-statistics test predictor (no neural network; app overhead only)",
    }[kind]
    res = {
        "predictor": label,
        "bundle_name": info["bundle"]["name"],
        "requests": len(a),
        "clients": args.clients,
        "server_cores": cores,
        "image_size": "224x256 phantom PNG, box around the lesion, heatmap on",
        "latency_ms": {
            "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)),
            "mean": float(a.mean()),
            "max": float(a.max()),
            "first_warm_p50": float(np.percentile(a[: args.warm], 50)),
        },
        "rss_mb_after_warm": rss_warm,
        "rss_mb_after_run": rss_end,
        "rss_growth_pct": growth,
        "target_p95_ms": 300,
        "p95_within_target": bool(np.percentile(a, 95) <= 300),
        "rss_within_10pct": bool(abs(growth) <= 10),
        "machine": {
            "python": platform.python_version(),
            "cpus_visible": len(avail),
            "loadavg_1min_start_end": [load0, os.getloadavg()[0]],
            "niceness": os.nice(0),
        },
        "command": "python benchmarks/serve_latency.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    from buscad.utils import atomic_write_json

    atomic_write_json(args.out, res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
