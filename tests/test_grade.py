"""The grader: one row per submission, and no submission can break it.

The kernel-running tests share one module-scoped grading run (one kernel per fixture notebook)
so the file stays quick; the rest test the pure parts without a kernel.
"""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course_lib.instructor.grade import (
    KERNEL_ENV_PASSED_ON,
    kernel_env,
    check_imports,
    find_modifications,
    POINTS_POSSIBLE,
    _expand_with_folders,
    check_messages,
    feedback_notebook,
    find_reference,
    format_table,
    grade,
    grade_notebook,
    guard_hidden_tests,
    main,
    one_line,
    sources_to_run,
    student_name,
    with_fresh_checks,
    write_csv,
    write_feedback,
)
from course_lib.instructor.make_exercises import make_exercise, package_root
from course_lib.instructor.sandbox import Sandbox, probe


@pytest.fixture(scope="module")
def box() -> bool:
    """Whether grading here runs in the bubblewrap box (probed once, when a test first needs it).

    Where no box can be made (macOS, Windows, a container without user namespaces), these tests
    grade without one, as `--no-sandbox` would: what they check is the grading itself.
    tests/test_grade_tampering.py checks what the box keeps out, and skips there, saying why.
    """
    return probe() is None


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
# Passes the visible check (8 // 2 == 4) but not the hidden one (3 // 2 != 1.5).
FLOOR_HALVE = "def halve(x):\n    return x // 2"
# It prints when it passes, as checks do: that line must not reach the learner either.
HIDDEN_HALVE = """\
### BEGIN HIDDEN TESTS
got = halve(3)
if got != 1.5:
    raise CheckFailure(f"halve(3): expected 1.5, got {got}")
passed("halve(3) == 1.5")
### END HIDDEN TESTS"""
HIDDEN_WORDS = ("halve(3)", "1.5", "HIDDEN", "<hidden tests>")
SECRET = "GRADER_TEST_SECRET_TOKEN"
# Doubles right only when the kernel's environment holds none of the grader's secret, so the
# check's verdict reports what the kernel saw (an answer cell runs only its definitions).
ENV_PROBE = (
    "import os\n"
    f"LEAKED = {SECRET!r} in os.environ or 'hunter2' in str(dict(os.environ))\n"
    "def double(x):\n"
    "    return 0 if LEAKED else 2 * x"
)


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


def reference_solution():
    """The solution notebook behind reference_exercise(): check-halve has hidden tests, 2 points."""
    notebook = reference_exercise()
    notebook.cells[1].source = DOUBLE
    notebook.cells[3].source = HALVE
    notebook.cells[4].source = CHECK_HALVE + "\n" + HIDDEN_HALVE
    notebook.cells[4].metadata["exercise"]["points"] = 2
    notebook.metadata = {}
    return notebook


def reference_exercise_with_points():
    notebook = reference_exercise()
    notebook.cells[4].metadata["exercise"]["points"] = 2
    return notebook


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
    (root / "solutions").mkdir()
    nbformat.write(reference_exercise_with_points(), root / "exercises" / "01_demo.ipynb")
    nbformat.write(reference_solution(), root / "solutions" / "01_demo.ipynb")
    nbformat.write(guard_exercise(), root / "exercises" / "02_guard.ipynb")
    env_probe = submission(double=ENV_PROBE)
    submissions = {
        "passing": submission(),
        "failing": submission(halve="def halve(x):\n    return x"),
        "floor": submission(halve=FLOOR_HALVE),
        "env_probe": env_probe,
        "endless": submission(double="def double(x):\n    while True:\n        pass"),
        "deleted": with_check_deleted(),
        "reordered": with_checks_swapped(),
        "edited": with_check_edited(),
        "kills_kernel": submission(double="import os\nstopped = os._exit(1)"),
    }
    (root / "submissions").mkdir()
    for name, notebook in submissions.items():
        nbformat.write(notebook, root / "submissions" / f"01_demo-{name}.ipynb")
    (root / "submissions" / "01_demo-not_json.ipynb").write_text("{ not json", encoding="utf-8")
    for name, notebook in guard_submissions().items():
        nbformat.write(notebook, root / "submissions" / f"02_guard-{name}.ipynb")
    return root


