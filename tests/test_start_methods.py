"""The lessons that start processes, run under the start methods of a learner's laptop.

Linux starts DataLoader workers and multiprocessing children with `fork`, which the rest of the suite
uses. macOS and Windows use `spawn`, and Python 3.14 on Linux defaults to `forkserver`; under both, a
worker must import everything it runs, and starting one costs far more. Each test here executes one
notebook top to bottom in a kernel whose start method is forced (tests/start_method/sitecustomize.py)
and reads the method back from the kernel, so a pass means the notebook really ran under it.

`make test-start-methods` runs every lesson, solution and exercise this way; this file keeps the
lessons and solutions that start processes in `make test`.
"""

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
START_METHOD_DIR = Path(__file__).parent / "start_method"
METHODS = ["spawn", "forkserver"]

# The notebooks whose cells, or the checks they call, start processes: DataLoader workers (04), a
# child process killed in the middle of a save (07), launch's process groups (08). The test below
# keeps this list complete.
PROCESS_NOTEBOOKS = [
    "notebooks/04_input_pipelines.ipynb",
    "notebooks/07_checkpoints_and_tracking.ipynb",
    "notebooks/08_multi_host_pitfalls.ipynb",
    "solutions/04_input_pipelines.ipynb",
    "solutions/08_multi_host_pitfalls.ipynb",
]

# Code that starts a process, directly or through course_lib.
STARTS_PROCESSES = re.compile(
    r"num_workers\s*=\s*(?!0\b)\w"      # a DataLoader with workers (a literal above 0 or a name)
    r"|\blaunch\("                      # course_lib.distributed.launch
    r"|\bkill_during_save\("            # course_lib.crashes: a child process killed mid-save
    r"|\bsubprocess\.|\bmultiprocessing\.|\bmp\.(?:Process|spawn|Pool)\b|\btorchrun\b"
)

# make test runs the lessons; `make test-start-methods` runs the solutions too.
LESSONS = [path for path in PROCESS_NOTEBOOKS if path.startswith("notebooks/")]

pytestmark = pytest.mark.notebooks

MARKER = "start method in the kernel: "


def code_of(path: Path) -> str:
    """The notebook's code cells, and the source of every check module they import."""
    notebook = nbformat.read(path, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    checks = set(re.findall(r"course_lib\.checks\.(\w+)", code))
    return "\n".join([code, *((ROOT / "course_lib" / "checks" / f"{name}.py").read_text()
                               for name in sorted(checks))])


def test_the_list_names_every_notebook_that_starts_processes():
    found = sorted(
        str(path.relative_to(ROOT))
        for folder in ("notebooks", "solutions")
        for path in (ROOT / folder).glob("*.ipynb")
        if STARTS_PROCESSES.search(code_of(path))
    )
    missing = sorted(set(found) - set(PROCESS_NOTEBOOKS))
    assert not missing, f"these notebooks start processes; add them to PROCESS_NOTEBOOKS: {missing}"
    stale = sorted(set(PROCESS_NOTEBOOKS) - set(found))
    assert not stale, f"these notebooks no longer start processes; drop them from the list: {stale}"


def test_the_pattern_finds_what_starts_a_process_and_nothing_else():
    for code in ["DataLoader(ds, num_workers=4)", "make_loader(s, 64, num_workers=workers)",
                 "launch(train_ddp, 2, cfg)", "kill_during_save(tmp, atomic=False)",
                 "subprocess.run(['git', 'status'])", "ctx = multiprocessing.get_context()"]:
        assert STARTS_PROCESSES.search(code), code
    for code in ["DataLoader(ds, num_workers=0)", "DataLoader(ds, batch_size=64)",
                 "scaler = torch.amp.GradScaler()", "# launch happens in lesson 08"]:
        assert not STARTS_PROCESSES.search(code), code


@pytest.mark.skipif(bool(os.environ.get("COURSE_START_METHOD")),
                    reason="COURSE_START_METHOD already forces one method on the whole run")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("relative", LESSONS)
def test_notebook_runs_under_the_start_method(relative, method, monkeypatch):
    path = ROOT / relative
    # The kernel and every process it starts inherit these, as under COURSE_START_METHOD.
    monkeypatch.setenv("COURSE_START_METHOD", method)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(START_METHOD_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]))
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import multiprocessing, json\n"
        f"print({MARKER!r} + json.dumps(multiprocessing.get_start_method()))"))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
    assert MARKER in printed, printed
    assert json.loads(printed.split(MARKER, 1)[1]) == method
