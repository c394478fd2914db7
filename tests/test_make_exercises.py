"""The exercise generator: solution regions become stubs, nothing of the answer leaks."""

from __future__ import annotations

import ast

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib.instructor.make_exercises import (
    ExerciseSourceError,
    annotate_for_nbgrader,
    exercise_id,
    main,
    make_exercise,
    package_root,
    render_exercise,
    render_solution,
    solution_notebooks,
    stale_exercises,
    write_exercises,
)

SOURCE = "solutions/01_demo.ipynb"


def solution_cell(source: str, ident: str, **kwargs):
    return new_code_cell(source, metadata={"exercise": {"id": ident}}, **kwargs)


def check_cell(source: str, ident: str):
    return new_code_cell(source, metadata={"tags": ["check"], "exercise": {"id": ident}})


def demo_solution():
    return new_notebook(
        cells=[
            new_markdown_cell("# Demo\nDouble a number."),
            solution_cell(
                'def double(x):\n    """Twice x."""\n'
                "    ### BEGIN SOLUTION: return twice the input\n"
                "    y = 2 * x\n    return y\n"
                "    ### END SOLUTION",
                "ex01-double",
                outputs=[new_output("stream", text="6\n")],
                execution_count=4,
            ),
            check_cell("check_double(double)", "ex01-double-check"),
            new_markdown_cell(
                "Why it works:\n<!-- BEGIN SOLUTION -->\nmultiplying by two doubles\n"
                "<!-- END SOLUTION -->\nOn to the next part."
            ),
            new_code_cell("print('lesson')", outputs=[new_output("stream", text="lesson\n")]),
        ]
    )


def exercise_code(notebook, ident):
    return next(c.source for c in notebook.cells if exercise_id(c) == ident)


def test_stub_keeps_def_line_docstring_and_indentation():
    exercise = make_exercise(demo_solution(), SOURCE)
    assert exercise_code(exercise, "ex01-double") == (
        'def double(x):\n    """Twice x."""\n'
        '    raise NotImplementedError("return twice the input")'
    )


def test_stubbed_cell_is_valid_python_without_the_answer():
    source = exercise_code(make_exercise(demo_solution(), SOURCE), "ex01-double")
    ast.parse(source)
    assert "2 * x" not in source


def test_instruction_defaults_when_begin_line_has_none():
    region = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
    source = make_exercise(new_notebook(cells=[solution_cell(region, "a")]), SOURCE).cells[1].source
    assert source == 'def f():\n    raise NotImplementedError("write your code here")'


def test_instruction_with_quotes_stays_a_valid_string():
    solution = new_notebook(
        cells=[solution_cell('### BEGIN SOLUTION: call "step" twice\nx = 1\n### END SOLUTION', "a")]
    )
    source = make_exercise(solution, SOURCE).cells[1].source
    raised = ast.parse(source).body[0].exc.args[0].value
    assert raised == 'call "step" twice'


def test_top_level_region_becomes_comment_and_raise_and_keeps_later_lines():
    solution = new_notebook(
        cells=[solution_cell("### BEGIN SOLUTION: set x\nx = 3\n### END SOLUTION\nprint(x)", "a")]
    )
    assert make_exercise(solution, SOURCE).cells[1].source == (
        '# YOUR CODE HERE\nraise NotImplementedError("set x")\nprint(x)'
    )


def test_markdown_solution_region_is_removed():
    exercise = make_exercise(demo_solution(), SOURCE)
    text = "\n".join(c.source for c in exercise.cells if c.cell_type == "markdown")
    assert "multiplying by two" not in text
    assert "SOLUTION" not in text
    assert "Why it works:\nOn to the next part." in text


def test_markdown_cell_that_was_all_solution_is_dropped():
    solution = demo_solution()
    all_answer = "<!-- BEGIN SOLUTION -->\nthe answer\n<!-- END SOLUTION -->"
    solution.cells.append(new_markdown_cell(all_answer))
    exercise = make_exercise(solution, SOURCE)
    assert len(exercise.cells) == len(solution.cells)  # +1 instructions, -1 dropped


