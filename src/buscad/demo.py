"""``buscad demo``: the main job on synthetic data, runnable on any laptop.

Today the demo runs the data layer end to end, exactly as a user would on
their own images: it generates a phantom cohort with the problems real data
has (re-cropped near-duplicates, one relabelled, burned-in calipers and text,
colour boxes), imports it with the ``csv`` importer (every image and mask is
read and checked), audits it for leakage and shortcuts, and splits it 7:3 by
patient and near-duplicate group. A second phantom cohort of other patients,
kept apart in ``external/``, stands in for another centre: the external cohort
of a study (``configs/example.yaml``) or new images for ``buscad predict``.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer


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
    from buscad._cliutil import output_lines
    from buscad.data.audit.run import run_audit
    from buscad.data.importers.registry import import_dataset
    from buscad.data.manifest import Manifest
    from buscad.data.phantom import PhantomSpec, generate_cohort
    from buscad.data.splits import assign_splits, describe_splits

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


def register(app: typer.Typer) -> None:
    """Add ``buscad demo`` to the top-level app."""

    @app.command("demo")
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
