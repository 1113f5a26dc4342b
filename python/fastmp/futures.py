"""fastmp.futures: :mod:`concurrent.futures` for processes, on fastmp contexts.

``fastmp.futures.ProcessPoolExecutor`` defaults ``mp_context`` to fastmp's
current context. Everything else (``as_completed``, ``wait``, ``Future``,
``FIRST_COMPLETED``, ...) is the stdlib's.
"""

import concurrent.futures as _cf
from concurrent.futures import (  # noqa: F401
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
    TimeoutError,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool  # noqa: F401

from . import context as _context

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "BrokenProcessPool",
    "CancelledError",
    "Executor",
    "Future",
    "InvalidStateError",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor",
    "TimeoutError",
    "as_completed",
    "wait",
]


class ProcessPoolExecutor(_cf.ProcessPoolExecutor):
    """concurrent.futures.ProcessPoolExecutor with fastmp's start method by default."""

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), **kwargs):
        if mp_context is None:
            mp_context = _context._default_context.get_context()
        # Until fastmp's executor lands, run on the stdlib's twin context: the
        # stdlib executor reads its result queue's pipe directly.
        mp_context = _context._stdlib_twin(mp_context)
        super().__init__(max_workers, mp_context, initializer, initargs, **kwargs)
