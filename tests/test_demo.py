"""`buscad demo` (data stage) end to end on a small phantom cohort."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from buscad.cli import app


def test_demo_cli_writes_every_output(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "-n", "40", "--seed", "3"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "d"
    assert "demo finished" in res.output
    man = pd.read_csv(out / "manifest.csv")
    planted = pd.read_csv(out / "phantoms" / "manifest.csv")
    assert len(man) == len(planted)  # nothing skipped: every phantom imports
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert summary  # the audit wrote its numbers
    assert (out / "audit" / "report.html").stat().st_size > 10_000
    split = pd.read_csv(out / "manifest_split.csv")
    assert set(split["split"]) == {"train", "test"}
    # grouped: no leakage group and no patient on both sides
    assert (split.groupby("group")["split"].nunique() == 1).all()
    assert (split.groupby("patient_id")["split"].nunique() == 1).all()
    # every planted duplicate sits on its source's side
    src = split.set_index("image_id")
    dups = split[split["phantom_source"].fillna("") != ""]
    assert len(dups) > 0
    assert (dups["split"].to_numpy() == src.loc[dups["phantom_source"], "split"].to_numpy()).all()
