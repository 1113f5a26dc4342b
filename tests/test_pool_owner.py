"""A Pool (and a ProcessPoolExecutor) dies with its owner.

The owner is a separate interpreter that starts a pool, reports its workers'
pids and is then SIGKILLed; its workers must exit on their own (the stdlib's
do: their task pipe reports end-of-file). No timing is asserted: the test waits
for the state "every worker gone", bounded by the test's timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.timeout(90)

OWNER = """
import json, os, sys, time
import fastmp

def ident(x):
    return x

def slow(x):
    time.sleep(0.05)
    return x

def sleeper():
    time.sleep(600)

if __name__ == "__main__":
    method, kind, backlog = sys.argv[1], sys.argv[2], sys.argv[3] == "backlog"
    later = sys.argv[4] if len(sys.argv) > 4 else None
    ctx = fastmp.get_context(method)
    if kind == "pool":
        pool = ctx.Pool(2)
        assert pool.map(ident, range(10)) == list(range(10))
        if backlog:
            pending = pool.map_async(slow, range(100000), chunksize=1)
    else:
        ex = fastmp.ProcessPoolExecutor(2, mp_context=ctx)
        assert list(ex.map(ident, range(10))) == list(range(10))
        if backlog:
            futures = [ex.submit(slow, i) for i in range(1000)]
    pids = [p.pid for p in fastmp.active_children() if "Worker" in p.name or kind == "executor"]
    extra = []
    if later == "process":  # forked after the workers: inherits their parent pipes
        child = ctx.Process(target=sleeper, daemon=True)
        child.start()
        extra.append(child.pid)
    elif later == "manager":  # its server outlives us for as long as it likes
        manager = ctx.Manager()
        extra.append(manager._process.pid)
    print(json.dumps([pids, extra]), flush=True)
    time.sleep(600)
"""


def _gone(pid):
    """Exited: no such process, or a zombie nobody reaps yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone between lookup and read
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def _run(tmp_path, method, kind, backlog, later=None):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(OWNER))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, str(script), method, kind, backlog]
    if later is not None:
        argv.append(later)
    owner = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    pids = extra = []
    try:
        pids, extra = json.loads(owner.stdout.readline())
        assert len(pids) == 2, pids
        assert not any(_gone(p) for p in pids + extra)
        owner.kill()
        owner.wait()
        while not all(_gone(p) for p in pids):
            time.sleep(0.02)
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
        # The owner leads its own process group, which every process it started
        # is in: the sleeper always, the workers only when the test failed.
        # (By group, not by pid: the group id is not reused while it has
        # members.)
        try:
            os.killpg(owner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("backlog", ["idle", "backlog"])
@pytest.mark.parametrize("kind", ["pool", "executor"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_exit_when_owner_is_killed(tmp_path, method, kind, backlog):
    _run(tmp_path, method, kind, backlog)


@pytest.mark.parametrize("later", ["process", "manager"])
@pytest.mark.parametrize("kind", ["pool", "executor"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_exit_despite_a_child_started_later(tmp_path, method, kind, later):
    """Under fork, a process the owner forks after its workers inherits the
    write end of their parent pipe: the stdlib sentinel then reports the
    owner's death only once that child exits too (a Manager's server: never).
    The workers must go with the owner regardless."""
    _run(tmp_path, method, kind, "idle", later)
