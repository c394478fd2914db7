import os
from pathlib import Path

# Tests draw figures without a display; Agg renders them in memory.
os.environ.setdefault("MPLBACKEND", "Agg")

# COURSE_START_METHOD (spawn or forkserver) is applied by the conftest.py at the repository's root,
# which pytest also loads when it runs only notebooks.

# Notebooks under tests/fixtures are inputs of other tests, not lessons to run under nbval.
collect_ignore_glob = ["fixtures/*"]

# The models in these tests are tiny: one thread runs them as fast as two, and it keeps a test
# from competing for cores with the notebook kernels and subprocesses that other tests start.
import torch  # noqa: E402

torch.set_num_threads(1)


# Each of their tests starts two or more Python processes (torch.distributed, torchrun).
MULTI_PROCESS_FILES = {"test_distributed.py", "test_multihost.py"}

# Under pytest-xdist, `make test` passes `-n auto --dist loadfile`, and the scheduler below refines
# loadfile's groups: a group runs whole on one worker. A file is one group, so its module fixtures are
# built once and a notebook's cells share one kernel, in order; the multi-process files share one
# group, so their process groups never compete with each other for the cores; each start-method run
# of a notebook is a group of its own. Groups start longest first (a worker that finishes takes the
# next), in the order below, which `pytest --junitxml` on two cores measured (the nbgrader course and
# the browser run take minutes each, so they must not be the last to start); the rest start last.
LONGEST_FIRST = [
    "tests/test_nbgrader.py",
    "tests/test_browser.py",
    "tests/test_checks_ex04.py",
    "notebooks/01_",
    "notebooks/06_",
    "tests/test_grade_tampering.py",
    "processes",
    "tests/test_start_methods.py::",
    "tests/test_checks_",
    "notebooks/08_",
    "solutions/08_",
    "tests/test_exercises.py",
    "solutions/06_",
    "notebooks/",
    "solutions/",
    "tests/test_grade",
]


def group_of(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    if Path(path).name in MULTI_PROCESS_FILES:
        return "processes"
    if Path(path).name == "test_start_methods.py" and "[" in nodeid:
        return nodeid
    return path


def start_rank(nodeid: str) -> int:
    group = group_of(nodeid)
    return next((rank for rank, prefix in enumerate(LONGEST_FIRST) if group.startswith(prefix)),
                len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    """Mark the wrong-answer corpora of the exercise checks, and the tests that start several
    processes, so `make test-fast` can leave them out; order the tests longest group first."""
    for item in items:
        if item.path.name.startswith("test_checks_"):
            item.add_marker("checks")
        if item.path.name in MULTI_PROCESS_FILES:
            item.add_marker("processes")
    # A stable sort: the order inside a group, which a notebook's cells depend on, is kept.
    items.sort(key=lambda item: start_rank(item.nodeid))


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with the groups of group_of, handed out in collection order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid)

    # Otherwise pytest-xdist reorders the groups by their number of tests, not by their length.
    config.option.loadscopereorder = False
    return GroupScheduling(config, log)
