"""Checks for exercise 04, a pipeline that reads each example once and yields exactly what the
slow one yields.

The exercise: (a) read the examples a list of indices names, once each, with DataLoader workers,
into a cache whose row j is example indices[j]; (b) turn a per-example transform written in
Python (`mirror_and_normalise`) into one tensor expression on a whole batch; (c) a pipeline that
fills its cache during the first epoch, in the sampler's order, and yields the baseline's batches
epoch after epoch.

Every check builds its own `SlowDigits`, runs the learner's code on it, and observes what happened
instead of trusting what comes back: which examples were read, how often, and by which process
(`SlowDigits.reads` and `reader_pids` live in shared memory, so reads made in worker processes
count too); then it recomputes what the result must be and compares type, dtype, shape and value,
exactly (tolerance 0: the learner's code can do the very operations of the reference).

Speed is measured as a ratio against the baseline, in the same call, interleaved, best of
several runs (`best_ratio`), so that a busy machine slows both sides. The timed run of (c) uses
`num_workers=0`: what a worker costs to start depends on the start method (fork, spawn,
forkserver) and the machine, while what the cache saves does not. The runs with workers are
checked for what they read and where, not for their speed.
"""

from __future__ import annotations

import gc
import os
import warnings
import weakref
from contextlib import contextmanager

import torch
from torch.utils.data import BatchSampler
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from course_lib.checks._core import (
    CheckFailure,
    best_ratio,
    call_learner,
    make_hint,
    one_thread,
    passed,
    require,
    require_tensor,
)
from course_lib.pipelines import (
    BaselinePipeline,
    SlowDigits,
    make_sampler,
    mirror_and_normalise,
    normalise,
)

# (c) over EPOCHS epochs, its pipeline built and run without workers, must be at least
# MIN_SPEEDUP times faster than the baseline, start-up included. A pipeline that reads each
# example once pays one slow pass for EPOCHS epochs: measured 2.9-3.4x (the reference, 3 epochs,
# on two shared cores, alone and beside two CPU-bound processes, under fork and spawn); the bar
# leaves a margin of 1.45x below the lowest of those.
MIN_SPEEDUP = 2.0
EPOCHS = 3
# (b) must beat a loop of `normalise` over 2,048 examples, the cheapest loop over the examples
# there is, by this much, best of 3 runs each (measured: 30x and more, loaded).
MIN_BATCHED_SPEEDUP = 5.0
WORKERS = 2

hint = make_hint({
    "a": "a DataLoader reads what its dataset or its sampler names, in that order: a dataset "
    "restricted to some indices (torch.utils.data.Subset) or a sampler that is just the list "
    "of indices are two ways to name them",
    "b": "think of the 64 values of a row as 8 rows of 8: a tensor can be viewed with one more "
    "dimension, flipped along one of them, and flattened back; the constants are the fixed ones",
    "c": "a DataLoader does not tell you which indices it read, but you may choose them: draw "
    "epoch 1's batches of indices from the sampler yourself, keep them, hand them to the "
    "DataLoader (batch_sampler=...), and write each batch into the cache at its indices",
})


def _quiet_workers() -> None:
    """Silence DataLoader's warning about more workers than cores: ours mostly wait, not compute.

    Call inside `warnings.catch_warnings()`, so the filter ends with the check.
    """
    warnings.filterwarnings("ignore", message="This DataLoader will create")


def _worker_iterators() -> list[_MultiProcessingDataLoaderIter]:
    """Every live DataLoader iterator that runs worker processes, in this process."""
    # type(), not isinstance(): isinstance reads `__class__`, which some lazy torch objects
    # answer with a deprecation warning.
    return [o for o in gc.get_objects() if issubclass(type(o), _MultiProcessingDataLoaderIter)]


