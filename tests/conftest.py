"""Shared fixtures: leak checks for every test, and the parity matrix.

Every test runs under `_no_leftovers`, which fails it if it leaves child
processes, threads, file descriptors or /dev/shm entries behind (and cleans
them up so the next test starts clean).

/dev/shm is machine-wide, so another program's files must not fail our
tests: run as root, the session re-executes itself in a private mount
namespace with its own empty /dev/shm (see _private_dev_shm). Where that is
not possible (not root, or no CAP_SYS_ADMIN), only names of the kinds the
stdlib and fastmp make are checked.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

SETTLE_SECONDS = 5.0

# Tests choose their pool backend themselves (see test_pool_cluster.py): a
# FASTMP_CLUSTER left in the environment must not move every Pool to a cluster.
os.environ.pop("FASTMP_CLUSTER", None)

# "1": this session already runs on a private /dev/shm; "0": do not try;
# "unavailable": tried and could not.
_PRIVATE_SHM_ENV = "FASTMP_TEST_PRIVATE_SHM"
_MOUNT_SHM = "mount -t tmpfs -o mode=1777 tmpfs /dev/shm"


def _private_dev_shm(config):
    """Re-executes this pytest run inside `unshare -m` with a fresh /dev/shm."""
    if os.environ.get(_PRIVATE_SHM_ENV) is not None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    launched_as = os.path.basename(sys.argv[0]) if sys.argv else ""
    if launched_as not in ("pytest", "py.test", "__main__.py"):
        return  # pytest.main() inside another program: leave it alone
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        os.environ[_PRIVATE_SHM_ENV] = "unavailable"
        return
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", _MOUNT_SHM],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    if probe.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        os.environ[_PRIVATE_SHM_ENV] = "unavailable"
        return
    os.environ[_PRIVATE_SHM_ENV] = "1"
    orig = getattr(sys, "orig_argv", None)  # 3.10+: keeps the interpreter's options
    if orig and "-m" in orig:
        argv = [sys.executable, *orig[1:]]
    else:
        argv = [sys.executable, "-m", "pytest", *sys.argv[1:]]
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # give the new process the real stdout/stderr
        capture.suspend_global_capture(in_=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp("unshare", ["unshare", "-m", "sh", "-c", _MOUNT_SHM + ' && exec "$@"', "sh", *argv])


import fastmp  # noqa: E402


def pytest_report_header(config):
    shm = "private" if os.environ.get(_PRIVATE_SHM_ENV) == "1" else "shared"
    return f"/dev/shm: {shm}; chaos seed: FASTMP_CHAOS_SEED={os.environ['FASTMP_CHAOS_SEED']}"


def pytest_configure(config):
    _private_dev_shm(config)
    # A shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the Ctrl-C tests would hang when
    # the suite runs in the background (as CI may). Tests expect Python's own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # FASTMP_TEST_START_METHOD=forkserver runs the suite with the default
    # start method Python 3.14 has (nothing may assume fork is the default).
    # tests/test_chaos.py: one seed per session, printed in the header.
    os.environ.setdefault("FASTMP_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 32)))
    method = os.environ.get("FASTMP_TEST_START_METHOD")
    if method:
        multiprocessing.set_start_method(method, force=True)


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
    # The listing sees its own directory descriptor, closed by the time it
    # returns (and numbered by whatever is free then): leave it out.
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


# The names the stdlib (SemLock, SharedMemory) and fastmp put in /dev/shm.
_SHM_PREFIXES = ("sem.mp-", "psm_", "mp-", "fastmp")


def _shm() -> set[str]:
    try:
        names = set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()
    if os.environ.get(_PRIVATE_SHM_ENV) == "1":
        return names
    return {n for n in names if n.startswith(_SHM_PREFIXES)}


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


# --- a Dask cluster for the cluster backend of Pool / ProcessPoolExecutor ---


@pytest.fixture(scope="session")
def dask_client():
    """A client of a LocalCluster of 2 worker processes, 1 thread each. Dask
    gives up on a task after 1 retry (the fault tests kill workers)."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0"
        )
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(2)
    yield client
    client.close()
    cluster.close()
