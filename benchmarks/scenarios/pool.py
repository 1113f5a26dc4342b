"""Pool and ProcessPoolExecutor rows (2 workers, fork).

multiprocess and billiard run the Pool rows through their Pool; loky runs
map (executor.map with Pool.map's default chunk size), startup and executor
submit; mpire runs apply_async, map 200k and startup (WorkerPool(2)).

  apply_async      trivial task, submitted back to back, then all results read  (tasks/s)
  map 200k         Pool.map of a trivial function over a list of 200_000 ints   (items/s)
  map range(200k)  the same over range(200_000) (fastmp sends sub-ranges)        (items/s)
  startup          Pool(2) created -> first apply() result                        (ms, lower is better)
  executor submit  ProcessPoolExecutor.submit of a trivial task, then results     (tasks/s)
"""

from __future__ import annotations

import concurrent.futures
import time

import fastmp.futures

from . import Scenario


def trivial(x):
    return x


def _apply_async(lib, n):
    with lib.get_context("fork").Pool(2) as pool:
        pool.apply(trivial, (0,))  # workers up
        t0 = time.perf_counter()
        results = [pool.apply_async(trivial, (i,)) for i in range(n)]
        for r in results:
            r.get()
        return n / (time.perf_counter() - t0)


def _map(lib, n, items=None):
    items = list(range(200_000)) if items is None else items
    with lib.get_context("fork").Pool(2) as pool:
        pool.apply(trivial, (0,))
        t0 = time.perf_counter()
        out = pool.map(trivial, items)
        dt = time.perf_counter() - t0
        assert len(out) == len(items)
        return len(items) / dt


def _map_range(lib, n):
    return _map(lib, n, range(200_000))


def _startup(lib, n):
    t0 = time.perf_counter()
    pool = lib.get_context("fork").Pool(2)
    pool.apply(trivial, (0,))
    dt = time.perf_counter() - t0
    pool.terminate()
    pool.join()
    return dt * 1e3


def _executor(lib, n):
    ctx = lib.get_context("fork")
    cls = (
        fastmp.futures.ProcessPoolExecutor
        if lib.name == "fastmp"
        else concurrent.futures.ProcessPoolExecutor
    )
    with cls(2, mp_context=ctx) as ex:
        ex.submit(trivial, 0).result()
        t0 = time.perf_counter()
        fs = [ex.submit(trivial, i) for i in range(n)]
        for f in fs:
            f.result()
        return n / (time.perf_counter() - t0)


# --- peers with their own API ---


def _loky_executor(lib, n):
    with lib.ProcessPoolExecutor(2) as ex:
        ex.submit(trivial, 0).result()
        t0 = time.perf_counter()
        fs = [ex.submit(trivial, i) for i in range(n)]
        for f in fs:
            f.result()
        return n / (time.perf_counter() - t0)


def _loky_map(lib, n):
    items = list(range(200_000))
    with lib.ProcessPoolExecutor(2) as ex:
        ex.submit(trivial, 0).result()
        t0 = time.perf_counter()
        # Pool.map's own default chunk size: len / (4 * workers).
        out = list(ex.map(trivial, items, chunksize=len(items) // 8))
        dt = time.perf_counter() - t0
        assert len(out) == len(items)
        return len(items) / dt


def _loky_startup(lib, n):
    t0 = time.perf_counter()
    ex = lib.ProcessPoolExecutor(2)
    ex.submit(trivial, 0).result()
    dt = time.perf_counter() - t0
    ex.shutdown(wait=True)
    return dt * 1e3


def _mpire_apply_async(lib, n):
    with lib.WorkerPool(2, start_method="fork") as pool:
        pool.apply(trivial, (0,))
        t0 = time.perf_counter()
        results = [pool.apply_async(trivial, (i,)) for i in range(n)]
        for r in results:
            r.get()
        return n / (time.perf_counter() - t0)


def _mpire_map(lib, n, items=None):
    items = list(range(200_000)) if items is None else items
    # keep_alive: the workers of the warm-up map serve the timed one (as a Pool's do).
    with lib.WorkerPool(2, start_method="fork", keep_alive=True) as pool:
        pool.map(trivial, [0, 1])  # (a map after apply() fails in mpire 2.10)
        t0 = time.perf_counter()
        out = pool.map(trivial, items, iterable_len=len(items))
        dt = time.perf_counter() - t0
        assert len(out) == len(items)
        return len(items) / dt


def _mpire_startup(lib, n):
    t0 = time.perf_counter()
    pool = lib.WorkerPool(2, start_method="fork")
    pool.apply(trivial, (0,))
    dt = time.perf_counter() - t0
    pool.terminate()
    return dt * 1e3


SCENARIOS = [
    Scenario(
        "pool",
        "apply_async",
        "tasks/s",
        True,
        20_000,
        _apply_async,
        peers={"mpire": _mpire_apply_async},
        fast=4,
        min_n=100,
    ),
    Scenario(
        "pool", "map 200k", "items/s", True, 0, _map, peers={"loky": _loky_map, "mpire": _mpire_map}
    ),
    Scenario(
        "pool",
        "map range(200k)",
        "items/s",
        True,
        0,
        _map_range,  # (mpire only in "map 200k": its map of small tasks is slow, 10 s here)
    ),
    Scenario(
        "pool",
        "startup",
        "ms",
        False,
        0,
        _startup,
        peers={"loky": _loky_startup, "mpire": _mpire_startup},
    ),
    Scenario(
        "pool",
        "executor submit",
        "tasks/s",
        True,
        10_000,
        _executor,
        peers={"loky": _loky_executor},
        fast=4,
        min_n=100,
        mp_peers=False,  # multiprocess/billiard have no executor of their own
    ),
]