@contextmanager
def _workers_stopped_on_exit():
    """Stop, on the way out, the DataLoader workers of every iterator started inside the block.

    A pipeline the learner builds may keep its iterator alive after the check is done with it
    (persistent workers, or an iterator in a reference cycle: a class defined inside a function
    is one). Then only Python's cyclic garbage collector frees it, at a random later moment,
    and that collector closes the iterator's queues before the iterator's own clean-up runs:
    the stop message never reaches the workers, and each one is joined with a 5 s timeout,
    which stalls whatever code happens to run then (measured: 16 workers, 80 s). So every
    worker started here is stopped here, while its queues still work, and waited for.
    """
    before = weakref.WeakSet(_worker_iterators())
    try:
        yield
    finally:
        for iterator in _worker_iterators():
            if iterator not in before:
                iterator._shutdown_workers()  # idempotent; joins the workers


def _as_pair(result, name: str):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailure(f"`{name}` should return a pair (images, labels)",
                           got=type(result).__name__, hint="return images, labels")
    return result




def _require_reads(dataset: SlowDigits, wanted: torch.Tensor, what: str) -> None:
    """Each example where `wanted` is True was read exactly once, and no other example at all."""
    reads = dataset.reads.clone()
    extra = int((reads[~wanted] > 0).sum())
    if extra:
        raise CheckFailure(f"{what} read {extra} examples it was not asked for",
                           hint="every read pays the latency: read only the examples you need, "
                           "not the whole dataset and then a selection")
    if int(reads.max()) > 1:
        raise CheckFailure(f"{what} read {int((reads > 1).sum())} examples more than once "
                           f"(up to {int(reads.max())} times)",
                           hint="every read pays the latency: read each example once and take "
                           "both its image and its label from that one read")
    unread = int((reads[wanted] == 0).sum())
    if unread:
        raise CheckFailure(f"{what}: {unread} of the {int(wanted.sum())} examples were never read",
                           hint="every example is read: no drop_last, no early stop")


def _require_readers(dataset: SlowDigits, indices, num_workers: int, what: str) -> int:
    """The examples `indices` were read in worker processes (num_workers > 0) or in this one."""
    readers = set(dataset.reader_pids[torch.as_tensor(indices)].tolist())
    if num_workers == 0:
        require(readers == {os.getpid()}, f"{what} read in worker processes with num_workers=0",
                expected="every read in the notebook's own process",
                got=f"{len(readers)} processes",
                hint="num_workers=0 means no worker processes: pass num_workers through to the "
                "DataLoader instead of a number of your own")
        return 0
    workers = readers - {os.getpid()}
    if os.getpid() in readers or len(workers) < 2:
        where = ("the notebook's own process" if os.getpid() in readers and not workers else
                 "a single worker process" if len(workers) == 1 and os.getpid() not in readers else
                 "the notebook's own process and workers")
        raise CheckFailure(f"{what}: examples were read in {where}",
                           expected="every read in the worker processes "
                           f"(num_workers={num_workers})",
                           hint="let a DataLoader with num_workers workers do every read, in "
                           "batches small enough (say 16 or 32) that every worker gets some")
    return len(workers)


def _require_dtypes(images, labels, what: str) -> None:
    for name, got, want in (("images", images, torch.float32), ("labels", labels, torch.int64)):
        require(isinstance(got, torch.Tensor), f"{what}: the {name} are not a tensor",
                expected="a torch.Tensor", got=type(got).__name__,
                hint="torch.cat (or torch.stack) the tensors of every batch")
        if got.dtype != want:
            hint = ("the labels are class indices, int64 as the dataset gives them: a float label "
                    "breaks cross-entropy's class-index form; a buffer made with torch.zeros(n) or "
                    "torch.empty(n) is float32 unless you give it a dtype"
                    if name == "labels" else
                    "keep the images float32, as the dataset gives them: float64 doubles the "
                    "memory and does not match the model's float32 weights")
            raise CheckFailure(f"{what}: the {name} have the wrong dtype", expected=str(want),
                               got=str(got.dtype), hint=hint)


# ---- (a) build_cache -----------------------------------------------------------------------------


