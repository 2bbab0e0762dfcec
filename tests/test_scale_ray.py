"""`buscad predict --engine ray`: same rows as the local engine, resumable, failures are rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tests.required import require_module
from tests.scale_fixtures import make_bundle, make_manifest
from typer.testing import CliRunner

from buscad.cli import app

ray = require_module("ray", 'Ray is optional: pip install "buscad[ray]"', allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray (2 CPUs) for the module: run_ray uses it and leaves it running."""
    root = tmp_path_factory.mktemp("ray")
    bundle = make_bundle(root / "bundle")
    manifest = make_manifest(root / "data", 20)
    df = pd.read_csv(manifest)
    df.loc[3, "image_path"] = "img/missing.png"
    df.to_csv(manifest, index=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield bundle, manifest
    ray.shutdown()


def test_ray_rows_equal_local_rows_and_resume(cluster, tmp_path):
    from buscad.bundle.batch import collect, items_from_manifest
    from buscad.bundle.ray_engine import READY_COLUMN, run_ray

    bundle, manifest = cluster
    local = tmp_path / "local"
    res = CliRunner().invoke(
        app, ["predict", str(bundle), "--manifest", str(manifest), "-o", str(local),
              "--no-heatmap", "--batch-size", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    items = items_from_manifest(manifest)
    out = tmp_path / "ray"
    # the first rows with decoding as a stage of its own, the rest decoded in the actors
    s1 = run_ray(bundle, items[:7], out, workers=2, batch_size=3, heatmap=False, decode_cpus=0)
    assert (s1["n_rows"], s1["this_run_rows"], s1["workers"]) == (7, 7, 2)
    assert s1["stages"] == ["decode (Ray tasks)", "score (Ray actors)"]
    res = CliRunner().invoke(
        app, ["predict", str(bundle), "--manifest", str(manifest), "-o", str(out),
              "--no-heatmap", "--engine", "ray", "--batch-size", "3", "--workers", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert (s["engine"], s["n_rows"], s["this_run_rows"], s["resumed_skipped"]) == (
        "ray", 20, 13, 7,
    )  # fmt: skip
    assert (s["duplicates"], s["missing"], s["n_failed"]) == (0, 0, 1)
    assert len(collect(out)) == 20
    # scoring time counts from the first actor's bundle loaded, as the local engine's does;
    # the actors' ready-time column is dropped before writing
    assert 0 <= s["ray_start_seconds"] <= s["startup_seconds"] < s["wall_seconds"]
    assert 0 < s["seconds"] <= s["wall_seconds"] - s["startup_seconds"] + 0.01
    assert s["images_per_s"] == pytest.approx(13 / s["seconds"], rel=0.01)
    assert READY_COLUMN not in collect(out).columns
    a = pd.read_csv(local / "summary.csv").drop(columns="ms")
    b = pd.read_csv(out / "summary.csv").drop(columns="ms")
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)
    assert "missing.png" in b.loc[3, "error"] and np.isnan(b.loc[3, "ai_score"])
    assert b.loc[0, "roi"] == a.loc[0, "roi"] and len(b.loc[0, "roi"].split()) == 4


def test_ray_needs_a_manifest(cluster, tmp_path):
    bundle, _ = cluster
    res = CliRunner().invoke(app, ["predict", str(bundle), "x.png", "--engine", "ray"])
    assert res.exit_code != 0 and "--engine ray scores a --manifest" in res.output
