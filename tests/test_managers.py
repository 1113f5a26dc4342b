"""Manager parity: each body runs against multiprocessing and fastmp, fork and spawn.

One manager per context serves a whole module (starting one costs most of a
second under spawn); every test makes its own objects on it.
"""

from __future__ import annotations

import array
import gc
import importlib
import multiprocessing.managers
import queue
import time

import pytest

import fastmp
from conftest import PARITY
from fastmp import managers as fmanagers

# --- process targets (module level, for spawn) ---


def _child_writes(d, lst, ns, v, a):
    d["child"] = [1, 2]
    d[1] = "one"
    lst.append("from child")
    lst[0] = "changed"
    ns.child = 42
    v.value += 10
    a[1] = 7


def _locked_increments(lock, v, n):
    for _ in range(n):
        with lock:
            v.value += 1


def _pool_task(d, lst, i):
    d[i] = i * i
    lst.append(i)
    return d  # a proxy as a result


def _queue_user(q, out):
    out.put(q.get(timeout=10) * 2)


def _sync_child(lock, rlock, sem, ev, cond, barrier, jq):
    with lock:
        pass
    with rlock:
        with rlock:
            pass
    sem.acquire()
    sem.release()
    ev.set()
    with cond:
        cond.notify_all()
    barrier.wait(10)
    assert jq.get(timeout=10) == 1
    jq.task_done()


def _through_queue(q, out):
    d = q.get(timeout=10)
    d["seen"] = True
    out.put("ok")


def _through_pipe(conn):
    lst, lock = conn.recv()
    with lock:
        lst.append("via pipe")
    conn.send("ok")


def _negate(x):
    return -x


class Point:  # a key type with value equality (hash and == of its own)
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))


class SubPoint(Point):  # inherits Point's hash and ==: equal Points are one key
    pass


class Foo:
    def __init__(self, x=0):
        self.x = x

    def get(self):
        return self.x

    def add(self, n):
        self.x += n
        return self.x

    def _hidden(self):
        return "no"


def _init(tag):
    import os

    os.environ["FASTMP_TEST_MANAGER_INIT"] = tag


def _init_value():
    import os

    return os.environ.get("FASTMP_TEST_MANAGER_INIT")


@pytest.fixture(scope="module")
def _managers():
    started = {}
    yield started
    for m in started.values():
        m.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _start_managers_early(_managers):
    # Started before any test's leak check begins, with the connection each
    # process keeps per manager already open.
    for lib, method in PARITY:
        c = importlib.import_module(lib).get_context(method)
        m = _managers[(lib, method)] = c.Manager()
        m.dict()["warm"] = 1
    yield


@pytest.fixture
def manager(ctx, _managers):
    return _managers[(type(ctx).__module__.split(".")[0], ctx.get_start_method())]


# --- dict ---


def test_dict_methods(manager):
    d = manager.dict({"a": 1}, b=2)
    assert len(d) == 2 and d["a"] == 1 and d["b"] == 2
    d["c"] = 3
    assert "c" in d and "zz" not in d
    assert d.get("c") == 3 and d.get("zz") is None and d.get("zz", 5) == 5
    assert d.keys() == ["a", "b", "c"]
    assert d.values() == [1, 2, 3]
    assert d.items() == [("a", 1), ("b", 2), ("c", 3)]
    assert list(d) == ["a", "b", "c"]
    assert d.copy() == {"a": 1, "b": 2, "c": 3} and type(d.copy()) is dict
    assert str(d) == "{'a': 1, 'b': 2, 'c': 3}"
    assert repr(d).startswith("<DictProxy object, typeid 'dict' at 0x")
    assert d.pop("a") == 1 and d.pop("a", "gone") == "gone"
    with pytest.raises(KeyError) as e:
        d.pop("a")
    assert e.value.args == ("a",)
    assert d.setdefault("b", 9) == 2 and d.setdefault("n", 9) == 9 and d["n"] == 9
    assert d.setdefault("none") is None
    del d["none"]
    with pytest.raises(KeyError) as e:
        d["none"]
    assert e.value.args == ("none",)
    with pytest.raises(KeyError):
        del d["none"]
    d["b"] = 20  # keeps its place
    assert d.keys() == ["b", "c", "n"]
    assert d.popitem() == ("n", 9)
    d.update({"x": 1})
    d.update([("y", 2)], z=3)
    d.update(w=4)
    assert d.items()[-4:] == [("x", 1), ("y", 2), ("z", 3), ("w", 4)]
    with pytest.raises(TypeError):
        d.update(1)
    with pytest.raises(ValueError):
        d.update([(1, 2, 3)])
    d.clear()
    assert len(d) == 0 and d.items() == []
    with pytest.raises(KeyError):
        d.popitem()


