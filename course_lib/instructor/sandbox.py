"""The box a submission's kernel runs in while it is graded (bubblewrap, Linux).

Each submission gets a throw-away folder of its own, made fresh and removed after grading:

    <folder>/work   the kernel's working folder (a copy of nothing: the grader runs the notebook
                    it builds over the kernel protocol, it never writes the learner's file here)
    <folder>/lib    a copy of the `course_lib` package, without `course_lib.instructor`
                    (bound read-only: the checks and their helpers cannot be rewritten on disk)
    <folder>/home   HOME, with a copy of matplotlib's font cache so no kernel rebuilds it
    <folder>/tmp    TMPDIR
    <folder>/ipc    the kernel's connection file and its unix sockets

`bwrap` then starts the kernel with every namespace unshared (`--unshare-all`: user, PID,
network, IPC, UTS, cgroup), so:

- the file system holds the system folders (/usr, /lib, /etc's few shared files) and the
  interpreter's own folders (the virtual environment, the base Python), all read-only, and the
  submission's folder above: the repository, `solutions/`, `exercises/`, the other submissions,
  the gradebook and the grader's HOME are not there to read or write;
- there is no network, only a loopback of its own (the kernel talks to the grader over jupyter's
  `ipc` transport, unix sockets in `<folder>/ipc`, which is why that folder is shared);
- the kernel sees only its own processes: the grader's /proc/<pid>/environ and command line are
  out of reach;
- every capability is dropped (`--cap-drop ALL`) even when the grader runs as root, and
  `--die-with-parent` plus the PID namespace mean that when the kernel's `bwrap` ends, every
  process the submission started ends with it: nothing survives grading to rewrite a file later;
- inside, a small Python wrapper sets resource limits before it starts the kernel: address space
  (memory), open files, processes (RLIMIT_NPROC, which Linux does not enforce for root, so as root
  the PID namespace and the wall-clock limit are what stop a fork bomb), and CPU seconds; the
  grader also kills the whole box when the notebook runs past its wall-clock limit.

The environment the kernel gets is the one the grader builds (`grade.kernel_env`), with HOME,
TMPDIR and PYTHONPATH pointing into the folder above.

Interrupts: jupyter interrupts a kernel by sending SIGINT to its process group, which holds
`bwrap` too; `bwrap` is started with SIGINT ignored (an ignored signal stays ignored across exec)
so that it survives, and the wrapper inside restores the default before the kernel starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: "
    "`sudo dnf install bubblewrap`), or pass --no-sandbox to grade without one (learner code "
    "then runs with the grader's rights: only for notebooks you trust)"
)

# Read-only system folders bound when they exist: programs, libraries, and the few files under
# /etc that programs read (the dynamic linker's cache, time zones, SSL roots, users and groups).
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates", "/etc/passwd", "/etc/group",
    "/etc/nsswitch.conf", "/etc/hosts", "/etc/fonts", "/etc/matplotlibrc",
)

# The limits, per submission. Memory is address space, generous because torch maps far more than
# it uses; the process count is per user (see the module docstring for root).
MEMORY_BYTES = 16 * 1024**3
MAX_PROCESSES = 512
MAX_OPEN_FILES = 4096

# Runs inside the box: limits, SIGINT back to its default, then the kernel. ipykernel watches
# the PID named by JPY_PARENT_PID and quits when its parent differs; in the box its parent is
# bwrap's init, so the variable goes (the box's end ends the kernel anyway).
_LIMITS_WRAPPER = """\
import os, resource, signal, sys
memory, processes, files, cpu = (int(x) for x in sys.argv[1:5])
for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes),
                     (resource.RLIMIT_NOFILE, files), (resource.RLIMIT_CPU, cpu)):
    hard = resource.getrlimit(limit)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(limit, (value, value))
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.environ.pop("JPY_PARENT_PID", None)  # a host PID: ipykernel would see its parent as gone
os.execv(sys.argv[5], sys.argv[5:])
"""

# Runs outside, as the process the kernel manager starts: SIGINT ignored, then bwrap.
_IGNORE_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot make a sandbox here."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _interpreter_folders() -> list[Path]:
    """What the kernel's interpreter needs: its prefix (the virtual environment), the base Python,
    and every site-packages folder on sys.path outside those (a user site, for example)."""
    folders = [Path(folder) for folder in
               (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)]
    folders += [Path(entry) for entry in sys.path
                if entry and ("site-packages" in entry or "dist-packages" in entry)]
    folders = [folder for folder in dict.fromkeys(folders) if folder.is_dir()]
    return [folder for folder in folders
            if not any(other != folder and other in folder.parents for other in folders)]


def _system_binds() -> list[str]:
    args: list[str] = []
    for folder in SYSTEM_FOLDERS:
        path = Path(folder)
        if path.is_symlink():  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(path), folder]
        elif path.is_dir():
            args += ["--ro-bind", folder, folder]
    for name in SYSTEM_FILES:
        args += ["--ro-bind-try", name, name]
    return args


def _matplotlib_cache() -> Path | None:
    base = os.environ.get("MPLCONFIGDIR")
    if base:
        return Path(base)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "matplotlib"
    return cache if cache.is_dir() else None


class Sandbox:
    """One submission's throw-away folder and the command that starts its kernel in a box.

    `enabled=False` gives the same folder (fresh course_lib copy, HOME, TMPDIR) with no box: the
    `--no-sandbox` mode.
    """

    def __init__(self, package_root: Path, enabled: bool = True,
                 memory_bytes: int = MEMORY_BYTES, max_processes: int = MAX_PROCESSES,
                 cpu_seconds: int = 3600):
        self.enabled = enabled
        self.memory_bytes = memory_bytes
        self.max_processes = max_processes
        self.cpu_seconds = cpu_seconds
        self.root = Path(tempfile.mkdtemp(prefix="grade-")).resolve()
        self.work = self.root / "work"
        self.lib = self.root / "lib"
        self.home = self.root / "home"
        self.tmp = self.root / "tmp"
        self.ipc = self.root / "ipc"
        for folder in (self.work, self.lib, self.home, self.tmp, self.ipc):
            folder.mkdir()
        shutil.copytree(
            Path(package_root) / "course_lib", self.lib / "course_lib",
            ignore=shutil.ignore_patterns("instructor", ".ipynb_checkpoints"),
        )
        cache = _matplotlib_cache()
        if cache is not None:
            shutil.copytree(cache, self.home / ".cache" / "matplotlib",
                            ignore=shutil.ignore_patterns("*.lock"))

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """The kernel's environment, with its folders pointing into the box's folder."""
        env = dict(env)
        env.update(HOME=str(self.home), TMPDIR=str(self.tmp), PYTHONPATH=str(self.lib))
        if "MPLCONFIGDIR" in os.environ:
            env["MPLCONFIGDIR"] = str(self.home / ".cache" / "matplotlib")
        return env

    def wrap(self, command: list[str]) -> list[str]:
        """`command` (the kernel's) run inside the box; unchanged when the box is off."""
        if not self.enabled:
            return command
        binary = bwrap_path()
        if binary is None:
            raise SandboxUnavailable("bwrap not found; " + INSTALL_HINT)
        args = [sys.executable, "-I", "-c", _IGNORE_SIGINT, binary]
        args += ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
        if os.geteuid() != 0:
            args += ["--unshare-user"]  # unprivileged bwrap needs a user namespace of its own
        args += _system_binds()
        # The private /tmp first, then the interpreter: a checkout or a virtual environment that
        # lives under /tmp must stay visible through it.
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
        for folder in _interpreter_folders():
            args += ["--ro-bind", str(folder.resolve()), str(folder)]
        args += ["--bind", str(self.root), str(self.root)]
        args += ["--ro-bind", str(self.lib), str(self.lib)]
        args += ["--chdir", str(self.work), "--"]
        limits = [str(self.memory_bytes), str(self.max_processes), str(MAX_OPEN_FILES),
                  str(self.cpu_seconds)]
        return args + [command[0], "-I", "-c", _LIMITS_WRAPPER, *limits, *command]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_probe_result: dict[bool, str | None] = {}


def probe() -> str | None:
    """None when a box can be made here, else why not (with how to fix it). Cached."""
    if True in _probe_result:
        return _probe_result[True]
    reason = None
    if bwrap_path() is None:
        reason = "bwrap (bubblewrap) is not installed; " + INSTALL_HINT
    else:
        from course_lib.instructor.make_exercises import package_root

        try:
            with Sandbox(package_root()) as box:
                command = box.wrap([sys.executable, "-c", "import sys; print(sys.prefix)"])
                done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                      env=box.environment({"PATH": os.environ.get("PATH", "")}))
            if done.returncode != 0:
                reason = ("bwrap cannot make a sandbox here: "
                          + (done.stderr.strip().splitlines() or ["no message"])[-1]
                          + " (unprivileged user namespaces may be disabled: on Ubuntu 23.10 "
                          "and later, sysctl kernel.apparmor_restrict_unprivileged_userns=0; on "
                          "older Debian, sysctl kernel.unprivileged_userns_clone=1; or run the "
                          "grader as root); " + INSTALL_HINT)
        except (OSError, subprocess.SubprocessError) as error:
            reason = f"bwrap cannot make a sandbox here: {error}; {INSTALL_HINT}"
    _probe_result[True] = reason
    return reason
