"""Study config validation and the resumable stage cache."""

from __future__ import annotations

import io
import textwrap

import pytest

from buscad.config import load_config
from buscad.errors import ConfigError
from buscad.study.stages import StageRunner


def _write(tmp_path, text):
    p = tmp_path / "study.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_config_loads_and_resolves_paths(tmp_path):
    p = _write(
        tmp_path,
        """
        name: t
        cohorts:
          - {name: dev, manifest: data/m.csv}
          - {name: ext, role: external, phantom: {n: 10, seed: 3}}
        deep: {backbones: [rcdnet], epochs: 2}
    """,
    )
    cfg = load_config(p)
    assert cfg.resolve(cfg.cohorts[0].manifest) == (tmp_path / "data" / "m.csv").resolve()
    assert cfg.cohorts[1].phantom.n == 10 and cfg.deep.backbones == ["rcdnet"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cohorts: [{name: a, manifest: m.csv}]\ndeep: {epoch: 3}\n", r"deep\.epoch: unknown key"),
        (
            "cohorts: [{name: a, manifest: m.csv, phantom: {n: 5}}]\n",
            r"cohorts\.0: .*exactly one of",
        ),
        ("cohorts: [{name: a, role: external, manifest: m.csv}]\n", "role 'development'"),
        (
            "cohorts: [{name: a, manifest: m.csv}]\nevaluation: {threshold: best}\n",
            r"evaluation\.threshold",
        ),
        ("cohorts: [{name: a, manifest: m.csv}]\nmodels: [deep, magic]\n", r"models\.1"),
        (
            "cohorts: [{name: a, manifest: m.csv}]\nintegrated: {models: [outline]}\n",
            r"integrated\.models: .*two or more single models",
        ),
        (
            "cohorts: [{name: a, manifest: m.csv}]\nintegrated: {weights: median}\n",
            r"integrated\.weights",
        ),
        ("- just a list\n", "must be a mapping"),
        ("cohorts: [\n", "not valid YAML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as ei:
        load_config(p)
    assert str(ei.value).startswith(str(p)) and "\n" not in str(ei.value)


def test_stage_runner_caches_and_resumes(tmp_path):
    calls = []

    def work(folder):
        calls.append(1)
        (folder / "out.txt").write_text("hello")

    log = io.StringIO()
    r1 = StageRunner(tmp_path / "cache", total=1, stream=log).run("s", {"a": 1}, work)
    assert (r1.path / "out.txt").read_text() == "hello" and not r1.cached
    r2 = StageRunner(tmp_path / "cache", stream=log).run("s", {"a": 1}, work)
    assert r2.cached and r2.path == r1.path and len(calls) == 1
    r3 = StageRunner(tmp_path / "cache", stream=log).run("s", {"a": 2}, work)
    assert not r3.cached and r3.key != r1.key and len(calls) == 2
    assert "last time" in log.getvalue()


def test_stage_runner_failed_stage_leaves_no_folder(tmp_path):
    def boom(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("killed")

    runner = StageRunner(tmp_path / "cache", stream=io.StringIO())
    with pytest.raises(RuntimeError):
        runner.run("s", {}, boom)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name != "timings.json"] == []
    res = runner.run("s", {}, lambda f: (f / "ok").write_text("1"))
    assert (res.path / "ok").exists() and (res.path / "_DONE").exists()


@pytest.mark.parametrize(
    ("p", "cat"),
    [
        (0.0, "3"),
        (0.02, "3"),
        (0.0201, "4A"),
        (0.10, "4A"),
        (0.5, "4B"),
        (0.51, "4C"),
        (0.95, "5"),
        (1.0, "5"),
    ],
)
def test_likelihood_band_boundaries(p, cat):
    from buscad.bundle.types import likelihood_band

    band = likelihood_band(p)
    assert band.category == cat and "Decision support only" in band.note


def test_likelihood_band_rejects():
    from buscad.bundle.types import likelihood_band

    with pytest.raises(ValueError, match="within"):
        likelihood_band(float("nan"))


def test_atomic_outputs_have_normal_permissions(tmp_path):
    import os
    import stat

    from buscad.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644 and p.read_text() == "hi"
