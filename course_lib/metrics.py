"""Metrics computed during training (introduced in lesson 06).

Overall accuracy is one number, and one number hides a lot: a class the model never gets right can
sit under a 95 % average. This module gives the numbers that show it: per-class accuracy (recall),
precision, a confusion matrix, the error quantiles of a regression, and the exponential moving
average that turns a noisy loss curve into a readable one.

Every function accepts tensors on any device, and also Python lists or NumPy arrays. Classification
functions take either class indices of the same shape as `targets`, or scores/logits with one extra
last dimension (the predicted class is then their argmax). They return plain Python numbers, lists
and dicts, except `confusion_matrix`, which returns the matrix as a tensor.
"""

from __future__ import annotations

import math

import torch


def _as_tensor(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    # torch.as_tensor reads lists and NumPy arrays without copying where it can.
    return torch.as_tensor(values)


def _class_indices(preds, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true class indices as int64 tensors of one shape, on the device of `preds`."""
    preds = _as_tensor(preds)
    targets = _as_tensor(targets).to(preds.device)
    if preds.dim() == targets.dim() + 1:
        # Scores or logits, one column per class: the prediction is the highest one.
        preds = preds.argmax(dim=-1)
    if preds.shape != targets.shape:
        raise ValueError(
            f"preds has shape {tuple(preds.shape)} and targets {tuple(targets.shape)}; pass one "
            "predicted class per target, or scores with one extra last dimension"
        )
    for name, tensor in (("preds", preds), ("targets", targets)):
        if tensor.is_floating_point() or tensor.is_complex():
            # A float tensor of the targets' shape is most likely probabilities of a binary task:
            # truncating it to integers would silently give wrong classes.
            raise TypeError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    return preds.long(), targets.long()


def _check_class_range(tensor: torch.Tensor, num_classes: int, name: str) -> None:
    if tensor.numel() == 0:
        return
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds class {bad}, outside 0..{num_classes - 1}")


def accuracy(preds, targets) -> float:
    """The fraction of predictions equal to their target (NaN for no examples)."""
    preds, targets = _class_indices(preds, targets)
    if targets.numel() == 0:
        return math.nan
    return (preds == targets).double().mean().item()


def confusion_matrix(preds, targets, num_classes: int) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs: an int64 tensor [num_classes, num_classes].

    Row i holds the examples whose true class is i; column j those predicted as j. The diagonal is
    what the model got right.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    preds, targets = _class_indices(preds, targets)
    # An out-of-range class would land in another cell of the flattened matrix, not fail.
    _check_class_range(preds, num_classes, "preds")
    _check_class_range(targets, num_classes, "targets")
    return confusion_counts(preds, targets, num_classes)[:-1].reshape(num_classes, num_classes)


def confusion_counts(preds: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """The flattened confusion matrix plus one last count: the pairs with a class out of range.

    Pairs where `keep` is False (padding, ignored targets) are not counted at all. This reads
    nothing back from the device, so a loop can add up the counts of many batches and check the
    last one once at the end (`evaluate` does). Each (true, predicted) pair gets one number,
    true * K + predicted; counting those numbers with one bincount fills the whole matrix without
    a Python loop.
    """
    cells = num_classes * num_classes
    in_range = (targets >= 0) & (targets < num_classes) & (preds >= 0) & (preds < num_classes)
    pair_index = torch.where(in_range, targets * num_classes + preds, cells)
    if keep is not None:
        pair_index = torch.where(keep, pair_index, cells + 1)  # a bin that is dropped below
    return torch.bincount(pair_index.reshape(-1), minlength=cells + 2)[: cells + 1]


def _ratio_or_nan(numerators: torch.Tensor, denominators: torch.Tensor) -> list[float]:
    numerators = numerators.double().cpu()
    denominators = denominators.double().cpu()
    # 0 / 0 is NaN: "undefined", which is the honest answer for a class with no examples.
    return [
        (n / d).item() if d > 0 else math.nan
        for n, d in zip(numerators, denominators)
    ]


def per_class_accuracy_from_confusion(cm) -> list[float]:
    """Accuracy within each true class (its recall), read off a confusion matrix.

    A class with no examples gets NaN rather than an error or a misleading 0.
    """
    cm = _as_tensor(cm)
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {tuple(cm.shape)}")
    return _ratio_or_nan(cm.diagonal(), cm.sum(dim=1))


def per_class_accuracy(preds, targets, num_classes: int) -> list[float]:
    """For each class, the fraction of its examples predicted correctly (NaN if it has none).

    This is the recall of each class. Its mean over the classes is the "balanced accuracy".
    """
    return per_class_accuracy_from_confusion(confusion_matrix(preds, targets, num_classes))


def precision_recall(preds, targets, num_classes: int) -> dict:
    """Per-class precision and recall, and the number of true examples of each class.

    precision[c]: of the examples predicted as c, the fraction that are c (NaN if none predicted).
    recall[c]:    of the examples that are c, the fraction predicted as c (NaN if none exist).
    """
    cm = confusion_matrix(preds, targets, num_classes)
    correct = cm.diagonal()
    return {
        "precision": _ratio_or_nan(correct, cm.sum(dim=0)),
        "recall": _ratio_or_nan(correct, cm.sum(dim=1)),
        "support": [int(n) for n in cm.sum(dim=1).cpu()],
    }


class DebiasedEMA:
    """The running exponential moving average that `ema_smooth` computes, one value at a time.

    The training loop keeps one to log `smooth_loss`; its state is two numbers, so a checkpoint
    holds it (`state()`, `from_state()`).
    """

    def __init__(self, weight: float, last: float = 0.0, count: int = 0):
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"weight must be in [0, 1), got {weight}")
        self.weight, self.last, self.count = weight, last, count

    def update(self, value: float) -> float:
        """Add `value` and return the debiased average; NaN and inf pass through, left out."""
        value = float(value)
        if not math.isfinite(value):
            return value
        self.last = self.last * self.weight + (1.0 - self.weight) * value
        self.count += 1
        return self.last / (1.0 - self.weight**self.count)

    def state(self) -> tuple[float, int]:
        return (self.last, self.count)


def ema_smooth(values, weight: float = 0.99) -> list[float]:
    """An exponential moving average of `values`, debiased at the start like TensorBoard's.

    A plain average `last = weight * last + (1 - weight) * value` started at 0 crawls up from 0 for
    the first few hundred points. Dividing by `1 - weight ** n` (n = values averaged so far) removes
    that pull towards 0, so the first smoothed value equals the first value. NaN and inf values are
    passed through unchanged and left out of the average, so one bad step does not hide the rest.
    """
    average = DebiasedEMA(weight)
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    return [average.update(value) for value in values]


def _quantile_key(q: float) -> str:
    return f"abs_error_p{100 * q:g}"


def regression_errors(preds, targets, quantiles=(0.5, 0.9)) -> dict:
    """Mean absolute error, root mean squared error and quantiles of the absolute error.

    The quantiles answer "how wrong is a typical / a bad prediction": with the default,
    "abs_error_p50" is the median absolute error and "abs_error_p90" the error that 90 % of the
    predictions stay below. RMSE >> MAE means a few predictions are far off.
    """
    preds = _as_tensor(preds).double()
    targets = _as_tensor(targets).double().to(preds.device)
    if preds.shape != targets.shape:
        # [N, 1] minus [N] broadcasts to [N, N] and gives a plausible but wrong number.
        raise ValueError(
            f"preds has shape {tuple(preds.shape)} and targets {tuple(targets.shape)}; "
            "they must match (squeeze a trailing dimension of size 1)"
        )
    if targets.numel() == 0:
        raise ValueError("no predictions to score")
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1], got {q}")
    errors = (preds - targets).reshape(-1)
    absolute = errors.abs()
    result = {
        "mae": absolute.mean().item(),
        "rmse": errors.pow(2).mean().sqrt().item(),
    }
    if quantiles:
        levels = torch.tensor([float(q) for q in quantiles], dtype=torch.float64,
                              device=absolute.device)
        # Linear interpolation between order statistics, as numpy.quantile does by default.
        for q, value in zip(quantiles, torch.quantile(absolute, levels).tolist()):
            result[_quantile_key(q)] = value
    return result
