# mypy: disable-error-code="attr-defined,arg-type,method-assign"
# (the stdlib module's private helpers have no stubs; the native containers
# get their pickling policy here)
"""fastmp.managers: :mod:`multiprocessing.managers`, with shared state in shared memory.

What fastmp does differently (see the README's "Differences"):

* ``SyncManager.dict/list/Namespace/Value/Array`` return proxies whose
  operations run in the calling process, on a container in shared memory
  (``fastmp._fastmp.ShmDict`` / ``ShmList``, a Boost.Interprocess heap in a
  memfd) under a lock robust to the death of its holder: no request to the
  server process. Their method sets, return values and errors are those of the
  stdlib's ``DictProxy``, ``ListProxy``, ``NamespaceProxy``, ``ValueProxy`` and
  ``ArrayProxy``.
* ``Queue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``,
  ``BoundedSemaphore``, ``Condition``, ``Event`` and ``Barrier`` return proxies
  for fastmp's native primitives: ``acquire``, ``put``, ``wait``... run in the
  calling process, and a lock whose holder is killed is taken over.
* The server process still runs: it creates the objects, keeps them alive
  (the stdlib's reference counting), hands out their file descriptors
  (SCM_RIGHTS over the manager's own connection, so a proxy can be pickled at
  any time, to any process of the same user) and serves every other
  registered type as the stdlib does. It exits when the process that started
  it dies, even by SIGKILL.
"""

from __future__ import annotations

import array
import collections
import os
import select
import threading
import weakref
from multiprocessing import connection as _connection
from multiprocessing import context as _std_context
from multiprocessing import managers as _std
from multiprocessing import process as _process
from multiprocessing import reduction as _std_reduction
from multiprocessing import util

globals().update({k: v for k, v in vars(_std).items() if not k.startswith("__")})
__all__ = list(getattr(_std, "__all__", [k for k in vars(_std) if not k.startswith("_")]))

from . import _fastmp  # noqa: E402
from . import reduction as _reduction  # noqa: E402
from ._threads import HelperThread  # noqa: E402

BaseProxy = _std.BaseProxy
Token = _std.Token
dispatch = _std.dispatch
RebuildProxy = _std.RebuildProxy


# --- file descriptors, from the server to any process --------------------
#
# The server pickles a native object once, with a stand-in for process
# start-up (the native types pickle themselves only then) that records the
# fds the object needs instead of passing them to a child. A process that
# wants the object asks the server for those fds (SCM_RIGHTS on a fresh
# connection to the manager) and unpickles the recording with them.


class _FdIndex:
    """Stands for the i-th fd of an export; replaced while unpickling."""

    def __init__(self, index: int):
        self.index = index

    def detach(self) -> int:
        return _receiving.fds[self.index]


class _Receiving(threading.local):
    fds: list = []


_receiving = _Receiving()


class _Recorder:
    """A spawning-popen stand-in: DupFd(fd) records fd and returns its index."""

    def __init__(self):
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1

    def DupFd(self, index: int) -> _FdIndex:  # noqa: N802  (the stdlib's name)
        return _FdIndex(index)


def _export(obj) -> tuple[bytes, list[int]]:
    rec = _Recorder()
    old = _std_context.get_spawning_popen()
    _std_context.set_spawning_popen(rec)
    try:
        blob = bytes(_std_reduction.ForkingPickler.dumps(obj))
    finally:
        _std_context.set_spawning_popen(old)
    return blob, rec.fds


def _rebuild_container(cls, fd_holder):
    return getattr(_fastmp, cls)._attach(fd_holder.detach())


def _reduce_container(self):
    from .reduction import _fd_for_child

    _std_context.assert_spawning(self)
    return _rebuild_container, (type(self).__name__, _fd_for_child(self.fileno()))


_fastmp.ShmDict.__reduce__ = _reduce_container
_fastmp.ShmList.__reduce__ = _reduce_container


