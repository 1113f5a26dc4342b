"""Tutorial ports: the seed examples that use only Process and the queues.

Each example is the seed's code (IDs as in /work/shared/API_INVENTORY.md) with
its `multiprocessing` import swapped for `fastmp`, in the tutorial's own import
form. It runs in a fresh interpreter in a temporary directory
(`tests/_script.py::run_script`, own session, killed on timeout) under fork and
spawn. A prelude that is not part of the example is put in front of it:

* `time.sleep` is scaled down (separate factors for the main process and the
  children, so the examples' relative timing survives);
* stdout is made line-buffered, as on a terminal, so lines from different
  processes do not tear;
* the start method is set, as the first statement of the `__main__` block;
* two optional hooks let a test observe what the tutorial only describes
  (zombie state while the parent sleeps, a daemon's exit code after the parent
  exited). Test instrumentation prints lines starting with `TUT`.

Assertions are on the structure of the output (what was produced and consumed,
FIFO order per producer, names, pids, exit codes), not on interleaving. Where
the tutorial is buggy with the stdlib too, the port applies the fix that
API_INVENTORY.md suggests and says so in a `FIX Bn` comment. Representative
examples are also run with the stdlib (`with_stdlib_parity`), asserting the
same structured result; where the stdlib itself fails (B6, B7, B11, B13) the
test asserts the stdlib's failure and fastmp's behaviour side by side.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap

import pytest

from _script import run_script

METHODS = ["fork", "spawn"]

PRELUDE = r"""
import atexit as _tut_atexit, os as _tut_os, sys as _tut_sys, time as _tut_time
_tut_sys.stdout.reconfigure(line_buffering=True)
_TUT_MAIN_PID = _tut_os.getpid() if __name__ == "__main__" else None
_tut_real_sleep = _tut_time.sleep


def _tut_sleep(seconds):
    in_main = _tut_os.getpid() == _TUT_MAIN_PID
    before = globals().get("_tut_before_sleep")
    if before is not None:
        before(seconds, in_main)
    _tut_real_sleep(seconds * (@MAIN_SCALE@ if in_main else @CHILD_SCALE@))
    hook = globals().get("_tut_on_long_sleep")
    if hook is not None and in_main and seconds >= 10:
        hook()


_tut_time.sleep = _tut_sleep


def _tut_at_exit():
    # Registered before multiprocessing is imported, so it runs after
    # multiprocessing's own exit handler (atexit is LIFO).
    hook = globals().get("_tut_after_exit")
    if hook is not None and _tut_os.getpid() == _TUT_MAIN_PID:
        hook()


_tut_atexit.register(_tut_at_exit)
_TUT_START_METHOD = @START_METHOD@
if __name__ == "__main__" and _TUT_START_METHOD is not None:
    import fastmp as _tut_mp
    _tut_mp.set_start_method(_TUT_START_METHOD)
"""


def build(code, method, *, lib="fastmp", main_scale=0.05, child_scale=0.05, hooks="", epilogue=""):
    """The script that runs: prelude, hooks, the tutorial's code, epilogue."""
    assert re.search(r"^\s*(import|from) fastmp\b", code, re.M), "the port must import fastmp"
    assert not re.search(r"^\s*(import|from) multiprocessing\b", code, re.M), (
        "stdlib import left in the port"
    )
    prelude = (
        PRELUDE.replace("@MAIN_SCALE@", repr(main_scale))
        .replace("@CHILD_SCALE@", repr(child_scale))
        .replace("@START_METHOD@", repr(method))
    )
    script = "\n".join(textwrap.dedent(part) for part in (prelude, hooks, code, epilogue))
    if lib == "multiprocessing":
        script = re.sub(r"\bfastmp\b", "multiprocessing", script)
    else:
        assert lib == "fastmp"
    return script


def run_tut(tmp_path, code, method, *, lib="fastmp", timeout=45, **kw):
    workdir = tmp_path / lib
    workdir.mkdir(exist_ok=True)
    # Buffered stdio (the prelude makes stdout line-buffered): an unbuffered
    # stream writes print()'s text and its newline separately, so lines from
    # different processes could tear.
    env = {"PYTHONUNBUFFERED": ""}
    return run_script(build(code, method, lib=lib, **kw), workdir, timeout=timeout, env=env)


def with_stdlib_parity(tmp_path, code, method, result, **kw):
    """`result` of the port run with fastmp, after checking that the same port
    run with the stdlib gives the same structured result."""
    fast = result(run_tut(tmp_path, code, method, **kw))
    std = result(run_tut(tmp_path, code, method, lib="multiprocessing", **kw))
    assert fast == std, "fastmp and multiprocessing disagree"
    return fast


def show(res):
    return f"rc={res.returncode}\n--- stdout:\n{res.stdout}\n--- stderr:\n{res.stderr}"


def ok_lines(res):
    """The stdout lines of a run that must have succeeded with no traceback anywhere."""
    assert res.returncode == 0, show(res)
    assert "Traceback" not in res.stderr, show(res)
    return res.stdout.splitlines()


def grep(lines, pattern):
    """The match groups of every line that fully matches `pattern`, in order."""
    rx = re.compile(pattern)
    return [m.groups() for m in map(rx.fullmatch, lines) if m]


def index_of(lines, line):
    assert line in lines, f"{line!r} not printed:\n" + "\n".join(lines)
    return lines.index(line)


def without_pids(text):
    return re.sub(r"\d{3,}", "<pid>", text)


def tut_value(lines, tag):
    """An instrumentation value printed as `TUT <tag> <python literal>`."""
    (found,) = grep(lines, rf"TUT {tag} (.*)")
    return ast.literal_eval(found[0])


# ---------------------------------------------------------------------------
# 001 — Python 多進程編程
# ---------------------------------------------------------------------------

T001_1 = r'''
import fastmp as multiprocessing
import time
import os

def worker():
    """工作進程函數"""
    print(f"進程 {os.getpid()} 開始工作")
    time.sleep(2)
    print(f"進程 {os.getpid()} 完成工作")

if __name__ == '__main__':
    # 創建進程
    process = multiprocessing.Process(target=worker)
    process.start()
    process.join()

    # 創建多個進程
    processes = []
    for _ in range(3):
        p = multiprocessing.Process(target=worker)
        processes.append(p)
        p.start()

    # 等待所有進程完成
    for p in processes:
        p.join()
'''


@pytest.mark.parametrize("method", METHODS)
def test_001_1_create_processes(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T001_1, method))
    started = [int(pid) for (pid,) in grep(lines, r"進程 (\d+) 開始工作")]
    finished = [int(pid) for (pid,) in grep(lines, r"進程 (\d+) 完成工作")]
    assert len(started) == 4 and len(set(started)) == 4, lines
    assert sorted(started) == sorted(finished), lines
    # The first process is joined before the other three start.
    first = started[0]
    first_done = index_of(lines, f"進程 {first} 完成工作")
    assert all(index_of(lines, f"進程 {pid} 開始工作") > first_done for pid in started[1:]), lines


# FIX B5: the seed's block relies on the imports of the block before it.
T001_2 = r'''
import fastmp as multiprocessing
import os
import time

class WorkerProcess(multiprocessing.Process):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def run(self):
        """進程執行的方法"""
        print(f"進程 {self.name} (PID: {os.getpid()}) 開始工作")
        time.sleep(2)
        print(f"進程 {self.name} (PID: {os.getpid()}) 完成工作")

if __name__ == '__main__':
    # 使用進程類
    worker = WorkerProcess("Worker-1")
    worker.start()
    worker.join()
'''

