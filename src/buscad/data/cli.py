"""``buscad data ...``: phantom, validate, and the commands of the data modules; ``buscad demo``."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import typer

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


for _name in DATA_COMMAND_MODULES:
    importlib.import_module(_name).register(data_app)


def register(app: typer.Typer) -> None:
    """Attach ``buscad data`` and ``buscad demo`` to the top-level app."""
    app.add_typer(data_app, name="data")
    app.command("demo")(demo_cmd)


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


# ----------------------------------------------------------------------- buscad demo
# ``buscad demo``: the main job on synthetic data, runnable on any laptop.
#
# Today the demo runs the data layer end to end, exactly as a user would on
# their own images: it generates a phantom cohort with the problems real data
# has (re-cropped near-duplicates, one relabelled, burned-in calipers and text,
# colour boxes), imports it with the ``csv`` importer (every image and mask is
# read and checked), audits it for leakage and shortcuts, and splits it 7:3 by
# patient and near-duplicate group. A second phantom cohort of other patients,
# kept apart in ``external/``, stands in for another centre: the external cohort
# of a study (``configs/example.yaml``) or new images for ``buscad predict``.


def run_demo(
    out: Path, n: int = 120, seed: int = 0, echo=print, external: int | None = None
) -> dict[str, Path]:
    """Generate, import, audit and split a phantom cohort under ``out``; add an external one.

    Parameters
    ----------
    out : path-like
        Output folder (created).
    n : int
        Number of primary phantom images (planted duplicates come on top).
    seed : int
        Seed of the phantoms and of the split.
    echo : callable
        Where progress lines go.
    external : int, optional
        Images of the second cohort in ``out/external`` (default ``n // 2``; 0: none).

    Returns
    -------
    dict
        Paths of the outputs: ``phantoms``, ``manifest``, ``audit_report``,
        ``audit_dir``, ``split_manifest`` and (unless ``external=0``) ``external_manifest``.
    """
    from buscad.data.audit.run import run_audit
    from buscad.data.importers.registry import import_dataset
    from buscad.data.manifest import Manifest
    from buscad.data.phantom import PhantomSpec, generate_cohort
    from buscad.data.splits import assign_splits, describe_splits
    from buscad.utils import output_lines

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    spec = PhantomSpec(
        seed=seed,
        cohorts=("site_a", "site_b"),
        duplicate_fraction=0.12,
        conflict_fraction=0.15,
        annotation_fraction=0.1,
        colour_fraction=0.05,
    )
    n_ext = n // 2 if external is None else external
    steps = 5 if n_ext else 4
    echo(
        f"[1/{steps}] generating {n} phantom images (+ planted near-duplicates) in {out / 'phantoms'}"
    )
    generate_cohort(n, out / "phantoms", spec)
    echo(f"[2/{steps}] importing them (every image and mask is read and checked)")
    rep = import_dataset(
        "csv",
        out / "phantoms" / "manifest.csv",
        out / "manifest.csv",
        path_col="image_path",
        label_col="label",
        mask_col="mask_path",
        id_col="image_id",
        patient_col="patient_id",
        progress=False,
    )
    echo(f"      {rep.summary()}")
    echo(
        f"[3/{steps}] auditing for duplicates, label conflicts, overlays, mask problems and shortcuts"
    )
    man = Manifest.load(out / "manifest.csv")
    audit = run_audit(man, out / "audit", seed=seed, log=None)
    for w in audit.warnings:
        echo(f"      WARNING: {w}")
    echo(f"[4/{steps}] splitting 7:3, grouped by patient and near-duplicate group")
    split = assign_splits(audit.manifest, method="holdout", test_size=0.3, seed=seed)
    split.save(out / "manifest_split.csv")
    echo(describe_splits(split).to_string())
    if n_ext:
        echo(
            f"[5/{steps}] generating {n_ext} phantom images of other patients in {out / 'external'}"
            " (an external cohort, or new images to predict)"
        )
        generate_cohort(n_ext, out / "external", PhantomSpec(seed=seed + 1, cohorts=("site_c",)))
    secs = time.monotonic() - t0
    paths = {
        "phantoms": out / "phantoms",
        "manifest": out / "manifest.csv",
        "audit_dir": out / "audit",
        "audit_report": audit.report,
        "split_manifest": out / "manifest_split.csv",
    }
    if n_ext:
        paths["external_manifest"] = out / "external" / "manifest.csv"
    echo(f"\ndemo finished in {secs:.0f} s. Outputs:")
    for line in output_lines(paths):
        echo(line)
    return paths


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder."),
    n: int = typer.Option(120, "-n", help="Number of phantom images."),
    seed: int = typer.Option(0, help="Seed."),
    external: int | None = typer.Option(
        None,
        "--external",
        help="Images of a second phantom cohort in OUT/external (default: half of -n; 0: none).",
    ),
) -> None:
    """Run the demo on synthetic phantoms: generate, import, audit and split; add an external cohort."""
    run_demo(out, n=n, seed=seed, echo=typer.echo, external=external)
