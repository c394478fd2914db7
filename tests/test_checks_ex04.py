"""The checks of exercise 04 pass correct answers, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake.

Seeds: each check takes a `seed` that changes its dataset, its indices and its shuffles. The normal
run uses seeds 0 and 1; `CHECK_SEEDS=16` runs seeds 0..15.

Corpus sizes (wrong answers per check, before -> after): (a) build_cache 7 -> 16, (b) the batched
transform 6 -> 16, (c) the pipeline 11 -> 18. Blind-spot kinds with at least three each:
dtypes (float/int32 labels, float64/float16 images), reads counted and checked (examples read that
were not asked for, read twice, read before the first batch, read again in later epochs),
the num_workers=0 edge (ignored, hard-coded, persistent workers that crash without workers),
behaviour across epochs (one order every epoch, a cache indexed by arrival, a cache normalised in
place), and timing in (b) (three loops over the examples). The timing of (c) has one: with every
read observed, a pipeline can only be slow by waiting for something else, here a wait per batch.

Measured on two shared cores under heavy load (load averages 10 to 23, other test suites running):
every test here passed with the default two seeds; the reference of (c) ran 2.8-2.9x faster than
the baseline without workers (bar 2x) under fork, spawn and forkserver, and its checks took 7 s
under fork and 25-30 s under spawn or forkserver, where each worker first imports torch. The
whole file took about 8 minutes under that load, two thirds of it in the spawn and forkserver
runs and the timed (c) answers. With CHECK_SEEDS=16 (same load): the references of (a), (b) and
(c) passed on all 16 seeds; every wrong answer of (b), and the seed-sensitive ones of (a) and (c)
(a single batch, num_workers ignored or hard-coded, the wait per batch against the timing bar),
failed on all 16 with their hints. The other wrong answers of (a) and (c) fail on content, which
no seed makes easier, and were run on seeds 0 and 1.
"""

import multiprocessing
import time

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Subset

from check_support import SEEDS, fails_with, machine_loaded, passes, stub
from course_lib.checks._core import NotImplementedYet
from course_lib.checks.ex04 import (
    check_build_cache,
    check_fast_pipeline,
    check_transform_batch,
    hint,
)
from course_lib.pipelines import (
    PIXEL_MEAN,
    PIXEL_STD,
    make_sampler,
    mirror_and_normalise,
    normalise,
)


# ---- reference answers ---------------------------------------------------------------------------


def build_cache(dataset, indices, num_workers=2):
    source = Subset(dataset.with_options(transform=None, keep_metadata=False), indices)
    images, labels = [], []
    for batch in DataLoader(source, batch_size=16, num_workers=num_workers):
        images.append(batch["image"])
        labels.append(batch["label"])
    return torch.cat(images), torch.cat(labels)


def transform_batch(images):
    mirrored = images.reshape(-1, 8, 8).flip(2).reshape(-1, 64)
    return (mirrored - PIXEL_MEAN) / PIXEL_STD


class FastPipeline:
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        self.source = dataset.with_options(transform=None, keep_metadata=False)
        self.batches = BatchSampler(make_sampler(dataset, seed), batch_size, drop_last=False)
        self.num_workers = num_workers
        self.images = self.labels = None

    def first_epoch(self):
        batches = list(self.batches)
        images = torch.empty(len(self.source), 64)
        labels = torch.empty(len(self.source), dtype=torch.int64)
        loader = DataLoader(self.source, batch_sampler=batches, num_workers=self.num_workers)
        for indices, batch in zip(batches, loader):
            images[indices], labels[indices] = batch["image"], batch["label"]
            yield batch["image"], batch["label"]
        self.images, self.labels = images, labels

    def __iter__(self):
        if self.images is None:
            for images, labels in self.first_epoch():
                yield transform_batch(images), labels
            return
        for indices in self.batches:
            yield transform_batch(self.images[indices]), self.labels[indices]


# ---- (a) build_cache -----------------------------------------------------------------------------


def test_build_cache_check_passes_the_reference(capsys):
    passes(check_build_cache, build_cache, capsys)


def test_build_cache_check_passes_a_sampler_of_indices_and_items_collated_by_hand(capsys):
    def by_items(dataset, indices, num_workers=2):
        source = dataset.with_options(transform=None, keep_metadata=False)
        loader = DataLoader(source, batch_size=8, sampler=indices, num_workers=num_workers,
                            collate_fn=list)
        items = [item for batch in loader for item in batch]
        return torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])

    passes(check_build_cache, by_items, capsys)


