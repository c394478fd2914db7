"""Checks for exercise 03, one accumulated optimizer step (introduced in exercise 03).

The exercise: (a) `accumulate`, the forward and backward passes of one window of micro-batches that
arrive one at a time (a stream: the window's number of examples is known only at its end), leaving
the gradient of the mean loss over all the window's examples; (b) `train_step`, one optimizer step
over such a window, with optional clipping and a scheduler; (c) the same `train_step` with a
gradient scaler, whose skipped steps must hold the schedule and whose growth must not.

The checks never take the learner's word for what happened. They build the model, the windows,
the optimizer, the scheduler and the scaler themselves. The window is a stream that records when
each micro-batch is drawn; a forward pre-hook and a gradient hook record each forward and backward
pass, so a window read in full before the first backward (every graph alive at once) is seen. An
optimizer-step pre-hook records the gradients each step used, the scheduler and the scaler count
their calls, a window with an infinite input forces the scaler to skip, a scaler with
`growth_interval=1` grows its scale on clean steps, and every gradient is compared (dtype, then
values) with a reference computed on the concatenated batch with the same loss function. Calls
into `course_lib.loop` (its `train_step` and helpers) while the learner's code runs are refused:
writing the step is the exercise.

Tolerances, as stated in the exercise: gradients within GRAD_TOLERANCE of the largest reference
gradient (float32 sums in another order differ by about 1e-7 of it; the worst correct answer of
tests/test_checks_ex03.py measured 4.2e-7 over 16 seeds), the returned loss within LOSS_TOLERANCE
(relative).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks._core import (
    CallWatch,
    CheckFailure,
    call_learner,
    code_objects,
    make_hint,
    passed,
)

hint = make_hint({
    "a": "you cannot divide by the window's number of examples before you have seen them all. "
         "Gradients add up linearly: what could each micro-batch contribute so that, once you know "
         "the total at the end, one operation on every .grad gives the mean?",
    "b": "accumulate as in (a), then clip (if grad_clip > 0), then exactly one optimizer.step(), "
         "then clear the gradients, then the scheduler, if there is one.",
    "c": "the scaler multiplies what goes into backward() and must see the gradients before you "
         "clip them. Its public record of a skipped step is its scale: which direction of change "
         "means 'skipped', and which does not?",
})

# The hint of a gradient mismatch that none of the usual mistakes explains, per question.
_HINTS = {
    "a": "the gradient of the window must be that of one batch holding all its examples: each "
         "micro-batch counts in proportion to its examples",
    "b": "accumulate as in (a), clip the accumulated gradients, then step once",
    "c": "scale what goes into backward() with scaler.scale(...), and unscale_ before clipping",
}

# See the module docstring: measured rounding is about 1e-7 of the largest gradient.
GRAD_TOLERANCE = 2e-6  # relative to the largest reference gradient
LOSS_TOLERANCE = 2e-6  # relative, on the returned mean loss
FEATURES, CLASSES = 6, 4
WINDOWS = {  # examples per micro-batch
    "a window of equal micro-batches": [8, 8, 8],
    "a short last window": [8, 8, 3],
    "a window of unequal micro-batches": [5, 12, 2, 7],
}
INIT_SCALE = 2.0 ** 12


def _cross_entropy():
    return nn.CrossEntropyLoss()


def _margin():
    """Another mean loss than cross-entropy: a learner's code must use the loss_fn it is given."""
    return nn.MultiMarginLoss()


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


class _Stream:
    """A window as a DataLoader hands it over: micro-batches drawn one at a time, readable once.

    It has no length and no indexing: how many micro-batches and examples the window holds is
    known only when it ends. Every draw is written into `events`.
    """

    def __init__(self, window, events: list):
        self._window = window
        self._events = events
        self._next = 0
        self.reads = 0

    def __iter__(self):
        self.reads += 1
        if self.reads > 1:
            raise CheckFailure("the window was read twice",
                               hint="the window is a stream (micro-batches as a DataLoader yields "
                                    "them): it can be read once. Count the examples while you "
                                    "run them, and correct the gradients once the window ends")
        return self

    def __next__(self):
        if self._next >= len(self._window):
            raise StopIteration
        self._events.append("draw")
        item = self._window[self._next]
        self._next += 1
        return item



