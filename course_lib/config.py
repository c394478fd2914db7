"""The run's configuration: one typed dataclass holding every hyperparameter (lesson 01).

The config is saved inside every checkpoint as plain data, so a checkpoint always says how it was
made. Bad values fail here, at construction, with a message naming the field, rather than as a
confusing error hundreds of steps into a run.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from course_lib.schedules import SCHEDULES, WITHOUT_WARMUP

PRECISIONS = ("fp32", "bf16", "fp16")
DIRECTIONS = ("max", "min")


@dataclass
class TrainConfig:
    # Same seed, same run: model initialisation, data order, dropout.
    seed: int = 0
    # Length of the run: `max_steps` optimizer steps when > 0, else `epochs` passes over the data.
    epochs: int = 10
    max_steps: int = 0
    # Training batch; evaluation keeps no activations for backward, so its batch can be larger.
    batch_size: int = 64
    eval_batch_size: int = 256
    # AdamW learning rate and decoupled weight decay (never applied to biases and norm weights).
    lr: float = 1e-3
    weight_decay: float = 0.01
    # Learning-rate schedule, see course_lib.schedules: warmup_cosine, warmup_linear, constant,
    # step, cosine or onecycle (stepped per optimizer step), or plateau (stepped per evaluation).
    schedule: str = "warmup_cosine"
    # Steps of linear warmup (onecycle: of rising LR); step, cosine and plateau take none.
    warmup_steps: int = 0
    # The schedule ends at lr * min_lr_ratio rather than at zero (plateau: never goes below it).
    min_lr_ratio: float = 0.0
    # "step": multiply the LR by decay_factor every decay_every steps (0: every third of the run).
    decay_every: int = 0
    # "step" and "plateau": the factor each decay multiplies the LR by.
    decay_factor: float = 0.1
    # "plateau": evaluations without improvement of `metric` before the LR decays.
    patience: int = 2
    # Largest allowed global gradient norm; 0 turns clipping off (the norm is still logged).
    grad_clip: float = 1.0
    # Micro-batches per optimizer step: an effective batch of batch_size * grad_accum_steps.
    grad_accum_steps: int = 1
    # fp32, bf16 (autocast, no scaler) or fp16 (autocast and a gradient scaler).
    precision: str = "fp32"
    # fp16 only: this many skipped steps in a row means the run is broken, not just rescaling.
    max_consecutive_skips: int = 20
    # Evaluate (and save a checkpoint when out_dir is set) every this many optimizer steps.
    eval_every: int = 50
    # Log a training record every this many optimizer steps; loss is read from the device only then.
    log_every: int = 10
    # Weight of the exponential moving average in the logged `smooth_loss`.
    smoothing: float = 0.9
    # Checkpoints to keep, ranked by `metric` in `metric_direction`; the latest is always kept too.
    keep_best: int = 3
    metric: str = "eval_accuracy"
    metric_direction: str = "max"
    # Where checkpoints and history.jsonl go; None keeps the run in memory only.
    out_dir: str | None = None
    # "auto" picks cuda, then mps, then cpu (with several processes: each rank's own GPU, or cpu).
    device: str = "auto"
    # Several processes only: BatchNorm statistics over every rank's batch (nn.SyncBatchNorm, GPU
    # only). When False, each rank normalises with its own batch, and the running statistics are
    # averaged across the ranks before each evaluation and each checkpoint.
    sync_batchnorm: bool = False

    def __post_init__(self):
        self._check_types()
        self._check_values()

    # ---- validation -------------------------------------------------------------------------

    def _check_types(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = f.type
            if f.name == "out_dir":
                if value is not None and not isinstance(value, (str, Path)):
                    raise TypeError(f"TrainConfig.out_dir must be a path or None, got {value!r}")
                if isinstance(value, Path):
                    self.out_dir = str(value)
                continue
            if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))  # lr = 1 in a TOML file means 1.0
                continue
            if expected == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"TrainConfig.{f.name} must be bool (true or false), got "
                                    f"{type(value).__name__} {value!r}")
                continue
            python_type = {"int": int, "float": float, "str": str}[expected]
            if isinstance(value, bool) or not isinstance(value, python_type):
                raise TypeError(
                    f"TrainConfig.{f.name} must be {expected}, got {type(value).__name__} {value!r}"
                )

    def _check_values(self):
        def fail(name, why):
            raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r}: {why}")

        for name in ("epochs", "max_steps", "warmup_steps", "decay_every", "patience"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            fail("epochs", "set epochs or max_steps to a positive number")
        for name in ("batch_size", "eval_batch_size", "grad_accum_steps", "eval_every", "log_every",
                     "max_consecutive_skips"):
            if getattr(self, name) < 1:
                fail(name, "must be >= 1")
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "smoothing", "decay_factor"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                fail(name, "must be a finite number >= 0")
        if self.lr == 0:
            fail("lr", "must be > 0")
        if self.min_lr_ratio > 1:
            fail("min_lr_ratio", "must be between 0 and 1")
        if self.smoothing >= 1:
            fail("smoothing", "must be in [0, 1)")
        if self.keep_best < 0:
            fail("keep_best", "must be >= 0")
        if self.precision not in PRECISIONS:
            fail("precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.schedule in WITHOUT_WARMUP and self.warmup_steps > 0:
            fail("warmup_steps", f"the {self.schedule!r} schedule has no warmup; set it to 0 "
                 "or choose warmup_cosine, warmup_linear or onecycle")
        if not 0 < self.decay_factor < 1:
            fail("decay_factor", "must be between 0 and 1 (exclusive)")
        if self.metric_direction not in DIRECTIONS:
            fail("metric_direction", "must be 'max' or 'min'")
        if not self.metric.startswith("eval_"):
            fail("metric", "must name an evaluation record key, such as eval_accuracy or eval_loss")
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            fail("device", "must be auto, cpu, cuda, cuda:N or mps")

    # ---- plain data in and out --------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise KeyError(
                f"unknown TrainConfig key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys are: {', '.join(cls.field_names())}"
            )
        return cls(**values)

    @classmethod
    def from_toml(cls, path) -> "TrainConfig":
        with open(path, "rb") as file:
            values = tomllib.load(file)
        # Allow either a flat file or one [train] table.
        if set(values) == {"train"} and isinstance(values["train"], dict):
            values = values["train"]
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (and validated again)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_toml(self) -> str:
        """The config as TOML text (None values are left out: TOML has no null).

        A real TOML writer escapes what needs escaping, such as the backslashes of a Windows path.
        """
        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if v is not None})
