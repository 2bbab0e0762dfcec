"""Study configuration: one YAML file describes a whole study.

:class:`StudyConfig` is a pydantic model; unknown keys are refused and every
error names the file and the offending key path, e.g.::

    configs/busi.yaml: deep.backbones.1: unknown backbone 'resnet5' (known: alexnet, ...)

Paths inside the config (manifests, radiomics params) are relative to the
config file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from buscad.data.manifest import LEXICON_COLUMNS
from buscad.errors import ConfigError

ModelName = Literal["deep", "radiomics", "dlr", "clinical", "us", "cldlr", "outline", "integrated"]
#: Where the lesion outline every mask-reading model uses comes from.
RoiMode = Literal["expert", "auto", "box"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PhantomCohort(_Strict):
    """Generate a phantom cohort instead of reading a manifest (demo and tests)."""

    n: int = Field(120, ge=4)
    seed: int = 0
    size: tuple[int, int] = (224, 256)
    malignant_fraction: float = Field(0.4, gt=0, lt=1)
    duplicate_fraction: float = Field(0.0, ge=0, le=1)
    conflict_fraction: float = Field(0.0, ge=0, le=1)
    annotation_fraction: float = Field(0.0, ge=0, le=1)
    colour_fraction: float = Field(0.0, ge=0, le=1)
    atypical: float = Field(0.12, ge=0, le=0.5)


class CohortConfig(_Strict):
    """One cohort of the study.

    ``role: development`` cohorts are pooled, audited and split into training
    and internal validation (grouped by patient and near-duplicate group);
    ``role: external`` cohorts are only ever predicted, never trained or tuned on.
    """

    name: str
    role: Literal["development", "external"] = "development"
    manifest: Path | None = None
    phantom: PhantomCohort | None = None
    labels: list[Literal["benign", "malignant"]] = ["benign", "malignant"]

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

    duplicates: Literal["keep", "keep_one", "drop_conflicts"] = "drop_conflicts"
    drop_colour: bool = False
    drop_annotated: bool = False
    shortcut_warning_auc: float = Field(0.8, ge=0.5, le=1.0)


class SplitConfig(_Strict):
    """Internal validation of the development cohorts: grouped holdout (7:3 as in the studies)."""

    test_size: float = Field(0.3, gt=0, lt=1)
    cv_folds: int = Field(5, ge=2, le=20)


class DeepConfig(_Strict):
    """Fine-tuned backbones compared on the training set; the best by CV AUC is kept."""

    backbones: list[str] = ["efficientnet_lite0"]
    pretrained: Literal["imagenet", "none"] = "imagenet"
    weights: dict[str, Path] = {}
    input_size: int = Field(224, ge=32, le=1024)
    roi: Literal["mask", "whole"] = "mask"
    margin: float = Field(0.1, ge=0, le=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-4, gt=0)
    selection_folds: int = Field(3, ge=2)
    patience: int = Field(3, ge=1)
    gradcam: Literal["gradcam", "gradcam++", "hirescam"] = "gradcam"


class RadiomicsConfig(_Strict):
    """Radiomics features → ICC stability filter → z-score → redundancy → LASSO → logistic."""

    params: Path | None = None
    icc_threshold: float = Field(0.75, ge=0, le=1)
    shape_features: bool = True
    rho_threshold: float = Field(0.9, gt=0, le=1)


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

    columns: list[str] = ["age"]
    p_threshold: float = Field(0.05, gt=0, le=1)
    us_columns: list[str] = [*LEXICON_COLUMNS, "halo", "skin_thickening"]
    reader_column: str | None = "birads"
    reader_as_input: bool = False

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
    training rows of each arm (:class:`buscad.segment.train.TrainConfig` settings)."""

    input_size: int = Field(128, ge=32, le=1024)
    epochs: int = Field(20, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    pretrained: Literal["imagenet", "random"] = "imagenet"
    threads: int | None = Field(None, ge=1)


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
    ``box_jitter``: in ``roi: box`` each side of the expert box (the mask's bounding
    box) moves by up to this fraction of the box width/height (seeded) before prompting.
    """

    model: Path | None = None
    train: SegmentTrainConfig | None = None
    box_jitter: float = Field(0.0, ge=0, le=0.5)
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one(self) -> SegmentConfig:
        if self.model is not None and self.train is not None:
            raise ValueError("give segment.model or segment.train, not both")
        return self


class IntegratedConfig(_Strict):
    """How the integrated model fuses the single models (:class:`buscad.classical.StackingIntegrator`).

    ``weights: equal`` (default) averages the single models' logits,
    ``logit P = (1/M) Σ_m logit p_m``: nothing is learnt, so the fusion cannot
    over-fit the training cohort's idea of which model is best (on BUSI↔BrEaST
    it transferred better than a learnt stack; ``benchmarks/results/external.md``).
    ``weights: fit`` learns a logistic regression on the models' inner
    out-of-fold ``stack_method`` values (``proba`` or ``logit``), with
    ``positive: true`` keeping every weight ≥ 0. ``models`` names the single
    models fused (default: every single model built). No model reads the
    reader's BI-RADS unless ``clinical.reader_as_input: true``; then the
    integrated model that fuses a reader-reading model is fitted a second time
    without them (``integrated_without_reader``), so the report shows both.
    """

    weights: Literal["equal", "fit"] = "equal"
    stack_method: Literal["proba", "logit"] = "logit"
    positive: bool = True
    C: float = Field(1.0, gt=0)
    models: list[ModelName] | None = None

    @field_validator("models")
    @classmethod
    def _bases(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and ("integrated" in v or len(v) < 2):
            raise ValueError("integrated.models: give two or more single models")
        return v


class EvaluationConfig(_Strict):
    """Statistics: threshold rule (chosen on training data only) and CI method."""

    threshold: str = "youden"
    ci: Literal["delong", "bootstrap"] = "delong"

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

    name: str = "study"
    seed: int = 0
    cohorts: list[CohortConfig]
    audit: AuditConfig = AuditConfig()
    split: SplitConfig = SplitConfig()
    models: list[ModelName] = [
        "deep",
        "radiomics",
        "dlr",
        "clinical",
        "us",
        "cldlr",
        "outline",
        "integrated",
    ]
    deep: DeepConfig = DeepConfig()
    radiomics: RadiomicsConfig = RadiomicsConfig()
    clinical: ClinicalConfig = ClinicalConfig()
    integrated: IntegratedConfig = IntegratedConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gallery_size: int = Field(8, ge=0)
    reverse_external: bool = False
    roi: RoiMode | list[RoiMode] = "expert"
    segment: SegmentConfig = SegmentConfig()
    base_dir: Path = Field(default=Path("."), exclude=True)

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


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(x) for x in err.get("loc", ())) or "<root>"


def load_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study YAML file.

    Raises
    ------
    ConfigError
        Missing file, bad YAML, unknown keys or bad values; the message names
        the file and the key path.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(p, "config file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(p, f"not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(p, "the config must be a mapping of keys to values")
    return config_from_dict(raw, base_dir=p.parent.resolve(), source=p)


def config_from_dict(
    raw: dict[str, Any],
    base_dir: str | os.PathLike[str] = ".",
    source: str | os.PathLike[str] = "<config>",
) -> StudyConfig:
    """Validate a config mapping (see :func:`load_config`)."""
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(source, f"{_loc(first)}: {msg}{more}") from exc
    cfg.base_dir = Path(base_dir).resolve()
    return cfg
