import os
from pathlib import Path

# Tests draw figures without a display; Agg renders them in memory.
os.environ.setdefault("MPLBACKEND", "Agg")

# COURSE_START_METHOD=spawn (or forkserver) runs every process the tests start, notebook kernels
# included, under that multiprocessing start method, as on macOS, Windows or Python 3.14
# (tests/start_method/sitecustomize.py).
START_METHOD = os.environ.get("COURSE_START_METHOD")
if START_METHOD:
    if START_METHOD not in ("fork", "spawn", "forkserver"):
        raise ValueError(f"COURSE_START_METHOD={START_METHOD!r}: use fork, spawn or forkserver")
    _forcing = str(Path(__file__).parent / "start_method")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_forcing, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    import multiprocessing

    multiprocessing.set_start_method(START_METHOD, force=True)

# Notebooks under tests/fixtures are inputs of other tests, not lessons to run under nbval.
collect_ignore_glob = ["fixtures/*"]

# The models in these tests are tiny: one thread runs them as fast as two, and it keeps a test
# from competing for cores with the notebook kernels and subprocesses that other tests start.
import torch  # noqa: E402

torch.set_num_threads(1)


# Each of their tests starts two or more Python processes (torch.distributed, torchrun).
MULTI_PROCESS_FILES = {"test_distributed.py", "test_multihost.py"}


def pytest_collection_modifyitems(config, items):
    """Mark the wrong-answer corpora of the exercise checks, and the tests that start several
    processes, so `make test-fast` can leave them out."""
    for item in items:
        if item.path.name.startswith("test_checks_"):
            item.add_marker("checks")
        if item.path.name in MULTI_PROCESS_FILES:
            item.add_marker("processes")
