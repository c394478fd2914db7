"""Checks for exercise 01, a training loop built in five questions (introduced in exercise 01).

The learner writes, in order:

(a) `lr_multiplier(step, warmup_steps, total_steps)`: the multiplier of the learning rate for the
    optimizer step `step` (0 for the first), a linear warmup then an inverse-square-root decay
    (the original Transformer's schedule), held from total_steps on;
(b) `train_step(model, inputs, targets, optimizer, scheduler, scaler, cfg)`: one optimizer step
    with autocast, loss scaling for float16, clipping after unscaling, and the schedule stepped
    after the optimizer; it returns {"loss": float, "grad_norm": float};
(c) `evaluate(model, dataset)`: the accuracy over a dataset in eval mode, without a graph;
(d) `make_train_loader(dataset, cfg)`: a DataLoader whose batch order follows `cfg.seed`;
(e) `train(cfg)`: the whole loop, returning {"history": [...], "best_checkpoint": path}.

How the checks work (the rules of the workbook's exercise design): each check drives the
learner's function in a run it controls and watches it from outside, then compares with a
reference computed here. Nothing the learner's code returns is taken as evidence of something the
check can observe itself:

- an optimizer-step pre-hook records the learning rate and the gradients every `optimizer.step()`
  really used;
- forward hooks record which examples the model saw (compared by content), in which mode, with
  or without a graph, and in which dtype;
- a profile hook records calls into `course_lib`'s own loop, so that handing the work to the
  library (`course_lib.fit`, `course_lib.evaluate`, the library's schedule or loader) is named
  as such;
- the checkpoint's weights are compared with the weights the check saw at each evaluation.

Every check takes a `seed` keyword (0 in the notebook); the tests validate each check over many
seeds. Calls into the library are watched with `_core.CallWatch`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import pickle
import random
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

from course_lib.checks._core import (
    CallWatch,
    CheckFailure,
    NotImplementedYet,
    call_learner,
    make_hint,
    one_thread,
    passed,
    require,
    require_tensor,
)
from course_lib.data import load_digits_splits
from course_lib.models import MLP

# ---- tolerances and budgets, each with its reason ---------------------------------------------------

# The multiplier is a formula in Python floats: any correct order of operations (sqrt(a / b),
# sqrt(a) / sqrt(b), (b / a) ** -0.5) agrees with it to a few units in the last place (1e-16). 1e-12
# leaves room for those and none for float32 arithmetic or an epsilon added to a denominator.
FORMULA_TOLERANCE = 1e-12
# A learner's step and the reference step do the same operations, possibly in another order: a
# loss module instead of a function, the loss taken outside autocast, set_to_none=False and the
# reference itself agree bit for bit in every precision; clipping by hand (without
# clip_grad_norm_'s 1e-6 in the denominator) moves gradients and weights by up to 6e-6 relatively
# (measured over 6 seeds). The bar leaves about 8x of room, in every precision.
STEP_TOLERANCE = {"fp32": 5e-5, "bf16": 5e-5, "fp16": 5e-5}
# The clipped norm must not exceed the limit by more than float32 rounding.
CLIP_SLACK = 1e-3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The library's own implementations of what the questions ask for: calls into these modules from
# the learner's code are delegation. Helpers elsewhere (load_digits_splits, MLP, seed_everything)
# stay allowed.
LOOP_MODULE = "course_lib.loop"
SCHEDULES_MODULE = "course_lib.schedules"
LIBRARY_LOADERS = ("course_lib.data.make_loader", "course_lib.data.make_digits_loaders")

_SCHEDULER_HINT = ("call scheduler.step() once per training step, after the optimizer step "
                   "(scaler.step(optimizer))")


# ---- shared helpers ---------------------------------------------------------------------------------


def _call_watched(fn, *args, name: str, prefixes, instead: str):
    """Call the learner's function; name a call into course_lib's own version of it first,
    even when the function then crashed."""
    with CallWatch(modules=("course_lib.",), exclude=("course_lib.checks",)) as calls:
        try:
            result = call_learner(fn, *args, name=name)
        except CheckFailure:
            _refuse_delegation(calls, prefixes, name, instead)
            raise
    _refuse_delegation(calls, prefixes, name, instead)
    return result


def _refuse_delegation(calls: CallWatch, prefixes, what: str, instead: str) -> None:
    name = calls.first(*prefixes)
    if name is not None:
        public = name.rsplit(".", 1)[-1]
        raise CheckFailure(f"{what} called course_lib's own {public} ({name})",
                           hint=f"this question asks you to write it yourself: {instead}")


# Every field a check relies on is set explicitly, so a default changed in the notebook's set-up
# cell changes no check. With the inverse-square-root schedule of question (a), the budget (6
# epochs) reached a best validation accuracy of 0.952-0.970 with the reference answer over run
# seeds 0-15; the bar leaves room for a different but correct loop.
RUN_DEFAULTS = {"epochs": 6, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.01, "warmup_steps": 20,
                "grad_clip": 1.0, "eval_every": 20, "precision": "bf16", "hidden": 128,
                "dropout": 0.1, "target_accuracy": 0.93, "split_seed": 0}


def _config(config_class, **fields):
    """The learner's config class with RUN_DEFAULTS, then `fields`, set (and a fresh out_dir)."""
    fields = {**RUN_DEFAULTS, **fields}
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise CheckFailure("`ExerciseConfig` should be the dataclass from the set-up cell",
                           got=type(config_class).__name__,
                           hint="pass the class itself (ExerciseConfig), and run the set-up cell")
    names = {f.name for f in dataclasses.fields(config_class)}
    fields.setdefault("out_dir", tempfile.mkdtemp(prefix="ex01-"))
    missing = sorted(set(fields) - names)
    if missing:
        raise CheckFailure(f"`ExerciseConfig` has no field {missing[0]!r}",
                           hint="keep every field of the set-up cell (you may add fields, not "
                           "remove or rename them)")
    try:
        return config_class(**fields)
    except Exception as error:  # noqa: BLE001 - a broken config class becomes one readable line
        raise CheckFailure(f"`ExerciseConfig(...)` raised {type(error).__name__}: {error}",
                           hint="run the set-up cell again; it defines a working ExerciseConfig") from None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _flat_grads(optimizer) -> torch.Tensor:
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten()
             for group in optimizer.param_groups for p in group["params"]]
    return torch.cat(grads) if grads else torch.zeros(0)


def _flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def _rows(tensor: torch.Tensor) -> list[bytes]:
    """Each row of a batch as bytes: examples compared by content, not by count."""
    array = tensor.detach().float().reshape(len(tensor), -1).contiguous().numpy()
    return [row.tobytes() for row in array]


def _autocast(precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[precision])


def _fmt(value) -> str:
    return f"{value:.4g}" if _is_number(value) else repr(value)[:40]


@contextmanager
def _quiet_scheduler_warning():
    # The check itself provokes no warning; a learner's wrong order may, and the failure line
    # already says what is wrong.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of")
        yield


# ---- (a) the schedule ------------------------------------------------------------------------------


def reference_multiplier(step: int, warmup_steps: int, total_steps: int) -> float:
    """The contract's formula: a ramp from 0, then sqrt(warmup_steps / step), held from total_steps.

    Without warmup the decay is measured from step 1, so the factor is 1 at steps 0 and 1.
    """
    step = min(step, total_steps)
    if step < warmup_steps:
        return step / warmup_steps
    return math.sqrt(max(1, warmup_steps) / max(1, step))


