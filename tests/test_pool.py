"""Pool parity: each test body runs against multiprocessing and fastmp, fork and spawn.

Tests named *_fastmp cover what fastmp adds (lambdas, callbacks that raise, ...).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import pickle
import sys
import threading
import time

import pytest

import fastmp
import fastmp.pool

pytestmark = pytest.mark.timeout(60)


# --- module-level helpers (spawn children import them) ---


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def fail_on(x, bad=3):
    if x == bad:
        raise KeyError(f"bad item {x}")
    return x


def raise_value_error():
    raise ValueError("boom from the worker")


def sleep_then(x, seconds=0.3):
    time.sleep(seconds)
    return x


def worker_name(_x=None):
    return multiprocessing.current_process().name


def worker_pid(_x=None):
    time.sleep(0.01)
    return os.getpid()


_INIT_VALUE = None


def set_init_value(value):
    global _INIT_VALUE
    _INIT_VALUE = (value, os.getpid())


def get_init_value(_x=None):
    return _INIT_VALUE


def return_lock(_x=None):
    return threading.Lock()


def libname(ctx):
    return type(ctx).__module__.split(".")[0]


# --- basic API ---


def test_apply_and_apply_async(ctx):
    with ctx.Pool(2) as pool:
        assert pool.apply(square, (7,)) == 49
        assert pool.apply(add, (1,), {"b": 2}) == 3
        assert pool.apply(add, args=(5,), kwds={"b": 5}) == 10
        r = pool.apply_async(square, (8,))
        assert r.get(timeout=30) == 64
        assert r.ready() and r.successful()


def test_map_variants(ctx):
    with ctx.Pool(2) as pool:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.map(square, range(50), chunksize=7) == [x * x for x in range(50)]
        assert pool.map(square, iter(range(10))) == [x * x for x in range(10)]
        assert pool.map(square, []) == []
        assert pool.map_async(square, range(20), 3).get(30) == [x * x for x in range(20)]
        assert pool.starmap(add, [(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]
        assert pool.starmap_async(add, [(i, i) for i in range(10)], 4).get(30) == [
            2 * i for i in range(10)
        ]


def test_imap_variants(ctx):
    with ctx.Pool(2) as pool:
        assert list(pool.imap(square, range(30))) == [x * x for x in range(30)]
        assert list(pool.imap(square, range(30), chunksize=4)) == [x * x for x in range(30)]
        assert sorted(pool.imap_unordered(square, range(30))) == sorted(x * x for x in range(30))
        assert sorted(pool.imap_unordered(square, range(30), 7)) == sorted(x * x for x in range(30))
        assert list(pool.imap(square, [])) == []
        it = pool.imap(sleep_then, [1, 2])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.01)
        assert it.next(timeout=30) == 1
        assert next(it) == 2
        with pytest.raises(StopIteration):
            next(it)


def test_imap_exception_position(ctx):
    with ctx.Pool(2) as pool:
        it = pool.imap(fail_on, range(6))
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(KeyError):
            next(it)
        assert list(it) == [4, 5]  # chunksize 1: iteration continues


def test_worker_exception_type_and_remote_traceback(ctx):
    with ctx.Pool(2) as pool:
        with pytest.raises(ValueError, match="boom from the worker") as info:
            pool.apply(raise_value_error)
        cause = info.value.__cause__
        assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
        assert "raise_value_error" in str(cause)
        with pytest.raises(KeyError, match="bad item 3"):
            pool.map(fail_on, range(10))
        r = pool.apply_async(raise_value_error)
        r.wait(30)
        assert r.ready() and not r.successful()
        # the pool keeps working
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_async_result_timeout(ctx):
    with ctx.Pool(1) as pool:
        r = pool.apply_async(sleep_then, (5, 0.5))
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        assert not r.ready()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.01)
        assert multiprocessing.TimeoutError is multiprocessing.context.TimeoutError
        assert not issubclass(multiprocessing.TimeoutError, TimeoutError)
        r.wait(0.01)
        assert r.get(timeout=30) == 5  # still retrievable later
        assert r.successful()


def test_callbacks_run_in_parent(ctx):
    seen = []
    errors = []
    with ctx.Pool(2) as pool:
        r1 = pool.apply_async(square, (3,), callback=lambda v: seen.append((v, os.getpid())))
        r2 = pool.apply_async(
            raise_value_error, error_callback=lambda e: errors.append((e, os.getpid()))
        )
        r3 = pool.map_async(square, range(4), callback=lambda v: seen.append((v, os.getpid())))
        r1.wait(30)
        r2.wait(30)
        r3.wait(30)
    assert (9, os.getpid()) in seen
    assert ([0, 1, 4, 9], os.getpid()) in seen
    assert len(errors) == 1 and isinstance(errors[0][0], ValueError) and errors[0][1] == os.getpid()


def test_bad_arguments(ctx):
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        ctx.Pool(0)
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        ctx.Pool(-2)
    if type(ctx).__module__ != "multiprocessing.context" or sys.version_info >= (3, 10):
        # (3.9's stdlib accepts 0, and its workers then fail forever)
        with pytest.raises(ValueError, match="maxtasksperchild"):
            ctx.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        ctx.Pool(1, initializer=5)


def test_close_join_and_not_running(ctx):
    pool = ctx.Pool(2)
    try:
        with pytest.raises(ValueError, match="Pool is still running"):
            pool.join()
        r = pool.map_async(sleep_then, [1, 2, 3], 1)
        pool.close()
        with pytest.raises(ValueError, match="Pool not running"):
            pool.apply(square, (1,))
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map(square, [1])
        with pytest.raises(ValueError, match="Pool not running"):
            pool.imap(square, [1])
        pool.join()
        assert r.get(0) == [1, 2, 3]  # close() lets pending work finish
    finally:
        pool.terminate()


def test_context_manager_terminates(ctx):
    with ctx.Pool(1) as pool:
        pool.apply_async(sleep_then, (1, 30))
    pool.join()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))


def test_processes_and_worker_names(ctx):
    with ctx.Pool(3) as pool:
        assert pool._processes == 3
        names = set(pool.map(worker_name, range(20), 1))
    prefix = {"fork": "ForkPoolWorker-", "spawn": "SpawnPoolWorker-"}[ctx.get_start_method()]
    assert names and all(n.startswith(prefix) for n in names)
    default = ctx.Pool()
    try:
        assert default._processes == os.cpu_count()
    finally:
        default.terminate()
        default.join()


def test_initializer(ctx):
    with ctx.Pool(2, initializer=set_init_value, initargs=("hello",)) as pool:
        values = pool.map(get_init_value, range(10), 1)
    assert all(v[0] == "hello" for v in values)
    assert all(v[1] != os.getpid() for v in values)


def test_maxtasksperchild(ctx):
    with ctx.Pool(1, maxtasksperchild=2) as pool:
        pids = [pool.apply(worker_pid) for _ in range(6)]
    assert len(set(pids)) == 3


def test_pickling_a_pool_raises(ctx):
    with ctx.Pool(1) as pool:
        with pytest.raises(NotImplementedError, match="pool objects cannot be passed"):
            pickle.dumps(pool)


def test_unpicklable_result(ctx):
    with ctx.Pool(1) as pool:
        with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="Error sending result"):
            pool.apply(return_lock)
        assert pool.apply(square, (2,)) == 4


def test_public_names():
    for name in dir(multiprocessing.pool):
        if not name.startswith("_"):
            assert hasattr(fastmp.pool, name), name
    assert fastmp.pool.ThreadPool is multiprocessing.pool.ThreadPool
    assert issubclass(fastmp.pool.WorkerLostError, multiprocessing.ProcessError)


def test_default_pool_is_fastmp():
    pool = fastmp.Pool(1)
    try:
        assert isinstance(pool, fastmp.pool.Pool)
    finally:
        pool.terminate()
        pool.join()


# --- what fastmp adds ---


@pytest.fixture(params=["fork", "spawn"])
def fpool(request, _no_leftovers):
    pool = fastmp.get_context(request.param).Pool(2)
    yield pool
    pool.terminate()
    pool.join()


def test_lambdas_local_functions_closures_fastmp(fpool):
    k = 10

    def local(x):
        return x + k

    assert fpool.map(lambda x: x * 2, range(5)) == [0, 2, 4, 6, 8]
    assert fpool.apply(local, (1,)) == 11
    assert list(fpool.imap(local, range(3))) == [10, 11, 12]
    assert fpool.starmap(lambda a, b: a * b, [(2, 3)]) == [6]
    assert fpool.apply_async(lambda: "hi").get(30) == "hi"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lambda_initializer_fastmp(method):
    with fastmp.get_context(method).Pool(
        2, initializer=lambda v: set_init_value(v), initargs=(5,)
    ) as pool:
        assert {v[0] for v in pool.map(get_init_value, range(6), 1)} == {5}


def test_callback_exception_does_not_kill_pool_fastmp(fpool, capfd):
    def bad_callback(_v):
        raise RuntimeError("callback failed")

    r = fpool.apply_async(square, (2,), callback=bad_callback)
    assert r.get(30) == 4
    assert fpool.apply(square, (3,)) == 9
    assert "callback failed" in capfd.readouterr().err


def test_unpicklable_argument_raises_in_caller_fastmp(fpool):
    with pytest.raises(TypeError):
        fpool.apply_async(square, (threading.Lock(),))
    with pytest.raises(TypeError):
        fpool.map_async(square, [1, threading.Lock()])
    assert fpool.map(square, [3]) == [9]
    assert not fpool._cache


def test_imap_reads_lazily_fastmp(fpool):
    consumed = []

    def endless():
        i = 0
        while True:
            consumed.append(i)
            yield i
            i += 1

    it = fpool.imap(square, endless())
    assert [next(it) for _ in range(50)] == [x * x for x in range(50)]
    time.sleep(0.3)
    assert len(consumed) < 50 + 4 * fpool._processes + 10
    assert list(zip(range(5), fpool.imap_unordered(square, endless(), 3)))


def test_terminate_fails_pending_results_fastmp():
    pool = fastmp.Pool(1)
    r = pool.apply_async(sleep_then, (1, 30))
    pool.terminate()
    with pytest.raises(fastmp.pool.PoolTerminatedError):
        r.get(10)
    pool.join()


def test_functions_defined_under_main_guard_with_spawn_fastmp(tmp_path):
    """Under spawn, a worker re-imports the main script without running its
    `if __name__ == "__main__":` block; functions (and initializers) defined
    there still work, sharing the worker's __main__ globals."""
    from _script import run_script

    out = run_script(
        """
        import fastmp

        if __name__ == "__main__":
            FACTOR = 5

            def times(x):
                return x * FACTOR

            def init(value):
                global SEEN
                SEEN = value

            def seen(_x):
                return SEEN

            ctx = fastmp.get_context("spawn")
            with ctx.Pool(2, initializer=init, initargs=(7,)) as pool:
                print(pool.map(times, range(5)), pool.apply(times, (3,)), list(pool.imap(times, range(3))))
                print(pool.map(seen, range(4)))
            with fastmp.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                print(ex.submit(times, 2).result(), list(ex.map(times, range(3))))
        """,
        tmp_path,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[0, 5, 10, 15, 20] 15 [0, 5, 10]",
        "[7, 7, 7, 7]",
        "10 [0, 5, 10]",
    ]


def test_every_start_method_fastmp(fctx):
    """fork, spawn and forkserver: tasks, lambdas, initializer, executor."""
    with fctx.Pool(2, initializer=set_init_value, initargs=("x",)) as pool:
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
        assert pool.apply(lambda: 3) == 3
        assert {v[0] for v in pool.map(get_init_value, range(4), 1)} == {"x"}
    with fastmp.ProcessPoolExecutor(2, mp_context=fctx) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]


def test_imap_unordered_yields_as_results_arrive(ctx):
    """imap_unordered hands out each result as it arrives (what makes a tqdm
    bar move): the quick tasks come out before the slow one finishes."""
    with ctx.Pool(2) as pool:
        it = pool.imap_unordered(sleep_then, [0, 1, 2, 3], 1)
        # sleep_then(x) sleeps 0.3 s; submit a slow one alongside
        slow = pool.apply_async(sleep_then, ("slow", 20))
        first = [it.next(timeout=15) for _ in range(4)]
        assert sorted(first) == [0, 1, 2, 3]
        assert not slow.ready()  # still running: the pool's exit terminates it