@pytest.fixture(scope="module")
def rows(workspace, box):
    """Grade every fixture once; the endless loop gets a short limit."""
    reference = workspace / "exercises"
    folder = workspace / "submissions"
    names = [
        "passing", "failing", "floor", "env_probe", "deleted", "reordered", "edited",
        "kills_kernel", "not_json",
    ]
    paths = [folder / f"01_demo-{name}.ipynb" for name in names]
    paths += [folder / f"02_guard-{name}.ipynb" for name in guard_submissions()]
    # The grader's own environment holds a secret that no submission may read.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET, "hunter2")
        graded = grade(paths, reference=reference, timeout=60, sandbox=box)
    graded.append(grade_notebook(folder / "01_demo-endless.ipynb", reference=reference, timeout=2,
                                 sandbox=box))
    return {row["notebook"].rsplit("-", 1)[-1].removesuffix(".ipynb"): row for row in graded}


# --- fresh checks: a real checks module (course_lib.checks._core underneath) ----------------------

DEMO_CHECKS = """\
from course_lib.checks._core import call_learner, passed, require


def check_double(double):
    got = call_learner(double, 3)
    require(got == 6, "double(3) is wrong", expected=6, got=got, hint="multiply by two")
    passed("double(3) == 6")
"""
WRONG_DOUBLE = "def double(x):\n    return x + 2"


def guard_exercise():
    # The set-up cell writes the checks module into the kernel's working folder (the sandbox's),
    # the only folder it imports from besides course_lib and the environment.
    setup = (
        f"from pathlib import Path\nPath('demo_checks.py').write_text({DEMO_CHECKS!r})\n"
        "from demo_checks import check_double"
    )
    return new_notebook(
        cells=[
            new_code_cell(setup),
            new_code_cell(
                'def double(x):\n    raise NotImplementedError("return twice x")',
                metadata={"exercise": {"id": "ex-double"}},
            ),
            new_code_cell(
                "check_double(double)",
                metadata={"exercise": {"id": "check-double"}, "tags": ["check"]},
            ),
        ],
    )


def guard_submissions():
    """A right answer, then a wrong one with each way of silencing the check."""

    def learner(double, trick=None):
        notebook = guard_exercise()
        notebook.cells[1].source = double + ("\n" + trick if trick else "")
        return notebook

    # Each trick is written as definitions (assignments to plain names), which the answer cell
    # keeps, and also rebinds the name, so that it would win against a grader that merely
    # re-imports (module_patched) or that refreshes the check's module but not _core.
    return {
        "right": learner(DOUBLE),
        "rebound": learner(WRONG_DOUBLE, "check_double = lambda *args, **kwargs: print('✓')"),
        "module_patched": learner(
            WRONG_DOUBLE,
            "import demo_checks as m\n"
            "_ = setattr(m, 'check_double', lambda *args, **kwargs: None)\n"
            "from demo_checks import check_double",
        ),
        "core_patched": learner(
            WRONG_DOUBLE,
            "import sys\n"
            "import course_lib.checks._core as core\n"
            "_ = setattr(core, 'require', lambda *args, **kwargs: None)\n"
            "_ = setattr(core, 'call_learner', lambda fn, *args, **kwargs: 6)\n"
            "_ = sys.modules.pop('demo_checks')\n"
            "from demo_checks import check_double",
        ),
    }


def _descendants(pid: int) -> list[str]:
    """The command lines of every living process below `pid`."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(
                b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(commands.get(child, ""))
        todo += children.get(child, [])
    return found


@pytest.mark.notebooks
def test_no_kernel_outlives_its_notebook(rows):
    """Each submission's kernel (and its sandbox) is killed as soon as it is graded."""
    left = [command for command in _descendants(os.getpid())
            if "ipykernel" in command or "bwrap" in command]
    assert left == []


@pytest.mark.notebooks
def test_fresh_checks_pass_a_right_answer(rows):
    assert summary(rows["right"]) == ("ok", 1, 1, {"check-double": True})


@pytest.mark.notebooks
@pytest.mark.parametrize("trick", ["rebound", "module_patched", "core_patched"])
def test_silencing_the_check_earns_nothing(rows, trick):
    assert summary(rows[trick]) == ("ok", 0, 1, {"check-double": False})
    assert rows[trick]["points"] == 0


