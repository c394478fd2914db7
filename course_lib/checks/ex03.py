"""Checks for exercise 03, one accumulated optimizer step (introduced in exercise 03).

The exercise: (a) `accumulate`, the forward and backward passes of one window of micro-batches of
unequal sizes, leaving the gradient of the mean loss over all the window's examples; (b)
`train_step`, one optimizer step over a window, with optional clipping and a scheduler; (c) the
same `train_step` with a gradient scaler, whose skipped steps must hold the schedule.

The checks never take the learner's word for what happened. They build the model, the micro-batches,
the optimizer, the scheduler and the scaler themselves; an optimizer-step pre-hook records the
gradients each step used, the scheduler and the scaler count their calls, a window with an
infinite input forces the scaler to skip, and every gradient is compared with a reference computed
on the concatenated batch. Calls into `course_lib.loop` (its `train_step` and helpers) while the
learner's code runs are refused: writing the step is the exercise.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks._core import CallWatch, CheckFailure, call_learner, make_hint, passed

hint = make_hint({
    "a": "every micro-batch's mean loss must count in proportion to its examples: multiply it by "
         "(examples in this micro-batch) / (examples in the whole window) before backward(), and "
         "never clear the gradients between micro-batches.",
    "b": "accumulate first, then clip (if grad_clip > 0), then exactly one optimizer.step(), then "
         "clear the gradients, then one scheduler.step().",
    "c": "scale each weighted loss before backward(); call scaler.unscale_(optimizer) before you "
         "clip; scaler.step(optimizer), then scaler.update() once. The scale went down exactly "
         "when the step was skipped: compare scaler.get_scale() before and after.",
})

# The hint of a gradient mismatch that none of the usual mistakes explains, per question.
_HINTS = {
    "a": "the gradient of the window must be that of one batch holding all its examples: weight "
         "each micro-batch's mean loss by its share of the window's examples",
    "b": "accumulate as in (a), clip the accumulated gradients, then step once",
    "c": "scale the weighted loss with scaler.scale(...) before backward(), and unscale_ before "
         "clipping",
}

# The learner's sums and the reference's differ only in rounding (float32, a few dozen terms):
# about 1e-7 of the largest gradient. Every wrong answer of tests/test_checks_ex03.py lands far
# outside this tolerance on each of 16 seeds.
GRAD_TOLERANCE = 1e-5  # relative to the largest reference gradient
FEATURES, CLASSES = 6, 4
WINDOWS = {  # examples per micro-batch
    "a window of equal micro-batches": [8, 8, 8],
    "a short last window": [8, 8, 3],
    "a window of unequal micro-batches": [5, 12, 2, 7],
}
INIT_SCALE = 2.0 ** 12


# ---- what the checks build -----------------------------------------------------------------------


def _model(seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.7)
    return model


def _window(seed: int, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches whose mean losses differ a lot: weighting them wrongly shows."""
    generator = torch.Generator().manual_seed(100 + seed)
    window = []
    for index, size in enumerate(sizes):
        inputs = torch.randn(size, FEATURES, generator=generator) * (1 + index)
        targets = torch.randint(0, CLASSES, (size,), generator=generator)
        window.append((inputs, targets))
    return window


def _gradients(model: nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for p in model.parameters()]


def _reference(model: nn.Module, window):
    """(the concatenated batch's gradients, each micro-batch's own gradients of its mean loss,
    the concatenated batch's mean loss)."""
    copy = _copy(model)
    inputs = torch.cat([x for x, _ in window])
    targets = torch.cat([y for _, y in window])
    loss = F.cross_entropy(copy(inputs), targets)
    loss.backward()
    whole = _gradients(copy)
    parts = []
    for x, y in window:
        copy.zero_grad(set_to_none=True)
        F.cross_entropy(copy(x), y).backward()
        parts.append(_gradients(copy))
    return whole, parts, loss.item()


def _copy(model: nn.Module) -> nn.Module:
    copy = _model(0)
    copy.load_state_dict(model.state_dict())
    return copy


