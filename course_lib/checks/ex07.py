"""Checks for exercise 07, checkpoints that survive a crash, keep the best, and resume exactly
(introduced in exercise 07).

The learner writes, in order:

(a) `save_atomically(state, path)` and `load_safely(path)`: a save that never leaves a broken or
    half-written file at `path` (a temporary file in the same folder, then `os.replace`), and a
    load that refuses anything but plain data (`torch.load(..., weights_only=True)`);
(b) `keep_best(ckpt_dir, step, metric, state, n, direction)`: save `{"step", "metric", "state"}`
    as `ckpt_dir/step_NNNNNN.pt`, then delete every `step_*.pt` of the folder but the `n` best by
    their stored metric (`direction` "max" or "min"; a tie keeps the earlier step);
(c) `save_run(run, path)` and `load_run(run, path)`: a checkpoint of the exercise's run (model,
    optimizer, scheduler, position in the data, random number generator) and its restoration into
    a freshly built run, so that the resumed run ends bit for bit where an uninterrupted run ends.

How the checks work: they drive the learner's functions in runs and folders they control, and look
at what is on disk, byte for byte and tensor by tensor, rather than at what the functions return:

- (a) makes a save fail at each of its steps: half-way through the write (the state holds an
  object whose pickling lists the folder, then raises), at `os.fsync` and at `os.replace` (both
  replaced for the moment by functions that raise); after each it requires the error to reach the
  caller, the last good file whole and the folder as it was. It watches `os.fsync` and
  `os.replace` during a good save and requires the file renamed onto the target to have been
  flushed before the rename; it checks that a second save, its path given as a str, replaced the
  file (a new inode) rather than rewrote it in place; and it hands `load_safely` a file that would
  create a marker file if it were unpickled;
- (b) calls `keep_best` for two runs in two folders, interleaved, with metrics that fluctuate, tie
  at the boundary and end below their best, while `os.listdir` and `os.scandir` list one folder
  newest first and another oldest first (the file system promises no order), in a third folder
  with `direction` left at its default; it requires each new checkpoint to be written through the
  learner's own `save_atomically` (its calls observed by a profile function), and after every
  call compares the folder's files with the n best so far, and each file's content with what was
  saved at that step;
- (c) trains the exercise's run itself, saves it with the learner's `save_run` at a step in the
  middle of an epoch and at an epoch's end, scrambles every random number generator, builds a
  fresh run with other initial weights, restores it with `load_run`, requires the learner's own
  `save_atomically` and `load_safely` to have done the file work, checks that the run was restored
  in place (the same AdamW, the same model with its dropout, in training mode, the schedule
  driving the run's optimizer) and each part right after the load, then trains on and compares every weight and every optimizer moment with an
  uninterrupted run (torch.equal, no tolerance).

Calls into course_lib's own implementation of what a question asks for are named as such
(`_core.CallWatch`). Every check takes a `seed` keyword (0 in the notebook); the tests validate each
check over many seeds.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_lib.checks._core import (
    CallWatch,
    ProfileWatch,
    CheckFailure,
    NotImplementedYet,
    call_learner,
    code_objects,
    make_hint,
    one_thread,
    passed,
    require,
)
from course_lib.data import load_digits_splits
from course_lib.models import MLP

hint = make_hint({
    "a": "Three steps, each of which can fail: write the bytes to a file of your own next to the "
         "target, make sure they reached the disk, and only then move that file onto the target in "
         "one step. Whatever fails, the folder must end as it was and the error must reach the "
         "caller. For loading, torch.load has an argument that accepts plain data only.",
    "b": "Save with the save_atomically of (a). Then read the stored metric of every step_*.pt in "
         "the folder, rank them, and delete the ones that did not make it. The order in which the "
         "folder lists its files is arbitrary: your ranking must settle ties by itself. Keep no "
         "list between calls.",
    "c": "Ask what changes from one training step to the next, and put all of it in the file, "
         "through your save_atomically; load it with your load_safely. Put it back into the run "
         "you were given, in place: the same model, optimizer and schedule objects.",
})

# ---- shared helpers ---------------------------------------------------------------------------------

CHECKPOINT_MODULE = "course_lib.checkpoint"
LOOP_MODULE = "course_lib.loop"


def _call_watched(fn, *args, name: str, watched: dict | None = None, modules=(), instead: str = ""):
    """Call the learner's function; a call into course_lib's own version fails first, by name."""
    with CallWatch(watched=watched, modules=modules) as calls:
        try:
            result = call_learner(fn, *args, name=name)
        except CheckFailure:
            _refuse_delegation(calls, name, instead)
            raise
    _refuse_delegation(calls, name, instead)
    return result


def _refuse_delegation(calls: CallWatch, name: str, instead: str) -> None:
    if calls.called:
        library = calls.called[0]
        raise CheckFailure(f"{name} called course_lib's own {library.rsplit('.', 1)[-1]} ({library})",
                           hint=f"this question asks you to write it yourself: {instead}")


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())}


def _same(a, b) -> bool:
    """Equal plain data: tensors by torch.equal (and dtype), containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _load_plain(path: Path, what: str):
    """The check's own reading of a file the learner wrote: plain data only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure becomes one readable line
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise CheckFailure(f"{what} cannot be loaded with torch.load(path, weights_only=True) "
                           f"({type(error).__name__}: {reason})",
                           hint="save plain data only: tensors, state_dict()s, numbers, strings, "
                           "lists and dicts, never objects such as the optimizer itself") from None


class OwnCalls(ProfileWatch):
    """Records each call of the learner's own function `fn` (by its code object, however it was
    reached: its name, an alias, a default argument) with the arguments it was called with."""

    def __init__(self, fn):
        self.code = getattr(fn, "__code__", None)
        self.calls: list[dict] = []

    def _on_call(self, frame) -> None:
        if frame.f_code is self.code:
            names = self.code.co_varnames[:self.code.co_argcount]
            self.calls.append({name: frame.f_locals.get(name) for name in names})

    def paths(self, position: int = 1) -> list[str]:
        """The resolved paths given as argument number `position` (0-based)."""
        if self.code is None:
            return []
        name = self.code.co_varnames[position] if position < self.code.co_argcount else None
        out = []
        for call in self.calls:
            try:
                out.append(str(Path(call[name]).resolve()))
            except (TypeError, KeyError):
                pass
        return out


class SaveSteps:
    """Watches the steps of a save after the write: os.fsync (the inode of the file flushed) and
    os.replace / os.rename (the inode of the file moved, and where to). With `fail_at` "fsync" or
    "rename", that step raises SimulatedCrash instead, as a full disk or a crash there would."""

    def __init__(self, fail_at: str | None = None):
        self.fail_at = fail_at
        self.events: list[tuple] = []

    def __enter__(self):
        self._saved = {name: getattr(os, name) for name in ("fsync", "replace", "rename")}
        real = dict(self._saved)

        def fsync(fd):
            try:
                inode = os.fstat(fd).st_ino
            except OSError:
                inode = None
            self.events.append(("fsync", inode))
            if self.fail_at == "fsync":
                raise SimulatedCrash("the check's simulated failure of os.fsync (a full disk)")
            return real["fsync"](fd)

        def moving(name):
            def move(src, dst, *args, **kwargs):
                try:
                    inode = os.stat(src).st_ino
                except (OSError, TypeError, ValueError):
                    inode = None
                self.events.append(("rename", inode, str(Path(os.fsdecode(dst)).resolve())))
                if self.fail_at == "rename":
                    raise SimulatedCrash(f"the check's simulated failure of os.{name}")
                return real[name](src, dst, *args, **kwargs)
            return move

        os.fsync, os.replace, os.rename = fsync, moving("replace"), moving("rename")
        return self

    def __exit__(self, *exc_info):
        for name, function in self._saved.items():
            setattr(os, name, function)
        return False


class _ListingIn:
    """Yields DirEntry objects in a chosen order; usable as os.scandir's context manager."""

    def __init__(self, entries):
        self._entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def close(self):
        pass


