"""``buscad study init``: a commented study config written for the user's own manifests.

:func:`study_template` reads each manifest (every one must load), names the
cohorts, and fills the clinical, lexicon and reader columns the manifests
actually have (under their own spelling: a ``BI-RADS`` header is named as such),
leaving out the models nothing feeds. Paths are written relative to the config
file's folder, as :func:`buscad.config.load_config` reads them. The text is
validated by loading it back before :func:`write_study_template` writes it
(atomically, never over an existing file unless asked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from buscad.config import ClinicalConfig, StudyConfig, config_from_dict
from buscad.errors import ConfigError
from buscad.utils import atomic_write_text

#: Settings of ``--quick``: a first look at the whole pipeline in minutes on a laptop CPU.
QUICK = {"input_size": 64, "epochs": 2, "selection_folds": 2, "cv_folds": 3, "gallery_size": 4}
#: Bookkeeping columns of importers, the audit, splits and phantoms: never suggested as inputs.
_BOOKKEEPING = {
    "image_height",
    "image_width",
    "has_colour",
    "burned_in",
    "phantom_source",
    "has_annotations",
    "has_colour_box",
    "dup_group",
    "group",
    "split",
    "cv_fold",
    "deep_fold",
    "eval_cohort",
    "device",
}


@dataclass(frozen=True)
class _Cohort:
    name: str
    role: str
    path: Path
    rows: int
    labels: dict[str, int]
    columns: tuple[str, ...]


def _cohort_name(df, path: Path, taken: set[str]) -> str:
    names = df["cohort"].dropna().astype(str).unique() if "cohort" in df else []
    if len(names) == 1 and names[0].strip():
        base = names[0].strip()
    elif path.stem.lower().startswith("manifest") and path.parent.name:
        folders = [q.name for q in path.resolve().parents if q.name]
        generic = {"data", "manifests", "manifest", "tables"}
        base = next((f for f in folders if f.lower() not in generic), folders[0])
    else:
        base = path.stem
    base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in base) or "cohort"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _read(manifests: list[Path], externals: list[Path]) -> list[_Cohort]:
    from buscad.data.manifest import Manifest

    out, taken = [], set()
    for role, paths in (("development", manifests), ("external", externals)):
        for p in paths:
            man = Manifest.load(p)
            df = man.df
            out.append(
                _Cohort(
                    _cohort_name(df, Path(p), taken),
                    role,
                    Path(p).resolve(),
                    len(df),
                    {str(k): int(v) for k, v in df["label"].value_counts().items()},
                    tuple(map(str, df.columns)),
                )
            )
    return out


def _find(columns: list[str], wanted: str) -> str | None:
    """The manifests' own spelling of a contract column (``BI-RADS`` for ``birads``), or None."""
    from buscad.data.manifest import canonical_column

    if wanted in columns:
        return wanted
    return next((c for c in columns if canonical_column(c) == wanted), None)


def _flow(items: list[str]) -> str:
    return yaml.safe_dump(list(items), default_flow_style=True, width=10_000).strip()