_STREAM_HINT = ("the window is a stream: iterate over it once, a micro-batch at a time. Its "
                "number of micro-batches and of examples is known only once it ends: count while "
                "you go")


def _gradients(model: nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for p in model.parameters()]


def _copy(model: nn.Module) -> nn.Module:
    copy = _model(0)
    copy.load_state_dict(model.state_dict())
    return copy


def _reference(model: nn.Module, window, loss_fn):
    """(the concatenated batch's gradients, each micro-batch's own gradients of its mean loss,
    the concatenated batch's mean loss)."""
    copy = _copy(model)
    inputs = torch.cat([x for x, _ in window])
    targets = torch.cat([y for _, y in window])
    loss = loss_fn(copy(inputs), targets)
    loss.backward()
    whole = _gradients(copy)
    parts = []
    for x, y in window:
        copy.zero_grad(set_to_none=True)
        loss_fn(copy(x), y).backward()
        parts.append(_gradients(copy))
    return whole, parts, loss.item()


def _combine(parts, weights) -> list[torch.Tensor]:
    return [sum(w * part[i] for w, part in zip(weights, parts)) for i in range(len(parts[0]))]


def _scale(gradients, factor: float) -> list[torch.Tensor]:
    return [g * factor for g in gradients]


def _norm(gradients) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in gradients)))


def _same(got, expected) -> bool:
    largest = max(float(g.abs().max()) for g in expected)
    allowed = GRAD_TOLERANCE * max(largest, 1e-3)
    return all(a.shape == b.shape and bool(torch.isfinite(a).all())
               and float((a.double() - b.double()).abs().max()) <= allowed
               for a, b in zip(got, expected))


def _largest_difference(got, expected) -> float:
    return max(float((a.double() - b.double()).abs().max()) for a, b in zip(got, expected))


# ---- watching the learner's code -----------------------------------------------------------------


@contextmanager
def _watch_passes(model: nn.Module, events: list):
    """Write every forward pass ("forward", with its examples) and every backward pass through the
    model's last layer ("backward") into `events` while the block runs."""
    forward = model.register_forward_pre_hook(
        lambda module, args: events.append(("forward", len(args[0]))))
    output = model.register_forward_hook(
        lambda module, args, result: events.append(("dtype", result.dtype)))
    last_weight = list(model.parameters())[-2]
    backward = last_weight.register_hook(lambda grad: events.append("backward"))
    try:
        yield events
    finally:
        forward.remove()
        output.remove()
        backward.remove()


def _refuse_holding_the_window(events: list, sizes: list[int], name: str, model) -> None:
    """Accumulation exists because the window does not fit in memory: each micro-batch must run
    forward and backward (freeing its graph) before the next one is drawn."""
    converted = next((p.dtype for p in model.parameters() if p.dtype != torch.float32), None)
    if converted is not None:
        raise CheckFailure(f"{name} converted the model's parameters to {converted}",
                           expected="float32, as the check built the model", hint=_CONVERT_HINT)
    computed = [e[1] for e in events if isinstance(e, tuple) and e[0] == "dtype"]
    if any(dtype != torch.float32 for dtype in computed):
        odd = next(dtype for dtype in computed if dtype != torch.float32)
        raise CheckFailure(f"{name}'s forward passes computed in {odd}",
                           expected="float32, the reference's precision",
                           hint="no autocast here: the contract asks for the big batch's "
                                f"gradients within {GRAD_TOLERANCE:g}, and a 16-bit forward "
                                "keeps only two or three digits")
    events = [e for e in events if not (isinstance(e, tuple) and e[0] == "dtype")]
    forwards = [e[1] for e in events if isinstance(e, tuple)]
    if forwards and max(forwards) > max(sizes):
        raise CheckFailure(f"{name} ran the model on {max(forwards)} examples at once",
                           expected=f"micro-batches of at most {max(sizes)}",
                           hint="run each micro-batch on its own, as it comes: the whole window "
                                "is what does not fit in memory")
    drawn = forwarded = backwarded = 0
    for event in events:
        if event == "draw":
            if drawn > forwarded:
                raise CheckFailure(f"{name} drew micro-batch {drawn + 1} before running micro-batch "
                                   f"{drawn} through the model",
                                   hint="handle each micro-batch as it arrives (forward, then "
                                        "backward) before drawing the next: keeping the whole "
                                        "window is what accumulation avoids")
            if drawn > backwarded:
                raise CheckFailure(f"{name} drew micro-batch {drawn + 1} before the backward pass "
                                   f"of micro-batch {drawn}",
                                   hint="call backward() on each micro-batch's loss before the "
                                        "next one: one backward over the sum of the losses keeps "
                                        "every micro-batch's graph (its activations) in memory")
            drawn += 1
        elif event == "backward":
            backwarded += 1
        else:
            forwarded += 1
    if drawn and backwarded < drawn:
        raise CheckFailure(f"{name} ran {backwarded} backward passes for {drawn} micro-batches",
                           hint="call backward() once for each micro-batch, before the next one")


