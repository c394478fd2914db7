"""Interactive explorers for the lessons (schedules: lesson 02, number formats: lesson 03,
smoothing and class imbalance: lesson 06).

Each `*_explorer` function builds its widgets and returns the top box (an `Explorer`, a `VBox`)
without displaying it: the notebook displays it, as the last value of a cell. Moving a slider
redraws a plot in an `ipywidgets.Output` (sliders use `continuous_update=False`, so the redraw
happens on release, not at every pixel of a drag).

Where no widget can be drawn (a notebook read on a code-hosting site, a viewer without the widget
manager), an explorer would show as `VBox(children=...`. So an `Explorer` displays itself with a
picture of its plot (PNG) and a one-line description beside the widget's own view: a live kernel
draws the widget, anything else draws the picture of the explorer's state when it was displayed
(its initial state, when a notebook is executed top to bottom). `with_picture` does the same for
any box, and `course_lib.live` uses it for the live view.

What each redraw draws comes from a small pure function (`schedule_explorer_curve`,
`float_formats_at`, `rounding_error_bounds`, and the plot functions of `course_lib.plots`), so the
behaviour can be tested without a browser. Every box and every control carries a CSS class
(`course-...`); `find_child(box, css_class)` finds a control by it, which is how tests (and
browser tests) move a slider.
"""

from __future__ import annotations

import base64
import html
import io
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from course_lib.plots import (
    plot_class_accuracy_bars,
    plot_loss_smoothing,
    plot_lr_schedule,
    plot_relative_error,
)
from course_lib.schedules import WITHOUT_WARMUP, schedule_curve

# ---- shared ---------------------------------------------------------------------------------


def show_figure(output: widgets.Output, fig) -> None:
    """Make `output` show `fig` (as a PNG) in place of whatever it showed, then close `fig`.

    The figure is rendered here and put into the widget's `outputs` in one assignment: the old
    picture is replaced without a blank flicker, it works the same with or without a browser
    attached (so tests can read `output.outputs`), and no figure object stays alive per redraw.
    """
    buffer = io.BytesIO()
    # The plot helpers set their own margins, so no "tight" bounding box (a second draw) is needed.
    fig.savefig(buffer, format="png")
    width, height = fig.get_size_inches()
    plt.close(fig)
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {
                "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "text/plain": f"<Figure size {width:g}x{height:g} inches>",
            },
            "metadata": {},
        },
    )


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def current_picture(output: widgets.Output) -> str | None:
    """The PNG (base64) that `output` shows now, or None."""
    for item in output.outputs:
        picture = item.get("data", {}).get("image/png")
        if picture is not None:
            return picture
    return None


def with_picture(box: widgets.Widget, plot: widgets.Output, text: str) -> dict:
    """A display bundle for `box`: its widget view, the PNG `plot` shows now and `text`.

    A front end draws the richest type it can: a live kernel with the widget manager draws the
    widget; a static viewer (a code-hosting site, nbconvert without widget state) draws the
    picture instead of the widget's `repr`; a terminal prints the text.
    """
    bundle = {"text/plain": text}
    view = widgets.Widget._repr_mimebundle_(box) or {}
    if WIDGET_VIEW in view:
        bundle[WIDGET_VIEW] = view[WIDGET_VIEW]
    picture = current_picture(plot)
    if picture is not None:
        bundle["image/png"] = picture
    return bundle


class Explorer(widgets.VBox):
    """The top box of an explorer: a `VBox` that also leaves a picture of its plot in the output.

    description: one line, the text a viewer that shows neither widgets nor pictures prints.
    plot: the `Output` whose current picture stands in for the explorer where widgets are not drawn.
    """

    def __init__(self, children, *, plot: widgets.Output, description: str, **kwargs):
        super().__init__(children, **kwargs)
        self._plot = plot
        self._description = description

    def _repr_mimebundle_(self, **kwargs):
        text = (f"{self._description} (interactive in a running notebook; the picture shows it "
                "as displayed)")
        return with_picture(self, self._plot, text)


