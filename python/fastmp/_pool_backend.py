"""What a pool backend is: the one interface between the pool's bookkeeping
(:mod:`fastmp.pool`, :mod:`fastmp.futures`) and whatever runs the tasks.

Two backends implement it: :mod:`fastmp._pool_local` (worker processes on this
machine, over fastmp's shared-memory queues) and :mod:`fastmp._pool_dask` (a
Dask distributed cluster). ``Pool`` and ``ProcessPoolExecutor`` only ever call
what :class:`Backend` declares.

The bookkeeping side is a dict, ``backend.cache``: job id -> a *result sink*
(an ``ApplyResult``, ``MapResult``, ``IMapIterator`` or an executor call) with
three methods the backend calls, from its own thread:

* ``_set(chunk, ok, value)``: the task (chunk number ``chunk`` of the job) finished;
  ``value`` is its return value, or the exception it raised when ``ok`` is
  False (remote traceback as ``__cause__``);
* ``_fail(chunk, exc)``: the pool itself failed that task (worker lost);
* ``_fail_pending(exc)``: every task of the job still pending failed
  (terminated, or lost without a trace).

A sink leaves the cache once it is complete.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import types
from multiprocessing.context import ProcessError
from multiprocessing.pool import (  # type: ignore[attr-defined]
    CLOSE,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
)
from typing import Any, NamedTuple

__all__ = ["Backend", "Task", "Result", "make_backend", "WorkerLostError", "PoolTerminatedError"]


class WorkerLostError(ProcessError):
    """A Pool worker died (killed by a signal, ``os._exit``, a crash) while it
    was running this task. The pool replaced the worker; other tasks are fine.

    Subclass of :class:`multiprocessing.ProcessError`; ``exitcode`` is the dead
    worker's exit code (negative: killed by that signal), ``pid`` its pid (both
    None on a cluster, where Dask gave up on the task after its retries).
    """

    def __init__(self, message, exitcode=None, pid=None):
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.exitcode, self.pid))


class PoolTerminatedError(ProcessError):
    """The pool was terminated before this task's result arrived."""


# --- messages ---------------------------------------------------------------------

# What a task does with its arguments.
CALL, MAP, STARMAP = 0, 1, 2


class Task(NamedTuple):
    """One unit of work: ``func(*args, **kwds)`` (CALL), or ``func`` over the
    items of chunk number ``chunk`` of the job (MAP / STARMAP; ``kwds`` is
    None)."""

    job: int
    chunk: int
    kind: int
    func: Any  # the function, or what backend.wire(func) returned
    args: Any
    kwds: Any


class Result(NamedTuple):
    """A task's outcome: ``ok`` and the value or the exception."""

    job: int
    chunk: int
    ok: bool
    value: Any


# Task and Result travel between processes as the plain tuple of their fields
# (pickling a named tuple costs about five times as much: its class is looked
# up on every message); senders build them as tuples in field order and
# receivers unpack them in that order. The rare messages below are classes.


class TaskLost:
    """The pool (not the task) failed this task: its worker died."""

    __slots__ = ("job", "index", "error")

    def __init__(self, job, index, error):
        self.job, self.index, self.error = job, index, error

    def __reduce__(self):
        return (TaskLost, (self.job, self.index, self.error))


class Resend:
    """A worker could not unpickle a function sent by reference (defined where
    the worker cannot import it): send ``task`` again with it by value."""

    __slots__ = ("task", "error")

    def __init__(self, task, error):
        self.task, self.error = task, error

    def __reduce__(self):
        return (Resend, (self.task, self.error))


