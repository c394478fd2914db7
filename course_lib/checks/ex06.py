"""Checks for exercise 06, per-class accuracy and class imbalance (introduced in exercise 06).

The exercise: compute per-class accuracy, cut one class of the training set down to a small
fraction, log per-class accuracy at every evaluation, watch the rare class fall away from the mean,
then apply one remedy and watch the gap shrink.

The checks observe the learner's code instead of trusting what it returns. They watch which library
functions it calls (so that `per_class_accuracy` is the learner's own), compare datasets example by
example (two splits can have the same class counts), hook the model and the optimizer while
`train_and_log` runs (so a record must describe an evaluation that happened, on the validation set,
in eval mode, after the optimizer step it names), and apply the learner's remedy in runs they start
themselves, measuring the rare class's gap from the model's own predictions. A history handed in by
the learner is only compared with the run the check replays; it is never the evidence.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import Subset, TensorDataset

from course_lib.checks._core import (
    CallWatch,
    CheckFailure,
    NotImplementedYet,
    call_learner,
    code_objects,
    make_hint,
    passed,
    require,
)
from course_lib.data import (
    ReadLog,
    class_counts,
    dataset_labels,
    downsample_class,
    load_digits_splits,
)
from course_lib.models import MLP
from course_lib.seeding import seed_everything

NUM_CLASSES = 10
# The exercise's loop evaluates every EVAL_EVERY optimizer steps and at the last one.
EVAL_EVERY = 10
# The rare class's gap below the mean over classes, averaged over the last few evaluations (one
# evaluation alone is noisy: a validation class has about 27 examples, so one example is 0.04).
GAP_EVALUATIONS = 3
# "Large" before the remedy. With class 8 cut to 15 % and the exercise's loop, the gap measured
# 0.46-0.74 over 16 seeds (seed s for the downsampling, the model and the data order).
MIN_GAP_BEFORE = 0.3
# A remedy must remove at least this much of the gap, and at least this share of it. Measured in
# the check's own runs over the same 16 seeds: class weights, focal loss with alpha and
# oversampling each removed 0.22 or more, and 35 % or more of the gap (the gap after was at most
# 0.65 of the gap before); focal loss without alpha removed between -0.08 and 0.24.
MIN_GAP_REDUCTION = 0.1
MAX_GAP_RATIO_AFTER = 0.8
# How much the other classes' mean accuracy may drop: a remedy that buys the rare class with the
# others (absurdly large weights) is no remedy.
MAX_OTHERS_DROP = 0.1
# Before any training, a remedy must favour the rarest class over the median class by at least
# MIN_FAVOUR: its loss weight (read off the loss's gradient), or how often the sampler draws each
# of its examples. Inverse class frequency gives about 7 on the exercise's set and its square root
# 2.6, both accepted; a fourth root gives 1.6 and removed too little of the gap on most of 16 seeds;
# a remedy that treats every class alike gives 1.
MIN_FAVOUR = 2.0
# At most this many times what inverse class frequency gives: more buys the rare class with the
# others (a weight of 1000 cost them 0.05-0.24 of accuracy over 16 seeds).
MAX_FAVOUR_OVER_INVERSE = 3.0
# A sampler draws about as many examples per pass as the set holds: more is training longer.
SAMPLER_DRAWS = (0.8, 1.25)
# Passes drawn to measure a sampler: 20 passes draw a class of 18 examples about 360 times even
# unweighted, so its measured favour is within 5 % of the truth.
SAMPLER_PASSES = 20
# Tolerance for a rate against the check's own count. The reference divides two whole numbers in
# float64; the same division in float32 is within 6e-8 of it (half a float32 step below 1), so
# float32 arithmetic passes and a rounded or nudged value (round(v, 6), a + 1e-6 in the
# denominator) does not. The solution notebook states it next to the contract.
TOLERANCE = 1e-7
# The optimizer and learning rate of the exercise's loop (given code): a record of a run with
# another optimizer describes another run than the one the checks replay.
OPTIMIZER = torch.optim.AdamW
LEARNING_RATE = 3e-3

hint = make_hint({
    "a": "Work class by class. A boolean mask `targets == c` selects the examples whose TRUE label "
    "is c; among those, count the ones predicted as c, and divide by how many there are. When "
    "there are none, the answer is float('nan'), without dividing.",
    "b": "Find the positions of class `cls` in the dataset, in order. One random permutation of "
    "those positions, drawn with a torch.Generator seeded with `seed`, decides which of them "
    "stay: its first round(keep_fraction * n) entries (at least one). Add every position of the "
    "other classes and wrap the dataset in a Subset. For the two sets: cut the training split "
    "only, with seed 0; the validation split stays exactly as it is.",
    "c": "At an evaluation the model should behave as it will when used: which mode is that, and "
    "does it need gradients? Predict every validation example, then let your per_class_accuracy "
    "from (a) do the counting. For history_before, start from seeded_mlp(0) and change nothing "
    "else: the check replays exactly that run.",
    "d": "Start from the counts of each class in the set `remedy` receives (not a fixed list). In "
    "the loss: if class c has n_c examples and weight w_c, its total weight is n_c * w_c; what w_c "
    "makes that the same for every class, and 1 on a balanced set? In the data: a sampler that "
    "draws by weight needs one weight per EXAMPLE; what should an example of a rare class weigh, "
    "and what happens to a class of 18 examples if none may be drawn twice?",
})


# ---- watching the learner's code -----------------------------------------------------------------


def _library_per_class() -> dict:
    """The library's and scikit-learn's own ways to compute per-class accuracy (recall)."""
    import sklearn.metrics
    from sklearn.metrics import _classification

    from course_lib import metrics

    ours = [metrics.per_class_accuracy, metrics.per_class_accuracy_from_confusion,
            metrics.confusion_matrix, metrics.precision_recall]
    theirs = [sklearn.metrics.recall_score, sklearn.metrics.confusion_matrix,
              sklearn.metrics.balanced_accuracy_score, sklearn.metrics.classification_report,
              sklearn.metrics.precision_recall_fscore_support,
              _classification.multilabel_confusion_matrix]
    return code_objects(ours + theirs)


def _library_evaluation() -> dict:
    """What `train_and_log` must not hand its evaluation to: the library's loop and metrics."""
    from course_lib import loop

    return {**_library_per_class(), **code_objects([loop.fit, loop.evaluate])}


def _refuse_delegation(calls: CallWatch, who: str, asked: str, instead: str) -> None:
    if calls.called:
        raise CheckFailure(f"{who} called {calls.called[0]}, the library's own {asked}",
                           hint=f"this exercise asks you to write it yourself: {instead}")


class _StepCounter:
    """Counts optimizer steps (any optimizer) while a block runs; calls `after_step` after each."""

    def __init__(self, after_step=None):
        self.steps = 0
        self.after_step = after_step
        self.optimizers = set()  # (class, learning rate) of every step taken

    def _hook(self, optimizer, args, kwargs):
        self.steps += 1
        self.optimizers.add((type(optimizer), optimizer.param_groups[0].get("lr")))
        if self.after_step is not None:
            self.after_step(self.steps)

    def __enter__(self):
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc_info):
        self._handle.remove()
        return False


class _CountedLoss(nn.Module):
    """The learner's loss, unchanged, with a count of its calls (to see that the loop used it)."""

    def __init__(self, loss_fn):
        super().__init__()
        self.inner = loss_fn
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


# ---- reading values and datasets -----------------------------------------------------------------


def _nan_equal(a: float, b: float, tol: float = TOLERANCE) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def _all_close(got, expected, tol: float = TOLERANCE) -> bool:
    return len(got) == len(expected) and all(_nan_equal(g, e, tol) for g, e in zip(got, expected))


def _fmt(values) -> str:
    return "[" + ", ".join("nan" if math.isnan(v) else f"{v:.3g}" for v in values) + "]"


