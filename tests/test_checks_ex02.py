"""The checks of exercise 02 pass correct answers, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake.

Wrong answers come from the curriculum (log of softmax computed naively, gamma applied to p_t,
off-by-one warmup), the lesson's common-bug boxes (sum instead of mean, the scheduler stepped
before training, the LR multiplied in twice, the LR lowered by hand) and shortcuts (handing the work to course_lib).

Corpus sizes (wrong answers per check), before -> after closing the blind spots of dtypes,
tolerances, gamma = 0 together with alpha, the default min_lr_ratio and the scheduler's class:
check_focal_loss 12 -> 21, check_warmup_cosine 10 -> 16, check_make_scheduler 8 -> 12. Of the 19
answers added, 18 passed the checks as they were (tolerance 1e-4 on the loss, 1e-6 on the schedule,
no float64 batch, no call without min_lr_ratio) and the 19th failed there with a misleading hint.

Question (b) then changed shape, from the lesson's warmup + cosine (check_warmup_cosine, 16 wrong
answers) to warmup-stable-decay (check_warmup_stable_decay, 19): the lesson's cosine, the decay
started right after warmup, a step late or ending a step early, an exponential decay, no hold or 0
past total_steps, the floor ignored, an early warmup, integer division, 0 / 0 at warmup_steps = 0
or decay_steps = 0, delegation (twice), a list, float32, an epsilon, and the default min_lr_ratio
changed or missing. check_make_scheduler keeps 12, rewritten for the new signature (decay_steps
left out, warmup and decay swapped among them).

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
    check_warmup_stable_decay,
    hint,
    reference_focal_loss,
)
from course_lib.losses import focal_loss as library_focal_loss

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


def make_schedule(order="end_first", warmup="step", decay_start="total_minus_decay",
                  decay_length="decay", floor=True, past_end="floor", division="true"):
    """A warmup_stable_decay; each argument but its default is one realistic mistake."""

    def warmup_stable_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        if order == "end_first" and step >= total_steps and past_end == "floor":
            return min_lr_ratio
        if past_end == "zero" and step > total_steps:
            return 0.0
        if warmup == "plus_one" and step < warmup_steps:
            return (step + 1) / warmup_steps
        if warmup == "inclusive" and step <= warmup_steps:  # 0 / 0 without warmup
            return step / warmup_steps
        if warmup == "step" and step < warmup_steps:
            return step // warmup_steps if division == "floor" else step / warmup_steps
        start = {"total_minus_decay": total_steps - decay_steps, "after_warmup": warmup_steps,
                 "one_late": total_steps - decay_steps + 1}[decay_start]
        if step < start:
            return 1.0
        length = {"decay": decay_steps, "one_short": decay_steps - 1,
                  "after_warmup": total_steps - warmup_steps}[decay_length]
        if division == "floor":
            done = (step - start) // length
        else:
            done = (step - start) / length
        if order != "end_first" or past_end != "floor":
            done = min(done, 1.0) if past_end == "zero" else done
        floor_ratio = min_lr_ratio if floor else 0.0
        return 1.0 - (1.0 - floor_ratio) * done

    return warmup_stable_decay


REFERENCE_SCHEDULE = make_schedule()


def test_warmup_stable_decay_passes_the_reference(capsys):
    check_warmup_stable_decay(REFERENCE_SCHEDULE)
    assert "✓ warmup_stable_decay follows" in capsys.readouterr().out


def test_warmup_stable_decay_passes_another_correct_order():
    # The decay written from the floor up, the phases tested from the last one back.
    def warmup_stable_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        left = total_steps - step
        if left <= 0:
            return min_lr_ratio
        if left < decay_steps:
            return min_lr_ratio + (1 - min_lr_ratio) * left / decay_steps
        return min(1.0, step / warmup_steps) if warmup_steps else 1.0

    check_warmup_stable_decay(warmup_stable_decay)


def test_warmup_stable_decay_stub_says_not_implemented_yet():
    def warmup_stable_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        raise NotImplementedError("write warmup_stable_decay")

    with pytest.raises(NotImplementedYet):
        check_warmup_stable_decay(warmup_stable_decay)


def lessons_warmup_cosine(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    return warmup_cosine_multiplier_written_out(step, warmup_steps, total_steps, min_lr_ratio)


def warmup_cosine_multiplier_written_out(step, warmup_steps, total_steps, min_lr_ratio):
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def exponential_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    # MiniCPM's kind of decay, halving every fifth of the decay phase, instead of the straight line
    if step >= total_steps:
        return min_lr_ratio
    if step < warmup_steps:
        return step / warmup_steps
    start = total_steps - decay_steps
    if step < start:
        return 1.0
    return max(min_lr_ratio, 0.5 ** (5 * (step - start) / decay_steps))


def decay_branch_first(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    # every phase right, tested in an order that divides by decay_steps = 0 at the end of the run
    start = total_steps - decay_steps
    if step >= start:
        return max(min_lr_ratio, 1.0 - (1.0 - min_lr_ratio) * (step - start) / decay_steps)
    if step < warmup_steps:
        return step / warmup_steps
    return 1.0


SCHEDULE_WRONG = {
    "the_lessons_warmup_cosine": (lessons_warmup_cosine, "multiplier of step 11", "lesson's warmup + cosine"),
    "decay_right_after_warmup": (make_schedule(decay_start="after_warmup", decay_length="after_warmup"),
                                 "multiplier of step 11", "starts right after the warmup"),
    "decay_starts_a_step_late": (make_schedule(decay_start="one_late", decay_length="one_short"),
                                 "multiplier of step 81", "1 at step total_steps - decay_steps"),
    "decay_ends_a_step_early": (make_schedule(decay_length="one_short"), "multiplier of step 81",
                                "falling by the same amount each step"),
    "no_hold_past_the_end": (make_schedule(order="phases_only", past_end="continue"),
                             "multiplier of step 101", "stays at min_lr_ratio"),
    "zero_past_the_end": (make_schedule(order="phases_only", past_end="zero"),
                          "min_lr_ratio=0.1): the multiplier of step 51", "stays at min_lr_ratio"),
    "floor_ignored": (make_schedule(floor=False), "min_lr_ratio=0.1): the multiplier of step 41",
                      "not at 0"),
    "warmup_one_step_early": (make_schedule(warmup="plus_one"), "multiplier of step 0",
                              "rises from nothing"),
    "integer_division": (make_schedule(division="floor"), "multiplier of step 1", "integer division"),
    "warmup_branch_includes_its_end": (make_schedule(warmup="inclusive"), "ZeroDivisionError",
                                       "warmup_steps = 0"),
    "decay_branch_first": (decay_branch_first, "ZeroDivisionError", "decay_steps = 0"),
    "exponential_decay": (exponential_decay, "multiplier of step 81", "straight line"),
}


@pytest.mark.parametrize("name", SCHEDULE_WRONG)
def test_warmup_stable_decay_rejects_a_wrong_answer(name):
    answer, what, hint_text = SCHEDULE_WRONG[name]
    failure = fails(check_warmup_stable_decay, answer)
    assert what in failure.what and hint_text in failure.hint, failure.line()


def test_warmup_stable_decay_rejects_delegation_to_the_library():
    from course_lib.schedules import warmup_constant_multiplier

    def warmup_stable_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        if step < total_steps - decay_steps:  # the warmup and the plateau from the library
            return warmup_constant_multiplier(step, warmup_steps, total_steps)
        return REFERENCE_SCHEDULE(step, warmup_steps, total_steps, decay_steps, min_lr_ratio)

    failure = fails(check_warmup_stable_decay, warmup_stable_decay)
    assert "warmup_constant_multiplier" in failure.what
    assert "write the schedule yourself" in failure.hint


def test_warmup_stable_decay_rejects_a_schedule_read_from_schedule_curve():
    from course_lib.schedules import schedule_curve

    def warmup_stable_decay(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        curve = schedule_curve("constant", warmup_steps, total_steps + 10, min_lr_ratio)
        return curve[step]

    failure = fails(check_warmup_stable_decay, warmup_stable_decay)
    assert "schedule_curve" in failure.what


def test_warmup_stable_decay_rejects_a_list_instead_of_a_number():
    failure = fails(check_warmup_stable_decay, lambda *args: [REFERENCE_SCHEDULE(*args)])
    assert "Python float" in failure.hint


def schedule_in_float32(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    return float(torch.tensor(REFERENCE_SCHEDULE(step, warmup_steps, total_steps, decay_steps,
                                                 min_lr_ratio), dtype=torch.float32))


def epsilon_in_the_denominators(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    if step >= total_steps:
        return min_lr_ratio
    if step < warmup_steps:
        return step / (warmup_steps + 1e-9)  # "never divide by zero"
    start = total_steps - decay_steps
    if step < start:
        return 1.0
    return 1.0 - (1.0 - min_lr_ratio) * (step - start) / (decay_steps + 1e-9)


def another_default_floor(step, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.1):
    return REFERENCE_SCHEDULE(step, warmup_steps, total_steps, decay_steps, min_lr_ratio)


def no_default_floor(step, warmup_steps, total_steps, decay_steps, min_lr_ratio):
    return REFERENCE_SCHEDULE(step, warmup_steps, total_steps, decay_steps, min_lr_ratio)


SCHEDULE_TOLERANCE_AND_DEFAULTS = [
    (schedule_in_float32, "the tolerance is 1e-12", "no float32"),
    (epsilon_in_the_denominators, "the tolerance is 1e-12", "no epsilon"),
    (another_default_floor, "called without min_lr_ratio", "default 0.0"),
    (no_default_floor, "could not be called without min_lr_ratio", "default 0.0"),
]


@pytest.mark.parametrize("answer, what, hint_text", SCHEDULE_TOLERANCE_AND_DEFAULTS,
                         ids=lambda a: getattr(a, "__name__", ""))
def test_warmup_stable_decay_rejects_a_tolerance_or_default_answer(answer, what, hint_text):
    failure = fails(check_warmup_stable_decay, answer)
    assert what in failure.what and hint_text in failure.hint, failure.line()


# ---- answers to (c) ------------------------------------------------------------------------------


def reference_scheduler(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    return LambdaLR(optimizer, lambda step: REFERENCE_SCHEDULE(step, warmup_steps, total_steps,
                                                               decay_steps, min_lr_ratio))


def test_make_scheduler_passes_the_reference(capsys):
    check_make_scheduler(reference_scheduler, REFERENCE_SCHEDULE)
    assert "✓ make_scheduler" in capsys.readouterr().out


def test_make_scheduler_stub_says_not_implemented_yet():
    def make_scheduler(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        raise NotImplementedError("write make_scheduler")

    with pytest.raises(NotImplementedYet):
        check_make_scheduler(make_scheduler, REFERENCE_SCHEDULE)


def _lambda_scheduler(lr_lambda, step_once=False):
    def make_scheduler(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
        scheduler = LambdaLR(optimizer, lambda step: lr_lambda(step, warmup_steps, total_steps,
                                                               decay_steps, min_lr_ratio))
        if step_once:
            scheduler.step()
        return scheduler

    return make_scheduler


def lr_multiplied_in_twice(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    bases = [group["lr"] for group in optimizer.param_groups]
    lambdas = [lambda s, b=b: b * REFERENCE_SCHEDULE(s, warmup_steps, total_steps, decay_steps,
                                                     min_lr_ratio) for b in bases]
    return LambdaLR(optimizer, lambdas)


def the_multiplier_itself(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    return lambda step: REFERENCE_SCHEDULE(step, warmup_steps, total_steps, decay_steps, min_lr_ratio)


def the_library_schedule(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    from course_lib.schedules import warmup_cosine

    return warmup_cosine(optimizer, warmup_steps, total_steps, min_lr_ratio)


def scheduler_without_a_default(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio):
    return reference_scheduler(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio)


def scheduler_with_another_default(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.1):
    return reference_scheduler(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio)


class HandWrittenScheduler(torch.optim.lr_scheduler.LRScheduler):
    """The right numbers from a scheduler class of its own: the contract asks for a LambdaLR."""

    def __init__(self, optimizer, multiplier):
        self.multiplier = multiplier
        super().__init__(optimizer)

    def get_lr(self):
        return [base * self.multiplier(self.last_epoch) for base in self.base_lrs]


def scheduler_of_its_own(optimizer, warmup_steps, total_steps, decay_steps, min_lr_ratio=0.0):
    return HandWrittenScheduler(optimizer, lambda s: REFERENCE_SCHEDULE(
        s, warmup_steps, total_steps, decay_steps, min_lr_ratio))


MAKE_SCHEDULER_WRONG = {
    "lr_multiplied_in_twice": (lr_multiplied_in_twice, "squared", "return the multiplier alone"),
    "stepped_before_training": (_lambda_scheduler(REFERENCE_SCHEDULE, step_once=True),
                                "the LR of step 1", "should not step the scheduler"),
    "floor_left_out": (_lambda_scheduler(lambda s, w, t, d, m: REFERENCE_SCHEDULE(s, w, t, d, 0.0)),
                       "the contract says", "not at 0"),
    "warmup_and_decay_swapped": (_lambda_scheduler(lambda s, w, t, d, m: REFERENCE_SCHEDULE(s, d, t, w, m)),
                                 "the contract says", "during warmup"),
    "decay_steps_left_out": (_lambda_scheduler(lambda s, w, t, d, m: REFERENCE_SCHEDULE(s, w, t, 0, m)),
                             "the contract says", "as if the decay never began"),
    "the_multiplier_itself": (the_multiplier_itself, "should return a learning-rate scheduler",
                              "not the multiplier function"),
    "the_library_schedule": (the_library_schedule, "the library's own schedule",
                             "YOUR warmup_stable_decay"),
    "step_lr": (lambda opt, w, t, d, m=0.0: StepLR(opt, step_size=10),
                "never called your warmup_stable_decay", "lr_lambda"),
    "exponential_lr": (lambda opt, w, t, d, m=0.0: ExponentialLR(opt, gamma=0.5),  # the lesson's bug box
                       "never called your warmup_stable_decay", "lr_lambda"),
    "scheduler_without_a_default": (scheduler_without_a_default,
                                    "could not be called without min_lr_ratio", "default 0.0"),
    "scheduler_with_another_default": (scheduler_with_another_default, "without min_lr_ratio",
                                       "default 0.0"),
    "scheduler_of_its_own": (scheduler_of_its_own, "returned a HandWrittenScheduler",
                             "LambdaLR(optimizer, lr_lambda)"),
}


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("name", MAKE_SCHEDULER_WRONG)
def test_make_scheduler_rejects_a_wrong_answer(name):
    answer, what, hint_text = MAKE_SCHEDULER_WRONG[name]
    failure = fails(check_make_scheduler, answer, REFERENCE_SCHEDULE)
    assert what in failure.what and hint_text in failure.hint, failure.line()


def test_hint_has_one_nudge_per_question(capsys):
    assert hint.questions == ("a", "b", "c")
    hint("b")
    assert "phase" in capsys.readouterr().out


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
