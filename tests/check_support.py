"""Helpers shared by the wrong-answer corpora of the exercise checks (tests/test_checks_*.py)."""

import contextlib
import os
import subprocess
import sys

import pytest

from course_lib.checks._core import CheckFailure, NotImplementedYet

# The seeds each check runs on: 2 in the everyday run, 16 (CHECK_SEEDS=16) to validate thresholds.
SEEDS = list(range(int(os.environ.get("CHECK_SEEDS", "2"))))


def stub(*args, **kwargs):
    raise NotImplementedError("write your code here")


def fails_with(check, answer, *, hint_text, what=None):
    """The check rejects `answer` on every seed, with `hint_text` in its hint."""
    for seed in SEEDS:
        with pytest.raises(CheckFailure) as info:
            check(answer, seed=seed)
        assert not isinstance(info.value, NotImplementedYet), info.value.line()
        assert hint_text in info.value.hint, f"seed {seed}: {info.value.line()}"
        if what is not None:
            assert what in info.value.what, f"seed {seed}: {info.value.line()}"


def passes(check, answer, capsys):
    for seed in SEEDS:
        check(answer, seed=seed)
    assert capsys.readouterr().out.count("✓") == len(SEEDS)


@contextlib.contextmanager
def machine_loaded(processes: int = 2):
    """Two CPU-bound processes run beside the block, as on a grading machine that is busy.

    Checks with a timing bar must keep passing correct answers while this runs (exercise design,
    rule 8).
    """
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
