import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from course_lib.metrics import (
    accuracy,
    confusion_matrix,
    ema_smooth,
    per_class_accuracy,
    per_class_accuracy_from_confusion,
    precision_recall,
    regression_errors,
)

NUM_CLASSES = 5


@pytest.fixture
def random_labels():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, NUM_CLASSES, (500,), generator=generator)
    preds = torch.randint(0, NUM_CLASSES, (500,), generator=generator)
    return preds, targets


def _same_with_nan(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float),
                               rtol=1e-12, atol=0, equal_nan=True)


def test_accuracy_matches_sklearn(random_labels):
    preds, targets = random_labels
    assert accuracy(preds, targets) == pytest.approx(skm.accuracy_score(targets, preds))


def test_accuracy_takes_logits_lists_and_arrays():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(2 / 3)
    assert accuracy(np.array([1, 1]), np.array([1, 1])) == 1.0


def test_accuracy_of_nothing_is_nan():
    nothing = torch.tensor([], dtype=torch.long)
    assert math.isnan(accuracy(nothing, nothing))


def test_confusion_matrix_matches_sklearn(random_labels):
    preds, targets = random_labels
    cm = confusion_matrix(preds, targets, NUM_CLASSES)
    assert cm.dtype == torch.int64 and cm.shape == (NUM_CLASSES, NUM_CLASSES)
    expected = skm.confusion_matrix(targets, preds, labels=range(NUM_CLASSES))
    np.testing.assert_array_equal(cm.numpy(), expected)


def test_confusion_matrix_rows_are_true_classes():
    # Two examples of class 0, both predicted as 2: row 0, column 2.
    cm = confusion_matrix(torch.tensor([2, 2]), torch.tensor([0, 0]), 3)
    assert cm[0, 2] == 2 and cm.sum() == 2


@pytest.mark.parametrize("preds,targets,num_classes,error,message", [
    ([0, 3], [0, 1], 3, ValueError, "preds holds class 3, outside 0..2"),
    ([0, 1], [-1, 1], 3, ValueError, "targets holds class -1, outside 0..2"),
    ([0.2, 0.9], [0, 1], 2, TypeError, "integer class indices"),
    ([0, 1, 1], [0, 1], 2, ValueError, "shape"),
    ([0, 1], [0, 1], 0, ValueError, "num_classes must be a positive int"),
], ids=["pred-out-of-range", "negative-target", "float-preds", "shapes", "no-classes"])
def test_confusion_matrix_rejects_what_would_miscount(preds, targets, num_classes, error, message):
    with pytest.raises(error, match=message):
        confusion_matrix(torch.tensor(preds), torch.tensor(targets), num_classes)


def test_per_class_accuracy_matches_sklearn_recall(random_labels):
    preds, targets = random_labels
    expected = skm.recall_score(targets, preds, labels=range(NUM_CLASSES), average=None)
    _same_with_nan(per_class_accuracy(preds, targets, NUM_CLASSES), expected)


def test_per_class_accuracy_is_not_overall_accuracy():
    preds = torch.tensor([0, 0, 0, 0])
    targets = torch.tensor([0, 0, 0, 1])
    # Class 0: 3 of 3 right; class 1: 0 of 1 right. Overall 0.75 must not appear.
    assert per_class_accuracy(preds, targets, 2) == [1.0, 0.0]


def test_per_class_accuracy_is_nan_for_an_absent_class():
    values = per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    assert values[:2] == [0.5, 1.0]
    assert math.isnan(values[2])


def test_per_class_accuracy_from_confusion_reads_the_diagonal():
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    values = per_class_accuracy_from_confusion(cm)
    assert values[0] == 0.75 and math.isnan(values[1]) and values[2] == 0.5


