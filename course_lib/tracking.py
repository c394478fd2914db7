"""Experiment tracking: one row per run in a CSV table, and optionally TensorBoard (lesson 07).

A run that is not written down might as well not have happened. `track_run` appends one row per
run to a tracking table, a plain CSV file that any spreadsheet opens: when it ran, which study it
belongs to and which trial of that study it is, where its files and its config are, the notes,
the best checkpoint's step and validation metric (read from the run's own folder), the exact
command that reproduces it, and the version of the code: the git commit and whether the working
tree had uncommitted changes (a run made from a dirty tree cannot be reproduced from the commit
alone). Earlier rows are never rewritten; the csv module does the quoting.

`TensorBoardLogger` is a hook for `fit(..., hooks=[...])` that sends the run's records to
TensorBoard event files. TensorBoard is an optional extra (`pip install tensorboard`, or
`pip install -e ".[tensorboard]"`); nothing else in course_lib needs it.
"""

from __future__ import annotations

import csv
import math
import numbers
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from course_lib.checkpoint import load_checkpoint, rank_checkpoints
from course_lib.history import History

COLUMNS = ("timestamp", "study", "trial", "out_dir", "config", "notes", "metric", "best_step",
           "best_value", "command", "commit", "dirty")
# What the code-version columns hold where there is no git repository (or no git).
NOT_A_REPOSITORY = "not a git repository"


@dataclass(frozen=True)
class CodeVersion:
    """The git commit of the code and whether the working tree differs from it."""

    commit: str  # the full hash, or NOT_A_REPOSITORY
    dirty: bool | None  # uncommitted changes to tracked or untracked files; None without git


def _git(args: list[str], cwd) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):  # no git installed, or a hung file system
        return None
    return result.stdout if result.returncode == 0 else None


def code_version(path=".") -> CodeVersion:
    """The commit checked out where `path` lies, and whether `git status --porcelain` lists changes.

    Ignored files (outputs, virtual environments) do not count: git does not list them.
    """
    commit = _git(["rev-parse", "HEAD"], path)
    if commit is None:
        return CodeVersion(NOT_A_REPOSITORY, None)
    status = _git(["status", "--porcelain"], path)
    return CodeVersion(commit.strip(), None if status is None else bool(status.strip()))


def best_checkpoint(out_dir) -> dict | None:
    """The best evaluation of a `fit` run, read from its folder; None before any evaluation.

    Returns {"step", "value", "metric", "direction", "path"}: the first of the kept best
    checkpoints in `checkpoints/latest.pt` (its `best` list is ranked, best first, ties to the
    earlier step), with the path of that checkpoint file. When the run kept none (keep_best=0),
    the best evaluation record of the saved history, with path None.
    """
    latest = Path(out_dir) / "checkpoints" / "latest.pt"
    if not latest.exists():
        raise FileNotFoundError(f"{latest} does not exist: is {out_dir} the out_dir of a fit run?")
    saved = load_checkpoint(latest)
    metric, direction = saved["config"]["metric"], saved["config"]["metric_direction"]
    if saved["best"]:
        best = saved["best"][0]
        path = str(latest.parent / best["path"])
    else:
        entries = [{"path": None, "step": r["step"], "metric": float(r[metric])}
                   for r in History(saved["history"]).eval if metric in r]
        if not entries:
            return None
        best = rank_checkpoints(entries, 1, direction)[0][0]
        path = None
    return {"step": best["step"], "value": best["metric"], "metric": metric,
            "direction": direction, "path": path}


def read_table(table) -> list[dict]:
    """The rows of a tracking table, as dicts of strings (an absent file has none)."""
    table = Path(table)
    if not table.exists():
        return []
    with open(table, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def track_run(table, *, study: str, out_dir, config=None, notes: str = "", command=None,
              repo=".", when: datetime | None = None) -> dict:
    """Append one row for the run in `out_dir` to the CSV `table` (created with a header); return it.

    `command` is the command line that reproduces the run, as a list of arguments (shell-quoted
    here with shlex.join) or a string; by default `sys.argv`, which is right when the run is a
    script, and says nothing useful inside a notebook kernel. `repo` is where the code's git
    version is read. `trial` numbers the runs of the same study in the table, from 1.
    """
    table = Path(table)
    if command is None:
        command = [sys.executable, *sys.argv]
    if not isinstance(command, str):
        command = shlex.join(str(part) for part in command)
    best = best_checkpoint(out_dir)
    version = code_version(repo)
    earlier = read_table(table)
    if earlier and list(earlier[0]) != list(COLUMNS):
        raise ValueError(f"{table} has the columns {list(earlier[0])}, not those of a tracking "
                         f"table {list(COLUMNS)}; choose another file")
    row = {
        "timestamp": (when or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "study": study,
        "trial": 1 + sum(r["study"] == study for r in earlier),
        "out_dir": str(out_dir),
        "config": "" if config is None else str(config),
        "notes": notes,
        "metric": "" if best is None else best["metric"],
        "best_step": "" if best is None else best["step"],
        "best_value": "" if best is None else repr(best["value"]),
        "command": command,
        "commit": version.commit,
        "dirty": "" if version.dirty is None else str(version.dirty).lower(),
    }
    new_file = not table.exists() or table.stat().st_size == 0
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "a", newline="", encoding="utf-8") as file:  # append: earlier rows stay as written
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    return {key: str(value) for key, value in row.items()}


def format_table(rows: list[dict], columns=None, width: int = 40) -> str:
    """Rows as aligned plain text (cells longer than `width` are cut with an ellipsis)."""
    columns = list(columns or (rows[0] if rows else COLUMNS))

    def cell(value) -> str:
        text = str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(c) for c in columns]] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- TensorBoard -----------------------------------------------------------------------------------


class TensorBoardLogger:
    """A `fit` hook that writes every new record of the run's History to TensorBoard, once.

    Each numeric value of a record becomes a scalar under its key at the record's step (training
    keys under `train/`, evaluation keys under `eval/`); a list, such as the per-class accuracy,
    becomes one scalar per entry (`eval/eval_per_class_accuracy/3`). Call `close()` after the run,
    or use the logger as a context manager. Open the result with `tensorboard --logdir LOG_DIR`.
    """

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: pip install tensorboard "
                '(or pip install -e ".[tensorboard]" in the workbook\'s checkout)'
            ) from error
        self.log_dir = str(log_dir)
        self.writer = SummaryWriter(log_dir=self.log_dir)
        self.written = 0  # records of the history already sent

    def __call__(self, state) -> None:
        records = state.history.records
        for record in records[self.written:]:
            self.write_record(record)
        self.written = len(records)
        return None

    def write_record(self, record: dict) -> None:
        group = "eval" if "eval_loss" in record else "train"
        step = int(record["step"])
        for key, value in record.items():
            if key == "step":
                continue
            if isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    if _is_finite_number(item):
                        self.writer.add_scalar(f"{group}/{key}/{index}", float(item), step)
            elif _is_finite_number(value):
                self.writer.add_scalar(f"{group}/{key}", float(value), step)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
