"""Saving and loading checkpoints safely (lesson 07; used by the loop of lesson 01).

Two rules. Write atomically: the bytes go to a temporary file in the same folder, which is then
renamed over the target, so a crash mid-save leaves the previous checkpoint whole. Load with
`weights_only=True`: unpickling an arbitrary file can run any code it names, so only tensors and
plain containers are accepted.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import torch


class UnsafeCheckpointError(RuntimeError):
    """The file holds objects that plain-data loading refuses (it could run code when unpickled)."""


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` to `path` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(temporary, path)  # atomic on POSIX and Windows
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`, refusing anything but plain data."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains objects other than tensors and plain data, and "
            f"unpickling them could run code. Only load it with weights_only=False if you trust "
            f"whoever made it. ({str(error).splitlines()[0]})"
        ) from None


def rank_checkpoints(entries: list[dict], keep: int, direction: str) -> tuple[list[dict], list[dict]]:
    """Split checkpoint entries ({"path", "step", "metric"}) into the `keep` best and the rest.

    Ties go to the earlier step: a later checkpoint must be strictly better to displace it.
    """
    sign = -1.0 if direction == "max" else 1.0

    def rank(entry):
        metric = entry["metric"]
        broken = math.isnan(metric)  # a NaN metric ranks below every real one
        return (broken, 0.0 if broken else sign * metric, entry["step"])

    ordered = sorted(entries, key=rank)
    return ordered[:keep], ordered[keep:]
