"""Experiment tracking (lesson 07): the tracking table, the code version, TensorBoard, and the
demonstration of a process killed half-way through a save."""

from __future__ import annotations

import csv
import math
import shlex
import subprocess
from datetime import datetime, timezone

import pytest
import torch

from course_lib import MLP, TrainConfig, fit, make_digits_loaders, seed_everything
from course_lib.crashes import FIRST_STEP, kill_during_save
from course_lib.tracking import (
    COLUMNS,
    NOT_A_REPOSITORY,
    TensorBoardLogger,
    best_checkpoint,
    code_version,
    format_table,
    read_table,
    track_run,
)
from course_lib.train import launch_prefix
from course_lib.train import main as train_from_command_line


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
                           *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    (path / "train.py").write_text("print('v1')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    return path


def small_run(out_dir, **changes):
    values = dict(seed=0, max_steps=24, batch_size=64, lr=0.05, schedule="constant", eval_every=4,
                  log_every=2, keep_best=2, device="cpu", out_dir=str(out_dir))
    cfg = TrainConfig(**{**values, **changes})
    seed_everything(cfg.seed)
    history = fit(MLP(hidden=32), *make_digits_loaders(cfg), cfg)
    return cfg, history


# ---- the code version ------------------------------------------------------------------------------


def test_code_version_names_the_commit_and_a_clean_tree(repo):
    version = code_version(repo)
    assert version.commit == git(repo, "rev-parse", "HEAD").strip()
    assert len(version.commit) == 40 and version.dirty is False


def test_the_dirty_flag_flips_when_a_tracked_file_changes_and_back_after_a_commit(repo):
    (repo / "train.py").write_text("print('v2')\n")
    first = code_version(repo)
    assert first.dirty is True
    git(repo, "commit", "-q", "-am", "second")
    second = code_version(repo)
    assert second.dirty is False and second.commit != first.commit


def test_an_untracked_file_makes_the_tree_dirty_and_an_ignored_one_does_not(repo):
    (repo / ".gitignore").write_text("runs/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore runs")
    (repo / "runs").mkdir()
    (repo / "runs" / "out.txt").write_text("output")
    assert code_version(repo).dirty is False
    (repo / "notes.py").write_text("x = 1\n")
    assert code_version(repo).dirty is True


def test_outside_a_repository_the_version_says_so(tmp_path):
    version = code_version(tmp_path)
    assert version.commit == NOT_A_REPOSITORY and version.dirty is None


# ---- the best checkpoint of a run -------------------------------------------------------------------


def test_best_checkpoint_is_the_best_evaluation_of_the_run(tmp_path):
    cfg, history = small_run(tmp_path / "run")
    best = best_checkpoint(cfg.out_dir)
    top = max(history.eval, key=lambda r: (r["eval_accuracy"], -r["step"]))
    assert (best["step"], best["value"]) == (top["step"], top["eval_accuracy"])
    assert best["metric"] == "eval_accuracy" and best["direction"] == "max"
    assert torch.load(best["path"], weights_only=True)["step"] == top["step"]


def test_without_kept_checkpoints_the_best_comes_from_the_history(tmp_path):
    cfg, history = small_run(tmp_path / "run", keep_best=0, metric="eval_loss",
                             metric_direction="min")
    best = best_checkpoint(cfg.out_dir)
    top = min(history.eval, key=lambda r: (r["eval_loss"], r["step"]))
    assert (best["step"], best["value"], best["path"]) == (top["step"], top["eval_loss"], None)


def test_best_checkpoint_of_a_folder_without_a_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="out_dir of a fit run"):
        best_checkpoint(tmp_path)


# ---- the table ------------------------------------------------------------------------------------------


