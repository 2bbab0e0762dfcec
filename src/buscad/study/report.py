"""The study report: ``report.html`` of a run, built from the run's results.

:func:`write_study_report` takes what the runner produced (the configuration, the
outline stages, the warnings, each arm's stage results and Grad-CAM galleries, the
audit stage, the metrics and the stage summary), copies the evaluation and audit
reports into the run folder and writes the page; it runs no stage.
:mod:`buscad.study.runner` orchestrates the stages and calls it once at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from buscad.config import StudyConfig
from buscad.study.fit import INTEGRATED_WITHOUT_READER, READER_MODEL, SHORTCUT_MODELS
from buscad.study.stages import StageResult

#: Where the data audit's report is copied in the run folder (relative).
PUBLISHED_AUDIT = "audit"
#: How each outline mode is described in the report.
ROI_MODE_WORDS = {
    "expert": "Lesion outlines from the expert masks",
    "auto": "Lesion outlines drawn by the segmenter on the whole image (automatic)",
    "box": "Lesion outlines drawn by the segmenter inside a box around the expert mask",
}
#: The outline stage's summary (``roi.json``) in words, in the order shown.
ROI_SUMMARY_WORDS = {
    "rows": "images",
    "found": "lesions outlined by the segmenter",
    "whole_image_fallback": "no lesion found (whole image used)",
    "unreadable": "images that could not be read",
    "mean_confidence": "mean segmenter confidence",
    "median_dice_vs_expert": "median Dice with the expert mask",
}
#: With expert masks the segmenter's counts say nothing: images and unreadable ones only.
ROI_SUMMARY_WORDS_EXPERT = {k: ROI_SUMMARY_WORDS[k] for k in ("rows", "unreadable")}


def roi_comparison(metrics: pd.DataFrame, rois: list[Any]) -> Any:
    """Side by side: each model's AUC (95 % CI) under each ROI mode, per arm and cohort."""
    from buscad.report import Section, Table

    m = metrics[metrics["auc"].notna()].copy()
    m["auc (95% CI)"] = [
        f"{a:.3f} ({lo:.3f}–{hi:.3f})"
        for a, lo, hi in zip(m["auc"], m["auc_lo"], m["auc_hi"], strict=True)
    ]
    wide = m.pivot_table(
        index=["arm", "cohort", "model"],
        columns="roi",
        values="auc (95% CI)",
        aggfunc="first",
        sort=False,
    )
    modes = dict.fromkeys(r.mode for r in rois)
    wide = wide[[m for m in modes if m in wide.columns]]
    wide.columns = [f"roi: {c}" for c in wide.columns]
    return Section(
        "Expert vs automatic lesion outlines",
        [
            Table(
                wide.reset_index(),
                caption="AUC (95 % CI) of every model with the expert's masks and with the "
                "segmenter's outlines (same split, same settings; only the outlines differ).",
            )
        ],
    )


def roi_section(rois: list[Any], needs_morphology: bool) -> Any:
    """What each outline stage did, the outline model's training data, computed descriptors."""
    from buscad.report import KeyValue, Section, Text

    blocks: list[Any] = []
    for r in rois:
        if r.res is None:
            continue
        info = json.loads((r.res.path / "roi.json").read_text())
        seg = info.get("segmenter") or {}
        words = ROI_SUMMARY_WORDS if r.mode != "expert" else ROI_SUMMARY_WORDS_EXPERT
        flat = {
            label: info[k]
            for k, label in words.items()
            if isinstance(info.get(k), (int, float, str, bool)) and info.get(k) == info.get(k)
        }
        flat.update(
            {
                f"segmenter training: {k.replace('_', ' ')}": v
                for k, v in (seg.get("training") or {}).items()
                if isinstance(v, (int, float, str, bool))
            }
        )
        blocks.append(Text(f"{ROI_MODE_WORDS.get(r.mode, r.mode)} (roi: {r.mode})."))
        blocks.append(KeyValue(flat))
    if needs_morphology:
        blocks.append(
            Text(
                "morph_* columns are computed descriptors of the outline each model read (shape, "
                "orientation and margin by fixed geometric rules, buscad.segment.morphology; "
                "smoothed-outline shape and echo ratios, buscad.segment.descriptors); they "
                "are never the reader's BI-RADS lexicon. The outline model reads them with "
                "the outline's mask geometry."
            )
        )
    return Section("Lesion outlines", blocks)


def published_evaluation(arm: Any, roi: Any) -> str:
    """Where an arm's evaluation report is copied in the run folder (relative)."""
    return f"evaluation/{roi.tag(arm)}"