def _lesson_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Lesson 01's shape, to name it when an answer follows it instead of the contract."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _schedule_cases(seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    cases = [(4, 20), (1, 7), (20, 120)]
    for _ in range(2):
        total = rng.randint(10, 300)
        cases.append((rng.randint(2, total - 1), total))
    # The edges come last, so that each one's failure names it: a run that ends inside its
    # warmup, one that ends exactly where the warmup does, and a run without warmup.
    return cases + [(30, 20), (12, 12), (0, 15)]


def _schedule_steps(total: int) -> list[int]:
    """Every step of the run, its end, and a stretch past the end (a run continued)."""
    return list(range(total + 1 + max(5, total // 4)))


def _schedule_hint(value: float, step: int, warmup: int, total: int) -> str:
    expected = reference_multiplier(step, warmup, total)
    if warmup == 0:
        return ("with warmup_steps = 0 there is no warmup, and the decay is measured as if it had "
                "ended at step 1: the factor is 1 at steps 0 and 1, and nothing divides by 0")
    if step > total:
        return ("past total_steps the run is over: the factor holds the value it had at step "
                "total_steps")
    if float(value).is_integer() and not float(expected).is_integer():
        return (f"a factor of exactly {float(value):g} where the contract has a fraction: an integer "
                "division (//) or int() rounds down")
    if step == 0:
        return "the first optimizer step (step 0) uses a factor of 0: the warmup starts from nothing"
    if step < warmup:
        return ("during warmup the factor rises in a straight line, from 0 at step 0 to 1 at step "
                "warmup_steps")
    if step == warmup:
        return ("the two pieces meet at step warmup_steps, where the factor is exactly 1: scale the "
                "inverse square root so that it is 1 there")
    if abs(value - _lesson_cosine(step, warmup, total)) <= FORMULA_TOLERANCE:
        return ("this falls along lesson 01's cosine; this schedule falls as one over the square "
                "root of the step (a quarter at 16 times warmup_steps)")
    if abs(value - 1 / math.sqrt(step - warmup + 1)) <= FORMULA_TOLERANCE:
        return ("the decay is a function of the step itself, counted from 0, not of the steps since "
                "the end of warmup: at step 4 * warmup_steps the factor is one half")
    return ("after warmup the factor is proportional to 1 / sqrt(step) and equal to 1 at step "
            "warmup_steps: one half at 4 times warmup_steps, a quarter at 16 times")


def _diagnose_schedule(values: dict, warmup: int, total: int) -> None:
    for step in range(len(values)):
        value = values[step]
        where = f"step {step} (warmup_steps={warmup}, total_steps={total})"
        require(_is_number(value), f"lr_multiplier returned a {type(value).__name__} at {where}",
                hint="return a plain float (math.sqrt, not torch.sqrt; .item() turns a "
                "one-element tensor into a float)")
        expected = reference_multiplier(step, warmup, total)
        error = abs(float(value) - expected)
        if error <= FORMULA_TOLERANCE:
            continue
        if error < 1e-6:
            raise CheckFailure(f"the multiplier at {where} was {float(value):.15g}; the contract "
                               f"says {expected:.15g}, and the tolerance is {FORMULA_TOLERANCE:g}",
                               hint="compute in Python floats with math.sqrt: no float32 (torch, "
                               "numpy), no epsilon added to a denominator")
        raise CheckFailure(f"the multiplier at {where} was {float(value):.6g}; the contract "
                           f"says {expected:.6g}", hint=_schedule_hint(float(value), step, warmup, total))


def _schedule_values(lr_multiplier, warmup: int, total: int, seed: int) -> dict:
    steps = _schedule_steps(total)
    # Out of order: a multiplier must depend on its arguments only, not on a counter.
    random.Random(seed + total).shuffle(steps)
    values = {}
    for step in steps:
        try:
            values[step] = _call_watched(
                lr_multiplier, step, warmup, total, name="lr_multiplier",
                prefixes=(SCHEDULES_MODULE, LOOP_MODULE),
                instead="a ramp from 0 over warmup_steps, then one over the square root")
        except CheckFailure as error:
            if warmup != 0 or isinstance(error, NotImplementedYet) or "course_lib" in error.what:
                raise
            raise CheckFailure(f"{error.what}, at step {step} with warmup_steps=0",
                               hint=_schedule_hint(math.nan, step, warmup, total)) from None
    return values


@one_thread
def check_lr_multiplier(lr_multiplier, seed: int = 0) -> None:
    """(a) The multiplier equals the contract's formula at every step, from 0 to past total_steps."""
    cases = _schedule_cases(seed)
    warmup, total = cases[0]
    values = _schedule_values(lr_multiplier, warmup, total, seed)
    # The same schedule again, in order: a multiplier that counts its calls answers differently.
    for step in _schedule_steps(total):
        value = _call_watched(lr_multiplier, step, warmup, total, name="lr_multiplier",
                              prefixes=(SCHEDULES_MODULE, LOOP_MODULE), instead="")
        first = values[step]
        if _is_number(value) and _is_number(first) and float(value) != float(first):
            raise CheckFailure(f"lr_multiplier({step}, {warmup}, {total}) returned {_fmt(first)}, then "
                               f"{_fmt(value)} when called again",
                               hint="compute the value from step, warmup_steps and total_steps "
                               "alone, without a counter or other state")
    _diagnose_schedule(values, warmup, total)
    # Then each schedule in turn, the edges last, so that a failure names the first edge missed.
    for warmup, total in cases[1:]:
        _diagnose_schedule(_schedule_values(lr_multiplier, warmup, total, seed), warmup, total)
    count = sum(len(_schedule_steps(total)) for _, total in cases)
    passed(f"lr_multiplier matches the warmup + inverse square root contract at all {count} steps "
           f"of {len(cases)} schedules, from step 0 to past total_steps, without warmup and with "
           f"a run that ends inside its warmup")


# ---- (b) one training step ---------------------------------------------------------------------


class _WatchedScaler(torch.amp.GradScaler):
    """A GradScaler that remembers which of its methods were called, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


class _StepWatch:
    """While active: what each optimizer.step() used, and the dtype of each training forward."""

    def __init__(self):
        self.steps: list[dict] = []
        self.forward_dtypes: set = set()
        self._handles = []

    def __enter__(self):
        self._handles = [register_optimizer_step_pre_hook(self._before_step),
                         register_module_forward_hook(self._after_forward)]
        return self

    def __exit__(self, *exc_info):
        for handle in self._handles:
            handle.remove()

    def _before_step(self, optimizer, args, kwargs):
        self.steps.append({"lr": float(optimizer.param_groups[0]["lr"]),
                           "grads": _flat_grads(optimizer),
                           "dtypes": {p.dtype for group in optimizer.param_groups
                                      for p in group["params"]}})

    def _after_forward(self, module, args, output):
        if isinstance(module, nn.Linear) and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self.forward_dtypes.add(output.dtype)


def reference_train_step(model, inputs, targets, optimizer, scheduler, scaler, cfg) -> dict:
    """One step as the contract says (the check's reference)."""
    optimizer.zero_grad()
    with _autocast(cfg.precision):
        loss = F.cross_entropy(model(inputs), targets)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    if scale is None or scaler.get_scale() >= scale:  # a skipped step holds the schedule
        scheduler.step()
    return {"loss": loss.item(), "grad_norm": norm.item()}


# Each phase tests one part: without clipping the gradients themselves, then clipping in each
# precision. The clip limit is far below the digits MLP's gradient norm (about 1 to 3 at the
# start), so clipping acts at every step.
STEP_PHASES = (
    {"precision": "fp32", "grad_clip": 1e6},
    {"precision": "fp32", "grad_clip": 0.05},
    {"precision": "bf16", "grad_clip": 0.05},
    {"precision": "fp16", "grad_clip": 0.05},
)
STEPS_PER_PHASE = 3
# In the fp16 phase, this call's batch holds an infinite pixel: its gradients overflow, the scaler
# skips the optimizer step, and the schedule must stay where it was.
SKIPPED_CALL = 1
STEP_LR = 0.05


def _step_world(seed: int, cfg):
    torch.manual_seed(seed)
    model = MLP(hidden=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=STEP_LR)
    # A schedule whose value differs at every step, so a scheduler stepped early, late, twice or
    # never shows in the learning rate an optimizer step used.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 4)
    scaler = _WatchedScaler("cpu", enabled=cfg.precision == "fp16")
    return model, optimizer, scheduler, scaler


@one_thread
def check_train_step(train_step, config_class, seed: int = 0) -> None:
    """(b) One step, driven here on the check's own model and batches, matches the reference."""
    data = load_digits_splits(seed=0).train
    generator = torch.Generator().manual_seed(seed)
    for phase in STEP_PHASES:
        cfg = _config(config_class, seed=seed, **phase)
        mine = _step_world(seed, cfg)
        ref = _step_world(seed, cfg)
        for index in range(STEPS_PER_PHASE):
            rows = torch.randperm(len(data), generator=generator)[:48]
            inputs, targets = data.tensors[0][rows], data.tensors[1][rows]
            if cfg.precision == "fp16" and index == SKIPPED_CALL:
                inputs = inputs.clone()
                inputs[0, 0] = math.inf
            ref_scaler_calls = len(ref[3].calls)
            with _StepWatch() as ref_watch, _quiet_scheduler_warning():
                ref_result = reference_train_step(ref[0], inputs, targets, *ref[1:], cfg)
            learner_scaler_calls = len(mine[3].calls)
            with _StepWatch() as watch, _quiet_scheduler_warning():
                result = _call_watched(train_step, mine[0], inputs.clone(), targets.clone(),
                                       *mine[1:], cfg, name="train_step",
                                       prefixes=(LOOP_MODULE, SCHEDULES_MODULE),
                                       instead="zero the gradients, forward and loss under "
                                       "autocast, backward, unscale, clip, step, update, schedule")
            _compare_step(result, ref_result, watch, ref_watch, mine, ref, cfg, index,
                          mine[3].calls[learner_scaler_calls:], ref[3].calls[ref_scaler_calls:])
    passed("train_step matches the reference step by step in fp32, bf16 and fp16: the learning "
           "rate each optimizer step used, the clipped gradients it used, the updated weights, and "
           "the loss and gradient norm it returned")


def _compare_step(result, ref_result, watch, ref_watch, mine, ref, cfg, index, scaler_calls,
                  ref_scaler_calls) -> None:
    precision, clip = cfg.precision, cfg.grad_clip
    where = f"step {index + 1} with precision={precision!r}, grad_clip={clip:g}"
    tolerance = STEP_TOLERANCE[precision]
    require(isinstance(result, dict) and "loss" in result and "grad_norm" in result,
            "train_step should return a dict with the keys 'loss' and 'grad_norm'",
            got=type(result).__name__ if not isinstance(result, dict) else f"keys {sorted(map(str, result))}",
            hint='end with return {"loss": loss.item(), "grad_norm": norm.item()}')
    for key in ("loss", "grad_norm"):
        require(_is_number(result[key]), f"train_step's {key!r} should be a plain number",
                got=type(result[key]).__name__, hint="use .item() to turn a one-element tensor into a float")
    # 1. The optimizer stepped once, as the reference did.
    require(len(watch.steps) == len(ref_watch.steps),
            f"optimizer.step() ran {len(watch.steps)} times in one call of train_step ({where})",
            expected=f"{len(ref_watch.steps)}",
            hint="step the optimizer once per call, through scaler.step(optimizer)")
    # 2. The weights are still float32 (autocast computes in 16 bits; the weights stay float32).
    seen = {p.dtype for p in mine[0].parameters()}.union(*(s["dtypes"] for s in watch.steps))
    dtypes = sorted(str(d).replace("torch.", "") for d in seen)
    require(dtypes == ["float32"], f"during {where} the model's parameters were {', '.join(dtypes)}",
            expected="float32",
            hint="do not convert the model (.to(torch.bfloat16), .half()): autocast runs the "
            "layers in 16 bits while the weights the optimizer updates stay float32")
    # 3. The forward pass ran in the precision asked for.
    wanted = {DTYPES[precision]}
    if watch.forward_dtypes != wanted:
        got = ", ".join(sorted(str(d).replace("torch.", "") for d in watch.forward_dtypes)) or "nothing"
        if precision == "fp32":
            hint = "autocast only for bf16 and fp16: use nullcontext() (no autocast) for fp32"
        else:
            hint = (f"run the forward pass and the loss under torch.autocast('cpu', "
                    f"dtype={DTYPES[precision]}) when cfg.precision == {precision!r}")
        raise CheckFailure(f"with precision={precision!r} the model's layers computed in {got}",
                           expected=str(DTYPES[precision]).replace("torch.", ""), hint=hint)
    # 3. float16: the loss is scaled before backward (the scaler passed in is the check's own).
    if precision == "fp16":
        require("scale" in scaler_calls and "step" in scaler_calls and "update" in scaler_calls,
                "with precision='fp16' the gradient scaler passed in was not used",
                got=f"scaler calls {scaler_calls or 'none'}",
                hint="scaler.scale(loss).backward(), then scaler.step(optimizer) and scaler.update()")
    if not ref_watch.steps:
        # The scaler skipped this step (its gradients overflowed): the schedule must not move on.
        lr_after, ref_after = mine[1].param_groups[0]["lr"], ref[1].param_groups[0]["lr"]
        require(abs(lr_after - ref_after) <= 1e-9 * ref_after,
                f"call {index + 1} ({where}) was skipped by the scaler, yet the learning rate moved "
                f"on to {lr_after:.4g}; it should have stayed at {ref_after:.4g}",
                hint="step the scheduler only when the scaler did not skip the step: compare "
                "scaler.get_scale() before scaler.step(optimizer) with its value after scaler.update()")
        return
    used, expected = watch.steps[-1], ref_watch.steps[-1]
    # 4. The learning rate this step used is the schedule's value for this step.
    require(abs(used["lr"] - expected["lr"]) <= 1e-9 * expected["lr"] + 1e-15,
            f"the optimizer step of call {index + 1} used a learning rate of {used['lr']:.4g}; the "
            f"schedule says {expected['lr']:.4g} for it", hint=_SCHEDULER_HINT)
    # 5. The gradients the optimizer used: this batch's, clipped after unscaling.
    grads, ref_grads = used["grads"], expected["grads"]
    norm, ref_norm = float(grads.norm()), float(ref_grads.norm())
    if _relative_difference(grads, ref_grads) > tolerance:
        if norm > clip * (1 + CLIP_SLACK):
            raise CheckFailure(f"at {where} the optimizer step used gradients of norm {norm:.3g}, "
                               f"above the limit {clip:g}",
                               hint="clip with nn.utils.clip_grad_norm_(model.parameters(), "
                               "cfg.grad_clip) after backward() and before the optimizer step")
        if precision == "fp16" and norm < 0.01 * ref_norm:
            raise CheckFailure(f"at {where} the optimizer step used gradients of norm {norm:.2g}, "
                               f"far below the limit {clip:g} they were clipped to",
                               hint="the clipping saw gradients still multiplied by the scaler's "
                               "scale: call scaler.unscale_(optimizer) before clipping")
        raise CheckFailure(f"at {where} the gradients the optimizer step used are not this batch's "
                           f"(norm {norm:.3g}, expected {ref_norm:.3g})",
                           hint="clear the old gradients (optimizer.zero_grad()) before backward, and "
                           "take the mean cross-entropy of this batch")
    # 6. The weights after the step.
    weights_off = _relative_difference(_flat_params(mine[0]), _flat_params(ref[0]))
    require(weights_off <= tolerance,
            f"after {where} the weights differ from the reference step's by a relative "
            f"{weights_off:.2g} (tolerance {tolerance:g})",
            hint="one optimizer step per call, with the gradients of this batch only, on the "
            "float32 weights themselves (no copy rounded to 16 bits and back)")
    # 7. The schedule moved on after the step.
    lr_after, ref_after = mine[1].param_groups[0]["lr"], ref[1].param_groups[0]["lr"]
    require(abs(lr_after - ref_after) <= 1e-9 * ref_after,
            f"after call {index + 1} the optimizer's learning rate is {lr_after:.4g}; the schedule "
            f"says {ref_after:.4g} for the next step", hint=_SCHEDULER_HINT)
    # 8. What train_step returned is true.
    require(abs(result["loss"] - ref_result["loss"]) <= tolerance * abs(ref_result["loss"]),
            f"train_step returned a loss of {result['loss']:.4g} at {where}; the batch's loss was "
            f"{ref_result['loss']:.4g}", hint="return loss.item() of the loss you called backward on "
            "(before scaling)")
    require(abs(result["grad_norm"] - ref_result["grad_norm"]) <= tolerance * ref_result["grad_norm"],
            f"train_step returned a grad_norm of {result['grad_norm']:.4g} at {where}; the gradients' "
            f"norm before clipping was {ref_result['grad_norm']:.4g}",
            hint="return the norm clip_grad_norm_ returns: the unscaled norm before clipping")


# ---- (c) evaluation --------------------------------------------------------------------------------


class _ModeSensitiveNet(nn.Module):
    """A small classifier whose output depends on train/eval mode: BatchNorm and dropout."""

    def __init__(self, hidden: int = 48):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Dropout(0.5), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x.flatten(1))


def _trained_mode_sensitive_net(seed: int) -> _ModeSensitiveNet:
    torch.manual_seed(seed)
    model = _ModeSensitiveNet()
    data = load_digits_splits(seed=0).train
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(40):
        rows = torch.randperm(len(data), generator=generator)[:64]
        optimizer.zero_grad()
        F.cross_entropy(model(data.tensors[0][rows]), data.tensors[1][rows]).backward()
        optimizer.step()
    model.train()
    return model


def _evaluation_set(seed: int) -> TensorDataset:
    """A seeded sample of held-out digits of an odd size: not the validation split itself."""
    splits = load_digits_splits(seed=0)
    inputs = torch.cat([splits.val.tensors[0], splits.test.tensors[0]])
    targets = torch.cat([splits.val.tensors[1], splits.test.tensors[1]])
    rows = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(1000 + seed))[:333]
    return TensorDataset(inputs[rows], targets[rows])


class _ForwardLog:
    """While active: every forward pass of one model, its input rows, mode and grad mode."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.calls: list[dict] = []
        self._handle = None

    def __enter__(self):
        self._handle = self.model.register_forward_hook(self._after_forward)
        return self

    def __exit__(self, *exc_info):
        self._handle.remove()

    def _after_forward(self, module, args, output):
        self.calls.append({"rows": _rows(args[0]), "training": module.training,
                           "grad": torch.is_grad_enabled(), "output": output.detach()})


def _reference_accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        inputs, targets = dataset.tensors
        correct = (model(inputs).argmax(dim=1) == targets).sum().item()
    model.train(was_training)
    return correct / len(targets)


@one_thread
def check_evaluate(evaluate, seed: int = 0) -> None:
    """(c) evaluate(model, dataset): every example of that dataset once, in eval mode, no graph."""
    model = _trained_mode_sensitive_net(seed)
    dataset = _evaluation_set(seed)
    expected = _reference_accuracy(copy.deepcopy(model), dataset)
    running = {name: buffer.clone() for name, buffer in model.named_buffers()}
    weights = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    torch.manual_seed(seed)  # dropout, should it run, draws from here
    with _ForwardLog(model) as log:
        accuracy = _call_watched(evaluate, model, dataset, name="evaluate", prefixes=(LOOP_MODULE,),
                                 instead="eval mode, no graph, count the correct predictions over "
                                 "the whole dataset")
    require(log.calls, "evaluate never ran the model",
            hint="call the model on the dataset's inputs (dataset.tensors, or a DataLoader over it)")
    if any(call["training"] for call in log.calls):
        raise CheckFailure("evaluate ran the model in training mode: dropout and BatchNorm still "
                           "behaved as in training", hint="call model.eval() before the forward passes")
    if any(call["grad"] for call in log.calls):
        raise CheckFailure("evaluate ran the model with autograd recording a graph",
                           hint="run the forward passes under torch.inference_mode() (or torch.no_grad())")
    seen = Counter(row for call in log.calls for row in call["rows"])
    wanted = Counter(_rows(dataset.tensors[0]))
    foreign = sum((seen - wanted).values())
    require(not foreign, f"evaluate ran the model on {foreign} examples that are not in the dataset "
            f"passed to it", hint="evaluate the `dataset` argument, not a split of your own")
    missing = sum((wanted - seen).values())
    require(not missing, f"evaluate saw {len(dataset) - missing} of the {len(dataset)} examples of "
            "the dataset", hint="cover every example once, including a last, shorter batch")
    require(model.training, "evaluate left the model in eval mode; training would go on without "
            "dropout", hint="call model.train() at the end of evaluate")
    for name, parameter in model.named_parameters():
        require_tensor(parameter.detach(), weights[name], f"after evaluate, the model's {name}",
                       hint="evaluate must leave the weights as they were, bit for bit: no "
                       "conversion to 16 bits (and back), no optimizer step")
    changed = [name for name, buffer in model.named_buffers() if not torch.equal(buffer, running[name])]
    require(not changed, f"evaluate changed the model's {changed[0] if changed else ''}",
            hint="in eval mode BatchNorm leaves its running statistics alone; call model.eval() first")
    require(_is_number(accuracy), "evaluate should return a plain number", got=type(accuracy).__name__,
            hint="return correct / total as a Python float")
    require(abs(float(accuracy) - expected) <= 1e-9,
            f"evaluate returned {float(accuracy):.6g}; the fraction of the dataset classified correctly "
            f"is {expected:.6g}",
            hint="count correct predictions over all batches, then divide by the number of examples "
            "(a fraction between 0 and 1, not a mean of batch accuracies)")
    passed(f"evaluate saw each of the {len(dataset)} examples given, in eval mode without a graph, "
           f"returned their accuracy and left the model training")


# ---- (d) the data order ----------------------------------------------------------------------------


def _indexed_dataset(size: int, seed: int) -> TensorDataset:
    """Examples whose first feature is their index: the batches say which examples they hold."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(size, 64, generator=generator)
    inputs[:, 0] = torch.arange(size, dtype=torch.float32)
    targets = torch.randint(0, 10, (size,), generator=generator)
    return TensorDataset(inputs, targets)


def _epoch_order(loader, dataset: TensorDataset, what: str) -> tuple[list[int], list[int]]:
    """Iterate one epoch: the indices in order and the batch sizes, checking each pair's labels."""
    order, sizes = [], []
    for batch in loader:
        require(isinstance(batch, (list, tuple)) and len(batch) == 2,
                f"{what} should yield (inputs, targets) pairs", got=type(batch).__name__,
                hint="return a DataLoader over the dataset")
        inputs, targets = batch
        indices = inputs[:, 0].round().long()
        require(torch.equal(dataset.tensors[1][indices], targets),
                f"{what} yielded targets that do not belong to their inputs",
                hint="let the DataLoader read (input, target) pairs from the dataset")
        order += indices.tolist()
        sizes.append(len(indices))
    return order, sizes


def _perturb_global_rng(value: int) -> None:
    """Move every global generator somewhere else: a seeded order must not depend on them."""
    torch.manual_seed(value)
    random.seed(value)


@one_thread
def check_train_loader(make_train_loader, config_class, seed: int = 0) -> None:
    """(d) Same seed, same order; another seed, another order; a fresh shuffle every epoch."""
    rng = random.Random(seed)
    batch_size = rng.choice([16, 24, 40, 48])
    size = batch_size * rng.randint(5, 8) + rng.randint(1, batch_size - 1)  # a short last batch
    dataset = _indexed_dataset(size, seed)
    seeds = rng.sample(range(10_000), 2)

    def epochs(cfg_seed: int, perturbation: int) -> list[list[int]]:
        cfg = _config(config_class, seed=cfg_seed, batch_size=batch_size)
        _perturb_global_rng(perturbation)
        loader = _call_watched(make_train_loader, dataset, cfg, name="make_train_loader",
                               prefixes=LIBRARY_LOADERS, instead="a torch DataLoader, shuffled by "
                               "a generator of its own seeded from cfg.seed")
        orders = []
        for epoch in range(2):
            _perturb_global_rng(perturbation + 1 + epoch)
            order, sizes = _epoch_order(loader, dataset, "the loader")
            expected_sizes = [batch_size] * (size // batch_size) + [size % batch_size]
            require(sorted(order) == list(range(size)),
                    f"epoch {epoch + 1} did not read each of the {size} examples once",
                    got=f"{len(order)} examples, {len(set(order))} different",
                    hint="shuffle=True reads every example once per epoch; keep the last, short batch")
            require(sizes == expected_sizes, f"the batches should hold cfg.batch_size ({batch_size}) "
                    "examples (the last one fewer)", got=f"sizes {sizes[:3]}...",
                    hint="batch_size=cfg.batch_size, and keep the last batch")
            orders.append(order)
        return orders

    first = epochs(seeds[0], 11 + seed)
    require(first[0] != list(range(size)), "the loader reads the examples in their stored order",
            hint="shuffle=True")
    require(first[0] != first[1], "both epochs read the examples in the same order",
            hint="let the DataLoader shuffle each epoch anew (shuffle=True with a seeded generator), "
            "rather than fixing one permutation")
    again = epochs(seeds[0], 5_000 + seed)
    require(again == first, f"two loaders made with the same cfg.seed ({seeds[0]}) read the "
            "examples in different orders, after other code had drawn random numbers",
            hint="give the DataLoader a generator of its own, seeded from cfg.seed, so that its "
            "order depends on nothing else")
    other = epochs(seeds[1], 11 + seed)
    require(other[0] != first[0], f"cfg.seed {seeds[0]} and cfg.seed {seeds[1]} gave the same order",
            hint="seed the loader's generator from cfg.seed, not from a fixed number")
    passed(f"the batch order follows cfg.seed: the same seed gave the same order twice (whatever "
           f"else drew random numbers), another seed another one, and each epoch reshuffled all "
           f"{size} examples in batches of {batch_size}")


# ---- (e) the whole loop ----------------------------------------------------------------------------


TRAIN_KEYS = ("step", "loss", "lr", "grad_norm")
CHECKPOINT_KEYS = ("model", "config", "val_accuracy", "step")
# The run that must reach the target: the default config (6 epochs), with a stated bar.
# A run whose learning rate is still rising (to a huge peak) when it stops: accuracy climbs, then
# collapses, so the best evaluation comes well before the last one.
BEST_NOT_LAST = {"epochs": 2, "eval_every": 3, "lr": 4.0, "warmup_steps": 400, "precision": "fp32",
                 "split_seed": 3, "hidden": 96, "weight_decay": 0.05}
# Both runs evaluate at a period that does not divide their length, so the evaluation after the
# last step is one of its own.
TARGET_EVAL_EVERY = 25


class _RunWatch:
    """Everything the check sees of one train(cfg) run, from outside."""

    def __init__(self, splits):
        self.train_index = {row: i for i, row in enumerate(_rows(splits.train.tensors[0]))}
        self.labels = {row: int(label) for row, label in
                       zip(_rows(splits.val.tensors[0]), splits.val.tensors[1])}
        self.all_labels = {row: int(label) for part in (splits.train, splits.val, splits.test)
                           for row, label in zip(_rows(part.tensors[0]), part.tensors[1])}
        self.optimizers: list = []  # (class, param groups' lr/initial_lr/weight_decay) per optimizer
        self.model_shape = None  # (hidden width, dropout probabilities) of the model trained
        self.steps: list[dict] = []  # per optimizer step: lr, clipped gradient norm
        self.initial_weights = None
        self.train_forwards: list[dict] = []  # rows, dtype, step
        self.evaluations: dict[int, dict] = {}  # step -> rows, modes, outputs, weights
        self._handles = []

    def __enter__(self):
        self._handles = [register_optimizer_step_pre_hook(self._before_step),
                         register_module_forward_hook(self._after_forward)]
        return self

    def __exit__(self, *exc_info):
        for handle in self._handles:
            handle.remove()

    def _before_step(self, optimizer, args, kwargs):
        if self.initial_weights is None:
            self.initial_weights = torch.cat([p.detach().flatten() for group in optimizer.param_groups
                                              for p in group["params"]]).clone()
        if not any(o is optimizer for o, _ in self.optimizers):
            self.optimizers.append((optimizer, [(g.get("initial_lr", g["lr"]), g.get("weight_decay"))
                                                for g in optimizer.param_groups]))
        self.steps.append({"lr": float(optimizer.param_groups[0]["lr"]),
                           "grad_norm": float(_flat_grads(optimizer).norm())})

    def _after_forward(self, module, args, output):
        if not isinstance(module, MLP):
            return
        rows = _rows(args[0])
        if self.model_shape is None:
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            self.model_shape = (linears[0].out_features if linears else None,
                                sorted({m.p for m in module.modules() if isinstance(m, nn.Dropout)}))
        # A forward that records a graph, on training examples only, is a training step (in
        # whichever mode the model was: training in eval mode is a mistake the check names).
        is_training = torch.is_grad_enabled() and not all(r in self.labels for r in rows)
        if is_training:
            # Positions in the training split: two splits of two seeds compare by the order read.
            positions = [self.train_index.get(r, -1) for r in rows]
            labels = torch.tensor([self.all_labels.get(r, 0) for r in rows])
            loss = F.cross_entropy(output.detach().float(), labels).item()
            self.train_forwards.append({"rows": rows, "dtype": output.dtype, "step": len(self.steps),
                                        "positions": positions, "training": module.training,
                                        "loss": loss})
            return
        step = len(self.steps)
        evaluation = self.evaluations.setdefault(step, {
            "rows": [], "training": False, "grad": False, "correct": 0,
            "weights": {k: v.detach().clone() for k, v in module.state_dict().items()}})
        evaluation["rows"] += rows
        evaluation["training"] |= module.training
        evaluation["grad"] |= torch.is_grad_enabled()
        predictions = output.detach().float().argmax(dim=1).tolist()
        evaluation["correct"] += sum(self.labels.get(r, -1) == p for r, p in zip(rows, predictions))


def _watched_run(train, cfg, splits) -> tuple[dict, _RunWatch]:
    with _RunWatch(splits) as watch, _quiet_scheduler_warning():
        result = _call_watched(train, cfg, name="train",
                               prefixes=(LOOP_MODULE, SCHEDULES_MODULE, *LIBRARY_LOADERS),
                               instead="your own loop, using your lr_multiplier, train_step, "
                               "evaluate and make_train_loader")
    require(isinstance(result, dict) and "history" in result and "best_checkpoint" in result,
            "train(cfg) should return a dict with the keys 'history' and 'best_checkpoint'",
            got=type(result).__name__ if not isinstance(result, dict) else f"keys {sorted(map(str, result))}",
            hint='end train() with return {"history": history, "best_checkpoint": str(path)}')
    return result, watch


def _check_run(result, watch: _RunWatch, cfg, splits) -> dict:
    """Everything one run must satisfy; returns the evaluations' accuracies by step."""
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    _check_split(watch, cfg, splits)
    # The steps taken.
    require(len(watch.steps) == total, f"train ran {len(watch.steps)} optimizer steps",
            expected=f"cfg.epochs * batches per epoch = {cfg.epochs} * {steps_per_epoch} = {total}",
            hint="one train_step per batch of make_train_loader(data.train, cfg), for cfg.epochs epochs")
    forwards = watch.train_forwards
    # The model and the optimizer the contract names.
    hidden, dropouts = watch.model_shape or (None, [])
    require(hidden == cfg.hidden and dropouts == [cfg.dropout],
            f"the model trained has hidden width {hidden} and dropout {dropouts}",
            expected=f"hidden width cfg.hidden = {cfg.hidden}, dropout cfg.dropout = {cfg.dropout}",
            hint="build MLP(hidden=cfg.hidden, dropout=cfg.dropout): every setting comes from cfg")
    require(len(watch.optimizers) == 1, f"train stepped {len(watch.optimizers)} optimizers",
            expected="one", hint="build one optimizer, before the loop")
    optimizer, groups = watch.optimizers[0]
    require(type(optimizer) is torch.optim.AdamW, f"the optimizer was {type(optimizer).__name__}",
            expected="torch.optim.AdamW",
            hint="AdamW decouples the weight decay from the gradient; Adam(weight_decay=...) adds "
            "it to the gradient (L2), which is another optimizer")
    for lr, weight_decay in groups:
        require(lr == cfg.lr and weight_decay == cfg.weight_decay,
                f"the optimizer was built with lr={lr:g}, weight_decay={weight_decay}",
                expected=f"lr=cfg.lr={cfg.lr:g}, weight_decay=cfg.weight_decay={cfg.weight_decay:g}",
                hint="AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)")
    # Training mode during training: dropout on.
    in_eval = [f["step"] + 1 for f in forwards if not f["training"]]
    if in_eval:
        raise CheckFailure(f"{len(in_eval)} training steps ran the model in eval mode (dropout off), "
                           f"the first at step {in_eval[0]}",
                           hint="the model must be back in training mode after each evaluation "
                           "(model.train()); call model.eval() only inside evaluate")
    # The training batches: the training split, every example once per epoch, in the precision asked.
    for epoch in range(cfg.epochs):
        rows = [r for f in forwards if epoch * steps_per_epoch <= f["step"] < (epoch + 1) * steps_per_epoch
                for r in f["rows"]]
        require(len(rows) == len(splits.train) and len(set(rows)) == len(rows),
                f"epoch {epoch + 1} trained on {len(rows)} examples ({len(set(rows))} different) of the "
                f"training split's {len(splits.train)}",
                hint="train on load_digits_splits(seed=cfg.split_seed).train, every example once per epoch")
    if cfg.epochs > 1:
        first = [p for f in forwards if f["step"] < steps_per_epoch for p in f["positions"]]
        second = [p for f in forwards if steps_per_epoch <= f["step"] < 2 * steps_per_epoch
                  for p in f["positions"]]
        require(first != second, "epochs 1 and 2 read the training examples in the same order",
                hint="make the loader once, before the epochs: a DataLoader with a seeded generator "
                "reshuffles at every epoch, one made anew each epoch repeats its first order")
    dtypes = {f["dtype"] for f in forwards}
    require(dtypes == {DTYPES[cfg.precision]}, f"with precision={cfg.precision!r} the model computed "
            f"in {', '.join(sorted(str(d).replace('torch.', '') for d in dtypes))}",
            hint="use your train_step, which applies autocast as cfg.precision says")
    # The learning rate of every step: the contract's formula, exactly.
    for step, observed in enumerate(watch.steps):
        expected = cfg.lr * reference_multiplier(step, cfg.warmup_steps, total)
        if abs(observed["lr"] - expected) > 1e-9 * cfg.lr:
            raise CheckFailure(f"the learning rate of step {step} (counting from 0) was "
                               f"{observed['lr']:.6g}; the contract says {expected:.6g} "
                               f"(cfg.lr * lr_multiplier({step}, {cfg.warmup_steps}, {total}))",
                               hint="one LambdaLR over total_steps = cfg.epochs * len(loader) "
                               "optimizer steps, stepped once after every optimizer step")
    # Clipping.
    worst = max(s["grad_norm"] for s in watch.steps)
    require(worst <= cfg.grad_clip * (1 + CLIP_SLACK), f"an optimizer step used gradients of norm "
            f"{worst:.3g}, above cfg.grad_clip = {cfg.grad_clip:g}",
            hint="clip in every step (your train_step does it)")
    # Evaluations: when, on what, how.
    wanted_steps = sorted({*range(cfg.eval_every, total + 1, cfg.eval_every), total})
    val_rows = Counter(_rows(splits.val.tensors[0]))
    for step, evaluation in sorted(watch.evaluations.items()):
        rows = Counter(evaluation["rows"])
        if rows != val_rows:
            inside = sum((rows & val_rows).values())
            raise CheckFailure(f"the evaluation after step {step} ran the model on "
                               f"{sum(rows.values())} examples, of which {inside} from the "
                               f"validation split ({len(splits.val)} examples)",
                               hint="evaluate on load_digits_splits(seed=cfg.split_seed).val, the "
                               "whole of it (not the test or training split)")
        require(not evaluation["training"], f"the evaluation after step {step} ran the model in "
                "training mode (its dropout was active)", hint="use your evaluate, which calls model.eval()")
        require(not evaluation["grad"], f"the evaluation after step {step} recorded a graph",
                hint="use your evaluate, which runs under torch.inference_mode()")
    done = sorted(watch.evaluations)
    require(done == wanted_steps, "evaluations on the validation split should come every "
            "cfg.eval_every steps and after the last step",
            expected=f"after steps {_short(wanted_steps)}", got=f"after steps {_short(done)}",
            hint="after the optimizer step: if step % cfg.eval_every == 0 or step == total_steps")
    accuracies = {step: e["correct"] / len(splits.val) for step, e in watch.evaluations.items()}
    _check_history(result["history"], watch, accuracies, total)
    return accuracies


def _check_split(watch: _RunWatch, cfg, splits) -> None:
    """The run trained on the fixed split (cfg.split_seed), not on one drawn with the run's seed."""
    read = {r for f in watch.train_forwards for r in f["rows"]}
    fixed = set(watch.train_index)
    if read < fixed and read:
        raise CheckFailure(f"the run trained on {len(read)} of the {len(fixed)} examples of the "
                           f"training split of cfg.split_seed = {cfg.split_seed}",
                           hint="train on all of load_digits_splits(seed=cfg.split_seed).train, "
                           "the split every run shares")
    if read <= fixed:
        return
    outside = len(read - fixed)
    for seed, name in ((cfg.seed, "cfg.seed"), (0, "0")):
        if seed == cfg.split_seed:
            continue
        if read <= set(_rows(load_digits_splits(seed=seed).train.tensors[0])):
            raise CheckFailure(f"the run trained on {outside} examples that are outside the "
                               f"training split of cfg.split_seed = {cfg.split_seed}: it split the "
                               f"data with seed {name} = {seed}",
                               hint="split with cfg.split_seed, the split's own seed, fixed: "
                               "re-splitting with the run's seed moves examples between training "
                               "and validation, and the runs of two seeds are no longer measured "
                               "on the same examples")
    raise CheckFailure(f"the run trained on {outside} examples that are outside the training "
                       f"split of load_digits_splits(seed=cfg.split_seed)",
                       hint="train and evaluate on load_digits_splits(seed=cfg.split_seed), the "
                       "split every run shares")


def _check_losses(history_records, watch: _RunWatch) -> None:
    """Every recorded loss is the cross-entropy of the outputs the check saw at that step."""
    seen = {}
    for forward in watch.train_forwards:
        seen.setdefault(forward["step"] + 1, []).append(forward["loss"])
    for record in history_records:
        losses = seen.get(record["step"], [])
        if len(losses) != 1:
            continue
        require(abs(record["loss"] - losses[0]) <= 1e-5 * abs(losses[0]) + 1e-7,
                f"training record {record['step']} says loss {record['loss']:.6g}; the model's "
                f"outputs at that step had a cross-entropy of {losses[0]:.6g}",
                hint="record the loss train_step returned for this very step (not a running "
                "mean, not the previous step's)")


def _short(values) -> str:
    values = list(values)
    return str(values) if len(values) <= 6 else f"[{', '.join(map(str, values[:4]))}, ..., {values[-1]}]"


def _check_history(history, watch: _RunWatch, accuracies: dict, total: int) -> None:
    """The records must tell what happened: the check compares them with what it saw."""
    require(isinstance(history, (list, tuple)) and all(isinstance(r, dict) for r in history),
            "result['history'] should be a list of dicts", got=type(history).__name__,
            hint='one {"step", "loss", "lr", "grad_norm"} per step, one {"step", "val_accuracy"} '
            "per evaluation")
    train_records = [r for r in history if "loss" in r]
    eval_records = [r for r in history if "val_accuracy" in r]
    require([r.get("step") for r in train_records] == list(range(1, total + 1)),
            "the history should hold one training record per optimizer step, steps 1, 2, 3, ...",
            got=f"{len(train_records)} records", hint='append {"step": step, "lr": lr, **train_step(...)}')
    for record, observed in zip(train_records, watch.steps):
        missing = [k for k in TRAIN_KEYS if not _is_number(record.get(k))]
        require(not missing, f"training record {record.get('step')} lacks a number for {missing[0] if missing else ''!r}",
                hint='{"step": step, "lr": lr, "loss": ..., "grad_norm": ...}, plain numbers')
        require(abs(record["lr"] - observed["lr"]) <= 1e-9 * max(observed["lr"], 1e-12) + 1e-15,
                f"training record {record['step']} says lr {record['lr']:.4g}; the optimizer step used "
                f"{observed['lr']:.4g}", hint="record optimizer.param_groups[0]['lr'] before train_step")
    _check_losses(train_records, watch)
    recorded = {r.get("step"): r.get("val_accuracy") for r in eval_records}
    require(sorted(recorded) == sorted(accuracies), "the history's evaluation records should match the "
            "evaluations", expected=f"steps {_short(sorted(accuracies))}",
            got=f"steps {_short(sorted(k for k in recorded if _is_number(k)))}",
            hint='append {"step": step, "val_accuracy": accuracy} after each evaluation')
    for step, accuracy in accuracies.items():
        value = recorded[step]
        require(_is_number(value) and abs(value - accuracy) <= 1e-9,
                f"the history says val_accuracy {_fmt(value)} after step {step}; the model's "
                f"predictions then scored {accuracy:.4g}", hint="record what evaluate returned")


def _check_checkpoint(result, watch: _RunWatch, cfg, accuracies: dict) -> dict:
    path = result["best_checkpoint"]
    require(isinstance(path, (str, Path)) and Path(path).is_file(),
            "result['best_checkpoint'] should be the path of the saved file", got=repr(path)[:60],
            hint="torch.save(checkpoint, path) with path inside cfg.out_dir, and return str(path)")
    if cfg.out_dir is None:
        temporary = Path(tempfile.gettempdir()).resolve()
        where = Path(path).resolve()
        require(Path(path).is_absolute() and temporary in where.parents,
                "with cfg.out_dir = None the checkpoint should go to a fresh temporary directory",
                got=str(path), hint="out_dir=None means a fresh temporary directory: "
                "Path(cfg.out_dir or tempfile.mkdtemp()), never the working directory")
    else:
        require(Path(path).resolve().parent == Path(cfg.out_dir).resolve(),
                "the checkpoint should be saved in cfg.out_dir", got=str(path),
                hint="build the path from Path(cfg.out_dir)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckFailure("the checkpoint cannot be loaded with torch.load(path, weights_only=True)",
                           hint="save plain data only: model.state_dict() (not the model) and "
                           "dataclasses.asdict(cfg) (not the config object)") from None
    require(isinstance(checkpoint, dict), "the checkpoint should be a dict", got=type(checkpoint).__name__,
            hint='{"model": ..., "config": ..., "val_accuracy": ..., "step": ...}')
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    require(not missing, f"the checkpoint holds no {missing[0] if missing else ''!r}",
            got=f"keys {sorted(map(str, checkpoint))}",
            hint="save the weights, the config as dataclasses.asdict(cfg), the validation accuracy "
            "and the step")
    require(checkpoint["config"] == dataclasses.asdict(cfg), "the checkpoint's config is not the "
            "config of this run", got=repr(checkpoint["config"])[:60],
            hint="store dataclasses.asdict(cfg) of the cfg passed to train()")
    best = max(accuracies.values())
    best_steps = sorted(step for step, accuracy in accuracies.items() if accuracy == best)
    state = checkpoint["model"]
    matches = [step for step, evaluation in sorted(watch.evaluations.items())
               if isinstance(state, dict) and set(state) == set(evaluation["weights"])
               and all(torch.equal(state[k], v) for k, v in evaluation["weights"].items())]
    last = max(accuracies)
    _live_hint = ("a state dict holds the live weights, which move on: save it at the moment the "
                  "accuracy improves, or keep copy.deepcopy(model.state_dict())")
    if not matches:
        raise CheckFailure("the checkpoint's weights are those of no evaluation", hint=_live_hint)
    step = checkpoint["step"]
    if _is_number(step) and step not in matches and max(matches) > step:
        raise CheckFailure(f"the checkpoint says step {step}, but holds the weights of step "
                           f"{max(matches)}, a later evaluation", hint=_live_hint)
    if not any(step in matches for step in best_steps):
        got = matches[-1]
        raise CheckFailure(f"the checkpoint holds the weights of step {got} (accuracy "
                           f"{accuracies[got]:.3f}), not those of the best evaluation",
                           expected=f"step {best_steps[0]} (accuracy {best:.3f})",
                           hint="save only when the accuracy beats the best so far"
                           + (" (the last evaluation is not always the best)" if got == last else ""))
    require(step in matches, f"the checkpoint says step {_fmt(step)}; its weights are those of step "
            f"{matches[0]}", hint="store the step at which you saved")
    require(_is_number(checkpoint["val_accuracy"]) and abs(checkpoint["val_accuracy"] - best) <= 1e-9,
            f"the checkpoint says val_accuracy {_fmt(checkpoint['val_accuracy'])}; its weights scored "
            f"{best:.4g}", hint="store the accuracy you just measured")
    return checkpoint


@one_thread
def check_train(train, config_class, seed: int = 0) -> None:
    """(e) The whole loop: follows the contract, keeps the best, is seeded, reaches the target.

    The short runs come first (a wrong answer fails in about a second); the run that must reach
    the target accuracy comes last.
    """
    seeds = random.Random(seed).sample(range(1, 1000), 2)
    # 1. A run that gets worse before it ends: the checkpoint must be the best, not the last. Its
    # split seed, width and weight decay differ from the defaults, so a value typed in shows.
    short = _config(config_class, seed=seeds[1], **BEST_NOT_LAST)
    short_splits = load_digits_splits(seed=short.split_seed)
    _perturb_global_rng(100 + seed)
    result_a, watch_a = _watched_run(train, short, short_splits)
    accuracies_a = _check_run(result_a, watch_a, short, short_splits)
    _check_checkpoint(result_a, watch_a, short, accuracies_a)
    # 2. The same seed again, after other code drew random numbers: the same run.
    again = dataclasses.replace(short, out_dir=tempfile.mkdtemp(prefix="ex01-"))
    _perturb_global_rng(200 + seed)
    result_b, watch_b = _watched_run(train, again, short_splits)
    require(torch.equal(watch_a.initial_weights, watch_b.initial_weights),
            f"two runs with seed {short.seed} started from different initial weights",
            hint="seed random, numpy and torch from cfg.seed first thing in train(), before the "
            "model is built")
    order_a = [f["rows"] for f in watch_a.train_forwards]
    order_b = [f["rows"] for f in watch_b.train_forwards]
    require(order_a == order_b, f"two runs with seed {short.seed} read the training batches in "
            "different orders", hint="use your make_train_loader, whose order follows cfg.seed")
    same = [s["lr"] for s in watch_a.steps] == [s["lr"] for s in watch_b.steps] and \
        all(torch.equal(a["weights"][k], b["weights"][k]) for a, b in
            zip(watch_a.evaluations.values(), watch_b.evaluations.values()) for k in a["weights"])
    require(same, f"two runs with seed {short.seed} trained to different weights",
            hint="seed torch from cfg.seed before anything random happens (dropout draws from it)")
    # 3. Another seed, on the same split, with out_dir=None: other initial weights and another
    # batch order, and a checkpoint in a fresh temporary directory.
    other = dataclasses.replace(short, seed=short.seed + 1, out_dir=None)
    _perturb_global_rng(100 + seed)
    try:
        result_c, watch_c = _watched_run(train, other, short_splits)
    except CheckFailure as error:
        if isinstance(error, NotImplementedYet):
            raise
        raise CheckFailure(f"with cfg.out_dir = None, {error.what}",
                           hint="out_dir=None means a fresh temporary directory: "
                           "Path(cfg.out_dir or tempfile.mkdtemp())") from None
    require(not torch.equal(watch_a.initial_weights, watch_c.initial_weights),
            f"seeds {short.seed} and {other.seed} gave the same initial weights",
            hint="seed torch with cfg.seed, not a fixed number")
    positions_a = [f["positions"] for f in watch_a.train_forwards]
    positions_c = [f["positions"] for f in watch_c.train_forwards]
    require(positions_a != positions_c, f"seeds {short.seed} and {other.seed} read the training "
            "split in the same order", hint="use your make_train_loader, whose order follows cfg.seed")
    accuracies_c = _check_run(result_c, watch_c, other, short_splits)
    _check_checkpoint(result_c, watch_c, other, accuracies_c)
    # 4. The default budget reaches the target, with every part of the contract in place.
    cfg = _config(config_class, seed=seeds[0], eval_every=TARGET_EVAL_EVERY)
    splits = load_digits_splits(seed=cfg.split_seed)
    _perturb_global_rng(7 + seed)
    result, watch = _watched_run(train, cfg, splits)
    accuracies = _check_run(result, watch, cfg, splits)
    best = max(accuracies.values())
    require(best >= cfg.target_accuracy, f"the best validation accuracy was {best:.3f}",
            expected=f">= cfg.target_accuracy = {cfg.target_accuracy}",
            hint="check each part with its own question first; then look at the learning rates "
            "and the loss in the history")
    _check_checkpoint(result, watch, cfg, accuracies)
    passed(f"train reached the target accuracy {cfg.target_accuracy} within the budget on the "
           f"split of cfg.split_seed; the model, the AdamW optimizer and the learning rate of every "
           f"step followed the config, training ran in training mode with a fresh order each "
           f"epoch, every evaluation covered the validation split in eval mode, the recorded "
           f"losses were the model's, the checkpoint held the best evaluation rather than the "
           f"last (in a temporary directory when out_dir was None), and the same seed gave the "
           f"same run while another seed changed the weights and the batch order")


hint = make_hint({
    "a": "Sketch the curve first and mark where each piece starts and ends. The paper's formula "
         "takes the smaller of two terms: which constant makes both equal 1 where they meet? Then "
         "work out by hand step 0, step warmup_steps, a step past total_steps, and a run with "
         "warmup_steps = 0, before running the check.",
    "b": "The lesson's `Scheduled` loop has every line in the right order, the held schedule on a "
         "skipped step included. The scaler is enabled only for fp16, so the same code serves all "
         "three precisions.",
    "c": "Three things around the forward pass: the mode before it, the context it runs in, the "
         "mode after it. Count correct predictions, then divide once.",
    "d": "A DataLoader takes a `generator=`: the one it shuffles with. Make a fresh one for each "
         "loader, seeded from the config.",
    "e": "Seed first, then build data, loader, model, optimizer, schedule and scaler; loop over "
         "epochs and batches calling your train_step; evaluate when step % cfg.eval_every == 0 or "
         "at the last step; save when the accuracy beats the best so far.",
})
