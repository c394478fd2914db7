# Everyday commands for the workbook. Every target that needs Python first makes sure that .venv exists
# and holds everything pyproject.toml lists; that set-up runs once and again only when pyproject.toml
# or the torch build changes.
#
#   make lab          open JupyterLab on notebooks/
#   make test         run the test suite, on every core (pytest-xdist)
#   make test-fast    the tests of course_lib only: no notebooks, browser, check corpora or several processes (under a minute)
#   make test-checks  the wrong-answer corpus of every exercise check (CHECK_SEEDS=16 for the full validation)
#   make test-start-methods  every lesson, solution and exercise under spawn, then forkserver (macOS, Windows, Python 3.14)
#   make test-floors  make test-fast in .venv-floors, built with the oldest versions pyproject.toml allows
#   make exercises    regenerate exercises/ from solutions/
#   make outputs      re-execute every lesson and solution in place, then regenerate exercises/
#   make screenshots  retake the JupyterLab screenshots
#   make benchmark    time the training loop's overhead
#   make clean        delete .venv
#
# Overridable:  PYTHON   the interpreter that creates .venv (3.11 or newer)
#               TORCH    what `pip install` gets for torch, installed before anything else, e.g.
#                        TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
#               LAB_ARGS, PYTEST_ARGS   extra flags for `jupyter lab` and `pytest`
#               JOBS     pytest-xdist workers for make test and test-start-methods (auto: one per core; 0: none)
#               FLOORS_PYTHON, FLOORS_TORCH   the interpreter and the torch that make test-floors uses

PYTHON ?= python3
TORCH ?= torch==2.13.0
LAB_ARGS ?=
PYTEST_ARGS ?=
JOBS ?= auto
FLOORS_PYTHON ?= python3.11
# The floor in pyproject.toml (tests/test_environment.py checks that the two agree).
FLOORS_TORCH ?= torch==2.6.0

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
# Both files live inside .venv, so deleting .venv is a full reset.
INSTALLED := $(VENV)/.installed
TORCH_SPEC := $(VENV)/.torch-spec

KERNEL_NAME := training-loops
KERNEL_DISPLAY_NAME := Python (training loops)

.PHONY: help setup lab test test-fast test-checks test-start-methods test-floors exercises outputs screenshots benchmark clean FORCE

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

setup: $(INSTALLED)

# Rewritten only when TORCH differs from what the last set-up used, so that a new TORCH triggers a
# reinstall while an unchanged one leaves the stamp below up to date.
$(TORCH_SPEC): FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

# torch goes in first and alone: pip then finds the range in pyproject.toml already satisfied and never
# resolves torch on its own (an unpinned torch on Linux brings several GB of CUDA libraries).
$(INSTALLED): pyproject.toml $(TORCH_SPEC)
	@if [ ! -x $(PY) ]; then \
	    $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "The workbook needs Python 3.11 or newer, but $(PYTHON) is " + sys.version.split()[0] + ". Point PYTHON at a newer one, e.g. make PYTHON=python3.11")' || exit 1; \
	    echo "Creating $(VENV) with $$($(PYTHON) --version)"; \
	    $(PYTHON) -m venv $(VENV) || { echo "Could not create $(VENV). On Debian or Ubuntu, install the python3-venv package."; exit 1; }; \
	fi
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "$(VENV) holds Python " + sys.version.split()[0] + "; the workbook needs 3.11 or newer. Run make clean, then make PYTHON=python3.11")'
	@echo "Installing $(TORCH)"
	@$(PIP) install $(TORCH)
	@echo "Installing course_lib (editable) with its notebook and test dependencies"
	@$(PIP) install -e ".[test]"
	@$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "$(KERNEL_DISPLAY_NAME)" >/dev/null
	@echo 'Registered the Jupyter kernel "$(KERNEL_DISPLAY_NAME)"'
	@touch $@

# The server's root is the checkout, so each lesson's link to ../exercises/ opens; it starts on notebooks/.
# Jupyter refuses to start as root, which is what a Docker container or a fresh cloud VM often is.
lab: $(INSTALLED)
	@if [ "$$(id -u)" -eq 0 ]; then echo "Running as root (a container?): starting JupyterLab with --allow-root"; fi
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	    $$([ "$$(id -u)" -eq 0 ] && echo --allow-root) $(LAB_ARGS)

# Each test file runs whole on one worker, so module fixtures and notebook kernels are built once;
# tests/conftest.py refines the groups and starts the longest first.
XDIST = -n $(JOBS) --dist loadfile
test: $(INSTALLED)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# tests/ only, without the tests that execute notebooks, open a browser, run the check corpora or
# start several processes; a hang fails in 60 s. Short tests, handed out one by one to every core.
test-fast: $(INSTALLED)
	$(PY) -m pytest tests -m "not notebooks and not browser and not checks and not processes" \
	    -n $(JOBS) --timeout=60 $(PYTEST_ARGS)

test-checks: $(INSTALLED)
	$(PY) -m pytest tests -m checks $(XDIST) $(PYTEST_ARGS)

# make test already runs the lessons that start processes under both methods
# (tests/test_start_methods.py); this runs every notebook so, lessons, solutions and exercises.
test-start-methods: $(INSTALLED)
	for method in spawn forkserver; do \
	    echo "==> COURSE_START_METHOD=$$method"; \
	    COURSE_START_METHOD=$$method $(PY) -m pytest $(XDIST) \
	        notebooks solutions tests/test_exercises.py $(PYTEST_ARGS) || exit 1; \
	done

# A second environment with the oldest release of everything pyproject.toml allows (each `>=` read
# as `==`, through pip's constraints), for catching a floor that the code has outgrown.
FLOORS_VENV := .venv-floors
$(FLOORS_VENV)/floors.txt: pyproject.toml
	@mkdir -p $(FLOORS_VENV)
	@$(FLOORS_PYTHON) -c 'import sys, tomllib; \
	    project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]; \
	    print("\n".join(r.replace(">=", "==") for r in lines if ">=" in r and not r.startswith("torch")))' > $@

test-floors: $(FLOORS_VENV)/floors.txt
	PIP_CONSTRAINT=$(abspath $(FLOORS_VENV)/floors.txt) $(MAKE) --no-print-directory test-fast \
	    VENV=$(FLOORS_VENV) PYTHON=$(FLOORS_PYTHON) TORCH="$(FLOORS_TORCH)"

exercises: $(INSTALLED)
	$(PY) -m course_lib.instructor.make_exercises

# The committed notebooks carry their outputs, so they read well on a code-hosting site.
outputs: $(INSTALLED)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=300 notebooks/*.ipynb solutions/*.ipynb
	$(PY) -m course_lib.instructor.make_exercises

screenshots: $(INSTALLED)
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/test_browser.py -m browser -q

benchmark: $(INSTALLED)
	$(PY) benchmarks/loop_overhead.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) course_lib.egg-info
