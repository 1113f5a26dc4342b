"""The cluster pool backend: a Pool's or an executor's tasks on Dask distributed.

Imported only when a pool is given ``cluster=`` (or FASTMP_CLUSTER is set): a
plain ``import fastmp`` never imports Dask. The interface is
:class:`fastmp._pool_backend.Backend`; what differs from local processes and
why is in the README ("Scaling out").

How it works: every task (a call, or a chunk of a map) is pickled in the
caller, so what cannot be sent fails at the call. Pending tasks wait here, in
the client; at most ``size`` Dask tasks are in flight, each carrying one or
more pending tasks (a backlog is batched, so the scheduler never sees one task
per item, and a chunk is never split). A Dask task runs its batch on a worker
and returns the pickled results; one thread here collects finished Dask tasks
as they complete and hands the results to the pool's result objects.
"""

from __future__ import annotations

import collections
import ctypes
import io
import os
import pickle
import threading
import types
import uuid
from multiprocessing.pool import ExceptionWithTraceback, MaybeEncodingError  # type: ignore[attr-defined]

from . import reduction
from ._pool_backend import (
    CLOSE,
    RUN,
    TERMINATE,
    Backend,
    TaskLost,
    WorkerLostError,
    adopt_function,
    run_task,
)
from ._threads import HelperThread

# How long a scheduler address may take to answer before the Pool fails.
CONNECT_TIMEOUT = 5
# Most pool tasks one Dask task carries (when a backlog is batched).
MAX_BATCH = 256


# --- what cannot cross machines --------------------------------------------------


def _local_only(obj):
    """What to say about a fastmp object that cannot leave this machine, or None."""
    module = type(obj).__module__ or ""
    if not module.startswith("fastmp") and not isinstance(obj, _proxy_types()):
        if not isinstance(obj, (ctypes._SimpleCData, ctypes.Array, ctypes.Structure)):
            return None
    from . import connection, queues, shared_memory, sharedctypes, synchronize

    if isinstance(obj, queues.Queue):
        return "return results from the task instead, or use a distributed.Queue"
    if isinstance(obj, connection.Connection):
        return "a Pipe connects processes of one machine; return results from the task instead"
    if isinstance(
        obj,
        (
            synchronize.Lock,
            synchronize.RLock,
            synchronize.Semaphore,
            synchronize.BoundedSemaphore,
            synchronize.Event,
            synchronize.Condition,
            synchronize.Barrier,
        ),
    ):
        return "use distributed.Lock, distributed.Semaphore or distributed.Event"
    if isinstance(obj, sharedctypes.SynchronizedBase):
        return "send its value (v.value, a[:]), or use a distributed.Variable"
    if isinstance(obj, (ctypes._SimpleCData, ctypes.Array, ctypes.Structure)):
        from . import _heap

        if isinstance(getattr(obj, "_wrapper", None), _heap._Block):
            return "send its value (v.value, a[:]), or use a distributed.Variable"
        return None
    if isinstance(obj, (shared_memory.SharedMemory, shared_memory.ShareableList)):
        return "send the data itself (bytes, a numpy array)"
    if isinstance(obj, _proxy_types()):
        address = getattr(getattr(obj, "_token", None), "address", None)
        # A Unix socket (a path, or bytes for an abstract one, as fastmp's
        # Manager uses): this machine only. A TCP address is a tuple.
        if isinstance(address, (str, bytes)):
            return "a Manager listening on this machine; use distributed.Variable or Queue"
    return None


def _proxy_types():
    from multiprocessing.managers import BaseProxy

    return (BaseProxy,)


class _ByValue(Exception):
    """Something from ``__main__`` inside: cloudpickle must carry it by value."""


class _ShipPickler(pickle.Pickler):
    """Pickles a task's arguments for another machine: fastmp objects that
    live in this machine's shared memory raise TypeError naming them."""

    def reducer_override(self, obj):
        if isinstance(obj, (types.FunctionType, type)) and obj.__module__ == "__main__":
            raise _ByValue  # the workers do not have the script's __main__
        advice = _local_only(obj)
        if advice is not None:
            raise TypeError(
                f"{obj!r} cannot be sent to a Dask cluster: fastmp's {type(obj).__name__} "
                f"lives in this machine's shared memory ({advice})"
            )
        return NotImplemented


