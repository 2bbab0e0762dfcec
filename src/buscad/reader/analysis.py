"""Statistics of a before/after reader study: per-reader metrics, paired tests, MRMC.

Inputs are the reads exported by :meth:`buscad.reader.store.ReaderStudy.export_csv`
(one row per reader, case and round; round 1 = without AI, round 2 = with AI)
and a truth table (a manifest: ``image_id`` and ``label``).

BI-RADS as a score
------------------
For ROC analysis each category is mapped to an ordinal rank (:data:`BIRADS_RANK`):
``1 < 2 < 3 < 4 < 4a < 4b < 4c < 5 (< 6)``. A plain ``4`` (a reader who did
not subcategorise) is ranked *below* ``4a``, at the bottom of the suspicious
block: it asserts "suspicious" but no more, so it is not allowed to outrank a
reader's own ``4a``. Putting it between ``4a`` and ``4b`` would invent a
likelihood of malignancy nobody stated. Consequence: with the default cut
``4b``, a plain ``4`` is called benign; the report counts such reads so the
choice is visible. BI-RADS 0 (incomplete assessment) is not an assessment of
malignancy and is excluded (counted).

Binary calls
------------
A read is called malignant when its rank is at least the rank of the cut
category (default ``4b``: 3/4A = benign, 4B/4C/5 = malignant).

Cases whose truth is ``normal`` or unknown are excluded from every statistic
(counted in the report)."""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.birads import DEFAULT_CUT, birads_rank, cut_rank
from buscad.data.manifest import normalize_birads, normalize_label
from buscad.errors import InputFileError
from buscad.evaluate.delong import auc_ci, delong_test, roc_auc
from buscad.evaluate.metrics import binary_metrics
from buscad.evaluate.mrmc import ORResult, or_analysis
from buscad.report.render import render_page, trusted

ROUND_NAMES: dict[int, str] = {1: "without AI", 2: "with AI"}


_SCORE_COLUMNS = ("score", "ai_score", "prob_malignant", "p_malignant", "probability")


def load_reads(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an exported reads CSV and check its columns.

    Required: ``reader_id``, ``case_id``, ``round`` (1 or 2), ``birads``.
    Optional: ``confidence`` (0-100), ``ai_score``, ``time_taken_s``, ``with_ai``.

    Raises
    ------
    InputFileError
        Missing file or column, a round other than 1/2, an unknown BI-RADS
        category, or the same (reader, case, round) twice.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "reads file not found")
    try:
        df = pd.read_csv(p, dtype={"reader_id": str, "case_id": str, "birads": str})
    except Exception as exc:
        raise InputFileError(p, f"cannot read CSV ({type(exc).__name__}: {exc})") from exc
    return check_reads(df, source=p)


