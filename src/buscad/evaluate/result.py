"""Evaluate a table of per-case predictions: metrics, comparisons, calibration,
decision curves, publication tables, figures and a self-contained HTML report.

The input is one row per case: an id, a reference label (1/malignant,
0/benign), a cohort and one column of scores per model (higher = more likely
malignant). Predictions made elsewhere can be evaluated the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.manifest import normalize_label
from buscad.errors import BuscadError
from buscad.evaluate import calibration as cal
from buscad.evaluate.compare import pairwise_comparisons
from buscad.evaluate.dca import decision_curve
from buscad.evaluate.delong import delong_matrix, delong_unpaired_test
from buscad.evaluate.metrics import cohort_metrics, parse_threshold_rule, select_threshold
from buscad.evaluate.tables import table1, table2, table3
from buscad.labels import input_label

#: Name used for the cohort column's value when the table has no cohort column.
SINGLE_COHORT = "all"
#: Table 1's row of the reference label (levels ``benign`` and ``malignant``).
DIAGNOSIS_ROW = "Reference diagnosis"


class EvaluationInputError(BuscadError):
    """The predictions table cannot be evaluated at all (e.g. a required column is missing)."""


def _binary_label(v: object) -> float:
    if isinstance(v, bool | np.bool_):
        return float(v)
    lab = normalize_label(v)
    if lab == "malignant":
        return 1.0
    if lab == "benign":
        return 0.0
    return np.nan


def default_model_columns(df: pd.DataFrame, reserved: Sequence[str]) -> list[str]:
    """Columns taken as models when none are named: numeric, not reserved, values in [0, 1]."""
    cols = []
    for c in df.columns:
        if c in reserved or not pd.api.types.is_numeric_dtype(df[c]):
            continue
        v = df[c].dropna()
        if pd.api.types.is_bool_dtype(df[c]):
            continue
        if len(v) and v.min() >= 0 and v.max() <= 1:
            cols.append(c)
    return cols


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_predictions` computed; ``write(out_dir)`` saves it.

    Attributes
    ----------
    metrics : DataFrame
        Raw metrics, one row per cohort and model (see ``cohort_metrics``),
        plus calibration columns for probability models.
    comparisons : DataFrame
        Pairwise paired DeLong and McNemar tests per cohort.
    cohort_comparisons : DataFrame
        Unpaired DeLong tests of each model between the training cohort and each other cohort.
    delong_matrices : dict
        Cohort -> square DataFrame of paired DeLong p values.
    thresholds : dict
        Model -> threshold chosen on the training cohort.
    issues : list of str
        One line per problem found (named cohort or column); evaluation went on.
    """

    data: pd.DataFrame
    models: list[str]
    cohorts: list[str]
    train_cohort: str
    threshold_rule: str
    thresholds: dict[str, float]
    metrics: pd.DataFrame
    comparisons: pd.DataFrame
    cohort_comparisons: pd.DataFrame
    delong_matrices: dict[str, pd.DataFrame]
    calibration_curves: dict[tuple[str, str], pd.DataFrame]
    decision_curves: dict[str, pd.DataFrame]
    baseline: pd.DataFrame
    issues: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def table1(self) -> pd.DataFrame:
        """Table 1: baseline characteristics per cohort with P values."""
        return self.baseline

    def table2(self) -> pd.DataFrame:
        """Table 2: every model on every cohort (formatted; BI-RADS cuts as categories)."""
        if not len(self.metrics):
            return pd.DataFrame()
        out = table2(self.metrics)
        out["Threshold"] = [
            self.threshold_text(m, t, short=True)
            for m, t in zip(self.metrics["model"], self.metrics["threshold"], strict=True)
        ]
        return out

    @property
    def birads_models(self) -> list[str]:
        """Models whose scores are BI-RADS ranks (their thresholds are categories)."""
        return list(self.config.get("birads_columns", []))

    def threshold_text(self, model: str, value: float | None = None, short: bool = False) -> str:
        """A model's threshold in words: ``"BI-RADS 4C or higher"`` or ``"score >= 0.42"``.

        ``short`` gives ``"4C or higher"`` / ``"0.42"`` for table cells.
        """
        from buscad.data.birads import cut_words

        t = self.thresholds.get(model, np.nan) if value is None else value
        if t is None or not np.isfinite(t):
            return "n/a"
        if model in self.birads_models:
            words = cut_words(t)
            return words.removeprefix("BI-RADS ") if short else words
        return f"{t:.3g}" if short else f"score ≥ {t:.3g}"

    def table3(self) -> pd.DataFrame:
        """Table 3: DeLong matrix per cohort (formatted)."""
        return table3(self.comparisons) if len(self.comparisons) else pd.DataFrame()

    def write(self, out_dir: str | Path, **report_kwargs: Any) -> dict[str, list[Path]]:
        """Write tables (CSV, XLSX, Markdown), figures (PNG, SVG), model card,
        TRIPOD+AI checklist and the HTML report under ``out_dir``.

        Keyword arguments go to :func:`buscad.evaluate.report.write_evaluation_report`
        (``title``, ``audit_summary``, ``split_description``, ``input_hashes``,
        ``intended_use``, ``limitations``, ``seed``, ``model_details``, ``notice``).
        """
        from buscad.evaluate.report import write_evaluation_outputs

        return write_evaluation_outputs(self, Path(out_dir), **report_kwargs)


