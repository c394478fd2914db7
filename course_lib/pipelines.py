"""A deliberately slow dataset and the tools to time an input pipeline (introduced in lesson 04).

`SlowDigits` is the digits training set dressed up with the four costs that make real input
pipelines slow:

- every read waits `latency_s`, as if each example sat on another machine (a network file
  system, an object store);
- every read redoes an expensive, deterministic preprocessing step (`preprocess`, a blur written
  in plain Python, standing for decoding or resizing) that could have been done once;
- every example carries metadata that training never uses (a file name, a checksum and the
  original "scan", 16 KB of bytes) and that still has to be built, collated and, with worker
  processes, pickled from worker to trainer;
- the normalisation runs as a per-sample Python transform (`normalise`), one call per example.

It lives in this module, not in a notebook cell, because DataLoader worker processes must be
able to import it: on platforms that start workers with "spawn" (macOS, Windows) a class
defined in a notebook cannot be found by the worker.

The timing helpers measure a pipeline inside a training loop: per step, the time spent waiting
for the next batch and the time spent computing, and examples per second.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset, RandomSampler

from course_lib.data import load_digits_splits

# The normalisation constants (the mean and standard deviation of the preprocessed training
# pixels, rounded): fixed numbers, so that normalising one example or a whole batch gives the
# same values.
PIXEL_MEAN = 0.31
PIXEL_STD = 0.29
# Size of the unused "scan" each example carries: big enough that collating and pickling it
# shows up in a profile, small enough to keep the lesson fast.
SCAN_BYTES = 16 * 1024


def preprocess(raw: np.ndarray) -> torch.Tensor:
    """Scale an 8x8 image of values 0..16 to [0, 1] and blur it with a 3x3 box filter.

    Written as plain Python loops on purpose: it stands for an expensive but deterministic step
    (decoding, resizing) that gives the same result every epoch, so it can be done once.
    """
    pixels = [[float(raw[row * 8 + col]) / 16.0 for col in range(8)] for row in range(8)]
    out = []
    for row in range(8):
        for col in range(8):
            total, count = 0.0, 0
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    r, c = row + dr, col + dc
                    if 0 <= r < 8 and 0 <= c < 8:
                        total += pixels[r][c]
                        count += 1
            out.append(0.5 * pixels[row][col] + 0.5 * total / count)
    return torch.tensor(out, dtype=torch.float32)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """The per-sample transform: subtract the pixel mean and divide by the pixel standard deviation."""
    return (image - PIXEL_MEAN) / PIXEL_STD


def mirror_and_normalise(image: torch.Tensor) -> torch.Tensor:
    """Another per-sample transform (exercise 04): mirror the 8x8 image left to right, then
    `normalise` it. Written one row of pixels at a time, as per-sample code often is."""
    rows = [image[row * 8:(row + 1) * 8].flip(0) for row in range(8)]
    return normalise(torch.cat(rows))


def _metadata(index: int, raw: np.ndarray) -> dict:
    data = raw.astype(np.uint8).tobytes()
    return {
        "source": f"scans/shard-{index % 16:02d}/digit-{index:05d}.png",
        "sha256": hashlib.sha256(data).hexdigest(),
        "scan": data * (SCAN_BYTES // len(data)),
    }


class SlowDigits(Dataset):
    """The digits training split, slow to read the way real data is slow (see the module docstring).

    Each item is a dict: ``"image"`` (64 float32 values, preprocessed, then passed through
    `transform` if one is given), ``"label"`` (an int64 tensor) and, when ``keep_metadata``,
    ``"metadata"`` (a dict training never uses).

    ``reads`` counts how often each example was read and ``reader_pids`` holds the id of the
    process that read it last, both in shared memory, so that reads made in DataLoader worker
    processes are seen from the training process too.
    """

    def __init__(
        self,
        size: int | None = None,
        latency_s: float = 0.005,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = normalise,
        keep_metadata: bool = True,
        seed: int = 0,
    ):
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        splits = load_digits_splits(seed=seed)
        # Back to the raw values 0..16, as they would be stored.
        raw = torch.round(splits.train.tensors[0] * 16).to(torch.uint8).numpy()
        labels = splits.train.tensors[1]
        if size is not None:
            if not 0 < size <= len(labels):
                raise ValueError(f"size must be in 1..{len(labels)}, got {size}")
            raw, labels = raw[:size], labels[:size]
        self._raw = raw
        self._labels = labels
        self.latency_s = latency_s
        self.transform = transform
        self.keep_metadata = keep_metadata
        self.reads = torch.zeros(len(labels), dtype=torch.int32).share_memory_()
        self.reader_pids = torch.zeros(len(labels), dtype=torch.int64).share_memory_()

    def with_options(self, *, latency_s: float | None = None, transform=..., keep_metadata=None):
        """The same examples with some options changed; the read counter is shared.

        ``transform=None`` gives the preprocessed images without normalisation;
        ``keep_metadata=False`` drops the metadata at the source.
        """
        other = object.__new__(SlowDigits)
        other.__dict__.update(self.__dict__)
        if latency_s is not None:
            other.latency_s = latency_s
        if transform is not ...:
            other.transform = transform
        if keep_metadata is not None:
            other.keep_metadata = keep_metadata
        return other

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self._labels):
            raise IndexError(f"index {index} out of range for {len(self._labels)} examples")
        self.reads[index] += 1
        self.reader_pids[index] = os.getpid()
        # Each cost is a labelled region, so that torch.profiler's table names the causes.
        with record_function("remote read"):
            if self.latency_s:
                time.sleep(self.latency_s)  # the round trip to the machine that holds the data
            raw = self._raw[index]
        with record_function("preprocess"):
            item = {"image": preprocess(raw), "label": self._labels[index].clone()}
        if self.keep_metadata:
            with record_function("metadata"):
                item["metadata"] = _metadata(index, raw)
        if self.transform is not None:
            with record_function("per-sample transform"):
                item["image"] = self.transform(item["image"])
        return item

    def expected_images(self, normalised: bool = True) -> torch.Tensor:
        """Every example's image, computed here without the latency: what a pipeline must yield.

        With ``normalised=True`` each image goes through the dataset's `transform` (`normalise`
        unless another was given), one example at a time, as `__getitem__` does; with
        ``normalised=False`` the images are only preprocessed.
        """
        images = torch.stack([preprocess(raw) for raw in self._raw])
        if not normalised or self.transform is None:
            return images
        return torch.stack([self.transform(image) for image in images])

    def labels(self) -> torch.Tensor:
        """Every example's label, in index order."""
        return self._labels.clone()


