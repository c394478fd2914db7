"""How much does `course_lib.fit` cost over a hand-written loop doing the same work?

Both loops train the same model on the same batches in the same order, with the same AdamW
parameter groups, warmup-cosine schedule, gradient clipping, logging cadence and periodic
evaluation. The script checks that they end at the same loss, then prints the time ratio fit / hand-written. Each loop runs several
times, alternating (so machine noise falls on both alike), and the ratio compares the fastest run
of each: noise only ever adds time, so the fastest run is the best estimate of the work itself.
The median of the paired ratios is printed too, as a check on the spread. On a small machine,
`OMP_NUM_THREADS=1` gives steadier figures: two threads on two busy cores add noise of +-10 %.

    python benchmarks/loop_overhead.py [--repeats 7] [--epochs 10] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from course_lib import (
    MLP,
    SmallCNN,
    TrainConfig,
    build_optimizer,
    fit,
    load_digits_splits,
    make_loader,
    resolve_device,
    seed_everything,
    warmup_cosine,
)
from course_lib.loop import autocast_context


def hand_written_loop(model, train_loader, val_loader, cfg, device):
    """The loop of lesson 01 written out by hand, with nothing but the work itself."""
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    total_steps = cfg.epochs * len(train_loader)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    logged, step = [], 0
    model.train()
    for _ in range(cfg.epochs):
        for inputs, targets in train_loader:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast_context(device, cfg.precision):
                loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % cfg.log_every == 0 or step == total_steps:
                logged.append((loss.item(), grad_norm.item()))
            if step % cfg.eval_every == 0 or step == total_steps:
                model.eval()
                correct = total = 0
                loss_sum = torch.zeros((), device=device)
                with torch.inference_mode(), autocast_context(device, cfg.precision):
                    for inputs, targets in val_loader:
                        inputs, targets = inputs.to(device), targets.to(device)
                        logits = model(inputs)
                        loss_sum += nn.functional.cross_entropy(logits, targets).float() * len(targets)
                        correct += (logits.argmax(-1) == targets).sum()
                        total += len(targets)
                logged.append((loss_sum.item() / total, int(correct) / total))
                model.train()
    return logged[-2][0]  # the last training loss read


def one_pair(make_model, images, cfg, device):
    splits = load_digits_splits(seed=cfg.seed, images=images)
    results = {}
    for name in ("hand", "fit"):
        seed_everything(cfg.seed)
        model = make_model()
        train_loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed)
        val_loader = make_loader(splits.val, cfg.eval_batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if name == "hand":
            final_loss = hand_written_loop(model, train_loader, val_loader, cfg, device)
        else:
            history = fit(model, train_loader, val_loader, cfg)
            final_loss = history.train[-1]["loss"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[name] = (time.perf_counter() - start, final_loss)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="SmallCNN,MLP", help="comma-separated: SmallCNN, MLP")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'model':<10}{'precision':<10}{'hand s':>9}{'fit s':>9}{'ratio':>8}{'median':>9}"
          "    same loss")
    cases = [("SmallCNN", lambda: SmallCNN(), True), ("MLP", lambda: MLP(), False)]
    cases = [case for case in cases if case[0] in args.models.split(",")]
    for name, make_model, images in cases:
        for precision in ("fp32", "bf16"):
            # log_every=1 makes the two loops read the same, final, step's loss.
            cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, warmup_steps=20,
                              grad_clip=1.0, eval_every=20, log_every=1, precision=precision,
                              device=str(device))
            one_pair(make_model, images, cfg, device)  # warm-up: imports, allocator, kernels
            hand_times, fit_times, same = [], [], True
            for _ in range(args.repeats):
                results = one_pair(make_model, images, cfg, device)
                hand_times.append(results["hand"][0])
                fit_times.append(results["fit"][0])
                same &= results["hand"][1] == results["fit"][1]
            ratio = min(fit_times) / min(hand_times)
            paired = statistics.median(f / h for f, h in zip(fit_times, hand_times))
            print(f"{name:<10}{precision:<10}{min(hand_times):9.3f}{min(fit_times):9.3f}"
                  f"{ratio:8.3f}{paired:9.3f}    {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