def _refuse_delegation(called: list[str], name: str) -> None:
    if called:
        raise CheckFailure(f"{name} called {called[0]}",
                           hint="this exercise asks you to write the step yourself; use torch "
                                "(forward, backward, the optimizer) directly, not course_lib.loop")


def _run(fn, name: str, *args, **kwargs):
    with CallWatch(modules=("course_lib.loop",)) as calls:
        try:
            result = call_learner(fn, *args, name=name, **kwargs)
        except CheckFailure as failure:
            if "_Stream" in failure.what:  # len(window), window[0], ...
                raise CheckFailure(failure.what.replace("'_Stream'", "the window's type"),
                                   hint=_STREAM_HINT) from None
            raise
    _refuse_delegation(calls.called, name)
    return result


def _loss_value(value, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        if value.requires_grad:
            raise CheckFailure(f"{name} returned a loss that still holds its graph",
                               hint="add up the losses as numbers (loss.item(), or a detached "
                                    "tensor): a tensor that requires grad keeps every "
                                    "micro-batch's graph alive after the step")
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise CheckFailure(f"{name} should return the window's mean loss, one number",
                       got=type(value).__name__, hint="return the mean loss over all the window's "
                       "examples, as a float or a one-element tensor")


def _check_loss(value: float, expected: float, description: str, sizes: list[int]) -> None:
    if math.isclose(value, expected, rel_tol=LOSS_TOLERANCE, abs_tol=1e-7):
        return
    total = sum(sizes)
    hint_text = "return the mean loss over the window's examples: every example counts once"
    if math.isclose(value, expected * total, rel_tol=1e-4):
        hint_text = ("that is the SUM over the window's examples: divide the returned loss by the "
                     "window's examples too")
    raise CheckFailure(f"for {description}, the returned loss is not the window's mean",
                       expected=f"{expected:.6f} (within {LOSS_TOLERANCE:g}, relative)",
                       got=f"{value:.6f}", hint=hint_text)


_CONVERT_HINT = ("do not convert the model (.double(), .half(), .to(...)): the caller owns it, and "
                 "its optimizer holds these very parameters. Mixed precision is autocast's job")


def _require_float32(model: nn.Module, gradients, what: str) -> None:
    """The check's model is float32, and so must its gradients be: mixed precision lives in the
    forward pass (autocast), not in the parameters."""
    for parameter, gradient in zip(model.parameters(), gradients):
        if parameter.dtype != torch.float32 or gradient.dtype != torch.float32:
            raise CheckFailure(f"{what} are {gradient.dtype}, the parameters {parameter.dtype}",
                               expected="float32 parameters and gradients, as the check built "
                                        "the model",
                               hint=_CONVERT_HINT)


def _diagnose_gradients(got, parts, sizes, what: str, hint_key: str, *,
                        cross_entropy_parts=None) -> CheckFailure:
    """Name the mistake a set of gradients shows, by comparing with the usual wrong weightings."""
    total = sum(sizes)
    by_examples = [n / total for n in sizes]
    wrong = [
        (_combine(parts, [1.0] * len(parts)),
         f"{what} are the SUM of the micro-batches' gradients",
         "each micro-batch's share must shrink as the window grows: the sum grows with the number "
         "of micro-batches"),
        (_combine(parts, [float(n) for n in sizes]),
         f"{what} are those of the SUM of the window's per-example losses",
         "once the window ends you know its number of examples: divide the gradients by it"),
        (_combine(parts, [1.0 / total] * len(parts)),
         f"{what} are the micro-batches' mean losses added up and divided by the window's examples",
         "a micro-batch's loss is already a mean over its examples: turn it into their sum "
         "before it joins the window's"),
        (_combine(parts, [n / len(parts) for n in sizes]),
         f"{what} were divided by the number of micro-batches",
         "the mean is over examples, not micro-batches: divide by the window's examples"),
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
    if cross_entropy_parts is not None:
        wrong.append((_combine(cross_entropy_parts, by_examples),
                      f"{what} are those of cross-entropy, not of the loss_fn given",
                      "compute each micro-batch's loss with loss_fn(logits, targets), whatever "
                      "loss it is"))
    for candidate, message, hint_text in wrong:
        if _same(got, candidate):
            return CheckFailure(message, hint=hint_text)
    if _norm(got) == 0:
        return CheckFailure(f"{what} are all zero", hint="call backward() on each micro-batch's "
                            "loss, and clear gradients only after the optimizer step")
    reference = _combine(parts, by_examples)
    return CheckFailure(f"{what} differ from the concatenated batch's",
                        expected=f"within {GRAD_TOLERANCE:g} of the largest gradient",
                        got=f"a largest difference of {_largest_difference(got, reference):.3g}",
                        hint=_HINTS[hint_key])


def _cross_entropy_parts(model, window):
    if window is None:
        return None
    return _reference(model, window, _cross_entropy())[1]


# ---- (a) accumulate ------------------------------------------------------------------------------

_ACCUMULATE_CASES = [(description, sizes, _cross_entropy) for description, sizes in WINDOWS.items()]
_ACCUMULATE_CASES.append(("a window of unequal micro-batches, with a margin loss",
                          [5, 12, 2, 7], _margin))


def check_accumulate(accumulate, seed: int = 0) -> None:
    """accumulate(model, window, loss_fn) -> the mean loss over the window's examples; afterwards
    each parameter's .grad holds the gradient of that mean (no optimizer step). The window is a
    stream of micro-batches, read once."""
    for description, sizes, make_loss in _ACCUMULATE_CASES:
        model = _model(seed)
        window = _window(seed, sizes)
        loss_fn = make_loss()
        whole, parts, loss = _reference(model, window, loss_fn)
        model.zero_grad(set_to_none=True)
        events: list = []
        with _watch_passes(model, events):
            result = _run(accumulate, "accumulate", model, _Stream(window, events), loss_fn)
        _refuse_holding_the_window(events, sizes, "accumulate", model)
        got = _gradients(model)
        where = f"for {description} ({'+'.join(map(str, sizes))} examples), "
        try:
            _require_float32(model, got, "the gradients")
        except CheckFailure as failure:
            raise CheckFailure(where + failure.what, failure.expected, failure.got,
                               failure.hint) from None
        if not _same(got, whole):
            failure = _diagnose_gradients(
                got, parts, sizes, "the gradients", "a",
                cross_entropy_parts=_cross_entropy_parts(model, window)
                if make_loss is _margin else None)
            raise CheckFailure(where + failure.what, failure.expected, failure.got, failure.hint)
        _check_loss(_loss_value(result, "accumulate"), loss, description, sizes)
    passed("accumulate leaves the gradients of one batch holding the whole window (within "
           f"{GRAD_TOLERANCE:g} of the largest gradient), one micro-batch at a time, for equal and "
           "unequal micro-batches, a short last window and another loss than cross-entropy")


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

    def __init__(self, growth_interval: int = 1000):
        super().__init__("cpu", init_scale=INIT_SCALE, growth_interval=growth_interval)
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


class _Session:
    """A model, its optimizer, scheduler and (optionally) scaler, built by the check, on which the
    learner's train_step runs one window after another."""

    def __init__(self, seed, *, scaler=False, scheduler=True, growth_interval=1000):
        self.seed = seed
        self.model = _model(seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = _CountingScheduler(self.optimizer) if scheduler else None
        self.scaler = _WatchedScaler(growth_interval) if scaler else None
        self.steps = []  # the gradients each optimizer step used
        self.optimizer.register_step_pre_hook(
            lambda optimizer, args, kwargs: self.steps.append(_gradients(self.model)))

    def run(self, train_step, sizes, *, grad_clip=None, poison=False, loss=_cross_entropy,
            window_seed=None):
        """One call of the learner's train_step on a fresh window; what it observed."""
        window = _window(self.seed if window_seed is None else window_seed, sizes)
        if poison:  # an infinite input: the gradients hold inf/NaN, as after an fp16 overflow
            window[1][0][0, 0] = math.inf
        loss_fn = loss()
        run = _Observed()
        run.window, run.sizes, run.loss_fn, run.is_margin = window, sizes, loss_fn, loss is _margin
        run.whole, run.parts, run.loss = _reference(self.model, window, loss_fn)
        run.before = [p.detach().clone() for p in self.model.parameters()]
        run.steps_before = len(self.steps)
        run.scheduler_before = self.scheduler.calls if self.scheduler is not None else 0
        run.scale_before = self.scaler.get_scale() if self.scaler is not None else None
        kwargs = {}
        if self.scheduler is not None:
            kwargs["scheduler"] = self.scheduler
        if grad_clip is not None:
            kwargs["grad_clip"] = grad_clip
        if self.scaler is not None:
            kwargs["scaler"] = self.scaler
        events: list = []
        with _watch_passes(self.model, events):
            try:
                with CallWatch(code_objects([nn.utils.clip_grad_norm_])) as clip_calls:
                    run.result = _run(train_step, "train_step", self.model,
                                      _Stream(window, events), loss_fn, self.optimizer, **kwargs)
                run.clipped = bool(clip_calls.called)
            except CheckFailure as failure:
                if "NoneType" in failure.what and (self.scheduler is None or self.scaler is None):
                    raise CheckFailure(
                        "train_step failed when called with its defaults (scheduler=None, "
                        "scaler=None, grad_clip=0.0)", got=failure.what,
                        hint="scheduler and scaler are optional: use each only when it is given "
                             "(not None)") from None
                raise
        _refuse_holding_the_window(events, sizes, "train_step", self.model)
        run.steps = self.steps[run.steps_before:]
        run.scheduler_calls = (self.scheduler.calls if self.scheduler is not None else 0) \
            - run.scheduler_before
        run.after = _gradients(self.model)
        run.model, run.scaler = self.model, self.scaler
        return run


class _Observed:
    """What one call of train_step did (filled in by _Session.run)."""


def _expected_clipped(whole, grad_clip: float) -> list[torch.Tensor]:
    if grad_clip <= 0:
        return whole
    factor = min(1.0, grad_clip / (_norm(whole) + 1e-6))  # clip_grad_norm_'s own formula
    return _scale(whole, factor)


def _check_one_step(run: _Observed, description: str, grad_clip, hint_key: str, *,
                    scheduler_steps: int = 1) -> None:
    clip = grad_clip or 0.0
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
    try:
        _require_float32(run.model, used, "the gradients the step used")
    except CheckFailure as failure:
        raise CheckFailure(f"for {description}, " + failure.what, failure.expected, failure.got,
                           failure.hint) from None
    expected = _expected_clipped(run.whole, clip)
    if not _same(used, expected):
        if clip > 0 and _same(used, run.whole):
            raise CheckFailure(f"for {description}, the step used unclipped gradients",
                               expected=f"a norm of {clip:g}", got=f"{_norm(used):.4g}",
                               hint="clip with nn.utils.clip_grad_norm_(model.parameters(), "
                                    "grad_clip) between the backward passes and the step")
        if clip == 0 and run.clipped and _norm(used) == 0:
            raise CheckFailure(f"for {description} (grad_clip=0.0), the step used all-zero "
                               "gradients", hint="grad_clip=0.0, the default, means: do not clip "
                               "(clipping to a norm of 0 zeroes every gradient)")
        if run.scaler is not None and clip > 0 and math.isclose(
                _norm(used), clip / run.scale_before, rel_tol=1e-3):
            raise CheckFailure(f"for {description}, the gradients were clipped while still scaled",
                               expected=f"a norm of {clip:g}", got=f"{_norm(used):.3g}",
                               hint="call scaler.unscale_(optimizer) before clipping: clipping "
                                    "scaled gradients clips them about scale times too hard")
        if run.scaler is not None and _same(used, _scale(expected, 1 / run.scale_before)):
            raise CheckFailure(f"for {description}, the step used gradients divided by the scale",
                               hint="pass what goes into backward() through scaler.scale(...): "
                                    "scaler.step unscales gradients that were scaled")
        if run.scaler is not None and _same(used, _scale(expected, run.scale_before)):
            raise CheckFailure(f"for {description}, the step used gradients still multiplied by "
                               "the scale", hint="step with scaler.step(optimizer), which "
                                                 "unscales them (or call scaler.unscale_ first)")
        failure = _diagnose_gradients(
            used, run.parts, run.sizes, "the gradients the step used", hint_key,
            cross_entropy_parts=_cross_entropy_parts(_restore(run), run.window)
            if run.is_margin else None)
        raise CheckFailure(f"for {description}, " + failure.what, failure.expected, failure.got,
                           failure.hint)
    if _norm(run.after) != 0:
        raise CheckFailure(f"for {description}, the gradients were not cleared after the step",
                           hint="call optimizer.zero_grad() after the optimizer step, so the next "
                                "window starts from zero")
    if run.scheduler_calls != scheduler_steps:
        raise CheckFailure(f"for {description}, the scheduler stepped {run.scheduler_calls} times",
                           expected=f"{scheduler_steps} scheduler step per optimizer step",
                           hint="call scheduler.step() once, after the optimizer step, not per "
                                "micro-batch" if run.scheduler_calls > 1 else
                                "call scheduler.step() once after the optimizer step, when a "
                                "scheduler is given")
    _check_loss(_loss_value(run.result, "train_step"), run.loss, description, run.sizes)


def _restore(run: _Observed) -> nn.Module:
    """The model as it was before the step (for diagnosing a wrong loss_fn)."""
    model = _model(0)
    with torch.no_grad():
        for parameter, before in zip(model.parameters(), run.before):
            parameter.copy_(before)
    return model


def check_train_step(train_step, seed: int = 0) -> None:
    """train_step(model, window, loss_fn, optimizer, *, scheduler=None, scaler=None, grad_clip=0.0)
    -> the window's mean loss, after exactly one optimizer step (and one scheduler step)."""
    for description, sizes in WINDOWS.items():
        session = _Session(seed)
        _check_one_step(session.run(train_step, sizes, grad_clip=0.0), description, 0.0, "b")
    # Clip at a third of the reference norm, so clipping changes every gradient.
    sizes = WINDOWS["a short last window"]
    whole, _, _ = _reference(_model(seed), _window(seed, sizes), _cross_entropy())
    clip = _norm(whole) / 3
    session = _Session(seed)
    _check_one_step(session.run(train_step, sizes, grad_clip=clip), "a short last window, clipped",
                    clip, "b")
    # The defaults the contract names: no scheduler, no scaler, grad_clip left at 0.0.
    session = _Session(seed, scheduler=False)
    _check_one_step(session.run(train_step, sizes), "a call with the defaults", None, "b",
                    scheduler_steps=0)
    # Another loss than cross-entropy, and two windows in a row on the same model and optimizer.
    session = _Session(seed)
    for window in range(2):
        description = f"window {window + 1} of two in a row, with a margin loss"
        run = session.run(train_step, [5, 12, 2, 7], grad_clip=0.0, loss=_margin,
                          window_seed=seed + window)
        _check_one_step(run, description, 0.0, "b")
    passed("train_step takes one optimizer step with the concatenated batch's gradients "
           f"(within {GRAD_TOLERANCE:g} of the largest), clipped when asked, clears the gradients "
           "and steps the scheduler once; its defaults and another loss work too")


def _check_skipped(run: _Observed, description: str) -> None:
    if run.steps:
        raise CheckFailure(f"for {description}, the optimizer stepped with non-finite gradients",
                           hint="step through scaler.step(optimizer): it skips the step when the "
                                "gradients hold inf or NaN")
    if any(not torch.equal(a, b) for a, b in zip(run.before, run.model.parameters())):
        raise CheckFailure(f"for {description}, the parameters changed",
                           hint="a skipped step must leave the weights as they were")
    scale = run.scaler.get_scale()
    if scale != run.scale_before / 2:
        raise CheckFailure(f"for {description}, the scale was not halved",
                           expected=run.scale_before / 2, got=scale,
                           hint="call scaler.update() once after scaler.step(optimizer): it "
                                "halves the scale after an overflow")
    if run.scheduler_calls:
        raise CheckFailure(f"for {description}, the scheduler stepped although the optimizer "
                           "step was skipped", expected="0 scheduler steps",
                           got=run.scheduler_calls,
                           hint="compare scaler.get_scale() before and after update(): when it "
                                "went down, the step was skipped, and the schedule must wait")
    if any(p.grad is not None and (not torch.isfinite(p.grad).all() or p.grad.abs().sum() > 0)
           for p in run.model.parameters()):
        raise CheckFailure(f"for {description}, the gradients were not cleared",
                           hint="clear the gradients after every window, skipped or not: the "
                                "next window must not inherit infinities")


def check_train_step_with_scaler(train_step, seed: int = 0) -> None:
    """The same train_step with a torch.amp.GradScaler: the scaled loss, unscale before clipping,
    one update per step, a skipped step (inf/NaN gradients) leaving the schedule alone, and a
    step on which the scale grows counting as a step."""
    sizes = WINDOWS["a short last window"]
    whole, _, _ = _reference(_model(seed), _window(seed, sizes), _cross_entropy())
    for description, clip in (("a short last window with a scaler", 0.0),
                              ("a short last window with a scaler, clipped", _norm(whole) / 3)):
        run = _Session(seed, scaler=True).run(train_step, sizes, grad_clip=clip)
        if "scale" not in run.scaler.calls:
            raise CheckFailure(f"for {description}, scaler.scale was never called",
                               hint="pass what goes into backward() through scaler.scale(...)")
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
    _check_skipped(_Session(seed, scaler=True).run(train_step, sizes, grad_clip=0.0, poison=True),
                   description)

    # A scaler that grows after every clean step (growth_interval=1): clean, overflow, clean.
    session = _Session(seed, scaler=True, growth_interval=1)
    for index, poison in enumerate((False, True, False)):
        run = session.run(train_step, sizes, grad_clip=0.0, poison=poison,
                          window_seed=seed + index)
        if poison:
            _check_skipped(run, f"window {index + 1} of three (an overflow), with growth_interval=1")
            continue
        description = (f"window {index + 1} of three (a clean step, after which the scale grows "
                       f"from {run.scale_before:g} to {session.scaler.get_scale():g})")
        if len(run.steps) == 1 and run.scheduler_calls == 0:
            raise CheckFailure(f"for {description}, the scheduler did not step",
                               hint="the scale also changes on a clean step: it doubles after "
                                    "growth_interval clean steps. Only a scale that went DOWN "
                                    "means a skipped step")
        _check_one_step(run, description, 0.0, "c")
    passed("with a scaler, train_step scales the loss, unscales before clipping, updates the scale "
           "once per step, holds the schedule on an overflow (scale halved, step skipped) and "
           "steps it when the scale grows")
