"""Learning-rate schedules (lesson 02; used by the loop of lesson 01).

A multiplier function maps the optimizer step (0 for the first step) to a factor of the base LR.
`warmup_cosine_multiplier` follows the same formula as Hugging Face's
`get_cosine_schedule_with_warmup`: a linear ramp from 0 over `warmup_steps`, then half a cosine down
to `min_lr_ratio` at `total_steps`.

`build_scheduler` turns a config's schedule name into a real torch scheduler:

- "warmup_cosine", "warmup_linear", "constant": LambdaLR over the multipliers below;
- "step": StepLR, the LR times `decay_factor` every `decay_every` steps (default: a third of the run);
- "cosine": CosineAnnealingLR from the base LR down to `min_lr_ratio` of it, no warmup;
- "onecycle": OneCycleLR, rising over `warmup_steps` (30 % of the run when 0) to the base LR, then
  down to `min_lr_ratio` of it;
- "plateau": ReduceLROnPlateau, the LR times `decay_factor` after `patience` evaluations without
  improvement of the validation metric. It is stepped once per evaluation with the metric, never
  per optimizer step (`PER_EVALUATION`).

Every other schedule is stepped once per optimizer step that really happened: a step the fp16
scaler skipped must not move any schedule on.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)


def warmup_cosine_multiplier(step: int, warmup_steps: int, total_steps: int,
                             min_lr_ratio: float = 0.0) -> float:
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def warmup_linear_multiplier(step: int, warmup_steps: int, total_steps: int,
                             min_lr_ratio: float = 0.0) -> float:
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    remaining = max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining


def warmup_constant_multiplier(step: int, warmup_steps: int, total_steps: int,
                               min_lr_ratio: float = 0.0) -> float:
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return 1.0


MULTIPLIERS = {
    "warmup_cosine": warmup_cosine_multiplier,
    "warmup_linear": warmup_linear_multiplier,
    "constant": warmup_constant_multiplier,
}

# The schedules that take no warmup: a warmup_steps > 0 with them is a mistake, not a request.
WITHOUT_WARMUP = ("step", "cosine", "plateau")
# Stepped with the validation metric after each evaluation instead of after each optimizer step.
PER_EVALUATION = ("plateau",)
SCHEDULES = (*MULTIPLIERS, *WITHOUT_WARMUP, "onecycle")


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup then cosine decay, stepped once per optimizer step."""
    return LambdaLR(optimizer, partial(warmup_cosine_multiplier, warmup_steps=warmup_steps,
                                       total_steps=total_steps, min_lr_ratio=min_lr_ratio))


def build_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.0, *, decay_every: int = 0, decay_factor: float = 0.1,
                    patience: int = 2, direction: str = "max"):
    """The torch scheduler for a config's `schedule` name (see the module's docstring).

    `direction` ("max" or "min") is the better direction of the metric "plateau" follows.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule in MULTIPLIERS:
        multiplier = partial(MULTIPLIERS[schedule], warmup_steps=warmup_steps,
                             total_steps=total_steps, min_lr_ratio=min_lr_ratio)
        return LambdaLR(optimizer, multiplier)
    if schedule == "step":
        return StepLR(optimizer, step_size=decay_every or max(1, total_steps // 3),
                      gamma=decay_factor)
    if schedule == "cosine":
        # eta_min is one number for every parameter group: the first group's base LR sets it.
        base_lr = optimizer.param_groups[0]["lr"]
        return CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=base_lr * min_lr_ratio)
    if schedule == "onecycle":
        # OneCycleLR starts at max_lr / div_factor (25) and ends at that over final_div_factor:
        # this final_div_factor makes the end min_lr_ratio of the peak (torch's 1e4 when 0).
        final_div_factor = 1.0 / (25.0 * min_lr_ratio) if min_lr_ratio > 0 else 1e4
        pct_start = min(warmup_steps / total_steps, 0.99) if warmup_steps else 0.3
        return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                          total_steps=max(1, total_steps), pct_start=pct_start,
                          final_div_factor=final_div_factor)
    minimum = [g["lr"] * min_lr_ratio for g in optimizer.param_groups]
    return ReduceLROnPlateau(optimizer, mode=direction, factor=decay_factor, patience=patience,
                             min_lr=minimum)


def schedule_curve(schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                   *, metrics=None, eval_every: int | None = None, **options) -> list[float]:
    """The LR multiplier at each of `total_steps` optimizer steps, from the real scheduler.

    The scheduler `build_scheduler` makes is stepped on a throwaway optimizer whose base LR is 1,
    so the curve is what `fit` would use. "plateau" follows a metric: pass `metrics`, the value of
    each evaluation in order, and `eval_every`; the LR changes after each evaluation (with
    `direction`, `patience` and `decay_factor` among `options`, as `build_scheduler` takes them).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(optimizer, schedule, warmup_steps, total_steps, min_lr_ratio,
                                **options)
    per_evaluation = schedule in PER_EVALUATION
    if per_evaluation and (metrics is None or not eval_every):
        raise ValueError(f"the {schedule!r} schedule follows a validation metric: pass metrics= "
                         "(one value per evaluation) and eval_every=")
    metrics = iter(metrics or ())
    curve = []
    for step in range(1, total_steps + 1):
        curve.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # the order torch expects: the optimizer first, then the schedule
        if not per_evaluation:
            if step < total_steps:  # OneCycleLR refuses to go past its last step
                scheduler.step()
        elif step % eval_every == 0:
            value = next(metrics, None)
            if value is None:
                break
            scheduler.step(value)
    # A plateau curve given fewer evaluations than the run has stays at its last LR.
    return curve + [optimizer.param_groups[0]["lr"]] * (total_steps - len(curve))
