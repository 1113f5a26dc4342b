"""fastmp.shared_memory: SharedMemory, ShareableList, SharedMemoryManager.

Parity tests (the `ctx` fixture) run the same body against
multiprocessing.shared_memory and fastmp.shared_memory under fork and spawn.
"""

from __future__ import annotations

import importlib
import os
import stat

import pytest

import fastmp
from _script import run_script
from fastmp import shared_memory as fsm


def _shm_module(ctx):
    lib = "fastmp" if type(ctx).__module__.startswith("fastmp") else "multiprocessing"
    return importlib.import_module(f"{lib}.shared_memory")


# --- Process targets ---


def _attach_and_write(modname, name, payload):
    sm = importlib.import_module(modname)
    shm = sm.SharedMemory(name=name)
    assert shm.size >= len(payload)
    shm.buf[: len(payload)] = payload
    shm.close()


def _use_list(sl):
    sl[0] = sl[0] + 1
    sl[2] = "changed"
    sl.shm.close()


def _attach_list(modname, name):
    sm = importlib.import_module(modname)
    sl = sm.ShareableList(name=name)
    sl[1] = -sl[1]
    sl.shm.close()


# --- parity ---


def test_create_attach_from_child(ctx):
    sm = _shm_module(ctx)
    shm = sm.SharedMemory(create=True, size=20)
    try:
        assert shm.size == 20 and len(shm.buf) == 20
        assert isinstance(shm.buf, memoryview)
        assert bytes(shm.buf) == bytes(20)
        assert repr(shm) == f"SharedMemory({shm.name!r}, size=20)"
        p = ctx.Process(target=_attach_and_write, args=(sm.__name__, shm.name, b"hello child"))
        p.start()
        p.join()
        assert p.exitcode == 0
        assert bytes(shm.buf[:11]) == b"hello child"
        other = sm.SharedMemory(name=shm.name)
        assert other.size == 20 and other.name == shm.name
        other.buf[0] = ord("j")
        assert shm.buf[0] == ord("j")
        other.close()
    finally:
        shm.close()
        shm.unlink()
    assert not os.path.exists(f"/dev/shm/{shm.name}")


def test_errors(ctx):
    sm = _shm_module(ctx)
    with pytest.raises(ValueError, match="'size' must be a positive integer"):
        sm.SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError, match="'size' must be a positive number different from zero"):
        sm.SharedMemory(create=True, size=0)
    with pytest.raises(ValueError, match="'name' can only be None if create=True"):
        sm.SharedMemory()
    with pytest.raises(FileNotFoundError):
        sm.SharedMemory(name="fastmp_test_no_such_segment")
    shm = sm.SharedMemory(create=True, size=8)
    try:
        with pytest.raises(FileExistsError):
            sm.SharedMemory(name=shm.name, create=True, size=8)
        view = shm.buf[:4]
        with pytest.raises(BufferError):
            shm.close()
        view.release()
        shm.close()
        shm.close()  # twice is fine
    finally:
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        shm.unlink()


def test_segment_mode_is_0600(ctx):
    sm = _shm_module(ctx)
    shm = sm.SharedMemory(create=True, size=4096)
    try:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{shm.name}").st_mode) == 0o600
    finally:
        shm.close()
        shm.unlink()


def test_shareable_list(ctx):
    sm = _shm_module(ctx)
    sl = sm.ShareableList([1, 2.5, "text", b"bytes", None, True])
    try:
        assert list(sl) == [1, 2.5, "text", b"bytes", None, True]
        assert len(sl) == 6
        assert sl.format == "q d 8s 8s xxxxxx?x xxxxxxx?".replace(" ", "")
        assert sl.count(1) == 2  # 1 and True
        assert sl.index("text") == 2
        p = ctx.Process(target=_use_list, args=(sl,))
        p.start()
        p.join()
        assert p.exitcode == 0
        assert sl[0] == 2 and sl[2] == "changed"
        p = ctx.Process(target=_attach_list, args=(sm.__name__, sl.shm.name))
        p.start()
        p.join()
        assert sl[1] == -2.5
        with pytest.raises(IndexError):
            sl[10]
        with pytest.raises(ValueError):
            sl[2] = "x" * 100  # larger than the slot
        assert sl[2] == "changed"
        assert repr(sl) == f"ShareableList({list(sl)!r}, name={sl.shm.name!r})"
    finally:
        sl.shm.close()
        sl.shm.unlink()


# --- fastmp and the stdlib interoperate ---


def test_interop_with_stdlib():
    from multiprocessing import shared_memory as std

    a = fsm.SharedMemory(create=True, size=64)
    b = std.SharedMemory(create=True, size=64)
    try:
        a_std = std.SharedMemory(name=a.name)
        b_fast = fsm.SharedMemory(name=b.name)
        a_std.buf[:3] = b"abc"
        b_fast.buf[:3] = b"xyz"
        assert bytes(a.buf[:3]) == b"abc" and bytes(b.buf[:3]) == b"xyz"
        a_std.close()
        b_fast.close()
        # ShareableList: same layout both ways.
        fl = fsm.ShareableList([1, "two", 3.0])
        sl = std.ShareableList([b"four", None])
        assert list(std.ShareableList(name=fl.shm.name)) == [1, "two", 3.0]
        seen = fsm.ShareableList(name=sl.shm.name)
        assert list(seen) == [b"four", None]
        assert isinstance(seen.shm, fsm.SharedMemory)
        for x in (fl, sl):
            x.shm.close()
            x.shm.unlink()
        seen.shm.close()
    finally:
        for x in (a, b):
            x.close()
            x.unlink()


