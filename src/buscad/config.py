"""Study configuration: one YAML file describes a whole study.

:class:`StudyConfig` is a pydantic model; unknown keys are refused and every
error names the file and the offending key path, one line per problem, e.g.::

    my_study.yaml: deep.epoch: unknown key; did you mean 'epochs'?
    my_study.yaml: models.1: unknown value 'magic'; did you mean 'dlr'? (one of: deep, ...)

What needs the files the config points at (manifests exist and hold the named
columns, backbones are known, params files read) is checked by
:func:`buscad.study.check.check_study` before any stage runs.

Paths inside the config (manifests, radiomics params, segmenter, weights) are
relative to the config file's folder. Every key has a description;
:func:`config_reference` renders them as ``docs/config.md``.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from buscad.data.manifest import LEXICON_COLUMNS
from buscad.errors import ConfigError, ConfigProblems
from buscad.utils import did_you_mean

ModelName = Literal[
    "deep", "radiomics", "dlr", "clinical", "us", "cldlr", "outline", "medsam", "integrated"
]
#: Where the lesion outline every mask-reading model uses comes from.
RoiMode = Literal["expert", "auto", "box"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PhantomCohort(_Strict):
    """Generate a phantom cohort instead of reading a manifest (demo and tests)."""

    n: int = Field(
        120, ge=4, description="Primary phantom images (planted near-duplicates come on top)."
    )
    seed: int = Field(0, description="Seed of the generator: the same seed gives the same files.")
    size: tuple[int, int] = Field((224, 256), description="Image size `[height, width]` in pixels.")
    malignant_fraction: float = Field(0.4, gt=0, lt=1, description="Share of malignant lesions.")
    duplicate_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of images given a re-cropped near-duplicate."
    )
    conflict_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of those near-duplicates given the other label."
    )
    annotation_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of images with burned-in calipers and text."
    )
    colour_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of images with a Doppler-like colour box."
    )
    atypical: float = Field(
        0.12, ge=0, le=0.5, description="Share of lesions that look like the other class."
    )


class CohortConfig(_Strict):
    """One cohort of the study.

    ``role: development`` cohorts are pooled, audited and split into training
    and internal validation (grouped by patient and near-duplicate group);
    ``role: external`` cohorts are only ever predicted, never trained or tuned on.
    """

    name: str = Field(description="Cohort name, shown in every table (unique in the study).")
    role: Literal["development", "external"] = Field(
        "development",
        description="`development`: pooled, audited and split into training and internal test; "
        "`external`: only predicted, never trained or tuned on.",
    )
    manifest: Path | None = Field(
        None,
        description="The cohort's manifest (CSV or Parquet, see the README's data contract), "
        "relative to the config file's folder. Give `manifest` or `phantom`.",
    )
    phantom: PhantomCohort | None = Field(
        None, description="Generate a phantom cohort instead (demo and tests)."
    )
    labels: list[Literal["benign", "malignant"]] = Field(
        ["benign", "malignant"],
        description="Labels kept; other rows (e.g. `normal`) are left out of the study.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CohortConfig:
        if (self.manifest is None) == (self.phantom is None):
            raise ValueError("give exactly one of 'manifest' or 'phantom'")
        return self


class AuditConfig(_Strict):
    """What the audit does with what it finds (findings are always reported).

    ``duplicates``: ``keep`` (grouped splits already keep them on one side),
    ``keep_one`` (keep one image per near-duplicate group), or
    ``drop_conflicts`` (drop groups whose members carry different labels).
    """

    duplicates: Literal["keep", "keep_one", "drop_conflicts"] = Field(
        "drop_conflicts",
        description="Near-duplicate groups: `keep` (grouped splits keep each on one side), "
        "`keep_one` (one image per group), `drop_conflicts` (drop groups whose members carry "
        "different labels).",
    )
    drop_colour: bool = Field(
        False, description="Drop images with colour overlays (Doppler boxes, coloured marks)."
    )
    drop_annotated: bool = Field(False, description="Drop images with burned-in calipers or text.")
    shortcut_warning_auc: float = Field(
        0.8,
        ge=0.5,
        le=1.0,
        description="Warn when mask geometry or image size alone reaches this cross-validated AUC.",
    )


class SplitConfig(_Strict):
    """Internal validation of the development cohorts: grouped holdout (7:3 as in the studies)."""

    test_size: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Share of the development rows held out as internal test (whole patient and "
        "near-duplicate groups, stratified by label).",
    )
    cv_folds: int = Field(
        5,
        ge=2,
        le=20,
        description="Grouped CV folds on the training rows: out-of-fold scores of the classical "
        "and fusion models (those on deep features use `deep.selection_folds`).",
    )


class DeepConfig(_Strict):
    """Fine-tuned backbones compared on the training set; the best by CV AUC is kept."""

    backbones: list[str] = Field(
        ["efficientnet_lite0"],
        description="CNN backbones compared by grouped CV on the training rows; the best by "
        "out-of-fold AUC is refit on all of them.",
    )
    pretrained: Literal["imagenet", "none"] = Field(
        "imagenet",
        description="`imagenet`: start from ImageNet weights found on this machine (shipped for "
        "efficientnet_lite0/1/2; RcdNet always starts from scratch); `none`: random weights.",
    )
    weights: dict[str, Path] = Field(
        {},
        description="Backbone name → ImageNet weights file (relative to the config's folder), "
        "for backbones whose weights are not installed.",
    )
    input_size: int = Field(224, ge=32, le=1024, description="Square input side in pixels.")
    roi: Literal["mask", "whole"] = Field(
        "mask",
        description="`mask`: the lesion's bounding box plus `margin`; `whole`: the whole image.",
    )
    margin: float = Field(
        0.1, ge=0, le=1, description="Margin around the lesion box, as a share of its size."
    )
    epochs: int = Field(
        8, ge=1, description="Most training epochs (early stopping may end sooner)."
    )
    batch_size: int = Field(16, ge=1, description="Images per training step.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (AdamW).")
    selection_folds: int = Field(
        3,
        ge=2,
        description="Grouped CV folds of the backbone comparison; the chosen backbone's fold "
        "CNNs also give the out-of-fold scores of the models on its features (DLR, CLDLR).",
    )
    patience: int = Field(3, ge=1, description="Early-stopping patience in epochs.")
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the backbone stage at depth d from the head "
        "trains at `lr` × layer_decay^d (e.g. 0.7); leave out for one `lr` everywhere.",
    )
    mixup: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Mixup's Beta(α, α) parameter (e.g. 0.2): training batches and their labels "
        "are mixed; 0 is off.",
    )
    us_augment: bool = Field(
        False,
        description="Add ultrasound augmentations of the `usaugment` package (depth attenuation, "
        "shadow, haze, speckle reduction) and gain, speckle noise and resolution loss to the "
        "training crops.",
    )
    balance_by: str | None = Field(
        None,
        description="A manifest column (e.g. `cohort`): training batches are drawn so that every "
        "(value × class) cell weighs the same, instead of class-weighting the loss.",
    )
    gradcam: Literal["gradcam", "gradcam++", "hirescam"] = Field(
        "gradcam", description="Explanation method of the galleries and the bundle's heatmaps."
    )


class RadiomicsConfig(_Strict):
    """Radiomics features → ICC stability filter → z-score → redundancy → LASSO → logistic."""

    params: Path | None = Field(
        None,
        description="pyradiomics params YAML, relative to the config's folder; default: the "
        "settings buscad ships (a copy to start from: `configs/radiomics.yaml`).",
    )
    icc_threshold: float = Field(
        0.75,
        ge=0,
        le=1,
        description="Keep features whose ICC(3,1) between the original and the eroded/dilated "
        "masks is at least this.",
    )
    shape_features: bool = Field(
        True,
        description="Use shape2D features (`false` leaves out the outline's shape, e.g. when "
        "hand-drawn masks are a shortcut).",
    )
    rho_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Of two features with Spearman |rho| above this, the redundant one is dropped.",
    )


class MedSAMConfig(_Strict):
    """The ``medsam`` model: LiteMedSAM's image embedding pooled inside, around and below the
    outline (:mod:`buscad.segment.medsam_features`) → z-score → L2 logistic regression, C by
    inner grouped CV. Opt-in: list ``medsam`` in ``models``."""

    folder: Path | None = Field(
        None,
        description="A converted LiteMedSAM folder (`encoder.onnx` + `litemedsam.json`), relative "
        "to the config's folder; `null`: the packaged checkpoint, converted once into buscad's "
        "cache (needs PyTorch the first time).",
    )
    cache: Path | None = Field(
        None,
        description="Embedding cache folder (`null`: `<buscad cache>/litemedsam/embeddings`); "
        "an image is encoded once per encoder graph.",
    )
    threads: int = Field(1, ge=1, description="ONNX Runtime threads of the encoder.")


class ClinicalConfig(_Strict):
    """Clinical and conventional-ultrasound (BI-RADS lexicon) columns, and the reader.

    ``columns`` feed the clinical and CLDLR models, ``us_columns`` (the BI-RADS
    lexicon descriptors) the US model. ``reader_column`` holds the radiologist's
    own BI-RADS category: it is evaluated beside the models as the reader
    comparison and, by default (``reader_as_input: false``), no model reads it, so
    no model's score folds in the radiologist's call. ``reader_as_input: true``
    makes it an input of the US model too; every model that then reads it is
    labelled "uses the reader's BI-RADS" (report, model card, bundle, app) and the
    integrated model is also fitted without those models
    (``integrated_without_reader``).
    """

    columns: list[str] = Field(
        ["age"],
        description="Manifest columns of the clinical model and CLDLR (numeric or categorical). "
        "Named in the config, a column absent from every manifest is an error; absent from some "
        "cohorts, it is missing there.",
    )
    p_threshold: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Univariate P value below which a clinical column enters the model.",
    )
    us_columns: list[str] = Field(
        [*LEXICON_COLUMNS, "halo", "skin_thickening"],
        description="BI-RADS lexicon columns of the US model. The default list names every "
        "lexicon column and uses those the manifests have; named in the config, a column absent "
        "from every manifest is an error.",
    )
    reader_column: str | None = Field(
        "birads",
        description="The radiologist's BI-RADS column, evaluated beside the models as "
        "'reader BI-RADS' and never a model input unless `reader_as_input`. `null`: no reader. "
        "Named in the config and absent from every manifest, an error; left at the default and "
        "absent, a note: no reader comparison.",
    )
    reader_as_input: bool = Field(
        False,
        description="Let models read the reader's BI-RADS (the US model, and the integrated "
        "model through it); they are then labelled so in the report, model card, bundle and "
        "app, and the integrated model without it is fitted beside.",
    )

    @model_validator(mode="after")
    def _reader(self) -> ClinicalConfig:
        if self.reader_as_input and not self.reader_column:
            raise PydanticCustomError("reader", "reader_as_input: true needs a reader_column")
        if self.reader_column and not self.reader_as_input:
            for key in ("columns", "us_columns"):
                if self.reader_column in getattr(self, key):
                    raise PydanticCustomError(
                        "reader",
                        "{key} lists '{col}', the reader's BI-RADS (reader_column); set "
                        "reader_as_input: true to let models read it",
                        {"key": key, "col": self.reader_column},
                    )
        return self


class SegmentTrainConfig(_Strict):
    """Segmenters trained inside the study (``segment.train``): one per CV fold and one on all
    training rows of each arm (:class:`buscad.segment.train.TrainConfig` settings); with
    ``roi: expert`` only the one on all training rows, for the bundle."""

    input_size: int = Field(128, ge=32, le=1024, description="Square input side in pixels.")
    epochs: int = Field(20, ge=1, description="Training epochs.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (`null`: no limit)."
    )
    batch_size: int = Field(8, ge=1, description="Images per training step.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    pretrained: Literal["imagenet", "random"] = Field(
        "imagenet", description="Encoder initialisation."
    )
    threads: int | None = Field(
        None, ge=1, description="PyTorch threads while training (`null`: PyTorch's default)."
    )


class SegmentConfig(_Strict):
    """The lesion segmenter used by ``roi: auto`` and ``roi: box`` (:mod:`buscad.segment`).

    Either ``model``, a segmenter folder (``segmenter.json`` + ``.onnx`` or
    ``.safetensors``) trained on other data, applied to every row, training rows
    included: a documented simplification of out-of-fold outlines (the segmenter
    never saw these cohorts, so training rows get the same kind of outline noise as
    deployment); the study records the segmenter's training data. Or ``train``:
    segmenters trained inside the study on each arm's training rows; a training row
    of CV fold k is outlined by the one trained on the other folds (out-of-fold), test
    and external rows by the one trained on all training rows (also the bundle's).
    With ``roi: expert`` and ``train``, the models read the expert masks and only the
    segmenter on all training rows is trained: the bundle carries it, so ``buscad
    predict`` and the web app outline a lesion that comes without a mask.
    ``box_jitter``: in ``roi: box`` each side of the expert box (the mask's bounding
    box) moves by up to this fraction of the box width/height (seeded) before prompting.
    """

    model: Path | None = Field(
        None,
        description="A segmenter folder trained on other data (`buscad segment train`), "
        "relative to the config's folder.",
    )
    train: SegmentTrainConfig | None = Field(
        None,
        description="Train segmenters inside the study instead (out-of-fold outlines; with "
        "`roi: expert`, one on all training rows for the bundle).",
    )
    box_jitter: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="`roi: box`: each side of the expert box moves by up to this share of its "
        "size (seeded) before prompting.",
    )
    threads: int = Field(1, ge=1, description="Threads of the outline stage.")

    @model_validator(mode="after")
    def _one(self) -> SegmentConfig:
        if self.model is not None and self.train is not None:
            raise ValueError("give segment.model or segment.train, not both")
        return self


class IntegratedConfig(_Strict):
    """How the integrated model fuses the single models (:class:`buscad.classical.StackingIntegrator`).

    ``weights: fit`` (default) learns a logistic regression on the models' inner
    out-of-fold ``stack_method`` values (``proba`` or ``logit``), with
    ``positive: true`` keeping every weight ≥ 0: ``logit P = b0 + Σ_m b_m logit p_m``,
    ``b_m ≥ 0``, minimising ``Σ_i logloss_i + ||b||² / (2C)``. ``weights: equal``
    averages the logits instead, ``logit P = (1/M) Σ_m logit p_m`` (nothing
    learnt). ``weights: cross_cohort`` fits the same non-negative logistic
    regression on leave-one-cohort-out scores when the arm has two or more
    development cohorts: each single model trained on the other cohorts scores the
    held-out one, so the weights reward what transfers to a new scanner and a model
    that does not help across cohorts gets weight 0 (with one development cohort it
    falls back to grouped CV and the report says so). The default, ``fit``, learns
    its weights from the training rows' own (fold-clean) out-of-fold scores, so no
    fusion weight is ever set by a cohort a study reports as external
    (``benchmarks/results/external.md`` compares the fusions under the protocol that
    chooses without the external rows). ``models`` names the single
    models fused (default: every single model built). No model reads the
    reader's BI-RADS unless ``clinical.reader_as_input: true``; then the
    integrated model that fuses a reader-reading model is fitted a second time
    without them (``integrated_without_reader``), so the report shows both.
    """

    weights: Literal["equal", "fit", "cross_cohort"] = Field(
        "fit",
        description="`fit`: a logistic regression on the single models' inner out-of-fold "
        "scores (grouped CV of the pooled training rows); `equal`: the mean of their logits "
        "(nothing learnt); `cross_cohort`: a non-negative logistic regression on their "
        "leave-one-cohort-out scores (each model trained on the other development cohorts "
        "scores the held-out one; grouped CV when there is one development cohort).",
    )
    stack_method: Literal["proba", "logit"] = Field(
        "logit", description="`weights: fit` or `cross_cohort`: stack probabilities or logits."
    )
    positive: bool = Field(
        True, description="`weights: fit`: keep every weight ≥ 0 (`cross_cohort`: always)."
    )
    C: float = Field(
        1.0, gt=0, description="`weights: fit` or `cross_cohort`: inverse regularisation strength."
    )
    models: list[ModelName] | None = Field(
        None,
        description="Single models fused (`null`: every single model built, except the US "
        "model when it reads the reader's BI-RADS).",
    )

    @field_validator("models")
    @classmethod
    def _bases(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and ("integrated" in v or len(v) < 2):
            raise ValueError("give two or more single models")
        return v


class EvaluationConfig(_Strict):
    """Statistics: threshold rule (chosen on training data only) and CI method."""

    threshold: str = Field(
        "youden",
        description="Decision threshold, chosen on the training cohort's out-of-fold scores and "
        "applied unchanged elsewhere: `youden`, `sens:0.95`, `spec:0.9` or `fixed:0.5`.",
    )
    ci: Literal["delong", "bootstrap"] = Field(
        "delong", description="AUC confidence intervals: DeLong or stratified bootstrap."
    )

    @field_validator("threshold")
    @classmethod
    def _rule(cls, v: str) -> str:
        if v == "youden" or v.startswith(("sens:", "spec:", "fixed:")):
            return v
        raise ValueError("threshold must be 'youden', 'sens:0.95', 'spec:0.9' or 'fixed:0.5'")


class StudyConfig(_Strict):
    """A whole study: cohorts, audit policy, models, statistics.

    ``reverse_external: true`` adds the opposite direction (train on the external
    cohorts, validate on the development ones), e.g. BUSI→BrEaST and BrEaST→BUSI.
    """

    name: str = Field("study", description="Study name: report title, default run folder.")
    seed: int = Field(0, description="Seed of the split, the folds and every model.")
    cohorts: list[CohortConfig] = Field(
        description="The cohorts, each from a `manifest` (or a `phantom`); at least one "
        "`development` cohort."
    )
    audit: AuditConfig = Field(AuditConfig(), description="What the audit does with its findings.")
    split: SplitConfig = Field(SplitConfig(), description="Internal test split and CV folds.")
    models: list[ModelName] = Field(
        ["deep", "radiomics", "dlr", "clinical", "us", "cldlr", "outline", "integrated"],
        description="Models built: `deep` (fine-tuned CNN), `radiomics`, `dlr` (deep features → "
        "SVM), `clinical`, `us` (BI-RADS lexicon), `cldlr` (clinical + deep features), "
        "`outline` (the outline's geometry and echo ratios), `medsam` (LiteMedSAM embedding "
        "features; opt-in), `integrated` (fusion).",
    )
    deep: DeepConfig = Field(DeepConfig(), description="The CNN backbones and their training.")
    radiomics: RadiomicsConfig = Field(
        RadiomicsConfig(), description="Radiomics extraction and feature selection."
    )
    medsam: MedSAMConfig = Field(
        MedSAMConfig(), description="The LiteMedSAM embedding features of the `medsam` model."
    )
    clinical: ClinicalConfig = Field(
        ClinicalConfig(), description="Clinical, lexicon and reader columns."
    )
    integrated: IntegratedConfig = Field(
        IntegratedConfig(), description="How the integrated model fuses the single models."
    )
    evaluation: EvaluationConfig = Field(
        EvaluationConfig(), description="Threshold rule and confidence intervals."
    )
    gallery_size: int = Field(
        8, ge=0, description="Grad-CAM gallery cases per arm (half correct, half incorrect)."
    )
    reverse_external: bool = Field(
        False,
        description="Also run the opposite direction: train on the external cohorts, validate on "
        "the development ones.",
    )
    roi: RoiMode | list[RoiMode] = Field(
        "expert",
        description="Where lesion outlines come from: `expert` (the manifest's masks), `auto` "
        "(the segmenter alone), `box` (the segmenter prompted by the mask's box); a list "
        "compares them (docs/segmentation.md).",
    )
    segment: SegmentConfig = Field(
        SegmentConfig(), description="The segmenter of `roi: auto` and `roi: box`."
    )
    base_dir: Path = Field(default=Path("."), exclude=True)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cohorts(self) -> StudyConfig:
        names = [c.name for c in self.cohorts]
        if len(set(names)) != len(names):
            raise ValueError(f"cohort names must be unique, got {names}")
        if not any(c.role == "development" for c in self.cohorts):
            raise ValueError("at least one cohort needs role 'development'")
        modes = self.roi_modes
        if len(set(modes)) != len(modes) or not modes:
            raise ValueError(f"roi: give each of expert, auto, box at most once, got {modes}")
        if any(m != "expert" for m in modes) and (
            self.segment.model is None and self.segment.train is None
        ):
            raise ValueError(
                "roi: auto and box need segment.model (a segmenter folder) or segment.train "
                "(segmenters trained per fold inside the study)"
            )
        return self

    @property
    def roi_modes(self) -> list[str]:
        """The ROI modes run, in config order (``roi: expert`` -> ``["expert"]``)."""
        return [self.roi] if isinstance(self.roi, str) else list(self.roi)

    def resolve(self, p: Path | str | None) -> Path | None:
        """Resolve a config-relative path."""
        if p is None:
            return None
        q = Path(os.path.expanduser(str(p)))
        return q if q.is_absolute() else (self.base_dir / q).resolve()


def _clean_loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """The key path of a pydantic error without its union-member tags (``literal[...]``)."""
    return tuple(x for x in err.get("loc", ()) if isinstance(x, int) or "[" not in str(x))


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(x) for x in _clean_loc(err)) or "<root>"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model holding the last key of a pydantic error location."""
    model: type[BaseModel] | None = StudyConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        inner = _models_in(field.annotation) if field is not None else []
        model = inner[0] if inner else None
    return model


def _problem(err: dict[str, Any]) -> str:
    """One pydantic error as ``"<key>: <problem>"``, with a did-you-mean where it helps."""
    loc = _clean_loc(err)
    kind = err.get("type")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        model = _model_at(loc)
        hint = did_you_mean(str(loc[-1]), model.model_fields) if model is not None and loc else None
        known = [k for k, f in model.model_fields.items() if not f.exclude] if model else []
        msg = "unknown key" + (
            f"; did you mean {hint!r}?"
            if hint
            else f" (keys here: {', '.join(known)})"
            if known
            else ""
        )
    elif kind == "literal_error":
        expected = str((err.get("ctx") or {}).get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(",")]
        hint = did_you_mean(str(err.get("input")), [o for o in options if o])
        msg = f"unknown value {err.get('input')!r}" + (f"; did you mean {hint!r}?" if hint else "")
        msg += f" (one of: {', '.join(o for o in options if o)})"
    elif kind == "missing":
        msg = "required key missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{_loc(err)}: {msg}"


def load_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study YAML file.

    Raises
    ------
    ConfigError
        Missing file or bad YAML; :class:`~buscad.errors.ConfigProblems` (a
        ``ConfigError``) for unknown keys or bad values: every one, a line each,
        naming the file and the key path.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(p, "config file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(p, f"not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(p, "the config must be a mapping of keys to values")
    return config_from_dict(raw, base_dir=p.parent.resolve(), source=p)


def config_from_dict(
    raw: dict[str, Any],
    base_dir: str | os.PathLike[str] = ".",
    source: str | os.PathLike[str] = "<config>",
) -> StudyConfig:
    """Validate a config mapping (see :func:`load_config`).

    Raises
    ------
    ConfigProblems
        Every unknown key and bad value, one ``"<key>: <problem>"`` each.
    """
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        seen: set[tuple[Any, ...]] = set()
        problems = []
        for e in exc.errors():  # a value failing every member of a union: its first reason only
            if _clean_loc(e) not in seen:
                seen.add(_clean_loc(e))
                problems.append(_problem(e))
        raise ConfigProblems(source, problems) from exc
    cfg.base_dir = Path(base_dir).resolve()
    cfg.source = Path(source)
    return cfg


# ============================================================== reference
def _type_name(annotation: Any) -> str:
    """A config field's type in words: ``list of str``, ``one of: a, b``, ``path or null``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return f"[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    names = {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _yaml_value(v: Any) -> str:
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, tuple):
        v = list(v)
    text = yaml.safe_dump(v, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def config_reference() -> str:
    """Every study-config key as Markdown (``docs/config.md``): key, type, default, description.

    Generated from the pydantic models above, so it cannot disagree with what
    :func:`load_config` accepts (``tests/test_config_reference.py`` checks the file is current;
    ``buscad study reference -o docs/config.md`` rewrites it).
    """
    from buscad.models.registry import ALIASES, list_backbones

    out = [
        "# Study config reference",
        "",
        "<!-- generated by `buscad study reference -o docs/config.md` from src/buscad/config.py;"
        " do not edit by hand -->",
        "",
        "A study config is one YAML file (`buscad study run CONFIG`); `buscad study init` writes "
        "a commented one for your manifests and `buscad study check CONFIG` checks it, and the "
        "files it names, in seconds. Paths are relative to the config file's folder. Unknown "
        "keys are refused. Keys left out take the default below.",
        "",
        f"Backbones (`deep.backbones`): {', '.join(f'`{b}`' for b in list_backbones())} "
        f"(aliases: {', '.join(f'`{a}`' for a in ALIASES)}).",
        "",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        out.extend([f"## `{prefix}`" if prefix else "## Top level", "", doc, ""])
        out.extend(["| key | type | default | description |", "|---|---|---|---|"])
        nested = []
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            key = f"{prefix}.{name}" if prefix else name
            if f.is_required():
                default = "required"
            elif _models_in(f.annotation) and f.get_default() is not None:
                default = "see below"
            else:
                default = f"`{_yaml_value(f.get_default())}`"
            desc = (f.description or "").replace("|", "\\|")
            typ = _type_name(f.annotation).replace("|", "\\|")
            out.append(f"| `{key}` | {typ} | {default} | {desc} |")
            for sub in _models_in(f.annotation):
                origin = typing.get_origin(f.annotation)
                nested.append((sub, key + ("[]" if origin is list else "")))
        out.append("")
        for sub, key in nested:
            section(sub, key)

    section(StudyConfig, "")
    return "\n".join(out).rstrip() + "\n"
