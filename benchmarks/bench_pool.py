"""Pool and ProcessPoolExecutor: fastmp against the stdlib, side by side.

    PYTHONPATH=python python benchmarks/bench_pool.py [--rounds 5] [--scale 1.0]

Each round runs every scenario once per library (alternating which goes
first); the table shows medians over the rounds and fastmp's ratio.
Scenarios (2 workers, fork):
  apply_async      trivial task, submitted back to back, then all results read  (tasks/s)
  map 200k         Pool.map of a trivial function over a list of 200_000 ints   (items/s)
  map range(200k)  the same over range(200_000) (fastmp sends sub-ranges)        (items/s)
  startup          Pool(2) created -> first apply() result                        (ms, lower is better)
  executor submit  ProcessPoolExecutor.submit of a trivial task, then results     (tasks/s)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import time

import fastmp
import fastmp.futures


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
        if lib is fastmp
        else concurrent.futures.ProcessPoolExecutor
    )
    with cls(2, mp_context=ctx) as ex:
        ex.submit(trivial, 0).result()
        t0 = time.perf_counter()
        fs = [ex.submit(trivial, i) for i in range(n)]
        for f in fs:
            f.result()
        return n / (time.perf_counter() - t0)


SCENARIOS = {
    # name: (function, task count for the stdlib, unit, higher is better)
    "apply_async": (_apply_async, 20_000, "tasks/s", True),
    "map 200k": (_map, 0, "items/s", True),
    "map range(200k)": (_map_range, 0, "items/s", True),
    "startup": (_startup, 0, "ms", False),
    "executor submit": (_executor, 10_000, "tasks/s", True),
}


def run(rounds=5, scale=1.0, only=None, out=print):
    libs = {"multiprocessing": multiprocessing, "fastmp": fastmp}
    scenarios = {k: v for k, v in SCENARIOS.items() if not only or k in only}
    results = {name: {lib: [] for lib in libs} for name in scenarios}
    for r in range(rounds):
        for name, (fn, n, _unit, _hib) in scenarios.items():
            order = list(libs) if r % 2 == 0 else list(reversed(libs))
            for lib in order:
                # fastmp gets more tasks so both runs last long enough to time.
                count = max(100, int(n * scale * (4 if lib == "fastmp" else 1)))
                results[name][lib].append(fn(libs[lib], count))
    out(
        f"{'scenario':<17} {'multiprocessing':>20} {'fastmp':>20} {'fastmp gain':>12}   (median of {rounds})"
    )
    summary = {}
    for name, (_fn, _n, unit, higher_is_better) in scenarios.items():
        med = {lib: statistics.median(v) for lib, v in results[name].items()}
        ratio = med["fastmp"] / med["multiprocessing"]
        if not higher_is_better:
            ratio = 1 / ratio
        summary[name] = ratio
        out(
            f"{name:<17} {med['multiprocessing']:>12,.1f} {unit:<7} {med['fastmp']:>12,.1f} {unit:<7} {ratio:>11.2f}x"
        )
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    args = ap.parse_args()
    run(args.rounds, args.scale, args.only)
