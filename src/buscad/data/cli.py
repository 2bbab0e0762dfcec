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
    "buscad.data.importers.cli",
    "buscad.data.audit.cli",
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


@data_app.command("split")
def split_cmd(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet."),
    out: Path = typer.Option(..., "-o", "--out", help="Output manifest (CSV or Parquet)."),
    method: str = typer.Option("holdout", help="holdout | kfold | external."),
    test_size: float = typer.Option(0.3, help="Test share for holdout (7:3 by default)."),
    k: int = typer.Option(5, "--k", help="Folds for kfold."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same split."),
    external_cohort: list[str] = typer.Option(
        [],
        "--external-cohort",
        help="Cohort(s) that become 'external' (repeat or comma-separate).",
    ),
    stratify: str = typer.Option("label", help="Column to balance; 'none' for sizes only."),
    cache_dir: Path | None = typer.Option(
        None, help="Audit cache folder, used when the manifest has no dup_group column."
    ),
) -> None:
    """Grouped (patient and near-duplicate) stratified split; writes 'split' and 'group'."""
    import warnings

    from buscad.data.manifest import Manifest
    from buscad.data.splits import assign_splits, describe_splits
    from buscad.errors import ManifestError

    man = Manifest.load(manifest)
    dup_groups = None
    if "dup_group" not in man.df.columns:
        from buscad.data.audit.duplicates import near_duplicate_groups

        typer.echo(
            f"no dup_group column: searching near-duplicates among {len(man.df)} images "
            "(run `buscad data audit` first to reuse its groups)",
            err=True,
        )
        dup_groups = near_duplicate_groups(man, cache_dir=cache_dir).to_numpy()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = assign_splits(
                man,
                method=method,
                test_size=test_size,
                k=k,
                seed=seed,
                external_cohorts=external_cohort or None,
                stratify=None if stratify.lower() == "none" else stratify,
                dup_groups=dup_groups,
            )
    except ValueError as exc:
        raise ManifestError(manifest, str(exc)) from exc
    for w in caught:
        typer.echo(f"WARNING: {w.message}", err=True)
    res.save(out)
    tab = describe_splits(res, stratify if stratify.lower() != "none" else "label")
    typer.echo(tab.to_string())
    typer.echo(f"{res.df['group'].nunique()} leakage groups; wrote {out}")
