"""Queues under signals and SIGKILL: nothing wedges, nothing leaks (DESIGN.md 3-5)."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest

import fastmp
from _script import run_script

BIG = 8 << 20


def _blocked_get(q, out):
    out.put("ready")
    try:
        q.get()
    except KeyboardInterrupt:
        out.put("interrupted")


def _blocked_put(q, out):
    out.put("ready")
    try:
        q.put("no room")
    except KeyboardInterrupt:
        out.put("interrupted")


@pytest.mark.parametrize("target", [_blocked_get, _blocked_put], ids=["get", "put"])
def test_sigint_interrupts_a_blocked_call(fctx, target):
    q, out = fctx.Queue(maxsize=1), fctx.Queue()
    if target is _blocked_put:
        q.put("fill")
    p = fctx.Process(target=target, args=(q, out))
    p.start()
    assert out.get(timeout=30) == "ready"
    time.sleep(0.3)  # let it get past any spinning into the futex sleep
    os.kill(p.pid, signal.SIGINT)
    assert out.get(timeout=10) == "interrupted"
    p.join(10)
    assert p.exitcode == 0


def _greedy_consumer(q):
    while True:
        q.get()


def _big_producer(q, tag):
    i = 0
    while True:
        q.put(bytes([tag]) * 8 + i.to_bytes(8, "little") + bytes([tag]) * (BIG - 16))
        i += 1


def test_consumer_killed_mid_get_does_not_wedge_others():
    q = fastmp.Queue()
    for round_ in range(4):
        for i in range(30):
            q.put(bytes([i]) * BIG)
        victim = fastmp.Process(target=_greedy_consumer, args=(q,))
        victim.start()
        time.sleep(0.05 + 0.03 * round_)
        victim.kill()
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL
        # Whatever it left is intact and the queue still works, in order.
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                break
            assert len(item) == BIG and item == bytes([item[0]]) * BIG
    q.put_many(["a", "b"])
    assert q.get_many(2, timeout=5) == ["a", "b"]


def test_producer_killed_mid_put_leaves_only_whole_messages():
    q = fastmp.Queue()
    for round_ in range(4):
        victim = fastmp.Process(target=_big_producer, args=(q, 65 + round_))
        victim.start()
        time.sleep(0.2 + 0.05 * round_)
        victim.kill()
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL
        expected = 0
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                break
            assert len(item) == BIG
            assert int.from_bytes(item[8:16], "little") == expected  # none lost, none torn
            assert item[:8] == item[16:24] == bytes([65 + round_]) * 8 and item[-1] == 65 + round_
            expected += 1
    q.put("still works")
    assert q.get(timeout=5) == "still works"


def _wait_until_sleeping_in_futex(pid, timeout=30):
    """Returns once `pid` sleeps in a futex wait (the state a kill must hit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as f:
            if f.read().startswith("futex"):
                return
        time.sleep(0.002)
    pytest.fail(f"process {pid} never slept in a futex wait")


def _get_and_report(q, out):
    out.put("ready")
    out.put(("got", q.get()))


def test_consumer_killed_while_sleeping_does_not_swallow_items():
    # Two consumers sleep in get(); the one that slept first is killed while
    # sleeping. The item put next must wake the other one.
    q, out = fastmp.Queue(), fastmp.Queue()
    victim = fastmp.Process(target=_blocked_get, args=(q, out))
    victim.start()
    assert out.get(timeout=30) == "ready"
    _wait_until_sleeping_in_futex(victim.pid)
    survivor = fastmp.Process(target=_get_and_report, args=(q, out))
    survivor.start()
    assert out.get(timeout=30) == "ready"
    _wait_until_sleeping_in_futex(survivor.pid)
    _wait_until_sleeping_in_futex(victim.pid)
    victim.kill()
    victim.join(10)
    assert victim.exitcode == -signal.SIGKILL
    q.put("for the living")
    assert out.get(timeout=30) == ("got", "for the living")
    survivor.join(30)
    assert survivor.exitcode == 0
    q.put("still works")
    assert q.get(timeout=5) == "still works"


PARENT_KILLED = """
import os, queue, signal, sys
import fastmp

def child(q):
    while True:
        try:
            q.get(timeout=1.0)
        except queue.Empty:
            return

if __name__ == "__main__":
    fastmp.set_start_method(sys.argv[1])
    q = fastmp.Queue()
    kids = [fastmp.Process(target=child, args=(q,)) for _ in range(2)]
    for k in kids:
        k.start()
    q.put_many(range(1000))
    q.put(b"x" * (4 << 20))
    print(os.fstat(q._fd()).st_ino, flush=True)
    print(" ".join(str(k.pid) for k in kids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _memfd_holders(inode):
    """Pids holding (fd) or mapping a memfd with this inode, machine-wide."""
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/memfd:") and os.stat(f"/proc/{pid}/fd/{fd}").st_ino == inode:
                    holders.append(int(pid))
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and "/memfd:" in fields[5] and int(fields[4]) == inode:
                        holders.append(int(pid))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile, or not ours to look at
    return sorted(set(holders))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_parent_killed_leaves_nothing_behind(tmp_path, method):
    shm_before = set(os.listdir("/dev/shm"))
    res = run_script(PARENT_KILLED, tmp_path, timeout=60, args=[method])
    assert res.returncode == -signal.SIGKILL, res.stderr
    inode_line, kids_line = res.stdout.splitlines()
    queue_inode = int(inode_line)
    kids = [int(x) for x in kids_line.split()]
    assert len(kids) == 2
    # The orphans drain the queue and exit by themselves; run_script has
    # already killed the session, so they are gone either way: check that.
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in kids)
    # The queue's memory went with its last process: no process on the
    # machine still holds or maps its memfd.
    assert _memfd_holders(queue_inode) == []
    # No names were ever created: nothing in /dev/shm, no temp files.
    assert set(os.listdir("/dev/shm")) == shm_before
    assert not list(tmp_path.glob("*")) or [p.name for p in tmp_path.iterdir()] == ["script.py"]


OUT_OF_MEMORY = """
import resource
import fastmp

q = fastmp.Queue()
big = b"x" * (100 << 20)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
# Leave room for what is mapped now, not for a 100 MiB ring on top.
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (50 << 20), hard))
for call in (q.put, lambda b: q.put_many([b])):
    try:
        call(big)
    except OSError as e:
        print("OSError", e.errno)
    except BaseException as e:
        print("wrong", type(e).__name__, e)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
q.put("usable")
print(q.get())
"""


def test_out_of_memory_is_an_oserror_and_the_queue_stays_usable(tmp_path):
    res = run_script(OUT_OF_MEMORY, tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:3] == ["OSError 12", "OSError 12", "usable"], res.stdout