def test_fresh_check_source_rebinds_only_the_names_the_cell_calls():
    imports = check_imports(new_notebook(cells=[
        new_code_cell("from course_lib.checks.ex99 import (check_a, check_b as b_check,\n hint)"),
        new_code_cell("%matplotlib inline"),  # not Python: skipped, not an error
    ]))
    assert imports == {
        "check_a": ("course_lib.checks.ex99", "check_a"),
        "b_check": ("course_lib.checks.ex99", "check_b"),
    }
    source = with_fresh_checks("check_a(f)\ncheck_other(g)", imports)
    assert source.endswith("\nfrom course_lib.checks.ex99 import check_a as check_a\ncheck_a(f)"
                           "\ncheck_other(g)")
    assert "'course_lib.checks.'" in source and "'course_lib.checks.ex99.'" in source
    assert with_fresh_checks("print(1)", imports) == "print(1)"  # nothing to rebind


def summary(row):
    return row["status"], row["passed"], row["total"], row["checks"]


@pytest.mark.notebooks
def test_passing_submission(rows):
    assert summary(rows["passing"]) == ("ok", 2, 2, {"check-double": True, "check-halve": True})
    assert (rows["passing"]["points"], rows["passing"]["max_points"]) == (3, 3)
    assert rows["passing"]["note"] == ""


@pytest.mark.notebooks
def test_failing_submission_is_ok_with_the_failed_check_named(rows):
    assert summary(rows["failing"]) == ("ok", 1, 2, {"check-double": True, "check-halve": False})
    assert (rows["failing"]["points"], rows["failing"]["max_points"]) == (1, 3)
    assert rows["failing"]["note"] == "failed: check-halve"


@pytest.mark.notebooks
def test_hidden_tests_of_the_solution_run(rows):
    # floor division passes the visible check (halve(8)) and fails the hidden one (halve(3)).
    assert summary(rows["floor"]) == ("ok", 1, 2, {"check-double": True, "check-halve": False})


@pytest.mark.notebooks
def test_kernel_sees_no_secret_of_the_grader(rows):
    # ENV_PROBE's double is right only when the kernel's environment held no trace of the secret.
    assert summary(rows["env_probe"]) == ("ok", 2, 2, {"check-double": True, "check-halve": True})


def test_kernel_environment_is_only_what_the_grader_passes_on(monkeypatch):
    monkeypatch.setenv(SECRET, "hunter2")
    with Sandbox(package_root()) as box:
        env = box.environment(kernel_env(str(box.tmp)))
        assert set(env) <= {*KERNEL_ENV_PASSED_ON, "TMPDIR", "PYTHONPATH", "LANG", "HOME"}
        assert env["HOME"] == str(box.home) and env["TMPDIR"] == str(box.tmp)
        assert env["PYTHONPATH"] == str(box.lib)
        assert (box.lib / "course_lib" / "checks").is_dir()
        assert not (box.lib / "course_lib" / "instructor").exists()
    assert not box.root.exists()  # the submission's folder goes after grading


@pytest.mark.notebooks
def test_endless_loop_times_out_and_later_checks_still_run(rows):
    row = rows["endless"]
    assert summary(row) == ("timed out", 1, 2, {"check-double": False, "check-halve": True})
    assert "check check-double ran past 2 s" in row["note"]
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
    assert "kernel died while running answer ex-double" in row["note"]


@pytest.mark.notebooks
def test_invalid_json_is_not_a_notebook_but_still_has_its_checks(rows):
    assert summary(rows["not_json"]) == (
        "not a notebook", 0, 2, {"check-double": False, "check-halve": False}
    )