def publish(run_dir: Path, src: Path, rel: str) -> str:
    """Copy a stage's report folder into the run folder (replacing an older copy).

    Returns ``rel``, the copy's path relative to the run folder, for a report link.
    """
    import shutil

    dest = run_dir / rel
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return rel


def metrics_table(m: pd.DataFrame) -> pd.DataFrame:
    """The per-cohort metrics in words: AUC with its CI, thresholds as scores or BI-RADS cuts."""
    from buscad.data.birads import cut_words
    from buscad.evaluate.tables import NOT_EVALUABLE, cases_text, not_evaluable

    def ci(v: float, lo: float, hi: float) -> str:
        return "n/a" if pd.isna(v) else f"{v:.3f} ({lo:.3f}–{hi:.3f})"

    out = pd.DataFrame(
        {
            "Cohort": m["cohort"],
            "Model": m["model"],
            "Cases": cases_text(m),
            "AUC (95% CI)": [
                NOT_EVALUABLE if bad else ci(a, lo, hi)
                for a, lo, hi, bad in zip(
                    m["auc"], m["auc_lo"], m["auc_hi"], not_evaluable(m), strict=True
                )
            ],
        }
    )
    for c, name in (
        ("accuracy", "Accuracy"),
        ("sensitivity", "Sensitivity"),
        ("specificity", "Specificity"),
        ("ppv", "PPV"),
        ("npv", "NPV"),
        ("f1", "F1"),
    ):
        if c in m:
            out[name] = [f"{v:.3f}" if pd.notna(v) else "n/a" for v in m[c]]
    if "threshold" in m:
        out["Malignant when"] = [
            "n/a" if pd.isna(t) else cut_words(t) if mod == READER_MODEL else f"score ≥ {t:.3g}"
            for mod, t in zip(m["model"], m["threshold"], strict=True)
        ]
    return out.reset_index(drop=True)


def gallery_blocks(cases: pd.DataFrame, label: str) -> list[Any]:
    """Grad-CAM tiles, correct and incorrect apart, each with its truth, score and cohort."""
    from buscad.labels import model_label
    from buscad.report import Gallery, Tile

    if cases.empty:
        return []
    blocks: list[Any] = []
    for kind, title in (
        ("correct", "correctly classified"),
        ("incorrect", "misclassified"),
    ):
        rows = cases[cases["kind"] == kind]
        if rows.empty:
            continue
        tiles = [
            Tile(
                r.overlay,
                [
                    f"{r.image_id}: {'correct' if kind == 'correct' else 'incorrect'}",
                    f"true: {r.label}",
                    f"AI score {r.score:.2f} "
                    f"({'malignant' if r.score >= r.threshold else 'benign'} call)",
                    f"cohort: {r.cohort}",
                ],
                kind,
            )
            for r in rows.itertuples(index=False)
        ]
        thr = float(rows["threshold"].iat[0])
        blocks.append(
            Gallery(
                tiles,
                caption=f"Grad-CAM of the CNN ({model_label('deep')}), {len(tiles)} "
                f"{title} case(s) outside the training rows ({label}); a case is called "
                f"malignant when its AI score ≥ {thr:.2f}. Warm colours: where the CNN looked.",
            )
        )
    return blocks


