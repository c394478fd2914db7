"""What goes wrong when several processes train one model, shown with real processes (lesson 08).

Each function here runs inside every rank of a process group that `course_lib.distributed.launch`
started (two processes on one machine, joined by gloo), and returns a dict of what that rank
measured; the lesson compares the ranks' dicts. They are module functions, not notebook cells,
because `launch` spawns fresh interpreters that import the function by name.

- `collectives_demo`: rank, world size, all-reduce, all-gather and a barrier;
- `data_and_seeds_demo`: the order in which each rank reads the data, epoch by epoch, for four
  ways of loading it; which seeds must be equal or different on every rank; SyncBatchNorm tried
  on the CPU (`sync_batchnorm_attempt`);
- `train_ddp`: one hand-written DistributedDataParallel loop on the digits whose `DDPPitfalls`
  switches plant, one by one, the bugs of the lesson: every rank writing the checkpoint, one data
  seed on every rank, `set_epoch` forgotten, BatchNorm statistics saved from rank 0 only, and the
  accuracy averaged across ranks of unequal size (`validation_shard` gives each rank its own,
  unequal, validation files).

`ddp_keeping_own_statistics(model)` wraps a model in DDP without its copying of rank 0's
BatchNorm statistics to the other ranks; exercise 08 gives it to the learner.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from course_lib.checkpoint import load_checkpoint, save_checkpoint
from course_lib.data import ReadLog, load_digits_splits
from course_lib.distributed import (
    all_reduce_sum,
    average_batchnorm_stats,
    barrier,
    get_rank,
    get_world_size,
    is_main_process,
)
from course_lib.models import SmallCNN


def ddp_keeping_own_statistics(model: nn.Module) -> DistributedDataParallel:
    """`model` under DistributedDataParallel, each rank keeping its own BatchNorm statistics.

    By default DDP copies rank 0's buffers over every other rank's at each forward pass, so the
    running statistics are rank 0's alone and the other ranks' batches never count in them. With
    that turned off, each rank's statistics follow its own batches, and averaging them before
    saving counts every rank's data (what timm's `distribute_bn` does). The switch is called
    `forward_sync_buffers` from PyTorch 2.13 and `broadcast_buffers` before.
    """
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(model, forward_sync_buffers=False)
    return DistributedDataParallel(model, broadcast_buffers=False)


def collectives_demo(late_s: float = 0.5) -> dict:
    """The four words of distributed training, measured on this rank.

    Every rank contributes rank + 1: an all-reduce gives every rank the sum, an all-gather every
    rank's value. Then the last rank sleeps `late_s` before the barrier, and every rank records
    how long it waited there: the others wait for the latecomer.
    """
    rank, world_size = get_rank(), get_world_size()
    mine = torch.tensor([float(rank + 1)])
    summed = all_reduce_sum(mine.clone())
    gathered = [torch.zeros(1) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    if rank == world_size - 1:
        time.sleep(late_s)
    start = time.perf_counter()
    barrier()
    return {"rank": rank, "world_size": world_size, "mine": mine.item(), "sum": summed.item(),
            "gathered": [value.item() for value in gathered],
            "waited_at_barrier_s": time.perf_counter() - start}


# ---- the order of the data ----------------------------------------------------------------------


def _epoch_orders(loader_or_sampler, epochs: int, set_epoch: bool) -> list[list[int]]:
    orders = []
    for epoch in range(epochs):
        if set_epoch:
            loader_or_sampler.set_epoch(epoch)
        orders.append([int(index) for index in loader_or_sampler])
    return orders


def data_orders(size: int, epochs: int = 3, seed: int = 0) -> dict[str, list[list[int]]]:
    """The indices this rank reads in each epoch of a dataset of `size` examples, four ways:

    - "one seed everywhere": every rank shuffles the whole dataset with a generator seeded `seed`;
    - "sampler, seed + rank": a DistributedSampler seeded differently on each rank;
    - "sampler, no set_epoch": a DistributedSampler, and `set_epoch` never called;
    - "sampler + set_epoch": the same sampler, with `set_epoch(epoch)` before each epoch.
    """
    indices = list(range(size))
    shared = torch.utils.data.RandomSampler(indices, generator=torch.Generator().manual_seed(seed))
    sampler = DistributedSampler(indices, num_replicas=get_world_size(), rank=get_rank(),
                                 shuffle=True, seed=seed)
    per_rank = DistributedSampler(indices, num_replicas=get_world_size(), rank=get_rank(),
                                  shuffle=True, seed=seed + get_rank())
    return {
        "one seed everywhere": _epoch_orders(shared, epochs, set_epoch=False),
        "sampler, seed + rank": _epoch_orders(per_rank, epochs, set_epoch=True),
        "sampler, no set_epoch": _epoch_orders(sampler, epochs, set_epoch=False),
        "sampler + set_epoch": _epoch_orders(sampler, epochs, set_epoch=True),
    }


def data_and_seeds_demo(small_size: int = 10, full_size: int = 1257, epochs: int = 3,
                        seed: int = 0) -> dict:
    """What each rank reads (a small dataset to look at, the digits' size to count), and seeds.

    Seeds: a model built after `torch.manual_seed(seed)` starts identical on every rank, one
    built after `manual_seed(seed + rank)` does not until DistributedDataParallel broadcasts rank
    0's weights; augmentation noise drawn with one seed everywhere is the same on every rank.
    """
    rank = get_rank()

    def first_weights(model_seed):
        torch.manual_seed(model_seed)
        return SmallCNN(batch_norm=True)

    same = first_weights(seed)
    per_rank = first_weights(seed + rank)
    before = per_rank.features[0].weight.detach().clone()
    wrapped = DistributedDataParallel(per_rank)  # broadcasts rank 0's parameters and buffers
    noise = {
        "one seed everywhere": torch.randn(4, generator=torch.Generator().manual_seed(seed)),
        "seed + rank": torch.randn(4, generator=torch.Generator().manual_seed(seed + rank)),
    }
    return {
        "rank": rank,
        "small": data_orders(small_size, epochs, seed),
        "full": data_orders(full_size, epochs, seed),
        "weights same seed": same.features[0].weight.detach().clone(),
        "weights seed + rank": before,
        "weights seed + rank, after DDP": wrapped.module.features[0].weight.detach().clone(),
        "noise": noise,
        "sync batchnorm": sync_batchnorm_attempt(),
    }


# ---- a hand-written DDP loop with switchable pitfalls -------------------------------------------


@dataclass(frozen=True)
class DDPPitfalls:
    """Which bugs `train_ddp` plants (True: the bug is there)."""

    # Every rank calls save_checkpoint on the same path, instead of rank 0 alone and a barrier.
    every_rank_saves: bool = False
    # Every rank shuffles the whole training set with the same seed, instead of a
    # DistributedSampler that deals each rank its own share.
    one_data_seed: bool = False
    # The DistributedSampler is never told the epoch, so every epoch repeats the first's order.
    no_set_epoch: bool = False
    # The checkpoint gets rank 0's BatchNorm running statistics instead of the ranks' average.
    unsynced_batchnorm: bool = False
    # The reported accuracy is the mean of the ranks' accuracies instead of all correct
    # predictions over all examples.
    mean_of_rank_accuracies: bool = False


EVERY_PITFALL = DDPPitfalls(True, True, True, True, True)
NO_PITFALL = DDPPitfalls()


def validation_shard(val: Dataset, rank: int, world_size: int) -> Subset:
    """This rank's own validation files: `val` cut by class, as data stored in one file per class
    and spread over the hosts. With two ranks, rank 0 holds the digits 0-5 and rank 1 the digits
    6-9, so the two shards differ in size (and in how hard they are)."""
    labels = torch.as_tensor([int(label) for _, label in val])
    cut = [0, 6, 10] if world_size == 2 else \
        torch.linspace(0, 10, world_size + 1).round().long().tolist()
    mine = (labels >= cut[rank]) & (labels < cut[rank + 1])
    return Subset(val, torch.nonzero(mine).flatten().tolist())


def _batchnorm_means(model: nn.Module) -> list[torch.Tensor]:
    return [module.running_mean.detach().clone() for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def train_ddp(run_dir, pitfalls: DDPPitfalls = NO_PITFALL, splits=None, *, epochs: int = 3,
              batch_size: int = 32, lr: float = 0.05, seed: int = 0) -> dict:
    """Train a SmallCNN with BatchNorm on the digits under DistributedDataParallel, the way
    `pitfalls` says, and return everything this rank saw: the indices it read per epoch, the
    loss per epoch, whether it wrote the checkpoint, its BatchNorm running means before and after
    the (optional) averaging, those in the checkpoint, and its validation counts and accuracies.
    `splits` are the digits as images (`load_digits_splits(images=True)`); pass them from the
    parent process, so that the ranks need not load them again.
    """
    if splits is None:
        splits = load_digits_splits(seed=0, images=True)
    rank, world_size = get_rank(), get_world_size()
    run_dir = Path(run_dir)
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = SmallCNN(batch_norm=True)
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=lr, momentum=0.9)

    train_set = ReadLog(splits.train)
    if pitfalls.one_data_seed:
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
    else:
        sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, seed=seed)
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)

    epoch_reads, epoch_losses = [], []
    for epoch in range(epochs):
        if not pitfalls.one_data_seed and not pitfalls.no_set_epoch:
            loader.sampler.set_epoch(epoch)
        start, losses = len(train_set.reads), []
        ddp_model.train()
        for inputs, targets in loader:
            loss = F.cross_entropy(ddp_model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over the ranks here
            optimizer.step()
            losses.append(loss.item())
        epoch_reads.append(train_set.reads[start:])
        epoch_losses.append(sum(losses) / len(losses))

    own_means = _batchnorm_means(model)
    if not pitfalls.unsynced_batchnorm:
        average_batchnorm_stats(model)

    # Validation: each rank evaluates its own shard; the shards differ in size.
    shard = validation_shard(splits.val, rank, world_size)
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in DataLoader(shard, batch_size=256):
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
    counts = all_reduce_sum(torch.tensor([float(correct), float(len(shard))]))
    rank_accuracy = correct / len(shard)
    mean_of_accuracies = all_reduce_sum(torch.tensor([rank_accuracy])).item() / world_size
    pooled_accuracy = (counts[0] / counts[1]).item()

    path = run_dir / "model.pt"
    state = {"model": model.state_dict(),
             "val_accuracy": mean_of_accuracies if pitfalls.mean_of_rank_accuracies
             else pooled_accuracy}
    wrote = pitfalls.every_rank_saves or is_main_process()
    if wrote:
        save_checkpoint(path, state)
    barrier()  # nobody reads the file (or returns) before it is written
    saved_means = [value for name, value in load_checkpoint(path)["model"].items()
                   if name.endswith("running_mean")]
    return {
        "rank": rank, "pitfalls": asdict(pitfalls), "epoch_reads": epoch_reads,
        "epoch_losses": epoch_losses, "wrote_checkpoint": wrote,
        "own_bn_means": own_means, "bn_means_after": _batchnorm_means(model),
        "saved_bn_means": saved_means,
        "val_correct": correct, "val_count": len(shard), "rank_accuracy": rank_accuracy,
        "mean_of_rank_accuracies": mean_of_accuracies, "pooled_accuracy": pooled_accuracy,
        "reported_accuracy": state["val_accuracy"],
        "first_weight": model.features[0].weight.detach().clone(),
    }


def sync_batchnorm_attempt() -> str:
    """Try SyncBatchNorm (statistics over every rank's batch) under DDP on the CPU; return what
    happened, in one line."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(SmallCNN(batch_norm=True))
    try:
        DistributedDataParallel(model)(torch.zeros(4, 1, 8, 8)).sum().backward()
    except (ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "ran"
