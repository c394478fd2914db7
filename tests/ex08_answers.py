"""Answers to exercise 08 for tests/test_checks_ex08.py: the planted function, the reference, other
correct answers and the wrong-answer corpus.

The checks read each function's source and run it in two processes after their fixed imports
(`course_lib.checks.ex08.PREAMBLE`), as they do with a learner's notebook cell; so these functions
use only the preamble's names, and this module imports the same names only to be importable.
Each wrong answer is the reference (or, where BASES says so, another correct answer) with one
realistic mistake, unless its docstring says more.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from course_lib.checkpoint import save_checkpoint
from course_lib.distributed import (
    all_reduce_sum,
    barrier,
    get_rank,
    get_world_size,
    is_main_process,
)
from course_lib.multihost import ddp_keeping_own_statistics

__all__ = ["DataLoader", "DistributedSampler", "F", "Subset", "all_reduce_sum", "barrier", "dist",
           "ddp_keeping_own_statistics", "get_rank", "get_world_size", "is_main_process", "nn",
           "save_checkpoint", "torch"]


def planted(model, train_set, val_set, checkpoint_path, *, epochs, batch_size, seed):
    """The exercise's function as handed out, with its five bugs."""
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        ddp_model.train()
        for inputs, targets in loader:
            inputs = inputs + 0.1 * torch.randn_like(inputs)  # augmentation: Gaussian noise
            loss = F.cross_entropy(ddp_model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    val_loader = DataLoader(val_set, batch_size=64, sampler=DistributedSampler(val_set, shuffle=False))
    total = torch.zeros(2)  # the sum of the losses, and the number of examples
    with torch.no_grad():
        for inputs, targets in val_loader:
            total[0] += F.cross_entropy(model(inputs), targets, reduction="sum")
            total[1] += len(targets)
    dist.all_reduce(total)
    save_checkpoint(checkpoint_path, {"model": model.state_dict()})
    return (total[0] / total[1]).item()


def reference(model, train_set, val_set, checkpoint_path, *, epochs, batch_size, seed):
    world_size = get_world_size()
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=get_rank(), seed=seed)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
    noise = torch.Generator().manual_seed(seed + get_rank())
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        for inputs, targets in loader:
            inputs = inputs + 0.1 * torch.randn(inputs.shape, generator=noise)
            loss = F.cross_entropy(ddp_model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer /= world_size
    model.eval()
    shard = Subset(val_set, range(get_rank(), len(val_set), world_size))
    total = torch.zeros(2)
    with torch.no_grad():
        for inputs, targets in DataLoader(shard, batch_size=64):
            total[0] += F.cross_entropy(model(inputs), targets, reduction="sum")
            total[1] += len(targets)
    totals = all_reduce_sum(total)
    if is_main_process():
        save_checkpoint(checkpoint_path, {"model": model.state_dict()})
    barrier()
    return (totals[0] / totals[1]).item()


def strided_shards(model, train_set, val_set, checkpoint_path, *, epochs, batch_size, seed):
    """Correct too: hand-made training shards (every world_size-th example) with a new shuffle
    per epoch; the global generator re-seeded per rank for the noise (the model already exists);
    statistics averaged with all_gather; the validation set sharded by a DistributedSampler whose
    repeated positions are masked out; evaluation through the wrapper; torch.save and dist.barrier
    directly."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1000 * seed + rank)
    mine = Subset(train_set, list(range(rank, len(train_set), world_size)))
    for epoch in range(epochs):
        order = torch.Generator().manual_seed(seed * 1000 + epoch)
        ddp_model.train()
        for inputs, targets in DataLoader(mine, batch_size=batch_size, shuffle=True,
                                          generator=order):
            inputs = inputs + torch.randn_like(inputs) * 0.1
            loss = F.cross_entropy(ddp_model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "running_" in name:
                gathered = [torch.zeros_like(buffer) for _ in range(world_size)]
                dist.all_gather(gathered, buffer)
                buffer.copy_(torch.stack(gathered).mean(dim=0))
    ddp_model.eval()
    sampler = DistributedSampler(val_set, shuffle=False)
    position = rank  # the sampler deals position rank + world_size * k of its list to this rank
    loss_sum = torch.zeros(1, dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        for inputs, targets in DataLoader(val_set, batch_size=50, sampler=sampler):
            positions = position + world_size * torch.arange(len(targets))
            keep = positions < len(val_set)  # beyond the end: repeated to even out the shares
            losses = F.cross_entropy(ddp_model(inputs), targets, reduction="none")
            loss_sum += losses[keep].sum()
            count += keep.sum()
            position += world_size * len(targets)
    dist.all_reduce(loss_sum)
    dist.all_reduce(count)
    if rank == 0:
        torch.save({"model": model.state_dict()}, checkpoint_path)
    dist.barrier()
    return float(loss_sum / count)


# ---- the wrong-answer corpus: a correct answer with one mistake each ----------------------------
#
# Each entry: name -> the (old, new) replacements that turn the reference's source (or the source
# of BASES[name]) into it. The old text must be in the source (a mistake that silently changes
# nothing would test nothing).

SAVE = """    if is_main_process():
        save_checkpoint(checkpoint_path, {"model": model.state_dict()})
    barrier()
"""
AVERAGE = """            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer /= world_size
"""
SAMPLER = "    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=get_rank(), seed=seed)\n"
LOADER = "    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)\n"
SET_EPOCH = "        sampler.set_epoch(epoch)\n"
NOISE_STREAM = "    noise = torch.Generator().manual_seed(seed + get_rank())\n"
NOISE = "            inputs = inputs + 0.1 * torch.randn(inputs.shape, generator=noise)\n"
GLOBAL_NOISE = "            inputs = inputs + 0.1 * torch.randn_like(inputs)\n"
VAL_SHARD = "    shard = Subset(val_set, range(get_rank(), len(val_set), world_size))\n"
VAL_LOADER = "DataLoader(shard, batch_size=64)"
VAL_SAMPLER = "DataLoader(val_set, batch_size=64, sampler=DistributedSampler(val_set, shuffle=False))"
VAL_LOSS = '            total[0] += F.cross_entropy(model(inputs), targets, reduction="sum")\n'
VAL_COUNT = "            total[1] += len(targets)\n"
RESULT = "    totals = all_reduce_sum(total)\n"
RETURN = "    return (totals[0] / totals[1]).item()\n"

BASES = {"val_sampler_mask_off_by_one": "strided_shards"}

MUTATIONS = {
    # (a) the checkpoint
    "every_rank_saves": [(SAVE, """    save_checkpoint(checkpoint_path, {"model": model.state_dict()})
    barrier()
""")],
    "rank0_saves_without_barrier": [(SAVE, """    if is_main_process():
        save_checkpoint(checkpoint_path, {"model": model.state_dict()})
""")],
    "barrier_before_saving": [(SAVE, """    barrier()
    if is_main_process():
        save_checkpoint(checkpoint_path, {"model": model.state_dict()})
""")],
    "last_rank_saves": [("    if is_main_process():\n",
                         "    if get_rank() == world_size - 1:\n")],
    "each_rank_its_own_file": [(SAVE, """    save_checkpoint(f"{checkpoint_path}.rank{get_rank()}", {"model": model.state_dict()})
    barrier()
""")],
    "saves_the_ddp_wrapper": [('{"model": model.state_dict()}', '{"model": ddp_model.state_dict()}')],
    "rank_numbering_from_one": [("    if is_main_process():\n",
                                 "    if get_rank() == world_size:\n")],
    "saves_in_half_precision": [('{"model": model.state_dict()}',
                                 '{"model": {k: v.half() for k, v in model.state_dict().items()}}')],
    "saves_in_bfloat16": [('{"model": model.state_dict()}',
                           '{"model": {k: v.bfloat16() for k, v in model.state_dict().items()}}')],
    "saves_in_double": [('{"model": model.state_dict()}',
                         '{"model": {k: v.double() for k, v in model.state_dict().items()}}')],
    # (b) the shards, and their order epoch by epoch
    "one_data_seed_everywhere": [(SAMPLER, ""), (SET_EPOCH, ""), (
        LOADER, "    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,\n"
        "                        generator=torch.Generator().manual_seed(seed))\n")],
    "a_seed_per_rank_no_sampler": [(SAMPLER, ""), (SET_EPOCH, ""), (
        LOADER, "    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,\n"
        "                        generator=torch.Generator().manual_seed(seed + get_rank()))\n")],
    "sampler_seeded_per_rank": [("rank=get_rank(), seed=seed)", "rank=get_rank(), seed=seed + get_rank())")],
    "sampler_for_one_replica": [("num_replicas=world_size, rank=get_rank()", "num_replicas=1, rank=0")],
    "the_same_half_everywhere": [(SAMPLER, ""), (SET_EPOCH, ""), (
        LOADER, "    half = Subset(train_set, list(range(len(train_set) // world_size)))\n"
        "    loader = DataLoader(half, batch_size=batch_size, shuffle=True)\n")],
    "delegates_to_sharded_loader": [(SAMPLER + LOADER, """    from course_lib.distributed import sharded_loader

    loader = sharded_loader(train_set, batch_size, seed=seed)
    sampler = loader.sampler
""")],
    "no_set_epoch": [(SET_EPOCH, "")],
    "set_epoch_constant": [(SET_EPOCH, "        sampler.set_epoch(seed)\n")],
    "set_epoch_after_the_epoch": [(SET_EPOCH, ""), ("            optimizer.step()\n",
                                                     "            optimizer.step()\n"
                                                     "        sampler.set_epoch(epoch)\n")],
    "sampler_without_shuffle": [("rank=get_rank(), seed=seed)", "rank=get_rank(), shuffle=False)")],
    "loader_rebuilt_each_epoch": [(SAMPLER, ""), (LOADER, ""), (SET_EPOCH, """        sampler = DistributedSampler(train_set, seed=seed)
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
""")],
    # (c) the augmentation noise
    "noise_from_the_global_generator": [(NOISE_STREAM, ""), (NOISE, GLOBAL_NOISE)],
    "global_generator_reseeded_alike": [(NOISE_STREAM, "    torch.manual_seed(seed)\n"),
                                        (NOISE, GLOBAL_NOISE)],
    "noise_stream_seeded_alike": [("manual_seed(seed + get_rank())", "manual_seed(seed)")],
    "noise_stream_restarted_every_epoch": [(NOISE_STREAM, ""), (SET_EPOCH, SET_EPOCH + NOISE_STREAM.replace("    ", "        ", 1))],
    "noise_stream_restarted_every_batch": [(NOISE_STREAM, ""), (NOISE, NOISE_STREAM.replace("    ", "            ", 1) + NOISE)],
    "noise_drawn_once": [(NOISE_STREAM, NOISE_STREAM + "    fixed = 0.1 * torch.randn((1, 1, 8, 8), generator=noise)\n"),
                         (NOISE, "            inputs = inputs + fixed\n")],
    "noise_on_rank_zero_only": [(NOISE, "            if is_main_process():\n    " + NOISE)],
    "uniform_noise": [("torch.randn(inputs.shape", "torch.rand(inputs.shape")],
    "noise_not_scaled": [("inputs + 0.1 * torch.randn(", "inputs + torch.randn(")],
    "noise_at_evaluation_too": [(VAL_LOSS, "            inputs = inputs + 0.1 * torch.randn(inputs.shape, generator=noise)\n" + VAL_LOSS)],
    # (d) BatchNorm statistics
    "batchnorm_not_averaged": [(AVERAGE, "            pass\n")],
    "batchnorm_summed_not_divided": [("                buffer /= world_size\n", "")],
    "batchnorm_divided_not_summed": [("                dist.all_reduce(buffer)\n", "")],
    "batchnorm_mean_only": [("(module.running_mean, module.running_var)", "(module.running_mean,)")],
    "batchnorm_averaged_after_saving": [(AVERAGE, "            pass\n"), (SAVE, SAVE + """    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer /= world_size
""")],
    "delegates_to_average_batchnorm_stats": [(AVERAGE, "            pass\n"), (SAVE, """    from course_lib.distributed import average_batchnorm_stats

    average_batchnorm_stats(model)
""" + SAVE)],
    # (e) the validation loss
    "val_sampler_counts_the_repeat": [(VAL_SHARD, ""), (VAL_LOADER, VAL_SAMPLER)],
    "val_sampler_mean_of_rank_means": [(VAL_SHARD, ""), (VAL_LOADER, VAL_SAMPLER), (RESULT, """    mean = total[:1] / total[1]
    dist.all_reduce(mean)
    mean /= world_size
"""), (RETURN, "    return mean.item()\n")],
    "val_sampler_drop_last": [(VAL_SHARD, ""), (VAL_LOADER, "DataLoader(val_set, batch_size=64, "
                              "sampler=DistributedSampler(val_set, drop_last=True))")],
    "val_loader_drop_last": [(VAL_LOADER, "DataLoader(shard, batch_size=64, drop_last=True)")],
    "val_cut_in_halves": [(VAL_SHARD, "    half = len(val_set) // world_size\n"
                           "    shard = Subset(val_set, range(get_rank() * half, (get_rank() + 1) * half))\n")],
    "whole_val_set_on_every_rank": [(VAL_SHARD, ""), (VAL_LOADER, "DataLoader(val_set, batch_size=64)")],
    "mean_of_batch_means": [(VAL_LOSS, '            total[0] += F.cross_entropy(model(inputs), targets)\n'),
                            (VAL_COUNT, "            total[1] += 1\n")],
    "batch_mean_times_batch_size": [(VAL_LOSS, '            total[0] += F.cross_entropy(model(inputs), targets) * batch_size\n')],
    "this_ranks_own_loss": [(RESULT, "    totals = total\n")],
    "validation_in_train_mode": [("    model.eval()\n", "")],
    "delegates_to_evaluate": [(RESULT, """    from course_lib import evaluate

    loss = evaluate(model, DataLoader(shard, batch_size=64))["eval_loss"]
"""), (RETURN, "    return loss\n")],
    "returns_a_tensor": [(RETURN, "    return totals[0] / totals[1]\n")],
    "returns_a_numpy_value": [(RETURN, "    return (totals[0] / totals[1]).numpy()\n")],
    "val_sampler_mask_off_by_one": [("keep = positions < len(val_set)", "keep = positions <= len(val_set)")],
}


def base_source(name: str) -> str:
    """The source of the correct answer that the wrong answer `name` changes."""
    import inspect

    return inspect.getsource(globals()[BASES.get(name, "reference")])


def mutated_source(name: str) -> str:
    """The source of the wrong answer `name`: its base's, changed as MUTATIONS says."""
    source = base_source(name)
    source = source.replace(f"def {BASES.get(name, 'reference')}(", f"def {name}(", 1)
    for old, new in MUTATIONS[name]:
        if old not in source:
            raise ValueError(f"{name}: {old!r} is not in the source")
        source = source.replace(old, new, 1)
    return source


def write_wrong_answers(folder) -> dict:
    """Write every wrong answer into a module in `folder`, import it, return {name: function}.
    (A file, because the checks read a function's source from where it was defined.)"""
    import importlib.util
    from pathlib import Path

    path = Path(folder) / "ex08_wrong_answers.py"
    header = "from ex08_answers import *  # noqa: F403 - the preamble's names\n\n\n"
    path.write_text(header + "\n\n".join(mutated_source(name) for name in MUTATIONS), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("ex08_wrong_answers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: getattr(module, name) for name in MUTATIONS}
