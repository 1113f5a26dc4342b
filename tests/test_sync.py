"""Parity tests: each body runs against multiprocessing and fastmp, fork and spawn."""

from __future__ import annotations

import multiprocessing.heap
import pickle
import sys
import threading
import time

import pytest

import fastmp

# The stdlib's Barrier and Value allocate from multiprocessing.heap, which keeps
# its arena (an fd) open for the life of the process: create it up front so
# the leak check does not blame the first test that uses it.
_STDLIB_HEAP_WARMUP = multiprocessing.heap.BufferWrapper(64)


# --- process targets (module level, for spawn) ---


def _hold_then_release(lock, got, release):
    with lock:
        got.set()
        release.wait(10)


def _release_other(lock):
    lock.release()


def _cond_waiter(cond, ready, results, predicate_value):
    with cond:
        ready.release()
        ok = cond.wait_for(lambda: predicate_value.is_set(), timeout=10)
        results.put(bool(ok))


def _sem_worker(sem, lock, inside, seen, n):
    for _ in range(n):
        with sem:
            with lock:
                inside.release()
                seen.put(inside.get_value())
            time.sleep(0.001)
            with lock:
                inside.acquire()


def _event_setter(ev, delay):
    time.sleep(delay)
    ev.set()


def _barrier_party(barrier, q):
    q.put(barrier.wait(10))


def _ping(a, b, n):
    for _ in range(n):
        a.wait(10)
        a.clear()
        b.set()


# --- Lock ---


def test_lock_basic(ctx):
    lock = ctx.Lock()
    assert repr(lock) == "<Lock(owner=None)>"
    assert lock.acquire() is True
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    assert lock.acquire(False) is False
    assert lock.acquire(True, 0.05) is False
    assert lock.acquire(timeout=0.01) is False
    assert lock.acquire(block=False) is False
    lock.release()
    with pytest.raises(ValueError, match="semaphore or lock released too many times"):
        lock.release()
    with lock as got:
        assert got is True
    assert lock.acquire(timeout=-1) is True  # negative timeout = try once
    lock.release()


def test_lock_bad_arguments(ctx):
    lock = ctx.Lock()
    with pytest.raises(TypeError):
        lock.acquire(True, "soon")
    with pytest.raises(TypeError):
        lock.acquire(1, 2, 3)
    with pytest.raises(TypeError):
        lock.acquire(bogus=1)
    assert lock.acquire(False) is True  # still usable
    lock.release()


def test_lock_released_by_other_thread(ctx):
    lock = ctx.Lock()
    lock.acquire()
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert lock.acquire(False) is True
    lock.release()


