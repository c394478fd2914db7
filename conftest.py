"""pytest loads this file for every path it runs, notebooks/ and solutions/ included.

COURSE_START_METHOD=spawn (or forkserver) runs every process the tests start, notebook kernels
included, under that multiprocessing start method, as on macOS, Windows or Python 3.14
(tests/start_method/sitecustomize.py). It lives here, not in tests/conftest.py, so that
`COURSE_START_METHOD=spawn pytest notebooks/04_input_pipelines.ipynb` forces it too.
"""

import os
from pathlib import Path

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
