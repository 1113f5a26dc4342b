"""Shared memory for shared ctypes: a per-process arena allocator over memfds.

Design notes
- Memory comes from anonymous memfds (``os.memfd_create``), never from files
  in /tmp or names in /dev/shm, so nothing outlives the process tree even
  after kill -9: the kernel frees a memfd when its last fd and mapping go.
- Small blocks share 1 MiB arenas (sparse files: untouched pages cost
  nothing); a block of ``LARGE_BLOCK`` bytes or more gets a memfd of its own,
  so a 1 GiB array is one sparse file mapped once.
- The process that created an arena allocates from it and frees into it.
  An arena is closed (fd closed, mapping dropped once the last view goes)
  as soon as its last block is freed, so idle processes hold no fds.
- Children get blocks by fork (the mapping is inherited) or, under spawn and
  forkserver, by pickling a block: the arena's fd travels as the stdlib's
  DupFd (``fastmp.reduction._fd_for_child``) plus an offset. A child never
  allocates from or frees into arenas it did not create; it maps each
  received memfd once (looked up by inode) and unmaps it when its last
  block there is gone.
- Blocks duck-type ``multiprocessing.heap.BufferWrapper``
  (``create_memoryview()``), so the stdlib's ``rebuild_ctype`` and
  ``reduce_ctype`` work on fastmp's shared ctypes unchanged.
"""

from __future__ import annotations

import bisect
import mmap
import os
import sys
import threading
import weakref

__all__: list[str] = []

ALIGNMENT = 16
ARENA_SIZE = 1 << 20
LARGE_BLOCK = 256 << 10


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class _Arena:
    """One memfd, mapped whole (MAP_SHARED)."""

    __slots__ = ("fd", "size", "mmap", "pid", "owned", "dedicated", "free", "live", "__weakref__")

    def __init__(self, size: int, fd: int | None = None, dedicated: bool = False):
        self.owned = fd is None
        self.dedicated = dedicated
        self.fd = -1
        if fd is None:
            fd = os.memfd_create("fastmp-sharedctypes", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
        try:
            self.mmap = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size
        self.pid = os.getpid()
        # Free list of the owner: sorted offsets, and offset -> length.
        self.free = [0]
        self.live = {0: size}

    def close(self) -> None:
        """Closes the fd; the mapping goes when its last view is released."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.mmap = None  # type: ignore[assignment]

    def __reduce__(self):
        from multiprocessing.context import get_spawning_popen

        from .reduction import _fd_for_child

        if get_spawning_popen() is None:
            # Outside process start-up, DupFd would start the stdlib's fd
            # server thread; shared ctypes travel only by inheritance.
            raise RuntimeError(
                "shared ctypes objects should only be shared between processes through inheritance"
            )
        if self.fd < 0:
            raise ValueError("cannot pickle a closed arena")
        return _rebuild_arena, (_fd_for_child(self.fd), self.size)

    def __del__(self, _close=os.close):
        # Arenas received from a parent (and the parent's arenas in a forked
        # child) are closed when their last block is garbage.
        if self.fd >= 0:
            _close(self.fd)
            self.fd = -1


class _Block:
    """``size`` bytes at ``offset`` in an arena; freed when garbage."""

    __slots__ = ("arena", "offset", "size", "zeroed")

    def __init__(self, arena: _Arena, offset: int, size: int, zeroed: bool = False):
        self.arena = arena
        self.offset = offset
        self.size = size
        # True for a fresh dedicated memfd: it reads as zeros already, and
        # writing zeros to 1 GiB would commit 1 GiB of memory.
        self.zeroed = zeroed

    def create_memoryview(self) -> memoryview:
        return memoryview(self.arena.mmap)[self.offset : self.offset + self.size]

    def __reduce__(self):
        # The arena is pickled as an object of its own, so that blocks of one
        # arena pickled together (the Process arguments) pass its fd once.
        return _Block, (self.arena, self.offset, self.size)

    def __del__(self, _finalizing=sys.is_finalizing):
        if not _finalizing():  # at interpreter exit the process frees it all
            _BLOCK_HEAP[0].free(self)


class _Heap:
    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # A forked child starts with no arenas of its own: the parent's stay
        # mapped for the blocks it inherited but are never allocated from.
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.arenas: list[_Arena] = []
        self.pending: list[_Block] = []
        self.attached: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def malloc(self, size: int) -> _Block:
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        size = _round_up(max(size, 1), ALIGNMENT)
        if size >= LARGE_BLOCK:
            arena = _Arena(_round_up(size, mmap.PAGESIZE), dedicated=True)
            arena.free, arena.live = [], {}
            with self.lock:
                self.arenas.append(arena)
            return _Block(arena, 0, size, zeroed=True)
        with self.lock:
            self._drain_pending()
            for arena in self.arenas:
                block = self._take(arena, size)
                if block is not None:
                    return block
            arena = _Arena(ARENA_SIZE)
            self.arenas.append(arena)
            return self._take(arena, size)  # type: ignore[return-value]  # a fresh arena always has room

    @staticmethod
    def _take(arena: _Arena, size: int) -> _Block | None:
        for i, off in enumerate(arena.free):
            length = arena.live[off]
            if length >= size:
                del arena.free[i]
                del arena.live[off]
                if length > size:
                    bisect.insort(arena.free, off + size)
                    arena.live[off + size] = length - size
                return _Block(arena, off, size)
        return None

    def free(self, block: _Block) -> None:
        arena = block.arena
        if not arena.owned or arena.pid != os.getpid() or self.pid != arena.pid:
            return  # not ours to reuse: only dropped (mapping goes with its views)
        # A block can be garbage-collected while this thread holds the lock
        # (inside malloc): defer it rather than deadlock.
        if not self.lock.acquire(False):
            self.pending.append(block)
            return
        try:
            self._free_locked(block)
            self._drain_pending()
        finally:
            self.lock.release()

    def _drain_pending(self) -> None:
        while self.pending:
            self._free_locked(self.pending.pop())

    def _free_locked(self, block: _Block) -> None:
        arena = block.arena
        if arena not in self.arenas:
            return
        off, size = block.offset, block.size
        if arena.dedicated:
            # A dedicated arena: its one block is gone.
            self.arenas.remove(arena)
            arena.close()
            return
        i = bisect.bisect_left(arena.free, off)
        # Coalesce with the free neighbours.
        if i < len(arena.free) and arena.free[i] == off + size:
            size += arena.live.pop(arena.free.pop(i))
        if i > 0 and arena.free[i - 1] + arena.live[arena.free[i - 1]] == off:
            off = arena.free[i - 1]
            size += arena.live[off]
            arena.live[off] = size
        else:
            arena.free.insert(i, off)
            arena.live[off] = size
        if off == 0 and size == arena.size:
            self.arenas.remove(arena)
            arena.close()

    def attach(self, fd: int, size: int) -> _Arena:
        """Maps a received memfd, once per process per file."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self.lock:
            arena = self.attached.get(key)
            if arena is not None and arena.mmap is not None and arena.size >= size:
                os.close(fd)
                return arena
            arena = _Arena(size, fd)
            arena.owned = False
            self.attached[key] = arena
            return arena


def _rebuild_arena(dupfd, size: int) -> _Arena:
    return _heap.attach(dupfd.detach(), size)


_heap = _Heap()
_BLOCK_HEAP = [_heap]  # reachable from _Block.__del__ while the module is torn down


def malloc(size: int) -> _Block:
    """A block of shared memory of at least ``size`` bytes."""
    return _heap.malloc(size)
