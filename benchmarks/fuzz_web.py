"""Fuzz campaign against the web app: malformed uploads and bodies, no 5xx, still alive.

Starts the app in a real uvicorn server in a child process on 127.0.0.1 (the
test predictor of ``tests/serve_predictor.py``, a phantom reader study, the
open case screen on: its uploads mostly carry the organiser's token, which the
screen needs while a study is served) and sends ``n`` malformed requests built from a seeded
generator: mutated image bytes (bit flips, truncation, spliced signatures,
DICOM with damaged tags), bad form fields (box, clinical, heatmap), and JSON
bodies for the reader-study routes (wrong types, NaN, huge numbers, long
strings, deep nesting, bad tokens). Traffic goes to 127.0.0.1 only.

Records each status code, the count of 5xx (must be 0), the latency of each
request (max and p95), and whether the server still answers ``/api/health`` at
the end.

Usage::

    python benchmarks/fuzz_web.py --n 300 --seed 0

Writes ``benchmarks/results/fuzz_web.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_SERVER = """
import sys, uvicorn
from serve_predictor import ContrastPredictor
from buscad.serve.app import create_app
uvicorn.run(create_app(ContrastPredictor(), study_db=sys.argv[1], open_case_screen=True,
            decode_timeout_s=10), host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seeds(root: Path) -> tuple[list[bytes], dict[str, str], str]:
    """Valid inputs to mutate (PNG, DICOM, BMP), reader and organiser tokens, a case id."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from buscad.data.phantom import generate_cohort
    from buscad.reader.store import ReaderStudy
    from serve_predictor import make_dicom

    man = generate_cohort(2, root / "cases", seed=1, normal_fraction=0.0)
    png = man.image_path(0).read_bytes()
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="BMP")
    st = ReaderStudy.create(root / "study.sqlite", man.source, washout_days=0, seed=1)
    st.add_reader("R01")
    tokens = {"reader": st.issue_reader_token("R01"), "organiser": st.issue_organiser_token()}
    return [png, make_dicom(gray), buf.getvalue()], tokens, str(st.case_ids()[0])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0:  # bit flips
        for _ in range(rng.randint(1, 64)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        b = b[: rng.randrange(1, len(b))]
    elif op == 2:  # spliced signature in front of random bytes
        head = rng.choice(
            [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"\0" * 128 + b"DICM"]
        )
        b = bytearray(head + rng.randbytes(rng.randint(0, 4000)))
    elif op == 3:  # overwrite a header region with large values
        for i in range(rng.randrange(8, 64), min(len(b), 200), rng.randint(2, 9)):
            b[i] = 0xFF
    elif op == 4:  # repeat a chunk
        i = rng.randrange(len(b))
        b = b[:i] + b[i : i + 512] * rng.randint(2, 20) + b[i:]
    else:  # random bytes
        b = bytearray(rng.randbytes(rng.randint(0, 2048)))
    return bytes(b)


_BOXES = [
    "",
    "1,2,3",
    "a,b,c,d",
    "1e999,0,5,5",
    "-1,-1,99999,99999",
    "0,0,4,4",
    "10;10;80;80",
    "x" * 500,
]
_CLINICAL = [
    '{"age": 54}',
    '{"age": ' + "9" * 5000 + "}",
    '{"age": NaN}',
    "[" * 2000,
    '{"a": {"b": [1, 2]}}',
    json.dumps({f"k{i}": i for i in range(100)}),
    "not json",
    '"just a string"',
]
_JSON_VALUES: list[Any] = [None, True, -1, 0, 1, 2, 3, 1e308, "1", "x" * 3000, [], {}, [1] * 50]


def _request(
    rng: random.Random, seeds: list[bytes], tokens: dict[str, str], case: str
) -> dict[str, Any]:
    token = tokens["reader"]
    kind = rng.randrange(4)
    if kind <= 1:  # an upload
        url = rng.choice(
            ["/api/predict", "/api/preview", "/api/heatmap", "/api/report?format=html"]
        )
        files = {"image": ("x.bin", _mutate(rng, rng.choice(seeds)), "application/octet-stream")}
        data: dict[str, str] = {}
        if rng.random() < 0.4:
            files["mask"] = ("m.png", _mutate(rng, seeds[0]) if rng.random() < 0.7 else seeds[0])
        if rng.random() < 0.5:
            data["box"] = rng.choice(_BOXES)
        if rng.random() < 0.5:
            data["clinical"] = rng.choice(_CLINICAL)
        if rng.random() < 0.2:
            data["heatmap"] = rng.choice(["false", "yes", "\x00"])
        # while a study is served, the open case screen needs the organiser's token: most
        # uploads carry it (so they reach the decoder), the rest test the refusal
        tok = rng.choice([tokens["organiser"], tokens["organiser"], tokens["organiser"], token])
        headers = {"Authorization": "Bearer " + tok} if rng.random() < 0.9 else {}
        return {"method": "POST", "url": url, "files": files, "data": data, "headers": headers}
    if kind == 2:  # a reader-study JSON body
        body = {
            "case_id": rng.choice([case, "nope", "../x", "c" * 200]),
            "round": rng.choice(_JSON_VALUES),
            "birads": rng.choice(["3", "4a", "7", 3, None]),
            "confidence": rng.choice(_JSON_VALUES),
            "client_time_s": rng.choice(_JSON_VALUES),
        }
        headers = {"Authorization": "Bearer " + rng.choice([token, "bad", token[:-1] + "x"])}
        rid = rng.choice(["R01", "R02", "R01%0A", "x" * 100])
        raw = json.dumps(body)
        if rng.random() < 0.3:
            raw = raw.replace('"confidence": null', '"confidence": NaN')
        return {
            "method": "POST",
            "url": f"/api/study/readers/{rid}/reads",
            "content": raw.encode(),
            "headers": {**headers, "content-type": "application/json"},
        }
    # study creation and other JSON routes with hostile values
    body = {
        "manifest": rng.choice(["/proc/self/environ", "../../etc/passwd", "x" * 5000, "m.csv"]),
        "washout_days": rng.choice(_JSON_VALUES),
        "seed": rng.choice([*_JSON_VALUES, 10**40]),
    }
    org = {"Authorization": "Bearer " + tokens["organiser"]} if rng.random() < 0.7 else {}
    return {"method": "POST", "url": "/api/study", "json": body, "headers": org}


def run_web_campaign(n: int, seed: int) -> dict[str, Any]:
    """Send ``n`` malformed requests to a real uvicorn server on 127.0.0.1.

    Parameters
    ----------
    n : int
        Requests to send.
    seed : int
        Seed of the request generator (the campaign is reproducible).

    Returns
    -------
    dict
        ``n``, ``seed``, ``server`` ("uvicorn subprocess on 127.0.0.1"),
        ``status_counts`` (status code -> count), ``n_5xx`` (must be 0),
        ``n_no_answer`` (transport errors), ``latency_max_s``, ``latency_p95_s``
        (the 95th percentile, nearest-rank: the ``ceil(0.95 n)``-th smallest),
        ``alive_at_end`` and ``wall_s``.
    """
    import math

    import httpx

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="buscad-fuzz-web-") as tmp:
        root = Path(tmp)
        seeds, tokens, case = _seeds(root)
        port = _free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(root / "study.sqlite"), str(port)], env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the web app did not start")
                time.sleep(0.1)
            counts: Counter[int] = Counter()
            latencies: list[float] = []
            no_answer = 0
            fives: list[str] = []
            t_start = time.perf_counter()
            with httpx.Client(base_url=base, timeout=30) as c:
                for _ in range(n):
                    req = _request(rng, seeds, tokens, case)
                    t0 = time.perf_counter()
                    try:
                        r = c.request(**req)
                    except httpx.HTTPError:
                        no_answer += 1
                        continue
                    latencies.append(time.perf_counter() - t0)
                    counts[r.status_code] += 1
                    if r.status_code >= 500:
                        fives.append(f"{req['method']} {req['url'][:60]}: {r.text[:120]}")
            wall = time.perf_counter() - t_start
            try:
                alive = httpx.get(base + "/api/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                alive = False
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    lat = sorted(latencies)
    p95 = lat[max(0, math.ceil(0.95 * len(lat)) - 1)] if lat else None
    return {
        "n": n,
        "seed": seed,
        "server": "uvicorn subprocess on 127.0.0.1 (tests/serve_predictor.ContrastPredictor)",
        "status_counts": {str(k): v for k, v in sorted(counts.items())},
        "n_5xx": sum(v for k, v in counts.items() if k >= 500),
        "first_5xx": fives[:5],
        "n_no_answer": no_answer,
        "latency_max_s": round(max(lat), 4) if lat else None,
        "latency_p95_s": round(p95, 4) if p95 is not None else None,
        "alive_at_end": alive,
        "wall_s": round(wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/fuzz_web.json")
    args = ap.parse_args()
    res = run_web_campaign(args.n, args.seed)
    from buscad.utils import atomic_write_json

    atomic_write_json(args.out, res)
    print(json.dumps(res, indent=2))
    if res["n_5xx"] or not res["alive_at_end"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
