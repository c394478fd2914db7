"""Checks for exercise 02, a focal loss and a warmup-stable-decay schedule (introduced in exercise 02).

The exercise: (a) write a multi-class `focal_loss(logits, targets, gamma, alpha=None)`, the mean
over the batch of -alpha_t * (1 - p_t) ** gamma * log(p_t); (b) write `warmup_stable_decay(step,
warmup_steps, total_steps, decay_steps, min_lr_ratio)`, the multiplier of the base learning rate
that LambdaLR takes: a linear warmup, a plateau at 1, then a straight line down to min_lr_ratio
over the last decay_steps steps (the shape MiniCPM trained with, Hu et al. 2024,
arXiv:2404.06395, whose own decay was exponential); (c) build the LambdaLR scheduler around it.

The checks recompute every value with a float64 reference, run the learner's loss backward
themselves, and drive the schedule through a real optimizer and LambdaLR they build, reading the
learning rate each optimizer step actually used. While the learner's code runs, a profile function
watches for calls into the library's own focal loss and schedules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from course_lib.checks._core import (
    CallWatch,
    CheckFailure,
    NotImplementedYet,
    call_learner,
    code_objects,
    make_hint,
    passed,
    require,
)

# The loss is compared with a float64 reference at the rounding of the logits' own dtype: correct
# answers written in other orders (nll_loss, cross_entropy then exp, a sum divided by N) differ from
# it by at most 1.5e-6 relatively in float32 and 2e-15 in float64 (measured over 200 seeds of every
# batch the check uses); the bars leave about 7x and 500x of room.
LOSS_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
GRAD_ATOL = 1e-5
# A schedule is a formula in Python floats: a correct answer differs from it by a few units in the
# last place (1e-16; the decay written as 1 - (1 - r) * t or r + (1 - r) * (1 - t) differ by less
# than 3e-16); 1e-12 leaves room for any order of operations, and no room for float32 arithmetic
# or an epsilon added to a denominator.
SCHEDULE_ATOL = 1e-12

hint = make_hint({
    "a": "take log(p) from F.log_softmax (never log of softmax), pick each example's log p_t with "
    "gather, get p_t back with exp, weight -log p_t by (1 - p_t) ** gamma and by alpha[target], "
    "and average over the examples",
    "b": "draw the three phases on a time line from 0 to total_steps and write down the step at "
    "which each one begins. Which phase does a step belong to, and which test must come first so "
    "that no edge (warmup_steps = 0, decay_steps = 0, a step past the end) divides by zero?",
    "c": "LambdaLR(optimizer, lr_lambda) multiplies each group's base LR by lr_lambda(step): give "
    "it a function of the step alone that calls your warmup_stable_decay with the other arguments "
    "fixed",
})


# ---- watching the learner's code -----------------------------------------------------------------


def _library_losses() -> dict:
    """The focal losses a learner could hand the work to: the library's, torchvision's."""
    from course_lib import losses

    functions = [losses.focal_loss, losses.FocalLoss.forward]
    try:
        from torchvision.ops import sigmoid_focal_loss
    except ImportError:  # torchvision is not a dependency of the workbook
        pass
    else:
        functions.append(sigmoid_focal_loss)
    return code_objects(functions)


def _library_schedules() -> dict:
    from course_lib import schedules

    return code_objects([schedules.warmup_cosine_multiplier, schedules.warmup_cosine,
                          schedules.schedule_curve, schedules.build_scheduler,
                          schedules.warmup_linear_multiplier, schedules.warmup_constant_multiplier])


def _refuse_delegation(calls: CallWatch, who: str, asked: str) -> None:
    if calls.called:
        raise CheckFailure(f"{who} called {calls.called[0]}, the library's own {asked}",
                           hint="this exercise asks you to write it yourself, with torch "
                           "operations (F.log_softmax, gather, exp, math.cos)")


# ---- (a) focal_loss ------------------------------------------------------------------------------


def reference_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha=None,
                         *, on_p_t: bool = False, reduce: str = "mean") -> torch.Tensor:
    """The contract in float64. `on_p_t` and `reduce` build the wrong variants the hints name."""
    log_p = F.log_softmax(logits.double(), dim=-1)
    log_p_t = log_p.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    p_t = log_p_t.exp()
    weight = p_t if on_p_t else (-torch.expm1(log_p_t)).clamp_min(1e-300)
    loss = -(weight ** gamma) * log_p_t
    alpha_t = None
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=torch.float64)[targets.long()]
        loss = alpha_t * loss
    if reduce == "sum":
        return loss.sum()
    if reduce == "weighted":  # CrossEntropyLoss(weight=...)'s mean: divided by the sum of alpha_t
        return loss.sum() / alpha_t.sum()
    return loss.mean()


def _batch(seed: int, size: int, classes: int, scale: float = 3.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, classes, generator=generator) * scale
    targets = torch.randint(0, classes, (size,), generator=generator)
    return logits.to(dtype), targets


def _confident_batch(seed: int, size: int = 12, classes: int = 5, dtype=torch.float64):
    """A batch the model gets right with margins of 4 to 14: 1 - p_t between about 1e-6 and 0.07,
    where a floor or an epsilon in the modulating factor changes the loss."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (size,), generator=generator)
    logits = torch.randn(size, classes, generator=generator)
    margins = 4 + 10 * torch.rand(size, generator=generator)
    logits[torch.arange(size), targets] = logits.max(dim=1).values + margins
    return logits.to(dtype), targets


