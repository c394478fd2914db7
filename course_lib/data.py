"""Bundled data and loaders (lesson 01; class imbalance in lesson 06).

Everything comes from scikit-learn's bundled datasets: nothing is downloaded, ever.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

NUM_DIGIT_CLASSES = 10


@dataclass
class Splits:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


def load_digits_splits(
    val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, images: bool = False
) -> Splits:
    """The 1,797 8x8 digit images as stratified, seeded train/val/test sets.

    Pixels are scaled to [0, 1]. With ``images=False`` each example is a flat vector of 64 values
    (for the MLP); with ``images=True`` it has shape (1, 8, 8) (for the CNN).
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    # Imported here, not at the top: scikit-learn takes seconds to import, and the processes that
    # lesson 08 starts import course_lib without needing it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    # Stratify both cuts so every split has the same class proportions.
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest,
        random_state=seed,
    )

    def to_dataset(features, labels):
        features = torch.from_numpy(features)
        if images:
            features = features.reshape(-1, 1, 8, 8)
        return TensorDataset(features, torch.from_numpy(labels))

    return Splits(to_dataset(x_train, y_train), to_dataset(x_val, y_val), to_dataset(x_test, y_test))


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The label of every example, without loading the features one by one where avoidable."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def downsample_class(dataset: Dataset, cls: int, keep_fraction: float, seed: int = 0) -> Subset:
    """Keep only `keep_fraction` of the examples of class `cls` (at least one); keep the rest.

    Used on the training set only: the validation set must keep its natural balance, or the
    measurement is as skewed as the training data.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    labels = dataset_labels(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    if len(of_class) == 0:
        raise ValueError(f"class {cls} has no examples in this dataset")
    keep_count = max(1, round(len(of_class) * keep_fraction))
    generator = torch.Generator().manual_seed(seed)
    kept = of_class[torch.randperm(len(of_class), generator=generator)[:keep_count]]
    others = torch.nonzero(labels != cls).flatten()
    indices = torch.sort(torch.cat([others, kept])).values  # keep the original order
    return Subset(dataset, indices.tolist())


class ReadLog(Dataset):
    """A dataset that lends `dataset`'s examples and writes down which indices were read, in order
    (lessons 06 and 08 use it to see what a loader or a rank really read)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.reads: list[int] = []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads.append(int(index))
        return self.dataset[index]


def class_counts(dataset: Dataset, num_classes: int = NUM_DIGIT_CLASSES) -> list[int]:
    return torch.bincount(dataset_labels(dataset), minlength=num_classes).tolist()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends on `seed` only.

    The loader owns a seeded generator, so shuffling does not consume (or depend on) the global
    torch random state that the model's initialisation and dropout use.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
    )


def make_digits_loaders(cfg, images: bool = False, num_workers: int = 0):
    """Train and validation loaders for the digits, sized and seeded from a TrainConfig."""
    splits = load_digits_splits(seed=cfg.seed, images=images)
    train_loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                               num_workers=num_workers)
    val_loader = make_loader(splits.val, cfg.eval_batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, val_loader
