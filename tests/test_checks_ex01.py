"""The checks of exercise 01 pass a correct train(cfg), say "not implemented yet" for a stub, and
reject each realistic wrong answer with a hint that names the mistake.

The wrong answers are small variants of one correct `train`, built by `make_train` with a flag per
mistake, so that each test changes exactly one thing.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from course_lib.checks._core import CheckFailure, NotImplementedYet
from course_lib.checks.ex01 import (
    check_best_not_last,
    check_checkpoint_contents,
    check_clipping,
    check_mixed_precision,
    check_reaches_target,
    check_seeding,
    check_warmup,
)
from course_lib.data import load_digits_splits
from course_lib.models import MLP


@dataclass
class ExerciseConfig:
    """The config of the exercise notebook's set-up cell."""

    seed: int = 0
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_every: int = 20
    precision: str = "bf16"
    hidden: int = 128
    target_accuracy: float = 0.95
    out_dir: str | None = None


def make_train(seed="cfg", save="best", clip="after_unscale", scheduler="per_step",
               config_in_checkpoint="dict", precision="honoured", zero_grad=True,
               optimizer_step=True, checkpoint_step=True, record_lr="optimizer"):
    """A correct train(cfg) by default; each flag, changed, makes one realistic mistake."""

    def train(cfg):
        if seed == "cfg":
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
        elif seed == "fixed":  # a number typed in, instead of cfg.seed
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
        data = load_digits_splits(seed=cfg.seed)
        model = MLP(hidden=cfg.hidden)
        if seed == "after_model":
            torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed) if seed != "none" else None
        if seed == "fixed":
            generator = torch.Generator().manual_seed(0)
        loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total_steps = cfg.epochs * len(loader)
        warmup = 0 if scheduler == "no_warmup" else cfg.warmup_steps

        def multiplier(step):
            if step < warmup:
                return step / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        if precision == "ignored" or cfg.precision == "fp32":
            autocast = nullcontext
        else:
            bf16 = cfg.precision == "bf16" or precision == "always_bf16"
            dtype = torch.bfloat16 if bf16 else torch.float16
            autocast = lambda: torch.autocast("cpu", dtype=dtype)  # noqa: E731
        use_scaler = cfg.precision == "fp16" and precision != "no_scaler"
        scaler = torch.amp.GradScaler("cpu", enabled=use_scaler)
        out_dir = Path(cfg.out_dir or tempfile.mkdtemp())
        best_path = out_dir / "best.pt"
        history, best_accuracy, best_state, step = [], -1.0, None, 0

        def write_checkpoint(state, accuracy, at_step):
            config = {"dict": dataclasses.asdict(cfg), "dataclass": cfg}.get(config_in_checkpoint)
            checkpoint = {"model": state, "val_accuracy": accuracy}
            if checkpoint_step:
                checkpoint["step"] = at_step
            if config is not None:
                checkpoint["config"] = config
            torch.save(checkpoint, best_path)

        def parameters_norm():
            return nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()

        for epoch in range(cfg.epochs):
            for inputs, targets in loader:
                if zero_grad:
                    optimizer.zero_grad()
                if clip == "before_backward":
                    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                with autocast():
                    loss = F.cross_entropy(model(inputs), targets)
                scaler.scale(loss).backward()
                if clip == "after_unscale":
                    scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                elif clip == "before_unscale":
                    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.unscale_(optimizer)
                elif clip in ("none", "after_step"):
                    scaler.unscale_(optimizer)
                    norm = torch.tensor(parameters_norm())
                clipped_norm = parameters_norm()
                lr = optimizer.param_groups[0]["lr"] if record_lr == "optimizer" else cfg.lr
                if optimizer_step:
                    scaler.step(optimizer)
                scaler.update()
                if clip == "after_step":
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scheduler in ("per_step", "no_warmup"):
                    schedule.step()
                step += 1
                history.append({"step": step, "loss": loss.item(), "lr": lr,
                                "grad_norm": float(norm), "clipped_grad_norm": clipped_norm})
                if step % cfg.eval_every == 0 or step == total_steps:
                    model.eval()
                    with torch.inference_mode():
                        inputs, targets = data.val.tensors
                        accuracy = (model(inputs).argmax(1) == targets).sum().item() / len(targets)
                    model.train()
                    history.append({"step": step, "val_accuracy": accuracy})
                    if save == "last" or (save == "best" and accuracy > best_accuracy):
                        best_accuracy = accuracy
                        write_checkpoint(model.state_dict(), accuracy, step)
                    elif save == "best_later" and accuracy > best_accuracy:
                        best_accuracy, best_state = accuracy, model.state_dict()  # not a copy
                        best_step = step
                    elif save == "first" and best_accuracy < 0:
                        best_accuracy = accuracy
                        write_checkpoint(model.state_dict(), accuracy, step)
                    elif save == "model_object" and accuracy > best_accuracy:
                        best_accuracy = accuracy
                        torch.save({"model": copy.deepcopy(model), "config": dataclasses.asdict(cfg),
                                    "val_accuracy": accuracy, "step": step}, best_path)
            if scheduler == "per_epoch":
                schedule.step()
        if save == "best_later":
            write_checkpoint(best_state, best_accuracy, best_step)
        return {"history": history, "best_checkpoint": str(best_path)}

    return train