def _call_loss(focal_loss, logits, targets, gamma, alpha=None, *, grad: bool = False):
    """The learner's loss on copies of the inputs, as a float32 leaf when `grad`; (loss, leaf)."""
    leaf = logits.clone().requires_grad_(grad)
    args = (leaf, targets.clone(), gamma)
    with CallWatch(_library_losses()) as calls:
        if alpha is None:
            loss = call_learner(focal_loss, *args, name="focal_loss")
        else:
            loss = call_learner(focal_loss, *args, alpha=alpha.clone(), name="focal_loss")
    _refuse_delegation(calls, "focal_loss", "focal loss")
    if not isinstance(loss, torch.Tensor):
        raise CheckFailure("focal_loss should return a tensor", got=type(loss).__name__,
                           hint="keep the computation in torch, so that backward() can run "
                           "through it; no .item()")
    if loss.dim() != 0:
        raise CheckFailure("focal_loss should return one number, the mean over the batch",
                           expected="a 0-dimensional tensor", got=f"shape {tuple(loss.shape)}",
                           hint="average the per-example losses with .mean()")
    if loss.dtype != logits.dtype:
        raise CheckFailure(f"for {str(logits.dtype).replace('torch.', '')} logits focal_loss "
                           f"returned a {str(loss.dtype).replace('torch.', '')} loss",
                           expected=str(logits.dtype), got=str(loss.dtype),
                           hint="keep the logits' dtype all the way: no .float(), .double() or "
                           "dtype= argument on the way (the loss's dtype is the caller's choice)")
    return loss, leaf


def _close(got: torch.Tensor, expected: torch.Tensor, dtype=torch.float32) -> bool:
    return bool(torch.isclose(got.detach().double(), expected.detach(), rtol=LOSS_RTOL[dtype],
                              atol=0.0))


