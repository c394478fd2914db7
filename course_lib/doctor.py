"""Check that this machine can run the workbook (introduced in lesson 01).

From a terminal, in the checkout:

    python -m course_lib.doctor        # exit status 0 when nothing is wrong, 1 otherwise

From the first cell of lesson 01:

    from course_lib.doctor import run_doctor
    findings = run_doctor()            # assign it, or the notebook echoes the whole list

Where `import course_lib` itself fails (its `__init__` imports PyTorch), run the file instead:
`python course_lib/doctor.py`.

The report names the versions that matter (Python, PyTorch, JupyterLab, the widget packages,
matplotlib's backend, scikit-learn), where `course_lib` is imported from, the device the lessons
will train on, and every problem with the command that fixes it.

Each check is a small function that returns one `Finding`, so that a test can break one thing at a
time with monkeypatch. Inside a notebook the report is plain printed text, never a widget: the
doctor is the tool to reach for when widgets do not show.

Inside a Jupyter kernel every check sees the *kernel's* environment. JupyterLab draws the widgets
with the `jupyterlab_widgets` of the environment JupyterLab itself runs from; `make lab` runs both
from `.venv`, so the two agree unless JupyterLab was started some other way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

# The kernel that the Makefile registers and that every notebook asks for.
KERNEL_NAME = "training-loops"
KERNEL_DISPLAY_NAME = "Python (training loops)"

# The oldest versions are not written here: `declared_minimums` reads them from what pyproject.toml
# declares, so that the doctor and the installer cannot disagree.

# ipywidgets talks to JupyterLab through the jupyterlab_widgets extension, and each ipywidgets major
# version speaks to exactly one major version of it: a mismatch shows "Loading widget..." forever.
JUPYTERLAB_WIDGETS_MAJOR_FOR_IPYWIDGETS_MAJOR = {7: 1, 8: 3}

# The path, inside a folder on jupyter_path("labextensions"), where jupyterlab_widgets puts the
# JavaScript that JupyterLab loads to draw widgets.
WIDGETS_LABEXTENSION = Path("@jupyter-widgets") / "jupyterlab-manager" / "package.json"

# Backends that draw into a file or into nothing: inside a notebook, plots would not appear.
NON_DISPLAYING_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}

WIDGETS_FIX = "pip install -U ipywidgets jupyterlab_widgets  (or rerun `make lab`)"


@dataclass(frozen=True)
class Finding:
    """What one check found: a value to report and, when something is wrong, how to fix it."""

    name: str  # what was checked, as the report's left column shows it
    found: str  # what was found: a version, a path, a device
    problem: str = ""  # empty when all is well
    fix: str = ""  # the command or step that repairs the problem
    note: str = ""  # worth knowing, but not a problem

    @property
    def ok(self) -> bool:
        return not self.problem


# ---- small helpers the checks share --------------------------------------------------------------


def installed_version(module_name: str, distribution_name: str | None = None) -> str | None:
    """The installed version of a package, or None when its module cannot be found.

    The module is looked up, not imported: importing jupyterlab alone can take ten seconds.
    `distribution_name` is the name pip knows the package by, when it differs (sklearn is
    scikit-learn).
    """
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    try:
        return importlib.metadata.version(distribution_name or module_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def version_tuple(version: str) -> tuple[int, ...]:
    """(2, 13) from "2.13.0+cpu": the leading numbers, enough to compare against a minimum."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in numbers.group(0).split(".")) if numbers else ()


def minimums_from_requirements(requires_python: str | None, requirements: list[str]) -> dict:
    """{"python": (3, 11), "torch": (2, 6), ...}: each `>=` floor of the given requirements.

    `requirements` are lines such as "torch>=2.6" or 'pytest>=7.4; extra == "test"'; those that
    only an extra needs are left out. Names are lower-case with "-" (scikit-learn).
    """
    found = {}
    python_floor = re.search(r">=\s*([\d.]+)", requires_python or "")
    if python_floor:
        found["python"] = version_tuple(python_floor.group(1))
    for line in requirements:
        if "extra" in line.partition(";")[2]:
            continue
        match = re.match(r"\s*([A-Za-z0-9][\w.-]*)\s*(?:\[[^\]]*\])?\s*\(?([^;]*)", line)
        floor = re.search(r">=\s*([\d.]+)", match.group(2)) if match else None
        if floor:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            found[name] = version_tuple(floor.group(1))
    return found


