"""Several processes: the primitives of course_lib.distributed, and `fit` under a process group.

The processes are joined by gloo and train on the CPU (the configs say device="cpu", so that the
one-process references run on the CPU too, even where a GPU is present).

Each `launch` starts two fresh interpreters joined by a gloo group (3-4 s of start-up), so each
worker below does several things and returns what the tests then assert on; a module-scoped
fixture launches each worker once. The workers are module-level functions: the spawned processes
import them from this module by name.
"""

import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

import course_lib.loop
from course_lib import (
    MLP,
    STOP,
    SmallCNN,
    TrainConfig,
    build_optimizer,
    evaluate,
    fit,
    load_checkpoint,
    load_digits_splits,
    make_loader,
    seed_everything,
    train_step,
)
from course_lib.distributed import (
    all_gather_objects,
    all_reduce_sum,
    average_batchnorm_stats,
    call_on_main,
    get_rank,
    get_world_size,
    is_main_process,
    launch,
    rank_seed,
    rank_share,
    sharded_loader,
)
from course_lib.history import History
from course_lib.live import LiveView

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


# ---- the primitives ---------------------------------------------------------------------------------


def primitives_worker():
    rank = get_rank()
    total = all_reduce_sum(torch.tensor([rank + 1.0]))
    shares = {size: [int(i) for batch in sharded_loader(TensorDataset(torch.arange(size)), 4,
                                                        seed=3)
                     for i in batch[0]]
              for size in (10, 11)}
    norm = nn.BatchNorm1d(3)
    norm.running_mean.fill_(float(rank))  # 0 on rank 0, 1 on rank 1
    norm.running_var.fill_(2.0 + 2 * rank)  # 2 and 4
    average_batchnorm_stats(norm)
    shared = call_on_main(lambda: f"written by rank {get_rank()}")
    val = DataLoader(TensorDataset(torch.arange(7)), batch_size=2)
    return {
        "all_reduces_per_window": all_reduces_per_window(),
        "rank": rank, "world": get_world_size(), "main": is_main_process(), "sum": total.item(),
        "shares": shares, "mean": norm.running_mean.tolist(), "var": norm.running_var.tolist(),
        "gathered": all_gather_objects(rank * 10), "on_main": shared,
        "val_share": [batch[0].tolist() for batch in rank_share(val)],
    }


def all_reduces_per_window():
    """How many gradient all-reduces DDP makes in train_step over windows of 1 and 3 batches."""
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(4, 3))
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        return default_hooks.allreduce_hook(None, bucket)

    model.register_comm_hook(None, counting_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(5, 4), torch.randint(0, 3, (5,)))
    counts = []
    for size in (1, 3):
        calls.clear()
        train_step(model, [batch] * size, nn.functional.cross_entropy, optimizer)
        counts.append(len(calls))
    return counts


@pytest.fixture(scope="module")
def primitives():
    return launch(primitives_worker, WORLD)


def test_launch_returns_each_rank_s_value_in_rank_order(primitives):
    assert [r["rank"] for r in primitives] == [0, 1]
    assert [r["world"] for r in primitives] == [2, 2]
    assert [r["main"] for r in primitives] == [True, False]
    assert [r["sum"] for r in primitives] == [3.0, 3.0]
    assert [r["gathered"] for r in primitives] == [[0, 10], [0, 10]]
    assert [r["on_main"] for r in primitives] == ["written by rank 0"] * 2


def test_train_step_all_reduces_gradients_once_per_window(primitives):
    # One bucket of gradients for this small model: once per window, not once per micro-batch.
    assert [r["all_reduces_per_window"] for r in primitives] == [[1, 1], [1, 1]]


def test_sharded_loader_shares_are_disjoint_and_cover_the_set(primitives):
    first, second = (set(r["shares"][10]) for r in primitives)
    assert not first & second and first | second == set(range(10))
    assert len(primitives[0]["shares"][10]) == 5
    # An odd size: the sampler pads the last round with an example from the start, so that both
    # ranks take the same number of steps; one example is seen twice, none is left out.
    odd = primitives[0]["shares"][11] + primitives[1]["shares"][11]
    assert len(odd) == 12 and set(odd) == set(range(11))


