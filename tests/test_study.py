"""The study runner end to end on phantoms, including a real process kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from buscad.config import config_from_dict
from buscad.study import READER_MODEL, SHORTCUT_MODELS, run_study

SMALL = {
    "name": "small",
    "seed": 0,
    "cohorts": [
        {
            "name": "a",
            "phantom": {
                "n": 48,
                "seed": 1,
                "duplicate_fraction": 0.1,
                "conflict_fraction": 0.25,
                "size": [128, 144],
            },
        },
        {"name": "b", "role": "external", "phantom": {"n": 24, "seed": 2, "size": [128, 144]}},
    ],
    "deep": {
        "backbones": ["rcdnet"],
        "epochs": 1,
        "input_size": 48,
        "selection_folds": 2,
        "batch_size": 16,
    },
    "split": {"cv_folds": 3},
    "gallery_size": 2,
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    cfg = config_from_dict(SMALL, base_dir=tmp_path_factory.mktemp("cfg"))
    out = tmp_path_factory.mktemp("run")
    return run_study(cfg, out), out


@pytest.mark.slow
def test_small_study_tables_and_report(small_run):
    res, out = small_run
    m = res.metrics
    cohorts = set(m["cohort"])
    assert cohorts == {"a train (CV)", "a internal test", "b external"}
    models = set(m["model"])
    assert {
        "deep",
        "radiomics",
        "dlr",
        "clinical",
        "us",
        "cldlr",
        "integrated",
        READER_MODEL,
    } <= models
    assert set(SHORTCUT_MODELS) <= models
    ok = m[m["auc"].notna()]
    assert (
        (ok["auc"] >= 0)
        & (ok["auc"] <= 1)
        & (ok["auc_lo"] <= ok["auc"])
        & (ok["auc"] <= ok["auc_hi"])
    ).all()
    # one threshold per model, chosen on the training cohort and reused unchanged elsewhere
    thr = m.groupby("model")["threshold"].nunique(dropna=True)
    assert (thr <= 1).all()
    html = res.report.read_text()
    assert "shortcut: mask geometry" in html and "Backbone comparison" in html
    assert "http://" not in html and "https://" not in html.replace("https://doi", "")
    pred = pd.read_csv(res.predictions[next(iter(res.predictions))])
    # audit policy: the relabelled duplicates (conflicting groups) never reach the models
    dropped = next((out / "cache").glob("audit-*/dropped.csv"))
    assert len(pd.read_csv(dropped)) >= 2
    assert not set(pd.read_csv(dropped)["image_id"]) & set(pred["case_id"])


@pytest.mark.slow
def test_rerun_is_cached_and_identical(small_run):
    res, out = small_run
    t = time.monotonic()
    res2 = run_study(config_from_dict(SMALL, base_dir=out), out)
    assert time.monotonic() - t < 20
    assert all(s["cached"] for s in res2.stages)
    pd.testing.assert_frame_equal(res.metrics, res2.metrics)


KILL_CFG = """
name: killme
seed: 3
cohorts:
  - {name: a, phantom: {n: 40, seed: 4, size: [128, 144]}}
  - {name: b, role: external, phantom: {n: 20, seed: 5, size: [128, 144]}}
models: [radiomics, clinical, us, integrated]
split: {cv_folds: 3}
gallery_size: 0
"""


@pytest.mark.slow
def test_killed_study_resumes_with_identical_tables(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(textwrap.dedent(KILL_CFG))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "buscad.cli",
        "study",
        "run",
        str(cfg),
        "-o",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    # kill it for real once the radiomics stage has started (after data, audit and split are done)
    deadline = time.monotonic() + 240
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if list((tmp_path / "run" / "cache").glob(".radiomics-*.tmp*")):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the study finished before it could be killed; make the test cohort larger"
    cache = tmp_path / "run" / "cache"
    assert not list(cache.glob("radiomics-*/_DONE"))  # no half stage was published
    done_before = {p.parent.name for p in cache.glob("*/_DONE")}
    assert any(n.startswith("audit-") for n in done_before)
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "audit: cached" in r2.stderr
    m_resumed = pd.read_csv(tmp_path / "run" / "metrics.csv")
    # the same study from scratch elsewhere gives identical tables
    fresh = tmp_path / "fresh"
    r3 = subprocess.run(
        [*cmd[:-1], str(fresh)], capture_output=True, text=True, env=env, timeout=600
    )
    assert r3.returncode == 0, r3.stdout + r3.stderr
    pd.testing.assert_frame_equal(m_resumed, pd.read_csv(fresh / "metrics.csv"))
    assert Path(tmp_path / "run" / "report.html").exists()


def test_deep_feature_columns_exclude_fold_and_score_columns():
    """DLR/CLDLR must read only the CNN's features, never the CV fold index or the AI score."""
    import numpy as np

    from buscad.classical import FeatureSubset
    from buscad.study import DEEP_FEATURES

    cols = ["deep_0000", "deep_0001", "deep_fold", "deep_oof", "deep_final", "age"]
    df = pd.DataFrame(np.ones((4, len(cols))), columns=cols)
    kept = FeatureSubset(include=DEEP_FEATURES).fit(df).get_feature_names_out()
    assert list(kept) == ["deep_0000", "deep_0001"]
