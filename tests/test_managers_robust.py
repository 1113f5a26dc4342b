"""fastmp's manager where the stdlib's wedges or loses data: processes killed by
SIGKILL inside an operation, a dead lock holder, a dead manager creator; and
memory that grows with the content and is given back."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastmp
from fastmp import managers as fmanagers

# --- helpers ---


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _wait_stopped(p) -> None:
    """Waits until the child stopped itself inside the operation (the test
    hook raises SIGSTOP there), so the kill lands mid-operation."""
    while _state(p.pid) not in ("T", "t"):
        assert p.exitcode is None, "the child finished without reaching the hook"
        time.sleep(0.002)


def _kill(p) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL


# --- process targets ---


def _update(d, n):
    d.update({i: "new" for i in range(n)})


def _setitem(d):
    d["k"] = "new"


def _delitem(d):
    del d["k"]


def _append(lst):
    lst.append("new")


def _batches_forever(d, started):
    for batch in itertools.count():
        d.update({(batch, i): batch for i in range(500)})
        started.set()


def _hold_lock(lock, held):
    lock.acquire()
    held.set()
    time.sleep(600)


@pytest.fixture(params=["fork", "spawn"])
def mgr(request):
    with fastmp.get_context(request.param).Manager() as m:
        m.ctx = fastmp.get_context(request.param)
        yield m
    m._process.close()  # its sentinel, before the leak check (pytest keeps `m` a while)


def _run_paused(mgr, target, args, container, pause_at):
    container._native()._pause_at(pause_at)
    p = mgr.ctx.Process(target=target, args=args)
    p.start()
    _wait_stopped(p)
    container._native()._pause_at(0)
    _kill(p)


# --- killed inside an operation: it happened wholly or not at all ---


def test_killed_inside_update_is_undone(mgr):
    d = mgr.dict({i: "old" for i in range(100)})
    _run_paused(mgr, _update, (d, 2000), d, 300)
    assert len(d) == 100
    assert set(d.values()) == {"old"}
    assert d._native()._recoveries == 1
    d.update({i: "after" for i in range(2000)})
    assert len(d) == 2000 and set(d.values()) == {"after"}


def test_killed_inside_setitem_is_undone(mgr):
    d = mgr.dict(k="old")
    _run_paused(mgr, _setitem, (d,), d, 1)
    assert d.items() == [("k", "old")]


def test_killed_inside_delitem_is_undone(mgr):
    d = mgr.dict(k="old", other=1)
    _run_paused(mgr, _delitem, (d,), d, 2)
    assert d.items() == [("k", "old"), ("other", 1)]
    del d["k"]
    assert d.items() == [("other", 1)]


def test_killed_inside_append_is_undone(mgr):
    lst = mgr.list(["a"])
    _run_paused(mgr, _append, (lst,), lst, 1)
    assert lst[:] == ["a"]
    lst.append("b")
    assert lst[:] == ["a", "b"]


def test_killed_at_random_points_of_big_updates(mgr):
    """No hook: kills land wherever the writer is (allocator included)."""
    d = mgr.dict()
    for _ in range(3):
        started = mgr.ctx.Event()
        p = mgr.ctx.Process(target=_batches_forever, args=(d, started))
        p.start()
        assert started.wait(60)
        _kill(p)
        counts: dict = {}
        for batch, _i in d.keys():
            counts[batch] = counts.get(batch, 0) + 1
        assert set(counts.values()) == {500}, "a batch was partly applied"
        d.clear()


def test_killed_lock_holder_does_not_wedge(mgr):
    lock, held = mgr.Lock(), mgr.ctx.Event()
    p = mgr.ctx.Process(target=_hold_lock, args=(lock, held))
    p.start()
    assert held.wait(60)
    _kill(p)
    assert lock.acquire(timeout=30)
    lock.release()


# --- nothing outlives a killed creator ---


def test_server_exits_when_creator_is_killed(tmp_path):
    script = tmp_path / "creator.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            import fastmp
            if __name__ == "__main__":
                m = fastmp.Manager()
                d = m.dict(a=1)
                d["b"] = bytes(1 << 20)
                print(m._process.pid, flush=True)
                time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server = int(proc.stdout.readline())
        assert _state(server) not in ("gone", "Z")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 60
    while _state(server) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(server) in ("gone", "Z"), "the manager's server outlived its creator"


# --- memory grows with the content and is given back ---

MiB = 1 << 20


def test_big_value_grows_and_gives_back():
    with fastmp.Manager() as m:
        d = m.dict()
        big = bytes(256 * MiB)
        d["big"] = big
        assert d._native()._memory_used >= 256 * MiB
        assert d["big"] == big
        del big
        del d["big"]
        assert d._native()._memory_used < 16 * MiB


def test_million_keys_then_clear():
    with fastmp.Manager() as m:
        d = m.dict()
        d.update({i: i for i in range(1_000_000)})
        assert len(d) == 1_000_000 and d[999_999] == 999_999 and d[0.0] == 0
        grown = d._native()._memory_used
        assert grown > 32 * MiB
        d.clear()
        assert len(d) == 0 and d._native()._memory_used < 4 * MiB
        d["again"] = 1
        assert d.items() == [("again", 1)]


def test_deletes_give_memory_back():
    with fastmp.Manager() as m:
        lst = m.list()
        lst.extend([bytes(100)] * 200_000)
        grown = lst._native()._memory_used
        for _ in range(len(lst) - 10):
            lst.pop()
        assert len(lst) == 10
        assert lst._native()._memory_used < grown / 4


def test_server_killed_containers_keep_working():
    """The stdlib's proxies all fail once its server is killed; fastmp's
    containers live in shared memory and go on working for the processes
    that already use them (nothing is left behind: no socket file, no fd)."""
    m = fastmp.Manager()
    d, lst = m.dict(a=1), m.list([1])
    assert d["a"] == 1 and lst[0] == 1  # attached here
    os.kill(m._process.pid, signal.SIGKILL)
    m._process.join(30)
    d["b"] = 2
    lst.append(2)
    assert d.items() == [("a", 1), ("b", 2)] and lst[:] == [1, 2]
    m.shutdown()
    m._process.close()


def test_thousands_of_objects_under_a_low_fd_limit():
    """Each native object costs its users one fd: fastmp lifts the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        fmanagers._raised_fd_limit.clear()
        with fastmp.Manager() as m:
            dicts = [m.dict(i=i) for i in range(1500)]
            assert sum(d["i"] for d in dicts) == sum(range(1500))
            del dicts
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
