"""Evaluation statistics: AUC with CIs, DeLong tests, threshold metrics (and more to come)."""

from buscad.evaluate.metrics import (
    AUCResult,
    BinaryMetrics,
    DeLongTest,
    auc_ci,
    binary_metrics,
    delong_test,
    roc_auc,
    youden_threshold,
)

__all__ = [
    "AUCResult",
    "BinaryMetrics",
    "DeLongTest",
    "auc_ci",
    "binary_metrics",
    "delong_test",
    "roc_auc",
    "youden_threshold",
]
