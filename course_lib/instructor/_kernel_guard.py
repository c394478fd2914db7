"""Runs inside a graded kernel (sent as text by the grader, never imported there): the integrity
guard. Its first `verdict()`, just before the learner's answers are loaded, records what every
watched name refers to; each later one returns "" while nothing changed, else the names that did.

The grader evaluates `verdict()` as a `user_expressions` entry of every execute request, which
IPython evaluates after the cell with no input or AST transformer in the way.
"""

import builtins
import sys

# Modules whose attributes checks rely on, when they are loaded at install time.
WATCHED_MODULES = (
    "builtins", "math", "random", "os", "os.path", "pathlib", "shutil", "tempfile", "time",
    "copy", "functools", "itertools", "operator", "inspect", "importlib", "types",
    "numpy", "numpy.random", "numpy.testing",
    "torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.optim",
    "torch.optim.lr_scheduler", "torch.utils.data", "torch.testing", "torch.autograd",
    "torch.amp", "torch.distributed", "torch.multiprocessing", "torch.serialization",
    "multiprocessing", "subprocess",
)
# Python classes (their own attributes can be set) whose methods checks call.
WATCHED_CLASSES = (
    ("torch", "Tensor"), ("torch.nn", "Module"), ("torch.nn", "Parameter"),
    ("torch.nn", "Linear"), ("torch.nn", "Sequential"), ("torch.nn", "CrossEntropyLoss"),
    ("torch.optim", "Optimizer"), ("torch.optim", "SGD"), ("torch.optim", "AdamW"),
    ("torch.optim", "Adam"), ("torch.optim.lr_scheduler", "LRScheduler"),
    ("torch.optim.lr_scheduler", "LambdaLR"), ("torch.utils.data", "DataLoader"),
    ("torch.utils.data", "Dataset"), ("torch.utils.data", "TensorDataset"),
    ("torch.utils.data", "Subset"), ("torch.utils.data", "Sampler"),
    ("pathlib", "Path"), ("pathlib", "PurePath"),
)
# Names IPython itself adds to or removes from builtins around each cell.
_BUILTINS_IN_FLUX = {"_", "__", "___", "get_ipython", "exit", "quit", "display", "__IPYTHON__"}
_MISSING = object()
# What Python adds to a class on first use: copyreg's cache of slot names, when pickled or copied.
_CACHES_ADDED = {"__slotnames__"}
_SHELL_METHODS = (
    "run_cell", "run_cell_async", "run_ast_nodes", "run_code", "transform_cell",
    "transform_ast", "showtraceback", "_showtraceback", "showsyntaxerror", "should_run_async",
    "user_expressions", "ex", "ev",
)
_KERNEL_METHODS = ("do_execute", "execute_request", "send_response", "_publish_status")

_entries = []  # (label, read, value at install)
_key_sets = []  # (label, read keys, keys at install)
_latched = []


