"""nbgrader support: the same stubs from `nbgrader generate_assignment` as from `make exercises`.

The solution notebooks carry nbgrader's cell metadata (written by
`course_lib.instructor.make_exercises`), so nbgrader works on them as they are. Two details of our
markup differ from nbgrader's defaults, and nbgrader's own `ClearSolutions` handles them as follows:

- `### BEGIN SOLUTION: clip the gradients` carries the learner's instruction after the colon.
  `ClearSolutions` replaces any line that contains "BEGIN SOLUTION" by its fixed stub
  (`# YOUR CODE HERE` / `raise NotImplementedError()`), so the instruction is lost, though the stub
  still runs and the checks still fail on it.
- A markdown explanation of an answer sits between `<!-- BEGIN SOLUTION -->` lines in a read-only
  cell. `ClearSolutions` refuses a solution region outside a solution cell, and nbgrader does not
  allow an ungraded markdown solution cell, so `generate_assignment` stops with "Solution region
  detected in a non-solution cell".

`ClearSolutionsWithInstructions` below does what the exercise generator does instead: it writes
`raise NotImplementedError("<instruction>")` and removes the markdown explanations. Unlike the
exercise generator it keeps a markdown cell that was all explanation, empty: `nbgrader autograde`
matches a submission's cells with the source notebook's, and a cell missing from the release would
make it refuse a submission that has it (the solution notebook itself, for one).

One more thing nbgrader needs: it starts the `alembic` program by name when it creates a course's
gradebook, so `.venv/bin/nbgrader ...` run from a shell without `.venv/bin` on PATH stops with
`FileNotFoundError: [Errno 2] No such file or directory: 'alembic'`. `configure` puts the folder
of the interpreter running nbgrader (where pip installed `alembic`) at the front of PATH, in the
nbgrader process itself: nbgrader reads the course's `nbgrader_config.py` before it opens the
gradebook, so every way of starting it (`.venv/bin/nbgrader`, `python -m nbgrader`, the formgrader
in JupyterLab) finds `alembic`, with no shell set-up to forget.

All of it in the course's `nbgrader_config.py`:

    from course_lib.instructor.nbgrader_support import configure
    configure(get_config())

Hidden tests (`### BEGIN HIDDEN TESTS`) need nothing: they are nbgrader's own convention.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import ClearSolutions

from course_lib.instructor.make_exercises import stub_code, strip_markdown


class ClearSolutionsWithInstructions(ClearSolutions):
    """nbgrader's ClearSolutions, writing the stubs `make exercises` writes."""

    def preprocess_cell(self, cell, resources, cell_index):
        if self.begin_solution_delimeter not in cell.source:
            # No region: nbgrader's own rule, which stubs a whole cell marked as a solution.
            return super().preprocess_cell(cell, resources, cell_index)
        where = f"cell index {cell_index}"
        if cell.cell_type == "code":
            cell.source = stub_code(cell.source, where)
        elif cell.cell_type == "markdown":
            cell.source = strip_markdown(cell.source, where)
        return cell, resources


def generate_assignment_preprocessors() -> list:
    """nbgrader's generate_assignment preprocessors with ClearSolutions replaced by ours."""
    return [
        ClearSolutionsWithInstructions if pre is ClearSolutions else pre
        for pre in GenerateAssignment.class_traits()["preprocessors"].default()
    ]


# nbgrader's default, 30 s a cell, is short for a training run on a busy machine.
CELL_TIMEOUT = 300


def put_interpreter_folder_on_path() -> str:
    """Put the folder of this interpreter (a venv's `bin/`) first on PATH; return that folder.

    Programs installed beside the interpreter, `alembic` among them, are then found by name by
    this process and every process it starts. Calling it again changes nothing.
    """
    folder = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != folder:
        os.environ["PATH"] = os.pathsep.join([folder, *(part for part in parts if part)])
    return folder


def configure(c) -> None:
    """Set up an nbgrader course for the workbook: call it in `nbgrader_config.py`.

    Our stubs in `generate_assignment`, 300 s per cell in `autograde`, and `alembic` on PATH.
    """
    c.GenerateAssignment.preprocessors = generate_assignment_preprocessors()
    c.Execute.timeout = CELL_TIMEOUT
    put_interpreter_folder_on_path()