def _pyproject_requirements(pyproject: Path) -> tuple[str | None, list[str]]:
    """requires-python and [project] dependencies, read without tomllib (Python 3.11+ only)."""
    text = pyproject.read_text(encoding="utf-8")
    requires_python = re.search(r'^requires-python\s*=\s*"([^"]*)"', text, re.MULTILINE)
    dependencies = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    lines = re.findall(r'^\s*"([^"]+)"', dependencies.group(1), re.MULTILINE) if dependencies else []
    return (requires_python.group(1) if requires_python else None), lines


def declared_minimums() -> dict:
    """The oldest versions the workbook declares, from the installed course-lib's metadata.

    pip writes that metadata from pyproject.toml when it installs course-lib. Where course-lib is
    not installed (the doctor run as a file), the checkout's pyproject.toml is read instead; {} when
    neither can be found.
    """
    try:
        metadata = importlib.metadata.metadata("course-lib")
    except importlib.metadata.PackageNotFoundError:
        checkout = find_checkout(Path.cwd()) or find_checkout(course_lib_folder())
        if checkout is None:
            return {}
        return minimums_from_requirements(*_pyproject_requirements(checkout / "pyproject.toml"))
    return minimums_from_requirements(metadata.get("Requires-Python"),
                                      metadata.get_all("Requires-Dist") or [])


def too_old(version: str | tuple, name: str) -> str | None:
    """"3.11" when `version` is below the declared minimum for `name`, else None."""
    minimum = declared_minimums().get(name)
    version = version_tuple(version) if isinstance(version, str) else tuple(version)
    if minimum and version[: len(minimum)] < minimum:
        return ".".join(str(part) for part in minimum)
    return None


