"""fastmp.shared_memory: named shared memory (see :mod:`multiprocessing.shared_memory`).

Segments are the stdlib's: POSIX shared memory under /dev/shm with the same
names (``psm_...``), mode 0600, and :class:`ShareableList` uses the stdlib's
layout, so a segment created by either library can be attached by the other.

What fastmp does differently: only the process that *creates* a segment
registers it with the resource tracker. In the stdlib before 3.13 every
process that merely attaches registers it too, so when an unrelated attaching
process exits its resource tracker unlinks the creator's segment and warns
about a "leaked shared_memory object". Here an attaching process never
unlinks the segment or warns about it unless it calls :meth:`unlink` itself.
The creator's tracker still unlinks a segment that its process tree leaves
behind (for instance after kill -9), as in the stdlib. Python 3.13's
``track=False`` keyword is accepted (no tracking at all, even for the creator).
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
import types
from multiprocessing import resource_tracker
from multiprocessing import shared_memory as _std

__all__ = ["SharedMemory", "ShareableList"]

# The other public names of multiprocessing.shared_memory (partial, ...).
globals().update(
    {k: v for k, v in vars(_std).items() if not k.startswith("_") and k not in __all__}
)

_O_CREX = os.O_CREAT | os.O_EXCL


class SharedMemory(_std.SharedMemory):
    """Creates a new shared memory block or attaches to an existing one.

    Same signature, attributes and errors as
    :class:`multiprocessing.shared_memory.SharedMemory`.
    """

    _registered = False
    _track = True

    def __init__(self, name=None, create=False, size=0, *, track=True):
        # track=False (Python 3.13's keyword): the resource tracker never
        # hears of this segment, even from its creator.
        self._track = track
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        flags = os.O_RDWR
        if create:
            flags |= _O_CREX
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        self._flags = flags

        if name is None:
            while True:
                candidate = _std._make_filename()
                try:
                    self._fd = _posixshmem.shm_open(candidate, flags, mode=self._mode)
                except FileExistsError:
                    continue
                self._name = candidate
                break
        else:
            name = "/" + name if self._prepend_leading_slash else name
            self._fd = _posixshmem.shm_open(name, flags, mode=self._mode)
            self._name = name
        try:
            if create:
                os.ftruncate(self._fd, size)
            size = os.fstat(self._fd).st_size
            self._mmap = mmap.mmap(self._fd, size)
        except OSError:
            if create:
                _posixshmem.shm_unlink(self._name)
            self.close()
            raise
        if create and track:
            # Only the creator: the tracker unlinks what its process tree
            # leaves behind, and must never do so for a mere attacher.
            resource_tracker.register(self._name, "shared_memory")
            self._registered = True
        self._size = size
        self._buf = memoryview(self._mmap)

    def unlink(self):
        """Requests that the underlying shared memory block be destroyed (once, by one process)."""
        if not self._name:
            return
        _posixshmem.shm_unlink(self._name)
        if not self._track:
            return
        if not self._registered:
            # The creator may share this process's tracker (a child it
            # started): make sure no registration of the name survives,
            # without ever sending the tracker an unknown name.
            resource_tracker.register(self._name, "shared_memory")
        resource_tracker.unregister(self._name, "shared_memory")
        self._registered = False


def _with_our_shared_memory(func):
    """The stdlib function, resolving ``SharedMemory`` to fastmp's class."""
    glb = dict(func.__globals__)
    glb["SharedMemory"] = SharedMemory
    new = types.FunctionType(func.__code__, glb, func.__name__, func.__defaults__, func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__doc__ = func.__doc__
    return new


class ShareableList(_std.ShareableList):
    """The stdlib's ShareableList (same layout), backed by fastmp's SharedMemory."""

    __init__ = _with_our_shared_memory(_std.ShareableList.__init__)
