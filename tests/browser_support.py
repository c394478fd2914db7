"""What tests/test_browser.py needs to drive JupyterLab in Chromium.

- `missing_browser_reason()`: why the browser tests cannot run here (no Chromium, no Playwright).
- `prepare_server_root()`: a scratch folder with copies of the notebooks, so that running them in
  the browser never changes a file of the checkout.
- `JupyterLab`: a JupyterLab server on a free loopback port with a token the test chose, its
  configuration, runtime and settings folders all inside the scratch folder.
- `NotebookPage`: one notebook open in a Chromium page, with the few things a learner does to it
  (run every cell, move a slider, type into a cell) and readers for what the cells show.

Everything waits for a condition (the kernel is idle, a picture changed), never for a fixed time.
The page reads the notebook's state through `window.jupyterapp`, which the server exposes for
that purpose (`--LabApp.expose_app_in_browser`): the document model tells an error output from
text on stderr, which the rendered page does not.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import ipywidgets
import nbformat

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

SKIP_MESSAGE = (
    "browser tests skipped: install Chromium (`apt-get install chromium`) and run `make test` "
    "again (Playwright comes with the test extra)"
)

# Playwright drives the system's Chromium; it never downloads a browser of its own. Without the
# background-networking flags Chromium keeps trying to reach Google services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The folders of the checkout that the server shows, copied (the kernel runs in these copies).
SERVED_FOLDERS = ["notebooks", "exercises", "tests/fixtures"]

# Generous limits: JupyterLab loads slowly on two cores, and a lesson trains models.
SERVER_START_TIMEOUT_S = 60
KERNEL_READY_TIMEOUT_S = 90
RUN_ALL_TIMEOUT_S = 240  # lesson 01 trains a dozen small models: over 100 s on a busy machine
CELL_TIMEOUT_S = 60
PLOT_CHANGE_TIMEOUT_S = 90  # the imbalance explorer retrains a model when its slider moves

# JupyterLab settings for the test server: no news or update pop-ups over the screenshots, no
# autosave into the copies, and every cell kept in the page (JupyterLab otherwise leaves
# off-screen cells out of the DOM, and the tests read every cell).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


# ---- can the browser tests run here? -------------------------------------------------------------


def find_chromium() -> str | None:
    """The Chromium to drive: $CHROMIUM_PATH, /usr/bin/chromium, or chromium(-browser) on PATH."""
    candidates = [os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium",
                  shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_browser_reason() -> str | None:
    """SKIP_MESSAGE when Chromium or Playwright is missing, None when both are there."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return SKIP_MESSAGE
    return None if find_chromium() else SKIP_MESSAGE


# ---- which notebooks -----------------------------------------------------------------------------


def lesson_notebooks() -> list[str]:
    """The lesson notebooks, relative to the checkout; the fixture while there are none yet."""
    lessons = sorted((ROOT / "notebooks").glob("*.ipynb"))
    paths = lessons or [FIXTURES / "browser_demo.ipynb"]
    return [path.relative_to(ROOT).as_posix() for path in paths]


def exercise_and_solution(server_root: Path) -> tuple[str, Path]:
    """(exercise path relative to the server root, its solution notebook) for the exercise test.

    Exercise 01 when the server has a copy of it; otherwise the fixture exercise that
    `prepare_server_root` writes.
    """
    exercises = sorted((server_root / "exercises").glob("01_*.ipynb"))
    if exercises and (ROOT / "solutions" / exercises[0].name).is_file():
        name = exercises[0].name
        return f"exercises/{name}", ROOT / "solutions" / name
    return "tests/fixtures/browser_exercise.ipynb", FIXTURES / "browser_exercise_solution.ipynb"


def is_fixture(path: str) -> bool:
    return path.startswith("tests/fixtures/")


def screenshot_name(notebook_path: str) -> str:
    """lesson-06.png for notebooks/06_metrics.ipynb; lesson-<stem>.png for a fixture."""
    stem = Path(notebook_path).stem
    number = re.match(r"\d+", stem)
    return f"lesson-{number.group(0) if number else stem}.png"


