"""Tutorial examples that use Pipe (API_INVENTORY.md: 001-3, 002-§2, 003-6.3.1,
003-6.3.2, 004-4.2, the Pipe part of 000-2), run with ``multiprocessing``
swapped for ``fastmp``, sleeps scaled down, in a fresh interpreter each."""

from __future__ import annotations

import re
import textwrap

import pytest

from _script import ScriptTimeout, run_script

pytestmark = pytest.mark.timeout(120)

# Scales the tutorials' sleeps down and picks the start method; runs again in
# spawned children (they re-import the main module), which is harmless.
PREAMBLE = """\
import os as _os, time as _time
_real_sleep = _time.sleep
_time.sleep = lambda s: _real_sleep(s * 0.1)
import fastmp as _fastmp
_fastmp.set_start_method(_os.environ.get("TUT_START", "fork"), force=True)
"""


def _run(code, tmp_path, method="fork", timeout=60):
    code = PREAMBLE + textwrap.dedent(code).replace("multiprocessing", "fastmp")
    res = run_script(code, tmp_path, timeout=timeout, env={"TUT_START": method})
    assert res.returncode == 0, f"rc={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res.stdout


# 001-3 (管道通信), with the imports of the earlier blocks it relies on (B5).
TUT_001_3 = """
import multiprocessing, os, time
from multiprocessing import Pipe

def sender(conn):
    conn.send(['Hello', 42, {'key': 'value'}])
    conn.close()

def receiver(conn):
    data = conn.recv()
    print(f"接收到數據: {data}")
    conn.close()

if __name__ == '__main__':
    parent_conn, child_conn = Pipe()
    p1 = multiprocessing.Process(target=sender, args=(parent_conn,))
    p2 = multiprocessing.Process(target=receiver, args=(child_conn,))
    p1.start()
    p2.start()
    p1.join()
    p2.join()
    print("CONN", type(parent_conn).__module__)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_001_3_pipe_between_two_children(tmp_path, method):
    out = _run(TUT_001_3, tmp_path, method)
    assert "接收到數據: ['Hello', 42, {'key': 'value'}]" in out
    assert "CONN fastmp.connection" in out


# 002-§2, the Pipe part. As written it hangs with the stdlib too (B8): the
# receiver loops until EOFError, but the parent never closes child_conn and,
# under fork, the receiver itself inherits a copy of the sending end. Port
# with the fix the inventory gives: the parent closes child_conn after
# start() and the sender sends a sentinel. (Local targets: fork only, B7.)
TUT_002_2_FIXED = """
import multiprocessing as mp
import time

def main02_ipc():
    def sender(conn):
        for i in range(3):
            conn.send(f"消息 {i}")
            time.sleep(0.05)
        conn.send(None)
        conn.close()

    def receiver(conn):
        while True:
            try:
                msg = conn.recv()
                if msg is None:
                    break
                print(f"  收到: {msg}")
            except EOFError:
                break

    parent_conn, child_conn = mp.Pipe()
    p1 = mp.Process(target=sender, args=(child_conn,))
    p2 = mp.Process(target=receiver, args=(parent_conn,))
    p1.start()
    p2.start()
    child_conn.close()
    p1.join()
    p2.join()
    print("done")

if __name__ == "__main__":
    main02_ipc()
"""


def test_002_2_pipe_receiver_until_sentinel_or_eof(tmp_path):
    out = _run(TUT_002_2_FIXED, tmp_path, "fork")
    assert re.findall(r"收到: (消息 \d)", out) == ["消息 0", "消息 1", "消息 2"]
    assert out.rstrip().endswith("done")


def test_002_2_as_written_blocks_like_the_stdlib(tmp_path):
    # Same blocking semantics as the stdlib (a drop-in cannot know that no
    # one will write again): the receiver never sees EOF.
    unfixed = TUT_002_2_FIXED.replace("        conn.send(None)\n", "").replace(
        "    child_conn.close()\n", ""
    )
    with pytest.raises(ScriptTimeout) as info:
        _run(unfixed, tmp_path, "fork", timeout=4)
    assert re.findall(r"收到: (消息 \d)", str(info.value)) == ["消息 0", "消息 1", "消息 2"]


TUT_003_6_3_1 = """
from multiprocessing import Process, Pipe
import os
import time

