"""fastmp's Queue, SimpleQueue and JoinableQueue (see :mod:`multiprocessing.queues`).

What fastmp does differently:

* Items travel through anonymous shared memory; there is no feeder thread, so
  ``put`` has copied the item into the queue when it returns. An object that
  cannot be pickled raises at ``put`` in the caller (the stdlib prints the
  error later from its feeder thread and drops the item), and nothing is left
  behind for ``join_thread``/``cancel_join_thread`` to wait for: joining a
  process that put items which nobody has read yet cannot deadlock.
* Unbounded means unbounded: the buffer grows with the backlog and shrinks
  when it drains; messages of any size go through.
* A process killed in the middle of ``put`` or ``get`` does not wedge the
  others, and nothing leaks (no names in /dev/shm).
* Lambdas and local functions can be put (cloudpickle fallback).
* ``Queue.Empty`` / ``Queue.Full`` exist; ``put_many`` and ``get_many`` are extras.
"""

from __future__ import annotations

import multiprocessing.queues as _std_queues
import operator
from multiprocessing import context as _std_context
from queue import Empty, Full

from . import _fastmp
from .reduction import _detach_all, _fd_for_child

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]

# The helpers multiprocessing.queues exposes (Finalize, is_exiting, ...), so
# code reaching for them through fastmp.queues finds them.
globals().update(
    {k: v for k, v in vars(_std_queues).items() if not k.startswith("_") and k not in __all__}
)


def _check_maxsize(maxsize) -> int:
    try:
        return operator.index(maxsize)
    except TypeError:
        raise TypeError(f"maxsize must be an integer, not {type(maxsize).__name__}") from None


def _rebuild(cls, maxsize, fd_holder, doorbell_holder, state):
    obj = cls.__new__(cls)
    fd, doorbell = _detach_all((fd_holder, doorbell_holder))
    _fastmp.Queue.__init__(obj, maxsize, fd, doorbell)  # closes both if it fails
    obj.__dict__.update(state)
    return obj


class _Reader:
    """A pollable read handle, like the stdlib queues' ``_reader`` Connection.

    ``fileno()`` is readable exactly while the queue holds items, so
    ``multiprocessing.connection.wait()``, ``select`` and the stdlib's
    ProcessPoolExecutor (which waits on ``result_queue._reader``) work.
    """

    __slots__ = ("_queue",)

    def __init__(self, q):
        self._queue = q
        q._enable_doorbell()

    def fileno(self):
        return self._queue._doorbell_fd()

    def poll(self, timeout=0.0):
        import select

        if not self._queue.empty():
            return True
        if timeout is not None and timeout <= 0:
            return False
        r, _, _ = select.select([self.fileno()], [], [], timeout)
        return bool(r)

    def recv(self):
        return self._queue.get()

    @property
    def closed(self):
        return self._queue._closed

    def close(self):
        self._queue._close()


class Queue(_fastmp.Queue):
    """A process-shared FIFO queue; drop-in for ``multiprocessing.Queue``."""

    Empty = Empty
    Full = Full

    def __init__(self, maxsize=0, *, ctx=None):
        super().__init__(_check_maxsize(maxsize), -1)
        self._ctx = ctx

    # put, get, put_nowait, get_nowait, put_many, get_many, qsize, empty and
    # full are native (fastmp._fastmp.Queue).

    def close(self):
        """Closes this process's handle: later put/get here raise ValueError."""
        self._close()

    def join_thread(self):
        """Nothing to wait for: fastmp has no feeder thread."""
        assert self._closed, f"Queue {self!r} not closed"

    def cancel_join_thread(self):
        """Nothing to cancel: fastmp has no feeder thread."""

    @property
    def _reader(self):
        reader = self.__dict__.get("_reader_handle")
        if reader is None:
            reader = self.__dict__["_reader_handle"] = _Reader(self)
        return reader

    def __reduce__(self):
        _std_context.assert_spawning(self)
        state = {k: v for k, v in self.__dict__.items() if k not in ("_ctx", "_reader_handle")}
        state["_ctx"] = None
        return (
            _rebuild,
            (
                type(self),
                self._maxsize,
                _fd_for_child(self._fd()),
                _fd_for_child(self._doorbell_fd()),
                state,
            ),
        )


class JoinableQueue(Queue):
    """A Queue with ``task_done()`` and ``join()``."""

    def task_done(self):
        """Marks one item as processed; ValueError when called too often."""
        self._task_done()

    def join(self):
        """Blocks until every item put has been matched by task_done()."""
        self._join_tasks()


class SimpleQueue(Queue):
    """A simpler queue (``get``, ``put``, ``empty``, ``close``)."""

    def __init__(self, *, ctx=None):
        super().__init__(0, ctx=ctx)

    def close(self):
        """Closes this process's handle: later put/get here raise OSError."""
        self._close(True)
