"""fastmp's process Pool (see :mod:`multiprocessing.pool`).

Same API and semantics as the stdlib's ``Pool``; what fastmp does differently:

* Tasks and results travel through fastmp's shared-memory queues (no task
  handler thread, no pipes, no ForkingPickler on the hot path); results are
  drained in batches. Small tasks are several times faster.
* Functions that plain pickle cannot carry — lambdas, local functions,
  closures — work as tasks, initializers and arguments (cloudpickle
  fallback). Under spawn/forkserver, a function or initializer defined inside
  ``if __name__ == "__main__":`` (which the worker's re-import of the script
  does not define) is sent again by value and runs with the worker's
  ``__main__`` globals.
* Module-level functions are pickled once per pool, not once per task; a
  ``range`` given to ``map`` travels as sub-ranges, not as its items.
* A worker that dies in the middle of a task (SIGKILL, ``os._exit``, a
  segfault) does not hang the pool: that task's result fails with
  :class:`WorkerLostError` within about 0.1 s, the worker is replaced and the
  other tasks keep running. (The stdlib's ``get()`` hangs forever.)
* ``imap``/``imap_unordered`` read their iterable lazily: at most a few chunks
  per worker are queued ahead of the consumer, so an endless generator works in
  bounded memory. (After ``close()`` the pool feeds ahead of the consumer, as the
  stdlib does, so ``close(); join()`` completes a finite ``imap``.)
* A Pool used from a process other than the one that created it (e.g. a fork
  child) raises :class:`NotImplementedError` instead of hanging forever.
* An exception raised by a callback is printed and the pool keeps working (the
  stdlib's result thread dies and the pool hangs).
* An argument that cannot be pickled raises in the caller of ``apply_async``/
  ``map_async`` (the stdlib reports it later).
* ``terminate()`` fails results that are still pending with
  :class:`PoolTerminatedError` instead of leaving their ``get()`` blocked
  forever.

* ``cluster=`` (keyword only; or the FASTMP_CLUSTER environment variable)
  runs the tasks on a Dask distributed cluster instead of local processes:
  a ``distributed.Client``, a cluster object or a scheduler address. See the
  README's "Scaling out".

The API, the result objects and the task bookkeeping are here; the workers
are a backend (:mod:`fastmp._pool_backend`): local processes
(:mod:`fastmp._pool_local`) or a Dask cluster (:mod:`fastmp._pool_dask`).

``ThreadPool`` is the stdlib's.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue  # noqa: F401  (as multiprocessing.pool)
import sys
import threading
import time
import traceback
import types
import warnings  # noqa: F401  (as multiprocessing.pool)
from _thread import allocate_lock
from multiprocessing import util
from multiprocessing.connection import wait  # noqa: F401  (as multiprocessing.pool)
from multiprocessing.context import TimeoutError
from multiprocessing.pool import (  # type: ignore[attr-defined]  # noqa: F401  (public names of multiprocessing.pool)
    CLOSE,
    INIT,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MaybeEncodingError,
    RemoteTraceback,
    ThreadPool,
    mapstar,
    rebuild_exc,
    starmapstar,
)
from multiprocessing.pool import worker as _stdlib_worker  # type: ignore[attr-defined]  # noqa: F401

from ._pool_backend import (
    CALL,
    MAP,
    STARMAP,
    PoolTerminatedError,
    WorkerLostError,
    job_counter,
    make_backend,
)
from ._threads import HelperThread, as_user

__all__ = ["Pool", "ThreadPool", "WorkerLostError", "PoolTerminatedError"]

# Also here, as in multiprocessing.pool: the stdlib's worker function and the
# job counter (fastmp's own worker is in fastmp._pool_local).
worker = _stdlib_worker


def get_context():
    from . import context

    return context._default_context.get_context()


# Bumped in every fork child: a Pool remembers the value it was created with,
# so "used from another process" is one comparison (os.getpid() is a syscall).
_fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- results --------------------------------------------------------------------


def _print_callback_error():
    print("Exception in a fastmp Pool callback (ignored):", file=sys.stderr)
    traceback.print_exc()


class ApplyResult:
    """Result of :meth:`Pool.apply_async` (see multiprocessing.pool.AsyncResult)."""

    __slots__ = (
        "_pool",
        "_lock",
        "_done",
        "_job",
        "_cache",
        "_callback",
        "_error_callback",
        "_success",
        "_value",
        "__weakref__",
    )

    def __init__(self, pool, callback, error_callback, _next_job=job_counter.__next__):
        self._pool = pool
        self._lock = lock = allocate_lock()
        lock.acquire()
        self._done = False
        self._job = job = _next_job()
        self._cache = cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None
        cache[job] = self

    def ready(self):
        return self._done

    def successful(self):
        if not self._done:
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout=None):
        if self._done:
            return
        if timeout is None:
            got = self._lock.acquire()
        else:
            got = self._lock.acquire(True, max(float(timeout), 0.0))
        if got:
            self._lock.release()

    def get(self, timeout=None):
        self.wait(timeout)
        if not self._done:
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _finish(self):
        self._done = True
        self._lock.release()
        self._pool = None

    def _set(self, i, ok, value):
        self._success = ok
        self._value = value
        # Out of the cache before the callback runs: a callback that calls
        # terminate() must not see this result as still pending.
        self._cache.pop(self._job, None)
        if self._callback is not None or self._error_callback is not None:
            try:
                if ok:
                    if self._callback is not None:
                        as_user(self._callback, value)
                elif self._error_callback is not None:
                    as_user(self._error_callback, value)
            except Exception:  # noqa: BLE001
                _print_callback_error()
        self._done = True
        self._lock.release()
        self._pool = None

    def _fail(self, i, exc):
        """A failure from the pool itself (worker lost, terminated)."""
        if not self._done:
            self._set(i, False, exc)

    def _fail_pending(self, exc):
        self._fail(0, exc)

    __class_getitem__ = classmethod(types.GenericAlias)  # type: ignore[var-annotated]


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """Result of :meth:`Pool.map_async` / :meth:`Pool.starmap_async`."""

    __slots__ = ("_chunksize", "_number_left", "_got")

    def __init__(self, pool, chunksize, length, callback, error_callback):
        super().__init__(pool, callback, error_callback=error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._got = bytearray()
            self._done = True
            self._lock.release()
            del self._cache[self._job]
        else:
            self._number_left = length // chunksize + bool(length % chunksize)
            self._got = bytearray(self._number_left)

    def _set(self, i, ok, value):
        if self._got[i]:
            return
        self._got[i] = 1
        self._number_left -= 1
        if ok and self._success:
            cs = self._chunksize
            self._value[i * cs : (i + 1) * cs] = value
        elif not ok and self._success:
            self._success = False
            self._value = value
        if self._number_left == 0:
            self._cache.pop(self._job, None)
            try:
                if self._success:
                    if self._callback is not None:
                        as_user(self._callback, self._value)
                elif self._error_callback is not None:
                    as_user(self._error_callback, self._value)
            except Exception:  # noqa: BLE001
                _print_callback_error()
            self._finish()

    def _fail(self, i, exc):
        if not self._done and i < len(self._got) and not self._got[i]:
            self._set(i, False, exc)

    def _fail_pending(self, exc):
        for i in range(len(self._got)):
            self._fail(i, exc)


class IMapIterator:
    """Iterator returned by :meth:`Pool.imap` (``next(timeout)`` supported)."""

    def __init__(self, pool):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(job_counter)
        self._cache = pool._cache
        self._items = collections.deque()
        self._index = 0  # next position to yield (ordered) / items yielded
        self._length = None
        self._unsorted = {}
        self._submitted = 0
        self._pending = set()  # chunk positions sent and not answered
        self._aborted = False
        self._cache[self._job] = self

    def __iter__(self):
        return self

    def next(self, timeout=None):
        with self._cond:
            if not self._items:
                if timeout is not None:
                    timeout = float(timeout)
                    end = time.monotonic() + timeout
                while not self._items:
                    if self._index == self._length:
                        self._pool = None
                        raise StopIteration
                    if timeout is None:
                        self._cond.wait()
                    else:
                        left = end - time.monotonic()
                        if left <= 0:
                            raise TimeoutError
                        self._cond.wait(left)
            item = self._items.popleft()
            self._consumed()
        ok, value = item
        if ok:
            return value
        raise value

    __next__ = next

    def _consumed(self):
        self._cond.notify_all()  # wakes the feeder waiting for room

    def _set(self, i, ok, value):
        with self._cond:
            if i not in self._pending:
                return
            self._pending.discard(i)
            if self._index == i:
                self._items.append((ok, value))
                self._index += 1
                while self._index in self._unsorted:
                    self._items.append(self._unsorted.pop(self._index))
                    self._index += 1
                self._cond.notify_all()
            else:
                self._unsorted[i] = (ok, value)
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None

    def _set_length(self, length):
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify_all()
                self._cache.pop(self._job, None)
                self._pool = None

    def _fail(self, i, exc):
        self._set(i, False, exc)

    def _fail_pending(self, exc):
        for i in sorted(self._pending):
            self._set(i, False, exc)

    def _ahead(self):
        """Chunks sent but not yet handed to the consumer."""
        return self._submitted - self._yielded()

    def _yielded(self):
        return self._index - len(self._items)


class IMapUnorderedIterator(IMapIterator):
    """Iterator returned by :meth:`Pool.imap_unordered`."""

    def _set(self, i, ok, value):
        with self._cond:
            if i not in self._pending:
                return
            self._pending.discard(i)
            self._items.append((ok, value))
            self._index += 1
            self._cond.notify_all()
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None


# --- the pool ---------------------------------------------------------------------


def _call(fn, *args):
    return fn(*args)


def _take(it, n):
    return tuple(itertools.islice(it, n))


# Iterators over built-in containers run no user code: the feeder calls them
# without switching its signal mask (two syscalls an item otherwise).
_PLAIN_ITERATORS = frozenset(
    type(iter(x)) for x in ([], (), range(0), range(1 << 64), "", b"", bytearray(), {}, set())
)


class _Feeder:
    """Feeds one imap's chunks into the task queue, a bounded distance ahead of
    the consumer (or of the results, once the pool is closed)."""

    def __init__(self, core, result, kind, func, iterable, chunksize, ahead):
        self.core = core
        self.result = result
        self.kind = kind
        self.func = func
        self.iterable = iterable
        self.chunksize = chunksize
        self.ahead = ahead
        self.aborted = False
        self.waiting_for_room = False
        self.thread = HelperThread(self.run, "fastmp-pool-imap-feeder")

    def abort(self):
        self.aborted = True
        with self.result._cond:
            self.result._cond.notify_all()

    def _room(self):
        r = self.result
        if self.core.state != RUN:
            return len(r._pending) < self.ahead
        return r._submitted - r._yielded() < self.ahead

    def run(self):
        core, r = self.core, self.result
        job, kind, func, cs = r._job, self.kind, self.func, self.chunksize
        submit = core.submit
        try:
            it = iter(self.iterable)
            call = as_user if type(it) not in _PLAIN_ITERATORS else _call
            while True:
                with r._cond:
                    while not self.aborted and not self._room():
                        self.waiting_for_room = True
                        r._cond.wait(0.1)
                    self.waiting_for_room = False
                    if self.aborted:
                        return
                try:
                    if cs == 1:  # the user's iterable: user code (see _threads)
                        args = (call(next, it),)
                    else:
                        args = call(_take, it, cs)
                        if not args:
                            raise StopIteration
                except StopIteration:
                    break
                i = r._submitted
                with r._cond:
                    r._pending.add(i)
                    r._submitted = i + 1
                try:
                    if cs == 1:
                        submit((job, i, CALL, func, args, {}))  # a Task
                    else:
                        submit((job, i, kind, func, args, None))
                except Exception as e:  # noqa: BLE001
                    r._set(i, False, e)
        except Exception as e:  # noqa: BLE001  (the iterable raised)
            i = r._submitted
            with r._cond:
                r._pending.add(i)
                r._submitted = i + 1
            r._set(i, False, e)
        finally:
            if not self.aborted:
                r._set_length(r._submitted)
            core.feeders.discard(self)
            core.wake()


class Pool:
    """A process pool; drop-in for :class:`multiprocessing.pool.Pool`.

    See the module docstring for what fastmp does differently.
    """

    _wrap_exception = True

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        context=None,
        *,
        cluster=None,
    ):
        self._pool = []
        self._state = INIT
        self._core = None
        self._ctx = context or get_context()
        self._cache = {}
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = initargs
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        core = make_backend(
            cluster,
            self._ctx,
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            self.Process,
        )
        self._core = core
        self._processes = core.size
        self._generation = _fork_generation
        self._cache = core.cache
        self._pool = core.workers
        core.start()
        self._threads = [t for t in getattr(core, "threads", ()) if t is not None]
        self._state = RUN
        self._terminate = util.Finalize(self, core.terminate, exitpriority=15)
        self._put = core.submit
        self._put_many = core.submit_many
        self._wired = core.wired

    # -- checks --
    def _check_owner(self):
        core = self._core
        if core is not None and os.getpid() != core.pid:
            raise NotImplementedError(
                f"this Pool was created by process {core.pid} and cannot be used from "
                f"process {os.getpid()}: pool objects cannot be shared between processes "
                "(create the Pool in the process that uses it)"
            )

    def _check_running(self):
        if self._state != RUN:
            self._check_owner()
            raise ValueError("Pool not running")
        if _fork_generation != self._generation:
            self._check_owner()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self):
        cls = self.__class__
        return (
            f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={len(self._pool)}>"
        )

    # -- API --
    def apply(self, func, args=(), kwds={}):  # noqa: B006  (the stdlib signature)
        """Calls func(*args, **kwds) in a worker and returns the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):  # noqa: B006
        """Asynchronous version of apply(); returns an AsyncResult."""
        if self._state != RUN or _fork_generation != self._generation:
            self._check_running()
        result = ApplyResult(self, callback, error_callback)
        try:
            wire = self._wired.get(func) if type(func) is types.FunctionType else None
            if wire is None:
                wire = self._core.wire(func)
            self._put((result._job, 0, CALL, wire, args, kwds))  # a Task
        except BaseException:
            self._cache.pop(result._job, None)
            raise
        return result

    def map(self, func, iterable, chunksize=None):
        """Applies func to each element of iterable; returns a list in order."""
        return self._map_async(func, iterable, MAP, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        """Like map(), with each element of iterable unpacked as arguments."""
        return self._map_async(func, iterable, STARMAP, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Asynchronous version of map(); returns an AsyncResult."""
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Asynchronous version of starmap(); returns an AsyncResult."""
        return self._map_async(func, iterable, STARMAP, chunksize, callback, error_callback)

    def _map_async(self, func, iterable, kind, chunksize=None, callback=None, error_callback=None):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * self._core.chunks_per_worker)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        result = MapResult(self, chunksize, len(iterable), callback, error_callback=error_callback)
        if chunksize > 0:
            job = result._job
            func = self._core.wire(func)
            # A range is sent as sub-ranges (three ints each) rather than as
            # its items: the workers iterate the same ints.
            items = iterable if type(iterable) in (list, tuple, range) else list(iterable)
            # Sent in small batches, so workers start on the first chunks while
            # the rest are still being pickled (on a cluster: all at once).
            per_batch = max(1, self._core.map_batch_items // chunksize)
            put_many = self._put_many
            try:
                for first in range(0, len(items), chunksize * per_batch):
                    put_many(
                        [
                            (
                                job,
                                start // chunksize,
                                kind,
                                func,
                                items[start : start + chunksize],
                                None,
                            )
                            for start in range(
                                first, min(len(items), first + chunksize * per_batch), chunksize
                            )
                        ]
                    )
            except BaseException:
                self._cache.pop(job, None)
                raise
        return result

    def imap(self, func, iterable, chunksize=1):
        """Like map(), but lazy: yields results in order as they arrive."""
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Like imap(), but yields results in completion order."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, cls, func, iterable, chunksize):
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        result = cls(self)
        core = self._core
        feeder = _Feeder(
            core,
            result,
            MAP,
            core.wire(func),
            iterable,
            chunksize,
            core.imap_ahead(),
        )
        core.feeders.add(feeder)
        feeder.thread.start()
        if chunksize == 1:
            return result
        return (item for chunk in result for item in chunk)

    def close(self):
        """No more tasks; the workers exit once the pending ones are done."""
        self._check_owner()
        util.debug("closing pool")
        if self._state == RUN:
            self._state = CLOSE
            self._core.close()

    def terminate(self):
        """Stops the workers at once; pending results fail with PoolTerminatedError."""
        self._check_owner()
        util.debug("terminating pool")
        self._state = TERMINATE
        self._terminate()
        self._put = self._put_many = None  # the queues' fds close with them

    def join(self):
        """Waits for the workers to exit (after close() or terminate())."""
        self._check_owner()
        util.debug("joining pool")
        if self._state == RUN:
            raise ValueError("Pool is still running")
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._core.join()
        if self._state == CLOSE:
            self._terminate.cancel()
        self._put = self._put_many = None

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()
