"""The checks of exercise 06 pass a correct answer, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from course_lib import MLP, class_counts, downsample_class, load_digits_splits
from course_lib import per_class_accuracy as reference_per_class_accuracy
from course_lib.checks._core import CheckFailure, NotImplementedYet
from course_lib.checks.ex06 import (
    check_imbalanced_split,
    check_make_imbalanced,
    check_per_class_accuracy,
    check_per_class_logging,
    check_rare_class_falls,
    check_remedy,
    rare_class_gap,
)

NUM_CLASSES = 10
RARE_CLASS = 8
KEEP_FRACTION = 0.15


def stub(*args, **kwargs):
    raise NotImplementedError("write your code here")


def fails_with(check, *args, hint=None, what=None):
    """Run a check that must fail; return the failure after matching its hint and message."""
    with pytest.raises(CheckFailure) as info:
        check(*args)
    assert not isinstance(info.value, NotImplementedYet), info.value.line()
    if hint is not None:
        assert hint in info.value.hint, info.value.line()
    if what is not None:
        assert what in info.value.what, info.value.line()
    return info.value


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0)


# ---- (a) per_class_accuracy ----------------------------------------------------------------------


def loop_per_class_accuracy(preds, targets, num_classes):
    """A learner's correct answer, written with a loop."""
    result = []
    for c in range(num_classes):
        of_class = targets == c
        count = int(of_class.sum())
        result.append((preds[of_class] == c).sum().item() / count if count else math.nan)
    return result


def overall_for_every_class(preds, targets, num_classes):
    return [(preds == targets).float().mean().item()] * num_classes


def divides_by_zero(preds, targets, num_classes):
    result = []
    for c in range(num_classes):
        correct = int(((preds == c) & (targets == c)).sum())
        result.append(correct / int((targets == c).sum()))
    return result


def zero_for_absent_class(preds, targets, num_classes):
    correct = torch.bincount(targets[preds == targets], minlength=num_classes).float()
    totals = torch.bincount(targets, minlength=num_classes).float()
    return (correct / totals.clamp(min=1)).tolist()


def none_for_absent_class(preds, targets, num_classes):
    values = loop_per_class_accuracy(preds, targets, num_classes)
    return [None if math.isnan(v) else v for v in values]


def counts_not_rates(preds, targets, num_classes):
    return torch.bincount(targets[preds == targets], minlength=num_classes).tolist()


def precision_instead_of_recall(preds, targets, num_classes):
    return loop_per_class_accuracy(targets, preds, num_classes)  # arguments swapped


def bincount_without_minlength(preds, targets, num_classes):
    correct = torch.bincount(targets[preds == targets], minlength=int(targets.max()) + 1).float()
    totals = torch.bincount(targets).float()
    return (correct / totals).tolist()


def test_per_class_accuracy_check_passes_correct_answers(capsys):
    check_per_class_accuracy(reference_per_class_accuracy)
    check_per_class_accuracy(loop_per_class_accuracy)
    # A tensor is as good as a list.
    check_per_class_accuracy(lambda p, t, k: torch.tensor(loop_per_class_accuracy(p, t, k)))
    assert capsys.readouterr().out.count("✓") == 3


def test_per_class_accuracy_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_per_class_accuracy(stub)


def test_per_class_accuracy_check_rejects_overall_accuracy_for_every_class():
    fails_with(check_per_class_accuracy, overall_for_every_class,
               hint="examples whose TRUE label is that class", what="overall accuracy")


def test_per_class_accuracy_check_rejects_division_by_zero_for_an_absent_class():
    fails_with(check_per_class_accuracy, divides_by_zero, hint="return float('nan')",
               what="divided by zero for class 3")


def test_per_class_accuracy_check_rejects_zero_for_an_absent_class():
    failure = fails_with(check_per_class_accuracy, zero_for_absent_class,
                         hint="return float('nan'), not 0")
    assert failure.expected == "nan" and failure.got == "0"


