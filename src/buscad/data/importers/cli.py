"""``buscad data import``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buscad.data.importers.registry import IMPORTERS, SALT_ENV, import_dataset


def register(data_app: Any) -> None:
    """Add ``buscad data import`` to the ``buscad data`` group."""
    import typer

    formats = "; ".join(
        f"{name} ({(fn.__doc__ or '').strip().splitlines()[0].replace('``', '').rstrip('.')})"
        for name, fn in IMPORTERS.items()
    )

    @data_app.command("import")
    def import_cmd(
        fmt: str = typer.Argument(..., metavar="FORMAT", help=f"One of: {formats}"),
        source: Path = typer.Argument(..., help="Dataset folder, or the table for csv."),
        out: Path = typer.Option(..., "-o", "--out", help="Manifest to write (.csv or .parquet)."),
        cohort: str | None = typer.Option(None, help="Value of the cohort column."),
        id_prefix: str | None = typer.Option(None, help="Prefix of generated image ids."),
        clinical_csv: str | None = typer.Option(None, help="breast-lesions-usg: clinical table."),
        mask_pattern: str | None = typer.Option(
            None, help="folders: mask names, e.g. '{stem}_mask*' ('' = no masks)."
        ),
        mask_dir: str | None = typer.Option(None, help="folders: separate mask tree."),
        path_col: str | None = typer.Option(None, help="csv: image path column."),
        label_col: str | None = typer.Option(None, help="csv: label column."),
        mask_col: str | None = typer.Option(None, help="csv: mask path column."),
        id_col: str | None = typer.Option(None, help="csv: image id column."),
        patient_col: str | None = typer.Option(None, help="csv: patient id column."),
        base_dir: str | None = typer.Option(None, help="csv: folder the paths are relative to."),
        sheet: str | None = typer.Option(None, help="csv: Excel sheet name."),
        label: str | None = typer.Option(None, help="dicom: one label for every file."),
        label_map: str | None = typer.Option(
            None, help="dicom: table with file and label columns."
        ),
        salt: str | None = typer.Option(
            None, help=f"dicom: secret salt for patient/image keys (or ${SALT_ENV})."
        ),
        skipped_file: bool = typer.Option(
            True,
            "--skipped-file/--no-skipped-file",
            help="Write OUT.skipped.csv (the skipped files and why) beside the manifest.",
        ),
        progress: bool | None = typer.Option(
            None,
            "--progress/--no-progress",
            help="Progress (default: on; a bar on a terminal, plain lines in a log).",
        ),
        any_modality: bool = typer.Option(
            False,
            "--any-modality",
            help="dicom: accept every modality (default: ultrasound, or no Modality, only).",
        ),
    ) -> None:
        """Import a dataset into a manifest; every image and mask is read and checked."""
        from buscad.errors import BuscadError

        given = {
            "cohort": cohort,
            "id_prefix": id_prefix,
            "clinical_csv": clinical_csv,
            "mask_pattern": mask_pattern,
            "mask_dir": mask_dir,
            "path_col": path_col,
            "label_col": label_col,
            "mask_col": mask_col,
            "id_col": id_col,
            "patient_col": patient_col,
            "base_dir": base_dir,
            "sheet": sheet,
            "label": label,
            "label_map": label_map,
            "salt": salt,
        }
        options = {k: v for k, v in given.items() if v is not None}
        try:
            report = import_dataset(
                fmt,
                source,
                out,
                progress=progress,
                write_skipped=skipped_file,
                any_modality=any_modality,
                **options,
            )
        except BuscadError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(report.summary())
        if report.n_burned_in:
            typer.echo(
                f"WARNING: {report.n_burned_in} image(s) may show burned-in text (names, IDs, "
                "dates): see the burned_in column and the notes below",
                err=True,
            )
        for file, reason in report.skipped:
            typer.echo(f"  skipped {file}: {reason}")
        for file, note in report.notes:
            typer.echo(f"  note {file}: {note}")
        if report.manifest_path is None:
            typer.echo("nothing kept: no manifest written", err=True)
            raise typer.Exit(1)
        typer.echo(f"wrote {report.manifest_path} ({report.seconds:.1f} s)")
        if report.skipped_path is not None:
            typer.echo(f"wrote {report.skipped_path}")
