"""The checks of exercise 06 pass correct answers, say "not implemented yet" for a stub, and reject
every answer of their wrong-answer corpus, each with the failure and the hint that names it.

Each check's corpus draws on the curriculum's listed wrong answers, the lesson's "common bug" boxes
(averaging per-batch metrics, downsampling the validation set, smoothing the validation curve),
shortcuts (delegating to course_lib or scikit-learn, fabricated records and histories, another
split with the same class counts, "remedies" that are not one) and off-by-ones.

Seeds: the tests run over CHECK_SEEDS seeds (2 by default; `CHECK_SEEDS=16` for the full
validation). The seed sets the check's own data (batch order and class names, the order of the
tagged dataset, the training subset and the model of the logging run) and, for the training runs,
the downsampling, the model and the data order. Each docstring below states the 16-seed result.

Corpus sizes (wrong answers per check), before -> after closing the blind spots by kind:
per_class_accuracy 14 -> 25 (the contract's type, a list of Python floats: 4; the 1e-7 tolerance
float32 meets: 4; the num_classes argument: 3), make_imbalanced 14 -> 21 (the default seed=0: 3;
the examples' dtypes: 4), the two sets 10 -> 14 (dtypes: 4), the logging loop 19 -> 32 (every
evaluation of every epoch, over two epochs: 4; the records' types: 3; tolerance: 3; the loop's
optimizer class and learning rate: 3), the rare class falls 8 -> 8, the remedy 21 -> 21.
"""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset, WeightedRandomSampler

import course_lib
from course_lib import MLP, FocalLoss, class_counts, downsample_class, load_digits_splits
from course_lib.checks._core import CheckFailure, NotImplementedYet
from course_lib.checks.ex06 import (
    check_imbalanced_split,
    check_make_imbalanced,
    check_per_class_accuracy,
    check_per_class_logging,
    check_rare_class_falls,
    check_remedy,
    hint,
)
from course_lib.seeding import seed_everything

NUM_CLASSES = 10
RARE_CLASS = 8
KEEP_FRACTION = 0.15
SEEDS = list(range(int(os.environ.get("CHECK_SEEDS", "2"))))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models train several times faster on one thread on a shared machine; the checks
    replay runs in the same process, so every run here sees the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0)


def stub(*args, **kwargs):
    raise NotImplementedError("write your code here")


def fails_with(check, *args, hint=None, what=None, **kwargs):
    """Run a check that must fail; return the failure after matching its message and hint."""
    with pytest.raises(CheckFailure) as info:
        check(*args, **kwargs)
    assert not isinstance(info.value, NotImplementedYet), info.value.line()
    if what is not None:
        assert what in info.value.what, info.value.line()
    if hint is not None:
        assert hint in info.value.hint, info.value.line()
    return info.value


def test_every_question_has_a_hint_that_gives_no_code(capsys):
    assert hint.questions == ("a", "b", "c", "d")
    for question in hint.questions:
        hint(question)
    out = capsys.readouterr().out
    assert out.count("💡") == 4
    for answer_code in ("return ", "def ", "history_before =", "seed_everything(0)", "**remedy"):
        assert answer_code not in out


# ---- (a) per_class_accuracy ----------------------------------------------------------------------


def loop_per_class_accuracy(preds, targets, num_classes):
    """A learner's correct answer, written with a loop."""
    result = []
    for c in range(num_classes):
        of_class = targets == c
        count = int(of_class.sum())
        result.append((preds[of_class] == c).sum().item() / count if count else math.nan)
    return result


def tensor_per_class_accuracy(preds, targets, num_classes):
    """A correct answer with bincount in float32 (within the stated 1e-7), turned into a list."""
    totals = torch.bincount(targets, minlength=num_classes).float()
    correct = torch.bincount(targets[preds == targets], minlength=num_classes).float()
    return torch.where(totals > 0, correct / totals.clamp(min=1), torch.tensor(math.nan)).tolist()


def numpy_per_class_accuracy(preds, targets, num_classes):
    """A correct answer in NumPy, turned into a list."""
    preds, targets = preds.numpy(), targets.numpy()
    with np.errstate(invalid="ignore"):
        return np.array([np.mean(preds[targets == c] == c) if (targets == c).any() else np.nan
                         for c in range(num_classes)]).tolist()


# The contract's type is a list of Python floats: a tensor, an array or one-element tensors are not.
def returns_a_tensor(preds, targets, num_classes):
    return torch.tensor(loop_per_class_accuracy(preds, targets, num_classes), dtype=torch.float64)


def returns_an_array(preds, targets, num_classes):
    return np.array(loop_per_class_accuracy(preds, targets, num_classes), dtype=np.float32)


def list_of_one_element_tensors(preds, targets, num_classes):
    """The usual slip: (preds[mask] == c).float().mean() without .item()."""
    return [(preds[targets == c] == c).float().mean() if (targets == c).any()
            else torch.tensor(math.nan) for c in range(num_classes)]


def list_of_numpy_float32(preds, targets, num_classes):
    return [np.float32(v) for v in loop_per_class_accuracy(preds, targets, num_classes)]


# Tolerance: the contract's 1e-7 is what float32 division keeps; these are further off.
def rounded_to_five_decimals(preds, targets, num_classes):
    return [round(v, 5) for v in loop_per_class_accuracy(preds, targets, num_classes)]


def rounded_to_six_decimals(preds, targets, num_classes):
    return [round(v, 6) for v in loop_per_class_accuracy(preds, targets, num_classes)]


def epsilon_in_the_denominator(preds, targets, num_classes):
    """A "safe" division that is no longer the ratio, with NaN kept for absent classes."""
    result = []
    for c in range(num_classes):
        count = int((targets == c).sum())
        correct = int(((preds == c) & (targets == c)).sum())
        result.append(correct / (count + 1e-6) if count else math.nan)
    return result


def half_precision(preds, targets, num_classes):
    totals = torch.bincount(targets, minlength=num_classes).half()
    correct = torch.bincount(targets[preds == targets], minlength=num_classes).half()
    return torch.where(totals > 0, correct / totals.clamp(min=1),
                       torch.tensor(math.nan, dtype=torch.half)).tolist()


# num_classes is an argument the contract names; these answers ignore it.
def ten_classes_hard_coded(preds, targets, num_classes):
    return loop_per_class_accuracy(preds, targets, 10)


def classes_from_the_labels_seen(preds, targets, num_classes):
    seen = int(max(preds.max(), targets.max())) + 1
    return loop_per_class_accuracy(preds, targets, seen)


def the_notebooks_constant(preds, targets, num_classes):
    """The notebook's NUM_CLASSES read instead of the argument, with bincount."""
    totals = torch.bincount(targets, minlength=NUM_CLASSES)
    correct = torch.bincount(targets[preds == targets], minlength=NUM_CLASSES)
    return [k / n if n else math.nan for k, n in zip(correct.tolist(), totals.tolist())]


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


