"""Tutorial examples that use the synchronisation primitives, run with fastmp.

Each test runs the example's code (import swapped to fastmp, sleeps scaled
down, start method from argv) in a fresh interpreter in a temporary directory,
and checks what it computed, not just that it ran. IDs follow
/work/shared/API_INVENTORY.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _script import run_script  # noqa: E402

pytestmark = pytest.mark.timeout(120)

UNBUFFERED = {"PYTHONUNBUFFERED": "1"}  # children's prints reach the pipe in order

START = """
import sys
import fastmp
fastmp.set_start_method(sys.argv[1], force=True)
"""


def _run(code, tmp_path, method, timeout=90):
    res = run_script(code, tmp_path, timeout=timeout, args=(method,), env=UNBUFFERED)
    assert res.returncode == 0, res.stderr
    return res.stdout


METHODS = pytest.mark.parametrize("method", ["fork", "spawn"])


@METHODS
def test_004_5_1_lock_counter(tmp_path, method):
    out = _run(
        """
        import fastmp as multiprocessing
        import time
        def worker_with_lock(lock, counter, worker_id):
            for _ in range(5):
                lock.acquire()
                try:
                    current = counter.value
                    time.sleep(0.01)  # scaled from 0.1
                    counter.value = current + 1
                    print(f"Worker {worker_id} incremented counter to {counter.value}")
                finally:
                    lock.release()
                time.sleep(0.05)  # scaled from 0.5
        if __name__ == "__main__":
            multiprocessing.set_start_method(__import__("sys").argv[1], force=True)
            lock = multiprocessing.Lock()
            counter = multiprocessing.Value('i', 0)
            processes = []
            for i in range(3):
                p = multiprocessing.Process(target=worker_with_lock, args=(lock, counter, i))
                processes.append(p)
                p.start()
            for p in processes:
                p.join()
            print(f"Final counter value: {counter.value}")
        """,
        tmp_path,
        method,
    )
    assert "Final counter value: 15" in out
    values = sorted(int(v) for v in re.findall(r"incremented counter to (\d+)", out))
    assert values == list(range(1, 16))  # no lost update: the lock serialised them


@METHODS
def test_004_5_2_semaphore_limits_concurrency(tmp_path, method):
    out = _run(
        """
        import fastmp as multiprocessing
        import time
        import random
        def worker_with_semaphore(semaphore, worker_id):
            for i in range(3):
                semaphore.acquire()
                try:
                    print(f"Worker {worker_id} started task {i}")
                    time.sleep(random.uniform(0.05, 0.15))  # scaled from 0.5..1.5
                    print(f"Worker {worker_id} finished task {i}")
                finally:
                    semaphore.release()
                time.sleep(0.05)  # scaled from 0.5
        if __name__ == "__main__":
            multiprocessing.set_start_method(__import__("sys").argv[1], force=True)
            semaphore = multiprocessing.Semaphore(2)
            processes = []
            for i in range(5):
                p = multiprocessing.Process(target=worker_with_semaphore, args=(semaphore, i))
                processes.append(p)
                p.start()
            for p in processes:
                p.join()
        """,
        tmp_path,
        method,
    )
    events = re.findall(r"Worker (\d) (started|finished) task (\d)", out)
    assert len(events) == 30
    # "started" is printed after acquire, "finished" before release: at no
    # point in the output can more than 2 tasks be open.
    open_now, peak = 0, 0
    for _w, what, _t in events:
        open_now += 1 if what == "started" else -1
        peak = max(peak, open_now)
    assert open_now == 0
    assert 1 <= peak <= 2


@METHODS
def test_004_5_3_event_releases_all_waiters(tmp_path, method):
    out = _run(
        """
        import fastmp as multiprocessing
        import time
        def waiter(event, worker_id):
            print(f"Worker {worker_id} waiting for event")
            event.wait()
            print(f"Worker {worker_id} received event, continuing")
        def setter(event):
            print("Setter sleeping for 2 seconds")
            time.sleep(0.2)  # scaled from 2
            print("Setter setting event")
            event.set()
        if __name__ == "__main__":
            multiprocessing.set_start_method(__import__("sys").argv[1], force=True)
            event = multiprocessing.Event()
            waiters = []
            for i in range(3):
                p = multiprocessing.Process(target=waiter, args=(event, i))
                waiters.append(p)
                p.start()
            setter_proc = multiprocessing.Process(target=setter, args=(event,))
            setter_proc.start()
            for p in waiters:
                p.join()
            setter_proc.join()
        """,
        tmp_path,
        method,
    )
    # Positions in the output, not lines: unbuffered prints write the text and
    # the newline separately, so lines of different processes can merge.
    set_at = out.index("Setter setting event")
    received = [m.start() for m in re.finditer("received event", out)]
    assert len(received) == 3
    assert all(i > set_at for i in received)


@METHODS
def test_004_5_5_barrier_two_phases(tmp_path, method):
    out = _run(
        """
        import fastmp as multiprocessing
        import time
        import random
        def worker(barrier, worker_id):
            print(f"Worker {worker_id} started phase 1")
            time.sleep(random.uniform(0.05, 0.15))  # scaled from 0.5..1.5
            print(f"Worker {worker_id} finished phase 1, waiting at barrier")
            barrier.wait()
            print(f"Worker {worker_id} started phase 2")
            time.sleep(random.uniform(0.05, 0.15))
            print(f"Worker {worker_id} finished phase 2")
        if __name__ == "__main__":
            multiprocessing.set_start_method(__import__("sys").argv[1], force=True)
            barrier = multiprocessing.Barrier(3)
            processes = []
            for i in range(3):
                p = multiprocessing.Process(target=worker, args=(barrier, i))
                processes.append(p)
                p.start()
            for p in processes:
                p.join()
        """,
        tmp_path,
        method,
    )
    arrived = [m.start() for m in re.finditer("waiting at barrier", out)]
    phase2 = [m.start() for m in re.finditer("started phase 2", out)]
    assert len(arrived) == 3 and len(phase2) == 3
    assert max(arrived) < min(phase2)  # nobody passed before all had arrived
    assert out.count("finished phase 2") == 3


@METHODS
def test_004_5_4_condition_with_manager_list(tmp_path, method):
    out = _run(
        """
        import fastmp as multiprocessing
        import time
        import random
        def producer(condition, queue, producer_id):
            for i in range(3):
                time.sleep(random.uniform(0.05, 0.1))  # scaled from 0.5..1.0
                with condition:
                    item = f"Item-{producer_id}-{i}"
                    queue.append(item)
                    print(f"Producer {producer_id} produced: {item}")
                    condition.notify_all()
        def consumer(condition, queue, consumer_id):
            while True:
                with condition:
                    while len(queue) == 0:
                        condition.wait()
                    item = queue.pop(0)
                    print(f"Consumer {consumer_id} consumed: {item}")
                    time.sleep(random.uniform(0.02, 0.05))  # scaled from 0.2..0.5
        if __name__ == "__main__":
            multiprocessing.set_start_method(__import__("sys").argv[1], force=True)
            manager = multiprocessing.Manager()
            queue = manager.list()
            condition = multiprocessing.Condition()
            producers = []
            consumers = []
            for i in range(2):
                p = multiprocessing.Process(target=producer, args=(condition, queue, i))
                producers.append(p)
                p.start()
            for i in range(3):
                p = multiprocessing.Process(target=consumer, args=(condition, queue, i))
                consumers.append(p)
                p.start()
            for p in producers:
                p.join()
            time.sleep(1)  # scaled from 2: time for the consumers to drain
            for p in consumers:
                p.terminate()
                p.join()
        """,
        tmp_path,
        method,
    )
    produced = sorted(re.findall(r"produced: (Item-\d-\d)", out))
    consumed = sorted(re.findall(r"consumed: (Item-\d-\d)", out))
    assert len(produced) == 6
    assert consumed == produced  # each item consumed exactly once


TICKETS_COMMON = """
import json
import time
import os
from fastmp import Process, Lock
"""


@METHODS
def test_003_6_5_1_unsafe_tickets(tmp_path, method):
    # B19: runs in a temporary CWD (the example writes ticket.json there).
    out = _run(
        TICKETS_COMMON
        + """