EPI_001_2 = r"""
if __name__ == "__main__":
    print("TUT worker", (worker.name, worker.exitcode, worker.pid is not None, os.getpid() != worker.pid))
"""


@pytest.mark.parametrize("method", METHODS)
def test_001_2_process_subclass(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T001_2, method, epilogue=EPI_001_2))
    assert grep(lines, r"進程 Worker-1 \(PID: (\d+)\) 開始工作") == grep(
        lines, r"進程 Worker-1 \(PID: (\d+)\) 完成工作"
    )
    assert len(grep(lines, r"進程 Worker-1 \(PID: (\d+)\) 完成工作")) == 1, lines
    assert tut_value(lines, "worker") == ("Worker-1", 0, True, True)


# FIX B5: the seed's block relies on `import multiprocessing` and `import time`
# from earlier blocks. `except Queue.Empty` (B6) is kept UNMODIFIED: with the
# stdlib it raises AttributeError in the consumer ('function' object has no
# attribute 'Empty'); fastmp.Queue has `Empty`, so the example works as meant.
T001_4 = r'''
import fastmp as multiprocessing
import time

from fastmp import Queue
import random

class TaskQueue:
    def __init__(self):
        self.queue = Queue()

    def producer(self):
        """生產任務"""
        for i in range(5):
            task = f"Task-{i}"
            self.queue.put(task)
            print(f"生產任務: {task}")
            time.sleep(random.random())

    def consumer(self):
        """消費任務"""
        while True:
            try:
                task = self.queue.get(timeout=3)
                print(f"處理任務: {task}")
                time.sleep(random.random())
            except Queue.Empty:
                print("隊列為空，退出消費者")
                break

if __name__ == '__main__':
    # 使用任務隊列
    task_queue = TaskQueue()

    # 創建生產者和消費者進程
    producer = multiprocessing.Process(target=task_queue.producer)
    consumer = multiprocessing.Process(target=task_queue.consumer)

    producer.start()
    consumer.start()

    producer.join()
    consumer.join()
'''

EPI_001_4 = r"""
if __name__ == "__main__":
    print("TUT exitcodes", [producer.exitcode, consumer.exitcode])
"""

TASKS_001_4 = [f"Task-{i}" for i in range(5)]


def _check_001_4_until_empty(lines):
    assert [t for (t,) in grep(lines, r"生產任務: (.*)")] == TASKS_001_4, lines
    assert [t for (t,) in grep(lines, r"處理任務: (.*)")] == TASKS_001_4, lines


@pytest.mark.parametrize("method", METHODS)
def test_001_4_queue_with_bound_method_targets(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T001_4, method, epilogue=EPI_001_4))
    _check_001_4_until_empty(lines)
    assert lines.count("隊列為空，退出消費者") == 1, lines
    assert index_of(lines, "隊列為空，退出消費者") > index_of(lines, "處理任務: Task-4")
    assert tut_value(lines, "exitcodes") == [0, 0]


def test_001_4_stdlib_fails_on_queue_empty_fastmp_does_not(tmp_path):
    """B6: the same code, run with the stdlib, loses its consumer to AttributeError."""
    std = run_tut(tmp_path, T001_4, "fork", lib="multiprocessing", epilogue=EPI_001_4)
    assert std.returncode == 0, show(std)
    assert "AttributeError: 'function' object has no attribute 'Empty'" in std.stderr, show(std)
    std_lines = std.stdout.splitlines()
    _check_001_4_until_empty(std_lines)
    assert "隊列為空，退出消費者" not in std_lines
    assert tut_value(std_lines, "exitcodes") == [0, 1]


# ---------------------------------------------------------------------------
# 002 — multiprocessing.py (one script; sections main01..main07)
# The seed is mojibake (UTF-8 read as cp1252); the strings are kept as they are.
# ---------------------------------------------------------------------------

SEED_002_HEADER = r'''
import fastmp as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed


def cpu_bound_task(n):
    """CPU å¯†é›†å‹ä»»åŠ¡"""
    total = 0
    for i in range(n):
        total += i * i
    return total


def worker_with_info(name):
    """å¸¦è¿›ç¨‹ä¿¡æ¯çš„å·¥ä½œå‡½æ•°"""
    info = f"è¿›ç¨‹ {name}: PID={os.getpid()}, çˆ¶PID={os.getppid()}"
    time.sleep(0.1)
    return info

'''

SEED_002_MAIN01 = r'''
def main01_process_basics():
    """
    ============================================================
                    1. è¿›ç¨‹åŸºç¡€
    ============================================================
    """
    print("=" * 60)
    print("1. è¿›ç¨‹åŸºç¡€")
    print("=" * 60)

    print(f"ä¸»è¿›ç¨‹ PID: {os.getpid()}")

    # ã€åˆ›å»ºè¿›ç¨‹ã€‘
    def worker(name):
        print(f"  åè¿›ç¨‹ {name} å¼€å§‹ï¼ŒPID={os.getpid()}")
        time.sleep(0.1)
        print(f"  åè¿›ç¨‹ {name} ç»“æŸ")

    print("\nåˆ›å»ºè¿›ç¨‹:")
    p1 = mp.Process(target=worker, args=("A",))
    p2 = mp.Process(target=worker, args=("B",))

    p1.start()
    p2.start()

    p1.join()
    p2.join()

    print("æ‰€æœ‰è¿›ç¨‹å®Œæˆ")

    # ã€è¿›ç¨‹å±æ€§ã€‘
    print(f"\n--- è¿›ç¨‹å±æ€§ ---")
    p = mp.Process(target=lambda: None, name="MyProcess")
    print(f"è¿›ç¨‹å: {p.name}")
    print(f"PID: {p.pid}")  # å¯åŠ¨å‰ä¸º None
    print(f"æ˜¯å¦å˜æ´»: {p.is_alive()}")
    print(f"æ˜¯å¦å®ˆæŠ¤è¿›ç¨‹: {p.daemon}")
'''

SEED_002_MAIN06 = r'''
def main06_process_context():
    """
    ============================================================
                6. è¿›ç¨‹å¯åŠ¨æ–¹å¼
    ============================================================
    """
    print("\n" + "=" * 60)
    print("6. è¿›ç¨‹å¯åŠ¨æ–¹å¼")
    print("=" * 60)

    print("""
    ã€è¿›ç¨‹å¯åŠ¨æ–¹å¼ã€‘

    1. spawnï¼ˆé»˜è®¤åœ¨ Windows å’Œ macOSï¼‰
       - å¯åŠ¨æ–°çš„ Python è§£é‡Šå™¨
       - åªç»§æ‰¿å¿…è¦çš„èµ„æº
       - æ›´å®‰å…¨ï¼Œä½†å¯åŠ¨è¾ƒæ…¢

    2. forkï¼ˆé»˜è®¤åœ¨ Unixï¼‰
       - ä½¿ç”¨ os.fork()
       - ç»§æ‰¿çˆ¶è¿›ç¨‹çš„æ‰€æœ‰èµ„æº
       - å¯åŠ¨å¿«ï¼Œä½†å¯èƒ½æœ‰é—®é¢˜ï¼ˆå¦‚å¤šçº¿ç¨‹ç¨‹åºï¼‰

    3. forkserver
       - å¯åŠ¨æœåŠ¡å™¨è¿›ç¨‹ï¼Œç”±æœåŠ¡å™¨ fork æ–°è¿›ç¨‹
       - ç»“åˆäº† spawn å’Œ fork çš„ä¼˜ç‚¹
    """)

    # ã€è®¾ç½®å¯åŠ¨æ–¹å¼ã€‘
    # mp.set_start_method('spawn')  # å¿…é¡»åœ¨ä¸»æ¨¡å—çš„ if __name__ == '__main__' å—ä¸

    print(f"å½“å‰å¯åŠ¨æ–¹å¼: {mp.get_start_method()}")

    # ã€ä½¿ç”¨ get_context åˆ›å»ºç‰¹å®šå¯åŠ¨æ–¹å¼çš„è¿›ç¨‹ã€‘
    ctx = mp.get_context('spawn')
    print(f"ä½¿ç”¨ spawn ä¸Šä¸‹æ–‡")
'''