def divides_by_the_batch_size(preds, targets, num_classes):
    correct = torch.bincount(targets[preds == targets], minlength=num_classes)
    return (correct / len(targets)).tolist()


def classes_off_by_one(preds, targets, num_classes):
    values = loop_per_class_accuracy(preds, targets, num_classes + 1)
    return values[1:]  # range(1, num_classes + 1): entry c holds class c + 1


def memorised(preds, targets, num_classes):
    """Fabricated: the values of one batch the check once showed, whatever the batch."""
    return [1.0, 0.5, 1.0, 1 / 6, 1.0, 0.5, 0.0, 1.0, 6 / 11, 0.75]


def delegates_to_course_lib(preds, targets, num_classes):
    return course_lib.per_class_accuracy(preds, targets, num_classes)


def delegates_through_the_confusion_matrix(preds, targets, num_classes):
    from course_lib.metrics import confusion_matrix as confusion
    from course_lib.metrics import per_class_accuracy_from_confusion as from_confusion

    return from_confusion(confusion(preds, targets, num_classes))


def delegates_to_scikit_learn(preds, targets, num_classes):
    from sklearn.metrics import recall_score

    recall = recall_score(targets.numpy(), preds.numpy(), labels=list(range(num_classes)),
                          average=None, zero_division=np.nan)
    return recall.tolist()


PER_CLASS_WRONG = [
    # curriculum: overall accuracy for every class; division by zero for an absent class
    (overall_for_every_class, "overall accuracy", "examples whose TRUE label is that class"),
    (divides_by_zero, "divided by zero for class", "return float('nan')"),
    # a class absent from the batch
    (zero_for_absent_class, "has no examples in this batch", "return float('nan'), not 0"),
    (none_for_absent_class, "holds None", "use float('nan')"),
    (bincount_without_minlength, "class 9 absent", "minlength=num_classes"),
    # the wrong ratio
    (counts_not_rates, "above 1", "look like counts"),
    (precision_instead_of_recall, "precision", "not by the number predicted as c"),
    (divides_by_the_batch_size, "size of the whole batch", "that class only"),
    (classes_off_by_one, "differs from the per-class recall", "entry c of the list is class c"),
    (memorised, "differs from the per-class recall", "number of examples with target c AND"),
    # delegation, whatever the name it is called under
    (course_lib.per_class_accuracy, "course_lib.metrics.per_class_accuracy", "write it yourself"),
    (delegates_to_course_lib, "course_lib.metrics.per_class_accuracy", "write it yourself"),
    (delegates_through_the_confusion_matrix, "the library's own", "write it yourself"),
    (delegates_to_scikit_learn, "recall_score", "write it yourself"),
    # the contract's type (a list of Python floats)
    (returns_a_tensor, "is a Tensor, not a list", ".tolist()"),
    (returns_an_array, "is a ndarray, not a list", ".tolist()"),
    (list_of_one_element_tensors, "holds a Tensor", ".item() on a one-element tensor"),
    (list_of_numpy_float32, "holds a float32", "float() on a NumPy number"),
    # tolerance: 1e-7, what float32 keeps
    (rounded_to_five_decimals, "differs from the per-class recall", "entry c of the list"),
    (rounded_to_six_decimals, "differs from the per-class recall", "entry c of the list"),
    (epsilon_in_the_denominator, "differs from the per-class recall", "entry c of the list"),
    (half_precision, "differs from the per-class recall", "entry c of the list"),
    # the num_classes argument
    (ten_classes_hard_coded, "num_classes=12) returned 10 values", "use the num_classes argument"),
    (classes_from_the_labels_seen, "num_classes=12) returned 10 values",
     "use the num_classes argument"),
    (the_notebooks_constant, "num_classes=12) returned 10 values", "not a fixed 10"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_accuracy_check_passes_correct_answers(seed, capsys):
    """16 seeds: all three correct answers pass on every seed."""
    for answer in (loop_per_class_accuracy, tensor_per_class_accuracy, numpy_per_class_accuracy):
        check_per_class_accuracy(answer, seed=seed)
    assert capsys.readouterr().out.count("✓") == 3


def test_per_class_accuracy_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_per_class_accuracy(stub)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, what, hint", PER_CLASS_WRONG,
                         ids=[f"{a.__name__}-{i}" for i, (a, _, _) in enumerate(PER_CLASS_WRONG)])
def test_per_class_accuracy_check_rejects_wrong_answers(answer, what, hint, seed):
    """16 seeds: each of the 25 wrong answers fails on every seed, with its own message and hint."""
    fails_with(check_per_class_accuracy, answer, seed=seed, what=what, hint=hint)


def test_per_class_accuracy_check_reports_a_crash_in_one_line():
    def crashes(preds, targets, num_classes):
        return preds.numpy().bad_attribute

    fails_with(check_per_class_accuracy, crashes, what="raised AttributeError")


# ---- (b) make_imbalanced -------------------------------------------------------------------------


def labels_of(dataset):
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def reference_make_imbalanced(dataset, cls, keep_fraction, seed=0):
    """The solution's answer: a permutation of the class's positions, seeded; keep its head."""
    labels = torch.tensor([int(label) for _, label in dataset])
    of_class = torch.nonzero(labels == cls).flatten()
    keep_count = max(1, round(keep_fraction * len(of_class)))
    generator = torch.Generator().manual_seed(seed)
    kept = of_class[torch.randperm(len(of_class), generator=generator)[:keep_count]]
    others = torch.nonzero(labels != cls).flatten()
    return Subset(dataset, sorted(torch.cat([others, kept]).tolist()))


def list_make_imbalanced(dataset, cls, keep_fraction, seed=0):
    """Also correct: plain lists, the examples in another order, the labels read off the tensor."""
    labels = dataset.tensors[1].tolist()
    positions = [i for i, y in enumerate(labels) if y == cls]
    order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = [positions[j] for j in order[:max(1, round(keep_fraction * len(positions)))]]
    return Subset(dataset, kept + [i for i, y in enumerate(labels) if y != cls])


def keep_from(dataset, cls, keep_fraction, pick):
    """Build a downsampled Subset with `pick(of_class, count)` choosing the kept positions."""
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = max(1, round(len(of_class) * keep_fraction))
    kept = pick(of_class, count)
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(),
                                      torch.as_tensor(kept, dtype=torch.long)]).tolist())


def every_class_downsampled(dataset, cls, keep_fraction, seed=0):
    count = max(1, round(len(dataset) * keep_fraction))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:count].tolist())


