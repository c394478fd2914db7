"""How long does the same training take on one process and on two?

Runs `examples/train_digits.py`'s training three ways, with the same total work: one process with
batches of 2B examples, and two processes with batches of B each, started once by
`course_lib.distributed.launch` and once by `torchrun --standalone --nproc_per_node=2`. Each run is
timed from the outside (start-up included: interpreters, imports, the process group) and by the
run itself (`fit` only, start-up left out). Runs alternate, and the fastest of each kind is
reported: noise only ever adds time. It also checks that launch and torchrun end with the same
weights (their checksums agree).

    OMP_NUM_THREADS=1 python benchmarks/scaling_out.py [--steps 300] [--batch-size 32] [--repeats 3]

Two processes can only be faster when the machine has two cores free for them; on a shared or
two-core machine the ratio mostly measures the cost of the extra process and the all-reduces.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course_lib import TrainConfig, launch, train_digits

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_digits.py"


def run_script(command: list[str], config: Path, steps: int) -> tuple[float, float, str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    finished = subprocess.run([*command, str(SCRIPT), "--config", str(config), "--steps", str(steps)],
                              env=environment, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    inside = float(re.search(r"steps in ([0-9.]+) s", finished.stdout).group(1))
    checksum = re.search(r"checksum (\S+)", finished.stdout).group(1)
    return wall, inside, checksum


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32, help="per process, with two")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = dict(lr=3e-3, eval_every=100, log_every=10, max_steps=args.steps)
    one = TrainConfig(**base, batch_size=2 * args.batch_size)
    two = TrainConfig(**base, batch_size=args.batch_size)
    times = {"one process": [], "launch, 2": [], "torchrun, 2": []}
    checksums = {}
    with tempfile.TemporaryDirectory() as folder:
        configs = {}
        for name, cfg in (("one", one), ("two", two)):
            configs[name] = Path(folder) / f"{name}.toml"
            configs[name].write_text(cfg.to_toml())
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2"]
        for _ in range(args.repeats):
            wall, inside, _ = run_script([sys.executable], configs["one"], args.steps)
            times["one process"].append((wall, inside))
            start = time.perf_counter()
            results = launch(train_digits, 2, two)
            wall = time.perf_counter() - start
            times["launch, 2"].append((wall, max(r["elapsed_s"] for r in results)))
            checksums["launch"] = f"{results[0]['weights_checksum']:.6f}"
            wall, inside, checksums["torchrun"] = run_script(torchrun, configs["two"], args.steps)
            times["torchrun, 2"].append((wall, inside))
    print(f"{args.steps} steps; one process: batches of {2 * args.batch_size}; two: "
          f"{args.batch_size} each; {os.cpu_count()} CPU cores; fastest of {args.repeats}")
    reference = min(w for w, _ in times["one process"]), min(i for _, i in times["one process"])
    print(f"{'':<14}{'wall s':>8}{'ratio':>7}{'fit s':>8}{'ratio':>7}")
    for name, pairs in times.items():
        wall, inside = min(w for w, _ in pairs), min(i for _, i in pairs)
        print(f"{name:<14}{wall:8.2f}{wall / reference[0]:7.2f}{inside:8.2f}"
              f"{inside / reference[1]:7.2f}")
    print(f"weights checksum: launch {checksums['launch']}, torchrun {checksums['torchrun']}"
          f" ({'same' if checksums['launch'] == checksums['torchrun'] else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
