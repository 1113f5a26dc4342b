"""Queue rows and curves (the scenarios of ``python -m fastmp``, plus numpy and peers).

Rows, 1 producer -> 1 consumer unless said (fork):
  1->1 small int, 1 KiB bytes, 1 MiB bytes; 2->2 small int (fastmp._bench);
  1->1 numpy float64 array of 1 MiB (protocol-5 out-of-band buffers in fastmp).
faster-fifo runs every row (its Queue with multiprocessing's Process).
Curves: MB/s against message size (8 B .. 64 MiB); msg/s against the number
of producers = consumers (1 .. 4).
"""

from __future__ import annotations

from fastmp._bench import _n_to_n, _one_to_one

from . import Curve, Scenario

KiB, MiB = 1 << 10, 1 << 20


def _row(name, n, item, size=0, unit="msg/s", pairs=0):
    def run(lib, count):
        if pairs:
            return _n_to_n(lib, count, item(), pairs)
        value = _one_to_one(lib, count, item())
        return value * size / 1e6 if unit == "MB/s" else value

    return Scenario(
        "queue",
        name,
        unit,
        True,
        n,
        run,
        peers={"faster-fifo": run},
        fast=5,
        min_n=100 if unit != "MB/s" else 20,
        item_bytes=size,
    )


def _numpy_array():
    import numpy as np

    return np.ones(MiB // 8)


SCENARIOS = [
    _row("1->1 small int", 200_000, lambda: 12345),
    _row("1->1 1 KiB bytes", 100_000, lambda: b"x" * KiB, KiB),
    _row("1->1 1 MiB bytes", 1_000, lambda: b"x" * MiB, MiB, "MB/s"),
    _row("2->2 small int", 200_000, lambda: 12345, pairs=2),
    _row("1->1 numpy 1 MiB array", 1_000, _numpy_array, MiB, "MB/s"),
]


def _size_count(size, scale):
    # Enough bytes to time (256 MiB at scale 1), at least 3 and at most 100k messages.
    return int(max(3, min(100_000 * scale, 256 * MiB * scale / size)))


def queue_by_size(lib, size, scale):
    n = _size_count(size, scale)
    return _one_to_one(lib, n, b"x" * size) * size / 1e6


def queue_by_pairs(lib, pairs, scale):
    return _n_to_n(lib, max(200, int(100_000 * scale)), 12345, pairs)


SIZES_FULL = [8, 64, 512, 4 * KiB, 32 * KiB, 256 * KiB, 2 * MiB, 16 * MiB, 64 * MiB]
SIZES_QUICK = [8, 512, 32 * KiB, 2 * MiB, 64 * MiB]

CURVES = [
    Curve(
        "queue-size",
        "Queue throughput against message size (1 -> 1, bytes)",
        "message size (bytes)",
        "MB/s",
        SIZES_FULL,
        SIZES_QUICK,
        queue_by_size,
        peers={"faster-fifo": queue_by_size},
        item_bytes=lambda x: x,
    ),
    Curve(
        "queue-pairs",
        "Queue throughput against producers = consumers (small ints)",
        "producers = consumers",
        "msg/s",
        [1, 2, 3, 4],
        [1, 2, 4],
        queue_by_pairs,
        peers={"faster-fifo": queue_by_pairs},
        x_log=False,
    ),
]
