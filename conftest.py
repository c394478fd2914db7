"""pytest loads this file for every path it runs, notebooks/ and solutions/ included.

COURSE_START_METHOD=spawn (or forkserver) runs every process the tests start, notebook kernels
included, under that multiprocessing start method, as on macOS, Windows or Python 3.14
(tests/start_method/sitecustomize.py). It lives here, not in tests/conftest.py, so that
`COURSE_START_METHOD=spawn pytest notebooks/04_input_pipelines.ipynb` forces it too.
"""

import os
from pathlib import Path

# One torch (OpenMP) thread in every process the tests start: notebook kernels, graders, launches.
# pytest-xdist keeps every core busy with a worker already, and torch's default of one thread per
# core then oversubscribes the cores while OpenMP's idle threads spin. Measured on two cores, with
# two processes each training a small MLP (3,000 AdamW steps) side by side: 18.3 s each with two
# threads, 3.3 s with one (alone: 3.3 s and 2.8 s). Notebooks run under nbval in lax mode compare
# only rounded, deterministic outputs, which the thread count does not change. An explicit setting
# in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

START_METHOD = os.environ.get("COURSE_START_METHOD")
if START_METHOD:
    if START_METHOD not in ("fork", "spawn", "forkserver"):
        raise ValueError(f"COURSE_START_METHOD={START_METHOD!r}: use fork, spawn or forkserver")
    _forcing = str(Path(__file__).parent / "tests" / "start_method")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_forcing, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    import multiprocessing

    multiprocessing.set_start_method(START_METHOD, force=True)
