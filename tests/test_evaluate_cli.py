"""``buscad evaluate`` end to end, the evaluate_predictions API, bad input and the report builder."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from buscad.cli import app
from buscad.evaluate import EvaluationInputError, evaluate_predictions, select_threshold
from buscad.labels import model_label
from buscad.report import Figure, KeyValue, Section, Table, Text, build_report, tripod_ai_checklist


def make_predictions(n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cohort = np.where(np.arange(n) < n // 2, "train", "external")

    def prob(k: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(k * (y - 0.5) + rng.normal(0, 1, n))))

    return pd.DataFrame(
        {
            "case_id": [f"c{i:03d}" for i in range(n)],
            "label": np.where(y == 1, "malignant", "benign"),
            "cohort": cohort,
            "cnn": prob(2.5),
            "radiomics": prob(1.2),
            "age": rng.normal(52, 11, n).round(),
            "birads": rng.choice(["3", "4a", "4b", "5"], n),
        }
    )


OFFLINE_BAD = re.compile(r"<script|<link|@import|url\(|src=\"(?!data:)|https?://", re.I)


def test_cli_writes_tables_figures_and_offline_report(tmp_path):
    pred = tmp_path / "predictions.csv"
    make_predictions().to_csv(pred, index=False)
    out = tmp_path / "eval"
    audit = tmp_path / "audit.json"
    audit.write_text('{"near_duplicates": 3, "with_calipers": 7}')
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(pred),
            "-o",
            str(out),
            "--train-cohort",
            "train",
            "--threshold",
            "sens:0.9",
            "--audit",
            str(audit),
            "--split",
            "Patient-level split by centre.",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "2 model(s), 2 cohort(s)" in res.output
    for stem in ("table1_baseline", "table2_metrics", "table3_delong"):
        for ext in ("csv", "xlsx", "md"):
            assert (out / "tables" / f"{stem}.{ext}").stat().st_size > 0
    t2 = pd.read_csv(out / "tables" / "table2_metrics.csv")
    assert len(t2) == 4 and set(t2["Cohort"]) == {"train", "external"}
    assert pd.read_excel(out / "tables" / "table3_delong.xlsx").shape[0] == 4
    for kind in ("roc", "calibration", "decision_curve"):
        for c in ("train", "external"):
            assert (out / "figures" / f"{kind}_{c}.png").stat().st_size > 1000
            assert (out / "figures" / f"{kind}_{c}.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "figures" / "confusion_external.png").exists()  # one grid per cohort
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not OFFLINE_BAD.search(html), OFFLINE_BAD.search(html)
    for heading in (
        "Table 1. Baseline characteristics",
        "Table 2. Performance per cohort",
        "Table 3. Paired comparisons of models (DeLong, McNemar)",
        "Data audit",
        "Data and split",
        "Model card",
        "TRIPOD+AI checklist",
        "Configuration and environment",
    ):
        assert heading in html
    assert html.count("data:image/png;base64,") == 8  # 3 kinds x 2 cohorts + 2 confusion grids
    assert str(pred) in html  # input hash recorded under its path
    assert "near duplicates" in html and "Patient-level split by centre." in html
    assert "rule sens:0.9, chosen on train" in html
    card = (out / "model_card.md").read_text()
    assert "# Model card: cnn" in card and "chosen on train" in card
    checklist = pd.read_csv(out / "tables" / "tripod_ai_checklist.csv")
    assert {"filled by run", "for the author"} == set(checklist["Status"])


def test_threshold_is_chosen_on_training_cohort_and_never_retuned():
    df = make_predictions(seed=1)
    r = evaluate_predictions(
        df, ["cnn", "radiomics"], train_cohort="train", threshold_rule="youden"
    )
    tr = df[df.cohort == "train"]
    expected = select_threshold((tr.label == "malignant").astype(int), tr.cnn, "youden")
    rows = r.metrics[r.metrics.model == "cnn"]
    assert r.thresholds["cnn"] == expected
    assert (rows["threshold"] == expected).all()
    ext = df[df.cohort == "external"]
    retuned = select_threshold((ext.label == "malignant").astype(int), ext.cnn, "youden")
    assert retuned != expected  # this seed: the external optimum differs, and was not used
    assert set(r.table3()["Cohort"]) == {"train", "external"}
    assert len(r.cohort_comparisons) == 2  # one unpaired test per model


def test_bad_input_reports_and_goes_on(tmp_path):
    df = make_predictions(n=120, seed=2)
    df.loc[df.cohort == "external", "label"] = "benign"  # one-class cohort
    df.loc[[3, 7, 90], "radiomics"] = np.nan  # NaN scores
    df["flat"] = 0.5  # constant model column
    extra = df[["case_id", "label", "cohort"]].iloc[5:].copy()  # second file, ids mismatched
    extra["other_model"] = np.linspace(0, 1, len(extra))
    extra.loc[extra.index[0], "case_id"] = "zzz999"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    df.to_csv(a, index=False)
    extra.to_csv(b, index=False)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", str(a), str(b), "-o", str(out)])
    assert res.exit_code == 0, res.output
    msgs = res.output
    assert "cohort 'external': only one class (60 benign, 0 malignant)" in msgs
    # 3 NaN set above + the case only in b.csv (no score in a.csv)
    assert "model column 'radiomics': 4 NaN score(s) (train: 3, external: 1)" in msgs
    assert "model column 'flat': constant scores" in msgs
    assert "case ids do not match" in msgs and "b.csv" in msgs
    t2 = pd.read_csv(out / "tables" / "table2_metrics.csv", keep_default_na=False)
    assert "flat" not in set(t2["Model"]) and {"cnn", "radiomics"} <= set(t2["Model"])
    ext = t2[t2.Cohort == "external"]
    assert (ext["AUC (95% CI)"] == "n/a").all() and ext["Specificity"].notna().all()
    assert (out / "report.html").exists() and (out / "figures" / "roc_train.png").exists()
    assert "only one class" in (out / "issues.txt").read_text()


def test_evaluate_predictions_errors_name_the_column():
    df = make_predictions(n=40)
    with pytest.raises(EvaluationInputError, match="label column 'truth' not found"):
        evaluate_predictions(df, ["cnn"], label_col="truth")
    with pytest.raises(EvaluationInputError, match="model column\\(s\\) not found: nope"):
        evaluate_predictions(df, ["nope"])
    with pytest.raises(EvaluationInputError, match="training cohort 'dev' not found"):
        evaluate_predictions(df, ["cnn"], train_cohort="dev")
    with pytest.raises(ValueError, match="unknown threshold rule"):
        evaluate_predictions(df, ["cnn"], threshold_rule="magic")


def test_cli_bad_file_is_one_line_error(tmp_path):
    bad = tmp_path / "p.csv"
    pd.DataFrame({"case_id": [1], "score": [0.2]}).to_csv(bad, index=False)
    res = CliRunner().invoke(app, ["evaluate", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "no label column 'label'" in str(res.exception)


def test_report_builder_generic(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    out = build_report(
        [
            Section("Intro", [Text("Hello <b>world</b>\n\nSecond paragraph.")]),
            Section(
                "Numbers",
                [Table(pd.DataFrame({"a": [1.23456, 2.0]}), "A table"), KeyValue({"seed": 0})],
            ),
            Section("Plot", [Figure(fig, "A figure")]),
        ],
        tmp_path / "r.html",
        "Generic report",
    )
    html = out.read_text()
    assert "Hello &lt;b&gt;world&lt;/b&gt;" in html and "<p>Second paragraph.</p>" in html
    assert 'href="#intro"' in html and "1.235" in html and "data:image/png;base64," in html
    assert not OFFLINE_BAD.search(html)
    ck = tripod_ai_checklist({"performance": "Table 2"})
    assert ck.loc[ck.Item == "23a", "Reported"].item() == "Table 2"
    with pytest.raises(ValueError, match="unknown TRIPOD\\+AI item key"):
        tripod_ai_checklist({"nonsense": "x"})


def test_conflicting_duplicate_ids_and_non_probability_scores():
    df = make_predictions(n=60, seed=4)
    df["logit"] = np.log(df["cnn"] / (1 - df["cnn"]))  # a score, not a probability
    dup = df.iloc[[0, 1]].copy()
    dup.loc[dup.index[0], "label"] = "benign" if df.label[0] == "malignant" else "malignant"
    df = pd.concat([df, dup], ignore_index=True)  # c000 conflicting, c001 an exact repeat
    r = evaluate_predictions(df, ["cnn", "logit"])
    text = "\n".join(r.issues)
    assert "column 'case_id': 1 repeated row(s) of the same case dropped" in text
    assert "column 'case_id': 1 case id(s) appear with different values (c000)" in text
    assert "model column 'logit': scores outside [0, 1]" in text
    assert r.config["n_cases"] == 59
    logit_rows = r.metrics[r.metrics.model == "logit"]
    assert logit_rows["brier"].isna().all() and logit_rows["auc"].notna().all()
    # AUC is rank-based: the logit of a score has the same AUC as the score
    cnn_rows = r.metrics[r.metrics.model == "cnn"]
    assert np.allclose(logit_rows["auc"].to_numpy(), cnn_rows["auc"].to_numpy())


def many_models(n: int = 120, seed: int = 5) -> pd.DataFrame:
    """Eight models (plain-label short names) on three cohorts: a report with many curves."""
    df = make_predictions(n=n, seed=seed).drop(columns=["cnn", "radiomics"])
    rng = np.random.default_rng(seed)
    y = (df["label"] == "malignant").to_numpy(int)
    df["cohort"] = np.array(["train", "internal", "external"])[np.arange(n) % 3]
    for k, name in enumerate(("deep", "radiomics", "dlr", "clinical", "us", "cldlr", "outline")):
        df[name] = 1 / (1 + np.exp(-((0.6 + 0.3 * k) * (y - 0.5) + rng.normal(0, 1, n))))
    return df


def test_report_opens_with_figures_and_plain_names(tmp_path, browser):
    """TOC, bottom-line AUC table and the first figure within two 800-px screens at 1280 px; the
    pairwise tests after every figure; plain model names; Table 1 says benign / malignant."""
    import os
    from pathlib import Path

    from tests.render import check_page, open_page

    res = evaluate_predictions(many_models(), train_cohort="train", covariates=["age"])
    res.write(tmp_path / "eval")
    html_path = tmp_path / "eval" / "report.html"
    t1 = pd.read_csv(tmp_path / "eval" / "tables" / "table1_baseline.csv")
    rows = [str(r).strip() for r in t1["Characteristic"]]
    assert "Reference diagnosis, n (%)" in rows and {"benign", "malignant"} <= set(rows)
    assert not {"yes", "no"} & set(rows) and rows[0].startswith("Age (years), ")
    page = open_page(browser, html_path, 1280, "screen")
    page.set_viewport_size({"width": 1280, "height": 800})
    toc = page.evaluate("[...document.querySelectorAll('nav a')].map(a => a.textContent)")
    heads = page.evaluate("[...document.querySelectorAll('main h2')].map(h => h.textContent)")
    assert toc == heads and len(toc) >= 10
    assert heads[:2] == ["Summary", "ROC curves"]
    tops = page.evaluate(
        """() => ({
        fig: document.querySelector('figure.fig').getBoundingClientRect().top + scrollY,
        summary: document.querySelector('#summary table').getBoundingClientRect().top + scrollY,
        pairs: [...document.querySelectorAll('main h2')].find(h => h.textContent.startsWith(
          'Table 3.')).getBoundingClientRect().top + scrollY,
        lastfig: Math.max(...[...document.querySelectorAll('figure.fig')]
          .map(f => f.getBoundingClientRect().top + scrollY)),
        })"""
    )
    assert tops["summary"] < 800 and tops["fig"] < 1600 and tops["lastfig"] < tops["pairs"]
    # long lists (every pair of 7 models per cohort, the model cards, the checklist) start closed
    closed = page.evaluate(
        "[...document.querySelectorAll('details.more:not([open]) > summary')].map(s => s.innerText)"
    )
    assert sum(c.startswith("Show the 21 pairs of models, cohort") for c in closed) == 3
    assert "Show the model card of each of the 7 model(s)" in closed
    text = page.evaluate("document.querySelector('main').innerText")
    # the summary table: every model by its plain name, on every cohort
    summary = page.evaluate("document.querySelector('#summary table').innerText")
    for short in ("deep", "us", "cldlr"):
        assert model_label(short) in summary
    assert summary.count("\n") == 7 and "external" in summary.split("\n")[0]
    # the summary, figures and Table 2 name models in words (short names only as tooltips)
    assert "cldlr" not in text.split("Data and split")[0].replace("(CLDLR)", "")
    page.close()
    shots = os.environ.get("BUSCAD_EVAL_SHOTS")
    check_page(browser, html_path, tmp_path / "e.pdf", Path(shots) / "eval.png" if shots else None)


def test_figures_keep_legends_off_the_curves_and_one_calibration_panel_per_model(tmp_path):
    from buscad.evaluate import plots

    res = evaluate_predictions(many_models(), train_cohort="train")
    d = res.data[res.data["cohort"] == "external"]
    curves = {model_label(m): (d["_y"].to_numpy(), d[m].to_numpy(float)) for m in res.models}
    fig = plots.plot_roc(curves, {k: "0.7" for k in curves}, "ROC")
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = ax.get_legend().get_window_extent()
    assert leg.y1 < ax.get_window_extent().y0  # wholly below the plot area
    assert [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()][1:] == list(curves)
    cal = {
        model_label(m): res.calibration_curves[("external", m)]
        for m in res.models
        if ("external", m) in res.calibration_curves
    }
    fig = plots.plot_calibration(cal, "Calibration")
    shown = [a for a in fig.axes if a.axison]
    assert len(cal) == 7 and [a.get_title() for a in shown] == list(cal)
    assert all(len(a.lines) >= 2 for a in shown)  # ideal line and the model's curve
    dc = res.decision_curves["external"]
    fig = plots.plot_decision_curve(dc, "DCA", {m: model_label(m) for m in res.models})
    fig.canvas.draw()
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert model_label("cldlr") in names and "cldlr" not in names
    assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0
