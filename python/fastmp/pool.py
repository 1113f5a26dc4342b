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

``ThreadPool`` is the stdlib's.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue  # noqa: F401  (as multiprocessing.pool)
import signal
import sys
import threading
import time
import traceback
import types
import warnings  # noqa: F401  (as multiprocessing.pool)
from _thread import allocate_lock
from multiprocessing import connection as _connection
from multiprocessing import util
from multiprocessing.connection import wait  # noqa: F401  (as multiprocessing.pool)
from multiprocessing.context import ProcessError, TimeoutError
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

from . import reduction
from .queues import SimpleQueue

__all__ = ["Pool", "ThreadPool", "WorkerLostError", "PoolTerminatedError"]

# Also here, as in multiprocessing.pool: the stdlib's worker function and the
# job counter (fastmp's own worker is `_worker`).
worker = _stdlib_worker
job_counter = itertools.count()


def get_context():
    from . import context

    return context._default_context.get_context()


class WorkerLostError(ProcessError):
    """A Pool worker died (killed by a signal, ``os._exit``, a crash) while it
    was running this task. The pool replaced the worker; other tasks are fine.

    Subclass of :class:`multiprocessing.ProcessError`; ``exitcode`` is the dead
    worker's exit code (negative: killed by that signal), ``pid`` its pid.
    """

    def __init__(self, message, exitcode=None, pid=None):
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.exitcode, self.pid))


class PoolTerminatedError(ProcessError):
    """The pool was terminated before this task's result arrived."""


# Bumped in every fork child: a Pool remembers the value it was created with,
# so "used from another process" is one comparison (os.getpid() is a syscall).
_fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- the shared per-worker slots ----------------------------------------------
#
# Each worker owns three int64 words in an anonymous shared mapping: the job id
# of the task it is running (or a state below), that task's chunk index, and a
# count of tasks taken. The parent reads them when a worker dies to find the
# task that died with it. A worker writes its slot only after its result has
# been put, so "worker died with job X in its slot" means X's result may or may
# not be queued already: the parent sends the failure through the result queue
# (after anything the worker had put) and the result thread ignores it for a
# task that is already complete.

_WAITING = -2  # in get(): may have taken a task it has not recorded yet
_IDLE = -1
_EXITED = -3
_SLOT_WORDS = 3


