"""``buscad segment train | predict | evaluate | export``: automatic lesion outlines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from buscad.data.manifest import Manifest

segment_app = typer.Typer(
    help="Lesion outlines: train a segmenter, outline images (box or automatic), evaluate it.",
    no_args_is_help=True,
)


def _manifest(manifest: Path, split: str | None) -> Manifest:
    """The manifest, restricted to the rows whose ``split`` column equals ``split`` when given."""
    from buscad.data.manifest import Manifest

    m = Manifest.load(manifest)
    if split:
        if "split" not in m.df.columns:
            from buscad.errors import ManifestError

            raise ManifestError(
                manifest, f"--split {split} given but the manifest has no split column"
            )
        m = m.subset(m.df["split"].astype(str) == split)
    return m


def _items(manifest: Path, split: str | None, cache_side: int) -> list:
    from buscad.segment.train import load_items

    m = _manifest(manifest, split)
    return load_items(m, cache_side, on_skip=lambda s: typer.echo(f"skipped: {s}", err=True))


def _numbers(text: str, n: int, option: str, form: str, n_images: int) -> tuple | None:
    """``n`` comma-separated numbers of a prompt option (None when empty)."""
    from buscad.errors import ConfigError

    if not text:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n or n_images != 1:
        raise ConfigError(option, f"give {form} ({n} numbers) and exactly one image")
    return vals


@segment_app.command("train")
def train_cmd(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="buscad manifest with mask_path."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (resumable)."),
    split: str = typer.Option("", help="Train on rows whose split column equals this."),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-3),
    input_size: int = typer.Option(256, help="Network input side in pixels."),
    pretrained: str = typer.Option("imagenet", help="imagenet (packaged, offline) or random."),
    max_steps: int = typer.Option(0, help="Stop after this many steps (0: no limit)."),
    threads: int = typer.Option(0, help="torch threads (0: default)."),
    seed: int = typer.Option(0),
    onnx: bool = typer.Option(True, help="Also export segmenter.onnx."),
) -> None:
    """Train a segmenter on the manifest's lesion masks (normals as negatives)."""
    from buscad.segment.base import SegConfig
    from buscad.segment.train import TrainConfig, train_segmenter

    items = _items(manifest, split or None, 2 * input_size)
    tcfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        pretrained=pretrained,
        max_steps=max_steps or None,
        threads=threads or None,
        seed=seed,
    )
    seg, hist = train_segmenter(items, out, SegConfig(input_size=input_size), tcfg, log=typer.echo)
    if onnx:
        seg.export_onnx(out)
    typer.echo(f"trained on {len(items)} images ({hist['steps']} steps); wrote {out}")


def _outline_line(cands: list) -> str:
    """``"1 lesion(s); predicted Dice 0.93"`` (the best candidate's), ``"; FLAGGED: check or redraw"``."""
    line = f"{len(cands)} lesion(s)"
    best = cands[0]
    if best.predicted_dice is not None:
        line += f"; predicted Dice {best.predicted_dice:.2f}"
    else:
        line += f"; confidence {best.confidence:.2f}"
    if best.flagged:
        line += "; FLAGGED: check the outline or redraw the box"
    return line


@segment_app.command("predict")
def predict_cmd(
    model: Path = typer.Option(..., "--model", help="Segmenter folder or file."),
    images: list[Path] = typer.Argument(..., help="Images to outline."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for masks and results.json."),
    box: str = typer.Option("", help="x0,y0,x1,y1 prompt box (one image only)."),
    point: str = typer.Option("", help="x,y click on the lesion (one image only)."),
    backend: str = typer.Option("auto", help="auto, onnx or torch."),
) -> None:
    """Outline lesions: with --box around the box, else automatic candidates."""
    from buscad.data.io import read_image, write_mask_png
    from buscad.errors import BuscadError
    from buscad.segment.infer import Segmenter
    from buscad.segment.morphology import describe
    from buscad.utils import atomic_write_json

    prompt = _numbers(box, 4, "--box", "x0,y0,x1,y1", len(images))
    click = _numbers(point, 2, "--point", "x,y", len(images))
    seg = Segmenter.load(model, backend=backend)
    if not seg.can_auto and prompt is None:
        raise typer.BadParameter(
            "this segmenter (LiteMedSAM alone) outlines inside a box only: give --box",
            param_hint="--box",
        )
    out.mkdir(parents=True, exist_ok=True)
    results, skipped = [], []
    for i, path in enumerate(images):
        try:
            gray, meta = read_image(path)
        except BuscadError as exc:
            skipped.append(str(exc))
            typer.echo(f"skipped: {exc}", err=True)
            continue
        r = seg.predict(gray, box=prompt, point=click)
        lite = r.mode == "box" or seg.proposer == "detector"
        kind = "litemedsam" if seg.box_model is not None and lite else "unet"
        name = f"{i:04d}_{Path(path).stem}_mask.png"
        write_mask_png(r.mask, out / name)
        cands = []
        for c in r.candidates:
            try:
                morph = describe(c.mask, meta.pixel_spacing_mm).as_dict()
            except BuscadError:
                morph = None
            cands.append(
                {
                    "box": list(c.box),
                    "confidence": c.confidence,
                    "predicted_dice": c.predicted_dice,
                    "outline_flagged": c.flagged,
                    "morphology": morph,
                }
            )
        results.append(
            {
                "image": str(path),
                "mask": name,
                "mode": r.mode,
                "outliner": kind,
                "found": r.found,
                "candidates": cands,
            }
        )
        typer.echo(f"{path}: {_outline_line(r.candidates) if r.found else 'no lesion found'}")
    atomic_write_json(out / "results.json", {"results": results, "skipped": skipped})


@segment_app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="Segmenter folder or file."),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest with expert masks."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for metrics, table and gallery."),
    split: str = typer.Option("", help="Evaluate rows whose split column equals this."),
    jitter: float = typer.Option(0.15, help="Box side jitter (fraction of the side)."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the CIs."),
    gallery: int = typer.Option(12, help="Worst cases in the HTML gallery (0: none)."),
    backend: str = typer.Option("auto"),
    seed: int = typer.Option(0),
) -> None:
    """Dice, IoU, HD95, misses, detection sensitivity and false candidates/image with 95% CIs."""
    from buscad.segment.evaluate import evaluate_segmenter
    from buscad.segment.infer import Segmenter

    seg = Segmenter.load(model, backend=backend)
    items = _items(manifest, split or None, 10**9)
    summary = evaluate_segmenter(seg, items, out, jitter, seed, n_boot, gallery=gallery)
    o = summary["overall"]
    keys = ("box_dice", "box_misses", "auto_dice", "auto_misses", "detection", "false")
    typer.echo(json.dumps({k: o[k] for k in o if k.startswith(keys)}))
    typer.echo(f"wrote {out}")


