"""fastmp's Pool on a Dask cluster, against Dask's own APIs and a local Pool.

    PYTHONPATH=python python benchmarks/bench_cluster.py [--rounds 3] [--items 100000]
        [--dask-items 2000] [--cpu-tasks 40]

On a LocalCluster of 2 worker processes (1 thread each), in one run, rounds
interleaved, medians reported:

  trivial   f(x) = x over --items ints:
              fastmp Pool(cluster=client).map   (chunks of items, one Dask task each)
              client.map + client.gather        (one Dask task per item)
              client.get_executor().map         (one Dask task per item)
              fastmp Pool(2).map                (local worker processes)
            Dask's two APIs pay about a millisecond of scheduler work per item,
            so they run over --dask-items items and their time for --items is
            extrapolated per item (say --dask-items 100000 to measure it all).
  cpu       --cpu-tasks tasks of about 20 ms of pure-Python work, the same four ways
            (Pool.map with chunksize=1).

"per item" is the elapsed time divided by the number of items: for the trivial
function that is the per-task overhead itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

import fastmp


def trivial(x):
    return x


def cpu_bound(x, n=200_000):
    total = 0
    for i in range(n):
        total += i * i
    return total + x


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dask-items", type=int, default=2_000)
    ap.add_argument("--cpu-tasks", type=int, default=40)
    args = ap.parse_args()

    import distributed

    cluster = distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0"
    )
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(2)
    executor = client.get_executor()
    cluster_pool = fastmp.Pool(cluster=client)
    local_pool = fastmp.Pool(2)
    items = list(range(args.items))
    dask_items = list(range(args.dask_items))
    cpu_items = list(range(args.cpu_tasks))
    # Warm up: functions shipped, workers' imports done.
    cluster_pool.map(trivial, range(10))
    local_pool.map(trivial, range(10))
    client.gather(client.map(trivial, range(10), pure=False))
    list(executor.map(trivial, range(10)))

    ways = {
        "fastmp Pool(cluster=)": (
            lambda xs: cluster_pool.map(trivial, xs),
            lambda xs: cluster_pool.map(cpu_bound, xs, chunksize=1),
        ),
        "client.map": (
            lambda xs: client.gather(client.map(trivial, xs, pure=False)),
            lambda xs: client.gather(client.map(cpu_bound, xs, pure=False)),
        ),
        "client.get_executor()": (
            lambda xs: list(executor.map(trivial, xs)),
            lambda xs: list(executor.map(cpu_bound, xs)),
        ),
        "fastmp Pool(2) local": (
            lambda xs: local_pool.map(trivial, xs),
            lambda xs: local_pool.map(cpu_bound, xs, chunksize=1),
        ),
    }
    dask_ways = {"client.map", "client.get_executor()"}
    trivial_s = {name: [] for name in ways}  # seconds per item
    cpu_s = {name: [] for name in ways}
    serial_s = []  # one cpu task in this process, measured every round
    for r in range(args.rounds):
        dt, _ = _time(lambda: [cpu_bound(x) for x in cpu_items[:4]])
        serial_s.append(dt / 4)
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            run_trivial, run_cpu = ways[name]
            xs = dask_items if name in dask_ways else items
            dt, out = _time(lambda: run_trivial(xs))  # noqa: B023
            assert out == xs
            trivial_s[name].append(dt / len(xs))
            dt, out = _time(lambda: run_cpu(cpu_items))  # noqa: B023
            assert len(out) == len(cpu_items)
            cpu_s[name].append(dt / len(cpu_items))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    per_cpu_task = statistics.median(serial_s)
    print()
    print(
        f"LocalCluster(2 worker processes x 1 thread); trivial: {args.items:,} items "
        f"(Dask APIs: {args.dask_items:,}, extrapolated); cpu: {args.cpu_tasks} tasks of "
        f"{per_cpu_task * 1e3:.0f} ms; medians of {args.rounds} rounds"
    )
    print(
        f"{'':<24}{'trivial: per item':>19}{f'time for {args.items:,}':>20}"
        f"{'cpu: per task':>16}{'overhead/task':>15}"
    )
    med_t = {n: statistics.median(v) for n, v in trivial_s.items()}
    med_c = {n: statistics.median(v) for n, v in cpu_s.items()}
    for name in ways:
        overhead = med_c[name] - per_cpu_task / 2  # two workers in parallel
        mark = " (extrapolated)" if name in dask_ways and args.dask_items < args.items else ""
        print(
            f"{name:<24}{med_t[name] * 1e6:>16.2f} µs{med_t[name] * args.items:>18.3f} s"
            f"{med_c[name] * 1e3:>13.1f} ms{overhead * 1e3:>12.2f} ms{mark}"
        )
    pool = med_t["fastmp Pool(cluster=)"]
    print()
    print(f"Pool(cluster=).map vs client.map:       {med_t['client.map'] / pool:8.1f}x faster")
    print(
        f"Pool(cluster=).map vs get_executor():   "
        f"{med_t['client.get_executor()'] / pool:8.1f}x faster"
    )
    print(
        f"Pool(cluster=).map vs local fastmp Pool: "
        f"{pool / med_t['fastmp Pool(2) local']:7.2f}x the time"
    )
    cluster_pool.terminate()
    local_pool.terminate()
    executor.shutdown()
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
