"""Checks for exercise 05, exact evaluation and a stratified subset (introduced in exercise 05).

The exercise: (a) the sums one padded batch contributes to an evaluation, (b) an exact
evaluation over a loader whose last batch is short and whose batches hold padding, (c) a
stratified random subset for periodic evaluation. The checks build their own loaders and labels,
with content they know, drive the learner's functions on them, watch what happens (the model's
mode and the grad mode at every forward pass, calls into `course_lib`), and compare the results
with a computation over the whole set at once.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.checks._core import (
    CallWatch,
    CheckFailure,
    call_learner,
    code_objects,
    make_hint,
    passed,
    require,
)
from course_lib.models import MLP

hint = make_hint({
    "a": "the mask picks out the real rows. Compute one loss per row rather than one per batch, "
         "keep only the real rows' losses and add them up; count correct predictions and rows "
         "over the same real rows.",
    "b": "keep three running totals over the whole loader (loss sum, correct, items); divide only "
         "once, at the end. Remember the model's mode before switching to eval, and give it back.",
    "c": "work out every class's count first: rounding each share on its own may not add up to "
         "`size`, so what could decide where the examples left over by the floors go? Then draw "
         "that many of each class, with a torch.Generator seeded with `seed`.",
})

# Floats summed in another order differ in their last bits: the worst correct answer of
# tests/test_checks_ex05.py measured 1.9e-7 (relative) over 16 seeds; every mistake is far above.
LOSS_TOLERANCE = 1e-6  # relative (absolute below 1), as the exercise states
NUM_CLASSES = 10
FEATURES = 64


def _close(got: float, expected: float, tolerance: float = LOSS_TOLERANCE) -> bool:
    return math.isfinite(got) and abs(got - expected) <= tolerance * max(1.0, abs(expected))


def _number(value, what: str, hint_text: str) -> float:
    """A Python float from a number or a one-element tensor/array, or a CheckFailure."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.size == 1 if isinstance(value, np.ndarray) else value.numel() == 1:
            value = value.item()
        else:
            raise CheckFailure(f"{what} should be one number", got=f"shape {tuple(value.shape)}",
                               hint=hint_text)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise CheckFailure(f"{what} should be a number", got=type(value).__name__, hint=hint_text)
    return float(value)


def _library_functions(*names):
    """course_lib's own implementations of what the exercise asks for: its evaluation (and the
    per-batch helper it uses, where the library has one) and the named sampling functions."""
    import course_lib.loop
    import course_lib.sampling

    found = [getattr(course_lib.loop, name, None) for name in ("evaluate", "batch_loss")]
    found += [getattr(course_lib.sampling, name, None) for name in names]
    return [f for f in found if callable(f) and hasattr(f, "__code__")]


# ---- (a) masked_sums -----------------------------------------------------------------------------


def _masked_batch(seed: int, rows: int, padding: list[int]):
    """Logits, targets and a mask (True = real example) with padding rows at `padding`.

    Half the padding rows are predicted right with a tiny loss, the other half wrong with a loss
    near 20: counting them moves the loss sum, the number correct and the count well beyond
    rounding.
    """
    generator = torch.Generator().manual_seed(1000 + seed)
    logits = 2 * torch.randn(rows, NUM_CLASSES, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (rows,), generator=generator)
    # About half the real rows are predicted correctly.
    correct_rows = torch.rand(rows, generator=generator) < 0.5
    targets[correct_rows] = logits[correct_rows].argmax(dim=1)
    mask = torch.ones(rows, dtype=torch.bool)
    for row in padding:
        mask[row] = False
        logits[row] = 0.0
        logits[row, row % NUM_CLASSES] = 20.0
        targets[row] = row % NUM_CLASSES if row % 2 else (row + 1) % NUM_CLASSES
    return logits, targets, mask


def _reference_sums(logits, targets, mask) -> tuple[float, int, int]:
    losses = F.cross_entropy(logits.double(), targets, reduction="none")
    correct = logits.argmax(dim=1) == targets
    return float(losses[mask].sum()), int(correct[mask].sum()), int(mask.sum())


def _sums_of(result, what: str) -> tuple[float, float, float]:
    form = "return three numbers: (loss_sum, correct, count)"
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CheckFailure(f"{what} should return three values",
                           got=type(result).__name__ if not isinstance(result, (tuple, list))
                           else f"{len(result)} values", hint=form)
    return tuple(_number(v, f"{what}'s {name}", form)
                 for v, name in zip(result, ("loss_sum", "correct", "count")))