def test_all_outputs_and_execution_counts_are_cleared():
    exercise = make_exercise(demo_solution(), SOURCE)
    code = [c for c in exercise.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_instructions_cell_first_and_provenance_in_metadata():
    exercise = make_exercise(demo_solution(), SOURCE)
    first = exercise.cells[0]
    assert first.cell_type == "markdown" and "NotImplementedError" in first.source
    assert "make exercises" not in first.source  # instructor's business, kept in the metadata
    assert exercise.metadata["exercise"]["generated_from"] == SOURCE
    assert "make exercises" in exercise.metadata["exercise"]["note"]


def test_solution_cell_ids_and_exercise_ids_are_kept():
    solution = demo_solution()
    exercise = make_exercise(solution, SOURCE)
    assert [c.id for c in exercise.cells[1:]] == [c.id for c in solution.cells]
    assert exercise.cells[3].metadata["tags"] == ["check"]


def test_same_input_gives_identical_text_and_input_is_untouched():
    solution = demo_solution()
    before = nbformat.writes(solution)
    first = nbformat.writes(make_exercise(solution, SOURCE))
    second = nbformat.writes(make_exercise(nbformat.reads(before, as_version=4), SOURCE))
    assert first == second
    assert nbformat.writes(solution) == before


def test_old_notebooks_without_cell_ids_get_positional_ids():
    solution = demo_solution()
    solution.nbformat_minor = 4
    for cell in solution.cells:
        del cell["id"]
    exercise = make_exercise(solution, SOURCE)
    assert [c.id for c in exercise.cells[1:]] == [f"cell-{i}" for i in range(len(solution.cells))]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("### BEGIN SOLUTION\nx = 1", "no ### END SOLUTION"),
        ("x = 1\n### END SOLUTION", "has no BEGIN SOLUTION"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "nested"),
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", "not spelled as one"),
    ],
    ids=["begin-without-end", "end-alone", "nested", "misspelled"],
)
def test_unbalanced_markers_name_notebook_and_cell(source, message):
    solution = new_notebook(cells=[new_markdown_cell("intro"), solution_cell(source, "a")])
    with pytest.raises(ExerciseSourceError, match=message) as error:
        make_exercise(solution, SOURCE)
    assert f"{SOURCE}, cell index 1" in str(error.value)


def test_unbalanced_markdown_markers_fail():
    solution = new_notebook(cells=[new_markdown_cell("<!-- BEGIN SOLUTION -->\nanswer")])
    with pytest.raises(ExerciseSourceError, match="cell index 0.*no <!-- END SOLUTION -->"):
        make_exercise(solution, SOURCE)