def test_dict_values_are_copies(manager):
    d = manager.dict()
    d["x"] = [1]
    d["x"].append(2)
    assert d["x"] == [1]
    inner = d["x"]
    inner.append(3)
    d["x"] = inner
    assert d["x"] == [1, 3]


def test_dict_key_equality(manager):
    d = manager.dict()
    d[1] = "int"
    d[1.0] = "float"
    d[True] = "bool"
    assert len(d) == 1 and d.keys() == [1] and type(d.keys()[0]) is int and d[1] == "bool"
    d[0] = "zero"
    assert d[-0.0] == "zero" and d[False] == "zero" and d[0j] == "zero"
    d[(1, "a")] = "t"
    assert d[(1.0, "a")] == "t" and d[(True, "a")] == "t"
    d[frozenset({1, 2, 3})] = "fs"
    assert d[frozenset({3, 2, 1.0})] == "fs"
    d[2**100] = "big"
    assert d[float(2**100)] == "big"
    d[1.5] = "x"
    assert d[3 / 2] == "x"
    d["s"] = "str"
    d[b"s"] = "bytes"
    assert d["s"] == "str" and d[b"s"] == "bytes"
    d[None] = "none"
    assert d[None] == "none"
    d[Foo] = "class"
    assert d[Foo] == "class"
    with pytest.raises(TypeError, match="unhashable"):
        d[[1]] = 1
    with pytest.raises(TypeError, match="unhashable"):
        d[{1: 2}]
    with pytest.raises(TypeError, match="unhashable"):
        d[(1, [2])] = 1
    nan = float("nan")
    d[nan] = 1
    with pytest.raises(KeyError):
        d[nan]  # a NaN that crossed a process boundary equals nothing


def test_dict_key_equality_other_number_types(manager):
    # Python's rule: keys are one when hash(a) == hash(b) and a == b, whatever
    # their types; the first key stored is the one kept.
    from decimal import Decimal
    from fractions import Fraction

    np = pytest.importorskip("numpy")
    d = manager.dict()
    d[1] = "int"
    d[np.int64(1)] = "np"
    assert len(d) == 1 and d.keys() == [1] and type(d.keys()[0]) is int and d[1] == "np"
    d[np.int64(2)] = "x"
    assert 2 in d and 2.0 in d and d[2] == "x" and type(d.keys()[1]) is np.int64
    assert Decimal(1) in d and Fraction(1) in d and Decimal("1.00") in d and np.float64(1.0) in d
    assert np.uint8(1) in d and np.True_ in d and True in d and np.float32(2) in d
    assert Decimal(3) not in d and Fraction(1, 3) not in d and np.float64(1.5) not in d
    d[np.float64(1.5)] = "half"
    assert d[1.5] == "half" and d[Fraction(3, 2)] == "half" and d[Decimal("1.5")] == "half"
    assert type(d.keys()[2]) is np.float64
    d[Fraction(1, 10)] = "tenth"
    assert d[Decimal("0.1")] == "tenth" and 0.1 not in d  # 0.1 is not exactly 1/10
    d[Decimal(2**70)] = "big"
    assert d[2**70] == "big" and d[float(2**70)] == "big" and type(d.keys()[4]) is Decimal
    d[(np.int64(7), "a")] = "tuple"
    assert d[(7, "a")] == "tuple" and d[(Fraction(7), "a")] == "tuple"
    d[np.complex128(1 + 2j)] = "c"
    assert d[1 + 2j] == "c"
    assert len(d) == 7
    d[False] = "false"
    d[np.False_] = "npfalse"
    assert d[0] == "npfalse" and type(d.keys()[7]) is bool
    d[Point(1, 2)] = "p"
    assert d[Point(1, 2)] == "p" and d[SubPoint(1, 2)] == "p" and Point(2, 1) not in d
    d[SubPoint(1, 2)] = "sub"
    assert len(d) == 9 and d[Point(1, 2)] == "sub" and type(d.keys()[8]) is Point
    del d[Decimal(1)]
    assert 1 not in d and len(d) == 8


