"""`python -m course_lib.doctor` names every problem it finds together with its fix.

Each test breaks one thing with monkeypatch (a module that cannot be imported, an old version, a
kernel that is not registered) and checks the one finding that should notice it.
"""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from course_lib import doctor

ROOT = Path(__file__).resolve().parent.parent


def hide_module(monkeypatch, name):
    """Make `import name` fail, as it does where the package is not installed."""
    monkeypatch.setitem(sys.modules, name, None)


def pretend_version(monkeypatch, versions):
    """Report the given versions (module name -> version) and the real ones for other modules."""
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version",
                        lambda name, *rest: versions.get(name) or real(name, *rest))


def pyproject_minimums():
    """The floors this checkout's pyproject.toml declares, read with tomllib (not the doctor's way)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return doctor.minimums_from_requirements(project["requires-python"], project["dependencies"])


@pytest.fixture
def declared(monkeypatch):
    """The doctor judges by this checkout's pyproject.toml, whatever is installed."""
    monkeypatch.setattr(doctor, "declared_minimums", pyproject_minimums)


# ---- the environment the tests run in ------------------------------------------------------------


def test_the_real_environment_reports_no_problems():
    problems = [f"{f.problem} (fix: {f.fix})" for f in doctor.diagnose(in_kernel=False) if not f.ok]
    assert not problems, "the doctor found problems in this environment:\n" + "\n".join(problems)


def test_the_report_names_every_version_the_workbook_depends_on(capsys):
    doctor.run_doctor()
    report = capsys.readouterr().out
    for name in ["Python", "PyTorch", "JupyterLab", "ipywidgets", "jupyterlab_widgets",
                 "matplotlib backend", "scikit-learn", "course_lib", "Jupyter kernel", "device"]:
        assert f"  {name} " in report


def test_the_device_is_the_one_the_training_loop_picks():
    from course_lib.loop import resolve_device

    assert doctor.check_device().found.startswith(resolve_device("auto").type + " (")


# ---- one broken thing at a time ------------------------------------------------------------------


# ---- the minimum versions ----------------------------------------------------------------------


def test_the_doctor_reads_the_floors_pyproject_declares_from_the_installed_metadata():
    install = doctor.course_lib_install()
    if install is None or install["folder"] != ROOT:
        pytest.skip(f"course-lib is installed from {install and install['folder']}, not {ROOT}")
    assert doctor.declared_minimums() == pyproject_minimums(), (
        "the installed course-lib was built from another pyproject.toml: run `make test` again "
        "(it reinstalls when pyproject.toml changes) or `pip install -e .`")


# What sets each floor: the newest feature the code uses, and the release that introduced it.
FLOOR_REASONS = [
    ("python", (3, 11), "course_lib/config.py", "import tomllib"),
    ("torch", (2, 6), "course_lib/loop.py", "nn.utils.get_total_norm("),
    ("scikit-learn", (1, 4), "tests/test_metrics.py", "skm.root_mean_squared_error("),
]


@pytest.mark.parametrize("name, version, path, use", FLOOR_REASONS)
def test_each_floor_is_the_release_that_the_code_needs(name, version, path, use):
    assert use in (ROOT / path).read_text(), (
        f"{path} no longer uses {use!r}: {name}'s floor may be lower than {version}")
    assert pyproject_minimums()[name] == version


def test_minimums_leave_out_extras_and_normalise_names():
    found = doctor.minimums_from_requirements(
        ">=3.11", ["torch>=2.6", "Scikit_Learn >=1.4,<2", 'pytest>=7.4; extra == "test"',
                   "numpy", "tqdm[notebook]>=4.66"])
    assert found == {"python": (3, 11), "torch": (2, 6), "scikit-learn": (1, 4), "tqdm": (4, 66)}


def test_without_an_installed_course_lib_the_checkout_s_pyproject_is_read(monkeypatch):
    def not_installed(name):
        raise doctor.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(doctor.importlib.metadata, "metadata", not_installed)
    monkeypatch.chdir(ROOT)
    assert doctor.declared_minimums() == pyproject_minimums()


