"""What every exercise check shares: friendly one-line failures and short success messages.

A check cell in an exercise notebook calls one check function. On success it prints one line saying
what was verified. On failure it raises `CheckFailure`, an `AssertionError`, so nbval and any grader
count the cell as failed; Jupyter shows the exception through `_render_traceback_` as one readable
line (what was expected, what came back, a hint) instead of a wall of traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
import traceback

import torch


class CheckFailure(AssertionError):
    """A check that did not pass: what was expected, what came back, and a hint."""

    def __init__(self, what: str, expected=None, got=None, hint: str = ""):
        self.what = what
        self.expected = expected
        self.got = got
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        parts = [self.what]
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        if self.got is not None:
            parts.append(f"got {self.got}")
        text = "; ".join(parts)
        if self.hint:
            text += f". Hint: {self.hint}"
        return text

    def _render_traceback_(self):
        # IPython calls this instead of printing the traceback.
        return [f"\x1b[31m✗ {type(self).__name__}: {self.line()}\x1b[0m"]


class NotImplementedYet(CheckFailure):
    """The learner's stub still raises NotImplementedError."""

    def __init__(self, name: str):
        super().__init__(
            f"`{name}` is not implemented yet",
            hint="replace the `raise NotImplementedError(...)` line with your code, run that cell, "
            "then run this check again",
        )


def passed(message: str) -> None:
    """Print a short success line."""
    print(f"✓ {message}")


def call_learner(fn, *args, name: str | None = None, **kwargs):
    """Call the learner's function, turning a stub or a crash into one readable failure."""
    name = name or getattr(fn, "__name__", "your function")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotImplementedYet(name) from None
    except CheckFailure:
        raise
    except Exception as error:  # noqa: BLE001 - any crash in learner code becomes a readable line
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
        raise CheckFailure(
            f"`{name}` raised {type(error).__name__}: {error}",
            hint=f"the error came from line {frame.lineno} of {frame.name}(); "
            "run your cell on its own to see the full traceback",
        ) from None


def require(condition: bool, what: str, *, expected=None, got=None, hint: str = "") -> None:
    """Raise a CheckFailure unless `condition` holds."""
    if not condition:
        raise CheckFailure(what, expected=expected, got=got, hint=hint)


def make_hint(table: dict[str, str]):
    """Build an exercise's opt-in `hint(question)`: one nudge per question, never the answer's code.

    Each checks module defines `hint = make_hint({"a": "...", "b": "...", ...})` keyed by the
    question labels of its notebook, and the notebook offers a commented-out `# hint("a")` line
    under each question, in Kaggle Learn's manner: the learner who is stuck asks for it.
    """

    def hint(question: str | None = None) -> None:
        if question not in table:
            known = ", ".join(repr(key) for key in table)
            print(f"Ask for one of the questions: hint({known.split(', ')[0]}); the questions are {known}")
            return
        print(f"💡 ({question}) {table[question]}")

    hint.questions = tuple(table)
    return hint


# ---- watching the learner's code call the library -----------------------------------------------


def code_objects(functions) -> dict:
    """{code object: qualified name} of `functions`, looking through decorators."""
    table = {}
    for function in functions:
        inner = inspect.unwrap(function)
        code = getattr(inner, "__code__", None)
        if code is not None:
            table[code] = f"{inner.__module__}.{inner.__qualname__}"
    return table


class ProfileWatch:
    """A context manager that shows every Python call made while its block runs to `_on_call`.

    A profile function sees each call however the learner reached the function (by its module, a
    name imported into the notebook, an alias or a lambda), which patching module attributes would
    miss. A profile function set before the block keeps running.
    """

    _previous = None

    def _on_call(self, frame) -> None:
        raise NotImplementedError

    def _profile(self, frame, event, arg):
        if event == "call":
            self._on_call(frame)
        if self._previous is not None:
            self._previous(frame, event, arg)

    def __enter__(self):
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc_info):
        sys.setprofile(self._previous)
        return False