def test_module_names():
    from multiprocessing import shared_memory as std

    for name in std.__all__:
        assert hasattr(fsm, name)
    assert issubclass(fsm.SharedMemory, std.SharedMemory)
    assert issubclass(fsm.ShareableList, std.ShareableList)


# --- the resource-tracker bug of the stdlib before 3.13 ---

ATTACH_SCRIPT = r"""
import os, subprocess, sys
import fastmp
from fastmp import shared_memory

def child(name):
    s = shared_memory.SharedMemory(name=name)
    s.buf[1] = 2
    s.close()

if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=32)
    for method in ("fork", "spawn", "forkserver"):
        p = fastmp.get_context(method).Process(target=child, args=(shm.name,))
        p.start()
        p.join()
        assert p.exitcode == 0
    # An unrelated process (its own resource tracker) attaches and exits.
    lib = sys.argv[1]
    r = subprocess.run([sys.executable, "-c",
        f"from {lib} import shared_memory as m; s = m.SharedMemory(name={shm.name!r}); s.buf[0] = 1; s.close()"],
        capture_output=True, text=True)
    print("ATTACHER_STDERR", repr(r.stderr))
    print("EXISTS", os.path.exists("/dev/shm/" + shm.name), shm.buf[0], shm.buf[1], flush=True)
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        print("ALREADY_UNLINKED")
"""


def test_attacher_never_unlinks_or_warns(tmp_path):
    r = run_script(ATTACH_SCRIPT, tmp_path, timeout=90, args=["fastmp"])
    assert r.returncode == 0, r.stderr
    assert "ATTACHER_STDERR ''" in r.stdout
    assert "EXISTS True 1 2" in r.stdout
    assert "ALREADY_UNLINKED" not in r.stdout
    assert "resource_tracker" not in r.stderr and "leaked" not in r.stderr, r.stderr
    assert r.stderr == ""


def test_stdlib_attacher_unlinks_creators_segment(tmp_path):
    """The bug fastmp fixes, shown on the stdlib (3.11): the attacher's
    resource tracker unlinks the creator's segment and warns."""
    r = run_script(ATTACH_SCRIPT, tmp_path, timeout=90, args=["multiprocessing"])
    assert r.returncode == 0, r.stderr
    assert "leaked shared_memory" in r.stdout  # (in the attacher's stderr, printed by the script)
    assert "EXISTS False" in r.stdout
    assert "ALREADY_UNLINKED" in r.stdout


UNTRACKED = r"""
import os, signal
from fastmp import shared_memory
shm = shared_memory.SharedMemory(create=True, size=16, track=False)
print("NAME", shm.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_track_false_is_not_reclaimed(tmp_path):
    r = run_script(UNTRACKED, tmp_path, timeout=60)
    name = r.stdout.split("NAME", 1)[1].split()[0]
    try:
        assert os.path.exists(f"/dev/shm/{name}")  # the caller's to unlink, as in 3.13
        assert r.stderr == ""
    finally:
        s = fsm.SharedMemory(name=name, track=False)
        s.close()
        s.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")


UNLINK_BY_ATTACHER = r"""
import fastmp
from fastmp import shared_memory

def child(name):
    s = shared_memory.SharedMemory(name=name)
    s.close()
    s.unlink()

if __name__ == "__main__":
    for method in ("fork", "spawn"):
        shm = shared_memory.SharedMemory(create=True, size=16)
        p = fastmp.get_context(method).Process(target=child, args=(shm.name,))
        p.start()
        p.join()
        assert p.exitcode == 0
        shm.close()
    print("DONE", flush=True)
"""


def test_attacher_may_unlink_without_warnings(tmp_path):
    r = run_script(UNLINK_BY_ATTACHER, tmp_path, timeout=60)
    assert r.returncode == 0 and "DONE" in r.stdout, r.stderr
    assert r.stderr == ""


KILL_CREATOR = r"""
import os, signal
from fastmp import shared_memory
shm = shared_memory.SharedMemory(create=True, size=16)
print("NAME", shm.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_segment_of_killed_creator_is_reclaimed(tmp_path):
    r = run_script(KILL_CREATOR, tmp_path, timeout=60)
    name = r.stdout.split("NAME", 1)[1].split()[0]
    # The creator's resource tracker unlinks it once the creator is gone
    # (it warns about the leak on stderr, as the stdlib's does).
    assert not os.path.exists(f"/dev/shm/{name}")


# --- SharedMemoryManager ---


def _manager_child(shm_name, sl):
    s = fsm.SharedMemory(name=shm_name)
    s.buf[0] = 42
    s.close()
    sl[0] = "from child"
    sl.shm.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_shared_memory_manager(method):
    from fastmp.managers import SharedMemoryManager

    ctx = fastmp.get_context(method)
    with SharedMemoryManager(ctx=ctx) as smm:
        shm = smm.SharedMemory(size=128)
        sl = smm.ShareableList(["x" * 16, 1])
        names = [shm.name, sl.shm.name]
        p = ctx.Process(target=_manager_child, args=(shm.name, sl))
        p.start()
        p.join()
        assert p.exitcode == 0
        assert shm.buf[0] == 42 and sl[0] == "from child"
        shm.close()
        sl.shm.close()
    for name in names:
        assert not os.path.exists(f"/dev/shm/{name}")