def _library_folders():
    folders = []
    for name in ("torch", "numpy"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            folders.append(module.__file__.rsplit("/", 1)[0] + "/")
    return tuple(folders)


def _library_wrapper(new, old):
    """True when `new` is a wrapper the library itself put around `old` on first use (torch
    wraps `torch.manual_seed` and an optimizer class's `step` so): every wrapper's code comes
    from the library's own files and its `__wrapped__` chain ends at `old`."""
    folders = _library_folders()
    for _ in range(4):
        wrapped = getattr(new, "__wrapped__", _MISSING)
        code = getattr(new, "__code__", None)
        if wrapped is _MISSING or code is None or not folders or \
                not code.co_filename.startswith(folders):
            return False
        if _same(wrapped, old):
            return True
        new = wrapped
    return False


def _added_by_a_library(a, b):
    """True when list snapshot `a` is `b` plus callbacks from matplotlib, IPython or ipykernel
    (pyplot registers its inline backend's `post_execute` hook on the first figure)."""
    if type(a) is not tuple or type(b) is not tuple or len(a) <= len(b):
        return False
    rest = list(a)
    for item in b:
        if not any(item is other for other in rest):
            return False
        rest = [other for other in rest if other is not item]
    return all(str(getattr(item, "__module__", "")).startswith(
        ("matplotlib", "matplotlib_inline", "IPython", "ipykernel")) for item in rest)


def _same(a, b):
    if a is b:
        return True
    if type(a) is tuple and type(b) is tuple:  # a snapshot of a list's items
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    func_a, func_b = getattr(a, "__func__", _MISSING), getattr(b, "__func__", _MISSING)
    if func_a is not _MISSING and func_a is func_b:  # a bound method, fetched anew each time
        return getattr(a, "__self__", None) is getattr(b, "__self__", None)
    return False


def _watch(label, read):
    try:
        _entries.append((label, read, read()))
    except Exception:  # noqa: BLE001 - nothing there to watch
        pass


def _watch_namespace(label, namespace, skip=()):
    for key in list(namespace):
        if key in skip or getattr(namespace[key], "__name__", "").startswith("course_lib.checks"):
            continue  # the grader imports the checks anew before each check cell
        _entries.append((f"{label}.{key}", lambda d=namespace, k=key: d.get(k, _MISSING),
                         namespace[key]))


def _resolve(dotted):
    return sys.modules.get(dotted)


def install(shell):
    course = [name for name in sys.modules
              if (name == "course_lib" or name.startswith("course_lib."))
              and not name.startswith("course_lib.checks")]
    for name in (*WATCHED_MODULES, *course):
        module = _resolve(name)
        if module is None:
            continue
        _watch(f"sys.modules[{name!r}]", lambda n=name: sys.modules.get(n, _MISSING))
        skip = _BUILTINS_IN_FLUX if name == "builtins" else ()
        if name == "os":
            skip = {"environ"}  # its contents may change; the object itself is watched below
            _watch("os.environ", lambda m=module: m.__dict__.get("environ"))
        _watch_namespace(name, module.__dict__, skip)
    for module_name, class_name in WATCHED_CLASSES:
        module = _resolve(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            label = f"{module_name}.{class_name}"
            _watch_namespace(label, cls.__dict__)
            _key_sets.append((label, cls, set(cls.__dict__)))
    for name in ("gettrace", "getprofile"):
        _watch(f"sys.{name}()", lambda n=name: getattr(sys, n)())
    for name in ("excepthook", "displayhook", "breakpointhook", "audit", "addaudithook"):
        _watch(f"sys.{name}", lambda n=name: sys.__dict__.get(n, _MISSING))
    for name in ("meta_path", "path_hooks"):
        _watch(f"sys.{name}", lambda n=name: tuple(getattr(sys, n)))
    _watch("sys.path_importer_cache", lambda: sys.path_importer_cache)
    _watch("__builtins__ of the notebook", lambda: shell.user_ns.get("__builtins__", _MISSING))
    for name in ("input_transformers_cleanup", "input_transformers_post", "ast_transformers"):
        _watch(f"get_ipython().{name}", lambda n=name: tuple(getattr(shell, n, ())))
    _watch("get_ipython().input_transformer_manager",
           lambda: getattr(shell, "input_transformer_manager", None))
    _watch("get_ipython().custom_exceptions", lambda: tuple(shell.custom_exceptions))
    _watch("get_ipython().compile", lambda: shell.compile)
    _watch("get_ipython().display_pub", lambda: shell.display_pub)
    for event, callbacks in getattr(shell.events, "callbacks", {}).items():
        _watch(f"get_ipython().events[{event!r}]",
               lambda e=event: tuple(shell.events.callbacks.get(e, ())))
    for name in _SHELL_METHODS:
        _watch(f"get_ipython().{name}", lambda n=name: getattr(shell, n, _MISSING))
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        for name in _KERNEL_METHODS:
            _watch(f"kernel.{name}", lambda n=name: getattr(kernel, n, _MISSING))
        _watch("kernel.session.send", lambda: kernel.session.send)
    me = sys.modules.get(__name__)
    _watch("the guard", lambda: sys.modules.get(__name__))
    _watch_namespace("the guard", me.__dict__)


def verdict():
    """"" when every watched name still refers to what it did at install time, else their names.

    The first call installs the guard: like every later call it runs between cells, outside the
    swaps IPython makes while a cell runs (sys.displayhook, builtins.input, ...).
    """
    if not _entries:
        import warnings

        from IPython.core.getipython import get_ipython

        # Reading some torch names warns of their deprecation. (The warnings module is not
        # watched: catch_warnings swaps its attributes.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            install(get_ipython())
        return ""
    if _latched:
        return _latched[0]
    changed = []
    for label, read, value in _entries:
        try:
            now = read()
        except Exception:  # noqa: BLE001
            now = _MISSING
        if value is None and label.rsplit(".", 1)[-1].startswith("_"):
            continue  # a private cache filled on first use (tempfile._name_sequence)
        if not _same(now, value) and not _library_wrapper(now, value) and \
                not (label.startswith("get_ipython().events") and _added_by_a_library(now, value)):
            changed.append(label)
    for label, cls, keys in _key_sets:
        for key in sorted(set(cls.__dict__) - keys - _CACHES_ADDED):
            # torch's optimizers wrap their inherited `step` into the subclass on first use.
            inherited = next((base.__dict__[key] for base in cls.__mro__[1:]
                              if key in base.__dict__), _MISSING)
            if inherited is _MISSING or not _library_wrapper(cls.__dict__[key], inherited):
                changed.append(f"{label}.{key} (added)")
    if not changed:
        return ""
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    _latched.append(shown)
    return shown
