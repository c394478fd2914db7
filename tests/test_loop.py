"""What the training loop must get right, one behaviour per test."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from course_lib import (
    MLP,
    History,
    NonFiniteLossError,
    SmallCNN,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    load_digits_splits,
    make_loader,
    seed_everything,
)
from course_lib.schedules import warmup_cosine_multiplier


def digits_loaders(cfg, num_workers=0, train_size=None, images=False):
    splits = load_digits_splits(seed=0, images=images)
    train = splits.train
    if train_size is not None:
        train = TensorDataset(*(t[:train_size] for t in train.tensors))
    return (
        make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=num_workers),
        make_loader(splits.val, cfg.eval_batch_size),
    )


def fresh_model(seed=0, **kwargs):
    seed_everything(seed)
    return MLP(**kwargs)


# ---- gradient accumulation --------------------------------------------------------------------


def test_accumulation_equals_big_batch_when_sizes_divide_evenly_by_neither():
    # 103 samples: batches of 8 leave a short batch of 7, and windows of 4 micro-batches leave a
    # short last window of one micro-batch. Both must weigh samples like one batch of 32.
    data = load_digits_splits().train
    data = TensorDataset(data.tensors[0][:103], data.tensors[1][:103])
    base = dict(epochs=2, lr=0.05, schedule="constant", grad_clip=0.0, weight_decay=0.0,
                log_every=1, eval_every=100)
    big_cfg = TrainConfig(batch_size=32, grad_accum_steps=1, **base)
    small_cfg = TrainConfig(batch_size=8, grad_accum_steps=4, **base)
    results = []
    for cfg in (big_cfg, small_cfg):
        model = fresh_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        loader = make_loader(data, cfg.batch_size, shuffle=False)
        history = fit(model, loader, make_loader(data, 64), cfg, optimizer=optimizer)
        results.append((model.state_dict(), history))
    (big_weights, big_history), (small_weights, small_history) = results
    assert [r["step"] for r in big_history.train] == [r["step"] for r in small_history.train]
    assert len(big_history.train) == 2 * 4  # ceil(103 / 32) optimizer steps per epoch
    for name in big_weights:
        torch.testing.assert_close(small_weights[name], big_weights[name], rtol=0, atol=1e-6)
    for big, small in zip(big_history.train, small_history.train):
        assert small["loss"] == pytest.approx(big["loss"], abs=1e-6)


def test_scheduler_and_scaler_update_run_once_per_optimizer_step(monkeypatch):
    updates = []
    original_update = torch.amp.GradScaler.update
    monkeypatch.setattr(torch.amp.GradScaler, "update",
                        lambda self, *a, **k: (updates.append(1), original_update(self, *a, **k)))
    cfg = TrainConfig(max_steps=12, batch_size=16, grad_accum_steps=3, warmup_steps=5, lr=1e-3,
                      log_every=1, eval_every=100, precision="fp16")
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    assert len(updates) == 12
    expected = [1e-3 * warmup_cosine_multiplier(s, 5, 12) for s in range(12)]
    assert [r["learning_rate"] for r in history.train] == pytest.approx(expected)


# ---- mixed precision ----------------------------------------------------------------------------


def first_batch_grad_norm(cfg):
    model = fresh_model()
    inputs, targets = next(iter(digits_loaders(cfg)[0]))
    nn.functional.cross_entropy(model(inputs), targets).backward()
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


def test_fp16_logs_and_clips_unscaled_gradient_norm():
    cfg = TrainConfig(max_steps=1, batch_size=64, lr=1.0, grad_clip=0.01, schedule="constant",
                      log_every=1, eval_every=100, precision="fp16")
    model = fresh_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    history = fit(model, *digits_loaders(cfg), cfg, optimizer=optimizer)
    expected = first_batch_grad_norm(cfg)
    # A scaled norm would be about 65,536 times larger.
    assert history.train[0]["grad_norm"] == pytest.approx(expected, rel=0.02)
    # SGD with lr 1 moves the weights by exactly the clipped gradient: its norm is the limit.
    step = torch.stack([(b - p.detach()).norm() for b, p in zip(before, model.parameters())])
    assert torch.linalg.vector_norm(step).item() == pytest.approx(0.01, rel=1e-3)


class PoisonedLoss:
    """Cross-entropy, except that chosen calls return a non-finite value."""

    def __init__(self, bad_calls, value=math.inf):
        self.bad_calls, self.value, self.calls = set(bad_calls), value, 0

    def __call__(self, logits, targets):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * self.value if self.calls in self.bad_calls else loss


def test_skipped_fp16_step_does_not_advance_scheduler_and_prints_no_warning():
    cfg = TrainConfig(max_steps=6, batch_size=32, lr=1e-3, warmup_steps=4, log_every=1,
                      eval_every=100, precision="fp16")
    train_loader, val_loader = digits_loaders(cfg)
    # Training calls only: the first optimizer step overflows (the case PyTorch warns about).
    loss = PoisonedLoss(bad_calls={1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(fresh_model(), train_loader, val_loader, cfg, loss_fn=loss)
    assert [str(w.message) for w in caught] == []
    rates = [r["learning_rate"] for r in history.train]
    multipliers = [warmup_cosine_multiplier(s, 4, 6) for s in (0, 0, 1, 2, 3, 4)]
    assert rates == pytest.approx([1e-3 * m for m in multipliers])
    assert history.train[0]["skipped_steps"] == 1 and history.train[-1]["skipped_steps"] == 1


def test_long_run_of_fp16_skips_stops_the_run():
    cfg = TrainConfig(max_steps=30, batch_size=32, log_every=5, eval_every=100, precision="fp16",
                      max_consecutive_skips=5)
    with pytest.raises(NonFiniteLossError, match="6 steps in a row up to step 6"):
        fit(fresh_model(), *digits_loaders(cfg), cfg, loss_fn=PoisonedLoss(range(1, 100)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_non_finite_loss_stops_run_naming_the_step(precision):
    cfg = TrainConfig(max_steps=20, batch_size=32, log_every=10, eval_every=100, precision=precision)
    with pytest.raises(NonFiniteLossError, match="at step 7;"):
        fit(fresh_model(), *digits_loaders(cfg), cfg, loss_fn=PoisonedLoss({7}, math.nan))


# ---- evaluation -----------------------------------------------------------------------------------


def test_evaluation_restores_every_submodules_mode():
    model = nn.Sequential(SmallCNN(batch_norm=True, dropout=0.5))
    model.train()
    model[0].features[1].eval()  # a frozen BatchNorm inside a training model
    modes = {name: m.training for name, m in model.named_modules()}
    cfg = TrainConfig(max_steps=3, batch_size=32, eval_every=1)
    observed = []
    hook = lambda state: observed.append({n: m.training for n, m in state.model.named_modules()})
    fit(model, *digits_loaders(cfg, images=True), cfg, hooks=[hook])
    assert observed == [modes] * 3
    evaluate(model, digits_loaders(cfg, images=True)[1])
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_evaluation_weighs_partial_batches_by_size():
    splits = load_digits_splits()
    model = fresh_model()
    whole = evaluate(model, make_loader(splits.val, len(splits.val)))
    pieces = evaluate(model, make_loader(splits.val, 100))  # 270 = 100 + 100 + 70
    assert pieces["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-6)
    assert pieces["eval_accuracy"] == whole["eval_accuracy"]


# ---- reproducibility and resume -------------------------------------------------------------------


def run_config(tmp_path, name, **changes):
    values = dict(epochs=3, batch_size=64, lr=3e-3, warmup_steps=5, eval_every=7, log_every=3,
                  keep_best=2, grad_accum_steps=2, out_dir=str(tmp_path / name))
    return TrainConfig(**{**values, **changes})


def test_same_seed_same_history_and_different_seed_different_history():
    def history(seed):
        cfg = TrainConfig(seed=seed, epochs=2, batch_size=64, eval_every=10, log_every=5)
        return fit(fresh_model(seed, dropout=0.2), *digits_loaders(cfg), cfg).without_timing()

    assert history(1) == history(1)
    assert history(1) != history(2)


class Interrupt(Exception):
    pass


def interrupt_at(step):
    def hook(state):
        if state.step == step:
            raise Interrupt(step)
    return hook


# 600 examples in batches of 64 make 10 micro-batches an epoch; windows of 3 leave a short last
# window of one, so an epoch is 4 optimizer steps and the run 12. Checkpoints every 2 steps fall
# alternately mid-epoch (2, 6, 10) and at an epoch's end (4, 8, 12).
RESUME_RUN = dict(epochs=3, batch_size=64, lr=3e-3, warmup_steps=3, eval_every=2, log_every=3,
                  keep_best=2, grad_accum_steps=3)


def resume_loaders(cfg, num_workers):
    return digits_loaders(cfg, num_workers=num_workers, train_size=600)


_reference_runs = {}


def reference_run(num_workers):
    """The uninterrupted run, trained once per worker count for all the tests that need it."""
    if num_workers not in _reference_runs:
        cfg = TrainConfig(**RESUME_RUN)
        model = fresh_model(dropout=0.2)
        history = fit(model, *resume_loaders(cfg, num_workers), cfg)
        _reference_runs[num_workers] = (model.state_dict(), history.without_timing())
    return _reference_runs[num_workers]


@pytest.mark.parametrize("num_workers,stop_step", [(0, 1), (0, 5), (0, 7), (0, 12), (2, 7)])
def test_resume_after_interruption_is_bit_for_bit(tmp_path, num_workers, stop_step):
    # Stopping at 1 resumes from the initial checkpoint, at 5 from an epoch boundary (step 4), at 7
    # from the middle of an epoch (step 6), at 12 from the last step.
    reference_weights, reference_history = reference_run(num_workers)
    cfg = TrainConfig(**RESUME_RUN, out_dir=str(tmp_path / "run"))
    with pytest.raises(Interrupt):
        fit(fresh_model(dropout=0.2), *resume_loaders(cfg, num_workers), cfg,
            hooks=[interrupt_at(stop_step)])
    model = fresh_model(seed=123, dropout=0.2)  # resuming must not depend on the initial weights
    resumed = fit(model, *resume_loaders(cfg, num_workers), cfg, resume_from=cfg.out_dir)

    for name, tensor in reference_weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert resumed.without_timing() == reference_history
    on_disk = History.from_jsonl(tmp_path / "run" / "history.jsonl")
    assert on_disk.without_timing() == reference_history


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from torch.utils.data import TensorDataset
    from course_lib import MLP, TrainConfig, fit, seed_everything, load_digits_splits, make_loader
    cfg = TrainConfig(**eval(sys.argv[3]), out_dir=sys.argv[1])
    splits = load_digits_splits(seed=0)
    train = TensorDataset(*(t[:600] for t in splits.train.tensors))
    loaders = (make_loader(train, 64, shuffle=True, seed=cfg.seed),
               make_loader(splits.val, cfg.eval_batch_size))
    seed_everything(0)
    model = MLP(dropout=0.2)
    stop = int(sys.argv[2])
    def kill(state):
        if state.step == stop:
            os.kill(os.getpid(), signal.SIGKILL)
    fit(model, *loaders, cfg, hooks=[kill])
""")


