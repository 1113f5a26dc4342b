"""Synchronisation primitives: fastmp against multiprocessing, side by side.

    PYTHONPATH=python python benchmarks/bench_sync.py [--rounds 5] [--scale 1.0] [--busy 2]

--busy N keeps N CPU-bound processes running during the measurement (a
fully busy machine: N = the number of cores).

Each round runs every scenario once per library, alternating which library
goes first; the table shows medians (lower is better: time per operation) and
the ratio fastmp / multiprocessing (< 1 means fastmp is faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _uncontended(ctx_factory, n):
    lock = ctx_factory()
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return (time.perf_counter() - t0) / n


def _lock_pair(lib, n):
    return _uncontended(lib.get_context("fork").Lock, n)


def _lock_with(lib, n):
    lock = lib.get_context("fork").Lock()
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return (time.perf_counter() - t0) / n


def _rlock_pair(lib, n):
    return _uncontended(lib.get_context("fork").RLock, n)


def _sem_pair(lib, n):
    return _uncontended(lib.get_context("fork").Semaphore, n)


def _pong(a, b, n):
    for _ in range(n):
        a.wait()
        a.clear()
        b.set()


def _event_ping_pong(lib, n):
    ctx = lib.get_context("fork")
    a, b = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_pong, args=(a, b, n + 10))
    p.start()
    for _ in range(10):  # warm up
        a.set()
        b.wait()
        b.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        a.set()
        b.wait()
        b.clear()
    dt = time.perf_counter() - t0
    p.join()
    return dt / n


def _barrier_party(barrier, n):
    for _ in range(n):
        barrier.wait()


def _barrier_cycle(lib, n):
    ctx = lib.get_context("fork")
    barrier = ctx.Barrier(2)
    p = ctx.Process(target=_barrier_party, args=(barrier, n + 5))
    p.start()
    for _ in range(5):
        barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        barrier.wait()
    dt = time.perf_counter() - t0
    p.join()
    return dt / n


def _cond_pong(cond, turn, n):
    for _ in range(n):
        with cond:
            cond.wait_for(lambda: turn.value == 1)
            turn.value = 0
            cond.notify()


def _condition_ping_pong(lib, n):
    ctx = lib.get_context("fork")
    cond = ctx.Condition(ctx.Lock())
    turn = ctx.Value("i", 0, lock=False)
    p = ctx.Process(target=_cond_pong, args=(cond, turn, n))
    p.start()
    t0 = time.perf_counter()
    for _ in range(n):
        with cond:
            turn.value = 1
            cond.notify()
            cond.wait_for(lambda: turn.value == 0)
    dt = time.perf_counter() - t0
    p.join()
    return dt / n


SCENARIOS = {
    # name: (function, operations per run, unit scale, unit)
    "Lock acquire+release": (_lock_pair, 1_000_000, 1e9, "ns"),
    "with Lock": (_lock_with, 1_000_000, 1e9, "ns"),
    "RLock acquire+release": (_rlock_pair, 1_000_000, 1e9, "ns"),
    "Semaphore acq+rel": (_sem_pair, 500_000, 1e9, "ns"),
    "Event ping-pong RTT": (_event_ping_pong, 20_000, 1e6, "us"),
    "Barrier(2) cycle": (_barrier_cycle, 5_000, 1e6, "us"),
    "Condition ping-pong": (_condition_ping_pong, 5_000, 1e6, "us"),
}


def run(rounds=5, scale=1.0, names=None, out=print):
    import multiprocessing

    import fastmp

    libs = {"multiprocessing": multiprocessing, "fastmp": fastmp}
    names = names or list(SCENARIOS)
    results = {name: {lib: [] for lib in libs} for name in names}
    for r in range(rounds):
        for name in names:
            fn, n, _s, _u = SCENARIOS[name]
            order = list(libs) if r % 2 == 0 else list(reversed(libs))
            for lib in order:
                results[name][lib].append(fn(libs[lib], max(10, int(n * scale))))
    out(
        f"{'scenario':<24} {'multiprocessing':>16} {'fastmp':>12} {'fastmp/mp':>10}   (median of {rounds})"
    )
    summary = {}
    for name in names:
        _fn, _n, s, unit = SCENARIOS[name]
        med = {lib: statistics.median(v) for lib, v in results[name].items()}
        ratio = med["fastmp"] / med["multiprocessing"]
        summary[name] = ratio
        out(
            f"{name:<24} {med['multiprocessing'] * s:>12.2f} {unit:<3} {med['fastmp'] * s:>8.2f} {unit:<3}"
            f" {ratio:>9.2f}x"
        )
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="keep N CPU-bound processes running meanwhile",
    )
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="run only these scenarios")
    args = ap.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    try:
        if busy:
            print(f"with {len(busy)} CPU-bound processes running")
        run(args.rounds, args.scale, args.only)
    finally:
        for b in busy:
            b.kill()
            b.wait()
