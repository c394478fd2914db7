"""nbgrader works on the solution notebooks as they are: release, then autograde.

One temporary nbgrader course holds every solution notebook as one assignment. The course's
`nbgrader_config.py` is the one the README gives instructors (our stubs, a longer cell time limit).
`generate_assignment` must produce the same stubs as `make exercises`, without answers or hidden
tests; `autograde` must give the solution notebooks full marks and the untouched release zero.
Two nbgrader runs in all (each starts in about 20 s), and autograde executes four notebooks: 4 to 6
minutes on two cores shared with other work (load 8 to 11), most of it executing the notebooks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor.make_exercises import (
    is_check_cell,
    make_exercise,
    package_root,
    solution_notebooks,
)

pytest.importorskip("nbgrader", reason="nbgrader is in the test extra: pip install -e '.[test]'")
from nbgrader.api import Gradebook  # noqa: E402 - only once nbgrader is known to be there
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

from course_lib.instructor.nbgrader_support import (  # noqa: E402
    ClearSolutionsWithInstructions,
    generate_assignment_preprocessors,
)

ROOT = package_root()
SOLUTIONS = solution_notebooks(ROOT)
ASSIGNMENT = "ex"
HIDDEN_MARK = "hidden tests ran"
HIDDEN = f"### BEGIN HIDDEN TESTS\nprint({HIDDEN_MARK!r})\n### END HIDDEN TESTS"

CONFIG = """\
from course_lib.instructor.nbgrader_support import generate_assignment_preprocessors

c = get_config()
c.GenerateAssignment.preprocessors = generate_assignment_preprocessors()
# nbgrader's default of 30 s per cell is too short for a training run on a busy machine.
c.Execute.timeout = 300
# The kernel of the interpreter running nbgrader, whatever kernel the notebooks name.
c.Execute.kernel_name = "python3"
"""


def nbgrader(course: Path, *args: str) -> None:
    env = dict(os.environ)
    # nbgrader runs the `alembic` program, installed next to the interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)  # this checkout's course_lib, in nbgrader and in its kernels
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
        capture_output=True, text=True, timeout=900,
    )
    errors = [line for line in done.stderr.splitlines() if "| ERROR]" in line]
    assert done.returncode == 0 and not errors, done.stderr[-4000:]


def with_hidden_test(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The solution with a hidden test appended to its first check cell."""
    first_check = next(cell for cell in solution.cells if is_check_cell(cell))
    first_check.source = first_check.source.rstrip() + "\n" + HIDDEN
    return solution


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    if not SOLUTIONS:
        pytest.skip("solutions/ has no notebooks yet")
    course = tmp_path_factory.mktemp("nbgrader-course")
    (course / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
    source = course / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    for path in SOLUTIONS:
        solution = nbformat.read(path, as_version=4)
        if path == SOLUTIONS[0]:
            solution = with_hidden_test(solution)
        nbformat.write(solution, source / path.name)
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")

    for student, folder in (("solved", source), ("untouched", course / "release" / ASSIGNMENT)):
        target = course / "submitted" / student / ASSIGNMENT
        target.mkdir(parents=True)
        for path in SOLUTIONS:
            shutil.copy(folder / path.name, target / path.name)
    nbgrader(course, "autograde", ASSIGNMENT, "--create", "--force")
    return course


def scores(course: Path, student: str) -> dict[str, tuple[float, float]]:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        return {
            path.stem: (
                gradebook.find_submission_notebook(path.stem, ASSIGNMENT, student).score,
                gradebook.find_submission_notebook(path.stem, ASSIGNMENT, student).max_score,
            )
            for path in SOLUTIONS
        }


@pytest.mark.notebooks
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_release_holds_the_same_stubs_as_the_exercise(course, path):
    released = nbformat.read(course / "release" / ASSIGNMENT / path.name, as_version=4)
    solution = nbformat.read(course / "source" / ASSIGNMENT / path.name, as_version=4)
    exercise = make_exercise(solution, f"solutions/{path.name}")
    # The release keeps an emptied explanation cell and has no instructions cell; the rest is equal.
    released_sources = [cell.source for cell in released.cells if cell.source.strip()]
    exercise_sources = [cell.source for cell in exercise.cells[1:]]
    assert released_sources == exercise_sources
    text = nbformat.writes(released)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert HIDDEN_MARK not in text
    assert "raise NotImplementedError(\\\"" in text  # the learner's instructions survive


@pytest.mark.notebooks
def test_autograding_the_solutions_gives_full_marks(course):
    for notebook, (score, max_score) in scores(course, "solved").items():
        assert max_score > 0 and score == max_score, notebook


@pytest.mark.notebooks
def test_autograding_runs_the_hidden_tests(course):
    graded = nbformat.read(
        course / "autograded" / "solved" / ASSIGNMENT / SOLUTIONS[0].name, as_version=4
    )
    first_check = next(cell for cell in graded.cells if is_check_cell(cell))
    assert HIDDEN_MARK in "".join(output.get("text", "") for output in first_check.outputs)


@pytest.mark.notebooks
def test_autograding_the_untouched_release_gives_zero(course):
    for notebook, (score, max_score) in scores(course, "untouched").items():
        assert max_score > 0 and score == 0, notebook


def test_our_clear_solutions_keeps_instructions_and_nbgrader_rules():
    def solution_meta():
        return {"nbgrader": {"solution": True, "grade": False, "locked": False,
                             "grade_id": "a", "schema_version": 3}}

    notebook = new_notebook(cells=[
        new_code_cell("def f():\n    ### BEGIN SOLUTION: return one\n    return 1\n"
                      "    ### END SOLUTION", metadata=solution_meta()),
        new_code_cell("x = 42", metadata=solution_meta()),  # a whole-cell answer, no markers
        new_markdown_cell("Why:\n<!-- BEGIN SOLUTION -->\nbecause\n<!-- END SOLUTION -->"),
    ])
    cleared, _ = ClearSolutionsWithInstructions().preprocess(notebook, {})
    assert [cell.source for cell in cleared.cells] == [
        'def f():\n    raise NotImplementedError("return one")',
        "# YOUR CODE HERE\nraise NotImplementedError()",
        "Why:",
    ]
    assert ClearSolutionsWithInstructions in generate_assignment_preprocessors()
