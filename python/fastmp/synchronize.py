# mypy: disable-error-code="method-assign,attr-defined"
# (policy methods are attached to the native types below, as the stdlib does in Python)
"""fastmp's synchronisation primitives (see :mod:`multiprocessing.synchronize`).

What fastmp does differently:

* The primitives live in one anonymous shared-memory arena per process
  (fixed-size slots), not one POSIX named semaphore each: thousands of locks
  cost one file descriptor, and nothing is left in /dev/shm after kill -9.
* ``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore`` and ``Event`` *are*
  native types: ``acquire``/``release``/``with``/``set``/``wait`` run without a
  Python frame.
* Robust where the stdlib wedges: a Lock or RLock whose holder was killed is
  released on its behalf by the next process that waits for it (within about
  0.1 s); a Semaphore returns a dead holder's units (see :class:`Semaphore`); a
  Condition waiter killed after being notified hands its notification to
  another waiter; a Barrier whose party dies inside ``wait()`` breaks.
* Every blocking wait releases the GIL and is interrupted by Ctrl-C
  (KeyboardInterrupt), with timeouts on the monotonic clock.
"""

from __future__ import annotations

import _multiprocessing  # noqa: F401  (a name of multiprocessing.synchronize)
import operator
import os
import sys  # noqa: F401
import tempfile  # noqa: F401
import threading
import time
from multiprocessing import context as _std_context
from multiprocessing import process as _process

from . import _fastmp
from .reduction import _fd_for_child

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event"]

# The stdlib module's other public names, for code that reaches for them.
import multiprocessing.synchronize as _std_sync  # noqa: E402

util = _std_sync.util  # type: ignore[attr-defined]
context = _std_context
process = _process
sem_unlink = _std_sync.sem_unlink  # type: ignore[attr-defined]

RECURSIVE_MUTEX, SEMAPHORE = 0, 1
SEM_VALUE_MAX = _fastmp.SemLock.SEM_VALUE_MAX

SemLock = _fastmp.SemLock
Lock = _fastmp.Lock
RLock = _fastmp.RLock
Semaphore = _fastmp.Semaphore
BoundedSemaphore = _fastmp.BoundedSemaphore
Event = _fastmp.Event


# --- lifetime of the shared slots ---
#
# Each process that uses a primitive holds a reference to its slot (the C++
# side takes them for the creator, for every rebuild, and for every handle a
# forked child inherits). A child that exits normally gives all of its
# references back here, so the slots can be reused; a child killed by SIGKILL
# keeps them until the arena itself goes away with the last process using it.

_exit_hook_pid = None


def _drop_refs_at_exit():
    global _exit_hook_pid
    if _exit_hook_pid == os.getpid():
        return
    _exit_hook_pid = os.getpid()
    util.Finalize(None, _fastmp._sync_drop_all_refs, exitpriority=-100)


class _ForkAnchor:
    pass


_fork_anchor = _ForkAnchor()
util.register_after_fork(_fork_anchor, lambda _anchor: _drop_refs_at_exit())


class _SentAlready:
    """Stands for an arena fd passed earlier to the same child (spawn refuses
    the same fd twice, and one mapping per arena is enough)."""

    def detach(self):
        return -1


def _arena_fd_for_child(fd, obj):
    popen = _std_context.get_spawning_popen()
    # The pickle holds no reference: keep the object (and so its slot) alive
    # as long as the child's Popen, or the slot could be freed and reused by
    # another object before the child attaches to it.
    popen.__dict__.setdefault("_fastmp_keepalive", []).append(obj)
    sent = popen.__dict__.setdefault("_fastmp_sync_fds", set())
    if fd in sent:
        return _SentAlready()
    sent.add(fd)
    return _fd_for_child(fd)


# --- policy for the native types (they are the public classes themselves) ---


def _rebuild_semlock(cls, kind, maxvalue, fd_holder, arena_id, index):
    _drop_refs_at_exit()
    return cls._attach(kind, maxvalue, fd_holder.detach(), arena_id, index)


def _semlock_reduce(self):
    _std_context.assert_spawning(self)
    fd, arena_id, index = self._handle()
    return (
        _rebuild_semlock,
        (type(self), self.kind, self.maxvalue, _arena_fd_for_child(fd, self), arena_id, index),
    )


