"""Shared ctypes: Value, Array, RawValue, RawArray and fastmp.sharedctypes.

Parity tests take the `ctx` fixture, so each body runs against
multiprocessing and fastmp under fork and spawn.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import re
import signal

import pytest

import fastmp
from _script import run_script
from fastmp import sharedctypes as fsc

# typecode -> (a value to store, a second value a child stores)
TYPECODES = {
    "c": (b"a", b"z"),
    "u": ("a", "\u00e9"),
    "b": (-5, 7),
    "B": (5, 250),
    "h": (-300, 301),
    "H": (300, 65000),
    "i": (-70000, 70001),
    "I": (70000, 4_000_000_000),
    "l": (-(2**40), 2**40 + 1),
    "L": (2**40, 2**63),
    "q": (-(2**62), 2**62 + 1),
    "Q": (2**62, 2**64 - 1),
    "f": (1.5, -2.25),
    "d": (0.1, -1e300),
}


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


@pytest.fixture(autouse=True)
def _release_stdlib_heap():
    """The stdlib's heap keeps its arenas (an fd and a mapping each) for the
    life of the process, by design; drop them once the test's objects are
    gone so the leak check sees only what the test itself left behind."""
    yield
    from multiprocessing import heap

    gc.collect()
    old = heap.BufferWrapper._heap
    if any(old._allocated_blocks.values()):
        return  # something still uses them: let the leak check report it
    heap.BufferWrapper._heap = heap.Heap()
    del old
    gc.collect()  # each arena's own finalizer closes its fd


# --- Process targets (module level: spawn pickles them by reference) ---


def _set_values(values, new):
    for v, x in zip(values, new):
        v.value = x


def _set_items(arrays, new):
    for a, x in zip(arrays, new):
        a[0] = x
        a[len(a) - 1] = x


def _locked_increments(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def _unlocked_increments(v, n):
    for _ in range(n):
        v.value += 1


def _array_increments(a, n):
    for _ in range(n):
        with a.get_lock():
            for i in range(len(a)):
                a[i] += 1


def _string_child(s):
    s.value = b"from child"


def _point_child(p):
    p.x += 1
    p.y *= 2


def _numpy_child(arr, raw):
    import numpy as np

    view = np.frombuffer(arr.get_obj(), dtype=np.float64)
    view[:] += 1.0
    np.frombuffer(raw, dtype=np.int64)[::2] = 7


def _large_child(big, offsets):
    for off in offsets:
        big[off] = (off % 100) + 1


def _drop_inherited(v, a):
    del v, a
    gc.collect()


# --- every typecode ---


@pytest.mark.parametrize("lock", [True, False])
def test_value_every_typecode(ctx, lock):
    values = [ctx.Value(tc, first, lock=lock) for tc, (first, _second) in TYPECODES.items()]
    for v, (first, _second) in zip(values, TYPECODES.values()):
        got = v.value
        assert got == pytest.approx(first) if isinstance(first, float) else got == first
    p = ctx.Process(
        target=_set_values, args=(values, [second for _f, second in TYPECODES.values()])
    )
    p.start()
    p.join()
    assert p.exitcode == 0
    for v, (_first, second) in zip(values, TYPECODES.values()):
        assert v.value == (pytest.approx(second) if isinstance(second, float) else second)


def test_array_every_typecode(ctx):
    arrays = [ctx.Array(tc, [first] * 3) for tc, (first, _s) in TYPECODES.items()]
    raw = [ctx.RawArray(tc, 4) for tc in TYPECODES]
    for a, r in zip(arrays, raw):
        assert len(a) == 3 and len(r) == 4
        zero = (
            b"\x00" if r._type_ is ctypes.c_char else ("\x00" if r._type_ is ctypes.c_wchar else 0)
        )
        assert list(r) == [zero] * 4
    seconds = [second for _f, second in TYPECODES.values()]
    p = ctx.Process(target=_set_items, args=(arrays + raw, seconds + seconds))
    p.start()
    p.join()
    assert p.exitcode == 0
    for a, r, (first, second) in zip(arrays, raw, TYPECODES.values()):
        approx = pytest.approx if isinstance(first, float) else (lambda x: x)
        assert a[0] == approx(second) and a[2] == approx(second) and a[1] == approx(first)
        assert r[0] == approx(second) and r[3] == approx(second)


def test_raw_value_defaults_and_args(ctx):
    assert ctx.RawValue("i").value == 0
    assert ctx.RawValue("d", 2.5).value == 2.5
    assert ctx.RawValue(ctypes.c_short, 7).value == 7
    v = ctx.RawValue("i", 3)
    assert isinstance(v, ctypes.c_int)
    assert repr(v) == "c_int(3)"


# --- lock argument, get_lock, errors ---


def test_lock_argument(ctx):
    v = ctx.Value("i", 1)
    lock = v.get_lock()
    assert type(lock).__name__ == "RLock"
    with lock:
        with v.get_lock():  # recursive
            v.value += 1
    assert v.value == 2
    assert isinstance(ctx.Value("i", 1, lock=False), ctypes.c_int)
    assert isinstance(ctx.Array("i", 3, lock=False), ctypes.Array)
    mine = ctx.Lock()
    v2 = ctx.Value("d", 1.0, lock=mine)
    assert v2.get_lock() is mine
    a = ctx.Array("i", 3, lock=mine)
    assert a.get_lock() is mine
    assert v2.get_obj().value == 1.0
    assert isinstance(a.get_obj(), ctypes.Array)
    v3 = ctx.Value("i", 1, lock=None)
    assert type(v3.get_lock()).__name__ == "RLock"


def test_bad_input_raises_like_stdlib(ctx):
    with pytest.raises(TypeError, match="this type has no size"):
        ctx.RawValue("x")
    with pytest.raises(TypeError, match="this type has no size"):
        ctx.Value("zz", 1)
    with pytest.raises(TypeError):
        ctx.Value("i", "not an int")
    with pytest.raises(ValueError, match="Array length must be >= 0, not -1"):
        ctx.RawArray("i", -1)
    with pytest.raises(ValueError, match="Array length must be >= 0, not -3"):
        ctx.Array("d", -3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lock'"):
        ctx.RawValue("i", 1, lock=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lock'"):
        ctx.RawArray("i", 1, lock=True)
    with pytest.raises(AttributeError, match="3 has no method 'acquire'"):
        ctx.Value("i", 1, lock=3)
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        ctx.Array("i", 2, lock="nope")
    with pytest.raises(IndexError):
        ctx.Array("i", 2)[5]
    a = ctx.Array("i", 4)
    with pytest.raises(ValueError, match="Can only assign sequence of same size"):
        a[0:2] = [1]
    with pytest.raises(TypeError):
        a[0] = "x"
    # Still usable after every failure, lock released.
    a[0:2] = [1, 2]
    assert a[:] == [1, 2, 0, 0]
    assert a.get_lock().acquire(False)
    a.get_lock().release()
    v = ctx.Value("i", 0)
    with pytest.raises(TypeError):
        v.value = "x"
    v.value = 5
    assert v.get_lock().acquire(False)
    v.get_lock().release()


def test_pickling_outside_spawning_refused(ctx):
    from multiprocessing.reduction import ForkingPickler

    for obj in (ctx.Value("i", 1), ctx.Array("i", 2), ctx.RawValue("i", 1), ctx.RawArray("d", 2)):
        with pytest.raises(
            RuntimeError, match="should only be shared between processes through inheritance"
        ):
            ForkingPickler.dumps(obj)
    for obj in (ctx.Value("i", 1), ctx.Array("c", 2)):
        with pytest.raises(
            RuntimeError, match="should only be shared between processes through inheritance"
        ):
            pickle.dumps(obj)


# --- counting: locked is exact, unlocked never exceeds ---


def test_locked_increments_are_exact(ctx):
    v = ctx.Value("i", 0)
    procs = [ctx.Process(target=_locked_increments, args=(v, 5000)) for _ in range(2)]
    for p in procs:
        p.start()
    _locked_increments(v, 5000)
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert v.value == 15000


def test_unlocked_increment_race_never_above_total(ctx):
    # `v.value += 1` is a locked read then a locked write: not atomic, as in
    # the stdlib. Lost updates are allowed; invented ones are not.
    v = ctx.Value("i", 0)
    procs = [ctx.Process(target=_unlocked_increments, args=(v, 20000)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    # (Interleaved lost updates can take the total below one process's 20000.)
    assert 2 <= v.value <= 40000


def test_array_locked_increments(ctx):
    a = ctx.Array("q", 5)
    procs = [ctx.Process(target=_array_increments, args=(a, 300)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert list(a) == [600] * 5


# --- arrays, strings, slicing, repr, structures ---


def test_array_slicing(ctx):
    a = ctx.Array("i", range(10))
    assert a[2:5] == [2, 3, 4]
    assert a[::3] == [0, 3, 6, 9]
    assert a[-1] == 9
    assert a[:] == list(range(10))
    a[2:5] = [20, 30, 40]
    a[::2] = [0] * 5
    assert list(a) == [0, 1, 0, 30, 0, 5, 0, 7, 0, 9]
    assert len(a) == 10
    d = ctx.Array("d", [0.5, 1.5])
    d[1] += 1
    assert list(d) == [0.5, 2.5]


_SLICE_TYPES = [
    ctypes.c_bool, ctypes.c_byte, ctypes.c_ubyte, ctypes.c_short, ctypes.c_ushort, ctypes.c_int,
    ctypes.c_uint, ctypes.c_long, ctypes.c_ulong, ctypes.c_longlong, ctypes.c_ulonglong,
    ctypes.c_float, ctypes.c_double, ctypes.c_char, ctypes.c_wchar, ctypes.c_void_p,
]  # fmt: skip


@pytest.mark.parametrize("type_", _SLICE_TYPES, ids=lambda t: t.__name__)
def test_array_slices_equal_ctypes_slices(type_):
    """Slices of a synchronized Array (a native fast path for numbers) give
    exactly what ctypes gives, for every element type, step and bound."""
    import multiprocessing.sharedctypes as std_sharedctypes

    n = 11
    if type_ is ctypes.c_bool:
        init = [i % 3 == 0 for i in range(n)]
    elif type_ is ctypes.c_char:
        init = bytes(range(65, 65 + n))
    elif type_ is ctypes.c_wchar:
        init = "abcdefghijk"
    elif type_ is ctypes.c_void_p:
        init = [None if i % 2 else i * 8 for i in range(n)]
    elif type_ in (ctypes.c_float, ctypes.c_double):
        init = [i / 4 - 1 for i in range(n)]
    else:
        signed = type_(-1).value == -1
        init = [(-i if signed and i % 2 else i) * 7 for i in range(n)]
    ours = fsc.Array(type_, init)
    plain = (type_ * n)(*init)
    theirs = std_sharedctypes.synchronized((type_ * n)(*init))
    for key in [
        slice(None), slice(2, 5), slice(None, None, 3), slice(None, None, -1), slice(-3, None),
        slice(8, 2, -2), slice(50, 60), slice(-50, 3), slice(5, 5), slice(None, None, 7),
    ]:  # fmt: skip
        got = ours[key]
        assert got == plain[key] == theirs[key], key
        assert type(got) is type(plain[key])
        assert [type(x) for x in got] == [type(x) for x in plain[key]], key
    with pytest.raises(ValueError, match="slice step cannot be zero"):
        ours[::0]
    with pytest.raises(TypeError):
        ours["x":]


def test_array_slice_extremes():
    for type_, values in [
        (ctypes.c_ulonglong, [0, 2**64 - 1]),
        (ctypes.c_longlong, [-(2**63), 2**63 - 1]),
        (ctypes.c_uint, [0, 2**32 - 1]),
        (ctypes.c_double, [float("inf"), -0.0]),
    ]:
        a = fsc.Array(type_, values)
        assert a[:] == list((type_ * 2)(*values))


def test_char_array_value_and_raw(ctx):
    s = ctx.Array("c", b"hello")
    assert s.value == b"hello" and s.raw == b"hello"
    assert s[1] == b"e" and s[1:3] == b"el"
    s.value = b"hi"
    assert s.raw == b"hi\x00lo" and s.value == b"hi"
    s.raw = b"abcde"
    assert s.value == b"abcde"
    big = ctx.Array("c", 16)
    p = ctx.Process(target=_string_child, args=(big,))
    p.start()
    p.join()
    assert big.value == b"from child"
    with pytest.raises(ValueError):
        big.value = b"x" * 17


def test_repr(ctx):
    assert repr(ctx.Value("i", 3)) == "<Synchronized wrapper for c_int(3)>"
    # (ctypes caches array types: the module in the name is whichever
    # library created c_int * 7 first.)
    assert re.fullmatch(
        r"<SynchronizedArray wrapper for <[\w.]+\.c_int_Array_7 object at 0x[0-9a-f]+>>",
        repr(ctx.Array("i", 7)),
    )
    assert re.fullmatch(
        r"<SynchronizedString wrapper for <[\w.]+\.c_char_Array_2 object at 0x[0-9a-f]+>>",
        repr(ctx.Array("c", b"ab")),
    )
    assert repr(ctx.RawValue("d", 1.5)) == "c_double(1.5)"
    assert repr(ctx.Value(ctypes.c_bool, True)) == "<Synchronized wrapper for c_bool(True)>"


def test_structure_value(ctx):
    p = ctx.Value(Point, 1, 2.5)
    assert type(p).__name__ == "SynchronizedPoint"
    assert (p.x, p.y) == (1, 2.5)
    child = ctx.Process(target=_point_child, args=(p,))
    child.start()
    child.join()
    assert (p.x, p.y) == (2, 5.0)
    raw = ctx.RawValue(Point, 3, 4.0)
    assert (raw.x, raw.y) == (3, 4.0)


def test_stdlib_isinstance_holds():
    from multiprocessing import sharedctypes as std

    assert isinstance(fastmp.Value("i", 1), std.Synchronized)
    assert isinstance(fastmp.Array("i", 1), std.SynchronizedArray)
    assert isinstance(fastmp.Array("c", 1), std.SynchronizedString)
    assert isinstance(fastmp.Value("i", 1), std.SynchronizedBase)


def test_module_names_and_helpers():
    from multiprocessing import sharedctypes as std

    for name in [n for n in dir(std) if not n.startswith("__")]:
        assert hasattr(fsc, name), name
    raw = fsc.RawArray("i", [1, 2, 3])
    dup = fsc.copy(raw)
    raw[0] = 9
    assert list(dup) == [1, 2, 3]
    assert ctypes.addressof(dup) != ctypes.addressof(raw)
    s = fsc.synchronized(raw)
    assert isinstance(s, fsc.SynchronizedArray) and s[0] == 9
    with pytest.raises(AssertionError, match="object already synchronized"):
        fsc.synchronized(s)
    v = fsc.synchronized(fsc.RawValue("h", 4), fastmp.Lock())
    assert isinstance(v, fsc.Synchronized) and v.value == 4
    sp = fsc.synchronized(fsc.RawValue(Point, 1, 1.0))
    sp.x = 5
    assert sp.get_obj().x == 5


# --- memory: zero-copy numpy, large arrays, forked children, leaks ---


def test_numpy_zero_copy_visible_to_children(fctx):
    np = pytest.importorskip("numpy")
    arr = fctx.Array("d", 1000)
    raw = fctx.RawArray("q", 64)
    view = np.frombuffer(arr.get_obj(), dtype=np.float64)
    assert view.ctypes.data == ctypes.addressof(arr.get_obj())  # a view, not a copy
    view[:] = np.arange(1000)
    assert arr[999] == 999.0  # writes through the view are the array's
    p = fctx.Process(target=_numpy_child, args=(arr, raw))
    p.start()
    p.join()
    assert p.exitcode == 0
    assert np.array_equal(view, np.arange(1000) + 1.0)
    assert list(raw[:4]) == [7, 0, 7, 0]
    del view


def test_large_array_one_gib(fctx):
    size = (1 << 30) + 4096
    big = fctx.RawArray("b", size)
    assert len(big) == size and ctypes.sizeof(big) == size
    offsets = [0, 4096 * 1000, (1 << 29) + 7, size - 1]
    p = fctx.Process(target=_large_child, args=(big, offsets))
    p.start()
    p.join()
    assert p.exitcode == 0
    for off in offsets:
        assert big[off] == (off % 100) + 1
    assert big[12345] == 0


def test_fork_child_dropping_inherited_objects_frees_nothing():
    ctx = fastmp.get_context("fork")
    v = ctx.Value("i", 41)
    a = ctx.Array("i", range(4))
    p = ctx.Process(target=_drop_inherited, args=(v, a))
    p.start()
    p.join()
    assert p.exitcode == 0
    # New allocations in the parent do not overlap what the child dropped.
    others = [ctx.Value("i", 99) for _ in range(8)]
    assert v.value == 41 and list(a) == [0, 1, 2, 3]
    assert all(o.value == 99 for o in others)


def test_heap_reuses_and_returns_memory():
    from fastmp import _heap

    def arena_fds():
        # Only the heap's own memfds: threads that other tests left running in
        # this process (a Dask client, a pool's handlers) may open and close
        # unrelated fds meanwhile.
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if "fastmp-sharedctypes" in target:
                found.add((fd, target))
        return found

    fds0 = arena_fds()
    values = [fsc.RawValue("q", i) for i in range(5000)]  # several arenas' worth
    assert [v.value for v in values] == list(range(5000))
    addrs = {ctypes.addressof(v) for v in values}
    assert len(addrs) == 5000
    assert len(arena_fds() - fds0) >= 2  # the arenas this test made
    del values
    gc.collect()
    assert arena_fds() == fds0  # empty arenas are closed
    assert not any(a.owned for a in _heap._heap.arenas)
    # A reused block is zeroed for the new value.
    v = fsc.RawValue("q", 5)
    del v
    assert fsc.RawValue("q").value == 0


KILL_SCRIPT = r"""
import os, signal, sys, tempfile
import fastmp as mp