def buy_ticket_unsafe(username):
    print(f"{username} start")
    time.sleep(0.1)
    with open("ticket.json", "r") as f:
        data = json.load(f)
        print(f"{username} read {data['count']}")
    if data["count"] > 0:
        time.sleep(0.2)
        data["count"] -= 1
        print(f"{username} bought; left {data['count']}")
        with open("ticket.json", "w") as f:
            json.dump(data, f)
    else:
        print(f"{username} sold out")
def unsafe_ticket_demo():
    with open("ticket.json", "w") as f:
        json.dump({"count": 5}, f)
    processes = []
    users = ["Alice", "Bob", "Charlie", "David", "Eve", "Frank", "Grace"]
    for user in users:
        p = Process(target=buy_ticket_unsafe, args=(user,))
        processes.append(p)
        p.start()
        time.sleep(0.05)
    for p in processes:
        p.join()
    with open("ticket.json", "r") as f:
        final_data = json.load(f)
        print(f"final {final_data['count']}")
    os.remove("ticket.json")
if __name__ == '__main__':
    import fastmp, sys
    fastmp.set_start_method(sys.argv[1], force=True)
    unsafe_ticket_demo()
""",
        tmp_path,
        method,
    )
    final = int(re.search(r"final (\d+)", out).group(1))
    sold = out.count("bought")
    # The race oversells: the file never shows fewer tickets than were really sold allow.
    assert 0 <= final <= 5
    assert final >= 5 - sold
    assert not (tmp_path / "ticket.json").exists()


@METHODS
def test_003_6_5_2_tickets_with_lock(tmp_path, method):
    res = run_script(
        TICKETS_COMMON
        + """