def _owner_name():
    name = _process.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


def _lock_repr(self):
    try:
        if self._is_mine():
            name = _owner_name()
        elif self._get_value() == 1:
            name = "None"
        elif self._count() > 0:
            name = "SomeOtherThread"
        else:
            name = "SomeOtherProcess"
    except Exception:  # noqa: BLE001
        name = "unknown"
    return f"<{type(self).__name__}(owner={name})>"


def _rlock_repr(self):
    try:
        if self._is_mine():
            name, count = _owner_name(), self._count()
        elif self._get_value() == 1:
            name, count = "None", 0
        elif self._count() > 0:
            name, count = "SomeOtherThread", "nonzero"
        else:
            name, count = "SomeOtherProcess", "nonzero"
    except Exception:  # noqa: BLE001
        name, count = "unknown", "unknown"
    return f"<{type(self).__name__}({name}, {count})>"


def _semaphore_repr(self):
    try:
        value = self._get_value()
    except Exception:  # noqa: BLE001
        value = "unknown"
    return f"<{type(self).__name__}(value={value})>"


def _bounded_repr(self):
    try:
        value = self._get_value()
    except Exception:  # noqa: BLE001
        value = "unknown"
    return f"<{type(self).__name__}(value={value}, maxvalue={self.maxvalue})>"


def _get_value(self):
    """The semaphore's current value."""
    return self._get_value()


for _cls in (SemLock, Lock, RLock, Semaphore, BoundedSemaphore):
    _cls.__reduce__ = _semlock_reduce
    # The stdlib's Condition and friends reach for `lock._semlock`.
    _cls._semlock = property(lambda self: self)
Lock.__repr__ = _lock_repr
RLock.__repr__ = _rlock_repr
Semaphore.__repr__ = _semaphore_repr
Semaphore.get_value = _get_value
BoundedSemaphore.__repr__ = _bounded_repr
BoundedSemaphore.get_value = _get_value
Semaphore.__doc__ = """Drop-in for multiprocessing.Semaphore.

Recovery rule: fastmp records which processes hold units (up to 28 processes
at once). When a waiter finds a holder dead, it gives back that holder's
units, but only as many as bring ``value + units held by live processes`` back
up to the initial value, so a semaphore used for signalling (released by one
process, acquired by another) is never topped up by a death.
"""


def _rebuild_event(cls, fd_holder, arena_id, index):
    _drop_refs_at_exit()
    return cls._attach(fd_holder.detach(), arena_id, index)


def _event_reduce(self):
    _std_context.assert_spawning(self)
    fd, arena_id, index = self._handle()
    return (_rebuild_event, (type(self), _arena_fd_for_child(fd, self), arena_id, index))


def _event_repr(self):
    return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


Event.__reduce__ = _event_reduce
Event.__repr__ = _event_repr


# --- Condition ---


def _rebuild_condvar(fd_holder, arena_id, index):
    _drop_refs_at_exit()
    return _CondVar(fd_holder.detach(), arena_id, index)


class _CondVar(_fastmp.CondVar):
    def __reduce__(self):
        _std_context.assert_spawning(self)
        fd, arena_id, index = self._handle()
        return (_rebuild_condvar, (_arena_fd_for_child(fd, self), arena_id, index))


