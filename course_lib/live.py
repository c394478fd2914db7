"""Watching a run while it trains (introduced in lesson 06).

`LiveView` is a hook for `fit`: `fit(..., hooks=[LiveView()])`. `fit` calls it after every optimizer
step with the loop's state. In a Jupyter notebook it shows a progress bar (tqdm's notebook bar, the
one `tqdm.auto` picks inside a kernel, with its rate and time left), the latest loss and eval
accuracy, and a history plot that redraws as evaluations arrive. Anywhere else (a script, pytest)
it prints one plain line per new log record. With several processes (lesson 08), only rank 0
shows anything.

The hook is called every step, so it must cost nothing when nothing new happened: it only compares
the length of the history with what it has already shown, and never reads a tensor.

Where widgets are not drawn (a notebook read on a code-hosting site), the view would show as
`VBox(children=...`. So at the last step it replaces its own display with one that also holds a
picture of the final plot and the last record as a line of text (`widgets.with_picture`): a live
kernel keeps drawing the widget, a static viewer draws the picture.
"""

from __future__ import annotations

import math
import time

import ipywidgets as widgets

from course_lib.distributed import is_main_process
from course_lib.plots import plot_history
from course_lib.widgets import show_figure, with_picture


def in_notebook() -> bool:
    """True inside a running Jupyter kernel (where widgets can be displayed)."""
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is not installed: certainly no notebook
        return False
    shell = get_ipython()
    # A terminal IPython has a shell but no kernel, and cannot show widgets.
    return shell is not None and hasattr(shell, "kernel")


def format_record(record: dict, max_steps: int) -> str:
    """One log record as a plain line, e.g. "step   40/200  loss 0.4312  lr 1.00e-03"."""
    width = len(str(max_steps))
    parts = [f"step {record.get('step', '?'):>{width}}/{max_steps}"]
    for key, label, fmt in (
        ("loss", "loss", ".4f"),
        ("learning_rate", "lr", ".2e"),
        ("eval_loss", "eval_loss", ".4f"),
        ("eval_accuracy", "eval_accuracy", ".4f"),
    ):
        if key in record:
            parts.append(f"{label} {record[key]:{fmt}}")
    return "  ".join(parts)