class _Held:
    """What the server keeps for a native object: the object and its export."""

    def __init__(self, obj, extra=None):
        self.obj = obj
        self.extra = extra  # immutable details the proxy needs (typecodes...)
        self.blob, self.fds = _export(obj)
        self.local = None
        if isinstance(obj, (_fastmp.ShmDict, _fastmp.ShmList)):
            _held_containers.add(obj)

    def _fastmp_export(self):
        return (self.blob, len(self.fds), self.extra)

    def _fastmp_call(self, proxytype, name, args, kwds):
        """Runs a proxy method here, for a proxy that cannot map the object
        (its manager listens on TCP: no fd passing)."""
        local = self.local
        if local is None:
            local = self.local = object.__new__(_LOCAL_OF.get(proxytype, proxytype))
            object.__setattr__(local, "_fastmp_exp", self._fastmp_export())
            object.__setattr__(local, "_fastmp_obj", self.obj)
            object.__setattr__(local, "_fastmp_state", _Attached(_state_container()))
        if name[0] == "@":  # a property
            return getattr(local, name[1:])
        return getattr(local, name)(*args, **kwds)


_held_containers: weakref.WeakSet = weakref.WeakSet()
_server_state: list = []  # [ShmList] in the server: its `closed` flag is the manager's


def _state_container():
    if not _server_state:
        _server_state.append(_fastmp.ShmList())
    return _server_state[0]


def _close_natives():
    for c in list(_held_containers):
        c._close()
    if _server_state:
        _server_state[0]._close()


# --- the server ----------------------------------------------------------


class Server(_std.Server):
    """The stdlib's server, which also hands native objects' fds to proxies."""

    public = [*_std.Server.public, "fastmp_fds", "fastmp_pin"]
    _watch_pid = None  # set in a manager's server process: exit when it dies

    def fastmp_fds(self, c, ident):
        """Sends the fds of object `ident` (SCM_RIGHTS), then the usual reply."""
        if ident == "state":
            held = _state_held()
        else:
            with self.mutex:
                held = self.id_to_obj[ident][0]
        c.send(("#FDS", len(held.fds)))
        for fd in held.fds:
            _std_reduction.send_handle(c, fd, None)
        return len(held.fds)

    def fastmp_pin(self, c, ident):
        """A proxy of `ident` was pickled at run time (it may now sit inside a
        shared container, where no reference is counted): keep the object
        until the manager shuts down, as the stdlib keeps objects that proxies
        inside its containers refer to."""
        with self.mutex:
            pinned = self.__dict__.setdefault("_fastmp_pinned", set())
            if ident in pinned:
                return
            pinned.add(ident)
        self.incref(c, ident)

    def shutdown(self, c):
        _close_natives()
        return super().shutdown(c)

    def serve_forever(self):
        _raise_fd_limit()
        if Server._watch_pid is not None:
            HelperThread(
                self._watch_parent, "fastmp-manager-watch-parent", args=(Server._watch_pid,)
            ).start()
        try:
            super().serve_forever()
        finally:
            _close_natives()

    def _watch_parent(self, pid):
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # pragma: no cover - Linux < 5.3
            return
        if os.getppid() != pid:  # died before we started watching
            self.stop_event.set()
            return
        select.select([fd], [], [])
        os.close(fd)
        util.debug("manager's parent died; shutting down")
        self.stop_event.set()


class BaseManager(_std.BaseManager):
    """multiprocessing.managers.BaseManager, whose server process exits when
    the process that started it dies, and serves fastmp's native types."""

    _Server = Server

    def __init__(self, address=None, *args, **kwds):
        if address is None:
            # An abstract unix socket: nothing on disk to leave behind when
            # the server is killed (the stdlib's is a file in a temp dir).
            address = "\0fastmp-manager-" + os.urandom(12).hex()
        super().__init__(address, *args, **kwds)

    def get_server(self):
        # The stdlib's builds its own Server class, not self._Server.
        if self._state.value != _std.State.INITIAL:
            if self._state.value == _std.State.STARTED:
                raise _std.ProcessError("Already started server")
            elif self._state.value == _std.State.SHUTDOWN:
                raise _std.ProcessError("Manager has shut down")
            else:
                raise _std.ProcessError(f"Unknown state {self._state.value!r}")
        return self._Server(self._registry, self._address, self._authkey, self._serializer)

    @classmethod
    def _run_server(
        cls, registry, address, authkey, serializer, writer, initializer=None, initargs=()
    ):
        Server._watch_pid = os.getppid()
        return super()._run_server(
            registry, address, authkey, serializer, writer, initializer, initargs
        )