@segment_app.command("export")
def export_cmd(
    model: Path = typer.Option(..., "--model", help="Segmenter folder (with safetensors)."),
) -> None:
    """Export segmenter.onnx beside the weights."""
    from buscad.segment.infer import Segmenter

    seg = Segmenter.load(model, backend="torch")
    typer.echo(f"wrote {seg.export_onnx(model if model.is_dir() else model.parent)}")


@segment_app.command("detector")
def detector_cmd(
    manifest: Path = typer.Option(
        ..., "--manifest", "-m", help="Manifest: lesion rows with mask_path, normal rows."
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Segmenter folder (new, or one with LiteMedSAM to extend)."
    ),
    split: str = typer.Option("", help="Train on rows whose split column equals this."),
    group_column: str = typer.Option(
        "",
        help="Rows sharing a value are never split by the CV folds (default: dup_group, "
        "else patient_id, else image_id).",
    ),
    folds: int = typer.Option(5, help="Grouped CV folds that choose the score threshold."),
    epochs: int = typer.Option(30),
    channels: int = typer.Option(32, help="Width of the head."),
    threads: int = typer.Option(2, help="torch and ONNX Runtime threads."),
    seed: int = typer.Option(0),
    reference: bool = typer.Option(
        False, "--reference", help="Reference the cached LiteMedSAM graphs instead of copying."
    ),
) -> None:
    """Train the lesion detector on LiteMedSAM's cached embeddings: automatic outlines.

    The head learns a lesion heat-map on the image embedding; grouped CV chooses its
    candidate score and "no lesion found" threshold; LiteMedSAM outlines each
    candidate. OUT becomes (or stays) a segmenter with LiteMedSAM whose automatic
    proposer is the detector (out/detector/: safetensors, ONNX, JSON).
    """
    from buscad.errors import ManifestError
    from buscad.segment.base import JSON_NAME
    from buscad.segment.detector import DETECTOR_DIR, RECOMMENDED, DetectorConfig
    from buscad.segment.detector_train import (
        HeadTrainConfig,
        embed_manifest,
        fit_detector,
        save_detector,
    )
    from buscad.segment.infer import add_detector, add_medsam
    from buscad.segment.medsam import MedSAM, default_cache
    from buscad.segment.medsam_convert import ensure_converted

    m = _manifest(manifest, split)
    gcol = group_column or next(
        (c for c in ("dup_group", "patient_id", "image_id") if c in m.df.columns), "image_id"
    )
    if gcol not in m.df.columns:
        raise ManifestError(manifest, f"--group-column {gcol!r} is not a column")
    src = ensure_converted()
    sam = MedSAM(src, threads=threads, cache_size=2)
    data = embed_manifest(
        m,
        sam,
        default_cache(),
        on_skip=lambda s: typer.echo(f"skipped: {s}", err=True),
        log=typer.echo,
    )
    keep = m.df["image_id"].astype(str).isin(set(data.ids)).to_numpy()
    sub = m.df[keep]
    cfg = DetectorConfig(channels=channels, **RECOMMENDED)
    tc = HeadTrainConfig(epochs=epochs, seed=seed, threads=threads)
    fit = fit_detector(
        data,
        sub[gcol].astype(str).tolist(),
        sub["label"].astype(str).tolist(),
        sam,
        cfg,
        tc,
        folds,
        log=typer.echo,
    )
    out.mkdir(parents=True, exist_ok=True)
    if not (out / JSON_NAME).is_file() or not (
        (out / "litemedsam").is_dir() or "litemedsam" in json.loads((out / JSON_NAME).read_text())
    ):
        add_medsam(out, carry=not reference, source=src)
    folder = save_detector(
        out / DETECTOR_DIR,
        fit.module,
        cfg,
        fit.rule,
        sam.model_hash,
        {"data": {"manifest": str(manifest), "group_column": gcol}, "training": fit.record},
    )
    add_detector(out, folder)
    at = fit.rule.doc.get("at_threshold", {})
    typer.echo(
        f"trained on {len(data)} images ({fit.record['cpu_s_total']:.0f} s CPU); "
        f"out-of-fold at threshold {fit.rule.threshold:.3f}: {json.dumps(at)}; wrote {out}"
    )


