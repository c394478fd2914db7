"""Config, schedules, losses, checkpoints and data: the pieces the loop stands on."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from course_lib import (
    MLP,
    FocalLoss,
    SmallCNN,
    TrainConfig,
    UnsafeCheckpointError,
    build_optimizer,
    class_counts,
    downsample_class,
    focal_loss,
    load_checkpoint,
    load_digits_splits,
    save_checkpoint,
    seed_everything,
    warmup_cosine,
)
from course_lib.schedules import schedule_curve, warmup_cosine_multiplier

# ---- config -------------------------------------------------------------------------------------


def test_unknown_config_key_is_named_with_the_valid_ones():
    with pytest.raises(KeyError) as error:
        TrainConfig.from_dict({"lr": 0.1, "learning_rate": 0.1})
    assert "'learning_rate'" in str(error.value)
    assert "grad_accum_steps" in str(error.value)


@pytest.mark.parametrize("field,value", [
    ("lr", -1.0), ("lr", 0.0), ("grad_accum_steps", 0), ("precision", "fp8"), ("batch_size", 0),
    ("schedule", "cosine_with_restarts"), ("min_lr_ratio", 1.5), ("metric_direction", "up"),
    ("lr", math.nan), ("eval_every", -5), ("device", "tpu"), ("decay_factor", 1.0),
    ("decay_factor", 0.0), ("patience", -1), ("decay_every", -2),
])
def test_impossible_config_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} = "):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("schedule", ["step", "cosine", "plateau"])
def test_a_warmup_with_a_schedule_that_has_none_names_the_field(schedule):
    with pytest.raises(ValueError, match=f"TrainConfig.warmup_steps = 5: the '{schedule}'"):
        TrainConfig(schedule=schedule, warmup_steps=5)


def test_wrong_type_names_the_field():
    with pytest.raises(TypeError, match="TrainConfig.batch_size must be int"):
        TrainConfig.from_dict({"batch_size": "64"})


@pytest.mark.parametrize("out_dir", ["runs/a", r"C:\Users\ana\runs\a", 'runs/"quoted"', "runs/é"])
def test_config_round_trips_through_toml_and_dict(tmp_path, out_dir):
    cfg = TrainConfig(lr=3e-4, precision="bf16", grad_accum_steps=4, out_dir=out_dir)
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert TrainConfig.from_toml(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "table.toml").write_text("[train]\nlr = 1\nepochs = 3\n")
    loaded = TrainConfig.from_toml(tmp_path / "table.toml")
    assert loaded.lr == 1.0 and isinstance(loaded.lr, float) and loaded.epochs == 3


def test_bad_key_in_toml_file_is_named(tmp_path):
    (tmp_path / "bad.toml").write_text("lr = 0.1\nwarmup = 10\n")
    with pytest.raises(KeyError, match="'warmup'"):
        TrainConfig.from_toml(tmp_path / "bad.toml")


# ---- seeding ------------------------------------------------------------------------------------


def test_seed_everything_makes_every_generator_repeat():
    import random

    import numpy as np

    def draw():
        generator = seed_everything(7)
        return (random.random(), float(np.random.rand()), torch.rand(1).item(),
                torch.randperm(10, generator=generator).tolist())

    assert draw() == draw()


# ---- schedules ----------------------------------------------------------------------------------


def reference_cosine_with_warmup(step, warmup, total):
    # The formula of transformers' get_cosine_schedule_with_warmup (num_cycles = 0.5).
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def test_warmup_cosine_matches_hugging_face_formula():
    for step in range(0, 120):
        assert warmup_cosine_multiplier(step, 10, 100) == pytest.approx(
            reference_cosine_with_warmup(step, 10, 100), abs=1e-12)


def test_warmup_cosine_shape_with_minimum():
    curve = schedule_curve("warmup_cosine", 5, 50, min_lr_ratio=0.1)
    assert curve[0] == 0.0 and curve[5] == 1.0
    assert all(a >= b for a, b in zip(curve[5:], curve[6:]))
    assert warmup_cosine_multiplier(50, 5, 50, 0.1) == pytest.approx(0.1)


def test_warmup_cosine_scheduler_sets_learning_rates():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=10)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.0, 1.0, 2.0, 2.0 * reference_cosine_with_warmup(3, 2, 10)])


# ---- focal loss ---------------------------------------------------------------------------------


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits, targets = torch.randn(32, 10), torch.randint(0, 10, (32,))
    torch.testing.assert_close(focal_loss(logits, targets, gamma=0.0),
                               nn.functional.cross_entropy(logits, targets))


def test_focal_loss_known_value_and_alpha():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    p = math.exp(2) / (math.exp(2) + 2)
    expected = -0.25 * (1 - p) ** 2 * math.log(p)
    loss = focal_loss(logits, torch.tensor([0]), gamma=2.0, alpha=[0.25, 1.0, 1.0])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.2, 0.5, 1.0, 2.0])
def test_focal_loss_has_finite_gradients_when_p_t_rounds_to_one(gamma):
    # The first example is certain (p_t is exactly 1.0 in float32), the second hopeless: with
    # 0 < gamma < 1 the derivative of (1 - p_t) ** gamma is infinite at p_t = 1.
    logits = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 0]), gamma=gamma)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[0].abs().max() == 0  # a certain, right example contributes nothing
    assert logits.grad[1, 0] < 0  # the hopeless one pushes its true class up


def test_focal_loss_module_gives_the_function_s_value_on_the_module_s_device():
    logits, targets = torch.randn(16, 3), torch.randint(0, 3, (16,))
    module = FocalLoss(gamma=1.5, alpha=[0.2, 0.3, 0.5], reduction="sum")
    expected = focal_loss(logits, targets, gamma=1.5, alpha=[0.2, 0.3, 0.5], reduction="sum")
    torch.testing.assert_close(module(logits, targets), expected)
    assert module.alpha.dtype == torch.float32 and "alpha" in dict(module.named_buffers())


def test_focal_loss_down_weights_easy_examples():
    easy, hard = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    target = torch.tensor([0])
    ratio = lambda gamma: (focal_loss(easy, target, gamma) / focal_loss(hard, target, gamma)).item()
    assert ratio(2.0) < ratio(0.0)


# ---- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    state = {"model": MLP().state_dict(), "step": 3, "config": TrainConfig().to_dict()}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 3 and loaded["config"] == TrainConfig().to_dict()


def test_crash_during_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1})
    good_bytes = path.read_bytes()

    def crashing_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == good_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_process_killed_during_save_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1})
    script = textwrap.dedent(f"""
        import os, signal, torch
        from course_lib import save_checkpoint
        def dying_save(obj, file):
            file.write(b"half a checkpoint"); file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint({str(path)!r}, {{"step": 2}})
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode != 0
    assert load_checkpoint(path) == {"step": 1}


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


