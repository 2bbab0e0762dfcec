"""Publication tables: Table 1 (baseline characteristics), Table 2 (metrics),
Table 3 (DeLong matrix); each written as CSV, XLSX and Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.evaluate.univariate import (  # noqa: F401 - re-exported: Table 1 uses the one policy
    MIN_EXPECTED,
    NORMALITY_ALPHA,
    compare_categorical,
    compare_continuous,
)
from buscad.utils import atomic_write_table


def fmt_p(p: float) -> str:
    """P value as reported in tables: ``<0.001`` or three decimals; ``—`` when undefined."""
    if p is None or not np.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(v: float, lo: float, hi: float, digits: int = 3) -> str:
    """``v (lo–hi)``; ``n/a`` when ``v`` is NaN."""
    if v is None or not np.isfinite(v):
        return "n/a"
    sep = " to " if min(lo, hi) < 0 else "–"  # an en dash would read as a minus sign
    return f"{v:.{digits}f} ({lo:.{digits}f}{sep}{hi:.{digits}f})"


def table1(
    df: pd.DataFrame,
    group_col: str,
    variables: Sequence[str],
    categorical: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Table 1: baseline characteristics per group with a P value per variable.

    Continuous variables: mean ± SD when every group is normal, else median
    [IQR]; categorical variables (non-numeric, or listed in ``categorical``, or
    numeric with <= 5 levels): n (%) per level. P values follow buscad's one
    univariate-test policy (:mod:`buscad.evaluate.univariate`, also used by the
    clinical model's selector): :func:`compare_continuous` and
    :func:`compare_categorical`. Missing values are counted
    in a ``missing`` row when present.
    """
    categorical = set(categorical or [])
    groups = [g for g in pd.unique(df[group_col]) if pd.notna(g)]
    cols = [
        "Characteristic",
        *[f"{g} (n={int((df[group_col] == g).sum())})" for g in groups],
        "P value",
        "Test",
    ]
    rows = []
    for var in variables:
        x = df[var]
        is_cat = (
            var in categorical or not pd.api.types.is_numeric_dtype(x) or x.dropna().nunique() <= 5
        )
        if is_cat:
            tab = pd.crosstab(x, df[group_col]).reindex(columns=groups, fill_value=0)
            test, p = compare_categorical(tab)
            rows.append([f"{var}, n (%)", *[""] * len(groups), fmt_p(p), test])
            for level in tab.index:
                cells = []
                for g in groups:
                    n_g = int(((df[group_col] == g) & x.notna()).sum())
                    k = int(tab.loc[level, g])
                    cells.append(f"{k} ({100 * k / n_g:.1f}%)" if n_g else "0")
                rows.append([f"  {level}", *cells, "", ""])
        else:
            vals = [x[df[group_col] == g].to_numpy(float) for g in groups]
            vals_nn = [v[~np.isnan(v)] for v in vals]
            test, p = compare_continuous(vals_nn)
            normal = test in ("Welch t", "ANOVA")
            cells = []
            for v in vals_nn:
                if not len(v):
                    cells.append("—")
                elif normal:
                    cells.append(f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}")
                else:
                    q1, med, q3 = np.percentile(v, [25, 50, 75])
                    cells.append(f"{med:.1f} [{q1:.1f}–{q3:.1f}]")
            label = f"{var}, {'mean ± SD' if normal else 'median [IQR]'}"
            rows.append([label, *cells, fmt_p(p), test])
        n_missing = [int(np.sum(pd.isna(x[df[group_col] == g]))) for g in groups]
        if any(n_missing):
            rows.append(["  missing", *[str(m) for m in n_missing], "", ""])
    return pd.DataFrame(rows, columns=cols)


#: What a table says of a model with no scored case in a cohort (none of its inputs given).
NOT_EVALUABLE = "not evaluable (no case has its inputs)"


def not_evaluable(metrics: pd.DataFrame) -> np.ndarray:
    """Rows of a metrics table whose model scored no case of the cohort (``evaluable`` False)."""
    if "evaluable" not in metrics:
        return np.zeros(len(metrics), dtype=bool)
    return (metrics["evaluable"].astype("boolean") == False).fillna(False).to_numpy(bool)  # noqa: E712


