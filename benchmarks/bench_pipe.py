"""Pipe benchmarks: fastmp against multiprocessing, side by side, interleaved.

    PYTHONPATH=python python benchmarks/bench_pipe.py [--rounds 5] [--scale 1.0] [--method fork]

Scenarios (each round runs every scenario once per library, alternating which
library goes first; the table shows medians and the speed-up):
  round trip, small object  parent send(int) -> child echoes -> parent recv()
  one-way 1 KiB bytes       parent send(bytes) x n, child recv() x n
  one-way 1 MiB bytes       the same with 1 MiB payloads (MB/s)
"""

from __future__ import annotations

import argparse
import statistics
import time


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


SCENARIOS = {
    # name: (function, count for the stdlib, item, unit, lower_is_better)
    "round trip, small object": (round_trip, 20_000, None, "us", True),
    "one-way 1 KiB bytes": (one_way, 50_000, b"x" * 1024, "msg/s", False),
    "one-way 1 MiB bytes": (one_way, 500, b"x" * (1 << 20), "MB/s", False),
}


def run(rounds=5, scale=1.0, method="fork", out=print):
    import multiprocessing

    import fastmp

    libs = {"multiprocessing": multiprocessing, "fastmp": fastmp}
    results = {name: {lib: [] for lib in libs} for name in SCENARIOS}
    for r in range(rounds):
        for name, (fn, n, item, _unit, _lower) in SCENARIOS.items():
            order = list(libs) if r % 2 == 0 else list(reversed(libs))
            for lib in order:
                # fastmp gets more messages so both runs last long enough to time.
                count = max(50, int(n * scale * (3 if lib == "fastmp" else 1)))
                results[name][lib].append(fn(libs[lib], method, count, item))
    out(f"Pipe, start method {method}, median of {rounds} interleaved rounds")
    out(f"{'scenario':<26} {'multiprocessing':>18} {'fastmp':>18} {'speed-up':>9}")
    summary = {}
    for name, (_fn, _n, item, unit, lower) in SCENARIOS.items():
        med = {lib: statistics.median(v) for lib, v in results[name].items()}
        if lower:
            ratio = med["multiprocessing"] / med["fastmp"]
            shown = dict(med)
        else:
            ratio = med["fastmp"] / med["multiprocessing"]
            factor = len(item) / 1e6 if unit == "MB/s" else 1.0
            shown = {k: v * factor for k, v in med.items()}
        summary[name] = ratio
        out(
            f"{name:<26} {shown['multiprocessing']:>12,.2f} {unit:<5} "
            f"{shown['fastmp']:>12,.2f} {unit:<5} {ratio:>8.1f}x"
        )
    return summary


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--method", default="fork", choices=["fork", "spawn", "forkserver"])
    args = ap.parse_args()
    run(args.rounds, args.scale, args.method)


if __name__ == "__main__":
    main()