def _from_main(func):
    return isinstance(func, types.FunctionType) and func.__module__ == "__main__"


def _ship(obj, by_value=False):
    """Pickles obj for a cluster worker (cloudpickle where pickle refuses, or
    at once when by_value: functions of ``__main__``, which the workers do
    not have)."""
    first = None
    if not by_value:
        buf = io.BytesIO()
        try:
            _ShipPickler(buf, reduction.HIGHEST_PROTOCOL).dump(obj)
            return buf.getvalue()
        except TypeError as e:
            if "cannot be sent to a Dask cluster" in str(e):
                raise
            first = e
        except Exception as e:  # noqa: BLE001  (lambdas, local functions: by value)
            first = e
    import cloudpickle

    class _CloudShipPickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            advice = _local_only(obj)
            if advice is not None:
                _ShipPickler.reducer_override(self, obj)
            return super().reducer_override(obj)

    buf = io.BytesIO()
    try:
        _CloudShipPickler(buf, protocol=reduction.HIGHEST_PROTOCOL).dump(obj)
    except TypeError as e:
        if "cannot be sent to a Dask cluster" in str(e) or first is None:
            raise
        raise first from None
    except Exception:  # noqa: BLE001
        if first is None:
            raise
        raise first from None
    return buf.getvalue()


def _ship_function(func):
    """A function travels by reference when the workers can import it, by
    value (cloudpickle) when it lives in ``__main__`` or is not importable."""
    return _ship(func, by_value=_from_main(func))


# --- on the cluster worker ---------------------------------------------------------

_worker_lock = threading.Lock()
_worker_pools: dict = {}  # pool token -> namespace for its __main__ functions
_worker_functions: dict = {}  # pickled function -> function


def _pool_namespace(token, init_blob):
    """The pool's namespace in this worker process; runs the initializer the
    first time a task of that pool arrives here (once per worker process)."""
    ns = _worker_pools.get(token)
    if ns is not None:
        return ns
    with _worker_lock:
        ns = _worker_pools.get(token)
        if ns is not None:
            return ns
        ns = {"__name__": "__main__", "__builtins__": __builtins__}
        if init_blob is not None:
            initializer, initargs = pickle.loads(init_blob)
            adopt_function(initializer, ns)(*initargs)
        _worker_pools[token] = ns
        return ns


def _function(blob, ns):
    key = (id(ns), blob)
    func = _worker_functions.get(key)
    if func is None:
        func = adopt_function(pickle.loads(blob), ns)
        if len(_worker_functions) > 1024:
            _worker_functions.clear()
        _worker_functions[key] = func
    return func


def _run_batch(batch, token, init_blob):
    """A Dask task: runs pool tasks ``(job, index, kind, function, arguments)``
    and returns their pickled results ``[(job, index, ok, value), ...]``."""
    try:
        ns = _pool_namespace(token, init_blob)
    except Exception as e:  # noqa: BLE001  (the initializer failed: so does each task)
        err = ExceptionWithTraceback(e, e.__traceback__)
        return reduction.dumps([(job, i, False, err) for job, i, _, _, _ in batch])
    out = []
    for job, i, kind, fblob, payload in batch:
        try:
            func = _function(fblob, ns)
            args, kwds = pickle.loads(payload)
        except Exception as e:  # noqa: BLE001
            out.append((job, i, False, ExceptionWithTraceback(e, e.__traceback__)))
            continue
        ok, value = run_task(kind, func, args, kwds)
        out.append((job, i, ok, value))
    try:
        return reduction.dumps(out)
    except Exception:  # noqa: BLE001  (some result cannot be pickled: say which)
        safe = []
        for job, i, ok, value in out:
            try:
                reduction.dumps(value)
            except Exception as e:  # noqa: BLE001
                ok, value = False, MaybeEncodingError(e, value)
            safe.append((job, i, ok, value))
        return reduction.dumps(safe)


# --- the backend (in the pool's process) -------------------------------------------


