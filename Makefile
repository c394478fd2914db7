# Everyday commands for the workbook. Every target that needs Python first makes sure that .venv exists
# and holds everything pyproject.toml lists; that set-up runs once and again only when pyproject.toml
# or the torch build changes.
#
#   make lab          open JupyterLab on notebooks/
#   make test         run the test suite
#   make test-fast    the tests of course_lib only: no notebooks, browser, check corpora or several processes (under a minute)
#   make test-checks  the wrong-answer corpus of every exercise check
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

PYTHON ?= python3
TORCH ?= torch==2.13.0
LAB_ARGS ?=
PYTEST_ARGS ?=

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
# Both files live inside .venv, so deleting .venv is a full reset.
INSTALLED := $(VENV)/.installed
TORCH_SPEC := $(VENV)/.torch-spec

KERNEL_NAME := training-loops
KERNEL_DISPLAY_NAME := Python (training loops)

.PHONY: help setup lab test test-fast test-checks exercises outputs screenshots benchmark clean FORCE

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

test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

# tests/ only, without the tests that execute notebooks, open a browser, run the check corpora or
# start several processes; a hang fails in 60 s.
test-fast: $(INSTALLED)
	$(PY) -m pytest tests -m "not notebooks and not browser and not checks and not processes" --timeout=60 $(PYTEST_ARGS)

test-checks: $(INSTALLED)
	$(PY) -m pytest tests -m checks $(PYTEST_ARGS)

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
	rm -rf $(VENV) course_lib.egg-info