def solution_sources(solution_path: Path) -> dict[str, str]:
    """Each solution cell's source (markers removed) by exercise id, as a learner would type it."""
    solution = nbformat.read(solution_path, as_version=4)
    sources = {}
    for cell in solution.cells:
        ident = cell.get("metadata", {}).get("exercise", {}).get("id")
        if cell.cell_type == "code" and ident:
            lines = [line for line in cell.source.splitlines()
                     if not re.match(r"^\s*### (BEGIN|END) SOLUTION", line)]
            sources[ident] = "\n".join(lines)
    return sources


# ---- the server ----------------------------------------------------------------------------------


def prepare_server_root(server_root: Path) -> None:
    """Copy the served folders into `server_root`; write the fixture exercise from its solution."""
    for folder in SERVED_FOLDERS:
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, server_root / folder,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    from course_lib.instructor.make_exercises import make_exercise

    solution = nbformat.read(FIXTURES / "browser_exercise_solution.ipynb", as_version=4)
    exercise = make_exercise(solution, "tests/fixtures/browser_exercise_solution.ipynb")
    nbformat.write(exercise, server_root / "tests" / "fixtures" / "browser_exercise.ipynb")


def wanted_kernels(server_root: Path) -> dict[str, str]:
    """Name -> display name of each kernel the served notebooks ask for, except python3, which
    the server always has (its own interpreter)."""
    wanted = {}
    for path in server_root.rglob("*.ipynb"):
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        spec = metadata.get("kernelspec", {})
        if spec.get("name") and spec["name"] != "python3":
            wanted[spec["name"]] = spec.get("display_name", spec["name"])
    return wanted


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving `server_root`, its state kept under `state_dir`.

    Every kernel the notebooks ask for runs this interpreter (the one running pytest), and imports
    course_lib from this checkout. Nothing is written to the user's Jupyter folders.
    """

    def __init__(self, server_root: Path, state_dir: Path):
        self.server_root = server_root
        self.state_dir = state_dir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir / "jupyterlab.log"
        self.process = None

    def environment(self) -> dict[str, str]:
        folders = {name: self.state_dir / name for name in ("config", "data", "runtime", "settings",
                                                            "workspaces", "ipython")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        # Registered here, the kernels run this interpreter whether or not `make lab` registered
        # them for the user (python -m course_lib.doctor checks that registration).
        for name, display_name in wanted_kernels(self.server_root).items():
            spec_folder = folders["data"] / "kernels" / name
            spec_folder.mkdir(parents=True, exist_ok=True)
            spec = {"argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher",
                             "-f", "{connection_file}"],
                    "display_name": display_name, "language": "python"}
            (spec_folder / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        for plugin, values in LAB_SETTINGS.items():
            path = folders["settings"] / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")
        environment = dict(os.environ)
        # The test suite sets MPLBACKEND=Agg for itself; a kernel inheriting it would draw no plots.
        environment.pop("MPLBACKEND", None)
        environment.update(
            JUPYTER_CONFIG_DIR=str(folders["config"]),
            # Kernels and the widget extension are still found: they live under sys.prefix.
            JUPYTER_DATA_DIR=str(folders["data"]),
            JUPYTER_RUNTIME_DIR=str(folders["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(folders["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(folders["workspaces"]),
            IPYTHONDIR=str(folders["ipython"]),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        return environment

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.server_root}",
            "--ServerApp.allow_root=True",  # CI machines often run as root
            "--ServerApp.log_level=WARN",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
        ]

    def start(self) -> None:
        environment = self.environment()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), env=environment, cwd=self.server_root,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.process.returncode}:\n"
                                   + self.log_tail())
            if self.responds():
                return
            time.sleep(0.2)  # the interval between two polls, not a wait for something to happen
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_TIMEOUT_S} s:\n"
                           + self.log_tail())

    def responds(self) -> bool:
        try:
            self.api("GET", "/api/status")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, method: str, path: str):
        request = urllib.request.Request(self.base_url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}?token={self.token}"

    def shut_down_kernels(self, notebook_path: str | None = None) -> None:
        """End the sessions (and kernels) of one notebook, or all of them."""
        for session in self.api("GET", "/api/sessions"):
            if notebook_path is None or session.get("path") == notebook_path:
                self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.api("POST", "/api/shutdown")  # also ends every kernel
        except (urllib.error.URLError, ConnectionError):
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# ---- what the page shows -------------------------------------------------------------------------

# JavaScript run in the page; `panel` is the notebook on screen.
_PANEL = "const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;"

_KERNEL_READY = _PANEL + """
    const dialog = document.querySelector('.jp-Dialog');
    if (dialog) return 'dialog: ' + dialog.innerText;
    if (!panel || !panel.sessionContext || !panel.context) return false;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!(panel.context.isReady && panel.sessionContext.isReady && kernel
        && kernel.connectionStatus === 'connected' && kernel.status === 'idle');
