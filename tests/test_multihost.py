"""course_lib.multihost: the demonstrations of lesson 08, each run in two real processes.

A launch costs seconds, so each test launches once and checks everything that launch measured.
"""

import pytest
import torch

from course_lib.data import load_digits_splits
from course_lib.distributed import launch
from course_lib.multihost import (
    EVERY_PITFALL,
    NO_PITFALL,
    collectives_demo,
    data_and_seeds_demo,
    train_ddp,
    validation_shard,
)


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0, images=True)


def test_collectives_give_every_rank_the_same_answer_and_the_barrier_waits_for_the_last():
    first, second = launch(collectives_demo, 2, 0.4)
    assert [first["rank"], second["rank"]] == [0, 1]
    assert first["world_size"] == second["world_size"] == 2
    assert first["sum"] == second["sum"] == 3.0
    assert first["gathered"] == second["gathered"] == [1.0, 2.0]
    assert first["waited_at_barrier_s"] > 0.3  # rank 0 waited for the late rank 1
    assert second["waited_at_barrier_s"] < first["waited_at_barrier_s"]


def test_data_orders_and_seeds_show_each_pitfall_and_its_fix():
    zero, one = launch(data_and_seeds_demo, 2, 10, 101, 3)
    for size, key in ((10, "small"), (101, "full")):
        orders = zero[key], one[key]
        # one seed everywhere: the same examples, in the same order, on both ranks
        assert orders[0]["one seed everywhere"] == orders[1]["one seed everywhere"]
        assert sorted(orders[0]["one seed everywhere"][0]) == list(range(size))
        # a sampler seeded per rank: shares that overlap
        per_rank = [set(o["sampler, seed + rank"][0]) for o in orders]
        assert len(per_rank[0] & per_rank[1]) > 1
        # the sampler with set_epoch: disjoint shares (but for the padding), covering the set,
        # a new order every epoch; without set_epoch: the first epoch again and again
        for epoch in range(3):
            shares = [o["sampler + set_epoch"][epoch] for o in orders]
            assert set(shares[0]) | set(shares[1]) == set(range(size))
            assert len(shares[0]) == len(shares[1]) == (size + 1) // 2
            assert len(set(shares[0]) & set(shares[1])) == size % 2
        for o in orders:
            assert o["sampler + set_epoch"][1] != o["sampler + set_epoch"][0]
            assert o["sampler, no set_epoch"][0] == o["sampler, no set_epoch"][1] == \
                o["sampler, no set_epoch"][2] == o["sampler + set_epoch"][0]
    assert torch.equal(zero["weights same seed"], one["weights same seed"])
    assert not torch.equal(zero["weights seed + rank"], one["weights seed + rank"])
    assert torch.equal(zero["weights seed + rank, after DDP"], one["weights seed + rank, after DDP"])
    assert torch.equal(zero["weights seed + rank, after DDP"], zero["weights seed + rank"])
    assert torch.equal(zero["noise"]["one seed everywhere"], one["noise"]["one seed everywhere"])
    assert not torch.equal(zero["noise"]["seed + rank"], one["noise"]["seed + rank"])
    if not torch.cuda.is_available():
        assert "GPU" in zero["sync batchnorm"]


def test_validation_shards_split_the_set_unequally_without_overlap(splits):
    shards = [validation_shard(splits.val, rank, 2) for rank in range(2)]
    assert sum(len(shard) for shard in shards) == len(splits.val)
    assert not set(shards[0].indices) & set(shards[1].indices)
    assert len(shards[0]) != len(shards[1])
    assert {int(splits.val[i][1]) for i in shards[1].indices} == {6, 7, 8, 9}


def mean(tensors):
    return [(a + b) / 2 for a, b in zip(*tensors)]


def gap(first, second):
    return max((a - b).abs().max().item() for a, b in zip(first, second))


@pytest.mark.parametrize("pitfalls", [EVERY_PITFALL, NO_PITFALL], ids=["every-pitfall", "fixed"])
def test_train_ddp_plants_every_pitfall_or_none(pitfalls, splits, tmp_path):
    run = launch(train_ddp, 2, tmp_path, pitfalls, splits, epochs=2)
    zero, one = run
    planted = pitfalls == EVERY_PITFALL
    # DDP keeps the copies identical either way
    assert torch.equal(zero["first_weight"], one["first_weight"])
    assert zero["epoch_losses"][-1] < zero["epoch_losses"][0]
    # who wrote the checkpoint
    assert [r["rank"] for r in run if r["wrote_checkpoint"]] == ([0, 1] if planted else [0])
    # which examples each rank read
    for epoch in range(2):
        reads = [set(r["epoch_reads"][epoch]) for r in run]
        assert reads[0] | reads[1] == set(range(len(splits.train)))
        assert len(reads[0] & reads[1]) == (len(splits.train) if planted else 1)
    if planted:
        assert zero["epoch_losses"] == one["epoch_losses"]  # the same batches on both ranks
    # BatchNorm: the ranks' own statistics differ once the data is sharded; the checkpoint holds
    # their mean when fixed, rank 0's own when not
    own = [r["own_bn_means"] for r in run]
    if planted:
        assert gap(zero["saved_bn_means"], own[0]) == 0
    else:
        assert gap(*own) > 1e-4
        assert gap(zero["saved_bn_means"], mean(own)) < 1e-6
        assert gap(one["bn_means_after"], mean(own)) < 1e-6
    # accuracy: both numbers on every rank, the reported one as planted
    pooled = (zero["val_correct"] + one["val_correct"]) / (zero["val_count"] + one["val_count"])
    mean_of_ranks = (zero["rank_accuracy"] + one["rank_accuracy"]) / 2
    for r in run:
        assert r["pooled_accuracy"] == pytest.approx(pooled, abs=1e-6)
        assert r["mean_of_rank_accuracies"] == pytest.approx(mean_of_ranks, abs=1e-6)
        assert r["reported_accuracy"] == pytest.approx(mean_of_ranks if planted else pooled, abs=1e-6)
    assert abs(pooled - mean_of_ranks) > 1e-3