def _diagnose_value(got, logits, targets, gamma, alpha, where: str) -> None:
    """Raise the failure that names the mistake behind a wrong value."""
    expected = reference_focal_loss(logits, targets, gamma, alpha)
    dtype = logits.dtype
    if _close(got, expected, dtype):
        return
    value = got.detach().double()
    close = lambda a, b: _close(a, b, dtype)  # noqa: E731 - the diagnoses below compare often
    if not torch.isfinite(value):
        raise CheckFailure(f"focal_loss returned {value.item()} {where}",
                           expected=f"{expected.item():.6g}",
                           hint="log(softmax(x)) underflows to log(0) = -inf when one logit is far "
                           "above the others: use F.log_softmax, which computes it stably")
    if gamma != 0 and close(value, reference_focal_loss(logits, targets, gamma, alpha,
                                                         on_p_t=True)):
        raise CheckFailure(f"focal_loss weighted each example by p_t ** gamma {where}",
                           expected=f"{expected.item():.6g}", got=f"{value.item():.6g}",
                           hint="the modulating factor is (1 - p_t) ** gamma: it is small for the "
                           "easy examples (p_t near 1), which is the whole point")
    if close(value, reference_focal_loss(logits, targets, gamma, alpha, reduce="sum")):
        raise CheckFailure(f"focal_loss returned the sum over the batch {where}",
                           expected=f"{expected.item():.6g}", got=f"{value.item():.6g}",
                           hint="the contract is the mean over the examples: divide by the batch "
                           "size (.mean())")
    if alpha is not None:
        if close(value, reference_focal_loss(logits, targets, gamma, None)):
            raise CheckFailure(f"focal_loss ignored alpha {where}",
                               expected=f"{expected.item():.6g}", got=f"{value.item():.6g}",
                               hint="multiply each example's loss by alpha[its target class]")
        if close(value, reference_focal_loss(logits, targets, gamma, alpha, reduce="weighted")):
            raise CheckFailure(f"focal_loss divided by the sum of the alpha weights {where}",
                               expected=f"{expected.item():.6g}", got=f"{value.item():.6g}",
                               hint="that is CrossEntropyLoss(weight=...)'s mean; the contract "
                               "averages over the examples: divide by the batch size")
        raise CheckFailure(f"focal_loss with per-class alpha differs from the contract {where}",
                           expected=f"{expected.item():.6g}", got=f"{value.item():.6g}",
                           hint="alpha_t is alpha[target]: the weight of each example's TRUE "
                           "class, not of its predicted class or of every class")
    relative = abs(value.item() - expected.item()) / abs(expected.item())
    if relative < 1e-3:
        tolerance = LOSS_RTOL[dtype]
        hint = ("two things move the loss this little: arithmetic in a lower precision than the "
                "logits' (do every step in their dtype, without a round trip through float32), "
                "and an epsilon added to p_t or 1 - p_t, or a floor far above the smallest float "
                "(keep 1 - p_t exact; a tiny clamp such as 1e-12 is enough to guard the power)")
        raise CheckFailure(f"focal_loss is off by a relative {relative:.2g} {where}; the "
                           f"tolerance for {str(dtype).replace('torch.', '')} is {tolerance:g}",
                           expected=f"{expected.item():.12g}", got=f"{value.item():.12g}",
                           hint=hint)
    raise CheckFailure(f"focal_loss differs from -(1 - p_t) ** gamma * log(p_t) {where}",
                       expected=f"{expected.item():.6g}", got=f"{value.item():.6g}",
                       hint="p_t is the softmax probability of each example's TRUE class; take "
                       "log p_t from F.log_softmax and gather")


