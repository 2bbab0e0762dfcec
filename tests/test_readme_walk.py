"""The README's walk-through, run word for word on phantoms, so the README cannot drift from the code.

The commands are the ```bash blocks that follow an ``<!-- walk -->`` line in README.md. They run
in a fresh folder holding what a clone holds that they read (``configs/``), with ``buscad`` on the
PATH as ``make install`` + ``source .venv/bin/activate`` would put it; nothing else is done
between them. Then: the report, the bundle and the batch predictions exist, and every path the
walk wrote is ignored by the repository's ``.gitignore`` (walking through the README must leave no
untracked patient data or predictions in a clone).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
WALK_BLOCK = re.compile(r"^<!-- walk -->\n```bash\n(.*?)^```", re.S | re.M)


def walk_commands(readme: str) -> list[str]:
    """The walk-through's shell commands, in order (comments and blank lines dropped)."""
    cmds = []
    for block in WALK_BLOCK.findall(readme):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds


def test_walk_blocks_are_found():
    cmds = walk_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert cmds and all(c.startswith("buscad ") for c in cmds), cmds
    assert cmds[0].startswith("buscad demo")
    assert any(c.startswith("buscad study run") for c in cmds)
    assert any(c.startswith("buscad predict") and "--manifest" in c for c in cmds)


@pytest.mark.slow
def test_readme_walk_runs_word_for_word(tmp_path):
    cmds = walk_commands((REPO / "README.md").read_text(encoding="utf-8"))
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(REPO / "configs", clone / "configs")
    before = set(os.listdir(clone))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "buscad"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m buscad.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO / "src"),
        "BUSCAD_CACHE": str(tmp_path / "cache"),
    }
    for cmd in cmds:
        r = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", cmd],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"{cmd}\n{r.stderr[-3000:]}"
    # what the README promises
    assert (clone / "my_study.yaml").is_file()
    assert (clone / "runs" / "my_study" / "report.html").is_file()
    assert (clone / "runs" / "my_study" / "bundle" / "bundle.json").is_file()
    ext = pd.read_csv(clone / "runs" / "walk" / "data" / "external" / "manifest.csv")
    # the walk keeps to its own folder: make demo's outputs (runs/demo/...) are never touched
    assert not (clone / "runs" / "demo").exists()
    summary = pd.read_csv(clone / "runs" / "predictions" / "summary.csv")
    assert len(summary) == len(ext) == 20
    if "error" in summary:
        assert summary["error"].isna().all(), summary["error"].dropna().tolist()
    # everything the walk wrote is ignored by the repository's .gitignore
    if shutil.which("git") is None:
        pytest.skip("git not installed: .gitignore not checked")
    written = sorted(set(os.listdir(clone)) - before)
    assert written, "the walk wrote nothing?"
    rels = []
    for name in written:
        p = clone / name
        rels.append(name + "/" if p.is_dir() else name)
        rels += [f"{name}/{q.relative_to(p).as_posix()}" for q in p.rglob("*") if q.is_file()]
    r = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(rels) + "\n",
        capture_output=True,
        text=True,
    )
    ignored = set(r.stdout.splitlines())
    left = [x for x in rels if x not in ignored]
    assert not left, (
        f"{len(left)} path(s) the walk wrote would be untracked in a clone: {left[:10]}"
    )
