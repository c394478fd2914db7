"""kill_during_save kills for real on every platform: SIGKILL, or TerminateProcess without it."""

import signal
import subprocess
import sys

from course_lib import crashes
from course_lib.crashes import FIRST_STEP, hard_kill, kill_during_save


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_hard_kill_uses_sigkill_where_there_is_one():
    child = _sleeper()
    assert hard_kill(child) == "SIGKILL"
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_hard_kill_without_sigkill_terminates_the_process(monkeypatch):
    monkeypatch.delattr(signal, "SIGKILL")  # as on native Windows
    child = _sleeper()
    assert hard_kill(child) == "TerminateProcess"
    assert child.wait(timeout=10) != 0


def test_a_save_killed_without_sigkill_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delattr(crashes.signal, "SIGKILL")
    report = kill_during_save(tmp_path / "run", atomic=True)
    assert report.killed_by == "TerminateProcess"
    assert report.loads and report.step == FIRST_STEP