def test_average_batchnorm_stats_gives_every_rank_the_mean(primitives):
    for result in primitives:
        assert result["mean"] == [0.5] * 3 and result["var"] == [3.0] * 3


def test_rank_share_gives_each_batch_to_one_rank(primitives):
    # 7 examples in batches of 2: batches 0, 2 on rank 0 and 1, 3 on rank 1, unchanged.
    assert primitives[0]["val_share"] == [[0, 1], [4, 5]]
    assert primitives[1]["val_share"] == [[2, 3], [6]]


def test_rank_seed_differs_by_rank_and_by_seed():
    seeds = {rank_seed(seed, rank) for seed in range(3) for rank in range(3)}
    assert len(seeds) == 9  # seed + rank would give 5


def failing_worker():
    if get_rank() == 1:
        raise ValueError("only rank 1 breaks")
    return "fine"


def test_launch_names_the_failing_rank_and_its_error():
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed:\nValueError: only rank 1 breaks"):
        launch(failing_worker, WORLD)


def test_launch_refuses_a_function_the_processes_cannot_import():
    def local():
        return 1

    with pytest.raises(ValueError, match="local is defined inside another function: move it"):
        launch(local, WORLD)
    # What a function defined in a notebook cell or a script looks like.
    main_function = types.FunctionType(failing_worker.__code__, {}, "in_a_cell")
    main_function.__module__, main_function.__qualname__ = "__main__", "in_a_cell"
    with pytest.raises(ValueError, match="in_a_cell is defined in __main__"):
        launch(main_function, WORLD)


# ---- fit: two processes equal one process trained on the union of their batches ------------------


def digits_subset(size, offset=0, images=False, ignore_every=0):
    """`size` digits; with ignore_every, every ignore_every-th odd index gets target -100, so that
    a sampler without shuffling deals the ignored targets to rank 1 only."""
    data = load_digits_splits(seed=0, images=images).train
    inputs, targets = (t[offset:offset + size].clone() for t in data.tensors)
    if ignore_every:
        targets[1::2][::ignore_every] = -100
    return TensorDataset(inputs, targets)


class UnionBatches(Sampler):
    """Rank 0's batch k followed by rank 1's batch k: the batches of a two-process run, joined."""

    def __init__(self, dataset, batch_size, shuffle, seed):
        self.samplers = [DistributedSampler(dataset, WORLD, rank, shuffle=shuffle, seed=seed)
                         for rank in range(WORLD)]
        self.batch_size = batch_size

    def set_epoch(self, epoch):
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __len__(self):
        return math.ceil(len(self.samplers[0]) / self.batch_size)

    def __iter__(self):
        shares = [list(sampler) for sampler in self.samplers]
        for start in range(0, len(shares[0]), self.batch_size):
            yield [i for share in shares for i in share[start:start + self.batch_size]]


# 150 examples: 75 per rank in batches of 16 make 5 batches (the last of 11), windows of 2 leave a
# short last window of one: 3 optimizer steps an epoch, 6 in the run.
UNION_RUN = dict(epochs=2, batch_size=16, grad_accum_steps=2, lr=0.02, warmup_steps=2,
                 log_every=1, eval_every=4, device="cpu")
UNION_CASES = {"shuffled": dict(shuffle=True, ignore_every=0),
               "ignored_on_rank_1": dict(shuffle=False, ignore_every=3)}
VAL_SIZE, EVAL_BATCH = 101, 20  # 6 batches (the last of 1): rank 0 evaluates 60, rank 1 41


def union_loss():
    return nn.CrossEntropyLoss(ignore_index=-100)


