"""Model card and TRIPOD+AI checklist, filled with what a run knows.

Model cards follow Mitchell et al. (2019, FAT* '19). The checklist follows
the structure of TRIPOD+AI (Collins et al., BMJ 2024;385:e078378); item
descriptions here are short paraphrases; consult the published statement for
the authoritative wording. Items a run cannot know are marked for the author.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

#: Placeholder for information only the author can give.
FOR_AUTHOR = "TO BE COMPLETED BY THE AUTHOR"

#: TRIPOD+AI items: (number, section, short paraphrase, key in ``known``).
TRIPOD_AI_ITEMS: tuple[tuple[str, str, str, str], ...] = (
    (
        "1",
        "Title",
        "Identify the study as developing or evaluating a prediction model, "
        "the target population and the outcome",
        "title",
    ),
    ("2", "Abstract", "Structured summary (see TRIPOD+AI for Abstracts)", "abstract"),
    ("3a", "Background", "Healthcare context and rationale for the model", "background"),
    ("3b", "Background", "Target population and intended use in the care pathway", "intended_use"),
    ("3c", "Background", "Known health inequalities between groups", "inequalities"),
    ("4", "Objectives", "Objectives: development and/or evaluation", "objectives"),
    ("5a", "Data", "Sources of data for each dataset and why they were chosen", "data_sources"),
    ("5b", "Data", "Dates of data collection and follow-up", "dates"),
    ("6a", "Participants", "Study setting, centres and number of sites", "setting"),
    ("6b", "Participants", "Eligibility criteria", "eligibility"),
    ("6c", "Participants", "Treatments received, if relevant", "treatments"),
    (
        "7",
        "Data preparation",
        "Pre-processing and quality checks, and whether similar across groups",
        "data_preparation",
    ),
    ("8a", "Outcome", "Outcome definition, how and when assessed", "outcome"),
    (
        "8b",
        "Outcome",
        "Qualifications of outcome assessors; consistency across groups",
        "outcome_assessors",
    ),
    ("8c", "Outcome", "Blinding of outcome assessment", "outcome_blinding"),
    ("9a", "Predictors", "Choice of initial predictors", "predictors"),
    ("9b", "Predictors", "Definition and measurement of predictors", "predictor_definition"),
    ("9c", "Predictors", "Qualifications of predictor assessors", "predictor_assessors"),
    ("10", "Sample size", "How the study size was arrived at", "sample_size"),
    ("11", "Missing data", "How missing data were handled", "missing_data"),
    (
        "12a",
        "Analytical methods",
        "How data were used (development, evaluation) and the partitioning",
        "data_use",
    ),
    (
        "12b",
        "Analytical methods",
        "How predictors were handled in the analyses",
        "predictor_handling",
    ),
    (
        "12c",
        "Analytical methods",
        "Model type, building, hyperparameter tuning and internal validation",
        "model_building",
    ),
    (
        "12d",
        "Analytical methods",
        "Heterogeneity across clusters (centres, cohorts)",
        "heterogeneity",
    ),
    (
        "12e",
        "Analytical methods",
        "Performance measures with rationale; model comparison",
        "performance_measures",
    ),
    ("12f", "Analytical methods", "Model updating arising from evaluation", "updating"),
    ("12g", "Analytical methods", "For evaluation: how predictions were calculated", "predictions"),
    ("13", "Class imbalance", "Methods for class imbalance and recalibration", "class_imbalance"),
    ("14", "Fairness", "Approaches to address model fairness", "fairness"),
    ("15", "Model output", "Output of the model and rationale for any threshold", "model_output"),
    (
        "16",
        "Training versus evaluation",
        "Differences between development and evaluation "
        "data in setting, eligibility, outcome and predictors",
        "train_vs_eval",
    ),
    ("17", "Ethical approval", "Ethics committee approval and consent", "ethics"),
    ("18a", "Open science", "Funding", "funding"),
    ("18b", "Open science", "Conflicts of interest", "conflicts"),
    ("18c", "Open science", "Protocol availability", "protocol"),
    ("18d", "Open science", "Registration", "registration"),
    ("18e", "Open science", "Data sharing", "data_sharing"),
    ("18f", "Open science", "Code sharing", "code_sharing"),
    ("19", "Patient and public involvement", "Details of patient and public involvement", "ppi"),
    ("20a", "Participants", "Flow of participants and outcome counts", "flow"),
    ("20b", "Participants", "Characteristics overall and per data source", "characteristics"),
    (
        "20c",
        "Participants",
        "Comparison of development and evaluation data on key predictors",
        "comparison",
    ),
    (
        "21",
        "Model development",
        "Number of participants and outcome events in each analysis",
        "events",
    ),
    (
        "22",
        "Model specification",
        "Details of the full model for individual predictions",
        "specification",
    ),
    (
        "23a",
        "Model performance",
        "Performance estimates with confidence intervals, also for key subgroups",
        "performance",
    ),
    (
        "23b",
        "Model performance",
        "Heterogeneity of performance across clusters",
        "performance_heterogeneity",
    ),
    ("24", "Model updating", "Results of any model updating", "updating_results"),
    (
        "25",
        "Interpretation",
        "Overall interpretation, fairness in view of objectives",
        "interpretation",
    ),
    (
        "26",
        "Limitations",
        "Limitations: non-representative sample, sample size, overfitting, missing data",
        "limitations",
    ),
    (
        "27a",
        "Usability",
        "How poor quality or unavailable input data should be handled",
        "input_quality",
    ),
    (
        "27b",
        "Usability",
        "Whether users must interact with the data, and their expertise",
        "user_interaction",
    ),
    ("27c", "Usability", "Future research and generalisability", "future_research"),
)


def tripod_ai_checklist(known: Mapping[str, str] | None = None) -> pd.DataFrame:
    """TRIPOD+AI checklist with what the run knows filled in.

    Parameters
    ----------
    known : mapping
        Item key (last field of :data:`TRIPOD_AI_ITEMS`, e.g. ``"performance"``)
        to the text reporting it (usually where in the report it is).

    Returns
    -------
    pandas.DataFrame
        Columns ``Item, Section, Topic, Status, Reported``; ``Status`` is
        ``filled by run`` or ``for the author``.
    """
    known = dict(known or {})
    unknown = set(known) - {k for *_, k in TRIPOD_AI_ITEMS}
    if unknown:
        raise ValueError(f"unknown TRIPOD+AI item key(s): {sorted(unknown)}")
    rows = []
    for num, section, topic, key in TRIPOD_AI_ITEMS:
        text = known.get(key)
        rows.append(
            {
                "Item": num,
                "Section": section,
                "Topic": topic,
                "Status": "filled by run" if text else "for the author",
                "Reported": text or FOR_AUTHOR,
            }
        )
    return pd.DataFrame(rows)


def model_card(
    name: str,
    *,
    intended_use: str = "",
    data: str = "",
    metrics: pd.DataFrame | None = None,
    thresholds: Mapping[str, float] | None = None,
    limitations: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
    ethical_considerations: str = "",
) -> dict[str, Any]:
    """A model card as a dict of sections (Mitchell et al., 2019).

    Missing free-text fields are marked :data:`FOR_AUTHOR`. ``metrics`` is a
    per-cohort table (e.g. Table 2 rows of this model); ``thresholds`` maps a
    model to its operating threshold and the rule that chose it.
    """
    return {
        "Model": name,
        "Model details": dict(details or {}),
        "Intended use": intended_use or FOR_AUTHOR,
        "Data": data or FOR_AUTHOR,
        "Metrics per cohort": metrics if metrics is not None else pd.DataFrame(),
        "Decision thresholds": dict(thresholds or {}),
        "Limitations": list(limitations) or [FOR_AUTHOR],
        "Ethical considerations": ethical_considerations or FOR_AUTHOR,
    }


def model_card_markdown(card: Mapping[str, Any]) -> str:
    """Render :func:`model_card` output as Markdown."""
    from buscad.utils import markdown_table as to_markdown

    lines = [f"# Model card: {card['Model']}", ""]
    for key, value in card.items():
        if key == "Model":
            continue
        lines += [f"## {key}", ""]
        if isinstance(value, pd.DataFrame):
            lines.append(to_markdown(value) if len(value) else FOR_AUTHOR)
        elif isinstance(value, Mapping):
            lines += [f"- **{k}**: {v}" for k, v in value.items()] or [FOR_AUTHOR]
        elif isinstance(value, list | tuple):
            lines += [f"- {v}" for v in value]
        else:
            lines.append(str(value))
        lines.append("")
    return "\n".join(lines)


def model_card_blocks(card: Mapping[str, Any]) -> list[Any]:
    """Render :func:`model_card` output as report blocks (heading, key/value table, metrics)."""
    import html

    from buscad.report.builder import Html, KeyValue, Table

    items: dict[str, Any] = {}
    for key, value in card.items():
        if key in ("Model", "Metrics per cohort"):
            continue
        if isinstance(value, Mapping):
            items[key] = "; ".join(f"{k}: {v}" for k, v in value.items()) or FOR_AUTHOR
        elif isinstance(value, list | tuple):
            items[key] = " • ".join(map(str, value))
        else:
            items[key] = value
    blocks: list[Any] = [
        Html(f"<h3>Model card: {html.escape(str(card['Model']))}</h3>"),
        KeyValue(items),
    ]
    metrics = card.get("Metrics per cohort")
    if isinstance(metrics, pd.DataFrame) and len(metrics):
        blocks.append(Table(metrics, "Metrics per cohort."))
    return blocks