def class_removed(dataset, cls, keep_fraction, seed=0):
    return Subset(dataset, torch.nonzero(labels_of(dataset) != cls).flatten().tolist())


def keeps_the_complement(dataset, cls, keep_fraction, seed=0):
    return reference_make_imbalanced(dataset, cls, 1 - keep_fraction, seed) \
        if keep_fraction < 1 else dataset


def with_replacement(dataset, cls, keep_fraction, seed=0):
    def pick(of_class, count):
        picks = torch.randint(0, len(of_class), (count,),
                              generator=torch.Generator().manual_seed(seed))
        picks[-1] = picks[0]  # make sure of a repeat, which ten draws nearly always give anyway
        return of_class[picks]

    return keep_from(dataset, cls, keep_fraction, pick)


def unseeded(dataset, cls, keep_fraction, seed=0):
    return keep_from(dataset, cls, keep_fraction,
                     lambda of_class, count: of_class[torch.randperm(len(of_class))[:count]])


def first_examples(dataset, cls, keep_fraction, seed=0):
    return keep_from(dataset, cls, keep_fraction, lambda of_class, count: of_class[:count])


def numpy_choice(dataset, cls, keep_fraction, seed=0):
    """Seeded, but not the contract's draw: other examples than the seed picks."""
    rng = np.random.default_rng(seed)
    return keep_from(dataset, cls, keep_fraction, lambda of_class, count:
                     of_class[torch.from_numpy(rng.choice(len(of_class), count, replace=False))])


def truncates(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = max(1, int(len(of_class) * keep_fraction))  # int() instead of round()
    order = torch.randperm(len(of_class), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(),
                                      of_class[order[:count]]]).tolist())


def zero_kept_for_a_tiny_fraction(dataset, cls, keep_fraction, seed=0):
    labels = labels_of(dataset)
    of_class = torch.nonzero(labels == cls).flatten()
    count = round(len(of_class) * keep_fraction)  # 0 when the fraction is tiny
    order = torch.randperm(len(of_class), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, torch.cat([torch.nonzero(labels != cls).flatten(),
                                      of_class[order[:count]]]).tolist())


def mutates_its_input(dataset, cls, keep_fraction, seed=0):
    kept = reference_make_imbalanced(dataset, cls, keep_fraction, seed).indices
    features, labels = dataset.tensors
    dataset.tensors = (features[kept], labels[kept])
    return dataset


def labels_shuffled_separately(dataset, cls, keep_fraction, seed=0):
    kept = torch.tensor(reference_make_imbalanced(dataset, cls, keep_fraction, seed).indices)
    features, labels = dataset.tensors
    return TensorDataset(features[kept], labels[kept].flip(0))


def delegates_downsampling(dataset, cls, keep_fraction, seed=0):
    return course_lib.downsample_class(dataset, cls, keep_fraction, seed)


