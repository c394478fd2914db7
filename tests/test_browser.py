"""The workbook as a learner sees it: each lesson run in JupyterLab, in a real browser.

For every lesson notebook (tests/fixtures/browser_demo.ipynb while notebooks/ holds none) the tests
open the notebook in JupyterLab in Chromium, choose Run > Run All Cells, and check what the page
shows: no cell fails, every widget is drawn as a control, moving a slider redraws its plot, and the
live training view moves while `fit` runs. Then, in an exercise notebook, a check cell says "not
implemented yet" until the solution is typed into the cell above it.

The notebooks run from copies in a temporary folder, so the checkout is never changed. Screenshots
go to docs/screenshots/ with UPDATE_SCREENSHOTS=1 (`make screenshots`), to a temporary folder
otherwise; screenshots of the fixture notebooks never go to docs/.

Without Chromium or Playwright every test here skips, with one line saying what to install.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser_support import (
    CHROMIUM_ARGS,
    ROOT,
    RUN_ALL_TIMEOUT_S,
    JupyterLab,
    NotebookPage,
    cells_not_run,
    error_outputs,
    exercise_and_solution,
    find_chromium,
    is_fixture,
    lesson_notebooks,
    missing_browser_reason,
    prepare_server_root,
    screenshot_name,
    solution_sources,
    undrawn_widgets,
)

pytestmark = pytest.mark.browser

# Skipping the whole module prints one line, where skipping each test would print one per test.
if missing_browser_reason():
    pytest.skip(missing_browser_reason(), allow_module_level=True)

LESSONS = lesson_notebooks()


# ---- one server and one browser for the whole module ---------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("jupyterlab")
    server_root = scratch / "root"
    server_root.mkdir()
    prepare_server_root(server_root)
    server = JupyterLab(server_root, scratch / "state")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser_context(lab):
    """One Chromium, one context: pages share JupyterLab's cached scripts and load in seconds."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context
        context.close()
        browser.close()


@pytest.fixture(scope="module")
def screenshot_path(tmp_path_factory):
    """screenshot_path(name, notebook) -> where to save a screenshot of that notebook."""
    update = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    scratch = tmp_path_factory.mktemp("screenshots")

    def path_for(name: str, notebook_path: str) -> Path:
        if update and not is_fixture(notebook_path):
            return ROOT / "docs" / "screenshots" / name
        return scratch / name

    return path_for


@pytest.fixture(scope="module")
def widget_shots():
    """The widget screenshot taken so far (one at most)."""
    return []


# ---- each lesson, run once for all the tests that look at it -------------------------------------


@dataclass
class RanLesson:
    notebook: NotebookPage
    cells: list[dict]  # NotebookPage.cells() right after Run All
    finished: bool  # False when Run All was still going after RUN_ALL_TIMEOUT_S