def test_per_class_accuracy_check_rejects_none_for_an_absent_class():
    fails_with(check_per_class_accuracy, none_for_absent_class, hint="use float('nan')")


def test_per_class_accuracy_check_rejects_counts_instead_of_rates():
    fails_with(check_per_class_accuracy, counts_not_rates, hint="look like counts",
               what="above 1")


def test_per_class_accuracy_check_rejects_precision():
    fails_with(check_per_class_accuracy, precision_instead_of_recall,
               hint="not by the number predicted as c", what="precision")


def test_per_class_accuracy_check_rejects_too_few_values_when_the_last_class_is_absent():
    failure = fails_with(check_per_class_accuracy, bincount_without_minlength,
                         hint="minlength=num_classes", what="class 9 absent")
    assert failure.got == "9 values"


def test_per_class_accuracy_check_reports_a_crash_in_one_line():
    def crashes(preds, targets, num_classes):
        return preds.numpy().bad_attribute

    fails_with(check_per_class_accuracy, crashes, what="raised AttributeError")


# ---- (b) make_imbalanced and the two sets --------------------------------------------------------


def labels_of(dataset):
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def every_class_downsampled(dataset, cls, keep_fraction, seed=0):
    count = max(1, round(len(dataset) * keep_fraction))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:count].tolist())


def class_removed(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    return Subset(dataset, torch.nonzero(labels != cls).flatten().tolist())


def keeps_the_complement(dataset, cls, keep_fraction, seed=0):
    return downsample_class(dataset, cls, 1 - keep_fraction, seed) if keep_fraction < 1 else dataset


def with_replacement(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = max(1, round(len(of_class) * keep_fraction))
    picks = torch.randint(0, len(of_class), (count,), generator=torch.Generator().manual_seed(seed))
    # Ten draws out of 40 repeat an example for almost every seed; make sure of it here.
    picks[-1] = picks[0] if count > 1 else picks[-1]
    kept = of_class[picks]
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(), kept]).tolist())


def unseeded(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = max(1, round(len(of_class) * keep_fraction))
    kept = of_class[torch.randperm(len(of_class))[:count]]  # the global generator, not the seed
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(), kept]).tolist())


def first_examples(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = max(1, round(len(of_class) * keep_fraction))
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(),
                                      of_class[:count]]).tolist())


def zero_kept_for_a_tiny_fraction(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = int(len(of_class) * keep_fraction)  # 0 when the fraction is tiny
    order = torch.randperm(len(of_class), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(),
                                      of_class[order[:count]]]).tolist())


def mutates_its_input(dataset, cls, keep_fraction, seed=0):
    kept = downsample_class(dataset, cls, keep_fraction, seed).indices
    features, labels = dataset.tensors
    dataset.tensors = (features[kept], labels[kept])
    return dataset


def labels_shuffled_separately(dataset, cls, keep_fraction, seed=0):
    from torch.utils.data import TensorDataset

    kept = torch.tensor(downsample_class(dataset, cls, keep_fraction, seed).indices)
    features, labels = dataset.tensors
    # Features of the kept examples, but labels taken in another order.
    return TensorDataset(features[kept], labels[kept].flip(0))


def test_make_imbalanced_check_passes_the_library_function(capsys):
    check_make_imbalanced(downsample_class)
    assert "✓" in capsys.readouterr().out


def test_make_imbalanced_check_accepts_floor_instead_of_round():
    def floor_count(dataset, cls, keep_fraction, seed=0):
        labels = labels_of(dataset)
        of_class = torch.nonzero(labels == cls).flatten()
        count = max(1, math.floor(len(of_class) * keep_fraction))
        order = torch.randperm(len(of_class), generator=torch.Generator().manual_seed(seed))
        return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(),
                                          of_class[order[:count]]]).tolist())

    check_make_imbalanced(floor_count)


def test_make_imbalanced_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_make_imbalanced(stub)


def test_make_imbalanced_check_rejects_downsampling_every_class():
    fails_with(check_make_imbalanced, every_class_downsampled, hint="downsample class 3 only",
               what="also lost examples of other classes")


