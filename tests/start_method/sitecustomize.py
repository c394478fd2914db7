"""Forces the multiprocessing start method in every Python process the tests start (test-only).

macOS and Windows start DataLoader workers and `launch`'s processes with `spawn`, and Python 3.14
on Linux defaults to `forkserver`. Linux's own default, `fork`, hides the mistakes those laptops
hit (a dataset defined in `__main__`, work done at import time, a slow start). tests/conftest.py
puts this folder first on PYTHONPATH when COURSE_START_METHOD names a method, so the notebook
kernels and subprocesses the tests start run under that method, as a learner's laptop would.
"""

import multiprocessing
import os

_method = os.environ.get("COURSE_START_METHOD")
if _method:
    multiprocessing.set_start_method(_method, force=True)