@contextlib.contextmanager
def listing_order(descending: bool):
    """os.listdir and os.scandir (hence Path.iterdir, Path.glob, glob.glob) list every folder in
    name order, ascending or descending: the file system promises no order, so a result that
    depends on it must not pass by luck."""
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path="."):
        return sorted(real_listdir(path), reverse=descending)

    def scandir(path="."):
        with real_scandir(path) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name, reverse=descending)
        return _ListingIn(ordered)

    os.listdir, os.scandir = listdir, scandir
    try:
        yield
    finally:
        os.listdir, os.scandir = real_listdir, real_scandir


# ---- (a) saving atomically, loading safely -------------------------------------------------------------


class SimulatedCrash(OSError):
    """What the check's failing state raises half-way through a save."""


class _FailWhenPickled:
    """Lists the folder when the save reaches it (the file is open, the state half-serialized),
    then fails the save, as a crash at that moment would."""

    def __init__(self, folder: Path, seen: list):
        self.folder, self.seen = folder, seen

    def __reduce__(self):
        self.seen.append(_listing(self.folder))
        raise SimulatedCrash("the check's simulated crash half-way through the save")


class _RunsCodeWhenUnpickled:
    """Unpickling this creates `marker` (an empty file): harmless proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _example_state(generator: torch.Generator, step: int) -> dict:
    return {"step": step, "model": {"weight": torch.randn(6, 4, generator=generator),
                                    "bias": torch.randn(6, generator=generator)},
            "rng": torch.randint(0, 255, (16,), dtype=torch.uint8, generator=generator),
            "best": [{"step": step, "metric": 0.5}], "note": f"step {step}"}


_SAVE_INSTEAD = "a temporary file in the same folder, flushed to disk, then os.replace"
_LOAD_INSTEAD = "torch.load with weights_only=True"


def _save(save_atomically, state, path):
    try:
        return _call_watched(save_atomically, state, path, name="save_atomically",
                             modules=(CHECKPOINT_MODULE,), instead=_SAVE_INSTEAD)
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        if isinstance(path, str) and "'str' object has no attribute" in failure.what:
            raise CheckFailure(f"save_atomically(state, path) with `path` given as a str "
                               f"({failure.what.split('raised ', 1)[-1]})",
                               hint="`path` may be a str or a pathlib.Path: make it a Path first, "
                               "path = Path(path)") from None
        raise


def _load(load_safely, path):
    return _call_watched(load_safely, path, name="load_safely", modules=(CHECKPOINT_MODULE,),
                         instead=_LOAD_INSTEAD)


def _failing_save(save_atomically, state, target: Path, fail_at: str | None) -> bool:
    """Run a save that the check makes fail (while writing, at fsync or at the rename); return
    whether it returned normally."""
    with CallWatch(modules=(CHECKPOINT_MODULE,)) as calls, SaveSteps(fail_at=fail_at):
        try:
            save_atomically(state, target)
            finished = True
        except SimulatedCrash:
            finished = False
        except NotImplementedError:
            raise  # the stub was caught by the first call already
        except Exception as error:  # noqa: BLE001
            if not isinstance(error.__cause__ or error.__context__, SimulatedCrash) and \
                    "simulated" not in str(error):
                raise CheckFailure(f"save_atomically raised {type(error).__name__}: {error}",
                                   hint="run your cell on its own to see the full traceback") from None
            finished = False
    _refuse_delegation(calls, "save_atomically", _SAVE_INSTEAD)
    return finished


_FAULTS = {
    "fsync": ("os.fsync failed (as on a full disk)", "let the error of os.fsync go on: a file "
              "that may not be on disk must not replace the last good checkpoint"),
    "rename": ("os.replace failed", "remove the temporary file whatever step fails, the rename "
               "included (try/finally around every step), and let the error go on"),
}


def _require_fault_handled(save_atomically, state, target: Path, fail_at: str) -> None:
    folder = target.parent
    good_bytes, before = target.read_bytes(), _listing(folder)
    finished = _failing_save(save_atomically, state, target, fail_at)
    what, hint = _FAULTS[fail_at]
    require(not finished, f"save_atomically returned normally although {what}", hint=hint)
    require(target.read_bytes() == good_bytes, f"after a save in which {what}, {target.name} no "
            "longer holds the last good checkpoint", hint="never write onto the target itself: "
            "only a rename of a complete, flushed temporary file may replace it")
    after = _listing(folder)
    require(after == before, f"a save in which {what} left the folder with {sorted(after)}",
            expected=f"{sorted(before)} as before", hint=hint)


def _require_flushed_before_rename(steps: SaveSteps, target: Path) -> None:
    """The file renamed onto the target was fsync'd before the rename."""
    destination = str(target.resolve())
    renames = [i for i, event in enumerate(steps.events)
               if event[0] == "rename" and event[2] == destination]
    require(bool(renames), f"save_atomically put the file at {target.name} without os.replace",
            hint="move the temporary file onto the target with os.replace (one atomic step)")
    moved = steps.events[renames[-1]][1]
    flushed_before = {event[1] for event in steps.events[:renames[-1]] if event[0] == "fsync"}
    if moved not in flushed_before:
        flushed_after = any(event[0] == "fsync" for event in steps.events[renames[-1]:])
        raise CheckFailure("save_atomically renamed the temporary file onto the target before "
                           + ("it was flushed to disk (os.fsync came after the rename)"
                              if flushed_after else "its bytes were flushed to disk (no os.fsync "
                              "of that file)")
                           + ": after a power cut the new name can point at an empty file",
                           hint="write through an open file, then file.flush() and "
                           "os.fsync(file.fileno()), and only then os.replace")


