"""Evaluation statistics and publication-ready reporting.

Library entry point: :func:`evaluate_predictions` takes a table of per-case
predictions (case id, label, cohort, one column per model) and returns an
:class:`EvaluationResult` whose ``write(out_dir)`` produces Tables 1–3 (CSV,
XLSX, Markdown), figures (PNG, SVG), a model card, a TRIPOD+AI checklist and a
self-contained HTML report. The statistics are importable on their own.

Owns: the statistics (AUC and DeLong tests, proportions and thresholds, calibration, decision
curves, MRMC, the univariate-test policy), Tables 1-3, figures and the evaluation report.
May import: report (the HTML builder), data (manifest), utils, errors. It sits low because
models, classical, bundle, study and reader all use its statistics; it never imports them.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module; imported on first use (PEP 562) so that the
#: command line does not pay for SciPy when it runs another command.
_LAZY = {
    "AUCResult": "buscad.evaluate.delong",
    "BinaryMetrics": "buscad.evaluate.metrics",
    "DeLongTest": "buscad.evaluate.delong",
    "EvaluationInputError": "buscad.evaluate.result",
    "EvaluationResult": "buscad.evaluate.result",
    "Proportion": "buscad.evaluate.metrics",
    "auc_ci": "buscad.evaluate.delong",
    "binary_metrics": "buscad.evaluate.metrics",
    "brier_score": "buscad.evaluate.calibration",
    "calibration_slope_intercept": "buscad.evaluate.calibration",
    "cohort_metrics": "buscad.evaluate.metrics",
    "decision_curve": "buscad.evaluate.dca",
    "delong_matrix": "buscad.evaluate.delong",
    "delong_test": "buscad.evaluate.delong",
    "delong_unpaired_test": "buscad.evaluate.delong",
    "delong_variance": "buscad.evaluate.delong",
    "evaluate_predictions": "buscad.evaluate.result",
    "hosmer_lemeshow": "buscad.evaluate.calibration",
    "mcnemar_test": "buscad.evaluate.compare",
    "net_benefit": "buscad.evaluate.dca",
    "pairwise_comparisons": "buscad.evaluate.compare",
    "proportion": "buscad.evaluate.metrics",
    "read_predictions": "buscad.evaluate.result",
    "reliability_curve": "buscad.evaluate.calibration",
    "roc_auc": "buscad.evaluate.delong",
    "select_threshold": "buscad.evaluate.metrics",
    "sensitivity_threshold": "buscad.evaluate.metrics",
    "specificity_threshold": "buscad.evaluate.metrics",
    "wilson_ci": "buscad.evaluate.metrics",
    "youden_threshold": "buscad.evaluate.metrics",
}

__all__ = [
    "AUCResult",
    "BinaryMetrics",
    "DeLongTest",
    "EvaluationInputError",
    "EvaluationResult",
    "Proportion",
    "auc_ci",
    "binary_metrics",
    "brier_score",
    "calibration_slope_intercept",
    "cohort_metrics",
    "decision_curve",
    "delong_matrix",
    "delong_test",
    "delong_unpaired_test",
    "delong_variance",
    "evaluate_predictions",
    "hosmer_lemeshow",
    "mcnemar_test",
    "net_benefit",
    "pairwise_comparisons",
    "proportion",
    "read_predictions",
    "reliability_curve",
    "roc_auc",
    "select_threshold",
    "sensitivity_threshold",
    "specificity_threshold",
    "wilson_ci",
    "youden_threshold",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
