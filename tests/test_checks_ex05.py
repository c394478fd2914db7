"""The checks of exercise 05 pass correct answers, say "not implemented yet" for a stub, and reject
each realistic wrong answer with a hint that names the mistake.

Every test runs over the seeds of the check's own data (the model, the examples, the labels):
CHECK_SEEDS of them, 2 by default; CHECK_SEEDS=16 is the validation run. With 16 seeds every
correct answer passed on every seed and every wrong answer failed on every seed, with the hint
asserted below (the uniformity threshold of (c) included).

Corpus sizes (wrong answers per check), before the blind spots of dtypes, tolerances, counts read,
edges (a batch of padding alone, absent classes, ties, the whole set) were closed -> now:
check_masked_sums 9 -> 13, check_evaluate_exact 12 -> 21, check_stratified_sample 12 -> 16
(kinds: dtypes and precision, tolerance 1e-5 -> 1e-6, the loader's reads and forward passes
counted, a batch of padding alone, absent classes; ties are accepted either way).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import evaluate as library_evaluate
from course_lib.checks._core import NotImplementedYet
from course_lib.checks.ex05 import (
    check_evaluate_exact,
    check_masked_sums,
    check_stratified_sample,
    hint,
)
from course_lib.sampling import stratified_indices

from check_support import fails_with, passes, stub


def test_hint_answers_every_question(capsys):
    for question in ("a", "b", "c"):
        hint(question)
    out = capsys.readouterr().out
    assert out.count("💡") == 3


# ---- (a) masked_sums -----------------------------------------------------------------------------


def masked_sums(logits, targets, mask):
    losses = F.cross_entropy(logits, targets, reduction="none")
    correct = logits.argmax(dim=1) == targets
    return losses[mask].sum(), correct[mask].sum(), mask.sum()


def masked_sums_by_multiplying(logits, targets, mask):
    weight = mask.float()
    losses = F.cross_entropy(logits, targets, reduction="none")
    return ((losses * weight).sum().item(), ((logits.argmax(1) == targets).float() * weight).sum().item(),
            int(weight.sum()))


def test_masked_sums_check_passes_correct_answers(capsys):
    passes(check_masked_sums, masked_sums, capsys)
    passes(check_masked_sums, masked_sums_by_multiplying, capsys)


def test_masked_sums_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_masked_sums(stub)


def test_masked_sums_check_rejects_counting_padding():
    def ignores_mask(logits, targets, mask):
        return (F.cross_entropy(logits, targets, reduction="sum"),
                (logits.argmax(1) == targets).sum(), len(targets))

    fails_with(check_masked_sums, ignores_mask, hint_text="padding rows are not examples")


def test_masked_sums_check_rejects_padding_in_the_loss_sum_only():
    def loss_of_every_row(logits, targets, mask):
        _, correct, count = masked_sums(logits, targets, mask)
        return F.cross_entropy(logits, targets, reduction="sum"), correct, count

    fails_with(check_masked_sums, loss_of_every_row, hint_text="give padding weight zero",
               what="includes the padding rows")


def test_masked_sums_check_rejects_padding_counted_as_correct():
    def correct_of_every_row(logits, targets, mask):
        loss_sum, _, count = masked_sums(logits, targets, mask)
        return loss_sum, (logits.argmax(1) == targets).sum(), count

    fails_with(check_masked_sums, correct_of_every_row, hint_text="padding rows count as correct")


def test_masked_sums_check_rejects_the_mean_instead_of_the_sum():
    def mean_loss(logits, targets, mask):
        _, correct, count = masked_sums(logits, targets, mask)
        real = mask.sum()
        loss = F.cross_entropy(logits[mask], targets[mask]) if real else torch.tensor(0.0)
        return loss, correct, count

    fails_with(check_masked_sums, mean_loss, hint_text="return the SUM over the real rows")


def test_masked_sums_check_rejects_an_inverted_mask():
    def inverted(logits, targets, mask):
        return masked_sums(logits, targets, ~mask)

    fails_with(check_masked_sums, inverted, hint_text="True for REAL rows")


def test_masked_sums_check_rejects_nan_for_a_batch_of_padding_alone():
    def mean_times_count(logits, targets, mask):
        _, correct, count = masked_sums(logits, targets, mask)
        mean = F.cross_entropy(logits[mask], targets[mask])  # NaN over zero rows
        return mean * mask.sum(), correct, count

    fails_with(check_masked_sums, mean_times_count, hint_text="a mean over zero rows is NaN")


def test_masked_sums_check_rejects_a_mask_used_as_a_weight_of_the_wrong_rows():
    def first_rows(logits, targets, mask):  # assumes padding always sits at the end
        real = int(mask.sum())
        return masked_sums(logits[:real], targets[:real], torch.ones(real, dtype=torch.bool))

    fails_with(check_masked_sums, first_rows, hint_text="cross_entropy(logits, targets, "
               "reduction='none')")


def test_masked_sums_check_rejects_delegating_to_course_lib():
    from torch import nn

    from course_lib.loop import batch_loss

    def delegated(logits, targets, mask):
        kept_logits, kept_targets, mean, items = batch_loss(nn.Identity(), (logits, targets, mask),
                                                            F.cross_entropy, torch.device("cpu"))
        return mean * items, (kept_logits.argmax(1) == kept_targets).sum(), items

    fails_with(check_masked_sums, delegated, hint_text="write the sums yourself",
               what="course_lib.loop.batch_loss")


def test_masked_sums_check_rejects_losses_in_half_precision():
    def half(logits, targets, mask):
        _, correct, count = masked_sums(logits, targets, mask)
        losses = F.cross_entropy(logits.half(), targets, reduction="none")  # to save memory
        return losses[mask].float().sum(), correct, count

    fails_with(check_masked_sums, half, hint_text="add up those of the real rows",
               what="differs from the sum")


def test_masked_sums_check_rejects_losses_in_bfloat16():
    def brain_float(logits, targets, mask):
        _, correct, count = masked_sums(logits, targets, mask)
        losses = F.cross_entropy(logits.bfloat16(), targets, reduction="none")
        return losses[mask].sum().float(), correct, count

    fails_with(check_masked_sums, brain_float, hint_text="add up those of the real rows",
               what="differs from the sum")


def test_masked_sums_check_rejects_summed_confidences_as_the_number_correct():
    def confidences(logits, targets, mask):
        loss_sum, _, count = masked_sums(logits, targets, mask)
        probability_of_target = logits.softmax(dim=1).gather(1, targets[:, None])[:, 0]
        return loss_sum, probability_of_target[mask].sum(), count

    fails_with(check_masked_sums, confidences, hint_text="add up booleans",
               what="not a whole number")


def test_masked_sums_check_rejects_the_share_of_real_rows_as_the_count():
    def share(logits, targets, mask):
        loss_sum, correct, _ = masked_sums(logits, targets, mask)
        return loss_sum, correct, mask.float().mean()

    fails_with(check_masked_sums, share, hint_text="add up booleans", what="not a whole number")


def test_masked_sums_check_rejects_a_wrong_shape_of_answer():
    fails_with(check_masked_sums, lambda logits, targets, mask: masked_sums(logits, targets, mask)[:2],
               hint_text="three numbers")


# ---- (b) evaluate_exact --------------------------------------------------------------------------


def make_evaluate(mode="restore", grad=False, combine="sums", use_mask=True, last_batch=True,
                  delegate=False, batch_size=32, passes="one", forwards=1, precision=None,
                  totals="python", accuracy="divide"):
    """A correct evaluate_exact by default; each argument, changed, makes one realistic mistake."""

    def evaluate_exact(model, loader):
        was_training = model.training
        if mode != "train":
            model.eval()
        context = torch.enable_grad() if grad else torch.inference_mode()
        loss_sum, correct, count, means = 0.0, 0, 0, []
        if totals == "float16":
            loss_sum = torch.zeros((), dtype=torch.float16)
        if passes == "count first":
            examples = sum(int(mask.sum()) for _, _, mask in loader)
        with context:
            if delegate:
                batches = ((x[m], y[m]) for x, y, m in loader)
                result = library_evaluate(model, batches)
                return {"eval_loss": result["eval_loss"], "eval_accuracy": result["eval_accuracy"]}
            for inputs, targets, mask in loader:
                if not last_batch and len(targets) < batch_size:
                    continue  # drop_last, the quiet way
                if not use_mask:
                    mask = torch.ones_like(mask)
                if precision is not None:
                    with torch.autocast("cpu", dtype=precision):
                        logits = model(inputs).float()
                else:
                    logits = model(inputs)
                batch_loss, batch_correct, batch_count = masked_sums(logits, targets, mask)
                if forwards == 2:  # the accuracy from a second forward pass
                    batch_correct = masked_sums(model(inputs), targets, mask)[1]
                if combine == "python means weighted":  # each batch's mean, times its count
                    loss_sum += batch_loss.item() / int(batch_count) * int(batch_count)
                    correct += int(batch_correct)
                    count += int(batch_count)
                elif combine == "mean times count":
                    mean = F.cross_entropy(logits[mask], targets[mask])  # NaN for no real rows
                    loss_sum += (mean * mask.sum()).item()
                    correct += int(batch_correct)
                    count += int(batch_count)
                elif combine == "means":
                    means.append((batch_loss.item() / int(batch_count),
                                  int(batch_correct) / int(batch_count)))
                elif combine == "rows":  # loss over real rows, divided by every row
                    loss_sum += batch_loss.item()
                    correct += int(batch_correct)
                    count += len(targets)
                elif combine == "last":
                    loss_sum, correct, count = (batch_loss.item(), int(batch_correct),
                                                int(batch_count))
                else:
                    loss_sum += batch_loss.item() if totals == "python" else batch_loss.half()
                    correct += int(batch_correct)
                    count += int(batch_count)
            if passes == "per metric":  # a second loop for the accuracy
                correct = 0
                for inputs, targets, mask in loader:
                    correct += int(masked_sums(model(inputs), targets, mask)[1])
        if passes == "count first":
            count = examples
        if mode == "restore":
            model.train(was_training)
        elif mode == "always_train":
            model.train()
        if combine == "means":
            return {"eval_loss": sum(m[0] for m in means) / len(means),
                    "eval_accuracy": sum(m[1] for m in means) / len(means)}
        if accuracy == "float16":
            return {"eval_loss": float(loss_sum) / count,
                    "eval_accuracy": torch.tensor(correct / count, dtype=torch.float16)}
        if accuracy == "floor":
            return {"eval_loss": float(loss_sum) / count,
                    "eval_accuracy": torch.tensor(correct) // torch.tensor(count)}
        return {"eval_loss": float(loss_sum) / count, "eval_accuracy": correct / count}

    return evaluate_exact


def test_evaluate_check_passes_a_correct_answer(capsys):
    passes(check_evaluate_exact, make_evaluate(), capsys)


def test_evaluate_check_passes_no_grad_and_tensor_results(capsys):
    def evaluate_exact(model, loader):
        was_training = model.training
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64)
        with torch.no_grad():
            for inputs, targets, mask in loader:
                loss_sum, correct, count = masked_sums(model(inputs), targets, mask)
                totals += torch.stack([loss_sum.double(), correct.double(), count.double()])
        model.train(was_training)
        return {"eval_loss": totals[0] / totals[2], "eval_accuracy": totals[1] / totals[2]}

    passes(check_evaluate_exact, evaluate_exact, capsys)


def test_evaluate_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_evaluate_exact(stub)


def test_evaluate_check_rejects_the_mean_of_batch_means():
    fails_with(check_evaluate_exact, make_evaluate(combine="means"),
               hint_text="add up sums and counts over all batches", what="mean of the batch means")


def test_evaluate_check_rejects_counting_padding():
    fails_with(check_evaluate_exact, make_evaluate(use_mask=False),
               hint_text="use the mask in the sums AND in the count", what="padding rows")


def test_evaluate_check_rejects_dividing_by_every_row_of_the_batch():
    fails_with(check_evaluate_exact, make_evaluate(combine="rows"),
               hint_text="use the mask in the sums AND in the count", what="padding rows")


def test_evaluate_check_rejects_dropping_the_short_last_batch():
    fails_with(check_evaluate_exact, make_evaluate(last_batch=False),
               hint_text="the last batch's too")


def test_evaluate_check_rejects_keeping_only_the_last_batch():
    fails_with(check_evaluate_exact, make_evaluate(combine="last"),
               hint_text="every real example must count once")


def test_evaluate_check_rejects_evaluating_in_training_mode():
    fails_with(check_evaluate_exact, make_evaluate(mode="train"), hint_text="call model.eval()")


def test_evaluate_check_rejects_recording_a_graph():
    fails_with(check_evaluate_exact, make_evaluate(grad=True), hint_text="torch.inference_mode()")


def test_evaluate_check_rejects_leaving_the_model_in_eval_mode():
    fails_with(check_evaluate_exact, make_evaluate(mode="leave_eval"),
               hint_text="model.train(was_training)", what="training mode")


def test_evaluate_check_rejects_switching_an_eval_model_to_training():
    fails_with(check_evaluate_exact, make_evaluate(mode="always_train"),
               hint_text="model.train(was_training)", what="eval mode")


def test_evaluate_check_rejects_delegating_to_course_lib():
    fails_with(check_evaluate_exact, make_evaluate(delegate=True),
               hint_text="write the evaluation loop yourself", what="course_lib.loop.evaluate")


def test_evaluate_check_rejects_a_wrong_result_type():
    def returns_a_tuple(model, loader):
        result = make_evaluate()(model, loader)
        return result["eval_loss"], result["eval_accuracy"]

    fails_with(check_evaluate_exact, returns_a_tuple, hint_text="return a dict")


@pytest.mark.parametrize("mistake, hint_text, what", [
    # the loader is read once, each batch run once
    ({"passes": "count first"}, "keep every running total in the same single loop", "2 times"),
    ({"passes": "per metric"}, "keep every running total in the same single loop", "2 times"),
    ({"forwards": 2}, "one forward pass per batch", "ran the model"),
    # a batch of padding alone
    ({"combine": "mean times count"}, "a mean over its zero real rows is NaN", "NaN"),
    ({"combine": "python means weighted"}, "divides by zero", "ZeroDivisionError"),
    # precision and dtypes, against a tolerance of 1e-6
    ({"precision": torch.bfloat16}, "divide the total loss by the total number", "eval_loss"),
    ({"accuracy": "float16"}, "divide the number of correct real examples", "eval_accuracy"),
    ({"totals": "float16"}, "divide the total loss by the total number", "eval_loss"),
    ({"accuracy": "floor"}, "divide the number of correct real examples", "eval_accuracy"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_evaluate_check_rejects(mistake, hint_text, what):
    fails_with(check_evaluate_exact, make_evaluate(**mistake), hint_text=hint_text, what=what)


def test_evaluate_check_rejects_an_answer_that_never_runs_the_model():
    fails_with(check_evaluate_exact, lambda model, loader: {"eval_loss": 2.0, "eval_accuracy": 0.5},
               hint_text="call model(inputs) for each batch")


# ---- (c) stratified_sample -----------------------------------------------------------------------


def class_counts_by_hand(labels, size):
    sizes = torch.bincount(labels).tolist()
    total = len(labels)
    counts = [size * n // total for n in sizes]
    remainders = [size * n % total for n in sizes]
    for c in sorted(range(len(sizes)), key=lambda c: (-remainders[c], c))[:size - sum(counts)]:
        counts[c] += 1
    return counts


def make_sampler(counts="largest_remainder", choose="randperm", rng="generator", positions=False,
                 returns="list", classes="bincount"):
    """A correct stratified_sample by default; each argument, changed, makes one mistake."""

    def stratified_sample(labels, size, seed):
        total = len(labels)
        generator = torch.Generator().manual_seed(seed)
        if rng == "global_seeded":
            torch.manual_seed(seed)
            generator = None
        elif rng == "numpy_seeded":
            np.random.seed(seed)
        elif rng == "unseeded":
            generator = None
        if counts == "simple_random":
            return torch.randperm(total, generator=generator)[:size].tolist()
        sizes = torch.bincount(labels).tolist()
        if counts == "largest_remainder":
            per_class = class_counts_by_hand(labels, size)
        elif counts == "round":
            per_class = [round(size * n / total) for n in sizes]
        elif counts == "floor":
            per_class = [size * n // total for n in sizes]
        elif counts == "floor_then_largest_class":
            per_class = [size * n // total for n in sizes]
            per_class[int(np.argmax(sizes))] += size - sum(per_class)
        elif counts == "ties_to_the_larger_class":
            per_class = [size * n // total for n in sizes]
            remainders = [size * n % total for n in sizes]
            order = sorted(range(len(sizes)), key=lambda c: (-remainders[c], -c))
            for c in order[:size - sum(per_class)]:
                per_class[c] += 1
        chosen = []
        present = labels.unique().tolist() if classes == "unique" else range(len(per_class))
        for c, k in zip(present, per_class):
            of_class = torch.nonzero(labels == c).flatten()
            if choose == "first":
                picks = torch.arange(k)
            elif choose == "replacement":
                picks = torch.randint(0, len(of_class), (k,), generator=generator)
                if k > 1:
                    picks[-1] = picks[0]  # a repeat is likely; make it certain
            elif choose == "first_half":
                half = max(k, len(of_class) // 2)
                picks = torch.randperm(half, generator=generator)[:k]
            else:
                picks = torch.randperm(len(of_class), generator=generator)[:k]
            chosen += picks.tolist() if positions else of_class[picks].tolist()
        if returns == "float tensor":  # torch.cat onto torch.tensor([]), which is float32
            return torch.cat([torch.tensor([]), torch.tensor(chosen)])
        if returns == "mask":
            mask = torch.zeros(total, dtype=torch.bool)
            mask[chosen] = True
            return mask
        if returns == "column":
            return torch.tensor(chosen)[:, None]
        return chosen

    return stratified_sample


def test_stratified_check_passes_a_correct_answer(capsys):
    passes(check_stratified_sample, make_sampler(), capsys)


def test_stratified_check_passes_numpy_with_its_own_generator(capsys):
    def stratified_sample(labels, size, seed):
        generator = np.random.default_rng(seed)
        labels = labels.numpy()
        chosen = []
        for c, k in enumerate(class_counts_by_hand(torch.from_numpy(labels), size)):
            of_class = np.flatnonzero(labels == c)
            chosen.extend(generator.choice(of_class, size=k, replace=False).tolist())
        return np.array(chosen)

    passes(check_stratified_sample, stratified_sample, capsys)


def test_stratified_check_accepts_either_class_of_a_tie(capsys):
    passes(check_stratified_sample, make_sampler(counts="ties_to_the_larger_class"), capsys)


def test_stratified_check_says_not_implemented_for_a_stub():
    with pytest.raises(NotImplementedYet):
        check_stratified_sample(stub)


def test_stratified_check_rejects_a_simple_random_sample():
    fails_with(check_stratified_sample, make_sampler(counts="simple_random"),
               hint_text="a plain random sample is not stratified")


def test_stratified_check_rejects_rounding_each_class_on_its_own():
    fails_with(check_stratified_sample, make_sampler(counts="round"),
               hint_text="largest remainders", what="wrong number of examples")


def test_stratified_check_rejects_floors_without_the_leftovers():
    fails_with(check_stratified_sample, make_sampler(counts="floor"),
               hint_text="largest remainders", what="wrong number of examples")


def test_stratified_check_rejects_leftovers_given_to_the_largest_class():
    fails_with(check_stratified_sample, make_sampler(counts="floor_then_largest_class"),
               hint_text="a plain random sample is not stratified", what="not within one example")


def test_stratified_check_rejects_always_the_first_examples():
    fails_with(check_stratified_sample, make_sampler(choose="first"),
               hint_text="not always the first ones")


def test_stratified_check_rejects_sampling_with_replacement():
    fails_with(check_stratified_sample, make_sampler(choose="replacement"),
               hint_text="without replacement")


def test_stratified_check_rejects_an_unseeded_draw():
    fails_with(check_stratified_sample, make_sampler(rng="unseeded"),
               hint_text="torch.Generator")


def test_stratified_check_rejects_reseeding_the_global_generator():
    fails_with(check_stratified_sample, make_sampler(rng="global_seeded"),
               hint_text="not torch.manual_seed", what="global random state")


def test_stratified_check_rejects_reseeding_numpy():
    fails_with(check_stratified_sample, make_sampler(rng="numpy_seeded"),
               hint_text="not torch.manual_seed", what="global random state")


def test_stratified_check_rejects_positions_within_a_class():
    fails_with(check_stratified_sample, make_sampler(positions=True),
               hint_text="not positions within one class")


def test_stratified_check_rejects_favouring_some_examples_of_a_class():
    fails_with(check_stratified_sample, make_sampler(choose="first_half"),
               hint_text="every example of a class should have the same chance")


@pytest.mark.parametrize("mistake, hint_text, what", [
    ({"classes": "unique"}, "a class may have no examples", "absent"),
    ({"returns": "float tensor"}, "a list of ints", "not an index"),
    ({"returns": "mask"}, "a list of ints", "not an index"),
    ({"returns": "column"}, "a list of ints", "one-dimensional"),
], ids=lambda value: str(value) if isinstance(value, dict) else "")
def test_stratified_check_rejects(mistake, hint_text, what):
    fails_with(check_stratified_sample, make_sampler(**mistake), hint_text=hint_text, what=what)


def test_stratified_check_rejects_delegating_to_course_lib():
    fails_with(check_stratified_sample, lambda labels, size, seed: stratified_indices(labels, size, seed),
               hint_text="write the sampler yourself", what="course_lib.sampling")


def test_the_checks_restore_the_profiler_and_the_random_state_they_found():
    import sys

    def profiler(frame, event, arg):
        return None

    sys.setprofile(profiler)
    try:
        check_stratified_sample(make_sampler())
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    state = random.getstate()
    check_evaluate_exact(make_evaluate())
    assert random.getstate() == state