@one_thread
def check_safe_files(save_atomically, load_safely, seed: int = 0) -> None:
    """(a) A save replaces the file whole or not at all, whichever of its steps fails (the write,
    the flush to disk, the rename); a load accepts plain data only."""
    generator = torch.Generator().manual_seed(seed)
    folder = Path(tempfile.mkdtemp(prefix="ex07-a-")) / "run"
    folder.mkdir()
    target = folder / f"latest-{seed}.pt"
    first, second = _example_state(generator, 10), _example_state(generator, 20)

    # 1. A save, then a load: the same data, and nothing else in the folder.
    with SaveSteps() as steps:
        _save(save_atomically, first, target)
    require(target.is_file(), f"after save_atomically(state, path) there is no file at {target.name}",
            hint="the file must end up at `path` exactly")
    require(_listing(folder).keys() == {target.name}, "after a save the folder holds "
            f"{sorted(_listing(folder))}", expected=f"only [{target.name!r}]",
            hint="the temporary file must be renamed onto the target (os.replace), not copied")
    require(_same(_load_plain(target, "the saved file"), first), "the saved file does not hold the "
            "state that was passed in", hint="torch.save(state, temporary_path)")
    loaded = _load(load_safely, target)
    require(_same(loaded, first), "load_safely(path) did not return the saved state",
            hint="return what torch.load reads from the file")

    # 2. A save that fails half-way through the write leaves the last good file whole, and the
    # folder as it was.
    good_bytes, before = target.read_bytes(), _listing(folder)
    seen: list = []
    broken = {**second, "crash": _FailWhenPickled(folder, seen)}
    finished = _failing_save(save_atomically, broken, target, None)
    require(bool(seen), "save_atomically never serialized the state it was given",
            hint="save the state with torch.save")
    during = seen[0]
    require(during.get(target.name) == len(good_bytes), f"while the new state was being written, "
            f"{target.name} was already {'gone' if target.name not in during else 'truncated to ' + str(during[target.name]) + ' bytes'}: "
            "a crash at that moment loses the last good checkpoint",
            hint="write to a temporary file in the same folder, then os.replace it onto the target")
    require(len(during) > len(before), "while the new state was being written, no new file appeared "
            f"in the target's folder (it held {sorted(during)}): the temporary file is elsewhere, and "
            "os.replace is atomic only within one file system",
            hint="put the temporary file in the same folder as the target: path.with_name(...)")
    require(not finished, "save_atomically returned normally although the state could not be "
            "written", hint="do not catch the error: let it go on to the caller, after removing "
            "the temporary file")
    require(target.read_bytes() == good_bytes, f"after a save that failed half-way, {target.name} no "
            "longer holds the last good checkpoint",
            hint="os.replace the temporary file onto the target only after the save succeeded")
    after = _listing(folder)
    require(after == before, f"a save that failed left the folder with {sorted(after)}",
            expected=f"{sorted(before)} as before",
            hint="remove the temporary file when the save fails (try/finally, or except: remove, "
            "then raise)")

    # 3. A second save, its path given as a str, replaces the file: a new file renamed onto it,
    # not the old one rewritten.
    inode = target.stat().st_ino
    _save(save_atomically, second, str(target))
    require(_same(_load_plain(target, "the file after a second save"), second),
            "after a second save the file does not hold the second state",
            hint="save the new state to a temporary file, then os.replace it onto the target")
    require(target.stat().st_ino != inode, "the second save rewrote the existing file in place "
            "(its inode did not change), so a crash during the write would leave it half-written",
            hint="write the whole state to a temporary file in the same folder, then os.replace "
            "it onto the target; do not open, copy or write onto the target itself")

    # 4. A rename that fails leaves the last good file and the folder as they were.
    _require_fault_handled(save_atomically, first, target, "rename")
    # 5. The file renamed onto the target had been flushed to disk first; a flush that fails
    # stops the save.
    _require_flushed_before_rename(steps, target)
    _require_fault_handled(save_atomically, first, target, "fsync")

    # 6. A file whose unpickling would run code is refused, and the code never runs.
    marker = folder.parent / f"code-ran-{seed}"
    trap = folder / "untrusted.pt"
    torch.save({"model": first["model"], "extra": _RunsCodeWhenUnpickled(marker)}, trap)
    with CallWatch(modules=(CHECKPOINT_MODULE,)) as calls:
        try:
            load_safely(trap)
            refused = False
        except NotImplementedError:
            raise
        except Exception:  # noqa: BLE001 - any refusal will do
            refused = True
    _refuse_delegation(calls, "load_safely", _LOAD_INSTEAD)
    require(not marker.exists(), "load_safely ran code from an untrusted file: unpickling it "
            f"created the file {marker.name}", hint="torch.load(path, weights_only=True) refuses "
            "anything but tensors and plain data")
    require(refused, "load_safely accepted a file that holds an object other than plain data",
            hint="torch.load(path, weights_only=True) raises on such a file; let the error go on")
    passed("save_atomically replaced the file whole (a flushed new file renamed onto it, for a "
           "Path and a str), and a save that failed while writing, at os.fsync or at the rename "
           "left the last good checkpoint and the folder exactly as they were; load_safely "
           "returned the saved state and refused a file that would have run code, without "
           "running it")