"""

# Finished: the kernel is idle, no cell waits to run, and either every non-empty code cell has an
# execution count or a cell failed (JupyterLab stops "Run All" at a failing cell).
_RUN_FINISHED = _PANEL + """
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!kernel || kernel.status !== 'idle') return false;
    let allRan = true, failed = false;
    for (const cell of panel.content.widgets) {
        const model = cell.model;
        if (model.type !== 'code') continue;
        if (model.executionState === 'running') return false;
        if (model.sharedModel.getSource().trim() && model.executionCount === null) allRan = false;
        for (let j = 0; j < model.outputs.length; j++) {
            if (model.outputs.get(j).type === 'error') failed = true;
        }
    }
    return allRan || failed;
"""

_CELLS = _PANEL + """
    return panel.content.widgets.map((cell, index) => {
        const model = cell.model;
        const outputs = [];
        const nodes = cell.node.querySelectorAll(
            '.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output');
        if (model.type === 'code') {
            for (let j = 0; j < model.outputs.length; j++) {
                const output = model.outputs.get(j);
                // Only errors are converted: other outputs may hold large images.
                const json = output.type === 'error' ? output.toJSON() : {};
                outputs.push({
                    type: output.type,
                    mimeTypes: Object.keys(output.data || {}),
                    ename: json.ename || '',
                    evalue: json.evalue || '',
                    shown: nodes[j] ? nodes[j].innerText : '',
                    drawsWidget: !!(nodes[j] && nodes[j].querySelector('.jupyter-widgets')),
                });
            }
        }
        return {
            index,
            type: model.type,
            id: model.id,
            tags: model.getMetadata('tags') || [],
            exerciseId: (model.getMetadata('exercise') || {}).id || null,
            source: model.sharedModel.getSource(),
            executionCount: model.type === 'code' ? model.executionCount : null,
            outputs,
        };
    });
"""

# Every live-view progress bar's fraction each time the page changes, from when this is installed.
_RECORD_PROGRESS = """() => {
    const samples = [];
    const fraction = (element) => {
        const bar = element.querySelector('.progress-bar');  // ipywidgets 8 Int/FloatProgress
        if (bar) {
            const vertical = element.classList.contains('widget-vprogress');
            return parseFloat(vertical ? bar.style.height : bar.style.width) / 100;
        }
        const native = element.tagName === 'PROGRESS' ? element : element.querySelector('progress');
        return native ? native.value / native.max : NaN;
    };
    const record = () => {
        document.querySelectorAll('.course-live-progress').forEach((element, index) => {
            const value = fraction(element);
            const seen = samples.filter((sample) => sample.index === index);
            const last = seen.length ? seen[seen.length - 1].fraction : null;
            if (!Number.isNaN(value) && value !== last) {
                samples.push({index, fraction: value, time: performance.now()});
            }
        });
    };
    new MutationObserver(record).observe(document.body, {
        subtree: true, childList: true, attributes: true, attributeFilter: ['style', 'value']});
    window.courseProgressSamples = samples;
}"""

# What an explorer shows apart from its controls: its pictures and its HTML tables.
_EXPLORER_PICTURE = """(selector) => {
    const explorer = document.querySelector(selector);
    if (!explorer) return null;
    const pictures = Array.from(explorer.querySelectorAll('img, svg, canvas'))
        .filter((element) => !element.closest('.widget-slider'))
        .map((element) => element.tagName === 'IMG' ? element.src
             : element.tagName === 'CANVAS' ? element.toDataURL() : element.outerHTML);
    const tables = Array.from(explorer.querySelectorAll('.widget-html'))
        .map((element) => element.innerHTML);
    return pictures.concat(tables).join('\\n');
}"""

# The smallest box around what an element actually draws (a VBox spans the whole notebook width).
_DRAWN_BOX = """(element) => {
    const box = element.getBoundingClientRect();
    let right = box.left;
    for (const child of element.querySelectorAll('*')) {
        const rect = child.getBoundingClientRect();
        if (child.children.length === 0 && rect.width > 0 && rect.height > 0) {
            right = Math.max(right, rect.right);
        }
    }
    const width = Math.min(box.width, right - box.left + 16);
    return {x: box.left, y: box.top, width, height: box.height};
}"""


# Applied only while a screenshot is taken: the selection marker and the floating cell toolbar
# belong to whichever cell the last click selected, not to what the screenshot shows.
_SCREENSHOT_STYLE = """
    .jp-cell-toolbar { display: none !important; }
    .jp-Notebook .jp-Collapser-child { background: transparent !important; }
    .jp-Notebook .jp-Cell.jp-mod-selected { background: transparent !important; }