def _combine(parts, weights) -> list[torch.Tensor]:
    return [sum(w * part[i] for w, part in zip(weights, parts)) for i in range(len(parts[0]))]


def _scale(gradients, factor: float) -> list[torch.Tensor]:
    return [g * factor for g in gradients]


def _norm(gradients) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in gradients)))


def _same(got, expected) -> bool:
    largest = max(float(g.abs().max()) for g in expected)
    allowed = GRAD_TOLERANCE * max(largest, 1e-3)
    return all(torch.isfinite(a).all() and (a - b).abs().max() <= allowed
               for a, b in zip(got, expected))


def _largest_difference(got, expected) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(got, expected))


# ---- watching the learner's code -----------------------------------------------------------------


@contextmanager
def _watch_forwards(model: nn.Module):
    """Record the number of examples of every forward pass of `model` while the block runs."""
    sizes = []
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        yield sizes
    finally:
        handle.remove()


def _refuse_one_big_forward(forwards: list[int], sizes: list[int], name: str) -> None:
    """Accumulation exists because the whole window does not fit: one forward per micro-batch."""
    if forwards and max(forwards) > max(sizes):
        raise CheckFailure(f"{name} ran the model on {max(forwards)} examples at once",
                           expected=f"micro-batches of at most {max(sizes)}",
                           hint="run each micro-batch on its own, as it comes: the whole window "
                                "is what does not fit in memory")


def _refuse_delegation(called: list[str], name: str) -> None:
    if called:
        raise CheckFailure(f"{name} called {called[0]}",
                           hint="this exercise asks you to write the step yourself; use torch "
                                "(forward, backward, the optimizer) directly, not course_lib.loop")


def _run(fn, name: str, *args, **kwargs):
    with CallWatch(modules=("course_lib.loop",)) as calls:
        result = call_learner(fn, *args, name=name, **kwargs)
    _refuse_delegation(calls.called, name)
    return result