def _to_floats(value, what: str, length: int) -> list[float]:
    """A list, tuple, tensor or array of `length` numbers as Python floats, or a CheckFailure."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise CheckFailure(f"{what} should be a list of {length} numbers",
                           got=type(value).__name__,
                           hint="return a list (or a 1-D tensor) with one value per class")
    if len(value) != length:
        raise CheckFailure(f"{what} should hold one value per class", expected=f"{length} values",
                           got=f"{len(value)} values",
                           hint="return a value for every class 0..num_classes-1, in class order, "
                           "also for a class that has no examples")
    floats = []
    for item in value:
        if item is None:
            raise CheckFailure(f"{what} holds None", hint="use float('nan') for a class with no "
                               "examples: a number that averages and plots can skip")
        if isinstance(item, (torch.Tensor, np.ndarray, np.generic)) and np.size(item) == 1:
            item = item.item()
        try:
            floats.append(float(item))
        except (TypeError, ValueError):
            raise CheckFailure(f"{what} should hold numbers", got=repr(item)[:60],
                               hint="one float per class") from None
    return floats


def _require_float_list(value, what: str) -> None:
    """The contract's type: a list of Python floats (what course_lib's history holds and JSON
    writes), not a tensor, an array or a list of one-element tensors."""
    if not isinstance(value, list):
        raise CheckFailure(f"{what} is a {type(value).__name__}, not a list",
                           expected="a list of Python floats", got=type(value).__name__,
                           hint="the contract asks for a list of floats, like the records of "
                           "course_lib's history: .tolist() turns a tensor or an array into one")
    odd = next((v for v in value if not isinstance(v, float)), None)
    if odd is not None:
        kind = type(odd).__name__ + (f" ({odd.dtype})" if hasattr(odd, "dtype") else "")
        raise CheckFailure(f"{what} holds a {kind}, not a Python float",
                           expected="a list of Python floats", got=f"an entry {odd!r}"[:80],
                           hint="make each entry a Python float: .item() on a one-element "
                           "tensor, float() on a NumPy number")


def _recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int = NUM_CLASSES) -> list:
    """The reference: per-class recall from counts, NaN where a class has no examples."""
    preds, targets = torch.as_tensor(preds).long(), torch.as_tensor(targets).long()
    totals = torch.bincount(targets, minlength=num_classes)
    correct = torch.bincount(targets[preds == targets], minlength=num_classes)
    return [int(k) / int(n) if n > 0 else math.nan for k, n in zip(correct, totals)]


def _row_keys(features: torch.Tensor) -> list[bytes]:
    """One hashable key per example: the bytes of its features."""
    flat = features.detach().reshape(len(features), -1).to(torch.float32).cpu().contiguous()
    return [row.tobytes() for row in flat.numpy()]


def _require_item_like(features, label, reference: tuple, what: str) -> None:
    """An example keeps the type, dtype and shape its dataset gave it: float labels make
    CrossEntropyLoss read them as probabilities, float64 features make the model's matmul fail, and
    both pass any comparison made after a conversion."""
    for value, ref, name in ((features, reference[0], "features"), (label, reference[1], "label")):
        expected = f"a {type(ref).__name__}" + (
            f" of dtype {ref.dtype}, shape {tuple(ref.shape)}" if isinstance(ref, torch.Tensor)
            else "")
        same = type(value) is type(ref) and (
            not isinstance(ref, torch.Tensor)
            or (value.dtype == ref.dtype and tuple(value.shape) == tuple(ref.shape)))
        if not same:
            got = type(value).__name__ + (
                f" of dtype {value.dtype}, shape {tuple(value.shape)}"
                if isinstance(value, (torch.Tensor, np.ndarray)) else "")
            raise CheckFailure(f"the {name} of {what} changed type", expected=expected, got=got,
                               hint="keep each example exactly as the dataset holds it: a Subset "
                               "of the dataset converts nothing")


def _examples(dataset, what: str, reference=None) -> tuple[list[bytes], list[int]]:
    """The (features key, label) of every example of a dataset of (features, label) pairs."""
    if dataset is None:
        raise NotImplementedYet(what)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        features, labels = dataset.tensors
        if reference is not None and len(labels):
            _require_item_like(features[0], labels[0], reference, what)
        return _row_keys(features), [int(y) for y in labels]
    try:
        length = len(dataset)
    except TypeError:
        raise CheckFailure(f"{what} should be a dataset (something with len() and indexing)",
                           got=type(dataset).__name__,
                           hint="return torch.utils.data.Subset(dataset, kept_indices)") from None
    keys, labels = [], []
    for i in range(length):
        item = dataset[i]
        try:
            features, label = item
        except (TypeError, ValueError):
            raise CheckFailure(f"{what}[{i}] should be a (features, label) pair",
                               got=repr(item)[:60],
                               hint="keep the examples as they are: return a Subset") from None
        if reference is not None:
            _require_item_like(features, label, reference, f"{what}[{i}]")
        keys.append(_row_keys(torch.as_tensor(features).reshape(1, -1))[0])
        labels.append(int(label))
    return keys, labels


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All features and labels of a dataset as two tensors."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors
    items = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([torch.as_tensor(x) for x, _ in items]),
            torch.tensor([int(y) for _, y in items]))


def _history_records(history, name: str) -> list[dict]:
    if history is None:
        raise NotImplementedYet(name)
    records = getattr(history, "records", history)  # a course_lib History, or a list of dicts
    if not isinstance(records, (list, tuple)) or not all(isinstance(r, dict) for r in records):
        raise CheckFailure(f"{name} should be a list of dicts, one per evaluation",
                           got=type(history).__name__,
                           hint="append one dict per evaluation to a list and return the list")
    require(len(records) > 0, f"{name} is empty",
            hint="append a record at every evaluation (every eval_every steps and at the end)")
    return list(records)


def _per_class_rows(records, name: str) -> list[list[float]]:
    rows = []
    for index, record in enumerate(records):
        if "eval_per_class_accuracy" not in record:
            raise CheckFailure(f"record {index} of {name} has no 'eval_per_class_accuracy'",
                               got=f"keys {sorted(record)}",
                               hint="log per-class accuracy at EVERY evaluation, under the key "
                               "'eval_per_class_accuracy'")
        rows.append(_to_floats(record["eval_per_class_accuracy"],
                               f"{name}[{index}]['eval_per_class_accuracy']", NUM_CLASSES))
    return rows


# ---- (a) per_class_accuracy ----------------------------------------------------------------------


def _batch(sizes, correct, shift=3, seed=0, relabel=True):
    """Targets with `sizes[c]` examples of class c, `correct[c]` of them predicted right and the rest
    predicted as class c + shift: per-class accuracies all differ, and precision differs from recall.

    The seed shuffles the examples and, with `relabel`, renames the classes, so that no answer can
    be tuned to one batch."""
    num_classes = len(sizes)
    targets, preds = [], []
    for c, (size, right) in enumerate(zip(sizes, correct)):
        targets += [c] * size
        preds += [c] * right + [(c + shift) % num_classes] * (size - right)
    generator = torch.Generator().manual_seed(seed)
    names = torch.randperm(num_classes, generator=generator) if relabel else \
        torch.arange(num_classes)
    order = torch.randperm(len(targets), generator=generator)
    return names[torch.tensor(preds)][order], names[torch.tensor(targets)][order], names


def _call_per_class(per_class_accuracy, preds, targets, absent, num_classes=NUM_CLASSES):
    """Call the learner's function under watch; a division by zero becomes a hint about NaN."""
    try:
        with CallWatch(_library_per_class()) as calls:
            result = call_learner(per_class_accuracy, preds.clone(), targets.clone(), num_classes,
                                  name="per_class_accuracy")
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        if absent is not None and ("ZeroDivisionError" in failure.what or "division" in failure.what):
            raise CheckFailure(
                f"`per_class_accuracy` divided by zero for class {absent}, which has no examples "
                "in this batch",
                hint="a class with no examples has no accuracy: return float('nan') for it "
                "instead of dividing",
            ) from None
        raise
    _refuse_delegation(calls, "per_class_accuracy", "implementation of it",
                       "for each class, count the examples whose target is that class and how "
                       "many of them were predicted right, with tensor operations or a loop")
    return result


