"""Exercise 08's checks tell a hung run from a slow one: a run is stopped when no rank has made
progress (a forward pass, or returning) for STALL_S seconds, not after a fixed total time, so a
correct answer passes on a loaded machine and a hang is reported soon after it begins.

Measured on a shared two-core machine (load average about 10 from other work, plus the two
burners of machine_loaded): the reference passed check (e) in one launch inside machine_loaded()
(measured again, 54 s for both tests, when (e) became the mean validation loss); the planted hang was reported as stalled (with STALL_S and STALL_RATIO lowered for the test). At a
load average of 22, with the start-up alone as the limit, the reference was once stopped as stalled
in the solution notebook; the ratio is now 2.
"""

import time

import ex08_answers as answers  # tests/, which pytest puts on the path
import pytest
import torch

from course_lib.checks import ex08
from course_lib.checks._core import CheckFailure
from course_lib.checks.ex08 import check_validation_loss
from course_lib.distributed import get_rank
from check_support import machine_loaded


def waits_for_a_message_never_sent(model, train_set, val_set, checkpoint_path, *, epochs,
                                   batch_size, seed):
    model(torch.stack([train_set[0][0], train_set[1][0]]))  # it starts, and makes progress
    if get_rank() == 0:
        dist.recv(torch.zeros(1), src=1)  # rank 1 never sends: rank 0 waits for ever
    return 0.5


dist = torch.distributed


def test_the_reference_passes_on_a_loaded_machine(capsys):
    with machine_loaded():
        check_validation_loss(answers.reference)
    assert capsys.readouterr().out.startswith("✓ ")


def test_a_hang_is_reported_soon_after_progress_stops(monkeypatch):
    monkeypatch.setattr(ex08, "STALL_S", 5.0)
    monkeypatch.setattr(ex08, "STALL_RATIO", 0.5)
    start = time.monotonic()
    with pytest.raises(CheckFailure) as caught:
        check_validation_loss(waits_for_a_message_never_sent)
    elapsed = time.monotonic() - start
    assert "stopped making progress" in caught.value.what, caught.value.line()
    assert "outside `if rank == 0:`" in caught.value.hint
    assert elapsed < ex08.LAUNCH_TIMEOUT_S / 4, elapsed
