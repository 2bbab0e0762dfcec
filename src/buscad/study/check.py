"""The whole-config check that runs before any stage: every problem at once, one line each.

:func:`check_study` looks at what the config points at, in seconds and without
running anything: each cohort's manifest exists and reads (with its resolved
path when not), the backbones are registered, the params, weights and segmenter
files exist, and every clinical, lexicon and reader column named in the config is
a column of the manifests (with a "did you mean" from the columns they have), unless
it is computed from each row's outline (``morph_*``, mask geometry:
:func:`buscad.bundle.bundle.is_computed`).
Problems are errors (the study does not start: :func:`require_valid` raises
:class:`~buscad.errors.ConfigProblems` listing them all); what only changes what
the study can show (no reader column, so no reader comparison) is a note.

Each message is ``"<key>: <problem>"``, the key as in the YAML (``cohorts.1.manifest``,
``clinical.columns.0``); :class:`~buscad.errors.ConfigProblems` prefixes the file.
``buscad study check CONFIG`` prints them; ``buscad study run`` checks first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from buscad.config import StudyConfig
from buscad.errors import ConfigError, ConfigProblems, InputFileError
from buscad.utils import did_you_mean

if TYPE_CHECKING:
    import pandas as pd

#: Models that read ``clinical.columns``.
CLINICAL_MODELS = ("clinical", "cldlr")


@dataclass
class CohortInfo:
    """What the check learnt about one cohort (``rows`` is None for a phantom not made yet)."""

    name: str
    role: str
    source: str
    columns: tuple[str, ...]
    rows: int | None = None
    labels: dict[str, int] = field(default_factory=dict)
    table: pd.DataFrame | None = None


@dataclass
class CheckResult:
    """Errors (the study cannot start), notes (it can, with less) and the cohorts seen."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cohorts: list[CohortInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors


def _relative_hint(cfg: StudyConfig, given: Path | str) -> str:
    if Path(str(given)).expanduser().is_absolute():
        return ""
    return f" (relative paths are read from the config file's folder, {cfg.base_dir})"


def _cohorts(cfg: StudyConfig, res: CheckResult) -> None:
    from buscad.data.manifest import Manifest
    from buscad.data.phantom import MANIFEST_COLUMNS

    for i, c in enumerate(cfg.cohorts):
        if c.phantom is not None:
            res.cohorts.append(CohortInfo(c.name, c.role, "phantom", MANIFEST_COLUMNS))
            continue
        assert c.manifest is not None  # the schema asks for one of the two
        path = cfg.resolve(c.manifest)
        key = f"cohorts.{i}.manifest"
        if path is None or not path.is_file():
            res.errors.append(
                f"{key}: cohort '{c.name}': file not found: {path}"
                + _relative_hint(cfg, c.manifest)
            )
            continue
        try:
            man = Manifest.load(path)
        except InputFileError as exc:
            res.errors.append(f"{key}: cohort '{c.name}': {exc}")
            continue
        df = man.df
        labels = df["label"].value_counts().to_dict()
        info = CohortInfo(c.name, c.role, str(path), tuple(map(str, df.columns)), len(df))
        info.labels = {str(k): int(v) for k, v in labels.items()}
        info.table = df
        res.cohorts.append(info)
        if not any(info.labels.get(lab, 0) for lab in c.labels):
            res.errors.append(
                f"{key}: cohort '{c.name}': no {' or '.join(c.labels)} rows in {path} "
                f"(labels: {', '.join(f'{k} {v}' for k, v in info.labels.items()) or 'none'})"
            )
    dev = [x for x in res.cohorts if x.role == "development" and x.rows is not None]
    if dev and len(dev) == sum(c.role == "development" for c in cfg.cohorts):
        for lab in ("benign", "malignant"):
            if not sum(x.labels.get(lab, 0) for x in dev):
                res.errors.append(
                    f"cohorts: the development cohorts ({', '.join(x.name for x in dev)}) hold no "
                    f"{lab} rows: a model needs both classes to learn from"
                )
    if cfg.reverse_external and not any(c.role == "external" for c in cfg.cohorts):
        res.errors.append("reverse_external: needs at least one external cohort")


def _files(cfg: StudyConfig, res: CheckResult) -> None:
    from buscad.models.registry import ALIASES, REGISTRY

    known = [*REGISTRY, *ALIASES]
    for j, b in enumerate(cfg.deep.backbones):
        if b not in known:
            hint = did_you_mean(b, known)
            res.errors.append(
                f"deep.backbones.{j}: unknown backbone {b!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (known: {', '.join(REGISTRY)})"
            )
    for b, w in cfg.deep.weights.items():
        if b not in known:
            res.errors.append(f"deep.weights.{b}: unknown backbone {b!r}")
        p = cfg.resolve(w)
        if p is None or not p.is_file():
            res.errors.append(f"deep.weights.{b}: file not found: {p}" + _relative_hint(cfg, w))
    if cfg.radiomics.params is not None:
        p = cfg.resolve(cfg.radiomics.params)
        if p is None or not p.is_file():
            res.errors.append(
                f"radiomics.params: file not found: {p}"
                + _relative_hint(cfg, cfg.radiomics.params)
                + "; leave the key out to use buscad's own settings"
            )
        else:
            from buscad.radiomics.extract import load_params

            try:
                load_params(p)
            except ConfigError as exc:
                res.errors.append(f"radiomics.params: {exc}")
    if cfg.medsam.folder is not None and "medsam" in cfg.models:
        p = cfg.resolve(cfg.medsam.folder)
        if p is None or not (p / "encoder.onnx").is_file() or not (p / "litemedsam.json").is_file():
            res.errors.append(
                f"medsam.folder: no encoder.onnx and litemedsam.json in {p}"
                + _relative_hint(cfg, cfg.medsam.folder)
                + "; leave the key out to use the packaged LiteMedSAM"
            )
    if cfg.segment.model is not None:
        p = cfg.resolve(cfg.segment.model)
        if p is None or not (p / "segmenter.json").is_file():
            what = "folder not found" if p is None or not p.exists() else "no segmenter.json in"
            res.errors.append(
                f"segment.model: {what}: {p}" + _relative_hint(cfg, cfg.segment.model)
            )
    if cfg.integrated.models is not None and "integrated" in cfg.models:
        for k, m in enumerate(cfg.integrated.models):
            if m not in cfg.models:
                res.errors.append(
                    f"integrated.models.{k}: '{m}' is not built (add it to models, or leave it out here)"
                )


