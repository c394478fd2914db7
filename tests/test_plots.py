import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from course_lib.history import History
from course_lib.plots import (
    plot_class_accuracy_bars,
    plot_confusion_matrix,
    plot_history,
    plot_loss_smoothing,
    plot_lr_schedule,
    plot_per_class_accuracy,
    plot_relative_error,
)


def _history(num_classes=3, grad_norm_spike=False):
    history = History()
    for step in range(1, 21):
        history.append({
            "step": step, "epoch": step / 10, "loss": 2.0 / step, "smooth_loss": 2.0 / step,
            "learning_rate": 1e-3 * min(1.0, step / 5), "skipped_steps": 0,
            "grad_norm": 1000.0 if grad_norm_spike and step == 7 else 1.0 + 0.1 * step,
            "samples_per_second": 500.0,
        })
        if step % 5 == 0:
            per_class = [min(1.0, 0.2 * c + step / 25) for c in range(num_classes)]
            per_class[-1] = math.nan  # a class with no examples in this evaluation
            history.append({
                "step": step, "epoch": step / 10, "eval_loss": 1.5 / step, "eval_accuracy": 0.9,
                "eval_per_class_accuracy": per_class, "eval_runtime": 0.1,
                "eval_samples_per_second": 1000.0, "eval_steps_per_second": 10.0,
            })
    return history


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_plot_history_draws_four_panels_with_raw_smoothed_and_eval_loss():
    fig = plot_history(_history())
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    loss_ax = fig.axes[0]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["train loss (raw)", "train loss (EMA 0.9)", "eval loss"]
    assert all(len(ax.get_lines()) == 1 for ax in fig.axes[1:])
    assert not any("no data" in _texts(ax) for ax in fig.axes)


def test_plot_history_smooths_the_training_loss():
    fig = plot_history(_history(), smoothing=0.9)
    raw, smoothed, _ = fig.axes[0].get_lines()
    assert list(raw.get_ydata()) != list(smoothed.get_ydata())
    assert smoothed.get_ydata()[0] == pytest.approx(raw.get_ydata()[0])


def test_plot_history_says_no_data_for_missing_keys():
    history = History([{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    fig = plot_history(history)
    assert len(fig.axes) == 4
    assert "no data" not in _texts(fig.axes[0])
    assert all("no data" in _texts(ax) for ax in fig.axes[1:])


def test_plot_history_of_an_empty_history_and_of_a_plain_list():
    assert all("no data" in _texts(ax) for ax in plot_history(History()).axes)
    assert len(plot_history(list(_history().records)).axes) == 4


def test_plot_history_uses_a_log_scale_for_a_wide_range_of_grad_norms():
    assert plot_history(_history(grad_norm_spike=True)).axes[2].get_yscale() == "log"
    assert plot_history(_history()).axes[2].get_yscale() == "linear"


def test_plots_leave_no_figure_open_in_pyplot():
    before = set(plt.get_fignums())
    plot_history(_history())
    plot_loss_smoothing([1.0, 0.5], 0.5)
    assert set(plt.get_fignums()) == before


def test_plot_per_class_accuracy_draws_one_line_per_class_and_the_mean():
    fig = plot_per_class_accuracy(_history(num_classes=4), highlight=1)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4 + 1
    assert lines[1].get_linewidth() > lines[0].get_linewidth()
    assert lines[-1].get_linestyle() == "--"
    # The mean leaves out the NaN class: mean of classes 0..2 at the first evaluation.
    first = [min(1.0, 0.2 * c + 5 / 25) for c in range(3)]
    assert lines[-1].get_ydata()[0] == pytest.approx(sum(first) / 3)


def test_plot_per_class_accuracy_without_per_class_records_says_no_data():
    fig = plot_per_class_accuracy(History([{"step": 1, "loss": 1.0}]))
    assert "no data" in _texts(fig.axes[0])


def test_plot_confusion_matrix_annotates_rates_and_counts():
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 0, 4]])
    fig = plot_confusion_matrix(cm, class_names=["a", "b", "c"])
    assert len(fig.axes) == 2  # the matrix and its colour bar
    texts = _texts(fig.axes[0])
    assert len(texts) == 9
    assert texts[0] == "0.75" and texts[3] == "-"  # row 1 has no examples
    counts = _texts(plot_confusion_matrix(cm, normalize=False).axes[0])
    assert counts[0] == "3" and counts[8] == "4"


def test_plot_confusion_matrix_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix([[1, 2, 3], [4, 5, 6]])


def test_plot_lr_schedule_draws_each_named_curve():
    fig = plot_lr_schedule({"cosine": [0.0, 1.0, 0.5], "constant": [1.0, 1.0, 1.0]})
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["cosine", "constant"]
    assert fig.axes[0].get_legend() is not None
    single = plot_lr_schedule([1.0, 0.5, 0.25])
    assert len(single.axes[0].get_lines()) == 1 and single.axes[0].get_legend() is None


def test_plot_loss_smoothing_draws_raw_and_smoothed():
    fig = plot_loss_smoothing(torch.tensor([3.0, 1.0, 2.0, 0.5]), 0.8)
    raw, smoothed = fig.axes[0].get_lines()
    assert list(raw.get_ydata()) == [3.0, 1.0, 2.0, 0.5]
    assert smoothed.get_ydata()[0] == pytest.approx(3.0)
    assert smoothed.get_ydata()[1] != pytest.approx(1.0)


def test_plot_class_accuracy_bars_highlights_one_class_and_marks_nan():
    fig = plot_class_accuracy_bars([0.9, 0.2, math.nan, 0.7], highlight=1)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 4
    assert bars[1].get_facecolor() != bars[0].get_facecolor()
    assert "n/a" in _texts(ax)
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(0.6)  # mean of the three known


def test_plot_relative_error_draws_each_format_and_the_marker():
    curves = {"a": ([1e-3, 1e-2], [1e-4, 1e-4]), "b": ([1e-3, 1e-2], [1e-2, math.nan])}
    fig = plot_relative_error(curves, marker=5e-3)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_plot_kept_checkpoints_marks_the_kept_evaluations_and_the_last():
    from course_lib.plots import plot_kept_checkpoints

    history = _history()
    fig = plot_kept_checkpoints(history, "eval_loss", kept_steps=[10, 15])
    assert isinstance(fig, Figure)
    lines = fig.axes[0].get_lines()
    assert list(lines[1].get_xdata()) == [10, 15]
    assert list(lines[2].get_xdata()) == [20]
    empty = plot_kept_checkpoints(History(), "eval_loss", kept_steps=[])
    assert empty.axes[0].texts[0].get_text() == "no data"
