"""fastmp.futures.ProcessPoolExecutor, checked against the stdlib's where they agree."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

import fastmp
import fastmp.futures
from _script import run_script
from fastmp.futures import ProcessPoolExecutor

pytestmark = pytest.mark.timeout(90)


def square(x):
    return x * x


def add(a, b):
    return a + b


def raise_value_error(msg):
    raise ValueError(msg)


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def worker_pid(_x=None):
    time.sleep(0.01)
    return os.getpid()


def sigkill_self(_x=None):
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


_INIT = None


def set_init(value):
    global _INIT
    _INIT = value


def get_init(_x=None):
    return _INIT


EXECUTORS = [
    ("stdlib", "fork"),
    ("stdlib", "spawn"),
    ("fastmp", "fork"),
    ("fastmp", "spawn"),
]


@pytest.fixture(params=EXECUTORS, ids=[f"{a}-{b}" for a, b in EXECUTORS])
def make(request, _no_leftovers):
    """make(**kwargs) -> an executor: the stdlib's on a stdlib context, or fastmp's."""
    lib, method = request.param
    made = []

    def factory(max_workers=2, **kwargs):
        if lib == "stdlib":
            ex = concurrent.futures.ProcessPoolExecutor(
                max_workers, mp_context=multiprocessing.get_context(method), **kwargs
            )
        else:
            ex = ProcessPoolExecutor(max_workers, mp_context=fastmp.get_context(method), **kwargs)
        made.append(ex)
        return ex

    factory.method = method
    factory.lib = lib
    yield factory
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)
    made.clear()  # the stdlib's semaphores go with their executor


def test_submit_and_result(make):
    with make() as ex:
        assert ex.submit(square, 7).result(timeout=30) == 49
        assert ex.submit(add, 2, b=3).result(timeout=30) == 5
        fs = [ex.submit(square, i) for i in range(20)]
        assert sorted(
            f.result() for f in concurrent.futures.as_completed(fs, timeout=30)
        ) == sorted(i * i for i in range(20))


def test_map_with_chunksize_and_timeout(make):
    with make() as ex:
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
        assert list(ex.map(square, range(25), chunksize=4)) == [i * i for i in range(25)]
        assert list(ex.map(add, range(5), range(5), chunksize=2)) == [2 * i for i in range(5)]
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(square, range(3), chunksize=0)
        results = ex.map(sleep_then, [1], [1], timeout=0.1)
        with pytest.raises(concurrent.futures.TimeoutError):
            list(results)


def test_exception_from_worker(make):
    with make() as ex:
        f = ex.submit(raise_value_error, "nope")
        with pytest.raises(ValueError, match="nope") as info:
            f.result(timeout=30)
        assert "raise_value_error" in str(info.value.__cause__)
        assert isinstance(f.exception(), ValueError)
        assert ex.submit(square, 2).result(timeout=30) == 4


def test_wait_first_completed(make):
    with make() as ex:
        fs = {ex.submit(sleep_then, 1, 0.01): "fast", ex.submit(sleep_then, 2, 2): "slow"}
        done, not_done = concurrent.futures.wait(
            fs, timeout=10, return_when=concurrent.futures.FIRST_COMPLETED
        )
        assert {fs[f] for f in done} == {"fast"}
        assert ex._max_workers == 2


def test_shutdown_semantics(make):
    ex = make(max_workers=1)
    fs = [ex.submit(sleep_then, i, 0.2) for i in range(8)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert fs[0].result(timeout=0) == 0  # was running
    assert any(f.cancelled() for f in fs)
    assert all(f.done() for f in fs)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)

    ex = make(max_workers=2)
    fs = [ex.submit(sleep_then, i, 0.05) for i in range(6)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in fs] == list(range(6))  # pending work still runs


def test_initializer_and_bad_arguments(make):
    with make(initializer=set_init, initargs=("ready",)) as ex:
        assert set(ex.map(get_init, range(6))) == {"ready"}
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(max_workers=0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        make(initializer=3)
    if make.lib == "stdlib" and sys.version_info < (3, 11):
        return  # the stdlib's max_tasks_per_child is new in 3.11 (fastmp has it on all)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        make(max_tasks_per_child="2")
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        make(max_tasks_per_child=0)


def test_max_tasks_per_child(make):
    if make.lib == "stdlib" and sys.version_info < (3, 11):
        pytest.skip("the stdlib's max_tasks_per_child is new in 3.11")
    if make.method == "fork":
        with pytest.raises(ValueError, match="incompatible with the 'fork'"):
            make(max_tasks_per_child=2)
        return
    with make(max_workers=1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(worker_pid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3


def test_broken_process_pool(make):
    ex = make()
    ok = ex.submit(square, 3).result(timeout=30)
    assert ok == 9
    doomed = ex.submit(sigkill_self)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        doomed.result(timeout=30)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        ex.submit(square, 1)
    ex.shutdown(wait=True)


# --- fastmp only ---


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lambdas_and_local_functions(method):
    k = 3

    def local(x):
        return x + k

    with ProcessPoolExecutor(2, mp_context=fastmp.get_context(method)) as ex:
        assert ex.submit(lambda x: x * 10, 4).result(timeout=30) == 40
        assert list(ex.map(local, range(4))) == [3, 4, 5, 6]
        assert list(ex.map(lambda a, b: a - b, [5, 6], [1, 1], chunksize=2)) == [4, 5]
    with ProcessPoolExecutor(1, initializer=lambda: set_init("lam")) as ex:
        assert ex.submit(get_init).result(timeout=30) == "lam"


def test_exports():
    assert fastmp.ProcessPoolExecutor is fastmp.futures.ProcessPoolExecutor
    for name in (
        "as_completed",
        "wait",
        "Future",
        "FIRST_COMPLETED",
        "FIRST_EXCEPTION",
        "ALL_COMPLETED",
        "CancelledError",
        "TimeoutError",
        "BrokenExecutor",
        "Executor",
        "ThreadPoolExecutor",
        "InvalidStateError",
    ):
        assert getattr(fastmp.futures, name) is getattr(concurrent.futures, name), name
    assert fastmp.futures.BrokenProcessPool is concurrent.futures.process.BrokenProcessPool
    assert issubclass(ProcessPoolExecutor, concurrent.futures.Executor)


def test_default_context_is_fastmp():
    with ProcessPoolExecutor(1) as ex:
        assert ex._mp_context is fastmp.get_context()
        assert ex.submit(square, 5).result(timeout=30) == 25


def test_callbacks_and_result_threads():
    seen = []
    done = threading.Event()
    with ProcessPoolExecutor(2) as ex:
        f = ex.submit(square, 6)
        f.add_done_callback(lambda fut: (seen.append(fut.result()), done.set()))
        assert done.wait(30)
    assert seen == [36]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_stdlib_executor_with_fastmp_context(tmp_path, method):
    out = run_script(
        f"""
        import concurrent.futures, fastmp

        def square(x):
            return x * x

        if __name__ == "__main__":
            ctx = fastmp.get_context({method!r})
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                print(ex.submit(square, 3).result(timeout=5))
                print(list(ex.map(square, range(5), chunksize=2)))
        """,
        tmp_path,
        timeout=15,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["9", "[0, 1, 4, 9, 16]"]


def failing_initializer():
    raise RuntimeError("initializer failed on purpose")


def test_failing_initializer_breaks_the_executor(make):
    ex = make(initializer=failing_initializer)
    f = ex.submit(square, 2)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        f.result(timeout=60)
    ex.shutdown(wait=True)
