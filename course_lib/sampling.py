"""Stratified subsets for periodic evaluation (introduced in lesson 05).

A full evaluation can cost more than the training steps between two evaluations (the real log of
lesson 06 spent 67 minutes on each one). A fixed subset, drawn once, is cheaper; stratifying it
keeps every class's share of the full set, so a rare class is neither lost nor over-weighted by
the luck of one draw.

The allocation is exact to within one example per class: class c of n_c examples out of N gets
floor(size * n_c / N) examples, and the examples left over go to the classes with the largest
remainders (ties to the smaller class index). Within a class the examples are drawn uniformly
without replacement, with a generator seeded by `seed` only, so the same seed gives the same
subset and the global random state is neither used nor changed.

The rounding of the counts leaves a small bias in the subset's plain accuracy (each class is off
its share by less than one example in `size`); weighting each class's accuracy on the subset by
the class's share of the full set removes it. Lesson 05 measures both over many draws.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from course_lib.data import dataset_labels


def _as_labels(labels) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    return labels.long()


def stratified_counts(labels, size: int) -> list[int]:
    """How many examples of each class a stratified subset of `size` takes (largest remainders).

    Entry c is within one of the exact share size * n_c / N, and the entries sum to `size`.
    """
    labels = _as_labels(labels)
    total = len(labels)
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if not 0 < size <= total:
        raise ValueError(f"size must be between 1 and the number of examples ({total}), got {size}")
    class_sizes = torch.bincount(labels).tolist()
    # Integer arithmetic: floor(size * n_c / N) and its remainder, with no rounding error.
    counts = [size * n // total for n in class_sizes]
    remainders = [size * n % total for n in class_sizes]
    left = size - sum(counts)
    by_remainder = sorted(range(len(class_sizes)), key=lambda c: (-remainders[c], c))
    for c in by_remainder[:left]:
        counts[c] += 1
    return counts


def stratified_indices(labels, size: int, seed: int = 0) -> list[int]:
    """Sorted indices of a stratified random subset of `size` examples, reproducible per seed."""
    labels = _as_labels(labels)
    counts = stratified_counts(labels, size)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, count in enumerate(counts):
        of_class = torch.nonzero(labels == c).flatten()
        # Draw a permutation for every class, even one that gets no example, so that the draw of
        # one class does not depend on how many examples another one takes.
        order = torch.randperm(len(of_class), generator=generator)
        chosen.append(of_class[order[:count]])
    return sorted(torch.cat(chosen).tolist())


def stratified_subset(dataset: Dataset, size: int, seed: int = 0) -> Subset:
    """A `Subset` of `dataset` holding a stratified random sample of `size` examples."""
    return Subset(dataset, stratified_indices(dataset_labels(dataset), size, seed))
