"""``buscad explain``: heatmap overlays and a gallery for a manifest's images."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach ``buscad explain`` to the top-level app."""

    @app.command("explain")
    def explain_cmd(
        manifest: Path = typer.Argument(...),
        checkpoint: Path = typer.Option(..., help="Trained checkpoint (JSON or stem)."),
        out: Path = typer.Option(Path("runs/explain"), "-o", "--out"),
        methods: str = typer.Option("gradcam", help="gradcam,gradcam++,hirescam,saliency"),
        max_images: int | None = typer.Option(16),
        gallery: bool = typer.Option(True),
    ) -> None:
        """Heatmap overlays (PNG) and a gallery for the manifest's images."""
        from buscad.data.manifest import Manifest
        from buscad.errors import ConfigError
        from buscad.explain.cam import METHODS, explain_manifest
        from buscad.models.cli import model_and_preprocessor

        ms = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in ms if m not in METHODS]
        if bad:
            raise ConfigError("--methods", f"unknown {bad}; choose from {METHODS}")
        model, pre = model_and_preprocessor(checkpoint, None, "imagenet", None, "roi", 0.1)
        t = explain_manifest(model, Manifest.load(manifest), pre, out, ms, gallery, max_images)
        typer.echo(f"wrote {len(t)} overlays to {out}")