def make_sampler(dataset: Dataset, seed: int) -> RandomSampler:
    """The sampler that fixes the order of the examples: one shuffle per epoch, seeded once.

    Iterate the same sampler object every epoch: its generator moves on, so each epoch has its
    own order, and two pipelines with samplers made from the same seed see the same orders.
    """
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))


class BaselinePipeline:
    """The slow pipeline as most first versions are written: a DataLoader with no workers.

    Each iteration is one epoch of ``(images, labels)`` batches, in the order of
    ``make_sampler(dataset, seed)``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, **loader_options):
        self.loader = DataLoader(dataset, batch_size=batch_size,
                                 sampler=make_sampler(dataset, seed), **loader_options)

    def __iter__(self):
        for batch in self.loader:
            yield batch["image"], batch["label"]

    def __len__(self) -> int:
        return len(self.loader)


# ---- timing --------------------------------------------------------------------------------------


@dataclass
class PipelineTiming:
    """What one timed run measured. Times are in seconds."""

    total_s: float
    examples: int
    wait_s: list[float] = field(default_factory=list)  # per step: waiting for the next batch
    compute_s: list[float] = field(default_factory=list)  # per step: the training step
    build_s: float = 0.0  # building the pipeline (a cache is built here)
    epoch_s: list[float] = field(default_factory=list)  # per epoch (workers start in the first)
    epoch_examples: list[int] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        """Over the whole run, building and start-up included."""
        return self.examples / self.total_s

    @property
    def steady_examples_per_second(self) -> float:
        """Over the epochs after the first: what the pipeline sustains once it is running."""
        return sum(self.epoch_examples[1:]) / sum(self.epoch_s[1:])

    @property
    def waiting_share(self) -> float:
        """The share of the loop's time spent waiting for data."""
        return sum(self.wait_s) / self.total_s