def test_resume_after_sigkill_is_bit_for_bit(tmp_path):
    reference_weights, reference_history = reference_run(0)
    out_dir = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out_dir), "7", repr(RESUME_RUN)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL
    cfg = TrainConfig(**RESUME_RUN, out_dir=str(out_dir))
    model = fresh_model(seed=5, dropout=0.2)
    resumed = fit(model, *resume_loaders(cfg, 0), cfg, resume_from=out_dir)
    for name, tensor in reference_weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert resumed.without_timing() == reference_history


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    cfg = run_config(tmp_path, "run", precision="fp16")
    fit(fresh_model(), *digits_loaders(cfg), cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "batches_done", "rng",
                "epoch_rng", "config", "metrics", "history"):
        assert key in state, key
    assert state["config"] == cfg.to_dict()
    assert state["scaler"]["scale"] > 0
    assert state["optimizer"]["state"], "the optimizer's moments are saved"


def test_resume_refuses_a_different_config(tmp_path):
    cfg = run_config(tmp_path, "run", epochs=1)
    fit(fresh_model(), *digits_loaders(cfg), cfg)
    changed = cfg.replace(lr=1.0)
    with pytest.raises(ValueError, match="lr: 0.003 -> 1.0"):
        fit(fresh_model(), *digits_loaders(changed), changed, resume_from=cfg.out_dir)


