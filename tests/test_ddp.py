"""`torchrun --nproc_per_node 2` (gloo, CPU) trains like one process: same loss curve, rank-0 files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from tests.scale_fixtures import make_manifest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover - platform builds without it
    pytest.skip("this PyTorch build has no torch.distributed", allow_module_level=True)

SCRIPT = """
import json, os, sys
from buscad.data.manifest import Manifest
from buscad.models.train import TrainConfig, train_model

manifest, out, report = sys.argv[1:4]
cfg = TrainConfig(backbone="efficientnet_lite0", pretrained=None, epochs=3, batch_size=8,
                  lr=2e-4, input_size=64, augment=False, dropout=0.0, progress=False,
                  device="cpu", num_threads=1, amp=False, patience=10)
res = train_model(Manifest.load(manifest), cfg, out)
rank = os.environ.get("RANK", "single")
with open(os.path.join(report, f"history_{rank}.json"), "w") as f:
    json.dump({"history": res.history.to_dict("list"), "best_epoch": res.best_epoch}, f)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    m = make_manifest(root / "data", 40, size=(64, 80))
    df = pd.read_csv(m)
    df["label"] = ["benign", "malignant"] * 20
    df["split"] = ["train"] * 32 + ["val"] * 8
    df.to_csv(m, index=False)
    script = root / "train_one.py"
    script.write_text(SCRIPT)
    return root, m, script


def _run(cmd, root):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=root)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def test_torchrun_two_processes_match_one(data):
    root, manifest, script = data
    one, two, report = root / "one", root / "two", root / "report"
    report.mkdir()
    _run([sys.executable, str(script), str(manifest), str(one), str(report)], root)
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(manifest), str(two), str(report)],
        root,
    )  # fmt: skip
    single = json.loads((report / "history_single.json").read_text())["history"]
    r0 = json.loads((report / "history_0.json").read_text())["history"]
    r1 = json.loads((report / "history_1.json").read_text())["history"]
    for h in (single, r0, r1):
        h.pop("seconds")
    assert r0 == r1  # every rank logs the same (all-reduced) losses and validation
    assert single["step"] == r0["step"] == [4, 8, 12]  # 32 images, global batch 8
    # per-rank BatchNorm sees 4 images instead of 8: the curves agree within tolerance
    np.testing.assert_allclose(r0["train_loss"], single["train_loss"], rtol=0.1, atol=0.05)
    np.testing.assert_allclose(r0["val_loss"], single["val_loss"], rtol=0.1, atol=0.05)
    print("single", single["train_loss"], "torchrun", r0["train_loss"])
    assert single["train_loss"][-1] < single["train_loss"][0]  # it does learn
    # rank 0 alone wrote the run's files
    assert (two / "metrics.csv").is_file() and (two / "model.json").is_file()
    assert len(pd.read_csv(two / "metrics.csv")) == 3
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
