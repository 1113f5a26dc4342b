"""fastmp Pool robustness: dead workers, Ctrl-C, use from another process.

The stdlib hangs in every one of these cases, so these tests run on fastmp only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import pytest

import fastmp
from _script import run_script
from fastmp.pool import PoolTerminatedError, WorkerLostError

pytestmark = pytest.mark.timeout(90)

METHODS = ["fork", "spawn"]


def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.05)
    return x * x


def sigkill_self(_x=None):
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(_x=None):
    time.sleep(0.1)
    os._exit(7)


def segfault(_x=None):
    time.sleep(0.1)
    ctypes.string_at(0)


def kill_on(x, bad=5):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def worker_pid(_x=None):
    time.sleep(0.01)
    return os.getpid()


# Spawn children re-import this module: they find the parent's pid in the
# environment they inherited.
_PARENT = int(os.environ.setdefault("FASTMP_TEST_POOL_PARENT", str(os.getpid())))


def _explode_outside_parent():
    if os.getpid() != _PARENT:
        raise RuntimeError("cannot rebuild this argument in a worker")
    return "fine"


class RefusesToUnpickle:
    def __reduce__(self):
        return (_explode_outside_parent, ())


def _die_outside_parent():
    if os.getpid() != _PARENT:
        os.kill(os.getpid(), signal.SIGKILL)
    return "fine"


class KillsWhileUnpickled:
    """Kills the worker while it is still inside get(), before it has
    recorded which task it took."""

    def __reduce__(self):
        return (_die_outside_parent, ())


@pytest.fixture(params=METHODS)
def pool(request, _no_leftovers):
    p = fastmp.get_context(request.param).Pool(2)
    yield p
    p.terminate()
    p.join()


@pytest.mark.parametrize("killer, exitcode", [(sigkill_self, -9), (exit_hard, 7), (segfault, -11)])
def test_worker_death_fails_that_task_and_pool_recovers(pool, killer, exitcode):
    others = [pool.apply_async(slow_square, (i,)) for i in range(20)]
    doomed = pool.apply_async(killer)
    with pytest.raises(WorkerLostError) as info:
        doomed.get(timeout=30)
    assert info.value.exitcode == exitcode
    assert "died" in str(info.value)
    assert [r.get(timeout=30) for r in others] == [i * i for i in range(20)]
    # the dead worker was replaced: two live workers serve new tasks
    assert len(set(pool.map(worker_pid, range(40), 1))) == 2
    assert pool.map(square, range(10)) == [i * i for i in range(10)]


def test_worker_death_in_map_and_imap(pool):
    with pytest.raises(WorkerLostError):
        pool.map(kill_on, range(10), 2)
    it = pool.imap(kill_on, range(8))
    got = []
    for _ in range(8):
        try:
            got.append(next(it))
        except WorkerLostError:
            got.append("lost")
    assert got == [0, 1, 2, 3, 4, "lost", 6, 7]
    assert sorted(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]


def test_task_that_cannot_be_unpickled_in_the_worker_fails(pool):
    r = pool.apply_async(square, (RefusesToUnpickle(),))
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        r.get(timeout=30)
    assert pool.apply(square, (4,)) == 16


def test_error_is_exported_and_documented():
    assert fastmp.pool.WorkerLostError is WorkerLostError
    assert "WorkerLostError" in fastmp.pool.__all__
    assert issubclass(WorkerLostError, fastmp.ProcessError)
    assert WorkerLostError.__doc__
    err = WorkerLostError("x", -9, 123)
    import pickle

    copy = pickle.loads(pickle.dumps(err))
    assert (copy.exitcode, copy.pid, str(copy)) == (-9, 123, "x")


def test_terminate_fails_pending_results():
    p = fastmp.Pool(1)
    r = p.apply_async(time.sleep, (30,))
    m = p.map_async(time.sleep, [30])
    p.terminate()
    with pytest.raises(PoolTerminatedError):
        r.get(10)
    with pytest.raises(PoolTerminatedError):
        m.get(10)
    p.join()


def test_pool_used_in_fork_child_raises(tmp_path):
    out = run_script(
        """
        import fastmp

        def square(x):
            return x * x

        def child(pool, q):
            try:
                pool.apply(square, (2,))
                q.put("no error")
            except NotImplementedError as e:
                q.put("NotImplementedError: " + str(e))

        if __name__ == "__main__":
            ctx = fastmp.get_context("fork")
            pool = ctx.Pool(2)
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(pool, q))
            p.daemon = True
            p.start()
            print(q.get(timeout=20))
            p.join()
            print(pool.apply(square, (3,)))
            pool.close()
            pool.join()
        """,
        tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("NotImplementedError: this Pool was created by process")
    assert lines[1] == "9"


def test_pool_passed_to_spawn_child_raises(tmp_path):
    out = run_script(
        """
        import fastmp

        def child(pool):
            pass

        if __name__ == "__main__":
            ctx = fastmp.get_context("spawn")
            with ctx.Pool(1) as pool:
                p = ctx.Process(target=child, args=(pool,))
                try:
                    p.start()
                except NotImplementedError as e:
                    print("refused:", e)
        """,
        tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "refused: pool objects cannot be passed between processes or pickled" in out.stdout


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("whole_group", [False, True], ids=["parent-only", "process-group"])
def test_ctrl_c_during_map(tmp_path, method, whole_group):
    """SIGINT while the parent waits in map(): KeyboardInterrupt promptly, no
    worker left behind (to the parent only, or to the whole group as a
    terminal's Ctrl-C does)."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(
        f"""
import os, sys, time
import fastmp

def slow(x):
    time.sleep(60)
    return x

if __name__ == "__main__":
    pool = fastmp.get_context({method!r}).Pool(2)
    pids = [p.pid for p in pool._pool]
    print("workers", *pids, flush=True)
    t0 = time.monotonic()
    try:
        pool.map(slow, range(8))
    except KeyboardInterrupt:
        print("KeyboardInterrupt after %.1f s" % (time.monotonic() - t0), flush=True)
        raise SystemExit(3)
"""
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("workers"), line + proc.stderr.read()
        workers = [int(x) for x in line.split()[1:]]
        time.sleep(0.5)  # the map is running
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 3, err
    assert "KeyboardInterrupt after" in out
    # The script reaped its workers before exiting (no zombie, no orphan).
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")], (
        "workers outlived the script"
    )