T002_1 = (
    SEED_002_HEADER
    + SEED_002_MAIN01
    + r"""
if __name__ == "__main__":
    main01_process_basics()
"""
)

# FIX B7: under spawn a nested target cannot be pickled (the stdlib fails the
# same way, see test_002_1_spawn_as_written); API_INVENTORY.md's fix moves the
# target to module level. Nothing else changes.
SEED_002_MAIN01_WORKER = r"""
    def worker(name):
        print(f"  åè¿›ç¨‹ {name} å¼€å§‹ï¼ŒPID={os.getpid()}")
        time.sleep(0.1)
        print(f"  åè¿›ç¨‹ {name} ç»“æŸ")
"""

T002_1_FIXED = (
    SEED_002_HEADER
    + textwrap.dedent(SEED_002_MAIN01_WORKER)
    + SEED_002_MAIN01.replace(SEED_002_MAIN01_WORKER, "\n")
    + r"""
if __name__ == "__main__":
    main01_process_basics()
"""
)

T002_6 = (
    SEED_002_HEADER
    + SEED_002_MAIN06
    + r"""
if __name__ == "__main__":
    main06_process_context()
"""
)


def _check_002_1(lines):
    main_pid = int(grep(lines, r"\S+ PID: (\d+)")[0][0])
    started = dict((name, int(pid)) for name, pid in grep(lines, r"  \S+ ([AB]) \S+PID=(\d+)"))
    assert sorted(started) == ["A", "B"], lines
    assert len({main_pid, *started.values()}) == 3, lines
    assert sorted(name for (name,) in grep(lines, r"  \S+ ([AB]) [^\s=]+")) == ["A", "B"], lines
    # The unstarted Process: name, pid, is_alive(), daemon.
    attrs = [value for (value,) in grep(lines, r"\S+: (MyProcess|None|True|False)")]
    assert attrs == ["MyProcess", "None", "False", "False"], lines


@pytest.mark.parametrize("method", ["fork", None])
def test_002_1_process_basics(tmp_path, method):
    _check_002_1(ok_lines(run_tut(tmp_path, T002_1, method)))


def test_002_1_spawn_as_written(tmp_path):
    """B7: the nested target fails to pickle under spawn with the stdlib; fastmp
    sends it by value (README, Differences: targets by value) and runs it."""
    std = run_tut(tmp_path, T002_1, "spawn", lib="multiprocessing")
    assert std.returncode == 1, show(std)
    # ("Can't get local object" since 3.13)
    assert re.fullmatch(
        r"AttributeError: Can't (pickle|get) local object 'main01_process_basics.<locals>.worker'",
        std.stderr.splitlines()[-1],
    ), show(std)
    _check_002_1(ok_lines(run_tut(tmp_path, T002_1, "spawn")))


@pytest.mark.parametrize("method", METHODS)
def test_002_1_process_basics_fixed(tmp_path, method):
    _check_002_1(ok_lines(run_tut(tmp_path, T002_1_FIXED, method)))


def _start_method_002_6(res):
    lines = ok_lines(res)
    (method,) = [m for (m,) in grep(lines, r"\S+: (fork|spawn|forkserver)")]
    assert "spawn" in lines[-1].split(), lines  # the get_context('spawn') line
    return method


@pytest.mark.parametrize("method", [None, *METHODS])
def test_002_6_start_methods(tmp_path, method):
    # The stdlib's default start method on Linux / 3.11 is fork (R34).
    assert with_stdlib_parity(tmp_path, T002_6, method, _start_method_002_6) == (method or "fork")


# ---------------------------------------------------------------------------
# 003 — 第二部分：多进程
# ---------------------------------------------------------------------------

T003_4_1_2 = r"""
import os
import time
from fastmp import Process

def child_task():
    print(f"子进程启动，PID={os.getpid()}，父PID={os.getppid()}")
    for i in range(30):
        time.sleep(1)
        print(f"{i+1}秒 - 子进程PID={os.getpid()}，父PID={os.getppid()}")
        if os.getppid() == 1:
            print("👉 已被 init 收养，成为孤儿")

if __name__ == "__main__":
    print(f"主进程PID={os.getpid()}")
    p = Process(target=child_task)
    p.start()

    time.sleep(3)
    print("主进程强制退出")
    os._exit(0)  # ⚠️ 主进程立即消亡

"""


@pytest.mark.parametrize("method", METHODS)
def test_003_4_1_2_orphan(tmp_path, method):
    # The parent's 3 s become 0.3 s, the child's 30 x 1 s become 1.5 s. run_script
    # returns when the orphan closes its stdout (at its exit) and kills the session.
    lines = ok_lines(run_tut(tmp_path, T003_4_1_2, method, main_scale=0.1, child_scale=0.05))
    ((main_pid,),) = grep(lines, r"主进程PID=(\d+)")
    ((child_pid, _),) = grep(lines, r"子进程启动，PID=(\d+)，父PID=(\d+)")
    progress = grep(lines, r"(\d+)秒 - 子进程PID=(\d+)，父PID=(\d+)")
    # The child outlives its parent and finishes all 30 rounds...
    assert [int(s) for s, _, _ in progress] == list(range(1, 31)), lines
    assert {pid for _, pid, _ in progress} == {child_pid} != {main_pid}
    # ...re-parented once its parent is gone (to init or a subreaper), never back.
    parents = [ppid for _, _, ppid in progress]
    assert parents[-1] != main_pid, lines
    first_orphaned = next(i for i, ppid in enumerate(parents) if ppid != main_pid)
    assert set(parents[first_orphaned:]) == {parents[-1]}, lines
    exit_line = index_of(lines, "主进程强制退出")
    assert exit_line < index_of(lines, "30秒 - " + f"子进程PID={child_pid}，父PID={parents[-1]}")


T003_4_2_2 = r'''
import time
import fastmp as multiprocessing
import os

def zombie_child():
    """会变成僵尸进程的子进程"""
    print(f"子进程开始执行，PID: {os.getpid()}")
    print("子进程即将结束...")
    time.sleep(2)
    print("子进程结束")
    # 子进程结束后，如果父进程不调用join()，就会变成僵尸进程

if __name__ == '__main__':
    print(f"主进程PID: {os.getpid()}")

    # 创建多个子进程但不等待它们结束
    for i in range(3):
        process = multiprocessing.Process(target=zombie_child)
        process.start()
        # 注意：这里没有调用 process.join()
        print(f"子进程 {i+1} 已启动，PID可能是: {process.pid}")

    print("主进程继续执行其他任务...")
    time.sleep(30)  # 主进程继续运行30秒，子进程变成僵尸

    print("主进程即将结束")
'''