def write_study_report(
    *,
    cfg: StudyConfig,
    run_dir: Path,
    rois: list[Any],
    warnings: list[str],
    arm_outputs: list[Any],
    galleries: list[pd.DataFrame],
    audit_res: StageResult,
    metrics: pd.DataFrame,
    stages: list[dict[str, Any]],
    needs_morphology: bool,
    bundle_flags: Sequence[str] = (),
) -> Path:
    """Write the run's ``report.html`` from its results; runs no stage.

    Parameters
    ----------
    cfg : StudyConfig
        The study's configuration.
    run_dir : Path
        The run folder (the report, and the audit and evaluation reports it links).
    rois : list of Roi
        The outline modes of the run and their outline stages.
    warnings : list of str
        The run's warnings.
    arm_outputs : list of tuple
        Per arm and outline mode: ``(arm, manifest, deep, models, evaluation, roi)``
        stage results, as the runner made them.
    galleries : list of DataFrame
        Grad-CAM cases of each entry of ``arm_outputs`` (the gallery stages' tables).
    audit_res : StageResult
        The audit stage.
    metrics : DataFrame
        Every model's metrics, per arm, outline mode and cohort.
    stages : list of dict
        The stage summary (:meth:`buscad.study.stages.StageRunner.summary`).
    needs_morphology : bool
        Whether a model reads the outline descriptors (the outline section says so).
    bundle_flags : sequence of str
        The study's checks the bundle failed (its AI calls are withheld): the bottom line's
        first warning.

    The page opens with the bottom line (:func:`bottom_line`); every other block starts
    collapsed (and prints open).

    Returns
    -------
    Path
        ``run_dir / "report.html"``.
    """
    import yaml

    from buscad.labels import READS_READER
    from buscad.report import (
        Collapsed,
        Details,
        Figure,
        FigureRow,
        KeyValue,
        Links,
        Section,
        Table,
        build_report,
    )
    from buscad.study.bottomline import arm_summary

    audit_rel = publish(run_dir, audit_res.path / "audit", PUBLISHED_AUDIT)
    sections = bottom_line(cfg, arm_outputs, metrics, warnings, bundle_flags)
    if len({r.mode for r in rois}) > 1:
        sections.append(roi_comparison(metrics, rois))
    if any(r.res is not None for r in rois):
        roi_sec = roi_section(rois, needs_morphology)
        sections.append(
            Section(roi_sec.title, [Collapsed("Show the outline stages", roi_sec.blocks)])
        )
    for (arm, _man, deep_res, cls_res, ev_res, roi), cases in zip(
        arm_outputs, galleries, strict=True
    ):
        blocks: list[Any] = []
        m = metrics[metrics["arm"] == arm.name]
        if "roi" in m:
            m = m[m["roi"] == roi.mode]
        ev_rel = publish(run_dir, ev_res.path / "evaluation", published_evaluation(arm, roi))
        blocks.append(
            Links(
                [
                    (
                        "Full evaluation report",
                        f"{ev_rel}/report.html",
                        "Tables 1–3, calibration, decision curves, confusion matrices, "
                        f"model card, TRIPOD+AI; tables as CSV/XLSX in {ev_rel}/tables",
                    )
                ]
            )
        )
        reading = reader_models(cls_res)
        more: list[Any] = [
            Table(
                metrics_table(m),
                caption="Every model on every cohort, beside the shortcut references "
                "(what the annotations alone give) and the radiologist's BI-RADS where the "
                "data has it. Thresholds chosen on the training cohort (out-of-fold scores) "
                "and applied unchanged to the other cohorts. "
                + reader_caption(cfg, reading, INTEGRATED_WITHOUT_READER in set(m["model"])),
                model_columns=["Model"],
                model_notes=dict.fromkeys(reading, READS_READER),
            )
        ]
        if deep_res is not None:
            cv = pd.read_csv(deep_res.path / "backbone_cv.csv")
            more.append(
                Table(
                    pd.DataFrame(
                        {
                            "Backbone": cv["backbone"],
                            "Out-of-fold AUC (95% CI)": [
                                f"{a:.3f} ({lo:.3f}–{hi:.3f})"
                                for a, lo, hi in zip(cv["cv_auc"], cv["lo"], cv["hi"], strict=True)
                            ],
                            "Training images": cv["n"],
                        }
                    ),
                    caption="Backbone comparison: pooled out-of-fold AUC on the training rows "
                    "(the choice is made here, never on a test cohort).",
                )
            )
        cohorts = arm_summary(arm, m, None).cohorts  # training, internal test, external
        fdir = ev_res.path / "evaluation" / "figures"
        rocs = [
            Figure(
                f,
                caption=f"ROC curves of every model, cohort {c}; filled markers: "
                "each model's operating point at its threshold.",
            )
            for c in cohorts
            if (f := fdir / f"roc_{eval_safe(c)}.png").exists()
        ]
        if rocs:
            blocks.append(FigureRow(rocs))
        blocks.append(
            Collapsed(
                f"Every model on every cohort ({len(m)} rows)"
                + (", the backbone comparison" if len(more) > 1 else ""),
                more,
            )
        )
        gallery = gallery_blocks(cases, roi.label(arm))
        if gallery:
            blocks.append(Collapsed("Grad-CAM of correct and misclassified cases", gallery))
        sections.append(Section(f"Results: {roi.label(arm)}", blocks))
    audit_sum = json.loads((audit_res.path / "audit" / "summary.json").read_text())
    from buscad.evaluate.report import _audit_blocks

    sections.append(
        Section(
            "Data audit",
            [
                Links(
                    [
                        (
                            "Data audit report",
                            f"{audit_rel}/report.html",
                            "duplicates, label conflicts, overlays, annotations, "
                            f"mask problems, shortcut AUCs; CSV tables in {audit_rel}",
                        )
                    ]
                ),
                Collapsed("Show the audit summary", _audit_blocks(audit_sum)),
            ],
        )
    )
    cfg_yaml = yaml.safe_dump(
        cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100
    )
    sections.append(
        Section(
            "Configuration",
            [
                KeyValue(
                    {
                        "study": cfg.name,
                        "seed": cfg.seed,
                        "models": cfg.models,
                        "cohorts": [f"{c.name} ({c.role})" for c in cfg.cohorts],
                    }
                ),
                Details("The whole configuration (YAML)", cfg_yaml),
            ],
        )
    )
    run = pd.DataFrame(stages)
    if len(run):
        run = pd.DataFrame(
            {
                "Stage": run["stage"],
                "Cache key": run["key"],
                "Reused from the cache": run["cached"].map({True: "yes", False: "no"}),
                "Seconds": run["seconds"],
            }
        )
    sections.append(
        Section(
            "Run",
            [
                Collapsed(
                    f"Show the {len(run)} stages",
                    [Table(run, "Stages of this run (cache/ under the run folder).")],
                )
            ],
        )
    )
    out = build_report(
        sections,
        run_dir / "report.html",
        title=f"buscad study: {cfg.name}",
        subtitle="Breast ultrasound: benign vs malignant. Research software, not a medical device.",
    )
    return out


