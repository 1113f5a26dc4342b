"""Pipe/Connection parity: one body, run against multiprocessing and fastmp, fork and spawn."""

from __future__ import annotations

import importlib
import os
import re
import select
import signal
import socket
import threading
import time
from multiprocessing import resource_sharer

import pytest

pytestmark = pytest.mark.timeout(60)


def _lib(ctx):
    return "fastmp" if type(ctx).__module__.startswith("fastmp") else "multiprocessing"


def _connection_module(ctx):
    return importlib.import_module(_lib(ctx) + ".connection")


# --- process targets (module level, for spawn) ---


def _echo(conn):
    while True:
        obj = conn.recv()
        if obj == "STOP":
            break
        conn.send(obj)
    conn.close()


def _echo_bytes(conn):
    conn.send_bytes(conn.recv_bytes())
    conn.close()


def _send_then_wait(w, gate):
    w.send("from child")
    gate.recv()  # hold our copy of w until told
    w.close()


def _send_then_sleep(w):
    w.send("ready")
    time.sleep(60)


def _send_and_exit(w):
    w.send("bye")


def _child_takes_conn_from_queue(q):
    conn = q.get()
    conn.send(("hello", os.getpid()))
    conn.close()


def _child_takes_conn_from_pipe(carrier):
    conn = carrier.recv()
    conn.send("via pipe")
    conn.close()
    carrier.close()


def _wait_on_gate(gate):
    gate.recv()


# --- round trips ---

OBJECTS = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**100,
    1.5,
    float("inf"),
    "",
    "héllo \udcff",
    b"",
    b"\x00bytes",
    bytearray(b"ba"),
    [1, [2, (3, {"k": "v"})]],
    {"a": {1, 2}, "b": frozenset({3})},
    ValueError("boom"),
    ("tuple", 1, 2.0),
    ["Hello", 42, {"key": "value"}],
]


