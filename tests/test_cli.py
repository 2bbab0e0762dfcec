"""The command line's lazy command table."""

from __future__ import annotations

import typer

from buscad.cli import COMMAND_MODULES, COMMANDS, register_modules


def test_command_table_matches_what_modules_register():
    """``main`` imports only ``COMMANDS[name]``: the table must name every command's module."""
    found = {}
    for mod in COMMAND_MODULES:
        app = typer.Typer()
        register_modules(app, (mod,))
        names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
        names += [g.name for g in app.registered_groups]
        found.update(dict.fromkeys(names, mod))
    assert found == COMMANDS


def test_main_runs_one_command_and_reports_errors(tmp_path, capsys):
    import pytest

    from buscad.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("buscad ")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), str(tmp_path / "x.png")])
    assert e.value.code == 2
    assert "not a buscad bundle (no bundle.json)" in capsys.readouterr().err
