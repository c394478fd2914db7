"""The record of a training run (introduced in lesson 01, read in lesson 06).

A `History` is a list of plain dicts, one per logging or evaluation event, using the same keys as
Hugging Face Trainer's log so that a learner who can read one can read the other:

training records  {"step", "epoch", "loss", "smooth_loss", "learning_rate", "grad_norm",
                   "samples_per_second", "skipped_steps"}
evaluation records {"step", "epoch", "eval_loss", "eval_accuracy", "eval_per_class_accuracy",
                   "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}

It is saved as JSON lines (one record a line), which survives a crash half-way through a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# Wall-clock measurements differ between two otherwise identical runs; everything else must not.
TIMING_KEYS = frozenset(
    {"samples_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
)


def _to_json_value(value):
    # JSON has no NaN; a class with no examples has NaN accuracy, so store it as null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_to_json_value(v) for v in value]
    return value


def _from_json_value(value):
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_from_json_value(v) for v in value]
    return value


@dataclass
class History:
    """Every logged record of a run, in order."""

    records: list[dict] = field(default_factory=list)

    def append(self, record: dict) -> None:
        self.records.append(dict(record))

    @property
    def train(self) -> list[dict]:
        """The training records (those with a "loss" key)."""
        return [r for r in self.records if "loss" in r]

    @property
    def eval(self) -> list[dict]:
        """The evaluation records (those with an "eval_loss" key)."""
        return [r for r in self.records if "eval_loss" in r]

    def series(self, key: str) -> tuple[list[int], list]:
        """Steps and values of every record holding `key`, ready to plot."""
        rows = [r for r in self.records if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def without_timing(self) -> list[dict]:
        """The records minus wall-clock fields: what two runs with the same seed must share."""
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    # ---- JSON lines -------------------------------------------------------------------------

    @staticmethod
    def record_to_line(record: dict) -> str:
        return json.dumps({k: _to_json_value(v) for k, v in record.items()})

    def to_jsonl(self, path) -> None:
        Path(path).write_text("".join(self.record_to_line(r) + "\n" for r in self.records))

    @classmethod
    def from_jsonl(cls, path) -> "History":
        records = []
        for line in Path(path).read_text().splitlines():
            if line.strip():
                records.append({k: _from_json_value(v) for k, v in json.loads(line).items()})
        return cls(records)
