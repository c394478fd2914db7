"""Plots of a training run (introduced in lesson 06; the schedule plot in lesson 02, the
number-format plot in lesson 03).

Numbers in a log are for forensics; plots are for diagnosis. Each function here draws one kind of
figure and returns the `matplotlib.figure.Figure`. None of them writes a file or calls `plt.show()`:
in a notebook the returned figure is displayed once (as a cell's last value or with `display(fig)`);
to keep it, call `fig.savefig(path)` yourself.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from course_lib.history import History
from course_lib.metrics import ema_smooth

# A raw curve drawn under its smoothed version: visible, but not competing with it.
RAW_ALPHA = 0.3
# The y axis of gradient norms goes logarithmic when the largest is this many times the smallest:
# one spike of 1000x would otherwise flatten the rest of the curve to a line at 0.
LOG_SCALE_RANGE = 100.0
# Room (as fractions of the figure) for tick labels, axis labels and titles.
FIGURE_MARGINS = {"left": 0.1, "right": 0.97, "bottom": 0.15, "top": 0.9, "wspace": 0.25,
                  "hspace": 0.45}


def _new_figure(nrows: int = 1, ncols: int = 1, figsize=(7.0, 3.5), **margins):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    # Fixed margins rather than a layout engine: matplotlib's constrained/tight layout measures
    # every label on each draw, which made a live redraw several times slower.
    fig.subplots_adjust(**{**FIGURE_MARGINS, **margins})
    # Detach the figure from pyplot's list of open figures: the caller holds the only reference, so
    # it is freed when dropped, and Jupyter's inline backend does not draw it a second time at the
    # end of the cell. It still displays, renders and saves like any figure.
    plt.close(fig)
    return fig, axes


def _as_history(history) -> History:
    # A History, or anything iterable of record dicts (e.g. a list read back from JSON lines).
    return history if isinstance(history, History) else History([dict(r) for r in history])


def _no_data(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _to_float_list(values) -> list[float]:
    if hasattr(values, "tolist"):  # tensors and NumPy arrays
        values = values.tolist()
    return [float(v) for v in values]


def _highlight_set(highlight) -> set:
    # One class index, several, or None.
    if highlight is None:
        return set()
    if isinstance(highlight, int):
        return {highlight}
    return set(highlight)


def _finite_mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def plot_history(history, smoothing: float = 0.9, figsize=(10.0, 6.5)):
    """The four panels worth a look after every run, as one 2x2 figure.

    Top left: training loss, raw (faint) and smoothed, with the evaluation loss on the same axes
    (training falling while evaluation rises is overfitting). Top right: learning rate. Bottom
    left: gradient norm (log scale when it spans a wide range). Bottom right: evaluation accuracy.
    A panel whose values the history lacks says "no data".
    """
    history = _as_history(history)
    fig, axes = _new_figure(2, 2, figsize=figsize, left=0.08, bottom=0.1, top=0.94)
    loss_ax, lr_ax, grad_ax, acc_ax = axes.flat

    steps, losses = history.series("loss")
    eval_steps, eval_losses = history.series("eval_loss")
    if steps or eval_steps:
        if steps:
            if smoothing > 0:
                loss_ax.plot(steps, losses, color="C0", alpha=RAW_ALPHA, label="train loss (raw)")
                loss_ax.plot(steps, ema_smooth(losses, smoothing), color="C0",
                             label=f"train loss (EMA {smoothing:g})")
            else:
                loss_ax.plot(steps, losses, color="C0", label="train loss")
        if eval_steps:
            loss_ax.plot(eval_steps, eval_losses, "o-", color="C1", label="eval loss")
        loss_ax.set_title("loss")
        loss_ax.legend(fontsize="small")
    else:
        _no_data(loss_ax, "loss")

    steps, rates = history.series("learning_rate")
    if steps:
        lr_ax.plot(steps, rates, color="C2")
        lr_ax.set_title("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        _no_data(lr_ax, "learning rate")

    steps, norms = history.series("grad_norm")
    if steps:
        grad_ax.plot(steps, norms, color="C3")
        grad_ax.set_title("gradient norm (before clipping)")
        positive = [n for n in norms if math.isfinite(n) and n > 0]
        if positive and max(positive) / min(positive) > LOG_SCALE_RANGE:
            grad_ax.set_yscale("log")
    else:
        _no_data(grad_ax, "gradient norm")

    steps, accuracies = history.series("eval_accuracy")
    if steps:
        acc_ax.plot(steps, accuracies, "o-", color="C1")
        acc_ax.set_title("eval accuracy")
    else:
        _no_data(acc_ax, "eval accuracy")

    for ax in (grad_ax, acc_ax):
        ax.set_xlabel("optimizer step")
    return fig


def plot_per_class_accuracy(history, highlight=None, class_names=None, figsize=(8.0, 4.0)):
    """Evaluation accuracy of each class over the run, one line per class, the mean dashed.

    `highlight` (a class index or several) draws those classes thick, so a class falling away from
    the mean is easy to follow. A class with no evaluation examples leaves a gap (NaN).
    """
    history = _as_history(history)
    # The right margin leaves room for the legend beside the axes, where it hides no line.
    fig, axes = _new_figure(figsize=figsize, right=0.78)
    ax = axes[0, 0]
    title = "per-class eval accuracy"
    steps, rows = history.series("eval_per_class_accuracy")
    if not steps:
        _no_data(ax, title)
        return fig
    rows = [_to_float_list(row) for row in rows]
    num_classes = max(len(row) for row in rows)
    # Pad short rows with NaN so every class has one value per evaluation.
    rows = [row + [math.nan] * (num_classes - len(row)) for row in rows]
    highlighted = _highlight_set(highlight)
    names = class_names if class_names is not None else [str(c) for c in range(num_classes)]

    for c in range(num_classes):
        values = [row[c] for row in rows]
        if c in highlighted:
            ax.plot(steps, values, "o-", linewidth=3, zorder=3, label=f"class {names[c]}")
        else:
            ax.plot(steps, values, linewidth=1, alpha=0.5, label=f"class {names[c]}")
    ax.plot(steps, [_finite_mean(row) for row in rows], "--", color="black", linewidth=2,
            label="mean over classes")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_confusion_matrix(cm, class_names=None, normalize: bool = True, figsize=(5.5, 4.5)):
    """A confusion matrix as an image, each cell annotated (rows: true class, columns: predicted).

    With `normalize`, each row is divided by its total, so a cell reads "the fraction of class i
    predicted as j" and a rare class is as visible as a common one; a class with no examples shows
    "-". Without it, cells show counts.
    """
    counts = np.asarray(cm.tolist() if hasattr(cm, "tolist") else cm, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {counts.shape}")
    num_classes = counts.shape[0]
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(totals > 0, counts / totals, np.nan)
    else:
        shown = counts
    fig, axes = _new_figure(figsize=figsize)
    ax = axes[0, 0]
    vmax = 1.0 if normalize else max(1.0, float(np.nanmax(shown)) if shown.size else 1.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, label="fraction of the true class" if normalize else "count")

    names = class_names if class_names is not None else [str(c) for c in range(num_classes)]
    ax.set_xticks(range(num_classes), names)
    ax.set_yticks(range(num_classes), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    # Beyond about 20 classes the numbers no longer fit in their cells; the colours still read.
    if num_classes <= 20:
        fontsize = 9 if num_classes <= 10 else 6
        for i in range(num_classes):
            for j in range(num_classes):
                value = shown[i, j]
                if math.isnan(value):
                    text = "-"
                elif normalize:
                    text = f"{value:.2f}"
                else:
                    text = f"{int(value)}"
                # Dark text on light cells, light text on dark ones.
                color = "white" if not math.isnan(value) and value > 0.6 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    return fig


def plot_lr_schedule(schedules, title: str = "learning rate per optimizer step",
                     ylabel: str = "learning rate", log_y: bool = False, figsize=(7.0, 3.5)):
    """Learning rate (or LR multiplier) at each optimizer step, several named curves on one axis.

    `schedules` is either one list of values or a dict {name: list of values}; step 0 is the first
    optimizer step.
    """
    if not isinstance(schedules, dict):
        schedules = {"": schedules}
    fig, axes = _new_figure(figsize=figsize)
    ax = axes[0, 0]
    for name, values in schedules.items():
        values = _to_float_list(values)
        ax.plot(range(len(values)), values, label=name or None)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if any(schedules):
        ax.legend(fontsize="small")
    return fig


def plot_loss_smoothing(values, weight: float, steps=None, figsize=(7.0, 3.5)):
    """A noisy loss curve (faint) and its debiased exponential moving average with `weight`."""
    values = _to_float_list(values)
    steps = list(range(len(values))) if steps is None else list(steps)
    fig, axes = _new_figure(figsize=figsize)
    ax = axes[0, 0]
    ax.plot(steps, values, color="C0", alpha=RAW_ALPHA, label="raw")
    ax.plot(steps, ema_smooth(values, weight), color="C0", linewidth=2,
            label=f"smoothed (weight {weight:g})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("exponential moving average")
    ax.legend(fontsize="small")
    return fig


def plot_class_accuracy_bars(accuracies, highlight=None, class_names=None, title=None,
                             figsize=(7.0, 3.5)):
    """Accuracy of each class as a bar, `highlight` (a class index or several) in red, mean dashed.

    A class with no examples (NaN) gets no bar and an "n/a" label.
    """
    accuracies = _to_float_list(accuracies)
    num_classes = len(accuracies)
    names = class_names if class_names is not None else [str(c) for c in range(num_classes)]
    fig, axes = _new_figure(figsize=figsize)
    ax = axes[0, 0]
    heights = [0.0 if math.isnan(a) else a for a in accuracies]
    highlighted = _highlight_set(highlight)
    colors = ["C3" if c in highlighted else "C0" for c in range(num_classes)]
    ax.bar(range(num_classes), heights, color=colors)
    for c, value in enumerate(accuracies):
        if math.isnan(value):
            ax.text(c, 0.02, "n/a", ha="center", va="bottom", fontsize="small")
    mean = _finite_mean(accuracies)
    if not math.isnan(mean):
        ax.axhline(mean, linestyle="--", color="black", label=f"mean {mean:.2f}")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xticks(range(num_classes), names)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "per-class accuracy")
    return fig


def plot_relative_error(curves: dict, marker: float | None = None, figsize=(8.0, 3.2)):
    """Relative rounding error against magnitude, one line per number format, on log-log axes.

    `curves` maps a format name to (magnitudes, relative errors), e.g. the bounds from
    `course_lib.widgets.rounding_error_bounds`; NaN values leave gaps (an overflow has no point on
    a log axis). `marker` draws a vertical line at one value.
    """
    # The legend goes beside the axes: every corner inside them holds a curve.
    fig, axes = _new_figure(figsize=figsize, left=0.12, right=0.8)
    ax = axes[0, 0]
    for name, (magnitudes, errors) in curves.items():
        ax.plot(_to_float_list(magnitudes), _to_float_list(errors), label=name)
    if marker is not None:
        ax.axvline(marker, color="black", linestyle=":", label=f"value {marker:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("magnitude of the value")
    ax.set_ylabel("relative rounding error")
    ax.set_title("largest rounding error by format (1 = the value is lost)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_kept_checkpoints(history, metric: str, kept_steps, figsize=(8.0, 3.2)):
    """The validation metric over the run, with the evaluations whose checkpoints were kept marked
    (lesson 07). The last evaluation gets a mark of its own: the best is often not the last.
    """
    history = _as_history(history)
    fig, axes = _new_figure(figsize=figsize, left=0.1, right=0.97)
    ax = axes[0, 0]
    steps, values = history.series(metric)
    if not steps:
        _no_data(ax, metric)
        return fig
    ax.plot(steps, values, "o-", color="C0", markersize=3, label=metric)
    kept = [(s, v) for s, v in zip(steps, values) if s in set(kept_steps)]
    if kept:
        ax.plot(*zip(*kept), "o", color="C1", markersize=10, fillstyle="none", markeredgewidth=2,
                label=f"kept checkpoints ({len(kept)})")
    ax.plot(steps[-1], values[-1], "x", color="C3", markersize=10, markeredgewidth=2,
            label="last evaluation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} at every evaluation, and the checkpoints kept")
    ax.legend(fontsize="small", loc="lower right")
    return fig
