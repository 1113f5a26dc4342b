"""Where fastmp differs from the stdlib on purpose: dead holders do not wedge
the others, and Ctrl-C interrupts every blocking wait. fastmp only (the
stdlib hangs forever in these tests)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import fastmp
from _script import run_script

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["fork", "spawn"])
def kctx(request):
    return fastmp.get_context(request.param)


def _take_and_hang(obj, n, ready):
    for _ in range(n):
        obj.acquire()
    ready.set()
    time.sleep(600)


def _kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["Lock", "RLock", "BoundedSemaphore1"])
@pytest.mark.parametrize("reap_first", [True, False], ids=["reaped", "zombie"])
def test_dead_lock_holder_is_recovered(kctx, kind, reap_first):
    lock = kctx.BoundedSemaphore(1) if kind == "BoundedSemaphore1" else getattr(kctx, kind)()
    ready = kctx.Event()
    p = kctx.Process(target=_take_and_hang, args=(lock, 2 if kind == "RLock" else 1, ready))
    p.start()
    assert ready.wait(30)
    assert lock.acquire(timeout=0.2) is False
    if reap_first:
        _kill(p)
        assert lock.acquire(timeout=20) is True
    else:
        os.kill(p.pid, signal.SIGKILL)  # a zombie until joined: holds nothing
        assert lock.acquire(timeout=20) is True
        p.join(30)
    assert lock._is_mine()
    lock.release()
    assert lock.acquire(False) is True
    lock.release()


def test_dead_semaphore_holder_units_come_back(kctx):
    sem = kctx.Semaphore(3)
    ready = kctx.Event()
    p = kctx.Process(target=_take_and_hang, args=(sem, 2, ready))
    p.start()
    assert ready.wait(30)
    assert sem.acquire(False) is True  # the third unit
    assert sem.acquire(timeout=0.2) is False
    _kill(p)
    assert sem.acquire(timeout=20) is True
    assert sem.acquire(timeout=20) is True
    assert sem.get_value() == 0
    for _ in range(3):
        sem.release()
    assert sem.get_value() == 3


def test_signalling_semaphore_is_not_topped_up_by_a_death(kctx):
    sem = kctx.Semaphore(0)
    ready = kctx.Event()
    sem.release()  # "an item is ready"; the child consumes it and dies
    p = kctx.Process(target=_take_and_hang, args=(sem, 1, ready))
    p.start()
    assert ready.wait(30)
    _kill(p)
    assert sem.acquire(timeout=0.5) is False
    assert sem.get_value() == 0


def _proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rfind(")") + 2]


def _wait_for(predicate, what):
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.001)


def _stop_at_then(point, action, obj):
    from fastmp import _fastmp

    _fastmp._sync_test_stop_at(point)
    getattr(obj, action)()
    os._exit(3)  # never reached: SIGKILLed while stopped at the point


def _acquire_stop_at_then_release(point, sem):
    from fastmp import _fastmp

    sem.acquire()
    _fastmp._sync_test_stop_at(point)
    sem.release()
    os._exit(3)


def _kill_stopped(p):
    _wait_for(lambda: _proc_state(p.pid) == "T", "child stopped at the test point")
    _kill(p)


@pytest.mark.parametrize("bounded", [False, True])
def test_killed_between_recording_and_taking_a_unit_loses_nothing(kctx, bounded):
    """SIGKILL exactly after the unit was recorded as held, before it was taken."""
    sem = kctx.BoundedSemaphore(2) if bounded else kctx.Semaphore(2)
    p = kctx.Process(target=_stop_at_then, args=("semaphore.recorded", "acquire", sem))
    p.start()
    _kill_stopped(p)
    assert sem.get_value() == 2  # nothing was taken
    assert sem.acquire(False) and sem.acquire(False)
    assert sem._recover() == 0  # the over-count of the dead process adds no unit
    assert sem.acquire(False) is False
    sem.release()
    sem.release()
    assert sem._recover() == 0
    assert sem.get_value() == 2


def test_killed_between_giving_back_and_unrecording_a_unit_loses_nothing(kctx):
    """SIGKILL exactly after the unit was given back, before its record was dropped."""
    sem = kctx.Semaphore(1)
    p = kctx.Process(target=_acquire_stop_at_then_release, args=("semaphore.given", sem))
    p.start()
    _kill_stopped(p)
    assert sem.get_value() == 1
    assert sem._recover() == 0
    assert sem.acquire(False) is True
    assert sem._recover() == 0
    assert sem.acquire(False) is False
    sem.release()
    assert sem.get_value() == 1


def test_killed_holder_of_semaphore_units_recovered_exactly(kctx):
    """Kill a holder of 2 of 3 units while another unit is out: 2 come back, no more."""
    sem = kctx.Semaphore(3)
    ready = kctx.Event()
    p = kctx.Process(target=_take_and_hang, args=(sem, 2, ready))
    p.start()
    assert ready.wait(30)
    assert sem.acquire(False) is True
    _kill(p)
    assert sem._recover() == 2
    assert sem._recover() == 0
    assert sem.get_value() == 2
    sem.release()
    assert sem.get_value() == 3


def _block_on(kind, obj, started):
    started.set()
    if kind == "Event":
        obj.wait()
    else:
        obj.acquire()
    os._exit(3)


@pytest.mark.parametrize("kind", ["Lock", "Semaphore", "Event"])
def test_sleeper_killed_leaves_nothing_raised(kctx, kind):
    """A waiter SIGKILLed while asleep in the futex: the next release/set clears
    the trace it left (no waiter count stays raised forever)."""
    obj = {"Lock": kctx.Lock, "Semaphore": lambda: kctx.Semaphore(0), "Event": kctx.Event}[kind]()
    if kind == "Lock":
        obj.acquire()
    started = kctx.Event()
    p = kctx.Process(target=_block_on, args=(kind, obj, started))
    p.start()
    assert started.wait(30)
    # Asleep: the sleepers bit is set just before the futex wait, the only sleep after it.
    _wait_for(lambda: obj._sleepers() and _proc_state(p.pid) == "S", "child asleep in the wait")
    _kill(p)
    assert obj._sleepers()  # the dead sleeper's trace
    if kind == "Event":
        obj.set()
        assert obj.is_set()
    else:
        obj.release()
        assert obj.acquire(False) is True
        obj.release()
    assert not obj._sleepers()


def _cond_wait_report(cond, ready, q, tag):
    with cond:
        ready.release()
        q.put((tag, cond.wait(30)))


def test_condition_waiter_killed_after_notify_passes_it_on(kctx):
    cond, ready, q = kctx.Condition(), kctx.Semaphore(0), kctx.Queue()
    a = kctx.Process(target=_cond_wait_report, args=(cond, ready, q, "a"))
    a.start()
    assert ready.acquire(timeout=30)
    with cond:  # a is now inside wait()
        pass
    b = kctx.Process(target=_cond_wait_report, args=(cond, ready, q, "b"))
    b.start()
    assert ready.acquire(timeout=30)
    with cond:
        pass
    os.kill(a.pid, signal.SIGSTOP)  # a cannot consume what it is about to get
    with cond:
        cond.notify(1)  # goes to the oldest waiter, a
    _kill(a)
    assert q.get(timeout=30) == ("b", True)
    b.join(30)
    assert b.exitcode == 0


def test_condition_waiter_killed_while_waiting_does_not_swallow_notify(kctx):
    cond, ready, q = kctx.Condition(kctx.Lock()), kctx.Semaphore(0), kctx.Queue()
    procs = {}
    for tag in ("a", "b"):  # a waits first, so it is the oldest
        procs[tag] = kctx.Process(target=_cond_wait_report, args=(cond, ready, q, tag))
        procs[tag].start()
        assert ready.acquire(timeout=30)
        with cond:  # it is inside wait() now
            pass
    _kill(procs["a"])
    with cond:
        cond.notify(1)  # would go to the dead a
    assert q.get(timeout=30) == ("b", True)
    procs["b"].join(30)
    assert procs["b"].exitcode == 0


def _barrier_wait_report(barrier, q):
    try:
        barrier.wait()
        q.put("passed")
    except threading.BrokenBarrierError:
        q.put("broken")


def test_barrier_breaks_when_a_party_dies(kctx):
    barrier, q = kctx.Barrier(3), kctx.Queue()
    doomed = kctx.Process(target=_take_and_hang_barrier, args=(barrier,))
    doomed.start()
    other = kctx.Process(target=_barrier_wait_report, args=(barrier, q))
    other.start()
    deadline = time.monotonic() + 30
    while barrier.n_waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert barrier.n_waiting == 2
    _kill(doomed)
    # No timeout anywhere: without death detection this would hang (test timeout).
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    assert q.get(timeout=30) == "broken"
    other.join(30)
    barrier.reset()
    assert barrier.broken is False and barrier.n_waiting == 0


def _take_and_hang_barrier(barrier):
    barrier.wait()


# --- Ctrl-C interrupts blocking waits ---


def _blocked_until_sigint(kind, obj, about_to_block, q):
    try:
        about_to_block.set()
        if kind in ("Lock", "RLock", "Semaphore"):
            obj.acquire()
        elif kind == "Event":
            obj.wait()
        elif kind == "Condition":
            with obj:
                obj.wait()
        elif kind == "Barrier":
            obj.wait()
        q.put("returned")
    except KeyboardInterrupt:
        q.put("KeyboardInterrupt")
    except BaseException as e:  # noqa: BLE001
        q.put(repr(e))


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "Event", "Condition", "Barrier"])
def test_sigint_interrupts_blocked_wait(kctx, kind):
    if kind == "Semaphore":
        obj = kctx.Semaphore(0)
    elif kind == "Barrier":
        obj = kctx.Barrier(2)
    else:
        obj = getattr(kctx, kind)()
    if kind in ("Lock", "RLock"):
        obj.acquire()
    about, q = kctx.Event(), kctx.Queue()
    p = kctx.Process(target=_blocked_until_sigint, args=(kind, obj, about, q))
    p.start()
    assert about.wait(30)

    def blocked():  # asleep inside the wait, not merely on its way there
        if kind == "Condition":
            inside = obj._cv._waiting == 1
        elif kind == "Barrier":
            inside = obj.n_waiting == 1
        else:
            inside = obj._sleepers()
        return inside and _proc_state(p.pid) == "S"

    _wait_for(blocked, "child blocked in the wait")
    os.kill(p.pid, signal.SIGINT)
    assert q.get(timeout=30) == "KeyboardInterrupt"
    p.join(30)
    assert p.exitcode == 0
    if kind in ("Lock", "RLock"):
        obj.release()
    if kind == "Condition":  # the interrupted waiter left the table
        with obj:
            assert obj._cv._waiting == 0


# --- nothing leaks, whoever dies ---


def test_parent_killed_holding_lock(tmp_path):
    res = run_script(
        """
        import os, signal, sys, time
        import fastmp as multiprocessing

        def child(lock, started):
            started.set()
            ok = lock.acquire(timeout=30)
            print("child acquired:", ok, flush=True)
            links = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    links.append(os.readlink(f"/proc/self/fd/{fd}"))
                except OSError:
                    pass
            print("named shm:", [x for x in links if x.startswith("/dev/shm")], flush=True)

        if __name__ == "__main__":
            multiprocessing.set_start_method(sys.argv[1])
            extra = [multiprocessing.Lock() for _ in range(100)]
            lock, started = multiprocessing.Lock(), multiprocessing.Event()
            lock.acquire()
            p = multiprocessing.Process(target=child, args=(lock, started))
            p.start()
            started.wait(30)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        tmp_path,
        timeout=60,
        args=("spawn",),
    )
    assert res.returncode == -signal.SIGKILL
    assert "child acquired: True" in res.stdout, res.stderr
    # Only anonymous memory: nothing with a name that could outlive the tree.
    # (Checked in the child: other programs on this machine may use /dev/shm.)
    assert "named shm: []" in res.stdout