def child(v, a, big):
    with v.get_lock():
        v.value += 1
    a[0] = 1
    big[0] = 1

if __name__ == "__main__":
    objs = []
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        v, a = ctx.Value("i", 0), ctx.Array("d", 100)
        big = ctx.RawArray("b", 8 << 20)
        p = ctx.Process(target=child, args=(v, a, big))
        p.start()
        p.join()
        assert p.exitcode == 0 and v.value == 1 and a[0] == 1.0 and big[0] == 1
        objs += [v, a, big]
    maps = open("/proc/self/maps").read().splitlines()
    shared = sorted({line.split(None, 5)[5] for line in maps if len(line.split(None, 5)) == 6
                     and ("memfd:" in line or "/dev/shm" in line or tempfile.gettempdir() in line)})
    print("MAPPED", shared, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_of_parent_leaves_nothing(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    shm0 = set(os.listdir("/dev/shm"))
    r = run_script(KILL_SCRIPT, tmp_path, timeout=60, env={"TMPDIR": str(tmpdir)})
    assert r.returncode == -signal.SIGKILL, r.stderr
    mapped = eval(r.stdout.split("MAPPED", 1)[1].strip())  # noqa: S307  (our own script's output)
    assert "/memfd:fastmp-sharedctypes (deleted)" in mapped, mapped
    # Every shared mapping is anonymous: memfds (the shared ctypes, and
    # whatever else fastmp maps), or the semaphores of stdlib locks, which
    # are unlinked at creation ("(deleted)"). No file in /tmp or /dev/shm.
    for m in mapped:
        assert m.startswith("/memfd:fastmp") or (
            m.startswith("/dev/shm/sem.") and m.endswith("(deleted)")
        ), mapped
    assert list(tmpdir.iterdir()) == []
    new_shm = set(os.listdir("/dev/shm")) - shm0
    assert not [n for n in new_shm if n.startswith(("pym-", "fastmp"))]


def _pass_on(v, a, method):
    ctx = fastmp.get_context(method)
    p = ctx.Process(target=_locked_increments, args=(v, 100))
    p.start()
    p.join()
    a[0] = p.exitcode + 1


def test_every_start_method_and_grandchildren(fctx):
    # A child that received the objects passes them on to a grandchild
    # (its arenas are foreign to it: it re-sends their fds).
    v, a = fctx.Value("q", 0), fctx.Array("i", 3)
    p = fctx.Process(target=_pass_on, args=(v, a, fctx.get_start_method()))
    p.start()
    _locked_increments(v, 100)
    p.join()
    assert p.exitcode == 0 and a[0] == 1
    assert v.value == 200


def test_heap_is_thread_safe():
    import threading

    out: list[list] = [[] for _ in range(4)]

    def alloc(slot):
        for i in range(2000):
            out[slot].append(fsc.RawValue("q", slot * 10_000 + i))
            if i % 3 == 0:
                out[slot].pop(0)  # frees race with allocations elsewhere

    threads = [threading.Thread(target=alloc, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = [v for vals in out for v in vals]
    addrs = [ctypes.addressof(v) for v in live]
    assert len(set(addrs)) == len(addrs)  # no two live values share memory
    assert all(v.value // 10_000 in range(4) for v in live)
    for slot, vals in enumerate(out):
        assert [v.value // 10_000 for v in vals] == [slot] * len(vals)


class _CountingLock:
    """A lock that records how it is used (the wrappers accept any object
    with acquire/release)."""

    def __init__(self):
        self.log = []

    def acquire(self, *args):
        self.log.append("acquire")
        return True

    def release(self):
        self.log.append("release")

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def test_every_access_takes_the_lock_once(ctx):
    # The stdlib's locking pattern, access by access: a read and a write per
    # `+=` (so it is not atomic), items and slices locked, len() unlocked.
    lock = _CountingLock()
    v = ctx.Value("i", 1, lock=lock)
    v.value += 1
    assert v.value == 2
    assert lock.log == ["acquire", "release"] * 3
    lock.log.clear()
    a = ctx.Array("i", 4, lock=lock)
    a[0] = 5
    a[1] += a[0]
    assert a[:2] == [5, 5] and len(a) == 4
    assert lock.log == ["acquire", "release"] * 5
    lock.log.clear()
    s = ctx.Array("c", b"abc", lock=lock)
    s.value = b"x"
    assert (s.value, s.raw, s[0]) == (b"x", b"x\x00c", b"x")
    assert lock.log == ["acquire", "release"] * 4


class _FailingRelease(_CountingLock):
    def release(self):
        super().release()
        raise OSError("release failed")


def test_lock_errors_propagate_and_access_errors_win(ctx):
    lock = _FailingRelease()
    v = ctx.Value("i", 1, lock=lock)
    with pytest.raises(OSError, match="release failed"):
        v.value  # noqa: B018
    # As with try/finally, release's error replaces the access's, which
    # becomes its __context__.
    with pytest.raises(OSError, match="release failed") as info:
        v.value = "x"
    assert isinstance(info.value.__context__, TypeError)
    assert lock.log.count("acquire") == lock.log.count("release") == 2