def check_reads(df: pd.DataFrame, source: str | os.PathLike[str] = "<reads>") -> pd.DataFrame:
    """Validate and normalise a reads table (see :func:`load_reads`); returns a copy."""
    missing = [c for c in ("reader_id", "case_id", "round", "birads") if c not in df.columns]
    if missing:
        raise InputFileError(source, f"missing column(s) {', '.join(missing)}")
    df = df.copy()
    df["reader_id"] = df["reader_id"].astype(str)
    df["case_id"] = df["case_id"].astype(str)
    rounds = pd.to_numeric(df["round"], errors="coerce")
    bad = ~rounds.isin([1, 2])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputFileError(source, f"round must be 1 or 2; row {i} has {df['round'].iat[i]!r}")
    df["round"] = rounds.astype(int)
    try:
        df["birads"] = [normalize_birads(v) for v in df["birads"]]
    except ValueError as exc:
        raise InputFileError(source, str(exc)) from exc
    dup = df.duplicated(["reader_id", "case_id", "round"])
    if dup.any():
        r = df[dup].iloc[0]
        raise InputFileError(
            source,
            f"reader {r['reader_id']!r} read case {r['case_id']!r} twice in round {r['round']}",
        )
    for col in ("confidence", "ai_score", "time_taken_s"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "confidence" in df.columns and ((df["confidence"] < 0) | (df["confidence"] > 100)).any():
        raise InputFileError(source, "confidence must lie in [0, 100]")
    return df


def load_truth(path: str | os.PathLike[str]) -> pd.Series:
    """Truth per case from a manifest or any table with an id and a ``label`` column.

    The id column is ``image_id`` (manifest) or ``case_id``. Returns a Series
    indexed by case id: 1 = malignant, 0 = benign; ``normal`` and unknown
    labels are dropped.

    Raises
    ------
    InputFileError
        Missing file, no id/label column, duplicate ids.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "truth file not found")
    try:
        if p.suffix.lower() == ".parquet":
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, dtype={"image_id": str, "case_id": str})
    except Exception as exc:
        raise InputFileError(p, f"cannot read table ({type(exc).__name__}: {exc})") from exc
    idcol = (
        "image_id" if "image_id" in df.columns else "case_id" if "case_id" in df.columns else None
    )
    if idcol is None or "label" not in df.columns:
        raise InputFileError(p, "truth table needs an image_id (or case_id) and a label column")
    ids = df[idcol].astype(str).str.strip()
    if ids.duplicated().any():
        raise InputFileError(p, f"duplicate case id {ids[ids.duplicated()].iat[0]!r}")
    lab = [normalize_label(v) for v in df["label"]]
    y = pd.Series([{"malignant": 1, "benign": 0}.get(v or "", -1) for v in lab], index=ids.values)
    return y[y >= 0].astype(int)


def load_model_scores(path: str | os.PathLike[str]) -> pd.Series:
    """Model scores per case: an id column (``case_id``/``image_id``) and a score column.

    The score column is the first of ``score, ai_score, prob_malignant,
    p_malignant, probability`` present.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "model-scores file not found")
    df = pd.read_csv(p, dtype={"image_id": str, "case_id": str})
    idcol = next((c for c in ("case_id", "image_id") if c in df.columns), None)
    scol = next((c for c in _SCORE_COLUMNS if c in df.columns), None)
    if idcol is None or scol is None:
        raise InputFileError(
            p, f"needs case_id (or image_id) and one of {', '.join(_SCORE_COLUMNS)}"
        )
    s = pd.to_numeric(df[scol], errors="coerce")
    s.index = df[idcol].astype(str).values
    return s.dropna()


