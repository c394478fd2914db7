import os

# Tests draw figures without a display; Agg renders them in memory.
os.environ.setdefault("MPLBACKEND", "Agg")

# Notebooks under tests/fixtures are inputs of other tests, not lessons to run under nbval.
collect_ignore_glob = ["fixtures/*"]
