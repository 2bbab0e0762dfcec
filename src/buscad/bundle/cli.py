"""``buscad predict BUNDLE IMAGES...``: score images with a model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def predict_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder (RUN_DIR/bundle of a study run)."),
    images: list[Path] = typer.Argument(
        None, help="Image files (PNG, JPEG, BMP, TIFF, DICOM); or give --manifest."
    ),
    mask: list[Path] = typer.Option(
        [],
        "--mask",
        help="Lesion mask of each image: one --mask per image, in the same order "
        "(--mask a_mask.png --mask b_mask.png).",
    ),
    clinical: Path | None = typer.Option(
        None,
        "--clinical",
        help="CSV of clinical/lexicon inputs: an 'image' column (file name) or 'image_id' (file "
        "stem), then one column per input the bundle's models read (see bundle.json).",
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="Score the rows of a buscad manifest (image_path, optional mask_path, clinical/"
        "lexicon columns; paths relative to it): batched, resumable Parquet shards in OUT/parts.",
    ),
    out: Path = typer.Option(Path("predictions"), "-o", "--out", help="Output folder."),
    heatmap: bool = typer.Option(
        True, "--heatmap/--no-heatmap", help="Write the Grad-CAM overlay."
    ),
    engine: str = typer.Option(
        "auto",
        help="auto (ONNX Runtime when the bundle has an ONNX model, else PyTorch), onnx or torch; "
        "ray: score --manifest on Ray Data actors (needs buscad[ray]).",
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address (--engine ray; default: a local Ray)."
    ),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Ray scoring actors (--engine ray; 0: one per CPU)."
    ),
    decode_cpus: float | None = typer.Option(
        None,
        "--decode-cpus",
        min=0,
        help="--engine ray: decode images in a stage of their own, reserving this many CPUs "
        "per decoding task (e.g. 1 on a cluster with CPUs beyond the scoring actors'; 0 shares "
        "the actors' cores). Default: each scoring actor decodes its own rows.",
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", min=1, help="Images per ONNX pass (--manifest runs)."
    ),
    per_image_json: bool = typer.Option(
        False,
        "--per-image-json",
        help="--manifest runs: also write each image's JSON (always with --heatmap); the "
        "Parquet rows hold the scores, ROI and skipped models either way.",
    ),
    dicom_sr: Path | None = typer.Option(
        None,
        "--dicom-sr",
        help="Also write a DICOM Structured Report (TID 1500) per scored DICOM image here.",
    ),
    any_modality: bool = typer.Option(
        False,
        "--any-modality",
        help="Score DICOM files of any modality (default: ultrasound, or no Modality, only).",
    ),
) -> None:
    """AI score, decision at the model's threshold, Grad-CAM overlay and a JSON per image; summary CSV.

    The AI score, band and call come from the study's headline model (the integrated
    model, or its best member) when the bundle names one and it can score the image,
    else from the CNN; the line and the JSON (``headline_model``) name that model, and
    the Grad-CAM overlay is the CNN's. Every model in the bundle scores each image it has the inputs for (radiomics
    needs --mask; clinical and US models need --clinical); the JSON says why a
    model did not run. PyTorch is not loaded on the ONNX engine.

    Every image gets a row in summary.csv: a failed one has an ``error`` (its
    typed reader error, or ``internal error reading FILE: ERROR-TYPE: message``)
    and the run goes on. Images that may show burned-in text (DICOM
    ``BurnedInAnnotation = YES`` or text-like marks) get a ``warnings`` list in
    their JSON, a ``warnings`` summary column and a line on stderr.

    With --manifest the images are scored in batches and each finished chunk
    is an atomically written Parquet shard in OUT/parts: a killed run, run
    again, scores only the images without a row (exactly one row per image);
    summary.csv (manifest order) and summary.json are rewritten at the end.
    --engine ray does the same on Ray Data (see docs/scale.md).
    """
    import csv
    import io

    from buscad.bundle.batch import Item, items_from_manifest, run_local, score_items
    from buscad.bundle.bundle import Bundle
    from buscad.utils import atomic_write_text

    def log(msg: str, err: bool) -> None:
        typer.echo(msg, err=err)

    images = list(images or [])
    if manifest is None and not images:
        raise typer.BadParameter("give image files or --manifest")
    if manifest is not None and (images or mask or clinical):
        raise typer.BadParameter("--manifest carries the images, masks and clinical inputs")
    if engine == "ray" and manifest is None:
        raise typer.BadParameter("--engine ray scores a --manifest")
    if mask and len(mask) != len(images):
        raise typer.BadParameter(
            f"{len(mask)} masks for {len(images)} images: give one per image or none"
        )
    if engine == "ray":
        from buscad.bundle.ray_engine import run_ray

        probe = Bundle.load(bundle, engine="auto")
        _bundle_lines(probe, log)
        items = items_from_manifest(manifest, probe.clinical_inputs)
        summary = run_ray(
            bundle,
            items,
            out,
            address=address,
            workers=workers or None,
            decode_cpus=decode_cpus,
            batch_size=batch_size,
            heatmap=heatmap,
            any_modality=any_modality,
            write_json=per_image_json,
            log=log,
        )
        _finish_manifest_run(summary, bundle, items, out, dicom_sr)
        return
    b = Bundle.load(bundle, engine=engine)
    _bundle_lines(b, log)
    out.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        items = items_from_manifest(manifest, b.clinical_inputs)
        summary = run_local(
            b,
            items,
            out,
            heatmap=heatmap,
            any_modality=any_modality,
            batch_size=batch_size,
            write_json=per_image_json,
            log=log,
        )
        _finish_manifest_run(summary, bundle, items, out, dicom_sr)
        return
    table = _clinical_table(clinical) if clinical else {}
    items = []
    for i, img in enumerate(images):
        clin = table.get(img.name, table.get(img.stem, {}))
        note = (
            f"{img}: no row in {clinical}; clinical models skipped" if clinical and not clin else ""
        )
        items.append(Item(img.stem, img, mask[i] if mask else None, clin, note))
    rows = score_items(b, items, out, heatmap=heatmap, any_modality=any_modality, log=log)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", buf.getvalue())
    typer.echo(f"wrote {out / 'summary.csv'}")
    if dicom_sr is not None:
        _write_srs(bundle, items, out, dicom_sr, keyed=False)


def _bundle_lines(b: Any, log: Any) -> None:
    """What the bundle is, first: its banner (phantom-trained), training data and study flags."""
    banner = getattr(b, "banner", None)
    if banner:
        log(f"*** {banner} ***", True)
    if getattr(b, "training_text", None):
        log(f"bundle {b.name}: {b.training_text}", True)
    from buscad.bundle.safety import flags_text

    text = flags_text(getattr(b, "flags", None) or [], getattr(b, "headline_model", "deep"))
    if text:
        log(f"WARNING: {text}", True)


def _finish_manifest_run(summary, bundle: Path, items, out: Path, dicom_sr: Path | None) -> None:
    """Print a manifest run's summary line and write its DICOM SRs when asked (both engines)."""
    typer.echo(_summary_line(summary, out))
    if dicom_sr is not None:
        _write_srs(bundle, items, out, dicom_sr, keyed=True)


