"""Grade learners' exercise notebooks by running their check cells (for instructors).

    python -m course_lib.instructor.grade submissions/*.ipynb
    python -m course_lib.instructor.grade submissions/ --csv gradebook.csv --timeout 30
    python -m course_lib.instructor.grade alice.ipynb --reference path/to/exercises
    python -m course_lib.instructor.grade submissions/ --csv grades.csv --feedback feedback/

The report: a table on stdout, and with `--csv` a gradebook (`write_csv`: a student column,
the points of each check, each failed check's one-line message); with `--feedback DIR`, each
submission's executed notebook with its checks' messages, as DIR/<student>/<notebook>
(`feedback_notebook`). Who the student is comes from the folder or the file name
(`student_name`).

What runs is not the learner's notebook as they left it: the grader builds the notebook it runs
from the reference exercise (`build_graded_notebook`), runs it in a fresh kernel inside a sandbox
(`course_lib.instructor.sandbox`), errors allowed so every cell runs, and a check passes when its
cell ran and produced no error and the integrity guard saw nothing change. It earns its points
(`"exercise": {"points": 2}` in the check cell's metadata; 1 when absent). The checks expected are
those of the reference exercise notebook (`exercises/` in the repository by default), matched by
the ids that `course_lib.instructor.make_exercises` keeps in cell metadata (`"exercise": {"id":
...}`).

Decisions, and why:

- Kernel: always ipykernel on the interpreter running the grader, whatever kernelspec the
  submission names or the machine has installed. A learner's notebook may name a kernel that
  exists only on their laptop; the grade must come from the course's own environment.
- Sandbox: each kernel runs under bubblewrap in a throw-away folder holding a read-only copy of
  `course_lib` (without `course_lib.instructor`), its working folder, HOME and TMPDIR; the
  repository, `solutions/`, `exercises/`, the other submissions, the gradebook, the grader's
  processes and the network are out of its reach, its memory, processes and time are limited,
  and every process it started ends with it (see that module). The kernel talks to the grader
  over jupyter's `ipc` transport (unix sockets in that folder). Without bwrap, `grade()` raises
  SandboxUnavailable and the command line stops with how to install it, unless `--no-sandbox`
  (`sandbox=False`): the same throw-away folder, no box, and a warning.
- Verdicts the learner's process cannot forge by a statement: the notebook that runs holds the
  reference's own set-up cells (never the learner's copies); then, for each answer cell (a cell
  with an `exercise` id that is not a check), the learner's cell of that id reduced to its
  definitions (`answer_definitions`: top-level imports, `def`, `async def`, `class` and
  assignments to plain names; every other statement, magic and shell line dropped); then the
  reference's check cells. Learner cells added elsewhere never run: answers live in the answer
  cells. So an input transformer installed by a statement, a check name rebound by a cell, an
  edited check cell and a patch made by a top-level statement have nothing to act on.
- Integrity guard, for patches made from what does run (a default argument, a decorator, a
  class body, an assignment's right-hand side, or the learner's code while a check calls it):
  just before the answers load, the kernel records what every attribute of builtins, `math`,
  `random`, `os`, NumPy, the `torch` modules checks use, the rest of `course_lib`, a few patchable
  classes (`torch.Tensor`, `nn.Module`, the optimizers, `DataLoader`, ...), `sys`'s hooks
  (trace, profile, meta_path, excepthook, ...) and IPython's transformers, event callbacks and
  execution methods refers to (`_kernel_guard.py`). After every cell, the grader asks it, as a
  `user_expressions` entry of the execute request, which IPython evaluates after the cell with no
  input or AST transformer in the way, whether anything changed. The first change (or a guard that
  does not answer) fails the check it follows and every later one, and marks the row "tampered"
  naming what changed. Wrappers torch puts around its own functions on first use are allowed
  when their code is torch's and their `__wrapped__` is the original. The answers' source is also
  scanned (`suspicious_constructs`) for what no honest answer needs (`get_ipython`,
  `sys.modules`, `setattr`, `ctypes`, `__code__`, `/proc`, `solutions`, ...): named in the row's
  note for the instructor, never failed on by itself.
- Not defended: code that subverts the interpreter while a check calls it and restores every
  watched name before the check ends (walking frames to rewrite the check's own locals, say), or
  that finds the guard in memory and forges its answer. It runs in the learner's own sandboxed
  kernel, so its damage stays in its own row.
- Integrity: a check cell whose source differs from the reference (whitespace aside) is run with
  the reference source, so an edited check cannot earn a pass, and the row is marked "modified"
  naming the id. Deleted, duplicated or reordered check cells, and a solution cell moved below
  the check that tests it, also mark the row "modified"; a deleted check counts as failed.
  The reference source is the solution notebook's check cell when the exercise's
  `generated_from` names one that exists (`solutions/` beside the reference folder), so its
  hidden tests (`### BEGIN HIDDEN TESTS` regions, which the exercise lacks) run too.
- Hidden tests stay hidden: each region runs in place with its output dropped, and its failure
  reads "a hidden test failed" (`guard_hidden_tests`); the feedback shows the exercise's
  visible check source, and an error as one line, never a traceback quoting the source run.
- Fresh checks: before each check cell's reference source runs, the kernel forgets every
  `course_lib.checks` module (and any other module the reference imports `check_*` names from)
  and imports them again, and the check names that cell calls are bound anew from the fresh
  modules, as the reference notebook's import line names them. So a learner who rebinds
  `check_x`, patches `course_lib.checks.exNN.check_x` or `course_lib.checks._core.require` earns
  nothing by it. Not defended: patching what the checks themselves use (torch, numpy, the rest of
  `course_lib`, builtins, the import system). A determined cheat can still win; an honest
  mistake or a casual shortcut cannot.
- Environment: the kernel sees only PATH, LANG=C.UTF-8, its own HOME, TMPDIR and PYTHONPATH (the
  copy of course_lib) in the throw-away folder, and the thread-count variables when the grader
  has them, never the rest of the grader's environment (tokens, keys, passwords).
- Timeouts: a cell that runs past the limit is interrupted and counts as failed, the row is
  marked "timed out", and the rest of the notebook still runs, so one endless loop costs one
  exercise, not all the later ones. If the next cell times out too (the kernel ignored the
  interrupt), grading of that notebook stops there. The whole notebook may take the limit for
  each answer and check cell plus a minute; past that the sandbox is killed.
- The grader never stops on a bad submission: every problem becomes the status and note of that
  notebook's row. Statuses, most serious first: "not a notebook", "crashed", "tampered",
  "timed out", "modified", "ok". A check whose cell the learner deleted still counts as failed.

Exit status: 0 when every notebook was graded (whatever the grades), 2 on a usage error, 3 when
no sandbox can be made (nothing graded).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import csv
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook
from traitlets import Any as AnyTrait, Float, default

from course_lib.instructor.make_exercises import (
    check_points,
    exercise_id,
    has_hidden_tests,
    is_check_cell,
    package_root,
    strip_hidden_tests,
)
from course_lib.instructor.sandbox import Sandbox, SandboxUnavailable, probe

STATUS_ORDER = ("not a notebook", "crashed", "tampered", "timed out", "modified", "ok")
_TIMEOUT_ENAME = "GraderTimeout"
CHECKS_PACKAGE = "course_lib.checks"
_CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(")


class _CurrentPythonKernelManager(AsyncKernelManager):
    """Starts ipykernel on this interpreter, ignoring installed kernelspecs, inside `sandbox`.

    With no kernelspec folders to search, jupyter_client falls back to ipykernel's built-in
    spec, which runs `sys.executable -m ipykernel_launcher`; `format_kernel_cmd` wraps that
    command in the sandbox's. A timer kills the whole box when the notebook runs past `wall_s`.
    """

    sandbox = AnyTrait(None, allow_none=True)
    wall_s = Float(0.0)

    @default("kernel_spec_manager")
    def _no_installed_kernelspecs(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])

    def format_kernel_cmd(self, extra_arguments=None):
        command = super().format_kernel_cmd(extra_arguments)
        return self.sandbox.wrap(command) if self.sandbox is not None else command

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        await super()._async_launch_kernel(kernel_cmd, **kw)
        process = getattr(self.provisioner, "process", None)
        self._box_pid = process.pid if process is not None else None
        self.wall_clock_expired = False
        if process is not None and self.wall_s > 0:

            def expire() -> None:
                self.wall_clock_expired = True
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    with contextlib.suppress(OSError):
                        process.kill()

            self._wall_timer = threading.Timer(self.wall_s, expire)
            self._wall_timer.daemon = True
            self._wall_timer.start()

    def stop_wall_clock(self) -> None:
        timer = getattr(self, "_wall_timer", None)
        if timer is not None:
            timer.cancel()

    def kill_box(self) -> None:
        """Kill whatever the kernel's process group still holds, once the notebook is done.

        The kernel starts in a session of its own, so its process group is the sandbox (or, with
        --no-sandbox, the kernel and the children that did not start a session of their own).
        """
        pid = getattr(self, "_box_pid", None)
        if pid is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError, ChildProcessError):
            os.waitpid(pid, 0)


class _GiveUp(Exception):
    """The kernel kept running past the limit even after an interrupt."""


# --- the reference ------------------------------------------------------------------------------


def default_reference_dir() -> Path:
    return package_root() / "exercises"


def _read_notebook(path: Path) -> nbformat.NotebookNode:
    text = path.read_text(encoding="utf-8")
    notebook = nbformat.reads(text, as_version=4)
    if not isinstance(notebook.get("cells"), list):
        raise ValueError("no list of cells")
    return notebook


def _reference_from_metadata(path: Path, reference_dir: Path) -> Path | None:
    """The reference named by a submission's `exercise.generated_from` metadata, if any."""
    try:
        info = _read_notebook(path).metadata.get("exercise", {})
        name = Path(str(info.get("generated_from", ""))).name
    except Exception:  # noqa: BLE001 - an unreadable submission simply has no metadata to use
        return None
    candidate = reference_dir / name
    return candidate if name and candidate.is_file() else None