def test_build_cache_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_build_cache(stub)


def _plain(dataset):
    return dataset.with_options(transform=None, keep_metadata=False)


def _cat(batches):
    batches = list(batches)  # one pass over the loader
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])


def cache_everything_then_select(dataset, indices, num_workers=2):
    images, labels = _cat(DataLoader(_plain(dataset), batch_size=16, num_workers=num_workers))
    return images[indices], labels[indices]


def cache_sorted(dataset, indices, num_workers=2):
    return _cat(DataLoader(Subset(_plain(dataset), sorted(indices)), batch_size=16,
                           num_workers=num_workers))


def cache_shuffled(dataset, indices, num_workers=2):
    return _cat(DataLoader(Subset(_plain(dataset), indices), batch_size=16, shuffle=True,
                           num_workers=num_workers))


def cache_drop_last(dataset, indices, num_workers=2):
    return _cat(DataLoader(Subset(_plain(dataset), indices), batch_size=16, drop_last=True,
                           num_workers=num_workers))


def cache_reads_twice(dataset, indices, num_workers=2):
    loader = DataLoader(Subset(_plain(dataset), indices), batch_size=16, num_workers=num_workers)
    images = torch.cat([b["image"] for b in loader])
    labels = torch.cat([b["label"] for b in loader])  # a second pass over the slow reads
    return images, labels


def cache_normalised(dataset, indices, num_workers=2):
    source = dataset.with_options(keep_metadata=False)  # keeps the per-example transform
    return _cat(DataLoader(Subset(source, indices), batch_size=16, num_workers=num_workers))


def cache_float_labels(dataset, indices, num_workers=2):
    images, labels = build_cache(dataset, indices, num_workers)
    return images, labels.float()


def cache_int32_labels(dataset, indices, num_workers=2):
    images, labels = build_cache(dataset, indices, num_workers)
    return images, torch.tensor(labels.tolist(), dtype=torch.int32)


def cache_float64_images(dataset, indices, num_workers=2):
    images, labels = build_cache(dataset, indices, num_workers)
    return torch.from_numpy(images.numpy().astype(np.float64)), labels


def cache_ignores_num_workers(dataset, indices, num_workers=2):
    return build_cache(dataset, indices, 0)


def cache_hard_codes_workers(dataset, indices, num_workers=2):
    return build_cache(dataset, indices, 2)


def cache_persistent_workers(dataset, indices, num_workers=2):
    loader = DataLoader(Subset(_plain(dataset), indices), batch_size=16, num_workers=num_workers,
                        persistent_workers=True)  # raises with num_workers=0
    return _cat(loader)


def cache_by_hand(dataset, indices, num_workers=2):
    source = _plain(dataset)
    items = [source[i] for i in indices]  # in this process: the workers never run
    return torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])


def cache_one_batch(dataset, indices, num_workers=2):
    batch = next(iter(DataLoader(Subset(_plain(dataset), indices), batch_size=len(indices),
                                 num_workers=num_workers)))
    return batch["image"], batch["label"]


def cache_lists(dataset, indices, num_workers=2):
    images, labels = build_cache(dataset, indices, num_workers)
    return images.tolist(), labels.tolist()


def cache_keeps_the_metadata_and_unnormalises(dataset, indices, num_workers=2):
    """Reads through the full dataset, then undoes the normalisation: float rounding shows."""
    batches = list(DataLoader(Subset(dataset, indices), batch_size=16, num_workers=num_workers))
    images = torch.cat([b["image"] for b in batches]) * PIXEL_STD + PIXEL_MEAN
    return images, torch.cat([b["label"] for b in batches])


@pytest.mark.parametrize("answer, hint_text, what", [
    (cache_everything_then_select, "not the whole dataset", "not asked for"),
    (cache_sorted, "do not sort", "not the order of `indices`"),
    (cache_shuffled, "read without shuffling", "another order"),
    (cache_drop_last, "no drop_last", "never read"),
    (cache_reads_twice, "read each example once", "more than once"),
    (cache_normalised, "transform=None", "already normalised"),
    (cache_float_labels, "class indices", "wrong dtype"),
    (cache_int32_labels, "class indices", "wrong dtype"),
    (cache_float64_images, "float64 doubles", "wrong dtype"),
    (cache_ignores_num_workers, "let a DataLoader with num_workers", "notebook's own process"),
    (cache_hard_codes_workers, "pass num_workers through", "with num_workers=0"),
    (cache_persistent_workers, "run your cell on its own", "raised ValueError"),
    (cache_by_hand, "let a DataLoader with num_workers", "notebook's own process"),
    (cache_one_batch, "batches small enough", "a single worker process"),
    (cache_lists, "torch.cat", "not a tensor"),
    (cache_keeps_the_metadata_and_unnormalises, "unchanged", "does not match the reference"),
])
def test_build_cache_check_rejects(answer, hint_text, what):
    fails_with(check_build_cache, answer, hint_text=hint_text, what=what)


