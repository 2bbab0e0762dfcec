"""``buscad segment train | export | predict | evaluate`` end to end on phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import buscad._compat  # noqa: F401  (before smp imports torchvision)

pytest.importorskip("segmentation_models_pytorch")

from buscad.cli import build_app
from buscad.data.phantom import generate_cohort


def test_segment_commands(tmp_path: Path) -> None:
    man = generate_cohort(10, tmp_path / "ph", seed=5, normal_fraction=0.3, size=(64, 72))
    (tmp_path / "ph" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    app = build_app(("buscad.segment.cli",))
    runner = CliRunner()
    model = tmp_path / "model"
    r = runner.invoke(
        app,
        ["segment", "train", "-m", str(man.source), "-o", str(model), "--epochs", "1",
         "--batch-size", "4", "--input-size", "32", "--pretrained", "random", "--threads", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert {"segmenter.json", "segmenter.safetensors", "segmenter.onnx"} <= {
        p.name for p in model.iterdir()
    }
    images = [str(man.image_path(0)), str(tmp_path / "ph" / "images" / "broken.png")]
    out = tmp_path / "pred"
    r = runner.invoke(app, ["segment", "predict", "--model", str(model), *images, "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert len(res["results"]) == 1 and len(res["skipped"]) == 1
    assert "broken.png" in res["skipped"][0]
    assert (out / res["results"][0]["mask"]).is_file()
    assert res["results"][0]["mode"] == "auto"
    r = runner.invoke(
        app,
        ["segment", "predict", "--model", str(model), images[0], "-o", str(out),
         "--box", "10,10,40,40"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((out / "results.json").read_text())["results"][0]["mode"] == "box"
    r = runner.invoke(
        app,
        ["segment", "predict", "--model", str(model), images[0], "-o", str(out),
         "--point", "30,30", "--backend", "torch"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((out / "results.json").read_text())["results"][0]["mode"] == "box"
    ev = tmp_path / "eval"
    r = runner.invoke(
        app,
        ["segment", "evaluate", "--model", str(model), "-m", str(man.source), "-o", str(ev),
         "--n-boot", "50", "--gallery", "2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["overall"]["n_images"] == 10
    assert np.isfinite(metrics["overall"]["box_dice"]["value"])
    assert len(list((ev / "gallery").glob("worst_*.png"))) == 2


def test_bad_box_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from buscad.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["segment", "predict", "--model", str(tmp_path), "x.png", "-o", str(tmp_path),
              "--box", "1,2,3"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --box:") and "\n" not in err