def check_focal_loss(focal_loss, *, seed: int = 0) -> None:
    """focal_loss(logits, targets, gamma, alpha=None): the mean over the batch of
    -alpha[target] * (1 - p_t) ** gamma * log(p_t), stable for large logits, with finite gradients
    equal to the formula's."""
    # gamma = 0 without alpha is cross-entropy.
    logits, targets = _batch(seed, 16, 5)
    got, _ = _call_loss(focal_loss, logits, targets, 0.0)
    expected = F.cross_entropy(logits.double(), targets)
    if not _close(got, expected):
        _diagnose_value(got, logits, targets, 0.0, None, "with gamma = 0")
    # gamma = 0 with alpha: each example's cross-entropy times alpha[target], averaged over the
    # examples (not CrossEntropyLoss(weight=alpha), which divides by the sum of the weights).
    alpha = 0.1 + torch.rand(5, generator=torch.Generator().manual_seed(seed + 5)) * 2
    got, _ = _call_loss(focal_loss, logits, targets, 0.0, alpha)
    _diagnose_value(got, logits, targets, 0.0, alpha, "with gamma = 0 and per-class alpha")
    # float64 logits: a float64 loss, exact to float64 rounding.
    for gamma, use_alpha in ((2.0, False), (0.5, True)):
        logits, targets = _batch(seed + 6, 20, 6, dtype=torch.float64)
        alpha = (0.1 + torch.rand(6, generator=torch.Generator().manual_seed(seed + 6)) * 2).double()
        got, _ = _call_loss(focal_loss, logits, targets, gamma, alpha if use_alpha else None)
        _diagnose_value(got, logits, targets, gamma, alpha if use_alpha else None,
                        f"for float64 logits with gamma = {gamma:g}")
    # Confident examples: 1 - p_t is small, where an epsilon or a floor shows.
    for gamma in (2.0, 0.5):
        logits, targets = _confident_batch(seed + 7)
        got, _ = _call_loss(focal_loss, logits, targets, gamma)
        _diagnose_value(got, logits, targets, gamma, None, "on a batch of confident, correct "
                        f"float64 predictions with gamma = {gamma:g}")
    # Known values: one confident, one unsure and one wrong example.
    known_logits = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 3.0, 0.0]])
    known_targets = torch.tensor([0, 0, 0])
    for gamma in (0.5, 1.0, 2.0, 5.0):
        got, _ = _call_loss(focal_loss, known_logits, known_targets, gamma)
        _diagnose_value(got, known_logits, known_targets, gamma, None,
                        f"on the three-example batch of the notebook with gamma = {gamma:g}")
    # Random batches, other sizes, per-class alpha.
    for size, classes, gamma in ((24, 10, 2.0), (7, 3, 1.5)):
        logits, targets = _batch(seed + 1, size, classes)
        got, _ = _call_loss(focal_loss, logits, targets, gamma)
        _diagnose_value(got, logits, targets, gamma, None, f"on a batch of {size} with {classes} "
                        f"classes, gamma = {gamma:g}")
        generator = torch.Generator().manual_seed(seed + 2)
        alpha = 0.1 + torch.rand(classes, generator=generator) * 2
        got, _ = _call_loss(focal_loss, logits, targets, gamma, alpha)
        _diagnose_value(got, logits, targets, gamma, alpha, f"with per-class alpha {classes} "
                        "weights")
    # Large logits: log of softmax underflows.
    logits, targets = _batch(seed + 3, 12, 4, scale=300.0)
    got, _ = _call_loss(focal_loss, logits, targets, 2.0)
    _diagnose_value(got, logits, targets, 2.0, None, "for logits around +-300")
    # Gradients: finite and equal to the formula's, also where p_t rounds to 1 with gamma < 1.
    logits, targets = _batch(seed + 4, 10, 4)
    logits[0] = torch.tensor([40.0, 0.0, 0.0, 0.0])  # p_t is 1 in float32
    targets[0] = 0
    for gamma in (2.0, 0.5):
        got, leaf = _call_loss(focal_loss, logits, targets, gamma, grad=True)
        if got.grad_fn is None:
            raise CheckFailure("focal_loss returned a tensor that backward() cannot go through",
                               hint="no .item(), .detach() or torch.tensor(...) of a result on "
                               "the way: keep every step a torch operation on the logits")
        got.backward()
        reference = logits.double().requires_grad_(True)
        reference_focal_loss(reference, targets, gamma).backward()
        grad = leaf.grad
        if grad is None or not torch.isfinite(grad).all():
            bad = "no gradient" if grad is None else f"{int((~torch.isfinite(grad)).sum())} " \
                "non-finite gradient values"
            raise CheckFailure(f"focal_loss gave {bad} with gamma = {gamma:g} for a batch with one "
                               "example whose p_t rounds to 1",
                               hint="for gamma < 1, (1 - p_t) ** gamma has an infinite slope at "
                               "1 - p_t = 0 and 0 * inf is NaN: keep 1 - p_t above a tiny floor "
                               "(clamp) before the power")
        if not torch.allclose(grad.double(), reference.grad, atol=GRAD_ATOL, rtol=1e-4):
            largest = (grad.double() - reference.grad).abs().max().item()
            raise CheckFailure(f"the gradient of focal_loss differs from the formula's with gamma "
                               f"= {gamma:g} (largest difference {largest:.3g})",
                               hint="the factor (1 - p_t) ** gamma is part of the loss: compute it "
                               "from the logits without .detach(), so backward() sees it")
    passed("focal_loss matches cross-entropy at gamma = 0 (weighted by alpha when given), the "
           "formula for gamma in 0.5..5 with and without alpha to the rounding of float32 and of "
           "float64, keeps the logits' dtype, stays finite for logits of 300, and its gradients are "
           "the formula's")


