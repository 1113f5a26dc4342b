"""Tutorial examples that use Manager (API_INVENTORY.md: 001-8, 002-§3's Manager
part, 004-4.4, 004-9.1; 000-2 is in test_tut_pipe.py and 004-5.4 in
test_tut_sync.py), run with ``multiprocessing`` swapped for ``fastmp``, sleeps
scaled down, in a fresh interpreter each. 004-8.3 is not ported: it calls
``manager.set()``, which no manager has (AttributeError in the stdlib too), and
crawls the network.

Each script also prints the module of the proxies it got, to show that they
are fastmp's shared-memory ones."""

from __future__ import annotations

import ast
import re
import textwrap

import pytest

from _script import run_script

pytestmark = pytest.mark.timeout(120)

PREAMBLE = """\
import os as _os, time as _time
_real_sleep = _time.sleep
_time.sleep = lambda s: _real_sleep(s * 0.1)
import fastmp as _fastmp
_fastmp.set_start_method(_os.environ.get("TUT_START", "fork"), force=True)
"""

METHODS = pytest.mark.parametrize("method", ["fork", "spawn"])


def _run(code, tmp_path, method="fork", timeout=90):
    code = PREAMBLE + textwrap.dedent(code).replace("multiprocessing", "fastmp")
    res = run_script(code, tmp_path, timeout=timeout, env={"TUT_START": method})
    assert res.returncode == 0, f"rc={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res.stdout


# 001-8 "2. 共享字典", with the `import multiprocessing` of earlier blocks (B5).
TUT_001_8 = """
import multiprocessing
from multiprocessing import Manager

def update_dict(shared_dict, key, value):
    shared_dict[key] = value

if __name__ == '__main__':
    with Manager() as manager:
        shared_dict = manager.dict()
        processes = []
        for i in range(5):
            p = multiprocessing.Process(
                target=update_dict,
                args=(shared_dict, f'key{i}', f'value{i}')
            )
            processes.append(p)
            p.start()
        for p in processes:
            p.join()
        print(f"共享字典: {dict(shared_dict)}")
        print("PROXY", type(shared_dict).__module__)
"""


@METHODS
def test_001_8_shared_dict(tmp_path, method):
    out = _run(TUT_001_8, tmp_path, method)
    shared = ast.literal_eval(re.search(r"共享字典: (\{.*\})", out).group(1))
    assert shared == {f"key{i}": f"value{i}" for i in range(5)}
    assert "PROXY fastmp.managers" in out


# 002-§3, the Manager part (local target function: fork only, as written).
TUT_002_3_MANAGER = """
import multiprocessing as mp
import os

def main():
    def modify_shared_dict(d, l):
        d['count'] = d.get('count', 0) + 1
        l.append(os.getpid())

    with mp.Manager() as manager:
        shared_dict = manager.dict()
        shared_list = manager.list()
        processes = [
            mp.Process(target=modify_shared_dict, args=(shared_dict, shared_list))
            for _ in range(3)
        ]
        for p in processes:
            p.start()
        for p in processes:
            p.join()
        print(f"共享字典: {dict(shared_dict)}")
        print(f"共享列表: {list(shared_list)}")
        print("PIDS", sorted(p.pid for p in processes))
        print("PROXY", type(shared_list).__module__)

if __name__ == '__main__':
    main()
"""


def test_002_3_manager_part(tmp_path):
    out = _run(TUT_002_3_MANAGER, tmp_path, "fork")
    count = ast.literal_eval(re.search(r"共享字典: (\{.*\})", out).group(1))["count"]
    # `d['count'] = d.get(...) + 1` is the example's unlocked read-modify-write:
    # 1 to 3, as with the stdlib.
    assert 1 <= count <= 3
    pids = ast.literal_eval(re.search(r"共享列表: (\[.*\])", out).group(1))
    assert sorted(pids) == ast.literal_eval(re.search(r"PIDS (\[.*\])", out).group(1))
    assert "PROXY fastmp.managers" in out


