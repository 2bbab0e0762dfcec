"""Archive-scale scoring benchmark: local engine vs Ray Data, CNN only and every model.

Usage::

    python benchmarks/scale.py [--n 5000] [--bundle runs/demo/study/bundle] [--no-ray]

Scores ``--n`` synthetic phantom images (a dark ellipse on speckle, 96x128,
with a lesion mask and an ``age`` column; tests/scale_fixtures.py) with
``buscad predict --manifest`` (``--no-heatmap``, batch 32), each run a
separate process:

* CNN only (the bundle's ``deep`` model alone) and every model of the bundle,
  on the local engine and on Ray (a local Ray on the machine's cores, one
  actor per core);
* Ray with one actor on the first 1,000 images: scaling efficiency
  ``E = rate(2 actors) / (2 · rate(1 actor))``;
* an archive-sized pair, CNN only, on ``--n-archive`` images (default 20,000;
  0 skips it): local and Ray end to end, so Ray's fixed start-up is amortised
  as it is on a real archive;
* kill and resume: a run killed (SIGKILL of its whole process group) once a
  few shards are written, then run again: rows lost = manifest ids without a
  row, rows duplicated = rows minus distinct ids, over every shard.

Two rates per run. ``images_per_s`` is the engines' own scoring rate, counted
the same way by both: from the bundle loaded (Ray: the first scoring actor's
bundle loaded) to the last row written; ``end_to_end_images_per_s`` divides by
the wall time of the whole ``buscad predict`` process (interpreter start,
imports, Ray start-up, actor launch). Ray's start-up (``startup_seconds``) is
recorded beside them; peak memory is the largest summed RSS of the run's
process tree (sampled every 0.1 s). The bundle is ``--bundle`` when given, else
``runs/demo/study/bundle`` when ``make demo`` left one, else a bundle built here
(random EfficientNet-Lite0 at 96 px plus a DLR model). The machine's load
average is recorded with each run. Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tree_rss_mb(pid: int) -> float:
    """Summed resident memory (MiB) of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def predict(bundle: Path, manifest: Path, out: Path, *extra: str, kill_after_shards: int = 0):
    """Run ``buscad predict --manifest`` in its own process group; (summary, peak MiB, wall s)."""
    cmd = [sys.executable, "-m", "buscad.cli", "predict", str(bundle), "--manifest", str(manifest),
           "-o", str(out), "--no-heatmap", "--batch-size", "32", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    peak, killed = 0.0, False
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        if kill_after_shards and len(list((out / "parts").glob("*.parquet"))) >= kill_after_shards:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.1)
    proc.wait()
    wall = time.perf_counter() - t0
    if killed:
        time.sleep(2)  # let a killed Ray's processes go
        return None, peak, wall
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return json.loads((out / "summary.json").read_text()), peak, wall


def exactly_once(out: Path, manifest: Path) -> dict:
    """Rows lost and duplicated over every shard of a run."""
    ids = pd.concat([pd.read_parquet(f, columns=["image_id"]) for f in (out / "parts").glob("*")])
    want = set(pd.read_csv(manifest, dtype={"image_id": str})["image_id"])
    return {
        "rows": len(ids),
        "rows_lost": len(want - set(ids["image_id"])),
        "rows_duplicated": int(len(ids) - ids["image_id"].nunique()),
    }


def compare(a: Path, b: Path) -> dict:
    """Differences between two runs' summary.csv (same ids, errors and scores?)."""
    x, y = pd.read_csv(a / "summary.csv"), pd.read_csv(b / "summary.csv")
    score_cols = [c for c in x.columns if c == "ai_score" or c.startswith("p_")]
    same_text = all(
        x[c].astype("string").fillna("").equals(y[c].astype("string").fillna(""))
        for c in ("image_id", "decision", "band", "roi", "error")
    )
    diff = 0.0
    for c in score_cols:
        a, b = x[c].to_numpy(float), y[c].to_numpy(float)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return {"same_ids_decisions_rois_errors": False, "max_abs_score_diff": None}
        ok = ~np.isnan(a)
        diff = max(diff, float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0)
    return {"same_ids_decisions_rois_errors": bool(same_text), "max_abs_score_diff": diff}