# ---- (b) warmup_stable_decay ---------------------------------------------------------------------


def reference_multiplier(step: int, warmup_steps: int, total_steps: int, decay_steps: int,
                         min_lr_ratio: float = 0.0) -> float:
    """The contract: a ramp from 0, a plateau at 1, a straight line down to min_lr_ratio over the
    last decay_steps steps, and min_lr_ratio from total_steps on."""
    if step >= total_steps:
        return min_lr_ratio
    if step < warmup_steps:
        return step / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - min_lr_ratio) * (step - decay_start) / decay_steps


def _lesson_warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio):
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _decay_after_warmup(step, warmup_steps, total_steps, min_lr_ratio):
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0 - (1.0 - min_lr_ratio) * progress


# (warmup_steps, total_steps, decay_steps, min_lr_ratio): a usual one, a floor, the shortest
# warmup, then the edges, each named when it fails: no warmup, no decay phase, no plateau (the
# decay begins where the warmup ends), and a run that is all decay.
SCHEDULE_CASES = ((10, 100, 20, 0.0), (7, 50, 10, 0.1), (1, 12, 3, 0.05), (0, 30, 6, 0.2),
                  (5, 25, 0, 0.1), (8, 20, 12, 0.0), (0, 16, 16, 0.25))
# Past the end of the run: a straight line continued would fall below the floor within a step.
PAST_THE_END = 5
BASE_LR = 0.5


