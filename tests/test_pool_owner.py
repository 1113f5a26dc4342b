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

if __name__ == "__main__":
    method, kind, backlog = sys.argv[1], sys.argv[2], sys.argv[3] == "backlog"
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
    print(json.dumps(pids), flush=True)
    time.sleep(600)
"""


def _gone(pid):
    """Exited: no such process, or a zombie nobody reaps yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


@pytest.mark.parametrize("backlog", ["idle", "backlog"])
@pytest.mark.parametrize("kind", ["pool", "executor"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_exit_when_owner_is_killed(tmp_path, method, kind, backlog):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(OWNER))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    owner = subprocess.Popen(
        [sys.executable, str(script), method, kind, backlog],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    pids = []
    try:
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 2, pids
        assert not any(_gone(p) for p in pids)
        owner.kill()
        owner.wait()
        while not all(_gone(p) for p in pids):
            time.sleep(0.02)
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
        for p in pids:  # only reached when the test failed
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
