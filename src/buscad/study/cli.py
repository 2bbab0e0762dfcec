"""``buscad study run CONFIG``: the whole study from one config."""

from __future__ import annotations

from pathlib import Path

import typer

study_app = typer.Typer(help="Run a whole study from one YAML config.", no_args_is_help=True)


@study_app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Study YAML (see configs/)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Run folder (default: runs/ and the config's name)."
    ),
) -> None:
    """Audit, split, train and compare, evaluate and report; cached and resumable."""
    from buscad._cliutil import output_lines
    from buscad.study.runner import run_study

    res = run_study(config, out)
    for w in res.warnings:
        typer.echo(f"WARNING: {w}", err=True)
    typer.echo(f"study finished in {res.seconds:.0f} s. Outputs:")
    for line in output_lines(res.outputs):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Attach ``buscad study`` to the top-level app."""
    app.add_typer(study_app, name="study")
