"""``buscad reader ...``: create a reader study, export its reads, analyse them."""

from __future__ import annotations

from pathlib import Path

import typer

reader_app = typer.Typer(
    help="Reader studies: BI-RADS without AI, then with AI after a washout.",
    no_args_is_help=True,
)


def _link(server: str, token: str) -> str:
    return f"{server.rstrip('/')}/reader#token={token}"


@reader_app.command("create")
def create_cmd(
    db: Path = typer.Argument(..., help="New SQLite database for the study."),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest of the cases."),
    washout_days: float = typer.Option(14.0, help="Days between round 1 and round 2."),
    seed: int = typer.Option(0, help="Study seed for the readers' case orders."),
    readers: str = typer.Option("", help="Comma-separated reader pseudonyms to enrol."),
    server: str = typer.Option(
        "http://127.0.0.1:8000", help="Address of `buscad serve`, for the readers' links."
    ),
) -> None:
    """Create a reader study; print the organiser token and each reader's link ONCE.

    Only hashes of the tokens are stored: write them down now (``buscad reader
    token`` / ``organiser-token`` issue new ones).
    """
    from buscad.reader.store import ReaderStudy

    study = ReaderStudy.prepare(db)
    study = ReaderStudy.create(db, manifest, washout_days=washout_days, seed=seed)
    org = study.issue_organiser_token()
    issued = []
    for rid in (r.strip() for r in readers.split(",")):
        if rid:
            study.add_reader(rid)
            issued.append((rid, study.issue_reader_token(rid)))
    typer.echo(
        f"created study {study.study_id} with {len(study.case_ids())} cases and "
        f"{len(study.readers())} reader(s) in {db}"
    )
    typer.echo("tokens are shown once; only their hashes are stored:")
    typer.echo(f"organiser token: {org}")
    for rid, tok in issued:
        typer.echo(f"reader {rid}: {_link(server, tok)}")


@reader_app.command("token")
def token_cmd(
    db: Path = typer.Argument(..., help="Reader-study database."),
    reader: str = typer.Option(..., "--reader", help="Reader pseudonym (enrolled if new)."),
    server: str = typer.Option("http://127.0.0.1:8000", help="Address of `buscad serve`."),
) -> None:
    """Issue (or rotate) a reader's token and print their link once; the old token stops working."""
    from buscad.reader.store import ReaderStudy

    study = ReaderStudy.open(db)
    if reader not in study.readers():
        study.add_reader(reader)
    typer.echo(f"reader {reader}: {_link(server, study.issue_reader_token(reader))}")


@reader_app.command("revoke")
def revoke_cmd(
    db: Path = typer.Argument(..., help="Reader-study database."),
    reader: str = typer.Option(..., "--reader", help="Reader pseudonym."),
) -> None:
    """Revoke a reader's token (their reads are kept)."""
    from buscad.reader.store import ReaderStudy

    n = ReaderStudy.open(db).revoke_reader_token(reader)
    typer.echo(f"revoked {n} token(s) of reader {reader}")


@reader_app.command("organiser-token")
def organiser_token_cmd(db: Path = typer.Argument(..., help="Reader-study database.")) -> None:
    """Issue (or rotate) the organiser's token and print it once; the old one stops working."""
    from buscad.reader.store import ReaderStudy

    typer.echo(f"organiser token: {ReaderStudy.prepare(db).issue_organiser_token()}")


@reader_app.command("progress")
def progress_cmd(db: Path = typer.Argument(..., help="Reader-study database.")) -> None:
    """Print each reader's progress and when round 2 opens."""
    from buscad.reader.store import ReaderStudy

    study = ReaderStudy.open(db)
    for rid in study.readers():
        p = study.progress(rid)
        opens = p.round2_opens_at.isoformat() if p.round2_opens_at else "after round 1"
        typer.echo(
            f"{rid}: round 1 {p.round1_done}/{p.n_cases}, round 2 {p.round2_done}/{p.n_cases}, "
            f"round 2 {'open' if p.round2_open else 'opens ' + opens}"
        )


@reader_app.command("export")
def export_cmd(
    db: Path = typer.Argument(..., help="Reader-study database."),
    out: Path = typer.Option(..., "-o", "--out", help="CSV to write (atomically)."),
) -> None:
    """Export every read to CSV."""
    from buscad.reader.store import ReaderStudy

    study = ReaderStudy.open(db)
    n = len(study.reads())
    study.export_csv(out)
    typer.echo(f"wrote {n} reads to {out}")


@reader_app.command("analyze")
def analyze_cmd(
    reads: Path = typer.Argument(..., help="Reads CSV (from `buscad reader export`)."),
    truth: Path = typer.Option(..., "--truth", help="Manifest (image_id, label) with the truth."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    binarize: str = typer.Option(
        "4b", "--binarize", help="Lowest BI-RADS called malignant (default 4b: 4B/4C/5)."
    ),
    model_scores: Path | None = typer.Option(
        None, "--model-scores", help="CSV case_id,score for the model row of Table 3."
    ),
    model_threshold: float = typer.Option(0.5, help="Model operating threshold."),
    cov: str = typer.Option("jackknife", help="MRMC covariance: jackknife or delong."),
    title: str = typer.Option("Reader study", help="Report title."),
) -> None:
    """Per-reader metrics, paired DeLong/McNemar, OR MRMC, Table 3, ROC and an HTML report."""
    from buscad.data.birads import cut_rank
    from buscad.errors import InputFileError
    from buscad.reader.analysis import analyze, load_model_scores, load_reads, load_truth

    try:
        cut_rank(binarize)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--binarize") from exc
    if cov not in ("jackknife", "delong"):
        raise typer.BadParameter("use jackknife or delong", param_hint="--cov")
    df = load_reads(reads)
    y = load_truth(truth)
    if not set(df["case_id"]) & set(y.index):
        raise InputFileError(truth, "no case of the reads has benign/malignant truth here")
    ms = load_model_scores(model_scores) if model_scores else None
    res = analyze(df, y, out, binarize, ms, model_threshold, cov, title)
    for row in res.table3.itertuples(index=False):
        typer.echo(
            f"{row.group}: accuracy {row.accuracy:.3f}, AUC {row.auc:.3f}, "
            f"sensitivity {row.sensitivity:.3f}, specificity {row.specificity:.3f}"
        )
    if res.mrmc is not None:
        m = res.mrmc
        typer.echo(
            f"MRMC (OR, {m.cov_method}): F={m.f:.3f}, df=({m.df1}, {m.df2:.2f}), p={m.p:.4g}"
        )
    else:
        typer.echo(f"MRMC not done: {res.mrmc_note}")
    typer.echo(f"wrote {res.files['report']}")


def register(app: typer.Typer) -> None:
    """Attach ``buscad reader`` to the top-level app."""
    app.add_typer(reader_app, name="reader")
