"""The checks of exercise 03 pass correct answers, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake.

Every test runs over the seeds of the check's own data (the model and the micro-batches):
CHECK_SEEDS of them, 2 by default; CHECK_SEEDS=16 is the validation run. With 16 seeds every
correct answer passed on every seed and every wrong answer failed on every seed, with the hint
asserted below.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import course_lib
from course_lib.checks._core import NotImplementedYet
from course_lib.checks.ex03 import (
    check_accumulate,
    check_train_step,
    check_train_step_with_scaler,
    hint,
)

from check_support import fails_with, passes, stub


def test_hint_answers_every_question(capsys):
    for question in ("a", "b", "c"):
        hint(question)
    assert capsys.readouterr().out.count("💡") == 3


# ---- the reference answers and a family of wrong ones --------------------------------------------


def accumulate(model, window, loss_fn):
    total = sum(len(targets) for _, targets in window)
    window_loss = 0.0
    for inputs, targets in window:
        loss = loss_fn(model(inputs), targets) * (len(targets) / total)
        loss.backward()
        window_loss += loss.item()
    return window_loss


def make_train_step(*, weight="items", zero_grad="after", step_per_batch=False, clip="unscaled",
                    scheduler_on_skip=False, update_per_batch=False, use_scaler=True,
                    scheduler_per_batch=False, delegate=False):
    """A train_step with one mistake chosen by keyword (the defaults are the correct answer)."""

    def train_step(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                   grad_clip=0.0):
        if delegate:
            return course_lib.train_step(model, window, loss_fn, optimizer, scheduler=scheduler,
                                         scaler=scaler, grad_clip=grad_clip).loss
        if not use_scaler:
            scaler = None
        scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
        total = sum(len(targets) for _, targets in window)
        window_loss = 0.0
        for inputs, targets in window:
            if zero_grad == "per batch":
                optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            if weight == "items":
                loss = loss * (len(targets) / total)
            elif weight == "configured":
                loss = loss / len(window)
            scaler.scale(loss).backward()
            window_loss += loss.item()
            if step_per_batch:
                scaler.step(optimizer)
            if update_per_batch:
                scaler.update()
            if scheduler_per_batch and scheduler is not None:
                scheduler.step()
        if zero_grad == "before step":
            optimizer.zero_grad()
        if grad_clip > 0:
            if clip == "unscaled":
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        if not step_per_batch:
            scaler.step(optimizer)
        if not update_per_batch:
            scaler.update()
        if zero_grad == "after":
            optimizer.zero_grad(set_to_none=True)
        skipped = scale_before is not None and scaler.get_scale() < scale_before
        if scheduler is not None and not scheduler_per_batch and (not skipped or scheduler_on_skip):
            scheduler.step()
        return window_loss

    return train_step


train_step = make_train_step()


def train_step_stepping_the_optimizer_directly(model, window, loss_fn, optimizer, *,
                                               scheduler=None, scaler=None, grad_clip=0.0):
    """Correct too: without a scaler, the plain optimizer calls."""
    if scaler is not None:
        return train_step(model, window, loss_fn, optimizer, scheduler=scheduler, scaler=scaler,
                          grad_clip=grad_clip)
    loss = accumulate(model, window, loss_fn)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None:
        scheduler.step()
    return torch.tensor(loss)


# ---- (a) accumulate ------------------------------------------------------------------------------


def test_accumulate_check_passes_a_correct_answer(capsys):
    passes(check_accumulate, accumulate, capsys)


def test_accumulate_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_accumulate(stub)


def test_accumulate_check_rejects_not_dividing_the_loss():
    def summed(model, window, loss_fn):
        for inputs, targets in window:
            loss_fn(model(inputs), targets).backward()
        return 0.0

    fails_with(check_accumulate, summed, hint_text="divide each micro-batch's loss")


def test_accumulate_check_rejects_dividing_by_the_configured_count():
    def per_micro_batch(model, window, loss_fn):
        total = 0.0
        for inputs, targets in window:
            loss = loss_fn(model(inputs), targets) / len(window)
            loss.backward()
            total += loss.item()
        return total

    fails_with(check_accumulate, per_micro_batch, hint_text="a short micro-batch must count less",
               what="a short last window")


def test_accumulate_check_rejects_clearing_gradients_between_micro_batches():
    def clears(model, window, loss_fn):
        total = sum(len(t) for _, t in window)
        result = 0.0
        for inputs, targets in window:
            model.zero_grad()
            loss = loss_fn(model(inputs), targets) * len(targets) / total
            loss.backward()
            result += loss.item()
        return result

    fails_with(check_accumulate, clears, hint_text="do not clear the gradients between")


def test_accumulate_check_rejects_delegating_to_the_library():
    def delegates(model, window, loss_fn):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        return course_lib.train_step(model, window, loss_fn, optimizer).loss

    fails_with(check_accumulate, delegates, hint_text="write the step yourself",
               what="course_lib.loop.train_step")


def test_accumulate_check_rejects_a_wrong_returned_loss():
    def mean_of_means(model, window, loss_fn):
        accumulate(model, window, loss_fn)
        with torch.no_grad():
            return sum(loss_fn(model(x), y).item() for x, y in window) / len(window)

    fails_with(check_accumulate, mean_of_means, hint_text="add up each micro-batch's weighted loss",
               what="returned loss")


def test_accumulate_check_rejects_the_last_window_only():
    def forgets_backward(model, window, loss_fn):
        with torch.no_grad():
            total = sum(len(y) for _, y in window)
            return sum(loss_fn(model(x), y) * len(y) for x, y in window) / total

    fails_with(check_accumulate, forgets_backward, hint_text="call backward()", what="all zero")


def concatenating(model, window, loss_fn):
    inputs = torch.cat([x for x, _ in window])
    targets = torch.cat([y for _, y in window])
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    return loss


def test_accumulate_check_rejects_one_forward_over_the_concatenated_window():
    fails_with(check_accumulate, concatenating, hint_text="run each micro-batch on its own")


# ---- (b) train_step ------------------------------------------------------------------------------


def test_train_step_check_passes_correct_answers(capsys):
    passes(check_train_step, train_step, capsys)
    passes(check_train_step, train_step_stepping_the_optimizer_directly, capsys)


def test_train_step_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_train_step(stub)


@pytest.mark.parametrize("mistake, hint_text", [
    ({"weight": "none"}, "divide each micro-batch's loss"),
    ({"weight": "configured"}, "divide by the real count, not the configured one"),
    ({"zero_grad": "per batch"}, "do not clear the gradients between micro-batches"),
    ({"zero_grad": "before step"}, "call backward() on each micro-batch"),
    ({"zero_grad": "never"}, "call optimizer.zero_grad() after the optimizer step"),
    ({"step_per_batch": True}, "step once per window"),
    ({"scheduler_per_batch": True}, "not per micro-batch"),
    ({"delegate": True}, "write the step yourself"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_train_step_check_rejects(mistake, hint_text):
    fails_with(check_train_step, make_train_step(**mistake), hint_text=hint_text)


def test_train_step_check_rejects_one_forward_over_the_concatenated_window():
    def big_batch(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                  grad_clip=0.0):
        loss = concatenating(model, window, loss_fn)
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        return loss

    fails_with(check_train_step, big_batch, hint_text="run each micro-batch on its own")


def test_train_step_check_rejects_not_clipping():
    def never_clips(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                    grad_clip=0.0):
        return train_step(model, window, loss_fn, optimizer, scheduler=scheduler, scaler=scaler)

    fails_with(check_train_step, never_clips, hint_text="clip with nn.utils.clip_grad_norm_",
               what="unclipped")


def test_train_step_check_rejects_ignoring_the_scheduler():
    def no_schedule(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                    grad_clip=0.0):
        return train_step(model, window, loss_fn, optimizer, scaler=scaler, grad_clip=grad_clip)

    fails_with(check_train_step, no_schedule, hint_text="when a scheduler is given")


# ---- (c) train_step with a scaler ----------------------------------------------------------------


def test_scaler_check_passes_a_correct_answer(capsys):
    passes(check_train_step_with_scaler, train_step, capsys)


def test_scaler_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_train_step_with_scaler(stub)


@pytest.mark.parametrize("mistake, hint_text", [
    ({"clip": "scaled"}, "call scaler.unscale_(optimizer) before clipping"),
    ({"scheduler_on_skip": True}, "the schedule must wait"),
    ({"update_per_batch": True}, "never per micro-batch"),
    ({"use_scaler": False}, "scaler.scale(...) before"),
    ({"step_per_batch": True}, "step once per window"),
    ({"weight": "configured"}, "divide by the real count, not the configured one"),
    ({"delegate": True}, "write the step yourself"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_scaler_check_rejects(mistake, hint_text):
    fails_with(check_train_step_with_scaler, make_train_step(**mistake), hint_text=hint_text)


def test_scaler_check_rejects_stepping_the_optimizer_past_the_scaler():
    def plain_step(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                   grad_clip=0.0):
        total = sum(len(t) for _, t in window)
        loss = 0.0
        for inputs, targets in window:
            part = loss_fn(model(inputs), targets) * len(targets) / total
            scaler.scale(part).backward()
            loss += part.item()
        scaler.unscale_(optimizer)
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()  # steps even when the gradients overflowed
        scaler.update()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        return loss

    fails_with(check_train_step_with_scaler, plain_step, hint_text="it skips the step")
