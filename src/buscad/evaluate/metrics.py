"""Discrimination and threshold metrics: AUC with DeLong CI, paired DeLong test, Youden threshold.

Conventions: ``y`` is 1 for malignant (positive) and 0 for benign; a higher
score means more likely malignant; a case is called positive when
``score >= threshold``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from buscad.evaluate.delong import _check, auc_ci


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Threshold maximising Youden's ``J = sensitivity + specificity - 1``.

    Candidates are the distinct scores (a case is positive when
    ``score >= threshold``); ties in J go to the higher threshold.
    """
    y, s = _check(y, s)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last index of each distinct score
    tp, fp, thr = tp[last], fp[last], s_sorted[last]
    j = tp / y.sum() - fp / (1 - y).sum()
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # tolerate float ties
    return float(thr[best])


@dataclass(frozen=True)
class BinaryMetrics:
    """Confusion counts and proportions at a threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> BinaryMetrics:
    """Metrics of the calls ``score >= threshold``.

    ``accuracy = (TP+TN)/N``, ``sensitivity = TP/(TP+FN)``,
    ``specificity = TN/(TN+FP)``, ``PPV = TP/(TP+FP)``, ``NPV = TN/(TN+FN)``,
    ``F1 = 2 TP / (2 TP + FP + FN)``. An undefined ratio is NaN.
    """
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, dtype=float).ravel()
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return BinaryMetrics(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=_ratio(tp + tn, len(y)),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
    )


@dataclass(frozen=True)
class Proportion:
    """A proportion ``k / n`` with its Wilson score interval."""

    k: int
    n: int
    value: float
    lo: float
    hi: float

    def __str__(self) -> str:
        if not np.isfinite(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.lo:.3f}–{self.hi:.3f}]"


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson, 1927).

    With ``p = k/n`` and ``z = z_{1-alpha/2}``:
    ``centre = (p + z^2/(2n)) / (1 + z^2/n)``,
    ``half = z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4 n^2))``,
    interval ``centre ± half``. Identical to R's ``prop.test(k, n, correct=FALSE)``.
    ``n = 0`` gives ``(nan, nan)``. Computed by statsmodels'
    ``proportion_confint(k, n, alpha, method="wilson")``; the bounds are
    exactly 0 at ``k = 0`` and 1 at ``k = n``.
    """
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci: need 0 <= k <= n, got k={k}, n={n}")
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
    lo = 0.0 if k == 0 else max(0.0, float(lo))
    hi = 1.0 if k == n else min(1.0, float(hi))
    return lo, hi


def proportion(k: int, n: int, alpha: float = 0.05) -> Proportion:
    """``k/n`` with its Wilson interval (NaN when ``n = 0``)."""
    lo, hi = wilson_ci(k, n, alpha)
    return Proportion(int(k), int(n), float(k / n) if n else float("nan"), lo, hi)


def sensitivity_threshold(y: np.ndarray, s: np.ndarray, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity ``TP/(TP+FN)`` is at least ``target``.

    The highest such threshold maximises specificity subject to the
    sensitivity constraint (calls are ``score >= threshold``).
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _check(y, s)
    pos = np.sort(s[y == 1])[::-1]
    k = int(np.ceil(target * len(pos) - 1e-9))  # positives that must be called
    return float(pos[max(k, 1) - 1])


def specificity_threshold(y: np.ndarray, s: np.ndarray, target: float = 0.90) -> float:
    """Lowest threshold whose specificity ``TN/(TN+FP)`` is at least ``target``.

    The lowest such threshold maximises sensitivity subject to the
    specificity constraint. Candidates are the distinct scores and
    ``max(score) + 1`` (call nothing positive).
    """
    if not 0 < target <= 1:
        raise ValueError(f"target specificity must be in (0, 1], got {target}")
    y, s = _check(y, s)
    neg = np.sort(s[y == 0])
    cands = np.r_[np.unique(s), s.max() + 1.0]
    spec = np.searchsorted(neg, cands, side="left") / len(neg)  # fraction of negatives < t
    return float(cands[np.flatnonzero(spec >= target - 1e-12)[0]])


#: Threshold rules: name -> function(y, s, parameter) -> threshold.
THRESHOLD_RULES = {
    "youden": lambda y, s, _p: youden_threshold(y, s),
    "sens": lambda y, s, p: sensitivity_threshold(y, s, 0.95 if p is None else p),
    "spec": lambda y, s, p: specificity_threshold(y, s, 0.90 if p is None else p),
    "fixed": lambda y, s, p: 0.5 if p is None else p,
}


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Parse ``youden``, ``sens:0.95``, ``spec:0.9`` or ``fixed:0.5`` into ``(name, param)``."""
    name, _, param = str(rule).strip().lower().partition(":")
    if name not in THRESHOLD_RULES:
        raise ValueError(
            f"unknown threshold rule {rule!r}; use one of youden, sens:0.95, spec:0.9, fixed:0.5"
        )
    try:
        value = float(param) if param else None
    except ValueError:
        raise ValueError(f"threshold rule {rule!r}: {param!r} is not a number") from None
    return name, value


def select_threshold(y: np.ndarray, s: np.ndarray, rule: str = "youden") -> float:
    """Threshold chosen by ``rule`` (see :func:`parse_threshold_rule`) on ``(y, s)``.

    Choose it on the training cohort only and apply it unchanged elsewhere.
    """
    name, param = parse_threshold_rule(rule)
    if name == "fixed":
        return THRESHOLD_RULES[name](None, None, param)
    return float(THRESHOLD_RULES[name](y, s, param))


def cohort_metrics(
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    alpha: float = 0.05,
    ci_method: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """All discrimination and threshold metrics of one model on one cohort.

    Returns a flat dict: ``n, n_pos, n_neg, auc, auc_lo, auc_hi, auc_se`` (AUC
    with a DeLong or bootstrap CI, NaN when a class is missing), ``threshold``,
    the confusion counts ``tp, fp, tn, fn``, and for ``accuracy, sensitivity,
    specificity, ppv, npv`` the value with its Wilson ``_lo``/``_hi`` bounds;
    ``f1 = 2TP/(2TP+FP+FN)`` (no interval).
    """
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, dtype=float).ravel()
    out: dict = {"n": len(y), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}
    if out["n_pos"] and out["n_neg"]:
        a = auc_ci(y, s, alpha=alpha, method=ci_method, n_boot=n_boot, seed=seed)
        out.update(auc=a.auc, auc_lo=a.lo, auc_hi=a.hi, auc_se=a.se)
    else:
        out.update(auc=np.nan, auc_lo=np.nan, auc_hi=np.nan, auc_se=np.nan)
    bm = binary_metrics(y, s, threshold)
    out.update(threshold=bm.threshold, tp=bm.tp, fp=bm.fp, tn=bm.tn, fn=bm.fn)
    parts = {
        "accuracy": (bm.tp + bm.tn, len(y)),
        "sensitivity": (bm.tp, bm.tp + bm.fn),
        "specificity": (bm.tn, bm.tn + bm.fp),
        "ppv": (bm.tp, bm.tp + bm.fp),
        "npv": (bm.tn, bm.tn + bm.fn),
    }
    for name, (k, n) in parts.items():
        p = proportion(k, n, alpha)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = p.value, p.lo, p.hi
    out["f1"] = bm.f1
    return out