def check_per_class_accuracy(per_class_accuracy, *, seed: int = 0) -> None:
    """per_class_accuracy(preds, targets, num_classes): recall per class, NaN for an absent class."""
    preds, targets, _ = _batch([3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                               [3, 2, 5, 1, 7, 4, 0, 10, 6, 9], seed=seed)
    got_raw = _call_per_class(per_class_accuracy, preds, targets, None)
    got = _to_floats(got_raw, "per_class_accuracy(...)", NUM_CLASSES)
    expected = _recall(preds, targets)
    overall = (preds == targets).double().mean().item()
    if any(v > 1.0 + 1e-9 for v in got if not math.isnan(v)):
        raise CheckFailure("per_class_accuracy returned values above 1",
                           expected=_fmt(expected), got=_fmt(got),
                           hint="those look like counts of correct predictions; divide each by the "
                           "number of examples of that class to get a rate between 0 and 1")
    if all(_nan_equal(v, overall) for v in got):
        raise CheckFailure("every class got the same value, the overall accuracy",
                           expected=_fmt(expected), got=_fmt(got),
                           hint="compute each class's accuracy over the examples whose TRUE label "
                           "is that class only (targets == c)")
    if _all_close(got, _recall(targets, preds)):
        raise CheckFailure("per_class_accuracy returned each class's precision",
                           expected=_fmt(expected), got=_fmt(got),
                           hint="divide by the number of examples whose true label is c, not by "
                           "the number predicted as c (check the order of preds and targets)")
    share = [k / len(targets) for k in torch.bincount(targets[preds == targets],
                                                       minlength=NUM_CLASSES).tolist()]
    if _all_close(got, share):
        raise CheckFailure("per_class_accuracy divided each class's correct predictions by the "
                           "size of the whole batch", expected=_fmt(expected), got=_fmt(got),
                           hint="divide by the number of examples of that class only")
    if not _all_close(got, expected):
        wrong = next(c for c in range(NUM_CLASSES) if not _nan_equal(got[c], expected[c]))
        raise CheckFailure(f"per_class_accuracy differs from the per-class recall for class "
                           f"{wrong}", expected=f"{expected[wrong]:.4f}", got=f"{got[wrong]:.4f}",
                           hint="for class c: (number of examples with target c AND prediction c) "
                           "/ (number of examples with target c); entry c of the list is class c")
    _require_float_list(got_raw, "per_class_accuracy(...)")

    # A class absent from the middle (but predicted, wrongly, for others), then the last class
    # absent altogether: neither a target nor a prediction, so bincount without minlength is short.
    middle = _batch([6, 5, 4, 0, 7, 6, 5, 4, 6, 5], [2, 5, 1, 0, 7, 3, 5, 0, 6, 2], seed=seed + 1)
    last = _batch([5, 4, 6, 5, 7, 6, 5, 4, 6, 0], [5, 1, 3, 5, 2, 6, 4, 4, 0, 0], shift=1,
                  seed=seed + 2, relabel=False)
    for (preds, targets, _), absent in ((middle, int(middle[2][3])), (last, NUM_CLASSES - 1)):
        result = _call_per_class(per_class_accuracy, preds, targets, absent)
        if isinstance(result, (list, tuple, torch.Tensor, np.ndarray)) and len(result) != NUM_CLASSES:
            raise CheckFailure(f"with class {absent} absent from the batch, per_class_accuracy "
                               "returned the wrong number of values", expected="10 values",
                               got=f"{len(result)} values",
                               hint="return one value for every class 0..num_classes-1, also for a "
                               "class that is not in the batch (e.g. bincount(..., "
                               "minlength=num_classes))")
        got = _to_floats(result, "per_class_accuracy(...)", NUM_CLASSES)
        expected = _recall(preds, targets)
        value = got[absent]
        if not math.isnan(value):
            hint = ("a class with no examples has no accuracy: return float('nan'), not "
                    f"{value:g}; a 0 reads as 'the model always misses class {absent}' and drags "
                    "any average down")
            if math.isinf(value):
                hint = "a class with no examples has no accuracy: return float('nan'), not inf"
            raise CheckFailure(f"class {absent} has no examples in this batch", expected="nan",
                               got=f"{value:g}", hint=hint)
        if not _all_close(got, expected):
            raise CheckFailure(f"with class {absent} absent from the batch, the other classes are "
                               "wrong", expected=_fmt(expected), got=_fmt(got),
                               hint="compute every class the same way, whether or not some class "
                               "is missing")
        _require_float_list(result, "per_class_accuracy(...)")

    # num_classes is an argument: more classes than the batch's labels reach (10 and 11 absent),
    # with int32 tensors, which the contract's "integer tensors" allows.
    wider = NUM_CLASSES + 2
    preds, targets = middle[0].to(torch.int32), middle[1].to(torch.int32)
    result = _call_per_class(per_class_accuracy, preds, targets, NUM_CLASSES, num_classes=wider)
    length = len(result) if isinstance(result, (list, tuple, torch.Tensor, np.ndarray)) else None
    if length is not None and length != wider:
        raise CheckFailure(f"per_class_accuracy(preds, targets, num_classes={wider}) returned "
                           f"{length} values", expected=f"{wider} values",
                           got=f"{length} values",
                           hint="use the num_classes argument, not a fixed 10 or the largest "
                           "label seen: classes absent from the batch still get an entry (NaN)")
    got = _to_floats(result, f"per_class_accuracy(..., num_classes={wider})", wider)
    expected = _recall(preds, targets, wider)
    require(_all_close(got, expected), f"with num_classes={wider} and int32 tensors, "
            "per_class_accuracy differs from the per-class recall",
            expected=_fmt(expected), got=_fmt(got),
            hint="compute every class 0..num_classes-1 the same way, whatever the integer dtype "
            "of preds and targets")
    _require_float_list(result, "per_class_accuracy(...)")
    passed(f"per_class_accuracy matches the per-class recall within {TOLERANCE:g}, returns a list "
           "of floats of length num_classes, and gives NaN for a class absent from the batch")


# ---- (b) make_imbalanced and the two sets --------------------------------------------------------

# Class sizes of the check's dataset: 0.2 of class 5's 33 is 6.6, where rounding and truncating
# differ; 0.01 of anything rounds to 0, where "at least one" matters.
_SIZES = [36, 44, 38, 37, 40, 33, 39, 42, 41, 35]
_CASES = ((3, 0.25), (8, 0.15), (5, 0.2), (0, 1.0), (7, 0.01))


def _tagged_dataset(seed: int) -> TensorDataset:
    """Examples in a seeded order; feature 0 of each is its own index, so content names it."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(torch.tensor(_SIZES))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    ids = torch.arange(len(labels), dtype=torch.float32)
    features = torch.stack([ids, labels.float(), torch.ones(len(labels))], dim=1)
    return TensorDataset(features, labels)


def _read_tagged(dataset, what: str, reference=None) -> list[tuple[int, int]]:
    """(example id, label) of every example of a dataset built on `_tagged_dataset`."""
    try:
        length = len(dataset)
    except TypeError:
        raise CheckFailure(f"{what} should be a dataset (something with len() and indexing)",
                           got=type(dataset).__name__,
                           hint="return torch.utils.data.Subset(dataset, kept_indices)") from None
    examples = []
    for i in range(length):
        item = dataset[i]
        try:
            features, label = item
        except (TypeError, ValueError):
            raise CheckFailure(f"{what}[{i}] should be a (features, label) pair",
                               got=repr(item)[:60],
                               hint="keep the examples as they are: return a Subset") from None
        if reference is not None:
            _require_item_like(features, label, reference, f"{what}[{i}]")
        examples.append((int(torch.as_tensor(features).reshape(-1)[0]), int(label)))
    return examples


def _kept_count(count: int, keep_fraction: float) -> int:
    """The contract: round(keep_fraction * n), and at least one."""
    return max(1, round(count * keep_fraction))


def _check_counts(counts, original, cls, keep_fraction, what: str) -> None:
    expected = _kept_count(original[cls], keep_fraction)
    kept = counts[cls]
    others_wrong = [c for c in range(len(original)) if c != cls and counts[c] != original[c]]
    if kept == original[cls] and len(others_wrong) == 1 and \
            counts[others_wrong[0]] < original[others_wrong[0]]:
        raise CheckFailure(f"{what} cut class {others_wrong[0]} instead of class {cls}",
                           expected=f"class {cls} reduced", got=f"class counts {counts}",
                           hint=f"the class to cut is {cls}; every other class stays whole")
    if kept == original[cls] and keep_fraction < 1 and not others_wrong:
        raise CheckFailure(f"{what} still holds all {kept} examples of class {cls}",
                           expected=expected, got=kept,
                           hint="keep only round(keep_fraction * n) of the n examples of that class")
    if others_wrong and all(counts[c] < original[c] for c in others_wrong):
        raise CheckFailure(f"{what} also lost examples of other classes",
                           expected=f"class counts {original} with only class {cls} reduced",
                           got=f"{counts}",
                           hint=f"downsample class {cls} only; keep every example of the others")
    if others_wrong:
        raise CheckFailure(f"{what} changed the counts of other classes",
                           expected=f"{original} apart from class {cls}", got=f"{counts}",
                           hint=f"only class {cls} changes; keep every other example exactly once")
    if kept == 0:
        raise CheckFailure(f"{what} has no example of class {cls} left", expected=expected, got=0,
                           hint="keep at least one example, so the class still exists in training")
    if kept != expected:
        exact = original[cls] * keep_fraction
        hint = "keep round(keep_fraction * n) examples of the class, and at least one"
        if kept == _kept_count(original[cls], 1 - keep_fraction):
            hint = "keep_fraction is the share KEPT, not the share removed"
        elif kept == max(1, math.floor(exact)) and kept != expected:
            hint = (f"{keep_fraction:g} of {original[cls]} is {exact:g}: round it, int() cuts "
                    "the decimals off")
        raise CheckFailure(f"{what} keeps the wrong number of class {cls}",
                           expected=f"{expected} ({keep_fraction:g} of {original[cls]}, rounded)",
                           got=kept, hint=hint)


def check_make_imbalanced(make_imbalanced, *, seed: int = 0) -> None:
    """make_imbalanced(dataset, cls, keep_fraction, seed): only class `cls` shrinks, to exactly the
    examples the seed picks."""
    dataset = _tagged_dataset(seed)
    before = dataset.tensors[0].clone(), dataset.tensors[1].clone()
    original = class_counts(dataset)
    labels = dataset.tensors[1]
    watched = code_objects([downsample_class])

    def run(cls, keep_fraction, pick_seed):
        what = f"make_imbalanced(dataset, {cls}, {keep_fraction}, seed={pick_seed})"
        with CallWatch(watched) as calls:
            result = call_learner(make_imbalanced, dataset, cls, keep_fraction, seed=pick_seed,
                                  name="make_imbalanced")
        _refuse_delegation(calls, "make_imbalanced", "downsampling",
                           "find the examples of the class, choose the ones to keep with the "
                           "seed, and build a Subset")
        if result is None:
            raise CheckFailure(f"{what} returned None", hint="return the new dataset (a Subset)")
        if not (torch.equal(dataset.tensors[0], before[0])
                and torch.equal(dataset.tensors[1], before[1])):
            raise CheckFailure("make_imbalanced changed the dataset passed to it",
                               hint="leave the input untouched; return a new Subset of it")
        return what, _read_tagged(result, what, reference=dataset[0])

    for index, (cls, keep_fraction) in enumerate(_CASES):
        pick_seed = seed + index
        what, examples = run(cls, keep_fraction, pick_seed)
        counts = [0] * NUM_CLASSES
        for _, label in examples:
            if not 0 <= label < NUM_CLASSES:
                raise CheckFailure(f"{what} holds label {label}", hint="keep the labels as they are")
            counts[label] += 1
        mixed = [(i, y) for i, y in examples if not 0 <= i < len(labels) or int(labels[i]) != y]
        require(not mixed, f"{what} pairs some examples with the wrong label",
                hint="select whole examples (indices into the dataset), never features and labels "
                "separately")
        ids = [i for i, _ in examples]
        require(len(set(ids)) == len(ids), f"{what} holds some examples twice",
                hint="downsampling keeps each chosen example once: draw without replacement "
                "(a permutation), not with it")
        _check_counts(counts, original, cls, keep_fraction, what)

        kept = {i for i, y in examples if y == cls}
        expected = set(downsample_class(dataset, cls, keep_fraction, seed=pick_seed).indices)
        expected = {i for i in expected if int(labels[i]) == cls}
        if kept == expected:
            continue
        of_class = torch.nonzero(labels == cls).flatten().tolist()
        _, again = run(cls, keep_fraction, pick_seed)
        if {i for i, y in again if y == cls} != kept:
            raise CheckFailure(f"two calls of {what} kept different examples of class {cls}",
                               hint="draw with a generator of your own, seeded with `seed` "
                               "(torch.Generator().manual_seed(seed)), not the global one: the "
                               "same seed must keep the same examples")
        if kept == set(of_class[:len(kept)]) or kept == set(of_class[-len(kept):]):
            raise CheckFailure(f"{what} kept the first (or last) examples of class {cls}",
                               hint="choose the kept examples at random with the seed, not always "
                               "the first ones")
        raise CheckFailure(f"{what} kept other examples of class {cls} than the seed picks",
                           expected=f"ids {sorted(expected)[:6]}...", got=f"ids {sorted(kept)[:6]}...",
                           hint="the contract: one torch.randperm over the class's positions (in "
                           "dataset order), drawn with torch.Generator().manual_seed(seed); keep "
                           "the first entries of that permutation")
    # The signature's default: no seed means seed 0, so a call without one names the same set.
    cls, keep_fraction = _CASES[1]
    with CallWatch(watched) as calls:
        result = call_learner(make_imbalanced, dataset, cls, keep_fraction, name="make_imbalanced")
    _refuse_delegation(calls, "make_imbalanced", "downsampling",
                       "find the examples of the class, choose the ones to keep with the seed, "
                       "and build a Subset")
    if result is not None:
        what = f"make_imbalanced(dataset, {cls}, {keep_fraction}) without a seed"
        default_kept = {i for i, y in _read_tagged(result, what, reference=dataset[0]) if y == cls}
        expected = {i for i in downsample_class(dataset, cls, keep_fraction, seed=0).indices
                    if int(labels[i]) == cls}
        require(default_kept == expected, f"{what} kept other examples of class {cls} than "
                "seed=0 picks", hint="the signature's default is seed=0: a call without a seed "
                "must keep exactly what seed=0 keeps, not draw from an unseeded generator")

    passed("make_imbalanced keeps exactly the examples of the class that the seed picks "
           "(round(keep_fraction * n), at least one; seed 0 by default) and every example of the "
           "others, each once and unchanged")


def _split_names(splits) -> dict[bytes, str]:
    """Which split each example (by content) belongs to."""
    names = {}
    for name in ("train", "val", "test"):
        for key in _row_keys(getattr(splits, name).tensors[0]):
            names[key] = name
    return names


def check_imbalanced_split(train_set, val_set, splits, rare_class: int, keep_fraction: float,
                           *, seed: int = 0) -> None:
    """train_set: the examples of splits.train with `rare_class` cut to `keep_fraction` (seed 0);
    val_set: exactly the examples of splits.val. Compared example by example, not by counts."""
    if train_set is None:
        raise NotImplementedYet("train_set")
    if val_set is None:
        raise NotImplementedYet("val_set")
    where = _split_names(splits)
    val_keys, val_labels = _examples(val_set, "val_set", reference=splits.val[0])
    train_keys, train_labels = _examples(train_set, "train_set", reference=splits.train[0])
    ref_val_keys, ref_val_labels = _examples(splits.val, "splits.val")
    val_truth = dict(zip(ref_val_keys, ref_val_labels))

    # val_set: every example of the validation split, each once, with its own label.
    foreign = Counter(where.get(key, "none of the splits") for key in val_keys
                      if key not in val_truth)
    if foreign:
        source, count = foreign.most_common(1)[0]
        same_as_train = Counter(val_keys) == Counter(train_keys)
        raise CheckFailure(f"val_set holds {sum(foreign.values())} examples that are not in "
                           f"splits.val ({count} from {source})",
                           hint="use splits.val unchanged" + (
                               ": the training set measures what the model memorised"
                               if same_as_train else
                               ": another split with the same class counts is still another set "
                               "of examples, and only splits.val is the validation split"))
    relabelled = sum(1 for key, y in zip(val_keys, val_labels) if val_truth[key] != y)
    require(not relabelled, f"val_set gives {relabelled} examples another label than splits.val",
            hint="use splits.val unchanged")
    missing = Counter(ref_val_keys) - Counter(val_keys)
    if missing:
        lost = Counter(val_truth[key] for key in missing.elements())
        if set(lost) == {rare_class}:
            raise CheckFailure(f"val_set lost examples of class {rare_class}",
                               expected=f"{lost[rare_class] + class_counts(val_set)[rare_class]} "
                               "(all of them)", got=class_counts(val_set)[rare_class],
                               hint="downsample the TRAINING set only: the validation set must "
                               f"keep its natural balance, or class {rare_class} is measured on a "
                               "handful of examples and the overall accuracy hides the damage "
                               "even better")
        raise CheckFailure(f"val_set is missing {sum(missing.values())} examples of splits.val",
                           hint="use splits.val unchanged")
    extra = Counter(val_keys) - Counter(ref_val_keys)
    require(not extra, f"val_set holds {sum(extra.values())} examples of splits.val twice",
            hint="use splits.val unchanged")

    # train_set: the examples of splits.train that make_imbalanced keeps with seed 0.
    train_truth = dict(zip(*_examples(splits.train, "splits.train")))
    foreign = Counter(where.get(key, "none of the splits") for key in train_keys
                      if key not in train_truth)
    if foreign:
        source, count = foreign.most_common(1)[0]
        raise CheckFailure(f"train_set holds {sum(foreign.values())} examples that are not in "
                           f"splits.train ({count} from {source})",
                           hint="cut splits.train only; an example of the validation or test "
                           "split in training makes their measurement meaningless")
    relabelled = sum(1 for key, y in zip(train_keys, train_labels) if train_truth[key] != y)
    require(not relabelled,
            f"train_set gives {relabelled} examples another label than splits.train",
            hint="select whole examples (a Subset of splits.train)")
    duplicates = sum((Counter(train_keys) - Counter(set(train_keys))).values())
    require(not duplicates, f"train_set holds {duplicates} examples twice",
            hint="make_imbalanced keeps each example at most once")
    counts = [0] * NUM_CLASSES
    for y in train_labels:
        counts[y] += 1
    _check_counts(counts, class_counts(splits.train), rare_class, keep_fraction, "train_set")
    expected = downsample_class(splits.train, rare_class, keep_fraction, seed=seed)
    expected_keys = set(_row_keys(splits.train.tensors[0][torch.tensor(expected.indices)]))
    if set(train_keys) != expected_keys:
        raise CheckFailure(f"train_set keeps other examples of class {rare_class} than "
                           f"make_imbalanced picks with seed {seed}",
                           hint=f"build train_set with your make_imbalanced, seed={seed}, so the "
                           "run is the one this exercise describes")
    passed(f"train_set is splits.train with {counts[rare_class]} of "
           f"{class_counts(splits.train)[rare_class]} examples of class {rare_class} (the ones "
           f"seed {seed} picks); val_set is exactly splits.val, example by example")


# ---- (c) per-class accuracy logged at every evaluation -------------------------------------------


class _ModelWatch:
    """Every forward pass of an MLP, seen from inside: the optimizer steps taken so far, whether
    the model was training, the examples it saw and the classes it predicted.

    The hooks sit on the first and last layers, so `model(x)`, `model.forward(x)` and
    `model.net(x)` are all seen."""

    def __init__(self, model: MLP, counter: _StepCounter):
        self.model = model
        self.counter = counter
        self.passes: list[dict] = []
        self._inputs = None

    def _before_first(self, module, args):
        self._inputs = args[0].detach().clone()

    def _after_last(self, module, args, output):
        self.passes.append({"step": self.counter.steps, "training": self.model.training,
                            "grad": output.requires_grad, "inputs": self._inputs,
                            "preds": output.detach().argmax(dim=-1)})

    def __enter__(self):
        layers = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        self._handles = [layers[0].register_forward_pre_hook(self._before_first),
                         layers[-1].register_forward_hook(self._after_last)]
        return self

    def __exit__(self, *exc_info):
        for handle in self._handles:
            handle.remove()
        return False


def _evaluations(passes, val_index: dict, train_labels: dict) -> tuple[dict, dict, list]:
    """Sort the forward passes: over validation examples (grouped by the optimizer step they
    followed, with the rows they covered), over training examples without gradients (an
    evaluation on the training data, grouped the same way, with their labels), and the training
    passes proper (training examples, gradients on)."""
    on_val, on_train, training = {}, {}, []
    for forward in passes:
        keys = _row_keys(forward["inputs"])
        if keys and all(key in val_index for key in keys):
            rows = torch.tensor([val_index[key] for key in keys])
            on_val.setdefault(forward["step"], []).append((forward, rows))
        elif keys and all(key in train_labels for key in keys):
            if forward["grad"]:
                training.append(forward)
            else:
                labels = torch.tensor([train_labels[key] for key in keys])
                on_train.setdefault(forward["step"], []).append((forward, labels))
    return on_val, on_train, training


def _smoothed(row, previous, measured) -> bool:
    """Whether a logged row is a moving average: one share of the previous logged row (0 before the
    first) plus the rest of this evaluation's measurement, the same share for every class. A
    debiased exponential moving average has that form too, with a share that changes by step."""
    shares = [(m - v) / (m - p) for v, p, m in zip(row, previous, measured)
              if not (math.isnan(v) or math.isnan(p) or math.isnan(m)) and abs(m - p) > 1e-3]
    if not shares or not 0.01 < shares[0] < 0.99:
        return False
    return all(_nan_equal(v, shares[0] * p + (1 - shares[0]) * m, 1e-4)
               for v, p, m in zip(row, previous, measured)
               if not (math.isnan(v) or math.isnan(p) or math.isnan(m)))


def check_per_class_logging(train_and_log, *, seed: int = 0) -> None:
    """train_and_log(model, train_set, val_set, epochs=, batch_size=, eval_every=) logs, at every
    evaluation, the per-class accuracy of the model's own predictions on all of val_set."""
    splits = load_digits_splits(seed=0)
    # Two epochs of 5 steps of 32: evaluations at 3, 6 and 9 cross the epoch boundary, and the
    # last one (10) is not a multiple of eval_every.
    picks = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:160]
    train_set = Subset(splits.train, picks.tolist())
    val_inputs, val_targets = splits.val.tensors
    val_index = {key: i for i, key in enumerate(_row_keys(val_inputs))}
    train_labels = dict(zip(_row_keys(splits.train.tensors[0]), splits.train.tensors[1].tolist()))
    expected_steps = [3, 6, 9, 10]
    torch.manual_seed(seed)
    model = MLP(dropout=0.2)  # dropout makes train and eval mode predict differently
    counter = _StepCounter()
    with counter, _ModelWatch(model, counter) as watch, CallWatch(_library_evaluation()) as calls:
        history = call_learner(train_and_log, model, train_set, splits.val, epochs=2,
                               batch_size=32, eval_every=3, name="train_and_log")
    _refuse_delegation(calls, "train_and_log", "evaluation or per-class accuracy",
                       "predict val_inputs with the model and pass the predictions to YOUR "
                       "per_class_accuracy from (a)")
    if history is None:
        raise CheckFailure("train_and_log returned None", hint="return the history list")
    records = _history_records(history, "the history")
    require(counter.steps == 10, "train_and_log took the wrong number of optimizer steps",
            expected="10 (two epochs of 160 examples in batches of 32)", got=counter.steps,
            hint="keep the loop as given: one optimizer.step() per batch, every epoch")
    used = sorted(counter.optimizers, key=str)
    if used != [(OPTIMIZER, LEARNING_RATE)]:
        names = ", ".join(f"{kind.__name__}(lr={lr:g})" for kind, lr in used)
        raise CheckFailure("train_and_log trained with another optimizer than the loop's",
                           expected=f"{OPTIMIZER.__name__}(lr={LEARNING_RATE:g})", got=names,
                           hint="keep the given loop's optimizer and LEARNING_RATE: the checks "
                           "replay that run, and the records must describe it")
    on_val, on_train, training = _evaluations(watch.passes, val_index, train_labels)
    if not on_val:
        if on_train:
            raise CheckFailure("the model was evaluated on training examples, never on val_set",
                               hint="evaluate on val_set (val_inputs): training accuracy says "
                               "nothing about how the rare class generalises")
        raise CheckFailure("train_and_log never ran the model on the validation examples",
                           hint="at each evaluation, predict val_inputs with the model")
    steps = [record.get("step") for record in records]
    evaluated = sorted(on_val)
    if len(records) != len(expected_steps):
        hint = "append exactly one record each time the loop evaluates"
        if evaluated != expected_steps:
            hint = (f"the model was evaluated after steps {evaluated}; the loop should "
                    f"evaluate after steps {expected_steps}: every eval_every steps, counted over "
                    "the whole run (the count goes on across epochs), and at the run's last step "
                    "(not at the end of each epoch)")
        elif len(records) < len(expected_steps) and steps == expected_steps[-len(records):]:
            hint = ("the records of the first epoch are gone: keep one history for the whole "
                    "run, created before the epoch loop")
        raise CheckFailure("the history should hold one record per evaluation",
                           expected=f"{len(expected_steps)} records (steps {expected_steps}, "
                           "over two epochs)", got=f"{len(records)} records (steps {steps})",
                           hint=hint)
    if steps != expected_steps:
        hint = "store the optimizer step of each evaluation under 'step'"
        if evaluated == expected_steps:
            hint = ("the model was evaluated after steps "
                    f"{evaluated}: log the number of optimizer steps taken so far")
        raise CheckFailure("the records' steps", expected=expected_steps, got=steps, hint=hint)
    rows = _per_class_rows(records, "the history")
    require(all(records[i]["eval_per_class_accuracy"] is not records[j]["eval_per_class_accuracy"]
                for i in range(len(records)) for j in range(i)),
            "several records share one per-class list object",
            hint="store a new list at each evaluation; one list updated in place makes every "
            "record show the last evaluation")

    measured_rows = []
    for index, (record, step) in enumerate(zip(records, expected_steps)):
        where = f"record {index} (step {step})"
        forwards = on_val.get(step)
        if not forwards:
            raise CheckFailure(f"{where} describes an evaluation that did not happen: the model "
                               f"predicted val_set after steps {evaluated}",
                               hint="evaluate inside the loop, right after optimizer.step(), each "
                               "time you append a record; records made later describe another "
                               "model")
        if any(forward["training"] for forward, _ in forwards):
            raise CheckFailure(f"at step {step} the model predicted val_set in training mode "
                               "(dropout on)",
                               hint="call model.eval() before predicting, and predict under "
                               "torch.no_grad()")
        preds = torch.full((len(val_targets),), -1, dtype=torch.long)
        for forward, rows_seen in forwards:
            preds[rows_seen] = forward["preds"]
        seen = int((preds >= 0).sum())
        require(seen == len(val_targets),
                f"at step {step} the model predicted only {seen} of the {len(val_targets)} "
                "validation examples",
                hint="predict every example of val_set at each evaluation")
        measured = _recall(preds, val_targets)
        measured_rows.append(measured)
        row = rows[index]
        overall = (preds == val_targets).double().mean().item()
        if not _all_close(row, measured):
            if any(v > 1.0 + 1e-9 for v in row if not math.isnan(v)):
                raise CheckFailure(f"{where}: the logged per-class values go above 1",
                                   expected=_fmt(measured), got=_fmt(row),
                                   hint="log rates (correct / examples of the class), not counts")
            if all(_nan_equal(v, overall) for v in row):
                raise CheckFailure(f"{where}: every class was logged with the overall accuracy",
                                   expected=_fmt(measured), got=_fmt(row),
                                   hint="log per_class_accuracy(preds, targets, NUM_CLASSES), one "
                                   "value per class")
            # The batches of an evaluation in several passes: every pass smaller than the whole
            # set (a pass over all of it, for the overall accuracy say, is no batch).
            batches = [(forward, rows_seen) for forward, rows_seen in forwards
                       if len(rows_seen) < len(val_targets)]
            if len(batches) > 1:
                batch_rows = [_recall(forward["preds"], val_targets[rows_seen])
                              for forward, rows_seen in batches]
                with np.errstate(all="ignore"):
                    averages = np.nanmean(np.array(batch_rows), axis=0).tolist()
                zeros = np.nan_to_num(np.array(batch_rows), nan=0.0).mean(axis=0).tolist()
                if _all_close(row, averages) or _all_close(row, zeros):
                    raise CheckFailure(f"{where}: the per-class accuracy is a mean of per-batch "
                                       "values", expected=_fmt(measured), got=_fmt(row),
                                       hint="sum the counts over all validation batches and "
                                       "divide once at the end: a mean of per-batch ratios is a "
                                       "different, wrong number")
            for forward, labels in on_train.get(step, []):
                if _all_close(row, _recall(forward["preds"], labels)):
                    raise CheckFailure(f"{where}: the per-class accuracy was measured on the "
                                       "training data", hint="evaluate on val_set: training "
                                       "accuracy says nothing about how the rare class generalises")
            previous = rows[index - 1] if index else [0.0] * NUM_CLASSES
            if _smoothed(row, previous, measured):
                raise CheckFailure(f"{where}: the logged values are smoothed over evaluations",
                                   expected=_fmt(measured), got=_fmt(row),
                                   hint="log each evaluation's raw values; smooth the training "
                                   "loss if you like, never the validation curve")
            if index and _all_close(row, measured_rows[index - 1]):
                raise CheckFailure(f"{where} repeats the previous evaluation's values",
                                   hint="compute the record from this evaluation's predictions")
            raise CheckFailure(f"{where}: the per-class accuracy does not match the model's "
                               "predictions on val_set at that step", expected=_fmt(measured),
                               got=_fmt(row), hint="at each evaluation, predict every example of "
                               "val_set (argmax of the logits) and pass preds and targets to "
                               "per_class_accuracy")
        _require_float_list(record["eval_per_class_accuracy"],
                            f"{where}['eval_per_class_accuracy']")
        if "eval_accuracy" not in record:
            raise CheckFailure(f"{where} has no 'eval_accuracy'", got=f"keys {sorted(record)}",
                               hint="log the overall accuracy too, under 'eval_accuracy'")
        logged = record["eval_accuracy"]
        if not isinstance(logged, float):
            raise CheckFailure(f"{where}: eval_accuracy is a {type(logged).__name__}, not a "
                               "Python float", got=repr(logged)[:60],
                               hint="store a plain number (.item() on a one-element tensor): a "
                               "tensor in the history keeps its graph and device alive and "
                               "cannot be written as JSON")
        require(_nan_equal(logged, overall), f"{where}: eval_accuracy", expected=f"{overall:.4f}",
                got=f"{logged:.4f}",
                hint="the fraction of all validation examples predicted correctly")
    in_eval = [forward["step"] + 1 for forward in training if not forward["training"]]
    require(not in_eval, f"after the evaluation of step {in_eval[0] - 1 if in_eval else 0} the "
            "model went on training in eval mode (dropout off)",
            hint="switch it back with model.train() before the next training step")
    passed("train_and_log records, at each of its 4 evaluations over two epochs, the per-class "
           f"accuracy of the model's own predictions on all of val_set (within {TOLERANCE:g}), in "
           "eval mode, after the step it names")