def find_reference(path: Path, reference: Path | None = None) -> Path | None:
    """The reference exercise notebook for a submission, or None if there is none."""
    reference = Path(reference) if reference is not None else default_reference_dir()
    if reference.is_file():
        return reference
    if not reference.is_dir():
        return None
    found = _reference_from_metadata(path, reference)
    if found:
        return found
    if (reference / path.name).is_file():
        return reference / path.name
    starts = [ref for ref in reference.glob("*.ipynb") if path.stem.startswith(ref.stem)]
    return max(starts, key=lambda ref: len(ref.stem)) if starts else None


def expected_checks(reference: nbformat.NotebookNode) -> dict[str, str]:
    """Check id -> check source, in notebook order."""
    return {
        exercise_id(cell): cell.source
        for cell in reference.cells
        if is_check_cell(cell) and exercise_id(cell)
    }


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def check_points_of(reference: nbformat.NotebookNode) -> dict[str, int]:
    """Check id -> what the check is worth (1 when its metadata names no points)."""
    points = {}
    for cell in reference.cells:
        if is_check_cell(cell) and exercise_id(cell):
            try:
                points[exercise_id(cell)] = check_points(cell)
            except ValueError:
                points[exercise_id(cell)] = 1
    return points


def sources_to_run(
    reference: nbformat.NotebookNode, reference_path: Path
) -> tuple[dict[str, str], str | None]:
    """Check id -> the source the grader runs, and a note when the solution could not be used.

    That is the solution notebook's check cell, hidden tests included, when the reference names
    its solution (`exercise.generated_from`) and the solution's cell, hidden tests removed, is the
    exercise's; otherwise the exercise's own check cell.
    """
    expected = expected_checks(reference)
    info = reference.metadata.get("exercise", {})
    generated_from = info.get("generated_from") if isinstance(info, dict) else None
    if not isinstance(generated_from, str) or not generated_from:
        return expected, None
    solution_path = reference_path.resolve().parent.parent / generated_from
    if not solution_path.is_file():
        return expected, None
    try:
        solution = _read_notebook(solution_path)
        full = {
            exercise_id(cell): cell.source
            for cell in solution.cells
            if is_check_cell(cell) and exercise_id(cell) in expected
        }
        visible = {ident: strip_hidden_tests(source, ident) for ident, source in full.items()}
    except Exception as error:  # noqa: BLE001 - fall back on the exercise's checks
        note = f"hidden tests not run: cannot read {generated_from}: {error}"
        return expected, note.splitlines()[0]
    out_of_step = [
        ident for ident in expected
        if ident not in full or _normalized(visible[ident]) != _normalized(expected[ident])
    ]
    if out_of_step:
        return expected, (
            f"hidden tests not run: {generated_from} differs from the exercise at "
            + ", ".join(out_of_step) + " (regenerate the exercises)"
        )
    return {ident: guard_hidden_tests(full[ident], ident) for ident in expected}, None


