"""course_lib: the small library behind the training-loops workbook.

Each module opens by naming the lesson that introduces it. The names below are the public ones
that lessons, exercises and tests use. Plots, the live view and the widgets live in their own
modules (`course_lib.plots`, `course_lib.live`, `course_lib.widgets`) so that importing the loop
does not import matplotlib or ipywidgets.
"""

from course_lib.checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint
from course_lib.config import TrainConfig
from course_lib.data import (
    class_counts,
    downsample_class,
    load_digits_splits,
    make_digits_loaders,
    make_loader,
)
from course_lib.distributed import (
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    launch,
    sharded_loader,
)
from course_lib.history import History
from course_lib.loop import (
    STOP,
    NonFiniteLossError,
    RunState,
    StepResult,
    TrainState,
    build_optimizer,
    count_items,
    describe_loop,
    evaluate,
    fit,
    resolve_device,
    train_step,
)
from course_lib.losses import FocalLoss, focal_loss
from course_lib.metrics import (
    accuracy,
    confusion_matrix,
    ema_smooth,
    per_class_accuracy,
    per_class_accuracy_from_confusion,
    precision_recall,
    regression_errors,
)
from course_lib.models import MLP, SmallCNN
from course_lib.schedules import (
    build_scheduler,
    schedule_curve,
    warmup_cosine,
    warmup_cosine_multiplier,
)
from course_lib.recipes import train_digits
from course_lib.seeding import seed_everything

__all__ = [
    "MLP",
    "FocalLoss",
    "History",
    "NonFiniteLossError",
    "RunState",
    "STOP",
    "SmallCNN",
    "StepResult",
    "TrainConfig",
    "TrainState",
    "UnsafeCheckpointError",
    "accuracy",
    "build_optimizer",
    "build_scheduler",
    "class_counts",
    "confusion_matrix",
    "count_items",
    "describe_loop",
    "downsample_class",
    "ema_smooth",
    "evaluate",
    "fit",
    "focal_loss",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "launch",
    "load_checkpoint",
    "load_digits_splits",
    "make_digits_loaders",
    "make_loader",
    "per_class_accuracy",
    "per_class_accuracy_from_confusion",
    "precision_recall",
    "regression_errors",
    "resolve_device",
    "save_checkpoint",
    "schedule_curve",
    "seed_everything",
    "sharded_loader",
    "train_digits",
    "train_step",
    "warmup_cosine",
    "warmup_cosine_multiplier",
]
