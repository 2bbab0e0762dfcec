"""``buscad predict BUNDLE IMAGES...``: score images with a model bundle."""

from __future__ import annotations

from pathlib import Path

import typer


def predict_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder (RUN_DIR/bundle of a study run)."),
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, BMP, TIFF, DICOM)."),
    mask: list[Path] = typer.Option([], "--mask", help="Lesion mask per image, in the same order."),
    clinical: Path | None = typer.Option(
        None,
        "--clinical",
        help="CSV of clinical/lexicon inputs: an 'image' column (file name) or 'image_id' (file "
        "stem), then one column per input the bundle's models read (see bundle.json).",
    ),
    out: Path = typer.Option(Path("predictions"), "-o", "--out", help="Output folder."),
    heatmap: bool = typer.Option(
        True, "--heatmap/--no-heatmap", help="Write the Grad-CAM overlay."
    ),
    engine: str = typer.Option(
        "auto",
        help="auto (ONNX Runtime when the bundle has an ONNX model, else PyTorch), onnx or torch.",
    ),
    any_modality: bool = typer.Option(
        False,
        "--any-modality",
        help="Score DICOM files of any modality (default: ultrasound, or no Modality, only).",
    ),
) -> None:
    """AI score, decision at the bundle's threshold, Grad-CAM overlay and a JSON per image; summary CSV.

    Every model in the bundle scores each image it has the inputs for (radiomics
    needs --mask; clinical and US models need --clinical); the JSON says why a
    model did not run. PyTorch is not loaded on the ONNX engine.

    Every image gets a row in summary.csv: a failed one has an ``error`` (its
    typed reader error, or ``internal error reading FILE: <ExcType>: message``)
    and the run goes on. Images that may show burned-in text (DICOM
    ``BurnedInAnnotation = YES`` or text-like marks) get a ``warnings`` list in
    their JSON, a ``warnings`` summary column and a line on stderr.
    """
    import csv
    import io

    from buscad.bundle.bundle import Bundle
    from buscad.data.io import burned_in_warning, read_image, read_mask, reader_settings, to_uint8
    from buscad.errors import BuscadError, internal_error
    from buscad.explain.heatmap import overlay, save_png
    from buscad.utils import atomic_write_json, atomic_write_text

    if mask and len(mask) != len(images):
        raise typer.BadParameter(
            f"{len(mask)} masks for {len(images)} images: give one per image or none"
        )
    b = Bundle.load(bundle, engine=engine)
    table = _clinical_table(clinical) if clinical else {}
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(images):
        try:
            with reader_settings(allow_modality=True if any_modality else None):
                gray, meta = read_image(img)
                m = read_mask(mask[i], shape=gray.shape) if mask else None
            warning = burned_in_warning(gray, meta)
            clin = table.get(img.name, table.get(img.stem, {}))
            if clinical and not clin:
                typer.echo(f"{img}: no row in {clinical}; clinical models skipped", err=True)
            pred = b.predict(gray, mask=m, clinical=clin, heatmap=heatmap)
            stem = img.stem
            warnings = [warning] if warning else []
            doc = {
                "image": str(img),
                "bundle": b.name,
                "engine": b.engine,
                **pred.to_json(),
                "warnings": warnings,
            }
            if heatmap and pred.heatmap is not None:
                doc["overlay"] = str(
                    save_png(overlay(to_uint8(gray), pred.heatmap), out / f"{stem}_overlay.png")
                )
            atomic_write_json(out / f"{stem}.json", doc)
        except (BuscadError, ValueError) as exc:
            typer.echo(f"skipped: {exc}", err=True)
            rows.append({"image": str(img), "error": " ".join(str(exc).split())})
            continue
        except Exception as exc:  # never abort the batch: report and go on
            reason = internal_error(img, exc)
            typer.echo(f"skipped: {reason}", err=True)
            rows.append({"image": str(img), "error": reason})
            continue
        if warning:
            typer.echo(f"WARNING: {img}: {warning}", err=True)
        rows.append(
            {
                "image": str(img),
                "ai_score": pred.ai_score,
                "threshold": pred.threshold,
                "decision": pred.decision,
                "band": pred.band.category,
                "roi_source": pred.roi_source,
                **{f"p_{k}": v for k, v in pred.model_scores.items() if k != "deep"},
                "ms": round(sum(pred.timings_ms.values()), 1),
                "warnings": "; ".join(warnings),
                "error": "",
            }
        )
        typer.echo(
            f"{img}: AI score {pred.ai_score:.3f} ({pred.decision}, band {pred.band.category}) "
            f"in {sum(pred.timings_ms.values()):.0f} ms"
        )
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", buf.getvalue())
    typer.echo(f"wrote {out / 'summary.csv'}")


def _clinical_table(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a clinical CSV keyed by ``image`` (file name) or ``image_id`` (stem)."""
    import csv

    from buscad.errors import InputFileError

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(path, f"cannot read the clinical CSV ({exc})") from exc
    if not rows or not ({"image", "image_id"} & set(rows[0])):
        raise InputFileError(path, "clinical CSV needs an 'image' or 'image_id' column")
    out = {}
    for r in rows:
        key = Path(r.get("image") or "").name or str(r.get("image_id") or "")
        out[key] = {k: v for k, v in r.items() if k not in ("image", "image_id") and v != ""}
    return out


def register(app: typer.Typer) -> None:
    """Attach ``buscad predict`` to the top-level app."""
    app.command("predict")(predict_cmd)