HIDDEN_FAILURE = "a hidden test failed"
_HIDDEN_ENAME = "HiddenTestFailure"
_HIDDEN_BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN HIDDEN TESTS\s*$")
_HIDDEN_END = re.compile(r"^[ \t]*### END HIDDEN TESTS\s*$")
# Runs one hidden region where it stood in the check cell. Its prints and warnings are swallowed
# (they could show the hidden inputs), and any failure becomes one generic error whose traceback
# is that one line: IPython would otherwise show the cell's source around the failing line.
_HIDDEN_RUNNER = """\
try:
    import contextlib as _grader_contextlib, io as _grader_io
    with _grader_contextlib.redirect_stdout(_grader_io.StringIO()), \\
            _grader_contextlib.redirect_stderr(_grader_io.StringIO()):
        exec(compile({code!r}, "<hidden tests>", "exec"), globals())
except KeyboardInterrupt:
    raise
except BaseException:
    class {ename}(AssertionError):
        def _render_traceback_(self):
            return ["\u2717 {message}"]
    raise {ename}("{message}") from None"""


def guard_hidden_tests(source: str, where: str = "check cell") -> str:
    """`source` with each hidden-tests region run so that it cannot reveal itself.

    The region's code runs in the same place and namespace, but what it prints is dropped and a
    failure there shows only "a hidden test failed", never the hidden call, its inputs or the
    check's message about them. A source with no hidden tests is returned unchanged.
    """
    if not has_hidden_tests(source):
        return source
    strip_hidden_tests(source, where)  # raises on unbalanced or misspelled markers
    out: list[str] = []
    region: list[str] | None = None
    indent = ""
    for line in source.splitlines():
        begin = _HIDDEN_BEGIN.match(line)
        if begin:
            region, indent = [], begin["indent"]
        elif _HIDDEN_END.match(line):
            code = textwrap.dedent("\n".join(region or [])) + "\n"
            runner = _HIDDEN_RUNNER.format(code=code, message=HIDDEN_FAILURE, ename=_HIDDEN_ENAME)
            out.extend(indent + runner_line for runner_line in runner.splitlines())
            region = None
        elif region is not None:
            region.append(line)
        else:
            out.append(line)
    return "\n".join(out)


def check_imports(reference: nbformat.NotebookNode) -> dict[str, tuple[str, str]]:
    """Name bound in the notebook -> (module, name in it), for every `from M import check_*`."""
    imports = {}
    for cell in reference.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # a cell with IPython magics: it holds no import of checks
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if alias.name.startswith("check_"):
                        imports[alias.asname or alias.name] = (node.module, alias.name)
    return imports


def with_fresh_checks(source: str, imports: dict[str, tuple[str, str]]) -> str:
    """`source` preceded by lines that re-import, from fresh modules, the check names it calls."""
    called = sorted(set(_CHECK_CALL.findall(source)) & set(imports))
    if not called:
        return source
    modules = sorted({imports[name][0] for name in called} | {CHECKS_PACKAGE})
    prefixes = tuple(module + "." for module in modules)
    lines = [
        "import sys as _grader_sys",
        "[_grader_sys.modules.pop(_name) for _name in list(_grader_sys.modules)",
        f" if _name in {tuple(modules)!r} or _name.startswith({prefixes!r})]",
        "del _grader_sys",
    ]
    for name in called:
        module, original = imports[name]
        lines.append(f"from {module} import {original} as {name}")
    return "\n".join(lines) + "\n" + source


def find_modifications(
    submission: nbformat.NotebookNode, reference: nbformat.NotebookNode
) -> list[str]:
    """What the learner changed that they should not have, one short phrase each (empty if nothing).

    Learners may add cells and change solution cells freely. They should leave the check cells
    as they were: none deleted, duplicated, reordered or edited, and none moved above a solution
    cell that the reference places before it.
    """
    expected = expected_checks(reference)
    reference_order = [exercise_id(cell) for cell in reference.cells if exercise_id(cell)]
    found_checks = [
        (index, exercise_id(cell))
        for index, cell in enumerate(submission.cells)
        if exercise_id(cell) in expected
    ]
    found_ids = [ident for _, ident in found_checks]
    problems = []
    for ident in expected:
        if ident not in found_ids:
            problems.append(f"check {ident} deleted")
        elif found_ids.count(ident) > 1:
            problems.append(f"check {ident} duplicated")
    kept = [ident for ident in expected if ident in found_ids]
    first_positions = list(dict.fromkeys(found_ids))
    if first_positions != kept:
        problems.append("check cells reordered (" + ", ".join(first_positions) + ")")
    for index, ident in found_checks:
        if _normalized(submission.cells[index].source) != _normalized(expected[ident]):
            problems.append(f"check {ident} changed")
    # A solution cell that the reference places before a check must still come before it.
    first_index: dict[str, int] = {}
    for index, cell in enumerate(submission.cells):
        first_index.setdefault(exercise_id(cell), index)
    for check_id in expected:
        if check_id not in first_index:
            continue
        for earlier in reference_order[: reference_order.index(check_id)]:
            if earlier not in expected and first_index.get(earlier, -1) > first_index[check_id]:
                problems.append(f"cell {earlier} moved below check {check_id}")
    return list(dict.fromkeys(problems))


