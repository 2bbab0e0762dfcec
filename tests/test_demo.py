"""`buscad demo` (data stage) end to end on a small phantom cohort."""

from __future__ import annotations

import json
import warnings

import pandas as pd
from typer.testing import CliRunner

from buscad.cli import app


def test_demo_cli_writes_every_output(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(
            app, ["demo", "--out", str(tmp_path / "d"), "-n", "40", "--seed", "3"]
        )
    assert res.exit_code == 0, res.output
    # no warning reaches the user (third-party DeprecationWarnings are hidden by default)
    leaked = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if not (issubclass(w.category, DeprecationWarning) and "buscad" not in w.filename)
    ]
    assert leaked == []
    # progress in a log: plain lines (the audit's per-image count), never a carriage return
    assert "\r" not in res.output
    assert "audit: reading images: 4" in res.output and " images in " in res.output
    out = tmp_path / "d"
    assert "demo finished" in res.output
    man = pd.read_csv(out / "manifest.csv")
    planted = pd.read_csv(out / "phantoms" / "manifest.csv")
    assert len(man) == len(planted)  # nothing skipped: every phantom imports
    # the CLI lists its five outputs, each of which exists
    for key in ("phantoms", "manifest", "audit_dir", "audit_report", "split_manifest"):
        assert f"  {key}" in res.output, key
    for f in ("manifest.csv", "manifest_split.csv", "audit/flags.csv", "audit/shortcuts.csv"):
        assert (out / f).is_file(), f
    # the audit's numbers agree with what the phantom generator planted
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert summary["n_images"] == len(planted) and summary["n_unreadable"] == 0
    assert summary["labels"] == planted["label"].value_counts().to_dict()
    assert summary["cohorts"] == planted["cohort"].value_counts().to_dict()
    n_dups = int((planted["phantom_source"].fillna("") != "").sum())
    assert n_dups > 0
    # each planted near-duplicate forms a group of two with its source
    assert summary["duplicate_groups"] == n_dups
    assert summary["images_in_duplicate_groups"] == 2 * n_dups
    assert summary["largest_duplicate_group"] == 2
    assert summary["exact_duplicate_pairs"] == 0
    flags = pd.read_csv(out / "audit" / "flags.csv").set_index("image_id")
    dup_rows = planted[planted["phantom_source"].fillna("") != ""]
    assert (
        flags.loc[dup_rows["image_id"], "dup_group"].to_numpy()
        == flags.loc[dup_rows["phantom_source"], "dup_group"].to_numpy()
    ).all()
    # no false alarms: every image flagged as annotated or coloured was planted so
    truth = planted.set_index("image_id")
    flagged = flags.index[flags["has_annotations"].astype(bool)]
    assert truth.loc[flagged, "has_annotations"].astype(bool).all()
    assert summary["annotated_images"] == len(flagged) <= int(truth["has_annotations"].sum())
    assert summary["colour_images"] == int(truth["has_colour_box"].sum())
    # shortcut AUCs: the mask-geometry and image-size probes, each a valid AUC
    sc = summary["shortcuts"]
    assert {"mask geometry", "image size", "mask geometry: solidity"} <= set(sc)
    assert all(0.0 <= v <= 1.0 for v in sc.values())
    report = (out / "audit" / "report.html").read_text(encoding="utf-8")
    assert len(report) > 10_000 and "mask geometry" in report
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
