"""Synchronisation primitives: time per operation (lower is better), fork.

Uncontended Lock/RLock/Semaphore in one process; Event, Barrier(2) and
Condition as round trips between the parent and one child.
"""

from __future__ import annotations

import time

from . import Scenario


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


def _row(name, fn, n, scale, unit):
    return Scenario(
        "sync", name, unit, False, n, lambda lib, count: fn(lib, count) * scale, min_n=10
    )


SCENARIOS = [
    _row("Lock acquire+release", _lock_pair, 1_000_000, 1e9, "ns"),
    _row("with Lock", _lock_with, 1_000_000, 1e9, "ns"),
    _row("RLock acquire+release", _rlock_pair, 1_000_000, 1e9, "ns"),
    _row("Semaphore acq+rel", _sem_pair, 500_000, 1e9, "ns"),
    _row("Event ping-pong RTT", _event_ping_pong, 20_000, 1e6, "us"),
    _row("Barrier(2) cycle", _barrier_cycle, 5_000, 1e6, "us"),
    _row("Condition ping-pong", _condition_ping_pong, 5_000, 1e6, "us"),
]
