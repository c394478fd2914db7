import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import matplotlib.pyplot as plt
import pytest

from course_lib.history import History
from course_lib.live import LiveView, format_record, in_notebook
from course_lib.widgets import (
    WIDGET_VIEW,
    Explorer,
    find_child,
    float_formats_at,
    format_explorer,
    format_table_html,
    imbalance_explorer,
    rounding_error_bounds,
    schedule_explorer,
    schedule_explorer_curve,
    smoothing_explorer,
)


def _picture(output: ipywidgets.Output) -> str:
    """The PNG an Output widget currently shows (it shows exactly one)."""
    assert len(output.outputs) == 1
    return output.outputs[0]["data"]["image/png"]


# ---- the explorers --------------------------------------------------------------------------


def test_smoothing_explorer_redraws_when_the_weight_changes():
    box = smoothing_explorer([1.0, 3.0, 0.5, 2.0, 0.2, 1.5], weight=0.9)
    assert isinstance(box, ipywidgets.VBox)
    assert "course-smoothing-explorer" in box._dom_classes
    plot = find_child(box, "course-smoothing-explorer-plot")
    before = _picture(plot)
    find_child(box, "course-smoothing-weight").value = 0.0
    assert _picture(plot) != before


def test_imbalance_explorer_retrains_once_per_fraction_and_redraws():
    calls = []

    def train_and_eval(keep_fraction):
        calls.append(keep_fraction)
        return [0.9, keep_fraction, 0.8]

    box = imbalance_explorer(train_and_eval, rare_class=1, fractions=(0.1, 0.5, 1.0), initial=1.0)
    assert "course-imbalance-explorer" in box._dom_classes
    plot = find_child(box, "course-imbalance-explorer-plot")
    slider = find_child(box, "course-imbalance-fraction")
    first = _picture(plot)
    slider.value = 0.1
    assert _picture(plot) != first
    slider.value = 1.0  # seen before: drawn from memory
    assert calls == [1.0, 0.1]
    assert find_child(box, "course-imbalance-status").value == ""


def test_imbalance_explorer_says_training_while_the_callable_runs():
    built = {}
    status_during_training = []

    def train_and_eval(keep_fraction):
        if built:  # not the first drawing, made while the explorer is being built
            status_during_training.append(find_child(built["box"], "course-imbalance-status").value)
        return [1.0, 1.0]

    built["box"] = imbalance_explorer(train_and_eval, fractions=(0.5, 1.0), initial=1.0)
    find_child(built["box"], "course-imbalance-fraction").value = 0.5
    assert status_during_training == ["training..."]
    assert find_child(built["box"], "course-imbalance-status").value == ""


def test_imbalance_explorer_shows_an_error_of_the_callable_in_its_status():
    def train_and_eval(keep_fraction):
        if keep_fraction < 1.0:
            raise RuntimeError("no examples left")
        return [1.0, 1.0]

    box = imbalance_explorer(train_and_eval, fractions=(0.5, 1.0), initial=1.0)
    find_child(box, "course-imbalance-fraction").value = 0.5
    status = find_child(box, "course-imbalance-status").value
    assert status == "failed: RuntimeError: no examples left"


def test_imbalance_explorer_rejects_an_initial_fraction_it_does_not_offer():
    with pytest.raises(ValueError, match="initial"):
        imbalance_explorer(lambda f: [1.0], fractions=(0.1, 1.0), initial=0.3)


def test_schedule_explorer_redraws_for_each_control():
    box = schedule_explorer(total_steps=100)
    assert "course-schedule-explorer" in box._dom_classes
    plot = find_child(box, "course-schedule-explorer-plot")
    pictures = [_picture(plot)]
    for css_class, value in [("course-schedule-kind", "onecycle"),
                             ("course-schedule-warmup", 30),
                             ("course-schedule-total", 200),
                             ("course-schedule-min-ratio", 0.2),
                             ("course-schedule-kind", "step")]:
        find_child(box, css_class).value = value
        pictures.append(_picture(plot))
    assert len(set(pictures)) == len(pictures)


def test_schedule_explorer_curve_warmup_cosine_rises_then_falls_to_the_minimum():
    curve = schedule_explorer_curve("warmup_cosine", warmup_steps=10, total_steps=100,
                                    min_lr_ratio=0.1)
    assert len(curve) == 100
    assert curve[0] == 0.0 and curve[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(curve[10:], curve[11:]))
    assert curve[-1] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("kind", ["warmup_linear", "constant", "step", "onecycle"])
def test_schedule_explorer_curve_gives_one_multiplier_per_step_peaking_at_one(kind):
    curve = schedule_explorer_curve(kind, warmup_steps=10, total_steps=60, min_lr_ratio=0.0)
    assert len(curve) == 60
    assert max(curve) == pytest.approx(1.0)