def sender_process(conn, sender_id):
    print(f"发送者 {sender_id} 开始，PID: {os.getpid()}")
    messages = [
        f"Hello from {sender_id}",
        f"Message 1 from {sender_id}",
        f"Message 2 from {sender_id}",
        {"type": "data", "sender": sender_id, "value": 42},
        [1, 2, 3, 4, 5]
    ]
    for i, msg in enumerate(messages):
        conn.send(msg)
        print(f"发送者 {sender_id} 发送: {msg}")
        time.sleep(0.5)
    conn.send("END")
    conn.close()
    print(f"发送者 {sender_id} 完成")

def receiver_process(conn, receiver_id):
    print(f"接收者 {receiver_id} 开始，PID: {os.getpid()}")
    received_count = 0
    while True:
        try:
            msg = conn.recv()
            if msg == "END":
                print(f"接收者 {receiver_id} 收到结束信号")
                break
            received_count += 1
            print(f"接收者 {receiver_id} 接收: {msg} (类型: {type(msg).__name__})")
        except EOFError:
            print(f"接收者 {receiver_id} 连接关闭")
            break
    conn.close()
    print(f"接收者 {receiver_id} 完成，共接收 {received_count} 条消息")

def simple_pipe_demo():
    parent_conn, child_conn = Pipe()
    sender = Process(target=sender_process, args=(child_conn, "Sender-1"))
    receiver = Process(target=receiver_process, args=(parent_conn, "Receiver-1"))
    sender.start()
    receiver.start()
    sender.join()
    receiver.join()
    print("简单Pipe演示完成")

if __name__ == '__main__':
    simple_pipe_demo()
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_003_6_3_1_pipe_basics(tmp_path, method):
    out = _run(TUT_003_6_3_1, tmp_path, method)
    got = re.findall(r"接收者 Receiver-1 接收: (.*) \(类型: (\w+)\)", out)
    assert got == [
        ("Hello from Sender-1", "str"),
        ("Message 1 from Sender-1", "str"),
        ("Message 2 from Sender-1", "str"),
        ("{'type': 'data', 'sender': 'Sender-1', 'value': 42}", "dict"),
        ("[1, 2, 3, 4, 5]", "list"),
    ]
    assert "接收者 Receiver-1 收到结束信号" in out
    assert "共接收 5 条消息" in out
    assert "简单Pipe演示完成" in out


TUT_003_6_3_2 = """
from multiprocessing import Process, Pipe
import time
import random

def interactive_process(conn, process_name, message_count):
    print(f"{process_name} 开始交互")
    for i in range(message_count):
        message = f"{process_name} 的消息 {i+1}: {random.randint(1, 100)}"
        conn.send(message)
        print(f"{process_name} 发送: {message}")
        try:
            if conn.poll(timeout=2):
                response = conn.recv()
                print(f"{process_name} 接收: {response}")
            else:
                print(f"{process_name} 没有收到响应")
        except:
            print(f"{process_name} 接收异常")
        time.sleep(0.5)
    conn.send("FINISH")
    print(f"{process_name} 完成")

def bidirectional_pipe_demo():
    conn1, conn2 = Pipe()
    p1 = Process(target=interactive_process, args=(conn1, "Process-A", 3))
    p2 = Process(target=interactive_process, args=(conn2, "Process-B", 3))
    p1.start()
    p2.start()
    p1.join()
    p2.join()
    print("双向通信演示完成")

if __name__ == '__main__':
    bidirectional_pipe_demo()
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_003_6_3_2_bidirectional_with_poll(tmp_path, method):
    out = _run(TUT_003_6_3_2, tmp_path, method)
    for me, other in (("A", "B"), ("B", "A")):
        got = re.findall(rf"Process-{me} 接收: Process-{other} 的消息 (\d): \d+", out)
        assert got == ["1", "2", "3"], out
        assert f"Process-{me} 完成" in out
    assert "没有收到响应" not in out and "接收异常" not in out
    assert "双向通信演示完成" in out


TUT_004_4_2 = """
import multiprocessing
import time

def worker(conn):
    data = conn.recv()
    print(f"Worker received: {data}")
    result = data.upper()
    time.sleep(1)
    conn.send(result)
    conn.close()

