"""The queue's internal lock: never waited on with the GIL held, bounded by
the call's timeout, interruptible; fork and fd-passing hygiene (issue 9)."""

from __future__ import annotations

import os
import queue
import select
import signal
import threading
import traceback

import pytest

import fastmp
import fastmp.queues


def _hold_lock(q, ready_w):
    q._hold_lock_for_test()
    os.write(ready_w, b"x")
    signal.pause()


@pytest.fixture
def stopped_holder():
    """A fork child that holds the queue's internal lock and is SIGSTOPped."""
    ctx = fastmp.get_context("fork")
    procs = []

    def start(q):
        r, w = os.pipe()
        p = ctx.Process(target=_hold_lock, args=(q, w))
        p.start()
        os.close(w)
        assert os.read(r, 1) == b"x"  # it holds the lock now
        os.close(r)
        os.kill(p.pid, signal.SIGSTOP)
        procs.append(p)
        return p

    yield start
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        os.kill(p.pid, signal.SIGCONT)
        p.join(30)
        p.close()


def test_nowait_calls_give_up_when_the_holder_is_stopped(stopped_holder):
    q = fastmp.Queue()
    q.put(1)
    stopped_holder(q)
    results = []

    def other_thread():
        for call in (lambda: q.put_nowait(2), q.get_nowait):
            try:
                call()
                results.append("returned")
            except (queue.Full, queue.Empty) as e:
                results.append(type(e).__name__)

    t = threading.Thread(target=other_thread)
    t.start()
    # This thread keeps running Python meanwhile (the waiter released the GIL).
    n = 0
    while t.is_alive():
        n += 1
        t.join(0.01)
    assert results == ["Full", "Empty"]
    assert n >= 1


def test_timeouts_are_honoured_while_the_holder_is_stopped(stopped_holder):
    q = fastmp.Queue()
    stopped_holder(q)
    with pytest.raises(queue.Full):
        q.put("x", timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_many(3, timeout=0.05)


def test_a_killed_holder_is_recovered_by_the_kernel_not_by_pid(stopped_holder):
    q = fastmp.Queue()
    q.put("kept")
    p = stopped_holder(q)
    os.kill(p.pid, signal.SIGKILL)
    os.kill(p.pid, signal.SIGCONT)
    assert q.get(timeout=30) == "kept"
    q.put("after")
    assert q.get(timeout=30) == "after"


def _interrupted_put(q, fd):
    # SIGINT raises only while armed (inside the try below): the test sends
    # it repeatedly, and one landing in the except clause must not kill us.
    armed = [False]

    def on_sigint(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    os.write(fd, b"i")
    while True:
        try:
            armed[0] = True
            q.put("blocked behind a stopped holder")
        except KeyboardInterrupt as e:
            armed[0] = False
            # Only an interrupt raised by put itself counts (a SIGINT may
            # land just before the call).
            if any("q.put" in (f.line or "") for f in traceback.extract_tb(e.__traceback__)):
                os.write(fd, b"K")
                return


_SYS_FUTEX = 202  # x86_64


def _syscall_of(pid):
    with open(f"/proc/{pid}/syscall") as f:
        first = f.read().split()[0]
    return int(first) if first.lstrip("-").isdigit() else None


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="futex syscall number is x86_64's")
def test_ctrl_c_interrupts_a_wait_for_the_internal_lock(stopped_holder):
    ctx = fastmp.get_context("fork")
    q = fastmp.Queue()
    stopped_holder(q)
    r, w = os.pipe()
    p = ctx.Process(target=_interrupted_put, args=(q, w))
    p.start()
    os.close(w)
    try:
        assert os.read(r, 1) == b"i"
        # Wait until it sleeps in the kernel (a futex: the lock wait) before
        # interrupting it, so the interrupt hits the wait, not the way in.
        while _syscall_of(p.pid) != _SYS_FUTEX:
            select.select([], [], [], 0.01)
        got = b""
        while not got:
            os.kill(p.pid, signal.SIGINT)
            ready = select.select([r, p.sentinel], [], [], 0.2)[0]
            if r in ready:
                got = os.read(r, 1)
            elif ready:
                break  # died otherwise
    finally:
        os.close(r)
        p.join(30)
        p.close()
    assert got == b"K"


# --- fork hygiene ------------------------------------------------------------


class _Unloadable:
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild")


def _child_get(q, fd):
    try:
        item = q.get_nowait()
        os.write(fd, repr(item).encode() or b"?")
    except queue.Empty:
        os.write(fd, b"Empty")
    except RuntimeError:
        os.write(fd, b"parent's held-back error")


def test_items_held_back_by_get_many_are_not_inherited_by_a_fork_child():
    q = fastmp.Queue()
    q.put_many([1, _Unloadable(), 3])
    assert q.get_many(10) == [1]
    # The bad item's error and 3 are now held back in this process.
    r, w = os.pipe()
    p = fastmp.get_context("fork").Process(target=_child_get, args=(q, w))
    p.start()
    os.close(w)
    got = os.read(r, 100)
    os.close(r)
    p.join(30)
    p.close()
    assert got == b"Empty"
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        q.get()
    assert q.get() == 3


class _Holder:
    def __init__(self, fd=None):
        self.fd = fd

    def detach(self):
        if self.fd is None:
            raise OSError("resource sharer went away")
        return self.fd


def test_detach_all_closes_what_it_detached_when_a_later_step_fails():
    from fastmp.reduction import _detach_all

    a = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(OSError, match="went away"):
        _detach_all([_Holder(a), _Holder(None)])
    with pytest.raises(OSError):
        os.fstat(a)  # closed, not leaked


def test_rebuilding_a_queue_closes_the_fd_when_the_doorbell_cannot_be_had():
    from fastmp.queues import _rebuild

    q = fastmp.Queue()
    fd = os.dup(q._fd())
    with pytest.raises(OSError, match="went away"):
        _rebuild(fastmp.queues.Queue, 0, _Holder(fd), _Holder(None), {})
    with pytest.raises(OSError):
        os.fstat(fd)
