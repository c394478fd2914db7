"""The three ways to install the workbook must agree.

pyproject.toml is the source of truth; environment.yml repeats its package list for conda users, and
the Makefile pins the torch build that `make lab` and `make test` install first. These tests fail,
naming the package, as soon as one of them drifts.
"""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

import yaml  # PyYAML comes with JupyterLab (through jupyter_events)
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def normalised(name: str) -> str:
    """The name as pip compares it: case, '-', '_' and '.' do not matter (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    return [Requirement(line) for line in lines]


def environment_pip_lines() -> list[str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert len(sections) == 1, "environment.yml should have exactly one pip: section"
    return [str(line).strip() for line in sections[0]]


def environment_requirements() -> list[Requirement]:
    # Lines starting with '-' are pip options such as `-e .`, not packages.
    return [Requirement(line) for line in environment_pip_lines() if not line.startswith("-")]


def makefile_torch_requirement() -> Requirement:
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"TORCH\s*\?=\s*(\S+)", line)
        if match:
            return Requirement(match.group(1))
    raise AssertionError("the Makefile has no `TORCH ?= ...` line")


def pinned_version(requirement: Requirement) -> Version:
    pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
    assert len(pins) == 1, f"{requirement} should pin exactly one version with =="
    return Version(pins[0])


def drift(pyproject_names: set[str], environment_names: set[str]) -> list[str]:
    """One readable line per package that only one of the two lists names."""
    ignored = {"pip", "python"}
    only_pyproject = sorted(pyproject_names - environment_names - ignored)
    only_environment = sorted(environment_names - pyproject_names - ignored)
    return [f"{name}: in pyproject.toml, missing from environment.yml" for name in only_pyproject] + [
        f"{name}: in environment.yml, missing from pyproject.toml" for name in only_environment
    ]


def test_drift_names_each_package_that_only_one_list_has():
    report = drift({"torch", "numpy", "pytest"}, {"torch", "numpy", "scipy", "pip"})
    assert report == [
        "pytest: in pyproject.toml, missing from environment.yml",
        "scipy: in environment.yml, missing from pyproject.toml",
    ]


def test_normalised_names_ignore_case_and_separators():
    assert normalised("Scikit_Learn") == normalised("scikit-learn") == normalised("scikit.learn")


def test_environment_yml_names_the_same_packages_as_pyproject():
    report = drift(
        {normalised(requirement.name) for requirement in pyproject_requirements()},
        {normalised(requirement.name) for requirement in environment_requirements()},
    )
    assert not report, "environment.yml and pyproject.toml disagree:\n" + "\n".join(report)


def test_environment_yml_installs_course_lib_in_editable_mode():
    assert "-e ." in environment_pip_lines()


def test_makefile_torch_pin_satisfies_the_pyproject_range():
    (torch_range,) = [r for r in pyproject_requirements() if normalised(r.name) == "torch"]
    pin = pinned_version(makefile_torch_requirement())
    assert torch_range.specifier.contains(pin, prereleases=True), (
        f"the Makefile installs torch {pin}, outside pyproject.toml's range {torch_range.specifier}; "
        "pip would replace it with another build"
    )


def makefile_variable(name: str) -> str:
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(rf"{name}\s*\?=\s*(.+)", line)
        if match:
            return match.group(1).strip()
    raise AssertionError(f"the Makefile has no `{name} ?= ...` line")


def test_make_test_floors_installs_the_torch_floor_of_pyproject():
    (torch_range,) = [r for r in pyproject_requirements() if normalised(r.name) == "torch"]
    (floor,) = [spec.version for spec in torch_range.specifier if spec.operator == ">="]
    assert pinned_version(Requirement(makefile_variable("FLOORS_TORCH"))) == Version(floor), (
        "FLOORS_TORCH in the Makefile should install the oldest torch that pyproject.toml allows")


def test_ci_installs_the_torch_build_that_the_makefile_pins():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    torch_line = workflow["jobs"]["test"]["steps"][-1]["env"]["TORCH"]
    assert pinned_version(Requirement(torch_line.split()[0])) == pinned_version(
        makefile_torch_requirement())


def test_environment_yml_pins_the_same_torch_as_the_makefile():
    (torch_line,) = [r for r in environment_requirements() if normalised(r.name) == "torch"]
    assert pinned_version(torch_line) == pinned_version(makefile_torch_requirement())


def fake_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize("uid, allowed", [("0", True), ("1000", False)])
def test_make_lab_passes_allow_root_only_as_root_and_says_so(tmp_path, uid, allowed):
    # A fake `id` and a fake jupyter that prints its arguments; -o keeps make from installing.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake_command(venv / "bin", "jupyter", 'echo "jupyter $*"')
    fake_command(tmp_path, "id", f"echo {uid}")
    result = subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", "lab"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    jupyter_line = [line for line in result.stdout.splitlines() if line.startswith("jupyter ")]
    assert len(jupyter_line) == 1
    assert ("--allow-root" in jupyter_line[0]) == allowed
    assert ("Running as root" in result.stdout) == allowed