# --- the client side -----------------------------------------------------


class _Attached:
    """A native object attached in this process, shared by its proxies here
    (it goes, with its fds and mappings, when the last of them does)."""

    __slots__ = ("obj", "__weakref__")

    def __init__(self, obj):
        self.obj = obj


_attached: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (address, id) -> _Attached
_attached_lock = threading.Lock()


def _reset_attached():
    global _attached_lock
    _attached_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_attached)


_raised_fd_limit: list = []


def _raise_fd_limit() -> None:
    """Each native object costs its users one fd: lift the soft limit on open
    files to the hard one (once per process), so that a program holding
    thousands of manager objects does not hit a 1024 soft limit."""
    if _raised_fd_limit and _raised_fd_limit[0] == os.getpid():
        return
    _raised_fd_limit[:] = [os.getpid()]
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - best effort
        pass


def _fetch(token, authkey, count) -> list[int]:
    """The fds of a native object, received from its server."""
    _raise_fd_limit()
    conn = _connection.Client(token.address, authkey=authkey)
    try:
        conn.send((None, "fastmp_fds", (token.id,), {}))
        kind, result = conn.recv()
        if kind != "#FDS":  # the object is gone, or the server refused
            raise _std.convert_to_error(kind, result)
        fds = [_std_reduction.recv_handle(conn) for _ in range(result)]
        kind, result = conn.recv()
    finally:
        conn.close()
    if kind != "#RETURN":
        for fd in fds:
            os.close(fd)
        raise _std.convert_to_error(kind, result)
    return fds


# A worker that gets a proxy with every task (Pool) would otherwise fetch
# and map the object again each time: children keep the last few alive.
_recent: collections.deque = collections.deque(maxlen=32)


def _attach(token, authkey, export) -> _Attached:
    key = (token.address, token.id)
    held = _attached.get(key)
    if held is not None:
        return held
    blob, count, _extra = export
    fds = _fetch(token, authkey, count)
    _receiving.fds = fds
    try:
        obj = _reduction.loads(blob)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        _receiving.fds = []
    with _attached_lock:
        held = _attached.setdefault(key, _Attached(obj))
    if _process.parent_process() is not None:
        _recent.append(held)
    return held


def _closed_error():
    return BrokenPipeError(32, "the manager has shut down: Broken pipe")


class _NativeProxy(BaseProxy):
    """A BaseProxy whose referent lives in shared memory: the stdlib's
    reference counting and pickling, fastmp's operations."""

    _exposed_ = ("_fastmp_export", "_fastmp_call")

    def __init__(
        self,
        token,
        serializer,
        manager=None,
        authkey=None,
        exposed=None,
        incref=True,
        manager_owned=False,
        _fastmp_export=None,
    ):
        super().__init__(token, serializer, manager, authkey, exposed, incref, manager_owned)
        if _fastmp_export is None:
            _fastmp_export = self._callmethod("_fastmp_export")
        object.__setattr__(self, "_fastmp_exp", _fastmp_export)
        object.__setattr__(self, "_fastmp_obj", None)
        object.__setattr__(self, "_fastmp_pinned", False)
        if not isinstance(token.address, (str, bytes)) and type(self) in _REMOTE_OF:
            # A TCP manager (maybe on another machine): no fds to pass, so
            # every operation goes to the server, as with the stdlib.
            object.__setattr__(self, "__class__", _REMOTE_OF[type(self)])

    def _native(self):
        obj = self._fastmp_obj
        if obj is None:
            held = _attach(self._token, self._authkey, self._fastmp_exp)
            obj = held.obj
            object.__setattr__(self, "_fastmp_ref", held)
            object.__setattr__(self, "_fastmp_obj", obj)
        return obj

    def __reduce__(self):
        func, (rebuild, token, serializer, kwds) = super().__reduce__()
        rebuild = _LOCAL_OF.get(rebuild, rebuild)  # the receiver decides how to reach it
        kwds["_fastmp_export"] = self._fastmp_exp
        if _std_context.get_spawning_popen() is None and not self._fastmp_pinned:
            try:
                conn = self._Client(self._token.address, authkey=self._authkey)
                try:
                    dispatch(conn, None, "fastmp_pin", (self._token.id,))
                finally:
                    conn.close()
            except OSError:  # the manager is gone: the pickle is still valid (as the stdlib's)
                pass
            object.__setattr__(self, "_fastmp_pinned", True)
        return func, (rebuild, token, serializer, kwds)

    def __deepcopy__(self, memo):
        return self._getvalue()


