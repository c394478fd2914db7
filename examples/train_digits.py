"""Train the digits CNN alone or on several processes: the same script, unchanged.

    python examples/train_digits.py                                      # one process
    torchrun --standalone --nproc_per_node=2 examples/train_digits.py    # two processes
    python examples/train_digits.py --config my.toml --out-dir runs/a --study lr --table runs/t.csv

Under torchrun each process trains on its own share of the training set (batch_size examples per
process and step), gradients are averaged across the processes at every optimizer step, rank 0
alone writes to --out-dir, and every rank ends with the same weights. What each process runs:

    init_distributed()                       # joins torchrun's process group, if there is one
    seed_everything(cfg.seed)                # the same seed everywhere: one split, one shuffle
    model = SmallCNN(batch_norm=True, dropout=0.1)
    train_loader = sharded_loader(splits.train, cfg.batch_size, seed=cfg.seed)  # this rank's share
    val_loader = make_loader(splits.val, cfg.eval_batch_size)                    # whole, as alone
    fit(model, train_loader, val_loader, cfg)

(`course_lib.recipes.train_digits`; `python examples/train_digits.py --help` lists the options,
which `course_lib.train` reads.)
"""

from course_lib.train import run_and_report

if __name__ == "__main__":
    run_and_report(program=["python", "examples/train_digits.py"])