def union_worker():
    cfg = TrainConfig(**UNION_RUN, eval_batch_size=EVAL_BATCH)
    val = make_loader(digits_subset(VAL_SIZE, offset=400), EVAL_BATCH)
    results = {}
    for name, case in UNION_CASES.items():
        seed_everything(0)
        model = MLP()
        train = sharded_loader(digits_subset(150, ignore_every=case["ignore_every"]),
                               cfg.batch_size, shuffle=case["shuffle"], seed=5)
        history = fit(model, train, val, cfg, loss_fn=union_loss())
        results[name] = (model.state_dict(), history.without_timing())
    # One validation batch: rank 1 has no batch to evaluate.
    seed_everything(0)
    model = MLP()
    train = sharded_loader(digits_subset(150), 16, seed=5)
    history = fit(model, train, make_loader(digits_subset(15, offset=400), 20),
                  TrainConfig(max_steps=2, eval_every=2, log_every=1, device="cpu"))
    results["one_val_batch"] = (model.state_dict(), history.without_timing())
    return results


def union_run(case):
    cfg = TrainConfig(**UNION_RUN, eval_batch_size=EVAL_BATCH)
    dataset = digits_subset(150, ignore_every=case["ignore_every"])
    loader = DataLoader(dataset, batch_sampler=UnionBatches(dataset, cfg.batch_size,
                                                            case["shuffle"], seed=5))
    seed_everything(0)
    model = MLP()
    history = fit(model, loader, make_loader(digits_subset(VAL_SIZE, offset=400), EVAL_BATCH), cfg,
                  loss_fn=union_loss())
    return model, history.without_timing()


@pytest.fixture(scope="module")
def two_ranks():
    return launch(union_worker, WORLD)


@pytest.mark.parametrize("name", list(UNION_CASES))
def test_two_processes_end_where_one_process_on_the_union_of_their_batches_ends(two_ranks, name):
    # Gradient accumulation over windows of unequal sizes, two epochs (set_epoch reshuffles), and
    # in the second case ranks with different numbers of items: rank 1 ignores a sixth of its
    # targets, so an average of the ranks' mean gradients would weigh its items more.
    model, history = union_run(UNION_CASES[name])
    (weights, rank0_history), (other_weights, rank1_history) = (r[name] for r in two_ranks)
    assert len([r for r in history if "loss" in r]) == 6
    for key, tensor in model.state_dict().items():
        assert torch.equal(weights[key], other_weights[key]), key  # the ranks agree exactly
        torch.testing.assert_close(weights[key], tensor, rtol=0, atol=1e-6)
    assert rank0_history == rank1_history
    for ours, reference in zip(rank0_history, history, strict=True):
        assert ours.keys() == reference.keys()
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in ours:
                assert ours[key] == pytest.approx(reference[key], rel=1e-5), (key, ours["step"])
        for key in ("step", "epoch", "learning_rate", "eval_accuracy", "eval_per_class_accuracy"):
            if key in ours:
                assert ours[key] == reference[key], (key, ours["step"])


