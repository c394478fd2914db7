"""Several processes training one model with torch.distributed (lesson 08).

The same script runs alone or under `torchrun --nproc_per_node=N` (and `--nnodes=M` across
machines): `init_distributed()` reads the rank and world size that torchrun puts in the environment
and starts the process group, or does nothing in a plain process. Everything else here is a thin
name over a torch.distributed call that is also correct, and free, with a single process:

- `is_main_process()`: rank 0, the one process that logs and writes files;
- `barrier()`, `all_reduce_sum()`: wait for every rank, add a tensor across the ranks;
- `sharded_loader()`: a DataLoader over this rank's share of the data (a DistributedSampler);
  `check_sharded()` refuses a training loader that is not sharded, `set_sampler_epoch()` tells
  the sampler which epoch starts, and `rank_share()` splits an evaluation loader's batches;
- `average_batchnorm_stats()`: the BatchNorm running statistics averaged across the ranks;
- `call_on_main()`: run a function (writing a file, say) on rank 0 and give every rank its outcome,
  so an error that only rank 0 can see stops every rank instead of leaving them waiting;
- `rank_seed()`: the seed of this rank's own random stream (dropout, augmentation);
- `launch(fn, world_size)`: start `world_size` processes on this machine, each calling `fn`, as
  torchrun would, and return what each returned. `fn` must be importable (defined in a module,
  not in a notebook cell): the new processes import it by name.

`course_lib.loop.fit` uses these to run unchanged under torchrun: see its docstring for what it
does differently when the world size is above one.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import shutil
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from itertools import islice

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

# The variables torchrun sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(backend: str | None = None, timeout_s: float = 120.0) -> tuple[int, int]:
    """Start the process group that torchrun described; return (rank, world_size).

    In a plain process (no RANK/WORLD_SIZE in the environment) this does nothing and returns
    (0, 1). The backend is NCCL when every process on this machine can have a GPU of its own (the
    GPU of its LOCAL_RANK), else gloo, and the processes train on the CPU. Calling it again returns
    the running group's rank and size.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run in a single process")
    if backend is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        own_gpus = torch.cuda.is_available() and local_processes <= torch.cuda.device_count()
        backend = "nccl" if own_gpus else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def is_distributed() -> bool:
    """True inside an initialised process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that logs, shows progress and writes checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Add `tensor` across the ranks, in place, and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def close_distributed() -> None:
    """Leave the process group at the end of a script (nothing to do in a single process)."""
    if is_distributed():
        dist.barrier()  # every rank leaves together
        dist.destroy_process_group()
        # Free what the run left in reference cycles now, while the interpreter is whole. Without
        # this, a rank sometimes aborted in Python's shutdown, after this function had returned
        # ("terminate called without an active exception", from one of torch's C++ threads), and
        # torchrun reported a failed run although training had ended. Measured on two busy cores
        # with torch 2.13: 3 aborts in 113 two-process torchrun runs without this collection, none
        # in 60 with it. Why it helps is not pinned down; those counts are the evidence.
        gc.collect()


def all_gather_objects(value) -> list:
    """Every rank's `value` (any picklable object), as a list indexed by rank."""
    if get_world_size() == 1:
        return [value]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def call_on_main(fn, *args, **kwargs):
    """Run `fn` on rank 0 only; every rank returns its result or raises its error.

    Rank 0 alone writes files, so rank 0 alone can fail while writing (the folder already holds a
    run, the disk is full). Were the error raised there only, the other ranks would wait forever at
    their next collective call; here rank 0 sends its outcome to all, and they raise the same error.
    """
    if get_world_size() == 1:
        return fn(*args, **kwargs)
    outcome = [None]
    if is_main_process():
        try:
            outcome[0] = ("ok", fn(*args, **kwargs))
        except Exception as error:  # sent on, then raised here too
            try:
                pickle.dumps(error)
                sent = error
            except Exception:  # an error that cannot travel is sent as its text
                sent = RuntimeError(f"{type(error).__name__}: {error}")
            dist.broadcast_object_list([("error", sent)], src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    status, value = outcome[0]
    if status == "error":
        raise value
    return value


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own random stream, derived from the run's `seed`.

    NumPy's SeedSequence mixes the two numbers, so that no two (seed, rank) pairs share a stream:
    with `seed + rank`, rank 1 of seed 0 would repeat rank 0 of seed 1.
    """
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def device_for_rank(device: str = "auto") -> torch.device:
    """The device this process trains on: "auto" gives its own GPU (cuda:LOCAL_RANK) under NCCL,
    or outside a process group when there is one, and the CPU under gloo; else `device`."""
    gloo = is_distributed() and dist.get_backend() != "nccl"
    if device == "auto" and torch.cuda.is_available() and not gloo:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device == "auto":
        return torch.device("cpu")
    return torch.device(device)


def sharded_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                   drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A DataLoader over this rank's share of `dataset`: the standard DistributedSampler recipe.

    Every rank must pass the same `seed`: the sampler shuffles the whole dataset with
    seed + epoch and then deals the examples out, so the ranks agree on one permutation and their
    shares never overlap. Call `loader.sampler.set_epoch(epoch)` at the start of every epoch (`fit`
    does), or every epoch repeats the first one's order. In a single process the share is the whole
    dataset. Without `drop_last` the sampler pads the last round with examples from the start, so
    that every rank takes the same number of steps.
    """
    sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(),
                                 shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)