# Containers: dict, list, Namespace, Value, Array


class DictProxy(_NativeProxy):
    """multiprocessing.managers.DictProxy on a shared-memory hash map."""

    __class_getitem__: classmethod = classmethod(type(list[int]))

    # The hot methods skip the _native() call once attached.
    def __contains__(self, key):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        return key in c

    def __delitem__(self, key):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        del c[key]

    def __getitem__(self, key):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        return c[key]

    def __setitem__(self, key, value):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        c[key] = value

    def __len__(self):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        return len(c)

    def __iter__(self):
        return iter(self._native().keys())

    def clear(self):
        return self._native().clear()

    def copy(self):
        return dict(self._native().items())

    def get(self, *args):
        return self._native().get(*args)

    def items(self):
        return self._native().items()

    def keys(self):
        return self._native().keys()

    def values(self):
        return self._native().values()

    def pop(self, *args):
        return self._native().pop(*args)

    def popitem(self):
        return self._native().popitem()

    def setdefault(self, *args):
        return self._native().setdefault(*args)

    def update(self, *args, **kwds):
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        pairs = []
        if args:
            other = args[0]
            if hasattr(other, "keys"):
                pairs = [(k, other[k]) for k in other.keys()]
            else:
                for i, item in enumerate(other):
                    try:
                        k, v = item
                    except (TypeError, ValueError):
                        n = len(item) if hasattr(item, "__len__") else None
                        if n is None:
                            raise TypeError(
                                f"cannot convert dictionary update sequence element #{i} to a sequence"
                            ) from None
                        raise ValueError(
                            f"dictionary update sequence element #{i} has length {n}; 2 is required"
                        ) from None
                    pairs.append((k, v))
        pairs.extend(kwds.items())
        self._native()._update(pairs)

    def _getvalue(self):
        return self.copy()

    def __str__(self):
        try:
            return repr(self.copy())
        except Exception:  # noqa: BLE001
            return repr(self)[:-1] + "; '__str__()' failed>"


class ListProxy(_NativeProxy):
    """multiprocessing.managers.ListProxy on a shared-memory sequence."""

    __class_getitem__: classmethod = classmethod(type(list[int]))

    def _items(self):
        return self._native()._items()

    def __add__(self, other):
        return self._items() + other

    def __contains__(self, value):
        return value in self._items()

    def __delitem__(self, index):
        def op(items, load, store):
            del items[index]
            return items, None

        self._native()._rewrite(op)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._items()[index]
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        return c[index]

    def __len__(self):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        return len(c)

    def __mul__(self, n):
        return self._items() * n

    def __rmul__(self, n):
        return n * self._items()

    def __reversed__(self):
        return reversed(self._items())

    def __setitem__(self, index, value):
        if not isinstance(index, slice):
            return self._native().__setitem__(index, value)
        values = list(value) if not isinstance(value, list) else value

        def op(items, load, store):
            items[index] = [store(v) for v in values]
            return items, None

        self._native()._rewrite(op)

    def append(self, value):
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        return c.append(value)

    def count(self, value):
        return self._items().count(value)

    def extend(self, values):
        self._native()._extend(list(values))

    def index(self, value, *args):
        return self._items().index(value, *args)

    def insert(self, index, value):
        def op(items, load, store):
            items.insert(index, store(value))
            return items, None

        self._native()._rewrite(op)

    def pop(self, *args):
        return self._native().pop(*args)

    def remove(self, value):
        def op(items, load, store):
            for i, b in enumerate(items):
                if load(b) == value:
                    del items[i]
                    return items, None
            raise ValueError("list.remove(x): x not in list")

        self._native()._rewrite(op)

    def reverse(self):
        self._native()._rewrite(lambda items, load, store: (items[::-1], None))

    def sort(self, *, key=None, reverse=False):
        def op(items, load, store):
            values = [load(b) for b in items]
            order = sorted(
                range(len(items)),
                key=lambda i: values[i] if key is None else key(values[i]),
                reverse=reverse,
            )
            return [items[i] for i in order], None

        self._native()._rewrite(op)

    def __iadd__(self, value):
        self.extend(value)
        return self

    def __imul__(self, n):
        def op(items, load, store):
            values = [load(b) for b in items]
            values *= n
            return [store(v) for v in values], None

        self._native()._rewrite(op)
        return self

    def _getvalue(self):
        return self._items()

    def __str__(self):
        try:
            return repr(self._items())
        except Exception:  # noqa: BLE001
            return repr(self)[:-1] + "; '__str__()' failed>"