def cases_text(metrics: pd.DataFrame) -> list[str]:
    """``"n (malignant)"`` cells: ``"120 (45)"``; ``"0 of 80 usable"`` where not evaluable;
    ``"; k lack some inputs"`` added where scored cases lacked some of the model's inputs."""
    part = metrics.get("n_partial_inputs")
    out = []
    for i, (n, k, bad) in enumerate(
        zip(metrics["n"], metrics["n_pos"], not_evaluable(metrics), strict=True)
    ):
        if bad:
            out.append(f"0 of {int(metrics['n_missing'].iat[i])} usable")
            continue
        cell = f"{int(n)} ({int(k)})"
        if part is not None and pd.notna(part.iat[i]) and part.iat[i] > 0:
            cell += f"; {int(part.iat[i])} lack some inputs"
        out.append(cell)
    return out


#: Table 2 metric columns and their display names.
TABLE2_METRICS = {
    "auc": "AUC (95% CI)",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}


def table2(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 2: every model on every cohort, formatted for publication.

    ``metrics`` is the raw long table (one row per cohort and model, as
    :func:`buscad.evaluate.result.evaluate_predictions` builds it). Proportions are
    given with Wilson 95% CIs, the AUC with its DeLong (or bootstrap) 95% CI. A model
    with no scored case in a cohort reads :data:`NOT_EVALUABLE` (``0 of n usable``);
    scored cases that lacked some of the model's inputs are counted beside ``n``.
    """
    out = pd.DataFrame(
        {
            "Cohort": metrics["cohort"],
            "Model": metrics["model"],
            "n (malignant)": cases_text(metrics),
        }
    )
    for key, name in TABLE2_METRICS.items():
        out[name] = [
            fmt_ci(v, lo, hi)
            for v, lo, hi in zip(
                metrics[key], metrics[f"{key}_lo"], metrics[f"{key}_hi"], strict=True
            )
        ]
    out.loc[not_evaluable(metrics), TABLE2_METRICS["auc"]] = NOT_EVALUABLE
    out["F1"] = [f"{v:.3f}" if np.isfinite(v) else "n/a" for v in metrics["f1"]]
    out["Threshold"] = [f"{v:.4g}" for v in metrics["threshold"]]
    if "brier" in metrics:
        out["Brier"] = [f"{v:.3f}" if np.isfinite(v) else "n/a" for v in metrics["brier"]]
        out["Calibration slope"] = [
            fmt_ci(v, lo, hi, 2)
            for v, lo, hi in zip(
                metrics["cal_slope"], metrics["cal_slope_lo"], metrics["cal_slope_hi"], strict=True
            )
        ]
        out["Calibration intercept"] = [
            fmt_ci(v, lo, hi, 2)
            for v, lo, hi in zip(
                metrics["cal_intercept"],
                metrics["cal_intercept_lo"],
                metrics["cal_intercept_hi"],
                strict=True,
            )
        ]
        out["Hosmer–Lemeshow P"] = [fmt_p(v) for v in metrics["hl_p"]]
    return out


def table3(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Table 3: DeLong matrix per cohort from the pairwise comparison table.

    One block per cohort; row model ``a``, column model ``b``: above the
    diagonal ``ΔAUC (a − b) with its 95% CI; P``; below it the McNemar P of the
    paired decisions at the chosen thresholds; ``—`` on the diagonal.
    """
    blocks = []
    for cohort, sub in comparisons.groupby("cohort", sort=False):
        models = list(dict.fromkeys([*sub["model_a"], *sub["model_b"]]))
        mat = pd.DataFrame("—", index=models, columns=models)
        for _, r in sub.iterrows():
            a, b = r["model_a"], r["model_b"]
            mat.loc[a, b] = (
                f"{r['diff']:+.3f} ({r['diff_lo']:+.3f} to {r['diff_hi']:+.3f}); "
                f"P={fmt_p(r['p_delong'])}"
            )
            if "p_mcnemar" in r and pd.notna(r.get("p_mcnemar")):
                mat.loc[b, a] = f"McNemar P={fmt_p(r['p_mcnemar'])}"
        mat.insert(0, "Model", models)
        mat.insert(0, "Cohort", cohort)
        blocks.append(mat.reset_index(drop=True))
    if not blocks:
        return pd.DataFrame(columns=["Cohort", "Model"])
    return pd.concat(blocks, ignore_index=True).fillna("")


def write_table(
    df: pd.DataFrame, stem: str | Path, formats: Sequence[str] = ("csv", "xlsx", "md")
) -> list[Path]:
    """Write ``df`` as ``stem.csv``, ``stem.xlsx`` and ``stem.md`` (atomically); return paths."""
    unknown = set(formats) - {"csv", "xlsx", "md"}
    if unknown:
        raise ValueError(f"unknown table format(s): {sorted(unknown)}")
    stem = Path(stem)
    return [atomic_write_table(df, stem.with_suffix(f".{fmt}")) for fmt in formats]
