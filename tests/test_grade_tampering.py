"""Tampering with the grader earns nothing and never touches another submission.

Every attempt below is an EMPTY exercise 02 (its answers left as the stubs, or faked) plus one
way of cheating, written the way a learner would: in the answer cells, since they are the only
cells the grader runs. One grading run holds all of them, in order, then an empty exercise and a
right answer: if any attempt had changed a file, a module or a process the next submissions use,
those two rows would show it. Run `pytest tests/test_grade_tampering.py -s` to see the table.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor import sandbox
from course_lib.instructor.grade import grade, main
from course_lib.instructor.make_exercises import exercise_id, is_check_cell, package_root

NAME = "02_losses_optimizers_schedules"
REFERENCE = package_root() / "exercises" / f"{NAME}.ipynb"
SOLUTION = package_root() / "solutions" / f"{NAME}.ipynb"
FIRST_ANSWER = "ex02-focal-loss"
SECRET = "GRADER_TAMPER_SECRET"
TOKEN = "leftover-process-7f3a"  # in the leftover process's command line, to find it afterwards

# Reads the answer cells of a notebook (a solution, another learner's submission) and runs them.
STEAL = '''
def _steal(text):
    import json
    for cell in json.loads(text)["cells"]:
        ident = cell.get("metadata", {}).get("exercise", {}).get("id", "")
        if cell["cell_type"] == "code" and ident and "check" not in ident:
            exec("".join(cell["source"]), globals())
    return True
'''

ATTEMPTS = {
    # Every later cell, checks included, becomes `pass`.
    "input transformer": (
        "_ = get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])"
    ),
    # A wrong answer whose comparisons always agree.
    "patched torch.allclose/isclose/equal": (
        "import torch\n"
        "_ = [setattr(torch, name, lambda *args, **kwargs: True)\n"
        "     for name in ('allclose', 'isclose', 'equal')]\n"
        "def focal_loss(logits, targets, gamma, alpha=None):\n"
        "    return torch.tensor(0.0)"
    ),
    "patched builtins": (
        "import builtins\n"
        "_ = setattr(builtins, 'all', lambda iterable: True)\n"
        "_ = setattr(builtins, 'abs', lambda x: 0)"
    ),
    # Patched when the check calls the answer, and left patched.
    "patched at call time": (
        "import torch\n"
        "def focal_loss(logits, targets, gamma, alpha=None):\n"
        "    torch.allclose = torch.isclose = torch.equal = lambda *args, **kwargs: True\n"
        "    return torch.tensor(0.0)"
    ),
    "rebound check names": (
        "check_focal_loss = check_warmup_stable_decay = check_make_scheduler = "
        "lambda *args, **kwargs: print('✓')"
    ),
    "edited check cells": "edited",  # built below: every check cell becomes a print
    "cell added outside the answers": "added",  # built below
    # Each check module appended with a passing check, and the reference exercise emptied.
    "files rewritten on disk": (
        "import course_lib.checks.ex02 as _ex02\n"
        "from pathlib import Path\n"
        "def _rewrite():\n"
        "    done = []\n"
        "    for path in (Path(_ex02.__file__),\n"
        f"                 Path(_ex02.__file__).parents[2] / 'exercises' / '{NAME}.ipynb'):\n"
        "        try:\n"
        "            with open(path, 'a') as handle:\n"
        "                handle.write('\\ndef check_focal_loss(*a, **k): pass\\n'\n"
        "                             'def check_warmup_stable_decay(*a, **k): pass\\n'\n"
        "                             'def check_make_scheduler(*a, **k): pass\\n')\n"
        "            done.append(path)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return done\n"
        "rewritten = _rewrite()"
    ),
    # A process that outlives the kernel and rewrites the gradebook after grading.
    "leftover process": "leftover",  # built below: needs the gradebook's path
    # The grader's environment (its PWD is the repository) and command line (every submission).
    "/proc/<ppid>/environ and cmdline": (
        STEAL
        + "import os, re\n"
        "def _from_parent():\n"
        "    for pid in [os.getppid()] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "        try:\n"
        "            env = open(f'/proc/{pid}/environ').read().split('\\0')\n"
        "            args = open(f'/proc/{pid}/cmdline').read().split('\\0')\n"
        "        except OSError:\n"
        "            continue\n"
        "        for item in env + args:\n"
        "            root = item.split('=', 1)[-1]\n"
        f"            for path in (root + '/solutions/{NAME}.ipynb', root):\n"
        "                if path.endswith('.ipynb') and os.path.isfile(path) and "
        "'tamper' not in path:\n"
        "                    return _steal(open(path).read())\n"
        "    return False\n"
        "stolen = _from_parent()"
    ),
    "solutions/ through course_lib.__file__": (
        STEAL
        + "import course_lib\n"
        "from pathlib import Path\n"
        "def _from_package():\n"
        f"    path = Path(course_lib.__file__).parents[1] / 'solutions' / '{NAME}.ipynb'\n"
        "    return path.is_file() and _steal(path.read_text())\n"
        "stolen = _from_package()"
    ),
    # The answers fetched from a server on the grading machine.
    "network": "network",  # built below: needs the server's port
}


def _cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _with_first_answer(source: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(REFERENCE, as_version=4)
    notebook.metadata = {}  # found by its file name, as a learner's renamed copy would be
    for cell in _cells(notebook):
        if exercise_id(cell) == FIRST_ANSWER:
            # An attempt with its own (wrong) focal_loss replaces the stub, else comes before it.
            cell.source = source if "def focal_loss" in source else source + "\n\n" + cell.source
    return notebook


def _solution_answers() -> dict[str, str]:
    solution = nbformat.read(SOLUTION, as_version=4)
    return {exercise_id(cell): cell.source for cell in _cells(solution)
            if exercise_id(cell) and not is_check_cell(cell)}


def _right_answer() -> nbformat.NotebookNode:
    notebook = nbformat.read(REFERENCE, as_version=4)
    notebook.metadata = {}
    answers = _solution_answers()
    for cell in _cells(notebook):
        if exercise_id(cell) in answers:
            cell.source = answers[exercise_id(cell)]
    return notebook


class _AnswerServer(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def _submissions(gradebook: Path, port: int) -> dict[str, nbformat.NotebookNode]:
    notebooks = {}
    for attempt, source in ATTEMPTS.items():
        if source == "edited":
            notebook = _with_first_answer("")
            for cell in _cells(notebook):
                if is_check_cell(cell):
                    cell.source = "print('✓ passed')"
        elif source == "added":
            notebook = _with_first_answer("")
            notebook.cells.insert(0, nbformat.v4.new_code_cell(
                "import torch\ntorch.allclose = torch.isclose = lambda *a, **k: True\n"
                "check_focal_loss = check_warmup_stable_decay = check_make_scheduler = print"))
        elif source == "leftover":
            code = (
                "import time\n"
                "for _ in range(6000):  # ten minutes, unless the grader kills it\n"
                "    time.sleep(0.1)\n"
                "    try:\n"
                f"        open({str(gradebook)!r}, 'w').write('hacked')\n"
                "    except OSError:\n"
                "        pass\n"
            )
            notebook = _with_first_answer(
                "import subprocess, sys\n"
                f"LEFTOVER = {code!r}\n"
                f"_ = subprocess.Popen([sys.executable, '-c', LEFTOVER, {TOKEN!r}],\n"
                "                     start_new_session=True)"
            )
        elif source == "network":
            notebook = _with_first_answer(
                STEAL
                + "import urllib.request\n"
                "def _fetch():\n"
                "    try:\n"
                f"        url = 'http://127.0.0.1:{port}/'\n"
                "        with urllib.request.urlopen(url, timeout=3) as response:\n"
                "            return _steal(response.read().decode())\n"
                "    except OSError:\n"
                "        return False\n"
                "stolen = _fetch()"
            )
        else:
            notebook = _with_first_answer(source)
        notebooks[attempt] = notebook
    notebooks["empty, graded after them"] = _with_first_answer("")
    notebooks["right answer, graded after them"] = _right_answer()
    return notebooks


def _fingerprint() -> dict[str, str]:
    paths = [package_root() / "course_lib" / "checks" / "ex02.py", REFERENCE, SOLUTION]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def _leftover_processes() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if TOKEN.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if sandbox.probe():
        pytest.skip(sandbox.probe())
    folder = tmp_path_factory.mktemp("tamper")
    gradebook = folder / "grades.csv"
    gradebook.write_text("the grader's gradebook\n", encoding="utf-8")
    _AnswerServer.body = SOLUTION.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnswerServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    before = _fingerprint()
    paths = []
    for number, (attempt, notebook) in enumerate(
            _submissions(gradebook, server.server_address[1]).items()):
        path = folder / f"{NAME}-{number:02d}.ipynb"
        nbformat.write(notebook, path)
        paths.append((attempt, path))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SECRET, "hunter2")
            rows = grade([path for _, path in paths], reference=REFERENCE.parent, timeout=120)
    finally:
        server.shutdown()
    time.sleep(1.5)  # time enough for a surviving leftover process to write
    table = {attempt: row for (attempt, _), row in zip(paths, rows)}
    width = max(map(len, table))
    print("\n" + "\n".join(f"{attempt:<{width}}  {row['status']:<9} "
                           f"{row['points']}/{row['max_points']}  {row['note'][:90]}"
                           for attempt, row in table.items()))
    return {"rows": table, "gradebook": gradebook, "before": before, "after": _fingerprint()}


@pytest.mark.notebooks
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_tampering_with_an_empty_exercise_scores_nothing(graded, attempt):
    row = graded["rows"][attempt]
    assert row["points"] == 0, (attempt, row)
    assert row["max_points"] == 3
    assert row["status"] in ("ok", "tampered", "modified"), row


@pytest.mark.notebooks
@pytest.mark.parametrize("attempt", [
    "input transformer", "patched torch.allclose/isclose/equal", "patched builtins",
    "patched at call time",
])
def test_patches_are_caught_by_the_guard(graded, attempt):
    row = graded["rows"][attempt]
    assert row["status"] == "tampered" and "tampered:" in row["note"], row


@pytest.mark.notebooks
def test_the_learners_suspicious_constructs_are_named_for_the_instructor(graded):
    note = graded["rows"]["input transformer"]["note"]
    assert "for the instructor: the answers use" in note and "get_ipython" in note
    assert "for the instructor" not in graded["rows"]["right answer, graded after them"]["note"]


@pytest.mark.notebooks
def test_the_submissions_graded_after_the_attempts_are_graded_as_themselves(graded):
    rows = graded["rows"]
    assert (rows["empty, graded after them"]["status"],
            rows["empty, graded after them"]["points"]) == ("ok", 0)
    right = rows["right answer, graded after them"]
    assert (right["status"], right["points"], right["max_points"]) == ("ok", 3, 3), right


@pytest.mark.notebooks
def test_no_file_of_the_grader_changed_and_no_process_survived(graded):
    assert graded["after"] == graded["before"]
    assert graded["gradebook"].read_text(encoding="utf-8") == "the grader's gradebook\n"
    assert _leftover_processes() == []


def test_without_bubblewrap_grading_stops_with_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_probe_result", {})
    notebook = tmp_path / f"{NAME}-x.ipynb"
    nbformat.write(_with_first_answer(""), notebook)
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        grade([notebook], reference=REFERENCE.parent)
    assert main([str(notebook)]) == 3
    err = capsys.readouterr().err
    assert "apt-get install bubblewrap" in err and "--no-sandbox" in err
