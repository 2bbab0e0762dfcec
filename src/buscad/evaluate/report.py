"""Write an :class:`~buscad.evaluate.result.EvaluationResult`: tables, figures, model
card, TRIPOD+AI checklist and one self-contained HTML report.

``result.py`` calls this module (``EvaluationResult.write``), so this module does not
import ``result.py``, not even for type checking: it reads a result through
:class:`EvaluationOutputs`, the part of an ``EvaluationResult`` a report needs.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from buscad.evaluate import plots
from buscad.evaluate.tables import TABLE2_METRICS, fmt_ci, fmt_p, write_table
from buscad.labels import model_label
from buscad.report import (
    Bullets,
    Collapsed,
    Figure,
    FigureRow,
    Html,
    KeyValue,
    Section,
    Table,
    Text,
    build_report,
    environment_info,
    model_card,
    model_card_blocks,
    model_card_markdown,
    tripod_ai_checklist,
)
from buscad.utils import atomic_write_text


class EvaluationOutputs(Protocol):
    """What the writer reads of an :class:`~buscad.evaluate.result.EvaluationResult`."""

    data: pd.DataFrame
    models: list[str]
    cohorts: list[str]
    train_cohort: str
    threshold_rule: str
    thresholds: dict[str, float]
    metrics: pd.DataFrame
    comparisons: pd.DataFrame
    cohort_comparisons: pd.DataFrame
    calibration_curves: dict[tuple[str, str], pd.DataFrame]
    decision_curves: dict[str, pd.DataFrame]
    issues: list[str]
    config: dict[str, Any]

    def table1(self) -> pd.DataFrame: ...

    def table2(self) -> pd.DataFrame: ...

    def table3(self) -> pd.DataFrame: ...

    def threshold_text(
        self, model: str, value: float | None = None, short: bool = False
    ) -> str: ...


#: Table 2's AUC column (the summary table shows it per model and cohort).
TABLE2_AUC = TABLE2_METRICS["auc"]

METHODS_TEXT = (
    "AUC: Mann–Whitney estimate with a {ci} 95% confidence interval (DeLong et al., 1988; "
    "pROC conventions). Proportions (accuracy, sensitivity, specificity, PPV, NPV): Wilson "
    "score 95% intervals. Each model's decision threshold was chosen on the cohort "
    "'{train}' by the rule '{rule}' and applied unchanged to every other cohort (never "
    "re-tuned on a test cohort); a case is called malignant when score >= threshold.\n\n"
    "Comparisons: paired DeLong test for two AUCs on the same cases; unpaired DeLong test "
    "(Welch–Satterthwaite t) for one model between cohorts; McNemar's test with continuity "
    "correction for paired decisions at the chosen thresholds.\n\n"
    "Calibration (models whose scores are probabilities): Brier score; calibration slope "
    "(logistic regression of the outcome on logit(p)) and intercept (calibration-in-the-large, "
    "logit(p) as offset); Hosmer–Lemeshow test over 10 groups by deciles of predicted risk, "
    "chi-square with g − 2 df. Decision curves: net benefit TP/N − FP/N · pt/(1 − pt) against "
    "treat-all and treat-none.\n\n"
    "Table 1: continuous variables as mean ± SD with Welch's t test (ANOVA for > 2 cohorts) "
    "when every cohort passes Shapiro–Wilk (P > 0.05), else median [IQR] with Mann–Whitney U "
    "(Kruskal–Wallis); categorical variables as n (%) with the chi-square test, or Fisher's "
    "exact test when an expected count is below 5 in a 2 × 2 table."
)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "x"


def _cohort_order(result: EvaluationOutputs) -> list[str]:
    """Cohorts as the report shows them: the threshold-selection (training) cohort first."""
    return sorted(result.cohorts, key=lambda c: c != result.train_cohort)


def _split_description(result: EvaluationOutputs) -> pd.DataFrame:
    d = result.data
    col = result.config["cohort_col"]
    rows = []
    for c in result.cohorts:
        sub = d[d[col] == c]
        rows.append(
            {
                "Cohort": c,
                "Role": "threshold selection (training)"
                if c == result.train_cohort
                else "evaluation",
                "Cases": len(sub),
                "Malignant": int(sub["_y"].sum()),
                "Benign": int(len(sub) - sub["_y"].sum()),
                "Prevalence": f"{sub['_y'].mean():.3f}" if len(sub) else "n/a",
            }
        )
    return pd.DataFrame(rows)


def _tripod_known(result: EvaluationOutputs, has_audit: bool, split_text: str) -> dict[str, str]:
    ci = result.config["ci_method"]
    known = {
        "data_sources": "Cohorts and case counts: section 'Data and split'.",
        "outcome": "Reference label column "
        f"'{result.config['label_col']}' (1 = malignant, 0 = benign).",
        "sample_size": "Cases and malignant events per cohort: section 'Data and split' "
        "(no formal sample-size calculation by the run).",
        "missing_data": "Cases without a label or score are left out, each reported in "
        "'Issues'; paired comparisons use complete cases.",
        "data_use": f"Threshold chosen on '{result.train_cohort}', applied unchanged to "
        f"the other cohorts. {split_text}".strip(),
        "performance_measures": f"AUC ({ci} CI), accuracy, sensitivity, specificity, PPV, "
        "NPV (Wilson CIs), F1, Brier, calibration slope/intercept, "
        "Hosmer–Lemeshow, net benefit; DeLong and McNemar tests. "
        "See 'Methods'.",
        "predictions": "Per-case scores supplied in the predictions table.",
        "class_imbalance": "Prevalence per cohort reported (section 'Data and split'); "
        "no resampling by the evaluation.",
        "model_output": f"Scores; thresholds chosen by rule '{result.threshold_rule}' on "
        f"'{result.train_cohort}' (section 'Thresholds').",
        "flow": "Case counts and exclusions: 'Data and split' and 'Issues'.",
        "characteristics": "Table 1 (per cohort).",
        "comparison": "Table 1 P values compare cohorts.",
        "events": "Cases and events per cohort and model: Table 2 'n (malignant)'.",
        "performance": "Table 2 (95% CIs).",
        "performance_heterogeneity": "Table 2 per cohort; unpaired DeLong tests between "
        "cohorts ('Comparisons').",
        "code_sharing": "buscad version and package versions: 'Configuration and environment'.",
    }
    if has_audit:
        known["data_preparation"] = "Data audit summary: section 'Data audit'."
    if len(result.cohorts) > 1:
        known["heterogeneity"] = "Metrics reported per cohort (Table 2)."
    return known


def write_evaluation_outputs(
    result: EvaluationOutputs,
    out_dir: Path,
    *,
    title: str = "buscad evaluation report",
    audit_summary: pd.DataFrame | Mapping[str, Any] | str | None = None,
    split_description: str = "",
    input_hashes: Mapping[str, str] | None = None,
    intended_use: str = "",
    limitations: Sequence[str] = (),
    seed: int | None = None,
    extra_sections: Sequence[Section] = (),
    model_details: Mapping[str, Mapping[str, str]] | None = None,
    notice: str = "",
) -> dict[str, list[Path]]:
    """Write every output of an evaluation under ``out_dir`` and return the paths by kind.

    Layout: ``tables/`` (Table 1–3, raw metrics, comparisons, TRIPOD+AI checklist;
    CSV, XLSX, Markdown), ``figures/`` (PNG and SVG), ``model_card.md``,
    ``config.json``, ``issues.txt`` and ``report.html``. ``model_details`` adds
    lines to a model's card (model -> {field: text}, e.g. that it reads the
    reader's BI-RADS). ``notice`` is a sentence the summary opens with, on the first
    screen (e.g. that the data are synthetic phantoms and the radiologist simulated).
    """

    out_dir.mkdir(parents=True, exist_ok=True)
    tdir, fdir = out_dir / "tables", out_dir / "figures"
    written: dict[str, list[Path]] = {"tables": [], "figures": [], "report": [], "other": []}
    t1, t2, t3 = result.table1(), result.table2(), result.table3()
    written["tables"] += write_table(t1, tdir / "table1_baseline")
    written["tables"] += write_table(t2, tdir / "table2_metrics")
    written["tables"] += write_table(t3, tdir / "table3_delong")
    written["tables"] += write_table(result.metrics, tdir / "metrics_raw", formats=("csv",))
    if len(result.comparisons):
        written["tables"] += write_table(
            result.comparisons, tdir / "comparisons_paired", formats=("csv", "md")
        )
    if len(result.cohort_comparisons):
        written["tables"] += write_table(
            result.cohort_comparisons, tdir / "comparisons_between_cohorts", formats=("csv", "md")
        )

    # figures, grouped by kind (one per cohort side by side), every model by its plain name
    d, col = result.data, result.config["cohort_col"]
    figs: dict[str, list[Figure]] = {"roc": [], "calibration": [], "decision": [], "confusion": []}
    m = result.metrics
    for c in _cohort_order(result):
        sub = d[d[col] == c]
        mc = m[m["cohort"] == c] if len(m) else m
        scored = {mod: sub[mod].notna() for mod in result.models}
        both = [
            mod for mod in result.models if 0 < sub.loc[scored[mod], "_y"].sum() < scored[mod].sum()
        ]
        if both:
            aucs = {
                r["model"]: fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"])
                for _, r in mc.iterrows()
                if r["model"] in both
            }
            roc_data = {
                model_label(k): (
                    sub.loc[scored[k], "_y"].to_numpy(),
                    sub.loc[scored[k], k].to_numpy(float),
                )
                for k in both
            }
            fig = plots.plot_roc(
                roc_data,
                {model_label(k): v for k, v in aucs.items()},
                f"ROC — {c}",
                {model_label(k): v for k, v in result.thresholds.items()},
            )
            paths = plots.save_figure(fig, fdir / f"roc_{_safe(c)}")
            written["figures"] += paths
            figs["roc"].append(
                Figure(
                    paths[0],
                    f"ROC curves, cohort {c} (n={len(sub)}; each model on the cases it "
                    "scored); filled markers: operating points at the thresholds.",
                )
            )
        curves = {
            model_label(mod): result.calibration_curves[(c, mod)]
            for mod in result.models
            if (c, mod) in result.calibration_curves
        }
        if curves:
            paths = plots.save_figure(
                plots.plot_calibration(curves, f"Calibration — {c}"),
                fdir / f"calibration_{_safe(c)}",
            )
            written["figures"] += paths
            figs["calibration"].append(
                Figure(
                    paths[0],
                    f"Reliability curves, cohort {c}: one panel per model whose scores are "
                    "probabilities (equal-size bins; Wilson 95% CIs; dotted: ideal).",
                )
            )
        if c in result.decision_curves:
            dc = result.decision_curves[c]
            paths = plots.save_figure(
                plots.plot_decision_curve(
                    dc,
                    f"Decision curve — {c}",
                    {k: model_label(k) for k in pd.unique(dc["strategy"])},
                ),
                fdir / f"decision_curve_{_safe(c)}",
            )
            written["figures"] += paths
            figs["decision"].append(Figure(paths[0], f"Decision curves, cohort {c}."))
        if len(mc):
            panels = [
                (
                    f"{model_label(r['model'])}\n{result.threshold_text(r['model'], r['threshold'])}",
                    r["tp"],
                    r["fp"],
                    r["tn"],
                    r["fn"],
                )
                for _, r in mc.iterrows()
                if r["n"] > 0  # a model not evaluable in the cohort has no confusion matrix
            ]
            paths = plots.save_figure(
                plots.plot_confusion_grid(panels, f"Confusion matrices — {c}"),
                fdir / f"confusion_{_safe(c)}",
            )
            written["figures"] += paths
            figs["confusion"].append(
                Figure(
                    paths[0],
                    f"Confusion matrices, cohort {c}: one panel per model at its threshold "
                    "(counts and row percentages).",
                )
            )

    # model card and checklist
    thr_text = {
        mod: f"malignant when {result.threshold_text(mod)} (rule {result.threshold_rule}, "
        f"chosen on {result.train_cohort})"
        for mod in result.thresholds
    }
    lims = list(limitations) or [
        "Performance is reported only for the cohorts evaluated here; other scanners, sites "
        "and populations may differ.",
        "Thresholds were chosen on one cohort; their sensitivity/specificity trade-off may "
        "shift with prevalence and case mix.",
    ]
    cards, card_blocks = [], []
    for mod in result.models:
        card = model_card(
            model_label(mod),
            intended_use=intended_use,
            data=", ".join(
                f"{r['Cohort']}: {r['Cases']} cases ({r['Malignant']} malignant)"
                for _, r in _split_description(result).iterrows()
            ),
            metrics=_t2_parts(t2[t2["Model"] == mod])[0].drop(columns="Model") if len(t2) else None,
            thresholds={mod: thr_text[mod]},
            limitations=lims,
            details={
                "score column": mod,
                "evaluated by": "buscad evaluate",
                **(model_details or {}).get(mod, {}),
            },
        )
        cards.append(model_card_markdown(card))
        card_blocks += model_card_blocks(card)
    card_path = atomic_write_text(out_dir / "model_card.md", "\n\n".join(cards))
    written["other"].append(card_path)
    split_tab = _split_description(result)
    checklist = tripod_ai_checklist(
        _tripod_known(result, audit_summary is not None, split_description)
    )
    written["tables"] += write_table(checklist, tdir / "tripod_ai_checklist")
    written["other"].append(atomic_write_text(out_dir / "config.json", config_json(result)))
    written["other"].append(
        atomic_write_text(
            out_dir / "issues.txt", "".join(f"{i}\n" for i in result.issues) or "no issues\n"
        )
    )

    # HTML report
    env = environment_info(seed=seed if seed is not None else result.config.get("seed"))
    cfg = dict(result.config)
    sections = [
        Section(
            "Summary",
            [
                *([Html(f'<p class="warn synthetic">{html.escape(notice)}</p>')] if notice else []),
                *_summary_blocks(result),
            ],
        ),
        *_figure_sections(figs),
        Section(
            "Table 2. Performance per cohort",
            [
                Table(part, cap, model_columns=["Model"])
                for part, cap in zip(
                    _t2_parts(t2),
                    (
                        "Discrimination and decisions at each model's threshold (95% CIs).",
                        "Calibration (models whose scores are probabilities; 95% CIs).",
                    ),
                    strict=False,
                )
                if len(part.columns) > 2
            ],
        ),
        Section(
            "Data and split",
            [
                Table(split_tab, "Cohorts and their roles."),
                Text(
                    split_description
                    or "Split description not supplied; cohorts are as "
                    "given in the predictions table."
                ),
            ],
        ),
        Section("Table 1. Baseline characteristics", [Table(t1)]),
        Section(
            "Thresholds",
            [
                KeyValue(
                    {f"{model_label(m)} ({m})": v for m, v in thr_text.items()},
                    "Decision thresholds per model.",
                )
            ],
        ),
        Section(
            "Table 3. Paired comparisons of models (DeLong, McNemar)",
            _table3_blocks(t3, result.comparisons),
        ),
        Section(
            "Comparisons between cohorts",
            [
                Table(
                    _fmt_unpaired(result.cohort_comparisons),
                    "Unpaired DeLong tests.",
                    model_columns=["Model"],
                )
                if len(result.cohort_comparisons)
                else Text("Only one cohort usable.")
            ],
        ),
        Section("Data audit", _audit_blocks(audit_summary)),
        Section(
            "Methods",
            [
                Text(
                    METHODS_TEXT.format(
                        ci=result.config["ci_method"],
                        train=result.train_cohort,
                        rule=result.threshold_rule,
                    )
                )
            ],
        ),
        Section(
            "Model card",
            [Collapsed(f"Show the model card of each of the {len(cards)} model(s)", card_blocks)],
        ),
        Section(
            "TRIPOD+AI checklist",
            [
                Collapsed(
                    f"Show the checklist ({len(checklist)} items)",
                    [Table(checklist, "Items the run cannot know are marked for the author.")],
                )
            ],
        ),
        Section("Issues", [Bullets(result.issues) if result.issues else Text("No issues.")]),
        Section(
            "Configuration and environment",
            [
                Collapsed(
                    "Show the configuration, input hashes and environment",
                    [
                        KeyValue(cfg, "Run configuration."),
                        KeyValue(
                            dict(input_hashes or {}) or {"inputs": "not recorded"},
                            "Input data hashes (SHA-256).",
                        ),
                        KeyValue(env, "Environment."),
                    ],
                )
            ],
        ),
        *extra_sections,
    ]
    written["report"].append(
        build_report(
            sections, out_dir / "report.html", title, subtitle="Evaluation of per-case predictions"
        )
    )
    return written


#: Figure sections of the report, in order: (key in the figure lists, section title).
FIGURE_SECTIONS = (
    ("roc", "ROC curves"),
    ("calibration", "Calibration"),
    ("decision", "Decision curves"),
    ("confusion", "Confusion matrices"),
)


def _figure_sections(figs: Mapping[str, list[Figure]]) -> list[Section]:
    """One section per kind of figure, its cohorts side by side; one note when there is none."""
    out = []
    for key, title in FIGURE_SECTIONS:
        items = figs.get(key, [])
        if not items:
            continue
        wide = key in ("calibration", "confusion")  # grids of panels: full width, one per line
        out.append(Section(title, list(items) if wide else [FigureRow(items)]))
    return out or [Section("Figures", [Text("No figure (no cohort with both classes).")])]


def _summary_blocks(result: EvaluationOutputs) -> list[Any]:
    """The bottom line: what was evaluated, and every model's AUC (95% CI) on every cohort."""
    text = Text(
        f"{len(result.models)} model(s) evaluated on {len(result.cohorts)} cohort(s) "
        f"({result.config['n_cases']} cases). Thresholds chosen on '{result.train_cohort}' "
        f"by rule '{result.threshold_rule}' and applied unchanged to the other cohorts. "
        f"{len(result.issues)} issue(s) found; see 'Issues'."
    )
    m = result.metrics
    if not len(m):
        return [text]
    t2 = result.table2()
    auc = t2.pivot(index="Model", columns="Cohort", values=TABLE2_AUC)
    auc = auc.reindex(index=[x for x in result.models if x in auc.index])
    auc = auc[[c for c in _cohort_order(result) if c in auc.columns]].fillna("not scored")
    auc = auc.reset_index()
    auc.columns.name = None
    return [
        text,
        Table(
            auc,
            "AUC (95% CI) of every model on every cohort; the full metrics are in Table 2, "
            "the paired tests in Table 3.",
            model_columns=["Model"],
        ),
    ]