def _blocked_signals(path):
    with open(path) as f:
        for line in f:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}
    raise AssertionError(f"no SigBlk in {path}")


@pytest.mark.parametrize("method", METHODS)
def test_pool_threads_leave_signals_to_the_main_thread(method):
    """A Ctrl-C sent to the process must reach the main thread (the only one
    that runs Python handlers): Linux gives it to any thread not blocking it,
    and a pool thread that took it left the main thread asleep in map()
    forever. The pool's threads block it; a worker started by one of them (a
    replacement) gets the mask of the thread that made the pool, not theirs."""
    with fastmp.get_context(method).Pool(1) as pool:
        threads = [t for t in pool._threads if t.is_alive()]
        assert threads
        for t in threads:
            blocked = _blocked_signals(f"/proc/self/task/{t.native_id}/status")
            assert {signal.SIGINT, signal.SIGTERM} <= blocked, t.name
            assert signal.SIGSEGV not in blocked, t.name
        assert signal.SIGINT not in _blocked_signals("/proc/self/status")
        first = pool.apply(worker_pid)
        with pytest.raises(WorkerLostError):
            pool.apply(sigkill_self)
        second = pool.apply(worker_pid, ())
        assert second != first
        assert signal.SIGINT not in _blocked_signals(f"/proc/{second}/status")
        assert pool.apply(square, (7,)) == 49


def _raise_value_error(_x=None):
    raise ValueError("expected")


def _masks_seen_by_user_code():
    """(this thread's blocked signals, a subprocess's blocked signals)."""
    import subprocess

    mine = _blocked_signals("/proc/thread-self/status")
    out = subprocess.run(
        ["sh", "-c", "grep SigBlk /proc/self/status"], capture_output=True, text=True, timeout=30
    ).stdout
    mask = int(out.split()[1], 16)
    child = {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}
    return mine, child


def test_user_code_on_pool_threads_runs_with_the_callers_signal_mask():
    """Callbacks, an imap's iterable and executor done-callbacks run on
    fastmp's threads, as on the stdlib's, and must see (and hand on to the
    processes they start) the mask of the code that made the pool, not the
    helper thread's: a subprocess started there could not be interrupted."""
    import concurrent.futures

    import fastmp.futures

    seen = []

    def record(*_):
        seen.append(_masks_seen_by_user_code())

    def items():
        record()
        yield 1

    with fastmp.Pool(1) as pool:
        pool.apply_async(square, (2,), callback=record).get(30)
        pool.map_async(square, [1, 2], callback=record).get(30)
        # (an exception, not a dead worker: a replacement forked while the
        # callback's subprocess starts would hold its exec-error pipe open)
        pool.apply_async(_raise_value_error, error_callback=record).wait(30)
        assert list(pool.imap(square, items())) == [1]
        for t in pool._threads:
            if t.is_alive():  # back to blocking once the user code returned
                assert signal.SIGINT in _blocked_signals(f"/proc/self/task/{t.native_id}/status")
    with fastmp.futures.ProcessPoolExecutor(1) as ex:
        f = ex.submit(square, 3)
        f.add_done_callback(record)
        concurrent.futures.wait([f], timeout=30)
        assert f.result() == 9
    deadline = time.monotonic() + 30
    while len(seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 5
    for mine, child in seen:
        assert signal.SIGINT not in mine and signal.SIGTERM not in mine
        assert signal.SIGINT not in child and signal.SIGTERM not in child


def test_fork_child_exit_does_not_stop_parents_pool(tmp_path):
    """A bare os.fork() child runs the parent's exit handlers when it exits;
    they must leave the parent's pool alone."""
    out = run_script(
        """
        import os, sys
        import fastmp

        def square(x):
            return x * x

        if __name__ == "__main__":
            pool = fastmp.Pool(2)
            print(pool.apply(square, (2,)), flush=True)
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # atexit: multiprocessing's finalizers run here
            os.waitpid(pid, 0)
            print(pool.map(square, range(4)))
            pool.close()
            pool.join()
        """,
        tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["4", "[0, 1, 4, 9]"]


def test_terminate_from_a_callback(pool):
    """terminate() called from a callback (the result thread) stops the pool
    and frees everything once that thread leaves."""
    done = []

    def stop(_value):
        pool.terminate()
        done.append(True)

    r = pool.apply_async(square, (3,), callback=stop)
    assert r.get(30) == 9
    pool.join()
    assert done == [True]


def test_worker_killed_while_taking_a_task(pool):
    r = pool.apply_async(square, (KillsWhileUnpickled(),))
    with pytest.raises(WorkerLostError, match="before recording it"):
        r.get(timeout=30)
    assert pool.map(square, range(6)) == [0, 1, 4, 9, 16, 25]


def test_dropped_pool_is_cleaned_up():
    """A Pool dropped with results still pending stays alive until they are
    in (as the stdlib's); then its finalizer, run in the pool's own result
    thread, stops it: no worker, thread or fd is left (the leak fixture
    checks)."""
    p = fastmp.Pool(2)
    results = [p.apply_async(time.sleep, (0.2,)) for _ in range(3)]
    del p, results
