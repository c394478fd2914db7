"""Learning-rate schedules as multipliers for LambdaLR (lesson 02; used by the loop of lesson 01).

A multiplier function maps the optimizer step (0 for the first step) to a factor of the base LR.
`warmup_cosine_multiplier` follows the same formula as Hugging Face's
`get_cosine_schedule_with_warmup`: a linear ramp from 0 over `warmup_steps`, then half a cosine down
to `min_lr_ratio` at `total_steps`.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim.lr_scheduler import LambdaLR


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


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup then cosine decay, stepped once per optimizer step."""
    return LambdaLR(optimizer, partial(warmup_cosine_multiplier, warmup_steps=warmup_steps,
                                       total_steps=total_steps, min_lr_ratio=min_lr_ratio))


def build_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.0) -> LambdaLR:
    """The LambdaLR for a config's `schedule` name."""
    if schedule not in MULTIPLIERS:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(MULTIPLIERS)}")
    multiplier = partial(MULTIPLIERS[schedule], warmup_steps=warmup_steps, total_steps=total_steps,
                         min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, multiplier)


def schedule_curve(schedule: str, warmup_steps: int, total_steps: int,
                   min_lr_ratio: float = 0.0) -> list[float]:
    """The multiplier at each of `total_steps` steps, for plotting."""
    function = MULTIPLIERS[schedule]
    return [function(step, warmup_steps, total_steps, min_lr_ratio) for step in range(total_steps)]