# The signature's default, seed=0, changed or ignored.
def default_seed_none(dataset, cls, keep_fraction, seed=None):
    """seed=None falls back to the global generator: a call without a seed is not seed 0."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return keep_from(dataset, cls, keep_fraction, lambda of_class, count:
                     of_class[torch.randperm(len(of_class), generator=generator)[:count]])


def default_seed_42(dataset, cls, keep_fraction, seed=42):
    return reference_make_imbalanced(dataset, cls, keep_fraction, seed)


def default_unseeded_generator(dataset, cls, keep_fraction, seed=None):
    """A generator of its own, seeded only when a seed is given: its default seed is not 0."""
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    return keep_from(dataset, cls, keep_fraction, lambda of_class, count:
                     of_class[torch.randperm(len(of_class), generator=generator)[:count]])


# The examples' types: the same examples, converted on the way.
def rebuilt_with_float_labels(dataset, cls, keep_fraction, seed=0):
    kept = torch.tensor(reference_make_imbalanced(dataset, cls, keep_fraction, seed).indices)
    features, labels = dataset.tensors
    return TensorDataset(features[kept], labels[kept].float())


def rebuilt_through_numpy(dataset, cls, keep_fraction, seed=0):
    """np.array of the features gives float64 once they pass through a Python list."""
    kept = reference_make_imbalanced(dataset, cls, keep_fraction, seed).indices
    features = torch.tensor(np.array([dataset[i][0].tolist() for i in kept]))
    return TensorDataset(features, dataset.tensors[1][kept])


def rebuilt_with_int32_labels(dataset, cls, keep_fraction, seed=0):
    kept = reference_make_imbalanced(dataset, cls, keep_fraction, seed).indices
    labels = torch.from_numpy(np.array([int(dataset[i][1]) for i in kept], dtype=np.int32))
    return TensorDataset(dataset.tensors[0][kept], labels)


def list_of_pairs_with_int_labels(dataset, cls, keep_fraction, seed=0):
    kept = reference_make_imbalanced(dataset, cls, keep_fraction, seed).indices
    return [(dataset[i][0], int(dataset[i][1])) for i in kept]


MAKE_IMBALANCED_WRONG = [
    (every_class_downsampled, "also lost examples of other classes", "downsample class 3 only"),
    (class_removed, "has no example of class", "keep at least one example"),
    (keeps_the_complement, "wrong number of class", "share KEPT, not the share removed"),
    (zero_kept_for_a_tiny_fraction, "has no example of class 7", "keep at least one"),
    (truncates, "wrong number of class 5", "round it, int() cuts"),
    (with_replacement, "holds some examples twice", "without replacement"),
    (unseeded, "two calls", "same seed must keep the same examples"),
    (first_examples, "first (or last) examples", "not always the first ones"),
    (numpy_choice, "than the seed picks", "torch.Generator().manual_seed(seed)"),
    (mutates_its_input, "changed the dataset passed to it", "leave the input untouched"),
    (labels_shuffled_separately, "wrong label", "select whole examples"),
    (lambda *args, **kwargs: None, "returned None", "return the new dataset"),
    (delegates_downsampling, "course_lib.data.downsample_class", "write it yourself"),
    (course_lib.downsample_class, "course_lib.data.downsample_class", "write it yourself"),
    # the default seed
    (default_seed_none, "without a seed kept other examples", "default is seed=0"),
    (default_seed_42, "without a seed kept other examples", "default is seed=0"),
    (default_unseeded_generator, "without a seed kept other examples", "default is seed=0"),
    # the examples' types
    (rebuilt_with_float_labels, "the label of", "converts nothing"),
    (rebuilt_through_numpy, "the features of", "converts nothing"),
    (rebuilt_with_int32_labels, "the label of", "converts nothing"),
    (list_of_pairs_with_int_labels, "the label of", "converts nothing"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_make_imbalanced_check_passes_correct_answers(seed, capsys):
    """16 seeds: both correct answers pass on every seed."""
    check_make_imbalanced(reference_make_imbalanced, seed=seed)
    check_make_imbalanced(list_make_imbalanced, seed=seed)
    assert capsys.readouterr().out.count("✓") == 2


def test_make_imbalanced_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_make_imbalanced(stub)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, what, hint", MAKE_IMBALANCED_WRONG,
                         ids=[f"{i}" for i in range(len(MAKE_IMBALANCED_WRONG))])
def test_make_imbalanced_check_rejects_wrong_answers(answer, what, hint, seed):
    """16 seeds: each of the 21 wrong answers fails on every seed, with its own message and hint."""
    fails_with(check_make_imbalanced, answer, seed=seed, what=what, hint=hint)


# ---- (b) the two sets ----------------------------------------------------------------------------


def same_counts_from(source, like):
    """A set with the class counts of `like`, drawn from another dataset `source`."""
    labels = source.tensors[1]
    picks = []
    for c, count in enumerate(class_counts(like)):
        picks += torch.nonzero(labels == c).flatten()[:count].tolist()
    return Subset(source, picks)


def two_sets(name, splits, seed):
    """(train_set, val_set) for each realistic way of building them."""
    right_train = reference_make_imbalanced(splits.train, RARE_CLASS, KEEP_FRACTION, seed)
    val = splits.val
    if name == "right":
        return right_train, val
    if name == "val downsampled too":  # the lesson's "common bug" box, and the curriculum's
        return right_train, reference_make_imbalanced(val, RARE_CLASS, KEEP_FRACTION, seed)
    if name == "val from the training split, same counts":
        return right_train, same_counts_from(splits.train, val)
    if name == "val from the test split, same counts":
        test = splits.test
        if class_counts(test) != class_counts(val):  # not quite the same counts: make them so
            test = same_counts_from(TensorDataset(torch.cat([splits.test.tensors[0],
                                                             splits.train.tensors[0]]),
                                                  torch.cat([splits.test.tensors[1],
                                                             splits.train.tensors[1]])), val)
        return right_train, test
    if name == "val is the training set":
        return right_train, right_train
    if name == "val relabelled":
        features, labels = val.tensors
        return right_train, TensorDataset(features, labels[torch.randperm(len(labels))])
    if name == "train untouched":
        return splits.train, val
    if name == "train at the wrong fraction":
        return reference_make_imbalanced(splits.train, RARE_CLASS, 0.5, seed), val
    if name == "train with another seed, same counts":
        return reference_make_imbalanced(splits.train, RARE_CLASS, KEEP_FRACTION, seed + 1), val
    if name == "train cut another class":
        return reference_make_imbalanced(splits.train, RARE_CLASS - 1, KEEP_FRACTION, seed), val
    if name == "val in float64":
        features, labels = val.tensors
        return right_train, TensorDataset(features.double(), labels)
    if name == "val with float labels":
        features, labels = val.tensors
        return right_train, TensorDataset(features, labels.float())
    if name == "train with float labels":
        kept = torch.tensor(right_train.indices)
        return TensorDataset(splits.train.tensors[0][kept], splits.train.tensors[1][kept].float()), val
    if name == "train through numpy":  # int32 labels where NumPy's default integer is 32 bits
        kept = right_train.indices
        labels = torch.from_numpy(splits.train.tensors[1][kept].numpy().astype(np.int32))
        return TensorDataset(splits.train.tensors[0][kept], labels), val
    if name == "train with validation examples":
        both = torch.utils.data.ConcatDataset([right_train, Subset(val, list(range(20)))])
        return both, val
    raise ValueError(name)


SPLIT_WRONG = [
    ("val downsampled too", "val_set lost examples of class 8", "downsample the TRAINING set only"),
    ("val from the training split, same counts", "not in splits.val", "with the same class counts"),
    ("val from the test split, same counts", "from test", "only splits.val is the validation"),
    ("val is the training set", "not in splits.val", "memorised"),
    ("val relabelled", "another label", "use splits.val unchanged"),
    ("train untouched", "still holds all 122 examples of class 8", "round(keep_fraction * n)"),
    ("train at the wrong fraction", "wrong number of class 8", "round(keep_fraction * n)"),
    ("train with another seed, same counts", "than make_imbalanced picks", "seed="),
    ("train cut another class", "cut class 7 instead of class 8", "the class to cut is 8"),
    ("train with validation examples", "not in splits.train", "cut splits.train only"),
    # the examples' types: the same values, converted
    ("val in float64", "the features of val_set", "converts nothing"),
    ("val with float labels", "the label of val_set", "converts nothing"),
    ("train with float labels", "the label of train_set", "converts nothing"),
    ("train through numpy", "the label of train_set", "converts nothing"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_imbalanced_split_check_passes_the_right_sets(splits, seed, capsys):
    """16 seeds: the right sets pass on every seed."""
    check_imbalanced_split(*two_sets("right", splits, seed), splits, RARE_CLASS, KEEP_FRACTION,
                           seed=seed)
    assert "example by example" in capsys.readouterr().out


def test_imbalanced_split_check_says_not_implemented_for_unset_sets(splits):
    with pytest.raises(NotImplementedYet):
        check_imbalanced_split(None, None, splits, RARE_CLASS, KEEP_FRACTION)
    with pytest.raises(NotImplementedYet):
        check_imbalanced_split(splits.train, None, splits, RARE_CLASS, KEEP_FRACTION)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, what, hint", SPLIT_WRONG, ids=[n for n, _, _ in SPLIT_WRONG])
def test_imbalanced_split_check_rejects_wrong_sets(splits, name, what, hint, seed):
    """16 seeds: each of the 14 wrong pairs of sets fails on every seed, with its message and hint.
    Three of them have exactly the class counts of the right sets."""
    train_set, val_set = two_sets(name, splits, seed)
    fails_with(check_imbalanced_split, train_set, val_set, splits, RARE_CLASS, KEEP_FRACTION,
               seed=seed, what=what, hint=hint)


def test_the_same_count_wrong_sets_really_have_the_right_counts(splits):
    right_train, right_val = two_sets("right", splits, 0)
    for name in ("val from the training split, same counts", "val from the test split, same counts"):
        assert class_counts(two_sets(name, splits, 0)[1]) == class_counts(right_val)
    assert class_counts(two_sets("train with another seed, same counts", splits, 0)[0]) == \
        class_counts(right_train)


# ---- (c) per-class accuracy logged at every evaluation -------------------------------------------


def make_train_and_log(record, *, train_mode=True, evaluate_at_the_end=False, data=None,
                       use_loss_fn=True, use_sampler=True, optimizer=None, step_per_epoch=False,
                       history_per_epoch=False, eval_at_epoch_end=False):
    """The exercise's loop, with `record(model, val_inputs, val_targets, step, state)` as the
    learner's evaluation lines (`state` is a dict the record may keep things in). The keywords
    make the loop itself wrong in one way each."""

    def train_and_log(model, train_set, val_set, *, epochs=8, batch_size=64, eval_every=10,
                      loss_fn=None, sampler=None, seed=0):
        torch.manual_seed(seed)
        loss_fn = loss_fn if loss_fn is not None and use_loss_fn else nn.CrossEntropyLoss()
        sampler = sampler if use_sampler else None
        loader = DataLoader(data if data is not None else train_set, batch_size=batch_size,
                            shuffle=sampler is None, sampler=sampler,
                            generator=torch.Generator().manual_seed(seed))
        val_inputs, val_targets = next(iter(DataLoader(val_set, batch_size=len(val_set))))
        optimizer_ = (optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-3)))(
            model.parameters())
        total_steps = epochs * len(loader)
        history, step, state, later = [], 0, {"train_set": train_set}, []
        for _ in range(epochs):
            if step_per_epoch:
                step = 0
            if history_per_epoch:
                history = []
            for index, (inputs, targets) in enumerate(loader):
                if train_mode:
                    model.train()
                loss = loss_fn(model(inputs), targets)
                optimizer_.zero_grad()
                loss.backward()
                optimizer_.step()
                step += 1
                last = index == len(loader) - 1 if eval_at_epoch_end else step == total_steps
                if step % eval_every == 0 or last:
                    if evaluate_at_the_end:
                        later.append(step)
                    else:
                        history.append(record(model, val_inputs, val_targets, step, state))
        for step in later:  # records made after training, all describing the final model
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
            "eval_per_class_accuracy": loop_per_class_accuracy(preds, val_targets, NUM_CLASSES)}


def batched_counts_record(model, val_inputs, val_targets, step, state):
    """Also correct: evaluation in batches of 64, counts summed, one division at the end."""
    correct, totals = torch.zeros(NUM_CLASSES), torch.zeros(NUM_CLASSES)
    for start in range(0, len(val_targets), 64):
        preds = predict(model, val_inputs[start:start + 64])
        targets = val_targets[start:start + 64]
        totals += torch.bincount(targets, minlength=NUM_CLASSES)
        correct += torch.bincount(targets[preds == targets], minlength=NUM_CLASSES)
    return {"step": step, "eval_accuracy": (correct.sum() / totals.sum()).item(),
            "eval_per_class_accuracy": (correct / totals).tolist()}


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
    return correct_record(model, inputs, targets, step, state)


def shared_list_record(model, val_inputs, val_targets, step, state):
    values = state.setdefault("values", [0.0] * NUM_CLASSES)
    values[:] = loop_per_class_accuracy(predict(model, val_inputs), val_targets, NUM_CLASSES)
    return {"step": step, "eval_accuracy": 0.0, "eval_per_class_accuracy": values}


def missing_key_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    return {"step": step, "eval_accuracy": (preds == val_targets).float().mean().item()}


def missing_accuracy_record(model, val_inputs, val_targets, step, state):
    record = correct_record(model, val_inputs, val_targets, step, state)
    del record["eval_accuracy"]
    return record


def train_mode_record(model, val_inputs, val_targets, step, state):
    with torch.no_grad():  # no model.eval(): dropout stays on
        preds = model(val_inputs).argmax(dim=-1)
    return {"step": step, "eval_accuracy": (preds == val_targets).float().mean().item(),
            "eval_per_class_accuracy": loop_per_class_accuracy(preds, val_targets, NUM_CLASSES)}


def batch_mean_record(model, val_inputs, val_targets, step, state):
    """The lesson's "common bug": per-batch ratios, averaged."""
    rows = []
    for start in range(0, len(val_targets), 64):
        preds = predict(model, val_inputs[start:start + 64])
        rows.append(loop_per_class_accuracy(preds, val_targets[start:start + 64], NUM_CLASSES))
    means = np.nanmean(np.array(rows), axis=0).tolist()
    preds = predict(model, val_inputs)
    return {"step": step, "eval_accuracy": (preds == val_targets).float().mean().item(),
            "eval_per_class_accuracy": means}


