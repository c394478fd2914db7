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

Seeds: the normal run uses 2 seeds per case; `CHECK_SEEDS=16` runs 16. Observed with 16 seeds
(seeds 0-15, 519 test cases in 49 s on a shared two-core machine): the reference answers pass all
three checks on every seed, and every wrong answer below fails its check on every seed, with the
failure and the hint asserted here.
Corpus sizes: (a) check_safe_files 10, (b) check_keep_best 10, (c) check_resume 10.
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
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_safely(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def make_keep_best(order="metric", keep=lambda n: n, direction_used=None, ties="earlier",
                   memory=None, content="full"):
    """The reference keep_best by default; each argument, changed, makes one realistic mistake."""

    def keep_best(ckpt_dir, step, metric, state, n, direction="max"):
        ckpt_dir = Path(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        saved = {"step": step, "metric": metric, "state": state}
        if content == "no_state":
            saved = {"step": step, "metric": metric}
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
    (check_keep_best, (make_keep_best(),)),
    (check_resume, (save_run, load_run)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check, answers", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_check_passes_the_reference(check, answers, seed, capsys):
    check(*answers, seed=seed)
    assert capsys.readouterr().out.startswith("✓ ")


@pytest.mark.parametrize("check, answers", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_check_says_not_implemented_yet_for_a_stub(check, answers):
    with pytest.raises(NotImplementedYet, match="is not implemented yet"):
        check(*[stub] * len(answers))


def test_a_stub_in_the_second_function_is_named_too():
    with pytest.raises(NotImplementedYet, match="`load_safely` is not implemented yet"):
        check_safe_files(save_atomically, stub)
    with pytest.raises(NotImplementedYet, match="`load_run` is not implemented yet"):
        check_resume(save_run, stub)


def test_every_question_has_a_hint(capsys):
    for question in "abc":
        hint(question)
        assert capsys.readouterr().out.startswith(f"💡 ({question})")


def test_a_check_restores_the_thread_count():
    threads = torch.get_num_threads()
    check_keep_best(make_keep_best())
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
    failure = rejected(check_keep_best, answer, seed=seed)
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
    failure = rejected(check_resume, save, load, seed=seed)
    assert what in failure.what and hint_text in failure.hint, failure.line()
