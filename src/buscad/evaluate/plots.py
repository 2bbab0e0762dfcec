"""Figures: ROC, calibration and decision curves, confusion matrices.

matplotlib's object-oriented API only (``Figure`` + ``FigureCanvasAgg``): no
pyplot, no global backend switch, no global rcParams change. Figures are readable in greyscale print:
every model gets its own line style and marker, not only its own colour; legends sit below the
axes (:func:`legend_below`), never over a curve; calibration gets one small panel per model
rather than many error-bar curves on one plot. Callers pass plain model names
(:func:`buscad.labels.model_label`). Each figure is saved as PNG and SVG.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd

from buscad.utils import atomic_path

LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Colour-blind-safe palette (Okabe & Ito) that also differs in lightness.
COLOURS = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


P = ParamSpec("P")
R = TypeVar("R")

#: Style of every figure, applied with ``matplotlib.rc_context`` (never globally).
RC = {"font.size": 9, "svg.fonttype": "none", "savefig.dpi": 200}


def new_figure(figsize: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    """A ``(Figure, Axes)`` pair drawn by its own Agg canvas (no pyplot, no backend switch).

    Create it inside ``matplotlib.rc_context(RC)`` (the plot functions here do)
    for buscad's style.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kw)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _styled(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a plot function inside ``matplotlib.rc_context(RC)``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def styles(n: int) -> list[dict]:
    """``n`` distinct line styles (linestyle, marker, colour) for greyscale-safe plots."""
    combos = zip(cycle(LINESTYLES), cycle(MARKERS), cycle(COLOURS), strict=False)
    return [
        {"linestyle": ls, "marker": mk, "color": c}
        for (ls, mk, c), _ in zip(combos, range(n), strict=False)
    ]