class NamespaceProxy(_NativeProxy):
    """multiprocessing.managers.NamespaceProxy; names starting with '_' stay local."""

    # __getattribute__ rather than the stdlib's __getattr__: a public name is
    # never the proxy's own, and this skips the failed normal lookup.
    def __getattribute__(self, key):
        if key[0] == "_":
            return object.__getattribute__(self, key)
        c = object.__getattribute__(self, "_fastmp_obj")
        if c is None:
            c = object.__getattribute__(self, "_native")()
        try:
            return c[key]
        except KeyError:
            raise AttributeError(f"'Namespace' object has no attribute '{key}'") from None

    def __setattr__(self, key, value):
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        c = self._fastmp_obj
        if c is None:
            c = self._native()
        c[key] = value

    def __delattr__(self, key):
        if key[0] == "_":
            return object.__delattr__(self, key)
        try:
            del object.__getattribute__(self, "_native")()[key]
        except KeyError:
            raise AttributeError(key) from None

    def _getvalue(self):
        return _std.Namespace(**dict(self._native().items()))

    def __str__(self):
        items = [f"{k}={v!r}" for k, v in self._native().items() if not k.startswith("_")]
        items.sort()
        return f"Namespace({', '.join(items)})"


class ValueProxy(_NativeProxy):
    """multiprocessing.managers.ValueProxy on one shared-memory cell."""

    def get(self):
        return self._native()[0]

    def set(self, value):
        return self._native().__setitem__(0, value)

    value = property(get, set)

    def _getvalue(self):
        return _std.Value(self._fastmp_exp[2], self.get())

    def __str__(self):
        return f"Value({self._fastmp_exp[2]!r}, {self.get()!r})"

    __class_getitem__: classmethod = classmethod(type(list[int]))


class ArrayProxy(_NativeProxy):
    """multiprocessing.managers.ArrayProxy: items shared, type-checked as array.array's."""

    def _array(self):
        return array.array(self._fastmp_exp[2], self._native()._items())

    def __len__(self):
        return len(self._native())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._array()[index]
        return self._native()[index]

    def __setitem__(self, index, value):
        typecode = self._fastmp_exp[2]
        if not isinstance(index, slice):
            checked = array.array(typecode)
            checked.append(value)  # array.array's type checks and errors
            return self._native().__setitem__(index, checked[0])

        def op(items, load, store):
            arr = array.array(typecode, [load(b) for b in items])
            arr[index] = value
            return [store(v) for v in arr], None

        self._native()._rewrite(op)

    def _getvalue(self):
        return self._array()

    def __str__(self):
        return repr(self._array())


# Synchronisation primitives and queues: fastmp's native objects.


class _SyncProxy(_NativeProxy):
    def _native(self):
        obj = self._fastmp_obj
        if obj is None:
            obj = _NativeProxy._native(self)
            object.__setattr__(self, "_fastmp_state", _manager_state(self))
        if self._fastmp_state.obj.closed:
            raise _closed_error()
        return obj

    def __str__(self):
        try:
            return repr(self._native())
        except Exception:  # noqa: BLE001
            return repr(self)[:-1] + "; '__str__()' failed>"


