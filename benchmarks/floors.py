"""Where the time goes in the rows that stay below their targets.

    python -m benchmarks.floors [--rounds N] [--scale F]

For each, fastmp and multiprocessing side by side in one run (medians), and
the floor that no implementation of the same API can beat on this machine:

- ``Pool.map`` of a trivial function over 200,000 ints, 2 workers: the wall
  time, the CPU time of the parent (pickling the chunks, unpickling the
  results) and of the workers (unpickling, calling, pickling). The floor is
  fastmp's total CPU time divided by the number of CPUs the three processes
  share.
- ``Array('d', 1 << 20)[:]``: the time per element against building the same
  list of floats from an ``array.array`` (``tolist()``), which is allocation
  only.
"""

from __future__ import annotations

import argparse
import array
import multiprocessing
import os
import statistics
import time

import fastmp

_TICKS = os.sysconf("SC_CLK_TCK")


def _identity(x):
    return x


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def pool_map(lib, items, maps=20):
    """(wall, parent CPU, workers' CPU) per map, in seconds."""
    with lib.get_context("fork").Pool(2) as pool:
        pool.map(_identity, items[:1000])
        pids = [p.pid for p in pool._pool]
        workers0 = sum(_cpu_seconds(p) for p in pids)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(maps):
            pool.map(_identity, items)
        wall = (time.perf_counter() - t0) / maps
        parent = (time.process_time() - cpu0) / maps
        workers = (sum(_cpu_seconds(p) for p in pids) - workers0) / maps
    return wall, parent, workers


def slice_ns(lib, n=1 << 20, reps=20):
    arr = lib.Array("d", n)
    t0 = time.perf_counter()
    for _ in range(reps):
        arr[:]
    return (time.perf_counter() - t0) / reps / n * 1e9


def tolist_ns(n=1 << 20, reps=20):
    a = array.array("d", bytes(8 * n))
    t0 = time.perf_counter()
    for _ in range(reps):
        a.tolist()
    return (time.perf_counter() - t0) / reps / n * 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the work (tests)")
    args = ap.parse_args(argv)
    libs = (multiprocessing, fastmp)
    items = list(range(max(1000, int(200_000 * args.scale))))
    maps_per_round = max(1, int(20 * args.scale))
    # Always 8 MiB: the stdlib's heap keeps a smaller Array's arena (an fd) for reuse.
    n, reps = 1 << 20, max(1, int(20 * args.scale))
    maps = {lib.__name__: [] for lib in libs}
    slices = {lib.__name__: [] for lib in libs}
    floor = []
    for _ in range(args.rounds):
        for lib in libs:
            maps[lib.__name__].append(pool_map(lib, items, maps_per_round))
            slices[lib.__name__].append(slice_ns(lib, n, reps))
        floor.append(tolist_ns(n, reps))
    ncpu = len(os.sched_getaffinity(0))
    print(f"{ncpu} CPUs, load {os.getloadavg()[0]:.2f}, medians of {args.rounds} rounds\n")
    print(f"Pool(2).map(f, {len(items)} ints)  wall     parent CPU  workers' CPU")
    med = {}
    for name, rows in maps.items():
        med[name] = [statistics.median(r[i] for r in rows) * 1e3 for i in range(3)]
        print(
            f"  {name:26s} {med[name][0]:6.1f} ms  {med[name][1]:6.1f} ms  {med[name][2]:6.1f} ms"
        )
    fm, sm = med["fastmp"], med["multiprocessing"]
    bound = (fm[1] + fm[2]) / min(ncpu, 3)
    print(
        f"  fastmp {sm[0] / fm[0]:.2f}x; its CPU time over {min(ncpu, 3)} CPUs is a floor of "
        f"{bound:.1f} ms, at most {sm[0] / bound:.2f}x of multiprocessing's wall time\n"
    )
    print("Array('d', 1M)[:]            per element")
    for name, rows in slices.items():
        print(f"  {name:26s} {statistics.median(rows):6.1f} ns")
    print(f"  {'array.tolist() (the floor)':26s} {statistics.median(floor):6.1f} ns")


if __name__ == "__main__":
    main()