def _birads_threshold(
    y: np.ndarray, s: np.ndarray, rule: str, model: str, issues: list[str]
) -> float:
    """A threshold on BI-RADS ranks that is a category: the rule's cut rounded up to a rank.

    Probability rules (``fixed:p``) do not apply to categories: the clinical cut
    (:data:`buscad.data.birads.DEFAULT_CUT`) is used and the issue says so.
    """
    from buscad.data.birads import DEFAULT_CUT, cut_rank, cut_words

    name, _ = parse_threshold_rule(rule)
    if name != "fixed":
        try:
            return float(np.ceil(select_threshold(y, s, rule) - 1e-9))
        except ValueError:
            pass
    t = float(cut_rank(DEFAULT_CUT))
    issues.append(
        f"model {model!r}: BI-RADS categories, not probabilities; rule {rule!r} replaced "
        f"by the clinical cut ({cut_words(t)})"
    )
    return t


def evaluate_predictions(
    df: pd.DataFrame,
    model_cols: Sequence[str] | None = None,
    label_col: str = "label",
    cohort_col: str | None = "cohort",
    *,
    id_col: str | None = "case_id",
    train_cohort: str | None = None,
    threshold_rule: str = "youden",
    covariates: Sequence[str] | None = None,
    ci_method: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    birads_columns: Sequence[str] = (),
    input_gaps: pd.DataFrame | None = None,
) -> EvaluationResult:
    """Evaluate per-case predictions of one or more models on one or more cohorts.

    Parameters
    ----------
    df : DataFrame
        One row per case.
    model_cols : sequence of str, optional
        Score columns (higher = more likely malignant). Default: every numeric
        column other than id/label/cohort whose values lie in [0, 1].
    label_col, cohort_col, id_col : str
        Reference label (1/0, malignant/benign), cohort and case id columns.
        A missing cohort column puts every case in one cohort ``all``; a
        missing id column uses the row number.
    train_cohort : str, optional
        Cohort on which each model's threshold is chosen (then applied
        unchanged to the other cohorts, never re-tuned). Default: a cohort
        named ``train`` if any, else the first cohort in the table.
    threshold_rule : str
        ``youden`` (default), ``sens:0.95``, ``spec:0.9`` or ``fixed:0.5``.
    covariates : sequence of str, optional
        Columns for Table 1. Default: the remaining non-model columns.
    ci_method : {"delong", "bootstrap"}
        AUC confidence interval method.
    birads_columns : sequence of str
        Model columns holding BI-RADS ranks (``buscad.data.birads.birads_rank``), e.g. a
        radiologist's reads. Their threshold is a category (a rule's cut rounded up to the
        next category; ``fixed:`` rules, which are probabilities, use the clinical cut
        ``DEFAULT_CUT`` = 4B) and is reported as "BI-RADS 4C or higher".
    input_gaps : DataFrame, optional
        ``id_col`` and, per model, how many of the model's inputs each case lacks
        (0: complete; NaN: none given, the case is not scored). A model with no
        scored case in a cohort gets a *not evaluable* row there (``evaluable``
        False, ``n`` = 0 usable cases, no AUC) instead of none; every row counts
        ``n_partial_inputs``, the scored cases that lacked some of the model's inputs.

    Returns
    -------
    EvaluationResult
        Problems with a cohort or a column are recorded in ``issues`` (and
        skipped); the other results are still produced.

    Raises
    ------
    EvaluationInputError
        When the label column or a named model column is missing, or no model is usable.
    """
    parse_threshold_rule(threshold_rule)  # fail early on a bad rule
    issues: list[str] = []
    df = df.copy()
    if label_col not in df:
        raise EvaluationInputError(
            f"label column {label_col!r} not found (columns: {', '.join(map(str, df.columns))})"
        )
    if id_col is None or id_col not in df:
        if id_col is not None:
            issues.append(f"id column {id_col!r} not found: rows are identified by row number")
        id_col = "_row"
        df[id_col] = np.arange(1, len(df) + 1)
    if cohort_col is None or cohort_col not in df:
        if cohort_col is not None:
            issues.append(
                f"cohort column {cohort_col!r} not found: all cases form one cohort "
                f"{SINGLE_COHORT!r}"
            )
        cohort_col = "_cohort"
        df[cohort_col] = SINGLE_COHORT
    df[cohort_col] = df[cohort_col].astype(str)
    reserved = [id_col, label_col, cohort_col]

    # ids: duplicates with conflicting content are dropped, exact repeats kept once
    dup = df[id_col].duplicated(keep=False)
    if dup.any():
        exact = df[dup].drop_duplicates()
        conflicting = exact[id_col][exact[id_col].duplicated(keep=False)].unique()
        n_rep = int(dup.sum() - len(exact))
        if n_rep:
            issues.append(f"column {id_col!r}: {n_rep} repeated row(s) of the same case dropped")
        df = df.drop_duplicates()
        if len(conflicting):
            shown = ", ".join(map(str, conflicting[:5])) + (" ..." if len(conflicting) > 5 else "")
            issues.append(
                f"column {id_col!r}: {len(conflicting)} case id(s) appear with "
                f"different values ({shown}); those cases were dropped"
            )
            df = df[~df[id_col].isin(conflicting)]

    # labels
    y = df[label_col].map(_binary_label)
    bad = y.isna()
    if bad.any():
        vals = ", ".join(map(repr, pd.unique(df.loc[bad, label_col])[:5]))
        issues.append(
            f"column {label_col!r}: {int(bad.sum())} case(s) without a benign/malignant "
            f"label ({vals}) dropped"
        )
    df = df[~bad].copy()
    df["_y"] = y[~bad].astype(int)

    # models
    if model_cols is None:
        model_cols = default_model_columns(df, [*reserved, "_y"])
        if covariates:
            model_cols = [c for c in model_cols if c not in covariates]
    else:
        missing = [c for c in model_cols if c not in df]
        if missing:
            raise EvaluationInputError(f"model column(s) not found: {', '.join(missing)}")
    models = []
    for m in model_cols:
        vals = pd.to_numeric(df[m], errors="coerce")
        n_text = int((vals.isna() & df[m].notna()).sum())
        if n_text:
            issues.append(f"model column {m!r}: {n_text} non-numeric value(s) treated as missing")
        df[m] = vals
        if vals.notna().sum() == 0:
            issues.append(f"model column {m!r}: no numeric scores; model skipped")
            continue
        if vals.nunique(dropna=True) == 1:
            issues.append(
                f"model column {m!r}: constant scores ({vals.dropna().iloc[0]:g}) carry "
                f"no ranking information; model skipped"
            )
            continue
        n_nan = int(vals.isna().sum())
        if n_nan:
            per = df.loc[vals.isna(), cohort_col].value_counts()
            where = ", ".join(f"{k}: {v}" for k, v in per.items())
            issues.append(
                f"model column {m!r}: {n_nan} NaN score(s) ({where}); those cases are "
                f"left out for this model"
            )
        models.append(m)
    if not models:
        raise EvaluationInputError(
            "no usable model column (need numeric scores that vary); " + "; ".join(issues)
        )
    if covariates is None:
        covariates = [c for c in df.columns if c not in {*reserved, *model_cols, "_y"}]
    cohorts = list(dict.fromkeys(df[cohort_col]))

    # threshold cohort
    if train_cohort is None:
        train_cohort = "train" if "train" in cohorts else cohorts[0]
    elif train_cohort not in cohorts:
        raise EvaluationInputError(
            f"training cohort {train_cohort!r} not found in column "
            f"{cohort_col!r} (cohorts: {', '.join(cohorts)})"
        )
    thresholds: dict[str, float] = {}
    tr = df[df[cohort_col] == train_cohort]
    birads_columns = [c for c in birads_columns if c in models]
    for m in models:
        ok = tr[m].notna()
        yt, st = tr.loc[ok, "_y"].to_numpy(), tr.loc[ok, m].to_numpy(float)
        if m in birads_columns:
            thresholds[m] = _birads_threshold(yt, st, threshold_rule, m, issues)
            continue
        try:
            thresholds[m] = select_threshold(yt, st, threshold_rule)
        except ValueError as exc:
            thresholds[m] = 0.5
            issues.append(
                f"cohort {train_cohort!r}, model {m!r}: threshold rule "
                f"{threshold_rule!r} not applicable ({exc}); fixed 0.5 used"
            )

    gaps: dict[str, pd.Series] = {}
    if input_gaps is not None and id_col in input_gaps:
        ig = input_gaps.drop_duplicates(id_col).set_index(id_col)
        gaps = {m: ig[m].reindex(df[id_col]).set_axis(df.index) for m in models if m in ig}
    rows, curves, dcs, mats, comps = [], {}, {}, {}, []
    for c in cohorts:
        sub = df[df[cohort_col] == c]
        n_pos = int(sub["_y"].sum())
        n_neg = len(sub) - n_pos
        two_class = n_pos > 0 and n_neg > 0
        if not two_class:
            issues.append(
                f"cohort {c!r}: only one class ({n_neg} benign, {n_pos} malignant); "
                f"AUC, DeLong tests and calibration fits are not estimable there"
            )
        for m in models:
            ok = sub[m].notna()
            yy, ss = sub.loc[ok, "_y"].to_numpy(), sub.loc[ok, m].to_numpy(float)
            if not len(yy):
                no_inputs = m in gaps and gaps[m][sub.index].isna().all()
                issues.append(
                    f"cohort {c!r}, model {m!r}: not evaluable, none of its inputs in any of "
                    f"the {len(sub)} case(s)"
                    if no_inputs
                    else f"cohort {c!r}, model {m!r}: no scored case"
                )
                rows.append(
                    {
                        "cohort": c,
                        "model": m,
                        "evaluable": False,
                        "n_missing": len(sub),
                        "n_partial_inputs": 0,
                        "n": 0,
                        "n_pos": 0,
                        "n_neg": 0,
                    }
                )
                continue
            if two_class and np.ptp(ss) == 0:
                issues.append(
                    f"cohort {c!r}, model {m!r}: constant scores in this cohort "
                    f"(AUC = 0.5 by construction)"
                )
            has_both = 0 < yy.sum() < len(yy)
            partial = gaps[m][sub.index[ok]] if m in gaps else pd.Series(dtype=float)
            r = {
                "cohort": c,
                "model": m,
                "evaluable": True,
                "n_missing": int((~ok).sum()),
                "n_partial_inputs": int((partial > 0).sum()),
                **cohort_metrics(
                    yy,
                    ss,
                    thresholds[m],
                    alpha=alpha,
                    ci_method=ci_method,
                    n_boot=n_boot,
                    seed=seed,
                ),
            }
            is_prob = ss.min() >= 0 and ss.max() <= 1
            r["probabilistic"] = bool(is_prob)
            if not is_prob and c == cohorts[0]:
                issues.append(
                    f"model column {m!r}: scores outside [0, 1] are not probabilities; "
                    f"calibration and decision curves skipped for it"
                )
            if is_prob:
                r["brier"] = cal.brier_score(yy, ss)
                fit = (
                    cal.calibration_slope_intercept(yy, ss)
                    if has_both
                    else cal.CalibrationFit(*[np.nan] * 6)
                )
                r.update(
                    cal_slope=fit.slope,
                    cal_slope_lo=fit.slope_lo,
                    cal_slope_hi=fit.slope_hi,
                    cal_intercept=fit.intercept,
                    cal_intercept_lo=fit.intercept_lo,
                    cal_intercept_hi=fit.intercept_hi,
                )
                hl = cal.hosmer_lemeshow(yy, ss)
                r.update(hl_chi2=hl.statistic, hl_df=hl.df, hl_p=hl.p)
                curves[(c, m)] = cal.reliability_curve(
                    yy, ss, n_bins=min(10, max(2, len(yy) // 10))
                )
            rows.append(r)
        scored = [m for m in models if sub[m].notna().any()]  # not-evaluable models left out
        prob_models = [m for m in scored if sub[m].dropna().between(0, 1).all()]
        complete = sub.dropna(subset=scored)
        if len(complete) < len(sub) and len(scored) > 1:
            issues.append(
                f"cohort {c!r}: paired comparisons use the {len(complete)} of "
                f"{len(sub)} cases scored by every model"
            )
        if prob_models and len(complete):
            dcs[c] = decision_curve(
                complete["_y"].to_numpy(), {m: complete[m].to_numpy(float) for m in prob_models}
            )
        yc = complete["_y"].to_numpy()
        if len(scored) > 1 and 0 < yc.sum() < len(yc):
            sc = {m: complete[m].to_numpy(float) for m in scored}
            mats[c] = delong_matrix(yc, sc)
            pc = pairwise_comparisons(yc, sc, thresholds)
            pc.insert(0, "cohort", c)
            comps.append(pc)

    metrics = pd.DataFrame(rows)
    if "brier" in metrics:
        for col in (
            "brier",
            "cal_slope",
            "cal_slope_lo",
            "cal_slope_hi",
            "cal_intercept",
            "cal_intercept_lo",
            "cal_intercept_hi",
            "hl_chi2",
            "hl_df",
            "hl_p",
        ):
            metrics[col] = pd.to_numeric(metrics[col], errors="coerce")
    comparisons = pd.concat(comps, ignore_index=True) if comps else pd.DataFrame()

    # unpaired: each model, training cohort vs every other cohort
    up = []
    for m in models:
        a = df[(df[cohort_col] == train_cohort) & df[m].notna()]
        for c in cohorts:
            if c == train_cohort:
                continue
            b = df[(df[cohort_col] == c) & df[m].notna()]
            if not (0 < a["_y"].sum() < len(a) and 0 < b["_y"].sum() < len(b)):
                continue
            t = delong_unpaired_test(
                a["_y"].to_numpy(), a[m].to_numpy(float), b["_y"].to_numpy(), b[m].to_numpy(float)
            )
            up.append({"model": m, "cohort_a": train_cohort, "cohort_b": c, **t.as_dict()})
    cohort_comparisons = pd.DataFrame(up)

    # Table 1
    # Table 1: covariates by their plain labels, the reference label as benign / malignant
    t1_names = {v: input_label(v) for v in covariates}
    t1_df = df[[cohort_col, *covariates]].rename(columns=t1_names)
    t1_df[DIAGNOSIS_ROW] = df["_y"].map({1: "malignant", 0: "benign"})
    baseline = table1(t1_df, cohort_col, [*t1_names.values(), DIAGNOSIS_ROW])

    config = {
        "label_col": label_col,
        "cohort_col": cohort_col,
        "id_col": id_col,
        "models": models,
        "covariates": list(covariates),
        "train_cohort": train_cohort,
        "threshold_rule": threshold_rule,
        "ci_method": ci_method,
        "n_boot": n_boot,
        "seed": seed,
        "alpha": alpha,
        "n_cases": len(df),
        "birads_columns": birads_columns,
    }
    return EvaluationResult(
        data=df,
        models=models,
        cohorts=cohorts,
        train_cohort=train_cohort,
        threshold_rule=threshold_rule,
        thresholds=thresholds,
        metrics=metrics,
        comparisons=comparisons,
        cohort_comparisons=cohort_comparisons,
        delong_matrices=mats,
        calibration_curves=curves,
        decision_curves=dcs,
        baseline=baseline,
        issues=issues,
        config=config,
    )


def read_predictions(
    paths: Sequence[str | Path],
    id_col: str = "case_id",
    label_col: str = "label",
    cohort_col: str = "cohort",
) -> tuple[pd.DataFrame, list[str]]:
    """Read one or more prediction tables (CSV, TSV, Parquet, XLSX) and merge them on ``id_col``.

    With several files, model columns are joined by case id (outer join);
    ids found in some files but not others, and labels or cohorts that
    disagree between files, are reported in the returned issue list (the
    conflicting cases are dropped). Returns ``(table, issues)``.
    """
    from buscad.errors import InputFileError

    frames = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise InputFileError(p, "predictions file not found")
        suf = p.suffix.lower()
        try:
            if suf == ".parquet":
                d = pd.read_parquet(p)
            elif suf in (".xlsx", ".xls"):
                d = pd.read_excel(p)
            else:
                d = pd.read_csv(p, sep=None, engine="python")
        except Exception as exc:  # report any parse failure on one line
            raise InputFileError(p, f"cannot read predictions table ({exc})") from exc
        if d.empty:
            raise InputFileError(p, "predictions table has no rows")
        if label_col not in d:
            raise InputFileError(
                p, f"no label column {label_col!r} (columns: {', '.join(map(str, d.columns))})"
            )
        frames.append((p, d))
    issues: list[str] = []
    if len(frames) == 1:
        return frames[0][1], issues
    for p, d in frames:
        if id_col not in d:
            raise InputFileError(p, f"no id column {id_col!r}; needed to merge several files")
    merged = frames[0][1]
    for p, d in frames[1:]:
        ids_a, ids_b = set(merged[id_col]), set(d[id_col])
        if ids_a != ids_b:
            issues.append(
                f"{p}: case ids do not match the other file(s): "
                f"{len(ids_b - ids_a)} only here, {len(ids_a - ids_b)} missing here"
            )
        other = [k for k in (label_col, cohort_col) if k in d and k in merged]
        both = merged.merge(d, on=id_col, how="outer", suffixes=("", "__r"))
        for k in other:
            right = both[f"{k}__r"]
            conflict = both[k].notna() & right.notna() & (both[k].astype(str) != right.astype(str))
            if conflict.any():
                ids = ", ".join(map(str, both.loc[conflict, id_col].head(5)))
                issues.append(
                    f"{p}: column {k!r} disagrees with the other file(s) for "
                    f"{int(conflict.sum())} case(s) ({ids}); those cases dropped"
                )
                both = both[~conflict]
            both[k] = both[k].fillna(both[f"{k}__r"])
            both = both.drop(columns=f"{k}__r")
        dup_cols = [c for c in both.columns if c.endswith("__r")]
        if dup_cols:
            raise InputFileError(
                p, "column(s) also in another file: " + ", ".join(c[:-3] for c in dup_cols)
            )
        merged = both
    return merged, issues
