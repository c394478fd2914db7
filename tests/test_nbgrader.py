"""nbgrader works on the solution notebooks as they are: release, autograde, export.

The test runs the README's own commands (its "Grading with nbgrader" block, read from README.md),
in a shell whose PATH has no `alembic` on it, as a fresh shell after `make` would: set up a course
holding every solution notebook as one assignment, `generate_assignment`, then `autograde` and
`export` three learners. `generate_assignment` must produce the same stubs as `make exercises`,
without answers or hidden tests; `autograde` must give the solution notebooks full marks, the
untouched release zero, and a notebook with one wrong answer less than full marks, losing that
check's points; `export` must write those totals to grades.csv. Three nbgrader runs (each starts
in about 20 s); autograde executes 17 notebooks, most of the time.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
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
    configure,
    generate_assignment_preprocessors,
    put_interpreter_folder_on_path,
)

# The course fixture (autograde executes 17 notebooks) counts toward the first test that uses it:
# on two busy cores that is more than the 10 minutes pyproject.toml allows a test.
pytestmark = pytest.mark.timeout(2400)

ROOT = package_root()
SOLUTIONS = solution_notebooks(ROOT)
HIDDEN_MARK = "hidden tests ran"
HIDDEN = f"### BEGIN HIDDEN TESTS\nprint({HIDDEN_MARK!r})\n### END HIDDEN TESTS"
NBGRADER = ROOT / ".venv" / "bin" / "nbgrader"
# The wrong answer: exercise 01's learning-rate multiplier decays in a straight line instead of as
# one over the square root of the step (COSINE: the solution's decay line; LINEAR: the wrong one).
WRONG_NOTEBOOK = "01_anatomy_of_a_training_loop"
WRONG_CHECK = "ex01-check-lr-multiplier"
RIGHT_CHECK = "ex01-check-evaluate"
COSINE = "return math.sqrt(max(1, warmup_steps) / max(1, step))"
LINEAR = "return (total_steps - step) / (total_steps - warmup_steps)"


def readme_commands() -> tuple[str, str, str, str]:
    """The README's nbgrader block, cut in three: set-up, generate_assignment, the rest.

    Also the assignment's name, from the generate_assignment line.
    """
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Grading with nbgrader"):]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    generate = next(i for i, line in enumerate(block) if "nbgrader generate_assignment" in line)
    collect = next(i for i, line in enumerate(block) if line.startswith("# hand out"))
    assignment = block[generate].split()[-1]
    return ("\n".join(block[:generate]), block[generate], "\n".join(block[collect + 1:]),
            assignment)


SETUP, GENERATE, GRADE, ASSIGNMENT = readme_commands()


def shell_env() -> dict[str, str]:
    """The environment of a fresh shell: no folder holding `alembic` on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        folder for folder in env.get("PATH", "").split(os.pathsep)
        if folder and not (Path(folder) / "alembic").exists()
    )
    assert shutil.which("alembic", path=env["PATH"]) is None
    env["WORKBOOK"] = str(ROOT)
    # This checkout's course_lib, in nbgrader and in its kernels, where .venv's editable install of
    # course_lib points at another checkout; in a plain `make` set-up it is the same folder.
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_readme(script: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=shell_env(), capture_output=True, text=True,
        timeout=1800,
    )
    errors = [line for line in done.stderr.splitlines() if "| ERROR]" in line]
    assert done.returncode == 0 and not errors, done.stderr[-4000:]
    return done


