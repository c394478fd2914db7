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
    STOP,
    History,
    NonFiniteLossError,
    SmallCNN,
    TrainConfig,
    ema_smooth,
    evaluate,
    fit,
    load_checkpoint,
    load_digits_splits,
    make_loader,
    schedule_curve,
    seed_everything,
    train_step,
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
    seen = []
    with pytest.raises(Interrupt):
        fit(fresh_model(), *digits_loaders(cfg), cfg,
            hooks=[interrupt_at(3), lambda state: seen.append(state.step)])
    assert seen == [1, 2]  # the run stopped at the raising hook, before the next one and step 4


def test_hooks_see_a_read_only_state():
    cfg = TrainConfig(max_steps=2, batch_size=64, eval_every=100)
    refused = []

    def hook(state):
        try:
            state.step = 99
        except AttributeError:
            refused.append(state.step)

    fit(fresh_model(), *digits_loaders(cfg), cfg, hooks=[hook])
    assert refused == [1, 2]


def test_a_hook_returning_stop_ends_the_run_cleanly_and_it_resumes(tmp_path):
    cfg = TrainConfig(**RESUME_RUN, out_dir=str(tmp_path / "run"))
    stop_at_5 = lambda state: STOP if state.step == 5 else None
    model = fresh_model(dropout=0.2)
    seen = []
    history = fit(model, *resume_loaders(cfg, 0), cfg, hooks=[stop_at_5, lambda s: seen.append(s.step)])
    assert seen == [1, 2, 3, 4, 5]  # every hook ran at the stopping step, none after it
    assert history[-1]["step"] == 4  # the last record (log_every=3, eval_every=2) stays the last
    latest = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert latest["step"] == 5
    for name, tensor in model.state_dict().items():
        assert torch.equal(latest["model"][name], tensor), name
    reference_weights, reference_history = reference_run(0)
    resumed_model = fresh_model(seed=3, dropout=0.2)
    resumed = fit(resumed_model, *resume_loaders(cfg, 0), cfg, resume_from=cfg.out_dir)
    assert resumed.without_timing() == reference_history
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name


def test_a_hook_returning_anything_else_is_an_error():
    cfg = TrainConfig(max_steps=3, batch_size=64, eval_every=100)
    with pytest.raises(TypeError, match="returns None, or 'stop'"):
        fit(fresh_model(), *digits_loaders(cfg), cfg, hooks=[lambda state: True])


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


def test_smooth_loss_is_ema_smooth_of_the_logged_losses():
    cfg = TrainConfig(max_steps=30, batch_size=32, log_every=3, eval_every=100, smoothing=0.8)
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    losses = [r["loss"] for r in history.train]
    assert [r["smooth_loss"] for r in history.train] == ema_smooth(losses, 0.8)


# ---- train_step: one optimizer step over a window -------------------------------------------------


def gradients_of(model):
    return [p.grad.clone() for p in model.parameters()]


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it stepped with."""

    def step(self, closure=None):
        self.seen = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        self.steps = getattr(self, "steps", 0) + 1
        return super().step(closure)


def test_train_step_over_unequal_micro_batches_equals_one_big_batch():
    inputs, targets = load_digits_splits().train.tensors
    inputs, targets = inputs[:45], targets[:45]
    window = [(inputs[:16], targets[:16]), (inputs[16:40], targets[16:40]), (inputs[40:], targets[40:])]
    model = fresh_model()
    optimizer = RecordingSGD(model.parameters(), lr=0.0)
    result = train_step(model, window, nn.functional.cross_entropy, optimizer)
    reference = fresh_model()
    loss = nn.functional.cross_entropy(reference(inputs), targets)
    loss.backward()
    assert optimizer.steps == 1 and result.samples == 45 and not result.skipped
    assert result.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for seen, expected in zip(optimizer.seen, gradients_of(reference)):
        torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-7)


def sequence_batch(generator, batch, length, classes=4, features=3):
    """Sequences padded to `length`: inputs [B, T, F], targets [B, T], mask [B, T]."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = torch.arange(length) < lengths[:, None]
    inputs = torch.randn(batch, length, features, generator=generator)
    targets = torch.randint(0, classes, (batch, length), generator=generator)
    return inputs, targets, mask


def per_token_reference(model, batches):
    """The mean cross-entropy over every real token of every batch, computed at once."""
    logits = torch.cat([model(x)[m] for x, _, m in batches])
    return nn.functional.cross_entropy(logits, torch.cat([t[m] for _, t, m in batches]))


def test_train_step_weights_padded_sequences_by_their_real_tokens():
    generator = torch.Generator().manual_seed(0)
    # Micro-batches with very different numbers of real tokens: a plain per-batch mean, or a
    # weighting by len(targets), gives a different gradient.
    window = [sequence_batch(generator, 4, 12), sequence_batch(generator, 6, 3)]
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    optimizer = RecordingSGD(model.parameters(), lr=0.0)
    result = train_step(model, window, nn.functional.cross_entropy, optimizer)
    reference = per_token_reference(model, window)
    model.zero_grad()
    reference.backward()
    assert result.loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for seen, expected in zip(optimizer.seen, gradients_of(model)):
        torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-7)


