"""Whole-config check before any stage, `buscad study init`, the config reference, default params."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import textwrap
import time
import tomllib
import typing
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from buscad.cli import app
from buscad.config import (
    StudyConfig,
    _models_in,
    config_from_dict,
    config_reference,
    load_config,
)
from buscad.data.phantom import MANIFEST_COLUMNS, generate_cohort
from buscad.errors import ConfigError, ConfigProblems
from buscad.study.check import check_study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dev_manifest(tmp_path_factory) -> Path:
    """A small phantom cohort's manifest (12 images: benign and malignant, age, birads, lexicon)."""
    d = tmp_path_factory.mktemp("dev")
    generate_cohort(12, d, seed=4, size=(64, 72), normal_fraction=0.0)
    return d / "manifest.csv"


def _write(folder: Path, text: str, name: str = "study.yaml") -> Path:
    p = folder / name
    p.write_text(textwrap.dedent(text))
    return p


def test_four_problems_four_lines_before_any_stage(tmp_path, dev_manifest):
    """The acceptance case: unknown backbone, missing manifest, misspelt clinical column,
    missing reader column -> four one-line errors in seconds, and nothing written."""
    cfg = _write(
        tmp_path,
        f"""
        name: bad
        cohorts:
          - {{name: dev, manifest: {dev_manifest}}}
          - {{name: ext, role: external, manifest: ext/manifest.csv}}
        deep: {{backbones: [resnet5]}}
        clinical: {{columns: [Age], reader_column: BI-RADS}}
        """,
    )
    run_dir = tmp_path / "run"
    t = time.monotonic()
    res = CliRunner().invoke(app, ["study", "run", str(cfg), "-o", str(run_dir)])
    elapsed = time.monotonic() - t
    assert res.exit_code == 2, res.output
    assert elapsed < 5, elapsed
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    known = (
        "alexnet, vgg11, vgg16, vgg19_bn, googlenet, resnet50, resnext50_32x4d, regnet_y_400mf, "
        "mobilenet_v2, mobilenet_v3_large, densenet121, densenet201, vit_b_16, efficientnet_lite0, "
        "efficientnet_lite1, efficientnet_lite2, rcdnet"
    )
    dev = f"cohort 'dev' ({dev_manifest})"
    assert errors == [
        f"error: {cfg}: cohorts.1.manifest: cohort 'ext': file not found: "
        f"{tmp_path / 'ext' / 'manifest.csv'} (relative paths are read from the config file's "
        f"folder, {tmp_path})",
        f"error: {cfg}: deep.backbones.0: unknown backbone 'resnet5'; did you mean 'resnet50'? "
        f"(known: {known})",
        f"error: {cfg}: clinical.columns.0: 'Age' is not a column of {dev}; did you mean 'age'?",
        f"error: {cfg}: clinical.reader_column: 'BI-RADS' is not a column of {dev}; "
        "did you mean 'birads'?",
    ]
    assert "Traceback" not in res.output and "study not started: 4 problem(s)" in res.output
    assert not run_dir.exists()  # no cache, no stage output, not even the run folder


