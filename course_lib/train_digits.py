"""Train the digits MLP from a config file and add the run to a tracking table (lesson 07).

    python -m course_lib.train_digits --config lr-3e-3.toml --out-dir runs/lr-3e-3 \\
        --study learning-rate --notes "the default rate" --table runs/tracking.csv

The config file holds `TrainConfig` fields (a flat TOML file or one [train] table); `--out-dir`
overrides its out_dir. The tracking row records this very command line, so running it again
reproduces the run (in a new out_dir, since a fit run never overwrites another).
"""

from __future__ import annotations

import argparse
import sys

from course_lib.config import TrainConfig
from course_lib.data import make_digits_loaders
from course_lib.loop import fit
from course_lib.models import MLP
from course_lib.seeding import seed_everything
from course_lib.tracking import track_run

# How the tracking table names the program: the module, run with the workbook's interpreter.
PROGRAM = ["python", "-m", "course_lib.train_digits"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=" ".join(PROGRAM), description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a TOML file of TrainConfig fields")
    parser.add_argument("--out-dir", required=True, help="the run's folder (must not hold a run)")
    parser.add_argument("--study", required=True, help="the study this run belongs to")
    parser.add_argument("--table", required=True, help="the tracking table (CSV) to append to")
    parser.add_argument("--notes", default="", help="why this run exists")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout of the MLP")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, track, and return the tracking row."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cfg = TrainConfig.from_toml(args.config).replace(out_dir=args.out_dir)
    seed_everything(cfg.seed)
    train_loader, val_loader = make_digits_loaders(cfg)
    model = MLP(hidden=args.hidden, dropout=args.dropout)
    fit(model, train_loader, val_loader, cfg)
    return track_run(args.table, study=args.study, out_dir=args.out_dir, config=args.config,
                     notes=args.notes, command=[*PROGRAM, *argv])


if __name__ == "__main__":
    row = main()
    print(f"trial {row['trial']} of {row['study']}: best {row['metric']} {row['best_value']} "
          f"at step {row['best_step']}")