def _distributed_sampler(loader):
    """The DistributedSampler (or any sampler that knows its replicas) behind a DataLoader."""
    for sampler in (getattr(loader, "sampler", None),
                    getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, DistributedSampler) or hasattr(sampler, "num_replicas"):
            return sampler
    return None


def check_sharded(loader) -> None:
    """Refuse a training DataLoader that would give every rank the same examples.

    A DataLoader over a map-style dataset must draw through a DistributedSampler built for this
    process group (as `sharded_loader` does). A DataLoader over an IterableDataset, and any other
    iterable of batches, is taken as sharding itself. Nothing to check in a single process.
    """
    world, rank = get_world_size(), get_rank()
    if world == 1 or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return
    sampler = _distributed_sampler(loader)
    if sampler is None:
        raise ValueError(
            f"the training loader's sampler is a {type(loader.sampler).__name__}, so each of the "
            f"{world} processes would train on the same examples; build it with "
            "course_lib.distributed.sharded_loader(dataset, batch_size, seed=...) (a "
            "DistributedSampler that deals each rank its own share)")
    if sampler.num_replicas != world or getattr(sampler, "rank", rank) != rank:
        raise ValueError(
            f"the training loader's DistributedSampler was built for rank "
            f"{getattr(sampler, 'rank', '?')} of {sampler.num_replicas}, but this process is rank "
            f"{rank} of {world}: build the loader after init_distributed() (sharded_loader does)")


def set_sampler_epoch(loader, epoch: int) -> None:
    """Tell the loader's sampler which epoch starts, if it wants to know (DistributedSampler does:
    it shuffles with seed + epoch, so without this every epoch repeats the first one's order)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(loader, "sampler", None), batch_sampler,
                    getattr(batch_sampler, "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


class _EveryNth:
    """Batches rank, rank + world, rank + 2 * world, ... of a loader, each time it is iterated."""

    def __init__(self, loader, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world

    def __iter__(self):
        return islice(iter(self.loader), self.rank, None, self.world)


def rank_share(loader):
    """This rank's share of an evaluation loader: across the ranks, every batch exactly once.

    Rank r takes batches r, r + W, r + 2W, ... of the loader's own batches (the same examples in
    the same batches as in one process, so nothing is padded or counted twice); a rank may get
    none. A DataLoader over a map-style dataset is rebuilt to load only those batches; any other
    iterable is read whole by every rank, which evaluates its share. In a single process: `loader`.
    """
    world, rank = get_world_size(), get_rank()
    if world == 1:
        return loader
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        batches = list(loader.batch_sampler)[rank::world]
        return DataLoader(loader.dataset, batch_sampler=batches, collate_fn=loader.collate_fn,
                          num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                          worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                          multiprocessing_context=loader.multiprocessing_context,
                          persistent_workers=loader.persistent_workers)
    return _EveryNth(loader, rank, world)


BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


def batchnorm_stats(model: nn.Module) -> dict:
    """A copy of every BatchNorm's running mean and variance, by buffer name."""
    return {f"{name}.{key}": buffer.detach().clone()
            for name, module in model.named_modules()
            if isinstance(module, BATCHNORM_TYPES) and module.track_running_stats
            for key, buffer in (("running_mean", module.running_mean),
                                ("running_var", module.running_var)) if buffer is not None}