def _fmt_unpaired(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Model": df["model"],
            "Cohort A": df["cohort_a"],
            "Cohort B": df["cohort_b"],
            "AUC A": df["auc1"].map("{:.3f}".format),
            "AUC B": df["auc2"].map("{:.3f}".format),
            "D": df["d"].map("{:.3f}".format),
            "df": df["df"].map("{:.1f}".format),
            "P": df["p"].map(fmt_p),
        }
    )


#: Table 2 columns shown in its second (calibration) part of the HTML report.
CALIBRATION_COLUMNS = ("Brier", "Calibration slope", "Calibration intercept", "Hosmer–Lemeshow P")


def _t2_parts(t2: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 split in two for the page width: discrimination/decisions, then calibration."""
    cal = [c for c in t2.columns if c in CALIBRATION_COLUMNS]
    keys = [c for c in ("Cohort", "Model") if c in t2.columns]
    return t2.drop(columns=cal), t2[[*keys, *cal]]


#: Most models Table 3 shows as a matrix in the report; with more, its columns would not fit an
#: A4-landscape page, so the report lists the pairs per cohort (the files keep the matrix).
MATRIX_MAX_MODELS = 6


def _table3_blocks(t3: pd.DataFrame, pairs: pd.DataFrame) -> list[Any]:
    """Table 3 as a matrix (few models) or as one table of model pairs per cohort."""
    if not len(t3):
        return [
            Text("Fewer than two models (or no cohort with both classes): no paired comparison.")
        ]
    n_models = len([c for c in t3.columns if c not in ("Cohort", "Model")])
    if n_models <= MATRIX_MAX_MODELS or not len(pairs):
        return [
            Table(
                _label_matrix(t3),
                "Above the diagonal: ΔAUC (row − column) with 95% CI and paired DeLong "
                "P; below: McNemar P of the paired decisions.",
            )
        ]
    blocks: list[Any] = []
    for cohort, g in pairs.groupby("cohort", sort=False):
        table = pd.DataFrame(
            {
                "Model": g["model_a"],
                "Compared with": g["model_b"],
                "ΔAUC (95% CI)": [
                    fmt_ci(d, lo, hi)
                    for d, lo, hi in zip(g["diff"], g["diff_lo"], g["diff_hi"], strict=True)
                ],
                "DeLong P": g["p_delong"].map(fmt_p),
                "McNemar P": g["p_mcnemar"].map(fmt_p),
            }
        ).reset_index(drop=True)
        blocks.append(
            Collapsed(
                f"Show the {len(table)} pairs of models, cohort {cohort}",
                [
                    Table(
                        table,
                        f"Cohort {cohort}: every pair of models. ΔAUC = AUC of the model − AUC of the "
                        "one it is compared with (paired DeLong 95% CI and P); McNemar P of their "
                        "decisions at each model's threshold. The same numbers as a matrix are in "
                        "tables/table3_delong.csv and .xlsx.",
                        model_columns=["Model", "Compared with"],
                    )
                ],
            )
        )
    return blocks


def _label_matrix(t3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 with plain model labels in its header and model column."""
    if not len(t3):
        return t3
    out = t3.rename(columns={c: model_label(c) for c in t3.columns})
    for c in out.columns:
        if c.lower() in ("model", "row"):
            out[c] = out[c].map(model_label)
    return out


#: Audit summary entries shown in the evaluation report, in words (the rest is in the
#: audit's own report: method parameters, timings).
AUDIT_ITEMS = {
    "n_images": "images",
    "labels": "labels",
    "cohorts": "cohorts",
    "duplicate_groups": "duplicate groups (near or exact)",
    "images_in_duplicate_groups": "images in duplicate groups",
    "conflict_groups": "duplicate groups with conflicting labels",
    "colour_overlay_images": "images with colour overlays",
    "annotated_images": "images with burned-in annotations",
    "mask_problems": "mask problems",
    "shortcuts": "shortcut AUCs (annotations alone)",
    "n_unreadable": "unreadable images",
}


def _audit_blocks(audit: Any) -> list[Any]:
    if audit is None:
        return [
            Text(
                "No data audit summary was supplied (run `buscad data audit` and pass "
                "its summary with --audit)."
            )
        ]
    if isinstance(audit, pd.DataFrame):
        return [Table(audit, "Data audit summary.")]
    if isinstance(audit, Mapping):
        known = {label: audit[k] for k, label in AUDIT_ITEMS.items() if k in audit}
        if isinstance(known.get("mask problems"), Mapping):
            known["mask problems"] = {
                str(k).removeprefix("mask_").replace("_", " "): v
                for k, v in known["mask problems"].items()
                if v
            } or "none"
        if isinstance(known.get("shortcut AUCs (annotations alone)"), Mapping):
            known["shortcut AUCs (annotations alone)"] = {
                k: f"{v:.3f}"
                for k, v in known["shortcut AUCs (annotations alone)"].items()
                if ":" not in str(k)
            }
        other = {
            str(k).replace("_", " "): v
            for k, v in audit.items()
            if k not in AUDIT_ITEMS
            and k not in ("method", "timings_s", "warnings")
            and not isinstance(v, Mapping | list)
        }
        blocks: list[Any] = [KeyValue({**known, **other}, "Data audit summary.")]
        if audit.get("warnings"):
            blocks.append(Bullets(list(audit["warnings"]), cls="issues"))
        return blocks
    return [Text(str(audit))]


def config_json(result: EvaluationOutputs) -> str:
    """The run's configuration and thresholds as JSON text."""
    obj: Mapping[str, Any] = {
        **result.config,
        "thresholds": result.thresholds,
        "issues": result.issues,
    }
    return json.dumps(obj, indent=2, default=str) + "\n"