def test_missing_reference_is_reported_not_raised(tmp_path, box):
    nbformat.write(submission(), tmp_path / "99_unknown.ipynb")
    (tmp_path / "exercises").mkdir()
    row = grade_notebook(tmp_path / "99_unknown.ipynb", reference=tmp_path / "exercises",
                         sandbox=box)
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


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def assert_rows_add_up(lines):
    """Every row's passed/total/points/max_points agree with its per-check columns."""
    header = lines[0]
    checks = header[7:-2]
    possible = dict(zip(checks, map(int, lines[1][7:-2])))
    assert lines[1][:7] == [POINTS_POSSIBLE, "", "", str(len(checks)), str(len(checks)),
                            str(sum(possible.values())), str(sum(possible.values()))]
    for line in lines[2:]:
        marks = {ident: int(mark) for ident, mark in zip(checks, line[7:-2]) if mark != ""}
        assert int(line[5]) == sum(marks.values()), line
        assert int(line[6]) == sum(possible[ident] for ident in marks), line
        assert int(line[4]) == len(marks), line
        assert int(line[3]) >= sum(1 for ident, mark in marks.items() if mark), line


def test_table_and_csv_from_rows(tmp_path):
    worth = {"c1": 1, "c2": 3}
    rows = [
        {"notebook": "a.ipynb", "student": "a", "status": "ok", "passed": 2, "total": 2,
         "points": 4, "max_points": 4, "checks": {"c1": True, "c2": True},
         "check_points": worth, "note": "", "messages": {}},
        {"notebook": "bob/a.ipynb", "student": "bob", "status": "modified", "passed": 0,
         "total": 2, "points": 0, "max_points": 4, "checks": {"c1": False, "c2": False},
         "check_points": worth, "note": "check c2 deleted",
         "messages": {"c1": "CheckFailure: f(1): expected 2, got 3", "c2": "check cell deleted"}},
    ]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["student", "notebook", "status", "passed", "points", "note"]
    assert table[-1].split()[:5] == ["TOTAL", "1/2", "ok", "2/4", "4/8"]
    assert table[1].index("ok") == table[2].index("modified")  # columns line up
    assert table[1].index("4/4") == table[2].index("0/4")
    write_csv(rows, tmp_path / "grades.csv")
    lines = read_csv(tmp_path / "grades.csv")
    assert lines == [
        ["student", "notebook", "status", "passed", "total", "points", "max_points", "c1", "c2",
         "messages", "note"],
        [POINTS_POSSIBLE, "", "", "2", "2", "4", "4", "1", "3", "", ""],
        ["a", "a.ipynb", "ok", "2", "2", "4", "4", "1", "3", "", ""],
        ["bob", "bob/a.ipynb", "modified", "0", "2", "0", "4", "0", "0",
         "c1: CheckFailure: f(1): expected 2, got 3\nc2: check cell deleted", "check c2 deleted"],
    ]
    assert_rows_add_up(lines)


def test_points_possible_row_adds_up_across_exercises(tmp_path):
    """Two exercises in one gradebook: each row fills only its own checks' columns."""
    rows = [
        {"notebook": "01.ipynb", "student": "ann", "status": "ok", "passed": 1, "total": 2,
         "points": 2, "max_points": 3, "checks": {"a": False, "b": True},
         "check_points": {"a": 1, "b": 2}, "note": "failed: a", "messages": {"a": "boom"}},
        {"notebook": "02.ipynb", "student": "ann", "status": "ok", "passed": 1, "total": 1,
         "points": 0, "max_points": 0, "checks": {"c": True}, "check_points": {"c": 0},
         "note": "", "messages": {}},
    ]
    write_csv(rows, tmp_path / "grades.csv")
    lines = read_csv(tmp_path / "grades.csv")
    assert lines[1] == [POINTS_POSSIBLE, "", "", "3", "3", "3", "3", "1", "2", "0", "", ""]
    assert lines[3][7:10] == ["", "", "0"]  # a check worth nothing, passed
    assert_rows_add_up(lines)


@pytest.mark.parametrize(("relative", "folder", "expected"), [
    ("submissions/alice/02_losses.ipynb", "submissions", "alice"),  # folder given, nested
    ("submitted/alice/ps1/02_losses.ipynb", "submitted", "alice"),  # nbgrader's layout
    ("submissions/alice/02_losses-v2.ipynb", "submissions", "alice"),  # the folder comes first
    ("submissions/02_losses-alice.ipynb", "submissions", "alice"),  # directly in the folder
    ("submissions/02_losses_bob smith.ipynb", None, "bob smith"),
    ("submissions/02_losses.carol.ipynb", None, "carol"),
    ("submissions/alice/02_losses.ipynb", None, "alice"),  # a file named as the exercise
    ("submissions/dave.ipynb", None, "dave"),  # a name of its own
    ("submissions/dave.ipynb", "submissions", "dave"),
    ("02_losses-erin.ipynb", None, "erin"),
])
def test_student_name_from_folder_or_file_name(tmp_path, relative, folder, expected):
    path = tmp_path / relative
    folder = tmp_path / folder if folder else None
    assert student_name(path, "exercises/02_losses.ipynb", folder) == expected


