"""fastmp contexts: the stdlib's, with fastmp's factories.

Each fastmp context subclasses the stdlib context for its start method, so
``Process``, start-up, ``current_process()`` and friends are the stdlib's own
(see :mod:`multiprocessing.context`). Factories that fastmp implements natively
return fastmp objects; the rest still come from the stdlib.
"""

from __future__ import annotations

import queue as _queue
import sys
from multiprocessing import context as _std

from . import reduction as _reduction

# Everything public in multiprocessing.context, so this module can stand in for it.
globals().update({k: v for k, v in vars(_std).items() if not k.startswith("_")})

from multiprocessing.context import (  # noqa: E402  (re-exported explicitly for readers and type checkers)
    BaseContext,
)

__all__: list[str] = []


def _stdlib_twin(ctx: BaseContext) -> BaseContext:
    """The stdlib context with the same start method (for pieces not yet native)."""
    return _std._concrete_contexts[ctx.get_start_method()]  # type: ignore[attr-defined]


class _FastmpFactories:
    """The factory methods fastmp replaces; mixed into every fastmp context."""

    def get_context(self, method=None):
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError(f"cannot find context for {method!r}") from None
        ctx._check_available()
        return ctx

    def Queue(self, maxsize=0):
        """Returns a queue object (fastmp: shared memory, no feeder thread)."""
        from .queues import Queue

        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize=0):
        """Returns a queue object with task_done() and join()."""
        from .queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self):
        """Returns a simple queue object."""
        from .queues import SimpleQueue

        return SimpleQueue(ctx=self.get_context())

    def Lock(self):
        """Returns a non-recursive lock object (robust: see fastmp.synchronize)."""
        from .synchronize import Lock

        return Lock(ctx=self.get_context())

    def RLock(self):
        """Returns a recursive lock object."""
        from .synchronize import RLock

        return RLock(ctx=self.get_context())

    def Condition(self, lock=None):
        """Returns a condition object."""
        from .synchronize import Condition

        return Condition(lock, ctx=self.get_context())

    def Semaphore(self, value=1):
        """Returns a semaphore object."""
        from .synchronize import Semaphore

        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value=1):
        """Returns a bounded semaphore object."""
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self.get_context())

    def Event(self):
        """Returns an event object."""
        from .synchronize import Event

        return Event(ctx=self.get_context())

    def Barrier(self, parties, action=None, timeout=None):
        """Returns a barrier object."""
        from .synchronize import Barrier

        return Barrier(parties, action, timeout, ctx=self.get_context())

    def RawValue(self, typecode_or_type, *args):
        """Returns a shared object (fastmp: anonymous shared memory)."""
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        """Returns a shared array (fastmp: anonymous shared memory)."""
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type, *args, lock=True):
        """Returns a synchronized shared object."""
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self.get_context())

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        """Returns a synchronized shared array."""
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self.get_context())

    def Pipe(self, duplex=True):
        """Returns two connection objects connected by a pipe (fastmp: shared memory)."""
        from .connection import Pipe

        return Pipe(duplex)

    def Pool(
        self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, *, cluster=None
    ):
        """Returns a process pool object (fastmp.pool.Pool; ``cluster=``: on Dask)."""
        from .pool import Pool

        return Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context=self.get_context(),
            cluster=cluster,
        )

    # The manager's server process is started with the stdlib's context of the
    # same start method (it serves the stdlib's types too); its shared objects
    # are fastmp's (fastmp.managers).

    def Manager(self):
        """Returns a started fastmp.managers.SyncManager."""
        from .managers import SyncManager

        m = SyncManager(ctx=_stdlib_twin(self))
        m.start()
        return m


# `fastmp.Queue.Empty` works (the tutorials' `except Queue.Empty`), unlike the
# stdlib where Queue is a plain bound method.
_FastmpFactories.Queue.Empty = _queue.Empty  # type: ignore[attr-defined]
_FastmpFactories.Queue.Full = _queue.Full  # type: ignore[attr-defined]


class ForkContext(_FastmpFactories, _std.ForkContext):
    pass


# Under spawn and forkserver a target or arguments that plain pickle refuses
# (a lambda, a local function) go by value instead (reduction.py).
class SpawnProcess(_std.SpawnProcess):  # type: ignore[name-defined]
    @staticmethod
    def _Popen(process_obj):
        return _reduction._start_with_fallback(_std.SpawnProcess._Popen, process_obj)  # type: ignore[attr-defined]


class ForkServerProcess(_std.ForkServerProcess):  # type: ignore[name-defined]
    @staticmethod
    def _Popen(process_obj):
        return _reduction._start_with_fallback(_std.ForkServerProcess._Popen, process_obj)  # type: ignore[attr-defined]


class SpawnContext(_FastmpFactories, _std.SpawnContext):
    Process = SpawnProcess


class ForkServerContext(_FastmpFactories, _std.ForkServerContext):
    Process = ForkServerProcess


_concrete_contexts: dict[str, BaseContext] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


class Process(_std.Process):
    """multiprocessing.Process, started with fastmp's current start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        return _default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        return _default_context.get_context().Process._after_fork()


class DefaultContext(_FastmpFactories, _std.DefaultContext):
    """fastmp's default context.

    The start method is process-wide state shared with multiprocessing's own
    default context, as a drop-in must: spawn and forkserver hand it to their
    children through the stdlib's preparation data, so a child sees the start
    method its parent chose (with fastmp or with multiprocessing).
    """

    Process = Process

    def __init__(self, std_default):
        self._std_default = std_default

    def get_context(self, method=None):
        if method is None:
            return _concrete_contexts[self._std_default.get_context()._name]
        return _FastmpFactories.get_context(self, method)

    def set_start_method(self, method, force=False):
        if method is not None:
            _FastmpFactories.get_context(self, method)  # ValueError for unknown methods
        self._std_default.set_start_method(method, force)

    def get_start_method(self, allow_none=False):
        return self._std_default.get_start_method(allow_none)

    def get_all_start_methods(self):
        return self._std_default.get_all_start_methods()


_default_context = DefaultContext(_std._default_context)  # type: ignore[attr-defined]

if sys.platform == "win32":  # pragma: no cover
    raise ImportError("fastmp supports Linux only")