def _connect(cluster):
    """(client, owned): a distributed.Client for ``cluster`` (a Client, an
    object with a ``scheduler_address`` such as a LocalCluster, or an address)."""
    import distributed

    if isinstance(cluster, distributed.Client):
        return cluster, False
    address = getattr(cluster, "scheduler_address", cluster)
    if not isinstance(address, str):
        raise TypeError(
            "cluster must be a distributed.Client, a cluster object or a scheduler "
            f"address such as 'tcp://host:8786', not {type(cluster).__name__}"
        )
    _probe(address)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except OSError as e:
        raise OSError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    return client, True


def _probe(address):
    """Fails at once, naming the address, when nothing listens at a TCP
    scheduler address (a failed distributed.Client leaves its event-loop
    thread behind; other schemes are left to Dask)."""
    import socket

    scheme, sep, rest = address.rpartition("://")
    if sep and scheme != "tcp":
        return
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        raise OSError(f"cannot reach the Dask scheduler at {address}: {e}") from None


class _Cancelled(Exception):
    pass


class DaskBackend(Backend):
    """Runs tasks on a Dask distributed cluster."""

    chunks_per_worker = 2
    map_batch_items = 1 << 62  # a map's chunks reach the scheduler in one message

    def __init__(self, cluster, processes, initializer, initargs):
        super().__init__()
        import distributed

        self.client, self.owns_client = _connect(cluster)
        if processes is None:
            processes = sum(self.client.nthreads().values()) or 1
        self.size = processes
        self.workers = []
        self.token = uuid.uuid4().hex
        self.init_blob = (
            None
            if initializer is None
            else _ship((initializer, initargs), by_value=_from_main(initializer))
        )
        self.pending = collections.deque()  # shipped tasks waiting for a slot
        self.in_flight = {}  # Dask future -> its pool tasks' (job, index)
        self.cond = threading.Condition(self.lock)
        # Results are fetched in Dask's event loop as each task finishes.
        self.completed = distributed.as_completed(
            [], loop=self.client.loop, with_results=True, raise_errors=False
        )
        self.thread = None
        self.key_prefix = f"fastmp-pool-{self.token[:8]}"
        self.count = 0

    def start(self):
        self.thread = HelperThread(self._handle_results, "fastmp-pool-dask-results")
        self.thread.start()

    def imap_ahead(self):
        # Each Dask task costs milliseconds: an imap (chunksize 1 by default)
        # reads further ahead, so that its items travel in batches.
        return max(4 * self.size, 8) * 32

    def wire(self, func):
        try:
            return self.wired[func]
        except KeyError:
            pass
        except TypeError:
            return _ship_function(func)
        blob = _ship_function(func)
        if len(self.wired) > 1024:
            self.wired.clear()
        self.wired[func] = blob
        return blob

    def submit_many(self, tasks):
        shipped = []
        for job, i, kind, func, args, kwds in tasks:
            if type(func) is not bytes:
                func = self.wire(func)
            shipped.append((job, i, kind, func, _ship((args, kwds))))
        with self.lock:
            if self.state == TERMINATE:
                raise ValueError("Pool not running")
            self.pending.extend(shipped)
            self._dispatch()

    def _dispatch(self):
        """Sends pending tasks while fewer than 2 x `size` Dask tasks are in
        flight (under self.lock), all in one message to the scheduler."""
        batches = []
        room = 2 * self.size - len(self.in_flight)
        while self.pending and len(batches) < room:
            n = min(MAX_BATCH, -(-len(self.pending) // (2 * self.size)))
            batches.append([self.pending.popleft() for _ in range(n)])
        if batches:
            keys = []
            for _ in batches:
                self.count += 1
                keys.append(f"{self.key_prefix}-{self.count}")
            futures = self.client.map(
                _run_batch,
                batches,
                key=keys,
                pure=False,
                token=self.token,
                init_blob=self.init_blob,
            )
            for fut, batch in zip(futures, batches):
                self.in_flight[fut] = [(job, i) for job, i, _, _, _ in batch]
            self.completed.update(futures)
        self.cond.notify_all()

    def wake(self):
        with self.cond:
            self.cond.notify_all()

    def _finished(self):
        return (
            self.state != RUN
            and not self.in_flight
            and not self.pending
            and not self.cache
            and not self.feeders
        )

    def _handle_results(self):
        while True:
            with self.cond:
                while not self.in_flight and not self._finished() and self.state != TERMINATE:
                    self.cond.wait(0.5)
                if self.state == TERMINATE or self._finished():
                    return
            try:
                futures = self.completed.next_batch(block=True)
            except StopIteration:
                continue
            try:
                self._collect(futures)
            except Exception as e:  # noqa: BLE001  (never leave results hanging)
                import traceback

                traceback.print_exc()
                futures = [fut for fut, _ in futures]
                for fut in futures:
                    for msg in self._lost(fut, e):
                        self.deliver(msg)
                with self.cond:
                    for fut in futures:
                        self.in_flight.pop(fut, None)

    def _collect(self, done):
        """Handles finished Dask tasks: (future, its result or exception) pairs."""
        messages = []
        futures = []
        for fut, result in done:
            futures.append(fut)
            if fut.status == "finished":
                try:
                    messages.extend(pickle.loads(result))
                except Exception as e:  # noqa: BLE001
                    messages.extend(self._lost(fut, e))
            elif fut.status == "error":
                try:
                    exc = fut.exception()  # (rare) the exception itself, not Dask's tuple
                except Exception as e:  # noqa: BLE001
                    exc = e
                messages.extend(self._lost(fut, exc))
            elif self.state != TERMINATE:
                # Cancelled by someone else, or the scheduler connection was
                # lost (terminate() fails its own cancellations itself).
                messages.extend(self._lost(fut, _Cancelled(f"Dask task {fut.status}")))
        with self.cond:
            for fut in futures:
                self.in_flight.pop(fut, None)
            if self.state != TERMINATE:
                self._dispatch()
            self.cond.notify_all()
        if self.on_worker_lost is not None:
            # The executor breaks first (its futures fail with BrokenProcessPool).
            for msg in messages:
                if type(msg) is TaskLost:
                    self.on_worker_lost(msg.error)
                    break
        deliver = self.deliver
        for msg in messages:
            deliver(msg)

    def _lost(self, fut, exc):
        """Dask gave up on a task (its workers kept dying: KilledWorker), or
        its result could not be fetched."""
        import distributed

        if isinstance(exc, _Cancelled):
            error = WorkerLostError(
                f"{exc}: the connection to the Dask scheduler was lost, or the task was "
                "cancelled outside the pool"
            )
        elif isinstance(exc, distributed.KilledWorker):
            error = WorkerLostError(
                f"Dask gave up on this task after its worker died while running it: {exc}"
            )
        elif isinstance(exc, Exception):
            error = WorkerLostError(f"the cluster lost this task: {type(exc).__name__}: {exc}")
        else:
            error = WorkerLostError("the cluster lost this task")
        error.__cause__ = exc if isinstance(exc, BaseException) else None
        with self.lock:
            tasks = self.in_flight.get(fut, [])
        return [TaskLost(job, i, error) for job, i in tasks]

    # -- shutdown --
    def close(self):
        with self.cond:
            if self.state == RUN:
                self.state = CLOSE
            self.cond.notify_all()
        for f in list(self.feeders):
            with f.result._cond:
                f.result._cond.notify_all()

    def join(self):
        if os.getpid() != self.pid:
            return
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
        self.join_feeders()
        with self.lock:
            if self.terminated:
                return
            self.terminated = True
            self.state = TERMINATE
        self._release()

    def terminate(self):
        if os.getpid() != self.pid:
            return
        with self.cond:
            if self.terminated:
                return
            self.terminated = True
            self.state = TERMINATE
            self.pending.clear()
            futures = list(self.in_flight)
            self.in_flight.clear()
            self.cond.notify_all()
        self.abort_feeders()
        if futures:
            try:
                self.client.cancel(futures, force=True)
            except Exception:  # noqa: BLE001
                pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
        self.join_feeders()
        self.fail_all_pending()
        self._release()

    def _release(self):
        self.completed.clear()
        if self.owns_client:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