# ---- (b) keep the best N --------------------------------------------------------------------------------


def reference_kept(entries: list[tuple[int, float]], n: int, direction: str,
                   later_ties: bool = False) -> list[int]:
    """The steps of the n best entries (step, metric), best first; ties keep the earlier step."""
    sign = -1.0 if direction == "max" else 1.0
    tie = -1 if later_ties else 1
    ordered = sorted(entries, key=lambda e: (sign * e[1], tie * e[0]))
    return [step for step, _ in ordered[:n]]


def _scenario(rng: random.Random, n: int, direction: str, length: int = 10) -> list[tuple[int, float]]:
    """(step, metric) pairs, one per evaluation (steps 10, 20, ...), in this order:

    n + 1 rising values (the newest n are then the best n; the worst n are not), a drop below them
    all (now the newest n are not the best n), random values with one tie to the n-th best so far
    (a later step ties an earlier one at the keep boundary), and a last value below every other
    (the best is not the last). So each wrong rule first goes wrong at a call of its own: the wrong
    direction at call n + 1, the newest at call n + 2, a tie given to the later step at the tie.
    Built as "goodness" (higher is better) and turned into a loss-like metric for "min".
    """
    while True:
        rising = sorted(round(rng.uniform(0.60, 0.80), 3) for _ in range(n + 1))
        drop = round(rising[0] - rng.uniform(0.05, 0.10), 3)
        good = rising + [drop] + [round(rng.uniform(0.55, 0.95), 3) for _ in range(length - n - 2)]
        tie_at = rng.randrange(n + 2, length - 1)
        good[tie_at] = sorted(good[:tie_at], reverse=True)[n - 1]
        good[-1] = round(min(good[:-1]) - 0.05, 3)
        if len(set(good)) == length - 1:  # the tie is the only repeated value
            break
    if direction == "min":
        good = [round(2.0 - g, 3) for g in good]
    return [(10 * (i + 1), g) for i, g in enumerate(good)]