# While the parent is in its long sleep: wait (bounded) until three of its
# children are zombies, then print the state of each child from /proc.
HOOK_ZOMBIE_PROBE = r"""
def _tut_on_long_sleep():
    deadline = _tut_time.monotonic() + 20
    while True:
        kids = {}
        for entry in _tut_os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                fields = stat[stat.rfind(")") + 2 :].split()
                if int(fields[1]) == _tut_os.getpid():
                    kids[int(entry)] = fields[0]
        if list(kids.values()).count("Z") >= 3 or _tut_time.monotonic() > deadline:
            break
        _tut_real_sleep(0.02)
    print("TUT children", kids)
"""


@pytest.mark.parametrize("method", METHODS)
def test_003_4_2_2_zombies(tmp_path, method):
    res = run_tut(
        tmp_path, T003_4_2_2, method, main_scale=0.02, child_scale=0.05, hooks=HOOK_ZOMBIE_PROBE
    )
    lines = ok_lines(res)
    started = [int(pid) for _, pid in grep(lines, r"子进程 (\d) 已启动，PID可能是: (\d+)")]
    assert len(set(started)) == 3, lines
    states = tut_value(lines, "children")
    assert {pid: states.get(pid) for pid in started} == dict.fromkeys(started, "Z"), lines
    assert lines.count("子进程结束") == 3, lines
    assert lines[-1] == "主进程即将结束", lines


T003_4_2_3 = r'''
import fastmp as multiprocessing
import os
import time
from contextlib import contextmanager

@contextmanager
def managed_processes():
    """进程管理器，确保所有进程被正确清理"""
    processes = []
    try:
        yield processes
    finally:
        # 等待所有进程结束
        for process in processes:
            if process.is_alive():
                process.join(timeout=5)  # 最多等待5秒
                if process.is_alive():
                    process.terminate()  # 强制终止
                    process.join()
        print("所有进程已清理完毕")

def worker_task(name, duration):
    print(f"工作进程 {name} 开始，PID: {os.getpid()}")
    time.sleep(duration)
    print(f"工作进程 {name} 完成")

if __name__ == '__main__':
    with managed_processes() as processes:
        # 创建多个进程
        for i in range(3):
            p = multiprocessing.Process(
                target=worker_task,
                args=(f"Task-{i+1}", 2)
            )
            p.start()
            processes.append(p)

        print("所有进程已启动，等待完成...")

    print("程序结束，无僵尸进程")
'''

EPI_003_4_2_3 = r"""
if __name__ == "__main__":
    print("TUT exitcodes", [p.exitcode for p in processes])
    print("TUT alive", [p.is_alive() for p in processes])
"""


@pytest.mark.parametrize("method", METHODS)
def test_003_4_2_3_managed_processes(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T003_4_2_3, method, epilogue=EPI_003_4_2_3))
    names = [f"Task-{i}" for i in (1, 2, 3)]
    assert sorted(n for n, _ in grep(lines, r"工作进程 (Task-\d) 开始，PID: (\d+)")) == names, lines
    done = [n for (n,) in grep(lines, r"工作进程 (Task-\d) 完成")]
    assert sorted(done) == names, lines
    cleaned = index_of(lines, "所有进程已清理完毕")
    assert all(index_of(lines, f"工作进程 {n} 完成") < cleaned for n in names)
    assert cleaned < index_of(lines, "程序结束，无僵尸进程")
    assert tut_value(lines, "exitcodes") == [0, 0, 0]
    assert tut_value(lines, "alive") == [False, False, False]


T003_4_3_2 = r'''
import time
import os
from fastmp import Process

def daemon_task():
    """守护进程任务"""
    print(f"守护进程启动，PID: {os.getpid()}")
    count = 0
    while True:
        count += 1
        print(f"守护进程运行中... 计数: {count}")
        time.sleep(2)

        # 避免无限运行，实际守护进程通常是无限循环
        if count >= 10:
            print("守护进程达到最大计数，准备结束")
            break

if __name__ == '__main__':
    print(f"主进程PID: {os.getpid()}")

    # 创建守护进程
    daemon_process = Process(target=daemon_task)
    daemon_process.daemon = True  # 设置为守护进程，必须在start()之前设置
    daemon_process.start()

    print("主进程继续执行其他任务...")

    # 主进程执行一些任务
    for i in range(5):
        time.sleep(1)
        print(f"主进程工作中... {i+1}/5")

    print("主进程即将结束")
    time.sleep(1)
    print("主进程结束 - 守护进程也会自动结束")

    # 注意：不需要调用 daemon_process.join()
    # 因为守护进程会随主进程结束而自动结束
'''

# Runs at interpreter exit, after multiprocessing's exit handler has dealt
# with the daemon (terminate + join).
HOOK_DAEMON_EXIT = r"""
def _tut_after_exit():
    print("TUT daemon", (daemon_process.daemon, daemon_process.exitcode))
"""


@pytest.mark.parametrize("method", METHODS)
def test_003_4_3_2_daemon(tmp_path, method):
    # Main: 6 s -> 0.3 s. The daemon would need 10 x 2 s -> 2 s to finish on its own.
    res = run_tut(
        tmp_path, T003_4_3_2, method, main_scale=0.05, child_scale=0.1, hooks=HOOK_DAEMON_EXIT
    )
    lines = ok_lines(res)
    assert [int(i) for (i,) in grep(lines, r"主进程工作中\.\.\. (\d)/5")] == [1, 2, 3, 4, 5], lines
    end = index_of(lines, "主进程结束 - 守护进程也会自动结束")
    # The daemon was terminated (SIGTERM) when the main process exited. (It may
    # still print between the main block's last line and the exit handler.)
    assert lines[-1] == "TUT daemon (True, -15)" and lines.count(lines[-1]) == 1, lines
    assert all(line.startswith("守护进程") for line in lines[end + 1 : -1]), lines
    counts = [int(c) for (c,) in grep(lines, r"守护进程运行中\.\.\. 计数: (\d+)")]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) < 10, lines
    assert "守护进程达到最大计数，准备结束" not in lines


T003_5_2_1 = r'''
import os
import time
import fastmp as multiprocessing

def worker_task(name, duration):
    """工作进程任务"""
    print(f"进程 {name} 开始工作，PID: {os.getpid()}")

    for i in range(duration):
        time.sleep(1)
        print(f"进程 {name} 工作中... {i+1}/{duration}")

    print(f"进程 {name} 工作完成")
    return f"进程 {name} 的结果"

if __name__ == '__main__':
    print(f"主进程PID: {os.getpid()}")

    # 创建进程
    process = multiprocessing.Process(
        target=worker_task,
        args=("Worker-1", 3)
    )

    print("启动子进程...")
    process.start()

    print("主进程继续执行其他任务")
    time.sleep(1)

    print("等待子进程结束...")
    process.join()

    print("所有任务完成")
'''