def test_student_name_needs_no_reference_and_folders_are_found(tmp_path):
    assert student_name(tmp_path / "x" / "02_losses-alice.ipynb") == "02_losses-alice"
    for relative in ("alice/ps1/02_losses.ipynb", "02_losses-bob.ipynb"):
        (tmp_path / "in" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / relative).write_text("{}", encoding="utf-8")
    found = _expand_with_folders([tmp_path / "in", tmp_path / "in" / "02_losses-bob.ipynb"])
    names = [student_name(path, "02_losses.ipynb", folder) for path, folder in found]
    assert names == ["bob", "alice", "bob"]


def test_messages_are_one_line_without_colour_and_hidden_failures_say_nothing_more():
    assert one_line("\x1b[31m✗ CheckFailure: a\n  b\x1b[0m") == "✗ CheckFailure: a b"
    assert len(one_line("x" * 1000)) == 300

    def executed_check(ident, *outputs):
        cell = new_code_cell("check()", metadata={"exercise": {"id": ident}})
        cell.outputs = [nbformat.v4.new_output("error", traceback=["secret source"], **output)
                        for output in outputs]
        return cell

    executed = new_notebook(cells=[
        executed_check("a", {"ename": "CheckFailure",
                             "evalue": "\x1b[1mf(2)\x1b[0m: expected 4;\ngot 5. Hint: double"}),
        executed_check("b", {"ename": "HiddenTestFailure", "evalue": "a hidden test failed"}),
        executed_check("c", {"ename": "KeyboardInterrupt", "evalue": ""},
                       {"ename": "GraderTimeout", "evalue": "ran past 2 s"}),
        executed_check("d"),
        executed_check("ok"),
    ])
    checks = {"a": False, "b": False, "c": False, "d": False, "e": False, "ok": True}
    assert check_messages(executed, checks) == {
        "a": "CheckFailure: f(2): expected 4; got 5. Hint: double",
        "b": "a hidden test failed",
        "c": "timed out: ran past 2 s",
        "d": "not run (the kernel stopped before this cell)",
        "e": "check cell deleted",
    }
    visible = {ident: f"check_{ident}(f)" for ident in checks}
    row = {"points": 0, "max_points": 6, "passed": 1, "total": 6, "status": "ok", "note": "",
           "checks": checks, "check_points": dict.fromkeys(checks, 1),
           "messages": check_messages(executed, checks)}
    feedback = feedback_notebook(executed, visible, row)
    text = nbformat.writes(feedback)
    assert "secret source" not in text
    assert [cell.source for cell in feedback.cells[1:]] == [
        "check_a(f)", "check_b(f)", "check_c(f)", "check_d(f)", "check_ok(f)"]
    assert feedback.cells[1].outputs[0].traceback == [
        "✗ CheckFailure: f(2): expected 4; got 5. Hint: double"]
    assert "- ✗ `e`: 0/1: check cell deleted" in feedback.cells[0].source