# --- list ---


def test_list_methods(manager):
    lst = manager.list([3, 1, 2])
    assert len(lst) == 3 and lst[0] == 3 and lst[-1] == 2
    assert lst[0:2] == [3, 1] and lst[::-1] == [2, 1, 3]
    lst.append(4)
    lst.extend([5, 6])
    lst += [7]
    assert lst[:] == [3, 1, 2, 4, 5, 6, 7]
    assert str(lst) == "[3, 1, 2, 4, 5, 6, 7]"
    assert repr(lst).startswith("<ListProxy object, typeid 'list' at 0x")
    assert lst + [8] == [3, 1, 2, 4, 5, 6, 7, 8]
    assert lst * 2 == [3, 1, 2, 4, 5, 6, 7] * 2 and 2 * lst == [3, 1, 2, 4, 5, 6, 7] * 2
    assert list(reversed(lst)) == [7, 6, 5, 4, 2, 1, 3]
    assert 5 in lst and 50 not in lst
    assert lst.count(5) == 1 and lst.index(5) == 4 and lst.index(5, 2) == 4
    with pytest.raises(ValueError):
        lst.index(50)
    lst.insert(0, 0)
    lst.insert(100, 100)
    assert lst[0] == 0 and lst[-1] == 100
    assert lst.pop() == 100 and lst.pop(0) == 0
    lst.remove(4)
    with pytest.raises(ValueError):
        lst.remove(4)
    lst.sort()
    assert lst[:] == [1, 2, 3, 5, 6, 7]
    lst.sort(key=_negate)
    assert lst[:] == [7, 6, 5, 3, 2, 1]
    lst.sort(reverse=True)
    lst.reverse()
    assert lst[:] == [1, 2, 3, 5, 6, 7]
    lst[0] = "a"
    lst[1:3] = ["b", "c", "d"]
    assert lst[:] == ["a", "b", "c", "d", 5, 6, 7]
    del lst[0]
    del lst[-2:]
    assert lst[:] == ["b", "c", "d", 5]
    lst *= 2
    assert lst[:] == ["b", "c", "d", 5] * 2
    with pytest.raises(IndexError, match="list index out of range"):
        lst[100]
    with pytest.raises(IndexError, match="list assignment index out of range"):
        lst[100] = 1
    with pytest.raises(TypeError):
        lst["x"]
    empty = manager.list()
    with pytest.raises(IndexError, match="pop from empty list"):
        empty.pop()
    with pytest.raises(IndexError, match="pop index out of range"):
        lst.pop(100)


def test_list_items_are_copies(manager):
    lst = manager.list([[1]])
    lst[0].append(2)
    assert lst[0] == [1]


# --- Namespace, Value, Array ---


def test_namespace(manager):
    ns = manager.Namespace(a=1)
    ns.b = [2]
    assert ns.a == 1 and ns.b == [2]
    ns.b.append(3)
    assert ns.b == [2]
    ns._local = "mine"
    assert ns._local == "mine"
    assert str(ns) == "Namespace(a=1, b=[2])"
    assert repr(ns).startswith("<NamespaceProxy object, typeid 'Namespace' at 0x")
    del ns.a
    with pytest.raises(AttributeError):
        ns.a  # noqa: B018
    with pytest.raises(AttributeError):
        del ns.a


