"""Wall time of ``buscad predict`` from the shell: one BUSI image, its mask (or none), heatmap on.

Runs ``.venv/bin/buscad predict BUNDLE IMAGE --mask MASK -o TMP`` ``--repeats`` times
(``--exe``: another ``buscad`` script, e.g. a shared virtual environment's with
``PYTHONPATH=src`` so that this checkout's code is timed; the results record the
script and the ``buscad`` package the child imported)
(a fresh process each time: interpreter start, imports, bundle load, prediction,
overlay PNG, JSON and summary CSV) and records each wall time, the models that ran
and the load average. ``--no-mask``: the image alone, so the bundle's segmenter outlines
the lesion automatically (its detector proposes, LiteMedSAM outlines); the results go
under ``no_mask`` in the same file, the masked run's numbers are kept. Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863,
2020), read in place; the overlay goes to a temporary folder that is deleted.

Example::

    .venv/bin/python benchmarks/predict_cli.py --bundle runs/busi_breast/study/bundle
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "BUSI" / "Dataset_BUSI_with_GT"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--image", type=Path, default=BUSI / "malignant" / "malignant (5).png")
    ap.add_argument("--mask", type=Path, default=BUSI / "malignant" / "malignant (5)_mask.png")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--no-mask", action="store_true", help="Predict without a mask (automatic outline)."
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/predict_cli.json")
    ap.add_argument(
        "--exe",
        type=Path,
        help="The buscad script to time (default: .venv/bin/buscad of this checkout, else "
        "the one beside this Python).",
    )
    args = ap.parse_args()
    exe = args.exe or REPO / ".venv" / "bin" / "buscad"
    if args.exe is None and not exe.is_file():
        exe = Path(sys.executable).with_name("buscad")
    first = exe.read_bytes()[:200].split(b"\n")[0].decode(errors="replace")
    python = first[2:].strip() if first.startswith("#!") else sys.executable
    package = subprocess.run(
        [python, "-c", "import buscad; print(buscad.__file__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    load0 = os.getloadavg()[0]
    walls, doc = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(exe), "predict", str(args.bundle), str(args.image)]
        cmd += ([] if args.no_mask else ["--mask", str(args.mask)]) + ["-o", tmp]
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
        doc = json.loads(next(Path(tmp).glob("*.json")).read_text())
    res = {
        "command": "buscad predict BUNDLE 'malignant (5).png' "
        + ("" if args.no_mask else "--mask 'malignant (5)_mask.png' ")
        + "-o TMP",
        "data": "BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020)",
        "bundle": str(args.bundle),
        "exe": str(exe),
        "buscad_package": package,
        "bundle_name": doc.get("bundle"),
        "engine": doc.get("engine"),
        "models_run": [k for k, v in doc["model_scores"].items() if v is not None],
        "models_skipped": doc["skipped_models"],
        "wall_s": [round(w, 3) for w in walls],
        "wall_s_median": float(np.median(walls)),
        "wall_s_max": float(max(walls)),
        "in_process_ms": doc.get("timings_ms"),
        "target_s": 1.5 if args.no_mask else 1.0,
        "roi_source": doc.get("roi_source"),
        "cautions": doc.get("cautions"),
        "loadavg_1min_start_end": [load0, os.getloadavg()[0]],
        "cpus_visible": len(os.sched_getaffinity(0)),
    }
    if args.no_mask:  # kept beside the masked run's numbers
        old = json.loads(args.out.read_text()) if args.out.is_file() else {}
        res = {**{k: v for k, v in old.items() if k != "no_mask"}, "no_mask": res}
    atomic_write_json(args.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