class _Slots:
    def __init__(self, n):
        import mmap

        self.n = n
        self.fd = os.memfd_create("fastmp-pool-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, max(n, 1) * _SLOT_WORDS * 8)
        self._map(mmap)
        for i in range(n * _SLOT_WORDS):
            self.words[i] = _IDLE

    def _map(self, mmap):
        self.mm = mmap.mmap(self.fd, self.n * _SLOT_WORDS * 8 or 8)
        self.words = memoryview(self.mm).cast("q")

    def close(self):
        if self.mm is None:
            return
        self.words.release()
        self.mm.close()
        os.close(self.fd)
        self.mm = None

    def __reduce__(self):
        from multiprocessing.context import assert_spawning

        assert_spawning(self)
        return (_rebuild_slots, (self.n, reduction._fd_for_child(self.fd)))


def _rebuild_slots(n, holder):
    import mmap

    s = _Slots.__new__(_Slots)
    s.n = n
    s.fd = holder.detach()
    s._map(mmap)
    return s


# --- the worker ---------------------------------------------------------------

_CALL, _MAP, _STARMAP = 0, 1, 2
_RESEND = "fastmp-pool-resend"


def _adopt_into_main(func):
    """A ``__main__`` function that arrived by value gets this process's
    ``__main__`` namespace as its globals (its captured globals fill in names
    the namespace lacks), so it shares state with the initializer and the
    other functions as it would have in the parent."""
    if not isinstance(func, types.FunctionType) or func.__module__ != "__main__":
        return func
    main = sys.modules.get("__main__")
    if main is None or func.__globals__ is vars(main):
        return func
    namespace = vars(main)
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


# How often an idle or busy worker checks that its pool's owner still lives.
_OWNER_CHECK_SECONDS = 0.1


class _OwnerGone(Exception):
    """The process that owns the pool has exited (or was killed)."""


def _owner_watch():
    """A function that returns True once the pool's owner is gone.

    A worker's parent is the process that owns the pool (under forkserver too:
    the forkserver hands the child the pipe its requester wrote into). The
    stdlib gives every child the read end of a pipe whose write end only the
    parent holds (``parent_process().sentinel``): it reports end-of-file when
    the parent exits, however it died. By fd, never by pid (pids are recycled).
    """
    import select

    from multiprocessing.process import parent_process

    parent = parent_process()
    if parent is None or parent.sentinel is None:
        return lambda: False
    poller = select.poll()
    poller.register(parent.sentinel, select.POLLIN | select.POLLHUP)
    poll = poller.poll

    def owner_gone():
        return bool(poll(0))

    return owner_gone


def _worker(inqueue, outqueue, slots, idx, init_blob, maxtasks):
    """Body of a pool worker process."""
    words = slots.words
    base = idx * _SLOT_WORDS
    put = outqueue.put
    owner_gone = _owner_watch()
    monotonic = time.monotonic
    queue_get = inqueue.get
    next_check = monotonic() + _OWNER_CHECK_SECONDS

    def get():
        # Waits in slices, so a worker whose owner died (its task queue then
        # has no writer left, but a shared-memory queue cannot report EOF)
        # leaves instead of waiting forever; a backlog is not worked off for
        # nobody either.
        nonlocal next_check
        while True:
            if monotonic() >= next_check:
                if owner_gone():
                    raise _OwnerGone
                next_check = monotonic() + _OWNER_CHECK_SECONDS
            try:
                return queue_get(True, _OWNER_CHECK_SECONDS)
            except queue.Empty:
                next_check = 0.0

    if init_blob is not None:
        by_reference, by_value = init_blob
        try:
            initializer, initargs = reduction.loads(by_reference)
        except Exception:
            if by_value is None:
                raise
            # Defined where this process cannot import it (e.g. under
            # `if __name__ == "__main__":` with spawn): the copy by value.
            initializer, initargs = reduction.loads(by_value)
            initializer = _adopt_into_main(initializer)
        initializer(*initargs)
    completed = 0
    functions = {}  # pickled function -> function (see _Core.wire_function)
    loads = reduction.loads
    try:
        while maxtasks is None or completed < maxtasks:
            words[base] = _WAITING
            try:
                task = get()
            except (EOFError, OSError, _OwnerGone):
                break
            except Exception as e:  # noqa: BLE001  (a task that cannot be unpickled here)
                put((-2, 0, None, ExceptionWithTraceback(e, e.__traceback__)))
                continue
            if task is None:
                break
            job, i, kind, func, args, kwds = task
            if type(func) is bytes:
                try:
                    func = functions[func]
                except KeyError:
                    try:
                        f = loads(func)
                    except Exception as e:  # noqa: BLE001
                        # Pickled by reference, but not importable here (e.g.
                        # defined under `if __name__ == "__main__":` with
                        # spawn): the parent sends it again by value.
                        put(
                            (
                                job,
                                i,
                                None,
                                (
                                    _RESEND,
                                    func,
                                    kind,
                                    args,
                                    kwds,
                                    ExceptionWithTraceback(e, e.__traceback__),
                                ),
                            )
                        )
                        task = func = args = kwds = None
                        words[base] = _IDLE
                        continue
                    f = _adopt_into_main(f)
                    if len(functions) > 1024:
                        functions.clear()
                    functions[func] = f
                    func = f
            words[base + 1] = i
            words[base] = job
            words[base + 2] += 1
            try:
                if kind == _CALL:
                    result = func(*args, **kwds)
                elif kind == _MAP:
                    result = list(map(func, args))
                else:
                    result = list(itertools.starmap(func, args))
                ok = True
            except Exception as e:  # noqa: BLE001  (reported to the caller)
                ok = False
                result = ExceptionWithTraceback(e, e.__traceback__)
            try:
                put((job, i, ok, result))
            except Exception as e:  # noqa: BLE001
                put((job, i, False, MaybeEncodingError(e, result)))
            task = func = args = kwds = result = None
            words[base] = _IDLE
            completed += 1
    except KeyboardInterrupt:
        # Ctrl-C reaches every process in the foreground group; the parent
        # handles it, a worker just leaves quietly.
        words[base] = _EXITED
        os._exit(1)
    words[base] = _EXITED


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
                        self._callback(value)
                elif self._error_callback is not None:
                    self._error_callback(value)
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
                        self._callback(self._value)
                elif self._error_callback is not None:
                    self._error_callback(self._value)
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


class _PoolCache(dict):
    """job id -> pending result (a dict, as the stdlib's)."""


# --- the pool ---------------------------------------------------------------------


def _initializer_blob(ctx, initializer, initargs):
    """(pickle by reference, pickle by value or None): a spawned worker cannot
    import a function defined under ``if __name__ == "__main__":``; it falls
    back to the copy by value (by reference is preferred: a by-value copy gets
    its own globals, so an initializer setting module globals needs the real
    module)."""
    by_reference = reduction.dumps((initializer, initargs))
    by_value = None
    if (
        getattr(initializer, "__module__", None) == "__main__"
        and isinstance(initializer, types.FunctionType)
        and ctx.get_start_method() != "fork"
    ):
        try:
            import cloudpickle

            by_value = cloudpickle.dumps(
                (initializer, initargs), protocol=reduction.HIGHEST_PROTOCOL
            )
        except Exception:  # noqa: BLE001
            by_value = None
    return by_reference, by_value


class _Core:
    """Everything the pool's threads need; the Pool object itself stays
    collectable, and its finalizer terminates the core."""

    def __init__(self, ctx, processes, initializer, initargs, maxtasks, process_factory):
        self.pid = os.getpid()
        self.ctx = ctx
        self.processes = processes
        self.maxtasks = maxtasks
        self.process_factory = process_factory
        self.init_blob = (
            None if initializer is None else _initializer_blob(ctx, initializer, initargs)
        )
        self.state = RUN
        self.cache = _PoolCache()
        self.inqueue = SimpleQueue(ctx=ctx)
        self.outqueue = SimpleQueue(ctx=ctx)
        self.slots = _Slots(processes)
        self.workers = [None] * processes
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.suspect = False
        self.lost_cause = None
        self.on_worker_lost = None  # hook for the executor
        self.feeders = set()
        self.wired = {}
        self.by_reference = {}  # pickled-by-reference bytes -> function
        self.terminated = False
        self.release_on_exit = False

    def wire_function(self, func):
        """What to send for func: its pickle, cached, when func pickles by
        reference (a module-level function: its pickle never goes stale, and
        the worker unpickles it once); func itself otherwise (lambdas, bound
        methods and other callables carry state and are pickled per task)."""
        try:
            return self.wired[func]
        except KeyError:
            pass
        except TypeError:  # unhashable callable
            return func
        wire = func
        if isinstance(func, (types.FunctionType, types.BuiltinFunctionType)):
            module = sys.modules.get(getattr(func, "__module__", None) or "")
            target = module
            for part in getattr(func, "__qualname__", "<").split("."):
                target = getattr(target, part, None)
            if target is func and "<" not in func.__qualname__:
                try:
                    wire = reduction.dumps(func)
                    self.by_reference[wire] = func
                except Exception:  # noqa: BLE001  (pickled per task; errors surface there)
                    wire = func
        if len(self.wired) > 1024:
            self.wired.clear()
            self.by_reference.clear()
        self.wired[func] = wire
        return wire

    # -- workers --
    def start_worker(self, idx):
        w = self.process_factory(
            self.ctx,
            target=_worker,
            args=(self.inqueue, self.outqueue, self.slots, idx, self.init_blob, self.maxtasks),
        )
        w.name = w.name.replace("Process", "PoolWorker")
        w.daemon = True
        base = idx * _SLOT_WORDS
        self.slots.words[base] = _IDLE
        w.start()
        self.workers[idx] = w

    def wake(self):
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def handle_workers(self):
        """Thread: reaps dead workers, fails their task, replaces them; once the
        pool is closed and idle, sends the workers their stop sentinels."""
        last_counts = None
        while True:
            state = self.state
            if state == TERMINATE:
                return
            if state != RUN and not self.cache:
                break
            sentinels = [w.sentinel for w in self.workers if w is not None and w.exitcode is None]
            try:
                ready = _connection.wait(sentinels + [self.wake_r], timeout=0.1)
            except OSError:
                ready = []
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 4096)
                except OSError:
                    pass
            with self.lock:
                if self.state == TERMINATE:
                    return
                self._maintain()
            if self.suspect:
                last_counts = self._reconcile(last_counts)
        # Closed and idle: stop the workers (each takes one sentinel).
        with self.lock:
            if self.state == TERMINATE:
                return
            n = sum(1 for w in self.workers if w is not None and w.exitcode is None)
            self.inqueue.put_many([None] * n)
        while True:
            alive = [w for w in self.workers if w is not None and w.exitcode is None]
            if not alive or self.state == TERMINATE:
                break
            _connection.wait([w.sentinel for w in alive] + [self.wake_r], timeout=0.1)
        if self.state != TERMINATE:
            self.outqueue.put(None)  # the result thread stops after the last result

    def _maintain(self):
        words = self.slots.words
        for idx, w in enumerate(self.workers):
            if w is None or w.exitcode is None:
                continue
            w.join()
            base = idx * _SLOT_WORDS
            job, chunk = words[base], words[base + 1]
            if job >= 0:
                self._report_lost(job, chunk, w)
            elif w.exitcode != 0:
                if job == _WAITING:
                    self.suspect = True
                if self.on_worker_lost is not None:
                    # The executor breaks on any abrupt exit, as the stdlib's
                    # (a failing initializer included).
                    self.on_worker_lost(
                        WorkerLostError(
                            f"pool worker {w.name} (pid {w.pid}) exited with code {w.exitcode}",
                            w.exitcode,
                            w.pid,
                        )
                    )
            self.workers[idx] = None
            if self.state == RUN or (self.state == CLOSE and self.cache):
                self.start_worker(idx)

    def _report_lost(self, job, chunk, w):
        sig = ""
        if w.exitcode is not None and w.exitcode < 0:
            try:
                sig = f" ({signal.Signals(-w.exitcode).name})"
            except ValueError:
                pass
        exc = WorkerLostError(
            f"pool worker {w.name} (pid {w.pid}) died with exit code {w.exitcode}{sig} "
            "while running this task",
            w.exitcode,
            w.pid,
        )
        # Through the result queue, so it lands after any result the worker
        # managed to put before dying.
        self.outqueue.put((job, chunk, None, exc))
        if self.on_worker_lost is not None:
            self.on_worker_lost(exc)

    def _reconcile(self, last):
        """A worker died between taking a task and recording it. When the pool
        is quiet (nothing queued, every worker waiting, nothing taken since the
        last look), whatever is still pending was lost with it."""
        words = self.slots.words
        live = [i for i, w in enumerate(self.workers) if w is not None and w.exitcode is None]
        counts = tuple(words[i * _SLOT_WORDS + 2] for i in live)
        quiet = self.inqueue.qsize() == 0 and all(words[i * _SLOT_WORDS] == _WAITING for i in live)
        if not quiet:
            return None
        if last != counts:
            return counts
        self.suspect = False
        if self.cache:
            exc = self.lost_cause
            self.lost_cause = None
            if exc is None:
                exc = WorkerLostError(
                    "a pool worker died after taking this task and before recording it "
                    "(the task never ran or its result was lost)"
                )
            self.outqueue.put((-1, 0, None, (exc, list(self.cache))))
        return None

    # -- results --
    def handle_results(self):
        try:
            self._handle_results()
        finally:
            if self.release_on_exit:
                self.release()

    def _handle_results(self):
        get_many = self.outqueue.get_many
        cache = self.cache
        cache_get = cache.get
        while True:
            try:
                batch = get_many(512)
            except (OSError, EOFError, ValueError):
                return
            for msg in batch:
                if msg is None:
                    return
                job, i, ok, value = msg
                if ok is None:  # failure reported by the pool itself
                    if type(value) is tuple and value and value[0] == _RESEND:
                        self._resend(job, i, value)
                    elif job == -2:  # a worker could not unpickle a task
                        self.lost_cause = value
                        self.suspect = True
                        self.wake()
                    elif job == -1:
                        exc, jobs = value
                        for j in jobs:
                            r = cache.get(j)
                            if r is not None:
                                r._fail_pending(exc)
                    else:
                        r = cache.get(job)
                        if r is not None:
                            r._fail(i, value)
                    continue
                r = cache_get(job)
                if r is not None:
                    r._set(i, ok, value)
            msg = batch = r = value = None

    def _resend(self, job, i, msg):
        """A worker could not import a function sent by reference: send that
        task again with the function pickled by value (once per function)."""
        _, wire, kind, args, kwds, error = msg
        func = self.by_reference.get(wire)
        r = self.cache.get(job)
        if r is None:
            return
        if func is not None:
            try:
                import cloudpickle

                by_value = cloudpickle.dumps(func, protocol=reduction.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001
                by_value = None
            if by_value is not None:
                self.wired[func] = by_value
                try:
                    self.inqueue.put((job, i, kind, by_value, args, kwds))
                    return
                except Exception:  # noqa: BLE001
                    pass
        r._fail(i, error)

    # -- shutdown --
    def terminate(self, threads):
        if os.getpid() != self.pid:
            return  # a fork child's exit must not stop its parent's pool
        if threads[0] is not None and threading.current_thread() is threads[0]:
            # The garbage collector ran the finalizer in the worker thread,
            # which may hold self.lock: stop the pool from another thread.
            threading.Thread(target=self.terminate, args=(threads,), daemon=True).start()
            return
        with self.lock:
            if self.terminated:
                return
            self.terminated = True
            self.state = TERMINATE
        self.wake()
        for f in list(self.feeders):
            f.abort()
        # SIGTERM, then SIGKILL for a worker that ignores it.
        alive = [w for w in self.workers if w is not None and w.exitcode is None]
        for w in alive:
            try:
                w.terminate()
            except Exception:  # noqa: BLE001
                pass
        for w in alive:
            w.join(1.0)
            if w.exitcode is None:
                w.kill()
                w.join()
        for w in self.workers:
            if w is not None:
                w.join()
        me = threading.current_thread()
        if threads[0] is not None and threads[0] is not me and threads[0].is_alive():
            threads[0].join()
        try:
            self.outqueue.put(None)
        except Exception:  # noqa: BLE001
            pass
        if threads[1] is not None and threads[1] is not me and threads[1].is_alive():
            threads[1].join()
        for f in list(self.feeders):
            if f.thread is not me:
                f.thread.join()
        exc = PoolTerminatedError("the pool was terminated before this task finished")
        for r in list(self.cache.values()):
            try:
                r._fail_pending(exc)
            except Exception:  # noqa: BLE001
                pass
        self.cache.clear()
        if threads[1] is None or threads[1] is not me:
            self.release()
        else:
            self.release_on_exit = True  # terminate() ran in a callback

    def close(self):
        """No new tasks: the workers stop once every pending result is in."""
        with self.lock:
            if self.state == RUN:
                self.state = CLOSE
        for f in list(self.feeders):
            with f.result._cond:
                f.result._cond.notify_all()
        self.wake()

    def finish(self, threads):
        """After close(): waits for the pool's threads and workers, then frees
        its resources (unless terminate() got there first)."""
        if os.getpid() != self.pid:
            return
        for t in threads:
            if t is not threading.current_thread():
                t.join()
        for f in list(self.feeders):
            f.thread.join()
        for w in list(self.workers):
            if w is not None:
                w.join()
        with self.lock:
            if self.terminated:
                return
            self.terminated = True
            self.state = TERMINATE
        self.release()

    def release(self):
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wake_r = self.wake_w = -1
        self.slots.close()
        for w in self.workers:
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001
                    pass
        self.workers = []
        self.inqueue = self.outqueue = None


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
        self.thread = threading.Thread(target=self.run, daemon=True, name="fastmp-pool-imap-feeder")

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
        put = core.inqueue.put
        try:
            it = iter(self.iterable)
            while True:
                with r._cond:
                    while not self.aborted and not self._room():
                        self.waiting_for_room = True
                        r._cond.wait(0.1)
                    self.waiting_for_room = False
                    if self.aborted:
                        return
                try:
                    if cs == 1:
                        x = next(it)
                        args = (x,)
                    else:
                        args = tuple(itertools.islice(it, cs))
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
                        put((job, i, _CALL, func, args, {}))
                    else:
                        put((job, i, kind, func, args, None))
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
        self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None
    ):
        self._pool = []
        self._state = INIT
        self._core = None
        self._ctx = context or get_context()
        self._cache = _PoolCache()
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = initargs
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        core = _Core(self._ctx, processes, initializer, initargs, maxtasksperchild, self.Process)
        self._core = core
        self._generation = _fork_generation
        self._cache = core.cache
        self._pool = core.workers
        try:
            for idx in range(processes):
                core.start_worker(idx)
        except BaseException:
            core.terminate((None, None))
            raise
        self._worker_handler = threading.Thread(
            target=core.handle_workers, daemon=True, name="fastmp-pool-workers"
        )
        self._result_handler = threading.Thread(
            target=core.handle_results, daemon=True, name="fastmp-pool-results"
        )
        self._threads = [self._worker_handler, self._result_handler]
        self._worker_handler.start()
        self._result_handler.start()
        self._state = RUN
        self._terminate = util.Finalize(
            self, core.terminate, args=(self._threads,), exitpriority=15
        )
        self._put = core.inqueue.put
        self._put_many = core.inqueue.put_many
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
                wire = self._core.wire_function(func)
            self._put((result._job, 0, _CALL, wire, args, kwds))
        except BaseException:
            self._cache.pop(result._job, None)
            raise
        return result

    def map(self, func, iterable, chunksize=None):
        """Applies func to each element of iterable; returns a list in order."""
        return self._map_async(func, iterable, _MAP, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        """Like map(), with each element of iterable unpacked as arguments."""
        return self._map_async(func, iterable, _STARMAP, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Asynchronous version of map(); returns an AsyncResult."""
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Asynchronous version of starmap(); returns an AsyncResult."""
        return self._map_async(func, iterable, _STARMAP, chunksize, callback, error_callback)

    def _map_async(self, func, iterable, kind, chunksize=None, callback=None, error_callback=None):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), len(self._pool) * 4)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        result = MapResult(self, chunksize, len(iterable), callback, error_callback=error_callback)
        if chunksize > 0:
            job = result._job
            func = self._core.wire_function(func)
            # A range is sent as sub-ranges (three ints each) rather than as
            # its items: the workers iterate the same ints.
            items = iterable if type(iterable) in (list, tuple, range) else list(iterable)
            # Sent in small batches, so workers start on the first chunks while
            # the rest are still being pickled.
            per_batch = max(1, 1024 // chunksize)
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
            _MAP,
            core.wire_function(func),
            iterable,
            chunksize,
            max(4 * self._processes, 8),
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
        self._core.finish(self._threads)
        if self._state == CLOSE:
            self._terminate.cancel()
        self._put = self._put_many = None

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()