def test_lock_released_by_other_process(ctx):
    lock = ctx.Lock()
    lock.acquire()
    p = ctx.Process(target=_release_other, args=(lock,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_lock_held_by_child_blocks_parent(ctx):
    lock, got, release = ctx.Lock(), ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_then_release, args=(lock, got, release))
    p.start()
    assert got.wait(30)
    assert lock.acquire(timeout=0.1) is False
    assert repr(lock) == "<Lock(owner=SomeOtherProcess)>"
    release.set()
    assert lock.acquire(timeout=10) is True
    lock.release()
    p.join(30)
    assert p.exitcode == 0


def test_lock_repr_other_thread(ctx):
    lock = ctx.Lock()
    held, done = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    assert repr(lock) == "<Lock(owner=SomeOtherThread)>"
    done.set()
    t.join()


# --- RLock ---


def test_rlock(ctx):
    rlock = ctx.RLock()
    assert repr(rlock) == "<RLock(None, 0)>"
    with pytest.raises(
        AssertionError, match="attempt to release recursive lock not owned by thread"
    ):
        rlock.release()
    assert rlock.acquire()
    assert rlock.acquire()
    assert rlock.acquire(False)
    assert repr(rlock) == "<RLock(MainProcess, 3)>"
    assert rlock._semlock._count() == 3
    rlock.release()
    rlock.release()
    rlock.release()
    with pytest.raises(AssertionError):
        rlock.release()

    rlock.acquire()
    failures = []

    def other():
        if rlock.acquire(timeout=0.05):
            failures.append("acquired a held RLock")
        try:
            rlock.release()
            failures.append("released an RLock it does not own")
        except AssertionError:
            pass

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert failures == []
    rlock.release()


# --- Semaphores ---


def test_semaphore(ctx):
    sem = ctx.Semaphore(2)
    assert repr(sem) == "<Semaphore(value=2)>"
    assert sem.get_value() == 2
    assert sem.acquire() and sem.acquire()
    assert sem.acquire(False) is False
    assert sem.acquire(timeout=0.05) is False
    assert sem.get_value() == 0
    sem.release()
    sem.release()
    sem.release()  # unbounded: above the initial value is fine
    assert sem.get_value() == 3
    with sem:
        assert sem.get_value() == 2
    assert ctx.Semaphore().get_value() == 1
    assert ctx.Semaphore(0).acquire(False) is False
    with pytest.raises(OSError):
        ctx.Semaphore(-1)
    with pytest.raises(TypeError):
        ctx.Semaphore("two")


def test_bounded_semaphore(ctx):
    for value in (1, 3):
        sem = ctx.BoundedSemaphore(value)
        assert repr(sem) == f"<BoundedSemaphore(value={value}, maxvalue={value})>"
        with pytest.raises(ValueError, match="semaphore or lock released too many times"):
            sem.release()
        assert sem.acquire()
        sem.release()
        assert sem.get_value() == value


def test_semaphore_bounds_concurrency(ctx):
    # (counted with a semaphore, not a Value: the stdlib's Value keeps an fd open)
    sem, lock, inside, seen = ctx.Semaphore(2), ctx.Lock(), ctx.Semaphore(0), ctx.Queue()
    procs = [ctx.Process(target=_sem_worker, args=(sem, lock, inside, seen, 20)) for _ in range(3)]
    for p in procs:
        p.start()
    values = [seen.get(timeout=60) for _ in range(60)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert 1 <= max(values) <= 2
    assert inside.get_value() == 0
    assert sem.get_value() == 2


# --- Condition ---


def test_condition_errors_and_timeout(ctx):
    cond = ctx.Condition()
    with pytest.raises(AssertionError, match="must acquire"):
        cond.wait()
    with pytest.raises(AssertionError, match="lock is not owned"):
        cond.notify()
    with pytest.raises(AssertionError, match="lock is not owned"):
        cond.notify_all()
    with cond:
        assert cond.wait(0.05) is False
        assert cond.wait_for(lambda: 42) == 42
        assert cond.wait_for(lambda: 0, timeout=0.05) == 0
        cond.notify()  # nobody waiting: fine
        cond.notify_all()
    assert repr(cond).startswith("<Condition(<RLock(None, 0)>, ")


@pytest.mark.parametrize("lock_kind", ["RLock", "Lock"])
def test_condition_notify_across_processes(ctx, lock_kind):
    cond = ctx.Condition(getattr(ctx, lock_kind)())
    ready, flag, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_cond_waiter, args=(cond, ready, results, flag)) for _ in range(3)]
    for p in procs:
        p.start()
    for _ in procs:
        assert ready.acquire(timeout=30)
    with cond:
        flag.set()
        cond.notify_all()
    assert sorted(results.get(timeout=30) for _ in procs) == [True, True, True]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0


def test_condition_notify_n_threads(ctx):
    cond = ctx.Condition(ctx.Lock())
    woken = []
    started = threading.Semaphore(0)

    def waiter(i):
        with cond:
            started.release()
            if cond.wait(10):
                woken.append(i)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in threads:
        started.acquire()
    time.sleep(0.1)
    with cond:
        cond.notify(2)
    time.sleep(0.3)
    assert len(woken) == 2
    with cond:
        cond.notify(5)
    for t in threads:
        t.join(20)
    assert sorted(woken) == [0, 1, 2, 3]


# --- Event ---


