"""The local pool backend: worker processes on this machine, fed through
fastmp's shared-memory queues (see :mod:`fastmp._pool_backend` for the
interface, :mod:`fastmp.pool` for the API).

Tasks go into one queue, results come back through another, drained in
batches by one result thread; a second thread reaps dead workers, fails the
task a dead worker was running, and replaces it.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import types
from multiprocessing import connection as _connection
from multiprocessing.pool import ExceptionWithTraceback, MaybeEncodingError  # type: ignore[attr-defined]

from . import reduction
from ._pool_backend import (
    CLOSE,
    RUN,
    STOP,
    TERMINATE,
    Backend,
    LostUntracked,
    Resend,
    TaskLost,
    UnreadableTask,
    WorkerLostError,
    adopt_function,
    run_task,
)
from ._threads import HelperThread, current_mask, set_mask
from .queues import SimpleQueue

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

# How often an idle or busy worker checks that its pool's owner still lives.
_OWNER_CHECK_SECONDS = 0.1


class _OwnerGone(Exception):
    """The process that owns the pool has exited (or was killed)."""


class _Owner:
    """A pidfd on the process that owns the pool, opened by the owner itself
    and handed to each worker: inherited under fork, passed as an fd under
    spawn and forkserver. It becomes readable when the owner exits, however
    it died, and cannot be fooled by pid reuse (it is opened while the owner
    surely lives, by the owner). fd is -1 where pidfd_open is unavailable
    (Python < 3.9, Linux < 5.3): the workers then rely on the stdlib's parent
    sentinel alone."""

    def __init__(self):
        try:
            self.fd = os.pidfd_open(os.getpid())
        except (AttributeError, OSError):  # pragma: no cover - old Python or kernel
            self.fd = -1

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __reduce__(self):
        from multiprocessing.context import assert_spawning

        assert_spawning(self)
        holder = reduction._fd_for_child(self.fd) if self.fd >= 0 else None
        return (_rebuild_owner, (holder,))


def _rebuild_owner(holder):
    o = _Owner.__new__(_Owner)
    o.fd = -1 if holder is None else holder.detach()
    return o


def _owner_watch(owner):
    """A function that returns True once the pool's owner is gone.

    Watches the owner's pidfd (see :class:`_Owner`) and the stdlib's
    ``parent_process().sentinel``, the read end of a pipe whose write end the
    parent holds. The sentinel alone is not enough under fork: every process
    the owner forks after the worker inherits that write end too, so the
    sentinel reports end-of-file only once those have exited as well (a
    Manager's server, started after the pool, would keep the workers alive
    for good). By fd, never by pid (pids are recycled).
    """
    import select
    from multiprocessing.process import parent_process

    fds = []
    if owner is not None and owner.fd >= 0:
        fds.append(owner.fd)
    parent = parent_process()
    if parent is not None and parent.sentinel is not None:
        fds.append(parent.sentinel)
    if not fds:
        return lambda: False
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP)
    poll = poller.poll

    def owner_gone():
        return bool(poll(0))

    return owner_gone


def _worker(inqueue, outqueue, slots, idx, init_blob, maxtasks, owner=None, sigmask=None):
    """Body of a pool worker process. ``sigmask``: the signal mask of the
    thread that created the pool (a replacement worker is started from the
    pool's helper thread, whose mask blocks every asynchronous signal)."""
    words = slots.words
    base = idx * _SLOT_WORDS
    put = outqueue.put
    owner_gone = _owner_watch(owner)
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

    completed = 0
    functions = {}  # pickled function -> function (see LocalBackend.wire)
    loads = reduction.loads
    try:
        if sigmask is not None:
            set_mask(sigmask)  # a Ctrl-C held pending since the fork arrives here
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
                initializer = adopt_function(initializer)
            initializer(*initargs)
        while maxtasks is None or completed < maxtasks:
            words[base] = _WAITING
            try:
                task = get()
            except (EOFError, OSError, _OwnerGone):
                break
            except Exception as e:  # noqa: BLE001  (a task that cannot be unpickled here)
                put(UnreadableTask(ExceptionWithTraceback(e, e.__traceback__)))
                continue
            if task is STOP:
                break
            job, i, kind, func, args, kwds = task  # a Task
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
                        put(Resend(task, ExceptionWithTraceback(e, e.__traceback__)))
                        task = func = args = kwds = None
                        words[base] = _IDLE
                        continue
                    f = adopt_function(f)
                    if len(functions) > 1024:
                        functions.clear()
                    functions[func] = f
                    func = f
            words[base + 1] = i
            words[base] = job
            words[base + 2] += 1
            ok, result = run_task(kind, func, args, kwds)
            try:
                put((job, i, ok, result))  # a Result
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


# --- the backend ------------------------------------------------------------------


def _closed(*args, **kwds):
    raise ValueError("Pool not running")


class LocalBackend(Backend):
    """Worker processes on this machine. Holds everything the pool's threads
    need, so the Pool object itself stays collectable (its finalizer
    terminates the backend)."""

    def __init__(self, ctx, processes, initializer, initargs, maxtasks, process_factory):
        super().__init__()
        self.ctx = ctx
        self.size = processes
        self.maxtasks = maxtasks
        self.process_factory = process_factory
        self.init_blob = (
            None if initializer is None else _initializer_blob(ctx, initializer, initargs)
        )
        self.workers = [None] * processes
        self.sigmask = current_mask()  # what the workers get (see _worker)
        self.suspect = False
        self.lost_cause = None
        self.by_reference = {}  # pickled-by-reference bytes -> function
        self.release_on_exit = False
        self.threads = [None, None]  # worker handler, result handler
        self.inqueue = self.outqueue = self.slots = self.owner = None
        self.wake_r = self.wake_w = -1
        self.submit = self.submit_many = _closed

    def start(self):
        self.inqueue = SimpleQueue(ctx=self.ctx)
        self.outqueue = SimpleQueue(ctx=self.ctx)
        self.slots = _Slots(self.size)
        self.owner = _Owner()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.submit = self.inqueue.put
        self.submit_many = self.inqueue.put_many
        # (Starting the threads before the workers saved about 10% of a
        # Pool's start-up on a quiet machine but cost 30% on a busy one, where
        # each thread start waits for a time slice either way.)
        threads = [
            HelperThread(self.handle_workers, "fastmp-pool-workers"),
            HelperThread(self.handle_results, "fastmp-pool-results"),
        ]
        try:
            for idx in range(self.size):
                self.start_worker(idx)
            self.threads = threads
            for t in threads:
                t.start()  # a Ctrl-C held back while it ran is raised here
        except BaseException:
            self.terminate()
            raise

    def wire(self, func):
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
            args=(
                self.inqueue,
                self.outqueue,
                self.slots,
                idx,
                self.init_blob,
                self.maxtasks,
                self.owner,
                self.sigmask,
            ),
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
        pool is closed and idle, tells the workers to stop."""
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
        # Closed and idle: stop the workers (each takes one STOP).
        with self.lock:
            if self.state == TERMINATE:
                return
            n = sum(1 for w in self.workers if w is not None and w.exitcode is None)
            self.inqueue.put_many([STOP] * n)
        while True:
            alive = [w for w in self.workers if w is not None and w.exitcode is None]
            if not alive or self.state == TERMINATE:
                break
            _connection.wait([w.sentinel for w in alive] + [self.wake_r], timeout=0.1)
        if self.state != TERMINATE:
            self.outqueue.put(STOP)  # the result thread stops after the last result

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
                # Not under as_user: this thread is here because a worker
                # died, often of the Ctrl-C the main thread has not yet taken;
                # unblocking would take it. The worker sets its own mask.
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
        self.outqueue.put(TaskLost(job, chunk, exc))
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
            # Through the result queue, after any result already queued.
            self.outqueue.put(LostUntracked(exc, list(self.cache)))
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
        cache_get = self.cache.get
        deliver = self.deliver
        while True:
            try:
                batch = get_many(512)
            except (OSError, EOFError, ValueError):
                return
            for msg in batch:
                if type(msg) is tuple:  # a Result: the common case, inline
                    job, i, ok, value = msg
                    r = cache_get(job)
                    if r is not None:
                        r._set(i, ok, value)
                elif msg is STOP:
                    return
                elif type(msg) is Resend:
                    self._resend(msg)
                elif type(msg) is UnreadableTask:
                    self.lost_cause = msg.error
                    self.suspect = True
                    self.wake()
                else:
                    deliver(msg)
            msg = batch = r = value = None

    def _resend(self, msg):
        """A worker could not import a function sent by reference: send that
        task again with the function pickled by value (once per function)."""
        job, i, kind, wire, args, kwds = msg.task
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
        r._fail(i, msg.error)

    # -- shutdown --
    def terminate(self):
        if os.getpid() != self.pid:
            return  # a fork child's exit must not stop its parent's pool
        threads = self.threads
        if threads[0] is not None and threading.current_thread() is threads[0]:
            # The garbage collector ran the finalizer in the worker thread,
            # which may hold self.lock: stop the pool from another thread.
            HelperThread(self.terminate, "fastmp-pool-terminate").start()
            return
        with self.lock:
            if self.terminated:
                return
            self.terminated = True
            self.state = TERMINATE
        self.wake()
        self.abort_feeders()
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
        if self.outqueue is not None:
            try:
                self.outqueue.put(STOP)
            except Exception:  # noqa: BLE001
                pass
        if threads[1] is not None and threads[1] is not me and threads[1].is_alive():
            threads[1].join()
        self.join_feeders()
        self.fail_all_pending()
        if threads[1] is None or threads[1] is not me:
            self.release()
        else:
            self.release_on_exit = True  # terminate() ran in a callback

    def close(self):
        with self.lock:
            if self.state == RUN:
                self.state = CLOSE
        for f in list(self.feeders):
            with f.result._cond:
                f.result._cond.notify_all()
        self.wake()

    def join(self):
        if os.getpid() != self.pid:
            return
        for t in self.threads:
            if t is not None and t is not threading.current_thread():
                t.join()
        self.join_feeders()
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
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.wake_r = self.wake_w = -1
        if self.slots is not None:
            self.slots.close()
        if self.owner is not None:
            self.owner.close()
        for w in self.workers:
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001
                    pass
        self.workers = []
        self.inqueue = self.outqueue = None
        self.submit = self.submit_many = _closed