@pytest.mark.parametrize("method", METHODS)
def test_003_5_2_1_basic_usage(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T003_5_2_1, method))
    ((main_pid,),) = grep(lines, r"主进程PID: (\d+)")
    ((child_pid,),) = grep(lines, r"进程 Worker-1 开始工作，PID: (\d+)")
    assert main_pid != child_pid
    child = [line for line in lines if line.startswith("进程 Worker-1 ")]
    assert child[1:] == [f"进程 Worker-1 工作中... {i}/3" for i in (1, 2, 3)] + [
        "进程 Worker-1 工作完成"
    ], lines
    main = [line for line in lines if not line.startswith("进程 Worker-1 ")]
    assert main == [
        f"主进程PID: {main_pid}",
        "启动子进程...",
        "主进程继续执行其他任务",
        "等待子进程结束...",
        "所有任务完成",
    ]
    assert lines[-1] == "所有任务完成"


T003_5_2_3 = r'''
import fastmp as multiprocessing

def task_with_args(name, age, city="Unknown", **kwargs):
    """接收不同类型参数的任务"""
    print(f"姓名: {name}, 年龄: {age}, 城市: {city}")
    print(f"其他信息: {kwargs}")

def demonstrate_arguments():
    """演示不同的参数传递方式"""
    processes = []

    # 方式1: 使用args传递位置参数
    p1 = multiprocessing.Process(
        target=task_with_args,
        args=("张三", 25)
    )

    # 方式2: 使用kwargs传递关键字参数
    p2 = multiprocessing.Process(
        target=task_with_args,
        kwargs={"name": "李四", "age": 30, "city": "北京"}
    )

    # 方式3: 混合使用
    p3 = multiprocessing.Process(
        target=task_with_args,
        args=("王五", 28),
        kwargs={"city": "上海", "job": "程序员", "hobby": "编程"}
    )

    processes = [p1, p2, p3]

    # 启动并等待所有进程
    for p in processes:
        p.start()

    for p in processes:
        p.join()

if __name__ == '__main__':
    demonstrate_arguments()
'''

EXPECTED_003_5_2_3 = sorted(
    [
        "姓名: 张三, 年龄: 25, 城市: Unknown",
        "其他信息: {}",
        "姓名: 李四, 年龄: 30, 城市: 北京",
        "其他信息: {}",
        "姓名: 王五, 年龄: 28, 城市: 上海",
        "其他信息: {'job': '程序员', 'hobby': '编程'}",
    ]
)


@pytest.mark.parametrize("method", METHODS)
def test_003_5_2_3_args_and_kwargs(tmp_path, method):
    result = with_stdlib_parity(tmp_path, T003_5_2_3, method, lambda res: sorted(ok_lines(res)))
    assert result == EXPECTED_003_5_2_3


T003_5_3_1 = r'''
import os
import time
from fastmp import Process, current_process

class CustomWorker(Process):
    """自定义工作进程类"""

    def __init__(self, task_name, work_duration, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task_name = task_name
        self.work_duration = work_duration
        self.result = None

    def run(self):
        """重写run方法，定义进程要执行的任务"""
        current = current_process()
        print(f"自定义进程 {current.name} 开始执行任务: {self.task_name}")
        print(f"进程PID: {os.getpid()}")

        # 执行具体任务
        for i in range(self.work_duration):
            time.sleep(1)
            print(f"{current.name} - {self.task_name} 进度: {i+1}/{self.work_duration}")

        self.result = f"{self.task_name} 完成"
        print(f"自定义进程 {current.name} 任务完成")

class DataProcessor(Process):
    """数据处理进程类"""

    def __init__(self, data_list, process_func, name=None):
        super().__init__(name=name)
        self.data_list = data_list
        self.process_func = process_func
        self.processed_data = []

    def run(self):
        """处理数据"""
        print(f"数据处理进程 {self.name} 开始处理 {len(self.data_list)} 个数据项")

        for i, data in enumerate(self.data_list):
            processed = self.process_func(data)
            self.processed_data.append(processed)
            print(f"{self.name}: 处理 {i+1}/{len(self.data_list)} - {data} -> {processed}")
            time.sleep(0.5)

        print(f"数据处理进程 {self.name} 完成")

def square(x):
    """平方函数"""
    return x * x

def demonstrate_custom_process():
    """演示自定义进程类"""
    print(f"主进程PID: {os.getpid()}")

    # 创建自定义工作进程
    workers = [
        CustomWorker("数据清洗", 3, name="Cleaner"),
        CustomWorker("数据分析", 4, name="Analyzer"),
        CustomWorker("报告生成", 2, name="Reporter")
    ]

    # 创建数据处理进程
    data_processor = DataProcessor(
        data_list=[1, 2, 3, 4, 5],
        process_func=square,
        name="DataProcessor"
    )

    all_processes = workers + [data_processor]

    # 启动所有进程
    for p in all_processes:
        p.start()
        print(f"启动进程: {p.name}")

    # 等待所有进程完成
    for p in all_processes:
        p.join()
        print(f"进程 {p.name} 已结束")

    print("所有自定义进程已完成")

if __name__ == '__main__':
    demonstrate_custom_process()
'''


@pytest.mark.parametrize("method", METHODS)
def test_003_5_3_1_process_subclasses(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T003_5_3_1, method))
    names = ["Cleaner", "Analyzer", "Reporter", "DataProcessor"]
    assert [n for (n,) in grep(lines, r"启动进程: (\w+)")] == names
    assert [n for (n,) in grep(lines, r"进程 (\w+) 已结束")] == names
    assert lines[-1] == "所有自定义进程已完成"
    ((main_pid,),) = grep(lines, r"主进程PID: (\d+)")
    pids = [pid for (pid,) in grep(lines, r"进程PID: (\d+)")]
    assert len(pids) == 3 and len({main_pid, *pids}) == 4, lines
    # current_process().name in the child is the name= given to the subclass.
    for name, task, n in [
        ("Cleaner", "数据清洗", 3),
        ("Analyzer", "数据分析", 4),
        ("Reporter", "报告生成", 2),
    ]:
        own = [
            line for line in lines if name in line and not line.startswith(("启动进程", "进程 "))
        ]
        assert own == (
            [f"自定义进程 {name} 开始执行任务: {task}"]
            + [f"{name} - {task} 进度: {i}/{n}" for i in range(1, n + 1)]
            + [f"自定义进程 {name} 任务完成"]
        ), lines
    own = [line for line in lines if line.startswith(("数据处理进程", "DataProcessor:"))]
    assert own == (
        ["数据处理进程 DataProcessor 开始处理 5 个数据项"]
        + [f"DataProcessor: 处理 {i}/5 - {i} -> {i * i}" for i in range(1, 6)]
        + ["数据处理进程 DataProcessor 完成"]
    ), lines


T003_5_4_2A = r"""
# 错误：没有使用 if __name__ == '__main__'
import fastmp as multiprocessing

def worker():
    print("工作进程执行")

# 危险：在Windows下会无限创建进程
process = multiprocessing.Process(target=worker)
process.start()
process.join()
"""

EPI_EXITCODE_PROCESS = r"""
if __name__ == "__main__":
    print("TUT exitcode", process.exitcode)
"""


def test_003_5_4_2a_unguarded_fork(tmp_path):
    lines = ok_lines(run_tut(tmp_path, T003_5_4_2A, "fork", epilogue=EPI_EXITCODE_PROCESS))
    assert lines == ["工作进程执行", "TUT exitcode 0"]