# ---- (b) transform_batch -------------------------------------------------------------------------


def test_transform_batch_check_passes_the_reference_and_another_spelling(capsys):
    passes(check_transform_batch, transform_batch, capsys)
    passes(check_transform_batch,
           lambda images: normalise(images.view(len(images), 8, 8).flip(-1).flatten(1)), capsys)


def test_transform_batch_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_transform_batch(stub)


def _rows(images):
    return images.reshape(-1, 8, 8)


def not_mirrored(images):
    return (images - PIXEL_MEAN) / PIXEL_STD


def upside_down(images):
    return (_rows(images).flip(1).reshape(-1, 64) - PIXEL_MEAN) / PIXEL_STD


def reversed_whole(images):
    return (images.flip(1) - PIXEL_MEAN) / PIXEL_STD


def transposed(images):
    return (_rows(images).transpose(1, 2).reshape(-1, 64) - PIXEL_MEAN) / PIXEL_STD


def batch_statistics(images):
    mirrored = _rows(images).flip(2).reshape(-1, 64)
    return (mirrored - mirrored.mean()) / mirrored.std()


def in_place(images):
    images.sub_(PIXEL_MEAN).div_(PIXEL_STD)
    return _rows(images).flip(2).reshape(-1, 64)


def divides_first(images):
    return _rows(images).flip(2).reshape(-1, 64) / PIXEL_STD - PIXEL_MEAN


def loops_over_examples(images):
    return torch.stack([mirror_and_normalise(image) for image in images])


def loops_over_rows(images):
    rows = [_rows(images)[:, row].flip(1) for row in range(8)]
    return (torch.cat(rows, dim=1) - PIXEL_MEAN) / PIXEL_STD


def loops_over_pixels(images):
    out = torch.empty_like(images)
    for col in range(8):
        out[:, col::8] = images[:, 7 - col::8]
    return torch.stack([(row - PIXEL_MEAN) / PIXEL_STD for row in out])


def batched_code_one_example_at_a_time(images):
    return torch.cat([transform_batch(image[None]) for image in images])


def keeps_8_by_8(images):
    return (_rows(images).flip(2) - PIXEL_MEAN) / PIXEL_STD


def in_float64(images):
    return transform_batch(images.double())


def in_float16(images):
    return transform_batch(images).half()


def through_numpy_float64(images):
    mirrored = images.numpy().reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64).astype(np.float64)
    return torch.from_numpy((mirrored - PIXEL_MEAN) / PIXEL_STD)


def forgets_to_return(images):
    transform_batch(images)


def numpy_result(images):
    return transform_batch(images).numpy()


@pytest.mark.parametrize("answer, hint_text, what", [
    (not_mirrored, "normalised but not mirrored", "does not match"),
    (upside_down, "upside down", "does not match"),
    (reversed_whole, "reversing all 64 values", "does not match"),
    (transposed, "transposes", "does not match"),
    (batch_statistics, "statistics of the batch change", "does not match"),
    (in_place, "return a new tensor", "changed the tensor"),
    (divides_first, "then subtract PIXEL_MEAN", "does not match"),
    (loops_over_examples, "no Python loop", "no faster"),
    (loops_over_pixels, "no Python loop", "no faster"),
    (batched_code_one_example_at_a_time, "no Python loop", "no faster"),
    (keeps_8_by_8, "flattened again", "wrong shape"),
    (in_float64, "float32 in, float32 out", "wrong dtype"),
    (in_float16, "float32 in, float32 out", "wrong dtype"),
    (through_numpy_float64, "float32 in, float32 out", "wrong dtype"),
    (forgets_to_return, "return the new tensor", "returned None"),
    (numpy_result, "work on the tensor", "should return a tensor"),
])
def test_transform_batch_check_rejects(answer, hint_text, what):
    fails_with(check_transform_batch, answer, hint_text=hint_text, what=what)


def test_a_loop_over_the_8_rows_is_batched_enough(capsys):
    # Eight tensor operations on the whole batch, not one per example: fast, and correct.
    passes(check_transform_batch, loops_over_rows, capsys)


