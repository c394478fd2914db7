"""The training loop of lesson 01, written to be read top to bottom.

`fit` is the hand-written loop of lesson 01 with the six parts every serious loop has: a config,
one seed, mixed precision, gradient clipping, a learning-rate schedule, and periodic validation with
checkpoints. One optimizer step is its own function, `train_step` (lesson 03 asks you to write it),
and everything the run carries from step to step sits in one dataclass, `RunState`, which is also
exactly what a checkpoint holds. The loop gets right the details that well-known libraries got wrong:

- each micro-batch's loss counts in proportion to its items, so an accumulation window (even the
  short last one of an epoch, or sequences with padding) gives the mean over the window's items;
- no schedule advances when the fp16 gradient scaler skipped the optimizer step;
- the logged gradient norm and the clipping use unscaled gradients;
- evaluation puts every submodule back into the train/eval mode it had before;
- a run resumed from its latest checkpoint ends bit-for-bit where an uninterrupted run ends.

Loss values stay on the device and are read only at logging steps: reading a tensor's value forces
the host to wait for the device, and doing that every step would stall a GPU.

The same script runs alone or as one of several processes under `torchrun --nproc_per_node=N`
(lesson 08; `course_lib.distributed`). In a single process nothing below happens. Inside a process
group of two or more ranks, `fit` also:

- trains a DistributedDataParallel copy of the model on the rank's own device, and evaluates,
  checkpoints and shows hooks the model itself (state_dict keys without "module.");
- refuses a training DataLoader without a DistributedSampler (every rank would see the same
  examples), and calls the sampler's `set_epoch` at the start of every epoch, resumed ones too;
- all-reduces gradients once per accumulation window (`no_sync` on the other micro-batches), and
  weighs every item of the window on every rank alike: the gradient and the logged loss are the
  mean over all of them, even when the ranks hold different numbers of items;
- evaluates each validation batch on one rank only and adds the sums and counts across the ranks
  before reading them, so the metrics are those of one process evaluating everything;
- averages BatchNorm running statistics across the ranks before each evaluation and each save;
- writes files on rank 0 only, and stops every rank with rank 0's error when writing fails there;
- calls hooks on every rank with the same history, and stops every rank when one hook says "stop";
- gives each rank its own random stream (dropout, augmentation), seeded once from
  `rank_seed(cfg.seed, rank)` at the start of a fresh run, and keeps every rank's random state in
  the checkpoint, so that a resumed run is bit-for-bit the uninterrupted one (with the same number
  of processes: resuming with another is refused).
"""

from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from course_lib.checkpoint import load_checkpoint, rank_checkpoints, save_checkpoint
from course_lib.config import TrainConfig
from course_lib.distributed import (
    all_gather_objects,
    all_reduce_sum,
    average_batchnorm_stats,
    barrier,
    batchnorm_stats,
    call_on_main,
    check_sharded,
    device_for_rank,
    get_rank,
    get_world_size,
    is_main_process,
    rank_seed,
    rank_share,
    set_sampler_epoch,
)
from course_lib.history import History
from course_lib.metrics import DebiasedEMA, confusion_counts, per_class_accuracy_from_confusion
from course_lib.schedules import PER_EVALUATION, build_scheduler
from course_lib.seeding import get_rng_state, seed_everything, set_rng_state

LOOP_OUTLINE = """\
fit(model, train_loader, val_loader, cfg)
  build: device, loss (cross-entropy), AdamW (no decay on biases/norms), schedule, gradient scaler
  several processes (torchrun): this rank's device, a DistributedDataParallel wrapper for training,
    a training loader that must shard the data, this rank's share of the validation batches
  state: one RunState holds step, epoch, position in the epoch, RNG, best checkpoints, history
  resume: when resume_from is given, state.load_state_dict(checkpoint) restores all of it
    (several processes, fresh run: each rank reseeds its own random stream instead)
  for each optimizer step until max_steps:
    at an epoch's start: sampler.set_epoch(epoch) when the sampler has it
    take a window of grad_accum_steps micro-batches (shorter at the end of an epoch)
    train_step(window):
      for each micro-batch: forward under autocast (bf16/fp16) -> loss and its number of items,
        backward through the loss weighted by its items (scaled by the fp16 gradient scaler);
        several processes: gradients are all-reduced on the last micro-batch only, items summed
      unscale gradients, rescale to the window's items -> measure the gradient norm -> clip it
      optimizer step (the fp16 scaler skips it when gradients overflowed) -> update the scale
      clear gradients; advance a per-step schedule, unless the scaler skipped the step
    every log_every steps: read the losses, stop on a non-finite one, log a training record
    every eval_every steps: average BatchNorm statistics across ranks, evaluate (restoring
      train/eval modes; sums added across ranks), log, step a plateau schedule,
      save state.state_dict() as latest.pt and keep the best checkpoints (rank 0 writes)
    call the hooks with a read-only state; a hook that returns "stop" ends the run cleanly
      (on every rank)
  when the loader runs out, the epoch is over: the next one starts from its first batch
  return the History"""

