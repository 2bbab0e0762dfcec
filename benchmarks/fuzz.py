"""Reader fuzz campaign: seeded malformed inputs and the named bombs, with time and peak memory.

Usage::

    PYTHONPATH=src python benchmarks/fuzz.py [-n 10000] [--seed 0] [--web/--no-web]

Every input is written to a file and given to every reader (``sniff_format``,
``read_image`` + ``burned_in_warning``, ``image_size``, ``read_mask``, and
``read_labelme`` / ``read_dicom_header`` for JSON / DICOM files). Inputs run in
persistent worker processes (forked, ``--chunk`` inputs each). Before each input
the worker resets its peak RSS (``echo 5 > /proc/self/clear_refs`` resets
``VmHWM`` to the current RSS) and records ``VmRSS``; after it, the memory the
input added is ``VmHWM - VmRSS(before)`` (kB, from ``/proc/self/status``) and its
time the wall time of all its reader calls. An input over ``--timeout`` seconds
is interrupted (``SIGALRM``) and counted as over time. An *untyped* exception
is anything other than :class:`buscad.errors.InputFileError` (the readers must
raise only ``ImageReadError``/``MaskError`` and their subclasses). Every message (each
error, and each burned-in warning) is searched for :data:`malformed.HEADER_MARKER`, the
text the ``dicom_marked`` seeds carry in their header fields (``header_text_messages``
counts the hits). ``resource_warnings`` counts files a reader left open (Python's
``ResourceWarning``, recorded per input and after a garbage collection at the end of
each worker's chunk).

The named bomb classes (:data:`malformed.BOMB_CLASSES`: the RLE8 BMP, RGBA PNG,
deflated DICOM with a 1 GiB private element, 3,000-scan progressive JPEG, TIFF
page without dimensions, LabelMe nested 100,000 deep / NUL / 300-character
imagePath) are measured the same way, plus a *budget edge* image (a valid RGB
PNG just under the default pixel budget) to show what an accepted image costs.

Web section: when ``benchmarks/fuzz_web.py`` is importable and ``--web`` is on
(default), ``fuzz_web.run_web_campaign(n, seed)`` runs and its dict is stored
under ``"web"``. Results go to ``benchmarks/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import malformed  # noqa: E402

RSS_LIMIT_MB = 256.0
TIME_LIMIT_S = 5.0


class _Timeout(Exception):
    pass


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def run_one(path: Path, timeout_s: float) -> dict[str, Any]:
    """All readers on one file: ``{"s": seconds, "mb": peak MB added, "untyped": [...], ...}``."""
    from buscad.errors import InputFileError

    calls = malformed.reader_calls(path)
    untyped, outcomes, marked = [], {}, []
    _reset_peak()
    before = _status_kb("VmRSS")
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    t0 = time.perf_counter()
    timed_out = False
    try:
        for name, call in calls:
            try:
                res = call()
                outcomes[name] = "ok"
                if isinstance(res, str) and malformed.HEADER_MARKER in res:
                    marked.append(f"{name}: {res[:200]}")
            except InputFileError as exc:
                outcomes[name] = type(exc).__name__
                if malformed.HEADER_MARKER in str(exc):
                    marked.append(f"{name}: {str(exc)[:200]}")
            except _Timeout:
                raise
            except BaseException as exc:
                untyped.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
                outcomes[name] = "UNTYPED"
    except _Timeout:
        timed_out = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    dt = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {
        "s": dt,
        "mb": max(0, peak - before) / 1024.0,
        "untyped": untyped,
        "header_text": marked,
        "timed_out": timed_out,
        "outcomes": outcomes,
    }


def _worker(jobs: list[tuple[str, str, bytes]], folder: str, timeout_s: float, conn: Any) -> None:
    import gc
    import warnings

    signal.signal(signal.SIGALRM, _on_alarm)
    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for i, (label, suffix, data) in enumerate(jobs):
            f = Path(folder) / f"w{os.getpid()}_{i % 20}{suffix}"
            f.write_bytes(data)
            before = len(caught)
            r = run_one(f, timeout_s)
            r["label"] = label
            r["resource_warnings"] = _n_resource(caught[before:])
            out.append(r)
        before = len(caught)
        gc.collect()  # files kept open by reference cycles warn when collected
        if out:
            out[-1]["resource_warnings"] += _n_resource(caught[before:])
    conn.send(out)
    conn.close()


def _n_resource(caught: list) -> int:
    return sum(1 for w in caught if issubclass(w.category, ResourceWarning))


def run_jobs(
    jobs: list[tuple[str, str, bytes]], folder: Path, chunk: int, timeout_s: float
) -> list[dict]:
    """Run jobs in forked persistent workers of ``chunk`` inputs each."""
    ctx = mp.get_context("fork")
    results: list[dict] = []
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(part, str(folder), timeout_s, send))
        proc.start()
        send.close()
        try:
            results.extend(recv.recv())
        except EOFError:  # the worker died (e.g. killed for memory): count every input
            results.extend(
                {
                    "label": lab,
                    "s": 0.0,
                    "mb": float("nan"),
                    "untyped": ["worker died"],
                    "header_text": [],
                    "resource_warnings": 0,
                    "timed_out": False,
                    "outcomes": {},
                }
                for lab, _, _ in part
            )
        proc.join()
    return results


def summarise(results: list[dict], key: str = "class") -> dict[str, Any]:
    """Counts overall and per class (the label's format, or the bomb name)."""

    def stats(rs: list[dict]) -> dict[str, Any]:
        return {
            "inputs": len(rs),
            "untyped_exceptions": sum(1 for r in rs if r["untyped"]),
            "resource_warnings": sum(r.get("resource_warnings", 0) for r in rs),
            "header_text_messages": sum(len(r.get("header_text", [])) for r in rs),
            "over_5_s": sum(1 for r in rs if r["timed_out"] or r["s"] > TIME_LIMIT_S),
            "max_s": round(max((r["s"] for r in rs), default=0.0), 3),
            "max_rss_added_mb": round(max((r["mb"] for r in rs), default=0.0), 1),
        }

    per: dict[str, list[dict]] = {}
    for r in results:
        per.setdefault(r["label"].split("/")[0], []).append(r)
    out = stats(results)
    out[f"per_{key}"] = {k: stats(v) for k, v in sorted(per.items())}
    examples = [f"{r['label']}: {u}" for r in results for u in r["untyped"]][:20]
    if examples:
        out["untyped_examples"] = examples
    leaked = [f"{r['label']}: {m}" for r in results for m in r.get("header_text", [])][:20]
    if leaked:
        out["header_text_examples"] = leaked
    return out


def bomb_jobs(folder: Path) -> list[tuple[str, str, bytes]]:
    """The named bomb classes, plus a valid RGB PNG just under the default pixel budget."""
    import numpy as np

    from buscad.data.io import MAX_PIXELS

    files = malformed.bomb_files(folder)
    jobs = [(name, p.suffix, p.read_bytes()) for name, p in files.items()]
    side = int(MAX_PIXELS**0.5) - 1
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    rgb[: side // 2] = rgb[: side // 2, :, :1]  # half gray, half colour
    jobs.append((f"budget_edge_rgb_{side}x{side}", ".png", malformed._pil_bytes(rgb, "PNG")))
    return jobs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="Malformed inputs (default 10000).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=500, help="Inputs per worker process.")
    ap.add_argument("--timeout", type=float, default=10.0, help="Per-input interrupt (s).")
    ap.add_argument("--web", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("-o", "--out", type=Path, default=HERE / "results" / "fuzz.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        jobs = list(malformed.malformed_inputs(args.n, args.seed))
        fuzz = run_jobs(jobs, folder, args.chunk, args.timeout)
        bombs = run_jobs(bomb_jobs(folder / "bombs"), folder, 1, args.timeout)
    doc: dict[str, Any] = {
        "what": "benchmarks/fuzz.py: malformed inputs and named bombs through every buscad reader",
        "seed": args.seed,
        "limits": {"rss_added_mb": RSS_LIMIT_MB, "seconds": TIME_LIMIT_S},
        "measure": "per input: VmHWM after minus VmRSS before (clear_refs 5 resets the peak), "
        "in a forked persistent worker; wall time of all reader calls",
        "fuzz": summarise(fuzz),
        "bombs": {
            r["label"]: {
                "seconds": round(r["s"], 3),
                "rss_added_mb": round(r["mb"], 1),
                "untyped": r["untyped"],
                "outcome": r["outcomes"].get("image") or r["outcomes"].get("mask"),
            }
            for r in bombs
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    if args.web:
        try:
            from fuzz_web import run_web_campaign  # type: ignore[import-not-found]
        except ImportError:
            doc["web"] = None
        else:
            doc["web"] = run_web_campaign(args.n, args.seed)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    from buscad.utils import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, doc)
    f = doc["fuzz"]
    print(
        f"{f['inputs']} inputs: {f['untyped_exceptions']} untyped, "
        f"{f['resource_warnings']} ResourceWarnings, {f['header_text_messages']} messages with "
        f"header text, {f['over_5_s']} over 5 s, "
        f"max {f['max_rss_added_mb']} MB added, max {f['max_s']} s; bombs: "
        + ", ".join(f"{k} {v['rss_added_mb']} MB {v['seconds']} s" for k, v in doc["bombs"].items())
    )
    return doc


if __name__ == "__main__":
    main()