if __name__ == "__main__":
    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=worker, args=(child_conn,))
    p.start()
    parent_conn.send("hello from parent")
    result = parent_conn.recv()
    print(f"Parent received: {result}")
    p.join()
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_004_4_2_round_trip(tmp_path, method):
    out = _run(TUT_004_4_2, tmp_path, method)
    assert "Worker received: hello from parent" in out
    assert "Parent received: HELLO FROM PARENT" in out


# 000-2 (進程通信器): Queue + Pipe + Manager().dict() between two daemon
# children. Fix B4 (`Callable` import); fork only, as with the stdlib (under
# spawn the second start pickles the first, started Process: TypeError).
TUT_000_2 = """
import multiprocessing
from multiprocessing import Process, Queue, Pipe, Manager
import time
from typing import List, Dict, Any, Optional, Callable
import sys
import os

class ProcessCommunicator:
    def __init__(self):
        self.processes: List[Process] = []
        self.queues: Dict[str, Queue] = {}
        self.pipes: Dict[str, tuple] = {}
        self.shared_data = Manager().dict()
        self.is_running = False

    def create_queue(self, name: str):
        self.queues[name] = Queue()

    def create_pipe(self, name: str):
        self.pipes[name] = Pipe()

    def send_message(self, queue_name: str, message: Any):
        if queue_name in self.queues:
            self.queues[queue_name].put(message)

    def receive_message(self, queue_name: str, timeout: float = None) -> Any:
        if queue_name in self.queues:
            return self.queues[queue_name].get(timeout=timeout)
        raise KeyError(f"Queue {queue_name} not found")

    def send_data(self, pipe_name: str, data: Any):
        if pipe_name in self.pipes:
            self.pipes[pipe_name][0].send(data)

    def receive_data(self, pipe_name: str) -> Any:
        if pipe_name in self.pipes:
            return self.pipes[pipe_name][1].recv()
        raise KeyError(f"Pipe {pipe_name} not found")

    def set_shared_data(self, key: str, value: Any):
        self.shared_data[key] = value

    def get_shared_data(self, key: str) -> Any:
        return self.shared_data.get(key)

    def start_process(self, target: Callable, args: tuple = (), kwargs: dict = None):
        process = Process(target=target, args=args, kwargs=kwargs or {})
        process.daemon = True
        process.start()
        self.processes.append(process)

    def wait_for_all_processes(self):
        for process in self.processes:
            process.join()

    def close(self):
        for queue in self.queues.values():
            queue.close()
        for pipe in self.pipes.values():
            pipe[0].close()
            pipe[1].close()
        self.wait_for_all_processes()

def producer(comm: ProcessCommunicator):
    for i in range(5):
        comm.send_message("message_queue", f"Message {i}")
        comm.send_data("data_pipe", i * i)
        comm.set_shared_data(f"item_{i}", i)
        time.sleep(1)

def consumer(comm: ProcessCommunicator):
    for _ in range(5):
        message = comm.receive_message("message_queue")
        print(f"Received message: {message}")
        data = comm.receive_data("data_pipe")
        print(f"Received data: {data}")
        shared_value = comm.get_shared_data("item_0")
        print(f"Shared data: {shared_value}")
        time.sleep(1)

def main():
    comm = ProcessCommunicator()
    try:
        comm.create_queue("message_queue")
        comm.create_pipe("data_pipe")
        comm.start_process(producer, args=(comm,))
        comm.start_process(consumer, args=(comm,))
        comm.wait_for_all_processes()
    finally:
        comm.close()
    print("PIPE", type(comm.pipes["data_pipe"][0]).__module__)
    print("MANAGER DICT", type(comm.shared_data).__module__)

if __name__ == '__main__':
    main()
"""


def test_000_2_process_communicator(tmp_path):
    out = _run(TUT_000_2, tmp_path, "fork")
    assert re.findall(r"Received data: (\d+)", out) == ["0", "1", "4", "9", "16"]
    assert re.findall(r"Received message: (.*)", out) == [f"Message {i}" for i in range(5)]
    shared = re.findall(r"Shared data: (.*)", out)
    # The consumer may look before the producer's first set (a race in the example).
    assert len(shared) == 5 and set(shared) <= {"None", "0"} and shared[-1] == "0"
    assert "PIPE fastmp.connection" in out
    assert "MANAGER DICT fastmp.managers" in out  # the shared-memory dict