class CallWatch(ProfileWatch):
    """Records, in order, which watched functions start while a block runs.

    Watched are the functions whose code objects are the keys of `watched` (see `code_objects`),
    and every function defined in a module named by one of the `modules` prefixes (less those in
    `exclude`).
    """

    def __init__(self, watched: dict | None = None, modules=(), exclude=()):
        self.watched = watched or {}
        self.modules, self.exclude = tuple(modules), tuple(exclude)
        self.called: list[str] = []

    def _on_call(self, frame) -> None:
        name = self.watched.get(frame.f_code)
        if name is None and self.modules:
            module = frame.f_globals.get("__name__", "")
            if module.startswith(self.modules) and not module.startswith(self.exclude or ("\0",)):
                name = f"{module}.{frame.f_code.co_qualname}"
        if name is not None and name not in self.called:
            self.called.append(name)

    def first(self, *prefixes: str) -> str | None:
        """The first recorded call under the first of `prefixes` that has one."""
        for prefix in prefixes:
            for name in self.called:
                if name.startswith(prefix):
                    return name
        return None


def one_thread(check):
    """Run a check on one CPU thread, then give the learner's setting back.

    The exercises' models are tiny: one thread is the fastest on a busy machine, and a check's
    result cannot depend on how many cores the machine has.
    """

    @functools.wraps(check)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


# ---- comparing with the reference: the rules every exercise follows ------------------------------
#
# 1. A tensor the contract describes is compared with the reference's by type, dtype, shape and then
#    value: a float label tensor or a float64 image is a wrong answer even when its values are right,
#    because the next line of a learner's real code (a loss, a matmul) breaks or silently upcasts.
# 2. The tolerance is as tight as the reference allows, and each exercise states it next to the
#    contract: 0 (exact) where the learner's answer can be the same operations as the reference;
#    float32 rounding (a few ulps) where the order of operations may differ.


def require_tensor(got, expected: torch.Tensor, what: str, *, rtol: float = 0.0, atol: float = 0.0,
                   hint: str = "") -> None:
    """`got` is a tensor with `expected`'s dtype and shape, and values within rtol/atol of it.

    rtol = atol = 0 asks for the same numbers bit for bit (NaNs equal where both have them).
    """
    require(isinstance(got, torch.Tensor), f"{what} is not a tensor",
            expected="a torch.Tensor", got=type(got).__name__, hint=hint)
    require(got.dtype == expected.dtype, f"{what} has the wrong dtype",
            expected=str(expected.dtype), got=str(got.dtype),
            hint=hint or "keep the dtype the contract names; do not convert on the way out")
    require(tuple(got.shape) == tuple(expected.shape), f"{what} has the wrong shape",
            expected=tuple(expected.shape), got=tuple(got.shape), hint=hint)
    got_cpu, expected_cpu = got.detach().cpu(), expected.detach().cpu()
    if got_cpu.is_floating_point() or got_cpu.is_complex():
        same = torch.allclose(got_cpu, expected_cpu, rtol=rtol, atol=atol, equal_nan=True)
    else:
        same = torch.equal(got_cpu, expected_cpu)
    tolerance = "exactly" if rtol == 0 and atol == 0 else f"within rtol={rtol:g}, atol={atol:g}"
    if not same:
        if got_cpu.is_floating_point() or got_cpu.is_complex():
            worst = (got_cpu.double() - expected_cpu.double()).abs().nan_to_num(float("inf")).max()
            detail = f"largest difference {worst.item():.3g}"
        else:
            differ = (got_cpu != expected_cpu).sum().item()
            detail = f"{differ} of {expected_cpu.numel()} entries differ"
        raise CheckFailure(f"{what} does not match the reference {tolerance}",
                           got=detail, hint=hint)


def best_ratio(slow, fast, *, repeats: int = 3) -> tuple[float, float, float]:
    """(slow seconds, fast seconds, slow / fast), each the best of `repeats` runs, measured in turn.

    Timing bars compare two runs made in the same call, interleaved, and keep the best of each: a
    busy machine slows both, so the ratio survives load that would fail an absolute time limit.
    """
    import time

    best_slow = best_fast = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        slow()
        best_slow = min(best_slow, time.perf_counter() - started)
        started = time.perf_counter()
        fast()
        best_fast = min(best_fast, time.perf_counter() - started)
    return best_slow, best_fast, best_slow / max(best_fast, 1e-9)