# ---- (c, d) the rare class falls, and the remedy narrows the gap ---------------------------------


def _gap(rows, rare_class: int) -> tuple[float, float, float, float]:
    """(gap, rare accuracy, mean over classes, mean over the other classes), last evaluations."""
    last = rows[-GAP_EVALUATIONS:]

    def finite_mean(values):
        finite = [v for v in values if not math.isnan(v)]
        return sum(finite) / len(finite) if finite else math.nan

    rare = finite_mean([row[rare_class] for row in last])
    mean = finite_mean([finite_mean(row) for row in last])
    others = finite_mean([finite_mean([v for c, v in enumerate(row) if c != rare_class])
                          for row in last])
    return mean - rare, rare, mean, others


def _replay(train_and_log, train_set, val_set, seed: int, kwargs: dict) -> dict:
    """Run the learner's train_and_log as the notebook does (seed, fresh MLP, the loop's defaults),
    watching it: the examples it reads, its optimizer steps, and the model's weights after every
    step, from which the check makes its own predictions on val_set. Returns what the run did and
    the history it returned."""
    val_inputs, val_targets = _stack(val_set)
    reads = ReadLog(train_set)
    seed_everything(seed)
    model = MLP()
    snapshots = []

    def snapshot(step):
        snapshots.append([p.detach().clone() for p in model.parameters()])

    extra = {"seed": seed} if seed else {}
    with _StepCounter(snapshot) as counter:
        history = call_learner(train_and_log, model, reads, val_set, **kwargs, **extra,
                               name="train_and_log")
    total = counter.steps
    probe = MLP()
    probe.eval()

    def predict(step: int) -> torch.Tensor:
        with torch.no_grad():
            for target, value in zip(probe.parameters(), snapshots[step - 1]):
                target.copy_(value)
            return probe(val_inputs).argmax(dim=-1)

    steps = [s for s in range(1, total + 1) if s % EVAL_EVERY == 0 or s == total]
    rows = [_recall(predict(s), val_targets) for s in steps[-GAP_EVALUATIONS:]]
    return {"history": history, "reads": reads.reads, "steps": total, "rows": rows,
            "predict": predict, "val_targets": val_targets}


