"""The checks of exercise 07 pass the reference answers, say "not implemented yet" for a stub, and
reject every wrong answer of their corpus with a failure and a hint that name the mistake.

Each wrong answer is the reference answer with one realistic mistake: the lesson's "common bug"
boxes (keeping the newest N instead of the best N; resuming without the optimizer or the RNG
state), the curriculum's list (the newest N; no optimizer state; no RNG state), the rest of what a
checkpoint must hold (the scheduler, the position in the epoch, the step), unsafe files (a plain
save onto the target, a temporary file elsewhere or left behind, a copy instead of a rename,
loading with weights_only=False), off-by-ones and orderings (N + 1 and N - 1 kept, the wrong
direction, ties given to the later step), shortcuts (handing the work to course_lib, a ranking
or a run kept in memory instead of on disk).

The blind-spot kinds each have three or more wrong answers of their own: a fault at each step of
a save (no fsync, fsync after the rename or of the folder only, a temporary file left when the
rename fails, a copy or silence when the rename fails, a failed fsync ignored), a path given as a
str, the learner's own save_atomically and load_safely not used where the contract says so
(torch.save, an inlined copy of the recipe, bytes written in place, course_lib's save_checkpoint
or load_checkpoint, torch.load), results that depend on the order the folder lists its files in
(a sort by the metric alone, sorted with reverse=True, heapq, deleting the first worst found; the
check lists one folder newest first, another oldest first), the default direction (another
default, none, None read as "min"), and the run restored in place (the optimizer rebuilt as Adam
or as a new AdamW the schedule does not drive, the model rebuilt without dropout, the model left
in eval mode).

Seeds: the normal run uses 2 seeds per case; `CHECK_SEEDS=16` runs 16. Observed with 16 seeds
(seeds 0-15, on a shared two-core machine at a load average near 20): the reference answers pass
all three checks on every seed, and every wrong answer below fails its check on every seed, with
the failure and the hint asserted here (the first 29 wrong answers: 519 cases in 468 s; the 29
added with the blind spots, with the reference: 512 cases in 543 s).
Corpus sizes: (a) check_safe_files 10 -> 20, (b) check_keep_best 10 -> 20, (c) check_resume
10 -> 19.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from course_lib import RunState, TrainConfig
from course_lib.checkpoint import load_checkpoint, rank_checkpoints, save_checkpoint
from course_lib.checks._core import CheckFailure, NotImplementedYet
from course_lib.checks.ex07 import check_keep_best, check_resume, check_safe_files, hint

SEEDS = list(range(int(os.environ.get("CHECK_SEEDS", "2"))))


# ---- the reference answers (as in the solution notebook) ------------------------------------------


def save_atomically(state, path):
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_safely(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def make_keep_best(order="metric", keep=lambda n: n, direction_used=None, ties="earlier",
                   memory=None, content="full", saves=True):
    """The reference keep_best by default; each argument, changed, makes one realistic mistake."""

    def keep_best(ckpt_dir, step, metric, state, n, direction="max"):
        ckpt_dir = Path(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        saved = {"step": step, "metric": metric, "state": state}
        if content == "no_state":
            saved = {"step": step, "metric": metric}
        if saves:
            save_atomically(saved, ckpt_dir / f"step_{step:06d}.pt")
        if memory is not None:  # a ranking kept between calls instead of read from the folder
            memory.append((metric, step, ckpt_dir / f"step_{step:06d}.pt"))
            ranked = list(memory)
        else:
            ranked = []
            for path in ckpt_dir.glob("step_*.pt"):
                loaded = load_safely(path)
                ranked.append((loaded["metric"], loaded["step"], path))
        used = direction_used or direction
        sign = -1 if used == "max" else 1
        if order == "step":
            ranked.sort(key=lambda e: -e[1])
        elif ties == "later":
            ranked.sort(key=lambda e: (sign * e[0], -e[1]))
        else:
            ranked.sort(key=lambda e: (sign * e[0], e[1]))
        for _, _, path in ranked[keep(n):]:
            path.unlink(missing_ok=True)
        if memory is not None:
            memory[:] = ranked[:keep(n)]

    return keep_best


def make_save_run(parts=("model", "optimizer", "scheduler", "step", "epoch", "batch", "rng"),
                  as_objects=False):
    def save_run(run, path):
        state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scheduler": run.scheduler.state_dict(), "step": run.step, "epoch": run.epoch,
                 "batch": run.batch, "rng": torch.get_rng_state()}
        state = {k: v for k, v in state.items() if k in parts}
        if as_objects:
            state["optimizer"] = run.optimizer
        save_atomically(state, path)

    return save_run


def make_load_run(rng_first=False, load=load_safely):
    def load_run(run, path):
        saved = load(path)
        if rng_first and "rng" in saved:
            torch.set_rng_state(saved["rng"])
        run.model.load_state_dict(saved["model"])
        if "optimizer" in saved:
            run.optimizer.load_state_dict(saved["optimizer"])
        if "scheduler" in saved:
            run.scheduler.load_state_dict(saved["scheduler"])
        for name in ("step", "epoch", "batch"):
            if name in saved:
                setattr(run, name, saved[name])
        if "rng" in saved and not rng_first:
            torch.set_rng_state(saved["rng"])

    return load_run


save_run, load_run = make_save_run(), make_load_run()


def stub(*args, **kwargs):
    raise NotImplementedError("write it")


def rejected(check, *answers, seed) -> CheckFailure:
    with pytest.raises(CheckFailure) as caught:
        check(*answers, seed=seed)
    assert not isinstance(caught.value, NotImplementedYet), caught.value.line()
    return caught.value


# ---- the reference passes, the stub is "not implemented yet" ---------------------------------------

CASES = [
    (check_safe_files, (save_atomically, load_safely)),
    (check_keep_best, (make_keep_best(), save_atomically)),
    (check_resume, (save_run, load_run, save_atomically, load_safely)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check, answers", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_check_passes_the_reference(check, answers, seed, capsys):
    check(*answers, seed=seed)
    assert capsys.readouterr().out.startswith("✓ ")


@pytest.mark.parametrize("check, answers", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_check_says_not_implemented_yet_for_a_stub(check, answers):
    with pytest.raises(NotImplementedYet, match="is not implemented yet"):
        check(stub, *answers[1:]) if check is not check_safe_files else check(stub, stub)


def test_a_stub_in_the_second_function_is_named_too():
    with pytest.raises(NotImplementedYet, match="`load_safely` is not implemented yet"):
        check_safe_files(save_atomically, stub)
    with pytest.raises(NotImplementedYet, match="`load_run` is not implemented yet"):
        check_resume(save_run, stub, save_atomically, load_safely)


def test_every_question_has_a_hint(capsys):
    for question in "abc":
        hint(question)
        assert capsys.readouterr().out.startswith(f"💡 ({question})")


def test_a_check_restores_the_thread_count():
    threads = torch.get_num_threads()
    check_keep_best(make_keep_best(), save_atomically)
    assert torch.get_num_threads() == threads


# ---- (a) safe files: 9 wrong answers ------------------------------------------------------------------


def plain_save(state, path):  # the lesson's non-atomic save: straight onto the target
    torch.save(state, path)


def temporary_elsewhere(state, path):  # a temporary file in the system's folder, then a move
    handle, temporary = tempfile.mkstemp(suffix=".pt")
    os.close(handle)
    try:
        torch.save(state, temporary)
        shutil.move(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def temporary_left_behind(state, path):  # no clean-up when the save fails
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def error_swallowed(state, path):
    try:
        save_atomically(state, path)
    except Exception:  # noqa: BLE001 - the mistake: the caller believes it saved
        pass


def copied_onto_the_target(state, path):  # a temporary file, then a copy: rewrites the target in place
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    try:
        torch.save(state, temporary)
        shutil.copyfile(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def serialized_in_memory_then_written(state, path):  # all bytes first, then an in-place write
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).write_bytes(buffer.getvalue())


def load_trusting(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def load_with_pickle_fallback(path):  # "if weights_only refuses, load it anyway"
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, weights_only=False)


SAFE_WRONG = [
    ("plain_save_onto_the_target", plain_save, load_safely, "truncated", "temporary file in the same folder"),
    ("temporary_file_in_another_folder", temporary_elsewhere, load_safely, "no new file appeared",
     "same folder"),
    ("temporary_file_left_after_a_failure", temporary_left_behind, load_safely, "a save that failed left",
     "remove the temporary file"),
    ("error_swallowed", error_swallowed, load_safely, "returned normally", "let it go on"),
    ("copied_onto_the_target", copied_onto_the_target, load_safely, "rewrote the existing file in place",
     "os.replace"),
    ("written_in_place_from_memory", serialized_in_memory_then_written, load_safely,
     "no new file appeared", "same folder"),
    ("loads_with_weights_only_false", save_atomically, load_trusting, "ran code", "weights_only=True"),
    ("falls_back_to_an_unsafe_load", save_atomically, load_with_pickle_fallback, "ran code",
     "weights_only=True"),
    ("delegates_to_save_checkpoint", save_checkpoint, load_safely, "course_lib's own save_checkpoint",
     "write it yourself"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, save, load, what, hint_text", SAFE_WRONG,
                         ids=lambda a: a if isinstance(a, str) else "")
def test_safe_files_rejects(name, save, load, what, hint_text, seed):
    failure = rejected(check_safe_files, save, load, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()


def test_safe_files_rejects_loading_through_course_lib():
    failure = rejected(check_safe_files, save_atomically, load_checkpoint, seed=0)
    assert "course_lib's own load_checkpoint" in failure.what and "write it yourself" in failure.hint


# ---- (b) keep the best N: 9 wrong answers -----------------------------------------------------------------


def delegates_ranking(ckpt_dir, step, metric, state, n, direction="max"):
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_atomically({"step": step, "metric": metric, "state": state}, ckpt_dir / f"step_{step:06d}.pt")
    entries = [{"path": p, "step": load_safely(p)["step"], "metric": load_safely(p)["metric"]}
               for p in ckpt_dir.glob("step_*.pt")]
    _, dropped = rank_checkpoints(entries, n, direction)
    for entry in dropped:
        entry["path"].unlink()


def named_one_step_off(ckpt_dir, step, metric, state, n, direction="max"):
    make_keep_best()(ckpt_dir, step, metric, state, n, direction)
    source = Path(ckpt_dir) / f"step_{step:06d}.pt"
    if source.exists():
        source.rename(Path(ckpt_dir) / f"step_{step + 1:06d}.pt")


KEEP_WRONG = [
    ("keeps_the_newest_n", make_keep_best(order="step"), "the newest", "not by step"),
    ("keeps_one_more", make_keep_best(keep=lambda n: n + 1), "checkpoint(s)", "keep exactly n"),
    ("keeps_one_fewer", make_keep_best(keep=lambda n: n - 1), "checkpoint(s)", "keep exactly n"),
    ("always_max", make_keep_best(direction_used="max"), "if max were better", "a lower metric is better"),
    ("always_min", make_keep_best(direction_used="min"), "if min were better", "a higher metric is better"),
    ("ties_to_the_later_step", make_keep_best(ties="later"), "a tie went to the later step",
     "earlier checkpoint stays"),
    ("ranking_kept_in_memory", make_keep_best(memory=[]), "saved by an earlier process",
     "keep no list in memory"),
    ("saves_the_metric_but_not_the_state", make_keep_best(content="no_state"), "'state'",
     '"state": state'),
    ("file_named_one_step_off", named_one_step_off, "never saved", "step_{step:06d}.pt"),
    ("delegates_the_ranking", delegates_ranking, "course_lib's own rank_checkpoints", "write it yourself"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, answer, what, hint_text", KEEP_WRONG,
                         ids=lambda a: a if isinstance(a, str) else "")
def test_keep_best_rejects(name, answer, what, hint_text, seed):
    if name == "ranking_kept_in_memory":
        answer = make_keep_best(memory=[])  # a fresh memory per test, as a fresh kernel would have
    failure = rejected(check_keep_best, answer, save_atomically, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()


# ---- (c) resume exactly: 10 wrong answers -------------------------------------------------------------------

ALL_PARTS = ("model", "optimizer", "scheduler", "step", "epoch", "batch", "rng")


def without(*parts):
    return tuple(p for p in ALL_PARTS if p not in parts)


def make_in_memory():
    """save_run writes the file, but load_run takes the last saved run from memory."""
    kept = {}

    def save(run, path):
        save_run(run, path)
        kept["last"] = load_safely(path)

    def load(run, path):
        make_load_run(load=lambda _: kept["last"])(run, path)

    return save, load


def draws_after_restoring(run, path):  # restores the RNG, then something draws from it
    load_run(run, path)
    torch.rand(1)


def delegates_to_run_state(run, path):
    cfg = TrainConfig(max_steps=50, schedule="constant")
    state = RunState(run.model, run.optimizer, run.scheduler, torch.amp.GradScaler("cpu", enabled=False), cfg)
    save_checkpoint(path, {**state.state_dict(), "position": [run.step, run.epoch, run.batch]})


def load_via_run_state(run, path):
    cfg = TrainConfig(max_steps=50, schedule="constant")
    state = RunState(run.model, run.optimizer, run.scheduler, torch.amp.GradScaler("cpu", enabled=False), cfg)
    saved = load_checkpoint(path)
    state.load_state_dict(saved)
    run.step, run.epoch, run.batch = saved["position"]


RESUME_WRONG = [
    ("model_only", make_save_run(parts=("model",)), make_load_run(), "optimizer's state", "optimizer.state_dict()"),
    ("no_optimizer_state", make_save_run(parts=without("optimizer")), make_load_run(), "optimizer's state",
     "optimizer.load_state_dict"),
    ("no_rng_state", make_save_run(parts=without("rng")), make_load_run(), "random number generator",
     "torch.get_rng_state()"),
    ("no_scheduler", make_save_run(parts=without("scheduler")), make_load_run(), "learning rate",
     "scheduler.state_dict()"),
    ("restarts_the_epoch", make_save_run(parts=without("batch")), make_load_run(), "batch 0",
     "save run.batch too"),
    ("no_step", make_save_run(parts=without("step")), make_load_run(), "at step 0", "save run.step"),
    ("optimizer_saved_as_an_object", make_save_run(as_objects=True), make_load_run(load=load_trusting),
     "weights_only=True", "never objects"),
    ("run_kept_in_memory", *make_in_memory(), "put back the run of step", "read everything from the file"),
    ("draws_after_restoring_the_rng", save_run, draws_after_restoring, "random number generator",
     "end of load_run"),
    ("delegates_to_run_state", delegates_to_run_state, load_via_run_state, "course_lib's own",
     "write it yourself"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, save, load, what, hint_text", RESUME_WRONG,
                         ids=lambda a: a if isinstance(a, str) else "")
def test_resume_rejects(name, save, load, what, hint_text, seed):
    failure = rejected(check_resume, save, load, save_atomically, load_safely, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()


# ---- (a) every step of a save can fail; a path may be a str ----------------------------------------


def reference_without_fsync(state, path):  # the bytes may still be in the page cache at the rename
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def fsync_after_the_rename(state, path):  # flushes the target once it is in place: too late
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    finally:
        temporary.unlink(missing_ok=True)


def fsync_of_the_folder_only(state, path):  # the directory entry is flushed, the bytes are not
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, temporary)
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cleanup_around_the_write_only(state, path):  # a failed rename leaves the temporary file
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def copy_when_the_rename_fails(state, path):  # "os.replace fails on Windows sometimes: copy instead"
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.replace(temporary, path)
        except OSError:
            shutil.copyfile(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def rename_error_swallowed(state, path):  # the caller believes the checkpoint is on disk
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.replace(temporary, path)
        except OSError:
            pass
    finally:
        temporary.unlink(missing_ok=True)


def fsync_error_ignored(state, path):  # "fsync is not supported everywhere: skip it if it fails"
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            try:
                os.fsync(file.fileno())
            except OSError:
                pass
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def with_name_on_a_str(state, path):  # assumes a Path: a str has no with_name
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def parent_of_a_str(state, path):
    temporary = path.parent / f".{path.name}.tmp"
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def with_suffix_on_a_str(state, path):
    temporary = path.with_suffix(".tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


SAVE_STEP_WRONG = [
    ("no_fsync", reference_without_fsync, "no os.fsync", "os.fsync(file.fileno())"),
    ("fsync_after_the_rename", fsync_after_the_rename, "os.fsync came after the rename",
     "only then os.replace"),
    ("fsync_of_the_folder_only", fsync_of_the_folder_only, "no os.fsync", "os.fsync(file.fileno())"),
    ("cleanup_around_the_write_only", cleanup_around_the_write_only,
     "os.replace failed left the folder", "the rename included"),
    ("copy_when_the_rename_fails", copy_when_the_rename_fails,
     "returned normally although os.replace failed", "let the error go on"),
    ("rename_error_swallowed", rename_error_swallowed, "returned normally although os.replace failed",
     "let the error go on"),
    ("fsync_error_ignored", fsync_error_ignored, "returned normally although os.fsync failed",
     "let the error of os.fsync go on"),
    ("with_name_on_a_str", with_name_on_a_str, "given as a str", "Path(path)"),
    ("parent_of_a_str", parent_of_a_str, "given as a str", "Path(path)"),
    ("with_suffix_on_a_str", with_suffix_on_a_str, "given as a str", "Path(path)"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, save, what, hint_text", SAVE_STEP_WRONG,
                         ids=lambda a: a if isinstance(a, str) else "")
def test_safe_files_rejects_a_fault_at_each_step(name, save, what, hint_text, seed):
    failure = rejected(check_safe_files, save, load_safely, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()


# ---- (b) the learner's own save, ties whatever the listing order, the default direction ----------


def saves_with_torch_save(ckpt_dir, step, metric, state, n, direction="max"):
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "metric": metric, "state": state}, ckpt_dir / f"step_{step:06d}.pt")
    make_keep_best(saves=False)(ckpt_dir, step, metric, state, n, direction)


def saves_with_its_own_copy_of_the_recipe(ckpt_dir, step, metric, state, n, direction="max"):
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:06d}.pt"
    temporary = path.with_name(path.name + ".part")
    torch.save({"step": step, "metric": metric, "state": state}, temporary)
    os.replace(temporary, path)
    make_keep_best(saves=False)(ckpt_dir, step, metric, state, n, direction)


def saves_through_bytes(ckpt_dir, step, metric, state, n, direction="max"):
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"step": step, "metric": metric, "state": state}, buffer)
    (ckpt_dir / f"step_{step:06d}.pt").write_bytes(buffer.getvalue())
    make_keep_best(saves=False)(ckpt_dir, step, metric, state, n, direction)


def _entries(ckpt_dir):
    return [(load_safely(p)["metric"], load_safely(p)["step"], p) for p in Path(ckpt_dir).glob("step_*.pt")]


def _save_entry(ckpt_dir, step, metric, state):
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_atomically({"step": step, "metric": metric, "state": state}, ckpt_dir / f"step_{step:06d}.pt")


def sorts_by_the_metric_alone(ckpt_dir, step, metric, state, n, direction="max"):
    _save_entry(ckpt_dir, step, metric, state)
    ranked = sorted(_entries(ckpt_dir), key=lambda e: e[0] if direction == "min" else -e[0])
    for _, _, path in ranked[n:]:
        path.unlink()


def sorts_with_reverse(ckpt_dir, step, metric, state, n, direction="max"):
    _save_entry(ckpt_dir, step, metric, state)
    ranked = sorted(_entries(ckpt_dir), key=lambda e: e[0], reverse=(direction == "max"))
    for _, _, path in ranked[n:]:
        path.unlink()


def keeps_with_heapq(ckpt_dir, step, metric, state, n, direction="max"):
    import heapq

    _save_entry(ckpt_dir, step, metric, state)
    entries = _entries(ckpt_dir)
    pick = heapq.nlargest if direction == "max" else heapq.nsmallest
    kept = {path for _, _, path in pick(n, entries, key=lambda e: e[0])}
    for _, _, path in entries:
        if path not in kept:
            path.unlink()


def deletes_the_first_worst_found(ckpt_dir, step, metric, state, n, direction="max"):
    _save_entry(ckpt_dir, step, metric, state)
    entries = _entries(ckpt_dir)
    while len(entries) > n:
        worst = (min if direction == "max" else max)(entries, key=lambda e: e[0])
        worst[2].unlink()
        entries.remove(worst)


def default_min(ckpt_dir, step, metric, state, n, direction="min"):
    make_keep_best()(ckpt_dir, step, metric, state, n, direction)


def no_default(ckpt_dir, step, metric, state, n, direction):
    make_keep_best()(ckpt_dir, step, metric, state, n, direction)


def default_none_read_as_min(ckpt_dir, step, metric, state, n, direction=None):
    make_keep_best()(ckpt_dir, step, metric, state, n, "max" if direction == "max" else "min")


KEEP_NEW_WRONG = [
    ("saves_with_torch_save", saves_with_torch_save, "with your save_atomically", "you wrote in (a)"),
    ("saves_with_its_own_copy_of_the_recipe", saves_with_its_own_copy_of_the_recipe,
     "with your save_atomically", "you wrote in (a)"),
    ("saves_through_bytes", saves_through_bytes, "with your save_atomically", "you wrote in (a)"),
    ("sorts_by_the_metric_alone", sorts_by_the_metric_alone, "a tie went to the later step",
     "break them by the step"),
    ("sorts_with_reverse", sorts_with_reverse, "a tie went to the later step", "break them by the step"),
    ("keeps_with_heapq", keeps_with_heapq, "a tie went to the later step", "break them by the step"),
    ("deletes_the_first_worst_found", deletes_the_first_worst_found, "a tie went to the later step",
     "break them by the step"),
    ("default_direction_min", default_min, "direction left at its default", "a higher metric is better"),
    ("no_default_direction", no_default, "without a direction", 'default: "max"'),
    ("default_none_read_as_min", default_none_read_as_min, "direction left at its default",
     "a higher metric is better"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, answer, what, hint_text", KEEP_NEW_WRONG,
                         ids=lambda a: a if isinstance(a, str) else "")
def test_keep_best_rejects_blind_spots(name, answer, what, hint_text, seed):
    failure = rejected(check_keep_best, answer, save_atomically, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()


# ---- (c) the learner's own save and load; the run restored in place ------------------------------


def save_run_with_torch_save(run, path):
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "step": run.step, "epoch": run.epoch,
                "batch": run.batch, "rng": torch.get_rng_state()}, path)


def save_run_with_save_checkpoint(run, path):
    save_checkpoint(path, {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                           "scheduler": run.scheduler.state_dict(), "step": run.step,
                           "epoch": run.epoch, "batch": run.batch, "rng": torch.get_rng_state()})


def save_run_to_bytes(run, path):
    buffer = io.BytesIO()
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "step": run.step, "epoch": run.epoch,
                "batch": run.batch, "rng": torch.get_rng_state()}, buffer)
    Path(path).write_bytes(buffer.getvalue())


def rebuilds_the_optimizer_as_adam(run, path):  # "Adam and AdamW share a state dict"
    run.optimizer = torch.optim.Adam(run.model.parameters())
    load_run(run, path)


def rebuilds_the_model_without_dropout(run, path):
    from course_lib.models import MLP

    run.model = MLP(hidden=32)
    load_run(run, path)


def rebuilds_the_optimizer_not_the_schedule(run, path):
    run.optimizer = torch.optim.AdamW(run.model.parameters(), lr=3e-3)
    load_run(run, path)


def ends_in_eval_mode(run, path):  # "a loaded model is for inference"
    load_run(run, path)
    run.model.eval()


def loads_with_torch_load(run, path):
    make_load_run(load=lambda p: torch.load(p, weights_only=True))(run, path)


def loads_with_load_checkpoint(run, path):
    make_load_run(load=load_checkpoint)(run, path)


RESUME_NEW_WRONG = [
    ("save_run_with_torch_save", save_run_with_torch_save, load_run, "save_run did not write",
     "save_atomically you wrote"),
    ("save_run_with_save_checkpoint", save_run_with_save_checkpoint, load_run,
     "save_run did not write", "save_atomically you wrote"),
    ("save_run_to_bytes", save_run_to_bytes, load_run, "save_run did not write",
     "save_atomically you wrote"),
    ("loads_with_torch_load", save_run, loads_with_torch_load, "with your load_safely",
     "load_safely you wrote"),
    ("loads_with_load_checkpoint", save_run, loads_with_load_checkpoint, "with your load_safely",
     "load_safely you wrote"),
    ("rebuilds_the_optimizer_as_adam", save_run, rebuilds_the_optimizer_as_adam,
     "a new Adam, another algorithm", "run.optimizer.load_state_dict"),
    ("rebuilds_the_optimizer_not_the_schedule", save_run, rebuilds_the_optimizer_not_the_schedule,
     "a new AdamW", "run.optimizer.load_state_dict"),
    ("rebuilds_the_model_without_dropout", save_run, rebuilds_the_model_without_dropout,
     "with dropout [0.0, 0.0]", "run.model.load_state_dict"),
    ("ends_in_eval_mode", save_run, ends_in_eval_mode, "eval mode", "model.eval()"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, save, load, what, hint_text", RESUME_NEW_WRONG,
                         ids=lambda a: a if isinstance(a, str) else "")
def test_resume_rejects_blind_spots(name, save, load, what, hint_text, seed):
    failure = rejected(check_resume, save, load, save_atomically, load_safely, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()