def _check_cache_once(build_cache, dataset: SlowDigits, indices: list[int], num_workers: int):
    with warnings.catch_warnings():
        _quiet_workers()
        with _workers_stopped_on_exit():
            result = call_learner(build_cache, dataset, indices, num_workers=num_workers,
                                  name="build_cache")
    images, labels = _as_pair(result, "build_cache")
    what = f"build_cache(dataset, <{len(indices)} indices>, num_workers={num_workers})"
    _require_dtypes(images, labels, what)
    wanted = torch.zeros(len(dataset), dtype=torch.bool)
    wanted[indices] = True
    _require_reads(dataset, wanted, what)
    expected_labels = dataset.labels()[indices]
    raw = dataset.expected_images(normalised=False)
    expected_images = raw[indices]
    require(tuple(images.shape) == tuple(expected_images.shape),
            f"{what}: the images tensor has the wrong shape", expected=tuple(expected_images.shape),
            got=tuple(images.shape), hint="one row of 64 pixels per index, nothing else")
    require(tuple(labels.shape) == tuple(expected_labels.shape),
            f"{what}: the labels tensor has the wrong shape", expected=tuple(expected_labels.shape),
            got=tuple(labels.shape), hint="one label per index")
    if not torch.equal(labels, expected_labels):
        in_index_order = dataset.labels()[sorted(indices)]
        if torch.equal(labels, in_index_order):
            raise CheckFailure(f"{what}: the rows follow the dataset's index order, not the order "
                               "of `indices`", hint="row j must be example indices[j]: keep the "
                               "order you were given, do not sort it")
        if torch.equal(torch.sort(labels).values, torch.sort(expected_labels).values):
            raise CheckFailure(f"{what}: the cache holds the right examples in another order",
                               hint="row j must be example indices[j]: read without shuffling")
        raise CheckFailure(f"{what}: the labels do not match the examples",
                           hint="take each label from the same item as its image")
    if torch.equal(images, normalise(expected_images)):
        raise CheckFailure(f"{what}: the cached images are already normalised",
                           hint="cache what the dataset gives with transform=None: the transform "
                           "runs later, on whole batches")
    require_tensor(images, expected_images, f"{what}: the images",
                   hint="store item['image'] as the dataset gives it with transform=None, "
                   "unchanged")
    return _require_readers(dataset, indices, num_workers, what)


def check_build_cache(build_cache, *, seed: int = 0) -> None:
    """build_cache(dataset, indices, num_workers): the examples `indices` names, each read once, by
    the workers, into images (float32, one row of 64 preprocessed pixels each) and labels (int64),
    row j being example indices[j]; nothing else read. Compared exactly."""
    size = 151 + 38 * (seed % 4)
    generator = torch.Generator().manual_seed(seed)
    count = 67 + 14 * (seed % 3)  # odd, and not a multiple of any batch size a learner would pick
    indices = torch.randperm(size, generator=generator)[:count].tolist()
    dataset = SlowDigits(size=size, latency_s=0.001, seed=seed)
    workers = _check_cache_once(build_cache, dataset, indices, WORKERS)
    # The other end of the argument: no workers at all, and a handful of indices.
    few = SlowDigits(size=40, latency_s=0, seed=seed)
    _check_cache_once(build_cache, few, [31, 2, 17, 5, 38], 0)
    passed(f"build_cache read each of the {count} requested examples once (and none of the other "
           f"{size - count}), in {workers} worker processes, into float32 images and int64 labels "
           "in the order of `indices`; with num_workers=0 it read in this process")


# ---- (b) transform_batch -------------------------------------------------------------------------