# What a hook returns to end the run after this step (any other value but None is an error).
STOP = "stop"


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


@dataclass(frozen=True)
class StepResult:
    """What `train_step` did. The tensors stay on the device; reading them waits for it."""

    loss: torch.Tensor  # the mean loss over the window's items (on every rank), detached
    grad_norm: torch.Tensor  # the unscaled gradient norm, before clipping
    learning_rate: float  # the LR this step used (the first parameter group's)
    samples: int  # examples in the window on this rank
    skipped: bool  # True when the fp16 scaler skipped the optimizer step


@dataclass
class RunState:
    """Everything a run carries from one optimizer step to the next: what a checkpoint holds.

    `state_dict()` is the checkpoint, plain data that `load_checkpoint` (weights_only) accepts, and
    `load_state_dict(checkpoint)` puts a run back where it was, objects included.

    With several processes, `state_dict()` is a collective call that every rank makes: the random
    states ("rng", "epoch_rng") become lists indexed by rank, "rank_batchnorm" keeps each rank's
    own BatchNorm statistics, and "model" holds them averaged across the ranks. `load_state_dict`
    gives each rank its own share back, and refuses a checkpoint written by another number of
    processes ("world_size"): the data each rank sees and the random streams depend on it.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    config: TrainConfig
    history: History = field(default_factory=History)
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # complete passes over the training loader
    batches_done: int = 0  # micro-batches of the current epoch already trained on
    epoch_rng: dict | None = None  # the RNG state that decided the current epoch's batch order
    consecutive_skips: int = 0  # fp16 steps the scaler skipped in a row
    skipped_steps: int = 0  # fp16 steps the scaler skipped in all
    best: list = field(default_factory=list)  # {"path", "step", "metric"} of the kept best
    unlogged_losses: list = field(default_factory=list)  # read from the device, not logged yet
    smoothing: DebiasedEMA | None = None  # the average behind the logged smooth_loss
    # Set by load_state_dict: the global RNG state to restore once the interrupted epoch's batch
    # order has been replayed (replaying may draw random numbers).
    resume_rng: dict | None = None

    def __post_init__(self):
        if self.smoothing is None:
            self.smoothing = DebiasedEMA(self.config.smoothing)

    def state_dict(self, metrics: dict | None = None) -> dict:
        rank_state = {"rng": get_rng_state(), "epoch_rng": self.epoch_rng}
        world = get_world_size()
        if world > 1:
            # Taken before averaging: a run that goes on from here goes on with its own statistics.
            rank_state["batchnorm"] = batchnorm_stats(self.model)
            ranks = all_gather_objects(rank_state)
            rank_state = {key: [entry[key] for entry in ranks] for key in rank_state}
            average_batchnorm_stats(self.model)  # the checkpoint holds every rank's statistics
        checkpoint = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history.records,
            "step": self.step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_rng": rank_state["epoch_rng"],
            "rng": rank_state["rng"],
            "world_size": world,
            "consecutive_skips": self.consecutive_skips,
            "skipped_steps": self.skipped_steps,
            "best": list(self.best),
            "unlogged_losses": list(self.unlogged_losses),
            "smoothing": self.smoothing.state(),
            "metrics": metrics,
        }
        if world > 1:
            checkpoint["rank_batchnorm"] = rank_state["batchnorm"]
        return checkpoint

    def load_state_dict(self, saved: dict) -> None:
        _check_resumable(saved["config"], self.config)
        world, saved_world = get_world_size(), saved.get("world_size", 1)
        if saved_world != world:
            raise ValueError(
                f"cannot resume: the checkpoint was written by {saved_world} process(es) and this "
                f"run has {world}; each rank's data and random stream depend on the number of "
                f"processes, so resume with {saved_world} (torchrun --nproc_per_node), or load "
                "only the weights with load_checkpoint")
        for name in ("model", "optimizer", "scheduler", "scaler"):
            getattr(self, name).load_state_dict(saved[name])
        self.history = History(saved["history"])
        for name in ("step", "epoch", "batches_done", "consecutive_skips",
                     "skipped_steps", "best", "unlogged_losses"):
            setattr(self, name, saved[name])
        self.smoothing = DebiasedEMA(self.config.smoothing, *saved["smoothing"])
        self.epoch_rng, self.resume_rng = saved["epoch_rng"], saved["rng"]
        if world > 1:  # this rank's share
            rank = get_rank()
            self.epoch_rng, self.resume_rng = self.epoch_rng[rank], self.resume_rng[rank]
            own = saved["rank_batchnorm"][rank]
            buffers = dict(self.model.named_buffers())
            for name, value in own.items():
                buffers[name].copy_(value)


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


def _ignored_target(loss_fn) -> int | None:
    """The target value a cross-entropy (or NLL) loss leaves out of its mean, or None."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return loss_fn.ignore_index
    if loss_fn in (nn.functional.cross_entropy, nn.functional.nll_loss):
        return -100  # their default ignore_index
    return None