def stub(cfg):
    raise NotImplementedError("write the whole loop")


def rejected(check, train) -> CheckFailure:
    with pytest.raises(CheckFailure) as caught:
        check(train, ExerciseConfig)
    assert not isinstance(caught.value, NotImplementedYet)
    return caught.value


ALL_CHECKS = [check_reaches_target, check_seeding, check_checkpoint_contents, check_best_not_last,
              check_clipping, check_warmup, check_mixed_precision]


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_check_passes_a_correct_loop(check, capsys):
    check(make_train(), ExerciseConfig)
    assert capsys.readouterr().out.startswith("✓ ")


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_check_says_not_implemented_yet_for_the_stub(check):
    with pytest.raises(NotImplementedYet, match="`train` is not implemented yet"):
        check(stub, ExerciseConfig)


# ---- reaching the target ---------------------------------------------------------------------


def test_target_rejects_a_scheduler_never_stepped():
    failure = rejected(check_reaches_target, make_train(scheduler="never"))
    assert "learning rate stayed at 0" in failure.hint and "scheduler.step()" in failure.hint


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_target_rejects_a_loop_that_never_steps_the_optimizer():
    failure = rejected(check_reaches_target, make_train(optimizer_step=False))
    assert "never ran" in failure.hint


def test_target_rejects_a_loop_that_forgets_zero_grad():
    failure = rejected(check_reaches_target, make_train(zero_grad=False))
    assert "too low" in failure.what and "zero_grad" in failure.hint


# The shape of the result is checked by every check; the cheapest one stands for all here.


def test_a_result_without_a_checkpoint_path_is_rejected():
    train = make_train()
    failure = rejected(check_checkpoint_contents, lambda cfg: {"history": train(cfg)["history"]})
    assert "'history' and 'best_checkpoint'" in failure.what and "return" in failure.hint


def test_tensors_in_the_history_are_rejected():
    train = make_train()

    def with_tensors(cfg):
        result = train(cfg)
        for record in result["history"]:
            if "loss" in record:
                record["loss"] = torch.tensor(record["loss"])
        return result

    assert ".item()" in rejected(check_checkpoint_contents, with_tensors).hint


# ---- seeding ---------------------------------------------------------------------------------


def test_seeding_rejects_no_seed():
    assert "torch.manual_seed" in rejected(check_seeding, make_train(seed="none")).hint


def test_seeding_rejects_a_seed_set_after_the_model_is_built():
    failure = rejected(check_seeding, make_train(seed="after_model"))
    assert "seed 0 gave different" in failure.what and "before the model" in failure.hint


def test_seeding_rejects_a_fixed_seed_that_ignores_cfg_seed():
    failure = rejected(check_seeding, make_train(seed="fixed"))
    assert "same initial weights" in failure.what and "cfg.seed" in failure.hint


# ---- the checkpoint's contents ---------------------------------------------------------------


def test_checkpoint_rejects_a_missing_config():
    failure = rejected(check_checkpoint_contents, make_train(config_in_checkpoint="missing"))
    assert "no 'config'" in failure.what and "dataclasses.asdict(cfg)" in failure.hint


