"""Commands ``train``, ``compare-backbones``, ``features``, ``export-onnx``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from buscad.models.registry import REGISTRY

#: Every registered backbone, for the help screens (the registry loads without PyTorch).
BACKBONE_NAMES: tuple[str, ...] = tuple(REGISTRY)
BACKBONE_HELP = "Backbone: one of " + ", ".join(BACKBONE_NAMES) + "."


def split_note(df: object, val_fraction: float, seed: int) -> str | None:
    """The one line ``buscad train`` prints when it makes its own validation split, else None.

    With ``val`` rows in the ``split`` column those are the validation set and
    nothing is said; otherwise :func:`buscad.models.train.split_train_val` holds
    out ``val_fraction`` of the patient groups of each class.
    """
    cols = getattr(df, "columns", [])
    if "split" in cols and (df["split"].astype(str).str.lower() == "val").any():  # type: ignore[index]
        return None
    rows = (
        "every row is training data"
        if "split" not in cols
        else "the rows with split = train are training data (no split = val rows)"
    )
    group = next((c for c in ("group", "patient_id", "image_id") if c in cols), "image_id")
    return (
        f"note: {'no split column' if 'split' not in cols else 'no validation rows'}: {rows}, "
        f"and {val_fraction:.0%} of the {group} groups of each class (seed {seed}) are held out "
        "for validation; for a grouped split by patient and near-duplicates run "
        "`buscad data audit` then `buscad data split` first"
    )


def _allow_download(flag: object) -> None:
    """``--download-weights``: let :func:`buscad.models.weights.resolve_imagenet` fetch."""
    if flag:
        from buscad.models.weights import DOWNLOAD_ENV

        os.environ[DOWNLOAD_ENV] = "1"


def _config(**kw: object):
    from buscad.models.train import TrainConfig

    _allow_download(kw.pop("download_weights", False))
    pre = kw.pop("pretrained")
    kw["pretrained"] = None if pre in ("random", "none") else pre
    kw["weights_file"] = str(kw.pop("weights")) if kw.get("weights") else None
    kw.pop("weights", None)
    kw["progress"] = False if kw.pop("quiet") else None  # None: shown (the CLI reports)
    return TrainConfig(**kw)


def register(app: typer.Typer) -> None:
    """Add the deep-model commands to the top-level app."""

    @app.command("train")
    def train_cmd(
        manifest: Path = typer.Argument(
            ...,
            help="Manifest; its split column says the training (train) and validation (val) "
            "rows; without one, buscad holds out validation groups itself and says so.",
        ),
        backbone: str = typer.Option("efficientnet_lite0", help=BACKBONE_HELP),
        out: Path = typer.Option(Path("runs/train"), "-o", "--out", help="Output folder."),
        pretrained: str = typer.Option("imagenet", help="imagenet | random | PATH to weights."),
        weights: Path | None = typer.Option(None, help="Local ImageNet weights file."),
        download_weights: bool = typer.Option(
            False,
            "--download-weights",
            help="If no ImageNet weights are found locally, let torchvision/timm download them "
            "(needs internet access; off by default).",
        ),
        epochs: int = typer.Option(30),
        batch_size: int = typer.Option(16),
        lr: float = typer.Option(3e-4, help="Peak AdamW learning rate."),
        weight_decay: float = typer.Option(0.01),
        patience: int = typer.Option(6, help="Early stopping on validation AUC."),
        input_size: int | None = typer.Option(None, help="Default: the backbone's."),
        roi: str = typer.Option("roi", help="roi (mask box + margin) | whole"),
        margin: float = typer.Option(0.1),
        seed: int = typer.Option(0),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        max_steps: int | None = typer.Option(None, help="Stop after this many steps."),
        num_threads: int | None = typer.Option(None, help="torch CPU threads."),
        augment: bool = typer.Option(True, help="Seeded ultrasound augmentations."),
        layer_decay: float | None = typer.Option(
            None, help="Layer-wise lr decay per backbone stage (e.g. 0.7); default off."
        ),
        mixup: float = typer.Option(0.0, help="Mixup Beta(alpha, alpha) (e.g. 0.2); 0 is off."),
        us_augment: bool = typer.Option(
            False,
            help="Add usaugment's depth attenuation, shadow, haze, speckle, gain, resolution.",
        ),
        balance_by: str | None = typer.Option(
            None, help="Manifest column (e.g. cohort) for column x class balanced sampling."
        ),
        quiet: bool = typer.Option(False, help="No progress output."),
    ) -> None:
        """Fine-tune one backbone with the studies' head on the manifest's split."""
        opts = dict(locals())
        from buscad.data.manifest import Manifest
        from buscad.models.train import train_model

        cfg = _config(**{k: v for k, v in opts.items() if k not in ("manifest", "out")})
        m = Manifest.load(manifest)
        note = split_note(m.df, cfg.val_fraction, cfg.seed)
        if note and os.environ.get("RANK", "0") == "0":
            typer.echo(note, err=True)
        res = train_model(m, cfg, out)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
            return
        for s in res.skipped:
            typer.echo(f"skipped {s}", err=True)
        typer.echo(
            f"best epoch {res.best_epoch}, validation AUC {res.best_val_auc:.4f}; "
            f"checkpoint {res.checkpoint}"
        )

    @app.command("compare-backbones")
    def compare_cmd(
        manifest: Path = typer.Argument(..., help="Manifest with a split column (train/test)."),
        backbones: str = typer.Option(
            ..., help="Comma-separated backbones, each one of " + ", ".join(BACKBONE_NAMES) + "."
        ),
        out: Path = typer.Option(Path("runs/compare"), "-o", "--out"),
        pretrained: str = typer.Option("imagenet", help="imagenet | random"),
        weights: Path | None = typer.Option(
            None, help="Local ImageNet weights file (tried for every backbone)."
        ),
        download_weights: bool = typer.Option(
            False,
            "--download-weights",
            help="If no ImageNet weights are found locally, let torchvision/timm download them "
            "(needs internet access; off by default).",
        ),
        epochs: int = typer.Option(30),
        batch_size: int = typer.Option(16),
        lr: float = typer.Option(3e-4),
        weight_decay: float = typer.Option(0.01),
        patience: int = typer.Option(6),
        input_size: int | None = typer.Option(None),
        roi: str = typer.Option("roi"),
        margin: float = typer.Option(0.1),
        seed: int = typer.Option(0),
        device: str = typer.Option("auto"),
        max_steps: int | None = typer.Option(None),
        num_threads: int | None = typer.Option(None),
        augment: bool = typer.Option(True),
        quiet: bool = typer.Option(False),
    ) -> None:
        """Train each backbone on the same split; write the comparison table and ROC curves."""
        opts = dict(locals())
        from buscad.data.manifest import Manifest
        from buscad.models.select import compare_backbones, to_markdown
        from buscad.models.train import parse_backbones

        names = parse_backbones(backbones)
        cfg = _config(
            **{
                k: v
                for k, v in locals().items()
                if k not in ("manifest", "out", "backbones", "names")
            }
        )
        table = compare_backbones(Manifest.load(manifest), names, cfg, out)
        typer.echo(to_markdown(table))
        typer.echo(f"wrote {out / 'comparison.csv'}, {out / 'comparison.md'}, {out / 'roc.png'}")

    @app.command("features")
    def features_cmd(
        manifest: Path = typer.Argument(...),
        out: Path = typer.Option(..., "-o", "--out", help="Output .parquet file."),
        checkpoint: Path | None = typer.Option(None, help="Trained checkpoint (JSON or stem)."),
        backbone: str | None = typer.Option(
            None, help="Instead of --checkpoint: " + BACKBONE_HELP[0].lower() + BACKBONE_HELP[1:]
        ),
        pretrained: str = typer.Option(
            "imagenet", help="Weights of --backbone: imagenet, random or a weights file."
        ),
        weights: Path | None = typer.Option(None),
        download_weights: bool = typer.Option(
            False,
            "--download-weights",
            help="If no ImageNet weights are found locally, let torchvision/timm download them "
            "(needs internet access; off by default).",
        ),
        roi: str = typer.Option("roi"),
        margin: float = typer.Option(0.1),
        batch_size: int = typer.Option(32),
    ) -> None:
        """Pooled backbone (penultimate) features to Parquet, keyed by image_id."""
        _allow_download(download_weights)
        from buscad.data.manifest import Manifest
        from buscad.models.features import extract_features, write_features

        model, pre = model_and_preprocessor(checkpoint, backbone, pretrained, weights, roi, margin)
        table, skipped = extract_features(model, Manifest.load(manifest), pre, batch_size)
        for s in skipped:
            typer.echo(f"skipped {s}", err=True)
        p = write_features(table, out)
        typer.echo(f"wrote {len(table)} x {table.shape[1] - 1} features to {p}")

    @app.command("export-onnx")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="Trained checkpoint (JSON or stem)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output .onnx file."),
        check: bool = typer.Option(True, help="Compare ONNX Runtime and PyTorch on random inputs."),
        explain: bool = typer.Option(
            False,
            help="Add 'features' (deep features) and 'cam' (Grad-CAM) outputs; for backbones whose "
            "Grad-CAM layer is average-pooled into the head.",
        ),
    ) -> None:
        """Export a trained model to ONNX (softmax probabilities, dynamic batch)."""
        import numpy as np

        from buscad._compat import torch
        from buscad.models.checkpoint import load_checkpoint
        from buscad.models.onnx import OnnxClassifier, export_onnx

        model, spec = load_checkpoint(checkpoint)
        size = spec["preprocessing"]["input_size"]
        from buscad.errors import ConfigError

        try:
            p = export_onnx(model, out, size, spec, explain=explain)
        except ValueError as exc:
            raise ConfigError("--explain", str(exc)) from exc
        msg = f"wrote {p}"
        if check:
            x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                ref = model.predict_proba(x).numpy()
            diff = float(np.abs(OnnxClassifier(p).predict_proba(x) - ref).max())
            msg += f"; max |ONNX - PyTorch| probability difference {diff:.2e}"
        typer.echo(msg)


def model_and_preprocessor(checkpoint, backbone, pretrained, weights, roi, margin):
    from buscad.errors import ConfigError
    from buscad.models.checkpoint import load_checkpoint
    from buscad.models.preprocess import Preprocessor
    from buscad.models.registry import create_backbone, get_spec

    if checkpoint is not None:
        model, spec = load_checkpoint(checkpoint)
        return model, Preprocessor.from_dict(spec["preprocessing"])
    if backbone is None:
        raise ConfigError("--checkpoint", "give --checkpoint or --backbone")
    s = get_spec(backbone)
    model = create_backbone(
        backbone,
        pretrained=None if pretrained in ("random", "none") else pretrained,
        weights_file=str(weights) if weights else None,
    ).eval()
    return model, Preprocessor(
        roi=roi, margin=margin, input_size=s.input_size, mean=s.mean, std=s.std
    )