def _check_replay_records(run: dict, label: str) -> list[dict]:
    """The records train_and_log returned in the check's run describe that run."""
    records = _history_records(run["history"], f"train_and_log's history ({label})")
    rows = _per_class_rows(records, f"train_and_log's history ({label})")
    for record, row in zip(records, rows):
        step = record.get("step")
        if not isinstance(step, int) or not 1 <= step <= run["steps"]:
            raise CheckFailure(f"train_and_log's history ({label}) names step {step!r}",
                               expected=f"steps 1..{run['steps']}",
                               hint="pass the check of (c) first")
        measured = _recall(run["predict"](step), run["val_targets"])
        require(_all_close(row, measured),
                f"train_and_log's record of step {step} ({label}) does not match the model's "
                "predictions at that step", expected=_fmt(measured), got=_fmt(row),
                hint="pass the check of (c) first")
    return records


def _compare_history(history, name: str, run_records: list[dict], how: str) -> None:
    """A history the learner made must be the run the check replayed, record for record."""
    records = _history_records(history, name)
    rows = _per_class_rows(records, name)
    replay_rows = [_to_floats(r["eval_per_class_accuracy"], "record", NUM_CLASSES)
                   for r in run_records]
    steps = [record.get("step") for record in records]
    replay_steps = [record.get("step") for record in run_records]
    same = steps == replay_steps and all(_all_close(a, b, 1e-9) for a, b in zip(rows, replay_rows))
    if not same:
        first = next((i for i, (a, b) in enumerate(zip(rows, replay_rows))
                      if not _all_close(a, b, 1e-9)), min(len(rows), len(replay_rows)))
        detail = (f"{len(records)} records, steps up to {steps[-1]}; the replay: "
                  f"{len(run_records)} records, steps up to {replay_steps[-1]}"
                  if steps != replay_steps else f"they differ from record {first} on")
        raise CheckFailure(f"{name} is not the run it should be: the check replayed {how} "
                           f"({detail})",
                           hint="re-run the cell as described: a fresh model from seeded_mlp(0), "
                           "train_set and val_set, and nothing else changed; a history made any "
                           "other way cannot be checked")