def _manager_state(proxy) -> _Attached:
    """The manager's state object (its closed flag), attached here."""
    blob, count = proxy._fastmp_exp[2]
    return _attach(
        Token("_state", proxy._token.address, "state"), proxy._authkey, (blob, count, None)
    )


class AcquirerProxy(_SyncProxy):
    def acquire(self, blocking=True, timeout=None):
        return self._native().acquire(blocking, timeout)

    def release(self):
        return self._native().release()

    def __enter__(self):
        return self._native().acquire()

    def __exit__(self, exc_type, exc_val, exc_tb):
        return self._native().release()


class ConditionProxy(AcquirerProxy):
    def wait(self, timeout=None):
        return self._native().wait(timeout)

    def notify(self, n=1):
        return self._native().notify(n)

    def notify_all(self):
        return self._native().notify_all()

    def wait_for(self, predicate, timeout=None):
        return _std.ConditionProxy.wait_for(self, predicate, timeout)


class EventProxy(_SyncProxy):
    def is_set(self):
        return self._native().is_set()

    def set(self):
        return self._native().set()

    def clear(self):
        return self._native().clear()

    def wait(self, timeout=None):
        return self._native().wait(timeout)


class BarrierProxy(_SyncProxy):
    def wait(self, timeout=None):
        return self._native().wait(timeout)

    def abort(self):
        return self._native().abort()

    def reset(self):
        return self._native().reset()

    @property
    def parties(self):
        return self._native().parties

    @property
    def n_waiting(self):
        return self._native().n_waiting

    @property
    def broken(self):
        return self._native().broken


class QueueProxy(_SyncProxy):
    """The methods of queue.Queue (the stdlib manager's queue), on a fastmp JoinableQueue."""

    def put(self, item, block=True, timeout=None):
        return self._native().put(item, block, timeout)

    def get(self, block=True, timeout=None):
        return self._native().get(block, timeout)

    def put_nowait(self, item):
        return self._native().put_nowait(item)

    def get_nowait(self):
        return self._native().get_nowait()

    def qsize(self):
        return self._native().qsize()

    def empty(self):
        return self._native().empty()

    def full(self):
        return self._native().full()

    def task_done(self):
        return self._native().task_done()

    def join(self):
        return self._native().join()


# --- proxies of a TCP manager: every call goes to the server ---------------


def _remote_method(name):
    def call(self, *args, **kwds):
        local = _LOCAL_OF[type(self)]
        return self._callmethod("_fastmp_call", (local, name, args, kwds))

    call.__name__ = name
    return call


class _RemoteNamespace:
    def __getattribute__(self, key):
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return self._callmethod("_fastmp_call", (NamespaceProxy, "__getattribute__", (key,), {}))

    def __setattr__(self, key, value):
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        return self._callmethod("_fastmp_call", (NamespaceProxy, "__setattr__", (key, value), {}))

    def __delattr__(self, key):
        if key[0] == "_":
            return object.__delattr__(self, key)
        return self._callmethod("_fastmp_call", (NamespaceProxy, "__delattr__", (key,), {}))


_NOT_FORWARDED = {
    "__init__",
    "__reduce__",
    "__deepcopy__",
    "_native",
    "__getattr__",
    "__getattribute__",
    "__setattr__",
    "__delattr__",
}
_REMOTE_OF: dict = {}
_LOCAL_OF: dict = {}


def _make_remote(cls):
    names = set()
    for klass in cls.__mro__:
        if klass in (_NativeProxy, BaseProxy, object):
            break
        names.update(n for n, v in vars(klass).items() if callable(v) and n not in _NOT_FORWARDED)
        names.discard("__class_getitem__")
    ns = {n: _remote_method(n) for n in names}
    for klass in cls.__mro__:
        for n, v in vars(klass).items():
            if isinstance(v, property) and n not in ns:
                if n == "value":
                    ns[n] = property(ns["get"], ns["set"])
                else:
                    ns[n] = property(
                        lambda self, n=n: self._callmethod("_fastmp_call", (cls, "@" + n, (), {}))
                    )
    ns["__module__"] = __name__
    ns["__qualname__"] = "_Remote" + cls.__name__
    bases = (_RemoteNamespace, cls) if cls is NamespaceProxy else (cls,)
    remote = type("_Remote" + cls.__name__, bases, ns)
    globals()[remote.__name__] = remote
    _REMOTE_OF[cls] = remote
    _LOCAL_OF[remote] = cls


