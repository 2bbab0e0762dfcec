"""``buscad radiomics ...``: cached pyradiomics extraction over a manifest."""

from __future__ import annotations

from pathlib import Path

import typer

radiomics_app = typer.Typer(
    help="Radiomics features (pyradiomics, 2-D) with an on-disk cache.", no_args_is_help=True
)


@radiomics_app.command("extract")
def extract_cmd(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet (image_path, mask_path)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output feature table (.parquet or .csv)."),
    params: Path | None = typer.Option(
        None,
        "--params",
        help="Radiomics YAML params (default: buscad's, = configs/radiomics.yaml).",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes."),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Feature cache folder (default radiomics/ under $BUSCAD_CACHE or ~/.cache/buscad).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache."),
    lesions_only: bool = typer.Option(
        True, "--lesions-only/--all-rows", help="Skip 'normal' rows (they have no lesion mask)."
    ),
) -> None:
    """Extract radiomics features (original + perturbed masks) for every image of MANIFEST."""
    import time

    from buscad.data.manifest import Manifest
    from buscad.radiomics.extract import extract_features, load_params
    from buscad.utils import atomic_write_table

    man = Manifest.load(manifest)
    if lesions_only:
        man = man.lesions()
    p = load_params(params)
    t0 = time.perf_counter()
    res = extract_features(
        man,
        p,
        cache_dir=False if no_cache else cache_dir,
        n_jobs=jobs,
        progress=True,
    )
    dt = time.perf_counter() - t0
    for line in res.failures:
        typer.echo(f"skipped: {line}", err=True)
    table = res.features.reset_index()
    atomic_write_table(table, out)
    typer.echo(
        f"wrote {out}: {len(table)} image(s) x {table.shape[1] - 1} column(s) "
        f"({res.n_computed} computed, {res.n_cached} from cache, "
        f"{len(res.failures)} problem(s)) in {dt:.1f} s"
    )


def register(app: typer.Typer) -> None:
    """Add the ``radiomics`` command group to the top-level app."""
    app.add_typer(radiomics_app, name="radiomics")
