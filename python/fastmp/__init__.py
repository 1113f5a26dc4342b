"""fastmp: a fast, robust drop-in replacement for :mod:`multiprocessing`.

Change ``import multiprocessing`` to ``import fastmp`` (or ``import fastmp as
multiprocessing``). Every public name of multiprocessing exists here with the
same behaviour; queues (and, as they land, the other primitives) run on a C++
shared-memory core. See README.md, "Differences from multiprocessing".
"""

import sys

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

__version__ = "0.1.0"


def __getattr__(name):
    # fastmp.ProcessPoolExecutor, imported on first use (concurrent.futures is
    # not needed by most scripts).
    if name == "ProcessPoolExecutor":
        from .futures import ProcessPoolExecutor

        return ProcessPoolExecutor
    raise AttributeError(f"module 'fastmp' has no attribute {name!r}")