def test_rows_are_appended_with_one_header_and_earlier_rows_stay_byte_for_byte(tmp_path, repo):
    cfg, _ = small_run(tmp_path / "run")
    table = tmp_path / "tracking.csv"
    track_run(table, study="lr", out_dir=cfg.out_dir, command=["python", "train.py"], repo=repo)
    before = table.read_bytes()
    track_run(table, study="lr", out_dir=cfg.out_dir, command=["python", "train.py"], repo=repo)
    after = table.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    with open(table, newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == list(COLUMNS) and len(lines) == 3


def test_a_row_holds_the_run_the_command_and_the_code_version(tmp_path, repo):
    cfg, history = small_run(tmp_path / "run")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    command = ["python", "-m", "course_lib.train", "--notes", "lr 0.05, it's high"]
    row = track_run(tmp_path / "t.csv", study="lr", out_dir=cfg.out_dir, config="cfg.toml",
                    notes="first try", command=command, repo=repo, when=when)
    assert read_table(tmp_path / "t.csv") == [row]
    top = max(history.eval, key=lambda r: (r["eval_accuracy"], -r["step"]))
    assert row["timestamp"] == "2026-01-02T03:04:05+00:00"
    assert (row["study"], row["trial"], row["config"], row["notes"]) == ("lr", "1", "cfg.toml", "first try")
    assert (row["best_step"], float(row["best_value"])) == (str(top["step"]), top["eval_accuracy"])
    assert shlex.split(row["command"]) == command
    assert row["commit"] == git(repo, "rev-parse", "HEAD").strip() and row["dirty"] == "false"


def test_awkward_text_round_trips_through_the_csv_quoting(tmp_path, repo):
    cfg, _ = small_run(tmp_path / "run")
    notes = 'a comma, a "quote"\nand a second line'
    track_run(tmp_path / "t.csv", study="s,1", out_dir=cfg.out_dir, notes=notes, command="x", repo=repo)
    row = read_table(tmp_path / "t.csv")[0]
    assert (row["study"], row["notes"]) == ("s,1", notes)


def test_trials_are_counted_per_study_and_the_dirty_flag_is_recorded(tmp_path, repo):
    cfg, _ = small_run(tmp_path / "run")
    table = tmp_path / "t.csv"
    for study in ("a", "b", "a"):
        track_run(table, study=study, out_dir=cfg.out_dir, command="x", repo=repo)
    (repo / "train.py").write_text("print('changed')\n")
    track_run(table, study="a", out_dir=cfg.out_dir, command="x", repo=repo)
    rows = read_table(table)
    assert [(r["study"], r["trial"]) for r in rows] == [("a", "1"), ("b", "1"), ("a", "2"), ("a", "3")]
    assert [r["dirty"] for r in rows] == ["false", "false", "false", "true"]


def test_outside_a_repository_the_row_says_so(tmp_path):
    cfg, _ = small_run(tmp_path / "run")
    row = track_run(tmp_path / "t.csv", study="s", out_dir=cfg.out_dir, command="x", repo=tmp_path)
    assert (row["commit"], row["dirty"]) == (NOT_A_REPOSITORY, "")


def test_a_table_with_other_columns_is_refused(tmp_path, repo):
    cfg, _ = small_run(tmp_path / "run")
    (tmp_path / "other.csv").write_text("name,score\nx,1\n")
    with pytest.raises(ValueError, match="not those of a tracking table"):
        track_run(tmp_path / "other.csv", study="s", out_dir=cfg.out_dir, command="x", repo=repo)


def test_format_table_aligns_the_columns_and_cuts_long_cells():
    text = format_table([{"study": "a", "notes": "x" * 50}, {"study": "bb", "notes": "y"}], width=10)
    lines = text.splitlines()
    assert lines[0].split() == ["study", "notes"] and set(lines[1]) <= {"-", " "}
    assert lines[2] == "a      xxxxxxxxx…" and lines[3] == "bb     y"


def test_the_command_line_trains_from_a_config_file_and_tracks_its_own_command(tmp_path, repo):
    config = tmp_path / "cfg.toml"
    config.write_text('seed = 1\nmax_steps = 12\neval_every = 4\nlr = 0.01\ndevice = "cpu"\n')
    argv = ["--config", str(config), "--out-dir", str(tmp_path / "run"), "--study", "demo",
            "--table", str(tmp_path / "t.csv"), "--notes", "a small run"]
    row = train_from_command_line(argv)["tracked"]
    assert shlex.split(row["command"]) == ["python", "-m", "course_lib.train", *argv]
    assert row["config"] == str(config) and row["best_step"] in {"4", "8", "12"}
    assert TrainConfig.from_toml(tmp_path / "run" / "config.toml").seed == 1


# ---- TensorBoard ------------------------------------------------------------------------------------


def test_the_tensorboard_hook_writes_every_record_once_with_its_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    with TensorBoardLogger(log_dir) as logger:
        cfg = TrainConfig(seed=0, max_steps=10, batch_size=64, eval_every=5, log_every=2, device="cpu")
        seed_everything(0)
        history = fit(MLP(hidden=32), *make_digits_loaders(cfg), cfg, hooks=[logger])
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    for group, records in (("train", history.train), ("eval", history.eval)):
        for key in ("loss", "learning_rate", "grad_norm") if group == "train" else ("eval_loss", "eval_accuracy"):
            scalars = events.Scalars(f"{group}/{key}")
            assert [s.step for s in scalars] == [r["step"] for r in records], key
            for scalar, record in zip(scalars, records):
                assert math.isclose(scalar.value, record[key], rel_tol=1e-6), key
    per_class = events.Scalars("eval/eval_per_class_accuracy/3")
    assert [s.value for s in per_class] == pytest.approx([r["eval_per_class_accuracy"][3]
                                                          for r in history.eval])


def test_without_tensorboard_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger("unused")


# ---- a process killed half-way through a save ---------------------------------------------------------


def test_an_atomic_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path):
    report = kill_during_save(tmp_path / "atomic", atomic=True)
    assert report.signal == 9
    assert report.loads and report.step == FIRST_STEP
    names = [name for name, _ in report.files]
    assert "latest.pt" in names and len(names) == 2  # and the temporary file the rename never took
    assert next(name for name in names if name != "latest.pt").startswith(".latest.pt.tmp")