def _check_003_5_4_2a_spawn(res):
    # B11: the child re-imports the main module, whose unguarded start() fails;
    # the parent carries on (no infinite recursion).
    lines = ok_lines_parent_only(res)
    assert lines == ["TUT exitcode 1"], show(res)
    assert "RuntimeError" in res.stderr and "bootstrapping phase" in res.stderr, show(res)


def ok_lines_parent_only(res):
    """stdout lines of a run whose parent succeeded (a child may have failed)."""
    assert res.returncode == 0, show(res)
    return res.stdout.splitlines()


@pytest.mark.parametrize("lib", ["multiprocessing", "fastmp"])
def test_003_5_4_2a_unguarded_spawn_fails_like_stdlib(tmp_path, lib):
    _check_003_5_4_2a_spawn(
        run_tut(tmp_path, T003_5_4_2A, "spawn", lib=lib, epilogue=EPI_EXITCODE_PROCESS)
    )


T003_5_4_2B = r'''
import fastmp as multiprocessing
import os

def worker(name):
    print(f"工作进程 {name} 执行，PID: {os.getpid()}")

def safe_windows_example():
    """Windows安全的多进程示例"""
    print(f"主进程PID: {os.getpid()}")

    processes = []

    for i in range(3):
        p = multiprocessing.Process(
            target=worker,
            args=(f"Worker-{i+1}",)
        )
        processes.append(p)
        p.start()

    for p in processes:
        p.join()

    print("所有进程完成")

if __name__ == '__main__':
    # 只有在作为主程序运行时才执行多进程代码
    safe_windows_example()
'''


@pytest.mark.parametrize("method", METHODS)
def test_003_5_4_2b_guarded(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T003_5_4_2B, method))
    ((main_pid,),) = grep(lines, r"主进程PID: (\d+)")
    workers = dict(grep(lines, r"工作进程 (Worker-\d) 执行，PID: (\d+)"))
    assert sorted(workers) == ["Worker-1", "Worker-2", "Worker-3"], lines
    assert len({main_pid, *workers.values()}) == 4
    assert lines[-1] == "所有进程完成" and len(lines) == 5


T003_6_1_1 = r"""
import time, random
from fastmp import Process

num = 100

def func():
    global num
    num -= 1

if __name__ == '__main__':
    process_list = []
    for i in range(10):
        p = Process(target=func)
        p.start()
        process_list.append(p)
    t2 = time.time()
    for p in process_list:
        p.join()

    print(num)  # num=?
"""

EPI_EXITCODES_PROCESS_LIST = r"""
if __name__ == "__main__":
    print("TUT exitcodes", [p.exitcode for p in process_list])
"""


@pytest.mark.parametrize("method", METHODS)
def test_003_6_1_1_data_isolation(tmp_path, method):
    lines = with_stdlib_parity(
        tmp_path, T003_6_1_1, method, ok_lines, epilogue=EPI_EXITCODES_PROCESS_LIST
    )
    # Each child decremented its own copy; the parent's global is untouched.
    assert lines == ["100", "TUT exitcodes " + str([0] * 10)]


T003_6_2_1 = r'''
from fastmp import Process, Queue
import os
import time

def producer(queue, producer_id, item_count):
    """生产者进程"""
    print(f"生产者 {producer_id} 开始生产，PID: {os.getpid()}")

    for i in range(item_count):
        item = f"Producer-{producer_id}-Item-{i+1}"
        queue.put(item)
        print(f"生产者 {producer_id} 生产: {item}")
        time.sleep(0.5)

    # 放入结束标志
    queue.put(f"END-{producer_id}")
    print(f"生产者 {producer_id} 完成")

def consumer(queue, consumer_id):
    """消费者进程"""
    print(f"消费者 {consumer_id} 开始消费，PID: {os.getpid()}")
    consumed_items = []

    while True:
        item = queue.get()  # 从队列获取数据

        if item.startswith("END"):
            print(f"消费者 {consumer_id} 收到结束信号: {item}")
            queue.put(item)  # 把结束信号放回去，供其他消费者使用
            break

        consumed_items.append(item)
        print(f"消费者 {consumer_id} 消费: {item}")
        time.sleep(0.3)

    print(f"消费者 {consumer_id} 完成，共消费 {len(consumed_items)} 个商品")

def queue_demo():
    """队列通信演示"""
    # 创建队列
    q = Queue(maxsize=10)  # 设置最大容量

    processes = []

    # 创建生产者进程
    for i in range(2):
        p = Process(target=producer, args=(q, i+1, 3))
        p.start()
        processes.append(p)

    # 创建消费者进程
    for i in range(2):
        p = Process(target=consumer, args=(q, i+1))
        p.start()
        processes.append(p)

    # 等待所有进程完成
    for p in processes:
        p.join()

    print("所有进程完成")

if __name__ == '__main__':
    queue_demo()
'''


def check_consumption(consumed_by, produced_by):
    """Queue invariants: `consumed_by` maps consumer -> items in the order it got
    them, `produced_by` maps producer -> items in the order it put them.
    Every item consumed was produced and is consumed once; each consumer sees
    each producer's items in that producer's order (FIFO per producer).
    B18: how many items get consumed is not asserted (consumers may quit on the
    first end signal)."""
    order = {item: (p, i) for p, items in produced_by.items() for i, item in enumerate(items)}
    seen = [item for items in consumed_by.values() for item in items]
    assert len(seen) == len(set(seen)), f"consumed twice: {consumed_by}"
    assert set(seen) <= set(order), f"consumed but never produced: {set(seen) - set(order)}"
    for c, items in consumed_by.items():
        for p in produced_by:
            mine = [order[item][1] for item in items if order[item][0] == p]
            assert mine == sorted(mine), (
                f"consumer {c} got producer {p}'s items out of order: {items}"
            )
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_003_6_2_1_queue_basics(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T003_6_2_1, method))
    produced = {p: [f"Producer-{p}-Item-{i}" for i in (1, 2, 3)] for p in ("1", "2")}
    for p, items in produced.items():
        assert [item for q, item in grep(lines, r"生产者 (\d) 生产: (.*)") if q == p] == items, (
            lines
        )
        assert f"生产者 {p} 完成" in lines
    consumed = {
        c: [item for d, item in grep(lines, r"消费者 (\d) 消费: (.*)") if d == c]
        for c in ("1", "2")
    }
    check_consumption(consumed, produced)
    ends = dict(grep(lines, r"消费者 (\d) 收到结束信号: (END-\d)"))
    assert sorted(ends) == ["1", "2"] and set(ends.values()) <= {"END-1", "END-2"}, lines
    for c, items in consumed.items():
        assert f"消费者 {c} 完成，共消费 {len(items)} 个商品" in lines
    assert lines[-1] == "所有进程完成"