# ---- (c) the pipeline that fills its cache in the first epoch ------------------------------------


def test_fast_pipeline_check_passes_the_reference(capsys):
    passes(check_fast_pipeline, FastPipeline, capsys)


def test_fast_pipeline_check_passes_a_generator_function(capsys):
    def fast_pipeline(dataset, batch_size, seed, num_workers=2):
        source = _plain(dataset)
        sampler = make_sampler(dataset, seed)
        cache = {}

        class Epochs:
            def __iter__(self):
                batches = list(BatchSampler(sampler, batch_size, drop_last=False))
                if not cache:
                    images = torch.zeros(len(source), 64)
                    labels = torch.zeros(len(source), dtype=torch.long)
                    loader = DataLoader(source, batch_sampler=batches, num_workers=num_workers)
                    for indices, batch in zip(batches, loader):
                        images[indices] = batch["image"]
                        labels[indices] = batch["label"]
                        yield transform_batch(batch["image"]), batch["label"]
                    cache.update(images=images, labels=labels)
                    return
                for indices in batches:
                    yield transform_batch(cache["images"][indices]), cache["labels"][indices]

        return Epochs()

    passes(check_fast_pipeline, fast_pipeline, capsys)


def test_fast_pipeline_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_fast_pipeline(stub)


class BuildsUpFront(FastPipeline):
    """The lesson's cache: every example read when the pipeline is built."""

    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, num_workers)
        everything = list(range(len(dataset)))
        self.images, self.labels = build_cache(dataset, everything, num_workers)


class ReadsEveryEpoch(FastPipeline):
    """Workers kept alive, prefetching, in the sampler's order: fast, and no cache at all."""

    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, num_workers)
        self.loader = DataLoader(self.source, batch_sampler=self.batches, num_workers=num_workers)

    def __iter__(self):
        for batch in self.loader:
            yield transform_batch(batch["image"]), batch["label"]


class WithReplacement(FastPipeline):
    """Epoch 1 draws with replacement: some examples are read twice, others never."""

    def first_epoch(self):
        generator = torch.Generator().manual_seed(0)
        n = len(self.source)
        batches = [torch.randint(0, n, (len(b),), generator=generator).tolist()
                   for b in self.batches]
        loader = DataLoader(self.source, batch_sampler=batches, num_workers=self.num_workers)
        for batch in loader:
            yield batch["image"], batch["label"]


class CacheInArrivalOrder(FastPipeline):
    """The lesson's quieter bug: rows appended as the batches arrive, then indexed by example."""

    def first_epoch(self):
        loader = DataLoader(self.source, batch_sampler=self.batches, num_workers=self.num_workers)
        images, labels = [], []
        for batch in loader:
            images.append(batch["image"])
            labels.append(batch["label"])
            yield batch["image"], batch["label"]
        self.images, self.labels = torch.cat(images), torch.cat(labels)


class ReseedsEveryEpoch(FastPipeline):
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, num_workers)
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def __iter__(self):
        self.batches = BatchSampler(make_sampler(self.dataset, self.seed), self.batch_size, False)
        return super().__iter__()


class NormalisesTheCacheInPlace(FastPipeline):
    def __iter__(self):
        if self.images is None:
            yield from super().__iter__()
            return
        for indices in self.batches:
            self.images[indices] = transform_batch(self.images[indices])  # writes back
            yield self.images[indices], self.labels[indices]


def own_shuffle(dataset, batch_size, seed, num_workers=2):
    """The DataLoader's own seeded shuffle: the same examples in another order."""
    pipeline = FastPipeline(dataset, batch_size, seed, num_workers)
    loader = DataLoader(range(len(dataset)), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    pipeline.batches = [indices.tolist() for indices in loader]
    return pipeline


class DropsLastBatch(FastPipeline):
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, num_workers)
        self.batches = BatchSampler(make_sampler(dataset, seed), batch_size, drop_last=True)


class AnotherSeed(FastPipeline):
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed + 1, num_workers)


class HardCodedBatchSize(FastPipeline):
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, 32, seed, num_workers)


class FloatLabelCache(FastPipeline):
    """The label buffer made with torch.zeros(n): float32, seen from epoch 2."""

    def first_epoch(self):
        batches = list(self.batches)
        images, labels = torch.zeros(len(self.source), 64), torch.zeros(len(self.source))
        loader = DataLoader(self.source, batch_sampler=batches, num_workers=self.num_workers)
        for indices, batch in zip(batches, loader):
            images[indices], labels[indices] = batch["image"], batch["label"].float()
            yield batch["image"], batch["label"]
        self.images, self.labels = images, labels