def average_batchnorm_stats(model: nn.Module) -> None:
    """Replace every BatchNorm's running mean and variance by their mean across the ranks.

    Each rank's BatchNorm layers update their running statistics from that rank's batches only,
    so the ranks drift apart; saving rank 0's copy would throw the others' data away. The batch
    counters are equal on every rank and stay as they are.
    """
    world = get_world_size()
    if world == 1:
        return
    for module in model.modules():
        if isinstance(module, BATCHNORM_TYPES) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                    buffer.div_(world)


# ---- launching processes on this machine, as torchrun does ---------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now, for the ranks to meet at."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_interface() -> str | None:
    """The name of this machine's loopback network interface ("lo" on Linux, "lo0" on macOS), or
    None where there is none to name (native Windows, where gloo picks its own)."""
    if sys.platform == "win32":
        return None
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):
        return None
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return next((name for name in names if name.startswith("lo")), None)


def local_launch_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun would set for `rank` on one machine, bound to the loopback.

    MASTER_ADDR is 127.0.0.1 rather than the host name, and GLOO_SOCKET_IFNAME names the loopback
    interface: otherwise gloo binds to whatever address the host name resolves to, and a `.local`
    name that does not resolve, a VPN's address or a firewall that asks before letting a program
    listen makes the processes wait for each other until the timeout. A GLOO_SOCKET_IFNAME the
    user set is kept.
    """
    variables = {
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }
    interface = os.environ.get("GLOO_SOCKET_IFNAME") or loopback_interface()
    if interface:
        variables["GLOO_SOCKET_IFNAME"] = interface
    return variables


def _newest_beat(beat_folder: str, world_size: int) -> float | None:
    """The time of the latest heartbeat of any rank, once every rank has beaten (before that a
    rank may still be importing: slow, not stuck); None until then."""
    beats = []
    for rank in range(world_size):
        try:
            beats.append(os.stat(os.path.join(beat_folder, f"rank{rank}")).st_mtime)
        except OSError:
            return None
    return max(beats)


def _worker(rank: int, world_size: int, port: int, threads: int, fn, args, kwargs, results,
            beat_file=None):
    os.environ.update(local_launch_environment(rank, world_size, port))
    if beat_file:
        os.environ[HEARTBEAT_VARIABLE] = beat_file
    # Like torchrun: N processes on one machine share its cores instead of each taking all.
    torch.set_num_threads(threads)
    try:
        init_distributed(backend="gloo")
        # Plain pickle copies tensors by value; a multiprocessing queue would hand over shared
        # memory that disappears when this process exits.
        returned = fn(*args, **kwargs)
        heartbeat(every_s=0.0)
        outcome = (rank, "ok", pickle.dumps(returned))
    except BaseException as error:
        outcome = (rank, "error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    # Reported before leaving the group: leaving makes the other ranks fail too, and the parent
    # names the error that arrived first.
    results.put(outcome)
    if is_distributed():
        dist.destroy_process_group()


HEARTBEAT_VARIABLE = "COURSE_HEARTBEAT_FILE"
_last_beat = [0.0]


def heartbeat(every_s: float = 0.25) -> None:
    """Tell the `launch` that started this process that it is making progress (at most once
    every `every_s` seconds; nothing outside a launch that asked for heartbeats)."""
    path = os.environ.get(HEARTBEAT_VARIABLE)
    now = time.monotonic()
    if not path or now - _last_beat[0] < every_s:
        return
    _last_beat[0] = now
    try:
        with open(path, "a"):
            os.utime(path)
    except OSError:
        pass


def launch(fn, world_size: int = 2, *args, timeout_s: float = 300.0, stalled_s: float | None = None,
           stalled_ratio: float = 0.0, **kwargs) -> list:
    """Run `fn(*args, **kwargs)` in `world_size` new processes joined by a gloo process group.

    Returns the list of what each rank returned, by rank (it must be picklable). `fn` must be
    importable by name (a module's function, not a notebook cell's): the processes are spawned,
    so each starts a fresh interpreter and imports it. An exception in any rank is raised here,
    naming the rank, with its traceback; the other ranks, which may be waiting for it in a
    collective call, are stopped.

    `timeout_s` bounds the whole run. With `stalled_s`, the processes are also stopped when, once
    every rank has called `heartbeat()`, none of them has called it for `stalled_s` seconds, or
    for `stalled_ratio` times the start-up (from the launch to every rank's first heartbeat) if
    that is longer: a run waiting in a collective call that some rank never makes is caught soon
    after it stopped, and the start-up, measured in the same call, scales the limit to how slowly
    the machine runs right now.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    name = getattr(fn, "__qualname__", repr(fn))
    where = ("in __main__ (a notebook cell or a script)" if getattr(fn, "__module__", None) == "__main__"
             else "inside another function" if "<locals>" in name else None)
    if where:
        raise ValueError(f"launch needs a function the new processes can import; {name} is defined "
                         f"{where}: move it to a module")
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    beat_folder = tempfile.mkdtemp(prefix="launch-heartbeat-") if stalled_s is not None else None
    threads = max(1, (os.cpu_count() or 1) // world_size)
    processes = [
        context.Process(target=_worker, daemon=True,
                        args=(rank, world_size, port, threads, fn, args, kwargs, results,
                              beat_folder and os.path.join(beat_folder, f"rank{rank}")))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, tuple[str, object]] = {}
    stalled, startup, limit = False, None, stalled_s
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        # Read while the processes run: a result larger than the pipe's buffer is only written
        # once someone reads it, and its process cannot exit before that.
        while len(outcomes) < world_size and time.monotonic() < deadline:
            try:
                rank, status, value = results.get(timeout=0.2)
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    break  # everyone is gone and nothing more is coming
                if beat_folder is not None:
                    newest = _newest_beat(beat_folder, world_size)
                    if newest is not None:
                        if startup is None:
                            startup = time.monotonic() - started
                            limit = max(stalled_s, stalled_ratio * startup)
                        if time.time() - newest > limit:
                            stalled = True
                            break
                continue
            outcomes[rank] = (status, value)
            if status == "error":
                deadline = min(deadline, time.monotonic() + 5.0)  # the others may wait forever
    finally:
        for process in processes:
            process.join(timeout=5.0 if len(outcomes) == world_size else 0.0)
            if process.is_alive():
                process.kill()
                process.join()
        if beat_folder is not None:
            shutil.rmtree(beat_folder, ignore_errors=True)
    # The first error to arrive is the cause; the others are often ranks that lost their peer.
    errors = [(rank, value) for rank, (status, value) in outcomes.items() if status == "error"]
    if errors:
        rank, message = errors[0]
        raise RuntimeError(f"rank {rank} of {world_size} failed:\n{message}")
    missing = [rank for rank in range(world_size) if rank not in outcomes]
    if missing and stalled:
        raise RuntimeError(f"rank(s) {missing} returned nothing: no process made progress for "
                           f"{limit:.0f} s (stalled, as in a collective call some rank never "
                           f"makes; the start-up took {startup:.0f} s)")
    if missing:
        codes = {rank: processes[rank].exitcode for rank in missing}
        raise RuntimeError(f"rank(s) {missing} returned nothing (exit codes {codes}); a process "
                           f"died or ran past {timeout_s:.0f} s")
    return [pickle.loads(outcomes[rank][1]) for rank in range(world_size)]
