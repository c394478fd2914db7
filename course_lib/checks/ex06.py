"""Checks for exercise 06, per-class accuracy and class imbalance (introduced in exercise 06).

The exercise: compute per-class accuracy, cut one class of the training set down to a small
fraction, log per-class accuracy at every evaluation, watch the rare class fall away from the mean,
then apply one remedy and watch the gap shrink. Each check below grades one of those steps and
names the realistic mistake it found in its hint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

from course_lib.checks._core import CheckFailure, NotImplementedYet, call_learner, passed, require
from course_lib.data import class_counts, load_digits_splits
from course_lib.metrics import precision_recall
from course_lib.models import MLP

# The rare class's gap below the mean over classes, averaged over the last few evaluations (one
# evaluation alone is noisy: a validation class has about 27 examples, so one example is 0.04).
GAP_EVALUATIONS = 3
# "Large" before the remedy. With class 8 cut to 15 % and the exercise's loop, the gap measured
# 0.46-0.74 over 16 seeds (seed s for the downsampling, the model and the data order).
MIN_GAP_BEFORE = 0.3
# A remedy must remove at least this much of the gap, and at least this share of it. Over the same
# 16 seeds, class weights, focal loss with alpha and oversampling each removed 0.25 or more, and
# 40 % or more of the gap; focal loss without alpha removed 0.02-0.24, and a remedy that does
# nothing removes 0.
MIN_GAP_REDUCTION = 0.1
MAX_GAP_RATIO_AFTER = 0.8
# How much the other classes' mean accuracy may drop: a remedy that buys the rare class with the
# others (absurdly large weights) is no remedy.
MAX_OTHERS_DROP = 0.1


# ---- shared helpers ------------------------------------------------------------------------------


def _nan_equal(a: float, b: float, tol: float = 1e-6) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def _all_close(got, expected, tol: float = 1e-6) -> bool:
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
        if isinstance(item, torch.Tensor) and item.numel() == 1:
            item = item.item()
        elif isinstance(item, (np.ndarray, np.generic)) and item.size == 1:
            item = item.item()
        try:
            floats.append(float(item))
        except (TypeError, ValueError):
            raise CheckFailure(f"{what} should hold numbers", got=repr(item)[:60],
                               hint="one float per class") from None
    return floats


def _recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float]:
    """Per-class recall from scikit-learn, NaN where a class has no examples."""
    from sklearn.metrics import recall_score

    recall = recall_score(targets.numpy(), preds.numpy(), labels=list(range(num_classes)),
                          average=None, zero_division=0)
    present = torch.bincount(targets, minlength=num_classes)
    return [float(r) if present[c] > 0 else math.nan for c, r in enumerate(recall)]


# ---- (a) per_class_accuracy ----------------------------------------------------------------------


def _batch(sizes, correct, shift=3, seed=0):
    """Targets with `sizes[c]` examples of class c, `correct[c]` of them predicted right and the rest
    predicted as class c + shift: per-class accuracies all differ, and precision differs from recall."""
    num_classes = len(sizes)
    targets, preds = [], []
    for c, (size, right) in enumerate(zip(sizes, correct)):
        targets += [c] * size
        preds += [c] * right + [(c + shift) % num_classes] * (size - right)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(preds)[order], torch.tensor(targets)[order]


# Every class present, sizes 3..12, per-class accuracies all different.
_ALL_PRESENT = _batch([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [3, 2, 5, 1, 7, 4, 0, 10, 6, 9])
# Class 3 absent from the targets but predicted (wrongly) for class 0: its accuracy is undefined.
_ABSENT_MIDDLE = _batch([6, 5, 4, 0, 7, 6, 5, 4, 6, 5], [2, 5, 1, 0, 7, 3, 5, 0, 6, 2], seed=1)
# The last class (9) absent altogether: neither a target nor a prediction.
_ABSENT_LAST = _batch([5, 4, 6, 5, 7, 6, 5, 4, 6, 0], [5, 1, 3, 5, 2, 6, 4, 4, 0, 0], shift=1, seed=2)


def _call_per_class(per_class_accuracy, preds, targets, num_classes, absent):
    """Call the learner's function; a division by zero becomes a hint about NaN."""
    try:
        return call_learner(per_class_accuracy, preds.clone(), targets.clone(), num_classes,
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


def check_per_class_accuracy(per_class_accuracy) -> None:
    """per_class_accuracy(preds, targets, num_classes): recall per class, NaN for an absent class."""
    preds, targets = _ALL_PRESENT
    got = _to_floats(_call_per_class(per_class_accuracy, preds, targets, 10, None),
                     "per_class_accuracy(...)", 10)
    expected = _recall(preds, targets, 10)
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
    if _all_close(got, precision_recall(preds, targets, 10)["precision"]):
        raise CheckFailure("per_class_accuracy returned each class's precision",
                           expected=_fmt(expected), got=_fmt(got),
                           hint="divide by the number of examples whose true label is c, not by "
                           "the number predicted as c (check the order of preds and targets)")
    if not _all_close(got, expected):
        wrong = next(c for c in range(10) if not _nan_equal(got[c], expected[c]))
        raise CheckFailure(f"per_class_accuracy differs from scikit-learn's per-class recall for "
                           f"class {wrong}", expected=f"{expected[wrong]:.4f}",
                           got=f"{got[wrong]:.4f}",
                           hint="for class c: (number of examples with target c AND prediction c) "
                           "/ (number of examples with target c)")

    for (preds, targets), absent in ((_ABSENT_MIDDLE, 3), (_ABSENT_LAST, 9)):
        result = _call_per_class(per_class_accuracy, preds, targets, 10, absent)
        if isinstance(result, (list, tuple, torch.Tensor, np.ndarray)) and len(result) != 10:
            raise CheckFailure(f"with class {absent} absent from the batch, per_class_accuracy "
                               "returned the wrong number of values", expected="10 values",
                               got=f"{len(result)} values",
                               hint="return one value for every class 0..num_classes-1, also for a "
                               "class that is not in the batch (e.g. bincount(..., "
                               "minlength=num_classes))")
        got = _to_floats(result, "per_class_accuracy(...)", 10)
        expected = _recall(preds, targets, 10)
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
    passed("per_class_accuracy matches scikit-learn's per-class recall and gives NaN for a class "
           "absent from the batch")


# ---- (b) make_imbalanced and the two sets --------------------------------------------------------


def _tagged_dataset(seed: int = 0) -> TensorDataset:
    """400 examples, 40 of each class, shuffled; feature 0 of each example is its index."""
    labels = torch.arange(10).repeat_interleave(40)
    labels = labels[torch.randperm(400, generator=torch.Generator().manual_seed(seed))]
    ids = torch.arange(400, dtype=torch.float32)
    features = torch.stack([ids, labels.float(), torch.ones(400)], dim=1)
    return TensorDataset(features, labels)


def _read_examples(dataset, what: str) -> list[tuple[int, int]]:
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
        examples.append((int(torch.as_tensor(features).reshape(-1)[0]), int(label)))
    return examples


def _kept_bounds(count: int, keep_fraction: float) -> tuple[int, int]:
    """Acceptable kept counts: floor, round or ceil of count * fraction, and at least one."""
    exact = count * keep_fraction
    return max(1, math.floor(exact + 1e-9)), max(1, math.ceil(exact - 1e-9))


def _check_counts(counts, original, cls, keep_fraction, what: str) -> None:
    low, high = _kept_bounds(original[cls], keep_fraction)
    kept = counts[cls]
    if kept == original[cls] and keep_fraction < 1:
        raise CheckFailure(f"{what} still holds all {kept} examples of class {cls}",
                           expected=f"{low}" if low == high else f"{low}-{high}", got=kept,
                           hint="keep only round(keep_fraction * n) of the n examples of that class")
    others_wrong = [c for c in range(len(original)) if c != cls and counts[c] != original[c]]
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
        raise CheckFailure(f"{what} has no example of class {cls} left", expected=low, got=0,
                           hint="keep at least one example, so the class still exists in training")
    if not low <= kept <= high:
        hint = "keep round(keep_fraction * n) examples of the class"
        if abs(kept - round(original[cls] * (1 - keep_fraction))) <= 1:
            hint = "keep_fraction is the share KEPT, not the share removed"
        raise CheckFailure(f"{what} keeps the wrong number of class {cls}",
                           expected=f"{low}" if low == high else f"{low}-{high} "
                           f"({keep_fraction:g} of {original[cls]})", got=kept, hint=hint)


def check_make_imbalanced(make_imbalanced) -> None:
    """make_imbalanced(dataset, cls, keep_fraction, seed): only class `cls` shrinks, as requested."""
    dataset = _tagged_dataset()
    before = dataset.tensors[0].clone(), dataset.tensors[1].clone()
    original = class_counts(dataset)
    for cls, keep_fraction in ((3, 0.25), (8, 0.15), (0, 1.0), (5, 0.01)):
        what = f"make_imbalanced(dataset, {cls}, {keep_fraction})"
        result = call_learner(make_imbalanced, dataset, cls, keep_fraction, seed=0,
                              name="make_imbalanced")
        if result is None:
            raise CheckFailure(f"{what} returned None", hint="return the new dataset (a Subset)")
        if not (torch.equal(dataset.tensors[0], before[0])
                and torch.equal(dataset.tensors[1], before[1])):
            raise CheckFailure("make_imbalanced changed the dataset passed to it",
                               hint="leave the input untouched; return a new Subset of it")
        examples = _read_examples(result, what)
        counts = [0] * 10
        for _, label in examples:
            if not 0 <= label < 10:
                raise CheckFailure(f"{what} holds label {label}", hint="keep the labels as they are")
            counts[label] += 1
        _check_counts(counts, original, cls, keep_fraction, what)
        ids = [i for i, _ in examples]
        require(len(set(ids)) == len(ids), f"{what} holds some examples twice",
                hint="downsampling keeps each chosen example once: draw without replacement "
                "(torch.randperm), not with it")
        labels = dataset.tensors[1]
        mixed = [(i, y) for i, y in examples if int(labels[i]) != y]
        require(not mixed, f"{what} pairs some examples with the wrong label",
                hint="select whole examples (indices into the dataset), never features and labels "
                "separately")

    first = _read_examples(call_learner(make_imbalanced, dataset, 3, 0.25, seed=0,
                                        name="make_imbalanced"), "make_imbalanced")
    again = _read_examples(call_learner(make_imbalanced, dataset, 3, 0.25, seed=0,
                                        name="make_imbalanced"), "make_imbalanced")
    require(sorted(first) == sorted(again), "two calls with the same seed kept different examples",
            hint="draw with a generator of your own, torch.Generator().manual_seed(seed), so the "
            "same seed keeps the same examples")
    chosen = {seed: frozenset(i for i, y in _read_examples(
        call_learner(make_imbalanced, dataset, 3, 0.25, seed=seed, name="make_imbalanced"),
        "make_imbalanced") if y == 3) for seed in (1, 2, 3)}
    require(len(set(chosen.values())) > 1, "every seed kept the same examples of the class",
            hint="choose the kept examples at random with the seed (torch.randperm with a seeded "
            "generator), not always the first ones")
    passed("make_imbalanced keeps the requested share of one class (at least one example), every "
           "example of the others, each once, reproducibly per seed")


def check_imbalanced_split(train_set, val_set, splits, rare_class: int, keep_fraction: float) -> None:
    """train_set: splits.train with `rare_class` cut to `keep_fraction`; val_set: splits.val as is."""
    if train_set is None:
        raise NotImplementedYet("train_set")
    if val_set is None:
        raise NotImplementedYet("val_set")
    train_original = class_counts(splits.train)
    val_original = class_counts(splits.val)
    try:
        train_counts = class_counts(train_set)
        val_counts = class_counts(val_set)
    except Exception as error:  # noqa: BLE001 - anything that is not a labelled dataset
        raise CheckFailure(f"could not count the labels of train_set and val_set "
                           f"({type(error).__name__}: {error})",
                           hint="both should be datasets of (features, label) pairs") from None
    if val_counts[rare_class] < val_original[rare_class] and val_counts != train_counts:
        raise CheckFailure(f"val_set lost examples of class {rare_class}",
                           expected=f"{val_original[rare_class]} (all of them)",
                           got=val_counts[rare_class],
                           hint="downsample the TRAINING set only: the validation set must keep its "
                           f"natural balance, or class {rare_class} is measured on a handful of "
                           "examples and the overall accuracy hides the damage even better")
    if val_counts != val_original:
        raise CheckFailure("val_set is not the validation split",
                           expected=f"class counts {val_original}", got=f"{val_counts}",
                           hint="use splits.val unchanged")
    _check_counts(train_counts, train_original, rare_class, keep_fraction, "train_set")
    passed(f"train_set keeps {train_counts[rare_class]} of {train_original[rare_class]} examples of "
           f"class {rare_class} and all of the others; val_set is untouched "
           f"({val_counts[rare_class]} of class {rare_class})")


# ---- (c) per-class accuracy logged at every evaluation -------------------------------------------


def _history_records(history, name: str) -> list[dict]:
    if history is None:
        raise NotImplementedYet(name)
    records = getattr(history, "records", history)  # a course_lib History, or a list of dicts
    if not isinstance(records, (list, tuple)) or not all(isinstance(r, dict) for r in records):
        raise CheckFailure(f"{name} should be a list of dicts, one per evaluation",
                           got=type(history).__name__,
                           hint="append one dict per evaluation to a list and return the list")
    records = [r for r in records if "eval_per_class_accuracy" in r or "eval_accuracy" in r] or records
    require(len(records) > 0, f"{name} is empty",
            hint="append a record at every evaluation (every eval_every steps and at the end)")
    return list(records)


def _per_class_rows(records, name: str, num_classes: int = 10) -> list[list[float]]:
    rows = []
    for index, record in enumerate(records):
        if "eval_per_class_accuracy" not in record:
            raise CheckFailure(f"record {index} of {name} has no 'eval_per_class_accuracy'",
                               got=f"keys {sorted(record)}",
                               hint="log per-class accuracy at EVERY evaluation, under the key "
                               "'eval_per_class_accuracy'")
        rows.append(_to_floats(record["eval_per_class_accuracy"],
                               f"{name}[{index}]['eval_per_class_accuracy']", num_classes))
    return rows


def check_per_class_logging(train_and_log) -> None:
    """train_and_log(model, train_set, val_set, epochs=, batch_size=, eval_every=) logs per-class
    accuracy on val_set at every evaluation."""
    splits = load_digits_splits(seed=0)
    train_set = Subset(splits.train, list(range(256)))  # 8 steps of 32
    val_set = splits.val
    torch.manual_seed(0)
    model = MLP()
    history = call_learner(train_and_log, model, train_set, val_set, epochs=1, batch_size=32,
                           eval_every=3, name="train_and_log")
    if history is None:
        raise CheckFailure("train_and_log returned None", hint="return the history list")
    records = _history_records(history, "the history")
    expected_steps = [3, 6, 8]
    require(len(records) == len(expected_steps),
            "the history should hold one record per evaluation",
            expected=f"{len(expected_steps)} records (steps {expected_steps})",
            got=f"{len(records)} records",
            hint="append exactly one record each time the loop evaluates")
    steps = [record.get("step") for record in records]
    require(steps == expected_steps, "the records' steps", expected=expected_steps, got=steps,
            hint="store the optimizer step of each evaluation under 'step'")
    rows = _per_class_rows(records, "the history")
    require(all(records[i]["eval_per_class_accuracy"] is not records[j]["eval_per_class_accuracy"]
                for i in range(len(records)) for j in range(i)),
            "several records share one per-class list object",
            hint="store a new list at each evaluation; one list updated in place makes every "
            "record show the last evaluation")

    with torch.no_grad():
        model.eval()
        val_inputs, val_targets = splits.val.tensors
        val_preds = model(val_inputs).argmax(dim=-1)
        train_inputs, train_targets = splits.train.tensors[0][:256], splits.train.tensors[1][:256]
        train_preds = model(train_inputs).argmax(dim=-1)
    expected = _recall(val_preds, val_targets, 10)
    overall = (val_preds == val_targets).double().mean().item()
    last = rows[-1]
    if any(v > 1.0 + 1e-9 for v in last if not math.isnan(v)):
        raise CheckFailure("the logged per-class values go above 1", expected=_fmt(expected),
                           got=_fmt(last), hint="log rates (correct / examples of the class), "
                           "not counts")
    if all(_nan_equal(v, overall, 1e-4) for v in last):
        raise CheckFailure("every class was logged with the overall accuracy",
                           expected=_fmt(expected), got=_fmt(last),
                           hint="log per_class_accuracy(preds, targets, NUM_CLASSES), one value "
                           "per class")
    if not _all_close(last, expected, 1e-4):
        if _all_close(last, _recall(train_preds, train_targets, 10), 1e-4):
            raise CheckFailure("the per-class accuracy was measured on the training data",
                               hint="evaluate on val_set: training accuracy says nothing about "
                               "how the rare class generalises")
        raise CheckFailure("the last record's per-class accuracy does not match the trained "
                           "model's on val_set", expected=_fmt(expected), got=_fmt(last),
                           hint="at each evaluation, predict every example of val_set "
                           "(argmax of the logits) and pass preds and targets to "
                           "per_class_accuracy")
    if "eval_accuracy" in records[-1]:
        logged = float(records[-1]["eval_accuracy"])
        require(_nan_equal(logged, overall, 1e-4), "the last record's eval_accuracy",
                expected=f"{overall:.4f}", got=f"{logged:.4f}",
                hint="the fraction of all validation examples predicted correctly")
    passed("train_and_log records the per-class accuracy on val_set at every evaluation "
           f"({len(records)} of {len(records)} in a short run), matching the trained model")


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


def rare_class_gap(history, rare_class: int) -> float:
    """How far `rare_class` sits below the mean over classes, over the last few evaluations."""
    rows = _per_class_rows(_history_records(history, "history"), "history")
    return _gap(rows, rare_class)[0]


def check_rare_class_falls(history_before, rare_class: int) -> None:
    """Trained on the imbalanced set, the rare class ends far below the mean over classes."""
    records = _history_records(history_before, "history_before")
    rows = _per_class_rows(records, "history_before")
    require(len(rows) >= GAP_EVALUATIONS, "history_before holds too few evaluations",
            expected=f"at least {GAP_EVALUATIONS}", got=len(rows),
            hint="train with the default epochs and eval_every, which evaluate 16 times")
    gap, rare, mean, _ = _gap(rows, rare_class)
    require(not math.isnan(gap), f"class {rare_class} has no accuracy in history_before",
            hint="is it absent from the validation set? Use val_set = splits.val")
    require(gap >= MIN_GAP_BEFORE,
            f"class {rare_class} should end far below the mean over classes",
            expected=f"a gap of at least {MIN_GAP_BEFORE}",
            got=f"{gap:.2f} (class {rare_class}: {rare:.2f}, mean {mean:.2f})",
            hint="train a fresh MLP on train_set (the imbalanced one) with train_and_log's "
            "defaults and no remedy")
    passed(f"class {rare_class} ends {gap:.2f} below the mean over classes ({rare:.2f} against "
           f"{mean:.2f}, last {GAP_EVALUATIONS} evaluations)")


def check_remedy(history_before, history_after, rare_class: int) -> None:
    """The remedy narrows the rare class's gap clearly, without sacrificing the other classes."""
    rows_before = _per_class_rows(_history_records(history_before, "history_before"),
                                  "history_before")
    rows_after = _per_class_rows(_history_records(history_after, "history_after"),
                                 "history_after")
    require(len(rows_after) >= GAP_EVALUATIONS, "history_after holds too few evaluations",
            expected=f"at least {GAP_EVALUATIONS}", got=len(rows_after),
            hint="train as long as for history_before")
    if len(rows_before) == len(rows_after) and all(
            _all_close(a, b, 0.0) for a, b in zip(rows_before, rows_after)):
        raise CheckFailure("history_after is identical to history_before",
                           hint="the remedy never reached the training: pass **remedy(train_set) "
                           "to train_and_log, and make train_and_log use its loss_fn and sampler")
    gap_before, rare_before, _, others_before = _gap(rows_before, rare_class)
    gap_after, rare_after, _, others_after = _gap(rows_after, rare_class)
    require(gap_before >= MIN_GAP_BEFORE, "history_before should show a large gap first",
            expected=f"at least {MIN_GAP_BEFORE}", got=f"{gap_before:.2f}",
            hint="train history_before on train_set without any remedy")
    shrank = gap_before - gap_after >= MIN_GAP_REDUCTION and \
        gap_after <= MAX_GAP_RATIO_AFTER * gap_before
    require(shrank, f"the gap of class {rare_class} below the mean should shrink clearly",
            expected=f"at most {min(gap_before - MIN_GAP_REDUCTION, MAX_GAP_RATIO_AFTER * gap_before):.2f}",
            got=f"{gap_before:.2f} before, {gap_after:.2f} after",
            hint="class weights must grow as a class gets rarer (e.g. total / (num_classes * "
            "count)); focal loss alone changes little here, give it those weights as alpha; "
            "a WeightedRandomSampler needs one weight per EXAMPLE (1 / its class count) and "
            "replacement=True")
    require(others_after >= others_before - MAX_OTHERS_DROP,
            "the other classes lost too much accuracy",
            expected=f"their mean at least {others_before - MAX_OTHERS_DROP:.2f}",
            got=f"{others_after:.2f} (before: {others_before:.2f})",
            hint="the weights are too extreme: inverse class frequency is enough")
    passed(f"the gap of class {rare_class} below the mean shrank from {gap_before:.2f} to "
           f"{gap_after:.2f} (its accuracy {rare_before:.2f} -> {rare_after:.2f}; the other "
           f"classes {others_before:.2f} -> {others_after:.2f})")
