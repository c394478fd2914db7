"""Checks for exercise 08, a distributed training function to repair (introduced in exercise 08).

The learner repairs `train_distributed(model, train_set, val_set, checkpoint_path, *, epochs,
batch_size, seed)`, which runs in every rank of a process group. The checks run it in two real
processes (`course_lib.distributed.launch`, gloo) and watch it there, one property per check:

- (a) `check_checkpoint`: only rank 0 writes the checkpoint, at `checkpoint_path`, as the plain
  model's state dict; no rank returns before the file is there (a barrier);
- (b) `check_sharding`: in every epoch the ranks read disjoint shares that cover the training set,
  and no rank reads its share in the same order in two consecutive epochs;
- (c) `check_augmentation`: every training example gets Gaussian noise of standard deviation
  NOISE_STD, a fresh draw each time (no two examples, epochs or ranks share a draw), and the
  validation examples none;
- (d) `check_batchnorm_synced`: the checkpoint's BatchNorm running statistics are the mean of the
  ranks' own;
- (e) `check_validation_loss`: the ranks share the validation set out between them, and every rank
  returns the mean cross-entropy over the whole set, each example counted once.

How the learner's function reaches the processes: a spawned process cannot import a notebook
cell, so the check reads the function's source (`inspect.getsource`; IPython keeps every cell's
source) and writes it into a temporary module after a fixed preamble of imports, `PREAMBLE`. The
processes import that module. The function may therefore use only the preamble's names, its
arguments and what it imports itself, never another cell's variables; the check says so, naming
the variable, before it starts anything.

What the checks watch, inside each process (patching there is the check's own business): every
call of `torch.save` (the rank, the file, and a pause on rank 0 before it writes, so that a rank
that does not wait is caught returning before the file exists); the training and validation sets,
wrappers that write down the indices each rank reads; the inputs of every forward pass of the model
(in training mode, from which the check subtracts the clean examples read, to recover the noise;
in eval mode, which must be the clean validation examples); each BatchNorm layer's running
statistics after the rank's last training-mode forward pass (a forward hook); the logits of every
eval-mode forward pass, from which the check recomputes the loss; and calls of the library's own
answers (`fit`, `evaluate`, `sharded_loader`, `average_batchnorm_stats`).

The check's data: each rank's training set is the same TRAIN_SIZE digits, its pixels shifted by
RANK_SHIFT times the rank, so that the ranks' BatchNorm statistics differ even when a wrong
answer has every rank read the same examples. The validation set, the same VAL_SIZE examples on
every rank, is odd-sized, so that a DistributedSampler repeats one example to even out the shares;
half of its examples carry a wrong label, so that the per-example losses are spread widely (a
repeated example moves the mean measurably).

Tolerances, next to their contracts below: the checkpoint's tensors keep the model's dtypes and
shapes exactly; the BatchNorm statistics within STATS_TOLERANCE of the ranks' mean; the noise's
mean and standard deviation within NOISE_MEAN_TOLERANCE and NOISE_STD_TOLERANCE; two noise draws
count as one when they agree within SAME_DRAW_TOLERANCE; the returned loss, a Python float, within
LOSS_RTOLERANCE (relative) of the check's own float64 mean over the logits the rank computed.

Time: no fixed limit decides that a run hangs. Every forward pass of the model beats
`course_lib.distributed.heartbeat`, and `launch` stops the processes once no rank has beaten for
STALL_S seconds or for STALL_RATIO times the start-up it measured in the same call, whichever is
longer: on a loaded machine the start-up and a healthy run slow down together. LAUNCH_TIMEOUT_S is
a safety net only.
"""

from __future__ import annotations

import builtins
import dis
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import os
import shutil
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from course_lib.checks._core import (
    CheckFailure,
    NotImplementedYet,
    make_hint,
    passed,
    require,
)