@pytest.mark.parametrize("version_info, ok", [((3, 10, 14), False), ((3, 11, 0), True)])
def test_python_below_the_declared_floor_is_a_problem_fixed_by_a_newer_python(declared,
                                                                               version_info, ok):
    finding = doctor.check_python(version_info)
    assert finding.ok == ok
    if not ok:
        assert "3.10.14" in finding.problem and "needs 3.11 or newer" in finding.problem
        assert "Python 3.11+" in finding.fix and "make lab" in finding.fix


@pytest.mark.parametrize("check, module, old, needed", [
    (doctor.check_torch, "torch", "2.5.1", "2.6"),
    (doctor.check_scikit_learn, "sklearn", "1.3.2", "1.4"),
    (lambda: doctor.check_jupyterlab(in_kernel=False), "jupyterlab", "3.6.7", "4.0.2"),
])
def test_a_package_below_the_declared_floor_is_a_problem(declared, monkeypatch, check, module,
                                                         old, needed):
    pretend_version(monkeypatch, {module: old})
    finding = check()
    assert not finding.ok
    assert f"needs {needed} or newer" in finding.problem


def test_missing_torch_is_a_problem_fixed_by_make_lab(monkeypatch):
    hide_module(monkeypatch, "torch")
    finding = doctor.check_torch()
    assert not finding.ok
    assert "make lab" in finding.fix


def test_torch_that_is_installed_but_does_not_import_is_a_problem(monkeypatch):
    hide_module(monkeypatch, "torch")
    pretend_version(monkeypatch, {"torch": "2.13.0"})
    finding = doctor.check_torch()
    assert not finding.ok
    assert "does not import" in finding.problem


def test_without_torch_the_device_is_unknown_but_not_a_second_problem(monkeypatch):
    hide_module(monkeypatch, "torch")
    assert doctor.check_device().ok


