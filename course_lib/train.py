"""Train the digits CNN from a terminal, alone or under torchrun, and track the run (lessons 07, 08).

    python -m course_lib.train --steps 200
    torchrun --standalone --nproc_per_node=2 -m course_lib.train --steps 200
    python -m course_lib.train --config lr-3e-3.toml --out-dir runs/lr-3e-3 \\
        --study learning-rate --table runs/tracking.csv --notes "the default rate"

`examples/train_digits.py` is the same program as a script. The training itself is
`course_lib.recipes.train_digits`. With `--table`, rank 0 appends the run to a tracking table
(`course_lib.tracking.track_run`) with the command that reproduces it: this very command line,
and the torchrun launch when there was one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from course_lib.config import TrainConfig
from course_lib.distributed import close_distributed, init_distributed, is_main_process
from course_lib.recipes import train_digits
from course_lib.tracking import track_run

# How a tracking row names this program unless the caller says otherwise.
PROGRAM = ["python", "-m", "course_lib.train"]
CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = 200


def parse_args(argv: list[str], program: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=" ".join(program),
                                     description="Train the digits CNN, alone or under torchrun.")
    parser.add_argument("--config", help="a TOML file of TrainConfig fields")
    parser.add_argument("--steps", type=int,
                        help=f"optimizer steps (default: the config's max_steps, else {DEFAULT_STEPS})")
    parser.add_argument("--out-dir", help="where rank 0 writes history.jsonl and checkpoints")
    parser.add_argument("--table", help="a tracking table (CSV) to append this run to")
    parser.add_argument("--study", help="the study the run belongs to (with --table)")
    parser.add_argument("--notes", default="", help="why this run exists (with --table)")
    args = parser.parse_args(argv)
    if args.table and not (args.study and args.out_dir):
        parser.error("--table needs --study and --out-dir (the best checkpoint is read from it)")
    return args


def launch_prefix(program: list[str]) -> list[str]:
    """The command that started this process: `program`, or torchrun running it on every rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or "TORCHELASTIC_RUN_ID" not in os.environ:  # not started by torchrun
        return list(program)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torchrun = ["torchrun", f"--nproc_per_node={per_node}"]
    if world == per_node:
        torchrun.insert(1, "--standalone")
    else:  # several machines: the rendezvous options are the user's own
        torchrun.append(f"--nnodes={world // per_node}")
    # torchrun runs a module with -m and a script by its path.
    return [*torchrun, *(program[1:] if program[0] == "python" else program)]


def main(argv: list[str] | None = None, program: list[str] = PROGRAM) -> dict:
    """Train as the arguments say; return the summary of `train_digits`, with the tracking row
    under "tracked" when the run was added to a table (on rank 0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, program)
    cfg = TrainConfig.from_toml(args.config) if args.config else TrainConfig(lr=3e-3, eval_every=50)
    steps = args.steps or cfg.max_steps or DEFAULT_STEPS
    cfg = cfg.replace(max_steps=steps, out_dir=args.out_dir or cfg.out_dir)
    init_distributed()  # torchrun set RANK and WORLD_SIZE; alone, nothing happens
    result = train_digits(cfg)
    if is_main_process() and args.table:
        # The code that trained is this checkout of course_lib, wherever the command ran from.
        result["tracked"] = track_run(args.table, study=args.study, out_dir=cfg.out_dir,
                                      config=args.config, notes=args.notes, repo=CHECKOUT,
                                      command=[*launch_prefix(program), *argv])
    return result


def run_and_report(program: list[str] = PROGRAM) -> None:
    """`main` for a terminal: rank 0 prints the result, then the process group is closed."""
    result = main(program=program)
    if is_main_process():
        print(f"{result['world_size']} process(es), {result['steps']} steps in "
              f"{result['elapsed_s']:.1f} s: eval accuracy {result['eval_accuracy']:.4f}, "
              f"eval loss {result['eval_loss']:.4f}, weights checksum "
              f"{result['weights_checksum']:.6f}")
        if "tracked" in result:
            row = result["tracked"]
            print(f"added as trial {row['trial']} of the study {row['study']!r} to the tracking table")
    close_distributed()


if __name__ == "__main__":
    run_and_report()