def test_solution_sources_with_hidden_tests_are_used_when_in_step(tmp_path):
    (tmp_path / "exercises").mkdir()
    (tmp_path / "solutions").mkdir()
    exercise_path = tmp_path / "exercises" / "01_demo.ipynb"
    nbformat.write(reference_exercise(), exercise_path)
    reference = nbformat.read(exercise_path, as_version=4)
    assert sources_to_run(reference, exercise_path) == ({
        "check-double": CHECK_DOUBLE, "check-halve": CHECK_HALVE}, None)  # no solution yet
    nbformat.write(reference_solution(), tmp_path / "solutions" / "01_demo.ipynb")
    sources, note = sources_to_run(reference, exercise_path)
    assert note is None and sources["check-halve"] == guard_hidden_tests(
        CHECK_HALVE + "\n" + HIDDEN_HALVE)
    assert sources["check-halve"].startswith(CHECK_HALVE + "\ntry:\n")
    assert "halve(3)" in sources["check-halve"] and "BEGIN HIDDEN" not in sources["check-halve"]
    # The generator writes the same visible check as the reference holds.
    generated = make_exercise(reference_solution(), "solutions/01_demo.ipynb")
    assert [c.source for c in generated.cells if "check" in c.metadata.get("tags", [])] == [
        CHECK_DOUBLE, CHECK_HALVE]
    stale = reference_solution()
    stale.cells[2].source = "print('a newer check')"
    nbformat.write(stale, tmp_path / "solutions" / "01_demo.ipynb")
    sources, note = sources_to_run(reference, exercise_path)
    assert sources["check-halve"] == CHECK_HALVE
    assert note == ("hidden tests not run: solutions/01_demo.ipynb differs from the exercise at "
                    "check-double (regenerate the exercises)")


@pytest.mark.notebooks
def test_cli_prints_total_and_writes_csv_and_feedback(workspace, tmp_path, capsys, box):
    folder = workspace / "submissions"
    gradebook = tmp_path / "gradebook.csv"
    feedback = tmp_path / "feedback"
    code = main([
        str(folder / "01_demo-failing.ipynb"), str(folder / "01_demo-not_json.ipynb"),
        str(folder / "01_demo-floor.ipynb"),
        "--reference", str(workspace / "exercises"), "--csv", str(gradebook), "--timeout", "30",
        "--feedback", str(feedback), *([] if box else ["--no-sandbox"]),
    ])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split()[:5] == ["TOTAL", "2/3", "ok", "2/6", "2/9"]
    assert out[1].split()[:2] == ["failing", str(folder / "01_demo-failing.ipynb")]
    lines = read_csv(gradebook)
    assert lines[0] == [
        "student", "notebook", "status", "passed", "total", "points", "max_points",
        "check-double", "check-halve", "messages", "note",
    ]
    assert lines[1] == [POINTS_POSSIBLE, "", "", "2", "2", "3", "3", "1", "2", "", ""]
    assert lines[2] == [
        "failing", str(folder / "01_demo-failing.ipynb"), "ok", "1", "2", "1", "3", "1", "0",
        "check-halve: CheckFailure: halve(8): expected 4, got 8", "failed: check-halve",
    ]
    assert lines[3][:9] == [
        "not_json", str(folder / "01_demo-not_json.ipynb"), "not a notebook", "0", "2", "0",
        "3", "0", "0",
    ]
    assert lines[4][:10] == [
        "floor", str(folder / "01_demo-floor.ipynb"), "ok", "1", "2", "1", "3", "1", "0",
        "check-halve: a hidden test failed",
    ]
    assert_rows_add_up(lines)
    assert not any(word in gradebook.read_text(encoding="utf-8") for word in HIDDEN_WORDS)

    written = sorted(path.relative_to(feedback).as_posix() for path in feedback.rglob("*"))
    assert written == [
        "failing", "failing/01_demo-failing.ipynb", "floor", "floor/01_demo-floor.ipynb",
        "not_json", "not_json/01_demo-not_json.ipynb",
    ]
    failing = nbformat.read(feedback / "failing" / "01_demo-failing.ipynb", as_version=4)
    assert "**Grade: 1/3 points**" in failing.cells[0].source
    assert "- ✗ `check-halve`: 0/2: CheckFailure: halve(8): expected 4, got 8" in (
        failing.cells[0].source)
    checks = [cell for cell in failing.cells if "check" in cell.metadata.get("tags", [])]
    assert [cell.source for cell in checks] == [CHECK_DOUBLE, CHECK_HALVE]
    assert checks[0].outputs[0]["text"] == "✓ double(3) == 6\n"
    assert [output["output_type"] for output in checks[1].outputs] == ["error"]
    assert checks[1].outputs[0]["traceback"] == [
        "✗ CheckFailure: halve(8): expected 4, got 8"]
    answer = next(cell for cell in failing.cells if cell.metadata.get("exercise", {}).get("id")
                  == "ex-halve")
    assert answer.source == "def halve(x):\n    return x"  # the learner's own cells, as run
    not_json = nbformat.read(feedback / "not_json" / "01_demo-not_json.ipynb", as_version=4)
    assert "status: not a notebook" in not_json.cells[0].source


