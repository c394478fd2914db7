"""Train the digits CNN alone or on several processes: the same script, unchanged.

    python examples/train_digits.py                                      # one process
    torchrun --standalone --nproc_per_node=2 examples/train_digits.py    # two processes

Under torchrun each process trains on its own share of the training set (batch_size examples per
process and step), gradients are averaged across the processes at every optimizer step, rank 0
alone writes to --out-dir, and every rank ends with the same weights. See course_lib.recipes.
"""

import argparse

from course_lib import TrainConfig
from course_lib.distributed import close_distributed, init_distributed, is_main_process
from course_lib.recipes import train_digits


def main():
    parser = argparse.ArgumentParser(description="Train the digits CNN, alone or under torchrun.")
    parser.add_argument("--config", help="a TOML file of TrainConfig fields")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--out-dir", help="where rank 0 writes history.jsonl and checkpoints")
    args = parser.parse_args()

    cfg = TrainConfig.from_toml(args.config) if args.config else TrainConfig(lr=3e-3, eval_every=50)
    cfg = cfg.replace(max_steps=args.steps, out_dir=args.out_dir)
    init_distributed()  # torchrun set RANK and WORLD_SIZE; alone, nothing happens
    result = train_digits(cfg)
    if is_main_process():
        print(f"{result['world_size']} process(es), {result['steps']} steps in "
              f"{result['elapsed_s']:.1f} s: eval accuracy {result['eval_accuracy']:.4f}, "
              f"eval loss {result['eval_loss']:.4f}, weights checksum "
              f"{result['weights_checksum']:.6f}")
    close_distributed()


if __name__ == "__main__":
    main()
