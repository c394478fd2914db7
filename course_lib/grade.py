"""Grade learners' exercise notebooks by running their check cells (for instructors).

    python -m course_lib.grade submissions/*.ipynb
    python -m course_lib.grade submissions/ --csv gradebook.csv --timeout 30
    python -m course_lib.grade alice.ipynb --reference path/to/exercises

Each submission runs top to bottom in a fresh kernel, errors allowed, so every cell runs. A check
passes when its cell ran and produced no error. The checks expected are those of the reference
exercise notebook (`exercises/` next to this package by default), matched by the ids that
`course_lib.make_exercises` keeps in cell metadata (`"exercise": {"id": ...}`).

The reference for a submission is found by, in order: the `exercise.generated_from` entry of the
submission's metadata, the file name, and the longest reference name the file name starts with
(so `01_loop-alice.ipynb` finds `01_loop.ipynb`).

Decisions, and why:

- Kernel: always ipykernel on the interpreter running the grader, whatever kernelspec the
  submission names or the machine has installed. A learner's notebook may name a kernel that
  exists only on their laptop; the grade must come from the course's own environment. The
  repository root goes on the kernel's PYTHONPATH, so `course_lib` imports wherever the
  submission sits; the kernel's working folder is the submission's folder.
- Integrity: a check cell whose source differs from the reference (whitespace aside) is run with
  the reference source, so an edited check cannot earn a pass, and the row is marked "modified"
  naming the id. Deleted, duplicated or reordered check cells, and a solution cell moved below the
  check that tests it, also mark the row "modified"; a deleted check counts as failed.
- Timeouts: a cell that runs past the limit is interrupted and counts as failed, the row is
  marked "timed out", and the rest of the notebook still runs, so one endless loop costs one
  exercise, not all the later ones. If the next cell times out too (the kernel ignored the
  interrupt), grading of that notebook stops there.
- The grader never stops on a bad submission: every problem becomes the status and note of that
  notebook's row. Statuses, most serious first: "not a notebook", "crashed", "timed out",
  "modified", "ok".

Exit status: 0 when every notebook was graded (whatever the grades), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from traitlets import default

from course_lib.make_exercises import exercise_id, is_check_cell, package_root

STATUS_ORDER = ("not a notebook", "crashed", "timed out", "modified", "ok")
_TIMEOUT_ENAME = "GraderTimeout"


class _CurrentPythonKernelManager(AsyncKernelManager):
    """Starts ipykernel on this interpreter, ignoring installed kernelspecs.

    With no kernelspec folders to search, jupyter_client falls back to ipykernel's built-in
    spec, which runs `sys.executable -m ipykernel_launcher`.
    """

    @default("kernel_spec_manager")
    def _no_installed_kernelspecs(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])


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


# --- running one notebook ------------------------------------------------------------------------


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(package_root()), env.get("PYTHONPATH", "")) if part
    )
    return env


def _quiet_logger() -> logging.Logger:
    # nbclient logs timeouts and dead kernels itself; the grader reports them in the row instead.
    logger = logging.getLogger("course_lib.grade.nbclient")
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    return logger


def _run(
    notebook: nbformat.NotebookNode, cwd: Path, timeout: float
) -> tuple[dict[int, bool], list[str], str | None]:
    """Run every cell. Returns (cell index -> ran cleanly, timeout notes, crash reason or None)."""
    results: dict[int, bool] = {}
    timeouts: list[str] = []
    state = {"running": None, "last_timed_out": False}

    def on_cell_execute(cell, cell_index):
        state["running"] = cell_index

    def on_cell_executed(cell, cell_index, execute_reply):
        content = (execute_reply or {}).get("content", {})
        timed_out = content.get("ename") == _TIMEOUT_ENAME
        clean = content.get("status") == "ok" and not any(
            output.get("output_type") == "error" for output in cell.get("outputs", [])
        )
        results[cell_index] = clean and not timed_out
        if timed_out:
            timeouts.append(f"cell index {cell_index} ran past {timeout:g} s and was interrupted")
            if state["last_timed_out"]:
                raise _GiveUp(cell_index)
        state["last_timed_out"] = timed_out

    client = NotebookClient(
        notebook,
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
        kernel_manager_class=_CurrentPythonKernelManager,
        resources={"metadata": {"path": str(cwd)}},
        on_cell_execute=on_cell_execute,
        on_cell_executed=on_cell_executed,
        log=_quiet_logger(),
    )
    crash = None
    try:
        # The kernel process's own stdout/stderr carry only start-up chatter; a notebook's prints
        # and errors travel over the kernel protocol and land in the cell outputs.
        client.execute(env=_kernel_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except _GiveUp as stopped:
        timeouts.append(
            f"kernel still busy after interrupting cell index {stopped.args[0]}; rest not run"
        )
    except DeadKernelError:
        crash = f"the kernel died while running cell index {state['running']}"
    except CellTimeoutError as error:  # only the startup or an unanswered request can get here
        timeouts.append(f"no answer from the kernel: {error}".splitlines()[0])
    except Exception as error:  # noqa: BLE001 - whatever goes wrong, the row says so
        crash = f"could not run it: {type(error).__name__}: {error}".splitlines()[0]
    return results, timeouts, crash


def grade_notebook(path, reference=None, timeout: float = 60) -> dict:
    """Grade one submission. `reference` is a reference folder or notebook (default: exercises/).

    Returns a plain dict: notebook, status, passed, total, checks (id -> bool, reference order),
    note (why the status, and which checks failed), reference (path or None), seconds.
    """
    try:
        return _grade_notebook(Path(path), reference, timeout)
    except Exception as error:  # noqa: BLE001 - a submission odd enough to trip the grader itself
        return {
            "notebook": str(path),
            "status": "crashed",
            "passed": 0,
            "total": 0,
            "checks": {},
            "note": f"grader error: {type(error).__name__}: {error}".splitlines()[0],
            "reference": None,
            "seconds": 0.0,
        }


def _grade_notebook(path: Path, reference, timeout: float) -> dict:
    started = time.monotonic()
    row = {
        "notebook": str(path),
        "status": "ok",
        "passed": 0,
        "total": 0,
        "checks": {},
        "note": "",
        "reference": None,
        "seconds": 0.0,
    }
    notes: list[str] = []
    statuses = {"ok"}

    def finish() -> dict:
        row["passed"] = sum(row["checks"].values())
        row["total"] = len(row["checks"])
        failed = [ident for ident, ok in row["checks"].items() if not ok]
        if failed and "not a notebook" not in statuses:
            notes.append("failed: " + ", ".join(failed))
        row["status"] = min(statuses, key=STATUS_ORDER.index)
        row["note"] = "; ".join(notes)
        row["seconds"] = round(time.monotonic() - started, 1)
        return row

    reference_path = find_reference(path, reference)
    expected: dict[str, str] = {}
    reference_nb = None
    if reference_path is not None:
        row["reference"] = str(reference_path)
        try:
            reference_nb = _read_notebook(reference_path)
            expected = expected_checks(reference_nb)
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

    runnable = copy.deepcopy(submission)
    for cell in runnable.cells:
        if exercise_id(cell) in expected and cell.cell_type == "code":
            # Run the reference check, never an edited one.
            cell.source = expected[exercise_id(cell)]

    results, timeouts, crash = _run(runnable, path.resolve().parent, timeout)
    if timeouts:
        statuses.add("timed out")
        notes.extend(timeouts)
    if crash:
        statuses.add("crashed")
        notes.append(crash)
    for ident in expected:  # a duplicated check passes only if every copy passes
        indices = [
            index for index, cell in enumerate(runnable.cells)
            if exercise_id(cell) == ident and cell.cell_type == "code"
        ]
        row["checks"][ident] = bool(indices) and all(results.get(index, False) for index in indices)
    return finish()


def grade(paths, reference=None, timeout: float = 60, progress=None) -> list[dict]:
    """Grade each submission in turn (folders are searched for notebooks). One dict per notebook."""
    rows = []
    for path in expand_paths(paths):
        row = grade_notebook(path, reference=reference, timeout=timeout)
        if progress:
            progress(row)
        rows.append(row)
    return rows


def expand_paths(paths) -> list[Path]:
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded.extend(
                sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            )
        else:
            expanded.append(path)
    return expanded


# --- reports -------------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    """A plain aligned table, one row per notebook, then a TOTAL line."""
    header = ("notebook", "status", "passed", "note")
    lines = [
        (row["notebook"], row["status"], f"{row['passed']}/{row['total']}", row["note"])
        for row in rows
    ]
    passed = sum(row["passed"] for row in rows)
    total = sum(row["total"] for row in rows)
    ok = sum(row["status"] == "ok" for row in rows)
    lines.append(("TOTAL", f"{ok}/{len(rows)} ok", f"{passed}/{total}", f"{len(rows)} notebook(s)"))
    widths = [max(len(str(line[column])) for line in [header, *lines]) for column in range(3)]
    out = []
    for line in [header, *lines]:
        cells = [str(value).ljust(width) for value, width in zip(line[:3], widths)]
        out.append("  ".join([*cells, line[3]]).rstrip())
    return "\n".join(out)


def write_csv(rows: list[dict], path) -> None:
    """One gradebook row per submission; check columns in reference order, 1 or 0."""
    check_ids = list(dict.fromkeys(ident for row in rows for ident in row["checks"]))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["notebook", "status", "passed", "total", *check_ids])
        for row in rows:
            checks = row["checks"]
            marks = [int(checks[ident]) if ident in checks else "" for ident in check_ids]
            writer.writerow([row["notebook"], row["status"], row["passed"], row["total"], *marks])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grade",
        description="Run learners' exercise notebooks and report which checks pass.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="submitted notebooks, or folders of them"
    )
    parser.add_argument("--csv", metavar="FILE", help="also write a gradebook CSV here")
    parser.add_argument(
        "--timeout", type=float, default=60, metavar="SECONDS",
        help="time limit for each cell (default: %(default)g)",
    )
    parser.add_argument(
        "--reference", type=Path, default=default_reference_dir(), metavar="DIR",
        help="folder of reference exercise notebooks, or one notebook (default: %(default)s)",
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

    rows = grade(paths, reference=args.reference, timeout=args.timeout, progress=progress)
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