def check_masked_sums(masked_sums, seed: int = 0) -> None:
    """masked_sums(logits, targets, mask) -> (sum of the cross-entropy over the real rows,
    number of real rows predicted correctly, number of real rows); mask is True for real rows."""
    cases = [
        ("a batch with padding at its end", 16, [12, 13, 14, 15]),
        ("a batch with padding in the middle", 12, [1, 5, 6, 10]),
        ("a batch without padding", 9, []),
        ("a batch that is all padding", 6, [0, 1, 2, 3, 4, 5]),
    ]
    for description, rows, padding in cases:
        logits, targets, mask = _masked_batch(seed + rows, rows, padding)
        inputs = (logits.clone(), targets.clone(), mask.clone())
        with CallWatch(code_objects(_library_functions())) as library_calls:
            result = call_learner(masked_sums, *inputs, name="masked_sums")
        if library_calls.called:
            raise CheckFailure(f"masked_sums called {library_calls.called[0]}",
                               hint="this exercise asks you to write the sums yourself, from the "
                               "per-row losses and the mask")
        loss_sum, correct, count = _sums_of(result, "masked_sums")
        for value, name in ((correct, "the number correct"), (count, "the count")):
            require(float(value).is_integer(), f"for {description}, {name} is not a whole number",
                    got=f"{value:g}", hint="correct and count are counts of rows: add up booleans "
                    "(a prediction is right or it is not), not probabilities or weights")
        expected = _reference_sums(logits, targets, mask)
        losses = F.cross_entropy(logits.double(), targets, reduction="none")
        hits = logits.argmax(dim=1) == targets
        real = int(mask.sum())
        if math.isnan(loss_sum) and real == 0:
            raise CheckFailure(f"for {description}, loss_sum is NaN",
                               expected="0.0 (no real rows, nothing to add)",
                               hint="a mean over zero rows is NaN: add up the per-row losses "
                               "instead of averaging and multiplying back")
        if count != expected[2]:
            hint_text = "count the rows where the mask is True: mask.sum()"
            if count == rows and padding:
                hint_text = "padding rows are not examples: count only the rows where mask is True"
            elif count == rows - real and padding:
                hint_text = "the mask is True for REAL rows and False for padding"
            raise CheckFailure(f"for {description}, the count is wrong", expected=expected[2],
                               got=f"{count:g}", hint=hint_text)
        if padding and real and _close(loss_sum, float(losses[~mask].sum())):
            raise CheckFailure(f"for {description}, loss_sum adds up the padding rows only",
                               hint="the mask is True for REAL rows and False for padding")
        if padding and _close(loss_sum, float(losses.sum())):
            raise CheckFailure(f"for {description}, loss_sum includes the padding rows",
                               expected=f"{expected[0]:.4f}", got=f"{loss_sum:.4f}",
                               hint="give padding weight zero: sum the losses of the rows where "
                               "the mask is True only")
        if real and _close(loss_sum, expected[0] / real) and real > 1:
            raise CheckFailure(f"for {description}, loss_sum is the batch's mean loss",
                               expected=f"{expected[0]:.4f}", got=f"{loss_sum:.4f}",
                               hint="return the SUM over the real rows (reduction='none', then "
                               "sum): batches are combined by adding sums and dividing once")
        if not _close(loss_sum, expected[0]):
            raise CheckFailure(f"for {description}, loss_sum differs from the sum of the "
                               "cross-entropy over the real rows", expected=f"{expected[0]:.4f}",
                               got=f"{loss_sum:.4f}",
                               hint="F.cross_entropy(logits, targets, reduction='none') gives one "
                               "loss per row; add up those of the real rows")
        if correct != expected[1]:
            hint_text = "count argmax(logits) == targets over the real rows only"
            if padding and correct == int(hits.sum()):
                hint_text = ("padding rows count as correct here: count correct predictions where "
                             "the mask is True only")
            raise CheckFailure(f"for {description}, the number of correct predictions is wrong",
                               expected=expected[1], got=f"{correct:g}", hint=hint_text)
        require(all(torch.equal(a, b) for a, b in zip(inputs, (logits, targets, mask))),
                "masked_sums changed its inputs", hint="read logits, targets and mask; do not "
                "modify them in place")
    passed("masked_sums adds up the real rows only: loss sum, correct predictions and count, for "
           "batches with and without padding, and (0, 0, 0) for a batch of padding alone")