def test_value(manager):
    v = manager.Value("i", 5)
    assert v.value == 5 and v.get() == 5
    v.value += 1
    v.set(v.get() * 2)
    assert v.value == 12
    assert str(v) == "Value('i', 12)"
    assert repr(v).startswith("<ValueProxy object, typeid 'Value' at 0x")
    v.value = "anything"  # the stdlib's manager Value does not check types
    assert v.value == "anything"


def test_array(manager):
    a = manager.Array("i", [1, 2, 3])
    assert len(a) == 3 and a[0] == 1 and a[-1] == 3
    assert a[0:2] == array.array("i", [1, 2])
    a[0] = 10
    assert a[0] == 10
    with pytest.raises(TypeError):
        a[0] = "x"
    with pytest.raises(IndexError):
        a[5]
    a[0:2] = array.array("i", [7, 8])
    assert a[:] == array.array("i", [7, 8, 3])
    assert str(a) == "array('i', [7, 8, 3])"
    # array.array's own message (3.9: "an integer is required (got type str)").
    with pytest.raises(
        Exception,
        match="'str' object cannot be interpreted as an integer|an integer is required",
    ):
        manager.Array("i", ["x"])  # raised in the server: RemoteError
    d = manager.Array("d", [1, 2])
    assert d[0] == 1.0 and type(d[0]) is float


# --- across processes ---


def test_child_writes_are_seen(ctx, manager):
    d, lst, ns = manager.dict(), manager.list(["first"]), manager.Namespace()
    v, a = manager.Value("i", 1), manager.Array("i", [0, 0])
    p = ctx.Process(target=_child_writes, args=(d, lst, ns, v, a))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert d["child"] == [1, 2] and d[1.0] == "one"
    assert lst[:] == ["changed", "from child"]
    assert ns.child == 42 and v.value == 11 and a[:] == array.array("i", [0, 7])


def test_value_under_manager_lock(ctx, manager):
    lock, v = manager.Lock(), manager.Value("i", 0)
    ps = [ctx.Process(target=_locked_increments, args=(lock, v, 200)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    assert [p.exitcode for p in ps] == [0, 0]
    assert v.value == 400


def test_proxies_through_pool(ctx, manager):
    d, lst = manager.dict(), manager.list()
    with ctx.Pool(2) as pool:
        results = pool.starmap(_pool_task, [(d, lst, i) for i in range(6)])
    assert dict(d.items()) == {i: i * i for i in range(6)}
    assert sorted(lst[:]) == list(range(6))
    assert all(r[5] == 25 for r in results)  # proxies came back as results


def test_proxy_through_queue_after_start(ctx, manager):
    q, out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_through_queue, args=(q, out))
    p.start()
    d = manager.dict()
    q.put(d)
    assert out.get(timeout=60) == "ok"
    p.join(60)
    assert d["seen"] is True


def test_proxies_through_pipe_after_start(ctx, manager):
    a, b = ctx.Pipe()
    p = ctx.Process(target=_through_pipe, args=(b,))
    p.start()
    lst, lock = manager.list(), manager.Lock()
    a.send((lst, lock))  # kept alive here: the stdlib's child would find the lock gone
    assert a.recv() == "ok"
    p.join(60)
    a.close()
    b.close()
    assert lst[:] == ["via pipe"]


def test_manager_queue(ctx, manager):
    q, out = manager.Queue(), manager.Queue()
    p = ctx.Process(target=_queue_user, args=(q, out))
    p.start()
    q.put(21)
    assert out.get(timeout=60) == 42
    p.join(60)
    assert q.empty() and q.qsize() == 0 and not q.full()
    q.put_nowait(1)
    assert q.get_nowait() == 1
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    bounded = manager.Queue(1)
    bounded.put(1)
    assert bounded.full()
    with pytest.raises(queue.Full):
        bounded.put(2, timeout=0.01)


def test_sync_primitives(ctx, manager):
    lock, rlock = manager.Lock(), manager.RLock()
    sem, bsem = manager.Semaphore(2), manager.BoundedSemaphore(1)
    ev, cond, barrier = manager.Event(), manager.Condition(), manager.Barrier(2)
    jq = manager.JoinableQueue()
    assert lock.acquire() is True and lock.acquire(False) is False
    assert lock.acquire(timeout=0.01) is False
    lock.release()
    with lock:
        pass
    assert rlock.acquire() and rlock.acquire()
    rlock.release()
    rlock.release()
    assert sem.acquire() and sem.acquire() and not sem.acquire(False)
    sem.release()
    sem.release()
    bsem.acquire()
    bsem.release()
    with pytest.raises(ValueError):
        bsem.release()
    assert not ev.is_set() and ev.wait(0.01) is False
    assert barrier.parties == 2 and barrier.n_waiting == 0 and not barrier.broken
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: True) is True
    jq.put(1)
    p = ctx.Process(target=_sync_child, args=(lock, rlock, sem, ev, cond, barrier, jq))
    p.start()
    assert ev.wait(60)
    assert barrier.wait(60) in (0, 1)
    jq.join()  # returns once the child called task_done
    assert jq.empty()
    p.join(60)
    assert p.exitcode == 0
    ev.clear()
    assert not ev.is_set()


