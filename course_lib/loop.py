"""The training loop of lesson 01, written to be read top to bottom.

`fit` is the hand-written loop of lesson 01 with the six parts every serious loop has: a config,
one seed, mixed precision, gradient clipping, a learning-rate schedule, and periodic validation with
checkpoints. It also gets right the details that well-known libraries got wrong:

- gradient accumulation divides by the real number of samples in each window (the last window of
  an epoch may be short), not by the configured number of micro-batches;
- the scheduler does not advance when the fp16 gradient scaler skipped the optimizer step;
- the logged gradient norm and the clipping use unscaled gradients;
- evaluation puts every submodule back into the train/eval mode it had before;
- a run resumed from its latest checkpoint ends bit-for-bit where an uninterrupted run ends.

Loss values stay on the device and are read only at logging steps: reading a tensor's value forces
the host to wait for the device, and doing that every step would stall a GPU.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from course_lib.checkpoint import load_checkpoint, rank_checkpoints, save_checkpoint
from course_lib.config import TrainConfig
from course_lib.history import History
from course_lib.metrics import confusion_matrix, per_class_accuracy_from_confusion
from course_lib.schedules import build_scheduler
from course_lib.seeding import get_rng_state, set_rng_state

LOOP_OUTLINE = """\
fit(model, train_loader, val_loader, cfg)
  build: device, loss (cross-entropy), AdamW (no decay on biases/norms), schedule, gradient scaler
  resume: when resume_from is given, restore model, optimizer, schedule, scaler, RNG, data position
  for each optimizer step until max_steps:
    take a window of grad_accum_steps micro-batches (shorter at the end of an epoch)
    for each micro-batch:
      forward under autocast (bf16/fp16) -> loss
      weight the loss by micro-batch size / window size  (the real window, not the configured one)
      backward through the scaled loss (fp16) or the loss itself
    unscale gradients -> measure the gradient norm -> clip it
    optimizer step (the fp16 scaler skips it when gradients overflowed) -> update the scale
    clear gradients
    advance the schedule, unless the scaler skipped the step
    every log_every steps: read the losses, stop on a non-finite one, log a training record
    every eval_every steps: evaluate (restoring train/eval modes), log, keep the best checkpoints
    call the hooks with a read-only state
  return the History"""


def describe_loop() -> str:
    """The phases of `fit`, in the order it runs them."""
    return LOOP_OUTLINE


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainState:
    """What a hook sees after each optimizer step. Read it; do not change the run through it."""

    step: int
    max_steps: int
    epoch: float
    learning_rate: float
    skipped_steps: int
    history: History
    cfg: TrainConfig
    model: nn.Module


# ---- small helpers the loop calls ----------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast, or nothing for fp32: one code path for every precision."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only.

    Decaying biases and normalisation weights pulls them towards zero for no benefit; the usual
    rule is "decay only parameters with two or more dimensions".
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def evaluate(model: nn.Module, loader, loss_fn=None, device=None, precision: str = "fp32") -> dict:
    """Dataset-level loss, accuracy and per-class accuracy over `loader` (lesson 05).

    Each batch's mean loss is weighted by its size, so a short last batch counts for exactly its
    examples. Every submodule gets back the train/eval mode it had, including a frozen BatchNorm
    kept in eval mode inside a model that is training.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = device or next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=device)
    confusion = None
    batches = 0
    try:
        with torch.inference_mode(), autocast_context(device, precision):
            for inputs, targets in loader:
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                logits = model(inputs)
                total_loss += loss_fn(logits, targets).float() * len(targets)
                counts = confusion_matrix(logits.argmax(dim=-1), targets, logits.shape[-1])
                confusion = counts if confusion is None else confusion + counts
                batches += 1
    finally:
        for module, was_training in modes:
            module.training = was_training  # set each module's own flag; no recursion
    if confusion is None:
        raise ValueError("the evaluation loader yielded no batches")
    confusion = confusion.cpu()  # the one synchronisation of the evaluation
    examples = int(confusion.sum())
    runtime = time.perf_counter() - start
    return {
        "eval_loss": total_loss.item() / examples,
        "eval_accuracy": confusion.diag().sum().item() / examples,
        "eval_per_class_accuracy": per_class_accuracy_from_confusion(confusion),
        "eval_runtime": runtime,
        "eval_samples_per_second": examples / runtime,
        "eval_steps_per_second": batches / runtime,
    }


