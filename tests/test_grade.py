"""The grader: one row per submission, and no submission can break it.

The kernel-running tests share one module-scoped grading run (one kernel per fixture notebook)
so the file stays quick; the rest test the pure parts without a kernel.
"""

from __future__ import annotations

import copy
import csv

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib.grade import (
    find_modifications,
    find_reference,
    format_table,
    grade,
    grade_notebook,
    main,
    write_csv,
)

# Check cells in the style of course_lib.checks, with a stand-in CheckFailure defined in a lesson
# cell: importing course_lib in a kernel also imports torch, seconds per kernel. Like the real one,
# it renders as one line through `_render_traceback_`, and must still count as a failure.
CHECK_HELPERS = """\
class CheckFailure(AssertionError):
    def _render_traceback_(self):
        return [f"✗ {self}"]

def passed(message):
    print("✓", message)"""

CHECK_DOUBLE = """\
got = double(3)
if got != 6:
    raise CheckFailure(f"double(3): expected 6, got {got}")
passed("double(3) == 6")"""

CHECK_HALVE = """\
got = halve(8)
if got != 4:
    raise CheckFailure(f"halve(8): expected 4, got {got}")
passed("halve(8) == 4")"""

DOUBLE = "def double(x):\n    return 2 * x"
HALVE = "def halve(x):\n    return x / 2"


def reference_exercise():
    """What make_exercises would write: a setup cell, then two stubs, each followed by its check."""

    def cell(source, ident, tags=()):
        metadata = {"exercise": {"id": ident}}
        if tags:
            metadata["tags"] = list(tags)
        return new_code_cell(source, metadata=metadata)

    return new_notebook(
        cells=[
            new_code_cell(CHECK_HELPERS),
            cell('def double(x):\n    raise NotImplementedError("return twice x")', "ex-double"),
            cell(CHECK_DOUBLE, "check-double", tags=["check"]),
            cell('def halve(x):\n    raise NotImplementedError("return half of x")', "ex-halve"),
            cell(CHECK_HALVE, "check-halve", tags=["check"]),
        ],
        metadata={"exercise": {"generated_from": "solutions/01_demo.ipynb"}},
    )


def submission(double=DOUBLE, halve=HALVE):
    notebook = reference_exercise()
    notebook.cells[1].source = double
    notebook.cells[3].source = halve
    notebook.metadata = {}  # found by file name, as a learner's renamed copy would be
    return notebook


def with_check_deleted():
    notebook = submission()
    del notebook.cells[4]
    return notebook


def with_checks_swapped():
    notebook = submission()
    cells = notebook.cells
    cells[2], cells[4] = cells[4], cells[2]
    return notebook