def bottom_line(
    cfg: StudyConfig,
    arm_outputs: list[Any],
    metrics: pd.DataFrame,
    warnings: Sequence[str],
    bundle_flags: Sequence[str] = (),
) -> list[Any]:
    """The report's opening sections (:func:`buscad.study.bottomline.bottom_line_sections`).

    Per arm, the outlines the bundle reads (automatic when run, else the first mode); the
    chosen model is the headline of :func:`headline`; the synthetic-data sentence when a
    cohort is made of phantoms (:func:`buscad.study.bottomline.phantom_cohorts`).
    """
    from buscad.study.bottomline import (
        arm_summary,
        bottom_line_sections,
        phantom_cohorts,
        synthetic_text,
    )

    summaries, rows = [], []
    for arm in dict.fromkeys(o[0] for o in arm_outputs):
        mine = [o for o in arm_outputs if o[0] == arm]
        _, man, _, cls_res, _, roi = next((o for o in mine if o[5].mode == "auto"), mine[0])
        m = metrics[metrics["arm"] == arm.name]
        if "roi" in m:
            m = m[m["roi"] == roi.mode]
        summaries.append(arm_summary(arm, m, (headline(cls_res) or {}).get("model")))
        rows.append(man.df)
    pooled = pd.concat(rows, ignore_index=True).drop_duplicates("image_id")
    configured = [c.name for c in cfg.cohorts if c.phantom is not None]
    models = set(metrics["model"]) - {READER_MODEL, *SHORTCUT_MODELS}
    return bottom_line_sections(
        summaries,
        n_images=len(pooled),
        n_models=len(models),
        synthetic=synthetic_text(
            phantom_cohorts(pooled, configured),
            list(dict.fromkeys(pooled["cohort"].astype(str))),
            reader=READER_MODEL in set(metrics["model"]),
        ),
        warnings=warnings,
        bundle_flags=bundle_flags,
    )


def headline(cls_res: StageResult) -> dict[str, Any] | None:
    """The headline model from the models stage's ``fusion.json``: the integrated model, or
    its best member when the fusion loses on honest held-out scores (None without one)."""
    p = cls_res.path / "fusion.json"
    f = json.loads(p.read_text()) if p.is_file() else {}
    if not f:
        return None
    keys = ("basis", "integrated_auc", "best_member", "best_member_auc", "loses")
    return {"model": f["headline_model"], **{k: f[k] for k in keys}}


def eval_safe(name: str) -> str:
    """File-name part the evaluation gives a cohort's figures (``evaluate.report._safe``)."""
    from buscad.evaluate.report import _safe as safe

    return safe(name)


def reader_models(cls_res: StageResult) -> list[str]:
    """The models of a models stage that read the reader's BI-RADS (``clinical.reader_as_input``)."""
    f = cls_res.path / "reader_models.json"
    return list(json.loads(f.read_text())) if f.is_file() else []


def reader_caption(cfg: StudyConfig, reading: list[str], without: bool) -> str:
    """One sentence on whether any model reads the reader's BI-RADS (``without``: the
    integrated model without them was built)."""
    from buscad.labels import READS_READER, model_label

    reader = cfg.clinical.reader_column
    if not reader:
        return ""
    if not reading:
        return f"No model reads the reader's BI-RADS ('{reader}'); it is only compared."
    return (
        f"Models marked '{READS_READER}' read the radiologist's own category ('{reader}', "
        "clinical.reader_as_input: true), so their scores partly reflect the radiologist."
        + (
            f" '{model_label(INTEGRATED_WITHOUT_READER)}' ({INTEGRATED_WITHOUT_READER}) fuses "
            "the same models without them."
            if without
            else ""
        )
    )
