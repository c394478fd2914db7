"""Whole training runs as one function call, alone or as one rank of several (lesson 08).

`train_digits(cfg)` is what `examples/train_digits.py` runs: the standard recipe for a script that
runs unchanged in one process and under `torchrun --nproc_per_node=N`. A lesson runs the same
function in two local processes with `launch(train_digits, 2, cfg)`.
"""

from __future__ import annotations

import time

import torch

from course_lib.config import TrainConfig
from course_lib.data import load_digits_splits, make_loader
from course_lib.distributed import (
    get_rank,
    get_world_size,
    init_distributed,
    sharded_loader,
)
from course_lib.loop import fit
from course_lib.models import SmallCNN
from course_lib.seeding import seed_everything


def weights_checksum(model: torch.nn.Module) -> float:
    """The sum of every parameter and buffer: two runs that end with the same weights agree on it."""
    return float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point()))


def train_digits(cfg: TrainConfig, hooks=()) -> dict:
    """Train the small CNN (with BatchNorm and dropout) on the digits; return a summary.

    In a plain process this trains alone; started by torchrun (or `launch`) each process trains on
    its share of the training set, with `cfg.batch_size` examples per rank and step, so N processes
    take steps over N times the batch. The summary: the final eval_loss and eval_accuracy, the
    optimizer steps taken, the world size and rank, the seconds `fit` took (start-up left out), and
    `weights_checksum` of the final weights, which is the same on every rank.
    """
    init_distributed()  # reads torchrun's environment; does nothing in a plain process
    # The same seed on every rank: the same data split and the same shuffling seed, which the
    # sampler needs to deal out disjoint shares. (fit then gives each rank its own dropout stream,
    # and DDP copies rank 0's initial weights to the others.)
    seed_everything(cfg.seed)
    splits = load_digits_splits(seed=cfg.seed, images=True)
    model = SmallCNN(batch_norm=True, dropout=0.1)
    train_loader = sharded_loader(splits.train, cfg.batch_size, seed=cfg.seed)
    val_loader = make_loader(splits.val, cfg.eval_batch_size)  # whole, as in one process
    start = time.perf_counter()
    history = fit(model, train_loader, val_loader, cfg, hooks=hooks)
    elapsed = time.perf_counter() - start
    final = history.eval[-1]
    return {
        "eval_loss": final["eval_loss"],
        "eval_accuracy": final["eval_accuracy"],
        "steps": final["step"],
        "world_size": get_world_size(),
        "rank": get_rank(),
        "elapsed_s": elapsed,
        "weights_checksum": weights_checksum(model),
    }