def _summary_line(summary: dict, out: Path) -> str:
    return (
        f"wrote {out / 'summary.csv'}: {summary['n_rows']} rows ({summary['n_failed']} failed, "
        f"{summary['resumed_skipped']} already scored)"
    )


def _write_srs(bundle: Path, items: list, out: Path, sr_dir: Path, keyed: bool) -> None:
    """A DICOM SR for each scored DICOM item (see :mod:`buscad.bundle.sr`).

    The result comes from the image's JSON (image list) or its Parquet row (--manifest).
    """
    import json

    from buscad.bundle.sr import is_dicom, write_sr

    docs: dict[str, dict] = {}
    if keyed:
        from buscad.bundle.batch import collect

        df = collect(out)
        for r in df.to_dict("records") if len(df) else []:
            if not r["error"]:
                docs[r["image_id"]] = {**r, "roi": [int(v) for v in str(r["roi"]).split()]}
    n = 0
    for it in items:
        if keyed:
            doc = docs.get(it.image_id)
        else:
            f = out / f"{it.image.stem}.json"
            doc = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
        if doc is None or not is_dicom(it.image):
            continue
        try:
            write_sr(it.image, doc, bundle, sr_dir, mask=it.mask)
            n += 1
        except Exception as exc:  # a report that cannot be built never stops the run
            typer.echo(f"no DICOM SR for {it.image}: {type(exc).__name__}: {exc}", err=True)
    typer.echo(f"wrote {n} DICOM SR file(s) to {sr_dir}")


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