def test_schedule_explorer_curve_step_and_onecycle_shapes():
    step = schedule_explorer_curve("step", warmup_steps=0, total_steps=30)
    assert step[0] == 1.0 and step[10] == pytest.approx(0.1) and step[20] == pytest.approx(0.01)
    onecycle = schedule_explorer_curve("onecycle", warmup_steps=10, total_steps=100,
                                       min_lr_ratio=0.01)
    assert onecycle[0] == pytest.approx(1 / 25)
    assert onecycle.index(max(onecycle)) == pytest.approx(10, abs=1)
    assert onecycle[-1] == pytest.approx(0.01)


def test_schedule_explorer_curve_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        schedule_explorer_curve("cosine_restarts", 0, 10)


def _by_format(value):
    return {row["format"]: row for row in float_formats_at(value)}


def test_float_formats_at_a_tiny_value_float16_underflows_and_bfloat16_keeps_it():
    rows = _by_format(1e-9)
    assert rows["float16"]["status"] == "underflows to 0" and rows["float16"]["stored"] == 0.0
    assert rows["float16"]["relative_error"] == 1.0
    assert rows["bfloat16"]["status"] == "rounded"
    assert rows["bfloat16"]["relative_error"] < 2**-8
    assert rows["float32"]["relative_error"] < 2**-23


def test_float_formats_at_marks_subnormal_overflow_and_exact():
    assert _by_format(1e-6)["float16"]["status"] == "subnormal"
    big = _by_format(1e5)
    assert big["float16"]["status"] == "overflows to inf" and math.isinf(big["float16"]["stored"])
    assert big["bfloat16"]["status"] == "rounded"
    assert all(row["status"] == "exact" for row in float_formats_at(0.5))


def test_format_table_html_lists_every_format():
    table = format_table_html(1e5, float_formats_at(1e5))
    assert table.count("<tr>") == 4
    assert "overflows to inf" in table and "bfloat16" in table


def test_rounding_error_bounds_show_float16_losing_small_and_large_values():
    curves = rounding_error_bounds(-10, 6, 50)
    magnitudes, bounds = curves["float16"]
    assert len(magnitudes) == len(bounds) == 50
    assert bounds[0] == 1.0  # 1e-10 underflows to 0
    assert math.isnan(bounds[-1])  # 1e6 overflows: no point on a log axis
    assert max(curves["float32"][1]) <= 2**-24
    assert max(curves["bfloat16"][1]) <= 2**-8


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_rounding_error_bounds_hold_for_the_errors_actually_made(name):
    magnitudes, bounds = rounding_error_bounds(-10, 4.5, 200)[name]
    for magnitude, bound in zip(magnitudes, bounds):
        error = {row["format"]: row for row in float_formats_at(magnitude)}[name]["relative_error"]
        assert error <= bound * (1 + 1e-12)


def test_format_explorer_updates_table_and_plot():
    box = format_explorer(value=1e-4)
    assert "course-format-explorer" in box._dom_classes
    table = find_child(box, "course-format-table")
    plot = find_child(box, "course-format-explorer-plot")
    before_table, before_plot = table.value, _picture(plot)
    find_child(box, "course-format-value").value = 1e5
    assert table.value != before_table and "overflows to inf" in table.value
    assert _picture(plot) != before_plot


EXPLORERS = {
    "smoothing": lambda: smoothing_explorer([1.0, 3.0, 0.5, 2.0, 0.2, 1.5], weight=0.9),
    "imbalance": lambda: imbalance_explorer(lambda f: [0.9, f, 0.8], rare_class=1,
                                            fractions=(0.1, 1.0)),
    "schedule": lambda: schedule_explorer(total_steps=100),
    "format": lambda: format_explorer(1e-4),
}


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_every_explorer_displays_a_picture_beside_its_widget_view(name):
    """A static viewer draws the PNG instead of `VBox(children=...`; a kernel draws the widget."""
    box = EXPLORERS[name]()
    assert isinstance(box, Explorer)
    plot = find_child(box, f"course-{name}-explorer-plot")
    bundle = box._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == box.model_id
    assert bundle["image/png"] == _picture(plot)
    assert "VBox(" not in bundle["text/plain"] and "explorer" in bundle["text/plain"]


def test_an_explorer_displayed_again_shows_its_current_picture():
    box = EXPLORERS["smoothing"]()
    first = box._repr_mimebundle_()["image/png"]
    find_child(box, "course-smoothing-weight").value = 0.0
    assert box._repr_mimebundle_()["image/png"] == _picture(
        find_child(box, "course-smoothing-explorer-plot")) != first


