"""Evaluation statistics and publication-ready reporting.

Library entry point: :func:`evaluate_predictions` takes a table of per-case
predictions (case id, label, cohort, one column per model) and returns an
:class:`EvaluationResult` whose ``write(out_dir)`` produces Tables 1–3 (CSV,
XLSX, Markdown), figures (PNG, SVG), a model card, a TRIPOD+AI checklist and a
self-contained HTML report. The statistics are importable on their own.
"""

from buscad.evaluate.api import (
    EvaluationInputError,
    EvaluationResult,
    evaluate_predictions,
    read_predictions,
)
from buscad.evaluate.calibration import (
    brier_score,
    calibration_slope_intercept,
    hosmer_lemeshow,
    reliability_curve,
)
from buscad.evaluate.compare import (
    delong_matrix,
    delong_unpaired_test,
    mcnemar_test,
    pairwise_comparisons,
)
from buscad.evaluate.dca import decision_curve, net_benefit
from buscad.evaluate.metrics import (
    AUCResult,
    BinaryMetrics,
    DeLongTest,
    Proportion,
    auc_ci,
    binary_metrics,
    cohort_metrics,
    delong_test,
    delong_variance,
    proportion,
    roc_auc,
    select_threshold,
    sensitivity_threshold,
    specificity_threshold,
    wilson_ci,
    youden_threshold,
)

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