def test_checkpoint_rejects_the_config_as_a_dataclass_object():
    failure = rejected(check_checkpoint_contents, make_train(config_in_checkpoint="dataclass"))
    assert "weights_only=True" in failure.what and "dataclasses.asdict(cfg)" in failure.hint


def test_checkpoint_rejects_the_model_object_instead_of_its_state_dict():
    failure = rejected(check_checkpoint_contents, make_train(save="model_object"))
    assert "model.state_dict()" in failure.hint


def test_checkpoint_rejects_a_checkpoint_without_its_step():
    failure = rejected(check_checkpoint_contents, make_train(checkpoint_step=False))
    assert "lacks 'step'" in failure.what and '"step": step' in failure.hint


# ---- best, not last --------------------------------------------------------------------------


def test_best_rejects_saving_the_last():
    failure = rejected(check_best_not_last, make_train(save="last"))
    assert "last evaluation's" in failure.what and "beats the best so far" in failure.hint


def test_best_rejects_saving_only_the_first_evaluation():
    failure = rejected(check_best_not_last, make_train(save="first"))
    assert "not from the best" in failure.what and "update the best" in failure.hint


def test_best_rejects_final_weights_saved_under_the_best_metric():
    failure = rejected(check_best_not_last, make_train(save="best_later"))
    assert "do not score" in failure.what and "copy.deepcopy" in failure.hint


# ---- clipping --------------------------------------------------------------------------------


def test_clipping_rejects_clipping_before_backward():
    failure = rejected(check_clipping, make_train(clip="before_backward"))
    assert "above the limit" in failure.what and "after backward()" in failure.hint


def test_clipping_rejects_no_clipping():
    assert "clip_grad_norm_" in rejected(check_clipping, make_train(clip="none")).hint


def test_clipping_rejects_clipping_after_the_optimizer_step():
    assert "right before the optimizer step" in rejected(check_clipping, make_train(clip="after_step")).hint


def test_clipping_rejects_clipping_scaled_fp16_gradients():
    failure = rejected(check_clipping, make_train(clip="before_unscale"))
    assert "fp16" in failure.what and "scaler.unscale_(optimizer) before clip_grad_norm_" in failure.hint


# ---- warmup ----------------------------------------------------------------------------------


def test_warmup_rejects_a_scheduler_never_stepped():
    failure = rejected(check_warmup, make_train(scheduler="never"))
    assert "never changed" in failure.what and "scheduler.step()" in failure.hint


def test_warmup_rejects_a_scheduler_stepped_once_per_epoch():
    failure = rejected(check_warmup, make_train(scheduler="per_epoch"))
    assert "not once per epoch" in failure.hint


def test_warmup_rejects_a_schedule_without_warmup():
    assert "warmup starts near 0" in rejected(check_warmup, make_train(scheduler="no_warmup")).what


def test_warmup_rejects_recording_the_configured_lr_instead_of_the_used_one():
    failure = rejected(check_warmup, make_train(record_lr="config"))
    assert "optimizer.param_groups[0]['lr']" in failure.hint


# ---- mixed precision -------------------------------------------------------------------------


def test_precision_rejects_ignoring_the_precision():
    failure = rejected(check_mixed_precision, make_train(precision="ignored"))
    assert "bf16" in failure.what and "torch.autocast" in failure.hint


def test_precision_rejects_bf16_used_for_fp16():
    failure = rejected(check_mixed_precision, make_train(precision="always_bf16"))
    assert "'fp16'" in failure.what and "torch.float16" in failure.hint


def test_precision_rejects_fp16_without_a_gradient_scaler():
    assert "GradScaler" in rejected(check_mixed_precision, make_train(precision="no_scaler")).hint


# ---- the config class --------------------------------------------------------------------------


def test_a_config_class_missing_a_field_is_named():
    fields = [(f.name, f.type, f.default) for f in dataclasses.fields(ExerciseConfig) if f.name != "hidden"]
    NoHidden = dataclasses.make_dataclass("NoHidden", fields)
    with pytest.raises(CheckFailure, match="no field 'hidden'"):
        check_seeding(make_train(), NoHidden)