def test_make_imbalanced_check_rejects_removing_the_class():
    fails_with(check_make_imbalanced, class_removed, hint="keep at least one example")


def test_make_imbalanced_check_rejects_keeping_the_removed_share():
    fails_with(check_make_imbalanced, keeps_the_complement, hint="share KEPT, not the share removed")


def test_make_imbalanced_check_rejects_sampling_with_replacement():
    fails_with(check_make_imbalanced, with_replacement, hint="without replacement")


def test_make_imbalanced_check_rejects_an_unseeded_choice():
    fails_with(check_make_imbalanced, unseeded, hint="torch.Generator().manual_seed(seed)")


def test_make_imbalanced_check_rejects_always_the_first_examples():
    fails_with(check_make_imbalanced, first_examples, hint="not always the first ones")


def test_make_imbalanced_check_rejects_zero_examples_for_a_tiny_fraction():
    fails_with(check_make_imbalanced, zero_kept_for_a_tiny_fraction, hint="keep at least one")


def test_make_imbalanced_check_rejects_changing_the_input():
    fails_with(check_make_imbalanced, mutates_its_input, hint="leave the input untouched")


def test_make_imbalanced_check_rejects_labels_detached_from_their_examples():
    fails_with(check_make_imbalanced, labels_shuffled_separately, hint="select whole examples")


def test_make_imbalanced_check_rejects_returning_nothing():
    fails_with(check_make_imbalanced, lambda *args, **kwargs: None, hint="return the new dataset")


def test_imbalanced_split_check_passes_the_right_sets(splits, capsys):
    train_set = downsample_class(splits.train, RARE_CLASS, KEEP_FRACTION, seed=0)
    check_imbalanced_split(train_set, splits.val, splits, RARE_CLASS, KEEP_FRACTION)
    assert "val_set is untouched" in capsys.readouterr().out


def test_imbalanced_split_check_says_not_implemented_for_unset_sets(splits):
    with pytest.raises(NotImplementedYet):
        check_imbalanced_split(None, None, splits, RARE_CLASS, KEEP_FRACTION)
    with pytest.raises(NotImplementedYet):
        check_imbalanced_split(splits.train, None, splits, RARE_CLASS, KEEP_FRACTION)


def test_imbalanced_split_check_rejects_a_downsampled_validation_set(splits):
    train_set = downsample_class(splits.train, RARE_CLASS, KEEP_FRACTION, seed=0)
    val_set = downsample_class(splits.val, RARE_CLASS, KEEP_FRACTION, seed=0)
    fails_with(check_imbalanced_split, train_set, val_set, splits, RARE_CLASS, KEEP_FRACTION,
               hint="downsample the TRAINING set only", what="val_set lost examples of class 8")


def test_imbalanced_split_check_rejects_an_untouched_training_set(splits):
    fails_with(check_imbalanced_split, splits.train, splits.val, splits, RARE_CLASS, KEEP_FRACTION,
               what="still holds all 122 examples of class 8")


def test_imbalanced_split_check_rejects_the_training_set_used_for_validation(splits):
    train_set = downsample_class(splits.train, RARE_CLASS, KEEP_FRACTION, seed=0)
    fails_with(check_imbalanced_split, train_set, train_set, splits, RARE_CLASS, KEEP_FRACTION,
               hint="use splits.val unchanged")


def test_imbalanced_split_check_rejects_the_wrong_fraction(splits):
    train_set = downsample_class(splits.train, RARE_CLASS, 0.5, seed=0)
    fails_with(check_imbalanced_split, train_set, splits.val, splits, RARE_CLASS, KEEP_FRACTION,
               what="keeps the wrong number of class 8")


# ---- (c) per-class accuracy logged at every evaluation -------------------------------------------