def running_in_kernel() -> bool:
    """True inside a Jupyter kernel (a notebook), False in a terminal."""
    shell_module = sys.modules.get("IPython")
    if shell_module is None:
        return False
    shell = shell_module.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def find_checkout(start: Path) -> Path | None:
    """The folder at or above `start` whose pyproject.toml is this workbook's, or None."""
    for folder in [start, *start.parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and re.search(
            r'^name\s*=\s*"course-lib"', pyproject.read_text(encoding="utf-8"), re.MULTILINE
        ):
            return folder
    return None


def course_lib_folder() -> Path:
    """The folder that holds the `course_lib` package being imported right now."""
    return Path(__file__).resolve().parent.parent


def course_lib_install() -> dict | None:
    """How pip installed course-lib, {"editable": bool, "folder": Path or None}, or None."""
    # PEP 610: pip records in direct_url.json where an install came from and if it was editable.
    # A course_lib.egg-info that a build left in the checkout has none and installs nothing; it is
    # found only when the checkout is the current folder, so an installed copy must win over it.
    distributions = list(importlib.metadata.distributions(name="course-lib"))
    recorded = [d for d in distributions if d.read_text("direct_url.json")]
    installed = recorded or [
        d for d in distributions if Path(d.locate_file("")).resolve() != course_lib_folder()
    ]
    if not installed:
        return None
    direct_url = json.loads(installed[0].read_text("direct_url.json") or "{}")
    url = urlparse(direct_url.get("url", ""))
    folder = Path(unquote(url.path)).resolve() if url.scheme == "file" else None
    return {"editable": bool(direct_url.get("dir_info", {}).get("editable")), "folder": folder}


def kernel_specs() -> dict[str, str] | None:
    """Registered Jupyter kernels (name -> folder), or None when jupyter_client is missing."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        return None
    return KernelSpecManager().find_kernel_specs()


def labextension_folders() -> list[Path]:
    """The folders JupyterLab searches for prebuilt extensions, in this environment."""
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return []
    return [Path(folder) for folder in jupyter_path("labextensions")]


# ---- the checks, in the order the report prints them ---------------------------------------------


def check_python(version_info: tuple | None = None) -> Finding:
    version_info = tuple(sys.version_info if version_info is None else version_info)
    found = ".".join(str(part) for part in version_info[:3])
    minimum = too_old(version_info[:3], "python")
    if minimum:
        return Finding(
            "Python",
            found,
            problem=f"Python {found} is too old: the workbook needs {minimum} or newer",
            fix=f"use Python {minimum}+, then `make lab` "
            "(for example `make clean && make lab PYTHON=python3.12`)",
        )
    return Finding("Python", found)


def check_torch() -> Finding:
    version = installed_version("torch")
    if version is None:
        return Finding("PyTorch", "not installed", problem="PyTorch is not installed",
                       fix="`make lab`")
    try:
        import torch
    except (ImportError, OSError) as error:  # e.g. a CUDA build whose libraries are missing
        return Finding(
            "PyTorch",
            f"{version}, fails to import",
            problem=f"PyTorch {version} is installed but does not import: {error}",
            fix="`make clean`, then `make lab` (add TORCH=... to pick another build)",
        )
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    else:
        build = "CPU build"
    found = f"{version} ({build})"
    minimum = too_old(version, "torch")
    if minimum:
        return Finding(
            "PyTorch",
            found,
            problem=f"PyTorch {version} is too old: the workbook needs {minimum} or newer",
            fix=f"`make lab`, or `make lab TORCH=...` naming a build that is {minimum} or newer",
        )
    return Finding("PyTorch", found)


def check_jupyterlab(in_kernel: bool) -> Finding:
    version = installed_version("jupyterlab")
    if version is None:
        if in_kernel:
            # This kernel may belong to a JupyterLab that lives in another environment.
            return Finding(
                "JupyterLab",
                "not in the kernel's environment",
                note="JupyterLab runs from another environment than this kernel; "
                "`make lab` runs both from .venv",
            )
        return Finding("JupyterLab", "not installed", problem="JupyterLab is not installed",
                       fix="`make lab`")
    minimum = too_old(version, "jupyterlab")
    if minimum:
        return Finding(
            "JupyterLab",
            version,
            problem=f"JupyterLab {version} is too old: the workbook needs {minimum} or newer",
            fix="`make lab` (or `pip install -U jupyterlab`)",
        )
    return Finding("JupyterLab", version)


def check_ipywidgets() -> Finding:
    version = installed_version("ipywidgets")
    if version is None:
        return Finding(
            "ipywidgets",
            "not installed",
            problem="ipywidgets is not installed: the lessons' sliders and live training view "
            "cannot run",
            fix=WIDGETS_FIX,
        )
    if too_old(version, "ipywidgets"):
        return Finding(
            "ipywidgets",
            version,
            problem=f"ipywidgets {version} is too old: widgets show as text such as "
            "`IntSlider(value=0)` instead of controls",
            fix=WIDGETS_FIX,
        )
    return Finding("ipywidgets", version)


def check_jupyterlab_widgets(in_kernel: bool) -> Finding:
    """jupyterlab_widgets draws widgets in JupyterLab; it must match ipywidgets and be installed."""
    where = "the kernel's environment" if in_kernel else "this environment"
    version = installed_version("jupyterlab_widgets")
    if version is None:
        return Finding(
            "jupyterlab_widgets",
            "not installed",
            problem=f"jupyterlab_widgets is not installed in {where}: JupyterLab shows "
            "'Loading widget...' or `IntSlider(...)` text instead of widgets",
            fix=WIDGETS_FIX,
        )
    ipywidgets_version = installed_version("ipywidgets")
    if ipywidgets_version is None or too_old(ipywidgets_version, "ipywidgets"):
        return Finding("jupyterlab_widgets", f"{version}; widgets render once ipywidgets is fixed")
    ipywidgets_major = version_tuple(ipywidgets_version)[0]
    wanted_major = JUPYTERLAB_WIDGETS_MAJOR_FOR_IPYWIDGETS_MAJOR.get(ipywidgets_major)
    if wanted_major is not None and version_tuple(version)[:1] != (wanted_major,):
        return Finding(
            "jupyterlab_widgets",
            version,
            problem=f"jupyterlab_widgets {version} does not match ipywidgets {ipywidgets_version} "
            f"(which needs jupyterlab_widgets {wanted_major}.x): widgets stay at "
            "'Loading widget...'",
            fix=WIDGETS_FIX,
        )
    folders = labextension_folders()
    if folders and not any((folder / WIDGETS_LABEXTENSION).is_file() for folder in folders):
        return Finding(
            "jupyterlab_widgets",
            version,
            problem="jupyterlab_widgets is importable but its JupyterLab extension is missing from "
            + ", ".join(str(folder) for folder in folders),
            fix="pip install --force-reinstall jupyterlab_widgets  (or rerun `make lab`)",
        )
    note = (
        "widgets were checked in this kernel's environment; they render if JupyterLab runs from "
        "it too, as it does under `make lab`"
        if in_kernel
        else ""
    )
    return Finding("jupyterlab_widgets", f"{version}; widgets will render", note=note)


def check_matplotlib_backend(in_kernel: bool) -> Finding:
    if installed_version("matplotlib") is None:
        return Finding("matplotlib", "not installed", problem="matplotlib is not installed",
                       fix="`make lab`")
    import matplotlib

    try:
        # Asks without choosing one: choosing would import a GUI toolkit in a terminal.
        backend = matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib before 3.10 has no auto_select and never chooses early
        backend = matplotlib.rcParams["backend"]
    if backend is None:
        return Finding("matplotlib backend", "not chosen yet (the first plot chooses one)")
    if in_kernel and backend.lower() in NON_DISPLAYING_BACKENDS:
        return Finding(
            "matplotlib backend",
            backend,
            problem=f"matplotlib's backend is {backend!r}, which draws nothing in a notebook",
            fix="start JupyterLab without MPLBACKEND set (`make lab` does), "
            "or run `%matplotlib inline`",
        )
    return Finding("matplotlib backend", backend)


def check_scikit_learn() -> Finding:
    version = installed_version("sklearn", "scikit-learn")
    if version is None:
        return Finding(
            "scikit-learn",
            "not installed",
            problem="scikit-learn is not installed: the lessons take their datasets from it",
            fix="`make lab`",
        )
    minimum = too_old(version, "scikit-learn")
    if minimum:
        return Finding(
            "scikit-learn",
            version,
            problem=f"scikit-learn {version} is too old: the workbook needs {minimum} or newer",
            fix="`make lab` (or `pip install -U scikit-learn`)",
        )
    return Finding("scikit-learn", version)


def check_course_lib(checkout: Path | None = None) -> Finding:
    """course_lib must be an editable install of this checkout, so that edits to it are seen."""
    if checkout is None:
        checkout = find_checkout(Path.cwd()) or course_lib_folder()
    imported_from = course_lib_folder()
    install = course_lib_install()
    reinstall = f"`pip install -e .` in {checkout} (with the Python that runs the kernel)"
    if imported_from != checkout.resolve():
        return Finding(
            "course_lib",
            f"imported from {imported_from}",
            problem=f"course_lib is imported from {imported_from}, "
            f"not from this checkout ({checkout})",
            fix=reinstall,
        )
    if install is None:
        return Finding(
            "course_lib",
            "not installed",
            problem="course_lib is not installed, so notebooks in other folders cannot import it",
            fix=f"`make lab`, or {reinstall}",
        )
    if not install["editable"]:
        return Finding(
            "course_lib",
            "installed as a copy",
            problem="course_lib is installed as a copy, so changes to course_lib/ are not seen",
            fix=reinstall,
        )
    if install["folder"] != checkout.resolve():
        return Finding(
            "course_lib",
            f"editable install of {install['folder']}",
            problem=f"course_lib is installed from {install['folder']}, "
            f"not from this checkout ({checkout})",
            fix=reinstall,
        )
    return Finding("course_lib", f"editable install of {checkout}")


def check_kernel() -> Finding:
    specs = kernel_specs()
    register = (
        "`make lab` registers it; by hand: python -m ipykernel install --sys-prefix "
        f'--name {KERNEL_NAME} --display-name "{KERNEL_DISPLAY_NAME}"'
    )
    if specs is None:
        return Finding(
            "Jupyter kernel", "unknown", problem="jupyter_client is not installed", fix="`make lab`"
        )
    if KERNEL_NAME not in specs:
        return Finding(
            "Jupyter kernel",
            "not registered",
            problem=f'the kernel "{KERNEL_DISPLAY_NAME}" ({KERNEL_NAME}) that the notebooks use '
            "is not registered",
            fix=register,
        )
    return Finding("Jupyter kernel", f'"{KERNEL_DISPLAY_NAME}" registered in {specs[KERNEL_NAME]}')


def check_device() -> Finding:
    """The device that `course_lib`'s device="auto" picks: cuda, then mps, then cpu."""
    try:
        import torch

        from course_lib.loop import resolve_device
    except (ImportError, OSError):  # the PyTorch and course_lib checks say why
        return Finding("device", "unknown until PyTorch and course_lib import")

    device = resolve_device("auto")
    found = f"{device.type} ({torch.get_num_threads()} CPU threads, {os.cpu_count()} CPU cores)"
    if device.type == "cpu" and torch.version.cuda:
        return Finding(
            "device",
            found,
            note=f"PyTorch is a CUDA {torch.version.cuda} build but no GPU is visible: the lessons "
            "run on the CPU, which is fine (every model is small)",
        )
    return Finding("device", found)


# ---- the report ----------------------------------------------------------------------------------


def diagnose(in_kernel: bool | None = None) -> list[Finding]:
    """Run every check and return the findings, printing nothing."""
    if in_kernel is None:
        in_kernel = running_in_kernel()
    return [
        check_python(),
        check_torch(),
        check_jupyterlab(in_kernel),
        check_ipywidgets(),
        check_jupyterlab_widgets(in_kernel),
        check_matplotlib_backend(in_kernel),
        check_scikit_learn(),
        check_course_lib(),
        check_kernel(),
        check_device(),
    ]


def format_report(findings: list[Finding], in_kernel: bool) -> str:
    """The findings as plain text: one line each, then the notes, then each problem and its fix."""
    where = f"the Jupyter kernel's environment, {sys.prefix}" if in_kernel else sys.prefix
    lines = [f"Workbook doctor, checking {where}"]
    width = max(len(finding.name) for finding in findings)
    lines += [f"  {finding.name:<{width}}  {finding.found}" for finding in findings]
    notes = [finding for finding in findings if finding.note]
    if notes:
        lines.append("")
        lines += [f"  note: {finding.note}" for finding in notes]
    problems = [finding for finding in findings if not finding.ok]
    lines.append("")
    if not problems:
        lines.append("No problems found.")
        return "\n".join(lines)
    lines.append(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} found:")
    for finding in problems:
        lines.append(f"  ✗ {finding.problem}")
        lines.append(f"    fix: {finding.fix}")
    return "\n".join(lines)


def run_doctor() -> list[Finding]:
    """Print the report and return the findings (problems are those with `finding.ok` False)."""
    in_kernel = running_in_kernel()
    findings = diagnose(in_kernel)
    print(format_report(findings, in_kernel))
    return findings


def main() -> int:
    findings = run_doctor()
    return 0 if all(finding.ok for finding in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