def test_eval_metrics_across_ranks_equal_one_process_evaluating_everything(two_ranks):
    # 101 examples in batches of 20: the ranks evaluate 60 and 41; averaging the two ranks'
    # accuracies would weigh rank 1's examples more. The last evaluation saw the final weights.
    model = MLP()
    for val_size, batch, (weights, history) in (
            (VAL_SIZE, EVAL_BATCH, two_ranks[0]["shuffled"]),
            (15, 20, two_ranks[0]["one_val_batch"])):
        model.load_state_dict(weights)
        expected = evaluate(model, make_loader(digits_subset(val_size, offset=400), batch))
        final = [r for r in history if "eval_loss" in r][-1]
        assert final["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)
        assert final["eval_accuracy"] == expected["eval_accuracy"]
        assert final["eval_per_class_accuracy"] == pytest.approx(
            expected["eval_per_class_accuracy"], nan_ok=True)


# ---- fit: epochs, files, BatchNorm and an exact resume under two processes -------------------------


class RecordingSampler(DistributedSampler):
    """A DistributedSampler that keeps the order it yielded each time an epoch began."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.orders = []

    def __iter__(self):
        order = list(super().__iter__())
        self.orders.append((self.epoch, order))
        return iter(order)


# 150 images, 75 per rank in batches of 16: 3 steps an epoch (windows of 2, 2, 1). Step 5 falls in
# the middle of the second epoch and between evaluations (every 2 steps).
RESUME_RUN = dict(epochs=3, batch_size=16, grad_accum_steps=2, lr=0.01, warmup_steps=2,
                  log_every=1, eval_every=2, keep_best=2, device="cpu")
STOP_STEP = 5


def resume_run(out_dir, hooks=(), resume=False):
    cfg = TrainConfig(**RESUME_RUN, out_dir=str(out_dir))
    seed_everything(123 if resume else 0)  # resuming must not depend on the initial weights
    model = SmallCNN(batch_norm=True, dropout=0.3)
    optimizer = build_optimizer(model, cfg)
    dataset = digits_subset(150, images=True)
    sampler = RecordingSampler(dataset, get_world_size(), get_rank(), shuffle=True, seed=7)
    train = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler)
    val = make_loader(digits_subset(45, offset=400, images=True), 20)
    history = fit(model, train, val, cfg, optimizer=optimizer, hooks=hooks,
                  resume_from=str(out_dir) if resume else None)
    return {"weights": model.state_dict(), "optimizer": optimizer.state_dict(),
            "history": history.without_timing(), "orders": sampler.orders}


def resume_worker(tmp):
    saves = []
    original = course_lib.loop.save_checkpoint

    def recording_save(path, state):
        saves.append(Path(path).name)
        return original(path, state)

    course_lib.loop.save_checkpoint = recording_save  # this process's module: the test's probe
    tmp = Path(tmp)
    whole = resume_run(tmp / "whole")
    whole_saves = list(saves)
    seen = {}

    def stop(state):
        if state.step == STOP_STEP:
            seen["batchnorm"] = {name: buffer.clone() for name, buffer in
                                 state.model.named_buffers() if "running" in name}
            return STOP
        return None

    stopped = resume_run(tmp / "stopped", hooks=[stop])
    if get_rank() == 0:  # the resumed run will overwrite latest.pt: keep the stopped one
        shutil.copy(tmp / "stopped" / "checkpoints" / "latest.pt", tmp / "stopped.pt")
    resumed = resume_run(tmp / "stopped", resume=True)
    return {"whole": whole, "whole_saves": whole_saves, "stopped": stopped, "resumed": resumed,
            "own_batchnorm": seen["batchnorm"]}


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    return tmp, launch(resume_worker, WORLD, str(tmp))


def test_each_epoch_has_its_own_order_the_distributed_sampler_s(resumed_runs):
    _, ranks = resumed_runs
    dataset = digits_subset(150, images=True)
    for rank, result in enumerate(ranks):
        orders = result["whole"]["orders"]
        assert [epoch for epoch, _ in orders] == [0, 1, 2]  # set_epoch before each epoch
        for epoch, order in orders:
            reference = DistributedSampler(dataset, WORLD, rank, shuffle=True, seed=7)
            reference.set_epoch(epoch)
            assert order == list(reference)
        assert orders[0][1] != orders[1][1] != orders[2][1]


def test_a_resumed_run_replays_its_epoch_s_order_and_ends_bit_for_bit(resumed_runs):
    _, ranks = resumed_runs
    for result in ranks:
        whole, resumed = result["whole"], result["resumed"]
        # Stopped in the second epoch: the resumed run starts by replaying that epoch's order.
        assert resumed["orders"] == whole["orders"][1:]
        for key, tensor in whole["weights"].items():
            assert torch.equal(resumed["weights"][key], tensor), key
        saved, expected = resumed["optimizer"]["state"], whole["optimizer"]["state"]
        assert saved.keys() == expected.keys()
        for index in expected:
            for key, tensor in expected[index].items():
                assert torch.equal(saved[index][key], tensor), (index, key)
        assert resumed["history"] == whole["history"]
    assert ranks[0]["whole"]["history"] == ranks[1]["whole"]["history"]
    # Dropout draws differ between the ranks (their own streams), yet the weights agree.
    for key, tensor in ranks[0]["whole"]["weights"].items():
        assert torch.equal(ranks[1]["whole"]["weights"][key], tensor), key


def test_rank_0_alone_writes_the_files(resumed_runs):
    tmp, ranks = resumed_runs
    assert ranks[1]["whole_saves"] == []
    # latest.pt at the start and at each of the 4 evaluations (steps 2, 4, 6, 8 and the last, 9),
    # and a step file at each evaluation.
    evaluations = [2, 4, 6, 8, 9]
    assert ranks[0]["whole_saves"] == ["latest.pt"] + [
        name for step in evaluations for name in (f"step_{step:06d}.pt", "latest.pt")]
    history = History.from_jsonl(tmp / "whole" / "history.jsonl")
    assert history.without_timing() == ranks[0]["whole"]["history"]  # each record once
    assert (tmp / "whole" / "config.toml").exists()


def test_the_checkpoint_holds_the_mean_of_the_ranks_batchnorm_statistics(resumed_runs):
    tmp, ranks = resumed_runs
    checkpoint = load_checkpoint(tmp / "stopped.pt")
    assert checkpoint["step"] == STOP_STEP and checkpoint["world_size"] == WORLD
    own = [r["own_batchnorm"] for r in ranks]
    assert own[0].keys() and own[0].keys() == own[1].keys()
    for name in own[0]:
        assert not torch.equal(own[0][name], own[1][name]), "the ranks' statistics should differ"
        torch.testing.assert_close(checkpoint["model"][name], (own[0][name] + own[1][name]) / 2)
        for rank in range(WORLD):  # and each rank's own, which its resumed run continues from
            assert torch.equal(checkpoint["rank_batchnorm"][rank][name], own[rank][name])
    assert len(checkpoint["rng"]) == WORLD
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])


def test_every_rank_evaluates_with_the_averaged_batchnorm_statistics(resumed_runs):
    # The final checkpoint holds the statistics averaged over the ranks; evaluating its weights in
    # one process gives the metrics the two ranks logged, which they can only do if both evaluated
    # with those same statistics.
    tmp, ranks = resumed_runs
    checkpoint = load_checkpoint(tmp / "whole" / "checkpoints" / "latest.pt")
    model = SmallCNN(batch_norm=True, dropout=0.3)
    model.load_state_dict(checkpoint["model"])
    expected = evaluate(model, make_loader(digits_subset(45, offset=400, images=True), 20))
    logged = [r for r in ranks[0]["whole"]["history"] if "eval_loss" in r][-1]
    assert logged["step"] == checkpoint["step"] == 9
    assert logged["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)
    assert logged["eval_accuracy"] == expected["eval_accuracy"]


# ---- errors reach every rank ---------------------------------------------------------------------


def nan_on_rank_1_at_step_2(logits, targets):
    loss = nn.functional.cross_entropy(logits, targets)
    calls = nan_on_rank_1_at_step_2.training_calls = getattr(
        nan_on_rank_1_at_step_2, "training_calls", 0) + logits.requires_grad
    return loss * math.nan if get_rank() == 1 and calls == 2 else loss


def errors_worker(tmp, one_process_run):
    rank = get_rank()
    cfg = TrainConfig(max_steps=2, batch_size=16, eval_every=2, log_every=1, device="cpu")
    dataset = digits_subset(150)
    val = make_loader(digits_subset(45, offset=400), 20)
    messages = {}

    def attempt(name, **kwargs):
        seed_everything(0)
        train = kwargs.pop("train", None) or sharded_loader(dataset, 16)
        run_cfg = kwargs.pop("cfg", cfg)
        try:
            history = fit(MLP(), train, val, run_cfg, **kwargs)
            messages[name] = [r["step"] for r in history if "loss" in r]
        except Exception as error:
            messages[name] = f"{type(error).__name__}: {error}"

    attempt("same_data", train=make_loader(dataset, 16, shuffle=True))
    attempt("built_before_init", train=DataLoader(dataset, 16, sampler=DistributedSampler(
        dataset, num_replicas=1, rank=0)))
    out_dir = str(Path(tmp) / "run")
    attempt("first", cfg=cfg.replace(out_dir=out_dir))
    attempt("again", cfg=cfg.replace(out_dir=out_dir))
    attempt("other_world", cfg=cfg.replace(out_dir=one_process_run), resume_from=one_process_run)

    def rank_1_stops(state):
        return STOP if rank == 1 and state.step == 1 else None

    def rank_1_raises(state):
        if rank == 1:
            raise KeyError("rank 1's hook")

    attempt("stop", cfg=cfg.replace(max_steps=5), hooks=[rank_1_stops])
    attempt("sync_batchnorm", cfg=cfg.replace(sync_batchnorm=True))
    attempt("nan_on_rank_1", loss_fn=nan_on_rank_1_at_step_2)
    view = LiveView(mode="text")
    attempt("live", hooks=[view])
    messages["live_shown"] = view._shown
    attempt("hook_error", hooks=[rank_1_raises])
    return messages


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    cfg = TrainConfig(max_steps=2, batch_size=16, eval_every=2, log_every=1, device="cpu",
                      out_dir=str(tmp / "alone"))
    seed_everything(0)
    fit(MLP(), sharded_loader(digits_subset(150), 16), make_loader(digits_subset(45), 20), cfg)
    return launch(errors_worker, WORLD, str(tmp), cfg.out_dir)


def test_a_training_loader_without_a_distributed_sampler_is_refused(errors):
    for messages in errors:
        assert messages["same_data"].startswith("ValueError: the training loader's sampler is a "
                                                "RandomSampler")
        assert "course_lib.distributed.sharded_loader" in messages["same_data"]
        assert "built for rank 0 of 1" in messages["built_before_init"]
        assert "after init_distributed()" in messages["built_before_init"]


def test_an_error_only_rank_0_can_see_stops_every_rank_with_it(errors):
    assert errors[0]["first"] == errors[1]["first"] == [1, 2]
    assert errors[0]["again"].startswith("FileExistsError: ")
    assert errors[1]["again"] == errors[0]["again"]


def test_resuming_with_another_number_of_processes_is_refused(errors):
    for messages in errors:
        assert "written by 1 process(es) and this run has 2" in messages["other_world"]


def test_sync_batchnorm_is_refused_on_the_cpu_and_the_view_shows_on_rank_0_only(errors):
    for messages in errors:
        assert "sync_batchnorm = True: PyTorch's SyncBatchNorm runs on GPUs only" in (
            messages["sync_batchnorm"])
        assert messages["live"] == [1, 2]
    assert errors[0]["live_shown"] == 3 and errors[1]["live_shown"] == 0  # 2 training, 1 eval
    with pytest.raises(TypeError, match="sync_batchnorm must be bool"):
        TrainConfig(sync_batchnorm=1)


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_that_step(errors):
    # The logged loss is the mean over both ranks' items, so both see the NaN and raise together.
    for messages in errors:
        assert messages["nan_on_rank_1"].startswith("NonFiniteLossError: the training loss was "
                                                    "nan at step 2;")


def test_a_stop_or_an_error_in_one_rank_s_hook_stops_every_rank_at_that_step(errors):
    assert errors[0]["stop"] == errors[1]["stop"] == [1]
    assert errors[1]["hook_error"] == "KeyError: \"rank 1's hook\""
    assert errors[0]["hook_error"].startswith("RuntimeError: a hook raised an error on another "
                                              "rank at step 1")


# ---- the example script ---------------------------------------------------------------------------


def run_example(*command, out_dir):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run([*command, str(ROOT / "examples" / "train_digits.py"), "--steps", "4",
                               "--out-dir", str(out_dir)],
                              env=environment, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished.stdout


def test_the_example_runs_alone_and_under_torchrun(tmp_path):
    alone = run_example(sys.executable, out_dir=tmp_path / "alone")
    assert alone.startswith("1 process(es), 4 steps")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    both = run_example(*torchrun, out_dir=tmp_path / "both")
    assert both.startswith("2 process(es), 4 steps") and both.count("process(es)") == 1  # rank 0
    for run in ("alone", "both"):
        history = History.from_jsonl(tmp_path / run / "history.jsonl")
        assert [r["step"] for r in history.eval] == [4]
        assert load_checkpoint(tmp_path / run / "checkpoints" / "latest.pt")["world_size"] == (
            1 if run == "alone" else 2)