def time_pipeline(
    make_pipeline: Callable[[], Iterable],
    step: Callable[[torch.Tensor, torch.Tensor], object] | None = None,
    epochs: int = 1,
) -> PipelineTiming:
    """Build a pipeline, run `step(images, labels)` on every batch for `epochs`, and time it all.

    The clock starts before `make_pipeline()` is called, so worker start-up and any one-off
    preprocessing count in `total_s`; `epoch_s` splits the run by epoch, so that what a pipeline
    sustains once it is running can be told apart from what it costs to start.
    """
    wait_s, compute_s, epoch_s, epoch_examples = [], [], [], []
    start = time.perf_counter()
    pipeline = make_pipeline()
    build_s = time.perf_counter() - start
    for _ in range(epochs):
        epoch_start, examples = time.perf_counter(), 0
        batches = iter(pipeline)
        while True:
            before = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            fetched = time.perf_counter()
            if step is not None:
                step(images, labels)
            wait_s.append(fetched - before)
            compute_s.append(time.perf_counter() - fetched)
            examples += len(labels)
        epoch_s.append(time.perf_counter() - epoch_start)
        epoch_examples.append(examples)
    return PipelineTiming(time.perf_counter() - start, sum(epoch_examples), wait_s, compute_s,
                          build_s, epoch_s, epoch_examples)


def collect_batches(pipeline: Iterable, epochs: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (images, labels) batch of `epochs` epochs, in order."""
    return [(images, labels) for _ in range(epochs) for images, labels in pipeline]


def first_difference(got: list, expected: list, atol: float = 1e-5) -> str | None:
    """Where two lists of (images, labels) batches first differ, in words; None if they agree."""
    for number, ((images, labels), (want_images, want_labels)) in enumerate(zip(got, expected)):
        if tuple(labels.shape) != tuple(want_labels.shape):
            return f"batch {number} holds {len(labels)} examples instead of {len(want_labels)}"
        if not torch.equal(labels, want_labels) or not torch.allclose(
                images, want_images, atol=atol, rtol=0):
            return f"batch {number} holds other examples, or the same ones in another order"
    if len(got) != len(expected):
        return f"{len(got)} batches instead of {len(expected)}"
    return None


# ---- a simulated asynchronous device -------------------------------------------------------------


class SimulatedAsyncDevice:
    """Runs submitted work in order on a background thread, the way a GPU runs queued kernels.

    `submit` returns at once with a `Future`, so the Python loop can go on preparing the next
    batch while the "device" works; reading the result (`future.result()`, the equivalent of
    `loss.item()`) waits for the device to finish everything queued before it. At most
    `max_queued` pieces of work may wait, as a GPU's launch queue is finite.
    This is a teaching stand-in: `device_time_s` of sleep stands for the time kernels run.
    """

    def __init__(self, device_time_s: float, max_queued: int = 2):
        self.device_time_s = device_time_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            fn, args, future = work
            try:
                result = fn(*args)
                time.sleep(self.device_time_s)
                future.set_result(result)
            except Exception as error:  # noqa: BLE001 - handed to whoever reads the result
                future.set_exception(error)

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        self._queue.put((fn, args, future))  # blocks when the queue is full
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
