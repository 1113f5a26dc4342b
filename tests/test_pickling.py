"""The fast path's pickler: a plain dict dispatch table that follows registrations."""

from __future__ import annotations

import copyreg
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest

import fastmp
from fastmp import _fastmp, reduction


class Plain:
    def __init__(self, x):
        self.x = x


class Registered:
    def __init__(self, x):
        self.x = x


def _as_tagged(tag):
    return lambda obj: (_rebuild, (tag, obj.x))


def _rebuild(tag, x):
    return (tag, x)


def _through_queue(obj):
    q = fastmp.Queue()
    try:
        q.put(obj)
        return q.get(timeout=10)
    finally:
        q.close()
        q.join_thread()


def _through_pipe(obj):
    a, b = fastmp.Pipe()
    try:
        a.send(obj)
        return b.recv()
    finally:
        a.close()
        b.close()


@pytest.fixture
def unregister():
    yield
    ForkingPickler._extra_reducers.pop(Registered, None)
    copyreg.dispatch_table.pop(Registered, None)


def test_dispatch_table_is_a_plain_dict():
    # A ChainMap made the C pickler call a Python __getitem__ for every object.
    assert type(reduction._dispatch_table) is dict
    assert type(reduction._pickler.dispatch_table) is dict


@pytest.mark.parametrize(
    "send", [_through_queue, _through_pipe, lambda o: pickle.loads(reduction.dumps(o))]
)
def test_registrations_after_import_are_honoured(unregister, send):
    plain = send([Registered(1)])
    assert isinstance(plain[0], Registered)  # nothing registered yet

    copyreg.pickle(Registered, _as_tagged("copyreg"))
    assert send([Registered(2)]) == [("copyreg", 2)]

    # ForkingPickler's reducers win over copyreg's, as in multiprocessing.
    ForkingPickler.register(Registered, _as_tagged("forking"))
    assert send([Registered(3)]) == [("forking", 3)]

    # Replacing an entry keeps both tables' sizes: still seen.
    reduction.register(Registered, _as_tagged("replaced"))
    assert send([Registered(4)]) == [("replaced", 4)]
    ForkingPickler._extra_reducers[Registered] = _as_tagged("assigned")
    assert send([Registered(5)]) == [("assigned", 5)]

    # Removals too: back to copyreg's, then to the default reduction.
    del ForkingPickler._extra_reducers[Registered]
    assert send([Registered(6)]) == [("copyreg", 6)]
    del copyreg.dispatch_table[Registered]
    back = send([Registered(7)])
    assert isinstance(back[0], Registered) and back[0].x == 7


def test_table_matches_its_sources_after_sync(unregister):
    copyreg.pickle(Registered, _as_tagged("copyreg"))
    table = reduction._current_dispatch_table()
    assert table[Registered] is copyreg.dispatch_table[Registered]
    expected = dict(copyreg.dispatch_table)
    expected.update(ForkingPickler._extra_reducers)
    assert table == expected


def test_plain_objects_round_trip_through_the_fast_pickler():
    objs = [Plain(i) for i in range(100)]
    assert _fastmp._encode_tag(objs) in (1, 9)  # pickled (not a raw payload)
    assert [o.x for o in _through_queue(objs)] == list(range(100))