def _read_counts(run: dict, labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels[torch.tensor(run["reads"], dtype=torch.long)],
                          minlength=NUM_CLASSES).tolist() if run["reads"] else [0] * NUM_CLASSES


def check_rare_class_falls(history_before, train_and_log, train_set, val_set, rare_class: int,
                           *, seed: int = 0) -> None:
    """Trained on the imbalanced set, the rare class ends far below the mean over classes, measured
    in a run of train_and_log that the check starts; history_before must be that run."""
    for value, name in ((train_set, "train_set"), (val_set, "val_set"),
                        (history_before, "history_before")):
        if value is None:
            raise NotImplementedYet(name)
    run = _replay(train_and_log, train_set, val_set, seed, {})
    labels = dataset_labels(train_set)
    read = _read_counts(run, labels)
    require(sum(read) > 0, "train_and_log never read an example of the train_set passed to it",
            hint="build the loader from the train_set argument, not from another dataset")
    records = _check_replay_records(run, "without a remedy")
    gap, rare, mean, _ = _gap(run["rows"], rare_class)
    require(not math.isnan(gap), f"class {rare_class} has no examples in val_set",
            hint="use val_set = splits.val")
    epochs = max(1, round(sum(read) / len(labels)))
    require(gap >= MIN_GAP_BEFORE,
            f"class {rare_class} should end far below the mean over classes",
            expected=f"a gap of at least {MIN_GAP_BEFORE}",
            got=f"{gap:.2f} (class {rare_class}: {rare:.2f}, mean {mean:.2f}; the run read "
            f"{read[rare_class] // epochs} examples of class {rare_class} per epoch)",
            hint="train on train_set, the imbalanced set of (b), with train_and_log's defaults")
    _compare_history(history_before, "history_before", records,
                     "train_and_log on seeded_mlp(0), train_set and val_set")
    passed(f"class {rare_class} ends {gap:.2f} below the mean over classes ({rare:.2f} against "
           f"{mean:.2f}, last {GAP_EVALUATIONS} evaluations), measured in a replay of your run; "
           "history_before is that run")