def save_figure(fig, stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` atomically."""
    import matplotlib

    paths = []
    for fmt in formats:
        path = Path(stem).with_suffix(f".{fmt}")
        with atomic_path(path) as tmp, matplotlib.rc_context(RC):
            fig.savefig(
                tmp,
                format=fmt,
                bbox_inches="tight",
                metadata={"Date": None} if fmt == "svg" else None,
            )
        paths.append(path)
    return paths


def roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC curve ``(1 - specificity, sensitivity)`` over all distinct thresholds.

    Starts at (0, 0) (threshold above every score); one point per distinct score
    (calls are ``score >= threshold``), so tied scores move the curve diagonally:
    ``sklearn.metrics.roc_curve(y, s, drop_intermediate=False)``. With one class
    only, the undefined rate is 0.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, float).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class only: that rate is undefined, drawn as 0
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return np.nan_to_num(fpr, nan=0.0), np.nan_to_num(tpr, nan=0.0)


def _markevery(n: int) -> int:
    return max(1, n // 8)


def legend_below(ax: Any, title: str | None = None, ncol: int = 1) -> Any:
    """The axes' legend in a box below the plot area (outside every curve).

    The figure is saved with ``bbox_inches="tight"`` (:func:`save_figure`), so the
    legend adds height to the image instead of covering the curves.
    """
    return ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        fontsize=7,
        frameon=False,
        ncol=ncol,
        title=title,
        title_fontsize=7,
    )


@_styled
def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    aucs: dict[str, str],
    title: str,
    thresholds: dict[str, float] | None = None,
):
    """ROC curves of all models on one cohort; legend gives each AUC with its CI.

    ``curves`` maps a model to its ``(labels, scores)`` (each model on the
    cases it scored); ``thresholds`` marks each model's operating point
    (filled marker).
    """
    fig, ax = new_figure((4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, linestyle=":", label="Chance")
    for (name, (y, s)), st in zip(curves.items(), styles(len(curves)), strict=True):
        fpr, tpr = roc_points(y, s)
        ax.plot(
            fpr,
            tpr,
            lw=1.5,
            markevery=_markevery(len(fpr)),
            markersize=4,
            markerfacecolor="white",
            label=f"{name}: {aucs.get(name, '')}",
            **st,
        )
        if thresholds and name in thresholds:
            yy, ss = np.asarray(y).astype(int), np.asarray(s, float)
            t = thresholds[name]
            ax.plot(
                np.mean(ss[yy == 0] >= t),
                np.mean(ss[yy == 1] >= t),
                marker=st["marker"],
                color=st["color"],
                markersize=7,
                linestyle="none",
            )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 − Specificity",
        ylabel="Sensitivity",
        title=title,
        aspect="equal",
    )
    legend_below(ax, title="AUC (95% CI)")
    ax.grid(True, color="0.9", lw=0.5)
    return fig


@_styled
def plot_calibration(curves: dict[str, pd.DataFrame], title: str, ncols: int = 6):
    """Reliability curves, one small panel per model, with Wilson 95% CIs.

    Each panel plots the observed fraction malignant of a bin against its mean
    predicted probability (equal-size bins, as
    :func:`buscad.evaluate.calibration.reliability_curve` makes them) beside the
    ideal line ``observed = predicted``; the panel title is the model's name.
    Panels share their axes, ``ncols`` to a row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(curves))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.1 * ncols, 2.15 * nrows + 0.45))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True))
    flat = axes.ravel()
    for ax, (name, c), st in zip(flat, curves.items(), styles(len(curves)), strict=False):
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, linestyle=":")
        ax.errorbar(
            c["mean_predicted"],
            c["observed"],
            yerr=[c["observed"] - c["lo"], c["hi"] - c["observed"]],
            capsize=2,
            lw=1.2,
            markersize=3.5,
            markerfacecolor="white",
            **{**st, "color": "#000000", "linestyle": "-"},
        )
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")
        ax.set_title(name, fontsize=7.5)
        ax.grid(True, color="0.9", lw=0.5)
        ax.tick_params(labelsize=7)
    for ax in flat[len(curves) :]:
        ax.set_axis_off()
    for i, ax in enumerate(flat[: len(curves)]):
        if i + ncols >= len(curves):  # no panel below: this one carries the x axis
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("Mean predicted", fontsize=7.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("Observed malignant", fontsize=7.5)
    fig.suptitle(f"{title} (dotted: ideal)", fontsize=9)
    fig.tight_layout()
    return fig


@_styled
def plot_decision_curve(dc: pd.DataFrame, title: str, labels: dict[str, str] | None = None):
    """Net benefit against threshold probability for each model, treat-all and treat-none.

    Net benefit at threshold probability ``pt`` is ``TP/N − FP/N · pt/(1 − pt)``;
    ``labels`` maps a strategy (a model's short name) to the name its legend shows.
    """
    labels = labels or {}
    fig, ax = new_figure((5.0, 3.6))
    models = [m for m in pd.unique(dc["strategy"]) if m not in ("treat all", "treat none")]
    ref = {
        "treat all": dict(color="0.45", lw=1.0, linestyle="--"),
        "treat none": dict(color="0.0", lw=0.8, linestyle="-"),
    }
    for name, kw in ref.items():
        d = dc[dc["strategy"] == name]
        ax.plot(d["threshold"], d["net_benefit"], label=name.capitalize(), **kw)
    for name, st in zip(models, styles(len(models)), strict=True):
        d = dc[dc["strategy"] == name]
        ax.plot(
            d["threshold"],
            d["net_benefit"],
            lw=1.5,
            markevery=10,
            markersize=4,
            markerfacecolor="white",
            label=labels.get(name, name),
            **st,
        )
    prev = dc.loc[dc["strategy"] == "treat all", "net_benefit"].max()
    ax.set(
        xlim=(0, 1),
        ylim=(-0.05, max(0.05, prev * 1.1 + 0.02)),
        xlabel="Threshold probability",
        ylabel="Net benefit",
        title=title,
    )
    legend_below(ax, ncol=2)
    ax.grid(True, color="0.9", lw=0.5)
    return fig


@_styled
def plot_confusion_grid(
    panels: Sequence[tuple[str, int, int, int, int]], title: str, ncols: int = 4
):
    """Confusion matrices of several models in one grid (counts and row percentages, greyscale).

    ``panels`` holds ``(panel title, tp, fp, tn, fn)`` per model; rows of ``ncols`` panels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.5 * ncols, 2.45 * nrows + 0.4))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (name, tp, fp, tn, fn) in zip(axes, panels, strict=False):
        m = np.array([[tn, fp], [fn, tp]], float)
        rows = m.sum(axis=1, keepdims=True)
        frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(frac, cmap="Greys", vmin=0, vmax=1.4)
        for i in range(2):
            for j in range(2):
                ax.text(
                    j,
                    i,
                    f"{int(m[i, j])}\n({100 * frac[i, j]:.0f}%)",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
        ax.set_xticks([0, 1], ["Benign", "Malignant"], fontsize=7)
        ax.set_yticks([0, 1], ["Benign", "Malignant"], fontsize=7)
        ax.set_xlabel("Predicted", fontsize=7)
        ax.set_ylabel("Reference", fontsize=7)
        ax.set_title(name, fontsize=7.5)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
