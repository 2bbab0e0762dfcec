"""``buscad data audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buscad.data.audit.run import run_audit
from buscad.data.audit.scan import NearDuplicateParams
from buscad.data.manifest import Manifest


def register(data_app: Any) -> None:
    """Add ``buscad data audit`` to the ``buscad data`` group."""
    import typer

    @data_app.command("audit")
    def audit_cmd(
        manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for tables and report."),
        no_near_duplicates: bool = typer.Option(
            False, "--no-near-duplicates", help="Skip the near-duplicate search (exact only)."
        ),
        ncc_threshold: float = typer.Option(
            NearDuplicateParams.ncc_threshold, help="Near-duplicate acceptance NCC."
        ),
        top_k: int = typer.Option(NearDuplicateParams.top_k, help="Candidates kept per image."),
        shortcut_auc_warn: float = typer.Option(
            0.8, "--shortcut-auc", help="Warn when a shortcut's AUC reaches this."
        ),
        seed: int = typer.Option(0, help="Seed of the shortcut cross-validation."),
        cache_dir: Path | None = typer.Option(
            None, help="Cache folder (default $BUSCAD_CACHE or ~/.cache/buscad)."
        ),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache."),
    ) -> None:
        """Audit a manifest: duplicates, label conflicts, colour, burned-in marks, masks, shortcuts."""
        man = Manifest.load(manifest)
        nd = NearDuplicateParams(ncc_threshold=ncc_threshold, top_k=top_k)
        res = run_audit(
            man,
            out,
            near_duplicates=not no_near_duplicates,
            nd_params=nd,
            shortcut_warn_auc=shortcut_auc_warn,
            seed=seed,
            cache_dir=cache_dir,
            use_cache=not no_cache,
            log=lambda m: typer.echo(m, err=True),
        )
        s = res.summary
        typer.echo(
            f"{s['n_images']} images: {s['exact_duplicate_pairs']} exact duplicate pair(s), "
            f"{s['duplicate_groups']} duplicate group(s) holding {s['images_in_duplicate_groups']} "
            f"images, {s['conflict_groups']} with conflicting labels; {s['colour_images']} with "
            f"colour ({s['colour_overlay_images']} with overlays), {s['annotated_images']} with burned-in annotations; mask problems "
            f"{sum(s['mask_problems'].values())}"
        )
        for r in res.shortcuts[res.shortcuts["kind"] == "model"].itertuples(index=False):
            typer.echo(f"shortcut AUC {r.shortcut}: {r.auc:.3f}")
        for w in res.warnings:
            typer.echo(f"WARNING: {w}")
        typer.echo(f"wrote {out / 'report.html'} and {out / 'manifest_audited.csv'}")