def count_items(loss_fn, targets: torch.Tensor):
    """How many items a mean loss over `targets` averaged: what its weight in a larger mean is.

    For cross-entropy and NLL (the module or the function), the targets that are not their
    `ignore_index`, summed through the class weights when the module has them (its mean divides
    by that sum); for any other loss, `len(targets)`. A tensor count stays on the device.
    """
    ignored = _ignored_target(loss_fn)
    if ignored is None or targets.is_floating_point():  # class probabilities ignore nothing
        return len(targets)
    counted = targets != ignored
    weight = getattr(loss_fn, "weight", None)
    if weight is None:
        return counted.sum()
    return (weight[torch.where(counted, targets, 0)] * counted).sum()


def batch_loss(model: nn.Module, batch, loss_fn, device: torch.device, count: bool = True):
    """Forward one batch: (logits, the targets that count, the mean loss, the items it averaged).

    A batch is (inputs, targets), or (inputs, targets, mask) where `mask` has the targets' shape
    and is True for the items that count and False for padding; with a mask the logits must hold
    the classes in their last dimension. `loss_fn(logits, targets)` returns either the mean loss,
    whose items `count_items` counts (unless `count` is False: then the items are None), or a pair
    (mean loss, number of items it averaged).
    """
    inputs, targets, *mask = (tensor.to(device, non_blocking=True) for tensor in batch)
    logits = model(inputs)
    if mask:
        keep = mask[0].bool()
        logits, targets = logits[keep], targets[keep]
    result = loss_fn(logits, targets)
    if isinstance(result, tuple):
        return logits, targets, *result
    return logits, targets, result, count_items(loss_fn, targets) if count else None


def train_step(model: nn.Module, window, loss_fn, optimizer, *, scheduler=None, scaler=None,
               grad_clip: float = 0.0, device=None, precision: str = "fp32") -> StepResult:
    """One optimizer step over `window`, a list of micro-batches (lesson 03).

    The window's loss is the mean over all its items, whatever the micro-batches' sizes. The
    gradients are unscaled before they are measured and clipped (`grad_clip` > 0); the scaler
    (None or a disabled one for fp32 and bf16) may skip the step, and then `scheduler` (stepped per
    optimizer step) stays where it was.

    `model` may be a DistributedDataParallel (lesson 08): then the gradients are all-reduced once,
    during the last micro-batch's backward, and the loss and gradients are the mean over every item
    of the window on every rank, as if one process had trained on all the ranks' batches.
    """
    device = device or next(model.parameters()).device
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    # The model's order, not the optimizer's groups': the gradient norm sums in this order.
    parameters = [p for p in model.parameters() if p.requires_grad]
    ranks = _ddp_world_size(model)
    # One micro-batch on one rank is its own mean; anything larger must count items.
    weigh = len(window) > 1 or ranks > 1
    window_loss, window_items, samples, reference = 0.0, 0, 0, None
    for index, batch in enumerate(window):
        with _gradient_sync(model, last=index == len(window) - 1):
            with autocast_context(device, precision):
                _, _, loss, items = batch_loss(model, batch, loss_fn, device, count=weigh)
            # Each micro-batch counts in proportion to its items, but the window's total is known
            # only after its last forward (a loss may report its own count). So each loss is
            # weighted by its items relative to a reference (the first micro-batch's items), and
            # the gradients are rescaled by reference/total at the end: the same as weighting by
            # items/total, with the loss kept at the size of one micro-batch's, as fp16 loss
            # scaling needs. Across ranks the reference must be the same on every rank, since
            # DDP averages the ranks' gradients as they stand at the last backward.
            weighted = loss
            if weigh:
                if reference is None:
                    reference = _reference_items(items, ranks, device)
                weighted = loss * (items / reference)
                window_items = window_items + items
            scaler.scale(weighted).backward()
        window_loss = window_loss + weighted.detach().float()
        samples += len(batch[0])

    if ranks > 1:
        window_items, window_loss = _sum_across_ranks(window_items, window_loss, device)
    scaler.unscale_(optimizer)  # clip and measure true gradients, not scaled ones
    gradients = [p.grad for p in parameters if p.grad is not None]
    if weigh:
        rescale = reference / window_items
        window_loss = window_loss * rescale
        if ranks > 1:
            rescale = rescale * ranks  # DDP divided the sum of the ranks' gradients by `ranks`
        for gradient in gradients:
            gradient.mul_(rescale)
    if grad_clip > 0:
        grad_norm = nn.utils.clip_grad_norm_(parameters, grad_clip)  # the norm before clipping
    else:
        grad_norm = nn.utils.get_total_norm(gradients)
    learning_rate = optimizer.param_groups[0]["lr"]
    # Knowing about a skip means reading the scale back from the device: fp16 only.
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)  # skipped when the fp16 gradients hold inf or NaN
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    skipped = scale_before is not None and scaler.get_scale() < scale_before
    if scheduler is not None and not skipped:
        scheduler.step()  # a skipped step must not move the schedule on
    return StepResult(window_loss, grad_norm, learning_rate, samples, skipped)