class Int32LabelCache(FastPipeline):
    def first_epoch(self):
        yield from super().first_epoch()
        self.labels = self.labels.int()


class Float64ImageCache(FastPipeline):
    def first_epoch(self):
        yield from super().first_epoch()
        self.images = self.images.double()


class IgnoresNumWorkers(FastPipeline):
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, 0)


class HardCodesWorkers(FastPipeline):
    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, 2)


class PersistentWorkers(FastPipeline):
    def first_epoch(self):
        DataLoader(self.source, batch_size=8, num_workers=self.num_workers,
                   persistent_workers=True)  # raises with num_workers=0
        yield from super().first_epoch()


class NormalisesTwice(FastPipeline):
    """Caches what the dataset gives with its transform, then transforms again."""

    def __init__(self, dataset, batch_size, seed, num_workers=2):
        super().__init__(dataset, batch_size, seed, num_workers)
        self.source = dataset.with_options(keep_metadata=False)


class WaitsEveryBatch(FastPipeline):
    """A 100 ms wait per batch, standing for any per-step wait (a remote log call every step)."""

    def __iter__(self):
        for batch in super().__iter__():
            time.sleep(0.1)
            yield batch


@pytest.mark.parametrize("answer, hint_text, what", [
    (BuildsUpFront, "build nothing up front", "before the first batch"),
    (ReadsEveryEpoch, "read nothing", "epoch 2 read the dataset again"),
    (WithReplacement, "read each example once", "more than once"),
    (CacheInArrivalOrder, "write each batch at its own indices", "epoch 2 does not"),
    (ReseedsEveryEpoch, "re-seeding each epoch", "repeats the order of epoch 1"),
    (NormalisesTheCacheInPlace, "transform exactly once", "other images"),
    (own_shuffle, "DataLoader(shuffle=True, generator=...)", "another order"),
    (DropsLastBatch, "no drop_last", "never read"),
    (AnotherSeed, "the seed you are given", "order of another seed"),
    (HardCodedBatchSize, "the batch_size you are given", "other sizes"),
    (FloatLabelCache, "torch.zeros(n)", "wrong dtype"),
    (Int32LabelCache, "class indices", "wrong dtype"),
    (Float64ImageCache, "float64 doubles", "wrong dtype"),
    (IgnoresNumWorkers, "let a DataLoader with num_workers", "notebook's own process"),
    (HardCodesWorkers, "pass num_workers through", "with num_workers=0"),
    (PersistentWorkers, "run your cell on its own", "raised ValueError"),
    (NormalisesTwice, "transform exactly once", "other images"),
    (WaitsEveryBatch, "nothing that waits", "not fast enough"),
])
def test_fast_pipeline_check_rejects(answer, hint_text, what):
    fails_with(check_fast_pipeline, answer, hint_text=hint_text, what=what)


# ---- the timing bars hold on a busy machine and under every start method -------------------------


def test_the_timed_references_pass_with_the_machine_loaded(capsys):
    with machine_loaded():
        check_transform_batch(transform_batch)
        check_fast_pipeline(FastPipeline)
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_the_references_pass_when_workers_start_with(method, capsys):
    # macOS and Windows spawn DataLoader workers; Python 3.14 on Linux uses forkserver.
    before = multiprocessing.get_start_method()
    multiprocessing.set_start_method(method, force=True)
    try:
        check_build_cache(build_cache)
        check_fast_pipeline(FastPipeline)
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert capsys.readouterr().out.count("✓") == 2


def test_the_checks_stop_the_workers_they_started():
    # Persistent workers that outlived a check would be stopped later by the garbage collector,
    # with a 5 s timeout per worker, in the middle of whatever runs then.
    class Persistent(ReadsEveryEpoch):
        def __init__(self, dataset, batch_size, seed, num_workers=2):
            super().__init__(dataset, batch_size, seed, num_workers)
            self.loader = DataLoader(self.source, batch_sampler=self.batches,
                                     num_workers=num_workers, persistent_workers=True)

    assert not multiprocessing.active_children()
    fails_with(check_fast_pipeline, Persistent, hint_text="read nothing")
    assert not multiprocessing.active_children()


def test_every_question_has_a_hint(capsys):
    assert hint.questions == ("a", "b", "c")
    hint("c")
    assert "batch_sampler" in capsys.readouterr().out
