"""fastmp: a fast, robust drop-in replacement for :mod:`multiprocessing`.

Change ``import multiprocessing`` to ``import fastmp`` (or ``import fastmp as
multiprocessing``). Every public name of multiprocessing exists here with the
same behaviour; queues (and, as they land, the other primitives) run on a C++
shared-memory core. See README.md, "Differences from multiprocessing".
"""

import sys  # noqa: F401  (multiprocessing exposes it too)
from multiprocessing import process  # noqa: F401  (as multiprocessing.process)

from . import context, reduction  # noqa: F401

# The namespace is the default context's methods, as in multiprocessing.
__all__ = [x for x in dir(context._default_context) if not x.startswith("_")]
globals().update((name, getattr(context._default_context, name)) for name in __all__)

SUBDEBUG = 5
SUBWARNING = 25

# Imported eagerly, unlike the stdlib, so `except fastmp.queues.Empty` always
# resolves (tutorial 004-8.3 fails on that with multiprocessing).
from . import queues  # noqa: E402,F401


# The stdlib submodules fastmp does not re-implement are fastmp's too, so
# `import fastmp.util` or `fastmp.spawn.freeze_support` work after a mechanical
# import swap: they are the very same modules.
def _alias_stdlib_submodules():
    import importlib

    for name in (
        "dummy",
        "forkserver",
        "heap",
        "popen_fork",
        "popen_forkserver",
        "popen_spawn_posix",
        "process",
        "resource_sharer",
        "resource_tracker",
        "spawn",
        "util",
    ):
        try:
            module = importlib.import_module(f"multiprocessing.{name}")
        except ImportError:  # pragma: no cover - platform-specific modules
            continue
        sys.modules.setdefault(f"{__name__}.{name}", module)
        globals().setdefault(name, module)


_alias_stdlib_submodules()

# fastmp's own public submodules, imported on first attribute access (as
# `multiprocessing.<sub>` works once anything has imported it).
_LAZY_SUBMODULES = (
    "connection",
    "synchronize",
    "sharedctypes",
    "shared_memory",
    "managers",
    "pool",
    "futures",
)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    # fastmp.ProcessPoolExecutor, imported on first use (concurrent.futures is
    # not needed by most scripts).
    if name == "ProcessPoolExecutor":
        from .futures import ProcessPoolExecutor

        return ProcessPoolExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | {"ProcessPoolExecutor"})


__version__ = "0.1.0"
