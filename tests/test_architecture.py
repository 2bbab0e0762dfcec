"""The layer contract (pyproject.toml, import-linter) holds, catches an upward import, no
module imports itself through others (function-level and type-checking imports included), and
no module is over 800 lines unless docs/architecture.md says why (the sizes are printed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_layer_contracts_hold() -> None:
    r = _lint(ROOT / "pyproject.toml", ROOT / "src")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the data layer reaching up into the study runner
        ("data/io/image.py", "from buscad.study import runner as _up", "Each stage imports only"),
        # a lazy (function-level) upward import counts too
        ("models/train.py", "def _f():\n    import buscad.serve.app\n", "Each stage imports only"),
        # Typer outside a command-line module
        ("classical/base.py", "import typer as _typer", "Typer only in command-line modules"),
    ],
)
def test_contract_fails_on_a_deliberate_violation(tmp_path, module, line, broken) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "buscad", src / "buscad", ignore=shutil.ignore_patterns("*.pyc"))
    target = src / "buscad" / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text((ROOT / "pyproject.toml").read_text())
    r = _lint(cfg, src)
    assert r.returncode != 0
    assert f"{broken}" in r.stdout and "BROKEN" in r.stdout


def _cycles(g: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Every direct import ``(m, dep)`` whose ``dep`` imports ``m`` back through others."""
    cycles = []
    for m in sorted(g.modules):
        for dep in g.find_modules_directly_imported_by(m):
            if dep != m and g.find_shortest_chain(importer=dep, imported=m):
                cycles.append((m, dep))
    return cycles


def test_no_import_cycles() -> None:
    # every import statement counts: module level, inside a function, under TYPE_CHECKING
    g = grimp.build_graph("buscad", exclude_type_checking_imports=False)
    # the graph holds function-level imports (e.g. the lazy one in EvaluationResult.write)
    assert g.direct_import_exists(
        importer="buscad.evaluate.result", imported="buscad.evaluate.report"
    )
    assert _cycles(g) == []


def test_cycle_check_finds_a_function_level_cycle(tmp_path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "buscad", src / "buscad", ignore=shutil.ignore_patterns("*.pyc"))
    target = src / "buscad" / "evaluate" / "report.py"
    target.write_text(
        target.read_text() + "\n\ndef _back():\n    from buscad.evaluate import result\n"
    )
    code = (
        "import grimp, sys; sys.path.insert(0, sys.argv[1]); "
        "g = grimp.build_graph('buscad', exclude_type_checking_imports=False); "
        "print(g.find_shortest_chain(importer='buscad.evaluate.report', "
        "imported='buscad.evaluate.result'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(src)], capture_output=True, text=True, timeout=300
    )
    assert "buscad.evaluate.result" in r.stdout, r.stderr[-2000:]


#: Modules allowed over this many lines when docs/architecture.md names them and says why.
MAX_LINES = 800


def test_module_sizes_printed_and_large_ones_explained() -> None:
    sizes = sorted(
        (
            (len(f.read_text().splitlines()), f.relative_to(ROOT / "src").as_posix())
            for f in (ROOT / "src" / "buscad").rglob("*.py")
        ),
        reverse=True,
    )
    print("\nmodule sizes (lines), largest first:")
    for n, name in sizes:
        print(f"{n:6d}  {name}")
    note = (ROOT / "docs" / "architecture.md").read_text()
    large = [name for n, name in sizes if n > MAX_LINES]
    unexplained = [name for name in large if f"`{name.removeprefix('buscad/')}`" not in note]
    assert unexplained == [], f"over {MAX_LINES} lines and not in docs/architecture.md"


def test_each_package_docstring_says_what_it_owns_and_may_import() -> None:
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ][0]["layers"]
    packages = [
        p.strip()
        for layer in layers
        for p in layer.split("|")
        if (ROOT / "src" / "buscad" / p.strip() / "__init__.py").exists()
    ]
    assert len(packages) >= 10
    for p in packages:
        doc = (ROOT / "src" / "buscad" / p / "__init__.py").read_text()
        assert "Owns" in doc and "May import" in doc, p