# The imports every learner function gets: its module starts with these lines, which are those of
# the exercise's first code cell (but for the checks' own import; a test keeps the two in step).
PREAMBLE = """\
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from course_lib.checkpoint import save_checkpoint
from course_lib.distributed import all_reduce_sum, barrier, get_rank, get_world_size, is_main_process
from course_lib.models import SmallCNN
from course_lib.multihost import ddp_keeping_own_statistics
"""
WORLD_SIZE = 2
EPOCHS = 3
BATCH_SIZE = 64
# An odd size: DistributedSampler pads it with one example so that both ranks take equal steps.
TRAIN_SIZE = 301
# Added to rank r's pixels times r: the ranks' BatchNorm statistics differ whatever they read.
RANK_SHIFT = 0.1
# The validation set every rank is given: 269 of the 270 validation digits, an odd number, so
# that a DistributedSampler pads the two shares to 135 each by repeating one example. Half carry a
# wrong label: the per-example losses then range from near 0 to several nats, so that counting one
# example twice moves the mean measurably (LOSS_RTOLERANCE below).
VAL_SIZE = 269
# The mean loss is compared with the check's own float64 mean over the logits each rank computed.
# Computed in float32 (each loss a few units in the last place, 1e-7 of itself; a pairwise sum of
# 135 of them, a sum over the batches and over two ranks, a division) it is off by at most about
# 1e-6 of itself (the correct answers measured within 1.4e-7 over 16 seeds); counting one example
# twice moved the mean by 1.1e-4 to 1.4e-3 of itself over 16 seeds.
LOSS_RTOLERANCE = 2e-6
# The augmentation the contract asks for: Gaussian noise of this standard deviation added to every
# training input. Each rank draws about 29,000 noise values over the three epochs (151 examples of
# 64 pixels, three times): the standard error of their standard deviation is about 4e-4 and of
# their mean about 6e-4, so the tolerances are some ten standard errors; uniform noise (mean 0.05)
# or unscaled noise (standard deviation 1) is far outside. Measured over 16 seeds and two ranks,
# the reference's noise had a standard deviation of 0.0992 to 0.1004, a mean of -0.0014 to 0.0007.
NOISE_STD = 0.1
NOISE_STD_TOLERANCE = 0.005
NOISE_MEAN_TOLERANCE = 0.005
# Two examples' noise (64 values each) counts as the same draw when no value differs by more than
# this: recovering the noise as (noisy input - clean input) in float32 leaves a rounding error of
# about 1e-7, while two independent draws differ somewhere by about 0.3.
SAME_DRAW_TOLERANCE = 1e-5
# BatchNorm statistics are compared with float32 arithmetic's slack (a sum of two float32 values
# and a division, in whatever order: a few units in the last place, about 1e-7 relative). The
# ranks' own statistics differed by at least 3e-3 in every buffer over 16 seeds: one rank's copy
# never passes for the mean.
STATS_TOLERANCE = 1e-6
# Rank 0 pauses this long before it writes: a rank that does not wait returns before the file
# exists. Enough for a rank that only has to return from a function.
SAVE_PAUSE_S = 0.5
# Default seeds: each one is a whole run of the learner's function, inside one launch.
SEEDS = (0,)
# A run in which no rank runs a forward pass (each one beats course_lib.distributed.heartbeat) or
# returns for this long is waiting in a collective call that some rank never makes. A healthy run
# beats every few hundred milliseconds on a quiet machine (its longest quiet moment is rank 0's
# SAVE_PAUSE_S before the write), so the margin is some 60 times that pause; and on a quiet
# machine the verdict comes that long after the run stopped, inside a grader's 60 s cell limit.
STALL_S = 30.0
# ... or this many times the launch's start-up (spawning the processes, importing torch, joining
# the group), measured in the same call, when that is longer: on a machine loaded ten times over,
# start-up took 40 to 60 s and a healthy run's quiet moments grew in step. With the start-up
# itself as the limit, the reference was once stopped at a load average of 22, hence twice it.
STALL_RATIO = 2.0
# The whole launch's limit, a safety net only: a run that keeps beating is slow, not stuck.
LAUNCH_TIMEOUT_S = 600.0

hint = make_hint({
    "a": "Which ranks reach the line that writes, as it stands? And when the other ranks go on "
    "(to return, to read the file), what guarantees that rank 0 has finished writing? Think also "
    "about which object's state dict a plain SmallCNN can load.",
    "b": "Print, on each rank, the first indices it reads in two epochs (a DataLoader over "
    "range(10) will do): the ranks must deal one permutation out between them, and the "
    "permutation must change with the epoch.",
    "c": "The check seeded the global generator alike on every rank before it built your model, "
    "so that the ranks start with the same weights. What does that make of noise drawn from the "
    "global generator? And a stream that starts again from its seed, when does it repeat itself?",
    "d": "Each rank's running statistics follow its own batches; the checkpoint must hold their "
    "mean. Which collective gives every rank the sum of a tensor over the ranks, and what is "
    "left to do to turn a sum into a mean?",
    "e": "List what a DistributedSampler gives each rank on a set of 5 examples: how many "
    "indices in all, and which one appears twice? Your sums must count every example once; "
    "either skip what was repeated, or share the set out in a way that repeats nothing.",
})


# ---- the learner's function as a module the processes can import --------------------------------


class _Module:
    """The learner's function written into a temporary module: its folder, name and function."""

    def __init__(self, fn, name: str):
        if not callable(fn):
            raise CheckFailure(f"{name} should be a function", got=type(fn).__name__,
                               hint="pass the function itself, without calling it")
        self.function_name = getattr(fn, "__name__", name)
        try:
            source = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError):
            raise CheckFailure(f"the check could not read the source of {name}",
                               hint="define it with `def` in a notebook cell (or a module) and run "
                               "that cell again; a lambda or a function made by exec has no "
                               "source to read") from None
        self.source = source
        self.digest = hashlib.sha1(source.encode()).hexdigest()[:12]
        self.module_name = f"ex08_learner_{self.digest}"
        self.folder = tempfile.mkdtemp(prefix="ex08_")
        self.path = Path(self.folder) / f"{self.module_name}.py"
        self.path.write_text(PREAMBLE + "\n" + source, encoding="utf-8")
        self._compile_here(name)

    def _compile_here(self, name: str) -> None:
        """Run the module once in this process, to report a broken one before any launch."""
        spec = importlib.util.spec_from_file_location(self.module_name, self.path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)  # not put in sys.modules: a trial run only
        except Exception as error:  # noqa: BLE001 - any error becomes one readable line
            raise CheckFailure(f"{name} could not be defined on its own: "
                               f"{type(error).__name__}: {error}",
                               hint="the check runs the function's cell alone after the fixed "
                               "imports listed in the exercise") from None
        namespace = vars(module)
        function = namespace.get(self.function_name)
        if not callable(function):
            raise CheckFailure(f"the source of {name} does not define {self.function_name}",
                               hint="keep the function in a cell of its own, defined with def")
        missing = sorted(_free_globals(function.__code__) - set(namespace) - set(dir(builtins)))
        if missing:
            raise CheckFailure(
                f"{name} uses {', '.join(f'`{m}`' for m in missing)}, which the processes will "
                "not have", hint="the processes see only your function and the exercise's fixed "
                "imports, never the notebook's other variables: pass values as arguments, import "
                "what you need inside the function, or write the number itself")
        self.is_stub = _is_stub(function)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_globals(code) -> set[str]:
    names = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(instruction.argval)
    for constant in code.co_consts:
        if inspect.iscode(constant):
            names |= _free_globals(constant)
    return names


