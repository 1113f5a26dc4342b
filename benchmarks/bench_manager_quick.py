"""Manager shared objects: fastmp against multiprocessing, side by side (quick).

    PYTHONPATH=python python benchmarks/bench_manager_quick.py [--rounds 5] [--n 5000]

Each scenario runs in a child process (as a Pool worker or a Process would
use a proxy). Each round starts one manager per library, alternating which
library goes first; the table shows medians of operations per second and the
ratio fastmp / multiprocessing. fastmp runs 10x as many operations per
measurement, so both take comparable wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import fastmp


def _dict_set(d, n):
    t = time.perf_counter()
    for i in range(n):
        d["k"] = i
    return time.perf_counter() - t


def _dict_set_new_keys(d, n):
    t = time.perf_counter()
    for i in range(n):
        d[i] = "v" * (i % 7)
    return time.perf_counter() - t


def _dict_get(d, n):
    d["k"] = 1
    t = time.perf_counter()
    for _ in range(n):
        d["k"]  # noqa: B018
    return time.perf_counter() - t


def _list_append(lst, n):
    t = time.perf_counter()
    for i in range(n):
        lst.append(i)
    return time.perf_counter() - t


def _list_index(lst, n):
    lst.append(1)
    t = time.perf_counter()
    for _ in range(n):
        lst[0]  # noqa: B018
    return time.perf_counter() - t


def _ns_read(ns, n):
    ns.x = 1
    t = time.perf_counter()
    for _ in range(n):
        ns.x  # noqa: B018
    return time.perf_counter() - t


def _ns_write(ns, n):
    t = time.perf_counter()
    for i in range(n):
        ns.x = i
    return time.perf_counter() - t


def _value_locked(value_and_lock, n):
    v, lock = value_and_lock
    t = time.perf_counter()
    for _ in range(n):
        with lock:
            v.value += 1
    return time.perf_counter() - t


def _child(fn, obj, n, q):
    q.put(fn(obj, n))


def _in_children(lib, fn, obj, n, writers):
    ctx = lib.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=_child, args=(fn, obj, n, q)) for _ in range(writers)]
    for p in ps:
        p.start()
    times = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return n * writers / max(times)


CASES = [
    ("dict set (child)", "dict", _dict_set, 1),
    ("dict set, new keys (child)", "dict", _dict_set_new_keys, 1),
    ("dict get (child)", "dict", _dict_get, 1),
    ("list append (child)", "list", _list_append, 1),
    ("list index (child)", "list", _list_index, 1),
    ("Namespace read (child)", "Namespace", _ns_read, 1),
    ("Namespace write (child)", "Namespace", _ns_write, 1),
    ("Value += 1 under manager Lock", "value+lock", _value_locked, 1),
    ("dict set, 2 writers at once", "dict", _dict_set, 2),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=5000, help="operations per stdlib measurement")
    args = ap.parse_args()
    res = {label: {"multiprocessing": [], "fastmp": []} for label, *_ in CASES}
    for r in range(args.rounds):
        libs = [multiprocessing, fastmp] if r % 2 == 0 else [fastmp, multiprocessing]
        for lib in libs:
            name = lib.__name__
            n = args.n * (10 if lib is fastmp else 1)
            with lib.get_context("fork").Manager() as m:
                for label, kind, fn, writers in CASES:
                    obj = (
                        (m.Value("i", 0), m.Lock()) if kind == "value+lock" else getattr(m, kind)()
                    )
                    res[label][name].append(_in_children(lib, fn, obj, n, writers))
    print(f"{'scenario':32s} {'multiprocessing':>16s} {'fastmp':>14s} {'ratio':>7s}")
    for label, *_ in CASES:
        a = statistics.median(res[label]["multiprocessing"])
        b = statistics.median(res[label]["fastmp"])
        print(f"{label:32s} {a:12,.0f} op/s {b:10,.0f} op/s {b / a:6.1f}x")


if __name__ == "__main__":
    main()