# --- what runs: the reference's cells around the learner's definitions ------------------------

_KEPT_STATEMENTS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _plain_target(target: ast.expr) -> bool:
    """A plain name, or a tuple or list of them (`a, b = 1, 2`)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_plain_target(element) for element in target.elts)
    return isinstance(target, ast.Name)


def _is_plain_assignment(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign):
        return all(_plain_target(target) for target in node.targets)
    return isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)


def answer_definitions(source: str) -> tuple[str, list[str]]:
    """The learner's answer cell reduced to its definitions, and notes on what was dropped.

    Kept, at the top level only: imports, `def`, `async def`, `class` and assignments to plain
    names (or tuples of them). Dropped: every other statement (calls, prints, loops, attribute or item assignments,
    a top-level `raise`), and IPython's magics and shell lines (`%...`, `!...`).
    """
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        return "", ["a cell magic"]
    dropped_magic = any(line.lstrip().startswith(("%", "!")) for line in lines
                        if line[:1] in ("%", "!"))
    plain = "\n".join("" if line[:1] in ("%", "!") else line for line in lines)
    try:
        tree = ast.parse(plain)
    except SyntaxError as error:
        return "", [f"does not parse (line {error.lineno}): {error.msg}"]
    kept = [node for node in tree.body
            if isinstance(node, _KEPT_STATEMENTS) or _is_plain_assignment(node)]
    notes = ["magics" if dropped_magic else ""]
    if len(kept) < len(tree.body):
        notes.append(f"{len(tree.body) - len(kept)} statement(s) not definitions")
    return "\n\n".join(ast.get_source_segment(plain, node, padded=True) or ast.unparse(node)
                       for node in kept), [note for note in notes if note]


# What no honest answer needs; flagged in the row's note for the instructor, never failed on.
_SUSPICIOUS_NAMES = {
    "get_ipython": "get_ipython", "input_transformers_post": "input transformers",
    "input_transformers_cleanup": "input transformers", "ast_transformers": "AST transformers",
    "__code__": "__code__", "ctypes": "ctypes", "get_referrers": "gc.get_referrers",
    "_getframe": "sys._getframe", "currentframe": "inspect.currentframe",
    "builtins": "builtins", "__builtins__": "builtins", "settrace": "sys.settrace",
    "setprofile": "sys.setprofile", "meta_path": "sys.meta_path", "kill": "os.kill",
    "killpg": "os.kill", "environ": "os.environ", "__file__": "__file__",
    "__globals__": "__globals__", "events": "IPython events",
}


def suspicious_constructs(source: str) -> list[str]:
    """Names in the learner's answer source that an honest answer does not need."""
    plain = "\n".join("" if line[:1] in ("%", "!") else line for line in source.splitlines())
    try:
        tree = ast.parse(plain)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
            value = node.value
            if node.attr == "modules" and isinstance(value, ast.Name) and value.id == "sys":
                found.append("sys.modules")
        elif isinstance(node, ast.alias):
            name = node.name.split(".")[0]
            if node.name in ("subprocess", "ctypes", "gc", "inspect", "builtins"):
                found.append(node.name)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id in ("setattr", "delattr", "exec", "eval", "compile", "__import__")):
            found.append(node.func.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                "solutions" in node.value or "/proc" in node.value):
            found.append(repr(node.value)[:40])
        if name in _SUSPICIOUS_NAMES:
            found.append(_SUSPICIOUS_NAMES[name])
    return list(dict.fromkeys(found))


_GUARD_SOURCE = Path(__file__).with_name("_kernel_guard.py")


def _guard_cell(key: str) -> str:
    source = _GUARD_SOURCE.read_text(encoding="utf-8")
    return (
        "def _grader_install_guard():\n"
        "    import sys, types\n"
        f"    module = types.ModuleType({key!r})\n"
        f"    sys.modules[{key!r}] = module\n"
        f"    exec(compile({source!r}, {key!r}, 'exec'), module.__dict__)\n"
        "_grader_install_guard()\n"
        "del _grader_install_guard"
    )


def build_graded_notebook(
    submission: nbformat.NotebookNode,
    reference: nbformat.NotebookNode,
    to_run: dict[str, str],
    guard_key: str,
) -> tuple[nbformat.NotebookNode, list[tuple[str, str]], list[str]]:
    """The notebook the grader runs, each cell's role, and notes on the learner's answers.

    Built from the reference, in its order: its set-up cells (code cells with no exercise id) as
    they are; the guard, just before the first answer; each answer cell as the learner's cell of
    that id reduced to definitions (`answer_definitions`); each check cell as the reference
    source (hidden tests included) with its check names freshly imported; a last empty cell
    whose only job is to carry the guard's last verdict. Roles: ("setup" | "guard" | "answer" |
    "check" | "final", exercise id or "").
    """
    expected = expected_checks(reference)
    imports = check_imports(reference)
    learner: dict[str, str] = {}
    for cell in submission.cells:
        ident = exercise_id(cell)
        if cell.cell_type == "code" and ident and ident not in expected:
            learner.setdefault(ident, cell.source if isinstance(cell.source, str) else "")
    cells, roles, notes = [], [], []
    flagged: list[str] = []
    guarded = False
    for cell in reference.cells:
        if cell.cell_type != "code":
            continue
        ident = exercise_id(cell)
        if not ident:
            cells.append(new_code_cell(cell.source))
            roles.append(("setup", ""))
        elif ident in expected:
            cells.append(new_code_cell(with_fresh_checks(to_run.get(ident, cell.source), imports),
                                       metadata=copy.deepcopy(cell.metadata)))
            roles.append(("check", ident))
        else:
            if not guarded:
                cells.append(new_code_cell(_guard_cell(guard_key)))
                roles.append(("guard", ""))
                guarded = True
            if ident not in learner:
                notes.append(f"answer {ident} missing")
            source, dropped = answer_definitions(learner.get(ident, ""))
            notes += [f"answer {ident}: {note}" for note in dropped if "parse" in note]
            flagged += suspicious_constructs(learner.get(ident, ""))
            cells.append(new_code_cell(
                source, metadata=copy.deepcopy(cell.metadata)
            ))
            roles.append(("answer", ident))
    if not guarded:
        cells.insert(0, new_code_cell(_guard_cell(guard_key)))
        roles.insert(0, ("guard", ""))
    cells.append(new_code_cell("pass"))
    roles.append(("final", ""))
    if flagged:
        notes.append("for the instructor: the answers use " + ", ".join(dict.fromkeys(flagged)))
    return new_notebook(cells=cells, metadata=reference.metadata), roles, notes