_REMEDY_KEYS = ("loss_fn", "sampler")


def _remedy_kwargs(remedy, dataset, what: str) -> dict:
    kwargs = call_learner(remedy, dataset, name="remedy")
    if kwargs is None:
        raise CheckFailure(f"{what} returned None",
                           hint="return a dict of keyword arguments for train_and_log")
    if not isinstance(kwargs, dict):
        raise CheckFailure(f"{what} should return a dict of keyword arguments",
                           got=type(kwargs).__name__,
                           hint='return {"loss_fn": ...} or {"sampler": ...}')
    others = [key for key in kwargs if key not in _REMEDY_KEYS]
    if others:
        raise CheckFailure(f"{what} returned {others[0]!r}, which is not one of the three "
                           "remedies", got=f"keys {sorted(map(str, kwargs))}",
                           hint="counter the imbalance itself, with a weighted loss (loss_fn) or "
                           "oversampling (sampler); training longer, faster or otherwise "
                           "differently is not a remedy and is not allowed here")
    given = {key: value for key, value in kwargs.items() if value is not None}
    require(len(given) > 0, f"{what} returned no remedy", got=repr(kwargs)[:60],
            hint="return a loss_fn or a sampler that favours the rare class")
    require(len(given) == 1, f"{what} returned both a loss_fn and a sampler",
            hint="apply one remedy: oversampling and class weights together count the imbalance "
            "twice")
    return given


def _loss_favour(loss_fn, labels: torch.Tensor, what: str) -> list[float]:
    """Each class's weight in the loss, relative to the median class: the size of the loss's
    gradient for one example of each class, all at equal logits (where cross-entropy and focal
    loss treat every class alike, so only class weights make a difference)."""
    if not callable(loss_fn):
        raise CheckFailure(f"the loss_fn of {what} cannot be called", got=type(loss_fn).__name__,
                           hint="pass a loss module, e.g. an instance of nn.CrossEntropyLoss")
    logits = torch.zeros(NUM_CLASSES, NUM_CLASSES, requires_grad=True)
    try:
        loss = loss_fn(logits, torch.arange(NUM_CLASSES))
    except Exception as error:  # noqa: BLE001 - any crash in learner code becomes a readable line
        raise CheckFailure(f"the loss_fn of {what} raised {type(error).__name__}: {error}",
                           hint="it is called as loss_fn(logits, targets), like "
                           "nn.CrossEntropyLoss") from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise CheckFailure(f"the loss_fn of {what} should return one differentiable number",
                           got=repr(loss)[:60],
                           hint="keep the default reduction ('mean'), and compute the loss from "
                           "the logits")
    loss.backward()
    size = logits.grad.norm(dim=1).tolist()
    middle = statistics.median(size)
    require(middle > 0 and all(math.isfinite(v) for v in size),
            f"the loss_fn of {what} gives no gradient to most classes",
            hint="a loss that does not depend on the logits cannot train the model")
    return [v / middle for v in size]