def smoothed_record(model, val_inputs, val_targets, step, state):
    """The lesson's "common bug": the validation curve smoothed (a debiased EMA, weight 0.6)."""
    record = correct_record(model, val_inputs, val_targets, step, state)
    raw = torch.tensor(record["eval_per_class_accuracy"])
    state["ema"] = 0.6 * state.get("ema", torch.zeros(NUM_CLASSES)) + 0.4 * raw
    state["n"] = state.get("n", 0) + 1
    record["eval_per_class_accuracy"] = (state["ema"] / (1 - 0.6 ** state["n"])).tolist()
    return record


def step_before_the_increment_record(model, val_inputs, val_targets, step, state):
    return {**correct_record(model, val_inputs, val_targets, step, state), "step": step - 1}


def first_batch_only_record(model, val_inputs, val_targets, step, state):
    return correct_record(model, val_inputs[:64], val_targets[:64], step, state)


def fabricated_record(model, val_inputs, val_targets, step, state):
    return {"step": step, "eval_accuracy": 0.9,
            "eval_per_class_accuracy": [0.95, 0.9, 0.95, 0.9, 0.92, 0.93, 0.97, 0.9, 0.4, 0.9]}


def rounded_record(model, val_inputs, val_targets, step, state):
    """Values rounded for display: a record that no longer says what was measured."""
    record = correct_record(model, val_inputs, val_targets, step, state)
    record["eval_per_class_accuracy"] = [round(v, 1) for v in record["eval_per_class_accuracy"]]
    return record


def library_evaluate_record(model, val_inputs, val_targets, step, state):
    result = course_lib.evaluate(model, DataLoader(TensorDataset(val_inputs, val_targets),
                                                   batch_size=len(val_targets)))
    return {"step": step, "eval_accuracy": result["eval_accuracy"],
            "eval_per_class_accuracy": result["eval_per_class_accuracy"]}


def library_per_class_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    return {"step": step, "eval_accuracy": (preds == val_targets).float().mean().item(),
            "eval_per_class_accuracy": course_lib.per_class_accuracy(preds, val_targets,
                                                                     NUM_CLASSES)}


def tensor_accuracy_record(model, val_inputs, val_targets, step, state):
    """eval_accuracy without .item(): a 0-dim tensor in the history."""
    record = correct_record(model, val_inputs, val_targets, step, state)
    preds = predict(model, val_inputs)
    return {**record, "eval_accuracy": (preds == val_targets).float().mean()}


def tensor_per_class_record(model, val_inputs, val_targets, step, state):
    record = correct_record(model, val_inputs, val_targets, step, state)
    return {**record, "eval_per_class_accuracy": torch.tensor(record["eval_per_class_accuracy"])}


