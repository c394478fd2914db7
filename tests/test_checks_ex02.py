"""The checks of exercise 02 pass correct answers, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake.

Wrong answers come from the curriculum (log of softmax computed naively, gamma applied to p_t,
off-by-one warmup), the lesson's common-bug boxes (sum instead of mean, a decay that ignores the
floor, the LR multiplied in twice) and shortcuts (handing the work to course_lib).

Corpus sizes (wrong answers per check), before -> after closing the blind spots of dtypes,
tolerances, gamma = 0 together with alpha, the default min_lr_ratio and the scheduler's class:
check_focal_loss 12 -> 21, check_warmup_cosine 10 -> 16, check_make_scheduler 8 -> 12. Of the 19
answers added, 18 passed the checks as they were (tolerance 1e-4 on the loss, 1e-6 on the schedule,
no float64 batch, no call without min_lr_ratio) and the 19th failed there with a misleading hint.

The focal-loss check draws its batches from a seed. Over CHECK_SEEDS=16 (seeds 0..15) the reference
passed every seed and each of the 18 seeded wrong answers failed every seed with its own hint
(343 tests passed);
the normal run uses 2 seeds. The schedule checks use no randomness.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR, StepLR

from course_lib.checks._core import CheckFailure, NotImplementedYet
from course_lib.checks.ex02 import (
    check_focal_loss,
    check_make_scheduler,
    check_warmup_cosine,
    hint,
    reference_focal_loss,
)
from course_lib.losses import focal_loss as library_focal_loss
from course_lib.schedules import warmup_cosine_multiplier

SEEDS = range(int(os.environ.get("CHECK_SEEDS", "2")))


# ---- answers to (a) ------------------------------------------------------------------------------


def make_focal_loss(log="log_softmax", factor="one_minus", floor=True, reduce="mean",
                    alpha_of="target", detach=False):
    """A focal loss; each argument but its default is one realistic mistake."""

    def focal_loss(logits, targets, gamma, alpha=None):
        if log == "naive":
            log_p = torch.log(torch.softmax(logits, dim=-1))
        else:
            log_p = F.log_softmax(logits, dim=-1)
        log_p_t = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        p_t = log_p_t.exp()
        if detach:
            p_t = p_t.detach()
        base = p_t if factor == "p_t" else 1 - p_t
        if floor:
            base = base.clamp(min=1e-12)
        loss = -(base ** gamma) * log_p_t
        weights = None
        if alpha is not None:
            if alpha_of == "target":
                weights = alpha[targets]
            elif alpha_of == "prediction":
                weights = alpha[logits.argmax(dim=-1)]
            elif alpha_of == "ignored":
                weights = torch.ones_like(loss)
            loss = weights * loss
        if reduce == "sum":
            return loss.sum()
        if reduce == "weighted" and weights is not None:
            return loss.sum() / weights.sum()
        if reduce == "none":
            return loss
        return loss.mean()

    return focal_loss


def fails(check, *args, **kwargs) -> CheckFailure:
    with pytest.raises(CheckFailure) as caught:
        check(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize("seed", SEEDS)
def test_focal_loss_passes_the_reference(seed, capsys):
    check_focal_loss(make_focal_loss(), seed=seed)
    assert "✓ focal_loss matches" in capsys.readouterr().out


def test_the_reference_matches_values_worked_out_by_hand():
    # p_t = e^2 / (e^2 + 2) for logits (2, 0, 0): FL = (1 - p_t)^2 * -log p_t.
    p_t = math.exp(2) / (math.exp(2) + 2)
    by_hand = (1 - p_t) ** 2 * -math.log(p_t)
    value = reference_focal_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), 2.0)
    assert value.item() == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.010870, abs=1e-6)


def test_focal_loss_stub_says_not_implemented_yet():
    def focal_loss(logits, targets, gamma, alpha=None):
        raise NotImplementedError("write focal_loss")

    with pytest.raises(NotImplementedYet):
        check_focal_loss(focal_loss)


FOCAL_WRONG = {
    "log_of_softmax": (dict(log="naive"), "F.log_softmax"),
    "gamma_on_p_t": (dict(factor="p_t"), "(1 - p_t) ** gamma"),
    "sum_not_mean": (dict(reduce="sum"), "mean over the examples"),
    "per_example_losses": (dict(reduce="none"), "average the per-example losses"),
    "alpha_ignored": (dict(alpha_of="ignored"), "alpha[its target class]"),
    "alpha_of_prediction": (dict(alpha_of="prediction"), "TRUE class"),
    "weighted_mean": (dict(reduce="weighted"), "divide by the batch size"),
    "no_floor_nan_gradient": (dict(floor=False), "clamp"),
    "detached_factor": (dict(detach=True), "without .detach()"),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", FOCAL_WRONG)
def test_focal_loss_rejects_a_wrong_answer(name, seed):
    kwargs, hint_text = FOCAL_WRONG[name]
    failure = fails(check_focal_loss, make_focal_loss(**kwargs), seed=seed)
    assert hint_text in failure.hint, failure.line()


def test_focal_loss_rejects_delegation_to_the_library():
    def focal_loss(logits, targets, gamma, alpha=None):
        return library_focal_loss(logits, targets, gamma, alpha)

    failure = fails(check_focal_loss, focal_loss)
    assert "course_lib.losses.focal_loss" in failure.what
    assert "write it yourself" in failure.hint


def test_focal_loss_rejects_the_library_module_too():
    from course_lib import FocalLoss

    def focal_loss(logits, targets, gamma, alpha=None):
        return FocalLoss(gamma, alpha)(logits, targets)

    failure = fails(check_focal_loss, focal_loss)
    assert "FocalLoss.forward" in failure.what


def test_focal_loss_rejects_a_number_instead_of_a_tensor():
    reference = make_focal_loss()
    failure = fails(check_focal_loss, lambda *a, **k: reference(*a, **k).item())
    assert "no .item()" in failure.hint


# ---- answers to (b) ------------------------------------------------------------------------------


def make_warmup_cosine(warmup="step", progress_over="rest", shape="cosine", floor=True):
    def warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio=0.0):
        if warmup == "plus_one" and step < warmup_steps:
            return (step + 1) / warmup_steps
        if warmup == "late" and step <= warmup_steps:
            return step / (warmup_steps + 1)
        if warmup == "step" and step < warmup_steps:
            return step / warmup_steps
        length = total_steps if progress_over == "total" else total_steps - warmup_steps
        progress = (step - warmup_steps) / length
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine" else 1 - progress
        if shape == "quarter_cosine":
            decay = math.cos(0.5 * math.pi * progress)
        if not floor:
            return decay
        return min_lr_ratio + (1 - min_lr_ratio) * decay

    return warmup_cosine


REFERENCE_SCHEDULE = make_warmup_cosine()


def test_warmup_cosine_passes_the_reference(capsys):
    check_warmup_cosine(REFERENCE_SCHEDULE)
    assert "✓ warmup_cosine follows" in capsys.readouterr().out


def test_warmup_cosine_passes_the_library_formula_written_out():
    # The library's multiplier, copied (not called): the same contract.
    def warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio=0.0):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
        return min_lr_ratio + (1 - min_lr_ratio) * cosine

    check_warmup_cosine(warmup_cosine)


def test_warmup_cosine_stub_says_not_implemented_yet():
    def warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio=0.0):
        raise NotImplementedError("write warmup_cosine")

    with pytest.raises(NotImplementedYet):
        check_warmup_cosine(warmup_cosine)


SCHEDULE_WRONG = {
    "warmup_one_step_early": (dict(warmup="plus_one"), "one step early"),
    "peak_one_step_late": (dict(warmup="late"), "reaching exactly 1 at step warmup_steps"),
    "no_warmup": (dict(warmup="none"), "starts from 0"),
    "progress_over_the_whole_run": (dict(progress_over="total"), "total_steps - warmup_steps"),
    "linear_decay": (dict(shape="linear"), "half a cosine"),
    "a_quarter_cosine": (dict(shape="quarter_cosine"), "0.5 * (1 + cos(pi * progress))"),
    "floor_ignored": (dict(floor=False), "scaled into [min_lr_ratio, 1]"),
}


@pytest.mark.parametrize("name", SCHEDULE_WRONG)
def test_warmup_cosine_rejects_a_wrong_answer(name):
    kwargs, hint_text = SCHEDULE_WRONG[name]
    failure = fails(check_warmup_cosine, make_warmup_cosine(**kwargs))
    assert hint_text in failure.hint, failure.line()
    assert "the contract says" in failure.what


def test_warmup_cosine_rejects_delegation_to_the_library():
    def warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio=0.0):
        return warmup_cosine_multiplier(step, warmup_steps, total_steps, min_lr_ratio)

    failure = fails(check_warmup_cosine, warmup_cosine)
    assert "warmup_cosine_multiplier" in failure.what
    assert "math.cos" in failure.hint


def test_warmup_cosine_rejects_a_schedule_read_from_schedule_curve():
    from course_lib.schedules import schedule_curve

    def warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio=0.0):
        curve = schedule_curve("warmup_cosine", warmup_steps, total_steps + 1, min_lr_ratio)
        return curve[step]

    failure = fails(check_warmup_cosine, warmup_cosine)
    assert "schedule_curve" in failure.what


def test_warmup_cosine_rejects_a_tensor_of_values_instead_of_a_number():
    failure = fails(check_warmup_cosine, lambda *args: [REFERENCE_SCHEDULE(*args)])
    assert "Python float" in failure.hint


# ---- answers to (c) ------------------------------------------------------------------------------


def test_make_scheduler_passes_the_reference(capsys):
    def make_scheduler(optimizer, warmup_steps, total_steps, min_lr_ratio=0.0):
        return LambdaLR(optimizer, lambda step: REFERENCE_SCHEDULE(step, warmup_steps, total_steps,
                                                                   min_lr_ratio))

    check_make_scheduler(make_scheduler, REFERENCE_SCHEDULE)
    assert "✓ make_scheduler" in capsys.readouterr().out


def test_make_scheduler_stub_says_not_implemented_yet():
    def make_scheduler(optimizer, warmup_steps, total_steps, min_lr_ratio=0.0):
        raise NotImplementedError("write make_scheduler")

    with pytest.raises(NotImplementedYet):
        check_make_scheduler(make_scheduler, REFERENCE_SCHEDULE)


def _lambda_scheduler(lr_lambda, step_once=False):
    def make_scheduler(optimizer, warmup_steps, total_steps, min_lr_ratio=0.0):
        scheduler = LambdaLR(optimizer, lambda step: lr_lambda(optimizer, step, warmup_steps,
                                                               total_steps, min_lr_ratio))
        if step_once:
            scheduler.step()
        return scheduler

    return make_scheduler


def test_make_scheduler_rejects_the_lr_multiplied_in_twice():
    def make_scheduler(optimizer, warmup_steps, total_steps, min_lr_ratio=0.0):
        bases = [group["lr"] for group in optimizer.param_groups]
        lambdas = [lambda s, b=b: b * REFERENCE_SCHEDULE(s, warmup_steps, total_steps,
                                                         min_lr_ratio) for b in bases]
        return LambdaLR(optimizer, lambdas)

    failure = fails(check_make_scheduler, make_scheduler, REFERENCE_SCHEDULE)
    assert "squared" in failure.what
    assert "return the multiplier alone" in failure.hint


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_make_scheduler_rejects_a_scheduler_stepped_before_training():
    make_scheduler = _lambda_scheduler(lambda opt, s, w, t, m: REFERENCE_SCHEDULE(s, w, t, m),
                                       step_once=True)
    failure = fails(check_make_scheduler, make_scheduler, REFERENCE_SCHEDULE)
    assert "should not step the scheduler" in failure.hint


def test_make_scheduler_rejects_a_floor_left_out():
    make_scheduler = _lambda_scheduler(lambda opt, s, w, t, m: REFERENCE_SCHEDULE(s, w, t, 0.0))
    failure = fails(check_make_scheduler, make_scheduler, REFERENCE_SCHEDULE)
    assert "min_lr_ratio" in failure.hint


def test_make_scheduler_rejects_warmup_and_length_swapped():
    make_scheduler = _lambda_scheduler(lambda opt, s, w, t, m: REFERENCE_SCHEDULE(s, t, w, m))
    failure = fails(check_make_scheduler, make_scheduler, REFERENCE_SCHEDULE)
    assert "the contract says" in failure.what
    assert "step / warmup_steps" in failure.hint


def test_make_scheduler_rejects_the_multiplier_instead_of_the_scheduler():
    def make_scheduler(optimizer, warmup_steps, total_steps, min_lr_ratio=0.0):
        return lambda step: REFERENCE_SCHEDULE(step, warmup_steps, total_steps, min_lr_ratio)

    failure = fails(check_make_scheduler, make_scheduler, REFERENCE_SCHEDULE)
    assert "not the multiplier function" in failure.hint


def test_make_scheduler_rejects_the_library_schedule():
    from course_lib.schedules import warmup_cosine

    failure = fails(check_make_scheduler, lambda opt, w, t, m: warmup_cosine(opt, w, t, m),
                    REFERENCE_SCHEDULE)
    assert "the library's own schedule" in failure.what
    assert "YOUR warmup_cosine" in failure.hint


@pytest.mark.parametrize("build", [
    lambda opt: StepLR(opt, step_size=10),
    lambda opt: ExponentialLR(opt, gamma=0.5),  # the lesson's bug box: the LR halved by hand
], ids=["StepLR", "ExponentialLR"])
def test_make_scheduler_rejects_another_scheduler(build):
    failure = fails(check_make_scheduler, lambda opt, w, t, m: build(opt), REFERENCE_SCHEDULE)
    assert "never called your warmup_cosine" in failure.what
    assert "lr_lambda" in failure.hint


def test_hint_has_one_nudge_per_question(capsys):
    assert hint.questions == ("a", "b", "c")
    hint("b")
    assert "progress" in capsys.readouterr().out


# ---- blind spots closed: dtypes, tolerances, gamma = 0 with alpha, defaults ------------------------
# Each answer below passed the checks as they were before the blind spots were closed (the float32
# tolerance of 1e-4, the schedule tolerance of 1e-6, no float64 batch, no gamma = 0 with alpha, no
# call without min_lr_ratio) and fails them now, with the failure and the hint asserted.


def casts_logits_to_float32(logits, targets, gamma, alpha=None):
    return make_focal_loss()(logits.float(), targets, gamma, None if alpha is None else alpha.float())


def returns_float64(logits, targets, gamma, alpha=None):
    return make_focal_loss()(logits, targets, gamma, alpha).double()


def log_softmax_in_float32(logits, targets, gamma, alpha=None):  # "stable" under bf16, wrong here
    log_p_t = F.log_softmax(logits, dim=-1, dtype=torch.float32).gather(
        -1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -((1 - log_p_t.exp()).clamp(min=1e-12) ** gamma) * log_p_t
    if alpha is not None:
        loss = alpha[targets].float() * loss
    return loss.mean()


def float32_round_trip(logits, targets, gamma, alpha=None):
    alpha32 = None if alpha is None else alpha.float()
    return make_focal_loss()(logits.float(), targets, gamma, alpha32).to(logits.dtype)


def epsilon_in_the_factor(logits, targets, gamma, alpha=None):  # "avoids NaN gradients"
    log_p_t = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -((1 - log_p_t.exp() + 1e-6) ** gamma) * log_p_t
    if alpha is not None:
        loss = alpha[targets] * loss
    return loss.mean()


def floor_too_high(logits, targets, gamma, alpha=None):
    log_p_t = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -((1 - log_p_t.exp()).clamp(min=1e-4) ** gamma) * log_p_t
    if alpha is not None:
        loss = alpha[targets] * loss
    return loss.mean()


def cross_entropy_shortcut_weighted(logits, targets, gamma, alpha=None):
    if gamma == 0:  # "gamma = 0 is cross-entropy", with the class weights
        return F.cross_entropy(logits, targets, weight=alpha)
    return make_focal_loss()(logits, targets, gamma, alpha)


def cross_entropy_shortcut(logits, targets, gamma, alpha=None):
    if gamma == 0:
        return F.cross_entropy(logits, targets)
    return make_focal_loss()(logits, targets, gamma, alpha)


def alpha_inside_the_power(logits, targets, gamma, alpha=None):
    log_p_t = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    factor = (1 - log_p_t.exp()).clamp(min=1e-12)
    if alpha is not None:
        factor = alpha[targets] * factor
    return (-(factor ** gamma) * log_p_t).mean()


FOCAL_BLIND_SPOTS = [
    # dtypes
    (casts_logits_to_float32, "returned a float32 loss", "keep the logits' dtype"),
    (returns_float64, "returned a float64 loss", "keep the logits' dtype"),
    (log_softmax_in_float32, "returned a float32 loss", "dtype= argument"),
    # tolerances
    (float32_round_trip, "tolerance for float64 is 1e-12", "round trip through float32"),
    (epsilon_in_the_factor, "tolerance for float", "an epsilon added"),
    (floor_too_high, "tolerance for float", "a tiny clamp"),
    # gamma = 0 together with alpha
    (cross_entropy_shortcut_weighted, "divided by the sum of the alpha weights", "batch size"),
    (cross_entropy_shortcut, "ignored alpha with gamma = 0", "alpha[its target class]"),
    (alpha_inside_the_power, "ignored alpha with gamma = 0", "alpha[its target class]"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, what, hint_text", FOCAL_BLIND_SPOTS,
                         ids=lambda a: getattr(a, "__name__", ""))
def test_focal_loss_rejects_a_blind_spot_answer(answer, what, hint_text, seed):
    failure = fails(check_focal_loss, answer, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()


def schedule_in_float32(step, warmup_steps, total_steps, min_lr_ratio=0.0):
    if step < warmup_steps:
        return float(torch.tensor(step, dtype=torch.float32) / warmup_steps)
    progress = torch.tensor((step - warmup_steps) / (total_steps - warmup_steps))
    return float(min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + torch.cos(math.pi * progress)))


def pi_typed_in(step, warmup_steps, total_steps, min_lr_ratio=0.0):
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(3.1415926 * progress))


def epsilon_in_the_denominators(step, warmup_steps, total_steps, min_lr_ratio=0.0):
    if step < warmup_steps:
        return step / (warmup_steps + 1e-8)  # "never divide by zero"
    progress = (step - warmup_steps) / (total_steps - warmup_steps + 1e-8)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def another_default_floor(step, warmup_steps, total_steps, min_lr_ratio=0.1):
    return REFERENCE_SCHEDULE(step, warmup_steps, total_steps, min_lr_ratio)


def no_default_floor(step, warmup_steps, total_steps, min_lr_ratio):
    return REFERENCE_SCHEDULE(step, warmup_steps, total_steps, min_lr_ratio)


def none_means_a_floor(step, warmup_steps, total_steps, min_lr_ratio=None):
    ratio = 0.05 if min_lr_ratio is None else min_lr_ratio  # "a small floor unless told otherwise"
    return REFERENCE_SCHEDULE(step, warmup_steps, total_steps, ratio)


SCHEDULE_BLIND_SPOTS = [
    # tolerances
    (schedule_in_float32, "the tolerance is 1e-12", "no float32"),
    (pi_typed_in, "the tolerance is 1e-12", "no pi typed in"),
    (epsilon_in_the_denominators, "the tolerance is 1e-12", "no epsilon"),
    # the default min_lr_ratio
    (another_default_floor, "called without min_lr_ratio", "default 0.0"),
    (no_default_floor, "could not be called without min_lr_ratio", "default 0.0"),
    (none_means_a_floor, "called without min_lr_ratio", "default 0.0"),
]


@pytest.mark.parametrize("answer, what, hint_text", SCHEDULE_BLIND_SPOTS,
                         ids=lambda a: getattr(a, "__name__", ""))
def test_warmup_cosine_rejects_a_blind_spot_answer(answer, what, hint_text):
    failure = fails(check_warmup_cosine, answer)
    assert what in failure.what and hint_text in failure.hint, failure.line()


def scheduler_without_a_default(optimizer, warmup_steps, total_steps, min_lr_ratio):
    return LambdaLR(optimizer, lambda s: REFERENCE_SCHEDULE(s, warmup_steps, total_steps, min_lr_ratio))


def scheduler_with_another_default(optimizer, warmup_steps, total_steps, min_lr_ratio=0.1):
    return LambdaLR(optimizer, lambda s: REFERENCE_SCHEDULE(s, warmup_steps, total_steps, min_lr_ratio))


def scheduler_drops_the_default(optimizer, warmup_steps, total_steps, min_lr_ratio=None):
    ratio = 0.05 if min_lr_ratio is None else min_lr_ratio  # "a small floor by default"
    return LambdaLR(optimizer, lambda s: REFERENCE_SCHEDULE(s, warmup_steps, total_steps, ratio))


class HandWrittenScheduler(torch.optim.lr_scheduler.LRScheduler):
    """The right numbers from a scheduler class of its own: the contract asks for a LambdaLR."""

    def __init__(self, optimizer, multiplier):
        self.multiplier = multiplier
        super().__init__(optimizer)

    def get_lr(self):
        return [base * self.multiplier(self.last_epoch) for base in self.base_lrs]


def scheduler_of_its_own(optimizer, warmup_steps, total_steps, min_lr_ratio=0.0):
    return HandWrittenScheduler(optimizer, lambda s: REFERENCE_SCHEDULE(s, warmup_steps,
                                                                        total_steps, min_lr_ratio))


MAKE_SCHEDULER_BLIND_SPOTS = [
    (scheduler_without_a_default, "could not be called without min_lr_ratio", "default 0.0"),
    (scheduler_with_another_default, "without min_lr_ratio", "default 0.0"),
    (scheduler_drops_the_default, "without min_lr_ratio", "default 0.0"),
    (scheduler_of_its_own, "returned a HandWrittenScheduler", "LambdaLR(optimizer, lr_lambda)"),
]


@pytest.mark.parametrize("answer, what, hint_text", MAKE_SCHEDULER_BLIND_SPOTS,
                         ids=lambda a: getattr(a, "__name__", ""))
def test_make_scheduler_rejects_a_blind_spot_answer(answer, what, hint_text):
    failure = fails(check_make_scheduler, answer, REFERENCE_SCHEDULE)
    assert what in failure.what and hint_text in failure.hint, failure.line()