"""


def widget_class_names() -> list[str]:
    """Names of the ipywidgets classes that have a view, e.g. IntSlider, VBox, Output."""
    return sorted(name for name, value in vars(ipywidgets).items()
                  if isinstance(value, type) and issubclass(value, ipywidgets.DOMWidget))


# Text that JupyterLab shows in place of a widget it cannot draw.
UNDRAWN_WIDGET = re.compile(
    r"^\s*(?:{})\(|Loading widget|Error displaying widget|Error rendering output|"
    r"application/vnd\.jupyter\.widget-view\+json".format("|".join(widget_class_names())),
    re.MULTILINE,
)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def cell_label(cell: dict) -> str:
    first_line = next((line for line in cell["source"].splitlines() if line.strip()), "")
    return f"cell {cell['index']} ({first_line[:60]!r})"


def error_outputs(cells: list[dict]) -> list[str]:
    """One line per error output, leaving out cells tagged raises-exception (errors on purpose)."""
    return [
        f"{cell_label(cell)}: {output['ename']}: {ANSI_ESCAPE.sub('', output['evalue'])}"
        for cell in cells if "raises-exception" not in cell["tags"]
        for output in cell["outputs"] if output["type"] == "error"
    ]


def cells_not_run(cells: list[dict]) -> list[str]:
    return [cell_label(cell) for cell in cells
            if cell["type"] == "code" and cell["source"].strip() and cell["executionCount"] is None]


def undrawn_widgets(cells: list[dict]) -> list[str]:
    """One line per widget output drawn as something other than a control."""
    problems = []
    for cell in cells:
        for output in cell["outputs"]:
            is_widget = "application/vnd.jupyter.widget-view+json" in output["mimeTypes"]
            if is_widget and not output["drawsWidget"]:
                problems.append(f"{cell_label(cell)}: a widget is not drawn; "
                                f"the page shows {output['shown'][:120]!r}")
            elif UNDRAWN_WIDGET.search(output["shown"]):
                problems.append(f"{cell_label(cell)}: shows {output['shown'][:120]!r} "
                                "instead of a widget")
    return problems


def widget_count(cells: list[dict]) -> int:
    return sum(output["drawsWidget"] for cell in cells for output in cell["outputs"])



class NotebookPage:
    """One notebook open in JupyterLab in its own page of the shared browser context."""

    def __init__(self, context, lab: JupyterLab, notebook_path: str):
        self.lab = lab
        self.path = notebook_path
        self.page = context.new_page()

    def open(self) -> None:
        """Open the notebook in a workspace of its own and wait until its kernel is idle."""
        workspace = re.sub(r"\W+", "-", self.path)
        self.page.goto(self.lab.url(f"/lab/workspaces/{workspace}/tree/{quote(self.path)}"))
        ready = self.page.wait_for_function(f"() => {{ {_KERNEL_READY} }}",
                                            timeout=KERNEL_READY_TIMEOUT_S * 1000, polling=100)
        state = ready.json_value()
        if state is not True:  # a dialog, e.g. "Select Kernel" when the kernel is not found
            raise AssertionError(f"JupyterLab asked instead of opening {self.path}: {state}")
        # The file browser closed: more room for the notebook in the screenshots.
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

    def close(self) -> None:
        self.page.close()
        self.lab.shut_down_kernels(self.path)

    # ---- doing what a learner does ----

    def run_all(self) -> None:
        """Clear every output, choose Run > Run All Cells, and wait until the run has finished."""
        self.page.evaluate(
            "() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        self.wait_until_finished(RUN_ALL_TIMEOUT_S)

    def wait_until_finished(self, timeout_s: float) -> None:
        self.page.wait_for_function(f"() => {{ {_RUN_FINISHED} }}",
                                    timeout=timeout_s * 1000, polling=100)

    def replace_source(self, index: int, source: str) -> None:
        """Select everything in cell `index`'s editor and type `source` over it."""
        self.cell(index).locator(".cm-content").click()
        self.page.keyboard.press("ControlOrMeta+a")
        # Inserted as one piece of text, like a paste: no auto-indent or bracket closing.
        self.page.keyboard.insert_text(source)
        typed = self.cells()[index]["source"]
        assert typed == source, f"cell {index} holds {typed!r} after typing {source!r}"

    def run_cell(self, index: int) -> None:
        """Run cell `index` (Ctrl+Enter) and wait until it has finished."""
        before = self.cells()[index]["executionCount"]
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Control+Enter")
        self.page.wait_for_function(
            f"""(args) => {{ {_PANEL}
                const model = panel.content.widgets[args.index].model;
                const kernel = panel.sessionContext.session.kernel;
                return model.executionCount !== args.before && model.executionState === 'idle'
                    && kernel.status === 'idle'; }}""",
            arg={"index": index, "before": before}, timeout=CELL_TIMEOUT_S * 1000, polling=100)

    def move_slider(self, explorer_selector: str) -> tuple[str | None, str | None]:
        """Press an arrow key on the explorer's first slider; return its picture before and after.

        Waits until the picture differs, or PLOT_CHANGE_TIMEOUT_S; then "after" equals "before".
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        handle = self.page.locator(f"{explorer_selector} [role=slider]").first
        at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        before = self.page.evaluate(_EXPLORER_PICTURE, explorer_selector)
        handle.press("ArrowLeft" if at_max else "ArrowRight")
        changed = f"(before) => ({_EXPLORER_PICTURE})({json.dumps(explorer_selector)}) !== before"
        try:
            self.page.wait_for_function(changed, arg=before,
                                        timeout=PLOT_CHANGE_TIMEOUT_S * 1000, polling=100)
        except PlaywrightTimeout:
            pass  # the caller sees an unchanged picture and says so
        return before, self.page.evaluate(_EXPLORER_PICTURE, explorer_selector)

    def record_progress(self) -> None:
        self.page.evaluate(_RECORD_PROGRESS)

    # ---- reading what the page shows ----

    def cell(self, index: int):
        cells = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-cell")
        return cells.nth(index)

    def cells(self) -> list[dict]:
        """Every cell: type, tags, source, execution count, and what model and page show of
        each output."""
        return self.page.evaluate(f"() => {{ {_CELLS} }}")

    def explorers(self) -> list[str]:
        """A CSS selector for each `course-...-explorer` box that holds a slider."""
        return self.page.evaluate("""() => {
            const names = new Set();
            for (const element of document.querySelectorAll('[class*="course-"]')) {
                for (const name of element.classList) {
                    const explorer = /^course-[\\w-]+-explorer$/.test(name);
                    if (explorer && element.querySelector('[role=slider]')) names.add(name);
                }
            }
            return Array.from(names).map((name) => '.' + name);
        }""")

    def progress_samples(self) -> list[dict]:
        return self.page.evaluate("() => window.courseProgressSamples || []")

    # ---- screenshots ----

    def screenshot_around(self, selectors: list[str], path: Path) -> None:
        """The window, scrolled so that the cell holding the first match of `selectors` is at
        the top."""
        for selector in selectors:
            target = self.page.locator(selector).first
            if target.count():
                target.evaluate("(element) => (element.closest('.jp-Notebook-cell') || element)"
                                ".scrollIntoView({block: 'start'})")
                break
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=path, style=_SCREENSHOT_STYLE)

    def screenshot_element(self, locator, path: Path, trim_width: bool = False) -> None:
        """One element; with `trim_width`, cut at the right edge of what it draws."""
        locator.scroll_into_view_if_needed()
        path.parent.mkdir(parents=True, exist_ok=True)
        if trim_width:
            self.page.screenshot(path=path, clip=locator.evaluate(_DRAWN_BOX),
                                 style=_SCREENSHOT_STYLE)
        else:
            locator.screenshot(path=path, style=_SCREENSHOT_STYLE)