def test_solution_cell_without_id_fails_naming_the_cell():
    solution = new_notebook(cells=[new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    with pytest.raises(ExerciseSourceError, match=r"cell index 0 .*solution cell has no exercise"):
        make_exercise(solution, SOURCE)


def test_check_cell_without_id_fails_naming_the_cell():
    solution = demo_solution()
    del solution.cells[2].metadata["exercise"]
    with pytest.raises(ExerciseSourceError, match=r"cell index 2 .*check cell has no exercise id"):
        make_exercise(solution, SOURCE)


def test_repeated_id_fails_naming_both_cells():
    solution = demo_solution()
    solution.cells[2].metadata["exercise"]["id"] = "ex01-double"
    with pytest.raises(ExerciseSourceError, match="cell index 2 .*already used by cell index 1"):
        make_exercise(solution, SOURCE)


def test_check_mode_reports_missing_then_stale_then_nothing(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    solution_path = tmp_path / "solutions" / "01_demo.ipynb"
    nbformat.write(demo_solution(), solution_path)
    assert stale_exercises(tmp_path) == [
        "solutions/01_demo.ipynb is out of date (nbgrader metadata)",
        "exercises/01_demo.ipynb is missing",
    ]
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert not (tmp_path / "exercises").exists()  # --check writes nothing
    assert "nbgrader" not in solution_path.read_text(encoding="utf-8")

    assert main(["--root", str(tmp_path)]) == 0
    written = (tmp_path / "exercises" / "01_demo.ipynb").read_bytes()
    assert written == render_exercise(solution_path, tmp_path).encode()
    assert solution_path.read_bytes() == render_solution(solution_path, tmp_path).encode()
    assert main(["--root", str(tmp_path), "--check"]) == 0
    assert write_exercises(tmp_path) == []  # unchanged files are not rewritten

    edited = nbformat.read(solution_path, as_version=4)
    edited.cells[0].source = "# Demo, revised"
    nbformat.write(edited, solution_path)
    assert stale_exercises(tmp_path) == ["exercises/01_demo.ipynb is out of date (content)"]
    capsys.readouterr()
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert "exercises/01_demo.ipynb is out of date" in capsys.readouterr().out

    # A check cell given more points leaves stale nbgrader metadata in its solution.
    edited.cells[2].metadata["exercise"]["points"] = 3
    nbformat.write(edited, solution_path)
    assert "solutions/01_demo.ipynb is out of date (nbgrader metadata)" in stale_exercises(tmp_path)
    assert main(["--root", str(tmp_path)]) == 0
    regenerated = nbformat.read(solution_path, as_version=4)
    assert regenerated.cells[2].metadata["nbgrader"]["points"] == 3
    assert main(["--root", str(tmp_path), "--check"]) == 0


# --- hidden tests -------------------------------------------------------------------------------

HIDDEN = "### BEGIN HIDDEN TESTS\ncheck_double(double, x=-7)\n### END HIDDEN TESTS"


def test_hidden_tests_are_removed_from_the_exercise_only():
    solution = demo_solution()
    solution.cells[2].source = "check_double(double)\n" + HIDDEN
    exercise = make_exercise(solution, SOURCE)
    assert exercise_code(exercise, "ex01-double-check") == "check_double(double)"
    assert solution.cells[2].source.endswith(HIDDEN)  # the input is untouched


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("check_a()\n### BEGIN HIDDEN TESTS\ncheck_a(1)", "no ### END HIDDEN TESTS"),
        ("check_a()\n### END HIDDEN TESTS", "has no BEGIN HIDDEN TESTS"),
        ("# BEGIN HIDDEN TEST\ncheck_a(1)\n# END HIDDEN TEST", "not spelled as one"),
    ],
    ids=["begin-without-end", "end-alone", "misspelled"],
)
def test_unbalanced_hidden_test_markers_fail(source, message):
    solution = new_notebook(cells=[check_cell(source, "a")])
    with pytest.raises(ExerciseSourceError, match=message):
        make_exercise(solution, SOURCE)


def test_hidden_tests_outside_a_check_cell_fail():
    solution = new_notebook(cells=[solution_cell("x = 1\n" + HIDDEN, "a")])
    with pytest.raises(ExerciseSourceError, match="hidden tests belong in a check cell"):
        make_exercise(solution, SOURCE)


# --- nbgrader metadata ----------------------------------------------------------------------------


def test_nbgrader_metadata_follows_the_markup():
    solution = demo_solution()
    solution.cells[2].metadata["exercise"]["points"] = 2
    annotated = annotate_for_nbgrader(solution, SOURCE)
    meta = [cell.metadata["nbgrader"] for cell in annotated.cells]
    common = {"schema_version": 3}
    assert meta[1] == {**common, "grade": False, "solution": True, "locked": False,
                       "grade_id": "ex01-double"}
    assert meta[2] == {**common, "grade": True, "solution": False, "locked": True, "points": 2,
                       "grade_id": "ex01-double-check"}
    for index in (0, 3, 4):  # lesson cells, markdown explanations included: read-only
        assert meta[index] == {**common, "grade": False, "solution": False, "locked": True,
                               "grade_id": solution.cells[index].id}
    assert "nbgrader" not in solution.cells[0].metadata  # the input is untouched
    assert all("nbgrader" not in cell.metadata for cell in make_exercise(annotated, SOURCE).cells)


def test_nbgrader_annotation_is_idempotent_and_changes_nothing_else():
    once = annotate_for_nbgrader(demo_solution(), SOURCE)
    twice = annotate_for_nbgrader(once, SOURCE)
    assert nbformat.writes(once) == nbformat.writes(twice)
    for cell in once.cells:
        del cell.metadata["nbgrader"]
    assert nbformat.writes(once) == nbformat.writes(demo_solution_with_same_ids(once))


def demo_solution_with_same_ids(reference):
    solution = demo_solution()
    for cell, same in zip(solution.cells, reference.cells):
        cell.id = same.id
    return solution


@pytest.mark.parametrize("points", [-1, 1.5, "2", True])
def test_bad_points_fail_naming_the_cell(points):
    solution = demo_solution()
    solution.cells[2].metadata["exercise"]["points"] = points
    with pytest.raises(ExerciseSourceError, match=r"cell index 2 .*exercise.points must be"):
        annotate_for_nbgrader(solution, SOURCE)


def test_ids_nbgrader_cannot_take_fail():
    solution = demo_solution()
    solution.cells[2].metadata["exercise"]["id"] = "check double"
    with pytest.raises(ExerciseSourceError, match="cannot be an nbgrader grade id"):
        annotate_for_nbgrader(solution, SOURCE)


def test_bad_solution_notebook_exits_1_with_the_error(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    broken = new_notebook(cells=[solution_cell("### BEGIN SOLUTION\nx = 1", "a")])
    nbformat.write(broken, tmp_path / "solutions" / "02_broken.ipynb")
    assert main(["--root", str(tmp_path)]) == 1
    assert "solutions/02_broken.ipynb, cell index 0" in capsys.readouterr().err
    assert not (tmp_path / "exercises").exists()


def test_exercises_are_up_to_date():
    root = package_root()
    if not solution_notebooks(root):
        pytest.skip("solutions/ has no notebooks yet, so there are no exercises to compare")
    stale = stale_exercises(root)
    assert not stale, (
        "regenerate with `python -m course_lib.instructor.make_exercises`:\n" + "\n".join(stale)
    )
