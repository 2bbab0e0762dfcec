"""buscad.progress (plain lines in logs, a bar on a terminal, quiet outside a reporting block),
the command line's output list, and no warnings leaking from reader analyze or the demo."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from buscad.progress import Progress, fmt_duration, reporting, track
from buscad.utils import display_path, output_lines

sys.path.insert(0, str(Path(__file__).parent))
from test_reader_analysis import _synthetic_reads


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr("buscad.progress.time.monotonic", c)
    return c


def test_plain_lines_are_periodic_with_eta_and_end_line(clock):
    buf = io.StringIO()
    with reporting(buf, interval=10):
        p = Progress(300, "radiomics", "images")
        for i in range(300):
            clock.t += 0.5  # 2 images a second: 150 s in all
            p.update()
            if i == 119:
                assert (
                    "radiomics: 120/300 images (40%), 1 min 00 s elapsed, ETA 1 min 30 s"
                    in (buf.getvalue().splitlines()[-1])
                )
        p.close()
    lines = buf.getvalue().splitlines()
    # one line per 10 s (14 of 150 s; the 15th would be at 100%) and the closing line
    assert len(lines) == 15
    assert lines[-1] == "radiomics: 300/300 images in 2 min 30 s"
    assert "\r" not in buf.getvalue()


def test_every_update_line_carries_stats_and_nothing_outside_a_block(clock):
    buf = io.StringIO()
    with reporting(buf, interval=1000), Progress(4, "resnet50 training", "epochs", every=True) as p:
        clock.t += 30
        p.update(loss=0.69312, **{"val AUC": 0.7})
    assert buf.getvalue().splitlines() == [
        "resnet50 training: 1/4 epochs (25%), 30.0 s elapsed, ETA 1 min 30 s; loss 0.6931, "
        "val AUC 0.7",
        "resnet50 training: 1/4 epochs in 30.0 s; loss 0.6931, val AUC 0.7",
    ]
    # a library call outside any reporting block shows nothing (not even on stderr)
    before = sys.stderr
    sys.stderr = err = io.StringIO()
    try:
        assert list(track(range(5), "quiet", "items")) == [0, 1, 2, 3, 4]
    finally:
        sys.stderr = before
    assert err.getvalue() == ""
    # enabled=False silences one loop inside a block; closing=False drops the end line
    buf2 = io.StringIO()
    with reporting(buf2, interval=0):
        list(track(range(3), "off", enabled=False))
        list(track(range(2), "inner", "batches", closing=False))
    assert buf2.getvalue().splitlines() == ["inner: 1/2 batches (50%), 0.0 s elapsed, ETA 0.0 s"]


def test_terminal_gets_a_bar_and_inner_blocks_inherit(clock):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    with reporting(tty), reporting(interval=0):  # the inner block keeps the outer stream
        p = Progress(10, "predict", "images")
        assert p._bar is not None
        for _ in range(10):
            p.update()
        p.close()
    assert "\r" in tty.getvalue()  # tqdm redraws in place on a terminal
    assert tty.getvalue().rstrip().endswith("predict: 10/10 images in 0.0 s")
    assert fmt_duration(3725) == "1 h 02 min" and fmt_duration(None) == "?"


def test_output_lines_are_relative_inside_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert display_path(tmp_path / "runs" / "report.html") == "runs/report.html"
    outside = tmp_path.parent / "elsewhere.csv"
    assert display_path(outside) == str(outside)
    assert output_lines({"report": tmp_path / "r.html", "audit report": outside}) == [
        "  report        r.html",
        f"  audit report  {outside}",
    ]


def _leaked(caught: list[warnings.WarningMessage]) -> list[str]:
    """Warnings a user would see under Python's default filters (third-party
    DeprecationWarnings are hidden there), as 'Category: message (file)'."""
    return [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if not (
            issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
            and "buscad" not in w.filename
        )
    ]


def test_reader_analyze_with_an_unfinished_round_leaks_no_warning(tmp_path):
    """A reader who read only some cases with AI leaves one benign or malignant case
    in the paired set: DeLong's variance term of that class is 0, not a NumPy warning."""
    from buscad.cli import app
    from buscad.evaluate.delong import delong_components, delong_test

    reads, truth = _synthetic_reads(n_cases=5, readers=2, seed=0)
    half = truth.index[:2]
    reads = reads[
        ~((reads["reader_id"] == "R2") & (reads["round"] == 2) & reads["case_id"].isin(half))
    ]
    rp, tp = tmp_path / "reads.csv", tmp_path / "truth.csv"
    reads.to_csv(rp, index=False)
    truth.rename("y").rename_axis("image_id").reset_index().assign(
        label=lambda d: np.where(d["y"] == 1, "malignant", "benign"), image_path="x.png"
    ).to_csv(tp, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(
            app, ["reader", "analyze", str(rp), "--truth", str(tp), "-o", str(tmp_path / "o")]
        )
        y = np.array([1, 0, 0])  # one malignant case: its component variance is 0
        t = delong_test(y, np.array([0.9, 0.2, 0.4]), np.array([0.3, 0.5, 0.1]))
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output
    assert _leaked(caught) == []
    # Var(AUC1 - AUC2) = Var(V01_1 - V01_2) / n when the other class has one case
    _, _, a = delong_components(y, np.array([0.9, 0.2, 0.4]))
    _, _, b = delong_components(y, np.array([0.3, 0.5, 0.1]))
    assert t.se == pytest.approx(np.sqrt(np.var(a - b, ddof=1) / 2))
    assert t.se > 0 and np.isfinite(t.p)


def test_calibration_under_perfect_separation_is_nan_without_warning():
    from buscad.evaluate.calibration import calibration_slope_intercept

    y = np.array([0, 0, 0, 1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = calibration_slope_intercept(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert np.isnan(fit.slope) and np.isnan(fit.slope_lo)
    assert fit.intercept == pytest.approx(0.0, abs=1e-9)  # the offset fit is still estimable
    # a constant score has no slope to fit: NaN, not an IndexError
    const = calibration_slope_intercept(y, np.full(6, 0.4))
    assert np.isnan(const.slope) and np.isfinite(const.intercept)
