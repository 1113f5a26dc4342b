"""fastmp Pipe robustness: kills, signals, huge messages, leaks, asyncio, threads."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import fastmp
from fastmp.connection import Connection

pytestmark = pytest.mark.timeout(90)


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# --- targets ---


def _echo(conn):
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)


def _flood_big(w, ready):
    big = b"k" * (24 << 20)
    ready.send("go")
    while True:
        w.send(big)


def _read_forever(r, ready):
    ready.send("go")
    while True:
        r.recv()


def _sleep_holding(conn, ready):
    ready.send("go")
    time.sleep(60)


def _huge_echo(conn):
    data = conn.recv_bytes()
    conn.send(len(data))
    conn.send_bytes(data)
    conn.close()


def _call_fn(conn):
    fn = conn.recv()
    conn.send(fn(20))


# --- tests ---


def test_types_and_rebuild(fctx):
    a, b = fctx.Pipe()
    assert isinstance(a, Connection) and isinstance(b, Connection)
    p = fctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    for obj in (1, "two", [3], {"four": 4}):
        a.send(obj)
        assert a.recv() == obj
    a.send(None)
    p.join(30)
    assert p.exitcode == 0
    a.close()


def test_lambda_and_local_function_reach_a_spawned_child():
    ctx = fastmp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_call_fn, args=(b,))
    p.start()
    b.close()
    offset = 22
    a.send(lambda x: x + offset)
    assert a.recv() == 42
    p.join(30)
    a.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_writer_killed_mid_send_does_not_wedge_reader(method):
    ctx = fastmp.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    ready_r, ready_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_flood_big, args=(w, ready_w))
    p.start()
    assert ready_r.recv() == "go"
    time.sleep(0.3)  # let it get going; the kill lands mid-copy most of the time
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    w.send("after")  # our own copy of the write end still works
    w.close()
    n = 0
    while True:
        msg = r.recv()
        if msg == "after":
            break
        assert msg == b"k" * (24 << 20)  # whatever the child completed is intact
        n += 1
    with pytest.raises(EOFError):
        r.recv()
    for c in (r, ready_r, ready_w):
        c.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_killed_mid_recv_does_not_wedge_others(method):
    ctx = fastmp.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    ready_r, ready_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_read_forever, args=(r, ready_w))
    p.start()
    assert ready_r.recv() == "go"
    big = b"r" * (16 << 20)
    for _ in range(10):
        w.send(big)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    w.send("mine")
    while True:  # whatever the child did not take is still here, then ours
        msg = r.recv()
        if msg == "mine":
            break
        assert msg == big
    for c in (r, w, ready_r, ready_w):
        c.close()


def test_eof_when_holder_of_both_ends_is_killed():
    # fork: the child inherits both ends; killing it removes its copies.
    ctx = fastmp.get_context("fork")
    a, b = ctx.Pipe()
    ready_r, ready_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_sleep_holding, args=(b, ready_w))
    p.start()
    assert ready_r.recv() == "go"
    b.close()
    assert a.poll(0.2) is False  # the child's copy of b keeps it open
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    with pytest.raises(EOFError):
        a.recv()
    with pytest.raises(BrokenPipeError):
        a.send(1)
    for c in (a, ready_r, ready_w):
        c.close()


def _interrupt_soon(delay=0.3):
    t = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    t.start()
    return t


@pytest.mark.parametrize("call", ["recv", "poll", "recv_bytes"])
def test_sigint_interrupts_blocked_call(call):
    a, b = fastmp.Pipe()
    t = _interrupt_soon()
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "poll":
                b.poll(None)
            else:
                getattr(b, call)()
    finally:
        t.join()
    a.send("usable")  # nothing was lost or wedged
    assert b.recv() == "usable"
    a.close()
    b.close()


def test_send_never_blocks_on_a_backlog():
    # The stdlib blocks here once its socket buffer is full (~200 KiB).
    a, b = fastmp.Pipe()
    chunk = b"x" * (1 << 20)
    for _ in range(200):
        a.send_bytes(chunk)
    for _ in range(200):
        assert b.recv_bytes() == chunk
    a.close()
    b.close()


@pytest.mark.skipif(_mem_available() < (7 << 30), reason="needs ~6 GiB of free memory")
def test_one_gib_message_through_child():
    ctx = fastmp.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_huge_echo, args=(b,))
    p.start()
    b.close()
    size = (1 << 30) + 17
    data = bytearray(size)
    data[0], data[size // 2], data[-1] = 1, 2, 3
    a.send_bytes(data)
    assert a.recv() == size
    back = a.recv_bytes()
    assert len(back) == size and back[0] == 1 and back[size // 2] == 2 and back[-1] == 3
    del back, data
    p.join(60)
    assert p.exitcode == 0
    a.close()


def test_blocked_recv_releases_the_gil():
    a, b = fastmp.Pipe()
    got = []
    t = threading.Thread(target=lambda: got.append(b.recv()))
    t.start()
    time.sleep(0.2)  # the thread is blocked in recv; we can still run
    a.send("from main")
    t.join(30)
    assert got == ["from main"]
    a.close()
    b.close()


def test_asyncio_add_reader():
    a, b = fastmp.Pipe()

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(b.fileno(), lambda: fut.done() or fut.set_result(b.recv()))
        loop.call_later(0.05, a.send, "async hello")
        try:
            return await asyncio.wait_for(fut, 10)
        finally:
            loop.remove_reader(b.fileno())

    assert asyncio.run(main()) == "async hello"
    a.close()
    b.close()


def test_many_pipes_leave_no_descriptors():
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        a, b = fastmp.Pipe()
        a.send("x")
        b.fileno()
        assert b.recv() == "x"
        a.close()
        b.close()
        r, w = fastmp.Pipe(duplex=False)
        del r, w  # garbage collection closes too
    assert len(os.listdir("/proc/self/fd")) == before


def test_pickling_closed_connection_fails():
    import pickle

    a, b = fastmp.Pipe()
    a.close()
    with pytest.raises(OSError, match="handle is closed"):
        pickle.dumps(a)
    b.close()


def test_listener_and_client_with_authkey_are_the_stdlibs():
    from fastmp.connection import Client, Listener

    got = []
    with Listener(("127.0.0.1", 0), authkey=b"secret") as listener:

        def client():
            with Client(listener.address, authkey=b"secret") as c:
                c.send({"hi": 1})
                got.append(c.recv())

        t = threading.Thread(target=client)
        t.start()
        with listener.accept() as conn:
            assert conn.recv() == {"hi": 1}
            conn.send("welcome")
        t.join(30)
    assert got == ["welcome"]


def test_stdlib_constructor_form_wraps_a_descriptor():
    import multiprocessing.connection
    import socket

    s1, s2 = socket.socketpair()
    x = Connection(s1.detach())
    y = Connection(s2.detach(), readable=True, writable=True)
    assert isinstance(x, multiprocessing.connection.Connection)
    x.send([1, 2])
    assert y.recv() == [1, 2]
    x.close()
    y.close()


def test_stdlib_wait_and_selectors_accept_fastmp_connections():
    import multiprocessing.connection
    import selectors

    a, b = fastmp.Pipe()
    assert multiprocessing.connection.wait([b], 0) == []
    a.send("x")
    assert multiprocessing.connection.wait([b], 5) == [b]
    with selectors.DefaultSelector() as sel:
        sel.register(b, selectors.EVENT_READ)
        assert [key.fileobj for key, _ in sel.select(5)] == [b]
        assert b.recv() == "x"
        assert sel.select(0) == []
    a.close()
    b.close()
