"""Exercise notebooks as shipped: lesson cells run, and every check cell fails with its own failure.

nbval can only say that a cell raised, not which error it raised, so these notebooks run under
nbclient and the test reads each cell's error name. An untouched exercise must fail at its check
cells with CheckFailure or NotImplementedYet, never with a NameError or an ImportError, which would
mean a learner sees a confusing error before writing any code.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
CHECK_FAILURES = {"CheckFailure", "NotImplementedYet"}

pytestmark = pytest.mark.notebooks


def run_allowing_errors(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return notebook


def error_names(cell) -> list[str]:
    return [o["ename"] for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def is_check(cell) -> bool:
    return "check" in cell.get("metadata", {}).get("tags", [])


def is_answer(cell) -> bool:
    """A cell the learner fills in (it held a solution region)."""
    return "exercise" in cell.get("metadata", {}) and not is_check(cell)


@pytest.mark.skipif(not EXERCISES, reason="no exercise notebooks yet")
@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_untouched_exercise_fails_only_at_its_checks_with_their_own_failure(path):
    notebook = run_allowing_errors(path)
    checks = [cell for cell in notebook.cells if cell.cell_type == "code" and is_check(cell)]
    assert checks, f"{path.name} has no check cells"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        names = error_names(cell)
        if is_check(cell):
            assert len(names) == 1 and names[0] in CHECK_FAILURES, (
                f"check cell {index} of {path.name} should fail with its own failure, got {names}"
            )
            text = "".join(o.get("evalue", "") for o in cell.outputs)
            assert text.strip(), f"check cell {index} failed without a message"
        elif is_answer(cell):
            # A stub at the top level of a cell raises NotImplementedError itself: expected.
            assert set(names) <= {"NotImplementedError"}, f"answer cell {index} raised {names}"
        else:
            assert names == [], f"cell {index} of {path.name} raised {names}: {cell.source[:80]!r}"
