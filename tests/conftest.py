"""Shared fixtures: leak checks for every test, and the parity matrix.

Every test runs under `_no_leftovers`, which fails it if it leaves child
processes, threads, file descriptors or /dev/shm entries behind (and cleans
them up so the next test starts clean).
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import signal
import threading
import time

import pytest

import fastmp

SETTLE_SECONDS = 5.0


def pytest_configure(config):
    # A shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the Ctrl-C tests would hang when
    # the suite runs in the background (as CI may). Tests expect Python's own.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _children() -> set[int]:
    me = os.getpid()
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == me:
            kids.add(int(entry))
    return kids


def _service_pids() -> set[int]:
    """Long-lived helpers the stdlib starts once per session (not leaks)."""
    pids = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        pids.add(forkserver._forkserver._forkserver_pid)
        pids.add(resource_tracker._resource_tracker._pid)
    except Exception:  # noqa: BLE001
        pass
    return {p for p in pids if p}


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _reap():
    multiprocessing.active_children()
    fastmp.active_children()


@pytest.fixture(autouse=True)
def _no_leftovers():
    _reap()
    gc.collect()
    kids0, threads0, fds0, shm0 = _children(), set(threading.enumerate()), _fds(), _shm()
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        _reap()
        gc.collect()
        kids = _children() - kids0 - _service_pids()
        threads = {t for t in threading.enumerate() if t not in threads0 and t.is_alive()}
        fds = _fds() - fds0 - {fd for fd in _fds() if _is_service_fd(fd)}
        shm = _shm() - shm0
        if not (kids or threads or fds or shm) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    # /dev/shm entries are reported but not removed: on a shared machine they
    # may belong to another test run.
    problems = []
    if kids:
        problems.append(f"child processes left running: {sorted(kids)}")
    if threads:
        problems.append(f"threads left running: {sorted(t.name for t in threads)}")
    if fds:
        problems.append(f"file descriptors left open: {sorted(_describe_fd(fd) for fd in fds)}")
    if shm:
        problems.append(f"/dev/shm entries left behind: {sorted(shm)}")
    if problems:
        pytest.fail("test leaked: " + "; ".join(problems))


def _describe_fd(fd: int) -> str:
    try:
        return f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


def _is_service_fd(fd: int) -> bool:
    """fds the stdlib keeps for its once-per-session helper processes."""
    try:
        from multiprocessing import forkserver, resource_tracker

        return fd in (
            getattr(resource_tracker._resource_tracker, "_fd", None),
            getattr(forkserver._forkserver, "_forkserver_alive_fd", None),
            getattr(forkserver._forkserver, "_forkserver_address", None),
        )
    except Exception:  # noqa: BLE001
        return False


# --- parity: one test body, run against the stdlib and fastmp, fork and spawn ---

PARITY = [
    ("multiprocessing", "fork"),
    ("multiprocessing", "spawn"),
    ("fastmp", "fork"),
    ("fastmp", "spawn"),
]


@pytest.fixture(params=PARITY, ids=[f"{lib}-{method}" for lib, method in PARITY])
def ctx(request):
    """A context of multiprocessing or fastmp, under fork or spawn."""
    lib, method = request.param
    return importlib.import_module(lib).get_context(method)


@pytest.fixture(params=["fork", "spawn", "forkserver"])
def fctx(request):
    """A fastmp context under each start method."""
    return fastmp.get_context(request.param)
