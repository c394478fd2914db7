"""course_lib.pipelines: the slow dataset of lesson 04, its reference order, and the timing helpers."""

import os
import time

import pytest
import torch
from torch.utils.data import DataLoader

from course_lib.data import load_digits_splits
from course_lib.pipelines import (
    PIXEL_MEAN,
    PIXEL_STD,
    BaselinePipeline,
    SimulatedAsyncDevice,
    SlowDigits,
    collect_batches,
    first_difference,
    make_sampler,
    mirror_and_normalise,
    normalise,
    preprocess,
    time_pipeline,
)


@pytest.fixture(scope="module")
def fast_dataset():
    return SlowDigits(size=100, latency_s=0)


def test_an_item_holds_the_normalised_preprocessed_image_its_label_and_metadata(fast_dataset):
    item = fast_dataset[3]
    assert sorted(item) == ["image", "label", "metadata"]
    assert item["image"].shape == (64,) and item["image"].dtype == torch.float32
    assert torch.allclose(item["image"], normalise(fast_dataset.expected_images(False)[3]))
    assert int(item["label"]) == int(load_digits_splits(seed=0).train.tensors[1][3])
    assert len(item["metadata"]["scan"]) == 16 * 1024


def test_preprocess_scales_to_unit_range_and_blurs():
    raw = torch.zeros(64, dtype=torch.uint8).numpy()
    raw[0] = 16
    image = preprocess(raw)
    assert image.max() <= 1 and image[0] == pytest.approx(0.5 + 0.5 / 4)  # corner: 4 neighbours
    assert image[1] == pytest.approx(0.5 / 6) and image[63] == 0


def test_expected_images_agree_with_reading_every_item(fast_dataset):
    read = torch.stack([fast_dataset[i]["image"] for i in range(len(fast_dataset))])
    assert torch.equal(read, fast_dataset.expected_images())


def test_mirror_and_normalise_mirrors_each_row_then_normalises():
    image = torch.arange(64, dtype=torch.float32)
    mirrored = mirror_and_normalise(image) * PIXEL_STD + PIXEL_MEAN
    assert torch.allclose(mirrored[:8], torch.arange(7, -1, -1, dtype=torch.float32))
    assert torch.allclose(mirrored[56:], torch.arange(63, 55, -1, dtype=torch.float32))
    assert mirror_and_normalise(image).dtype == torch.float32


def test_expected_images_apply_the_datasets_own_transform():
    dataset = SlowDigits(size=12, latency_s=0, transform=mirror_and_normalise)
    read = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert torch.equal(read, dataset.expected_images())
    assert torch.equal(dataset.expected_images(normalised=False),
                       dataset.with_options(transform=None).expected_images())


def test_options_drop_the_transform_and_the_metadata_and_share_the_read_counter():
    dataset = SlowDigits(size=10, latency_s=0)
    plain = dataset.with_options(transform=None, keep_metadata=False)
    item = plain[2]
    assert sorted(item) == ["image", "label"]
    assert torch.equal(item["image"], dataset.expected_images(normalised=False)[2])
    assert dataset.transform is normalise and dataset.keep_metadata  # the original is unchanged
    assert dataset.reads.tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_reads_in_worker_processes_are_counted_with_their_process_ids():
    dataset = SlowDigits(size=24, latency_s=0)
    list(DataLoader(dataset, batch_size=4, num_workers=2))
    assert dataset.reads.tolist() == [1] * 24
    assert os.getpid() not in set(dataset.reader_pids.tolist())
    assert len(set(dataset.reader_pids.tolist())) == 2


def test_each_read_waits_the_latency():
    dataset = SlowDigits(size=10, latency_s=0.02)
    start = time.perf_counter()
    for i in range(5):
        dataset[i]
    assert time.perf_counter() - start >= 5 * 0.02


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="latency_s"):
        SlowDigits(latency_s=-1)
    with pytest.raises(ValueError, match="size"):
        SlowDigits(size=0)
    with pytest.raises(IndexError):
        SlowDigits(size=5, latency_s=0)[5]


def test_normalise_uses_the_fixed_constants():
    image = torch.full((64,), 0.5)
    assert torch.allclose(normalise(image), torch.full((64,), (0.5 - PIXEL_MEAN) / PIXEL_STD))


def test_the_baseline_follows_the_sampler_and_every_epoch_has_its_own_order(fast_dataset):
    pipeline = BaselinePipeline(fast_dataset, 32, seed=3)
    batches = collect_batches(pipeline, epochs=2)
    assert [len(labels) for _, labels in batches] == [32, 32, 32, 4] * 2
    sampler = make_sampler(fast_dataset, 3)
    orders = [list(sampler), list(sampler)]
    assert orders[0] != orders[1]
    labels = fast_dataset.labels()
    assert torch.equal(torch.cat([l for _, l in batches[:4]]), labels[orders[0]])
    assert torch.equal(torch.cat([l for _, l in batches[4:]]), labels[orders[1]])


def test_workers_with_the_same_sampler_give_the_same_batches(fast_dataset):
    slow = collect_batches(BaselinePipeline(fast_dataset, 16, seed=1), epochs=2)
    workers = BaselinePipeline(fast_dataset, 16, seed=1, num_workers=2, persistent_workers=True)
    assert first_difference(collect_batches(workers, epochs=2), slow) is None


def test_first_difference_names_a_reorder_a_short_batch_and_a_missing_batch(fast_dataset):
    batches = collect_batches(BaselinePipeline(fast_dataset, 32, seed=0))
    swapped = [batches[1], batches[0], *batches[2:]]
    assert "batch 0 holds other examples" in first_difference(swapped, batches)
    short = [*batches[:-1], (batches[-1][0][:2], batches[-1][1][:2])]
    assert "batch 3 holds 2 examples instead of 4" in first_difference(short, batches)
    assert first_difference(batches[:-1], batches) == "3 batches instead of 4"


def test_time_pipeline_counts_examples_epochs_and_build_time(fast_dataset):
    class Slow:
        def __init__(self):
            time.sleep(0.05)
            self.inner = BaselinePipeline(fast_dataset, 25, seed=0)

        def __iter__(self):
            return iter(self.inner)

    steps = []
    timing = time_pipeline(Slow, lambda images, labels: steps.append(len(labels)), epochs=2)
    assert timing.examples == 200 and timing.epoch_examples == [100, 100]
    assert len(timing.wait_s) == len(timing.compute_s) == 8 and steps == [25] * 8
    assert timing.build_s >= 0.05 and timing.total_s >= timing.build_s + sum(timing.epoch_s) - 1e-6
    assert timing.examples_per_second == pytest.approx(200 / timing.total_s)
    assert timing.steady_examples_per_second == pytest.approx(100 / timing.epoch_s[1])
    assert 0 < timing.waiting_share < 1


def test_the_simulated_device_runs_in_order_and_overlaps_with_the_caller():
    with SimulatedAsyncDevice(device_time_s=0.05) as device:
        start = time.perf_counter()
        futures = [device.submit(lambda x: x * 2, i) for i in range(2)]
        submitted = time.perf_counter() - start
        assert [f.result() for f in futures] == [0, 2]
    assert submitted < 0.05  # submit returned before the device finished its work
    assert time.perf_counter() - start >= 0.1


def test_the_simulated_device_hands_errors_to_the_reader():
    with SimulatedAsyncDevice(device_time_s=0) as device:
        future = device.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            future.result()