class LiveView:
    """A `fit` hook that shows training progress as it happens.

    every: redraw the plot every `every` optimizer steps. By default (None) it redraws when a new
        evaluation record arrives, since the plot changes most then.
    min_interval_s: never redraw more often than this. The wait also grows to four times the
        last drawing's duration, so drawing never takes more than about a fifth of the run.
    mode: "auto" (widgets inside a Jupyter kernel, text elsewhere), "widgets" or "text".
    smoothing: EMA weight of the training loss in the plot.

    The final step (state.step == state.max_steps) always updates everything.
    """

    def __init__(self, every: int | None = None, min_interval_s: float = 0.5, mode: str = "auto",
                 smoothing: float = 0.9, figsize=(9.0, 5.0)):
        if every is not None and every < 1:
            raise ValueError(f"every must be a positive number of steps or None, got {every}")
        if mode not in ("auto", "widgets", "text"):
            raise ValueError(f"mode must be 'auto', 'widgets' or 'text', got {mode!r}")
        self.every = every
        self.min_interval_s = min_interval_s
        self.mode = mode
        self.smoothing = smoothing
        self.figsize = figsize
        self._history = None  # the History of the run being shown; a new one starts afresh
        self._widgets = None  # built on the first call, so that creating a LiveView shows nothing
        self._shown = 0  # how many records of the history have been read already

    # ---- called by fit --------------------------------------------------------------------------

    def __call__(self, state) -> None:
        if not is_main_process():  # several processes: one view, shown by rank 0
            return
        records = state.history.records
        if state.history is not self._history:
            self._start(state)
        final = state.step >= state.max_steps
        new_count = len(records) - self._shown
        if self._widgets is None:
            if new_count > 0:
                for record in records[self._shown:]:
                    print(format_record(record, state.max_steps), flush=True)
                self._shown = len(records)
            return
        now = time.monotonic()
        # Nothing logged and no time to refresh the bar: the common case, return at once.
        if new_count <= 0 and not final and now - self._bar_time < self.min_interval_s:
            return
        self._update_progress(state, records, now)
        if self._should_redraw(state, final, now):
            self._redraw(state)
        if final:
            self._leave_picture(state, records)

    # ---- internals -----------------------------------------------------------------------------

    def _start(self, state) -> None:
        self._history = state.history
        self._shown = 0
        self._last_loss = math.nan
        self._last_accuracy = math.nan
        self._eval_count = 0
        self._drawn_eval_count = 0
        self._drawn_step = 0
        self._next_draw_time = -math.inf
        self._bar_time = -math.inf
        use_widgets = self.mode == "widgets" or (self.mode == "auto" and in_notebook())
        self._widgets = self._build_widgets(state) if use_widgets else None

    def _build_widgets(self, state) -> dict:
        from IPython.display import display
        from tqdm.notebook import tqdm  # what tqdm.auto gives inside a kernel

        # display=False: the bar goes into this view's box instead of its own output.
        bar = tqdm(total=max(1, state.max_steps), desc="step", unit="step", display=False)
        progress = bar.container.children[1]
        progress.add_class("course-live-progress")
        label = widgets.Label(value="")
        label.add_class("course-live-label")
        plot = widgets.Output()
        plot.add_class("course-live-plot")
        box = widgets.VBox([widgets.HBox([bar.container, label]), plot])
        box.add_class("course-live-view")
        # A display id, so that the last step can replace this output with one that carries a
        # picture too (see the module's docstring).
        from IPython.core.interactiveshell import InteractiveShell

        handle = None
        if InteractiveShell.initialized():
            handle = display(with_picture(box, plot, "live view: training..."), raw=True,
                             display_id=True)
        else:  # mode="widgets" outside IPython (tests): nothing can be shown or updated
            display(box)
        return {"box": box, "bar": bar, "progress": progress, "label": label, "plot": plot,
                "handle": handle}

    def _update_progress(self, state, records, now: float) -> None:
        for record in records[self._shown:]:
            if "loss" in record:
                self._last_loss = record["loss"]
            if "eval_accuracy" in record:
                self._last_accuracy = record["eval_accuracy"]
            if "eval_loss" in record:
                self._eval_count += 1
        self._shown = len(records)
        bar = self._widgets["bar"]
        bar.n = min(state.step, bar.total)
        bar.refresh()
        parts = []
        if not math.isnan(self._last_loss):
            parts.append(f"loss {self._last_loss:.4f}")
        if not math.isnan(self._last_accuracy):
            parts.append(f"eval accuracy {self._last_accuracy:.3f}")
        self._widgets["label"].value = "   ".join(parts)
        self._bar_time = now
        if state.step >= state.max_steps:
            bar.close()  # stops its clock; the bar stays on the page

    def _should_redraw(self, state, final: bool, now: float) -> bool:
        if final:
            return True
        if now < self._next_draw_time:
            return False
        if self.every is not None:
            return state.step - self._drawn_step >= self.every
        return self._eval_count > self._drawn_eval_count

    def _leave_picture(self, state, records) -> None:
        """Replace the view's output with one that also shows the final plot and last record."""
        last = format_record(records[-1], state.max_steps) if records else "no record"
        handle = self._widgets.get("handle")
        if handle is not None:
            handle.update(with_picture(self._widgets["box"], self._widgets["plot"],
                                       f"live view, finished: {last}"), raw=True)

    def _redraw(self, state) -> None:
        started = time.monotonic()
        figure = plot_history(state.history, smoothing=self.smoothing, figsize=self.figsize)
        # show_figure replaces the picture and closes the figure: memory stays flat over a run.
        show_figure(self._widgets["plot"], figure)
        self._drawn_step = state.step
        self._drawn_eval_count = self._eval_count
        finished = time.monotonic()
        self._next_draw_time = finished + max(self.min_interval_s, 4 * (finished - started))
