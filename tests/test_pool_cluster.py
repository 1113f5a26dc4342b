"""Pool and ProcessPoolExecutor on both backends: local processes and a Dask
cluster (a LocalCluster of 2 worker processes, see conftest.dask_client).

The semantics tests run on both backends; what only a cluster has (objects
that cannot cross machines, an unreachable scheduler, killed Dask workers, the
FASTMP_CLUSTER variable with real `dask scheduler` / `dask worker` processes)
is tested on the cluster only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fastmp
import fastmp.pool
from _script import run_script
from fastmp.futures import BrokenProcessPool
from fastmp.pool import PoolTerminatedError, WorkerLostError

pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(120)

BACKENDS = ["local", "dask"]


# --- leak checks: what Dask itself keeps for the session is not a leak -----------

# (QueueFeederThread: the stdlib queue of a Nanny that restarted a killed worker)
_DASK_THREADS = (
    "Dask-",
    "IO loop",
    "Profile",
    "TCP-Executor",
    "AsyncProcess",
    "asyncio_",
    "QueueFeederThread",
)


@pytest.fixture(autouse=True)
def _no_leftovers(request):
    """conftest's leak check (processes, threads, fds, /dev/shm), except for
    what Dask keeps per process (its event-loop and offload threads, its
    connection pool's sockets, the session cluster's worker processes)."""
    import conftest

    callspec = getattr(request.node, "callspec", None)
    client = None
    if "dask_client" in request.fixturenames or (
        callspec is not None and callspec.params.get("backend") == "dask"
    ):
        client = request.getfixturevalue("dask_client")  # the session's cluster is no leak
        request.session._fastmp_fixtures_seen = {"dask_client"}
    # Tests that talk to Dask themselves are named test_dask_*. Once the
    # session has a Dask client, its connection pool may open sockets at any
    # time, during other tests too.
    dask = client is not None or request.node.name.startswith("test_dask_")
    dask_session = dask or "dask_client" in getattr(request.session, "_fastmp_fixtures_seen", ())
    conftest._reap()
    gc.collect()
    kids0, fds0, shm0 = conftest._children(), conftest._fds(), conftest._shm()
    threads0 = set(threading.enumerate())
    yield
    cluster_pids = set()
    if client is not None:  # workers a fault test killed were replaced
        client.wait_for_workers(2)
        cluster_pids = set(client.run(os.getpid).values())
    deadline = time.monotonic() + conftest.SETTLE_SECONDS
    while True:
        conftest._reap()
        gc.collect()
        kids = conftest._children() - kids0 - conftest._service_pids() - cluster_pids
        threads = {
            t
            for t in threading.enumerate()
            if t not in threads0
            and t.is_alive()
            and not (dask and t.name.startswith(_DASK_THREADS))
        }
        fds = {
            fd
            for fd in conftest._fds() - fds0
            if not ((dask and _is_dask_fd(fd)) or (dask_session and _is_socket(fd)))
        }
        # (a Nanny that restarts a worker makes stdlib queues: named semaphores
        # that live as long as the session's cluster)
        shm = {e for e in conftest._shm() - shm0 if not (dask and e.startswith("sem.mp-"))}
        if not (kids or threads or fds or shm) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not kids, f"child processes left running: {kids}"
    assert not threads, f"threads left running: {sorted(t.name for t in threads)}"
    assert not fds, f"fds left open: {[conftest._describe_fd(fd) for fd in fds]}"
    assert not shm, f"/dev/shm entries left behind: {sorted(shm)}"


def _is_socket(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return True  # closed meanwhile


def _is_dask_fd(fd):
    """Dask's connection pool and event loops keep sockets, pipes and epoll fds."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(("socket:", "anon_inode:", "pipe:"))
    except OSError:
        return True  # closed meanwhile


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The `cluster=` for a Pool / executor: None (local) or the Dask client."""
    if request.param == "local":
        return None
    return request.getfixturevalue("dask_client")


def make_pool(cluster, processes=2, **kwds):
    return fastmp.Pool(processes, cluster=cluster, **kwds)


# --- module-level helpers (the cluster's workers import this module) ---


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def fail_on(x, bad=3):
    if x == bad:
        raise KeyError(f"bad item {x}")
    return x


def sleep_then(x, seconds=0.2):
    time.sleep(seconds)
    return x


_INIT_COUNT = 0
_INIT_VALUE = None


def init_worker(value):
    global _INIT_COUNT, _INIT_VALUE
    _INIT_COUNT += 1
    _INIT_VALUE = value


def init_state(_x=None):
    time.sleep(0.01)
    return os.getpid(), _INIT_COUNT, _INIT_VALUE


# --- the Pool API on both backends --------------------------------------------


def test_map_starmap_apply(backend):
    with make_pool(backend) as pool:
        assert pool.map(square, range(100)) == [x * x for x in range(100)]
        assert pool.map(square, range(100), chunksize=7) == [x * x for x in range(100)]
        assert pool.map(square, []) == []
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(add, (1,), {"b": 5}) == 6
        assert pool.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]


def test_async_results_and_callbacks(backend):
    got, errors = [], []
    done = threading.Event()
    with make_pool(backend) as pool:
        r = pool.map_async(square, range(10), callback=got.append)
        assert r.get(timeout=60) == [x * x for x in range(10)]
        r.wait()
        assert r.ready() and r.successful()
        e = pool.apply_async(
            fail_on, (3,), error_callback=lambda exc: (errors.append(exc), done.set())
        )
        done.wait(60)
        assert not e.successful()
        with pytest.raises(KeyError):
            e.get()
        slow = pool.apply_async(sleep_then, (1, 2.0))
        with pytest.raises(multiprocessing_TimeoutError()):
            slow.get(timeout=0.01)
        with pytest.raises(ValueError):
            slow.successful()
        assert slow.get(timeout=60) == 1
        s = pool.starmap_async(add, [(1, 1)], callback=got.append)
        assert s.get(60) == [2]
    assert got == [[x * x for x in range(10)], [2]]
    assert len(errors) == 1 and isinstance(errors[0], KeyError)


def multiprocessing_TimeoutError():
    import multiprocessing

    return multiprocessing.TimeoutError


def test_imap_is_lazy_over_an_endless_iterator(backend):
    with make_pool(backend) as pool:
        it = pool.imap(square, itertools.count(), chunksize=3)
        assert [next(it) for _ in range(50)] == [x * x for x in range(50)]
        un = pool.imap_unordered(square, itertools.count())
        assert len({next(un) for _ in range(20)}) == 20
        assert list(pool.imap(square, range(10))) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(square, range(10), chunksize=4)) == [
            x * x for x in range(10)
        ]
        it = pool.imap(fail_on, range(6))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyError):
            next(it)


def test_exception_keeps_its_type_and_remote_traceback(backend):
    with make_pool(backend) as pool:
        with pytest.raises(KeyError) as info:
            pool.map(fail_on, range(10))
    cause = info.value.__cause__
    assert isinstance(cause, fastmp.pool.RemoteTraceback)
    assert "fail_on" in str(cause) and "bad item 3" in str(cause)


def test_initializer_runs_once_per_worker_process(backend):
    with make_pool(backend, initializer=init_worker, initargs=("ready",)) as pool:
        states = pool.map(init_state, range(40), chunksize=1)
    assert {value for _, _, value in states} == {"ready"}
    assert {count for _, count, _ in states} == {1}


def test_close_join_and_terminate(backend):
    pool = make_pool(backend)
    r = pool.map_async(square, range(20))
    pool.close()
    with pytest.raises(ValueError):
        pool.apply_async(square, (1,))
    pool.join()
    assert r.get(0) == [x * x for x in range(20)]

    pool = make_pool(backend)
    assert pool.apply(square, (3,)) == 9
    slow = [pool.apply_async(sleep_then, (i, 3.0)) for i in range(6)]
    pool.terminate()
    pool.join()
    for r in slow:
        with pytest.raises(PoolTerminatedError):
            r.get(60)


def test_context_factory_and_env_var(backend, monkeypatch):
    if backend is not None:
        monkeypatch.setenv("FASTMP_CLUSTER", backend.scheduler.address)
    else:
        monkeypatch.delenv("FASTMP_CLUSTER", raising=False)
    for ctx in (fastmp, fastmp.get_context("spawn")):
        with ctx.Pool(2) as pool:
            assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
            pids = set(pool.starmap(os.getpid, [()] * 6, chunksize=1))
        if backend is None:
            assert os.getpid() not in pids
        else:
            worker_pids = set(backend.run(os.getpid).values())
            assert pids <= worker_pids


# --- the executor on both backends ---------------------------------------------


def test_executor_api(backend):
    with fastmp.ProcessPoolExecutor(2, cluster=backend) as ex:
        assert ex.submit(add, 1, b=2).result(60) == 3
        assert list(ex.map(square, range(20), chunksize=6, timeout=60)) == [
            x * x for x in range(20)
        ]
        futures = [ex.submit(square, i) for i in range(10)]
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, 60)) == [
            x * x for x in range(10)
        ]
        with pytest.raises(KeyError) as info:
            ex.submit(fail_on, 3).result(60)
        assert "fail_on" in str(info.value.__cause__)
        assert ex.submit(lambda: "lambda").result(60) == "lambda"
    ex = fastmp.ProcessPoolExecutor(1, cluster=backend)
    first = ex.submit(sleep_then, 1, 1.0)
    rest = [ex.submit(sleep_then, i, 1.0) for i in range(10)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == 1
    assert any(f.cancelled() for f in rest)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


# --- cluster only ---------------------------------------------------------------


def test_objects_that_cannot_cross_machines_raise_at_the_call(dask_client):
    from fastmp import shared_memory

    q = fastmp.Queue()
    lock = fastmp.Lock()
    value = fastmp.Value("i", 1)
    array = fastmp.RawArray("d", 4)
    a, b = fastmp.Pipe()
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        with make_pool(dask_client) as pool:
            for obj, name in [
                (q, "Queue"),
                (lock, "Lock"),
                (value, "Synchronized"),
                (array, "c_double_Array_4"),
                (a, "Connection"),
                (shm, "SharedMemory"),
            ]:
                with pytest.raises(TypeError, match=f"{name}.*cannot be sent to a Dask cluster"):
                    pool.apply_async(square, (obj,))
                with pytest.raises(TypeError, match=name):
                    pool.map(square, [1, obj])
            assert pool.apply(square, (4,)) == 16  # still usable
            assert not pool._cache
        with fastmp.ProcessPoolExecutor(cluster=dask_client) as ex:
            with pytest.raises(TypeError, match="Queue"):
                ex.submit(square, q).result(60)
        with fastmp.Manager() as manager, make_pool(dask_client) as pool:
            with pytest.raises(TypeError, match="DictProxy.*Manager"):
                pool.apply_async(square, (manager.dict(),))
    finally:
        q.close()
        a.close()
        b.close()
        shm.close()
        shm.unlink()


def test_dask_unreachable_scheduler_names_the_address():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(OSError, match=address):
        fastmp.Pool(cluster=address)
    with pytest.raises(OSError, match=address):
        fastmp.ProcessPoolExecutor(cluster=address)


def test_importing_fastmp_does_not_import_dask(tmp_path):
    out = run_script(
        """
        import sys
        import fastmp, fastmp.pool, fastmp.futures, fastmp.context
        fastmp.ProcessPoolExecutor
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")))
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def kill_first_attempt(marker):
    """Kills its Dask worker the first time it runs (the marker file says so)."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def kill_always(_x=None):
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_task_is_retried(dask_client, tmp_path):
    marker = tmp_path / "killed-once"
    with make_pool(dask_client) as pool:
        assert pool.apply(kill_first_attempt, (str(marker),)) == "survived"
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert marker.exists()
    dask_client.wait_for_workers(2)


def test_task_that_always_kills_its_worker_fails(dask_client):
    with make_pool(dask_client) as pool:
        r = pool.apply_async(kill_always)
        with pytest.raises(WorkerLostError, match="Dask gave up"):
            r.get(100)
        assert pool.apply(square, (5,)) == 25  # the pool goes on
    dask_client.wait_for_workers(2)
    ex = fastmp.ProcessPoolExecutor(cluster=dask_client)
    f = ex.submit(kill_always)
    with pytest.raises(BrokenProcessPool):
        f.result(100)
    with pytest.raises(BrokenProcessPool):
        ex.submit(square, 1)
    ex.shutdown()
    dask_client.wait_for_workers(2)


SCRIPT = """
import fastmp as multiprocessing
import os