def _loader_rng_state(loader) -> dict:
    """What decides an epoch's batch order: the loader's generator, or else the global torch RNG."""
    state = {"torch": torch.get_rng_state()}
    if loader.generator is not None:
        state["loader"] = loader.generator.get_state()
    sampler_generator = getattr(loader.sampler, "generator", None)
    if sampler_generator is not None and sampler_generator is not loader.generator:
        state["sampler"] = sampler_generator.get_state()
    return state


def _restore_loader_rng_state(loader, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "loader" in state:
        loader.generator.set_state(state["loader"])
    if "sampler" in state:
        loader.sampler.generator.set_state(state["sampler"])


def _windows(batches, size: int):
    """Group micro-batches into accumulation windows; the last one of an epoch may be short."""
    window = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


class _RunFiles:
    """The output folder: history.jsonl, config.toml, checkpoints/latest.pt and the best N."""

    def __init__(self, out_dir):
        self.root = Path(out_dir)
        self.checkpoints = self.root / "checkpoints"
        self.latest = self.checkpoints / "latest.pt"
        self.history = self.root / "history.jsonl"

    def start(self, cfg: TrainConfig, history: History, resuming: bool) -> None:
        if self.latest.exists() and not resuming:
            raise FileExistsError(
                f"{self.root} already holds a run; pass resume_from={str(self.root)!r} to continue "
                "it, or choose another out_dir"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        (self.root / "config.toml").write_text(cfg.to_toml())
        # On resume, records written after the checkpoint are replayed, so rewrite from it.
        history.to_jsonl(self.history)

    def append(self, record: dict) -> None:
        with open(self.history, "a") as file:
            file.write(History.record_to_line(record) + "\n")


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """A resumed run must be the same run: only where it runs may change."""
    may_differ = {"out_dir", "device"}
    current = cfg.to_dict()
    differ = [k for k in current if k not in may_differ and saved.get(k) != current[k]]
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differ)
        raise ValueError(f"cannot resume: the config differs from the checkpoint's ({details})")


# ---- the loop -----------------------------------------------------------------------------------


def fit(model: nn.Module, train_loader, val_loader, cfg: TrainConfig, *, loss_fn=None,
        optimizer=None, hooks=(), resume_from=None) -> History:
    """Train `model` as `cfg` says and return its History.

    Batches are (inputs, targets) pairs and `loss_fn(logits, targets)` returns the mean over a
    batch. Hooks are plain functions called after every optimizer step with a `TrainState`; an
    exception in a hook stops the run. `resume_from` is the out_dir of an earlier run of the same
    config, continued from its latest checkpoint.
    """
    # -- set-up --------------------------------------------------------------------------------
    device = resolve_device(cfg.device)
    model.to(device)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = optimizer if optimizer is not None else build_optimizer(model, cfg)
    batches_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    max_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.warmup_steps, max_steps,
                                cfg.min_lr_ratio)
    fp16 = cfg.precision == "fp16"
    # bf16 keeps float32's range, so only fp16 needs loss scaling; disabled, the scaler's
    # methods do nothing and one code path serves every precision.
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    parameters = [p for p in model.parameters() if p.requires_grad]

    history = History()
    step = 0
    epoch = 0
    batches_done = 0  # micro-batches of the current epoch already trained on
    epoch_rng = None  # the RNG state that decided the current epoch's batch order
    consecutive_skips = 0
    skipped_total = 0
    best = []  # {"path", "step", "metric"} of the kept best checkpoints
    log_window = []  # finite losses read from the device since the last training record
    smooth, smooth_count = 0.0, 0  # the EMA of logged losses (before debiasing), and its length

    if resume_from is not None:
        latest = Path(resume_from) / "checkpoints" / "latest.pt"
        if not latest.exists():
            raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
        # On the CPU: RNG states must stay there; load_state_dict copies the rest to the device.
        saved = load_checkpoint(latest, map_location="cpu")
        _check_resumable(saved["config"], cfg)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        history = History(saved["history"])
        step, epoch, batches_done = saved["step"], saved["epoch"], saved["batches_done"]
        epoch_rng = saved["epoch_rng"]
        consecutive_skips, skipped_total = saved["consecutive_skips"], saved["skipped_total"]
        best = saved["best"]
        resumed_rng = saved["rng"]
        log_window = list(saved["log_window"])
        smooth, smooth_count = saved["smoothing"]

    files = _RunFiles(cfg.out_dir) if cfg.out_dir else None
    if files:
        files.start(cfg, history, resuming=resume_from is not None)

    def log(record):
        history.append(record)
        if files:
            files.append(record)

    def checkpoint_state(metrics=None):
        return {
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": epoch,
            "batches_done": batches_done,
            "rng": get_rng_state(),
            # At an epoch boundary the next epoch's order is decided by the state right now.
            "epoch_rng": _loader_rng_state(train_loader) if batches_done == 0 else epoch_rng,
            "history": history.records,
            "consecutive_skips": consecutive_skips,
            "skipped_total": skipped_total,
            "log_window": list(log_window),  # losses read but not yet logged
            "smoothing": (smooth, smooth_count),
            "metrics": metrics,
        }

    def save(metrics):
        state = checkpoint_state(metrics)
        nonlocal best
        if cfg.keep_best > 0:
            if cfg.metric not in metrics:
                raise KeyError(f"cfg.metric {cfg.metric!r} is not among {sorted(metrics)}")
            path = files.checkpoints / f"step_{step:06d}.pt"
            save_checkpoint(path, {**state, "best": best})
            entry = {"path": path.name, "step": step, "metric": float(metrics[cfg.metric])}
            best, dropped = rank_checkpoints(best + [entry], cfg.keep_best, cfg.metric_direction)
            for old in dropped:
                (files.checkpoints / old["path"]).unlink(missing_ok=True)
        save_checkpoint(files.latest, {**state, "best": best})

    # Training losses since the last read, still on the device: (step, loss tensor).
    unread_losses = []
    last_grad_norm = None
    samples_since_log = 0
    log_clock = time.perf_counter()

    def read_losses():
        """Bring the unread losses to the host (one synchronisation) and check them."""
        if not unread_losses:
            return
        values = torch.stack([loss for _, loss in unread_losses]).tolist()
        for (loss_step, _), value in zip(unread_losses, values):
            if math.isfinite(value):
                log_window.append(value)
            elif not fp16:  # with fp16 the scaler skips such steps; see consecutive_skips
                raise NonFiniteLossError(
                    f"the training loss was {value} at step {loss_step}; lower the learning "
                    "rate, clip gradients, or look for bad inputs"
                )
        unread_losses.clear()

    resuming = resume_from is not None
    if files and not resuming:
        # A checkpoint of the starting point: a run killed before its first evaluation resumes too.
        save_checkpoint(files.latest, {**checkpoint_state(), "best": best})
    if not model.training:
        # Only switch a model that is wholly in eval mode: a model already training may keep a
        # submodule (a frozen BatchNorm, say) in eval mode on purpose.
        model.train()
    while step < max_steps:
        # -- one epoch, or the rest of one when resuming ---------------------------------------
        if resuming:
            # Replay the interrupted epoch's order, then skip what was already trained on.
            _restore_loader_rng_state(train_loader, epoch_rng)
        else:
            epoch_rng = _loader_rng_state(train_loader)
        batches = iter(train_loader)
        for _ in islice(batches, batches_done):
            pass
        if resuming:
            set_rng_state(resumed_rng)  # dropout and friends continue where they stopped
            resuming = False

        for window in _windows(batches, cfg.grad_accum_steps):
            # -- one optimizer step -------------------------------------------------------------
            window_samples = sum(len(targets) for _, targets in window)
            window_loss = None
            for inputs, targets in window:
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                with autocast_context(device, cfg.precision):
                    loss = loss_fn(model(inputs), targets)
                if len(window) > 1:
                    # Weight by this micro-batch's share of the window's samples: the sum is then
                    # the mean over the window, also when the window or a micro-batch is short.
                    loss = loss * (len(targets) / window_samples)
                scaler.scale(loss).backward()
                detached = loss.detach().float()
                window_loss = detached if window_loss is None else window_loss + detached

            scaler.unscale_(optimizer)  # clip and measure true gradients, not scaled ones
            if cfg.grad_clip > 0:
                grad_norm = nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)  # norm before clipping
            else:
                grad_norm = nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
            learning_rate = optimizer.param_groups[0]["lr"]  # the LR this step uses
            if fp16:
                scale_before = scaler.get_scale()  # fp16 only: knowing about a skip needs a sync
            scaler.step(optimizer)  # skipped when the fp16 gradients hold inf or NaN
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            skipped = fp16 and scaler.get_scale() < scale_before
            if skipped:
                consecutive_skips += 1
                skipped_total += 1
                if consecutive_skips > cfg.max_consecutive_skips:
                    raise NonFiniteLossError(
                        f"the fp16 gradient scaler skipped {consecutive_skips} steps in a row up to "
                        f"step {step + 1}: the gradients keep overflowing; try bf16 or a lower LR"
                    )
            else:
                consecutive_skips = 0
                scheduler.step()  # a skipped step must not move the schedule on

            step += 1
            batches_done += len(window)
            if batches_done == batches_per_epoch:
                epoch, batches_done = epoch + 1, 0
            unread_losses.append((step, window_loss))
            last_grad_norm = grad_norm
            samples_since_log += window_samples
            fractional_epoch = epoch + batches_done / batches_per_epoch

            # -- logging: the only place the training loss is read ------------------------------
            if step % cfg.log_every == 0 or step == max_steps:
                read_losses()
                mean_loss = sum(log_window) / len(log_window) if log_window else math.nan
                if log_window:
                    smooth = smooth * cfg.smoothing + (1 - cfg.smoothing) * mean_loss
                    smooth_count += 1
                now = time.perf_counter()
                log({
                    "step": step,
                    "epoch": fractional_epoch,
                    "loss": mean_loss,
                    "smooth_loss": smooth / (1 - cfg.smoothing ** smooth_count) if smooth_count else math.nan,
                    "learning_rate": learning_rate,
                    "grad_norm": last_grad_norm.item(),
                    "samples_per_second": samples_since_log / (now - log_clock),
                    "skipped_steps": skipped_total,
                })
                log_window.clear()
                samples_since_log, log_clock = 0, now

            # -- periodic validation and checkpoints ------------------------------------------
            if step % cfg.eval_every == 0 or step == max_steps:
                paused = time.perf_counter()
                read_losses()  # never save a checkpoint after an unnoticed NaN
                metrics = evaluate(model, val_loader, loss_fn, device, cfg.precision)
                log({"step": step, "epoch": fractional_epoch, **metrics})
                if files:
                    save(metrics)
                log_clock += time.perf_counter() - paused  # samples_per_second is training only

            if hooks:
                paused = time.perf_counter()
                state = TrainState(step, max_steps, fractional_epoch, learning_rate,
                                   skipped_total, history, cfg, model)
                for hook in hooks:
                    hook(state)
                log_clock += time.perf_counter() - paused

            if step >= max_steps:
                break
    return history
