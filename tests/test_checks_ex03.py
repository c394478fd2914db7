"""The checks of exercise 03 pass correct answers, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake.

Every test runs over the seeds of the check's own data (the model and the micro-batches):
CHECK_SEEDS of them, 2 by default; CHECK_SEEDS=16 is the validation run. With 16 seeds every
correct answer passed on every seed and every wrong answer failed on every seed, with the hint
asserted below.

Corpus sizes (wrong answers per check), before the blind spots of dtypes, tolerances, defaults,
a window read once (a stream) and scale growth were closed -> now: check_accumulate 7 -> 21,
check_train_step 11 -> 19, check_train_step_with_scaler 8 -> 13.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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
    examples, loss_sum = 0, 0.0
    for inputs, targets in window:
        loss = loss_fn(model(inputs), targets) * len(targets)
        loss.backward()
        examples += len(targets)
        loss_sum += loss.item()
    for parameter in model.parameters():
        if parameter.grad is not None:
            parameter.grad /= examples
    return loss_sum / examples


def accumulate_relative_to_the_first(model, window, loss_fn):
    """Correct too (course_lib's way): weight by examples / the first micro-batch's, rescale."""
    first = examples = 0
    loss_sum = 0.0
    for inputs, targets in window:
        first = first or len(targets)
        loss = loss_fn(model(inputs), targets) * (len(targets) / first)
        loss.backward()
        examples += len(targets)
        loss_sum += loss.item()
    for parameter in model.parameters():
        parameter.grad.mul_(first / examples)
    return torch.tensor(loss_sum * first / examples)


def make_accumulate(*, weight="examples", rescale="examples", backward="each", loss="given",
                    convert=None, autocast=False, returned="mean", read="stream"):
    """An accumulate with one mistake chosen by keyword (the defaults are the correct answer)."""

    def accumulate(model, window, loss_fn):
        if convert is not None:
            model.to(convert)
        if read == "list":
            window = list(window)
        elif read == "twice":
            window_examples = sum(len(t) for _, t in window)  # reads the stream once...
        elif read == "len":
            len(window)
        examples, micro_batches, loss_sum, pending = 0, 0, 0.0, 0.0
        for inputs, targets in window:
            inputs = inputs.to(convert) if convert is not None else inputs
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(inputs)
            else:
                logits = model(inputs)
            if loss == "cross_entropy":
                micro_loss = F.cross_entropy(logits, targets)
            else:
                micro_loss = loss_fn(logits, targets)
            if weight == "examples":
                micro_loss = micro_loss * len(targets)
            if backward == "each":
                micro_loss.backward()
            else:
                pending = pending + micro_loss
            examples += len(targets)
            micro_batches += 1
            loss_sum = loss_sum + (micro_loss if returned == "graph" else micro_loss.item())
        if backward == "once":
            pending.backward()
        divisor = {"examples": examples, "micro_batches": micro_batches, "none": 1,
                   "float16": float(torch.tensor(1 / examples, dtype=torch.float16)) ** -1}[rescale]
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad /= divisor
        if returned == "sum":
            return loss_sum
        if returned == "per micro-batch":
            return loss_sum / micro_batches
        if returned == "rounded":
            return round(loss_sum / examples, 4)
        return loss_sum / examples

    return accumulate


def make_train_step(*, weight="items", zero_grad="after", step_per_batch=False, clip="unscaled",
                    scheduler_on_skip=False, update_per_batch=False, use_scaler=True,
                    scheduler_per_batch=False, delegate=False, skipped_when="went down",
                    scheduler_when="when given", clip_when="positive", scaler_when="given",
                    loss="given", convert=None):
    """A train_step with one mistake chosen by keyword (the defaults are the correct answer)."""

    def train_step(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                   grad_clip=0.0):
        if delegate:
            return course_lib.train_step(model, list(window), loss_fn, optimizer,
                                         scheduler=scheduler, scaler=scaler,
                                         grad_clip=grad_clip).loss
        if convert is not None:
            model.to(convert)
        if not use_scaler:
            scaler = None
        if scaler_when == "given":
            scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
        examples, micro_batches, window_loss = 0, 0, 0.0
        for inputs, targets in window:
            if zero_grad == "per batch":
                optimizer.zero_grad()
            logits = model(inputs.to(convert) if convert is not None else inputs)
            if loss == "cross_entropy":
                micro_loss = F.cross_entropy(logits, targets)
            else:
                micro_loss = loss_fn(logits, targets)
            if weight == "items":
                micro_loss = micro_loss * len(targets)
            scaler.scale(micro_loss).backward()
            examples += len(targets)
            micro_batches += 1
            window_loss += micro_loss.item()
            if step_per_batch:
                scaler.step(optimizer)
            if update_per_batch:
                scaler.update()
            if scheduler_per_batch and scheduler is not None:
                scheduler.step()
        if zero_grad == "before step":
            optimizer.zero_grad()
        divisor = examples if weight == "items" else micro_batches if weight == "configured" else 1
        if clip == "unscaled" and grad_clip > 0 and scaler.is_enabled():
            scaler.unscale_(optimizer)
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad /= divisor
        if (grad_clip > 0) if clip_when == "positive" else (grad_clip is not None):
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        if not step_per_batch:
            scaler.step(optimizer)
        if not update_per_batch:
            scaler.update()
        if zero_grad == "after":
            optimizer.zero_grad(set_to_none=True)
        skipped = False
        if scale_before is not None:
            scale = scaler.get_scale()
            skipped = {"went down": scale < scale_before, "changed": scale != scale_before,
                       "not up": scale <= scale_before,
                       "below the initial scale": scale < scaler._init_scale,
                       "growth tracker reset": scaler._get_growth_tracker() == 0}[skipped_when]
        if scheduler_when == "always" or (
                scheduler is not None and not scheduler_per_batch
                and (not skipped or scheduler_on_skip)):
            scheduler.step()
        return window_loss / (examples if weight == "items" else micro_batches)

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


def train_step_detecting_the_skip_by_finite_gradients(model, window, loss_fn, optimizer, *,
                                                      scheduler=None, scaler=None, grad_clip=0.0):
    """Correct too: after unscale_, inf/NaN gradients are exactly what makes the scaler skip."""
    examples, loss_sum = 0, 0.0
    for inputs, targets in window:
        loss = loss_fn(model(inputs), targets) * len(targets)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        examples += len(targets)
        loss_sum += loss.item()
    if scaler is not None:
        scaler.unscale_(optimizer)
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for parameter in model.parameters():
        parameter.grad /= examples
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None and finite:
        scheduler.step()
    return loss_sum / examples


# ---- (a) accumulate ------------------------------------------------------------------------------


def test_accumulate_check_passes_correct_answers(capsys):
    passes(check_accumulate, accumulate, capsys)
    passes(check_accumulate, accumulate_relative_to_the_first, capsys)


def test_accumulate_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_accumulate(stub)


@pytest.mark.parametrize("mistake, hint_text, what", [
    # weighting
    ({"weight": "none", "rescale": "none"}, "the sum grows with the number of micro-batches",
     "SUM"),
    ({"weight": "none"}, "turn it into their sum", "mean losses added up"),
    ({"rescale": "none"}, "divide the gradients by it", "per-example losses"),
    ({"rescale": "micro_batches"}, "the mean is over examples, not micro-batches", "number of"),
    ({"weight": "none", "rescale": "micro_batches", "returned": "per micro-batch"},
     "a short micro-batch must count less", "same weight"),
    ({"loss": "cross_entropy"}, "loss_fn(logits, targets)", "not of the loss_fn given"),
    # the window is a stream
    ({"read": "list"}, "keeping the whole window is what accumulation avoids", "drew"),
    ({"read": "twice"}, "it can be read once", "read twice"),
    ({"read": "len"}, "count while you go", "len()"),
    ({"backward": "once"}, "one backward over the sum of the losses", "backward pass"),
    # dtypes and tolerances
    ({"convert": torch.float64}, "do not convert the model", "float64"),
    ({"convert": torch.bfloat16}, "do not convert the model", "bfloat16"),
    ({"autocast": True}, "no autocast here", "bfloat16"),
    ({"rescale": "float16"}, "each micro-batch counts in proportion", "differ"),
    ({"returned": "graph"}, "keeps every micro-batch's graph alive", "holds its graph"),
    ({"returned": "sum"}, "divide the returned loss", "returned loss"),
    ({"returned": "rounded"}, "every example counts once", "returned loss"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_accumulate_check_rejects(mistake, hint_text, what):
    fails_with(check_accumulate, make_accumulate(**mistake), hint_text=hint_text, what=what)


def test_accumulate_check_rejects_clearing_gradients_between_micro_batches():
    def clears(model, window, loss_fn):
        examples, result = 0, 0.0
        for inputs, targets in window:
            model.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            examples += 1
            result += loss.item()
        return result / examples

    fails_with(check_accumulate, clears, hint_text="do not clear the gradients between")


def test_accumulate_check_rejects_delegating_to_the_library():
    def delegates(model, window, loss_fn):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        return course_lib.train_step(model, list(window), loss_fn, optimizer).loss

    fails_with(check_accumulate, delegates, hint_text="write the step yourself",
               what="course_lib.loop.train_step")


def test_accumulate_check_rejects_forgetting_backward():
    def forgets_backward(model, window, loss_fn):
        with torch.no_grad():
            examples, total = 0, 0.0
            for x, y in window:
                model(x)
                examples += len(y)
                total += float(loss_fn(model(x), y)) * len(y)
            return total / examples

    fails_with(check_accumulate, forgets_backward,
               hint_text="call backward() on each micro-batch's loss")


def test_accumulate_check_rejects_one_forward_over_the_concatenated_window():
    def concatenating(model, window, loss_fn):
        window = list(window)
        inputs = torch.cat([x for x, _ in window])
        targets = torch.cat([y for _, y in window])
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        return loss.item()

    fails_with(check_accumulate, concatenating, hint_text="run each micro-batch on its own")


# ---- (b) train_step ------------------------------------------------------------------------------


def test_train_step_check_passes_correct_answers(capsys):
    passes(check_train_step, train_step, capsys)
    passes(check_train_step, train_step_stepping_the_optimizer_directly, capsys)
    passes(check_train_step, train_step_detecting_the_skip_by_finite_gradients, capsys)


def test_train_step_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_train_step(stub)


@pytest.mark.parametrize("mistake, hint_text", [
    ({"weight": "none"}, "the sum grows with the number of micro-batches"),
    ({"weight": "configured"}, "divide by the real count, not the configured one"),
    ({"zero_grad": "per batch"}, "do not clear the gradients between micro-batches"),
    ({"zero_grad": "before step"}, "call backward() on each micro-batch"),
    ({"zero_grad": "never"}, "call optimizer.zero_grad() after the optimizer step"),
    ({"step_per_batch": True}, "step once per window"),
    ({"scheduler_per_batch": True}, "not per micro-batch"),
    ({"delegate": True}, "write the step yourself"),
    # the defaults the contract names, and a loss other than cross-entropy
    ({"scheduler_when": "always"}, "use each only when it is given"),
    ({"scaler_when": "always"}, "use each only when it is given"),
    ({"clip_when": "not None"}, "grad_clip=0.0, the default, means: do not clip"),
    ({"loss": "cross_entropy"}, "loss_fn(logits, targets)"),
    # dtypes
    ({"convert": torch.float64}, "do not convert the model"),
    ({"convert": torch.bfloat16}, "do not convert the model"),
    ({"convert": torch.float16}, "do not convert the model"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_train_step_check_rejects(mistake, hint_text):
    fails_with(check_train_step, make_train_step(**mistake), hint_text=hint_text)


def test_train_step_check_rejects_one_forward_over_the_concatenated_window():
    def big_batch(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                  grad_clip=0.0):
        window = list(window)
        inputs = torch.cat([x for x, _ in window])
        targets = torch.cat([y for _, y in window])
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        return loss.item()

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


def test_train_step_check_rejects_a_total_carried_over_from_the_previous_window():
    state = {"examples": 0}

    def remembers(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                  grad_clip=0.0):
        loss_sum = 0.0
        for inputs, targets in window:
            loss = loss_fn(model(inputs), targets) * len(targets)
            loss.backward()
            state["examples"] += len(targets)  # never reset: fine for the first window only
            loss_sum += loss.item()
        for parameter in model.parameters():
            parameter.grad /= state["examples"]
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        return loss_sum / state["examples"]

    for seed in range(2):
        state["examples"] = 0
        with pytest.raises(AssertionError) as info:
            check_train_step(remembers, seed=seed)
        assert "differ from the concatenated batch's" in info.value.what, info.value.line()
        assert "accumulate as in (a)" in info.value.hint, info.value.line()


# ---- (c) train_step with a scaler ----------------------------------------------------------------


def test_scaler_check_passes_correct_answers(capsys):
    passes(check_train_step_with_scaler, train_step, capsys)
    passes(check_train_step_with_scaler, train_step_detecting_the_skip_by_finite_gradients,
           capsys)


def test_scaler_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_train_step_with_scaler(stub)


@pytest.mark.parametrize("mistake, hint_text", [
    ({"clip": "scaled"}, "call scaler.unscale_(optimizer) before clipping"),
    ({"scheduler_on_skip": True}, "the schedule must wait"),
    ({"update_per_batch": True}, "never per micro-batch"),
    ({"use_scaler": False}, "scaler.scale(...)"),
    ({"step_per_batch": True}, "step once per window"),
    ({"weight": "configured"}, "divide by the real count, not the configured one"),
    ({"delegate": True}, "write the step yourself"),
    # scale growth: only a scale that went down means a skipped step
    ({"skipped_when": "changed"}, "Only a scale that went DOWN"),
    ({"skipped_when": "growth tracker reset"}, "Only a scale that went DOWN"),
    ({"skipped_when": "below the initial scale"}, "the schedule must wait"),
    ({"skipped_when": "not up"}, "when a scheduler is given"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_scaler_check_rejects(mistake, hint_text):
    fails_with(check_train_step_with_scaler, make_train_step(**mistake), hint_text=hint_text)


def test_scaler_check_rejects_stepping_the_optimizer_past_the_scaler():
    def plain_step(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
                   grad_clip=0.0):
        examples, loss = 0, 0.0
        for inputs, targets in window:
            part = loss_fn(model(inputs), targets) * len(targets)
            scaler.scale(part).backward()
            examples += len(targets)
            loss += part.item()
        scaler.unscale_(optimizer)
        for parameter in model.parameters():
            parameter.grad /= examples
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()  # steps even when the gradients overflowed
        scaler.update()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        return loss / examples

    fails_with(check_train_step_with_scaler, plain_step, hint_text="it skips the step")


def test_scaler_check_rejects_a_scheduler_held_for_good_after_one_skip():
    state = {"skipped": False}

    def sticky(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None, grad_clip=0.0):
        before = scaler.get_scale()
        result = train_step(model, window, loss_fn, optimizer, scaler=scaler, grad_clip=grad_clip)
        state["skipped"] = state["skipped"] or scaler.get_scale() < before
        if scheduler is not None and not state["skipped"]:
            scheduler.step()
        return result

    for seed in range(2):
        state["skipped"] = False
        with pytest.raises(AssertionError) as info:
            check_train_step_with_scaler(sticky, seed=seed)
        assert "the scheduler did not step" in info.value.what, info.value.line()
        assert "Only a scale that went DOWN" in info.value.hint, info.value.line()
