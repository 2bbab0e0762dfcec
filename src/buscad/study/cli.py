"""``buscad study``: write a config for your manifests, check it, run the whole study."""

from __future__ import annotations

from pathlib import Path

import typer

from buscad.errors import ConfigError, ConfigProblems

study_app = typer.Typer(help="Run a whole study from one YAML config.", no_args_is_help=True)


def _fail(exc: ConfigError, config: Path, what: str) -> None:
    """Print every problem as its own ``error:`` line and exit with status 2."""
    lines = exc.lines if isinstance(exc, ConfigProblems) else [str(exc)]
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    typer.echo(
        f"{what}: {len(lines)} problem(s) in {config}; `buscad study check {config}` "
        "checks again in seconds",
        err=True,
    )
    raise typer.Exit(2)


@study_app.command("init")
def init_cmd(
    manifest: list[Path] = typer.Option(
        ...,
        "--manifest",
        "-m",
        metavar="MANIFEST",
        help="A development cohort's manifest (repeat for several).",
    ),
    external: list[Path] = typer.Option(
        [],
        "--external",
        "-e",
        metavar="MANIFEST",
        help="An external cohort's manifest (repeat for several).",
    ),
    out: Path = typer.Option(
        Path("my_study.yaml"), "-o", "--out", metavar="FILE", help="Config file to write."
    ),
    name: str | None = typer.Option(
        None, metavar="NAME", help="Study name (default: the file's name)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Small inputs, few epochs and folds: a first look in minutes."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented study config for your manifests (columns filled from what they hold)."""
    from buscad.study.template import write_study_template

    p = write_study_template(manifest, out, external, name=name, quick=quick, force=force)
    typer.echo(f"wrote {p}; check it with `buscad study check {p}`")


@study_app.command("check")
def check_cmd(config: Path = typer.Argument(..., help="Study YAML.")) -> None:
    """Check a config and the files and columns it names, in seconds; run nothing."""
    from buscad.config import load_config
    from buscad.study.check import require_valid

    try:
        res = require_valid(load_config(config))
    except ConfigError as exc:
        _fail(exc, config, "check failed")
    for c in res.cohorts:
        size = "phantom" if c.rows is None else f"{c.rows} rows"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(c.labels.items()))
        where = "" if c.source == "phantom" else f" ({c.source})"
        typer.echo(f"cohort {c.name} [{c.role}]: {size}{': ' + counts if counts else ''}{where}")
    for n in res.notes:
        typer.echo(f"note: {n}")
    typer.echo(f"{config}: ok")


@study_app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Study YAML (see configs/)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Run folder (default: runs/ and the config's name)."
    ),
) -> None:
    """Check the config, then audit, split, train and compare, evaluate and report; cached and resumable."""
    from buscad.study.runner import run_study
    from buscad.utils import output_lines

    try:
        res = run_study(config, out)
    except ConfigError as exc:
        if isinstance(exc, ConfigProblems) or Path(exc.path) == config:
            _fail(exc, config, "study not started")
        raise
    for w in res.warnings:
        typer.echo(f"WARNING: {w}", err=True)
    typer.echo(f"study finished in {res.seconds:.0f} s. Outputs:")
    for line in output_lines(res.outputs):
        typer.echo(line)


@study_app.command("reference")
def reference_cmd(
    out: Path | None = typer.Option(None, "-o", "--out", help="Write here (default: print)."),
) -> None:
    """Every config key with its type, default and meaning, as Markdown (docs/config.md)."""
    from buscad.config import config_reference
    from buscad.utils import atomic_write_text

    text = config_reference()
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Attach ``buscad study`` to the top-level app."""
    app.add_typer(study_app, name="study")