def test_round_trip_through_child(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    for obj in OBJECTS:
        a.send(obj)
        got = a.recv()
        if isinstance(obj, Exception):
            assert type(got) is type(obj) and got.args == obj.args
        else:
            assert got == obj and type(got) is type(obj)
    a.send("STOP")
    p.join(30)
    assert p.exitcode == 0
    a.close()


def test_big_messages_through_child(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    big = os.urandom(1 << 20) * 48  # 48 MiB: larger than any fixed ring
    a.send(big)
    assert a.recv() == big
    lst = list(range(300_000))
    a.send(lst)
    assert a.recv() == lst
    a.send("STOP")
    p.join(30)
    a.close()


def test_send_bytes_recv_bytes_through_child(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo_bytes, args=(b,))
    p.start()
    b.close()
    a.send_bytes(b"0123456789", 2, 5)
    assert a.recv_bytes() == b"23456"
    p.join(30)
    a.close()


def test_fifo_order_and_many_messages(ctx):
    a, b = ctx.Pipe()
    for i in range(100):  # the stdlib's socket buffer holds a few hundred
        a.send(i)
    assert [b.recv() for _ in range(100)] == list(range(100))
    a.close()
    b.close()


# --- bytes API ---


def test_send_bytes_arguments(ctx):
    a, b = ctx.Pipe()
    a.send_bytes(b"abcdef")
    a.send_bytes(b"abcdef", 2)
    a.send_bytes(b"abcdef", 2, 3)
    a.send_bytes(bytearray(b"xy"))
    a.send_bytes(memoryview(b"mv"))
    a.send_bytes(b"")
    import array

    a.send_bytes(array.array("i", [1, 2]), 4)  # offsets count bytes
    assert b.recv_bytes() == b"abcdef"
    assert b.recv_bytes() == b"cdef"
    assert b.recv_bytes() == b"cde"
    assert b.recv_bytes() == b"xy"
    assert b.recv_bytes() == b"mv"
    assert b.recv_bytes() == b""
    assert b.recv_bytes() == array.array("i", [2]).tobytes()
    for args, msg in [
        ((b"abc", -1), "offset is negative"),
        ((b"abc", 4), "buffer length < offset"),
        ((b"abc", 1, -1), "size is negative"),
        ((b"abc", 1, 3), "buffer length < offset + size"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            a.send_bytes(*args)
    with pytest.raises(TypeError):
        a.send_bytes("not bytes")
    a.send_bytes(b"still usable")
    assert b.recv_bytes() == b"still usable"
    a.close()
    b.close()


def test_send_and_recv_bytes_interoperate(ctx):
    import pickle

    a, b = ctx.Pipe()
    a.send_bytes(pickle.dumps({"x": 1}))
    assert b.recv() == {"x": 1}
    a.send([1, 2])
    assert pickle.loads(b.recv_bytes()) == [1, 2]
    a.send(b"raw")
    assert pickle.loads(b.recv_bytes()) == b"raw"
    a.send_bytes(b"")
    with pytest.raises(EOFError):  # unpickling an empty message, as the stdlib
        b.recv()
    a.close()
    b.close()


def test_recv_bytes_maxlength(ctx):
    a, b = ctx.Pipe()
    a.send_bytes(b"12345")
    assert b.recv_bytes(5) == b"12345"
    with pytest.raises(ValueError, match="negative maxlength"):
        b.recv_bytes(-1)
    a.send_bytes(b"123456")
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(5)
    # A duplex end stops being readable, and stays writable.
    assert not b.readable and b.writable and not b.closed
    with pytest.raises(OSError, match="connection is write-only"):
        b.recv()
    b.send("still writable")
    assert a.recv() == "still writable"
    a.close()
    b.close()

    r, w = ctx.Pipe(duplex=False)
    w.send_bytes(b"123456")
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(3)
    assert r.closed  # a read-only end is closed
    w.close()


def test_recv_bytes_into(ctx):
    from multiprocessing import BufferTooShort

    a, b = ctx.Pipe()
    buf = bytearray(10)
    a.send_bytes(b"abc")
    assert b.recv_bytes_into(buf) == 3
    assert buf[:3] == b"abc"
    a.send_bytes(b"xyz")
    assert b.recv_bytes_into(buf, 7) == 3
    assert bytes(buf) == b"abc\0\0\0\0xyz"
    import array

    arr = array.array("i", [0, 0, 0, 0])
    a.send_bytes(array.array("i", [7, 8]))
    assert b.recv_bytes_into(arr, 4) == 8
    assert list(arr) == [0, 7, 8, 0]
    with pytest.raises(ValueError, match="negative offset"):
        b.recv_bytes_into(buf, -1)
    with pytest.raises(ValueError, match="offset too large"):
        b.recv_bytes_into(buf, 11)
    a.send_bytes(b"0123456789AB")
    with pytest.raises(BufferTooShort) as info:
        b.recv_bytes_into(buf)
    assert info.value.args[0] == b"0123456789AB"  # the message, consumed
    a.send_bytes(b"next")
    assert b.recv_bytes() == b"next"
    a.close()
    b.close()


# --- poll, closed, duplex=False, context manager ---


def test_poll(ctx):
    a, b = ctx.Pipe()
    assert b.poll() is False
    assert b.poll(0.05) is False
    assert b.poll(-1) is False
    with pytest.raises(TypeError):
        b.poll("1")
    a.send(1)
    assert b.poll() is True
    assert b.poll(None) is True
    assert b.recv() == 1
    assert b.poll(0) is False
    a.close()
    assert b.poll(1) is True  # EOF counts as readable
    with pytest.raises(EOFError):
        b.recv()
    b.close()


def test_closed_connection_errors(ctx):
    a, b = ctx.Pipe()
    assert not a.closed
    a.close()
    assert a.closed
    a.close()  # twice is fine
    for call in (
        lambda: a.send(1),
        a.recv,
        a.poll,
        a.fileno,
        a.recv_bytes,
        lambda: a.send_bytes(b"x"),
        lambda: a.recv_bytes_into(bytearray(1)),
    ):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    b.close()


def test_one_way_pipe(ctx):
    r, w = ctx.Pipe(duplex=False)
    assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
    with pytest.raises(OSError, match="connection is read-only"):
        r.send(1)
    with pytest.raises(OSError, match="connection is read-only"):
        r.send_bytes(b"1")
    with pytest.raises(OSError, match="connection is write-only"):
        w.recv()
    with pytest.raises(OSError, match="connection is write-only"):
        w.recv_bytes()
    with pytest.raises(OSError, match="connection is write-only"):
        w.poll()
    w.send({"one": "way"})
    assert r.recv() == {"one": "way"}
    w.close()
    with pytest.raises(EOFError):
        r.recv()
    r.close()


def test_context_manager(ctx):
    a, b = ctx.Pipe()
    with a as got:
        assert got is a
        a.send("x")
    assert a.closed
    with b:
        assert b.recv() == "x"
    assert b.closed


def test_unpicklable_raises_and_connection_stays_usable(ctx):
    a, b = ctx.Pipe()
    with pytest.raises(TypeError, match="pickle"):
        a.send(threading.Lock())
    a.send("after")
    assert b.recv() == "after"
    assert b.poll() is False  # nothing half-sent
    a.close()
    b.close()


# --- EOF ---


def test_eof_after_close_delivers_pending_first(ctx):
    a, b = ctx.Pipe()
    a.send(1)
    a.send(2)
    a.close()
    assert b.recv() == 1
    assert b.recv() == 2
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(EOFError):
        b.recv()
    b.close()


def test_eof_waits_for_inherited_copy(ctx):
    r, w = ctx.Pipe(duplex=False)
    gate_r, gate_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_send_then_wait, args=(w, gate_r))
    p.start()
    w.close()
    gate_r.close()
    assert r.recv() == "from child"
    assert r.poll(0.3) is False  # the child still holds a copy: no EOF
    gate_w.send("go")
    with pytest.raises(EOFError):
        r.recv()
    p.join(30)
    r.close()
    gate_w.close()


def test_eof_when_peer_exits(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_send_and_exit, args=(w,))
    p.start()
    w.close()
    assert r.recv() == "bye"
    with pytest.raises(EOFError):
        r.recv()
    p.join(30)
    r.close()


def test_eof_when_peer_is_killed(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_send_then_sleep, args=(w,))
    p.start()
    w.close()
    assert r.recv() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(EOFError):
        r.recv()
    r.close()


def test_send_to_closed_peer_raises_broken_pipe(ctx):
    a, b = ctx.Pipe()
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send("nobody listens")
    a.close()
    r, w = ctx.Pipe(duplex=False)
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send_bytes(b"nobody listens")
    w.close()


# --- fileno, select, wait() ---


def test_fileno_is_level_triggered_for_select(ctx):
    a, b = ctx.Pipe()
    a.send("queued before the first fileno() call")
    fd = b.fileno()
    assert select.select([fd], [], [], 0)[0] == [fd]
    assert select.select([fd], [], [], 0)[0] == [fd]  # still (level-triggered)
    b.recv()
    assert select.select([fd], [], [], 0)[0] == []
    a.send(1)
    a.send(2)
    assert select.select([b], [], [], 5)[0] == [b]
    b.recv()
    assert select.select([b], [], [], 0)[0] == [b]  # one more waiting
    b.recv()
    assert select.select([b], [], [], 0)[0] == []
    a.close()
    assert select.select([b], [], [], 5)[0] == [b]  # EOF is readable
    b.close()


def test_wait_on_mixed_objects(ctx):
    conn_mod = _connection_module(ctx)
    import multiprocessing

    a, b = ctx.Pipe()
    std_a, std_b = multiprocessing.Pipe()
    s1, s2 = socket.socketpair()
    gate_r, gate_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_wait_on_gate, args=(gate_r,))
    p.start()
    gate_r.close()
    objs = [b, std_b, s2, p.sentinel]
    try:
        assert conn_mod.wait(objs, 0) == []
        assert conn_mod.wait(objs, 0.05) == []
        a.send("x")
        assert conn_mod.wait(objs, 5) == [b]
        std_a.send("y")
        s1.send(b"z")
        assert set(conn_mod.wait(objs, 5)) == {b, std_b, s2}
        assert b.recv() == "x" and std_b.recv() == "y" and s2.recv(1) == b"z"
        assert conn_mod.wait(objs, 0) == []
        gate_w.send("go")
        assert conn_mod.wait(objs, 10) == [p.sentinel]
        p.join(30)
        a.close()
        assert b in conn_mod.wait(objs, 5)  # EOF
    finally:
        p.join(30)
        for c in (a, b, std_a, std_b, s1, s2, gate_w):
            c.close()


# --- passing connections to other processes after start ---


def test_connection_sent_through_queue_after_start(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=_child_takes_conn_from_queue, args=(q,))
    p.start()
    a, b = ctx.Pipe()
    try:
        q.put(b)
        msg, pid = a.recv()
        assert msg == "hello" and pid == p.pid
        p.join(30)
        b.close()
        with pytest.raises(EOFError):  # the child's copy is gone too
            a.recv()
    finally:
        p.join(30)
        a.close()
        b.close()
        q.close()
        q.join_thread()
        resource_sharer.stop()


def test_connection_sent_through_pipe_after_start(ctx):
    carrier_a, carrier_b = ctx.Pipe()
    p = ctx.Process(target=_child_takes_conn_from_pipe, args=(carrier_b,))
    p.start()
    carrier_b.close()
    r, w = ctx.Pipe(duplex=False)
    try:
        carrier_a.send(w)
        w.close()
        assert r.recv() == "via pipe"
        with pytest.raises(EOFError):
            r.recv()
        p.join(30)
    finally:
        p.join(30)
        for c in (carrier_a, r, w):
            c.close()
        resource_sharer.stop()


def test_numpy_arrays_through_a_pipe_out_of_band():
    np = pytest.importorskip("numpy")
    import fastmp

    a, b = fastmp.Pipe()
    arr = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    a.send({"arr": arr, "n": 1})
    got = b.recv()
    assert got["n"] == 1 and (got["arr"] == arr).all() and got["arr"].flags.writeable
    a.close()
    b.close()