def _mirrored_up_down(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(-1, 8, 8).flip(1).reshape(-1, 64)


@one_thread
def check_transform_batch(transform_batch, *, seed: int = 0) -> None:
    """transform_batch(images) equals `mirror_and_normalise` applied to every row, exactly, in
    float32 and shape (N, 64), without a Python loop over the examples and without changing its
    input."""
    dataset = SlowDigits(latency_s=0, seed=seed)
    raw = dataset.expected_images(normalised=False)
    generator = torch.Generator().manual_seed(seed)
    for size in (1, 7, 300):
        images = raw[torch.randperm(len(raw), generator=generator)[:size]].clone()
        before = images.clone()
        result = call_learner(transform_batch, images, name="transform_batch")
        if result is None:
            raise CheckFailure("transform_batch returned None", hint="return the new tensor")
        require(isinstance(result, torch.Tensor), "transform_batch should return a tensor",
                got=type(result).__name__, hint="work on the tensor as a whole, and return it")
        if not torch.equal(images, before):
            raise CheckFailure("transform_batch changed the tensor it was given",
                               hint="an in-place operation (sub_, div_, -=) on a batch cut from a "
                               "cache can write through to the cache; return a new tensor")
        expected = torch.stack([mirror_and_normalise(image) for image in before])
        what = f"transform_batch's result for a batch of {size}"
        require(result.dtype == expected.dtype, f"{what} has the wrong dtype",
                expected=str(expected.dtype), got=str(result.dtype),
                hint="float32 in, float32 out: a float64 batch doubles the memory and does not "
                "match the model's weights")
        require(tuple(result.shape) == tuple(expected.shape), f"{what} has the wrong shape",
                expected=tuple(expected.shape), got=tuple(result.shape),
                hint="give the rows back as they came: (N, 64), flattened again after the flip")
        if not torch.equal(result, expected):
            hint = ("mirror each image left to right, then subtract PIXEL_MEAN and divide by "
                    "PIXEL_STD")
            if torch.equal(result, normalise(before)):
                hint = "the images are normalised but not mirrored"
            elif torch.allclose(result, normalise(_mirrored_up_down(before))):
                hint = ("that turns each image upside down: mirror left to right flips the "
                        "order within each row of 8, not the order of the rows")
            elif torch.allclose(result, normalise(before.flip(1))):
                hint = ("reversing all 64 values mirrors the image and turns it upside down: "
                        "flip within each row of 8 only")
            elif torch.allclose(result, normalise(before.reshape(-1, 8, 8).transpose(1, 2)
                                                  .reshape(-1, 64))):
                hint = "that transposes each image; a mirror flips the order within each row"
            elif abs(result.mean().item()) < 1e-3 and abs(result.std().item() - 1) < 0.05:
                hint = ("use the fixed PIXEL_MEAN and PIXEL_STD: statistics of the batch change "
                        "with the batch, so one example would get other values in another batch")
            require_tensor(result, expected, what, hint=hint)
    many = raw[:2048].clone() if len(raw) >= 2048 else raw.repeat(2, 1)[:2048].clone()
    # Against the cheapest loop over the examples there is, a single `normalise` call each: any
    # loop over the examples costs at least that much.
    _, _, speedup = best_ratio(
        lambda: torch.stack([normalise(image) for image in many]),
        lambda: call_learner(transform_batch, many, name="transform_batch"), repeats=3)
    require(speedup >= MIN_BATCHED_SPEEDUP, "transform_batch is no faster than one example at a "
            "time", expected=f"at least {MIN_BATCHED_SPEEDUP:g}x faster than a loop of `normalise` "
            "over the examples (best of 3 each)", got=f"{speedup:.1f}x",
            hint="no Python loop over the examples or the rows: a few tensor operations on the "
            "whole batch")
    passed(f"transform_batch equals mirror_and_normalise on every row, exactly, in float32, leaves "
           f"its input alone, and is {speedup:.0f}x faster than a loop of `normalise` over 2,048 "
           "examples")


# ---- (c) the pipeline that fills its cache in the first epoch ------------------------------------


def _expected_batches(dataset: SlowDigits, batch_size: int, seed: int, epochs: int):
    images, labels = dataset.expected_images(normalised=True), dataset.labels()
    batches = BatchSampler(make_sampler(dataset, seed), batch_size, drop_last=False)
    return [[(images[idx], labels[idx]) for idx in batches] for _ in range(epochs)]


def _one_epoch(pipeline, name: str):
    batches = call_learner(lambda: list(pipeline), name=name)
    epoch = []
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise CheckFailure("each batch should be a pair (images, labels)",
                               got=type(batch).__name__,
                               hint="yield images, labels for every batch")
        epoch.append(tuple(batch))
    return epoch


def _same(got, expected) -> bool:
    return len(got) == len(expected) and all(
        isinstance(gi, torch.Tensor) and isinstance(gl, torch.Tensor)
        and gi.dtype == ei.dtype and gl.dtype == el.dtype
        and gi.shape == ei.shape and gl.shape == el.shape
        and torch.equal(gl, el) and torch.equal(gi, ei)
        for (gi, gl), (ei, el) in zip(got, expected))


def _compare_epoch(epoch, want, number: int, first, other_seed, what: str) -> None:
    """Explain, in one line, the first way `epoch` (a list of batches) differs from `want`."""
    if _same(epoch, want):
        return
    for images, labels in epoch:
        _require_dtypes(images, labels, f"{what}, epoch {number}")
    sizes = [len(labels) for _, labels in epoch]
    want_sizes = [len(labels) for _, labels in want]
    count, want_count = sum(sizes), sum(want_sizes)
    labels = torch.cat([l.reshape(-1) for _, l in epoch]) if epoch else torch.tensor([])
    want_labels = torch.cat([l for _, l in want])
    if count < want_count:
        raise CheckFailure(f"{what}: epoch {number} yielded {count} examples instead of "
                           f"{want_count}", expected=f"batch sizes ...{want_sizes[-2:]}",
                           got=f"...{sizes[-2:]}",
                           hint="keep the last, partial batch (no drop_last) and every example")
    if count > want_count:
        raise CheckFailure(f"{what}: epoch {number} yielded {count} examples instead of "
                           f"{want_count}", hint="some examples come twice: each epoch is "
                           "one pass over the sampler's order, each example once")
    if sizes != want_sizes:
        raise CheckFailure(f"{what}: epoch {number} has batches of other sizes",
                           expected=f"{want_sizes[:3]}...", got=f"{sizes[:3]}...",
                           hint="use the batch_size you are given")
    if other_seed is not None and _same(epoch, other_seed):
        raise CheckFailure(f"{what}: epoch {number} follows the order of another seed",
                           hint="build the sampler from the seed you are given")
    if first is not None and _same(epoch, first):
        raise CheckFailure(f"{what}: epoch {number} repeats the order of epoch 1",
                           hint="create the sampler once, when the pipeline is built, and draw "
                           "every epoch from that same sampler: re-seeding each epoch replays "
                           "one order")
    if not torch.equal(torch.sort(labels).values, torch.sort(want_labels).values):
        raise CheckFailure(f"{what}: epoch {number} does not hold each example exactly once",
                           hint="every example once per epoch: sample without replacement, "
                           "as the sampler does")
    if torch.equal(labels, want_labels):
        raise CheckFailure(f"{what}: epoch {number} has the right labels in the right order, "
                           "but other images", hint="store in the cache what the dataset gives "
                           "with transform=None, at each example's own index, and transform "
                           "exactly once, on the way out")
    if number > 1:
        raise CheckFailure(f"{what}: epoch 1 matches, but epoch {number} does not",
                           hint="a cache filled in the order the examples arrived is not indexed "
                           "by example: write each batch at its own indices, and take every "
                           "epoch's order from the one sampler")
    raise CheckFailure(f"{what}: epoch {number} holds the same examples as the baseline in "
                       "another order",
                       hint="the order must come from make_sampler(dataset, seed), as in the "
                       "baseline; DataLoader(shuffle=True, generator=...) draws another one")


def _run_and_compare(make_pipeline, dataset, batch_size, seed, num_workers, what, expected, other):
    """Build the learner's pipeline and run EPOCHS epochs, checking what each one read and yielded
    against `expected` (and `other`, another seed's batches).

    Returns the number of worker processes that read the examples."""
    name = getattr(make_pipeline, "__name__", "your pipeline")
    dataset.reads.zero_()
    pipeline = call_learner(make_pipeline, dataset, batch_size, seed, num_workers=num_workers,
                            name=name)
    read_early = int(dataset.reads.sum())
    if read_early:
        raise CheckFailure(f"{what}: building the pipeline read {read_early} examples before the "
                           "first batch was asked for",
                           hint="build nothing up front: epoch 1 reads "
                           "each batch when it is asked for, and fills the cache as it goes")
    first, workers = None, 0
    for number in range(1, EPOCHS + 1):
        epoch = _one_epoch(pipeline, name)
        if number == 1:
            _require_reads(dataset, torch.ones(len(dataset), dtype=torch.bool),
                           f"{what}: epoch 1")
            workers = _require_readers(dataset, range(len(dataset)), num_workers,
                                       f"{what}: epoch 1")
        else:
            again = int(dataset.reads.sum()) - len(dataset)
            if again:
                raise CheckFailure(f"{what}: epoch {number} read the dataset again ({again} reads)",
                                   hint="after epoch 1 every example is in the cache: cut later "
                                   "batches from it, and read nothing")
        _compare_epoch(epoch, expected[number - 1], number, first, other[number - 1], what)
        first = first or epoch
    return workers


def check_fast_pipeline(make_fast_pipeline, *, seed: int = 0) -> None:
    """make_fast_pipeline(dataset, batch_size, seed, num_workers): the baseline's batches, exactly,
    in the baseline's order, for every epoch and seed; nothing read before the first batch, each
    example read once in epoch 1 (by the workers), nothing read after; and, run without workers,
    at least MIN_SPEEDUP times faster than the baseline over EPOCHS epochs, start-up included."""
    size, batch_size = 150 + 17 * (seed % 3), 32  # the last batch of each epoch is partial
    dataset = SlowDigits(size=size, latency_s=0.0005, transform=mirror_and_normalise, seed=seed)
    with warnings.catch_warnings():
        _quiet_workers()
        with _workers_stopped_on_exit():
            workers = _run_and_compare(
                make_fast_pipeline, dataset, batch_size, seed, WORKERS,
                f"with seed {seed} and {WORKERS} workers",
                _expected_batches(dataset, batch_size, seed, EPOCHS),
                _expected_batches(dataset, batch_size, seed + 1, EPOCHS))
        # The timed runs: another seed and another batch size (neither may be hard-coded), no
        # workers, the baseline on a dataset of its own so that the read counts stay apart.
        quick_seed, quick_batch = seed + 7, 50
        quick = SlowDigits(size=120, latency_s=0.005, transform=mirror_and_normalise, seed=seed)
        slow_side = SlowDigits(size=120, latency_s=0.005, transform=mirror_and_normalise, seed=seed)
        what = f"with seed {quick_seed}, batches of {quick_batch} and num_workers=0"
        expected = _expected_batches(quick, quick_batch, quick_seed, EPOCHS)
        other = _expected_batches(quick, quick_batch, seed, EPOCHS)

        def learner():
            _run_and_compare(make_fast_pipeline, quick, quick_batch, quick_seed, 0, what,
                             expected, other)

        def baseline():
            pipeline = BaselinePipeline(slow_side, quick_batch, quick_seed)
            for _ in range(EPOCHS):
                for _ in pipeline:
                    pass

        baseline_s, learner_s, speedup = best_ratio(baseline, learner, repeats=2)
    require(speedup >= MIN_SPEEDUP, "the pipeline is not fast enough",
            expected=f"at least {MIN_SPEEDUP:g}x the baseline's speed over {EPOCHS} epochs, "
            "without workers, start-up included (best of 2 runs each)",
            got=f"{speedup:.1f}x (baseline {baseline_s:.2f} s, yours {learner_s:.2f} s)",
            hint="each example's latency is paid once, in epoch 1: after that a batch is a few "
            "tensor operations on the cache, with nothing that waits")
    name = getattr(make_fast_pipeline, "__name__", "your pipeline")
    passed(f"{name} yields the baseline's batches exactly, in the same order, over {EPOCHS} epochs "
           f"for two seeds and two batch sizes; epoch 1 read each example once in {workers} worker "
           f"processes, later epochs read nothing; {speedup:.1f}x faster than the baseline without "
           f"workers ({baseline_s:.2f} s against {learner_s:.2f} s)")
