"""Run a script in a fresh interpreter, in a temporary directory, with a timeout.

Tutorial ports and kill tests use this: the child runs in its own session, so
on timeout the whole process tree is killed and nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


class ScriptTimeout(AssertionError):
    pass


def run_script(
    code: str, tmp_path: Path, timeout: float = 60, args=(), env=None
) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(code))
    full_env = dict(os.environ)
    full_env.update(env or {})
    # The child imports fastmp from wherever this interpreter does.
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen(
        [sys.executable, str(path), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ScriptTimeout(
            f"script timed out after {timeout}s\nstdout:\n{out}\nstderr:\n{err}"
        ) from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the script left running
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
