"""``buscad evaluate PREDICTIONS.csv``: evaluate per-case predictions made anywhere."""

from __future__ import annotations

from pathlib import Path

import typer


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def evaluate_command(
    predictions: list[Path] = typer.Argument(
        ...,
        help="Predictions table(s): one row per case (CSV/TSV/Parquet/XLSX); several "
        "files are merged on the id column.",
    ),
    out: Path = typer.Option(Path("evaluation"), "-o", "--out", help="Output folder."),
    train_cohort: str | None = typer.Option(
        None,
        "--train-cohort",
        help="Cohort where thresholds are chosen (default: 'train' "
        "if present, else the first cohort).",
    ),
    threshold: str = typer.Option(
        "youden", "--threshold", help="Threshold rule: youden | sens:0.95 | spec:0.9 | fixed:0.5"
    ),
    label_col: str = typer.Option("label", "--label-col", help="Reference label column."),
    cohort_col: str = typer.Option("cohort", "--cohort-col", help="Cohort column."),
    id_col: str = typer.Option("case_id", "--id-col", help="Case id column."),
    models: str | None = typer.Option(
        None,
        "--models",
        help="Comma-separated model columns (default: numeric columns with values in [0, 1]).",
    ),
    covariates: str | None = typer.Option(
        None, "--covariates", help="Comma-separated Table 1 variables (default: other columns)."
    ),
    ci: str = typer.Option("delong", "--ci", help="AUC CI method: delong | bootstrap."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples (with --ci bootstrap)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (bootstrap)."),
    title: str = typer.Option("buscad evaluation report", "--title", help="Report title."),
    audit: Path | None = typer.Option(
        None, "--audit", help="Data audit summary to include (JSON, CSV or text)."
    ),
    split_description: str = typer.Option("", "--split", help="Text describing the split."),
    intended_use: str = typer.Option("", "--intended-use", help="Intended use (model card)."),
) -> None:
    """Evaluate predictions: Tables 1–3, figures, model card, TRIPOD+AI checklist, HTML report."""
    import json

    import pandas as pd

    from buscad.errors import InputFileError
    from buscad.evaluate.result import evaluate_predictions, read_predictions
    from buscad.utils import file_sha256

    df, merge_issues = read_predictions(
        predictions, id_col=id_col, label_col=label_col, cohort_col=cohort_col
    )
    try:
        result = evaluate_predictions(
            df,
            _split(models),
            label_col,
            cohort_col,
            id_col=id_col,
            train_cohort=train_cohort,
            threshold_rule=threshold,
            covariates=_split(covariates),
            ci_method=ci,
            n_boot=n_boot,
            seed=seed,
        )
    except ValueError as exc:  # bad rule or CI method: name the input
        raise InputFileError(predictions[0], str(exc)) from exc
    result.issues[:0] = merge_issues
    audit_obj = None
    if audit is not None:
        if not audit.is_file():
            raise InputFileError(audit, "audit summary not found")
        if audit.suffix.lower() == ".json":
            audit_obj = json.loads(audit.read_text(encoding="utf-8"))
        elif audit.suffix.lower() in (".csv", ".tsv"):
            audit_obj = pd.read_csv(audit, sep=None, engine="python")
        else:
            audit_obj = audit.read_text(encoding="utf-8")
    hashes = {str(p): file_sha256(p) for p in predictions}
    written = result.write(
        out,
        title=title,
        audit_summary=audit_obj,
        split_description=split_description,
        input_hashes=hashes,
        intended_use=intended_use,
        seed=seed,
    )
    for issue in result.issues:
        typer.echo(f"warning: {issue}", err=True)
    typer.echo(
        f"{len(result.models)} model(s), {len(result.cohorts)} cohort(s); thresholds on "
        f"{result.train_cohort!r} ({threshold})"
    )
    typer.echo(f"report: {written['report'][0]}")
    typer.echo(
        f"tables: {len(written['tables'])} files, figures: {len(written['figures'])} files in {out}"
    )


def register(app: typer.Typer) -> None:
    """Add the top-level ``evaluate`` command to ``app``."""
    app.command("evaluate")(evaluate_command)
