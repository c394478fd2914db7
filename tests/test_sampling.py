"""The stratified subset sampler of lesson 05, tested against computations on the full set."""

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from course_lib.sampling import stratified_counts, stratified_indices, stratified_subset


def imbalanced_labels(seed=0, sizes=(400, 250, 120, 37, 9, 3)):
    """Labels with the given class sizes, shuffled."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("seed", range(20))
def test_counts_are_within_one_example_of_the_exact_share_and_sum_to_the_size(seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 300, (int(torch.randint(2, 12, (1,), generator=generator)),),
                          generator=generator).tolist()
    labels = imbalanced_labels(seed, sizes)
    total = len(labels)
    for size in (1, 7, total // 10 or 1, total // 3, total - 1, total):
        counts = stratified_counts(labels, size)
        assert sum(counts) == size
        for c, n in enumerate(sizes):
            assert abs(counts[c] - size * n / total) < 1
            assert 0 <= counts[c] <= n


def test_leftover_examples_go_to_the_largest_remainders():
    # Shares 4.5, 3.3, 2.2: floors 4, 3, 2 and one example left, for the class with remainder .5.
    labels = [0] * 45 + [1] * 33 + [2] * 22
    assert stratified_counts(labels, 10) == [5, 3, 2]


def test_a_rare_class_keeps_its_example_when_its_share_rounds_up():
    labels = [0] * 990 + [1] * 10  # share of class 1 in 60 examples: 0.6
    assert stratified_counts(labels, 60) == [59, 1]


@pytest.mark.parametrize("seed", range(5))
def test_the_subset_holds_the_stratified_counts_of_valid_distinct_indices(seed):
    labels = imbalanced_labels(seed)
    indices = stratified_indices(labels, 200, seed=seed)
    assert len(indices) == 200 == len(set(indices))
    assert indices == sorted(indices)
    assert all(0 <= i < len(labels) for i in indices)
    drawn = torch.bincount(labels[indices], minlength=6).tolist()
    assert drawn == stratified_counts(labels, 200)


def test_the_same_seed_gives_the_same_subset_and_leaves_the_global_generator_alone():
    labels = imbalanced_labels()
    torch.manual_seed(1)
    first = stratified_indices(labels, 100, seed=3)
    after_first = torch.rand(1)
    torch.manual_seed(1)
    second = stratified_indices(labels, 100, seed=3)
    assert first == second
    assert torch.equal(torch.rand(1), after_first)  # the global generator was not consumed


def test_different_seeds_give_different_subsets():
    labels = imbalanced_labels()
    subsets = {tuple(stratified_indices(labels, 100, seed=s)) for s in range(10)}
    assert len(subsets) == 10


def test_every_example_of_a_class_is_drawn_equally_often():
    """Over many draws, example i of class c is in the subset with probability k_c / n_c."""
    labels = imbalanced_labels(sizes=(60, 30, 10))
    counts = stratified_counts(labels, 25)  # shares 15, 7.5, 2.5: 15, 8, 2 (ties to smaller index)
    draws = 4000
    seen = torch.zeros(len(labels))
    for seed in range(draws):
        seen[stratified_indices(labels, 25, seed=seed)] += 1
    for c, n in enumerate((60, 30, 10)):
        p = counts[c] / n
        frequency = seen[labels == c] / draws
        standard_error = math.sqrt(p * (1 - p) / draws)
        assert (frequency - p).abs().max() < 5 * standard_error, c


def test_the_subset_accuracy_is_unbiased_for_the_full_set_accuracy():
    """The mean over draws of the subset's accuracy equals the full set's, up to the rounding of
    the allocation (at most 1/size per class) and the sampling noise of the draws."""
    labels = imbalanced_labels(sizes=(500, 300, 150, 40, 10))
    generator = torch.Generator().manual_seed(0)
    class_accuracy = torch.tensor([0.95, 0.8, 0.6, 0.4, 0.2])
    correct = torch.rand(len(labels), generator=generator) < class_accuracy[labels]
    full = correct.float().mean().item()
    size, draws = 100, 3000
    values = torch.tensor([correct[stratified_indices(labels, size, seed=s)].float().mean().item()
                           for s in range(draws)])
    rounding = sum(abs(k / size - n / len(labels))
                   for k, n in zip(stratified_counts(labels, size), (500, 300, 150, 40, 10)))
    noise = 5 * values.std().item() / math.sqrt(draws)
    assert abs(values.mean().item() - full) < rounding + noise
    # ... and its exact expectation, class by class, is the allocation-weighted class accuracy.
    expected = sum(k * correct[labels == c].float().mean().item()
                   for c, k in enumerate(stratified_counts(labels, size))) / size
    assert abs(values.mean().item() - expected) < noise


def test_the_whole_set_is_its_own_stratified_subset():
    labels = imbalanced_labels()
    assert stratified_indices(labels, len(labels), seed=5) == list(range(len(labels)))


def test_stratified_subset_wraps_a_dataset():
    labels = imbalanced_labels()
    dataset = TensorDataset(torch.arange(len(labels)).float().unsqueeze(1), labels)
    subset = stratified_subset(dataset, 50, seed=2)
    assert subset.indices == stratified_indices(labels, 50, seed=2)
    assert [int(subset[i][1]) for i in range(len(subset))] == labels[subset.indices].tolist()


@pytest.mark.parametrize("size, error", [(0, ValueError), (10_000, ValueError), (2.5, TypeError)])
def test_a_bad_size_is_refused_with_a_message_naming_it(size, error):
    with pytest.raises(error, match="size"):
        stratified_indices(imbalanced_labels(), size)


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="labels"):
        stratified_indices(torch.tensor([0.0, 1.0]), 1)
    with pytest.raises(ValueError, match="labels"):
        stratified_indices(torch.tensor([[0, 1]]), 1)
    with pytest.raises(ValueError, match="labels"):
        stratified_indices(torch.tensor([0, -1, 1]), 1)