# ---- (b) evaluate_exact --------------------------------------------------------------------------


class _Loader:
    """A re-iterable list of (inputs, targets, mask) batches that counts how often it is read."""

    def __init__(self, batches):
        self.batches = batches
        self.reads = 0

    def __iter__(self):
        self.reads += 1
        for inputs, targets, mask in self.batches:
            yield inputs.clone(), targets.clone(), mask.clone()

    def __len__(self):
        return len(self.batches)


def _evaluation_setting(seed: int, examples: int = 203, batch_size: int = 32):
    """A model with dropout, a set of `examples` it gets about half right, and two loaders.

    The examples are ordered by their loss, so the short last batch is far from the average:
    a mean of batch means is visibly off. The padded loader scatters padding rows through every
    batch (as a bucketed loader would) with inputs the model is sure about, so counting them moves
    both the loss and the accuracy.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLP(dropout=0.3)
        with torch.no_grad():
            model.net[-1].weight.mul_(6)  # confident predictions: losses spread well apart
    generator = torch.Generator().manual_seed(2000 + seed)
    inputs = torch.randn(examples, FEATURES, generator=generator)
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
    targets = torch.randint(0, NUM_CLASSES, (examples,), generator=generator)
    right = torch.rand(examples, generator=generator) < 0.5
    targets[right] = logits[right].argmax(dim=1)
    order = F.cross_entropy(logits, targets, reduction="none").argsort()
    inputs, targets = inputs[order], targets[order]

    plain = []
    for start in range(0, examples, batch_size):
        x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
        plain.append((x, y, torch.ones(len(y), dtype=torch.bool)))

    padding_input = 8 * torch.ones(1, FEATURES)
    with torch.no_grad():
        padding_target = int(model(padding_input).argmax())
    padded, start = [], 0
    while start < examples:
        real = min(batch_size - 3 - (len(padded) % 3), examples - start)
        x = torch.cat([inputs[start:start + real], padding_input.repeat(batch_size - real, 1)])
        y = torch.cat([targets[start:start + real],
                       torch.full((batch_size - real,), padding_target)])
        mask = torch.cat([torch.ones(real, dtype=torch.bool),
                          torch.zeros(batch_size - real, dtype=torch.bool)])
        shuffle = torch.randperm(batch_size, generator=generator)
        padded.append((x[shuffle], y[shuffle], mask[shuffle]))
        start += real
    # A batch of padding alone (an empty bucket, or a rank with nothing left): it adds nothing.
    padded.insert(2, (padding_input.repeat(batch_size, 1),
                      torch.full((batch_size,), padding_target),
                      torch.zeros(batch_size, dtype=torch.bool)))
    return model, inputs, targets, plain, padded


def _metrics_of(result) -> tuple[float, float]:
    form = 'return a dict {"eval_loss": ..., "eval_accuracy": ...}'
    if not isinstance(result, dict):
        raise CheckFailure("evaluate_exact should return a dict", got=type(result).__name__,
                           hint=form)
    for key in ("eval_loss", "eval_accuracy"):
        if key not in result:
            raise CheckFailure(f"the dict evaluate_exact returned has no {key!r}",
                               got=f"keys {sorted(map(str, result))}", hint=form)
    return (_number(result["eval_loss"], "eval_loss", form),
            _number(result["eval_accuracy"], "eval_accuracy", form))


def _wrong_results(model, batches) -> dict:
    """The results of the mistakes the check can name, each a (loss, accuracy) pair."""
    model.eval()
    losses, accuracies, loss_sum, hits, rows = [], [], 0.0, 0, 0
    real_loss_sum, real_hits = 0.0, 0
    with torch.no_grad():
        for x, y, mask in batches:
            logits = model(x)
            per_row = F.cross_entropy(logits.double(), y, reduction="none")
            right = logits.argmax(dim=1) == y
            if mask.any():  # a mean of batch means that at least skips empty batches
                losses.append(float(per_row[mask].mean()))
                accuracies.append(float(right[mask].double().mean()))
            loss_sum += float(per_row.sum())
            hits += int(right.sum())
            real_loss_sum += float(per_row[mask].sum())
            real_hits += int(right[mask].sum())
            rows += len(y)
    return {
        "batch means": (sum(losses) / len(losses), sum(accuracies) / len(accuracies)),
        "padding counted": (loss_sum / rows, hits / rows),
        "padding in the count": (real_loss_sum / rows, real_hits / rows),
    }


def check_evaluate_exact(evaluate_exact, seed: int = 0) -> None:
    """evaluate_exact(model, loader) -> {"eval_loss", "eval_accuracy"} over the real examples of a
    loader of (inputs, targets, mask) batches, in eval mode, without a graph, mode restored."""
    model, inputs, targets, plain, padded = _evaluation_setting(seed)
    with torch.no_grad():
        model.eval()
        logits = model(inputs)
    full_loss = float(F.cross_entropy(logits.double(), targets))
    full_accuracy = float((logits.argmax(dim=1) == targets).double().mean())

    seen = []  # (training flags of every module, grad enabled, output requires grad) per forward

    def record(module, args, output):
        seen.append((any(m.training for m in model.modules()), torch.is_grad_enabled(),
                     bool(getattr(output, "requires_grad", False))))

    handle = model.register_forward_hook(record)
    try:
        for name, batches in (("a loader whose last batch is short", plain),
                              ("a loader with padding in its batches (one batch all padding)",
                               padded)):
            for start_mode in (True, False):
                model.train(start_mode)
                seen.clear()
                loader = _Loader(batches)
                with CallWatch(code_objects(_library_functions())) as library_calls:
                    try:
                        result = call_learner(evaluate_exact, model, loader,
                                              name="evaluate_exact")
                    except CheckFailure as failure:
                        if "ZeroDivisionError" not in failure.what or batches is not padded:
                            raise
                        raise CheckFailure(f"on {name}, {failure.what}",
                                           hint="a batch may hold padding only: a mean over its "
                                           "zero real rows divides by zero. Add sums and counts, "
                                           "never means") from None
                if library_calls.called:
                    raise CheckFailure(f"evaluate_exact called {library_calls.called[0]}",
                                       hint="this exercise asks you to write the evaluation "
                                       "loop yourself: iterate over the loader and add up each "
                                       "batch's sums")
                require(loader.reads > 0 and seen, "evaluate_exact never ran the model on the "
                        "loader's batches", hint="loop over `loader` and call model(inputs) for "
                        "each batch")
                require(loader.reads == 1, f"evaluate_exact read the loader {loader.reads} times",
                        expected="one pass", hint="a real loader reads (and shuffles, and "
                        "augments) its data again on every pass: keep every running total in "
                        "the same single loop")
                require(len(seen) == len(batches), f"evaluate_exact ran the model {len(seen)} "
                        f"times for {len(batches)} batches", expected="one forward pass per batch",
                        hint="one forward pass per batch, its logits used for the loss and the "
                        "accuracy alike" if len(seen) > len(batches) else "every real example "
                        "must count once, the last batch's too: run the model on every batch")
                if any(training for training, _, _ in seen):
                    raise CheckFailure("the model was in training mode during the evaluation",
                                       hint="call model.eval() before the loop: dropout (and "
                                       "BatchNorm) behave differently in training mode")
                if any(grad or requires for _, grad, requires in seen):
                    raise CheckFailure("the evaluation recorded a graph for backward",
                                       hint="run the loop under torch.inference_mode() (or "
                                       "torch.no_grad()): evaluation never calls backward()")
                mode_now = [m.training for m in model.modules()]
                if mode_now != [start_mode] * len(mode_now):
                    was = "training" if start_mode else "eval"
                    raise CheckFailure(f"evaluate_exact left the model in another mode than the "
                                       f"one it had ({was} mode)",
                                       hint="remember model.training before model.eval() and "
                                       "call model.train(was_training) at the end, so a model "
                                       "in either mode comes back as it was")
                loss, accuracy = _metrics_of(result)
                if _close(loss, full_loss) and _close(accuracy, full_accuracy):
                    continue
                if math.isnan(loss) or math.isnan(accuracy):
                    raise CheckFailure(f"on {name}, the result is NaN",
                                       got=f"loss {loss}, accuracy {accuracy}",
                                       hint="a batch may hold padding only: a mean over its zero "
                                       "real rows is NaN (and NaN times 0 is still NaN). Add "
                                       "sums and counts, never means")
                wrong = _wrong_results(model, batches)
                model.train(start_mode)

                def matches(mistake):
                    return _close(loss, wrong[mistake][0]) or _close(accuracy, wrong[mistake][1])

                if matches("batch means"):
                    raise CheckFailure(f"on {name}, the result is the mean of the batch means",
                                       expected=f"loss {full_loss:.4f}, accuracy "
                                       f"{full_accuracy:.4f}", got=f"loss {loss:.4f}, accuracy "
                                       f"{accuracy:.4f}",
                                       hint="the short last batch weighs as much as a full one "
                                       "that way: add up sums and counts over all batches, "
                                       "divide once at the end")
                if batches is padded and (matches("padding counted")
                                          or matches("padding in the count")):
                    raise CheckFailure(f"on {name}, padding rows were counted as examples",
                                       expected=f"loss {full_loss:.4f}, accuracy "
                                       f"{full_accuracy:.4f}", got=f"loss {loss:.4f}, accuracy "
                                       f"{accuracy:.4f}",
                                       hint="give padding weight zero: use the mask in the sums "
                                       "AND in the count of examples")
                require(_close(loss, full_loss), f"on {name}, eval_loss differs from the mean "
                        "cross-entropy over the whole set", expected=f"{full_loss:.5f}",
                        got=f"{loss:.5f}", hint="every real example must count once, the last "
                        "batch's too: divide the total loss by the total number of real examples")
                require(_close(accuracy, full_accuracy), f"on {name}, eval_accuracy differs from "
                        "the accuracy over the whole set", expected=f"{full_accuracy:.5f}",
                        got=f"{accuracy:.5f}", hint="divide the number of correct real examples "
                        "by the number of real examples")
    finally:
        handle.remove()
    passed(f"evaluate_exact gives the whole set's loss ({full_loss:.4f}) and accuracy "
           f"({full_accuracy:.4f}, both within {LOSS_TOLERANCE:g}) through a short last batch and "
           "through padding (a batch of padding alone included), in one pass, in eval mode, "
           "without a graph, and gives the model back in the mode it had")


# ---- (c) stratified_sample -----------------------------------------------------------------------


def _labels(sizes, seed: int) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3000 + seed))]


def _indices_of(result, what: str, labels: torch.Tensor) -> list[int]:
    form = "return the chosen indices as a list of ints (or a 1-D tensor)"
    if isinstance(result, (torch.Tensor, np.ndarray)):
        if result.ndim != 1:
            raise CheckFailure(f"{what} should be one-dimensional", got=f"shape {result.shape}",
                               hint=form)
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise CheckFailure(f"{what} should be a list of indices", got=type(result).__name__,
                           hint=form)
    indices = []
    for item in result:
        if isinstance(item, (torch.Tensor, np.generic)):
            item = item.item()
        if isinstance(item, bool) or not isinstance(item, int):
            raise CheckFailure(f"{what} holds {item!r}, not an index", hint=form)
        indices.append(item)
    bad = [i for i in indices if not 0 <= i < len(labels)]
    require(not bad, f"{what} holds indices outside 0..{len(labels) - 1}", got=bad[:3],
            hint="return positions in the whole label list, not positions within one class")
    return indices


def _random_states():
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


def _same_states(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def check_stratified_sample(stratified_sample, seed: int = 0) -> None:
    """stratified_sample(labels, size, seed) -> indices of `size` distinct examples, every class
    within one example of its exact share, drawn uniformly within each class, per seed."""
    settings = [
        ((400, 250, 120, 37, 9, 3), 100),   # a rare class whose share is below one example
        ((300, 180, 14), 60),                # a rare class whose share, 1.7, must round up
        ((45, 33, 22), 10),                  # shares 4.5, 3.3, 2.2: floors leave one over
        ((50, 50, 50, 50), 40),              # exact shares
        ((45, 45, 10), 10),                  # shares 4.5, 4.5, 1: a tie, either class may round up
        ((40, 0, 25, 10), 15),               # class 1 has no examples at all
        ((7, 5, 3), 15),                     # the whole set
    ]

    def draw(labels, size, draw_seed, what):
        with CallWatch(code_objects(_library_functions("stratified_indices", "stratified_subset",
                                             "stratified_counts"))) as library_calls:
            result = call_learner(stratified_sample, labels.clone(), size, draw_seed,
                                  name="stratified_sample")
        if library_calls.called:
            raise CheckFailure(f"stratified_sample called {library_calls.called[0]}",
                               hint="this exercise asks you to write the sampler yourself; "
                               "course_lib's is there to compare with afterwards")
        return _indices_of(result, what, labels)

    for sizes, size in settings:
        labels = _labels(sizes, seed)
        total = len(labels)
        shares = [size * n / total for n in sizes]
        what = f"stratified_sample(labels of {total} examples, {size}, seed)"
        for draw_seed in (seed, seed + 1):
            states = _random_states()
            indices = draw(labels, size, draw_seed, what)
            require(_same_states(states, _random_states()), "stratified_sample changed the "
                    "global random state", hint="draw with a generator of your own, "
                    "torch.Generator().manual_seed(seed), not torch.manual_seed (or "
                    "np.random.seed): resetting the global state in the middle of training "
                    "changes the training run")
            if len(set(indices)) < len(indices) and max(indices) < max(sizes):
                raise CheckFailure(f"{what} holds some examples twice, and no index beyond "
                                   f"{max(indices)}", hint="return positions in the whole label "
                                   "list (torch.nonzero(labels == c) gives them for class c), "
                                   "not positions within one class")
            counts = torch.bincount(labels[indices], minlength=len(sizes)).tolist()
            if 0 in sizes and any(abs(counts[c] - shares[c]) >= 1 for c in range(len(sizes))):
                raise CheckFailure(f"{what}: with class {sizes.index(0)} absent from the labels, "
                                   "the classes got the wrong counts",
                                   expected=[f"{share:g}" for share in shares], got=counts,
                                   hint="a class may have no examples: keep class c's count at "
                                   "index c (as torch.bincount(labels) does) and draw class c "
                                   "from labels == c")
            require(len(set(indices)) == len(indices), f"{what} holds some examples twice",
                    got=f"{len(indices) - len(set(indices))} repeats",
                    hint="draw without replacement (torch.randperm), never with it")
            require(len(indices) == size, f"{what} returned the wrong number of examples",
                    expected=size, got=len(indices),
                    hint="rounding each class's share on its own rarely adds up to `size`: take "
                    "the floors, then give the examples left over to the classes with the "
                    "largest remainders")
            off = [c for c in range(len(sizes)) if not abs(counts[c] - shares[c]) < 1]
            if off:
                c = off[0]
                raise CheckFailure(f"{what}: class {c} is not within one example of its share",
                                   expected=f"{shares[c]:.2f} (so {math.floor(shares[c])} or "
                                   f"{math.ceil(shares[c])})", got=counts[c],
                                   hint="draw each class separately, size * n_c / N examples of "
                                   "class c (floors, plus the leftovers to the largest "
                                   "remainders); a plain random sample is not stratified")
        first = draw(labels, size, seed, what)
        torch.manual_seed(12345)  # whatever the global state, the seed alone decides
        again = draw(labels, size, seed, what)
        require(sorted(first) == sorted(again), "the same seed gave two different subsets",
                hint="seed a torch.Generator with `seed` and pass it to every random draw")
        if size < total:
            subsets = {tuple(sorted(draw(labels, size, s, what))) for s in range(seed, seed + 4)}
            require(len(subsets) == 4, "different seeds gave the same subset",
                    got=f"{len(subsets)} different subsets from 4 seeds",
                    hint="choose the examples at random with the seeded generator, not always "
                    "the first ones of each class")

    # Uniform within each class: over many seeds, each example of class c is drawn with
    # probability k_c / n_c. 400 draws; the threshold (6 standard errors, worst example)
    # holds for the reference on every seed tried and fails samplers that favour some examples.
    sizes, size, draws = (60, 30, 10), 25, 400
    labels = _labels(sizes, seed)
    seen = torch.zeros(len(labels))
    what = f"stratified_sample(labels of {len(labels)} examples, {size}, seed)"
    for draw_seed in range(draws):
        seen[draw(labels, size, draw_seed, what)] += 1
    for c, n in enumerate(sizes):
        frequency = seen[labels == c] / draws
        p = float(seen[labels == c].sum()) / draws / n  # the class's mean count, per example
        worst = float((frequency - p).abs().max())
        require(worst < 6 * math.sqrt(p * (1 - p) / draws) + 1e-9,
                f"over {draws} seeds, some examples of class {c} are drawn much more often than "
                "others", expected=f"each in about {p:.0%} of the subsets",
                got=f"from {float(frequency.min()):.0%} to {float(frequency.max()):.0%}",
                hint="every example of a class should have the same chance: a random "
                "permutation of the whole class (torch.randperm(n_c)), then its first k_c")
    passed("stratified_sample draws distinct, valid indices, every class within one example of "
           "its share (rare and absent classes, ties and the whole set included), uniformly "
           "within each class, the same subset for "
           "the same seed and another for another seed, without touching the global random state")