def test_a_cuda_build_without_a_gpu_is_a_note_not_a_problem(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    finding = doctor.check_device()
    assert finding.ok
    assert finding.found.startswith("cpu")
    assert "no GPU" in finding.note


def test_missing_ipywidgets_is_a_problem_with_a_pip_fix(monkeypatch):
    hide_module(monkeypatch, "ipywidgets")
    finding = doctor.check_ipywidgets()
    assert not finding.ok
    assert "pip install -U ipywidgets jupyterlab_widgets" in finding.fix


def test_ipywidgets_7_is_a_problem_because_widgets_show_as_text(monkeypatch):
    pretend_version(monkeypatch, {"ipywidgets": "7.8.1"})
    finding = doctor.check_ipywidgets()
    assert not finding.ok
    assert "IntSlider(" in finding.problem
    assert "pip install -U ipywidgets jupyterlab_widgets" in finding.fix


def test_missing_jupyterlab_widgets_is_a_problem_with_a_pip_fix(monkeypatch):
    hide_module(monkeypatch, "jupyterlab_widgets")
    finding = doctor.check_jupyterlab_widgets(in_kernel=False)
    assert not finding.ok
    assert "pip install -U ipywidgets jupyterlab_widgets" in finding.fix


def test_jupyterlab_widgets_for_ipywidgets_7_does_not_draw_ipywidgets_8(monkeypatch):
    pretend_version(monkeypatch, {"ipywidgets": "8.1.5", "jupyterlab_widgets": "1.1.11"})
    finding = doctor.check_jupyterlab_widgets(in_kernel=False)
    assert not finding.ok
    assert "3.x" in finding.problem


def test_jupyterlab_widgets_without_its_jupyterlab_extension_is_a_problem(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "labextension_folders", lambda: [tmp_path])
    finding = doctor.check_jupyterlab_widgets(in_kernel=False)
    assert not finding.ok
    assert str(tmp_path) in finding.problem


def test_inside_a_kernel_the_widget_check_says_whose_environment_it_saw():
    finding = doctor.check_jupyterlab_widgets(in_kernel=True)
    assert finding.ok
    assert "kernel's environment" in finding.note


def test_a_backend_that_draws_nothing_is_a_problem_only_inside_a_notebook(monkeypatch):
    import matplotlib

    monkeypatch.setattr(matplotlib, "get_backend", lambda auto_select=True: "agg")
    assert not doctor.check_matplotlib_backend(in_kernel=True).ok
    assert doctor.check_matplotlib_backend(in_kernel=False).ok


def test_missing_scikit_learn_is_a_problem_fixed_by_make_lab(monkeypatch):
    hide_module(monkeypatch, "sklearn")
    finding = doctor.check_scikit_learn()
    assert not finding.ok
    assert "make lab" in finding.fix


def test_course_lib_imported_from_another_checkout_is_a_problem(tmp_path):
    finding = doctor.check_course_lib(checkout=tmp_path)
    assert not finding.ok
    assert str(tmp_path) in finding.problem
    assert "pip install -e ." in finding.fix


def test_course_lib_not_installed_is_a_problem(monkeypatch):
    monkeypatch.setattr(doctor, "course_lib_install", lambda: None)
    finding = doctor.check_course_lib(checkout=ROOT)
    assert not finding.ok
    assert "pip install -e ." in finding.fix


def test_course_lib_installed_as_a_copy_is_a_problem(monkeypatch):
    monkeypatch.setattr(doctor, "course_lib_install", lambda: {"editable": False, "folder": None})
    finding = doctor.check_course_lib(checkout=ROOT)
    assert not finding.ok
    assert "pip install -e ." in finding.fix


def test_course_lib_installed_editable_from_another_folder_is_a_problem(monkeypatch, tmp_path):
    install = {"editable": True, "folder": tmp_path}
    monkeypatch.setattr(doctor, "course_lib_install", lambda: install)
    finding = doctor.check_course_lib(checkout=ROOT)
    assert not finding.ok
    assert str(tmp_path) in finding.problem


def test_an_unregistered_kernel_is_a_problem_fixed_by_make_lab(monkeypatch):
    monkeypatch.setattr(doctor, "kernel_specs", lambda: {"python3": "/somewhere/python3"})
    finding = doctor.check_kernel()
    assert not finding.ok
    assert doctor.KERNEL_NAME in finding.problem
    assert "make lab" in finding.fix


def test_the_report_lists_each_problem_with_its_fix():
    findings = [
        doctor.Finding("Python", "3.11.7"),
        doctor.Finding("ipywidgets", "none", problem="ipywidgets is missing", fix="pip it"),
    ]
    report = doctor.format_report(findings, in_kernel=False)
    assert "1 problem found" in report
    assert "✗ ipywidgets is missing\n    fix: pip it" in report
    assert "No problems found" not in report


# ---- the command line ----------------------------------------------------------------------------


def run_cli(cwd):
    """`python -m course_lib.doctor` in `cwd` (importing PyTorch takes several seconds)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "course_lib.doctor"],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=300,
    )


def test_main_returns_0_when_nothing_is_wrong(capsys):
    status = doctor.main()
    report = capsys.readouterr().out
    assert status == 0, report
    assert "No problems found." in report


def test_the_command_exits_1_and_prints_the_fix_when_something_is_wrong(tmp_path):
    # Run from another checkout of the workbook: course_lib is still imported from this one.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "course-lib"\n')
    result = run_cli(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fix: `pip install -e .`" in result.stdout


def test_main_returns_1_when_a_check_finds_a_problem(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "kernel_specs", lambda: {})
    assert doctor.main() == 1
    assert "fix:" in capsys.readouterr().out


@pytest.mark.parametrize("version, expected", [("2.13.0+cpu", (2, 13, 0)), ("8.1.9", (8, 1, 9)),
                                               ("3.0.0rc1", (3, 0, 0)), ("nightly", ())])
def test_version_tuple_reads_the_leading_numbers(version, expected):
    assert doctor.version_tuple(version) == expected
