"""Side-by-side queue benchmarks: fastmp against multiprocessing, interleaved.

Used by ``python -m fastmp`` (a short demo) and by the queue rows of the full
benchmark runner (``python -m benchmarks.run`` in a source checkout). Each
round runs every scenario once per library, alternating which library goes
first, and reports medians and their ratio.
"""

from __future__ import annotations

import statistics
import sys
import time


def _consume(q, done, n):
    get = q.get
    for _ in range(n):
        get()
    done.put(time.perf_counter())


def _produce(q, go, n, item):
    go.get()
    put = q.put
    for _ in range(n):
        put(item)


def _one_to_one(lib, n, item):
    ctx = lib.get_context("fork")
    q, done = ctx.Queue(), ctx.Queue()
    c = ctx.Process(target=_consume, args=(q, done, n))
    c.start()
    q.put(item)  # warm up: the consumer is running and waiting
    time.sleep(0.05)
    t0 = time.perf_counter()
    put = q.put
    for _ in range(n - 1):
        put(item)
    end = done.get()
    c.join()
    return n / (end - t0)


def _n_to_n(lib, n, item, pairs=2):
    """``pairs`` producers -> ``pairs`` consumers sharing one queue; msg/s overall."""
    ctx = lib.get_context("fork")
    q, done, go = ctx.Queue(), ctx.Queue(), ctx.Queue()
    each = max(1, n // pairs)
    procs = [ctx.Process(target=_consume, args=(q, done, each)) for _ in range(pairs)]
    procs += [ctx.Process(target=_produce, args=(q, go, each, item)) for _ in range(pairs)]
    for p in procs:
        p.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    for _ in range(pairs):
        go.put(None)
    end = max(done.get() for _ in range(pairs))
    for p in procs:
        p.join()
    return pairs * each / (end - t0)


def _two_to_two(lib, n, item):
    return _n_to_n(lib, n, item, 2)


SCENARIOS = {
    # name: (function, messages for the stdlib, item, unit)
    "1->1 small int": (_one_to_one, 200_000, 12345, "msg/s"),
    "1->1 1 KiB bytes": (_one_to_one, 100_000, b"x" * 1024, "msg/s"),
    "1->1 1 MiB bytes": (_one_to_one, 1_000, b"x" * (1 << 20), "MB/s"),
    "2->2 small int": (_two_to_two, 200_000, 12345, "msg/s"),
}


class _Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, total, stream=None, width=30):
        self.total, self.done, self.width = max(1, total), 0, width
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label):
        self.done += 1
        frac = self.done / self.total
        bar = "#" * int(frac * self.width)
        line = f"[{bar:<{self.width}}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run(rounds=5, scale=1.0, scenarios=None, out=print, progress=True):
    import multiprocessing

    import fastmp

    libs = {"multiprocessing": multiprocessing, "fastmp": fastmp}
    names = scenarios or list(SCENARIOS)
    results = {name: {lib: [] for lib in libs} for name in names}
    bar = _Progress(rounds * len(names) * len(libs)) if progress else None
    for r in range(rounds):
        for name in names:
            fn, n, item, _unit = SCENARIOS[name]
            order = list(libs) if r % 2 == 0 else list(reversed(libs))
            for lib in order:
                # fastmp gets more messages so both runs last long enough to time.
                count = max(100, int(n * scale * (5 if lib == "fastmp" else 1)))
                results[name][lib].append(fn(libs[lib], count, item))
                if bar:
                    bar.step(f"round {r + 1}/{rounds}: {name}, {lib}")
    out(
        f"{'scenario':<20} {'multiprocessing':>18} {'fastmp':>18} {'ratio':>8}   (median of {rounds})"
    )
    summary = {}
    for name in names:
        _fn, _n, item, unit = SCENARIOS[name]
        med = {lib: statistics.median(v) for lib, v in results[name].items()}
        factor = (len(item) / 1e6) if unit == "MB/s" else 1.0
        ratio = med["fastmp"] / med["multiprocessing"]
        summary[name] = ratio
        out(
            f"{name:<20} {med['multiprocessing'] * factor:>12,.0f} {unit:<5} "
            f"{med['fastmp'] * factor:>12,.0f} {unit:<5} {ratio:>7.1f}x"
        )
    return summary