def _as_number(value, step: int, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckFailure(f"{name} returned {type(value).__name__} at step {step}",
                           expected="a number", hint="return a Python float: LambdaLR multiplies "
                           "each base learning rate by it")
    return float(value)


def _lrs_used(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The LR of every group at each of `steps` optimizer steps, read as each step starts."""
    used = []

    def record(opt, args, kwargs):
        used.append([group["lr"] for group in opt.param_groups])

    handle = optimizer.register_step_pre_hook(record)
    try:
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
    finally:
        handle.remove()
    return used


def _case(warmup, total, decay, ratio) -> str:
    return (f"(warmup_steps={warmup}, total_steps={total}, decay_steps={decay}, "
            f"min_lr_ratio={ratio:g})")


def _curve_hint(got: list[float], expected: list[float], first: int, warmup: int, total: int,
                decay: int, ratio: float) -> str:
    """The hint for a curve whose first wrong step is `first`."""
    start = total - decay
    if first > total:
        return ("past total_steps the run is over: the factor stays at min_lr_ratio (a straight "
                "line continued falls below the floor, then below 0)")
    if first == total:
        return (f"at step total_steps the decay has arrived: the factor is min_lr_ratio ({ratio:g}) "
                "exactly, whatever decay_steps is")
    if first == 0 and warmup == 0:
        return "with warmup_steps = 0 there is no warmup: the very first step already uses 1"
    if first == 0:
        return "the first step (step 0) starts from 0: the warmup rises from nothing"
    if first < warmup and got[first] == 0:
        return (f"a factor of 0 at step {first}, where the warmup has already risen: an integer "
                "division (//) or int() rounds the fraction down")
    if first < warmup:
        return ("during warmup the factor rises in a straight line, reaching exactly 1 at step "
                "warmup_steps; check the bound of your warmup branch")
    if first < start or (first == start and abs(got[first] - 1.0) > SCHEDULE_ATOL):
        if all(abs(got[s] - _lesson_warmup_cosine(s, warmup, total, ratio)) <= SCHEDULE_ATOL
               for s in range(total + 1)):
            return ("that is the lesson's warmup + cosine; this schedule stays at 1 after the "
                    "warmup and decays only over the last decay_steps steps")
        if all(abs(got[s] - _decay_after_warmup(s, warmup, total, ratio)) <= SCHEDULE_ATOL
               for s in range(total + 1)):
            return ("the decay starts right after the warmup; here it waits on a plateau at 1 "
                    "and begins decay_steps before total_steps")
        return ("between the warmup and the decay the factor stays at exactly 1 (the stable "
                "phase); the decay begins at step total_steps - decay_steps")
    if all(got[s] == 1.0 for s in range(start, total)):
        return ("the factor stayed at 1 through the decay phase, as if the decay never began: "
                "check where it begins, and that no integer division (//) rounds its progress "
                "down to 0")
    if all(abs(got[s] - reference_multiplier(s, warmup, total, decay, 0.0)) <= SCHEDULE_ATOL
           for s in range(total)):
        return (f"the decay ends at min_lr_ratio ({ratio:g}), not at 0: the straight line runs "
                "from 1 down to the floor")
    return ("the decay is a straight line: 1 at step total_steps - decay_steps (its first step), "
            "falling by the same amount each step, to reach min_lr_ratio at step total_steps")


def _diagnose_curve(got: list[float], warmup: int, total: int, decay: int, ratio: float,
                    name: str, what: str) -> None:
    """Raise the failure naming the mistake in a multiplier curve over steps 0..len(got) - 1."""
    expected = [reference_multiplier(s, warmup, total, decay, ratio) for s in range(len(got))]
    wrong = [s for s in range(len(got)) if abs(got[s] - expected[s]) > SCHEDULE_ATOL]
    if not wrong:
        return
    first = wrong[0]
    measured = (f"{what} of step {first} was {got[first]:.6g}; the contract says "
                f"{expected[first]:.6g}")
    largest = max(abs(got[s] - expected[s]) for s in wrong)
    if largest < 1e-5:
        raise CheckFailure(f"{name} {_case(warmup, total, decay, ratio)}: the {measured}, off by up "
                           f"to {largest:.2g}; the tolerance is {SCHEDULE_ATOL:g}",
                           hint="compute in Python floats: no float32 (numpy or torch), no "
                           "epsilon added to a denominator (the contract never divides by 0)")
    raise CheckFailure(f"{name} {_case(warmup, total, decay, ratio)}: the {measured}",
                       hint=_curve_hint(got, expected, first, warmup, total, decay, ratio))


def _edge_of(warmup: int, decay: int) -> str:
    if warmup == 0:
        return ("with warmup_steps = 0 there is no warmup: the very first step already uses 1, and "
                "nothing divides by warmup_steps")
    if decay == 0:
        return ("with decay_steps = 0 there is no decay phase: the plateau lasts until total_steps, "
                "where the factor drops to min_lr_ratio; nothing divides by decay_steps")
    return ""


def _curve(warmup_stable_decay, warmup, total, decay, ratio=None) -> list[float]:
    """The learner's multiplier at steps 0..total + PAST_THE_END, the library watched."""
    args = () if ratio is None else (ratio,)
    got = []
    with CallWatch(_library_schedules()) as calls:
        for s in range(total + 1 + PAST_THE_END):
            try:
                value = call_learner(warmup_stable_decay, s, warmup, total, decay, *args,
                                     name="warmup_stable_decay")
            except CheckFailure as error:
                edge = _edge_of(warmup, decay)
                if isinstance(error, NotImplementedYet) or not edge or _default_missing(error):
                    raise
                raise CheckFailure(f"{error.what}, at step {s} {_case(warmup, total, decay, ratio or 0.0)}",
                                   hint=edge) from None
            got.append(_as_number(value, s, "warmup_stable_decay"))
    if calls.called:
        raise CheckFailure(f"warmup_stable_decay called {calls.called[0]}, the library's own "
                           "schedule", hint="this exercise asks you to write the schedule "
                           "yourself, in plain Python")
    return got


def check_warmup_stable_decay(warmup_stable_decay) -> None:
    """warmup_stable_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio): the
    contract's value at every step and past the end, directly and as the learning rate a real
    LambdaLR gives each optimizer step."""
    for warmup, total, decay, ratio in SCHEDULE_CASES:
        got = _curve(warmup_stable_decay, warmup, total, decay, ratio)
        _diagnose_curve(got, warmup, total, decay, ratio, "warmup_stable_decay", "multiplier")
        # The same through a real optimizer and LambdaLR: the LR each optimizer step used.
        optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=BASE_LR)
        scheduler = LambdaLR(optimizer, lambda s: warmup_stable_decay(s, warmup, total, decay, ratio))
        used = [lrs[0] / BASE_LR for lrs in _lrs_used(optimizer, scheduler, total)]
        _diagnose_curve(used + got[total:], warmup, total, decay, ratio, "through LambdaLR, with "
                        "warmup_stable_decay", "learning rate (over the base LR)")
    # The contract's default: without min_lr_ratio the schedule falls to 0.
    warmup, total, decay = 6, 30, 9
    try:
        got = _curve(warmup_stable_decay, warmup, total, decay)
    except CheckFailure as error:
        if isinstance(error, NotImplementedYet) or not _default_missing(error):
            raise
        raise CheckFailure("warmup_stable_decay could not be called without min_lr_ratio",
                           got=error.what, hint="give min_lr_ratio the default 0.0 in the "
                           "signature") from None
    if abs(got[total]) > SCHEDULE_ATOL:
        raise CheckFailure(f"warmup_stable_decay({total}, {warmup}, {total}, {decay}), called "
                           f"without min_lr_ratio, returned {got[total]:.6g} at the last step; "
                           "the contract's default min_lr_ratio is 0.0",
                           hint="give min_lr_ratio the default 0.0 in the signature")
    _diagnose_curve(got, warmup, total, decay, 0.0, "warmup_stable_decay without min_lr_ratio",
                    "multiplier")
    passed(f"warmup_stable_decay follows the contract within {SCHEDULE_ATOL:g} at every step of "
           f"{len(SCHEDULE_CASES) + 1} schedules and {PAST_THE_END} steps past each one's end "
           "(without warmup, without decay, without plateau, all decay, and with the default "
           "min_lr_ratio), also as the LR a real LambdaLR gave each optimizer step")


# ---- (c) the scheduler ---------------------------------------------------------------------------


def _default_missing(error: CheckFailure) -> bool:
    return "TypeError" in error.what and "min_lr_ratio" in error.what


def check_make_scheduler(make_scheduler, warmup_stable_decay) -> None:
    """make_scheduler(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0): a
    LambdaLR over the learner's warmup_stable_decay, giving every parameter group its base LR
    times the multiplier; once with min_lr_ratio given, once with its default."""
    for warmup, total, decay, ratio in ((5, 40, 8, 0.1), (3, 17, 5, None)):
        _check_one_scheduler(make_scheduler, warmup_stable_decay, warmup, total, decay, ratio)
    passed("make_scheduler returned a LambdaLR that gave both parameter groups their base LR "
           "times warmup_stable_decay at every optimizer step, with min_lr_ratio given and with "
           "its default")


def _check_one_scheduler(make_scheduler, warmup_stable_decay, warmup, total, decay, ratio) -> None:
    model = torch.nn.Linear(4, 3)
    base_lrs = [0.1, 0.02]
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": base_lrs[0]},
                                 {"params": [model.bias], "lr": base_lrs[1]}], lr=base_lrs[0])
    args = (optimizer, warmup, total, decay) + (() if ratio is None else (ratio,))
    called = "without min_lr_ratio" if ratio is None else f"with min_lr_ratio={ratio:g}"
    learner_code = code_objects([warmup_stable_decay])
    with CallWatch({**_library_schedules(), **learner_code}) as calls:
        try:
            scheduler = call_learner(make_scheduler, *args, name="make_scheduler")
        except CheckFailure as error:
            if ratio is None and not isinstance(error, NotImplementedYet) and _default_missing(error):
                raise CheckFailure(f"make_scheduler could not be called {called}",
                                   got=error.what, hint="give min_lr_ratio the default 0.0 in "
                                   "make_scheduler's signature (and in warmup_stable_decay's)") from None
            raise
        require(isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler),
                "make_scheduler should return a learning-rate scheduler",
                got=type(scheduler).__name__,
                hint="return LambdaLR(optimizer, ...) itself, not the multiplier function")
        used = _lrs_used(optimizer, scheduler, total)
    library = [name for name in calls.called if name not in learner_code.values()]
    if library:
        raise CheckFailure(f"make_scheduler used {library[0]}, the library's own schedule",
                           hint="give LambdaLR a function that calls YOUR warmup_stable_decay from (b)")
    if not calls.called:
        raise CheckFailure("the scheduler never called your warmup_stable_decay",
                           hint="the lr_lambda you give LambdaLR should call warmup_stable_decay("
                           "step, ...) with the other four arguments of make_scheduler")
    require(isinstance(scheduler, LambdaLR), f"make_scheduler returned a {type(scheduler).__name__}",
            expected="torch.optim.lr_scheduler.LambdaLR",
            hint="the contract is a LambdaLR over your warmup_stable_decay: LambdaLR(optimizer, "
            "lr_lambda)")
    ratio = 0.0 if ratio is None else ratio
    expected_end = reference_multiplier(total, warmup, total, decay, ratio)
    for group, base in enumerate(base_lrs):
        got = [lrs[group] / base for lrs in used]
        if abs(got[warmup] - base) <= SCHEDULE_ATOL:
            raise CheckFailure(f"on the plateau (step {warmup}) parameter group {group} got its "
                               f"base LR squared ({got[warmup] * base:.4g}) instead of its base LR "
                               f"({base:g})", hint="LambdaLR already multiplies each base LR by "
                               "what lr_lambda returns: return the multiplier alone")
        if abs(got[0] - reference_multiplier(1, warmup, total, decay, ratio)) <= SCHEDULE_ATOL:
            raise CheckFailure(f"the first optimizer step used the LR of step 1 "
                               f"({got[0] * base:.4g}, not 0)",
                               hint="make_scheduler should not step the scheduler: the training "
                               "loop steps it, after each optimizer.step()")
        last = reference_multiplier(total - 1, warmup, total, decay, 0.0)
        if abs(got[-1] - last) > SCHEDULE_ATOL and called.startswith("without"):
            raise CheckFailure(f"make_scheduler {called}: the learning rate of the last step was "
                               f"{got[-1] * base:.6g}; with the default min_lr_ratio = 0.0 the "
                               f"contract says {last * base:.6g}",
                               hint="give min_lr_ratio the default 0.0 in make_scheduler's "
                               "signature, and pass it on to warmup_stable_decay")
        _diagnose_curve(got + [expected_end], warmup, total, decay, ratio,
                        f"make_scheduler {called}, parameter group {group} with base LR {base:g},",
                        "learning rate (over the base LR)")
