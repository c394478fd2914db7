"""Answers to exercise 08 for tests/test_checks_ex08.py: the planted function, the reference, other
correct answers and the wrong-answer corpus.

The checks read each function's source and run it in two processes after their fixed imports
(`course_lib.checks.ex08.PREAMBLE`), as they do with a learner's notebook cell; so these functions
use only the preamble's names, and this module imports the same names only to be importable.
Each wrong answer is the reference with one realistic mistake, unless its docstring says more.
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


def planted(model, train_set, val_shard, checkpoint_path, *, epochs, batch_size, seed):
    """The exercise's function as handed out, with its five bugs."""
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        ddp_model.train()
        for inputs, targets in loader:
            loss = F.cross_entropy(ddp_model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in DataLoader(val_shard, batch_size=256):
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
    accuracy = torch.tensor(correct / len(val_shard))
    dist.all_reduce(accuracy)
    accuracy /= get_world_size()
    save_checkpoint(checkpoint_path, {"model": model.state_dict()})
    return accuracy.item()


def reference(model, train_set, val_shard, checkpoint_path, *, epochs, batch_size, seed):
    world_size = get_world_size()
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=get_rank(), seed=seed)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        for inputs, targets in loader:
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
    correct = 0
    with torch.no_grad():
        for inputs, targets in DataLoader(val_shard, batch_size=256):
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
    totals = all_reduce_sum(torch.tensor([float(correct), float(len(val_shard))]))
    if is_main_process():
        save_checkpoint(checkpoint_path, {"model": model.state_dict()})
    barrier()
    return (totals[0] / totals[1]).item()


def strided_shards(model, train_set, val_shard, checkpoint_path, *, epochs, batch_size, seed):
    """Correct too: hand-made shards (every world_size-th example), a new shuffle per epoch,
    torch.save and dist.barrier directly, and evaluation batch by batch through the wrapper."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    ddp_model = ddp_keeping_own_statistics(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    mine = Subset(train_set, list(range(rank, len(train_set), world_size)))
    for epoch in range(epochs):
        order = torch.Generator().manual_seed(seed * 1000 + epoch)
        ddp_model.train()
        for inputs, targets in DataLoader(mine, batch_size=batch_size, shuffle=True,
                                          generator=order):
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
    correct = torch.zeros(1)
    count = torch.zeros(1)
    with torch.no_grad():
        for inputs, targets in DataLoader(val_shard, batch_size=50):
            correct += (ddp_model(inputs).argmax(dim=1) == targets).sum()
            count += len(targets)
    dist.all_reduce(correct)
    dist.all_reduce(count)
    if rank == 0:
        torch.save({"model": model.state_dict()}, checkpoint_path)
    dist.barrier()
    return float(correct / count)


# ---- the wrong-answer corpus: the reference with one mistake each -------------------------------
#
# Each entry: name -> the (old, new) replacements that turn the reference's source into it. The
# old text must be in the source (a mistake that silently changes nothing would test nothing).

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
VAL_LOADER = "DataLoader(val_shard, batch_size=256)"
RESULT = """    totals = all_reduce_sum(torch.tensor([float(correct), float(len(val_shard))]))
"""
RETURN = "    return (totals[0] / totals[1]).item()\n"

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
    # (b) the shards
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
    # (c) the order per epoch
    "no_set_epoch": [(SET_EPOCH, "")],
    "set_epoch_constant": [(SET_EPOCH, "        sampler.set_epoch(seed)\n")],
    "set_epoch_after_the_epoch": [(SET_EPOCH, ""), ("            optimizer.step()\n",
                                                     "            optimizer.step()\n"
                                                     "        sampler.set_epoch(epoch)\n")],
    "sampler_without_shuffle": [("rank=get_rank(), seed=seed)", "rank=get_rank(), shuffle=False)")],
    "loader_rebuilt_each_epoch": [(SAMPLER, ""), (LOADER, ""), (SET_EPOCH, """        sampler = DistributedSampler(train_set, seed=seed)
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler)
""")],
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
    # (e) the validation accuracy
    "mean_of_rank_accuracies": [(RESULT, """    accuracy = torch.tensor(correct / len(val_shard))
    dist.all_reduce(accuracy)
    accuracy /= world_size
"""), (RETURN, "    return accuracy.item()\n")],
    "this_ranks_accuracy": [(RETURN, "    return correct / len(val_shard)\n")],
    "divided_by_world_times_own_count": [(RETURN, "    return (totals[0] / (world_size * len(val_shard))).item()\n")],
    "validation_with_drop_last": [(VAL_LOADER, "DataLoader(val_shard, batch_size=64, drop_last=True)")],
    "validation_in_train_mode": [("    model.eval()\n", "")],
    "delegates_to_evaluate": [(RESULT, """    from course_lib import evaluate

    accuracy = evaluate(model, DataLoader(val_shard, batch_size=256))["eval_accuracy"]
"""), (RETURN, "    return accuracy\n")],
    "rank_zero_broadcasts_its_accuracy": [(RETURN, """    accuracy = torch.tensor([correct / len(val_shard)])
    dist.broadcast(accuracy, src=0)
    return accuracy.item()
""")],
    # tolerances: close to the right figure, but not it
    "accuracy_rounded_to_4_places": [(RETURN, "    return round((totals[0] / totals[1]).item(), 4)\n")],
    "accuracy_rounded_to_3_places": [(RETURN, "    return round((totals[0] / totals[1]).item(), 3)\n")],
    "accuracy_in_float16": [(RETURN, "    return (totals[0].half() / totals[1].half()).item()\n")],
    # types: the right number in the wrong container
    "returns_a_tensor": [(RETURN, "    return totals[0] / totals[1]\n")],
    "returns_a_one_element_tensor": [(RETURN, "    return totals[:1] / totals[1:]\n")],
    "returns_a_numpy_value": [(RETURN, "    return (totals[0] / totals[1]).numpy()\n")],
    # dtypes of the checkpoint
    "saves_in_half_precision": [('{"model": model.state_dict()}',
                                 '{"model": {k: v.half() for k, v in model.state_dict().items()}}')],
    "saves_in_bfloat16": [('{"model": model.state_dict()}',
                           '{"model": {k: v.bfloat16() for k, v in model.state_dict().items()}}')],
    "saves_in_double": [('{"model": model.state_dict()}',
                         '{"model": {k: v.double() for k, v in model.state_dict().items()}}')],
}


def mutated_source(name: str) -> str:
    """The source of the wrong answer `name`: the reference's, changed as MUTATIONS says."""
    import inspect

    source = inspect.getsource(reference).replace("def reference(", f"def {name}(", 1)
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