def masked_cross_entropy(logits, targets):
    """A loss that handles its own padding (-1) and says how many tokens its mean is over."""
    real = targets >= 0
    return nn.functional.cross_entropy(logits[real], targets[real]), int(real.sum())


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(ignore_index=-1), masked_cross_entropy],
                         ids=["ignore_index", "returns_a_count"])
def test_train_step_counts_the_items_a_loss_averages(loss_fn):
    generator = torch.Generator().manual_seed(1)
    window = []
    for batch, length in ((5, 10), (3, 2), (7, 6)):
        inputs, targets, mask = sequence_batch(generator, batch, length)
        window.append((inputs.reshape(-1, 3), torch.where(mask, targets, -1).reshape(-1)))
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    optimizer = RecordingSGD(model.parameters(), lr=0.0)
    result = train_step(model, window, loss_fn, optimizer)
    inputs, targets = torch.cat([x for x, _ in window]), torch.cat([t for _, t in window])
    model.zero_grad()
    reference = nn.functional.cross_entropy(model(inputs), targets, ignore_index=-1)
    reference.backward()
    assert result.loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for seen, expected in zip(optimizer.seen, gradients_of(model)):
        torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-7)


def test_train_step_leaves_the_schedule_alone_when_the_scaler_skips():
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scaler = torch.amp.GradScaler("cpu")
    inputs, targets = load_digits_splits().train.tensors
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, [(inputs[:8], targets[:8])], PoisonedLoss({1}), optimizer,
                        scheduler=scheduler, scaler=scaler, precision="fp16")
    assert result.skipped and scheduler.last_epoch == 0
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    result = train_step(model, [(inputs[:8], targets[:8])], nn.functional.cross_entropy,
                        optimizer, scheduler=scheduler, scaler=scaler, precision="fp16")
    assert not result.skipped and scheduler.last_epoch == 1


# ---- evaluation of padded and ignored items --------------------------------------------------------


def test_evaluate_weights_masked_batches_by_their_real_items():
    generator = torch.Generator().manual_seed(2)
    batches = [sequence_batch(generator, batch, length) for batch, length in ((4, 9), (6, 2), (1, 5))]
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    result = evaluate(model, batches)
    with torch.no_grad():
        reference = per_token_reference(model, batches)
        logits = torch.cat([model(x)[m] for x, _, m in batches])
    targets = torch.cat([t[m] for _, t, m in batches])
    assert result["eval_loss"] == pytest.approx(reference.item(), rel=1e-6)
    assert result["eval_accuracy"] == pytest.approx((logits.argmax(-1) == targets).double().mean().item())


def test_evaluate_leaves_ignored_targets_out_of_loss_and_accuracy():
    inputs, targets = load_digits_splits().val.tensors
    targets = targets.clone()
    targets[::3] = -100  # a third of the items do not count
    model = fresh_model()
    result = evaluate(model, make_loader(TensorDataset(inputs, targets), 50))
    kept = targets != -100
    with torch.no_grad():
        logits = model(inputs)
    expected_loss = nn.functional.cross_entropy(logits, targets).item()  # ignores -100 itself
    assert result["eval_loss"] == pytest.approx(expected_loss, rel=1e-6)
    expected_accuracy = (logits.argmax(-1)[kept] == targets[kept]).double().mean().item()
    assert result["eval_accuracy"] == pytest.approx(expected_accuracy)


def test_evaluate_reads_the_device_once_however_many_batches(monkeypatch):
    reads = []
    for name in ("item", "tolist", "cpu", "__int__", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=original, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1])
    splits = load_digits_splits()
    model = fresh_model()
    counts = []
    for batch_size in (270, 10):  # one batch, then 27
        reads.clear()
        evaluate(model, make_loader(splits.val, batch_size))
        counts.append(len(reads))
    assert counts[0] == counts[1], f"reads with 1 batch: {counts[0]}, with 27: {counts[1]}"


def test_evaluate_names_a_target_class_out_of_range():
    inputs, targets = load_digits_splits().val.tensors
    targets = targets.clone()
    targets[5] = 10
    with pytest.raises(ValueError, match="1 item.*outside 0..9"):
        evaluate(fresh_model(), make_loader(TensorDataset(inputs, targets), 64),
                 loss_fn=lambda logits, t: logits.sum() * 0)


# ---- loaders that misbehave -----------------------------------------------------------------------


class ShortLoader:
    """A loader whose len() claims more batches than it yields (a filtered or sharded stream)."""

    def __init__(self, batches, claimed):
        self.batches, self.claimed = batches, claimed

    def __len__(self):
        return self.claimed

    def __iter__(self):
        return iter(self.batches)


