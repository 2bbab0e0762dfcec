"""Content-addressed, resumable stages for long runs.

A stage is a function that writes files into a folder. :class:`StageRunner`
names that folder by the hash of the stage's name and inputs (settings, data
hashes, and the keys of the stages it reads from), so that

- a rerun with nothing changed reuses every folder and finishes in seconds;
- a change of settings or data re-runs only the stages downstream of it;
- a killed run leaves only a ``.tmp`` folder, which the next run discards and
  redoes: a stage's folder appears (by an atomic rename) only once complete.

Timings of past runs are kept in ``timings.json`` and used for the time
estimates of the progress display.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from buscad.progress import fmt_duration as _fmt
from buscad.utils import atomic_write_json, stable_hash

#: Bump when the on-disk layout of stage outputs changes.
CACHE_VERSION = 1


@dataclass(frozen=True)
class StageResult:
    """Where a stage's outputs are, and how they were obtained."""

    name: str
    key: str
    path: Path
    cached: bool
    seconds: float


class StageRunner:
    """Run named stages once per distinct input, with progress and time estimates.

    Parameters
    ----------
    cache_dir : path-like
        Folder holding one sub-folder per (stage, key).
    total : int, optional
        Number of stages expected in this run (for ``[i/total]`` in the display).
    stream : file-like, optional
        Where progress lines go (default: standard error).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        total: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.root = Path(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.done: list[StageResult] = []
        self._timings_path = self.root / "timings.json"
        try:
            self._timings: dict[str, float] = json.loads(self._timings_path.read_text())
        except (OSError, ValueError):
            self._timings = {}
        self._t0 = time.monotonic()

    def key(self, name: str, inputs: Any) -> str:
        """The cache key of a stage: hash of its name, inputs and the cache version."""
        return stable_hash({"stage": name, "inputs": inputs, "v": CACHE_VERSION})

    def estimate(self, name: str) -> float | None:
        """Seconds the stage took last time it ran (any inputs), if known."""
        return self._timings.get(name)

    def run(self, name: str, inputs: Any, fn: Callable[[Path], None]) -> StageResult:
        """Run ``fn(folder)`` unless a completed folder for these inputs exists.

        Parameters
        ----------
        name : str
            Stage name (also the folder prefix).
        inputs : JSON-serialisable
            Everything the stage's output depends on (settings, data hashes, and
            upstream :attr:`StageResult.key` values).
        fn : callable
            Writes the stage's outputs into the folder it is given.
        """
        key = self.key(name, inputs)
        final = self.root / f"{name}-{key}"
        i = len(self.done) + 1
        tag = f"[{i}/{self.total}]" if self.total else f"[{i}]"
        if (final / "_DONE").exists():
            res = StageResult(name, key, final, True, 0.0)
            self.done.append(res)
            self._say(f"{tag} {name}: cached")
            return res
        est = self.estimate(name)
        hint = f" (last time {_fmt(est)})" if est is not None else ""
        self._say(f"{tag} {name}: running{hint} — elapsed {_fmt(time.monotonic() - self._t0)}")
        for stale in self.root.glob(f".{name}-{key}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".{name}-{key}.tmp{os.getpid()}"
        tmp.mkdir(parents=True)
        t = time.monotonic()
        try:
            fn(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        secs = time.monotonic() - t
        atomic_write_json(tmp / "_DONE", {"stage": name, "key": key, "seconds": round(secs, 3)})
        if final.exists():  # a concurrent or earlier partial rename; replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._timings[name] = round(secs, 3)
        with contextlib.suppress(OSError):
            atomic_write_json(self._timings_path, self._timings)
        res = StageResult(name, key, final, False, secs)
        self.done.append(res)
        self._say(f"{tag} {name}: done in {_fmt(secs)}")
        return res

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def summary(self) -> list[dict]:
        """One dict per stage run so far (name, key, cached, seconds)."""
        return [
            {"stage": r.name, "key": r.key, "cached": r.cached, "seconds": round(r.seconds, 2)}
            for r in self.done
        ]