def find_child(widget, css_class: str):
    """The first widget inside `widget` (itself included) that has the CSS class `css_class`."""
    if css_class in getattr(widget, "_dom_classes", ()):
        return widget
    for child in getattr(widget, "children", ()):
        try:
            return find_child(child, css_class)
        except LookupError:
            pass
    raise LookupError(f"no widget with CSS class {css_class!r}")


def _with_class(widget, css_class: str):
    widget.add_class(css_class)
    return widget


def _plot_area(name: str) -> widgets.Output:
    return _with_class(widgets.Output(), f"course-{name}-plot")


# ---- smoothing (lesson 06) ------------------------------------------------------------------


def smoothing_explorer(values, weight: float = 0.9) -> widgets.VBox:
    """A slider for the EMA weight over a noisy loss curve, redrawing raw and smoothed curves."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    slider = _with_class(
        widgets.FloatSlider(value=weight, min=0.0, max=0.999, step=0.001, readout_format=".3f",
                            description="weight", continuous_update=False),
        "course-smoothing-weight",
    )
    plot = _plot_area("smoothing-explorer")

    def redraw(change=None):
        show_figure(plot, plot_loss_smoothing(values, slider.value))

    slider.observe(redraw, names="value")
    redraw()
    return _with_class(Explorer([slider, plot], plot=plot,
                                description="Smoothing explorer: a slider for the EMA weight"),
                       "course-smoothing-explorer")


# ---- class imbalance (lesson 06) ------------------------------------------------------------


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"  # 0.025 -> "2.5%", 1.0 -> "100%"


def imbalance_explorer(train_and_eval, rare_class: int = 0,
                       fractions=(0.02, 0.05, 0.1, 0.25, 0.5, 1.0), initial: float | None = None,
                       class_names=None) -> widgets.VBox:
    """A slider for the fraction of `rare_class` kept in the training set; each position retrains.

    `train_and_eval(keep_fraction) -> list[float]` is supplied by the lesson: it trains on the
    downsampled set and returns the per-class accuracy on the (untouched) evaluation set. The slider
    moves over `fractions` only, and each result is remembered, so returning to a position is
    instant. A label says "training..." while the callable runs.
    """
    fractions = tuple(sorted(float(f) for f in fractions))
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {fractions}")
    initial = fractions[-1] if initial is None else float(initial)
    if initial not in fractions:
        raise ValueError(f"initial={initial} is not one of fractions {fractions}")
    slider = _with_class(
        widgets.SelectionSlider(options=[(_percent(f), f) for f in fractions], value=initial,
                                description=f"keep of class {rare_class}",
                                style={"description_width": "initial"}, continuous_update=False),
        "course-imbalance-fraction",
    )
    status = _with_class(widgets.Label(value=""), "course-imbalance-status")
    plot = _plot_area("imbalance-explorer")
    # Retraining takes seconds; results per fraction live in this closure, one per explorer.
    results: dict[float, list[float]] = {}

    def redraw(change=None):
        fraction = slider.value
        if fraction not in results:
            status.value = "training..."
            try:
                results[fraction] = [float(a) for a in train_and_eval(fraction)]
            finally:
                status.value = ""
        title = f"per-class eval accuracy, {_percent(fraction)} of class {rare_class} kept"
        show_figure(plot, plot_class_accuracy_bars(results[fraction], highlight=rare_class,
                                                   class_names=class_names, title=title))

    def on_change(change):
        # An error raised inside a slider callback ends up in a log the learner never sees; their
        # own callable failing is worth showing where they are looking.
        try:
            redraw()
        except Exception as error:
            status.value = f"failed: {type(error).__name__}: {error}"

    slider.observe(on_change, names="value")
    redraw()  # an error here reaches the cell that builds the explorer
    return _with_class(Explorer([widgets.HBox([slider, status]), plot], plot=plot,
                                description=f"Imbalance explorer: a slider for the share of class "
                                f"{rare_class} kept"),
                       "course-imbalance-explorer")


# ---- learning-rate schedules (lesson 02) ----------------------------------------------------

SCHEDULE_KINDS = ("warmup_cosine", "warmup_linear", "constant", "step", "cosine", "onecycle")


def schedule_explorer_curve(kind: str, warmup_steps: int, total_steps: int,
                            min_lr_ratio: float = 0.0) -> list[float]:
    """The LR multiplier at each of `total_steps` optimizer steps for one schedule kind.

    The curve comes from the scheduler `fit` builds for `TrainConfig.schedule = kind`
    (`course_lib.schedules.schedule_curve`). "step" decays x0.1 every third of the run and
    "cosine" has no warmup, so the warmup slider leaves them alone; "onecycle" rises over the
    warmup and ends at `min_lr_ratio` (or 1/250000 of the peak when that is 0).
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    warmup_steps = 0 if kind in WITHOUT_WARMUP else max(0, min(warmup_steps, total_steps))
    return schedule_curve(kind, warmup_steps, total_steps, min_lr_ratio)