def _loss_value(value, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise CheckFailure(f"{name} should return the window's mean loss, one number",
                       got=type(value).__name__, hint="return the mean loss over all the window's "
                       "examples, as a float or a one-element tensor")


def _diagnose_gradients(got, parts, sizes, what: str, hint_key: str) -> CheckFailure:
    """Name the mistake a set of gradients shows, by comparing with the usual wrong weightings."""
    total = sum(sizes)
    wrong = [
        (_combine(parts, [1.0] * len(parts)),
         f"{what} are the SUM of the micro-batches' gradients",
         "divide each micro-batch's loss before backward(): by itself the sum grows with the "
         "number of micro-batches"),
        (_combine(parts, [1.0 / len(parts)] * len(parts)),
         f"{what} give every micro-batch the same weight (loss / number of micro-batches)",
         "weight each micro-batch by its examples / the window's examples: a short micro-batch "
         "must count less (divide by the real count, not the configured one)"),
        (_scale(parts[-1], 1.0), f"{what} are those of the last micro-batch alone",
         "do not clear the gradients between micro-batches: backward() adds to .grad, and that is "
         "the accumulation"),
        (_scale(parts[-1], sizes[-1] / total), f"{what} are those of the last micro-batch alone",
         "do not clear the gradients between micro-batches: backward() adds to .grad, and that is "
         "the accumulation"),
    ]
    for candidate, message, hint_text in wrong:
        if _same(got, candidate):
            return CheckFailure(message, hint=hint_text)
    if _norm(got) == 0:
        return CheckFailure(f"{what} are all zero", hint="call backward() on each micro-batch's "
                            "weighted loss, and clear gradients only after the optimizer step")
    reference = _combine(parts, [n / total for n in sizes])
    return CheckFailure(f"{what} differ from the concatenated batch's",
                        expected=f"within {GRAD_TOLERANCE:g} of the largest gradient",
                        got=f"a largest difference of {_largest_difference(got, reference):.3g}",
                        hint=_HINTS[hint_key])


# ---- (a) accumulate ------------------------------------------------------------------------------


def check_accumulate(accumulate, seed: int = 0) -> None:
    """accumulate(model, window, loss_fn) -> the mean loss over the window's examples; afterwards
    each parameter's .grad holds the gradient of that mean (no optimizer step)."""
    for description, sizes in WINDOWS.items():
        model = _model(seed)
        window = _window(seed, sizes)
        whole, parts, loss = _reference(model, window)
        model.zero_grad(set_to_none=True)
        with _watch_forwards(model) as forwards:
            result = _run(accumulate, "accumulate", model, window, nn.CrossEntropyLoss())
        _refuse_one_big_forward(forwards, sizes, "accumulate")
        got = _gradients(model)
        if not _same(got, whole):
            failure = _diagnose_gradients(got, parts, sizes, "the gradients", "a")
            where = f"for {description} ({'+'.join(map(str, sizes))} examples), "
            raise CheckFailure(where + failure.what, failure.expected, failure.got, failure.hint)
        value = _loss_value(result, "accumulate")
        if not math.isclose(value, loss, rel_tol=1e-5, abs_tol=1e-6):
            raise CheckFailure(f"for {description}, the returned loss is not the window's mean",
                               expected=f"{loss:.5f}", got=f"{value:.5f}",
                               hint="add up each micro-batch's weighted loss (detached), the same "
                                    "weights as for backward()")
    passed("accumulate leaves the gradients of one batch holding the whole window (largest "
           f"difference under {GRAD_TOLERANCE:g} of the largest gradient), equal and unequal "
           "micro-batches and a short last window alike")


# ---- (b) and (c) train_step ----------------------------------------------------------------------


class _CountingScheduler(torch.optim.lr_scheduler.LambdaLR):
    """A schedule that halves the LR at each step, and counts its steps."""

    def __init__(self, optimizer):
        self.calls = 0
        super().__init__(optimizer, lambda step: 0.5 ** step)
        self.calls = 0  # the constructor's own initial step is not the learner's

    def step(self, *args, **kwargs):
        self.calls += 1
        with warnings.catch_warnings():  # the check reports a misplaced step in its own words
            warnings.simplefilter("ignore")
            return super().step(*args, **kwargs)


class _WatchedScaler(torch.amp.GradScaler):
    """A CPU GradScaler that records the order of its calls and refuses an update without a step."""

    def __init__(self):
        super().__init__("cpu", init_scale=INIT_SCALE, growth_interval=1000)
        self.calls = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        if "step" in self.calls[self._last_update() + 1:]:
            raise CheckFailure("scaler.step(optimizer) ran twice without an update in between",
                               hint="step once per window, after the loop over the micro-batches, "
                                    "then update the scaler once")
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        if "step" not in self.calls[self._last_update() + 1:]:
            raise CheckFailure("scaler.update() ran without a scaler.step(optimizer) before it",
                               hint="step through scaler.step(optimizer) (it skips the step when "
                                    "the gradients hold inf or NaN), then call scaler.update() "
                                    "once per optimizer step, never per micro-batch")
        self.calls.append("update")
        return super().update(new_scale)

    def _last_update(self) -> int:
        return max((i for i, call in enumerate(self.calls) if call == "update"), default=-1)


class _Run:
    """One call of the learner's train_step on objects the check built, and what it observed."""

    def __init__(self, train_step, seed, sizes, *, grad_clip=0.0, scaler=False, poison=False):
        self.model = _model(seed)
        self.window = _window(seed, sizes)
        if poison:  # an infinite input: the gradients hold inf/NaN, as after an fp16 overflow
            self.window[1][0][0, 0] = math.inf
        self.whole, self.parts, self.loss = _reference(self.model, self.window)
        self.before = [p.detach().clone() for p in self.model.parameters()]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = _CountingScheduler(self.optimizer)
        self.scaler = _WatchedScaler() if scaler else None
        self.steps = []  # the gradients each optimizer step used
        self.optimizer.register_step_pre_hook(
            lambda optimizer, args, kwargs: self.steps.append(_gradients(self.model)))
        kwargs = {"scheduler": self.scheduler, "grad_clip": grad_clip}
        if scaler:
            kwargs["scaler"] = self.scaler
        with _watch_forwards(self.model) as forwards:
            self.result = _run(train_step, "train_step", self.model, self.window,
                               nn.CrossEntropyLoss(), self.optimizer, **kwargs)
        _refuse_one_big_forward(forwards, sizes, "train_step")
        self.after = _gradients(self.model)


def _expected_clipped(whole, grad_clip: float) -> list[torch.Tensor]:
    if grad_clip <= 0:
        return whole
    factor = min(1.0, grad_clip / (_norm(whole) + 1e-6))  # clip_grad_norm_'s own formula
    return _scale(whole, factor)


def _check_one_step(run: _Run, description: str, grad_clip: float, hint_key: str) -> None:
    steps = len(run.steps)
    if steps == 0:
        raise CheckFailure(f"for {description}, the optimizer never stepped",
                           hint="call optimizer.step() (or scaler.step(optimizer)) once, after "
                                "the last micro-batch's backward()")
    if steps > 1:
        per_batch = steps == len(run.window)
        raise CheckFailure(f"for {description}, the optimizer stepped {steps} times",
                           expected="1 step per window",
                           hint="step once per window, after the loop over the micro-batches"
                           if per_batch else "exactly one optimizer step per call")
    used = run.steps[0]
    expected = _expected_clipped(run.whole, grad_clip)
    if not _same(used, expected):
        if grad_clip > 0 and _same(used, run.whole):
            raise CheckFailure(f"for {description}, the step used unclipped gradients",
                               expected=f"a norm of {grad_clip:g}", got=f"{_norm(used):.4g}",
                               hint="clip with nn.utils.clip_grad_norm_(model.parameters(), "
                                    "grad_clip) between the backward passes and the step")
        if run.scaler is not None and grad_clip > 0 and math.isclose(
                _norm(used), grad_clip / INIT_SCALE, rel_tol=1e-3):
            raise CheckFailure(f"for {description}, the gradients were clipped while still scaled",
                               expected=f"a norm of {grad_clip:g}", got=f"{_norm(used):.3g}",
                               hint="call scaler.unscale_(optimizer) before clipping: clipping "
                                    "scaled gradients clips them about scale times too hard")
        if run.scaler is not None and _same(used, _scale(expected, 1 / INIT_SCALE)):
            raise CheckFailure(f"for {description}, the step used gradients divided by the scale",
                               hint="pass each weighted loss through scaler.scale(...) before "
                                    "backward(): scaler.step unscales gradients that were scaled")
        if run.scaler is not None and _same(used, _scale(expected, INIT_SCALE)):
            raise CheckFailure(f"for {description}, the step used gradients still multiplied by "
                               "the scale", hint="step with scaler.step(optimizer), which "
                                                 "unscales them (or call scaler.unscale_ first)")
        failure = _diagnose_gradients(used, run.parts, [len(y) for _, y in run.window],
                                      "the gradients the step used", hint_key)
        raise CheckFailure(f"for {description}, " + failure.what, failure.expected, failure.got,
                           failure.hint)
    if _norm(run.after) != 0:
        raise CheckFailure(f"for {description}, the gradients were not cleared after the step",
                           hint="call optimizer.zero_grad() after the optimizer step, so the next "
                                "window starts from zero")
    if run.scheduler.calls != 1:
        raise CheckFailure(f"for {description}, the scheduler stepped {run.scheduler.calls} times",
                           expected="1 scheduler step per optimizer step",
                           hint="call scheduler.step() once, after the optimizer step, not per "
                                "micro-batch" if run.scheduler.calls > 1 else
                                "call scheduler.step() once after the optimizer step, when a "
                                "scheduler is given")
    value = _loss_value(run.result, "train_step")
    if not math.isclose(value, run.loss, rel_tol=1e-5, abs_tol=1e-6):
        raise CheckFailure(f"for {description}, the returned loss is not the window's mean",
                           expected=f"{run.loss:.5f}", got=f"{value:.5f}",
                           hint="return the mean loss over the window's examples, unscaled")


def check_train_step(train_step, seed: int = 0) -> None:
    """train_step(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None, grad_clip=0.0)
    -> the window's mean loss, after exactly one optimizer step (and one scheduler step)."""
    cases = []
    for description, sizes in WINDOWS.items():
        cases.append((description, sizes, 0.0))
    # Clip at a third of the reference norm, so clipping changes every gradient.
    cases.append(("a short last window, clipped", [8, 8, 3], "third"))
    for description, sizes, clip in cases:
        if clip == "third":
            whole, _, _ = _reference(_model(seed), _window(seed, sizes))
            clip = _norm(whole) / 3
        run = _Run(train_step, seed, sizes, grad_clip=clip)
        _check_one_step(run, description, clip, "b")
    passed("train_step takes one optimizer step with the concatenated batch's gradients "
           f"(within {GRAD_TOLERANCE:g} of the largest), clipped when asked, clears the gradients "
           "and steps the scheduler once")


def check_train_step_with_scaler(train_step, seed: int = 0) -> None:
    """The same train_step with a torch.amp.GradScaler: the scaled loss, unscale before clipping,
    one update per step, and a skipped step (inf/NaN gradients) leaving the schedule alone."""
    sizes = WINDOWS["a short last window"]
    whole, _, _ = _reference(_model(seed), _window(seed, sizes))
    for description, clip in (("a short last window with a scaler", 0.0),
                              ("a short last window with a scaler, clipped", _norm(whole) / 3)):
        run = _Run(train_step, seed, sizes, grad_clip=clip, scaler=True)
        if "scale" not in run.scaler.calls:
            raise CheckFailure(f"for {description}, scaler.scale was never called",
                               hint="pass each weighted loss through scaler.scale(...) before "
                                    "backward()")
        _check_one_step(run, description, clip, "c")
        updates = run.scaler.calls.count("update")
        if updates != 1:
            raise CheckFailure(f"for {description}, scaler.update() ran {updates} times",
                               expected="once per optimizer step",
                               hint="call scaler.update() once, right after scaler.step(optimizer)")
        if clip and run.scaler.calls.index("unscale_") > run.scaler.calls.index("step"):
            raise CheckFailure(f"for {description}, unscale_ ran after the step",
                               hint="unscale_ before clipping, and clip before the step")

    description = "a window whose gradients overflow (an inf input)"
    run = _Run(train_step, seed, sizes, grad_clip=0.0, scaler=True, poison=True)
    if run.steps:
        raise CheckFailure(f"for {description}, the optimizer stepped with non-finite gradients",
                           hint="step through scaler.step(optimizer): it skips the step when the "
                                "gradients hold inf or NaN")
    if any(not torch.equal(a, b) for a, b in zip(run.before, run.model.parameters())):
        raise CheckFailure(f"for {description}, the parameters changed",
                           hint="a skipped step must leave the weights as they were")
    scale = run.scaler.get_scale()
    if scale != INIT_SCALE / 2:
        raise CheckFailure(f"for {description}, the scale was not halved",
                           expected=INIT_SCALE / 2, got=scale,
                           hint="call scaler.update() once after scaler.step(optimizer): it "
                                "halves the scale after an overflow")
    if run.scheduler.calls:
        raise CheckFailure(f"for {description}, the scheduler stepped although the optimizer "
                           "step was skipped", expected="0 scheduler steps",
                           got=run.scheduler.calls,
                           hint="compare scaler.get_scale() before and after update(): when it "
                                "went down, the step was skipped, and the schedule must wait")
    if any(p.grad is not None and (not torch.isfinite(p.grad).all() or p.grad.abs().sum() > 0)
           for p in run.model.parameters()):
        raise CheckFailure(f"for {description}, the gradients were not cleared",
                           hint="clear the gradients after every window, skipped or not: the "
                                "next window must not inherit infinities")
    passed("with a scaler, train_step scales the loss, unscales before clipping, updates the scale "
           "once per step, and on an overflow skips the step, halves the scale and holds the "
           "schedule")