@pytest.mark.notebooks
@pytest.mark.parametrize("name", ["floor", "passing"])
def test_feedback_never_shows_hidden_tests(rows, tmp_path, name):
    """floor fails the hidden test, passing passes it (and the hidden test prints on success)."""
    row = rows[name]
    text = nbformat.writes(row["feedback"])
    assert not any(word in text for word in HIDDEN_WORDS), text
    check = next(cell for cell in row["feedback"].cells
                 if cell.metadata.get("exercise", {}).get("id") == "check-halve")
    assert check.source == CHECK_HALVE
    printed = [output.get("text", "") for output in check.outputs]
    if name == "floor":
        assert row["messages"] == {"check-halve": "a hidden test failed"}
        assert printed == ["✓ halve(8) == 4\n", ""]
        assert check.outputs[1]["traceback"] == ["✗ a hidden test failed"]
    else:
        assert row["messages"] == {}
        assert printed == ["✓ halve(8) == 4\n"]


@pytest.mark.notebooks
def test_rows_carry_each_failed_checks_message(rows):
    assert rows["failing"]["messages"] == {
        "check-halve": "CheckFailure: halve(8): expected 4, got 8"}
    # Only the answer's definition runs before the checks, so the endless loop runs inside the
    # check that calls `double`, and that check is the one cut off by the limit.
    assert rows["endless"]["messages"] == {"check-double": "timed out: ran past 2 s"}
    assert rows["deleted"]["messages"] == {"check-halve": "check cell deleted"}
    assert rows["edited"]["messages"] == {
        "check-double": "NotImplementedError: return twice x"}
    assert rows["rebound"]["messages"] == {"check-double": (
        "CheckFailure: double(3) is wrong; expected 6; got 5. Hint: multiply by two")}
    assert set(rows["kills_kernel"]["messages"]) == {"check-double", "check-halve"}
    assert rows["not_json"]["messages"] == {}
    assert rows["passing"]["student"] == "passing"


@pytest.mark.parametrize(
    "arguments",
    [[], ["x.ipynb", "--reference", "/no/such/folder"], ["x.ipynb", "--timeout", "0"]],
    ids=["no-paths", "missing-reference", "zero-timeout"],
)
def test_cli_usage_errors_exit_2(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2


def test_every_check_the_real_notebooks_call_is_imported_by_name():
    """The fresh import can rebind a check only if the notebook imports it by name."""
    from course_lib.instructor.grade import _CHECK_CALL, expected_checks
    from course_lib.instructor.make_exercises import package_root, solution_notebooks

    solutions = solution_notebooks(package_root())
    if not solutions:
        pytest.skip("solutions/ has no notebooks yet")
    for path in solutions:
        notebook = nbformat.read(path, as_version=4)
        imports = check_imports(notebook)
        for ident, source in expected_checks(notebook).items():
            called = set(_CHECK_CALL.findall(source))
            assert called, f"{path.name}: check cell {ident} calls no check_* function"
            assert called <= set(imports), f"{path.name}: {ident} calls {called - set(imports)}"
            assert all(imports[name][0].startswith("course_lib.checks.") for name in called)


def test_feedback_files_stay_inside_the_folder(tmp_path):
    row = {"notebook": "sub/01_demo-x.ipynb", "student": "../../etc", "status": "not a notebook",
           "passed": 0, "total": 1, "points": 0, "max_points": 1, "checks": {"c": False},
           "check_points": {"c": 1}, "note": "JSONDecodeError", "messages": {}, "feedback": None}
    nameless = {**row, "student": "", "notebook": "01_demo.ipynb"}
    written = write_feedback([row, nameless], tmp_path / "out")
    assert [path.relative_to(tmp_path / "out").as_posix() for path in written] == [
        "_.._etc/01_demo-x.ipynb", "01_demo/01_demo.ipynb"]
    summary = nbformat.read(written[0], as_version=4).cells[0].source
    assert "**Grade: 0/1 points**" in summary and "- ✗ `c`: 0/1: failed" in summary