@segment_app.command("medsam")
def medsam_cmd(
    out: Path = typer.Option(..., "-o", "--out", help="Segmenter folder (new, or one to extend)."),
    reference: bool = typer.Option(
        False, "--reference", help="Reference the cached graphs by SHA-256 instead of copying."
    ),
) -> None:
    """LiteMedSAM box outlines: convert the packaged checkpoint once, add it to a segmenter folder.

    A new folder outlines boxes only; an existing segmenter keeps its U-Net for
    automatic candidates and LiteMedSAM outlines boxes and refines candidates.
    """
    from buscad.segment.infer import add_medsam
    from buscad.segment.medsam_convert import ensure_converted

    src = ensure_converted()
    typer.echo(f"LiteMedSAM graphs: {src}")
    typer.echo(f"wrote {add_medsam(out, carry=not reference, source=src)}")


@segment_app.command("finetune")
def finetune_cmd(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="buscad manifest with mask_path."),
    out: Path = typer.Option(..., "-o", "--out", help="Segmenter folder (new, or one to extend)."),
    split: str = typer.Option("", help="Train on rows whose split column equals this."),
    epochs: int = typer.Option(1),
    boxes_per_image: int = typer.Option(2, help="Jittered boxes per image and epoch."),
    lr: float = typer.Option(1e-4),
    max_steps: int = typer.Option(0, help="Stop after this many steps (0: no limit)."),
    threads: int = typer.Option(1, help="torch threads."),
    seed: int = typer.Option(0),
    cache: Path = typer.Option(
        None, help="On-disk embedding cache (default: litemedsam/embeddings in the buscad cache)."
    ),
    base: Path = typer.Option(
        None, help="Converted LiteMedSAM folder (default: convert the packaged checkpoint once)."
    ),
) -> None:
    """Fine-tune LiteMedSAM's prompt encoder + mask decoder on the manifest's lesion masks.

    The image encoder stays frozen: embeddings are computed once (cached on disk)
    and the decoder is trained on jittered boxes. The fine-tuned graphs
    (safetensors + ONNX, keyed by the decoder graph's SHA-256, with a JSON record)
    go into the buscad cache and the segmenter folder ``--out`` outlines boxes
    with them. Check on held-out data that it beats the zero-shot decoder
    (``benchmarks/segment_finetune.py``) before using it.
    """

    from buscad.errors import ConfigError
    from buscad.segment.medsam import MedSAM, default_cache
    from buscad.segment.medsam_convert import ensure_converted
    from buscad.segment.medsam_finetune import (
        FinetuneConfig,
        TrainItem,
        add_finetuned,
        finetune,
        store_finetuned,
        training_record,
    )

    src = base if base is not None else ensure_converted()
    sam = MedSAM(src, threads=threads, cache_size=0)
    emb_dir = cache if cache is not None else default_cache()
    rows = [it for it in _items(manifest, split or None, 10**9) if it.mask.any()]
    if not rows:
        raise ConfigError("--manifest", f"{manifest} has no lesion rows with a mask to train on")
    train = [TrainItem.from_mask(sam.embed_cached(it.gray, emb_dir), it.mask) for it in rows]
    typer.echo(f"{len(train)} lesion images embedded (cache {emb_dir})")
    cfg = FinetuneConfig(
        epochs=epochs,
        boxes_per_image=boxes_per_image,
        lr=lr,
        seed=seed,
        threads=threads,
        max_steps=max_steps or None,
    )
    module, hist = finetune(train, src, cfg, log=typer.echo)
    record = training_record(
        cfg, hist, cohort=str(manifest), split=split or None, rows=len(train), cv=None
    )
    folder = store_finetuned(module, src, record)
    typer.echo(f"fine-tuned LiteMedSAM: {folder} ({hist['cpu_seconds']:.0f} s CPU)")
    typer.echo(f"wrote {add_finetuned(out, folder)}")


def register(app: typer.Typer) -> None:
    """Add ``buscad segment`` to the top-level app."""
    app.add_typer(segment_app, name="segment")


__all__ = ["register", "segment_app"]
