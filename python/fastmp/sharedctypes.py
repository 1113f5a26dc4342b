"""fastmp.sharedctypes: ctypes objects in shared memory (see :mod:`multiprocessing.sharedctypes`).

What fastmp does differently:

- The memory is anonymous (memfds, :mod:`fastmp._heap`), not files in
  /dev/shm or /tmp:
  nothing is left behind when a process tree is killed with SIGKILL. Small
  objects share arenas; large ones (a 1 GiB ``RawArray`` works) get a sparse
  memfd of their own. ``numpy.frombuffer(arr.get_obj())`` is a zero-copy view
  of memory that every process sees.
- The synchronized wrappers keep the stdlib's semantics (every ``.value``
  read or write and every item access takes the lock; ``v.value += 1`` is a
  locked read followed by a locked write, so it is *not* atomic unless the
  caller holds ``v.get_lock()``) with a shorter path per access.
- The wrappers are subclasses of the stdlib's, so ``isinstance`` checks
  against ``multiprocessing.sharedctypes.Synchronized`` etc. still hold.
"""

from __future__ import annotations

import ctypes
import weakref
from multiprocessing import heap  # noqa: F401  (a name of the stdlib module)
from multiprocessing import sharedctypes as _std
from multiprocessing.sharedctypes import (  # type: ignore[attr-defined]  # noqa: F401
    rebuild_ctype,
    reduce_ctype,
    typecode_to_type,
)

from . import _heap
from ._fastmp import _LockedArray, _LockedString, _LockedValue
from .context import assert_spawning, reduction  # type: ignore[attr-defined]

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized"]

_ForkingPickler = reduction.ForkingPickler


def get_context(method=None):
    """fastmp's get_context (the stdlib module's name, bound to fastmp)."""
    from .context import _default_context

    return _default_context.get_context(method)


# typecode_to_type, rebuild_ctype and reduce_ctype are the stdlib's own: a
# fastmp block behaves as a stdlib BufferWrapper (create_memoryview, and it
# pickles itself by passing its memfd), so the one reducer registered per
# ctypes type serves both libraries.


def _default_context():
    from .context import _default_context

    return _default_context.get_context()


def _new_value(type_):
    size = ctypes.sizeof(type_)
    return rebuild_ctype(type_, _heap.malloc(size), None)


def _zero(obj) -> None:
    if not obj._wrapper.zeroed:
        ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))


def RawValue(typecode_or_type, *args):
    """Returns a ctypes object allocated from shared memory."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new_value(type_)
    _zero(obj)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    """Returns a ctypes array allocated from shared memory."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        obj = _new_value(type_ * size_or_initializer)
        _zero(obj)
        return obj
    init = size_or_initializer
    obj = _new_value(type_ * len(init))
    _zero(obj)
    obj.__init__(*init)
    return obj


def _lock_for(lock, ctx):
    if lock in (True, None):
        ctx = ctx or _default_context()
        lock = ctx.RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock, ctx


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """Returns a synchronization wrapper for a shared ctypes value (lock=False: the raw value)."""
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    lock, ctx = _lock_for(lock, ctx)
    return synchronized(obj, lock, ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """Returns a synchronization wrapper for a shared ctypes array (lock=False: the raw array)."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    lock, ctx = _lock_for(lock, ctx)
    return synchronized(obj, lock, ctx=ctx)


def copy(obj):
    """A new shared ctypes object with the same type and contents as obj."""
    new_obj = _new_value(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj, lock=None, ctx=None):
    """Wraps a ctypes object so that every access takes ``lock`` (a new RLock by default)."""
    assert not isinstance(obj, _std.SynchronizedBase), "object already synchronized"
    ctx = ctx or _default_context()
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    try:
        scls = class_cache[cls]
    except KeyError:
        props = {field[0]: make_property(field[0]) for field in cls._fields_}
        scls = class_cache[cls] = type("Synchronized" + cls.__name__, (SynchronizedBase,), props)
    return scls(obj, lock, ctx)


# --- locked access ------------------------------------------------------------
#
# Synchronized.value, SynchronizedArray's items and SynchronizedString's
# value/raw go through native accessors (_LockedValue, _LockedArray,
# _LockedString in cpp/bindings/register_sharedctypes.cpp):
# the same acquire / ctypes access / release as the stdlib's Python
# properties, without a Python frame per access. Structure fields (rare) use
# Python properties built by make_property.


def make_property(name):
    """A property that reads/writes ``self._obj.<name>`` while holding the lock."""
    try:
        return prop_cache[name]
    except KeyError:
        pass

    # The lock's bound acquire/release (C methods for SemLock-based locks)
    # rather than `with self._lock:`, whose __enter__/__exit__ may be Python.
    def fget(self):
        self.acquire()
        try:
            return getattr(self._obj, name)
        finally:
            self.release()

    def fset(self, value):
        self.acquire()
        try:
            setattr(self._obj, name, value)
        finally:
            self.release()

    prop = prop_cache[name] = property(fget, fset)
    return prop


prop_cache: dict[str, property] = {}
class_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Kept for code that inspects it; fastmp builds its properties without exec.
template = _std.template  # type: ignore[attr-defined]


class SynchronizedBase(_std.SynchronizedBase):
    """See multiprocessing.sharedctypes.SynchronizedBase."""

    def __init__(self, obj, lock=None, ctx=None):
        self._obj = obj
        if lock:
            self._lock = lock
        else:
            ctx = ctx or _default_context()
            self._lock = ctx.RLock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release
        bind = getattr(self, "_bind", None)
        if bind is not None:
            bind(obj, self.acquire, self.release)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __reduce__(self):
        assert_spawning(self)
        return synchronized, (self._obj, self._lock)

    def get_obj(self):
        return self._obj

    def get_lock(self):
        return self._lock

    def __repr__(self):
        return f"<{type(self).__name__} wrapper for {self._obj}>"


class Synchronized(_LockedValue, SynchronizedBase, _std.Synchronized):
    """A synchronized shared ctypes scalar (``Value``); ``value`` is native."""


class SynchronizedArray(_LockedArray, SynchronizedBase, _std.SynchronizedArray):
    """A synchronized shared ctypes array (``Array``); items and slices take the lock.

    ``__getitem__``, ``__setitem__`` and ``__len__`` are native (_LockedArray).
    """

    def __getslice__(self, start, stop):
        return self[start:stop]

    def __setslice__(self, start, stop, values):
        self[start:stop] = values


class SynchronizedString(_LockedString, SynchronizedArray, _std.SynchronizedString):
    """A synchronized ``Array('c', ...)``; ``.value`` and ``.raw`` are native (_LockedString)."""