def _diagnose_kept(kept: list[int], entries: list, n: int, direction: str, where: str) -> None:
    expected = reference_kept(entries, n, direction)
    if sorted(kept) == sorted(expected):
        return
    metric_of = dict(entries)
    shown = ", ".join(f"{s}: {metric_of.get(s, '?')}" for s in sorted(kept))
    what = f"{where}, the folder holds the checkpoints of steps [{shown}]"
    wanted = f"the {n} best by metric ({direction}): steps {sorted(expected)}"
    if len(kept) != len(expected):
        raise CheckFailure(f"{what}: {len(kept)} checkpoint(s)", expected=f"{len(expected)}, {wanted}",
                           hint="keep exactly n: after sorting, delete every checkpoint from "
                           "position n on (the n-th is the last one kept)")
    later = reference_kept(entries, n, direction, later_ties=True)
    if sorted(later) != sorted(expected) and sorted(kept) == sorted(later):
        raise CheckFailure(f"{what}: a tie went to the later step", expected=wanted,
                           hint="on equal metrics the earlier checkpoint stays: a later one must "
                           "be strictly better to displace it. The folder may list its files in "
                           "any order, so a sort by the metric alone leaves ties to chance: "
                           "break them by the step")
    if sorted(kept) == sorted(s for s, _ in entries[-n:]):
        raise CheckFailure(f"{what}: the newest {n}", expected=wanted,
                           hint="rank the checkpoints by the metric stored in them, not by step: "
                           "the best is often not the last")
    flipped = "min" if direction == "max" else "max"
    if sorted(kept) == sorted(reference_kept(entries, n, flipped)):
        raise CheckFailure(f"{what}: the {n} best if {flipped} were better", expected=wanted,
                           hint=f"direction={direction!r}: " + ("a higher metric is better (an "
                           "accuracy)" if direction == "max" else "a lower metric is better (a loss)"))
    raise CheckFailure(what, expected=wanted, hint="load each checkpoint's stored metric, sort "
                       "best first (ties: earlier step first), keep the first n")


def _check_folder(folder: Path, entries: list, states: dict, n: int, direction: str,
                  where: str) -> None:
    names = sorted(p.name for p in folder.iterdir())
    others = [name for name in names if not (name.startswith("step_") and name.endswith(".pt"))]
    require(not others, f"{where}, the folder also holds {others[:3]}",
            hint="only the step_NNNNNN.pt checkpoints stay: no temporary files, no index of your own")
    kept = []
    for name in names:
        try:
            kept.append(int(name[len("step_"):-len(".pt")]))
        except ValueError:
            raise CheckFailure(f"{where}, the folder holds {name!r}", hint="name each file "
                               "f\"step_{step:06d}.pt\"") from None
    unknown = [s for s in kept if s not in states]
    require(not unknown, f"{where}, the folder holds a checkpoint for step {unknown[:1]}, which "
            "was never saved", hint="name each file after the step it was saved at: "
            "f\"step_{step:06d}.pt\"")
    _diagnose_kept(kept, entries, n, direction, where)
    metric_of = dict(entries)
    for step in kept:
        name = f"step_{step:06d}.pt"
        require(name in names, f"{where}, the checkpoint of step {step} is not named {name}",
                hint="name each file f\"step_{step:06d}.pt\"")
        content = _load_plain(folder / name, name)
        require(isinstance(content, dict) and {"step", "metric", "state"} <= set(content),
                f"{name} should hold a dict with the keys 'step', 'metric' and 'state'",
                got=f"keys {sorted(map(str, content))}" if isinstance(content, dict) else type(content).__name__,
                hint='save {"step": step, "metric": metric, "state": state}')
        require(content["step"] == step and content["metric"] == metric_of[step],
                f"{name} says step {content['step']}, metric {content['metric']}; it was saved at "
                f"step {step} with metric {metric_of[step]}", hint="store the step and the metric "
                "you were given, unchanged")
        require(_same(content["state"], states[step]), f"{name} does not hold the state passed at "
                f"step {step}", hint="store the `state` argument as it is")


_KEEP_INSTEAD = "sort by the stored metric, then delete all but the first n"


def _keep_best_states(generator: torch.Generator, entries) -> dict:
    return {step: {"weights": torch.randn(8, generator=generator), "step": step} for step, _ in entries}


def _keep(keep_best, save_atomically, watched, folder, step, metric, state, n, direction,
          descending: bool) -> None:
    """One call of keep_best, the folder listed in a chosen order; it must save the new
    checkpoint with the learner's own save_atomically. `direction=None`: the default is used."""
    args = (folder, step, metric, state, n) + (() if direction is None else (direction,))
    with listing_order(descending), OwnCalls(save_atomically) as own:
        try:
            _call_watched(keep_best, *args, name="keep_best", watched=watched,
                          modules=(LOOP_MODULE,), instead=_KEEP_INSTEAD)
        except NotImplementedYet:
            raise
        except CheckFailure as failure:
            if direction is None and "direction" in failure.what:
                raise CheckFailure(f"keep_best(ckpt_dir, step, metric, state, n) without a "
                                   f"direction {failure.what.split('raised ', 1)[-1]}",
                                   hint="the contract gives `direction` a default: \"max\"") from None
            raise
    new_file = str((Path(folder) / f"step_{step:06d}.pt").resolve())
    require(new_file in own.paths(1), f"keep_best(..., step={step}, ...) did not save "
            f"step_{step:06d}.pt with your save_atomically"
            + (f" (it was called for {[Path(p).name for p in own.paths(1)]})" if own.calls
               else " (it was never called)"),
            hint="save the checkpoint with the save_atomically you wrote in (a): a crash during "
            "a plain save loses the best checkpoint of the run")