# -------------------------------------------------------------------- McNemar
@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired binary outcomes."""

    b: int
    c: int
    statistic: float
    p: float
    method: str

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def mcnemar(b: int, c: int, exact: bool | None = None) -> McNemarResult:
    """McNemar's test of marginal homogeneity from the two discordant counts.

    ``b`` = pairs positive (e.g. correct) under the first condition only,
    ``c`` = under the second only. Exact (binomial) version:
    ``p = min(1, 2 P[Bin(b + c, 1/2) <= min(b, c)])`` with statistic
    ``min(b, c)``. Asymptotic version (Edwards' continuity correction):
    ``X2 = (|b - c| - 1)^2 / (b + c)`` referred to chi-square with 1 df.
    ``exact=None`` (default) uses the exact test when ``b + c < 25``. With
    ``b + c = 0`` there is no evidence either way: ``p = 1``.
    """
    from buscad.evaluate.compare import mcnemar_test

    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    if exact is None:
        exact = b + c < 25
    t = mcnemar_test(b=b, c=c, correct=True)
    if exact:
        return McNemarResult(b, c, float(min(b, c)), t.exact_p, "exact")
    return McNemarResult(b, c, t.statistic, t.p, "chi2-cc")


# ------------------------------------------------------------ reader metrics
def _with_truth(reads: pd.DataFrame, truth: pd.Series) -> tuple[pd.DataFrame, dict]:
    """Join truth; drop reads without lesion truth and BI-RADS 0/missing (counted)."""
    df = reads.copy()
    df["y"] = df["case_id"].map(truth)
    df["rank"] = birads_rank(df["birads"].tolist())
    notes = {
        "reads_total": len(df),
        "reads_without_lesion_truth": int(df["y"].isna().sum()),
        "reads_birads_0_or_missing": int((df["y"].notna() & df["rank"].isna()).sum()),
    }
    df = df[df["y"].notna() & df["rank"].notna()].copy()
    df["y"] = df["y"].astype(int)
    notes["reads_used"] = len(df)
    notes["plain_4_reads"] = int((df["birads"] == "4").sum())
    return df, notes


def _safe_auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float, float]:
    if len(np.unique(y)) < 2:
        return (math.nan, math.nan, math.nan)
    res = auc_ci(y, s)
    return res.auc, res.lo, res.hi


def reader_metrics(reads: pd.DataFrame, truth: pd.Series, cut: str = DEFAULT_CUT) -> pd.DataFrame:
    """Per reader and round: confusion counts, accuracy, sensitivity, specificity,
    PPV, NPV, F1 (calls ``rank >= cut``), AUC of the BI-RADS rank with DeLong
    95% CI and, when present for every read, AUC of ``confidence``.

    Formulas as :func:`buscad.evaluate.metrics.binary_metrics` and
    :func:`buscad.evaluate.delong.auc_ci`.
    """
    df, _ = _with_truth(reads, truth)
    thr = cut_rank(cut)
    rows = []
    for (rid, rnd), g in df.groupby(["reader_id", "round"], sort=True):
        y, s = g["y"].to_numpy(), g["rank"].to_numpy()
        bm = binary_metrics(y, s, thr)
        auc, lo, hi = _safe_auc(y, s)
        row = {
            "reader_id": rid,
            "round": int(rnd),
            "condition": ROUND_NAMES[int(rnd)],
            "n": len(g),
            "n_malignant": int(y.sum()),
            "n_benign": int((1 - y).sum()),
            **{k: v for k, v in bm.as_dict().items() if k != "threshold"},
            "auc": auc,
            "auc_lo": lo,
            "auc_hi": hi,
        }
        if "confidence" in g.columns and g["confidence"].notna().all() and len(g):
            a2, l2, h2 = _safe_auc(y, g["confidence"].to_numpy())
            row.update(auc_confidence=a2, auc_confidence_lo=l2, auc_confidence_hi=h2)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_tests(reads: pd.DataFrame, truth: pd.Series, cut: str = DEFAULT_CUT) -> pd.DataFrame:
    """Per reader, round 2 (with AI) against round 1 (without AI) on the cases read in both.

    DeLong's paired test of the BI-RADS-rank AUCs (and of the confidence AUCs
    when present), difference = with AI - without AI; McNemar's test
    (:func:`mcnemar`) on the correctness of the binary calls over all cases,
    on the malignant cases (sensitivity) and on the benign cases
    (specificity). For McNemar ``b`` counts cases right only with AI and ``c``
    cases right only without AI.
    """
    df, _ = _with_truth(reads, truth)
    thr = cut_rank(cut)
    rows = []
    for rid, g in df.groupby("reader_id", sort=True):
        w = g.pivot(index="case_id", columns="round", values="rank")
        if 1 not in w.columns or 2 not in w.columns:
            continue
        w = w.dropna()
        if w.empty:
            continue
        yv = g.drop_duplicates("case_id").set_index("case_id")["y"].loc[w.index].to_numpy()
        s1, s2 = w[1].to_numpy(), w[2].to_numpy()
        row: dict = {"reader_id": rid, "n_paired": len(w)}
        if len(np.unique(yv)) == 2:
            dt = delong_test(yv, s2, s1)
            row.update(
                auc_without_ai=dt.auc2,
                auc_with_ai=dt.auc1,
                auc_diff=dt.diff,
                auc_diff_lo=dt.lo,
                auc_diff_hi=dt.hi,
                delong_z=dt.z,
                delong_p=dt.p,
            )
            if "confidence" in g.columns:
                cw = g.pivot(index="case_id", columns="round", values="confidence").loc[w.index]
                if cw.notna().all().all():
                    dc = delong_test(yv, cw[2].to_numpy(), cw[1].to_numpy())
                    row.update(conf_auc_diff=dc.diff, conf_delong_p=dc.p)
        ok1 = (s1 >= thr) == (yv == 1)
        ok2 = (s2 >= thr) == (yv == 1)
        for name, sel in (
            ("accuracy", np.ones_like(yv, bool)),
            ("sensitivity", yv == 1),
            ("specificity", yv == 0),
        ):
            mc = mcnemar(int(np.sum(ok2[sel] & ~ok1[sel])), int(np.sum(ok1[sel] & ~ok2[sel])))
            row.update(
                {
                    f"mcnemar_{name}_b": mc.b,
                    f"mcnemar_{name}_c": mc.c,
                    f"mcnemar_{name}_p": mc.p,
                    f"mcnemar_{name}_method": mc.method,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def mrmc_reads(
    reads: pd.DataFrame,
    truth: pd.Series,
    score: str = "rank",
    cov: str = "jackknife",
    alpha: float = 0.05,
) -> tuple[ORResult | None, str]:
    """OR analysis of round 1 vs round 2 over the cases every reader read in both rounds.

    Treatments are ``without AI`` and ``with AI``; ``score`` is ``rank``
    (BI-RADS) or ``confidence``. Returns ``(None, reason)`` when fewer than 2
    readers or no fully crossed case set is available.
    """
    df, _ = _with_truth(reads, truth)
    if score == "confidence":
        if "confidence" not in df.columns:
            return None, "no confidence column"
        df = df[df["confidence"].notna()]
    readers = sorted(df["reader_id"].unique())
    if len(readers) < 2:
        return None, f"MRMC needs >= 2 readers (found {len(readers)})"
    wide = df.pivot_table(index="case_id", columns=["round", "reader_id"], values=score)
    need = [(rd, rr) for rd in (1, 2) for rr in readers]
    if any(k not in wide.columns for k in need):
        return None, "not every reader has reads in both rounds"
    wide = wide[need].dropna()
    y = truth.loc[wide.index].to_numpy()
    if len(wide) < 4 or y.sum() < 2 or (1 - y).sum() < 2:
        return None, f"too few fully crossed cases ({len(wide)})"
    sc = np.stack([[wide[(rd, rr)].to_numpy() for rr in readers] for rd in (1, 2)])
    res = or_analysis(
        y, sc, cov=cov, alpha=alpha, treatments=[ROUND_NAMES[1], ROUND_NAMES[2]], readers=readers
    )
    return res, f"{len(wide)} cases read by all {len(readers)} readers in both rounds"


# ------------------------------------------------------------------ Table 3
def table3(
    metrics: pd.DataFrame,
    mrmc: ORResult | None = None,
    model: dict | None = None,
) -> pd.DataFrame:
    """The studies' Table 3: model, readers without AI, readers with AI.

    Reader rows are means over readers of the per-reader values. Their AUC
    and its CI are the Obuchowski–Rockette reader-averaged AUC and
    single-treatment interval when ``mrmc`` is given, the reader's DeLong
    interval when there is one reader, and no interval otherwise. The model
    row (``model``, from :func:`model_metrics`) has a DeLong interval.
    """
    cols = ["accuracy", "sensitivity", "specificity", "ppv", "f1"]
    rows = []
    if model is not None:
        rows.append(
            {
                "group": "Model",
                "n_readers": 0,
                "accuracy": model["accuracy"],
                "auc": model["auc"],
                "auc_lo": model["auc_lo"],
                "auc_hi": model["auc_hi"],
                "sensitivity": model["sensitivity"],
                "specificity": model["specificity"],
                "precision": model["ppv"],
                "f1": model["f1"],
            }
        )
    for rnd in (1, 2):
        g = metrics[metrics["round"] == rnd]
        if g.empty:
            continue
        row = {"group": f"Readers {ROUND_NAMES[rnd]}", "n_readers": len(g)}
        for c in cols:
            row["precision" if c == "ppv" else c] = float(g[c].mean())
        row["auc"] = float(g["auc"].mean())
        lo = hi = math.nan
        if mrmc is not None:
            ci = mrmc.treatment_cis[rnd - 1]
            row["auc"], lo, hi = ci["estimate"], ci["lo"], ci["hi"]
        elif len(g) == 1:
            lo, hi = float(g["auc_lo"].iat[0]), float(g["auc_hi"].iat[0])
        row.update(auc_lo=lo, auc_hi=hi)
        rows.append(row)
    order = ["group", "n_readers", "accuracy", "auc", "auc_lo", "auc_hi"]
    order += ["sensitivity", "specificity", "precision", "f1"]
    return pd.DataFrame(rows, columns=order)


def model_metrics(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> dict:
    """Binary metrics at ``score >= threshold`` and AUC with DeLong 95% CI of a model."""
    bm = binary_metrics(y, s, threshold).as_dict()
    res = auc_ci(y, s)
    return {**bm, "auc": res.auc, "auc_lo": res.lo, "auc_hi": res.hi, "n": len(y)}


# --------------------------------------------------------------------- figure
def roc_figure(
    reads: pd.DataFrame,
    truth: pd.Series,
    cut: str = DEFAULT_CUT,
    model: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """PNG of the empirical BI-RADS ROC curves per reader (solid: with AI, dashed:
    without AI), each reader's operating point at the cut (open: without AI,
    filled: with AI) and the model's ROC curve when given."""
    import matplotlib

    from buscad.evaluate.plots import legend_below, new_figure
    from buscad.evaluate.plots import roc_points as _roc_points

    df, _ = _with_truth(reads, truth)
    thr = cut_rank(cut)
    fig, ax = new_figure((5.5, 5.5), dpi=110)
    colours = matplotlib.colormaps["tab10"]
    for k, (rid, g) in enumerate(df.groupby("reader_id", sort=True)):
        col = colours(k % 10)
        for rnd, ls, mk in ((1, "--", "o"), (2, "-", "o")):
            h = g[g["round"] == rnd]
            y, s = h["y"].to_numpy(), h["rank"].to_numpy()
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr = _roc_points(y, s)
            ax.plot(fpr, tpr, ls, color=col, lw=1.2, alpha=0.8, label=f"{rid} {ROUND_NAMES[rnd]}")
            bm = binary_metrics(y, s, thr)
            ax.plot(
                1 - bm.specificity,
                bm.sensitivity,
                mk,
                ms=7,
                mec=col,
                mfc=col if rnd == 2 else "white",
            )
    if model is not None:
        fpr, tpr = _roc_points(*model)
        ax.plot(fpr, tpr, "-", color="black", lw=2, label=f"Model (AUC {roc_auc(*model):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="Sensitivity")
    ax.set_title(f"ROC of BI-RADS; points: calls at >= {normalize_birads(cut).upper()}")
    legend_below(ax, ncol=2)  # outside the plot area, never over a curve
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


# --------------------------------------------------------------------- report
def _fmt_table(df: pd.DataFrame, caption: str) -> Any:
    """A numeric table with its caption, as trusted markup for the report template."""
    body = df.to_html(
        index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, escape=True
    )
    return trusted(
        re.sub(
            r"^<table[^>]*>",
            f'<table class="num"><caption>{html.escape(caption)}</caption>',
            body,
            count=1,
        )
    )


def _table3_display(t3: pd.DataFrame) -> pd.DataFrame:
    readers = [str(n) if n else "–" for n in t3["n_readers"]]
    out = pd.DataFrame({"": t3["group"], "Readers": readers})
    out["Accuracy"] = t3["accuracy"].map(lambda v: f"{v:.3f}")
    out["AUC (95% CI)"] = [
        f"{a:.3f} ({lo:.3f}–{hi:.3f})" if not math.isnan(lo) else f"{a:.3f}"
        for a, lo, hi in zip(t3["auc"], t3["auc_lo"], t3["auc_hi"], strict=True)
    ]
    for c, name in (("sensitivity", "Sensitivity"), ("specificity", "Specificity")):
        out[name] = t3[c].map(lambda v: f"{v:.3f}")
    out["Precision"] = t3["precision"].map(lambda v: f"{v:.3f}")
    out["F1"] = t3["f1"].map(lambda v: f"{v:.3f}")
    return out


def render_html(
    t3: pd.DataFrame,
    metrics: pd.DataFrame,
    paired: pd.DataFrame,
    mrmc: ORResult | None,
    mrmc_note: str,
    notes: dict,
    cut: str,
    png: bytes,
    title: str = "Reader study",
    model_threshold: float | None = None,
) -> str:
    """A self-contained HTML report (figure as a data URI, no external assets).

    Rendered from ``buscad/report/templates/reader.html.j2`` with the shared report
    stylesheet inlined.
    """
    show_threshold = model_threshold is not None and bool((t3["group"] == "Model").any())
    ctx: dict[str, Any] = {
        "title": title,
        "cut": (normalize_birads(cut) or cut).upper(),
        "notes": notes,
        "table3": _fmt_table(_table3_display(t3), "Model and readers without / with AI"),
        "model_threshold": f"{model_threshold:g}" if show_threshold else None,
        "roc_png": base64.b64encode(png).decode("ascii"),
        "metrics": _fmt_table(
            metrics, "Metrics per reader and round (AUC: BI-RADS rank, DeLong 95% CI)"
        ),
        "paired": None
        if paired.empty
        else _fmt_table(paired, "Paired DeLong test (with - without AI) and McNemar tests"),
        "mrmc": mrmc,
        "mrmc_note": mrmc_note,
    }
    if mrmc is not None:
        vc = pd.DataFrame(
            {
                "component": ["Var(error)", "Cov1", "Cov2", "Cov3", "sigma2_R", "sigma2_TR"],
                "estimate": [
                    mrmc.var_error,
                    mrmc.cov1,
                    mrmc.cov2,
                    mrmc.cov3,
                    mrmc.var_reader,
                    mrmc.var_treatment_reader,
                ],
            }
        )
        ctx["diff"] = mrmc.differences[0]
        ctx["treatment_cis"] = _fmt_table(
            pd.DataFrame(mrmc.treatment_cis), "Reader-averaged AUC per condition"
        )
        ctx["variance"] = _fmt_table(vc, "Variance components")
    return render_page("reader.html.j2", **ctx)


# --------------------------------------------------------------------- driver
@dataclass
class ReaderAnalysis:
    """Everything :func:`analyze` computed."""

    metrics: pd.DataFrame
    paired: pd.DataFrame
    table3: pd.DataFrame
    mrmc: ORResult | None
    mrmc_note: str
    mrmc_confidence: ORResult | None
    notes: dict
    files: dict[str, Path] = field(default_factory=dict)


def analyze(
    reads: pd.DataFrame,
    truth: pd.Series,
    out_dir: str | os.PathLike[str] | None = None,
    cut: str = DEFAULT_CUT,
    model_scores: pd.Series | None = None,
    model_threshold: float = 0.5,
    cov: str = "jackknife",
    title: str = "Reader study",
) -> ReaderAnalysis:
    """Run every analysis; with ``out_dir`` write ``metrics.csv``, ``paired_tests.csv``,
    ``table3.csv``, ``mrmc.json``, ``roc.png`` and ``report.html`` (atomically).

    The model row of Table 3 uses ``model_scores`` when given, else the
    ``ai_score`` shown to readers in round 2 (one score per case) when present.
    """
    from buscad.utils import (
        atomic_path,
        atomic_write_json,
        atomic_write_table,
        atomic_write_text,
    )

    reads = check_reads(reads)
    cut_rank(cut)
    _, notes = _with_truth(reads, truth)
    met = reader_metrics(reads, truth, cut)
    pt = paired_tests(reads, truth, cut)
    mr, note = mrmc_reads(reads, truth, "rank", cov)
    mr_conf, _ = mrmc_reads(reads, truth, "confidence", cov)
    if model_scores is None and "ai_score" in reads.columns:
        r2 = reads[(reads["round"] == 2) & reads["ai_score"].notna()]
        if len(r2):
            model_scores = r2.groupby("case_id")["ai_score"].first()
    model = None
    model_xy = None
    if model_scores is not None:
        ids = [c for c in model_scores.index if c in truth.index]
        if ids:
            y, s = truth.loc[ids].to_numpy(), model_scores.loc[ids].to_numpy(dtype=float)
            if len(np.unique(y)) == 2:
                model = model_metrics(y, s, model_threshold)
                model_xy = (y, s)
    t3 = table3(met, mr, model)
    res = ReaderAnalysis(met, pt, t3, mr, note, mr_conf, notes)
    if out_dir is None:
        return res
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = roc_figure(reads, truth, cut, model_xy)
    res.files = {
        "metrics": atomic_write_table(met, out / "metrics.csv"),
        "paired": atomic_write_table(pt, out / "paired_tests.csv"),
        "table3": atomic_write_table(t3, out / "table3.csv"),
        "mrmc": atomic_write_json(
            out / "mrmc.json",
            {
                "birads": mr.as_dict() if mr else None,
                "confidence": mr_conf.as_dict() if mr_conf else None,
                "note": note,
                "cut": cut,
                "reads": notes,
                "model": model,
            },
        ),
    }
    with atomic_path(out / "roc.png") as tmp:
        tmp.write_bytes(png)
    res.files["roc"] = out / "roc.png"
    res.files["report"] = atomic_write_text(
        out / "report.html",
        render_html(t3, met, pt, mr, note, notes, cut, png, title, model_threshold),
    )
    return res