def _is_stub(function) -> bool:
    """True when the body only raises NotImplementedError (after an optional docstring)."""
    import ast

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    raised = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"


# ---- what each process does: run the learner's function under watch ------------------------------


class _WatchedSet(Dataset):
    """Examples lent by index, each read written down; `shift` is added to the inputs."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, shift: float = 0.0):
        self.inputs, self.labels, self.shift = inputs, labels, shift
        self.reads: list[int] = []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        index = int(index)
        self.reads.append(index)
        return self.inputs[index] + self.shift, self.labels[index]


def _digits() -> tuple[torch.Tensor, ...]:
    """The digits' training and validation tensors, loaded once in the check's own process and
    handed to the ranks (which then need not import scikit-learn)."""
    from course_lib.data import load_digits_splits

    splits = load_digits_splits(seed=0, images=True)
    return (*splits.train.tensors, *splits.val.tensors)


def _check_data(seed: int, rank: int, digits):
    """This rank's training set and the validation set (the same on every rank) for one seed."""
    x, y, vx, vy = digits
    generator = torch.Generator().manual_seed(10_000 + seed)
    chosen = torch.randperm(len(y), generator=generator)[:TRAIN_SIZE]
    train = _WatchedSet(x[chosen], y[chosen], shift=RANK_SHIFT * rank)
    mine = torch.randperm(len(vy), generator=generator)[:VAL_SIZE]
    labels = vy[mine].clone()
    wrong = torch.randperm(len(labels), generator=generator)[:len(labels) // 2]
    labels[wrong] = (labels[wrong] + 1 + torch.randint(9, (len(wrong),), generator=generator)) % 10
    return train, _WatchedSet(vx[mine], labels)


def _noise(seen: list[torch.Tensor], dataset: _WatchedSet):
    """What the model's inputs carried on top of the examples read, one row per example (float64),
    or None when the forward passes did not take the examples read, once each, in order."""
    if not seen or not dataset.reads:
        return None
    try:
        inputs = torch.cat(seen).double()
    except RuntimeError:  # batches of different shapes
        return None
    clean = (dataset.inputs[torch.tensor(dataset.reads)] + dataset.shift).reshape(
        len(dataset.reads), -1).double()
    if inputs.shape != clean.shape:
        return None
    return (inputs - clean).float()


def _batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


_LIBRARY_ANSWERS = (
    ("course_lib.loop", "fit"), ("course_lib.loop", "evaluate"), ("course_lib", "fit"),
    ("course_lib", "evaluate"), ("course_lib.distributed", "sharded_loader"),
    ("course_lib", "sharded_loader"),
    ("course_lib.distributed", "average_batchnorm_stats"),
)


def _watch_library(calls: list[str]) -> None:
    """Replace the library's own answers, in this throw-away process, by recording wrappers."""
    for module_name, attribute in _LIBRARY_ANSWERS:
        module = importlib.import_module(module_name)
        original = getattr(module, attribute)

        def recording(*args, _original=original, _name=f"{original.__module__}.{attribute}",
                      **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(module, attribute, recording)


def _observe(modules, seeds, run_dir: str, pause_s: float, digits) -> list[list[dict]]:
    """Run inside every rank: each learner function of `modules` ((folder, module name, function
    name) triples) once per seed, under watch. Returns, per function and per seed, this rank's
    record of what it saw."""
    from course_lib.distributed import get_rank

    rank = get_rank()
    calls: list[str] = []
    _watch_library(calls)
    writes: list[str] = []
    original_save = torch.save

    def watched_save(obj, f, *args, **kwargs):
        target = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
        if target is not None:  # a file, not the in-memory buffer pickling a tensor uses
            writes.append(str(target))
            if rank == 0:
                time.sleep(pause_s)
        return original_save(obj, f, *args, **kwargs)

    torch.save = watched_save
    results = []
    try:
        for number, (folder, module_name, function_name) in enumerate(modules):
            sys.path.insert(0, folder)
            function = getattr(importlib.import_module(module_name), function_name)
            results.append([_observe_one(function, module_name, seed, rank, digits, calls, writes,
                                         Path(run_dir) / f"function{number}" / f"seed{seed}")
                            for seed in seeds])
    finally:
        torch.save = original_save  # sending the results back pickles tensors with torch.save
    return results


def _observe_one(function, module_name: str, seed: int, rank: int, digits, calls, writes,
                 folder: Path) -> dict:
    """One run of the learner's function in this rank, and what the check saw of it."""
    from course_lib.checkpoint import load_checkpoint
    from course_lib.distributed import barrier, heartbeat
    from course_lib.models import SmallCNN

    writes.clear()
    calls.clear()
    torch.manual_seed(seed)
    model = SmallCNN(batch_norm=True)
    own_stats: dict[str, torch.Tensor] = {}
    trained = [0]
    train_inputs: list[torch.Tensor] = []
    eval_inputs: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []

    def after_batchnorm(module, args, output, name):
        if module.training and module.track_running_stats:
            own_stats[f"{name}.running_mean"] = module.running_mean.detach().clone()
            own_stats[f"{name}.running_var"] = module.running_var.detach().clone()

    def after_model(module, args, output):
        heartbeat()
        inputs = args[0].detach().reshape(len(args[0]), -1).clone() if args else torch.zeros(0)
        if module.training:
            trained[0] += 1
            train_inputs.append(inputs)
        else:
            eval_inputs.append(inputs)
            logits.append(output.detach().clone())

    handles = [layer.register_forward_hook(
        lambda m, a, o, name=name: after_batchnorm(m, a, o, name))
        for name, layer in _batchnorm_layers(model).items()]
    handles.append(model.register_forward_hook(after_model))
    train, val = _check_data(seed, rank, digits)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    heartbeat(every_s=0.0)
    try:
        returned = function(model, train, val, str(path), epochs=EPOCHS, batch_size=BATCH_SIZE,
                            seed=seed)
    except NotImplementedError:
        raise RuntimeError("EX08-STUB") from None
    except Exception as error:  # noqa: BLE001 - reported to the learner in one line
        frames = [frame for frame in traceback.extract_tb(error.__traceback__)
                  if frame.filename.endswith(f"{module_name}.py")]
        where = f" (line {frames[-1].lineno}: {frames[-1].line.strip()})" if frames else ""
        raise RuntimeError(f"EX08-LEARNER {type(error).__name__}: {error}{where}") from None
    exists_on_return = path.exists()
    for handle in handles:
        handle.remove()
    barrier()
    heartbeat(every_s=0.0)
    checkpoint = None
    if rank == 0 and path.exists():
        try:
            checkpoint = load_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - described, not raised
            checkpoint = f"{type(error).__name__}: {error}"
    heartbeat(every_s=0.0)
    if isinstance(returned, float):  # a Python float (numpy's float64 is one too)
        returned = float(returned)
    else:
        returned = f"a {type(returned).__module__}.{type(returned).__qualname__}: {repr(returned)[:50]}"
    record = {
        "seed": seed, "rank": rank, "writes": list(writes),
        "exists_on_return": exists_on_return, "exists_after": path.exists(),
        "checkpoint": checkpoint, "own_stats": own_stats, "trained_batches": trained[0],
        "train_reads": list(train.reads), "val_reads": list(val.reads),
        "val_labels": val.labels.clone(),
        "logits": torch.cat(logits) if logits else torch.zeros(0, 10),
        "train_noise": _noise(train_inputs, train),
        "eval_noise": _noise(eval_inputs, val),
        "returned": returned, "library_calls": list(calls),
        "plain_keys": sorted(model.state_dict()),
        "plain_kinds": {key: (str(value.dtype), tuple(value.shape))
                        for key, value in model.state_dict().items()},
    }
    barrier()
    return record


# ---- running it and reading the results -----------------------------------------------------------


def observe(functions, seeds=SEEDS, pause_s: float = 0.0, name: str = "train_distributed",
            timeout_s: float = LAUNCH_TIMEOUT_S):
    """Launch WORLD_SIZE processes that run each of `functions` once per seed; return, per
    function, its runs (one per seed), each run being the list of the ranks' records.

    A check calls it with the learner's function alone; the tests of the checks pass many
    functions at once, so that one launch serves a whole corpus of answers.
    """
    from course_lib.distributed import launch

    modules = []
    try:
        for fn in functions:
            modules.append(_Module(fn, name))
        if any(module.is_stub for module in modules):
            raise NotImplementedYet(name)
        run_dir = tempfile.mkdtemp(prefix="ex08_run_")
        try:
            per_rank = launch(_observe, WORLD_SIZE,
                              [(m.folder, m.module_name, m.function_name) for m in modules],
                              list(seeds), run_dir, pause_s, _digits(), timeout_s=timeout_s,
                              stalled_s=STALL_S, stalled_ratio=STALL_RATIO)
        except RuntimeError as error:
            raise _explain_launch_failure(str(error), name) from None
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        for module in modules:
            module.cleanup()
    # per_rank[rank][function][seed] -> [function][seed][rank]
    return [[[per_rank[rank][f][s] for rank in range(WORLD_SIZE)] for s in range(len(seeds))]
            for f in range(len(modules))]


def _runs(runs) -> str:
    return "1 run" if len(runs) == 1 else f"{len(runs)} runs, one per seed"


def _common(runs, name: str) -> None:
    """What every check requires first: the learner's own loop, training the model it got."""
    for records in runs:
        _refuse_library(records, name, ("course_lib.loop.fit", "course_lib.loop.evaluate"),
                        "train and evaluate with your own loop")
        require(all(r["trained_batches"] > 0 for r in records),
                f"{name} never trained the model it was given",
                hint="wrap and train the `model` argument; do not build a new one")


def _explain_launch_failure(message: str, name: str) -> CheckFailure:
    if "EX08-STUB" in message:
        return NotImplementedYet(name)
    rank = message.split()[1] if message.startswith("rank ") else "?"
    if "EX08-LEARNER" in message:
        detail = message.split("EX08-LEARNER", 1)[1].strip().splitlines()[0]
        return CheckFailure(f"{name} raised on rank {rank}: {detail}",
                            hint="run the function's cell again after fixing it; the error "
                            "happened inside one of the two processes")
    if "stalled" in message:
        return CheckFailure(f"{name} stopped making progress: no rank ran a forward pass or "
                            f"returned for {STALL_S:.0f} s (or for as long as the processes "
                            "took to start, if longer)",
                            hint="a rank that waits in a collective call (all_reduce, barrier) "
                            "that another rank never makes waits forever: call every collective "
                            "on every rank, outside `if rank == 0:` blocks")
    if "returned nothing" in message:
        return CheckFailure(f"{name} did not finish in time",
                            hint="a rank that waits in a collective call (all_reduce, barrier) "
                            "that another rank never makes waits forever: call every collective "
                            "on every rank, outside `if rank == 0:` blocks")
    first = message.splitlines()[1] if "\n" in message else message
    return CheckFailure(f"{name} failed in the processes: {first}",
                        hint="a collective call made on some ranks only, or different tensor "
                        "shapes on different ranks, often ends like this")


def _refuse_library(records, name: str, names, instead: str) -> None:
    for record in records:
        for call in record["library_calls"]:
            if call in names:
                raise CheckFailure(f"{name} called {call}, the library's own answer",
                                   hint=f"this exercise asks you to write it yourself: {instead}")


# ---- (a) rank 0 writes the checkpoint, the others wait -------------------------------------------


def check_checkpoint(train_distributed, *, seeds=SEEDS) -> None:
    """Only rank 0 writes, at checkpoint_path, the plain model's state dict under "model"; every
    rank returns only once the file exists."""
    runs = observe([train_distributed], seeds, pause_s=SAVE_PAUSE_S)[0]
    judge_checkpoint(runs)


def judge_checkpoint(runs, name: str = "train_distributed") -> None:
    """What check_checkpoint requires of the runs `observe` made."""
    _common(runs, name)
    for records in runs:
        for record in records[1:]:
            require(not record["writes"],
                    f"rank {record['rank']} wrote a file too "
                    f"({', '.join(Path(w).name for w in record['writes'])})",
                    hint="only rank 0 writes (`if is_main_process():`); the other ranks would "
                    "write the same checkpoint again, or race rank 0 for the same file")
        zero = records[0]
        require(bool(zero["writes"]) and zero["exists_after"],
                "rank 0 wrote no checkpoint at checkpoint_path",
                got=f"files written: {[Path(w).name for w in zero['writes']] or 'none'}",
                hint="rank 0 must save to the checkpoint_path it was given")
        late = [r["rank"] for r in records if not r["exists_on_return"]]
        require(not late, f"rank {late[0] if late else ''} returned before the checkpoint existed",
                hint="after rank 0's `if` block, every rank waits at `barrier()`, so that no rank "
                "goes on (to load, evaluate, or exit) before the file is written")
        checkpoint = zero["checkpoint"]
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise CheckFailure("the checkpoint should be a dict with the model's state dict under "
                               "'model'", got=repr(checkpoint)[:80] if not isinstance(checkpoint, dict)
                               else f"keys {sorted(checkpoint)}",
                               hint="save {'model': model.state_dict()}")
        keys = sorted(checkpoint["model"])
        if keys != zero["plain_keys"]:
            prefixed = any(key.startswith("module.") for key in keys)
            raise CheckFailure("the checkpoint's state dict does not fit a plain SmallCNN",
                               got=f"keys like {keys[0]!r}" if keys else "no keys",
                               hint="save the state dict of the model you were given, not of the "
                               "DistributedDataParallel wrapper (whose keys start with 'module.')"
                               if prefixed else "save model.state_dict() of the model you trained")
        for key in keys:
            value = checkpoint["model"][key]
            kind = ((str(value.dtype), tuple(value.shape)) if isinstance(value, torch.Tensor)
                    else (type(value).__name__, None))
            if kind != zero["plain_kinds"][key]:
                dtype, shape = zero["plain_kinds"][key]
                raise CheckFailure(f"the checkpoint's {key} is {kind[0]} of shape {kind[1]}",
                                   expected=f"{dtype} of shape {shape}, as in the model",
                                   hint="save model.state_dict() as it is: no conversion to "
                                   "another dtype or container, which a plain SmallCNN would "
                                   "not load as it was trained")
    passed(f"only rank 0 wrote the checkpoint, and every rank waited for it ({_runs(runs)})")


# ---- (b) each rank its own share ---------------------------------------------------------------


def _epochs(record, name: str) -> list[list[int]]:
    reads = record["train_reads"]
    require(len(reads) > 0, f"rank {record['rank']} read no training examples through the "
            "dataset it was given", hint="iterate over a DataLoader of train_set, with "
            "num_workers=0 (the default)")
    require(len(reads) % EPOCHS == 0,
            f"rank {record['rank']} read {len(reads)} training examples in {EPOCHS} epochs, not "
            "the same number each epoch", hint="train for exactly `epochs` epochs, each one "
            "pass over the rank's share")
    size = len(reads) // EPOCHS
    return [reads[e * size:(e + 1) * size] for e in range(EPOCHS)]


def check_sharding(train_distributed, *, seeds=SEEDS) -> None:
    """In every epoch, the ranks read disjoint shares that together cover the training set
    (DistributedSampler's padding: at most world_size - 1 examples read twice), and no rank reads
    its share in the same order in two consecutive epochs."""
    runs = observe([train_distributed], seeds, pause_s=0.0)[0]
    judge_sharding(runs)


def judge_sharding(runs, name: str = "train_distributed") -> None:
    """What check_sharding requires of the runs `observe` made."""
    _common(runs, name)
    for records in runs:
        _refuse_library(records, name, ("course_lib.distributed.sharded_loader",),
                        "build the DataLoader with a DistributedSampler yourself")
        epochs = [_epochs(record, name) for record in records]
        for epoch in range(EPOCHS):
            shares = [rank_epochs[epoch] for rank_epochs in epochs]
            zero, one = shares[0], shares[1]
            shared = len(set(zero) & set(one))
            if shared > WORLD_SIZE - 1:
                if zero == one:
                    why = ("both ranks read the same examples in the same order: one data seed "
                           "on every rank shuffles the same way everywhere")
                elif len(set(zero)) >= TRAIN_SIZE - 1 and len(set(one)) >= TRAIN_SIZE - 1:
                    why = ("every rank read the whole training set: a seed per rank changes the "
                           "order, not which examples each rank reads")
                else:
                    why = ("the shares overlap: a DistributedSampler needs the SAME seed on every "
                           "rank, or its ranks deal from different permutations")
                raise CheckFailure(f"in epoch {epoch + 1}, {shared} of the {len(set(one))} "
                                   "examples rank 1 read were read by rank 0 too",
                                   hint=why + "; shard with a DistributedSampler (one seed)")
            missed = TRAIN_SIZE - len(set(zero) | set(one))
            require(missed <= WORLD_SIZE - 1,
                    f"in epoch {epoch + 1}, {missed} of the {TRAIN_SIZE} training examples were "
                    "read by no rank", hint="the ranks' shares must cover the whole set: "
                    "DistributedSampler with num_replicas=get_world_size(), rank=get_rank()")
        for record, rank_epochs in zip(records, epochs):
            for epoch in range(1, EPOCHS):
                if rank_epochs[epoch] != rank_epochs[epoch - 1]:
                    continue
                in_order = rank_epochs[epoch][:-1] == sorted(rank_epochs[epoch][:-1])
                raise CheckFailure(
                    f"rank {record['rank']} read its {len(rank_epochs[epoch])} examples in the "
                    f"same order in epochs {epoch} and {epoch + 1}"
                    + (", in the order of their indices" if in_order else ""),
                    hint="nothing shuffles the share: the examples come in the order of their "
                    "indices" if in_order else "a DistributedSampler's permutation depends on "
                    "its seed and on the epoch it was last told; it cannot know the epoch by "
                    "itself")
    passed(f"in every epoch the ranks read disjoint shares of the {TRAIN_SIZE} training examples, "
           f"in a new order each epoch ({_runs(runs)})")


# ---- (c) augmentation noise: a fresh draw for every example, on every rank -----------------------


def check_augmentation(train_distributed, *, seeds=SEEDS) -> None:
    """Every training input carries Gaussian noise (mean 0, standard deviation NOISE_STD), no two
    examples share a draw (not on two ranks, not in two epochs, not in one batch), and the
    validation inputs carry none."""
    runs = observe([train_distributed], seeds, pause_s=0.0)[0]
    judge_augmentation(runs)


def _where(record, row: int) -> tuple[int, int]:
    """(epoch, position in the epoch) of the row-th training example a rank read."""
    size = len(record["train_reads"]) // EPOCHS
    return row // size, row % size


def judge_augmentation(runs, name: str = "train_distributed") -> None:
    """What check_augmentation requires of the runs `observe` made."""
    _common(runs, name)
    for records in runs:
        for record in records:
            rank, noise = record["rank"], record["train_noise"]
            _epochs(record, name)
            require(noise is not None,
                    f"the check could not match rank {rank}'s training forward passes to the "
                    "examples it read",
                    hint="feed every batch the training loader gives you to the model once, in "
                    "the order the loader gives them, with the noise added to its inputs")
            silent = int((noise.abs().amax(dim=1) <= SAME_DRAW_TOLERANCE).sum())
            require(silent == 0,
                    f"{silent} of the {len(noise)} training inputs rank {rank} passed to the model "
                    "carried no noise",
                    hint="every training batch, on every rank, in every epoch, gets its noise")
        _no_repeated_draw(records)
        for record in records:
            noise = record["train_noise"].double()
            mean, std = noise.mean().item(), noise.std().item()
            require(abs(mean) <= NOISE_MEAN_TOLERANCE
                    and abs(std - NOISE_STD) <= NOISE_STD_TOLERANCE,
                    f"rank {record['rank']}'s noise has mean {mean:.3f} and standard deviation "
                    f"{std:.3f}", expected=f"Gaussian noise, mean 0 and standard deviation "
                    f"{NOISE_STD} (within {NOISE_MEAN_TOLERANCE} and {NOISE_STD_TOLERANCE})",
                    hint="which of torch's random functions draws from a normal distribution, and "
                    "what is the standard deviation of what it draws?")
        for record in records:
            eval_noise = record["eval_noise"]
            if eval_noise is not None and len(eval_noise):
                largest = eval_noise.abs().max().item()
                require(largest <= SAME_DRAW_TOLERANCE,
                        f"rank {record['rank']}'s validation inputs differ from the validation "
                        f"examples by up to {largest:.2g}",
                        hint="the noise is an augmentation of the training data: evaluate the "
                        "examples as they are")
    passed(f"every training input got a fresh draw of noise, different on every rank, and "
           f"validation none ({_runs(runs)})")


def _no_repeated_draw(records) -> None:
    """Fail when two training inputs (on one rank or on two) carried the same noise."""
    rows = torch.cat([record["train_noise"] for record in records])
    owner = [(record["rank"], row) for record in records
             for row in range(len(record["train_noise"]))]
    distance = torch.cdist(rows.double(), rows.double(), p=float("inf"))
    distance.fill_diagonal_(float("inf"))
    pairs = torch.nonzero(distance <= SAME_DRAW_TOLERANCE)
    if not len(pairs):
        return
    kinds = [(owner[i], owner[j]) for i, j in pairs.tolist() if i < j]
    by_record = {record["rank"]: record for record in records}
    across = [(a, b) for a, b in kinds if a[0] != b[0]]
    if across:
        (rank_a, row_a), (rank_b, row_b) = across[0]
        epoch_a, at_a = _where(by_record[rank_a], row_a)
        epoch_b, at_b = _where(by_record[rank_b], row_b)
        raise CheckFailure(
            f"rank {rank_a} and rank {rank_b} drew the same noise ({len(across)} times; first "
            f"for example {at_a + 1} of epoch {epoch_a + 1} on rank {rank_a} and example "
            f"{at_b + 1} of epoch {epoch_b + 1} on rank {rank_b})",
            hint="whatever generator you draw from starts in the same state on every rank: the "
            "ranks' streams must differ, while the model's first weights stay the same")
    (rank, row_a), (_, row_b) = kinds[0]
    epoch_a, at_a = _where(by_record[rank], row_a)
    epoch_b, at_b = _where(by_record[rank], row_b)
    if epoch_a != epoch_b:
        raise CheckFailure(
            f"rank {rank} drew the same noise in epoch {epoch_a + 1} and epoch {epoch_b + 1} "
            f"({len(kinds)} times; first for examples {at_a + 1} and {at_b + 1})",
            hint="a generator that starts again from its seed repeats its draws: keep one stream "
            "going for the whole run")
    raise CheckFailure(
        f"rank {rank} gave {len(kinds)} pairs of training inputs the same noise (first examples "
        f"{at_a + 1} and {at_b + 1} of epoch {epoch_a + 1})",
        hint="draw new noise for every example of every batch, not once for all")


# ---- (d) BatchNorm statistics averaged before saving ---------------------------------------------


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=STATS_TOLERANCE,
                                                      atol=STATS_TOLERANCE))