@one_thread
def check_keep_best(keep_best, save_atomically, seed: int = 0) -> None:
    """(b) After every call, the folder holds exactly the n best checkpoints so far, each whole,
    each saved with the learner's save_atomically, whatever order the folder lists its files in."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    root = Path(tempfile.mkdtemp(prefix="ex07-b-"))
    watched = code_objects(_library_ranking())
    calls = 0
    # A run alone, keeping only the best one, with the default direction ("max"); the folder
    # lists its files oldest first.
    entries = _scenario(rng, 1, "max")
    states = _keep_best_states(generator, entries)
    folder = root / "single"
    folder.mkdir()
    for index, (step, metric) in enumerate(entries):
        _keep(keep_best, save_atomically, watched, folder, step, metric, states[step], 1, None,
              descending=False)
        calls += 1
        _check_folder(folder, entries[: index + 1], states, 1, "max",
                      f"after keep_best(..., step={step}, metric={metric}, n=1) (direction "
                      "left at its default)")
    # A folder that already holds checkpoints, as after a crash and a resume in a new process.
    _check_folder_from_earlier_process(keep_best, save_atomically, root / "resumed", generator,
                                       watched)
    calls += 1
    # Two runs in two folders, their calls interleaved: a ranking kept in memory mixes them up.
    # One folder lists its files newest first, the other oldest first.
    runs = []
    for name, n, direction, descending in (("accuracy", 3, "max", True), ("loss", 2, "min", False)):
        entries = _scenario(rng, n, direction)
        folder = root / name
        folder.mkdir()
        runs.append((folder, entries, _keep_best_states(generator, entries), n, direction,
                     descending))
    for index in range(len(runs[0][1])):
        for run_index, (folder, entries, states, n, direction, descending) in enumerate(runs):
            step, metric = entries[index]
            # One folder as a Path, the other as a str: both are paths.
            where_arg = folder if run_index == 0 else str(folder)
            _keep(keep_best, save_atomically, watched, where_arg, step, metric, states[step], n,
                  direction, descending)
            calls += 1
            where = (f"after keep_best(..., step={step}, metric={metric}, n={n}, "
                     f"direction={direction!r})")
            _check_folder(folder, entries[: index + 1], states, n, direction, where)
    passed(f"after each of {calls} calls in four folders (n = 3, 2, 1; max, min and the default; "
           "ties at the boundary; the last evaluation the worst; files listed oldest first and "
           "newest first; one folder holding checkpoints of an earlier process), the folder held "
           "exactly the n best checkpoints so far, each saved with your save_atomically and "
           "holding the state saved at its step")


def _check_folder_from_earlier_process(keep_best, save_atomically, folder: Path,
                                       generator: torch.Generator, watched: dict) -> None:
    """Three checkpoints saved by an earlier process, then one call: the new one ranks last."""
    folder.mkdir()
    entries = [(10, 0.81), (20, 0.86), (30, 0.84), (40, 0.62)]
    states = _keep_best_states(generator, entries)
    for step, metric in entries[:-1]:
        torch.save({"step": step, "metric": metric, "state": states[step]}, folder / f"step_{step:06d}.pt")
    step, metric = entries[-1]
    _keep(keep_best, save_atomically, watched, folder, step, metric, states[step], 2, "max",
          descending=True)
    kept = sorted(int(p.name[5:11]) for p in folder.glob("step_*.pt"))
    expected = reference_kept(entries, 2, "max")
    if kept != sorted(expected):
        raise CheckFailure(f"in a folder that already held the checkpoints of steps 10, 20 and 30 "
                           f"(metrics 0.81, 0.86, 0.84, saved by an earlier process), "
                           f"keep_best(..., step=40, metric=0.62, n=2, direction='max') left steps "
                           f"{kept}", expected=f"steps {sorted(expected)}",
                           hint="rank every step_*.pt file of the folder, read afresh at each call: "
                           "after a resume the folder is all there is, so keep no list in memory")
    _check_folder(folder, entries, states, 2, "max", "after a call in a folder of an earlier process")


def _library_ranking() -> list:
    from course_lib.checkpoint import rank_checkpoints

    return [rank_checkpoints]


# ---- (c) resume exactly ---------------------------------------------------------------------------------

# The exercise's run, exactly as its set-up cell defines it: an MLP with dropout (random numbers at
# every step), AdamW (moments), a cosine schedule stepped every step, and an epoch order that
# depends on the seed and the epoch only.
BATCH_SIZE = 64
TOTAL_STEPS = 50
LEARNING_RATE = 3e-3


@dataclass
class Run:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # complete passes over the training set
    batch: int = 0  # batches of the current epoch already trained on


def make_run(seed: int) -> Run:
    torch.manual_seed(seed)
    model = MLP(hidden=32, dropout=0.3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL_STEPS)
    return Run(model, optimizer, scheduler)


def epoch_order(data_seed: int, epoch: int, size: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(1000 * data_seed + epoch))


def train_until(run: Run, train_set, until_step: int, data_seed: int) -> None:
    inputs, targets = train_set.tensors
    loss_fn = nn.CrossEntropyLoss()
    run.model.train()
    while run.step < until_step:
        batches = epoch_order(data_seed, run.epoch, len(targets)).split(BATCH_SIZE)
        while run.batch < len(batches) and run.step < until_step:
            rows = batches[run.batch]
            loss = loss_fn(run.model(inputs[rows]), targets[rows])
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            run.step += 1
            run.batch += 1
        if run.batch == len(batches):
            run.epoch, run.batch = run.epoch + 1, 0


def _snapshot(run: Run) -> dict:
    return {"model": copy.deepcopy(run.model.state_dict()),
            "optimizer": copy.deepcopy(run.optimizer.state_dict()),
            "scheduler": copy.deepcopy(run.scheduler.state_dict()),
            "position": (run.step, run.epoch, run.batch), "rng": torch.get_rng_state()}


def _scramble_rng(value: int) -> None:
    """Another process, another day: every global generator somewhere else."""
    torch.manual_seed(value)
    torch.rand(value % 97 + 1)
    random.seed(value)


_RESUME_INSTEAD = "save the state_dict()s, the counters and the RNG state, and load them back"


def _check_restored(run: Run, saved: dict, step: int, snapshots: dict, built: Run) -> None:
    """Right after load_run: each part of the run as it was when saved, each with its own message."""
    position = (run.step, run.epoch, run.batch)
    s_step, s_epoch, s_batch = saved["position"]
    for other_step, other in snapshots.items():
        if other_step != step and position == other["position"] and \
                _same(run.model.state_dict(), other["model"]):
            raise CheckFailure(f"load_run was given the file saved at step {step}, and put back the "
                               f"run of step {other_step}", hint="read everything from the file at "
                               "`path`: a resumed run starts in a new process, with nothing in memory")
    _check_in_place(run, built)
    require(_same(run.model.state_dict(), saved["model"]), f"after load_run the model's weights are "
            f"not those saved at step {step}", hint="save model.state_dict() and load it with "
            "model.load_state_dict")
    optimizer_state = run.optimizer.state_dict()
    if not _same(optimizer_state["state"], saved["optimizer"]["state"]):
        moments = "empty" if not optimizer_state["state"] else "different"
        raise CheckFailure(f"after load_run the optimizer's state (AdamW's step counts and moment "
                           f"estimates) is {moments}; at step {step} it held the moments of "
                           f"{len(saved['optimizer']['state'])} parameters",
                           hint="save optimizer.state_dict() and load it with "
                           "optimizer.load_state_dict: without its moments AdamW takes other steps")
    lr, saved_lr = run.optimizer.param_groups[0]["lr"], saved["optimizer"]["param_groups"][0]["lr"]
    scheduler_state = run.scheduler.state_dict()
    if lr != saved_lr or scheduler_state.get("last_epoch") != saved["scheduler"].get("last_epoch"):
        raise CheckFailure(f"after load_run the learning rate is {lr:.6g} and the schedule is at its "
                           f"step {scheduler_state.get('last_epoch')}; at step {step} they were "
                           f"{saved_lr:.6g} and {saved['scheduler'].get('last_epoch')}",
                           hint="save scheduler.state_dict() and load it with "
                           "scheduler.load_state_dict (after the optimizer's)")
    if position != saved["position"]:
        if run.step != s_step:
            hint = "save run.step and set it back in load_run"
        elif run.epoch == s_epoch and run.batch == 0:
            hint = ("save run.batch too: restarting the epoch from its first batch trains twice on "
                    "some examples and skips others")
        else:
            hint = "save run.epoch and run.batch (where the run is in the data) and set them back"
        raise CheckFailure(f"after load_run the run is at step {run.step}, epoch {run.epoch}, batch "
                           f"{run.batch}; it was saved at step {s_step}, epoch {s_epoch}, batch "
                           f"{s_batch}", hint=hint)
    require(torch.equal(torch.get_rng_state(), saved["rng"]), "after load_run the random number "
            f"generator is not where it was at step {step}: dropout will draw other masks than in "
            "the uninterrupted run", hint="save torch.get_rng_state() and restore it with "
            "torch.set_rng_state at the end of load_run")


def _dropout_rates(model: nn.Module) -> list[float]:
    return [module.p for module in model.modules() if isinstance(module, nn.Dropout)]


def _check_in_place(run: Run, built: Run) -> None:
    """The run make_run built, restored in place: the same objects, the optimizer's class, the
    model's dropout and training mode as built, the schedule driving the run's optimizer."""
    if run.optimizer is not built.optimizer:
        kind = type(run.optimizer).__name__
        raise CheckFailure(f"load_run replaced the run's optimizer (AdamW, built by make_run) with "
                           f"a new {kind}" + (", another algorithm" if kind != "AdamW" else ""),
                           hint="load the saved state into the optimizer the run already has "
                           "(run.optimizer.load_state_dict): the schedule steps that object, and "
                           "the algorithm is part of the run")
    require(type(run.optimizer) is torch.optim.AdamW, "after load_run the run's optimizer is a "
            f"{type(run.optimizer).__name__}, not the AdamW make_run built",
            hint="keep the optimizer make_run built; load its state into it")
    if run.model is not built.model:
        rates, built_rates = _dropout_rates(run.model), _dropout_rates(built.model)
        extra = f" with dropout {rates}, not {built_rates}" if rates != built_rates else ""
        raise CheckFailure(f"load_run replaced the run's model with a new one{extra}: the "
                           "optimizer still updates the parameters of the old one",
                           hint="load the weights into the model the run already has "
                           "(run.model.load_state_dict)")
    require(_dropout_rates(run.model) == _dropout_rates(built.model), "load_run changed the "
            f"model's dropout to {_dropout_rates(run.model)}", hint="load weights only; leave the "
            "model's layers as make_run built them")
    require(run.model.training, "after load_run the model is in eval mode: dropout is off, and "
            "the run was saved while training", hint="a resumed run goes on training: do not call "
            "model.eval() in load_run")
    require(run.scheduler is built.scheduler and
            getattr(run.scheduler, "optimizer", None) is run.optimizer,
            "after load_run the schedule no longer drives the run's optimizer",
            hint="load the saved state into the scheduler the run already has "
            "(run.scheduler.load_state_dict)")


def _largest_difference(a: dict, b: dict) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a.values(), b.values()))


@one_thread
def check_resume(save_run, load_run, save_atomically, load_safely, seed: int = 0) -> None:
    """(c) A run saved mid-epoch and at an epoch's end (with the learner's save_atomically),
    restored in place into a fresh run (with the learner's load_safely), ends bit for bit where
    the uninterrupted run ends."""
    rng = random.Random(seed)
    train_set = load_digits_splits(seed=seed).train
    steps_per_epoch = -(-len(train_set) // BATCH_SIZE)
    data_seed = seed + 1
    # The uninterrupted run.
    reference = make_run(seed)
    train_until(reference, train_set, TOTAL_STEPS, data_seed)
    # The same run, saved twice on the way: in the middle of epoch 1, and at the end of epoch 2.
    middle = steps_per_epoch + rng.randrange(2, steps_per_epoch - 2)
    boundary = 2 * steps_per_epoch
    folder = Path(tempfile.mkdtemp(prefix="ex07-c-"))
    interrupted, saved = make_run(seed), {}
    for step in (middle, boundary):
        train_until(interrupted, train_set, step, data_seed)
        saved[step] = _snapshot(interrupted)
        with OwnCalls(save_atomically) as own:
            _call_watched(save_run, interrupted, folder / f"run-{step}.pt", name="save_run",
                          modules=(LOOP_MODULE,), instead=_RESUME_INSTEAD)
        require(str((folder / f"run-{step}.pt").resolve()) in own.paths(1),
                "save_run did not write its file with your save_atomically",
                hint="a run's checkpoint is the file a crash must not break: save it with the "
                "save_atomically you wrote in (a)")
        torch.set_rng_state(saved[step]["rng"])  # whatever save_run drew, the run goes on from here
        _load_plain(folder / f"run-{step}.pt", "the file save_run wrote")
    # Resume each, in a fresh run with other initial weights, after the generators moved on.
    for step in (middle, boundary):
        fresh = make_run(seed + 100)
        _scramble_rng(rng.randrange(1, 10**6))
        built = Run(fresh.model, fresh.optimizer, fresh.scheduler)
        with OwnCalls(load_safely) as own:
            _call_watched(load_run, fresh, folder / f"run-{step}.pt", name="load_run",
                          modules=(LOOP_MODULE,), instead=_RESUME_INSTEAD)
        _check_restored(fresh, saved[step], step, saved, built)
        require(str((folder / f"run-{step}.pt").resolve()) in own.paths(0),
                "load_run did not read the file with your load_safely",
                hint="a checkpoint may come from anywhere: load it with the load_safely you "
                "wrote in (a)")
        train_until(fresh, train_set, TOTAL_STEPS, data_seed)
        weights, expected = fresh.model.state_dict(), reference.model.state_dict()
        if not _same(weights, expected):
            raise CheckFailure(f"resumed at step {step} and trained on to step {TOTAL_STEPS}, the run "
                               "ended with other weights than the uninterrupted run (largest "
                               f"difference {_largest_difference(weights, expected):.3g})",
                               hint="everything that changes during training must be in the file "
                               "and put back: state_dict()s, counters, RNG state")
        require(_same(fresh.optimizer.state_dict()["state"], reference.optimizer.state_dict()["state"]),
                f"resumed at step {step}, the run ended with other optimizer moments than the "
                "uninterrupted run", hint="save and load optimizer.state_dict()")
    passed(f"runs saved at step {middle} (the middle of epoch 2) and step {boundary} (the end of "
           f"epoch 2), loaded into fresh runs after the random generators had moved on, continued "
           f"to step {TOTAL_STEPS} and ended bit for bit equal to the uninterrupted run: every "
           "weight and every optimizer moment")