def test_find_child_names_a_missing_class():
    with pytest.raises(LookupError, match="course-nothing"):
        find_child(ipywidgets.VBox([ipywidgets.Label()]), "course-nothing")


def test_explorers_leave_no_figure_open_in_pyplot():
    before = set(plt.get_fignums())
    box = smoothing_explorer([1.0, 2.0, 1.5])
    for weight in (0.1, 0.2, 0.3):
        find_child(box, "course-smoothing-weight").value = weight
    assert set(plt.get_fignums()) == before


# ---- LiveView -------------------------------------------------------------------------------


def _state(history, step, max_steps=20):
    # The fields of fit's frozen state that a hook may read.
    return SimpleNamespace(step=step, max_steps=max_steps, epoch=step / 10, learning_rate=1e-3,
                           history=history, cfg=None, model=None)


def _train_record(step):
    return {"step": step, "epoch": step / 10, "loss": 1.0 / step, "learning_rate": 1e-3,
            "grad_norm": 1.0}


def _eval_record(step):
    return {"step": step, "epoch": step / 10, "eval_loss": 0.5, "eval_accuracy": 0.875,
            "eval_per_class_accuracy": [1.0, 0.75]}


def test_pytest_is_not_a_notebook():
    assert not in_notebook()


def test_live_view_prints_one_line_per_new_record(capsys):
    history = History()
    view = LiveView()
    history.append(_train_record(1))
    view(_state(history, 1))
    history.append(_train_record(2))
    history.append(_eval_record(2))
    view(_state(history, 2))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0] == "step  1/20  loss 1.0000  lr 1.00e-03"
    assert "eval_accuracy 0.8750" in lines[2] and "eval_loss 0.5000" in lines[2]
    assert "\x1b" not in "".join(lines)  # plain text, no terminal escape codes


def test_live_view_prints_nothing_when_no_record_is_new(capsys):
    history = History([_train_record(1)])
    view = LiveView()
    view(_state(history, 1))
    capsys.readouterr()
    view(_state(history, 2))
    view(_state(history, 3))
    assert capsys.readouterr().out == ""


def test_live_view_starts_afresh_for_a_new_history(capsys):
    view = LiveView()
    view(_state(History([_train_record(1)]), 1))
    view(_state(History([_train_record(1)]), 1))
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_format_record_keeps_only_the_keys_present():
    assert format_record({"step": 5, "loss": 0.25}, 100) == "step   5/100  loss 0.2500"


def test_live_view_widgets_mode_updates_bar_label_and_plot(capsys):
    history = History()
    view = LiveView(mode="widgets", min_interval_s=0.0)
    history.append(_train_record(1))
    view(_state(history, 1))
    box = view._widgets["box"]
    assert "course-live-view" in box._dom_classes
    progress = find_child(box, "course-live-progress")
    plot = find_child(box, "course-live-plot")
    assert progress.value == 1 and progress.max == 20
    assert "1/20" in view._widgets["bar"].container.children[2].value  # tqdm's count and rate
    assert plot.outputs == ()  # no evaluation yet: nothing to redraw
    history.append(_eval_record(2))
    view(_state(history, 2))
    first = _picture(plot)
    assert "eval accuracy 0.875" in find_child(box, "course-live-label").value
    history.append(_train_record(20))
    view(_state(history, 20))  # the final step always redraws
    assert progress.value == 20 and _picture(plot) != first
    assert plt.get_fignums() == []


def test_live_view_leaves_a_picture_of_the_final_plot_at_the_last_step():
    updates = []

    class Handle:  # what IPython's display(..., display_id=True) returns inside a kernel
        def update(self, bundle, raw=False):
            updates.append((bundle, raw))

    history = History([_train_record(1), _eval_record(1)])
    view = LiveView(mode="widgets", min_interval_s=0.0)
    view(_state(history, 1))
    view._widgets["handle"] = Handle()
    history.append(_train_record(19))
    view(_state(history, 19))
    assert updates == []  # not finished: the display stays as it is
    history.append(_train_record(20))
    view(_state(history, 20))
    [(bundle, raw)] = updates
    assert raw and bundle[WIDGET_VIEW]["model_id"] == view._widgets["box"].model_id
    assert bundle["image/png"] == _picture(view._widgets["plot"])
    assert "finished" in bundle["text/plain"] and "step 20/20" in bundle["text/plain"]


def test_live_view_widgets_mode_throttles_redraws():
    history = History([_train_record(1), _eval_record(1)])
    view = LiveView(mode="widgets", min_interval_s=3600.0)
    view(_state(history, 1))
    plot = view._widgets["plot"]
    first = _picture(plot)
    history.append(_eval_record(2))
    view(_state(history, 2))
    assert _picture(plot) == first  # too soon after the last redraw