def with_check_edited():
    notebook = submission(double='def double(x):\n    raise NotImplementedError("return twice x")')
    notebook.cells[2].source = 'print("✓ double(3) == 6")'
    return notebook


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    (root / "exercises").mkdir()
    nbformat.write(reference_exercise(), root / "exercises" / "01_demo.ipynb")
    submissions = {
        "passing": submission(),
        "failing": submission(halve="def halve(x):\n    return x"),
        "endless": submission(double="while True:\n    pass"),
        "deleted": with_check_deleted(),
        "reordered": with_checks_swapped(),
        "edited": with_check_edited(),
        "kills_kernel": submission(double="import os\nos._exit(1)"),
    }
    (root / "submissions").mkdir()
    for name, notebook in submissions.items():
        nbformat.write(notebook, root / "submissions" / f"01_demo-{name}.ipynb")
    (root / "submissions" / "01_demo-not_json.ipynb").write_text("{ not json", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def rows(workspace):
    """Grade every fixture once; the endless loop gets a short limit."""
    reference = workspace / "exercises"
    folder = workspace / "submissions"
    names = ["passing", "failing", "deleted", "reordered", "edited", "kills_kernel", "not_json"]
    paths = [folder / f"01_demo-{name}.ipynb" for name in names]
    graded = grade(paths, reference=reference, timeout=30)
    graded.append(grade_notebook(folder / "01_demo-endless.ipynb", reference=reference, timeout=2))
    return {row["notebook"].rsplit("-", 1)[-1].removesuffix(".ipynb"): row for row in graded}


def summary(row):
    return row["status"], row["passed"], row["total"], row["checks"]


@pytest.mark.notebooks
def test_passing_submission(rows):
    assert summary(rows["passing"]) == ("ok", 2, 2, {"check-double": True, "check-halve": True})
    assert rows["passing"]["note"] == ""


@pytest.mark.notebooks
def test_failing_submission_is_ok_with_the_failed_check_named(rows):
    assert summary(rows["failing"]) == ("ok", 1, 2, {"check-double": True, "check-halve": False})
    assert rows["failing"]["note"] == "failed: check-halve"


@pytest.mark.notebooks
def test_endless_loop_times_out_and_later_checks_still_run(rows):
    row = rows["endless"]
    assert summary(row) == ("timed out", 1, 2, {"check-double": False, "check-halve": True})
    assert "cell index 1 ran past 2 s" in row["note"]
    assert row["seconds"] < 20


@pytest.mark.notebooks
def test_deleted_check_is_modified_and_counts_as_failed(rows):
    row = rows["deleted"]
    assert summary(row) == ("modified", 1, 2, {"check-double": True, "check-halve": False})
    assert "check check-halve deleted" in row["note"]


@pytest.mark.notebooks
def test_reordered_checks_are_modified(rows):
    row = rows["reordered"]
    assert row["status"] == "modified"
    assert "check cells reordered (check-halve, check-double)" in row["note"]
    assert "cell ex-halve moved below check check-halve" in row["note"]


@pytest.mark.notebooks
def test_edited_check_runs_the_reference_source_and_is_modified(rows):
    row = rows["edited"]
    assert summary(row) == ("modified", 1, 2, {"check-double": False, "check-halve": True})
    assert "check check-double changed" in row["note"]


@pytest.mark.notebooks
def test_kernel_killed_by_the_notebook_is_crashed(rows):
    row = rows["kills_kernel"]
    assert summary(row) == ("crashed", 0, 2, {"check-double": False, "check-halve": False})
    assert "kernel died while running cell index 1" in row["note"]


@pytest.mark.notebooks
def test_invalid_json_is_not_a_notebook_but_still_has_its_checks(rows):
    assert summary(rows["not_json"]) == (
        "not a notebook", 0, 2, {"check-double": False, "check-halve": False}
    )


def test_missing_reference_is_reported_not_raised(tmp_path):
    nbformat.write(submission(), tmp_path / "99_unknown.ipynb")
    (tmp_path / "exercises").mkdir()
    row = grade_notebook(tmp_path / "99_unknown.ipynb", reference=tmp_path / "exercises")
    assert row["status"] == "crashed"
    assert "no reference exercise found" in row["note"]


def test_reference_found_by_metadata_then_name_then_prefix(tmp_path):
    exercises = tmp_path / "exercises"
    exercises.mkdir()
    for name in ("01_demo", "01_de", "02_other"):
        nbformat.write(reference_exercise(), exercises / f"{name}.ipynb")
    renamed = tmp_path / "02_other.ipynb"
    nbformat.write(reference_exercise(), renamed)  # metadata says 01_demo
    assert find_reference(renamed, exercises) == exercises / "01_demo.ipynb"
    plain = submission()
    nbformat.write(plain, tmp_path / "02_other.ipynb")
    assert find_reference(tmp_path / "02_other.ipynb", exercises) == exercises / "02_other.ipynb"
    alice = tmp_path / "01_demo_alice.ipynb"
    nbformat.write(plain, alice)
    assert find_reference(alice, exercises) == exercises / "01_demo.ipynb"


def test_unchanged_submission_has_no_modifications():
    learner = submission()
    learner.cells.insert(2, new_code_cell("print('my own experiment')"))
    learner.cells[2].source += "\n"
    learner.cells[3].source = CHECK_DOUBLE.replace("\n", "  \n") + "\n\n"  # whitespace only
    assert find_modifications(learner, reference_exercise()) == []


def test_solution_moved_below_its_check_is_a_modification():
    learner = submission()
    learner.cells[1], learner.cells[2] = learner.cells[2], learner.cells[1]
    assert find_modifications(learner, reference_exercise()) == [
        "cell ex-double moved below check check-double"
    ]


def test_duplicated_check_is_a_modification():
    learner = submission()
    learner.cells.append(copy.deepcopy(learner.cells[2]))
    assert "check check-double duplicated" in find_modifications(learner, reference_exercise())


def test_table_and_csv_from_rows(tmp_path):
    rows = [
        {"notebook": "a.ipynb", "status": "ok", "passed": 2, "total": 2,
         "checks": {"c1": True, "c2": True}, "note": ""},
        {"notebook": "bob/a.ipynb", "status": "modified", "passed": 0, "total": 2,
         "checks": {"c1": False, "c2": False}, "note": "check c2 deleted"},
    ]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["notebook", "status", "passed", "note"]
    assert table[-1].split()[:4] == ["TOTAL", "1/2", "ok", "2/4"]
    assert table[1].index("ok") == table[2].index("modified")  # columns line up
    write_csv(rows, tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [
            ["notebook", "status", "passed", "total", "c1", "c2"],
            ["a.ipynb", "ok", "2", "2", "1", "1"],
            ["bob/a.ipynb", "modified", "0", "2", "0", "0"],
        ]


@pytest.mark.notebooks
def test_cli_prints_total_and_writes_csv(workspace, tmp_path, capsys):
    folder = workspace / "submissions"
    gradebook = tmp_path / "gradebook.csv"
    code = main([
        str(folder / "01_demo-failing.ipynb"), str(folder / "01_demo-not_json.ipynb"),
        "--reference", str(workspace / "exercises"), "--csv", str(gradebook), "--timeout", "30",
    ])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split()[:4] == ["TOTAL", "1/2", "ok", "1/4"]
    with open(gradebook, newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["notebook", "status", "passed", "total", "check-double", "check-halve"]
    assert lines[1][1:] == ["ok", "1", "2", "1", "0"]
    assert lines[2][1:] == ["not a notebook", "0", "2", "0", "0"]


@pytest.mark.parametrize(
    "arguments",
    [[], ["x.ipynb", "--reference", "/no/such/folder"], ["x.ipynb", "--timeout", "0"]],
    ids=["no-paths", "missing-reference", "zero-timeout"],
)
def test_cli_usage_errors_exit_2(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