def cnn_only(bundle: Path, dest: Path) -> Path:
    """A copy of a bundle with its deep model alone."""
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("models"))
    doc = json.loads((dest / "bundle.json").read_text())
    doc["models"] = {"deep": doc["models"]["deep"]}
    doc["not_exported"], doc["radiomics_params"] = {}, None
    (dest / "bundle.json").write_text(json.dumps(doc, indent=2))
    return dest


BREAST = ROOT.parent / "shared" / "data" / "BrEaST-Lesions_USG"


def auto_outlines(args: argparse.Namespace) -> None:
    """``predict --manifest`` without masks: the bundle's segmenter outlines every image.

    Images: the first ``--n-auto`` benign/malignant BrEaST-Lesions_USG images (Pawlowska
    et al., Sci Data 11:148, 2024; CC BY 4.0), read in place, no mask column, so
    each is embedded by LiteMedSAM, searched by the detector and its candidates
    outlined. Local engine; the rate counts images with and without a lesion found.
    Merged into ``--out`` under ``automatic_outlines`` (the other entries are kept).
    """
    from buscad.utils import atomic_write_json

    clin = pd.read_csv(BREAST / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv")
    clin = clin[clin["Classification"].isin(["benign", "malignant"])].head(args.n_auto)
    folder = BREAST / "BrEaST-Lesions_USG-images_and_masks"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="buscad-scale-auto-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "breast_no_masks.csv"
    pd.DataFrame(
        {
            "image_id": [Path(f).stem for f in clin["Image_filename"]],
            "image_path": [str(folder / f) for f in clin["Image_filename"]],
        }
    ).to_csv(manifest, index=False)
    out = work / "auto"
    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()[0]
    s, peak, wall = predict(args.auto_bundle, manifest, out)
    table = pd.read_csv(out / "summary.csv")
    rois = table["roi_source"].astype("string").fillna("error")
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc["automatic_outlines"] = {
        "data": "BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024; CC BY 4.0), "
        "benign + malignant images without masks, read in place",
        "bundle": str(args.auto_bundle),
        "segmenter": {
            "arch": json.loads((args.auto_bundle / "segmenter" / "segmenter.json").read_text())[
                "config"
            ]["arch"],
            "detector": (args.auto_bundle / "segmenter" / "detector").is_dir(),
        },
        "n_images": len(clin),
        "engine": "local",
        "images_per_s": s["images_per_s"],
        "end_to_end_images_per_s": round(s["this_run_rows"] / wall, 3),
        "wall_seconds_with_startup": round(wall, 2),
        "peak_rss_mib": round(peak, 1),
        "n_failed": s["n_failed"],
        "roi_sources": rois.value_counts().to_dict(),
        "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "cpu_cores": os.cpu_count(),
    }
    atomic_write_json(args.out, doc)
    print("automatic_outlines", doc["automatic_outlines"], flush=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--n-archive", type=int, default=20000)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument(
        "--auto-bundle",
        type=Path,
        default=None,
        help="Only measure automatic outlines: this bundle (LiteMedSAM + detector segmenter) "
        "scores --n-auto BrEaST images without masks; the result is merged into --out.",
    )
    ap.add_argument("--n-auto", type=int, default=100)
    args = ap.parse_args()
    if args.auto_bundle is not None:
        auto_outlines(args)
        return
    from tests.scale_fixtures import make_bundle, make_manifest

    work = args.workdir or Path(tempfile.mkdtemp(prefix="buscad-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or ROOT / "runs" / "demo" / "study" / "bundle"
    source = str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle)
    if not (bundle / "bundle.json").is_file():
        bundle, source = make_bundle(work / "bundle", input_size=96), "built by the benchmark"
    cnn = cnn_only(bundle, work / "bundle_cnn")
    t = time.perf_counter()
    manifest = make_manifest(work / "data", args.n)
    df = pd.read_csv(manifest)
    df["age"] = np.random.default_rng(0).integers(25, 80, len(df))
    df.to_csv(manifest, index=False)
    small = manifest.with_name("first1000.csv")
    df.head(1000).to_csv(small, index=False)
    gen_s = time.perf_counter() - t
    cores = os.cpu_count() or 1
    models = list(json.loads((bundle / "bundle.json").read_text())["models"])
    res: dict = {
        "n_images": args.n,
        "n_images_archive": args.n_archive,
        "image_size": "96x128 PNG + mask PNG",
        "cpu_cores": cores,
        "bundle": source,
        "models_every": models,
        "generate_seconds": round(gen_s, 1),
        "runs": {},
    }

    def record(name: str, bnd: Path, man: Path, *extra: str) -> Path:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        load0 = os.getloadavg()[0]
        s, peak, wall = predict(bnd, man, out, *extra)
        res["runs"][name] = {
            "images_per_s": s["images_per_s"],
            "seconds": s["seconds"],
            "end_to_end_images_per_s": round(s["this_run_rows"] / wall, 2),
            "wall_seconds_with_startup": round(wall, 2),
            "ray_start_seconds": s.get("ray_start_seconds"),
            "startup_seconds": s.get("startup_seconds"),
            "peak_rss_mib": round(peak, 1),
            "n_rows": s["n_rows"],
            "n_failed": s["n_failed"],
            "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        }
        print(name, res["runs"][name], flush=True)
        return out

    local_cnn = record("local_cnn", cnn, manifest)
    local_all = record("local_all", bundle, manifest)
    if not args.no_ray:
        ray_cnn = record("ray_cnn", cnn, manifest, "--engine", "ray", "--workers", str(cores))
        ray_all = record("ray_all", bundle, manifest, "--engine", "ray", "--workers", str(cores))
        record("ray_cnn_1worker_1000", cnn, small, "--engine", "ray", "--workers", "1")
        r = res["runs"]
        if args.n_archive:
            big = make_manifest(work / "archive", args.n_archive)
            record("local_cnn_archive", cnn, big)
            record("ray_cnn_archive", cnn, big, "--engine", "ray", "--workers", str(cores))

        def ratio(key: str, a: str, b: str) -> float:
            return round(r[a][key] / r[b][key], 3)

        res["ray_vs_local"] = {
            "cnn": ratio("images_per_s", "ray_cnn", "local_cnn"),
            "all": ratio("images_per_s", "ray_all", "local_all"),
        }
        res["ray_vs_local_end_to_end"] = {
            "cnn": ratio("end_to_end_images_per_s", "ray_cnn", "local_cnn"),
            "all": ratio("end_to_end_images_per_s", "ray_all", "local_all"),
        }
        if args.n_archive:
            res["ray_vs_local_end_to_end"][f"cnn_{args.n_archive}"] = ratio(
                "end_to_end_images_per_s", "ray_cnn_archive", "local_cnn_archive"
            )
        res[f"ray_scaling_efficiency_1_to_{cores}_workers"] = round(
            r["ray_cnn"]["images_per_s"] / (cores * r["ray_cnn_1worker_1000"]["images_per_s"]), 3
        )
        res["identical_outputs"] = {
            "cnn": compare(local_cnn, ray_cnn),
            "all": compare(local_all, ray_all),
        }
    # kill and resume
    engines = [("local", ())] + ([] if args.no_ray else [("ray", ("--engine", "ray"))])
    for eng, extra in engines:
        out = work / f"kill_{eng}"
        shutil.rmtree(out, ignore_errors=True)
        _, _, t_kill = predict(cnn, manifest, out, *extra, kill_after_shards=3)
        before = exactly_once(out, manifest) if (out / "parts").is_dir() else {"rows": 0}
        s, _, _ = predict(cnn, manifest, out, *extra)
        after = exactly_once(out, manifest)
        res[f"kill_and_resume_{eng}"] = {
            "killed_after_seconds": round(t_kill, 1),
            "rows_before_kill": before["rows"],
            "resumed_skipped": s["resumed_skipped"],
            "rows_scored_after_resume": s["this_run_rows"],
            **after,
        }
        print(f"kill_and_resume_{eng}", res[f"kill_and_resume_{eng}"], flush=True)
    res["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