def check_batchnorm_synced(train_distributed, *, seeds=SEEDS) -> None:
    """The checkpoint's running_mean and running_var of every BatchNorm layer are the mean over
    the ranks of each rank's own statistics after its last training batch."""
    runs = observe([train_distributed], seeds, pause_s=0.0)[0]
    judge_batchnorm_synced(runs)


def judge_batchnorm_synced(runs, name: str = "train_distributed") -> None:
    """What check_batchnorm_synced requires of the runs `observe` made."""
    _common(runs, name)
    for records in runs:
        _refuse_library(records, name, ("course_lib.distributed.average_batchnorm_stats",),
                        "all-reduce the running statistics yourself")
        checkpoint = records[0]["checkpoint"]
        require(isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict),
                "there is no checkpoint with a 'model' state dict to read the statistics from",
                hint="pass check (a) first: rank 0 saves {'model': model.state_dict()}")
        saved = {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
        own = [record["own_stats"] for record in records]
        require(own[0] and set(own[0]) == set(own[1]),
                "the check saw no training-mode forward pass through the BatchNorm layers",
                hint="train the model you were given, in train mode")
        means = {key: sum(stats[key] for stats in own) / len(own) for key in own[0]}
        for key in sorted(own[0], key=lambda key: (key.endswith("running_var"), key)):
            require(key in saved, f"the checkpoint has no {key}",
                    hint="save the whole state dict; the running statistics are buffers in it")
            if _close(saved[key], means[key]):
                continue
            twin = key.replace("running_var", "running_mean")
            if key.endswith("running_var") and _close(saved[twin], means[twin]):
                hint = "the running means are averaged, but not the running variances: average both"
            elif _close(saved[key], own[0][key]) or _close(saved[key], own[1][key]):
                which = 0 if _close(saved[key], own[0][key]) else 1
                hint = (f"the checkpoint holds rank {which}'s statistics only: average them over "
                        "the ranks before saving (all_reduce with SUM, then divide by the world "
                        "size)")
            elif _close(saved[key], sum(stats[key] for stats in own)):
                hint = "the statistics were summed over the ranks but not divided by the world size"
            else:
                hint = ("the saved statistics are none of the ranks' and not their mean: average "
                        "each buffer over the ranks once, on every rank, before saving")
            gap = (saved[key].double() - means[key].double()).abs().max().item()
            raise CheckFailure(f"the checkpoint's {key} is not the mean of the ranks' own "
                               f"(off by up to {gap:.2g})", hint=hint)
    passed(f"the checkpoint's BatchNorm statistics are the ranks' mean ({_runs(runs)})")


# ---- (e) the validation loss over the whole set, shared out between the ranks -------------------


def check_validation_loss(train_distributed, *, seeds=SEEDS) -> None:
    """The ranks evaluate disjoint shares of the validation set that together cover it (a
    DistributedSampler's repeat allowed), in eval mode, and every rank returns the mean
    cross-entropy over the VAL_SIZE examples, each counted once, as a Python float."""
    runs = observe([train_distributed], seeds, pause_s=0.0)[0]
    judge_validation_loss(runs)


def judge_validation_loss(runs, name: str = "train_distributed") -> None:
    """What check_validation_loss requires of the runs `observe` made."""
    import torch.nn.functional as F

    _common(runs, name)
    for records in runs:
        losses: dict[int, list[float]] = {}
        rank_means, reads_per_rank = [], []
        for record in records:
            rank, reads, logits = record["rank"], record["val_reads"], record["logits"]
            require(len(logits) > 0,
                    f"rank {rank} made no prediction in eval mode", hint="BatchNorm must use "
                    "its running statistics when you evaluate: which mode is that?")
            require(len(logits) == len(reads),
                    f"rank {rank}'s eval-mode forward passes took {len(logits)} examples, but it "
                    f"read {len(reads)} validation examples",
                    hint="evaluate the validation examples read, once each, and nothing else in "
                    "eval mode")
            repeated = len(reads) - len(set(reads))
            require(repeated == 0, f"rank {rank} evaluated {repeated} validation examples more "
                    "than once", hint="each rank evaluates each example of its share once")
            own = F.cross_entropy(logits.double(), record["val_labels"][torch.tensor(reads)],
                                  reduction="none")
            for index, loss in zip(reads, own.tolist()):
                losses.setdefault(index, []).append(loss)
            rank_means.append(own.mean().item())
            reads_per_rank.append(len(reads))
        both = sum(len(copies) > 1 for copies in losses.values())
        require(both <= WORLD_SIZE - 1,
                f"{both} validation examples were evaluated by both ranks",
                hint="share the validation set out between the ranks, as the training set: each "
                "rank evaluates its own part")
        missed = VAL_SIZE - len(losses)
        require(missed == 0, f"{missed} of the {VAL_SIZE} validation examples were evaluated by "
                "no rank", hint="the ranks' shares must cover the whole set: a sampler or a cut "
                "that evens out the shares by leaving examples out loses them from the mean")
        # An example both ranks evaluated counts once, with either rank's loss (the two agree
        # when the ranks' models agree): one right answer per choice of copy.
        single = sum(copies[0] for copies in losses.values() if len(copies) == 1)
        repeated = [copies for copies in losses.values() if len(copies) > 1]
        right = [(single + sum(choice)) / VAL_SIZE for choice in itertools.product(*repeated)]
        slack = LOSS_RTOLERANCE * max(right)
        every_read = sum(sum(copies) for copies in losses.values()) / sum(reads_per_rank)
        mean_of_ranks = sum(rank_means) / len(rank_means)
        for record, own_mean in zip(records, rank_means):
            got = record["returned"]
            if isinstance(got, float) and any(abs(got - value) <= slack for value in right):
                continue
            if not isinstance(got, float):
                raise CheckFailure(f"rank {record['rank']} returned {got}, not a Python float",
                                   hint="return a plain Python float (a one-element tensor's "
                                   ".item() is one), not a tensor or an array")
            if both and (abs(got - every_read) <= slack or abs(got - mean_of_ranks) <= slack):
                hint = (f"the ranks evaluated {' + '.join(map(str, reads_per_rank))} = "
                        f"{sum(reads_per_rank)} examples of a set of {VAL_SIZE}: one of them "
                        "twice, and your mean counts it twice. Count each example once")
            elif abs(got - mean_of_ranks) <= slack:
                hint = ("that is the mean of the ranks' mean losses, but the ranks evaluated "
                        f"{' and '.join(map(str, reads_per_rank))} examples: add up losses and "
                        "counts over the ranks, and divide once")
            elif abs(got - own_mean) <= slack:
                hint = ("that is this rank's own mean loss: the figure must cover every rank's "
                        "examples")
            else:
                hint = ("the mean over the set is the sum of every example's loss over the sum of "
                        "the counts; a mean of batch means, or a batch mean times the full batch "
                        "size, weighs the last, smaller batch wrongly (lesson 05)")
            raise CheckFailure(f"rank {record['rank']} returned a mean loss of {got:.5f}",
                               expected=f"{right[0]:.5f}, the mean over the {VAL_SIZE} "
                               f"examples, each counted once (within {LOSS_RTOLERANCE:g} of it)",
                               hint=hint)
    passed(f"the ranks shared out the {VAL_SIZE} validation examples, and every rank returned "
           f"the mean loss over all of them ({_runs(runs)})")
