"""fastmp.futures: :mod:`concurrent.futures` for processes, on fastmp's transport.

``fastmp.futures.ProcessPoolExecutor`` (also ``fastmp.ProcessPoolExecutor``)
has the stdlib executor's API and semantics (see
:class:`concurrent.futures.ProcessPoolExecutor`) and runs on the same
shared-memory transport as :class:`fastmp.pool.Pool`:

* lambdas, local functions and closures can be submitted (cloudpickle fallback);
* a worker that dies abruptly breaks the executor exactly as in the stdlib:
  pending and running futures fail with :class:`BrokenProcessPool`, and so does
  any later ``submit``;
* ``mp_context`` defaults to fastmp's current context;
* ``cluster=`` (keyword only; or FASTMP_CLUSTER) runs the calls on a Dask
  cluster, as for :class:`fastmp.pool.Pool`.

Everything else (``as_completed``, ``wait``, ``Future``, ``FIRST_COMPLETED``,
...) is the stdlib's, re-exported.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
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
    _base,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import util

from . import context as _context
from ._pool_backend import CALL, make_backend
from ._threads import HelperThread, as_user
from .pool import Pool as _Pool

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

# As the stdlib: one call queued beyond one per worker is "running"; the rest
# stay pending (cancellable) in the parent.
EXTRA_QUEUED_CALLS = 1


class _Call:
    """A submitted call, in the pool core's cache while it is in flight."""

    __slots__ = ("future", "fn", "args", "kwargs", "_job", "executor")

    def __init__(self, executor, future, fn, args, kwargs):
        self.executor = executor
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def _set(self, i, ok, value):
        ex = self.executor
        # Refill the window before leaving the cache, so the pool never looks
        # idle while calls are still waiting.
        ex._done_one()
        fut = self.future
        try:
            # Done-callbacks are user code (see _threads.as_user).
            finish = fut.set_result if ok else fut.set_exception
            if fut._done_callbacks:
                as_user(finish, value)
            else:
                finish(value)
        except InvalidStateError:  # already failed by a broken pool
            pass
        ex._backend.cache.pop(self._job, None)

    def _fail(self, i, exc):
        self._set(i, False, exc)

    def _fail_pending(self, exc):
        self._set(0, False, exc)


class ProcessPoolExecutor(_base.Executor):
    """concurrent.futures.ProcessPoolExecutor on fastmp's transport."""

    def __init__(
        self,
        max_workers=None,
        mp_context=None,
        initializer=None,
        initargs=(),
        *,
        max_tasks_per_child=None,
        cluster=None,
    ):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None:
            if max_tasks_per_child is not None:
                mp_context = _context._default_context.get_context("spawn")
            else:
                mp_context = _context._default_context.get_context()
        self._mp_context = mp_context
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._initializer = initializer
        self._initargs = initargs
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            elif max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if self._mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError(
                    "max_tasks_per_child is incompatible with"
                    " the 'fork' multiprocessing start method;"
                    " supply a different mp_context."
                )
        self._max_tasks_per_child = max_tasks_per_child
        # A cluster is connected to now (an unreachable scheduler is an error
        # here); local workers start with the first submit, as the stdlib's.
        self._backend = make_backend(
            cluster,
            self._mp_context,
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            _Pool.Process,
            what="ProcessPoolExecutor",
        )
        self._max_workers = self._backend.size
        self._started = False
        self._shutdown_thread = False
        self._shutdown_lock = threading.RLock()
        self._broken = False
        self._pending = collections.deque()
        self._in_flight = 0
        self._window = self._max_workers + EXTRA_QUEUED_CALLS
        self._jobs = itertools.count()
        self._finalizer = None
        self._finisher = None

    # -- workers --
    def _start(self):
        backend = self._backend
        backend.on_worker_lost = self._worker_lost
        backend.start()
        self._started = True
        self._finalizer = util.Finalize(self, backend.terminate, exitpriority=15)

    def _dispatch(self):
        """Sends pending calls while the window has room (under _shutdown_lock)."""
        backend = self._backend
        while self._in_flight < self._window and self._pending:
            call = self._pending.popleft()
            if not call.future.set_running_or_notify_cancel():
                continue
            job = next(self._jobs)
            call._job = job
            backend.cache[job] = call
            self._in_flight += 1
            try:
                backend.submit((job, 0, CALL, backend.wire(call.fn), call.args, call.kwargs))
            except BaseException as e:
                backend.cache.pop(job, None)
                self._in_flight -= 1
                call.future.set_exception(e)
            call.fn = call.args = call.kwargs = None

    def _done_one(self):
        with self._shutdown_lock:
            self._in_flight -= 1
            if not self._broken:
                self._dispatch()

    def _worker_lost(self, exc):
        """Called by the backend when a worker died mid-task: the stdlib
        marks the whole executor broken, and so do we."""
        with self._shutdown_lock:
            if self._broken:
                return
            self._broken = (
                "A child process terminated abruptly, the process pool is not usable anymore"
            )
            err = BrokenProcessPool(
                "A process in the process pool was terminated abruptly "
                "while the future was running or pending."
            )
            err.__cause__ = exc
            pending, self._pending = list(self._pending), collections.deque()
            for call in pending:
                if call.future.set_running_or_notify_cancel():
                    call.future.set_exception(err)
            for call in list(self._backend.cache.values()):
                try:
                    call.future.set_exception(err)
                except InvalidStateError:
                    pass
            self._backend.cache.clear()
            self._in_flight = 0
        # The backend's thread holds its lock here: stop it from another thread.
        finisher = HelperThread(self._backend.terminate, "fastmp-executor-terminate")
        finisher.start()
        self._finisher = finisher

    # -- API --
    def submit(self, fn, /, *args, **kwargs):
        with self._shutdown_lock:
            if self._broken:
                raise BrokenProcessPool(self._broken)
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not self._started:
                self._start()
            elif os.getpid() != self._backend.pid:
                raise NotImplementedError(
                    "a ProcessPoolExecutor can only be used by the process that created it"
                )
            f = _base.Future()
            self._pending.append(_Call(self, f, fn, args, kwargs))
            self._dispatch()
            return f

    submit.__doc__ = _base.Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Returns an iterator equivalent to map(fn, iter) (see the stdlib)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        results = super().map(_ChunkRunner(fn), _chunks(iterables, chunksize), timeout=timeout)
        return _flatten(results)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            self._shutdown_thread = True
            if cancel_futures:
                pending, self._pending = list(self._pending), collections.deque()
                for call in pending:
                    call.future.cancel()
            backend = self._backend
            if not self._started:
                backend.terminate()  # nothing ran; a cluster client is closed
                return
            if not self._broken:
                backend.close()
        if self._finalizer is not None:
            self._finalizer.cancel()
        if wait:
            backend.join()
            if self._finisher is not None:
                self._finisher.join()
        elif self._finisher is None:
            finisher = HelperThread(backend.join, "fastmp-executor-shutdown")
            finisher.start()
            self._finisher = finisher

    shutdown.__doc__ = _base.Executor.shutdown.__doc__


class _ChunkRunner:
    """Picklable stand-in for functools.partial(_process_chunk, fn)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, chunk):
        fn = self.fn
        return [fn(*args) for args in chunk]

    def __reduce__(self):
        return (_ChunkRunner, (self.fn,))


def _chunks(iterables, chunksize):
    """Tuples of up to chunksize argument tuples, read lazily from the zip."""
    it = zip(*iterables)
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


def _flatten(results):
    """The items of each result list, in order; a generator that drops its
    pending futures when abandoned, as the stdlib's."""
    for result in results:
        result.reverse()
        while result:
            yield result.pop()