def with_hidden_test(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The solution with a hidden test appended to its first check cell."""
    first_check = next(cell for cell in solution.cells if is_check_cell(cell))
    first_check.source = first_check.source.rstrip() + "\n" + HIDDEN
    return solution


def with_wrong_answer(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cell = next(cell for cell in solution.cells if COSINE in cell.source)
    cell.source = cell.source.replace(COSINE, LINEAR)
    return solution


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    if not SOLUTIONS:
        pytest.skip("solutions/ has no notebooks yet")
    if not NBGRADER.exists():
        pytest.skip(f"{NBGRADER} is missing: the README's commands need the `make` set-up")
    workdir = tmp_path_factory.mktemp("nbgrader")
    run_readme(SETUP, workdir)
    course = workdir / "my-course"
    source = course / "source" / ASSIGNMENT
    assert sorted(path.name for path in source.glob("*.ipynb")) == [p.name for p in SOLUTIONS]
    first = source / SOLUTIONS[0].name
    nbformat.write(with_hidden_test(nbformat.read(first, as_version=4)), first)
    run_readme(GENERATE, course)

    for student, folder in (("solved", source), ("untouched", course / "release" / ASSIGNMENT)):
        target = course / "submitted" / student / ASSIGNMENT
        target.mkdir(parents=True)
        for path in SOLUTIONS:
            shutil.copy(folder / path.name, target / path.name)
    wrong = course / "submitted" / "wrong" / ASSIGNMENT
    wrong.mkdir(parents=True)  # hands in one notebook, with one wrong answer
    solution = nbformat.read(source / f"{WRONG_NOTEBOOK}.ipynb", as_version=4)
    nbformat.write(with_wrong_answer(solution), wrong / f"{WRONG_NOTEBOOK}.ipynb")
    run_readme(GRADE, course)
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


def grade_of(course: Path, check: str, notebook: str, student: str) -> tuple[float, float]:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        grade = gradebook.find_grade(check, notebook, ASSIGNMENT, student)
        return grade.score, grade.max_score


def test_the_readme_block_is_the_whole_course():
    assert "nbgrader_support import configure" in SETUP and "configure(get_config())" in SETUP
    assert GENERATE == f'"$WORKBOOK"/.venv/bin/nbgrader generate_assignment {ASSIGNMENT}'
    assert GRADE.splitlines() == [
        f'"$WORKBOOK"/.venv/bin/nbgrader autograde {ASSIGNMENT}',
        '"$WORKBOOK"/.venv/bin/nbgrader export',
    ]


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


@pytest.mark.notebooks
def test_a_wrong_answer_loses_its_checks_points(course):
    wrong = scores(course, "wrong")
    solved = scores(course, "solved")
    assert 0 < wrong[WRONG_NOTEBOOK][0] < solved[WRONG_NOTEBOOK][0] == wrong[WRONG_NOTEBOOK][1]
    assert grade_of(course, WRONG_CHECK, WRONG_NOTEBOOK, "wrong")[0] == 0
    score, max_score = grade_of(course, RIGHT_CHECK, WRONG_NOTEBOOK, "wrong")
    assert max_score > 0 and score == max_score
    # The notebooks it did not hand in score zero.
    assert all(score == 0 for name, (score, _) in wrong.items() if name != WRONG_NOTEBOOK)


@pytest.mark.notebooks
def test_export_writes_each_students_total(course):
    with open(course / "grades.csv", newline="", encoding="utf-8") as handle:
        exported = {row["student_id"]: row for row in csv.DictReader(handle)}
    assert set(exported) == {"solved", "untouched", "wrong"}
    totals = {student: sum(score for score, _ in scores(course, student).values())
              for student in exported}
    possible = sum(max_score for _, max_score in scores(course, "solved").values())
    for student, row in exported.items():
        assert row["assignment"] == ASSIGNMENT
        assert float(row["max_score"]) == possible
        assert float(row["score"]) == float(row["raw_score"]) == totals[student], student
    # Full marks for the solutions is the test above's; here, the order the totals must keep.
    assert float(exported["untouched"]["score"]) == 0
    assert 0 < float(exported["wrong"]["score"]) < float(exported["solved"]["score"])


def test_configure_sets_the_stubs_the_time_limit_and_finds_alembic(monkeypatch):
    from traitlets.config import Config

    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    config = Config()
    configure(config)
    configure(config)  # nbgrader may read the file more than once: PATH changes once
    assert config.GenerateAssignment.preprocessors == generate_assignment_preprocessors()
    assert config.Execute.timeout == 300
    folder = put_interpreter_folder_on_path()
    assert os.environ["PATH"] == os.pathsep.join([folder, "/usr/bin", "/bin"])
    assert shutil.which("alembic") == str(Path(folder) / "alembic")


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
