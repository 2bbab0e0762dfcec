"""``buscad serve BUNDLE``: the web app for clinicians and reader studies."""

from __future__ import annotations

from pathlib import Path

import typer


def load_predictor(path: Path):
    """Load a model bundle folder as a :class:`~buscad.bundle.types.Predictor`.

    Raises
    ------
    ModelFileError
        The bundle code is not installed or the folder is not a bundle.
    """
    from buscad.errors import ModelFileError

    try:
        from buscad.bundle.bundle import Bundle
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
    study_dir: Path | None = typer.Option(
        None,
        "--study-dir",
        help="Folder of manifests the organiser may create a study from in the app (by name).",
    ),
    open_case_screen: bool = typer.Option(
        False,
        "--open-case-screen",
        help="Keep the open case screen (/ and /api/predict...) on while a study is served.",
    ),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="Host name clients use besides 127.0.0.1/localhost (repeat)."
    ),
    max_upload_mb: float = typer.Option(50.0, help="Largest accepted upload, in MB."),
    workers: int = typer.Option(1, help="Predictions run at once (worker threads)."),
    max_decodes: int = typer.Option(2, help="Uploads decoded at once."),
    decode_timeout_s: float = typer.Option(20.0, help="Longest decode of one upload, seconds."),
) -> None:
    """Serve the web app: AI score, likelihood band, heatmap, case reports, reader studies."""
    import uvicorn

    from buscad.serve.app import create_app

    if max_upload_mb <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--max-upload-mb")
    if max_decodes < 1 or decode_timeout_s <= 0:
        raise typer.BadParameter(
            "must be >= 1 and > 0", param_hint="--max-decodes/--decode-timeout-s"
        )
    if study_dir is not None and not study_dir.is_dir():
        raise typer.BadParameter(f"{study_dir} is not a folder", param_hint="--study-dir")
    hosts = [h for h in allowed_host if h]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    predictor = load_predictor(bundle)
    app = create_app(
        predictor,
        study_db=study_db,
        study_dir=study_dir,
        max_upload_mb=max_upload_mb,
        workers=workers,
        open_case_screen=True if open_case_screen else None,
        allowed_hosts=hosts,
        decode_timeout_s=decode_timeout_s,
        max_decodes=max_decodes,
    )
    typer.echo(f"buscad: serving {predictor.name} on http://{host}:{port}/ (Ctrl+C stops)")
    if study_db is not None:
        from buscad.reader.store import ReaderStudy

        st = ReaderStudy.prepare(study_db)
        typer.echo(f"buscad: reader study at http://{host}:{port}/reader ({study_db})")
        if not st.has_organiser_token():
            typer.echo(f"buscad: organiser token (shown once): {st.issue_organiser_token()}")
        if not open_case_screen:
            typer.echo("buscad: the open case screen is off while a study is served")
    if host in ("0.0.0.0", "::") and not allowed_host:
        typer.echo("buscad: bound to all interfaces; give --allowed-host NAME for remote clients")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)


def register(app: typer.Typer) -> None:
    """Attach ``buscad serve`` to the top-level app."""
    app.command("serve")(serve_cmd)