def _ddp_world_size(model: nn.Module) -> int:
    """How many ranks a DistributedDataParallel model averages gradients over (1 for any other)."""
    if isinstance(model, DistributedDataParallel):
        return dist.get_world_size(model.process_group)
    return 1


def _gradient_sync(model: nn.Module, last: bool):
    """DDP all-reduces gradients during every backward unless told not to: an accumulation window
    needs it once, on its last micro-batch, when the gradients are complete."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return nullcontext()


def _reference_items(items, ranks: int, device):
    """The items a micro-batch's loss is weighted against: the first micro-batch's, averaged over
    the ranks when there are several (one all-reduce), so that every rank weighs alike."""
    if ranks == 1:
        return items if isinstance(items, int) else items.clamp(min=1)
    first = all_reduce_sum(torch.as_tensor(items, dtype=torch.float32, device=device).clone())
    return (first / ranks).clamp(min=1)  # any common positive value works: it cancels out


def _sum_across_ranks(window_items, window_loss, device):
    """The window's items and weighted loss summed over the ranks, in one all-reduce."""
    totals = torch.stack([torch.as_tensor(window_items, dtype=torch.float32, device=device),
                          window_loss.float()])
    all_reduce_sum(totals)
    return totals[0], totals[1]


def evaluate(model: nn.Module, loader, loss_fn=None, device=None, precision: str = "fp32") -> dict:
    """Dataset-level loss, accuracy and per-class accuracy over `loader` (lesson 05).

    Batches are (inputs, targets) or (inputs, targets, mask), as `batch_loss` describes. Each
    batch's mean loss is weighted by the items it averaged (`count_items`: targets equal to a
    cross-entropy's ignore_index and masked padding do not count), so the result is the mean over
    every item that counts, whatever the batch sizes. Accuracy counts the same items. Everything
    is summed on the device and read back once, at the end. Every submodule gets back the
    train/eval mode it had, including a frozen BatchNorm kept in eval mode inside a training model.
    """
    start = time.perf_counter()
    sums = _evaluation_sums(model, loader, loss_fn, device, precision)
    return _evaluation_metrics(*sums, start)