def study_template(
    manifests: list[Path],
    out: Path,
    externals: list[Path] | None = None,
    name: str | None = None,
    quick: bool = False,
) -> str:
    """The commented YAML of a study over ``manifests`` (development) and ``externals``.

    Parameters
    ----------
    manifests, externals : list of path
        Manifests of the development and external cohorts (each must load).
    out : path
        Where the config will be written: paths in it are relative to its folder.
    name : str, optional
        Study name (default: ``out``'s stem).
    quick : bool
        Small inputs, few epochs and folds (:data:`QUICK`): a first look in minutes.

    Returns
    -------
    str
        The config text; it loads with :func:`buscad.config.config_from_dict`.

    Raises
    ------
    ManifestError
        A manifest is missing or malformed.
    """
    from buscad.data.manifest import LEXICON_COLUMNS
    from buscad.models.registry import list_backbones

    if not manifests:
        raise ConfigError("--manifest", "give at least one development manifest")
    cohorts = _read(list(manifests), list(externals or []))
    folder = Path(out).resolve().parent
    columns = list(dict.fromkeys(c for co in cohorts for c in co.columns))
    age = _find(columns, "age")
    clinical = [age] if age else []
    defaults = ClinicalConfig().us_columns
    lexicon = [c for c in (_find(columns, w) for w in defaults) if c]
    reader = _find(columns, "birads")
    masks = "mask_path" in columns
    contract = {"image_id", "image_path", "mask_path", "label", "patient_id", "cohort"}
    used = {*clinical, *lexicon, *([reader] if reader else [])}
    others = [
        c
        for c in columns
        if c not in (contract | _BOOKKEEPING | used | set(LEXICON_COLUMNS) | {"birads", "age"})
    ]
    models = list(StudyConfig.model_fields["models"].default)
    left_out = []
    if not clinical:
        left_out.append("clinical and cldlr: no age column (add clinical columns below)")
        models = [m for m in models if m not in ("clinical", "cldlr")]
    if not lexicon:
        left_out.append("us: no BI-RADS lexicon column (the reader's BI-RADS is not an input)")
        models = [m for m in models if m != "us"]
    if not masks:
        left_out.append("radiomics and outline: no mask_path column (no lesion outlines)")
        models = [m for m in models if m not in ("radiomics", "outline")]
    study = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in (name or Path(out).stem))

    def c(code: str, comment: str = "") -> str:
        return f"{code:<31s}  # {comment}" if comment else code

    lines = [
        f"# Study config written by `buscad study init` for {len(cohorts)} manifest(s).",
        "# Every key and its default: docs/config.md (or `buscad study reference`).",
        f"# Check it (seconds): buscad study check {Path(out).name}",
        f"# Run it:             buscad study run {Path(out).name} -o runs/{study}",
        f"name: {study}",
        "seed: 0",
        c("cohorts:", "manifest paths are relative to this file's folder"),
    ]
    for co in cohorts:
        rel = Path(os.path.relpath(co.path, folder)).as_posix()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(co.labels.items()))
        what = (
            "pooled, audited, split into training and internal test"
            if co.role == "development"
            else "only predicted: never trained or tuned on"
        )
        lines += [
            c(f"  - name: {co.name}", f"{co.rows} rows: {counts}"),
            c(f"    role: {co.role}", what),
            f"    manifest: {rel}",
        ]
    lines += [
        "audit:",
        c("  duplicates: drop_conflicts", "keep | keep_one | drop_conflicts (always reported)"),
        "split:",
        c("  test_size: 0.3", "internal test, grouped by patient and near-duplicate group"),
        c(f"  cv_folds: {QUICK['cv_folds'] if quick else 5}", "grouped CV on the training rows"),
        f"models: {_flow(models)}",
    ]
    lines += [f"# left out: {x}" for x in left_out]
    lines += [
        "deep:",
        c("  backbones: [efficientnet_lite0]", "compared by grouped CV; the best is kept"),
        "  # known backbones: " + ", ".join(list_backbones()),
    ]
    if not masks:
        lines.append(c("  roi: whole", "no masks: the whole image"))
    if quick:
        lines += [
            "  # --quick: a first look in minutes. For the study itself delete the next three",
            "  # lines (defaults: input_size 224, epochs 8, selection_folds 3), cv_folds above",
            "  # (default 5) and gallery_size below (default 8).",
            f"  input_size: {QUICK['input_size']}",
            f"  epochs: {QUICK['epochs']}",
            f"  selection_folds: {QUICK['selection_folds']}",
        ]
    lines += [
        c("radiomics: {}", "buscad's own settings; to change them, copy"),
        "# configs/radiomics.yaml beside this file and write radiomics: {params: radiomics.yaml}",
        "clinical:",
        c(
            f"  columns: {_flow(clinical)}",
            "clinical model and CLDLR" if clinical else "no age column found",
        ),
    ]
    if others:
        lines.append(
            "  # other columns in the manifests (add any that is a clinical variable): "
            + ", ".join(others)
        )
    lines.append(
        c(
            f"  us_columns: {_flow(lexicon)}",
            "BI-RADS lexicon" if lexicon else "no lexicon column found",
        )
    )
    if reader:
        lines.append(
            c(f"  reader_column: {reader}", "the radiologist's BI-RADS, beside the models")
        )
    else:
        lines.append(c("  reader_column: null", "no BI-RADS column: no reader comparison"))
    lines += [
        c(
            f"gallery_size: {QUICK['gallery_size'] if quick else 8}",
            "Grad-CAM cases: half correct, half not",
        ),
        "",
    ]
    text = "\n".join(lines)
    config_from_dict(yaml.safe_load(text), base_dir=folder, source=out)  # never write a bad one
    return text


def write_study_template(
    manifests: list[Path],
    out: Path,
    externals: list[Path] | None = None,
    name: str | None = None,
    quick: bool = False,
    force: bool = False,
) -> Path:
    """Write :func:`study_template` to ``out`` atomically.

    Raises
    ------
    ConfigError
        ``out`` exists and ``force`` is false.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(out, "already exists; pass --force to overwrite it")
    text = study_template(manifests, out, externals, name=name, quick=quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, text)
