"""Pipe rows and the pipe throughput curve.

Rows (fork):
  round trip, small object  parent send(int) -> child echoes -> parent recv()
  one-way 1 KiB bytes       parent send(bytes) x n, child recv() x n
  one-way 1 MiB bytes       the same with 1 MiB payloads (MB/s)
Curve: one-way MB/s against message size (8 B .. 64 MiB).
"""

from __future__ import annotations

import time

from . import Curve, Scenario
from .queue import SIZES_FULL, SIZES_QUICK


def _echo(conn):
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    conn.close()


def _sink(conn, n):
    recv = conn.recv
    conn.send("ready")
    for _ in range(n):
        recv()
    conn.send(time.perf_counter())
    conn.close()


def round_trip(lib, method, n, _item):
    ctx = lib.get_context(method)
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    send, recv = a.send, a.recv
    for i in range(200):  # warm up
        send(i)
        recv()
    t0 = time.perf_counter()
    for i in range(n):
        send(i)
        recv()
    dt = time.perf_counter() - t0
    send(None)
    p.join()
    a.close()
    return dt / n * 1e6  # microseconds per round trip


def one_way(lib, method, n, item):
    ctx = lib.get_context(method)
    a, b = ctx.Pipe()
    p = ctx.Process(target=_sink, args=(b, n))
    p.start()
    b.close()
    assert a.recv() == "ready"
    send = a.send
    t0 = time.perf_counter()
    for _ in range(n):
        send(item)
    end = a.recv()
    p.join()
    a.close()
    return n / (end - t0)  # messages per second


def _row(name, fn, n, item, unit, higher):
    def run(lib, count):
        value = fn(lib, "fork", count, item)
        return value * len(item) / 1e6 if unit == "MB/s" else value

    return Scenario("pipe", name, unit, higher, n, run, fast=3, min_n=50)


SCENARIOS = [
    _row("round trip, small object", round_trip, 20_000, None, "us", False),
    _row("one-way 1 KiB bytes", one_way, 50_000, b"x" * 1024, "msg/s", True),
    _row("one-way 1 MiB bytes", one_way, 500, b"x" * (1 << 20), "MB/s", True),
]


def pipe_by_size(lib, size, scale):
    n = int(max(3, min(100_000 * scale, 256 * (1 << 20) * scale / size)))
    return one_way(lib, "fork", n, b"x" * size) * size / 1e6


CURVES = [
    Curve(
        "pipe-size",
        "Pipe throughput against message size (one way, bytes)",
        "message size (bytes)",
        "MB/s",
        SIZES_FULL,
        SIZES_QUICK,
        pipe_by_size,
    )
]