def _evaluate_across_ranks(model: nn.Module, share, loss_fn, device, precision: str) -> dict:
    """`evaluate` with several processes: each rank evaluates its share of the batches
    (`rank_share`), and the sums and counts are added across the ranks before anything is read.
    The result is what one process evaluating every batch finds, not an average of the ranks'
    averages, which would weigh a rank with fewer items as much as one with more."""
    start = time.perf_counter()
    total_loss, total_items, counts, batches = _evaluation_sums(model, share, loss_fn, device,
                                                                precision)
    # A rank that got no batches has no counts, and cannot know their length (classes^2 + 1).
    length = torch.tensor(0 if counts is None else len(counts), device=device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    packed = torch.zeros(3 + int(length), dtype=torch.float64, device=device)
    packed[0], packed[1], packed[2] = total_loss, total_items, batches
    if counts is not None:
        packed[3:] = counts
    all_reduce_sum(packed)
    counts = packed[3:].round().long() if len(packed) > 3 else None
    return _evaluation_metrics(packed[0], packed[1], counts, int(packed[2]), start)


def _evaluation_sums(model: nn.Module, loader, loss_fn, device, precision: str):
    """The summed loss, items, confusion counts (None without batches) and batches, on the device."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = device or next(model.parameters()).device
    ignored = _ignored_target(loss_fn)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    total_loss = torch.zeros((), device=device)
    total_items = torch.zeros((), device=device)
    counts = None
    batches = 0
    try:
        with torch.inference_mode(), autocast_context(device, precision):
            for batch in loader:
                logits, targets, loss, items = batch_loss(model, batch, loss_fn, device)
                total_loss += loss.float() * items
                total_items += items
                keep = None if ignored is None else targets != ignored
                batch_counts = confusion_counts(logits.argmax(dim=-1), targets, logits.shape[-1], keep)
                counts = batch_counts if counts is None else counts + batch_counts
                batches += 1
    finally:
        for module, was_training in modes:
            module.training = was_training  # set each module's own flag; no recursion
    return total_loss, total_items, counts, batches


def _evaluation_metrics(total_loss, total_items, counts, batches: int, start: float) -> dict:
    if counts is None:
        raise ValueError("the evaluation loader yielded no batches")
    counts = counts.cpu()  # the evaluation waits for the device here, once
    num_classes = math.isqrt(len(counts) - 1)
    if counts[-1] > 0:
        raise ValueError(f"the evaluation targets hold {int(counts[-1])} item(s) with a class "
                         f"outside 0..{num_classes - 1}")
    confusion = counts[:-1].reshape(num_classes, num_classes)
    examples = int(confusion.sum())
    runtime = time.perf_counter() - start
    return {
        "eval_loss": (total_loss / total_items).item(),
        "eval_accuracy": confusion.diag().sum().item() / examples,
        "eval_per_class_accuracy": per_class_accuracy_from_confusion(confusion),
        "eval_runtime": runtime,
        "eval_samples_per_second": examples / runtime,
        "eval_steps_per_second": batches / runtime,
    }


def _loader_rng_state(loader) -> dict:
    """What decides an epoch's batch order: the loader's generator, or else the global torch RNG."""
    state = {"torch": torch.get_rng_state()}
    loader_generator = getattr(loader, "generator", None)
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    sampler_generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if sampler_generator is not None and sampler_generator is not loader_generator:
        state["sampler"] = sampler_generator.get_state()
    return state


def _restore_loader_rng_state(loader, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "loader" in state:
        loader.generator.set_state(state["loader"])
    if "sampler" in state:
        loader.sampler.generator.set_state(state["sampler"])


def _epoch_batches(loader, state: RunState):
    """The batches of the current epoch that are left, in the order the epoch began with."""
    if state.epoch_rng is None:  # a new epoch: the RNG right now decides its order
        if state.resume_rng is not None:
            set_rng_state(state.resume_rng)
            state.resume_rng = None
        state.epoch_rng = _loader_rng_state(loader)
    else:  # resuming mid-epoch: replay its order, then skip what was already trained on
        _restore_loader_rng_state(loader, state.epoch_rng)
    set_sampler_epoch(loader, state.epoch)  # a DistributedSampler shuffles with seed + epoch
    batches = iter(loader)
    for _ in islice(batches, state.batches_done):
        pass
    if state.resume_rng is not None:
        set_rng_state(state.resume_rng)  # dropout and friends continue where they stopped
        state.resume_rng = None
    return batches


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


def _batches_per_epoch(loader, cfg: TrainConfig) -> int:
    try:
        batches = len(loader)
    except TypeError:  # an iterable without a length: only max_steps can say when to stop
        if not cfg.max_steps:
            raise ValueError("the training loader has no len(); set TrainConfig.max_steps") from None
        return 0
    if batches == 0 and not cfg.max_steps:
        raise ValueError("the training loader has no batches (len() is 0)")
    return batches


def _read_losses(unread: list, state: RunState, fp16: bool) -> None:
    """Bring the unread (step, loss) pairs to the host (one synchronisation) and check them."""
    if not unread:
        return
    values = torch.stack([loss for _, loss in unread]).tolist()
    for (step, _), value in zip(unread, values):
        if math.isfinite(value):
            state.unlogged_losses.append(value)
        elif not fp16:  # with fp16 the scaler skips such steps; see _count_skip
            raise NonFiniteLossError(f"the training loss was {value} at step {step}; lower the "
                                     "learning rate, clip gradients, or look for bad inputs")
    unread.clear()


def _count_skip(state: RunState, skipped: bool) -> None:
    if not skipped:
        state.consecutive_skips = 0
        return
    state.consecutive_skips += 1
    state.skipped_steps += 1
    if state.consecutive_skips > state.config.max_consecutive_skips:
        raise NonFiniteLossError(
            f"the fp16 gradient scaler skipped {state.consecutive_skips} steps in a row up to step "
            f"{state.step}: the gradients keep overflowing; try bf16 or a lower LR")


def _training_record(state: RunState, epoch: float, result: StepResult, samples_per_second: float):
    losses = state.unlogged_losses
    mean_loss = sum(losses) / len(losses) if losses else math.nan
    losses.clear()
    return {
        "step": state.step,
        "epoch": epoch,
        "loss": mean_loss,
        "smooth_loss": state.smoothing.update(mean_loss),
        "learning_rate": result.learning_rate,
        "grad_norm": result.grad_norm.item(),
        "samples_per_second": samples_per_second,
        "skipped_steps": state.skipped_steps,
    }


def _log(state: RunState, files: _RunFiles | None, record: dict) -> None:
    state.history.append(record)
    if files:
        files.append(record)


def _call_hooks(hooks, view: TrainState, device) -> bool:
    """Call every hook; True when one of them returned STOP, on any rank.

    With several processes every rank must stop at the same step, or the others would wait forever
    for it in their next all-reduce: so the ranks share, in one all-reduce, whether a hook asked to
    stop and whether a hook raised. A rank whose hook raised raises its error; the others raise
    one that points to it.
    """
    if get_world_size() == 1:
        return _call_each_hook(hooks, view)
    error = None
    try:
        stop = _call_each_hook(hooks, view)
    except Exception as raised:
        stop, error = True, raised
    flags = all_reduce_sum(torch.tensor([float(stop), float(error is not None)], device=device))
    if error is not None:
        raise error
    if flags[1] > 0:
        raise RuntimeError(f"a hook raised an error on another rank at step {view.step}; that "
                           "rank raises it")
    return bool(flags[0] > 0)


def _call_each_hook(hooks, view: TrainState) -> bool:
    stop = False
    for hook in hooks:
        request = hook(view)
        if request not in (None, STOP):
            raise TypeError(f"the hook {hook!r} returned {request!r}; a hook returns None, or "
                            f"{STOP!r} to end the run")
        stop = stop or request == STOP
    return stop


class _RunFiles:
    """The output folder: history.jsonl, config.toml, checkpoints/latest.pt and the best N.

    Every rank keeps one, and calls it at the same points (a checkpoint is a collective call), but
    only rank 0 writes; an error there reaches every rank (`call_on_main`).
    """

    def __init__(self, out_dir):
        self.root = Path(out_dir)
        self.checkpoints = self.root / "checkpoints"
        self.latest = self.checkpoints / "latest.pt"
        self.history = self.root / "history.jsonl"
        self.writes = is_main_process()

    def start(self, state: RunState, resuming: bool) -> None:
        call_on_main(self._prepare, state, resuming)
        if not resuming:
            # The starting point: a run killed before its first evaluation resumes too.
            call_on_main(save_checkpoint, self.latest, state.state_dict())

    def _prepare(self, state: RunState, resuming: bool) -> None:
        if self.latest.exists() and not resuming:
            raise FileExistsError(
                f"{self.root} already holds a run; pass resume_from={str(self.root)!r} to continue "
                "it, or choose another out_dir"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        (self.root / "config.toml").write_text(state.config.to_toml())
        # On resume, records written after the checkpoint are replayed, so rewrite from it.
        state.history.to_jsonl(self.history)

    def append(self, record: dict) -> None:
        if self.writes:
            with open(self.history, "a") as file:
                file.write(History.record_to_line(record) + "\n")

    def save(self, state: RunState, metrics: dict | None = None) -> None:
        """latest.pt, and with metrics a step_NNNNNN.pt while it ranks among the keep_best best."""
        cfg = state.config
        checkpoint = state.state_dict(metrics)  # on every rank: it gathers each rank's RNG state
        if metrics is not None and cfg.keep_best > 0:
            path = self.checkpoints / f"step_{state.step:06d}.pt"
            call_on_main(save_checkpoint, path, checkpoint)
            entry = {"path": path.name, "step": state.step, "metric": float(metrics[cfg.metric])}
            state.best, dropped = rank_checkpoints(state.best + [entry], cfg.keep_best,
                                                   cfg.metric_direction)
            checkpoint["best"] = list(state.best)
            if self.writes:
                for old in dropped:
                    (self.checkpoints / old["path"]).unlink(missing_ok=True)
        call_on_main(save_checkpoint, self.latest, checkpoint)


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """A resumed run must be the same run: only where it runs may change."""
    may_differ = {"out_dir", "device"}
    current = cfg.to_dict()
    # A field added since the checkpoint was written had its default value then.
    saved = {**TrainConfig().to_dict(), **saved}
    differ = [k for k in current if k not in may_differ and saved.get(k) != current[k]]
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differ)
        raise ValueError(f"cannot resume: the config differs from the checkpoint's ({details})")


def _latest_checkpoint(resume_from) -> dict:
    latest = Path(resume_from) / "checkpoints" / "latest.pt"
    if not latest.exists():
        raise FileNotFoundError(f"nothing to resume: {latest} does not exist")
    return load_checkpoint(latest, map_location="cpu")  # RNG states must stay on the CPU


def _convert_batchnorm(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """With cfg.sync_batchnorm, BatchNorm layers that compute their statistics over every rank's
    batch. PyTorch's SyncBatchNorm runs on GPUs only, so on the CPU (gloo) it is refused."""
    if not cfg.sync_batchnorm:
        return model
    if device.type not in ("cuda", "xpu", "hpu"):
        raise ValueError(
            f"TrainConfig.sync_batchnorm = True: PyTorch's SyncBatchNorm runs on GPUs only, and "
            f"this rank trains on {device}; set it to False (the running statistics are then "
            "averaged across the ranks before each evaluation and save)")
    # The new layers keep the old ones' parameters, so an optimizer built already still fits.
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _wrap_for_ranks(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """The DDP wrapper that all-reduces gradients; it copies rank 0's weights to every rank now.

    By default DDP would also overwrite every rank's BatchNorm statistics with rank 0's before each
    forward, throwing the other ranks' data away; they are averaged instead (`_evaluate_run`,
    `RunState.state_dict`). PyTorch 2.13 renamed the option that turns this off.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        no_buffer_sync = {"forward_sync_buffers": False}
    else:
        no_buffer_sync = {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)


def _evaluate_run(model: nn.Module, val_share, loss_fn, device, precision: str) -> dict:
    """The periodic evaluation: in one process `evaluate`; with several, first every rank takes
    the BatchNorm statistics averaged over all of them, then each evaluates its share."""
    if get_world_size() == 1:
        return evaluate(model, val_share, loss_fn, device, precision)
    average_batchnorm_stats(model)
    return _evaluate_across_ranks(model, val_share, loss_fn, device, precision)


# ---- the loop -----------------------------------------------------------------------------------


def fit(model: nn.Module, train_loader, val_loader, cfg: TrainConfig, *, loss_fn=None,
        optimizer=None, hooks=(), resume_from=None) -> History:
    """Train `model` as `cfg` says and return its History.

    Batches are (inputs, targets) pairs, or (inputs, targets, mask) triples (see `batch_loss`).
    `loss_fn(logits, targets)` returns the mean over a batch, or a pair (mean, number of items).
    Hooks are plain functions called after every optimizer step with a read-only `TrainState`; a
    hook that returns "stop" ends the run after that step (a checkpoint is saved when out_dir is
    set), and an exception in a hook stops the run and propagates. `resume_from` is the out_dir of
    an earlier run of the same config, continued from its latest checkpoint.

    Inside a process group of several ranks (torchrun, or `course_lib.distributed.launch`), pass
    a training loader that shards the data (`sharded_loader`) and the whole validation loader, as
    in one process; the module docstring lists what changes. `cfg.batch_size` is then each rank's
    batch, and every rank must take as many batches per epoch as the others (a DistributedSampler
    pads the last round to make sure of it). The model is trained through a
    DistributedDataParallel wrapper; `model` itself ends with the trained weights on every rank,
    and it is what hooks, evaluation and checkpoints see.
    """
    # -- set-up ----------------------------------------------------------------------------------
    world = get_world_size()
    device = resolve_device(cfg.device) if world == 1 else device_for_rank(cfg.device)
    if world > 1:
        check_sharded(train_loader)
        model = _convert_batchnorm(model, cfg, device)
    model.to(device)
    # What trains: with several ranks, a DDP wrapper, which copies rank 0's weights to all now
    # (before a checkpoint is loaded, which then gives each rank its own BatchNorm statistics).
    trained = _wrap_for_ranks(model, device) if world > 1 else model
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = optimizer if optimizer is not None else build_optimizer(model, cfg)
    batches_per_epoch = _batches_per_epoch(train_loader, cfg)
    max_steps = cfg.max_steps or cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.warmup_steps, max_steps,
                                cfg.min_lr_ratio, decay_every=cfg.decay_every,
                                decay_factor=cfg.decay_factor, patience=cfg.patience,
                                direction=cfg.metric_direction)
    per_step_scheduler = None if cfg.schedule in PER_EVALUATION else scheduler
    fp16 = cfg.precision == "fp16"
    # bf16 keeps float32's range, so only fp16 needs loss scaling; disabled, the scaler's
    # methods do nothing and one code path serves every precision.
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    state = RunState(model, optimizer, scheduler, scaler, cfg)
    if resume_from is not None:
        state.load_state_dict(_latest_checkpoint(resume_from))
    elif world > 1:
        # One seed on every rank would give every rank the same dropout masks and augmentations;
        # the weights need no common seed, since DDP copies rank 0's to the others.
        seed_everything(rank_seed(cfg.seed, get_rank()))
    files = _RunFiles(cfg.out_dir) if cfg.out_dir else None
    if files:
        files.start(state, resuming=resume_from is not None)
    val_share = rank_share(val_loader)  # with several ranks, this rank's validation batches

    unread = []  # (step, loss) pairs still on the device, read at the next logging step
    samples_since_log, log_clock = 0, time.perf_counter()
    if not model.training:
        # Only switch a model that is wholly in eval mode: a model already training may keep a
        # submodule (a frozen BatchNorm, say) in eval mode on purpose.
        model.train()
    while state.step < max_steps:
        # -- one epoch, or the rest of one when resuming -------------------------------------------
        for window in _windows(_epoch_batches(train_loader, state), cfg.grad_accum_steps):
            result = train_step(trained, window, loss_fn, optimizer, scheduler=per_step_scheduler,
                                scaler=scaler, grad_clip=cfg.grad_clip, device=device,
                                precision=cfg.precision)
            state.step += 1
            state.batches_done += len(window)
            _count_skip(state, result.skipped)
            unread.append((state.step, result.loss))
            samples_since_log += result.samples * world  # every rank trains on as many
            epoch = state.epoch + (state.batches_done / batches_per_epoch if batches_per_epoch else 0)
            last = state.step == max_steps

            # -- logging: the only place the training loss is read ---------------------------------
            if state.step % cfg.log_every == 0 or last:
                _read_losses(unread, state, fp16)
                now = time.perf_counter()
                _log(state, files, _training_record(state, epoch, result,
                                                    samples_since_log / (now - log_clock)))
                samples_since_log, log_clock = 0, now

            # -- periodic validation and checkpoints; then the hooks -------------------------------
            paused = time.perf_counter()  # samples_per_second counts training time only
            if state.step % cfg.eval_every == 0 or last:
                _read_losses(unread, state, fp16)  # never save a checkpoint after an unseen NaN
                metrics = _evaluate_run(model, val_share, loss_fn, device, cfg.precision)
                if cfg.metric not in metrics:
                    raise KeyError(f"cfg.metric {cfg.metric!r} is not among {sorted(metrics)}")
                _log(state, files, {"step": state.step, "epoch": epoch, **metrics})
                if per_step_scheduler is None:
                    scheduler.step(metrics[cfg.metric])  # a plateau schedule: once per evaluation
                if files:
                    files.save(state, metrics)
            stop = hooks and _call_hooks(hooks, TrainState(
                state.step, max_steps, epoch, result.learning_rate, state.skipped_steps,
                state.history, cfg, model), device)
            log_clock += time.perf_counter() - paused
            if stop:
                _read_losses(unread, state, fp16)
                if files:
                    files.save(state)
                barrier()  # every rank returns once rank 0's files are complete
                return state.history
            if last:
                break
        else:
            # The loader ran out: the epoch is over, whatever its len() said.
            if state.batches_done == 0:
                raise ValueError("the training loader yielded no batches in a whole epoch")
            state.epoch, state.batches_done, state.epoch_rng = state.epoch + 1, 0, None
    barrier()
    return state.history
