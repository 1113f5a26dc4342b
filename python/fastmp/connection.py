"""fastmp.connection: :mod:`multiprocessing.connection` with a shared-memory ``Pipe``.

What fastmp does differently (see the stdlib docs for the rest):

* ``Pipe()`` returns fastmp :class:`Connection` objects: messages travel
  through anonymous shared memory; a small object round trip makes no
  syscall when the other side is waiting. Small ``None``/``bool``/``int``/
  ``float``/``str``/``bytes`` skip pickle; lambdas and local functions can be
  sent (cloudpickle fallback). An object that cannot be pickled raises at
  ``send`` and the connection stays usable.
* ``send`` never blocks: a backlog (or a message of any size, 1 GiB and more)
  grows the buffer instead, so two processes that both send large messages
  before receiving cannot deadlock as they can with the stdlib's socket.
* EOF is the stdlib's: ``recv`` raises ``EOFError`` once every copy of the
  other end is closed (copies inherited by forked children and passed to
  spawned ones count), including when its holder exited or was killed; an
  idle reader wakes at once. ``send`` raises ``BrokenPipeError`` when every
  copy of the other end is closed (if a reader was killed while blocked in
  ``recv``, up to 63 more sends may go through first).
* ``fileno()`` is a real descriptor that is readable exactly while a message
  waits or the other end is gone, so ``select``, ``selectors``, asyncio and
  :func:`wait` work. It is not the socket itself but an epoll descriptor
  private to this process (one more descriptor plus an eventfd); after the
  first ``fileno()`` call each message costs a syscall or two more, as with
  the stdlib.
* Each end holds four descriptors (a socket and three anonymous shared-memory
  files) where the stdlib holds one.
* ``Connection(handle, readable, writable)`` (the stdlib's form, wrapping an
  existing descriptor) returns a stdlib connection; fastmp connections come
  from :func:`Pipe` and are not instances of the stdlib class.

``Listener``, ``Client``, ``answer_challenge``, ``deliver_challenge`` and the
other network pieces are the stdlib's, re-exported: they return stdlib
connections.
"""

from __future__ import annotations

import io
import multiprocessing.connection as _std
import os

globals().update({k: v for k, v in vars(_std).items() if not k.startswith("__")})

from multiprocessing.context import BufferTooShort  # noqa: E402

from . import _fastmp  # noqa: E402
from .reduction import _detach_all, _fd_for_child  # noqa: E402

__all__ = list(getattr(_std, "__all__", [k for k in vars(_std) if not k.startswith("_")]))


class Connection(_fastmp.Connection):
    """One end of a fastmp Pipe; drop-in for ``multiprocessing.connection.Connection``.

    ``send``, ``recv``, ``recv_bytes``, ``poll``, ``fileno``, ``close`` and the
    ``closed``/``readable``/``writable`` properties are native.
    """

    def __new__(cls, *args, **kwargs):
        # The stdlib's form, Connection(handle, readable=True, writable=True),
        # wraps an existing descriptor: that is a stdlib connection.
        if len(args) + len(kwargs) < 5 or "handle" in kwargs:
            return _std.Connection(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, sock, header, tx, rx, side, readable=True, writable=True):
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        super().__init__(sock, header, tx, rx, side, bool(readable), bool(writable))

    def send_bytes(self, buf, offset=0, size=None):
        """Send the bytes data from a bytes-like object"""
        if self.closed:
            raise OSError("handle is closed")
        if not self.writable:
            raise OSError("connection is read-only")
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._send_raw(m[offset : offset + size])

    def recv_bytes_into(self, buf, offset=0):
        """Receive bytes data into a writeable bytes-like object.
        Return the number of bytes read."""
        if self.closed:
            raise OSError("handle is closed")
        if not self.readable:
            raise OSError("connection is write-only")
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            data = self.recv_bytes()
            size = len(data)
            if bytesize < offset + size:
                raise BufferTooShort(data)
            io.BytesIO(data).readinto(m[offset // itemsize : (offset + size) // itemsize])
            return size

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()

    def __reduce__(self):
        # Like the stdlib's reduce_connection: DupFd passes the descriptors to
        # a child being started, or through resource_sharer afterwards.
        sock, header, tx, rx, side = self._fds()
        return (
            _rebuild_connection,
            (
                _fd_for_child(sock),
                _fd_for_child(header),
                _fd_for_child(tx) if tx >= 0 else None,
                _fd_for_child(rx) if rx >= 0 else None,
                side,
                self.readable,
                self.writable,
            ),
        )


def _rebuild_connection(sock, header, tx, rx, side, readable, writable):
    fds = _detach_all((sock, header, tx, rx))
    return Connection(*fds, side, readable, writable)  # the native side closes them if it fails


def Pipe(duplex=True):
    """Returns a pair of fastmp Connection objects at either end of a pipe.

    ``duplex=False``: the first is read-only, the second write-only."""
    a, b = _fastmp._pipe_fds(bool(duplex))
    made = []
    try:
        made.append(Connection(*a, readable=True, writable=bool(duplex)))
        made.append(Connection(*b, readable=bool(duplex), writable=True))
    except BaseException:
        # A native constructor that fails closes what it was given; b's
        # descriptors are still ours when a's constructor failed.
        for fd in b[:4] if not made else ():
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for c in made:
            c.close()
        raise
    return made[0], made[1]


def wait(object_list, timeout=None):
    """Wait till an object in object_list is ready/readable; see
    :func:`multiprocessing.connection.wait`.

    Accepts fastmp connections mixed with stdlib connections, sockets,
    ``Process.sentinel`` and other file descriptors: a fastmp connection's
    ``fileno()`` is readable exactly while it has input (or hit EOF).
    """
    return _std.wait(object_list, timeout)