def test_fresh_run_refuses_to_overwrite_an_existing_run(tmp_path):
    cfg = run_config(tmp_path, "run", epochs=1)
    fit(fresh_model(), *digits_loaders(cfg), cfg)
    with pytest.raises(FileExistsError, match="resume_from"):
        fit(fresh_model(), *digits_loaders(cfg), cfg)


# ---- keeping the best checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("metric,direction", [("eval_accuracy", "max"), ("eval_loss", "min")])
def test_keep_best_keeps_the_n_best_not_the_newest(tmp_path, metric, direction):
    # A high learning rate makes the validation metric fluctuate, so best and newest differ.
    cfg = run_config(tmp_path, "run", epochs=4, lr=0.05, eval_every=3, keep_best=3, metric=metric,
                     metric_direction=direction, schedule="constant", warmup_steps=0)
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    sign = -1 if direction == "max" else 1
    ranked = sorted(history.eval, key=lambda r: (sign * r[metric], r["step"]))
    expected = {f"step_{r['step']:06d}.pt" for r in ranked[:3]}
    newest = {f"step_{r['step']:06d}.pt" for r in history.eval[-3:]}
    kept = {p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt")}
    assert kept == expected
    assert expected != newest, "the metric should fluctuate in this set-up"
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
    for name in kept:
        state = load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert state["metrics"][metric] == next(r[metric] for r in history.eval
                                                if r["step"] == state["step"])


# ---- the record ------------------------------------------------------------------------------------


def test_history_uses_trainer_keys_and_round_trips_through_json_lines(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64, eval_every=5, log_every=2, out_dir=str(tmp_path / "r"))
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    assert set(history.train[0]) == {"step", "epoch", "loss", "smooth_loss", "learning_rate",
                                     "grad_norm", "samples_per_second", "skipped_steps"}
    assert set(history.eval[0]) == {"step", "epoch", "eval_loss", "eval_accuracy",
                                    "eval_per_class_accuracy", "eval_runtime",
                                    "eval_samples_per_second", "eval_steps_per_second"}
    assert history.train[1]["epoch"] == pytest.approx(4 / 20)
    loaded = History.from_jsonl(tmp_path / "r" / "history.jsonl")
    assert loaded.records == history.records


def test_history_keeps_nan_through_json(tmp_path):
    history = History([{"step": 1, "eval_per_class_accuracy": [1.0, math.nan]}])
    history.to_jsonl(tmp_path / "h.jsonl")
    loaded = History.from_jsonl(tmp_path / "h.jsonl")
    assert math.isnan(loaded[0]["eval_per_class_accuracy"][1])


def test_hook_exception_stops_the_run():
    cfg = TrainConfig(max_steps=10, batch_size=64, eval_every=100)
    with pytest.raises(Interrupt):
        fit(fresh_model(), *digits_loaders(cfg), cfg, hooks=[interrupt_at(3)])


def test_hooks_see_a_read_only_state():
    cfg = TrainConfig(max_steps=2, batch_size=64, eval_every=100)

    def hook(state):
        with pytest.raises(AttributeError):
            state.step = 99

    fit(fresh_model(), *digits_loaders(cfg), cfg, hooks=[hook])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, eval_every=1000, precision=precision)
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    assert history.eval[-1]["eval_accuracy"] > 0.85


def test_samples_per_second_leaves_out_evaluation_and_hooks():
    import time as clock

    cfg = TrainConfig(max_steps=8, batch_size=64, eval_every=4, log_every=4)
    slow_hook = lambda state: clock.sleep(0.05)
    history = fit(fresh_model(), *digits_loaders(cfg), cfg, hooks=[slow_hook])
    # Four steps of 64 samples take far less than the 0.2 s the hook slept in that window.
    assert all(r["samples_per_second"] > 4 * 64 / 0.2 for r in history.train)