def test_event(ctx):
    ev = ctx.Event()
    assert ev.is_set() is False
    assert ev.wait(0.05) is False
    assert ev.wait(timeout=0) is False
    ev.set()
    assert ev.is_set() is True
    assert ev.wait() is True
    assert ev.wait(0) is True
    ev.clear()
    assert ev.is_set() is False
    if type(ctx).__module__ != "multiprocessing.context" or sys.version_info >= (3, 11):
        assert "unset" in repr(ev)  # the stdlib's Event has this repr since 3.11
    p = ctx.Process(target=_event_setter, args=(ev, 0.2))
    p.start()
    assert ev.wait(30) is True
    p.join(30)


def test_event_ping_pong(ctx):
    a, b = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_ping, args=(a, b, 200))
    p.start()
    for _ in range(200):
        a.set()
        assert b.wait(10)
        b.clear()
    p.join(30)
    assert p.exitcode == 0


# --- Barrier ---


def test_barrier(ctx):
    barrier = ctx.Barrier(3)
    assert barrier.parties == 3 and barrier.n_waiting == 0 and barrier.broken is False
    q = ctx.Queue()
    procs = [ctx.Process(target=_barrier_party, args=(barrier, q)) for _ in range(2)]
    for p in procs:
        p.start()
    mine = barrier.wait(30)
    indexes = sorted([mine, q.get(timeout=30), q.get(timeout=30)])
    assert indexes == [0, 1, 2]
    for p in procs:
        p.join(30)
    # a second cycle works too
    procs = [ctx.Process(target=_barrier_party, args=(barrier, q)) for _ in range(2)]
    for p in procs:
        p.start()
    assert barrier.wait(30) in (0, 1, 2)
    assert sorted(q.get(timeout=30) for _ in procs) != []
    for p in procs:
        p.join(30)


def test_barrier_timeout_abort_reset(ctx):
    barrier = ctx.Barrier(2, timeout=0.1)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    assert barrier.broken is True
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert barrier.broken is False
    barrier.abort()
    assert barrier.broken is True
    barrier.reset()
    calls = []
    b1 = ctx.Barrier(1, action=lambda: calls.append(1))
    assert b1.wait() == 0
    assert calls == [1]


# --- pickling ---


@pytest.mark.parametrize(
    "kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier"]
)
def test_pickling_refused_outside_spawning(ctx, kind):
    obj = getattr(ctx, kind)(2) if kind == "Barrier" else getattr(ctx, kind)()
    with pytest.raises(
        RuntimeError, match="should only be shared between processes through inheritance"
    ):
        pickle.dumps(obj)


def test_types_and_names():
    import multiprocessing.synchronize as std

    import fastmp.synchronize

    for name in dir(std):
        if not name.startswith("__"):
            assert hasattr(fastmp.synchronize, name), name
    assert isinstance(fastmp.Lock(), fastmp.synchronize.Lock)
    assert issubclass(fastmp.synchronize.BoundedSemaphore, fastmp.synchronize.Semaphore)
    assert isinstance(fastmp.Barrier(2), threading.Barrier)


def test_many_locks_share_one_fd():
    import os

    before = len(os.listdir("/proc/self/fd"))
    locks = [fastmp.Lock() for _ in range(1000)] + [fastmp.RLock() for _ in range(500)]
    after = len(os.listdir("/proc/self/fd"))
    assert after - before <= 2
    for lk in locks[::97]:
        with lk:
            pass
    del locks


# Every start method, fastmp only (the stdlib's forkserver is covered by its own tests).
def _fctx_child(lock, sem, ev, cond, barrier, q):
    with lock:
        pass
    sem.acquire()
    with cond:
        cond.notify_all()
    q.put(barrier.wait(10))
    ev.set()