def test_a_plain_save_killed_half_way_destroys_the_previous_checkpoint(tmp_path):
    report = kill_during_save(tmp_path / "plain", atomic=False)
    assert report.signal == 9
    assert not report.loads and report.step is None and report.error
    assert report.files == [("latest.pt", 0)]


def test_the_tracked_command_run_again_reproduces_the_result(tmp_path, repo):
    import os
    import sys
    from pathlib import Path

    config = tmp_path / "cfg.toml"
    config.write_text('seed = 2\nmax_steps = 16\neval_every = 4\nlr = 0.01\ndevice = "cpu"\n')
    argv = ["--config", str(config), "--out-dir", str(tmp_path / "first"), "--study", "again",
            "--table", str(tmp_path / "t.csv")]
    first = train_from_command_line(argv)["tracked"]
    command = shlex.split(first["command"])
    assert command[:3] == ["python", "-m", "course_lib.train"]
    command[command.index("--out-dir") + 1] = str(tmp_path / "second")  # a fit run never overwrites another
    checkout = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, *command[1:]], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": checkout, "OMP_NUM_THREADS": "1"})
    second = read_table(tmp_path / "t.csv")[1]
    assert (second["trial"], second["best_step"], second["best_value"]) == \
        ("2", first["best_step"], first["best_value"])


def test_a_run_under_torchrun_records_the_torchrun_command(monkeypatch):
    program = ["python", "-m", "course_lib.train"]
    assert launch_prefix(program) == program  # a plain process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert launch_prefix(program) == ["torchrun", "--standalone", "--nproc_per_node=2", "-m",
                                      "course_lib.train"]
    assert launch_prefix(["python", "examples/train_digits.py"]) == [
        "torchrun", "--standalone", "--nproc_per_node=2", "examples/train_digits.py"]
    monkeypatch.setenv("WORLD_SIZE", "8")  # two machines of four processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launch_prefix(program)[:3] == ["torchrun", "--nproc_per_node=4", "--nnodes=2"]


def test_the_command_line_refuses_a_table_without_a_study_or_out_dir(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_from_command_line(["--steps", "2", "--table", str(tmp_path / "t.csv")])
    assert "--table needs --study and --out-dir" in capsys.readouterr().err
