import os

# Tests draw figures without a display; Agg renders them in memory.
os.environ.setdefault("MPLBACKEND", "Agg")

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