def _sampler_favour(sampler, labels: torch.Tensor, what: str) -> list[float]:
    """How often the sampler draws each example of a class, relative to the median class, over
    SAMPLER_PASSES passes; checks that it draws indices of the set and about as many as the set holds."""
    state = torch.get_rng_state()
    try:
        passes = [[int(i) for i in iter(sampler)] for _ in range(SAMPLER_PASSES)]
    except Exception as error:  # noqa: BLE001 - any crash in learner code becomes a readable line
        raise CheckFailure(f"iterating the sampler of {what} raised {type(error).__name__}: "
                           f"{error}", hint="pass a torch.utils.data sampler") from None
    finally:
        torch.set_rng_state(state)
    size = len(labels)
    draws = [i for one in passes for i in one]
    bad = [i for i in draws if not 0 <= i < size]
    require(not bad, f"the sampler of {what} draws index {bad[0] if bad else 0}, outside the set",
            expected=f"indices 0..{size - 1}", hint="draw indices into the set remedy receives")
    per_pass = len(draws) / SAMPLER_PASSES
    if draws and max(draws) < NUM_CLASSES <= size // 10:
        raise CheckFailure(f"the sampler of {what} only draws indices 0..{NUM_CLASSES - 1}",
                           hint="it needs one weight per EXAMPLE (the weight of its class), not "
                           "one per class")
    low, high = SAMPLER_DRAWS
    require(low * size <= per_pass <= high * size,
            f"the sampler of {what} draws {per_pass:.0f} examples per pass; the set holds {size}",
            hint="draw as many examples per pass as the set holds: drawing more is training "
            "longer, not a remedy")
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double()
    drawn = torch.bincount(labels[torch.tensor(draws)], minlength=NUM_CLASSES).double()
    rate = (drawn / counts.clamp(min=1)).tolist()
    middle = statistics.median(rate)
    return [v / middle if middle > 0 else math.inf for v in rate]


def _check_favours(remedy, dataset, rare_class: int, what: str) -> str:
    """The remedy that `remedy(dataset)` returns favours `rare_class`; returns its kind."""
    kwargs = _remedy_kwargs(remedy, dataset, what)
    labels = dataset_labels(dataset)
    if "loss_fn" in kwargs:
        favour, kind = _loss_favour(kwargs["loss_fn"], labels, what), "loss_fn"
        alike = ("its loss treats every class alike, like plain cross-entropy (focal loss "
                 "without alpha does too): give the rarer classes larger weights (the weight= of "
                 "CrossEntropyLoss, the alpha= of FocalLoss)")
    else:
        favour, kind = _sampler_favour(kwargs["sampler"], labels, what), "sampler"
        alike = ("its sampler draws every class as often as the set holds it: weight each example "
                 "by 1 / (the count of its class), and draw with replacement")
    rare = favour[rare_class]
    best = max(range(NUM_CLASSES), key=lambda c: favour[c])
    if best != rare_class and favour[best] >= MIN_FAVOUR and favour[best] > rare + 1e-6:
        raise CheckFailure(f"{what} favours class {best} ({favour[best]:.2f}x the median class), "
                           f"not class {rare_class}, the rarest of that set",
                           hint="compute the weights from the class counts of the set remedy "
                           "receives, not for a fixed class or from another set")
    if rare < MIN_FAVOUR:
        if 0.75 <= rare <= 1.25:
            hint = alike
        elif rare < 0.75:
            hint = ("the rarest class gets LESS than the others: the weights must grow as a class "
                    "gets rarer, not shrink")
        else:
            hint = ("the rare class is favoured too little; weights proportional to "
                    "1 / (count of the class) are the usual choice")
        raise CheckFailure(f"{what} does not favour class {rare_class}, the rarest of that set",
                           expected=f"at least {MIN_FAVOUR:g}x the median class",
                           got=f"{rare:.2f}x", hint=hint + "; compute it from the class counts "
                           "of the set remedy receives")
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double()
    inverse = statistics.median(counts.tolist()) / max(1.0, float(counts[rare_class]))
    require(rare <= MAX_FAVOUR_OVER_INVERSE * inverse,
            f"{what} favours class {rare_class} far too much",
            expected=f"about {inverse:.1f}x the median class (inverse class frequency), at most "
            f"{MAX_FAVOUR_OVER_INVERSE * inverse:.1f}x", got=f"{rare:.1f}x",
            hint="extreme weights buy the rare class with every other one: inverse class "
            "frequency is enough")
    return kind


def check_remedy(remedy, history_after, train_and_log, train_set, val_set, rare_class: int,
                 *, seed: int = 0) -> None:
    """remedy(train_set) returns one of the three remedies (a class-weighted loss, focal loss with
    class weights, or a sampler that oversamples by class), computed from the set it receives. The
    check applies it in a run of train_and_log it starts, measures the gap there, and compares
    history_after with that run."""
    for value, name in ((train_set, "train_set"), (val_set, "val_set")):
        if value is None:
            raise NotImplementedYet(name)
    kind = _check_favours(remedy, train_set, rare_class, "remedy(train_set)")
    # Another imbalanced set, another rare class: a remedy written for class 8 only fails here.
    other_class = (rare_class + 5) % NUM_CLASSES
    other = downsample_class(load_digits_splits(seed=0).train, other_class, 0.1, seed=seed + 1)
    _check_favours(remedy, other, other_class,
                   f"remedy(a training set where class {other_class} is the rare one)")
    if history_after is None:
        raise NotImplementedYet("history_after")

    before = _replay(train_and_log, train_set, val_set, seed, {})
    _check_replay_records(before, "without a remedy")
    kwargs = _remedy_kwargs(remedy, train_set, "remedy(train_set)")
    counted = None
    if kind == "loss_fn":
        counted = kwargs["loss_fn"] = _CountedLoss(kwargs["loss_fn"])
    after = _replay(train_and_log, train_set, val_set, seed, kwargs)
    if counted is not None:
        require(counted.calls >= after["steps"] > 0,
                "train_and_log never used the loss_fn it was given",
                hint="the loop must use its loss_fn argument when one is passed")
    else:
        labels = dataset_labels(train_set)
        share_before = _read_counts(before, labels)[rare_class] / max(1, len(before["reads"]))
        share_after = _read_counts(after, labels)[rare_class] / max(1, len(after["reads"]))
        require(share_after > 2 * share_before,
                "train_and_log did not draw its batches with the sampler it was given",
                expected=f"class {rare_class} far more often than {share_before:.3f} of the reads",
                got=f"{share_after:.3f}",
                hint="the loop must give its sampler argument to the DataLoader")
    records = _check_replay_records(after, "with the remedy")

    gap_before, rare_before, _, others_before = _gap(before["rows"], rare_class)
    gap_after, rare_after, _, others_after = _gap(after["rows"], rare_class)
    require(gap_before >= MIN_GAP_BEFORE,
            "without the remedy, the run should show a large gap first",
            expected=f"at least {MIN_GAP_BEFORE}", got=f"{gap_before:.2f}",
            hint="pass the check of history_before first")
    shrank = gap_before - gap_after >= MIN_GAP_REDUCTION and \
        gap_after <= MAX_GAP_RATIO_AFTER * gap_before
    require(shrank, f"with the remedy, the gap of class {rare_class} below the mean should shrink "
            "clearly", expected=f"at most "
            f"{min(gap_before - MIN_GAP_REDUCTION, MAX_GAP_RATIO_AFTER * gap_before):.2f}",
            got=f"{gap_before:.2f} before, {gap_after:.2f} after",
            hint="class weights must grow as a class gets rarer (inverse class frequency); focal "
            "loss needs them as alpha; a sampler needs one weight per EXAMPLE and replacement")
    require(others_after >= others_before - MAX_OTHERS_DROP,
            "with the remedy, the other classes lost too much accuracy",
            expected=f"their mean at least {others_before - MAX_OTHERS_DROP:.2f}",
            got=f"{others_after:.2f} (before: {others_before:.2f})",
            hint="the weights are too extreme: inverse class frequency is enough")
    _compare_history(history_after, "history_after", records,
                     "train_and_log on seeded_mlp(0), train_set, val_set and **remedy(train_set)")
    name = {"loss_fn": "the weighted loss", "sampler": "oversampling"}[kind]
    passed(f"{name} shrank the gap of class {rare_class} below the mean from {gap_before:.2f} to "
           f"{gap_after:.2f} in the check's own runs (its accuracy {rare_before:.2f} -> "
           f"{rare_after:.2f}; the other classes {others_before:.2f} -> {others_after:.2f}); "
           "history_after is that run")