# --- running one notebook ------------------------------------------------------------------------


# Passed on from the grader's environment when set, and nothing else:
# - PATH: for the programs learner code may start (a `!ls`, a subprocess).
# - HOME: IPython and matplotlib keep their configuration and caches there; without it each kernel
#   would rebuild matplotlib's font cache, seconds per submission.
# - SYSTEMROOT: Windows' Python cannot open sockets or get random numbers without it.
# - the thread counts: an instructor who limits them for a grading machine means the kernel too.
KERNEL_ENV_PASSED_ON = (
    "PATH", "HOME", "SYSTEMROOT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
)


def kernel_env(temp_dir: str) -> dict[str, str]:
    """The whole environment a submission's kernel gets (the sandbox then points HOME, TMPDIR and
    PYTHONPATH into the submission's own folder)."""
    env = {name: os.environ[name] for name in KERNEL_ENV_PASSED_ON if name in os.environ}
    env["TMPDIR"] = temp_dir  # tempfile and torch write here, and it is removed after grading
    env["PYTHONPATH"] = str(package_root())  # course_lib from this checkout, wherever the file is
    env["LANG"] = "C.UTF-8"  # the same text encoding whatever the grading machine's locale
    return env


def _quiet_logger() -> logging.Logger:
    # nbclient logs timeouts and dead kernels itself; the grader reports them in the row instead.
    logger = logging.getLogger("course_lib.instructor.grade.nbclient")
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    return logger


def _guard_verdict(reply_content: dict, key: str) -> str | None:
    """The guard's answer after a cell: "" (nothing changed), the names changed, or None when the
    cell failed (IPython evaluates user expressions only after a cell that succeeded)."""
    if reply_content.get("status") != "ok":
        return None
    found = (reply_content.get("user_expressions") or {}).get(key)
    if not isinstance(found, dict) or found.get("status") != "ok":
        return "the guard did not answer"
    try:
        value = ast.literal_eval(found.get("data", {}).get("text/plain", ""))
    except (ValueError, SyntaxError):
        return "the guard's answer was forged"
    return value if isinstance(value, str) else "the guard's answer was forged"