class UnreadableTask:
    """A worker took a task it could not unpickle (its job id is unknown)."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        return (UnreadableTask, (self.error,))


class LostUntracked:
    """These jobs' pending tasks were lost with a worker that died before it
    recorded which task it had taken."""

    __slots__ = ("error", "jobs")

    def __init__(self, error, jobs):
        self.error, self.jobs = error, jobs

    def __reduce__(self):
        return (LostUntracked, (self.error, self.jobs))


class Stop:
    """Tells a worker (task queue) or a result thread (result queue) to stop."""

    __slots__ = ()

    def __reduce__(self):
        return "STOP"

    def __repr__(self):
        return "STOP"


STOP = Stop()

job_counter = itertools.count()


# --- running a task (the same in a local worker and on a cluster) ------------------


def run_task(kind, func, args, kwds):
    """Runs one task; returns (ok, value or ExceptionWithTraceback)."""
    try:
        if kind == CALL:
            return True, func(*args, **kwds)
        if kind == MAP:
            return True, list(map(func, args))
        return True, list(itertools.starmap(func, args))
    except Exception as e:  # noqa: BLE001  (reported to the caller)
        return False, ExceptionWithTraceback(e, e.__traceback__)


def adopt_function(func, namespace=None):
    """A ``__main__`` function that arrived by value runs with ``namespace`` as
    its globals (this process's ``__main__`` by default; its captured globals
    fill in names the namespace lacks), so it shares state with the
    initializer and the other functions as it would have in the parent."""
    if not isinstance(func, types.FunctionType) or func.__module__ != "__main__":
        return func
    if namespace is None:
        main = sys.modules.get("__main__")
        if main is None:
            return func
        namespace = vars(main)
    if func.__globals__ is namespace:
        return func
    for name, value in func.__globals__.items():
        if not name.startswith("__"):
            namespace.setdefault(name, value)
    adopted = types.FunctionType(
        func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
    )
    adopted.__kwdefaults__ = func.__kwdefaults__
    adopted.__qualname__ = func.__qualname__
    adopted.__dict__.update(func.__dict__)
    namespace.setdefault(func.__name__, adopted)
    return adopted


# --- the interface --------------------------------------------------------------


class Backend:
    """Runs a pool's tasks and reports their results into ``cache``.

    Attributes the bookkeeping reads: ``pid`` (the creating process), ``size``
    (how many tasks run at once: the default chunk count and how far ``imap``
    reads ahead), ``state`` (RUN, CLOSE, TERMINATE), ``workers`` (local worker
    processes, for ``Pool._pool``), ``cache``, ``feeders`` (imap feeders still
    reading their input: close() and terminate() wake or abort them) and
    ``on_worker_lost`` (the executor's hook, called with a WorkerLostError).
    """

    size: int
    workers: list
    # map() without a chunksize cuts its input into size * this many chunks,
    # and submits them in groups of about this many items.
    chunks_per_worker = 4
    map_batch_items = 1024

    def __init__(self):
        self.pid = os.getpid()
        self.state = RUN
        self.cache: dict = {}
        self.feeders: set = set()
        self.lock = threading.Lock()
        self.on_worker_lost = None
        self.terminated = False
        self.wired: dict = {}  # function -> what wire() returned, when cached

    def start(self):
        """Starts the workers and the backend's threads."""
        raise NotImplementedError

    def imap_ahead(self):
        """How many chunks an imap may send ahead of its consumer."""
        return max(4 * self.size, 8)

    def wire(self, func):
        """What a Task carries for ``func`` (a backend may pickle it once)."""
        return func

    def submit(self, task):
        """Queues one task (a plain tuple in Task's field order). Raises in the
        caller when the task cannot be sent."""
        self.submit_many([task])

    def submit_many(self, tasks):
        raise NotImplementedError

    def wake(self):
        """Something the backend's threads wait for changed (a feeder ended)."""

    def close(self):
        """No new tasks: stop once every pending result is in."""
        raise NotImplementedError

    def join(self):
        """After close(): waits until everything stopped, then frees resources."""
        raise NotImplementedError

    def terminate(self):
        """Stops at once; pending results fail with PoolTerminatedError."""
        raise NotImplementedError

    # -- shared by the backends --
    def deliver(self, msg):
        """Hands one message from the workers to its result sink."""
        if type(msg) is tuple:
            job, i, ok, value = msg
            r = self.cache.get(job)
            if r is not None:
                r._set(i, ok, value)
        elif type(msg) is TaskLost:
            r = self.cache.get(msg.job)
            if r is not None:
                r._fail(msg.index, msg.error)
        elif type(msg) is LostUntracked:
            for j in msg.jobs:
                r = self.cache.get(j)
                if r is not None:
                    r._fail_pending(msg.error)

    def fail_all_pending(self):
        exc = PoolTerminatedError("the pool was terminated before this task finished")
        for r in list(self.cache.values()):
            try:
                r._fail_pending(exc)
            except Exception:  # noqa: BLE001
                pass
        self.cache.clear()

    def abort_feeders(self):
        for f in list(self.feeders):
            f.abort()

    def join_feeders(self):
        me = threading.current_thread()
        for f in list(self.feeders):
            if f.thread is not me:
                f.thread.join()


def cluster_from_environment(cluster):
    """The cluster to use: the keyword, else FASTMP_CLUSTER, else None (local)."""
    if cluster is None:
        cluster = os.environ.get("FASTMP_CLUSTER") or None
    return cluster


def make_backend(
    cluster, ctx, processes, initializer, initargs, maxtasks, process_factory, what="Pool"
):
    """A backend for ``cluster`` (see :func:`cluster_from_environment`)."""
    cluster = cluster_from_environment(cluster)
    if cluster is None:
        from ._pool_local import LocalBackend

        if processes is None:
            processes = os.cpu_count() or 1
        return LocalBackend(ctx, processes, initializer, initargs, maxtasks, process_factory)
    if maxtasks is not None:
        raise ValueError(
            f"maxtasksperchild / max_tasks_per_child is not supported by a {what} on a "
            "Dask cluster (its worker processes are shared and long-lived)"
        )
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"a {what} on a Dask cluster (cluster={cluster!r}, or FASTMP_CLUSTER) needs "
            "Dask distributed: pip install 'fastmp[dask]'"
        ) from e
    from ._pool_dask import DaskBackend

    return DaskBackend(cluster, processes, initializer, initargs)


__all__ += ["CALL", "MAP", "STARMAP", "RUN", "CLOSE", "TERMINATE"]
