"""Shared ctypes rows (higher is better).

- ``Value += 1 under get_lock(), 2 procs``: two children each run
  ``with v.get_lock(): v.value += 1`` n times; ops/s over both.
- ``Array item reads, child``: a child reads every item of a synchronized
  ``Array('d', 1M)`` one by one (``arr[i]``, which takes the lock); items/s.
- ``Array slice reads, child``: a child reads ``arr[:]`` of the same array; MB/s.
- ``Value.value read, 1 proc``: the accessor alone (no contention); reads/s.

fastmp's Value/Array use whatever lock the context gives (``ctx.RLock()``):
this measures the accessor path and the memory, with the lock of the build.
"""

from __future__ import annotations

import time

from . import Scenario


def _wait_go(go):
    while go.value == 0:
        pass


def _incr(v, go, out, slot, n):
    _wait_go(go)
    lock = v.get_lock
    for _ in range(n):
        with lock():
            v.value += 1
    out[slot] = time.perf_counter()


def _read_items(arr, go, out):
    _wait_go(go)
    t0 = time.perf_counter()
    s = 0.0
    for i in range(len(arr)):
        s += arr[i]
    out[0] = time.perf_counter() - t0
    out[1] = s


def _read_slices(arr, go, out, reps):
    _wait_go(go)
    t0 = time.perf_counter()
    for _ in range(reps):
        arr[:]
    out[0] = time.perf_counter() - t0


def value_incr(lib, method, n):
    ctx = lib.get_context(method)
    v = ctx.Value("i", 0)
    go = ctx.RawValue("i", 0)
    out = ctx.RawArray("d", 2)
    procs = [ctx.Process(target=_incr, args=(v, go, out, i, n)) for i in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.3 if method == "fork" else 1.0)  # both children spinning on `go`
    t0 = time.perf_counter()
    go.value = 1
    for p in procs:
        p.join()
    assert v.value == 2 * n, (v.value, 2 * n)
    return 2 * n / (max(out) - t0)


def array_items(lib, method, n):
    ctx = lib.get_context(method)
    arr = ctx.Array("d", n)
    go, out = ctx.RawValue("i", 1), ctx.RawArray("d", 2)
    p = ctx.Process(target=_read_items, args=(arr, go, out))
    p.start()
    p.join()
    return n / out[0]


def array_slices(lib, method, n):
    ctx = lib.get_context(method)
    arr = ctx.Array("d", 1 << 20)
    go, out = ctx.RawValue("i", 1), ctx.RawArray("d", 1)
    p = ctx.Process(target=_read_slices, args=(arr, go, out, n))
    p.start()
    p.join()
    return n * 8 * (1 << 20) / out[0] / 1e6


def value_read(lib, method, n):
    v = lib.get_context(method).Value("d", 1.0)
    t0 = time.perf_counter()
    for _ in range(n):
        v.value  # noqa: B018
    return n / (time.perf_counter() - t0)


def _row(name, fn, n, unit, min_n=1):
    return Scenario(
        "sharedctypes", name, unit, True, n, lambda lib, count: fn(lib, "fork", count), min_n=min_n
    )


SCENARIOS = [
    _row("Value += 1 under get_lock(), 2 procs", value_incr, 200_000, "ops/s"),
    _row("Array item reads, child", array_items, 1_000_000, "items/s"),
    _row("Array slice reads (8 MiB), child", array_slices, 10, "MB/s", min_n=3),
    _row("Value.value read, 1 proc", value_read, 1_000_000, "reads/s"),
]
