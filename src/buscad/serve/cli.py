"""``buscad serve BUNDLE``: the web app for clinicians and reader studies."""

from __future__ import annotations

from pathlib import Path

import typer


def load_predictor(path: Path):
    """Load a model bundle folder as a :class:`~buscad.bundle_types.Predictor`.

    Raises
    ------
    ModelFileError
        The bundle code is not installed or the folder is not a bundle.
    """
    from buscad.errors import ModelFileError

    try:
        from buscad.bundle import Bundle
    except ModuleNotFoundError as exc:
        raise ModelFileError(path, f"cannot load model bundles: {exc}") from exc
    return Bundle.load(path)


def serve_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle folder (from `buscad study`)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8000, help="Port."),
    study_db: Path | None = typer.Option(
        None, "--study-db", help="Reader-study SQLite file (enables the /reader pages)."
    ),
    max_upload_mb: float = typer.Option(50.0, help="Largest accepted upload, in MB."),
    workers: int = typer.Option(1, help="Predictions run at once (worker threads)."),
) -> None:
    """Serve the web app: AI score, likelihood band, heatmap, case reports, reader studies."""
    import uvicorn

    from buscad.serve.app import create_app

    if max_upload_mb <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--max-upload-mb")
    predictor = load_predictor(bundle)
    app = create_app(predictor, study_db=study_db, max_upload_mb=max_upload_mb, workers=workers)
    typer.echo(f"buscad: serving {predictor.name} on http://{host}:{port}/ (Ctrl+C stops)")
    if study_db is not None:
        typer.echo(f"buscad: reader study at http://{host}:{port}/reader ({study_db})")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)


def register(app: typer.Typer) -> None:
    """Attach ``buscad serve`` to the top-level app."""
    app.command("serve")(serve_cmd)