def test_condition_with_manager_lock(manager):
    lock = manager.Lock()
    cond = manager.Condition(lock)
    with cond:
        assert lock.acquire(False) is False
        cond.notify()
    assert lock.acquire(False) is True
    lock.release()


def test_nested_proxy_stays_live(manager):
    outer = manager.list()
    inner = manager.dict(a=1)
    outer.append(inner)
    del inner
    gc.collect()
    got = outer[0]
    assert got["a"] == 1
    got["b"] = 2
    assert outer[0]["b"] == 2


# --- the manager itself ---


class StdManager(multiprocessing.managers.BaseManager):
    pass


class FastManager(fmanagers.BaseManager):
    pass


class StdSync(multiprocessing.managers.SyncManager):
    pass


class FastSync(fmanagers.SyncManager):
    pass


for _cls in (StdManager, FastManager):
    _cls.register("Foo", Foo)
for _cls in (StdSync, FastSync):
    _cls.register("init_value", _init_value)


def _is_fastmp(ctx):
    return type(ctx).__module__.startswith("fastmp")


def test_registered_type_and_lifecycle(ctx):
    cls = FastManager if _is_fastmp(ctx) else StdManager
    with cls(ctx=ctx) as m:
        foo = m.Foo(3)
        assert foo.get() == 3 and foo.add(2) == 5
        with pytest.raises(AttributeError):
            foo._hidden()
        assert m.address and isinstance(m._authkey, bytes)
        other = cls(address=m.address, authkey=m._authkey)
        other.connect()
        assert other.Foo(1).get() == 1
    assert m._state.value == multiprocessing.managers.State.SHUTDOWN


def test_start_initializer(ctx):
    m = (FastSync if _is_fastmp(ctx) else StdSync)(ctx=ctx)
    m.start(_init, ("tagged",))
    try:
        assert m.init_value()._getvalue() == "tagged"
        assert m.dict(a=1)["a"] == 1
    finally:
        m.shutdown()


def test_use_after_shutdown_raises(ctx):
    m = ctx.Manager()
    d, lst, lock = m.dict(), m.list(), m.Lock()
    d["a"] = 1
    lst.append(1)
    lock.acquire()
    lock.release()
    m.shutdown()
    with pytest.raises(BrokenPipeError):
        d["a"]
    with pytest.raises(BrokenPipeError):
        lst.append(2)
    with pytest.raises(BrokenPipeError):
        lock.acquire()


def test_fastmp_manager_is_native():
    assert fastmp.managers.SyncManager is fmanagers.SyncManager
    with fastmp.Manager() as m:
        assert isinstance(m, fmanagers.SyncManager)
        assert isinstance(m.dict(), fmanagers.DictProxy)
        d = m.dict()
        d[1] = 1
        assert isinstance(d._native(), fastmp._fastmp.ShmDict)