def one_element_tensors_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    record = correct_record(model, val_inputs, val_targets, step, state)
    rates = [(preds[val_targets == c] == c).float().mean() for c in range(NUM_CLASSES)]
    return {**record, "eval_per_class_accuracy": rates}


def accuracy_rounded_record(model, val_inputs, val_targets, step, state):
    record = correct_record(model, val_inputs, val_targets, step, state)
    return {**record, "eval_accuracy": round(record["eval_accuracy"], 3)}


def accuracy_in_half_record(model, val_inputs, val_targets, step, state):
    preds = predict(model, val_inputs)
    record = correct_record(model, val_inputs, val_targets, step, state)
    return {**record, "eval_accuracy": (preds == val_targets).half().mean().item()}


def per_class_rounded_to_six_record(model, val_inputs, val_targets, step, state):
    record = correct_record(model, val_inputs, val_targets, step, state)
    return {**record, "eval_per_class_accuracy": [round(v, 6) for v in
                                                  record["eval_per_class_accuracy"]]}


def batch_index_as_step(*args, **kwargs):
    """Records the step within the epoch: the second epoch's records repeat small numbers."""
    history = make_train_and_log(correct_record)(*args, **kwargs)
    per_epoch = math.ceil(len(args[1]) / kwargs.get("batch_size", 64))
    return [{**r, "step": (r["step"] - 1) % per_epoch + 1} for r in history]


def only_some_evaluations(*args, **kwargs):
    def only_after_step_3(model, val_inputs, val_targets, step, state):
        return correct_record(model, val_inputs, val_targets, step, state) if step > 3 else {}

    return [r for r in make_train_and_log(only_after_step_3)(*args, **kwargs) if r]


LOGGING_WRONG = [
    # curriculum: overall accuracy for every class
    (make_train_and_log(overall_record), "overall accuracy", "one value per class"),
    # the lesson's "common bug" boxes: per-batch means; a smoothed validation curve
    (make_train_and_log(batch_mean_record), "mean of per-batch values", "divide once at the end"),
    (make_train_and_log(smoothed_record), "smoothed over evaluations", "never the validation"),
    # the wrong data, the wrong mode, part of the data
    (make_train_and_log(training_data_record), "evaluated on training examples",
     "evaluate on val_set"),
    (make_train_and_log(train_mode_record), "in training mode", "model.eval()"),
    (make_train_and_log(first_batch_only_record), "only 64 of the 270", "every example of val_set"),
    (make_train_and_log(correct_record, train_mode=False), "went on training in eval mode",
     "model.train()"),
    # records that claim what did not happen
    (make_train_and_log(fabricated_record), "never ran the model on the validation examples",
     "predict val_inputs"),
    (make_train_and_log(rounded_record), "does not match the model's predictions",
     "argmax of the logits"),
    (make_train_and_log(correct_record, evaluate_at_the_end=True),
     "describes an evaluation that did not happen", "right after optimizer.step()"),
    (make_train_and_log(step_before_the_increment_record), "the records' steps",
     "number of optimizer steps taken so far"),
    (make_train_and_log(shared_list_record), "share one per-class list",
     "store a new list at each evaluation"),
    # the wrong shape of record
    (make_train_and_log(counts_record), "above 1", "not counts"),
    (make_train_and_log(missing_key_record), "has no 'eval_per_class_accuracy'", "at EVERY"),
    (make_train_and_log(missing_accuracy_record), "has no 'eval_accuracy'", "'eval_accuracy'"),
    (only_some_evaluations, "one record per evaluation", "should evaluate after steps [3, 6, 9, 10]"),
    (lambda *args, **kwargs: None, "returned None", "return the history"),
    # delegation
    (make_train_and_log(library_evaluate_record), "course_lib.loop.evaluate", "YOUR"),
    (make_train_and_log(library_per_class_record), "course_lib.metrics.per_class_accuracy",
     "YOUR"),
    # every evaluation of every epoch (the check's run has two)
    (make_train_and_log(correct_record, step_per_epoch=True), "one record per evaluation",
     "the count goes on across epochs"),
    (make_train_and_log(correct_record, history_per_epoch=True), "one record per evaluation",
     "records of the first epoch are gone"),
    (make_train_and_log(correct_record, eval_at_epoch_end=True), "one record per evaluation",
     "not at the end of each epoch"),
    (batch_index_as_step, "the records' steps", "number of optimizer steps taken so far"),
    # the records' types
    (make_train_and_log(tensor_accuracy_record), "eval_accuracy is a Tensor", ".item()"),
    (make_train_and_log(tensor_per_class_record), "is a Tensor, not a list", ".tolist()"),
    (make_train_and_log(one_element_tensors_record), "holds a Tensor", ".item()"),
    # tolerance (1e-7)
    (make_train_and_log(accuracy_rounded_record), "eval_accuracy", "predicted correctly"),
    (make_train_and_log(accuracy_in_half_record), "eval_accuracy", "predicted correctly"),
    (make_train_and_log(per_class_rounded_to_six_record), "does not match the model's",
     "argmax of the logits"),
    # the loop's optimizer
    (make_train_and_log(correct_record, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)),
     "another optimizer", "LEARNING_RATE"),
    (make_train_and_log(correct_record, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3)),
     "another optimizer", "LEARNING_RATE"),
    (make_train_and_log(correct_record, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)),
     "another optimizer", "LEARNING_RATE"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_logging_check_passes_correct_loops(seed, capsys):
    """16 seeds: both correct loops pass on every seed."""
    check_per_class_logging(make_train_and_log(correct_record), seed=seed)
    check_per_class_logging(make_train_and_log(batched_counts_record), seed=seed)
    assert capsys.readouterr().out.count("✓") == 2


def test_per_class_logging_check_says_not_implemented_for_a_stub():
    def stub_record(*args):
        raise NotImplementedError("evaluate on val_set and append a record")

    with pytest.raises(NotImplementedYet):
        check_per_class_logging(make_train_and_log(stub_record))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, what, hint", LOGGING_WRONG,
                         ids=[str(i) for i in range(len(LOGGING_WRONG))])
def test_per_class_logging_check_rejects_wrong_loops(answer, what, hint, seed):
    """16 seeds: each of the 32 wrong loops fails on every seed, with its own message and hint."""
    fails_with(check_per_class_logging, answer, seed=seed, what=what, hint=hint)


def test_the_logging_check_leaves_no_hook_behind():
    import sys

    from torch.optim.optimizer import _global_optimizer_post_hooks

    hooks = len(_global_optimizer_post_hooks)
    fails_with(check_per_class_logging, make_train_and_log(fabricated_record))
    assert len(_global_optimizer_post_hooks) == hooks and sys.getprofile() is None