def test_check_command_lists_cohorts_and_notes(tmp_path, dev_manifest):
    df = pd.read_csv(dev_manifest).drop(columns=["birads"])
    no_reader = dev_manifest.parent / "no_reader.csv"
    df.to_csv(no_reader, index=False)
    # BUSI-like: no reader column and the default reader_column -> a note, never an error
    cfg = _write(tmp_path, f"cohorts: [{{name: busi, manifest: {no_reader}}}]\n")
    res = CliRunner().invoke(app, ["study", "check", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"cohort busi [development]: {len(df)} rows" in res.output
    assert (
        "note: clinical.reader_column: no 'birads' column in the manifests, so there is no "
        "reader comparison" in res.output
    )
    assert res.output.rstrip().endswith(f"{cfg}: ok")
    # the reader's column in one cohort only: compared there, a note names the other
    cfg2 = _write(
        tmp_path,
        f"""
        cohorts:
          - {{name: a, manifest: {dev_manifest}}}
          - {{name: b, role: external, manifest: {no_reader}}}
        clinical: {{reader_column: birads, us_columns: [shape, morph_shape, morph_margin]}}
        """,
        "two.yaml",
    )
    res = check_study(load_config(cfg2))
    assert res.ok, res.errors
    assert res.notes == [
        f"clinical.reader_column: 'birads' is not a column of cohort 'b' ({no_reader}): the reader "
        "is compared on the other cohorts only"
    ]


def test_config_files_are_checked_with_their_resolved_paths(tmp_path, dev_manifest):
    # what `cp configs/demo.yaml my_study.yaml` used to do: a params file named relative to the
    # config, which is not there -> one line with the resolved path, before anything runs
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    cfg = _write(
        sub,
        f"""
        cohorts: [{{name: a, manifest: {dev_manifest}}}]
        radiomics: {{params: radiomics.yaml}}
        segment: {{model: seg}}
        deep: {{weights: {{resnet50: w.safetensors}}}}
        models: [deep, radiomics, outline, integrated]
        integrated: {{models: [deep, dlr]}}
        """,
    )
    with pytest.raises(ConfigProblems) as ei:
        from buscad.study.runner import run_study

        run_study(cfg, tmp_path / "run")
    hint = f" (relative paths are read from the config file's folder, {sub})"
    assert ei.value.problems == [
        f"deep.weights.resnet50: file not found: {sub / 'w.safetensors'}{hint}",
        f"radiomics.params: file not found: {sub / 'radiomics.yaml'}{hint}; leave the key out "
        "to use buscad's own settings",
        f"segment.model: folder not found: {sub / 'seg'}{hint}",
        "integrated.models.1: 'dlr' is not built (add it to models, or leave it out here)",
    ]
    assert str(ei.value).splitlines()[0].startswith(f"{cfg}: deep.weights.resnet50")
    assert not (tmp_path / "run").exists()


def test_schema_errors_all_listed_with_did_you_mean(tmp_path):
    raw = {
        "cohort": [],
        "deep": {"epoch": 3},
        "models": ["deep", "dlrr"],
        "roi": "drawn",
    }
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw, source="s.yaml")
    assert isinstance(ei.value, ConfigProblems)
    assert sorted(ei.value.lines) == sorted(
        [
            "s.yaml: cohorts: required key missing",
            "s.yaml: cohort: unknown key; did you mean 'cohorts'?",
            "s.yaml: deep.epoch: unknown key; did you mean 'epochs'?",
            "s.yaml: models.1: unknown value 'dlrr'; did you mean 'dlr'? (one of: deep, "
            "radiomics, dlr, clinical, us, cldlr, outline, medsam, integrated)",
            "s.yaml: roi: unknown value 'drawn' (one of: expert, auto, box)",
        ]
    )


def test_init_writes_a_config_for_the_manifests(tmp_path, dev_manifest):
    ext = tmp_path / "site_b" / "manifest.csv"
    ext.parent.mkdir()
    # a sheet with the clinic's own headers and no lexicon
    pd.read_csv(dev_manifest).rename(columns={"birads": "BI-RADS", "age": "Age"}).drop(
        columns=["shape", "margin"]
    ).assign(
        image_path=lambda d: "../../" + dev_manifest.parent.name + "/" + d["image_path"],
        cohort="site_b",
    ).to_csv(ext, index=False)
    out = tmp_path / "cfg" / "my_study.yaml"
    args = ["study", "init", "-m", str(dev_manifest), "-e", str(ext), "--quick", "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "# " in text and "buscad study check my_study.yaml" in text
    cfg = load_config(out)
    assert [(c.name, c.role) for c in cfg.cohorts] == [
        ("site_a", "development"),
        ("site_b", "external"),
    ]
    assert not any(c.manifest.is_absolute() for c in cfg.cohorts)  # relative to the config
    assert [cfg.resolve(c.manifest) for c in cfg.cohorts] == [dev_manifest, ext.resolve()]
    assert cfg.clinical.columns == ["age"] and cfg.clinical.reader_column == "birads"
    assert cfg.clinical.us_columns == list(
        ("shape", "margin", "echogenicity", "posterior_features", "calcifications", "orientation")
    )
    assert (cfg.deep.input_size, cfg.deep.epochs, cfg.split.cv_folds) == (64, 2, 3)
    assert cfg.radiomics.params is None
    assert check_study(cfg).ok
    # never over an existing file without --force
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert "already exists; pass --force to overwrite it" in str(res.exception)
    assert out.read_text() == text
    # only the other centre's sheet: its own spellings, the lexicon it has, no age -> no clinical
    alone = tmp_path / "alone.yaml"
    df = pd.read_csv(ext).drop(columns=["Age"])
    df.to_csv(ext, index=False)
    res = CliRunner().invoke(app, ["study", "init", "-m", str(ext), "-o", str(alone)])
    assert res.exit_code == 0, res.output
    cfg = load_config(alone)
    assert cfg.clinical.reader_column == "BI-RADS" and cfg.clinical.columns == []
    assert cfg.clinical.us_columns == [
        "echogenicity",
        "posterior_features",
        "calcifications",
        "orientation",
    ]
    assert "clinical" not in cfg.models and "cldlr" not in cfg.models and "us" in cfg.models
    assert cfg.deep.input_size == 224 and check_study(cfg).ok


def test_config_reference_is_current_and_complete():
    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == config_reference(), (
        "docs/config.md is stale: run `buscad study reference -o docs/config.md`"
    )

    def walk(model, prefix=""):
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            assert f.description, f"{prefix}{name} has no description"
            assert f"`{prefix}{name}`" in doc

            for sub in _models_in(f.annotation):
                walk(
                    sub, f"{prefix}{name}{'[]' if typing.get_origin(f.annotation) is list else ''}."
                )

    walk(StudyConfig)
    assert "buscad study init" in doc
    assert "docs/config.md" in (REPO / "README.md").read_text(encoding="utf-8")


def test_phantom_columns_are_what_the_generator_writes(tmp_path):
    man = generate_cohort(4, tmp_path, seed=1, size=(48, 48))
    assert tuple(pd.read_csv(tmp_path / "manifest.csv").columns) == MANIFEST_COLUMNS
    assert tuple(man.df.columns)[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS


def test_default_radiomics_params_ship_with_the_package():
    from buscad.radiomics.extract import DEFAULT_PARAMS, DEFAULT_PARAMS_FILE, load_params

    rel = DEFAULT_PARAMS_FILE.relative_to(REPO / "src" / "buscad").as_posix()
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["buscad"]
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), (rel, patterns)
    assert load_params(DEFAULT_PARAMS_FILE) == DEFAULT_PARAMS == load_params(None)
    copy = yaml.safe_load((REPO / "configs" / "radiomics.yaml").read_text())
    assert copy == yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())


def test_backbone_names_need_no_pytorch():
    code = (
        "import sys; from buscad.models.registry import list_backbones; "
        "assert 'rcdnet' in list_backbones(); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO / "src")})


@pytest.mark.parametrize("name", ["demo.yaml", "example.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.cohorts


def test_deep_balance_by_names_a_development_column(tmp_path, dev_manifest):
    base = {"name": "b", "cohorts": [{"name": "dev", "manifest": str(dev_manifest)}]}
    for col, problems in (("cohort", 0), ("patient_id", 0), ("scanner", 1)):
        cfg = config_from_dict({**base, "deep": {"balance_by": col}}, source="s.yaml")
        errs = [e for e in check_study(cfg).errors if e.startswith("deep.balance_by")]
        assert len(errs) == problems, errs
    assert "'scanner' is not a column of cohort 'dev'" in errs[0]
    with pytest.raises(ConfigProblems):
        config_from_dict({**base, "deep": {"layer_decay": 1.5}}, source="s.yaml")