def test_a_training_loader_with_no_batches_is_an_error_not_a_hang():
    cfg = TrainConfig(max_steps=5, batch_size=64, eval_every=100)
    val_loader = digits_loaders(cfg)[1]
    with pytest.raises(ValueError, match="yielded no batches"):
        fit(fresh_model(), ShortLoader([], claimed=3), val_loader, cfg)
    with pytest.raises(ValueError, match="no batches"):
        fit(fresh_model(), ShortLoader([], claimed=0), val_loader, cfg.replace(max_steps=0, epochs=2))


def test_a_loader_shorter_than_its_len_does_not_make_the_next_epoch_skip_batches():
    inputs, targets = load_digits_splits().train.tensors
    batches = [(inputs[i * 8:(i + 1) * 8], torch.full((8,), i)) for i in range(7)]
    seen = []

    def loss_fn(logits, batch_targets):
        seen.append(int(batch_targets[0]))
        return nn.functional.cross_entropy(logits, batch_targets)

    cfg = TrainConfig(max_steps=14, batch_size=8, eval_every=100)
    val_loader = digits_loaders(cfg)[1]
    fit(fresh_model(), ShortLoader(batches, claimed=10), val_loader, cfg,
        loss_fn=lambda logits, t: loss_fn(logits, t) if logits.requires_grad else
        nn.functional.cross_entropy(logits, t))
    assert seen == list(range(7)) * 2


# ---- schedules fit runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule,options", [
    ("step", dict(decay_every=4, decay_factor=0.5)),
    ("step", dict()),
    ("cosine", dict(min_lr_ratio=0.1)),
    ("onecycle", dict(warmup_steps=4)),
    ("warmup_linear", dict(warmup_steps=3)),
])
def test_fit_steps_each_schedule_once_per_optimizer_step_as_its_curve_says(schedule, options):
    cfg = TrainConfig(max_steps=15, batch_size=64, lr=0.01, log_every=1, eval_every=100,
                      schedule=schedule, **options)
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    curve = schedule_curve(schedule, cfg.warmup_steps, 15, cfg.min_lr_ratio,
                           decay_every=cfg.decay_every, decay_factor=cfg.decay_factor)
    assert [r["learning_rate"] for r in history.train] == pytest.approx([0.01 * m for m in curve])
    assert len(set(curve)) > 2, "the curve should change over the run"


def test_step_schedule_decays_by_its_factor_every_decay_every_steps():
    curve = schedule_curve("step", 0, 12, decay_every=4, decay_factor=0.5)
    assert curve == pytest.approx([1.0] * 4 + [0.5] * 4 + [0.25] * 4)
    assert schedule_curve("step", 0, 9)[3] == pytest.approx(0.1)  # default: a third of the run


def test_cosine_and_onecycle_curves_have_their_documented_shape():
    cosine = schedule_curve("cosine", 0, 100, min_lr_ratio=0.1)
    expected = [0.1 + 0.9 * (1 + math.cos(math.pi * k / 100)) / 2 for k in range(100)]
    assert cosine == pytest.approx(expected, abs=1e-9)
    onecycle = schedule_curve("onecycle", 10, 100, min_lr_ratio=0.01)
    assert onecycle[0] == pytest.approx(1 / 25) and max(onecycle) == pytest.approx(1.0)
    assert onecycle.index(max(onecycle)) == pytest.approx(10, abs=1)
    assert onecycle[-1] == pytest.approx(0.01)


@pytest.mark.parametrize("direction,drops", [("max", True), ("min", False)])
def test_plateau_lowers_the_lr_after_patience_evaluations_without_improvement(direction, drops):
    # The validation loss falls at every evaluation: an improvement when smaller is better
    # ("min"), a run of bad evaluations when larger is ("max").
    cfg = TrainConfig(max_steps=24, batch_size=64, lr=3e-3, log_every=1, eval_every=4,
                      schedule="plateau", patience=2, decay_factor=0.5, metric="eval_loss",
                      metric_direction=direction)
    history = fit(fresh_model(), *digits_loaders(cfg), cfg)
    losses = [r["eval_loss"] for r in history.eval]
    assert all(b < a * (1 - 1e-4) for a, b in zip(losses, losses[1:])), "the loss should fall"
    rates = {r["step"]: r["learning_rate"] for r in history.train}
    # Evaluations come after steps 4, 8, ...; a change shows from the next step on.
    expected = 3e-3 * 0.5 if drops else 3e-3
    assert rates[16] == 3e-3  # three evaluations: the third is only the second bad one
    assert rates[17] == pytest.approx(expected)  # after the fourth: patience 2 exceeded
    assert all(rates[s] == 3e-3 for s in range(1, 17))


def test_plateau_curve_follows_the_metrics_it_is_given():
    curve = schedule_curve("plateau", 0, 20, metrics=[1.0, 1.0, 1.0, 1.0, 0.5], eval_every=4,
                           direction="min", patience=2, decay_factor=0.5)
    assert curve == [1.0] * 16 + [0.5] * 4
    with pytest.raises(ValueError, match="metrics="):
        schedule_curve("plateau", 0, 20)