# 004-4.4 管理器（Manager）
TUT_004_4_4 = """
import multiprocessing
import time

def modify_dict(shared_dict, key):
    for i in range(10):
        if key not in shared_dict:
            shared_dict[key] = 0
        shared_dict[key] += 1
        time.sleep(0.01)

def modify_list(shared_list, value):
    for i in range(5):
        shared_list.append(f"{value}-{i}")
        time.sleep(0.02)

if __name__ == "__main__":
    with multiprocessing.Manager() as manager:
        shared_dict = manager.dict()
        shared_list = manager.list()
        processes = []
        for i in range(3):
            p = multiprocessing.Process(target=modify_dict, args=(shared_dict, f"key{i}"))
            processes.append(p)
            p.start()
        for i in range(2):
            p = multiprocessing.Process(target=modify_list, args=(shared_list, f"worker{i}"))
            processes.append(p)
            p.start()
        for p in processes:
            p.join()
        print(f"Final dict: {dict(shared_dict)}")
        print(f"Final list: {list(shared_list)}")
        print("PROXY", type(shared_dict).__module__)
"""


@METHODS
def test_004_4_4_manager(tmp_path, method):
    out = _run(TUT_004_4_4, tmp_path, method)
    assert ast.literal_eval(re.search(r"Final dict: (\{.*\})", out).group(1)) == {
        f"key{i}": 10 for i in range(3)
    }
    items = ast.literal_eval(re.search(r"Final list: (\[.*\])", out).group(1))
    assert sorted(items) == sorted(f"worker{w}-{i}" for w in range(2) for i in range(5))
    for w in range(2):  # each worker's own items in order
        assert [x for x in items if x.startswith(f"worker{w}")] == [
            f"worker{w}-{i}" for i in range(5)
        ]
    assert "PROXY fastmp.managers" in out


# 004-9.1 进程与线程混合使用: manager queues with task_done/join between
# processes that each run threads.
TUT_004_9_1 = """
import multiprocessing
import threading
import time
import queue

def io_worker(thread_id, task_queue, result_queue):
    while True:
        try:
            task = task_queue.get(timeout=1)
            time.sleep(0.5)
            result = f"Thread {thread_id} processed: {task}"
            result_queue.put(result)
            task_queue.task_done()
        except queue.Empty:
            break

def cpu_worker(process_id, task_queue, result_queue):
    thread_count = 4
    threads = []
    local_task_queue = queue.Queue()
    local_result_queue = queue.Queue()
    for i in range(thread_count):
        t = threading.Thread(
            target=io_worker,
            args=(f"P{process_id}-T{i}", local_task_queue, local_result_queue)
        )
        threads.append(t)
        t.start()
    while True:
        try:
            task = task_queue.get(timeout=5)
            local_task_queue.put(task)
            thread_result = local_result_queue.get()
            time.sleep(0.1)
            final_result = f"Process {process_id}: {thread_result}"
            result_queue.put(final_result)
            task_queue.task_done()
        except queue.Empty:
            break
    for t in threads:
        t.join()

if __name__ == "__main__":
    manager = multiprocessing.Manager()
    task_queue = manager.Queue()
    result_queue = manager.Queue()
    for i in range(20):
        task_queue.put(f"Task-{i}")
    processes = []
    for i in range(multiprocessing.cpu_count()):
        p = multiprocessing.Process(
            target=cpu_worker,
            args=(i, task_queue, result_queue)
        )
        processes.append(p)
        p.start()
    task_queue.join()
    results = []
    while not result_queue.empty():
        results.append(result_queue.get())
    for p in processes:
        p.terminate()
        p.join()
    print(f"Processed {len(results)} tasks")
    for result in results[:5]:
        print(result)
    print("ALL", sorted(int(r.rsplit("-", 1)[1]) for r in results))
    print("PROXY", type(task_queue).__module__)
"""


@METHODS
def test_004_9_1_processes_and_threads(tmp_path, method):
    out = _run(TUT_004_9_1, tmp_path, method)
    assert "Processed 20 tasks" in out
    assert ast.literal_eval(re.search(r"ALL (\[.*\])", out).group(1)) == list(range(20))
    assert "PROXY fastmp.managers" in out
