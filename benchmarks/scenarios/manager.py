"""Manager rows over the public API: ``ctx.Manager()`` of each library (fork).

Each row starts one manager, hands its proxies to child processes, and times
the children's loops (between a start signal and the last child's end):
  dict set+get, child        d["k"] = i; d["k"]                     (ops/s, 2 per loop)
  list append+index, child   l.append(i) n times, then l[i] n times  (ops/s)
  Namespace write+read       ns.x = i; ns.x                          (ops/s, 2 per loop)
  Value += 1 under Lock      with lock: v.value += 1 (manager Value and Lock)
  dict, two writers          two children each d[k] = i             (ops/s overall)
UltraDict (a shared-memory dict) runs the two dict rows, with its shared lock
for the two writers. Manager start-up is not in the timed part.
"""

from __future__ import annotations

import time

from . import Scenario


def _timed_children(ctx, target, args_for, procs):
    """Starts `procs` children target(*args_for(i), go, out); returns (start, last end)."""
    go, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=target, args=(*args_for(i), go, out)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.2)  # children attached and waiting
    t0 = time.perf_counter()
    go.set()
    end = max(out.get() for _ in ps)
    for p in ps:
        p.join()
    return end - t0


def _dict_loop(d, key, n, go, out):
    go.wait()
    for i in range(n):
        d[key] = i
        d[key]  # noqa: B018
    out.put(time.perf_counter())


def _dict_write(d, key, n, go, out):
    go.wait()
    for i in range(n):
        d[key] = i
    out.put(time.perf_counter())


def _list_loop(lst, n, go, out):
    go.wait()
    for i in range(n):
        lst.append(i)
    for i in range(n):
        lst[i]  # noqa: B018
    out.put(time.perf_counter())


def _ns_loop(ns, n, go, out):
    go.wait()
    for i in range(n):
        ns.x = i
        ns.x  # noqa: B018
    out.put(time.perf_counter())


def _value_loop(v, lock, n, go, out):
    go.wait()
    for _ in range(n):
        with lock:
            v.value += 1
    out.put(time.perf_counter())


def dict_get_set(lib, n):
    ctx = lib.get_context("fork")
    with ctx.Manager() as m:
        d = m.dict()
        dt = _timed_children(ctx, _dict_loop, lambda i: (d, "k", n), 1)
        assert d["k"] == n - 1
    return 2 * n / dt


def list_append_index(lib, n):
    ctx = lib.get_context("fork")
    with ctx.Manager() as m:
        lst = m.list()
        dt = _timed_children(ctx, _list_loop, lambda i: (lst, n), 1)
        assert len(lst) == n
    return 2 * n / dt


def namespace_rw(lib, n):
    ctx = lib.get_context("fork")
    with ctx.Manager() as m:
        ns = m.Namespace(x=0)
        dt = _timed_children(ctx, _ns_loop, lambda i: (ns, n), 1)
        assert ns.x == n - 1
    return 2 * n / dt


def value_under_lock(lib, n):
    ctx = lib.get_context("fork")
    with ctx.Manager() as m:
        v, lock = m.Value("i", 0), m.Lock()
        dt = _timed_children(ctx, _value_loop, lambda i: (v, lock, n), 1)
        assert v.value == n
    return n / dt


def dict_two_writers(lib, n):
    ctx = lib.get_context("fork")
    with ctx.Manager() as m:
        d = m.dict()
        dt = _timed_children(ctx, _dict_write, lambda i: (d, f"k{i}", n), 2)
        assert d["k0"] == d["k1"] == n - 1
    return 2 * n / dt


# --- UltraDict: a dict in shared memory, opened by name in the children ---


def _ultra_loop(name, key, n, write_only, go, out):
    from UltraDict import UltraDict

    d = UltraDict(name=name, create=False)
    go.wait()
    if write_only:
        for i in range(n):
            d[key] = i
    else:
        for i in range(n):
            d[key] = i
            d[key]  # noqa: B018
    out.put(time.perf_counter())
    d.close()


def _ultra(lib, n, procs):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    d = lib.UltraDict(shared_lock=procs > 1, auto_unlink=False)
    try:
        dt = _timed_children(ctx, _ultra_loop, lambda i: (d.name, f"k{i}", n, procs > 1), procs)
        assert all(d[f"k{i}"] == n - 1 for i in range(procs))
    finally:
        d.unlink()
    return 2 * n / dt


SCENARIOS = [
    Scenario(
        "manager",
        "dict set+get, child",
        "ops/s",
        True,
        20_000,
        dict_get_set,
        peers={"UltraDict": lambda lib, n: _ultra(lib, n, 1)},
        fast=3,
        min_n=100,
    ),
    Scenario(
        "manager",
        "list append+index, child",
        "ops/s",
        True,
        20_000,
        list_append_index,
        fast=3,
        min_n=100,
    ),
    Scenario(
        "manager",
        "Namespace write+read, child",
        "ops/s",
        True,
        20_000,
        namespace_rw,
        fast=3,
        min_n=100,
    ),
    Scenario(
        "manager",
        "Value += 1 under manager Lock",
        "ops/s",
        True,
        10_000,
        value_under_lock,
        fast=3,
        min_n=100,
    ),
    Scenario(
        "manager",
        "dict, two writers",
        "ops/s",
        True,
        20_000,
        dict_two_writers,
        peers={"UltraDict": lambda lib, n: _ultra(lib, n, 2)},
        fast=3,
        min_n=100,
    ),
]