@pytest.fixture(scope="module", params=LESSONS, ids=lambda path: Path(path).stem)
def lesson(request, lab, browser_context, screenshot_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    notebook = NotebookPage(browser_context, lab, request.param)
    started = time.monotonic()
    notebook.open()
    notebook.record_progress()
    try:
        notebook.run_all()
        finished = True
    except PlaywrightTimeout:
        finished = False  # the tests name the cells that did not run
    print(f"{request.param}: opened and ran in {time.monotonic() - started:.1f} s")
    # The screenshot shows the first explorer, else the live view, else the first picture.
    notebook.screenshot_around(
        [*notebook.explorers(), ".course-live-view", ".jp-OutputArea-output img"],
        screenshot_path(screenshot_name(request.param), request.param),
    )
    yield RanLesson(notebook, notebook.cells(), finished)
    notebook.close()


def test_every_cell_runs_without_an_error(lesson):
    errors = error_outputs(lesson.cells)
    assert not errors, "cells failed:\n" + "\n".join(errors)
    not_run = cells_not_run(lesson.cells)
    if not lesson.finished:
        pytest.fail(f"Run All had not finished after {RUN_ALL_TIMEOUT_S} s; not run yet:\n"
                    + "\n".join(not_run))
    assert not not_run, "Run All did not reach:\n" + "\n".join(not_run)


def test_every_widget_is_drawn_as_a_control(lesson):
    problems = undrawn_widgets(lesson.cells)
    assert not problems, "widgets that JupyterLab did not draw:\n" + "\n".join(problems)


def require_every_widget_drawn(lesson):
    """Where widgets are not drawn, the page cannot show whether a lesson has explorers at all."""
    problems = undrawn_widgets(lesson.cells)
    assert not problems, ("cannot look for sliders or progress bars: widgets are not drawn:\n"
                          + "\n".join(problems))


def test_moving_a_slider_redraws_its_plot(lesson, screenshot_path, widget_shots):
    require_every_widget_drawn(lesson)
    explorers = lesson.notebook.explorers()
    if not explorers:
        pytest.skip("this lesson has no explorer with a slider")
    if not widget_shots:  # widget.png shows the first explorer of the first lesson that has one
        widget_shots.append(screenshot_path("widget.png", lesson.notebook.path))
        explorer = lesson.notebook.page.locator(explorers[0]).first
        lesson.notebook.screenshot_element(explorer, widget_shots[0], trim_width=True)
    unchanged = []
    for selector in explorers:
        before, after = lesson.notebook.move_slider(selector)
        if not before:
            unchanged.append(f"{selector} shows no plot")
        elif after == before:
            unchanged.append(f"{selector}: the plot did not change after the slider moved")
    assert not unchanged, "\n".join(unchanged)


# Explorers a lesson must show, so that the slider test above cannot pass by finding none.
EXPECTED_EXPLORERS = {
    "notebooks/02_losses_optimizers_schedules.ipynb": [".course-schedule-explorer"],
    "notebooks/03_mixed_precision_and_accumulation.ipynb": [".course-format-explorer"],
}


def test_each_lesson_shows_its_explorers(lesson):
    expected = EXPECTED_EXPLORERS.get(lesson.notebook.path)
    if not expected:
        pytest.skip("no explorers listed for this lesson")
    require_every_widget_drawn(lesson)
    shown = lesson.notebook.explorers()
    missing = [selector for selector in expected if selector not in shown]
    assert not missing, f"{lesson.notebook.path} shows no {', '.join(missing)} (found {shown})"


def test_the_live_view_updates_while_fit_runs(lesson):
    require_every_widget_drawn(lesson)
    if not lesson.notebook.page.locator(".course-live-progress").count():
        pytest.skip("this lesson has no live training view")
    samples = lesson.notebook.progress_samples()
    by_view: dict[int, list[float]] = {}
    for sample in samples:
        by_view.setdefault(sample["index"], []).append(sample["fraction"])
    # A bar seen part-way (strictly between empty and full) was drawn while training ran, not
    # only once at the end.
    moved = [fractions for fractions in by_view.values() if any(0 < f < 1 for f in fractions)]
    assert moved, f"no live progress bar was seen part-way through a run; values seen: {by_view}"


# ---- an exercise: the check fails, then passes once the solution is typed in ---------------------


@pytest.fixture(scope="module")
def exercise(lab, browser_context):
    path, solution_path = exercise_and_solution(lab.server_root)
    notebook = NotebookPage(browser_context, lab, path)
    notebook.open()
    notebook.run_all()  # stops at the first check, whose stub is not filled in
    yield notebook, solution_sources(solution_path)
    notebook.close()


def first_failing_check(cells: list[dict]) -> dict | None:
    for cell in cells:
        if "check" in cell["tags"] and any(output["type"] == "error" for output in cell["outputs"]):
            return cell
    return None


def shown_text(cell: dict) -> str:
    return "\n".join(output["shown"] for output in cell["outputs"])


def test_a_check_says_not_implemented_yet_in_one_line(exercise, screenshot_path):
    notebook, _ = exercise
    check = first_failing_check(notebook.cells())
    assert check is not None, "after Run All, no check cell shows a failure"
    text = shown_text(check)
    assert "not implemented yet" in text
    assert "Traceback" not in text, f"the check shows a traceback instead of one line:\n{text}"
    notebook.screenshot_element(notebook.cell(check["index"]),
                                screenshot_path("check-failing.png", notebook.path))


def test_the_check_passes_once_the_solution_is_typed_in(exercise, screenshot_path):
    notebook, solutions = exercise
    cells = notebook.cells()
    check = first_failing_check(cells)
    assert check is not None, "after Run All, no check cell shows a failure"
    stubs = [cell for cell in cells[: check["index"]]
             if cell["exerciseId"] in solutions and "NotImplementedError" in cell["source"]]
    assert stubs, f"no cell above {check['index']} holds a stub with a solution to type in"
    for stub in stubs:
        notebook.replace_source(stub["index"], solutions[stub["exerciseId"]])
        notebook.run_cell(stub["index"])
    notebook.run_cell(check["index"])
    checked = notebook.cells()[check["index"]]
    errors = error_outputs([checked])
    assert not errors, "the check still fails with the solution typed in:\n" + "\n".join(errors)
    assert "✓" in shown_text(checked)
    notebook.screenshot_element(notebook.cell(check["index"]),
                                screenshot_path("check-passing.png", notebook.path))