def buy_ticket_safe(username, lock):
    print(f"{username} start")
    with open("ticket.json", "r") as f:
        data = json.load(f)
    with lock:
        print(f"{username} got the lock")
        with open("ticket.json", "r") as f:
            data = json.load(f)
        if data["count"] > 0:
            time.sleep(0.1)
            data["count"] -= 1
            print(f"{username} bought; left {data['count']}")
            with open("ticket.json", "w") as f:
                json.dump(data, f)
        else:
            print(f"{username} sold out")
        print(f"{username} released the lock")
def safe_ticket_demo():
    with open("ticket.json", "w") as f:
        json.dump({"count": 5}, f)
    lock = Lock()
    processes = []
    users = ["Alice", "Bob", "Charlie", "David", "Eve", "Frank", "Grace"]
    for user in users:
        p = Process(target=buy_ticket_safe, args=(user, lock))
        processes.append(p)
        p.start()
        time.sleep(0.05)
    for p in processes:
        p.join()
    with open("ticket.json", "r") as f:
        final_data = json.load(f)
        print(f"final {final_data['count']}")
    os.remove("ticket.json")
if __name__ == '__main__':
    import fastmp, sys
    fastmp.set_start_method(sys.argv[1], force=True)
    safe_ticket_demo()
""",
        tmp_path,
        timeout=90,
        args=(method,),
        env=UNBUFFERED,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    # Never oversold: every ticket sold once, none twice. B19: the example
    # reads ticket.json outside the lock, so a buyer can hit a half-written
    # file and die with JSONDecodeError before reaching the lock (seen here
    # about 1 run in 6); the others still sell exactly what is there.
    failed = res.stderr.count("Traceback")
    assert res.stderr.count("json.decoder.JSONDecodeError") == failed  # only that race
    bought = out.count("bought")
    assert bought == min(5, 7 - failed)
    assert f"final {5 - bought}" in out
    assert bought + out.count("sold out") + failed == 7


@METHODS
def test_002_s3_value_array_lock(tmp_path, method):
    # B7: the example's targets are nested functions, which spawn cannot
    # pickle with the stdlib; moved to module level (the documented fix).
    out = _run(
        """
        import fastmp as mp

        def increment_shared(val, arr):
            for _ in range(100):
                val.value += 1
            for i in range(len(arr)):
                arr[i] += 1

        def safe_increment(val, lock):
            for _ in range(100):
                with lock:
                    val.value += 1

        def main03_shared_memory():
            shared_value = mp.Value('i', 0)
            shared_array = mp.Array('d', [0.0, 0.0, 0.0])
            processes = [mp.Process(target=increment_shared, args=(shared_value, shared_array)) for _ in range(2)]
            for p in processes:
                p.start()
            for p in processes:
                p.join()
            print(f"racy value: {shared_value.value}")
            print(f"array: {list(shared_array)}")

            shared_value = mp.Value('i', 0)
            lock = mp.Lock()
            processes = [mp.Process(target=safe_increment, args=(shared_value, lock)) for _ in range(2)]
            for p in processes:
                p.start()
            for p in processes:
                p.join()
            print(f"locked value: {shared_value.value}")

        if __name__ == "__main__":
            mp.set_start_method(__import__("sys").argv[1], force=True)
            main03_shared_memory()
        """,
        tmp_path,
        method,
    )
    racy = int(re.search(r"racy value: (\d+)", out).group(1))
    assert 100 <= racy <= 200  # the unlocked += may lose updates, never invent them
    assert "array: [2.0, 2.0, 2.0]" in out
    assert "locked value: 200" in out