def test_precision_recall_match_sklearn(random_labels):
    preds, targets = random_labels
    result = precision_recall(preds, targets, NUM_CLASSES)
    labels = list(range(NUM_CLASSES))
    _same_with_nan(result["precision"],
                   skm.precision_score(targets, preds, labels=labels, average=None))
    _same_with_nan(result["recall"], skm.recall_score(targets, preds, labels=labels, average=None))
    assert result["support"] == np.bincount(targets.numpy(), minlength=NUM_CLASSES).tolist()


def test_precision_is_nan_for_a_class_never_predicted_and_recall_for_one_never_present():
    result = precision_recall(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), 3)
    assert math.isnan(result["precision"][2])  # nothing predicted as 2
    assert result["recall"][2] == 0.0  # one example of 2, missed
    result = precision_recall(torch.tensor([0, 2]), torch.tensor([0, 0]), 3)
    assert math.isnan(result["recall"][2]) and result["precision"][2] == 0.0


@pytest.mark.parametrize("weight", [0.5, 0.9, 0.99])
def test_ema_smooth_is_the_weighted_average_with_weights_that_sum_to_one(weight):
    # Not the recursion the implementation runs: the closed form it must equal. The n-th value
    # is sum_i w**(n-i) * v_i / sum_i w**(n-i), an average whose weights fall geometrically.
    values = np.random.default_rng(1).random(300)
    powers = weight ** np.arange(300)[::-1]
    expected = [(powers[-n:] * values[:n]).sum() / powers[-n:].sum() for n in range(1, 301)]
    np.testing.assert_allclose(ema_smooth(values.tolist(), weight), expected, rtol=1e-9)


def test_ema_smooth_known_values():
    # weight 0.5: 4, then (0.25 * 4 + 0.5 * 0) / 0.75, then (0.125 * 4 + 0.25 * 0 + 0.5 * 8) / 0.875
    assert ema_smooth([4.0, 0.0, 8.0], 0.5) == pytest.approx([4.0, 4 / 3, 4.5 / 0.875])


def test_ema_smooth_starts_at_the_first_value():
    assert ema_smooth([2.5, 1.0, 0.0], 0.99)[0] == pytest.approx(2.5)


def test_ema_smooth_with_weight_zero_returns_the_values():
    assert ema_smooth([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]


def test_ema_smooth_passes_nan_and_inf_through_without_poisoning_the_rest():
    smoothed = ema_smooth([1.0, math.nan, 1.0, math.inf, 1.0], 0.9)
    assert math.isnan(smoothed[1]) and math.isinf(smoothed[3])
    assert smoothed[0] == pytest.approx(1.0)
    assert smoothed[2] == pytest.approx(1.0) and smoothed[4] == pytest.approx(1.0)


def test_ema_smooth_accepts_a_tensor():
    assert ema_smooth(torch.tensor([1.0, 2.0]), 0.0) == [1.0, 2.0]


@pytest.mark.parametrize("weight", [1.0, -0.1, 1.5])
def test_ema_smooth_rejects_a_weight_outside_0_1(weight):
    with pytest.raises(ValueError, match="weight must be in"):
        ema_smooth([1.0], weight)


def test_regression_errors_match_numpy():
    generator = torch.Generator().manual_seed(2)
    targets = torch.randn(200, generator=generator)
    preds = targets + 0.3 * torch.randn(200, generator=generator)
    result = regression_errors(preds, targets, quantiles=(0.5, 0.9, 0.99))
    errors = (preds - targets).double().numpy()
    assert result["mae"] == pytest.approx(np.abs(errors).mean())
    assert result["rmse"] == pytest.approx(np.sqrt((errors**2).mean()))
    assert result["rmse"] == pytest.approx(skm.root_mean_squared_error(targets, preds), rel=1e-6)
    for q in (0.5, 0.9, 0.99):
        assert result[f"abs_error_p{100 * q:g}"] == pytest.approx(np.quantile(np.abs(errors), q))
    assert set(result) == {"mae", "rmse", "abs_error_p50", "abs_error_p90", "abs_error_p99"}


def test_regression_errors_refuse_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match="squeeze"):
        regression_errors(torch.zeros(4, 1), torch.zeros(4))