def make_train_and_log(record):
    """The exercise's loop, with `record(model, val_inputs, val_targets, step, state)` as the
    learner's evaluation lines; `state` is a dict the record function may keep things in."""

    def train_and_log(model, train_set, val_set, *, epochs=8, batch_size=64, eval_every=10,
                      loss_fn=None, sampler=None, seed=0):
        torch.manual_seed(seed)
        loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None,
                            sampler=sampler, generator=torch.Generator().manual_seed(seed))
        val_inputs, val_targets = next(iter(DataLoader(val_set, batch_size=len(val_set))))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        total_steps = epochs * len(loader)
        history, step, state = [], 0, {"train_set": train_set}
        for _ in range(epochs):
            for inputs, targets in loader:
                model.train()
                loss = loss_fn(model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % eval_every == 0 or step == total_steps:
                    history.append(record(model, val_inputs, val_targets, step, state))
        return history

    return train_and_log


def predict(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(inputs).argmax(dim=-1)


def correct_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    return {"step": step, "eval_accuracy": (preds == val_targets).float().mean().item(),
            "eval_per_class_accuracy": reference_per_class_accuracy(preds, val_targets, NUM_CLASSES)}


def overall_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    accuracy = (preds == val_targets).float().mean().item()
    return {"step": step, "eval_accuracy": accuracy,
            "eval_per_class_accuracy": [accuracy] * NUM_CLASSES}


def counts_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    counts = torch.bincount(val_targets[preds == val_targets], minlength=NUM_CLASSES)
    return {"step": step, "eval_per_class_accuracy": counts.tolist()}


def training_data_record(model, val_inputs, val_targets, step, state):
    inputs, targets = next(iter(DataLoader(state["train_set"], batch_size=len(state["train_set"]))))
    preds = predict(model, inputs)
    return {"step": step, "eval_accuracy": (preds == targets).float().mean().item(),
            "eval_per_class_accuracy": reference_per_class_accuracy(preds, targets, NUM_CLASSES)}


def shared_list_record(model, val_inputs, val_targets, step, state):
    values = state.setdefault("values", [0.0] * NUM_CLASSES)
    values[:] = reference_per_class_accuracy(predict(model, val_inputs), val_targets, NUM_CLASSES)
    return {"step": step, "eval_per_class_accuracy": values}


def missing_key_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    return {"step": step, "eval_accuracy": (preds == val_targets).float().mean().item()}


def test_per_class_logging_check_passes_the_reference_loop(capsys):
    check_per_class_logging(make_train_and_log(correct_record))
    assert "3 of 3" in capsys.readouterr().out


def test_per_class_logging_check_says_not_implemented_for_a_stub():
    def stub_record(*args):
        raise NotImplementedError("evaluate on val_set and append a record")

    with pytest.raises(NotImplementedYet):
        check_per_class_logging(make_train_and_log(stub_record))


def test_per_class_logging_check_rejects_overall_accuracy_for_every_class():
    fails_with(check_per_class_logging, make_train_and_log(overall_record),
               hint="one value per class", what="overall accuracy")


def test_per_class_logging_check_rejects_counts():
    fails_with(check_per_class_logging, make_train_and_log(counts_record), hint="not counts")


def test_per_class_logging_check_rejects_measuring_on_the_training_data():
    fails_with(check_per_class_logging, make_train_and_log(training_data_record),
               hint="evaluate on val_set")


def test_per_class_logging_check_rejects_one_list_shared_by_every_record():
    fails_with(check_per_class_logging, make_train_and_log(shared_list_record),
               hint="store a new list at each evaluation")


def test_per_class_logging_check_rejects_records_without_per_class_accuracy():
    fails_with(check_per_class_logging, make_train_and_log(missing_key_record),
               hint="at EVERY evaluation")


def test_per_class_logging_check_rejects_a_missing_evaluation():
    def only_some(model, val_inputs, val_targets, step, state):
        return correct_record(model, val_inputs, val_targets, step, state) if step > 3 else {}

    def train_and_log(*args, **kwargs):
        return [r for r in make_train_and_log(only_some)(*args, **kwargs) if r]

    fails_with(check_per_class_logging, train_and_log, hint="exactly one record each time")


def test_per_class_logging_check_rejects_a_loop_that_returns_nothing():
    fails_with(check_per_class_logging, lambda *args, **kwargs: None, hint="return the history")


# ---- (c, d) the rare class falls, and the remedy narrows the gap ---------------------------------


def history_with(rare_values, other_value=0.95, evaluations=6):
    """A synthetic history: the rare class at the given accuracies over the last evaluations."""
    records = []
    for i in range(evaluations):
        rare = rare_values[min(i, len(rare_values) - 1)] if i >= evaluations - len(rare_values) \
            else rare_values[0]
        row = [other_value] * NUM_CLASSES
        row[RARE_CLASS] = rare
        records.append({"step": 10 * (i + 1), "eval_accuracy": sum(row) / NUM_CLASSES,
                        "eval_per_class_accuracy": row})
    return records


def test_rare_class_gap_is_the_mean_minus_the_rare_class():
    history = history_with([0.15], other_value=0.95)
    assert rare_class_gap(history, RARE_CLASS) == pytest.approx((9 * 0.95 + 0.15) / 10 - 0.15)


def test_rare_class_check_passes_a_large_gap(capsys):
    check_rare_class_falls(history_with([0.2]), RARE_CLASS)
    assert "below the mean" in capsys.readouterr().out


def test_rare_class_check_says_not_implemented_for_none():
    with pytest.raises(NotImplementedYet):
        check_rare_class_falls(None, RARE_CLASS)


def test_rare_class_check_rejects_a_balanced_run():
    fails_with(check_rare_class_falls, history_with([0.93]), RARE_CLASS,
               hint="train_set (the imbalanced one)")


def test_rare_class_check_rejects_a_history_without_per_class_accuracy():
    history = [{"step": 10 * i, "eval_accuracy": 0.9} for i in range(1, 5)]
    fails_with(check_rare_class_falls, history, RARE_CLASS, hint="at EVERY evaluation")


def test_rare_class_check_rejects_too_short_a_history():
    fails_with(check_rare_class_falls, history_with([0.2], evaluations=2), RARE_CLASS,
               what="too few evaluations")


def test_remedy_check_passes_a_shrinking_gap(capsys):
    check_remedy(history_with([0.2]), history_with([0.6]), RARE_CLASS)
    assert "shrank" in capsys.readouterr().out


def test_remedy_check_says_not_implemented_for_none():
    with pytest.raises(NotImplementedYet):
        check_remedy(history_with([0.2]), None, RARE_CLASS)


def test_remedy_check_rejects_a_remedy_that_does_nothing():
    fails_with(check_remedy, history_with([0.2]), history_with([0.2]), RARE_CLASS,
               what="identical")


def test_remedy_check_rejects_a_remedy_too_weak_to_matter():
    fails_with(check_remedy, history_with([0.2]), history_with([0.27]), RARE_CLASS,
               hint="focal loss alone changes little")


def test_remedy_check_rejects_a_remedy_that_sacrifices_the_other_classes():
    fails_with(check_remedy, history_with([0.2]), history_with([0.9], other_value=0.7),
               RARE_CLASS, hint="too extreme")


def test_remedy_check_rejects_a_before_run_without_a_gap():
    fails_with(check_remedy, history_with([0.9]), history_with([0.95]), RARE_CLASS,
               hint="without any remedy")


def test_the_real_runs_pass_with_class_weights(splits):
    """The exercise's own setting, trained for real: class 8 cut to 15 %, then class weights."""
    train_set = downsample_class(splits.train, RARE_CLASS, KEEP_FRACTION, seed=0)
    train_and_log = make_train_and_log(correct_record)
    torch.manual_seed(0)
    before = train_and_log(MLP(), train_set, splits.val)
    counts = torch.tensor(class_counts(train_set), dtype=torch.float32)
    weights = counts.sum() / (NUM_CLASSES * counts)
    torch.manual_seed(0)
    after = train_and_log(MLP(), train_set, splits.val, loss_fn=nn.CrossEntropyLoss(weight=weights))
    check_rare_class_falls(before, RARE_CLASS)
    check_remedy(before, after, RARE_CLASS)
