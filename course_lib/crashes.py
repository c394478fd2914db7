"""A process killed in the middle of saving a checkpoint, for real (lesson 07).

`kill_during_save` writes a good checkpoint, then starts a second save of the same file in a
child process and kills that child with SIGKILL (TerminateProcess on native Windows, which has no
SIGKILL) while the save is under way: no `finally`, no
clean-up, exactly what a crash, an out-of-memory kill or a preempted machine does. It then reports
what the folder holds and whether the file still loads, for the atomic `save_checkpoint` and for a
plain `torch.save` onto the target.

To kill at a known point rather than at a lucky moment, the child's new state carries a
`PauseWhenPickled` object: when the save reaches it (after the output file was opened, while the
state is being serialized, which is the long part for a large model), it writes a flag file and
waits. The parent sees the flag and kills the child then. The child runs this module
(`python -m course_lib.crashes`), so nothing it runs is defined in a notebook.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.checkpoint import load_checkpoint, save_checkpoint

# The checkpoint the parent writes first, and the one the killed child was writing.
FIRST_STEP, SECOND_STEP = 100, 200
# How long the parent waits for the child to reach the pause (importing torch takes seconds).
START_TIMEOUT_S = 120.0


class PauseWhenPickled:
    """Stops a save at a known point: when pickled, writes `flag` and sleeps until killed."""

    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        Path(self.flag).write_text(str(os.getpid()))
        while True:
            time.sleep(1)


def checkpoint_state(step: int, size: int = 10_000) -> dict:
    """A stand-in checkpoint: a step and some weights that depend on it."""
    return {"step": step, "model": {"weight": torch.full((size,), float(step))}}


@dataclass
class KillReport:
    """What a folder held after a save was killed, and whether the checkpoint still loads."""

    files: list[tuple[str, int]]  # (name, size in bytes), sorted by name
    loads: bool  # the target loads with load_checkpoint
    step: int | None  # the step it holds when it loads
    error: str  # why it does not load ("" when it does)
    signal: int  # what ended the child: -returncode (9 for SIGKILL); the exit code on Windows
    killed_by: str = "SIGKILL"  # how: "SIGKILL", or "TerminateProcess" where there is no SIGKILL


def _child_save(target: str, atomic: bool, flag: str) -> None:
    """The child's work: save a new state over `target`, which pauses half-way (see above)."""
    state = {**checkpoint_state(SECOND_STEP), "pause": PauseWhenPickled(flag)}
    if atomic:
        save_checkpoint(target, state)
    else:
        torch.save(state, target)  # straight onto the target: the old file is truncated first


def _this_checkout() -> str:
    """PYTHONPATH for the child: this course_lib first, whatever else is installed."""
    checkout = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH", "")]))


def kill_during_save(folder, atomic: bool = True) -> KillReport:
    """Save a checkpoint in `folder`, kill a process half-way through saving the next one, report.

    `atomic=True` saves with `save_checkpoint` (a temporary file, then a rename); `atomic=False`
    with `torch.save(state, target)`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target, flag = folder / "latest.pt", folder.parent / f".{folder.name}-paused"
    flag.unlink(missing_ok=True)
    save_checkpoint(target, checkpoint_state(FIRST_STEP))
    child = subprocess.Popen(
        [sys.executable, "-m", "course_lib.crashes", str(target), "--flag", str(flag)]
        + ([] if atomic else ["--plain"]),
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _this_checkout()},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not flag.exists():
            if child.poll() is not None:
                raise RuntimeError(f"the saving process ended (code {child.returncode}) before "
                                   "it reached the pause")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the saving process did not reach the pause in {START_TIMEOUT_S} s")
            time.sleep(0.01)
        how = hard_kill(child)
    finally:
        if child.poll() is None:
            hard_kill(child)
        child.wait()
        flag.unlink(missing_ok=True)
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    try:
        step, error = load_checkpoint(target)["step"], ""
    except Exception as failure:  # noqa: BLE001 - any failure to load is the finding
        message = (str(failure).splitlines() or ["(no message)"])[0]
        step, error = None, f"{type(failure).__name__}: {message}"
    return KillReport(files, error == "", step, error, -child.returncode, how)


def hard_kill(process: subprocess.Popen) -> str:
    """Kill `process` with no chance to clean up; return how.

    SIGKILL where the platform has it (Linux, macOS). Native Windows has no SIGKILL:
    `Popen.terminate` calls TerminateProcess there, which is just as final (no `finally`, no
    handler runs), so the demonstration means the same.
    """
    kill_signal = getattr(signal, "SIGKILL", None)
    if kill_signal is None:
        process.terminate()
        return "TerminateProcess"
    os.kill(process.pid, kill_signal)
    return "SIGKILL"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Save a checkpoint that pauses half-way (the child "
                                     "of kill_during_save).")
    parser.add_argument("target")
    parser.add_argument("--flag", required=True, help="written when the save has paused")
    parser.add_argument("--plain", action="store_true", help="torch.save onto the target")
    args = parser.parse_args(argv)
    _child_save(args.target, atomic=not args.plain, flag=args.flag)


if __name__ == "__main__":
    main()
