"""Reader-study statistics: hand-computed metrics, McNemar, DeLong, OR MRMC golden values, CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from buscad.data.birads import BIRADS_RANK, birads_rank, cut_rank
from buscad.evaluate.mrmc import jackknife_auc_cov, or_analysis, or_analysis_long
from buscad.reader.analysis import (
    analyze,
    check_reads,
    load_truth,
    mcnemar,
    paired_tests,
    reader_metrics,
)

DATA = Path(__file__).parent / "data"
# The test's own ordinal scale, written independently of BIRADS_RANK.
SCALE = ["1", "2", "3", "4", "4a", "4b", "4c", "5"]
MALIGNANT_AT_4B = {"4b", "4c", "5"}


def _confusion(y: np.ndarray, called: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(((called == 1) & (y == 1)).sum()),
        int(((called == 1) & (y == 0)).sum()),
        int(((called == 0) & (y == 0)).sum()),
        int(((called == 0) & (y == 1)).sum()),
    )


def _move_toward_truth(birads: list[str], y: np.ndarray, frac: float, seed: int) -> list[str]:
    """Simulated 'with AI' reads: a random ``frac`` of reads move one step toward the truth."""
    steps = ["2", "3", "4a", "4b", "4c", "5"]
    rng = np.random.default_rng(seed)
    out = list(birads)
    for i in np.flatnonzero(rng.random(len(out)) < frac):
        k = steps.index(out[i]) if out[i] in steps else None
        if k is None:
            continue
        out[i] = steps[min(k + 1, 5)] if y[i] == 1 else steps[max(k - 1, 0)]
    return out


# ------------------------------------------------------------------- scale
def test_birads_scale_and_plain_4():
    assert [BIRADS_RANK[c] for c in SCALE] == sorted(BIRADS_RANK[c] for c in SCALE)
    assert BIRADS_RANK["3"] < BIRADS_RANK["4"] < BIRADS_RANK["4a"]  # plain 4 below 4A
    r = birads_rank(["BI-RADS 4B", "4", "4A", 0, None, "5"])
    assert r[0] == BIRADS_RANK["4b"] and r[1] < r[2] and np.isnan(r[3]) and np.isnan(r[4])
    assert cut_rank("4B") == BIRADS_RANK["4b"]
    with pytest.raises(ValueError, match="binarisation cut must be one of"):
        cut_rank("6")


# ----------------------------------------------------------------- McNemar
def test_mcnemar_hand_values():
    ex = mcnemar(10, 2)  # b + c < 25 -> exact
    assert ex.method == "exact"
    assert ex.p == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    cc = mcnemar(30, 15)
    assert cc.method == "chi2-cc"
    assert cc.statistic == pytest.approx(14**2 / 45)
    assert cc.p == pytest.approx(stats.chi2.sf(14**2 / 45, 1))
    assert mcnemar(0, 0).p == 1.0
    assert mcnemar(3, 3).p == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar(-1, 2)


# ------------------------------------------------------------- synthetic data
def _synthetic_reads(n_cases: int = 60, readers: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    cases = [f"c{i:03d}" for i in range(n_cases)]
    y = (rng.random(n_cases) < 0.4).astype(int)
    y[:2], y[2:4] = 1, 0
    truth = pd.Series(y, index=cases)
    rows = []
    for r in range(readers):
        base = np.clip(np.round(1.2 * y + rng.normal(3.6, 1.3, n_cases)).astype(int), 0, 7)
        r1 = [SCALE[k] for k in base]
        r2 = _move_toward_truth(r1, y, 0.35, seed=100 + r)
        for rnd, cats in ((1, r1), (2, r2)):
            for i, c in enumerate(cases):
                conf = float(np.clip(100 * (SCALE.index(cats[i]) / 7) + rng.normal(0, 8), 0, 100))
                rows.append(
                    {
                        "reader_id": f"R{r + 1}",
                        "case_id": c,
                        "round": rnd,
                        "birads": cats[i],
                        "confidence": conf,
                        "ai_score": float(np.clip(0.5 * y[i] + rng.random() * 0.6, 0, 1))
                        if rnd == 2
                        else np.nan,
                    }
                )
    # a normal case and a BI-RADS 0 read are excluded from every statistic
    rows.append({"reader_id": "R1", "case_id": "normal1", "round": 1, "birads": "1"})
    return check_reads(pd.DataFrame(rows)), truth


def test_reader_metrics_match_hand_counts_synthetic():
    reads, truth = _synthetic_reads()
    met = reader_metrics(reads, truth, cut="4b")
    assert len(met) == 6 and set(met["round"]) == {1, 2}
    for row in met.itertuples(index=False):
        g = reads[(reads["reader_id"] == row.reader_id) & (reads["round"] == row.round)]
        g = g[g["case_id"].isin(truth.index)]
        y = truth.loc[g["case_id"]].to_numpy()
        called = g["birads"].isin(MALIGNANT_AT_4B).to_numpy().astype(int)
        tp, fp, tn, fn = _confusion(y, called)
        assert (row.tp, row.fp, row.tn, row.fn) == (tp, fp, tn, fn)
        assert row.n == 60
        assert row.accuracy == pytest.approx((tp + tn) / 60)
        assert row.sensitivity == pytest.approx(tp / (tp + fn))
        assert row.specificity == pytest.approx(tn / (tn + fp))
        assert row.ppv == pytest.approx(tp / (tp + fp))
        assert row.npv == pytest.approx(tn / (tn + fn))
        assert row.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
        ordinal = g["birads"].map({c: i for i, c in enumerate(SCALE)}).to_numpy()
        assert row.auc == pytest.approx(roc_auc_score(y, ordinal))
        assert row.auc_lo < row.auc < row.auc_hi
        assert row.auc_confidence == pytest.approx(roc_auc_score(y, g["confidence"]))
    # a different cut changes the calls as expected
    met4 = reader_metrics(reads, truth, cut="4")
    r1 = reads[
        (reads["reader_id"] == "R1") & (reads["round"] == 1) & reads["case_id"].isin(truth.index)
    ]
    y = truth.loc[r1["case_id"]].to_numpy()
    called = r1["birads"].isin({"4", "4a", "4b", "4c", "5"}).to_numpy().astype(int)
    row = met4[(met4["reader_id"] == "R1") & (met4["round"] == 1)].iloc[0]
    assert (row.tp, row.fp, row.tn, row.fn) == _confusion(y, called)


def test_paired_tests_match_hand_counts_synthetic():
    reads, truth = _synthetic_reads()
    pt = paired_tests(reads, truth, cut="4b")
    assert pt["reader_id"].tolist() == ["R1", "R2", "R3"]
    for row in pt.itertuples(index=False):
        g = reads[(reads["reader_id"] == row.reader_id) & reads["case_id"].isin(truth.index)]
        w = g.pivot(index="case_id", columns="round", values="birads")
        y = truth.loc[w.index].to_numpy()
        ok1 = w[1].isin(MALIGNANT_AT_4B).to_numpy() == (y == 1)
        ok2 = w[2].isin(MALIGNANT_AT_4B).to_numpy() == (y == 1)
        assert row.mcnemar_accuracy_b == int((ok2 & ~ok1).sum())
        assert row.mcnemar_accuracy_c == int((ok1 & ~ok2).sum())
        m = y == 1
        assert row.mcnemar_sensitivity_b == int((ok2 & ~ok1)[m].sum())
        assert row.mcnemar_specificity_c == int((ok1 & ~ok2)[~m].sum())
        o1 = w[1].map(SCALE.index).to_numpy()
        o2 = w[2].map(SCALE.index).to_numpy()
        assert row.auc_without_ai == pytest.approx(roc_auc_score(y, o1))
        assert row.auc_with_ai == pytest.approx(roc_auc_score(y, o2))
        assert row.auc_diff == pytest.approx(row.auc_with_ai - row.auc_without_ai)
        assert 0 <= row.delong_p <= 1
        # moving reads toward the truth can only help
        assert row.auc_diff > 0 and row.mcnemar_accuracy_c == 0


def test_jackknife_covariance_equals_brute_force_leave_one_out():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(9, int), np.zeros(12, int)]
    scores = rng.integers(1, 6, size=(3, 21)).astype(float) + y
    aucs, cov = jackknife_auc_cov(y, scores)
    loo = np.array(
        [[roc_auc_score(np.delete(y, k), np.delete(s, k)) for k in range(len(y))] for s in scores]
    )
    c = len(y)
    expected = (
        (c - 1) / c * (loo - loo.mean(1, keepdims=True)) @ (loo - loo.mean(1, keepdims=True)).T
    )
    np.testing.assert_allclose(aucs, [roc_auc_score(y, s) for s in scores])
    np.testing.assert_allclose(cov, expected, rtol=1e-10, atol=1e-15)


def test_or_analysis_rejects_bad_designs():
    y = np.r_[np.ones(5, int), np.zeros(5, int)]
    with pytest.raises(ValueError, match=">= 2 treatments and >= 2 readers"):
        or_analysis(y, np.zeros((2, 1, 10)))
    with pytest.raises(ValueError, match="shape"):
        or_analysis(y, np.zeros((2, 3, 9)))
    with pytest.raises(ValueError, match="unknown covariance method"):
        or_analysis(y, np.random.default_rng(0).random((2, 2, 10)), cov="bootstrap")


# --------------------------------------------------------------- MRMC golden
def test_or_mrmc_golden_van_dyke():
    """Obuchowski–Rockette on the Van Dyke (1993) data against published outputs.

    References (empirical = trapezoidal AUC, random readers and cases, Hillis 2008 ddf):
    jackknife covariances: MRMCaov README v0.1.8 (github.com/brian-j-smith/MRMCaov,
    ``summary(mrmc(empirical_auc(truth, rating), treatment, reader, case, data = VanDyke))``)
    and the RJafroc book (``StSignificanceTesting(dataset02, FOM = "Wilcoxon")``):
    F = 4.456319, ddf = 15.25967, p = 0.05166569; Var = 0.0008022883,
    Cov1 = 0.0003466137, Cov2 = 0.0003440748, Cov3 = 0.0002390284,
    sigma2_R = 0.0015349993, sigma2_TR = 0.0002004025, MS(T) = 0.004796171,
    MS(T:R) = 0.0005510306; difference -0.04380032, SE 0.02074862,
    CI (-0.0879594986, 0.0003588544); per treatment 0.8970370 (SE 0.03317360,
    df 12.74465) and 0.9408374 (SE 0.02156637, df 12.71019).
    DeLong covariances: MRMCaov paper source docs/jss/MRMCaov.tex (commit f1c63dc):
    F = 4.484854, ddf = 15.06611, p = 0.05123303; Var = 0.0007921325,
    Cov1 = 0.0003420090, Cov2 = 0.0003395265, Cov3 = 0.0002358497.
    """
    df = pd.read_csv(DATA / "vandyke.csv")
    assert df.shape == (1140, 5) and df.groupby("truth")["case"].nunique().tolist() == [69, 45]
    jk = or_analysis_long(df, cov="jackknife")
    assert jk.treatment_means == pytest.approx([0.8970370, 0.9408374], abs=5e-8)
    assert jk.f == pytest.approx(4.456319, abs=5e-7)
    assert jk.df2 == pytest.approx(15.25967, abs=5e-6)
    assert jk.p == pytest.approx(0.05166569, abs=5e-9)
    for got, want in (
        (jk.var_error, 0.0008022883),
        (jk.cov1, 0.0003466137),
        (jk.cov2, 0.0003440748),
        (jk.cov3, 0.0002390284),
        (jk.var_reader, 0.0015349993),
        (jk.var_treatment_reader, 0.0002004025),
        (jk.ms_t, 0.004796171),
        (jk.ms_tr, 0.0005510306),
    ):
        assert got == pytest.approx(want, rel=1e-6)
    d = jk.differences[0]
    assert d["estimate"] == pytest.approx(-0.04380032, abs=5e-9)
    assert d["se"] == pytest.approx(0.02074862, abs=5e-9)
    assert (d["lo"], d["hi"]) == pytest.approx((-0.0879594986, 0.0003588544), abs=1e-9)
    ci1, ci2 = jk.treatment_cis
    assert (ci1["se"], ci1["df"]) == pytest.approx((0.03317360, 12.74465), abs=5e-6)
    assert (ci2["se"], ci2["df"]) == pytest.approx((0.02156637, 12.71019), abs=5e-6)
    assert (ci1["lo"], ci1["hi"]) == pytest.approx((0.8252236, 0.9688505), abs=5e-8)
    dl = or_analysis_long(df, cov="delong")
    assert dl.f == pytest.approx(4.484854, abs=5e-7)
    assert dl.df2 == pytest.approx(15.06611, abs=5e-6)
    assert dl.p == pytest.approx(0.05123303, abs=5e-9)
    for got, want in (
        (dl.var_error, 0.0007921325),
        (dl.cov1, 0.0003420090),
        (dl.cov2, 0.0003395265),
        (dl.cov3, 0.0002358497),
    ):
        assert got == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------- full analysis
def test_analyze_writes_a_self_contained_report(tmp_path):
    reads, truth = _synthetic_reads()
    res = analyze(reads, truth, tmp_path / "out", cut="4b")
    assert res.notes["reads_without_lesion_truth"] == 1
    assert res.notes["reads_used"] == 360
    t3 = res.table3
    assert t3["group"].tolist() == ["Model", "Readers without AI", "Readers with AI"]
    met = res.metrics
    for rnd, name in ((1, "Readers without AI"), (2, "Readers with AI")):
        row = t3[t3["group"] == name].iloc[0]
        assert row["accuracy"] == pytest.approx(met[met["round"] == rnd]["accuracy"].mean())
        assert row["auc"] == pytest.approx(met[met["round"] == rnd]["auc"].mean())
        assert row["auc_lo"] < row["auc"] < row["auc_hi"]
    # the model row comes from the AI score shown in round 2
    ai = reads[reads["round"] == 2].groupby("case_id")["ai_score"].first().loc[truth.index]
    assert t3.iloc[0]["auc"] == pytest.approx(roc_auc_score(truth.to_numpy(), ai.to_numpy()))
    assert res.mrmc is not None and res.mrmc.readers == ["R1", "R2", "R3"]
    assert res.mrmc.treatment_means[1] > res.mrmc.treatment_means[0]
    assert res.mrmc_confidence is not None
    for name in ("metrics.csv", "paired_tests.csv", "table3.csv", "mrmc.json", "roc.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Table 3" in page
    assert "Obuchowski" in page and "F = " in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # one reader only: no MRMC, the report says why
    one = analyze(reads[reads["reader_id"] == "R1"], truth, tmp_path / "one")
    assert one.mrmc is None and "needs >= 2 readers" in one.mrmc_note
    assert "Not done: MRMC needs" in (tmp_path / "one" / "report.html").read_text()


# ------------------------------------------------------------- real data
@pytest.mark.realdata
def test_breast_radiologist_as_round_one(breast_dir, tmp_path):
    """BrEaST-Lesions_USG (Pawlowska et al., Sci Data 11:148, 2024): the radiologist's
    BI-RADS as round 1 and a simulated round 2 (reads moved one step toward the truth)."""
    clin = pd.read_csv(breast_dir / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv")
    clin = clin[clin["Classification"].isin(["benign", "malignant"])].reset_index(drop=True)
    ids = clin["Image_filename"].str.replace(".png", "", regex=False).tolist()
    y = (clin["Classification"] == "malignant").to_numpy().astype(int)
    r1 = clin["BIRADS"].astype(str).str.strip().str.lower().tolist()
    r2 = _move_toward_truth(r1, y, 0.3, seed=7)
    truth_csv = tmp_path / "truth.csv"
    pd.DataFrame(
        {
            "image_id": [*ids, "case_normal"],
            "image_path": [f"{i}.png" for i in ids] + ["n.png"],
            "label": [*clin["Classification"].tolist(), "normal"],
        }
    ).to_csv(truth_csv, index=False)
    truth = load_truth(truth_csv)
    assert len(truth) == 252 and int(truth.sum()) == 98
    reads = check_reads(
        pd.DataFrame(
            {
                "reader_id": "radiologist",
                "case_id": ids * 2,
                "round": [1] * len(ids) + [2] * len(ids),
                "birads": r1 + r2,
            }
        )
    )
    met = reader_metrics(reads, truth, cut="4b").set_index("round")
    for rnd, cats in ((1, r1), (2, r2)):
        called = np.isin(cats, list(MALIGNANT_AT_4B)).astype(int)
        tp, fp, tn, fn = _confusion(y, called)
        row = met.loc[rnd]
        assert (row.tp, row.fp, row.tn, row.fn) == (tp, fp, tn, fn)
        assert row.sensitivity == pytest.approx(tp / (tp + fn))
        assert row.specificity == pytest.approx(tn / (tn + fp))
        assert row.auc == pytest.approx(roc_auc_score(y, [SCALE.index(c) for c in cats]))
    # the published crosstab of BIRADS x Classification gives the round-1 counts directly
    assert (met.loc[1].tp, met.loc[1].fp, met.loc[1].tn, met.loc[1].fn) == (97, 44, 110, 1)
    pt = paired_tests(reads, truth).iloc[0]
    ok1 = np.isin(r1, list(MALIGNANT_AT_4B)) == (y == 1)
    ok2 = np.isin(r2, list(MALIGNANT_AT_4B)) == (y == 1)
    b, c = int((ok2 & ~ok1).sum()), int((ok1 & ~ok2).sum())
    assert (pt.mcnemar_accuracy_b, pt.mcnemar_accuracy_c) == (b, c)
    assert pt.mcnemar_accuracy_p == pytest.approx(mcnemar(b, c).p)
    assert pt.auc_with_ai > pt.auc_without_ai and pt.delong_p < 0.05
    # a second (simulated) reader enables the MRMC analysis; its CIs stay within [0, 1]
    r1b = _move_toward_truth(r1, 1 - y, 0.2, seed=50)
    reads_b = reads.assign(
        reader_id="simulated_b", birads=r1b + _move_toward_truth(r1b, y, 0.3, seed=8)
    )
    res = analyze(pd.concat([reads, reads_b]), truth, cut="4b")
    assert res.mrmc is not None and res.mrmc.n_cases == 252
    assert all(0 <= ci["lo"] < ci["hi"] <= 1 for ci in res.mrmc.treatment_cis)


# ------------------------------------------------------------------- CLI
def test_cli_store_export_analyze(tmp_path):
    from buscad.cli import app
    from buscad.data.manifest import Manifest
    from buscad.reader.store import ReaderStudy

    reads, truth = _synthetic_reads(n_cases=30, readers=2, seed=4)
    man = Manifest(
        pd.DataFrame(
            {
                "image_id": truth.index,
                "image_path": "x.png",
                "label": np.where(truth.to_numpy() == 1, "malignant", "benign"),
            }
        ),
        root=tmp_path,
    )
    man.save(tmp_path / "manifest.csv")
    clock = [datetime(2026, 1, 5, tzinfo=UTC)]
    db = tmp_path / "study.db"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["reader", "create", str(db), "-m", str(tmp_path / "manifest.csv"), "--readers", "R1,R2"],
    )
    assert res.exit_code == 0, res.output
    assert "30 cases and 2 reader(s)" in res.output
    study = ReaderStudy.open(db, clock=lambda: clock[0])
    lookup = reads.set_index(["reader_id", "case_id", "round"])
    for rnd in (1, 2):
        for rid in ("R1", "R2"):
            while (cid := study.next_case(rid, rnd)) is not None:
                r = lookup.loc[(rid, cid, rnd)]
                study.record(rid, cid, rnd, r["birads"], confidence=r["confidence"])
        clock[0] += timedelta(days=15)
    out_csv = tmp_path / "reads.csv"
    res = runner.invoke(app, ["reader", "export", str(db), "-o", str(out_csv)])
    assert res.exit_code == 0, res.output
    assert "wrote 120 reads" in res.output
    assert len(pd.read_csv(out_csv)) == 120
    res = runner.invoke(
        app,
        ["reader", "analyze", str(out_csv), "--truth", str(tmp_path / "manifest.csv"),
         "-o", str(tmp_path / "rep"), "--binarize", "4B"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Readers without AI: accuracy" in res.output and "MRMC (OR, jackknife): F=" in res.output
    assert (tmp_path / "rep" / "report.html").is_file()
    # same numbers as the library on the original table
    met = pd.read_csv(tmp_path / "rep" / "metrics.csv")
    ref = reader_metrics(reads, truth, "4b")
    np.testing.assert_allclose(met["auc"], ref["auc"])
    np.testing.assert_array_equal(met["tp"], ref["tp"])
    res = runner.invoke(
        app,
        ["reader", "analyze", str(out_csv), "--truth", str(tmp_path / "manifest.csv"),
         "-o", str(tmp_path / "rep2"), "--binarize", "7"],
    )  # fmt: skip
    assert res.exit_code != 0 and "binarize" in res.output


def test_input_tables_are_checked(tmp_path):
    from buscad.errors import InputFileError
    from buscad.reader.analysis import load_reads

    p = tmp_path / "reads.csv"
    pd.DataFrame({"reader_id": ["R1"], "case_id": ["a"], "birads": ["3"]}).to_csv(p, index=False)
    with pytest.raises(InputFileError, match=r"reads\.csv: missing column\(s\) round"):
        load_reads(p)
    pd.DataFrame(
        {"reader_id": ["R1", "R1"], "case_id": ["a", "a"], "round": [1, 1], "birads": ["3", "4"]}
    ).to_csv(p, index=False)
    with pytest.raises(InputFileError, match="read case 'a' twice in round 1"):
        load_reads(p)
    pd.DataFrame({"reader_id": ["R1"], "case_id": ["a"], "round": [3], "birads": ["3"]}).to_csv(
        p, index=False
    )
    with pytest.raises(InputFileError, match="round must be 1 or 2"):
        load_reads(p)
    pd.DataFrame({"reader_id": ["R1"], "case_id": ["a"], "round": [1], "birads": ["4d"]}).to_csv(
        p, index=False
    )
    with pytest.raises(InputFileError, match="not a BI-RADS category"):
        load_reads(p)
    t = tmp_path / "truth.csv"
    pd.DataFrame({"case_id": ["a", "b", "c"], "label": ["Malignant", "B", "normal"]}).to_csv(
        t, index=False
    )
    assert load_truth(t).to_dict() == {"a": 1, "b": 0}
    pd.DataFrame({"case_id": ["a"], "diagnosis": ["m"]}).to_csv(t, index=False)
    with pytest.raises(InputFileError, match="needs an image_id \\(or case_id\\) and a label"):
        load_truth(t)