def test_all_start_methods(fctx):
    lock, sem, ev, cond, barrier, q = (
        fctx.RLock(),
        fctx.Semaphore(1),
        fctx.Event(),
        fctx.Condition(),
        fctx.Barrier(2),
        fctx.Queue(),
    )
    p = fctx.Process(target=_fctx_child, args=(lock, sem, ev, cond, barrier, q))
    p.start()
    i = barrier.wait(30)
    assert ev.wait(30)
    assert sorted([i, q.get(timeout=30)]) == [0, 1]
    p.join(30)
    assert p.exitcode == 0
    assert sem.get_value() == 0


def _wait_then_check(ev, lock, q):
    ev.wait(30)
    q.put(lock.acquire(False))  # still our own lock, untouched by the parent's new ones
    lock.release()


def test_slot_not_reused_while_a_forked_child_uses_it():
    import gc

    ctx = fastmp.get_context("fork")
    lock, ev, q = ctx.Lock(), ctx.Event(), ctx.Queue()
    where = lock._handle()[1:]
    p = ctx.Process(target=_wait_then_check, args=(ev, lock, q))
    p.start()
    del lock
    gc.collect()
    others = [ctx.Lock() for _ in range(50)]
    assert all(o._handle()[1:] != where for o in others)
    for o in others:
        o.acquire()  # would show up as "held" in the child if a slot were shared
    ev.set()
    assert q.get(timeout=30) is True
    p.join(30)
    assert p.exitcode == 0


def test_slot_kept_for_a_child_that_has_not_run_yet(tmp_path):
    """`p = Process(args=(s,)); del s; p.start()`: the stdlib's start() drops
    its reference to the arguments right after fork, maybe before the child
    ever ran. The child's reference must exist from the fork on, or the
    parent's next object gets the child's slot. A test hook holds the child in
    its fork handler until the parent has made its new objects."""
    from _script import run_script

    res = run_script(
        """
        import gc, os
        import fastmp
        from fastmp import _fastmp

        def child(s):
            ok = s.get_value() == 5 and s.acquire(False)
            os._exit(0 if ok else 1)

        if __name__ == "__main__":
            ctx = fastmp.get_context("fork")
            anchor = ctx.Lock()  # keeps the arena mapped in the parent
            s = ctx.Semaphore(5)
            where = s._handle()[1:]
            r, w = os.pipe()
            _fastmp._sync_test_pause_child_after_fork(r)
            p = ctx.Process(target=child, args=(s,))
            del s
            p.start()
            _fastmp._sync_test_pause_child_after_fork(-1)
            gc.collect()
            others = [ctx.Lock() for _ in range(20)]
            for o in others:
                o.acquire()
            shared = any(o._handle()[1:] == where for o in others)
            os.write(w, b"x")  # now let the child run
            p.join(30)
            print(shared, p.exitcode)
        """,
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "0"]


def _add_under_lock(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def test_lock_works_in_stdlib_synchronized_wrappers(fctx):
    """Value/Array wrappers (stdlib-style sharedctypes.synchronized) take a fastmp lock.

    (An RLock, as Value's default: `.value` takes the lock again inside
    `with get_lock()`, so a plain Lock deadlocks there, with the stdlib too.)
    """
    import multiprocessing.sharedctypes as std_sharedctypes

    lock = fctx.RLock()
    v = std_sharedctypes.synchronized(std_sharedctypes.RawValue("i", 0), lock)
    assert v.get_lock() is lock
    assert v.acquire() is True
    v.release()
    procs = [fctx.Process(target=_add_under_lock, args=(v, 500)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert v.value == 1000


def _release_semlock(s, out):
    s.release()
    out.put("released")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_raw_semlock_semaphore_of_maxvalue_one_reaches_a_child(method):
    import fastmp.synchronize as fs

    ctx = fastmp.get_context(method)
    s = fs.SemLock(fs.SEMAPHORE, 0, 1, ctx=ctx)  # a semaphore, not a lock, despite maxvalue 1
    out = ctx.Queue()
    p = ctx.Process(target=_release_semlock, args=(s, out))
    p.start()
    assert out.get(timeout=60) == "released"
    p.join(30)
    assert p.exitcode == 0
    assert s.acquire(timeout=5)