def _present(res: CheckResult, col: str) -> tuple[list[CohortInfo], list[CohortInfo]]:
    """Cohorts that have the column, and those that do not."""
    have = [c for c in res.cohorts if col in c.columns]
    lack = [c for c in res.cohorts if col not in c.columns]
    return have, lack


def _where(cohorts: list[CohortInfo]) -> str:
    if len(cohorts) == 1:
        c = cohorts[0]
        return f"cohort '{c.name}' ({c.source})"
    return "cohorts " + ", ".join(f"'{c.name}'" for c in cohorts)


def _absent(col: str, res: CheckResult) -> str:
    """``"'Age' is not a column of cohort 'dev' (...); did you mean 'age'?"``."""
    columns = list(dict.fromkeys(c for info in res.cohorts for c in info.columns))
    hint = did_you_mean(col, columns)
    tail = (
        f"; did you mean {hint!r}?"
        if hint
        else f" (its columns: {', '.join(columns[:40])}{', ...' if len(columns) > 40 else ''})"
    )
    return f"{col!r} is not a column of {_where(res.cohorts)}{tail}"


def _columns(cfg: StudyConfig, res: CheckResult) -> None:
    from buscad.bundle.bundle import is_computed

    if not res.cohorts:
        return  # no manifest could be read: their columns are unknown
    bal = cfg.deep.balance_by
    if bal and bal != "cohort":  # the study adds `cohort` itself
        dev = [c for c in res.cohorts if c.role == "development"]
        if any(bal not in c.columns for c in dev):
            res.errors.append(f"deep.balance_by: {_absent(bal, res)}")
    cl = cfg.clinical
    explicit = cl.model_fields_set
    for key, cols, used in (
        ("clinical.columns", cl.columns, any(m in cfg.models for m in CLINICAL_MODELS)),
        ("clinical.us_columns", cl.us_columns, "us" in cfg.models),
    ):
        name = key.split(".")[1]
        if name not in explicit:
            if used and not any(_present(res, c)[0] or is_computed(c) for c in cols):
                which = "clinical model and CLDLR" if name == "columns" else "US (lexicon) model"
                res.notes.append(
                    f"{key}: none of {', '.join(cols)} is a column of {_where(res.cohorts)}, "
                    f"so the {which} will not be built"
                )
            continue
        for k, c in enumerate(cols):
            if is_computed(c):  # morph_* and mask geometry: computed from each row's outline
                continue
            have, lack = _present(res, c)
            if not have:
                res.errors.append(f"{key}.{k}: {_absent(c, res)}")
            elif lack:
                res.notes.append(
                    f"{key}.{k}: {c!r} is not a column of {_where(lack)}: missing there"
                )
    reader = cl.reader_column
    if reader is None:
        return
    have, lack = _present(res, reader)
    if not have:
        if "reader_column" in explicit:
            res.errors.append(f"clinical.reader_column: {_absent(reader, res)}")
        else:
            res.notes.append(
                f"clinical.reader_column: no '{reader}' column in the manifests, so there is no "
                "reader comparison (name the radiologist's BI-RADS column in "
                "clinical.reader_column, or set it to null)"
            )
    elif lack:
        res.notes.append(
            f"clinical.reader_column: {reader!r} is not a column of {_where(lack)}: the reader "
            "is compared on the other cohorts only"
        )


def check_study(cfg: StudyConfig) -> CheckResult:
    """Check a validated config against the files and columns it names.

    Parameters
    ----------
    cfg : StudyConfig
        From :func:`buscad.config.load_config` or :func:`~buscad.config.config_from_dict`.

    Returns
    -------
    CheckResult
        ``errors`` and ``notes`` as ``"<key>: <problem>"`` lines, and the cohorts read.
    """
    res = CheckResult()
    _cohorts(cfg, res)
    _files(cfg, res)
    _columns(cfg, res)
    return res


def require_valid(cfg: StudyConfig) -> CheckResult:
    """:func:`check_study`, raising when there is any error.

    Raises
    ------
    ConfigProblems
        Every error, one line each, naming the config file and the key.
    """
    res = check_study(cfg)
    if res.errors:
        raise ConfigProblems(cfg.source or cfg.base_dir / "<config>", res.errors)
    return res