T003_6_2_2 = r'''
from fastmp import Process, Queue, current_process
import time
import random

def calculate_task(task_data):
    """计算任务"""
    task_id, numbers = task_data
    result = sum(x * x for x in numbers)
    time.sleep(random.uniform(0.5, 2.0))  # 模拟计算时间
    return task_id, result

def worker_process(task_queue, result_queue):
    """工作进程"""
    process = current_process()
    print(f"{process.name} 开始工作")

    completed_tasks = 0

    while True:
        try:
            # 从任务队列获取任务
            task_data = task_queue.get(timeout=2)

            if task_data is None:  # 结束标志
                print(f"{process.name} 收到结束信号")
                break

            # 执行任务
            task_id, numbers = task_data
            print(f"{process.name} 处理任务 {task_id}")

            result = calculate_task(task_data)

            # 将结果放入结果队列
            result_queue.put(result)
            completed_tasks += 1

        except Exception as e:
            print(f"{process.name} 发生错误: {e}")
            break

    print(f"{process.name} 完成 {completed_tasks} 个任务")

def task_distribution_demo():
    """任务分发演示"""
    task_queue = Queue()
    result_queue = Queue()

    # 准备任务数据
    tasks = []
    for i in range(10):
        numbers = [random.randint(1, 100) for _ in range(5)]
        tasks.append((f"Task-{i+1}", numbers))

    # 将任务放入队列
    print("正在分发任务...")
    for task in tasks:
        task_queue.put(task)
        print(f"分发任务: {task[0]}")

    # 创建工作进程
    workers = []
    for i in range(3):
        p = Process(
            target=worker_process,
            args=(task_queue, result_queue),
            name=f"Worker-{i+1}"
        )
        p.start()
        workers.append(p)

    # 等待一段时间后发送结束信号
    time.sleep(1)
    for _ in workers:
        task_queue.put(None)  # 发送结束信号

    # 收集结果
    print("正在收集结果...")
    results = []
    for _ in tasks:
        result = result_queue.get()
        results.append(result)
        print(f"收到结果: {result}")

    # 等待所有工作进程完成
    for p in workers:
        p.join()

    print(f"所有任务完成，共收到 {len(results)} 个结果")

if __name__ == '__main__':
    task_distribution_demo()
'''

# Seeding the parent's random module lets the test recompute every result.
SEED_003_6_2_2 = 20261122
HOOK_SEED_003_6_2_2 = f"""
if __name__ == "__main__":
    import random as _tut_random
    _tut_random.seed({SEED_003_6_2_2})
"""


def expected_003_6_2_2():
    rng = random.Random(SEED_003_6_2_2)
    tasks = [(f"Task-{i + 1}", [rng.randint(1, 100) for _ in range(5)]) for i in range(10)]
    return {task_id: sum(x * x for x in numbers) for task_id, numbers in tasks}


@pytest.mark.parametrize("method", METHODS)
def test_003_6_2_2_task_distribution(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T003_6_2_2, method, hooks=HOOK_SEED_003_6_2_2))
    task_ids = [f"Task-{i}" for i in range(1, 11)]
    assert [t for (t,) in grep(lines, r"分发任务: (.*)")] == task_ids
    results = [ast.literal_eval(r) for (r,) in grep(lines, r"收到结果: (.*)")]
    assert len(results) == 10 and dict(results) == expected_003_6_2_2(), lines
    handled = [t for _, t in grep(lines, r"(Worker-\d) 处理任务 (Task-\d+)")]
    assert sorted(handled) == sorted(task_ids), lines
    workers = ["Worker-1", "Worker-2", "Worker-3"]
    assert sorted(w for (w,) in grep(lines, r"(Worker-\d) 开始工作")) == workers
    assert sorted(w for (w,) in grep(lines, r"(Worker-\d) 收到结束信号")) == workers
    assert not grep(lines, r"(Worker-\d) 发生错误: (.*)"), lines
    assert sum(int(n) for _, n in grep(lines, r"(Worker-\d) 完成 (\d+) 个任务")) == 10, lines
    assert lines[-1] == "所有任务完成，共收到 10 个结果"


# ---------------------------------------------------------------------------
# 004 — Python 进程详解：从基础到高级
# ---------------------------------------------------------------------------

T004_3_1 = r'''
import fastmp as multiprocessing
import os
import time

def worker(name, delay):
    """工作进程函数"""
    print(f"Process {name} (PID: {os.getpid()}) started")
    time.sleep(delay)
    print(f"Process {name} finished")
    return f"Result from {name}"

if __name__ == "__main__":
    # 创建进程
    p1 = multiprocessing.Process(target=worker, args=("A", 2))
    p2 = multiprocessing.Process(target=worker, args=("B", 1))

    # 启动进程
    p1.start()
    p2.start()

    # 等待进程结束
    p1.join()
    p2.join()

    print("All processes completed")
'''


@pytest.mark.parametrize("method", METHODS)
def test_004_3_1_process(tmp_path, method):
    lines = ok_lines(run_tut(tmp_path, T004_3_1, method))
    started = dict(grep(lines, r"Process (\w) \(PID: (\d+)\) started"))
    assert sorted(started) == ["A", "B"] and started["A"] != started["B"], lines
    assert sorted(n for (n,) in grep(lines, r"Process (\w) finished")) == ["A", "B"], lines
    assert lines[-1] == "All processes completed" and len(lines) == 5


T004_3_2 = r'''
import fastmp as multiprocessing
import time

class WorkerProcess(multiprocessing.Process):
    def __init__(self, name, delay):
        super().__init__()
        self.name = name
        self.delay = delay

    def run(self):
        """重写 run 方法"""
        print(f"Worker {self.name} started")
        time.sleep(self.delay)
        print(f"Worker {self.name} finished")
        return f"Result from {self.name}"

if __name__ == "__main__":
    processes = []

    # 创建并启动多个进程
    for i in range(3):
        p = WorkerProcess(f"Worker-{i}", i+1)
        processes.append(p)
        p.start()

    # 等待所有进程完成
    for p in processes:
        p.join()

    print("All workers completed")
'''

EPI_004_3_2 = r"""
if __name__ == "__main__":
    print("TUT processes", [(p.name, p.exitcode, p.delay) for p in processes])
    print("TUT pids", len({p.pid for p in processes} - {None}))
"""


def _result_004_3_2(res):
    lines = ok_lines(res)
    names = [f"Worker-{i}" for i in range(3)]
    assert sorted(n for (n,) in grep(lines, r"Worker (Worker-\d) started")) == names, lines
    assert sorted(n for (n,) in grep(lines, r"Worker (Worker-\d) finished")) == names, lines
    assert lines[-3] == "All workers completed", lines
    assert tut_value(lines, "pids") == 3
    return tut_value(lines, "processes")


@pytest.mark.parametrize("method", METHODS)
def test_004_3_2_process_subclass(tmp_path, method):
    # The name assigned in __init__ sticks; run()'s return value is dropped (exit code 0).
    assert with_stdlib_parity(
        tmp_path, T004_3_2, method, _result_004_3_2, epilogue=EPI_004_3_2
    ) == [
        ("Worker-0", 0, 1),
        ("Worker-1", 0, 2),
        ("Worker-2", 0, 3),
    ]


T004_4_1 = r'''
import fastmp as multiprocessing
import time
import random

def producer(queue, name):
    """生产者进程"""
    for i in range(5):
        item = f"Item-{name}-{i}"
        time.sleep(random.uniform(0.1, 0.5))
        queue.put(item)
        print(f"Producer {name} produced: {item}")
    queue.put(None)  # 发送结束信号

def consumer(queue, name):
    """消费者进程"""
    while True:
        item = queue.get()
        if item is None:
            queue.put(None)  # 传递给其他消费者
            break
        time.sleep(random.uniform(0.2, 0.8))
        print(f"Consumer {name} consumed: {item}")

if __name__ == "__main__":
    queue = multiprocessing.Queue(maxsize=10)

    # 创建生产者和消费者
    producers = [
        multiprocessing.Process(target=producer, args=(queue, f"P{i}"))
        for i in range(2)
    ]

    consumers = [
        multiprocessing.Process(target=consumer, args=(queue, f"C{i}"))
        for i in range(3)
    ]

    # 启动所有进程
    for p in producers + consumers:
        p.start()

    # 等待生产者完成
    for p in producers:
        p.join()

    # 发送结束信号给消费者
    for _ in consumers:
        queue.put(None)

    # 等待消费者完成
    for c in consumers:
        c.join()

    print("All processes completed")
'''

