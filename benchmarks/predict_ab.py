"""``buscad predict`` of one image from two source trees, interleaved: a paired speed comparison.

The machine's speed drifts over a day (the same code has timed 0.5 s apart hours apart), so
a change is timed against the code before it in the same minutes: each round runs ``buscad
predict BUNDLE IMAGE -o TMP`` (a fresh process: interpreter start, imports, bundle load,
prediction, outputs) once with ``--base`` on ``PYTHONPATH`` and once with ``--head``,
alternating which goes first. Reported: each tree's wall times and median, and the median of
the paired differences ``head - base``. Without ``--mask`` the bundle's segmenter outlines
the lesion (automatic mode). Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020;
CC0), read in place.

Example (the tree before a change checked out with ``git worktree add /tmp/base REV``)::

    .venv/bin/python benchmarks/predict_ab.py --bundle BUNDLE --base /tmp/base/src \\
        --head src --out benchmarks/results/predict_ab.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buscad.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "BUSI" / "Dataset_BUSI_with_GT"
RUN = "import sys; from buscad.cli import main; sys.argv[0] = 'buscad'; sys.exit(main())"


def git_rev(src: Path) -> str | None:
    """The commit checked out where ``src`` lives (None outside git)."""
    r = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return r.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True, help="src folder of the code before")
    ap.add_argument("--head", type=Path, default=REPO / "src", help="src folder of the code after")
    ap.add_argument("--image", type=Path, default=BUSI / "malignant" / "malignant (5).png")
    ap.add_argument("--mask", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/predict_ab.json")
    a = ap.parse_args()
    trees = {"base": a.base.resolve(), "head": a.head.resolve()}
    walls: dict[str, list[float]] = {k: [] for k in trees}
    load0 = os.getloadavg()[0]
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(list(trees)))
        for name in order:
            cmd = [sys.executable, "-c", RUN, "predict", str(a.bundle), str(a.image)]
            cmd += ["--mask", str(a.mask)] if a.mask else []
            with tempfile.TemporaryDirectory() as tmp:
                env = dict(os.environ, PYTHONPATH=str(trees[name]))
                t = time.perf_counter()
                subprocess.run([*cmd, "-o", tmp], check=True, capture_output=True, env=env)
                walls[name].append(time.perf_counter() - t)
    diff = [h - b for h, b in zip(walls["head"], walls["base"], strict=True)]
    res = {
        "command": "buscad predict BUNDLE IMAGE "
        + ("--mask MASK " if a.mask else "")
        + "-o TMP, base and head trees interleaved",
        "data": "BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020)",
        "image": a.image.name,
        "bundle": str(a.bundle),
        "rounds": a.rounds,
        "trees": {k: {"src": str(v), "commit": git_rev(v)} for k, v in trees.items()},
        "wall_s": {k: [round(x, 4) for x in v] for k, v in walls.items()},
        "wall_s_median": {k: statistics.median(v) for k, v in walls.items()},
        "paired_difference_median_s": statistics.median(diff),
        "loadavg_1min_start_end": [load0, os.getloadavg()[0]],
        "cpus_visible": os.cpu_count(),
    }
    atomic_write_json(a.out, res)
    print(
        f"base {res['wall_s_median']['base']:.3f} s, head {res['wall_s_median']['head']:.3f} s, "
        f"paired head - base {res['paired_difference_median_s']:+.3f} s -> {a.out}"
    )


if __name__ == "__main__":
    main()