# ---- data and models ----------------------------------------------------------------------------


def test_digits_splits_are_stratified_and_seeded():
    splits = load_digits_splits(seed=0)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797 and sizes[1] == pytest.approx(0.15 * 1797, abs=2)
    train_share = torch.tensor(class_counts(splits.train)) / len(splits.train)
    val_share = torch.tensor(class_counts(splits.val)) / len(splits.val)
    assert (train_share - val_share).abs().max() < 0.01
    again = load_digits_splits(seed=0)
    assert torch.equal(again.val.tensors[0], splits.val.tensors[0])
    assert not torch.equal(load_digits_splits(seed=1).val.tensors[0], splits.val.tensors[0])
    assert load_digits_splits(images=True).train.tensors[0].shape[1:] == (1, 8, 8)


def test_downsample_class_keeps_the_requested_count_and_the_rest():
    train = load_digits_splits().train
    before = class_counts(train)
    after = class_counts(downsample_class(train, cls=3, keep_fraction=0.1, seed=0))
    assert after[3] == round(before[3] * 0.1)
    assert after[:3] + after[4:] == before[:3] + before[4:]


def test_optimizer_does_not_decay_biases_or_norm_weights():
    model = SmallCNN(batch_norm=True)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in decayed) == (parameter.dim() >= 2), name


def test_models_produce_class_logits():
    assert MLP()(torch.zeros(5, 64)).shape == (5, 10)
    assert SmallCNN(batch_norm=True)(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
