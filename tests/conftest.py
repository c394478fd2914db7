import os

# Tests draw figures without a display; Agg renders them in memory.
os.environ.setdefault("MPLBACKEND", "Agg")