# ---- (c, d) the rare class falls, and the remedy narrows the gap ---------------------------------

REFERENCE_LOOP = make_train_and_log(correct_record)


def remedy_weights(train_set):
    counts = torch.tensor(class_counts(train_set, NUM_CLASSES), dtype=torch.float32)
    return {"loss_fn": nn.CrossEntropyLoss(weight=counts.sum() / (NUM_CLASSES * counts))}


def remedy_focal(train_set):
    counts = torch.tensor(class_counts(train_set, NUM_CLASSES), dtype=torch.float32)
    weights = counts.sum() / (NUM_CLASSES * counts)
    return {"loss_fn": FocalLoss(gamma=2.0, alpha=weights / weights.mean())}


def remedy_oversampling(train_set):
    labels = torch.tensor([int(label) for _, label in train_set])
    counts = torch.bincount(labels, minlength=NUM_CLASSES).float()
    return {"sampler": WeightedRandomSampler((1.0 / counts)[labels], num_samples=len(labels),
                                             replacement=True)}


REMEDIES = {"class weights": remedy_weights, "focal loss with alpha": remedy_focal,
            "oversampling": remedy_oversampling}


def train(train_set, val_set, seed, loop=REFERENCE_LOOP, **kwargs):
    """What the learner's cell does: seed, a fresh MLP, train_and_log with its defaults."""
    seed_everything(seed)
    return loop(MLP(), train_set, val_set, **({"seed": seed} if seed else {}), **kwargs)


_RUNS = {}


def runs(splits, seed):
    """train_set, history_before and one history_after per remedy, made once per seed."""
    if seed not in _RUNS:
        train_set = downsample_class(splits.train, RARE_CLASS, KEEP_FRACTION, seed=seed)
        after = {name: train(train_set, splits.val, seed, **remedy(train_set))
                 for name, remedy in REMEDIES.items()}
        _RUNS[seed] = {"train_set": train_set, "before": train(train_set, splits.val, seed),
                       "after": after}
    return _RUNS[seed]


def looks_good(rare_values, other_value=0.95, evaluations=15):
    """A fabricated history: every class at `other_value`, the rare class as given."""
    records = []
    for i in range(evaluations):
        row = [other_value] * NUM_CLASSES
        row[RARE_CLASS] = rare_values[min(i, len(rare_values) - 1)]
        records.append({"step": 10 * (i + 1), "eval_accuracy": sum(row) / NUM_CLASSES,
                        "eval_per_class_accuracy": row})
    return records


def ignores_its_train_set(splits, seed):
    """A loop that trains on a dataset of its own, whatever it is passed."""
    own = downsample_class(splits.train, RARE_CLASS, KEEP_FRACTION, seed=seed)
    return make_train_and_log(correct_record, data=own)


def falls_case(name, splits, seed):
    """(history_before, train_and_log, train_set) for each wrong answer of the falls check."""
    r = runs(splits, seed)
    train_set, val = r["train_set"], splits.val
    if name == "fabricated history":
        return looks_good([0.2]), REFERENCE_LOOP, train_set
    if name == "history trained on the balanced set":
        return train(splits.train, val, seed), REFERENCE_LOOP, train_set
    if name == "history without seeding":
        return train(train_set, val, seed + 100), REFERENCE_LOOP, train_set
    if name == "history trained longer":
        return train(train_set, val, seed, epochs=16), REFERENCE_LOOP, train_set
    if name == "history with the remedy":
        return r["after"]["class weights"], REFERENCE_LOOP, train_set
    if name == "train_set never downsampled":
        return train(splits.train, val, seed), REFERENCE_LOOP, splits.train
    if name == "loop ignores its train_set":
        loop = ignores_its_train_set(splits, seed)
        return train(train_set, val, seed, loop=loop), loop, train_set
    if name == "loop logs made-up records":
        loop = make_train_and_log(fabricated_record)
        return train(train_set, val, seed, loop=loop), loop, train_set
    raise ValueError(name)