# --- what the server creates --------------------------------------------


def _state_held():
    """The manager's state object (in the server): its closed flag tells the
    proxies of sync primitives and queues that the manager shut down."""
    if not _STATE_HELD:
        _STATE_HELD.append(_Held(_state_container()))
    return _STATE_HELD[0]


_STATE_HELD: list = []


def _new_dict(*args, **kwds):
    d = _fastmp.ShmDict()
    pairs = dict(*args, **kwds)
    if pairs:
        d._update(list(pairs.items()))
    return _Held(d)


def _new_list(sequence=()):
    lst = _fastmp.ShmList()
    items = list(sequence)
    if items:
        lst._extend(items)
    return _Held(lst)


def _new_namespace(**kwds):
    d = _fastmp.ShmDict()
    if kwds:
        d._update(list(kwds.items()))
    return _Held(d)


def _new_value(typecode, value, lock=True):
    lst = _fastmp.ShmList()
    lst.append(value)
    return _Held(lst, typecode)


def _new_array(typecode, sequence, lock=True):
    arr = array.array(typecode, sequence)  # the stdlib's checks and errors
    lst = _fastmp.ShmList()
    if len(arr):
        lst._extend(arr.tolist())
    return _Held(lst, typecode)


def _new_sync(name, *args, **kwds):
    from . import queues, synchronize

    if name == "Queue":
        obj = queues.JoinableQueue(*args, **kwds)
    elif name == "Condition":
        lock = args[0] if args else kwds.get("lock")
        if isinstance(lock, _NativeProxy):  # a proxy of this manager's: use its referent
            server = _process.current_process()._manager_server
            lock = server.id_to_obj[lock._token.id][0].obj
        obj = synchronize.Condition(lock)
    else:
        obj = getattr(synchronize, name)(*args, **kwds)
    state = _state_held()
    return _Held(obj, (state.blob, len(state.fds)))


for _cls in (
    DictProxy,
    ListProxy,
    NamespaceProxy,
    ValueProxy,
    ArrayProxy,
    AcquirerProxy,
    ConditionProxy,
    EventProxy,
    BarrierProxy,
    QueueProxy,
):
    _make_remote(_cls)
del _cls


# The server's callables (module-level: spawn pickles the registry).
def _new_queue(maxsize=0):
    return _new_sync("Queue", maxsize)


def _new_event():
    return _new_sync("Event")


def _new_lock():
    return _new_sync("Lock")


def _new_rlock():
    return _new_sync("RLock")


def _new_semaphore(value=1):
    return _new_sync("Semaphore", value)


def _new_bounded_semaphore(value=1):
    return _new_sync("BoundedSemaphore", value)


def _new_condition(lock=None):
    return _new_sync("Condition", lock)


def _new_barrier(parties, action=None, timeout=None):
    return _new_sync("Barrier", parties, action, timeout)


class SyncManager(BaseManager):
    """multiprocessing.managers.SyncManager with fastmp's shared-memory objects."""

    _registry = dict(_std.SyncManager._registry)


for _typeid, _callable, _proxy in (
    ("Queue", _new_queue, QueueProxy),
    ("JoinableQueue", _new_queue, QueueProxy),
    ("Event", _new_event, EventProxy),
    ("Lock", _new_lock, AcquirerProxy),
    ("RLock", _new_rlock, AcquirerProxy),
    ("Semaphore", _new_semaphore, AcquirerProxy),
    ("BoundedSemaphore", _new_bounded_semaphore, AcquirerProxy),
    ("Condition", _new_condition, ConditionProxy),
    ("Barrier", _new_barrier, BarrierProxy),
    ("list", _new_list, ListProxy),
    ("dict", _new_dict, DictProxy),
    ("Value", _new_value, ValueProxy),
    ("Array", _new_array, ArrayProxy),
    ("Namespace", _new_namespace, NamespaceProxy),
):
    SyncManager.register(_typeid, _callable, _proxy, exposed=_NativeProxy._exposed_)
del _typeid, _callable, _proxy