def schedule_explorer(total_steps: int = 1000, warmup_steps: int | None = None,
                      min_lr_ratio: float = 0.0, kind: str = "warmup_cosine") -> widgets.VBox:
    """Sliders for warmup, length and minimum LR ratio, a menu of schedule kinds, and the curve."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; "
                         f"choose one of {', '.join(SCHEDULE_KINDS)}")
    warmup_steps = total_steps // 10 if warmup_steps is None else warmup_steps
    wide = {"description_width": "initial"}
    kind_menu = _with_class(
        widgets.Dropdown(options=SCHEDULE_KINDS, value=kind, description="schedule"),
        "course-schedule-kind",
    )
    warmup_slider = _with_class(
        widgets.IntSlider(value=warmup_steps, min=0, max=max(total_steps, warmup_steps),
                          description="warmup steps", style=wide, continuous_update=False),
        "course-schedule-warmup",
    )
    total_slider = _with_class(
        widgets.IntSlider(value=total_steps, min=10, max=max(4 * total_steps, 10),
                          description="total steps", style=wide, continuous_update=False),
        "course-schedule-total",
    )
    ratio_slider = _with_class(
        widgets.FloatSlider(value=min_lr_ratio, min=0.0, max=0.5, step=0.01,
                            description="min LR ratio", style=wide, continuous_update=False),
        "course-schedule-min-ratio",
    )
    plot = _plot_area("schedule-explorer")

    def redraw(change=None):
        curve = schedule_explorer_curve(kind_menu.value, warmup_slider.value, total_slider.value,
                                        ratio_slider.value)
        show_figure(plot, plot_lr_schedule({kind_menu.value: curve}, ylabel="LR multiplier",
                                           title="learning-rate multiplier per optimizer step"))

    for control in (kind_menu, warmup_slider, total_slider, ratio_slider):
        control.observe(redraw, names="value")
    redraw()
    controls = widgets.VBox([kind_menu, warmup_slider, total_slider, ratio_slider])
    return _with_class(Explorer([controls, plot], plot=plot,
                                description="Schedule explorer: schedule kind, warmup, length and "
                                "minimum LR ratio"),
                       "course-schedule-explorer")


# ---- number formats (lesson 03) -------------------------------------------------------------

FLOAT_FORMATS = (("float32", torch.float32), ("float16", torch.float16),
                 ("bfloat16", torch.bfloat16))


def _stored(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Round to the format and back to float64, where the error can be measured exactly.
    return values.to(dtype).to(torch.float64)


def float_formats_at(value: float) -> list[dict]:
    """What each of float32, float16 and bfloat16 stores for `value`.

    One dict per format: "format", "stored" (the value read back), "relative_error"
    (|stored - value| / |value|; inf on overflow) and "status": "exact", "rounded", "subnormal"
    (below the smallest normal number, so fewer significant bits), "underflows to 0" or
    "overflows to inf".
    """
    value = float(value)
    rows = []
    for name, dtype in FLOAT_FORMATS:
        stored = _stored(torch.tensor(value, dtype=torch.float64), dtype).item()
        if value == 0.0:
            relative_error = 0.0
        else:
            relative_error = abs(stored - value) / abs(value)
        if math.isinf(stored) and not math.isinf(value):
            status = "overflows to inf"
        elif stored == 0.0 and value != 0.0:
            status = "underflows to 0"
        elif stored != 0.0 and abs(stored) < torch.finfo(dtype).tiny:
            status = "subnormal"
        elif stored == value:
            status = "exact"
        else:
            status = "rounded"
        rows.append({"format": name, "stored": stored, "relative_error": relative_error,
                     "status": status})
    return rows


def format_table_html(value: float, rows: list[dict]) -> str:
    """The rows of `float_formats_at` as a small HTML table."""
    cells = "".join(
        "<tr>"
        f"<td>{html.escape(row['format'])}</td>"
        f"<td style='text-align:right'>{row['stored']:.8g}</td>"
        f"<td style='text-align:right'>{row['relative_error']:.2e}</td>"
        f"<td>{html.escape(row['status'])}</td>"
        "</tr>"
        for row in rows
    )
    return (
        f"<p>value: <b>{value:.8g}</b></p>"
        "<table><tr><th>format</th><th>stores</th><th>relative error</th><th>note</th></tr>"
        f"{cells}</table>"
    )


def rounding_error_bounds(low_exponent: float = -10.0, high_exponent: float = 6.0,
                          points: int = 400) -> dict:
    """{format: (magnitudes, largest relative rounding error)} over log-spaced magnitudes.

    A format rounds to the nearest number it can store, so the error is at most half the gap
    between neighbouring stored numbers. For normal numbers that gap is `eps` times the power of
    two just below the value, so the relative error stays between eps/4 and eps/2 at any
    magnitude: that is the format's precision. Below the
    smallest normal number (`tiny`) the gap stops shrinking (subnormals), so the relative error
    grows, until below half the smallest subnormal the value rounds to 0 (relative error 1). Above
    the largest finite number the value overflows to inf, shown as NaN (no point on a log axis).
    """
    magnitudes = torch.logspace(low_exponent, high_exponent, points, dtype=torch.float64)
    curves = {}
    for name, dtype in FLOAT_FORMATS:
        info = torch.finfo(dtype)
        smallest_subnormal = info.tiny * info.eps
        binade_start = torch.exp2(torch.floor(torch.log2(magnitudes)))
        gap = torch.where(magnitudes >= info.tiny, binade_start * info.eps,
                          torch.full_like(magnitudes, smallest_subnormal))
        bounds = gap / 2 / magnitudes
        bounds = torch.where(magnitudes < smallest_subnormal / 2, 1.0, bounds)
        bounds = torch.where(magnitudes > info.max, torch.nan, bounds)
        curves[name] = (magnitudes.tolist(), bounds.tolist())
    return curves


def format_explorer(value: float = 1e-4) -> widgets.VBox:
    """A slider over magnitudes 1e-10..1e6 showing what float32, float16 and bfloat16 store."""
    slider = _with_class(
        widgets.FloatLogSlider(value=value, base=10, min=-10, max=6, step=0.05,
                               readout_format=".3g", description="value",
                               continuous_update=False),
        "course-format-value",
    )
    table = _with_class(widgets.HTML(), "course-format-table")
    plot = _plot_area("format-explorer")
    # The curves do not depend on the slider: compute them once per explorer.
    curves = rounding_error_bounds()

    def redraw(change=None):
        table.value = format_table_html(slider.value, float_formats_at(slider.value))
        show_figure(plot, plot_relative_error(curves, marker=slider.value))

    slider.observe(redraw, names="value")
    redraw()
    return _with_class(Explorer([slider, table, plot], plot=plot,
                                description="Number-format explorer: a slider over magnitudes "
                                "1e-10..1e6"),
                       "course-format-explorer")