FALLS_WRONG = [
    # a history handed in that does not come from the run
    ("fabricated history", "is not the run", "a fresh model from seeded_mlp(0)"),
    ("history trained on the balanced set", "is not the run", "a history made any other way"),
    ("history without seeding", "is not the run", "a fresh model from seeded_mlp(0)"),
    ("history trained longer", "is not the run", "nothing else changed"),
    ("history with the remedy", "is not the run", "nothing else changed"),
    # the run itself is not the imbalanced one
    ("train_set never downsampled", "far below the mean", "the imbalanced set of (b)"),
    ("loop ignores its train_set", "never read an example", "from the train_set argument"),
    ("loop logs made-up records", "does not match the model's predictions",
     "pass the check of (c) first"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_rare_class_check_passes_the_real_run(splits, seed, capsys):
    """16 seeds: the reference run passes on every seed (gap 0.46-0.74)."""
    r = runs(splits, seed)
    check_rare_class_falls(r["before"], REFERENCE_LOOP, r["train_set"], splits.val, RARE_CLASS,
                           seed=seed)
    assert "history_before is that run" in capsys.readouterr().out


def test_rare_class_check_says_not_implemented_for_none(splits):
    with pytest.raises(NotImplementedYet):
        check_rare_class_falls(None, REFERENCE_LOOP, splits.train, splits.val, RARE_CLASS)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, what, hint", FALLS_WRONG, ids=[n for n, _, _ in FALLS_WRONG])
def test_rare_class_check_rejects_wrong_answers(splits, name, what, hint, seed):
    """16 seeds: each of the 8 wrong answers fails on every seed, with its message and hint."""
    history, loop, train_set = falls_case(name, splits, seed)
    fails_with(check_rare_class_falls, history, loop, train_set, splits.val, RARE_CLASS,
               seed=seed, what=what, hint=hint)


def class_weights_for(counts):
    counts = torch.as_tensor(counts, dtype=torch.float32)
    return counts.sum() / (NUM_CLASSES * counts)


def plain_cross_entropy(train_set):
    return {"loss_fn": nn.CrossEntropyLoss()}


def focal_without_alpha(train_set):
    return {"loss_fn": FocalLoss(gamma=2.0)}


def more_epochs(train_set):
    return {"epochs": 16}


def larger_learning_rate(train_set):
    return {"lr": 1e-2}


def unweighted_sampler(train_set):
    return {"sampler": RandomSampler(train_set, replacement=True)}


def one_weight_per_class(train_set):
    weights = class_weights_for(class_counts(train_set))
    return {"sampler": WeightedRandomSampler(weights, num_samples=len(train_set), replacement=True)}


def without_replacement(train_set):
    labels = torch.tensor([int(label) for _, label in train_set])
    weights = class_weights_for(class_counts(train_set))[labels]
    return {"sampler": WeightedRandomSampler(weights, num_samples=len(labels), replacement=False)}


def five_times_the_draws(train_set):
    labels = torch.tensor([int(label) for _, label in train_set])
    weights = class_weights_for(class_counts(train_set))[labels]
    return {"sampler": WeightedRandomSampler(weights, num_samples=5 * len(labels),
                                             replacement=True)}


def weights_the_wrong_way_round(train_set):
    counts = torch.tensor(class_counts(train_set), dtype=torch.float32)
    return {"loss_fn": nn.CrossEntropyLoss(weight=counts / counts.mean())}


def weights_too_weak(train_set):
    return {"loss_fn": nn.CrossEntropyLoss(weight=class_weights_for(class_counts(train_set)) ** 0.25)}


def weights_too_extreme(train_set):
    counts = torch.tensor(class_counts(train_set))
    weights = torch.ones(NUM_CLASSES)
    weights[counts.argmin()] = 1000.0
    return {"loss_fn": nn.CrossEntropyLoss(weight=weights)}


_FIXED = class_weights_for([124, 128, 123, 127, 127, 128, 127, 125, 18, 126])


def weights_for_class_8_only(train_set):
    """Hard-coded: the weights of the exercise's own training set, whatever the set."""
    return {"loss_fn": nn.CrossEntropyLoss(weight=_FIXED)}


def weights_from_the_validation_set(train_set):
    return {"loss_fn": nn.CrossEntropyLoss(weight=class_weights_for(
        class_counts(load_digits_splits(seed=0).val)))}


def loss_and_sampler(train_set):
    return {**remedy_weights(train_set), **remedy_oversampling(train_set)}


REMEDY_WRONG_STRUCTURE = [
    # not a remedy at all
    (plain_cross_entropy, "does not favour class 8", "treats every class alike"),
    (focal_without_alpha, "does not favour class 8", "focal loss without alpha"),
    (more_epochs, "'epochs', which is not one of the three remedies", "training longer"),
    (larger_learning_rate, "'lr', which is not one of the three remedies", "not a remedy"),
    (unweighted_sampler, "does not favour class 8", "weight each example"),
    (five_times_the_draws, "examples per pass", "drawing more is training longer"),
    # a remedy, built wrongly
    (one_weight_per_class, "only draws indices 0..9", "one weight per EXAMPLE"),
    (without_replacement, "does not favour class 8", "draw with replacement"),
    (weights_the_wrong_way_round, "does not favour class 8", "gets LESS than the others"),
    (weights_too_weak, "does not favour class 8", "favoured too little"),
    (weights_too_extreme, "far too much", "inverse class frequency is enough"),
    (weights_for_class_8_only, "not class 3, the rarest of that set", "not for a fixed class"),
    (weights_from_the_validation_set, "does not favour class 8", "the set remedy receives"),
    (loss_and_sampler, "both a loss_fn and a sampler", "apply one remedy"),
    (lambda train_set: None, "returned None", "dict of keyword arguments"),
    (lambda train_set: [("loss_fn", None)], "should return a dict", '{"loss_fn": ...}'),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(REMEDIES))
def test_remedy_check_passes_each_of_the_three_remedies(splits, seed, name, capsys):
    """16 seeds: each of the three remedies passes on every seed; over those seeds the gap shrank
    by 0.22 at least and to 0.65 of itself at most, the other classes moved by 0.03 at most."""
    r = runs(splits, seed)
    check_remedy(REMEDIES[name], r["after"][name], REFERENCE_LOOP, r["train_set"], splits.val,
                 RARE_CLASS, seed=seed)
    assert "history_after is that run" in capsys.readouterr().out


def test_remedy_check_says_not_implemented(splits):
    r = runs(splits, 0)
    with pytest.raises(NotImplementedYet):
        check_remedy(stub, None, REFERENCE_LOOP, r["train_set"], splits.val, RARE_CLASS)
    with pytest.raises(NotImplementedYet):
        check_remedy(remedy_weights, None, REFERENCE_LOOP, r["train_set"], splits.val, RARE_CLASS)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("remedy, what, hint", REMEDY_WRONG_STRUCTURE,
                         ids=[str(i) for i in range(len(REMEDY_WRONG_STRUCTURE))])
def test_remedy_check_rejects_what_is_not_one_of_the_three_remedies(splits, remedy, what, hint,
                                                                    seed):
    """16 seeds: each of these 16 wrong remedies fails on every seed, before any training, with
    its message and hint; a good-looking history_after does not help them."""
    r = runs(splits, seed)
    fails_with(check_remedy, remedy, looks_good([0.8]), REFERENCE_LOOP, r["train_set"], splits.val,
               RARE_CLASS, seed=seed, what=what, hint=hint)


REMEDY_WRONG_RUNS = [
    ("fabricated history_after", "is not the run", "a history made any other way"),
    ("history_after without the remedy", "is not the run", "nothing else changed"),
    ("history_after of another remedy", "is not the run", "nothing else changed"),
    ("loop ignores loss_fn", "never used the loss_fn", "its loss_fn argument"),
    ("loop ignores sampler", "did not draw its batches with the sampler", "its sampler argument"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, what, hint", REMEDY_WRONG_RUNS,
                         ids=[n for n, _, _ in REMEDY_WRONG_RUNS])
def test_remedy_check_measures_in_its_own_runs(splits, name, what, hint, seed):
    """16 seeds: each of these 5 wrong answers fails on every seed, with its message and hint."""
    r = runs(splits, seed)
    train_set, loop, remedy = r["train_set"], REFERENCE_LOOP, remedy_weights
    history = r["after"]["class weights"]
    if name == "fabricated history_after":
        history = looks_good([0.85])
    elif name == "history_after without the remedy":
        history = r["before"]
    elif name == "history_after of another remedy":
        history = r["after"]["focal loss with alpha"]
    elif name == "loop ignores loss_fn":
        loop = make_train_and_log(correct_record, use_loss_fn=False)
        history = train(train_set, splits.val, seed, loop=loop, **remedy(train_set))
    elif name == "loop ignores sampler":
        loop, remedy = make_train_and_log(correct_record, use_sampler=False), remedy_oversampling
        history = train(train_set, splits.val, seed, loop=loop, **remedy(train_set))
    fails_with(check_remedy, remedy, history, loop, train_set, splits.val, RARE_CLASS, seed=seed,
               what=what, hint=hint)


def test_each_check_has_a_corpus_of_at_least_five_wrong_answers():
    for corpus in (PER_CLASS_WRONG, MAKE_IMBALANCED_WRONG, SPLIT_WRONG, LOGGING_WRONG, FALLS_WRONG,
                   REMEDY_WRONG_STRUCTURE + REMEDY_WRONG_RUNS):
        assert len(corpus) >= 5
