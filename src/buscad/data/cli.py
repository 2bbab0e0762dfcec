"""``buscad data ...``: phantom, validate, and the commands of the data modules."""

from __future__ import annotations

from pathlib import Path

import typer

from buscad._cliutil import register_modules

data_app = typer.Typer(
    help="Import, validate, audit and split image manifests; make phantoms.", no_args_is_help=True
)

#: Data modules that add subcommands to ``buscad data`` through ``register(data_app)``.
DATA_COMMAND_MODULES: tuple[str, ...] = (
    "buscad.data.importers",
    "buscad.data.audit",
    "buscad.data.splits",
)


@data_app.command("phantom")
def phantom_cmd(
    n: int = typer.Option(120, "-n", help="Number of images (planted duplicates come on top)."),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Output folder (images/, masks/, manifest.csv)."
    ),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same files."),
    malignant_fraction: float = typer.Option(0.4, help="Share of malignant lesions."),
    cohorts: str = typer.Option("site_a", help="Comma-separated cohort names."),
    duplicate_fraction: float = typer.Option(
        0.0, help="Share of images given a re-cropped near-duplicate."
    ),
    conflict_fraction: float = typer.Option(
        0.0, help="Share of duplicates that carry the opposite label."
    ),
    annotation_fraction: float = typer.Option(
        0.0, help="Share of images with burned-in calipers and text."
    ),
    colour_fraction: float = typer.Option(
        0.0, help="Share of images with a colour (Doppler-like) box."
    ),
    size: str = typer.Option("224x256", help="Image size HxW."),
) -> None:
    """Write a synthetic B-mode phantom cohort with masks, clinical columns and a manifest."""
    from buscad.data.phantom import PhantomSpec, generate_cohort

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"size must look like 224x256, got {size!r}") from exc
    spec = PhantomSpec(
        size=(h, w),
        malignant_fraction=malignant_fraction,
        cohorts=tuple(c.strip() for c in cohorts.split(",") if c.strip()),
        duplicate_fraction=duplicate_fraction,
        conflict_fraction=conflict_fraction,
        annotation_fraction=annotation_fraction,
        colour_fraction=colour_fraction,
        seed=seed,
    )
    man = generate_cohort(n, out, spec)
    counts = man.df["label"].value_counts().to_dict()
    typer.echo(f"wrote {len(man)} phantom images {counts} and {out / 'manifest.csv'}")


@data_app.command("validate")
def validate_cmd(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet."),
    no_files: bool = typer.Option(False, "--no-files", help="Check the table only, not the files."),
) -> None:
    """Check a manifest: columns, labels, ids, and that every image and mask reads and fits."""
    from buscad.data.manifest import Manifest

    man = Manifest.load(manifest, validate=False)
    problems = man.validate(check_files=not no_files)
    for p in problems:
        typer.echo(f"{manifest}: {p}")
    typer.echo(f"{len(man)} rows checked, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


register_modules(data_app, DATA_COMMAND_MODULES)


def register(app: typer.Typer) -> None:
    """Attach ``buscad data`` to the top-level app."""
    app.add_typer(data_app, name="data")