class Condition:
    """Drop-in for multiprocessing.Condition, with any fastmp lock.

    Waiters are woken oldest first. A waiter killed after being notified
    hands the notification on to the next waiter.
    """

    def __init__(self, lock=None, *, ctx=None):
        self._lock = lock or RLock()
        self._cv = _CondVar()
        self._make_methods()

    def __getstate__(self):
        _std_context.assert_spawning(self)
        return (self._lock, self._cv)

    def __setstate__(self, state):
        self._lock, self._cv = state
        self._make_methods()

    def _make_methods(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __repr__(self):
        try:
            num_waiters = self._cv._waiting
        except Exception:  # noqa: BLE001
            num_waiters = "unknown"
        return f"<{type(self).__name__}({self._lock}, {num_waiters})>"

    def wait(self, timeout=None):
        assert self._lock._semlock._is_mine(), "must acquire() condition before using wait()"
        # Join the waiters before letting go of the lock, so that a notify
        # made as soon as the lock is free finds us.
        index, since = self._cv._enlist()
        count = self._lock._semlock._count()
        try:
            for _ in range(count):
                self._lock.release()
        except BaseException:
            self._cv._wait(index, since, 0)
            raise
        try:
            return self._cv._wait(index, since, timeout)
        finally:
            for _ in range(count):
                self._lock.acquire()

    def notify(self, n=1):
        assert self._lock._semlock._is_mine(), "lock is not owned"
        self._cv.notify(n)

    def notify_all(self):
        assert self._lock._semlock._is_mine(), "lock is not owned"
        self._cv.notify_all()

    def wait_for(self, predicate, timeout=None):
        result = predicate()
        if result:
            return result
        end = None if timeout is None else time.monotonic() + timeout
        wait_time = None
        while not result:
            if end is not None:
                wait_time = end - time.monotonic()
                if wait_time <= 0:
                    break
            self.wait(wait_time)
            result = predicate()
        return result


# --- Barrier ---


def _rebuild_barrier_state(parties, fd_holder, arena_id, index):
    _drop_refs_at_exit()
    return _BarrierState(parties, fd_holder.detach(), arena_id, index)


class _BarrierState(_fastmp.BarrierState):
    def __reduce__(self):
        _std_context.assert_spawning(self)
        fd, arena_id, index = self._handle()
        return (
            _rebuild_barrier_state,
            (self.parties, _arena_fd_for_child(fd, self), arena_id, index),
        )


_POLL = 0.1  # how often a waiting party checks for dead parties


class Barrier(threading.Barrier):
    """Drop-in for multiprocessing.Barrier.

    fastmp records which processes are inside ``wait()``; when one of them
    dies, the others find out within about 0.1 s and the barrier breaks
    (BrokenBarrierError), instead of waiting forever. A party that dies before
    reaching ``wait()`` cannot be told from a slow one: the others break on
    their timeout, as in the stdlib.
    """

    def __init__(self, parties, action=None, timeout=None, *, ctx=None):
        try:
            n = operator.index(parties)
        except TypeError:
            raise TypeError(f"parties must be an integer, not {type(parties).__name__}") from None
        shared = _BarrierState(min(max(n, 0), 2**31 - 1))
        self.__setstate__((parties, action, timeout, Condition(), shared))

    def __setstate__(self, state):
        self._parties, self._action, self._timeout, self._cond, self._shared = state

    def __getstate__(self):
        return (self._parties, self._action, self._timeout, self._cond, self._shared)

    @property
    def _state(self):
        return self._shared.state

    @_state.setter
    def _state(self, value):
        self._shared.state = value

    @property
    def _count(self):
        return self._shared.count

    def wait(self, timeout=None):
        """Waits until all parties have called wait(); returns this party's index."""
        if timeout is None:
            timeout = self._timeout
        with self._cond:
            self._enter()
            index = self._shared.count
            if index + 1 == self._parties and self._shared.reap_dead(True):
                # A party died inside wait(): do not release the others as if it were there.
                self._break()
                raise threading.BrokenBarrierError
            self._shared.arrive()
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    self._wait(timeout)
                return index
            finally:
                self._shared.leave()
                self._exit()

    def _reap_dead(self):
        """Drops parties that died inside wait(); True if there were any."""
        if not self._shared.reap_dead():
            return False
        if self._state == 0:
            self._break()
        else:
            self._exit()
        return True

    def _enter(self):
        while self._state in (-1, 1):
            # Wait for the previous cycle to drain (or be reset).
            self._cond.wait(_POLL)
            self._reap_dead()
        if self._state < 0:
            raise threading.BrokenBarrierError
        assert self._state == 0

    def _wait(self, timeout):
        end = None if timeout is None else time.monotonic() + timeout
        while self._state == 0:
            left = _POLL if end is None else min(_POLL, end - time.monotonic())
            if left <= 0:
                break
            self._cond.wait(left)
            if self._state == 0:
                self._reap_dead()
        if self._state == 0:
            self._break()
            raise threading.BrokenBarrierError
        if self._state < 0:
            raise threading.BrokenBarrierError
        assert self._state == 1

    def __repr__(self):
        if self.broken:
            return f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: broken>"
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}:"
            f" waiters={self.n_waiting}/{self.parties}>"
        )


del _cls