EPI_004_4_1 = r"""
if __name__ == "__main__":
    print("TUT exitcodes", [p.exitcode for p in producers + consumers])
"""


def _result_004_4_1(res):
    lines = ok_lines(res)
    produced = {
        p: [item for q, item in grep(lines, r"Producer (P\d) produced: (.*)") if q == p]
        for p in ("P0", "P1")
    }
    assert produced == {p: [f"Item-{p}-{i}" for i in range(5)] for p in ("P0", "P1")}, lines
    consumed = {
        c: [item for d, item in grep(lines, r"Consumer (C\d) consumed: (.*)") if d == c]
        for c in ("C0", "C1", "C2")
    }
    seen = check_consumption(consumed, produced)
    # Not a count (B18), but FIFO guarantees this much: every item of the
    # producer whose end signal came first was taken (and printed) before it.
    assert any(set(items) <= set(seen) for items in produced.values()), lines
    assert lines[-2] == "All processes completed", lines
    assert tut_value(lines, "exitcodes") == [0] * 5
    return produced


@pytest.mark.parametrize("method", METHODS)
def test_004_4_1_queue_producers_consumers(tmp_path, method):
    with_stdlib_parity(tmp_path, T004_4_1, method, _result_004_4_1, epilogue=EPI_004_4_1)


# As written: `import os` only inside the `__main__` block (B13), so under
# spawn the workers die with NameError -- with the stdlib as with fastmp.
T004_7_2 = r'''
import fastmp as multiprocessing
import signal
import time
import sys

def graceful_shutdown(signum, frame):
    """优雅关闭信号处理"""
    print(f"Received signal {signum}, shutting down...")
    sys.exit(0)

def worker_with_cleanup():
    """带有清理逻辑的工作进程"""
    # 设置信号处理
    signal.signal(signal.SIGTERM, graceful_shutdown)
    signal.signal(signal.SIGINT, graceful_shutdown)

    try:
        print(f"Worker {os.getpid()} started")

        # 模拟工作
        for i in range(10):
            print(f"Worker {os.getpid()} working... {i}")
            time.sleep(1)

        print(f"Worker {os.getpid()} finished normally")
    except SystemExit:
        print(f"Worker {os.getpid()} exiting gracefully")
        # 执行清理操作
        # cleanup_resources()
    except Exception as e:
        print(f"Worker {os.getpid()} error: {e}")
    finally:
        print(f"Worker {os.getpid()} cleanup completed")

if __name__ == "__main__":
    import os

    processes = []

    # 创建进程
    for i in range(2):
        p = multiprocessing.Process(target=worker_with_cleanup)
        processes.append(p)
        p.start()

    # 等待一段时间
    time.sleep(3)

    # 发送终止信号
    print("Sending termination signal...")
    for p in processes:
        p.terminate()  # 发送 SIGTERM

    # 等待进程结束
    for p in processes:
        p.join(timeout=5)  # 最多等待5秒
        if p.is_alive():
            print(f"Process {p.pid} did not terminate, killing...")
            p.kill()  # 强制终止

    print("All processes terminated")
'''

# FIX B13: `import os` moved to the top of the module, so it also exists in
# spawned children (API_INVENTORY.md's fix). Nothing else changes.
T004_7_2_FIXED = T004_7_2.replace("import sys\n", "import sys\nimport os\n", 1)

EPI_004_7_2 = r"""
if __name__ == "__main__":
    print("TUT processes", [(p.pid, p.exitcode) for p in processes])
"""


def _check_004_7_2_graceful(lines):
    processes = tut_value(lines, "processes")
    assert [code for _, code in processes] == [0, 0], lines  # SIGTERM handler -> sys.exit(0)
    sent = index_of(lines, "Sending termination signal...")
    for pid, _ in processes:
        own = [line for line in lines if line.startswith(f"Worker {pid} ")]
        assert own[0] == f"Worker {pid} started", lines
        assert own[-2:] == [
            f"Worker {pid} exiting gracefully",
            f"Worker {pid} cleanup completed",
        ], lines
        assert all(line.startswith(f"Worker {pid} working... ") for line in own[1:-2]), lines
        assert index_of(lines, f"Worker {pid} exiting gracefully") > sent
    assert lines.count("Received signal 15, shutting down...") == 2, lines
    assert not [
        line for line in lines if "finished normally" in line or "did not terminate" in line
    ], lines
    assert lines[-2] == "All processes terminated", lines


# The tutorial's parent sleeps 3 s so that its workers can install their
# SIGTERM handler before terminate(). Synchronise on that state instead of
# time: each worker marks (a file in the run's directory) that it reached its
# first sleep, inside its try block with the handler installed, and the
# parent's sleep starts once both have. The workers' 10 x 1 s of work are
# scaled up (30 s) so they cannot finish before terminate(), however slow
# the machine.
HOOK_WORKERS_READY = r"""
def _tut_before_sleep(seconds, in_main):
    if not in_main:
        open(f"tut-sleeping-{_tut_os.getpid()}", "w").close()
        return
    deadline = _tut_time.monotonic() + 60
    while _tut_time.monotonic() < deadline:
        if sum(e.startswith("tut-sleeping-") for e in _tut_os.listdir(".")) >= 2:
            return
        _tut_real_sleep(0.01)
"""


def test_004_7_2_lifecycle_as_written_fork(tmp_path):
    res = run_tut(
        tmp_path,
        T004_7_2,
        "fork",
        main_scale=0.2,
        child_scale=3,
        hooks=HOOK_WORKERS_READY,
        epilogue=EPI_004_7_2,
    )
    _check_004_7_2_graceful(ok_lines(res))


@pytest.mark.parametrize("method", METHODS)
def test_004_7_2_lifecycle_fixed(tmp_path, method):
    res = run_tut(
        tmp_path,
        T004_7_2_FIXED,
        method,
        main_scale=0.2,
        child_scale=3,
        hooks=HOOK_WORKERS_READY,
        epilogue=EPI_004_7_2,
    )
    _check_004_7_2_graceful(ok_lines(res))


def _result_004_7_2_spawn_as_written(res):
    lines = ok_lines_parent_only(res)
    assert [code for _, code in tut_value(lines, "processes")] == [1, 1], show(res)
    assert res.stderr.count("NameError: name 'os' is not defined") >= 2, show(res)
    assert lines[:2] == ["Sending termination signal...", "All processes terminated"], show(res)
    return lines[:2]


@pytest.mark.parametrize("lib", ["multiprocessing", "fastmp"])
def test_004_7_2_spawn_as_written_fails_like_stdlib(tmp_path, lib):
    res = run_tut(tmp_path, T004_7_2, "spawn", lib=lib, main_scale=0.5, epilogue=EPI_004_7_2)
    _result_004_7_2_spawn_as_written(res)
