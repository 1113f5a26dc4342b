"""Pickling row: what a queue put pays to serialise a list of 1,000 plain objects.

  multiprocessing  ForkingPickler.dumps (what its Queue and Connection call per message)
  fastmp           the fast path's persistent pickler (what its Queue and Pipe call),
                   reached through fastmp._fastmp._encode_tag
  pickle.dumps     the plain C pickler, for reference (the target: no slower than this)
  multiprocess, billiard: their own ForkingPickler.dumps (dill for multiprocess)
CPU time of this process per list (us, lower is better): the row compares
picklers, and CPU time is what a loaded machine perturbs least.
"""

from __future__ import annotations

import importlib
import pickle
import time

from . import Scenario


class Plain:
    def __init__(self, i):
        self.a = i
        self.b = "abc"
        self.c = 1.5


def _objects():
    return [Plain(i) for i in range(1000)]


def _time(fn, n):
    objs = _objects()
    fn(objs)  # warm up
    t0 = time.process_time()
    for _ in range(n):
        fn(objs)
    return (time.process_time() - t0) / n * 1e6


def pickle_list(lib, n):
    if lib.name == "fastmp":
        from fastmp import _fastmp

        return _time(_fastmp._encode_tag, n)
    reduction = importlib.import_module(lib.module.__name__ + ".reduction")
    return _time(reduction.ForkingPickler.dumps, n)


def pickle_dumps(lib, n):
    return _time(lambda o: pickle.dumps(o, 5), n)


SCENARIOS = [
    Scenario(
        "pickling",
        "list of 1,000 plain objects",
        "us",
        False,
        500,
        pickle_list,
        peers={"pickle.dumps": pickle_dumps},
        min_n=20,
    )
]