def _run(
    notebook: nbformat.NotebookNode,
    labels: list[str],
    box: Sandbox,
    timeout: float,
    guard_key: str,
    guard_from: int,
    wall_s: float,
) -> tuple[dict[int, bool], dict[int, str | None], list[str], str | None]:
    """Run every cell in `box`. Returns (cell index -> ran cleanly, cell index -> guard verdict,
    timeout notes, crash reason or None). `labels` names each cell in notes."""
    results: dict[int, bool] = {}
    verdicts: dict[int, str | None] = {}
    timeouts: list[str] = []
    state = {"running": None, "last_timed_out": False}
    expression = {guard_key: f"__import__('sys').modules[{guard_key!r}].verdict()"}

    def on_notebook_start(notebook):
        execute = client.kc.execute

        def execute_with_guard(code, **kwargs):
            if state["running"] is not None and state["running"] >= guard_from:
                kwargs["user_expressions"] = expression
            return execute(code, **kwargs)

        client.kc.execute = execute_with_guard

    def on_cell_execute(cell, cell_index):
        state["running"] = cell_index

    def on_cell_executed(cell, cell_index, execute_reply):
        content = (execute_reply or {}).get("content", {})
        timed_out = content.get("ename") == _TIMEOUT_ENAME
        clean = content.get("status") == "ok" and not any(
            output.get("output_type") == "error" for output in cell.get("outputs", [])
        )
        results[cell_index] = clean and not timed_out
        if cell_index >= guard_from and not timed_out:
            verdicts[cell_index] = _guard_verdict(content, guard_key)
        if timed_out:  # leave the reason in the cell, for the check's message and the feedback
            cell.setdefault("outputs", []).append(nbformat.v4.new_output(
                "error", ename=_TIMEOUT_ENAME, evalue=content.get("evalue", ""), traceback=[]
            ))
            timeouts.append(f"{labels[cell_index]} ran past {timeout:g} s and was interrupted")
            if state["last_timed_out"]:
                raise _GiveUp(cell_index)
        state["last_timed_out"] = timed_out

    manager = _CurrentPythonKernelManager(
        kernel_name="python3", sandbox=box if box.enabled else None, wall_s=wall_s,
        transport="ipc", ip=str(box.ipc / "kernel"),
        connection_file=str(box.ipc / "kernel.json"),
    )
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=timeout,
        allow_errors=True,
        interrupt_on_timeout=True,
        # Answer a timed-out cell at once instead of waiting for the interrupted code to stop.
        error_on_timeout={
            "ename": _TIMEOUT_ENAME, "evalue": f"ran past {timeout:g} s", "traceback": []
        },
        record_timing=False,
        shutdown_kernel="immediate",  # nothing in the kernel is worth a graceful goodbye
        kernel_name="python3",
        resources={"metadata": {"path": str(box.work)}},
        on_notebook_start=on_notebook_start,
        on_cell_execute=on_cell_execute,
        on_cell_executed=on_cell_executed,
        log=_quiet_logger(),
    )
    crash = None
    try:
        # The kernel process's own stdout/stderr carry only start-up chatter; a notebook's prints
        # and errors travel over the kernel protocol and land in the cell outputs.
        # cleanup_kc: nbclient shuts down only the kernels of managers it made itself, and this
        # one is ours; without it every graded notebook's kernel would live on until the grader
        # exits (about 300 MB each).
        client.execute(
            cleanup_kc=True,
            env=box.environment(kernel_env(str(box.tmp))),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    except _GiveUp as stopped:
        timeouts.append(
            f"kernel still busy after interrupting {labels[stopped.args[0]]}; rest not run"
        )
    except DeadKernelError:
        running = state["running"]
        if getattr(manager, "wall_clock_expired", False):
            timeouts.append(f"the notebook ran past its {wall_s:g} s in all and was stopped")
        else:
            where = labels[running] if running is not None else "start-up"
            crash = f"the kernel died while running {where}"
    except CellTimeoutError as error:  # only the startup or an unanswered request can get here
        timeouts.append(f"no answer from the kernel: {error}".splitlines()[0])
    except SandboxUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - whatever goes wrong, the row says so
        crash = f"could not run it: {type(error).__name__}: {error}".splitlines()[0]
    finally:
        manager.stop_wall_clock()
        manager.kill_box()
    return results, verdicts, timeouts, crash


def grade_notebook(path, reference=None, timeout: float = 60, sandbox: bool = True) -> dict:
    """Grade one submission. `reference` is a reference folder or notebook (default: exercises/).

    `sandbox=False` runs the kernel without the bubblewrap box (see the module docstring).
    Returns a plain dict: notebook, student (`student_name` without a folder argument), status,
    passed, total, checks (id -> bool, reference order), points (earned), max_points,
    check_points (id -> what it is worth), note (why the status, and which checks failed),
    messages (failed check id -> one line, `check_messages`), feedback (the notebook to hand
    back, `feedback_notebook`, or None), reference (path or None), seconds.
    """
    try:
        row = _grade_notebook(Path(path), reference, timeout, sandbox)
    except SandboxUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - a submission odd enough to trip the grader itself
        row = {
            "notebook": str(path),
            "status": "crashed",
            "passed": 0,
            "total": 0,
            "checks": {},
            "points": 0,
            "max_points": 0,
            "check_points": {},
            "note": f"grader error: {type(error).__name__}: {error}".splitlines()[0],
            "reference": None,
            "seconds": 0.0,
            "messages": {},
            "feedback": None,
        }
    row["student"] = student_name(path, row["reference"])
    return row


def _grade_notebook(path: Path, reference, timeout: float, sandbox: bool = True) -> dict:
    started = time.monotonic()
    row = {
        "notebook": str(path),
        "status": "ok",
        "passed": 0,
        "total": 0,
        "checks": {},
        "points": 0,
        "max_points": 0,
        "check_points": {},
        "note": "",
        "reference": None,
        "seconds": 0.0,
        "messages": {},
        "feedback": None,
    }
    notes: list[str] = []
    statuses = {"ok"}

    def finish() -> dict:
        row["passed"] = sum(row["checks"].values())
        row["total"] = len(row["checks"])
        worth = row["check_points"]
        row["points"] = sum(worth[ident] for ident, ok in row["checks"].items() if ok)
        row["max_points"] = sum(worth.values())
        failed = [ident for ident, ok in row["checks"].items() if not ok]
        if failed and "not a notebook" not in statuses:
            notes.append("failed: " + ", ".join(failed))
        row["status"] = min(statuses, key=STATUS_ORDER.index)
        row["note"] = "; ".join(notes)
        row["seconds"] = round(time.monotonic() - started, 1)
        return row

    reference_path = find_reference(path, reference)
    expected: dict[str, str] = {}
    to_run: dict[str, str] = {}
    reference_nb = None
    if reference_path is not None:
        row["reference"] = str(reference_path)
        try:
            reference_nb = _read_notebook(reference_path)
            expected = expected_checks(reference_nb)
            row["check_points"] = check_points_of(reference_nb)
            to_run, solution_note = sources_to_run(reference_nb, reference_path)
            if solution_note:
                notes.append(solution_note)
        except Exception as error:  # noqa: BLE001
            reference_nb = None
            notes.append(f"cannot read the reference {reference_path}: {error}".splitlines()[0])
    row["checks"] = {ident: False for ident in expected}

    try:
        submission = _read_notebook(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file is "not a notebook"
        statuses.add("not a notebook")
        notes.append(f"{type(error).__name__}: {error}".splitlines()[0])
        return finish()
    if reference_nb is None:
        statuses.add("crashed")
        if reference_path is None:
            notes.append(f"no reference exercise found for {path.name}")
        return finish()

    modifications = find_modifications(submission, reference_nb)
    if modifications:
        statuses.add("modified")
        notes.extend(modifications)

    guard_key = "_grader_guard_" + secrets.token_hex(8)
    runnable, roles, answer_notes = build_graded_notebook(
        submission, reference_nb, to_run, guard_key
    )
    notes.extend(answer_notes)
    labels = [f"{kind} {ident}".strip() if kind != "setup" else f"set-up cell {index}"
              for index, (kind, ident) in enumerate(roles)]
    guard_from = next(index for index, (kind, _) in enumerate(roles) if kind == "guard")
    # The whole notebook may take the per-cell limit for each cell the learner's code runs in.
    wall_s = timeout * (1 + sum(kind in ("answer", "check") for kind, _ in roles)) + 60
    with Sandbox(package_root(), enabled=sandbox) as box:
        results, verdicts, timeouts, crash = _run(
            runnable, labels, box, timeout, guard_key, guard_from, wall_s
        )
    if timeouts:
        statuses.add("timed out")
        notes.extend(timeouts)
    if crash:
        statuses.add("crashed")
        notes.append(crash)
    tampered_at = next(
        (index for index in sorted(verdicts) if verdicts[index]), None
    )
    if tampered_at is not None:
        statuses.add("tampered")
        notes.append(f"tampered: {verdicts[tampered_at]} changed (seen after "
                     f"{labels[tampered_at]}); that check and every later one fail")
    present = {exercise_id(cell) for cell in submission.cells}
    for index, (kind, ident) in enumerate(roles):
        if kind != "check":
            continue
        untouched = tampered_at is None or index < tampered_at
        # A check the learner deleted counts as failed, as it always has.
        row["checks"][ident] = results.get(index, False) and untouched and ident in present
    row["messages"] = check_messages(runnable, row["checks"])
    for ident in row["messages"]:
        if ident not in present:
            row["messages"][ident] = "check cell deleted"
    if tampered_at is not None:
        for ident, ok in row["checks"].items():
            if not ok and ident not in row["messages"]:
                row["messages"][ident] = (f"not counted: the integrity guard saw "
                                          f"{verdicts[tampered_at]} change")
    finish()
    # The learner gets back their answers and the checks, never the grader's guard cells.
    handed_back = copy.deepcopy(runnable)
    handed_back.cells = [cell for cell, (kind, _) in zip(runnable.cells, roles)
                         if kind not in ("guard", "final")]
    row["feedback"] = feedback_notebook(handed_back, expected, row)
    return row


def grade(
    paths, reference=None, timeout: float = 60, progress=None, sandbox: bool = True
) -> list[dict]:
    """Grade each submission in turn (folders are searched for notebooks). One dict per notebook.

    Each dict is grade_notebook's, with `student` named by `student_name`. Raises
    SandboxUnavailable, before grading anything, when `sandbox` is on and bubblewrap cannot make
    a sandbox on this machine.
    """
    if sandbox:
        reason = probe()
        if reason:
            raise SandboxUnavailable(reason)
    rows = []
    for path, folder in _expand_with_folders(paths):
        row = grade_notebook(path, reference=reference, timeout=timeout, sandbox=sandbox)
        row["student"] = student_name(path, row["reference"], folder)
        if progress:
            progress(row)
        rows.append(row)
    return rows


def _expand_with_folders(paths) -> list[tuple[Path, Path | None]]:
    """Each notebook to grade, with the folder argument it was found in (None for a file)."""
    expanded: list[tuple[Path, Path | None]] = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded.extend(
                (found, path)
                for found in sorted(path.rglob("*.ipynb"))
                if ".ipynb_checkpoints" not in found.parts
            )
        else:
            expanded.append((path, None))
    return expanded


def expand_paths(paths) -> list[Path]:
    return [path for path, _ in _expand_with_folders(paths)]


def student_name(path, reference=None, folder=None) -> str:
    """Whose submission `path` is, from where it sits and what it is called.

    In order, the first rule that gives a name:

    1. Found in a folder given to the grader, inside a subfolder of it: the first subfolder
       (`grade submissions/` finds `submissions/alice/02_losses.ipynb`: alice; nbgrader's
       `submitted/alice/ps1/02_losses.ipynb`, graded as `grade submitted/`: alice).
    2. A file name that is the exercise's name plus more: the rest, without the separators
       `-`, `_`, `.` and spaces around it (`02_losses-alice.ipynb`: alice).
    3. A file name that is not the exercise's: the name without `.ipynb` (`alice.ipynb`: alice).
    4. A file named as the exercise: its folder's name (`submissions/alice/02_losses.ipynb`,
       given as a file: alice).
    """
    path = Path(path)
    if folder is not None:
        try:
            inside = path.relative_to(folder).parts[:-1]
        except ValueError:
            inside = ()
        if inside:
            return inside[0]
    exercise = Path(reference).stem if reference else None
    if exercise and path.stem != exercise and path.stem.startswith(exercise):
        rest = path.stem[len(exercise):].strip("-_. ")
        if rest:
            return rest
    if exercise is None or path.stem != exercise:
        return path.stem
    return path.resolve().parent.name or path.stem


# --- reports -------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
MESSAGE_LIMIT = 300  # characters of one check's message in the gradebook


def one_line(text: str) -> str:
    """`text` without colour codes, on one line, at most MESSAGE_LIMIT characters."""
    line = " ".join(_ANSI.sub("", str(text)).split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


def _error_message(output: dict) -> str:
    ename = one_line(output.get("ename", "")) or "Error"
    evalue = one_line(output.get("evalue", ""))
    if ename == _TIMEOUT_ENAME:
        return f"timed out: {evalue}"
    if ename == _HIDDEN_ENAME:
        return HIDDEN_FAILURE
    return f"{ename}: {evalue}" if evalue else ename


def check_messages(executed: nbformat.NotebookNode, checks: dict[str, bool]) -> dict[str, str]:
    """Failed check id -> one line saying why: the error its cell showed, else what happened.

    The line is the error's name and value ("CheckFailure: <what, expected, got, hint>", the line
    a check prints, or the last line of any other traceback), colour codes removed; a hidden
    test's failure is only "a hidden test failed"; a cell cut off by the time limit says so.
    """
    messages = {}
    for ident, ok in checks.items():
        if ok:
            continue
        cells = [
            cell for cell in executed.cells
            if cell.cell_type == "code" and exercise_id(cell) == ident
        ]
        errors = [
            output for cell in cells for output in cell.get("outputs", [])
            if output.get("output_type") == "error"
        ]
        timed_out = [output for output in errors if output.get("ename") == _TIMEOUT_ENAME]
        if timed_out or errors:
            messages[ident] = _error_message((timed_out or errors)[0])
        elif not cells:
            messages[ident] = "check cell deleted"
        else:
            messages[ident] = "not run (the kernel stopped before this cell)"
    return messages


def _summary_markdown(row: dict) -> str:
    lines = [
        f"**Grade: {row['points']}/{row['max_points']} points** "
        f"({row['passed']} of {row['total']} checks passed; status: {row['status']}).",
        "",
    ]
    for ident, ok in row["checks"].items():
        worth = row["check_points"].get(ident, 1)
        if ok:
            lines.append(f"- ✓ `{ident}`: {worth}/{worth}")
        else:
            message = row.get("messages", {}).get(ident, "failed")
            lines.append(f"- ✗ `{ident}`: 0/{worth}: {message}")
    if row.get("note"):
        lines += ["", f"Note: {row['note']}"]
    return "\n".join(lines)


def feedback_notebook(
    executed: nbformat.NotebookNode | None, visible: dict[str, str], row: dict
) -> nbformat.NotebookNode:
    """What a learner gets back: their executed notebook, each check with its message.

    A summary cell (points, and each check with its message) comes first. Each check cell holds
    the exercise's visible source, never the source the grader ran (hidden tests, fresh
    imports), and its outputs; an error shows as its one-line message, without the traceback,
    which could quote the source that ran. With no executed notebook (a file that is not one),
    the summary alone.
    """
    feedback = copy.deepcopy(executed) if executed is not None else nbformat.v4.new_notebook()
    for cell in feedback.cells:
        ident = exercise_id(cell)
        if cell.cell_type != "code" or ident not in visible:
            continue
        cell.source = visible[ident]
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                output["ename"] = one_line(output.get("ename", ""))
                output["evalue"] = one_line(output.get("evalue", ""))
                output["traceback"] = [f"✗ {_error_message(output)}"]
    summary = nbformat.v4.new_markdown_cell(_summary_markdown(row))
    summary["id"] = "grader-feedback"
    feedback.cells = [
        summary, *(cell for cell in feedback.cells if cell.get("id") != "grader-feedback")
    ]
    return feedback


def _safe_name(name: str) -> str:
    name = re.sub(r"[^\w.@+-]", "_", name).strip(".")
    return name or "unknown"


def write_feedback(rows: list[dict], folder) -> list[Path]:
    """Write each row's feedback notebook to folder/<student>/<notebook's file name>."""
    written = []
    for row in rows:
        student = _safe_name(row.get("student") or Path(row["notebook"]).stem)
        target = Path(folder) / student / _safe_name(Path(row["notebook"]).name)
        feedback = row.get("feedback") or feedback_notebook(None, {}, row)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(feedback, target)
        written.append(target)
    return written


def format_table(rows: list[dict]) -> str:
    """A plain aligned table, one row per notebook, then a TOTAL line."""
    header = ("student", "notebook", "status", "passed", "points", "note")
    lines = [
        (
            row.get("student", ""), row["notebook"], row["status"],
            f"{row['passed']}/{row['total']}", f"{row['points']}/{row['max_points']}", row["note"],
        )
        for row in rows
    ]

    def tally(key: str) -> int:
        return sum(row[key] for row in rows)

    ok = sum(row["status"] == "ok" for row in rows)
    lines.append((
        "TOTAL", "", f"{ok}/{len(rows)} ok", f"{tally('passed')}/{tally('total')}",
        f"{tally('points')}/{tally('max_points')}", f"{len(rows)} notebook(s)",
    ))
    columns = len(header) - 1  # the note, last, is not padded
    widths = [max(len(str(line[column])) for line in [header, *lines]) for column in range(columns)]
    out = []
    for line in [header, *lines]:
        cells = [str(value).ljust(width) for value, width in zip(line[:columns], widths)]
        out.append("  ".join([*cells, line[columns]]).rstrip())
    return "\n".join(out)


CSV_COLUMNS = ("student", "notebook", "status", "passed", "total", "points", "max_points")
POINTS_POSSIBLE = "(points possible)"


def write_csv(rows: list[dict], path) -> None:
    """A gradebook: a "points possible" row, then one row per submission.

    Columns: student, notebook, status, checks passed, checks in all, points earned, points
    possible, then one column per check (its id, in reference order) holding the points that
    check earned (0 when failed, empty when the notebook has no such check), then `messages`:
    one line per failed check, `<check id>: <message>`, and `note`, why the status.
    The first row under the header is what full marks look like: every check passed, each
    check's worth, and the sums of both, so the row adds up like any other.
    """
    check_ids = list(dict.fromkeys(ident for row in rows for ident in row["checks"]))
    worth: dict[str, int] = {}
    for row in rows:
        for ident, points in row["check_points"].items():
            worth.setdefault(ident, points)
    possible = [worth.get(ident, 1) for ident in check_ids]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *check_ids, "messages", "note"])
        writer.writerow([
            POINTS_POSSIBLE, "", "", len(check_ids), len(check_ids), sum(possible), sum(possible),
            *possible, "", "",
        ])
        for row in rows:
            checks = row["checks"]
            marks = [
                row["check_points"].get(ident, 1) * int(checks[ident]) if ident in checks else ""
                for ident in check_ids
            ]
            messages = row.get("messages", {})
            writer.writerow([
                row.get("student", ""), row["notebook"], row["status"], row["passed"],
                row["total"], row["points"], row["max_points"], *marks,
                "\n".join(f"{ident}: {messages[ident]}" for ident in checks if ident in messages),
                row["note"],
            ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.instructor.grade",
        description="Run learners' exercise notebooks and report which checks pass.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="submitted notebooks, or folders of them"
    )
    parser.add_argument("--csv", metavar="FILE", help="also write a gradebook CSV here")
    parser.add_argument(
        "--feedback", type=Path, metavar="DIR",
        help="also write each executed notebook, with its checks' messages, to "
        "DIR/<student>/<notebook>",
    )
    parser.add_argument(
        "--timeout", type=float, default=60, metavar="SECONDS",
        help="time limit for each cell (default: %(default)g)",
    )
    parser.add_argument(
        "--reference", type=Path, default=default_reference_dir(), metavar="DIR",
        help="folder of reference exercise notebooks, or one notebook (default: %(default)s)",
    )
    parser.add_argument(
        "--no-sandbox", action="store_true",
        help="run learner code without the bubblewrap sandbox (only for notebooks you trust)",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be a positive number of seconds")
    if not args.reference.exists():
        parser.error(f"--reference {args.reference} does not exist")
    paths = expand_paths(args.paths)
    if not paths:
        parser.error("no notebooks found in " + " ".join(args.paths))

    def progress(row: dict) -> None:
        print(f"graded {row['notebook']}: {row['status']} ({row['seconds']:g} s)", file=sys.stderr)

    if args.no_sandbox:
        print("WARNING: --no-sandbox: learner code runs with your rights, and can read and write "
              "your files, the other submissions and the gradebook", file=sys.stderr)
    try:
        rows = grade(args.paths, reference=args.reference, timeout=args.timeout, progress=progress,
                     sandbox=not args.no_sandbox)
    except SandboxUnavailable as error:
        print(f"cannot grade: {error}", file=sys.stderr)
        return 3
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    if args.feedback:
        written = write_feedback(rows, args.feedback)
        print(f"wrote {len(written)} feedback notebook(s) under {args.feedback}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