def test_tcp_manager_goes_through_the_server():
    """A manager on TCP cannot pass fds: its proxies call the server, with the
    same methods and results (the path a proxy on another machine takes)."""
    with fmanagers.SyncManager(address=("127.0.0.1", 0)) as m:
        d, lst, ns, v = m.dict(a=1), m.list([1, 2]), m.Namespace(x=1), m.Value("i", 3)
        a, lock, q, b = m.Array("i", [1, 2]), m.Lock(), m.Queue(), m.Barrier(1)
        d["b"] = 2
        assert d.items() == [("a", 1), ("b", 2)] and len(d) == 2 and "a" in d
        with pytest.raises(KeyError):
            d["zz"]
        lst.append(3)
        lst.insert(0, 0)
        lst.sort(reverse=True)
        assert lst[:] == [3, 2, 1, 0] and str(lst) == "[3, 2, 1, 0]"
        ns.y = 2
        assert ns.x == 1 and ns.y == 2 and str(ns) == "Namespace(x=1, y=2)"
        with pytest.raises(AttributeError):
            ns.zz  # noqa: B018
        v.value += 1
        assert v.value == 4
        a[0] = 5
        assert a[:] == array.array("i", [5, 2])
        with lock:
            pass
        q.put(1)
        assert q.get(timeout=10) == 1
        assert b.parties == 1 and b.wait(10) == 0
        assert d._native is not None and type(d).__name__ == "_RemoteDictProxy"
        assert isinstance(d, fmanagers.DictProxy)


def _appender(lst, n):
    for i in range(n):
        lst.append(i)


def _slow_key(x):
    time.sleep(0.001)  # lets the other threads run while the sort holds the list
    return x


def _sorter(lst):
    lst.sort(key=_slow_key)


def test_threads_share_a_container():
    """Threads of one process contend for the container's lock (the sort runs
    Python code while holding it). fastmp only: the stdlib's server raises
    "list modified during sort" and drops the items appended meanwhile."""

    with fastmp.Manager() as m:
        _threads_share(m)


def _threads_share(manager):
    import threading

    lst = manager.list(range(50, 0, -1))
    threads = [threading.Thread(target=_sorter, args=(lst,))]
    threads += [threading.Thread(target=_appender, args=(lst, 300)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(lst) == 650
    assert sorted(lst[:]) == sorted(list(range(300)) * 2 + list(range(1, 51)))


def test_reentrant_use_raises_instead_of_deadlock():
    with fastmp.Manager() as m:
        lst = m.list([2, 1])
        with pytest.raises(ValueError, match="inside its own operation"):
            lst.sort(key=lambda x: len(lst))
        assert lst[:] == [2, 1]


def test_forkserver_child_uses_proxies():
    ctx = fastmp.get_context("forkserver")
    with ctx.Manager() as m:
        d, lst, ns = m.dict(), m.list(["first"]), m.Namespace()
        v, a = m.Value("i", 1), m.Array("i", [0, 0])
        p = ctx.Process(target=_child_writes, args=(d, lst, ns, v, a))
        p.start()
        p.join(60)
        assert p.exitcode == 0 and d[1] == "one" and ns.child == 42 and v.value == 11


def _serve(cls, address, authkey):
    cls(address=address, authkey=authkey).get_server().serve_forever()


def test_get_server_serve_forever(ctx, tmp_path):
    cls = FastSync if _is_fastmp(ctx) else StdSync
    address, authkey = str(tmp_path / "mgr.sock"), b"secret"
    p = ctx.Process(target=_serve, args=(cls, address, authkey))
    p.start()
    client = cls(address=address, authkey=authkey)
    while True:  # until the server listens
        try:
            client.connect()
            break
        except (FileNotFoundError, ConnectionRefusedError):
            assert p.exitcode is None
    d, lock = client.dict(a=1), client.Lock()
    d["b"] = 2
    with lock:
        assert d.items() == [("a", 1), ("b", 2)]
    del d, lock
    conn = multiprocessing.connection.Client(address, authkey=authkey)
    multiprocessing.managers.dispatch(conn, None, "shutdown")
    conn.close()
    p.join(60)
    assert p.exitcode == 0