OFFSET = 0

def setup(offset):
    global OFFSET
    OFFSET = offset

def work(x):
    return x * x + OFFSET, os.getpid()

class Point:
    def __init__(self, x):
        self.x = x

if __name__ == "__main__":
    with multiprocessing.Pool(4, initializer=setup, initargs=(1000,)) as pool:
        results = pool.map(work, range(100))
        assert [r for r, _ in pool.imap(work, range(5))] == [1000 + x * x for x in range(5)]
        assert pool.apply(getattr, (Point(7), "x")) == 7
    assert [r for r, _ in results] == [1000 + x * x for x in range(100)]
    with multiprocessing.ProcessPoolExecutor() as ex:
        assert [r for r, _ in ex.map(work, range(20), chunksize=6)] == [x * x for x in range(20)]
    print(os.getpid(), " ".join(str(p) for p in sorted({p for _, p in results})))
"""


def _descends_from(pid, ancestor):
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            return False
        pid = int(stat[stat.rfind(")") + 2 :].split()[1])
    return False


@contextlib.contextmanager
def real_dask(tmp_path, nworkers):
    """Starts `dask scheduler` and `dask worker` processes on 127.0.0.1;
    yields (scheduler address, scheduler Popen, worker Popen)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("FASTMP_CLUSTER", None)
    sched_file = tmp_path / "scheduler.json"
    dask_cmd = [sys.executable, "-m", "dask"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [*dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", "0"]
                + ["--no-dashboard", "--scheduler-file", str(sched_file)],
                env=env,
                cwd=tmp_path,
                start_new_session=True,
                **quiet,
            )
        )
        procs.append(
            subprocess.Popen(
                [*dask_cmd, "worker", "--scheduler-file", str(sched_file)]
                + ["--nworkers", str(nworkers), "--nthreads", "1", "--no-dashboard"],
                env=env,
                cwd=tmp_path,
                start_new_session=True,
                **quiet,
            )
        )
        import distributed

        while not sched_file.exists():
            assert procs[0].poll() is None, "dask scheduler exited"
            time.sleep(0.1)
        with distributed.Client(scheduler_file=str(sched_file), set_as_default=False) as c:
            c.wait_for_workers(nworkers)
            address = c.scheduler.address
        yield address, procs[0], procs[1]
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_dask_fastmp_cluster_env_with_real_scheduler_and_workers(tmp_path):
    """A multiprocessing script (only its import line changed) runs on
    `dask scheduler` / `dask worker` processes when FASTMP_CLUSTER is set."""
    with real_dask(tmp_path, 2) as (address, _, worker):
        out = run_script(SCRIPT, tmp_path, env={"FASTMP_CLUSTER": address}, timeout=90)
        assert out.returncode == 0, out.stderr
        script_pid, *task_pids = (int(p) for p in out.stdout.split())
        assert task_pids and script_pid not in task_pids
        assert all(_descends_from(p, worker.pid) for p in task_pids), (task_pids, worker.pid)


def test_dask_scheduler_killed_fails_pending_results(tmp_path):
    with real_dask(tmp_path, 1) as (address, scheduler, _):
        pool = fastmp.Pool(cluster=address)
        running = pool.apply_async(sleep_then, (1, 60))
        while not running.ready() and not _dask_task_running(address):
            time.sleep(0.05)
        os.killpg(scheduler.pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match="connection to the Dask scheduler was lost"):
            running.get(60)
        pool.terminate()


def _dask_task_running(address):
    import distributed

    with distributed.Client(address, set_as_default=False) as c:
        return any(c.processing().values())
