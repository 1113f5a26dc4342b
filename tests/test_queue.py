"""Queue, SimpleQueue and JoinableQueue: parity with the stdlib, then fastmp's extras."""

from __future__ import annotations

import pickle
import queue
import time

import pytest

import fastmp
from _script import run_script

STOP = "__stop__"

# --- module-level process targets (spawn pickles them by reference) ---


def _produce(q, start, n):
    for i in range(start, start + n):
        q.put(i)


def _consume_sum(q, out, n):
    total = 0
    for _ in range(n):
        total += q.get()
    out.put(total)


def _echo(inq, outq):
    while True:
        item = inq.get()
        if isinstance(item, str) and item == STOP:
            break
        outq.put(item)


def _join_worker(q, n):
    for _ in range(n):
        q.get()
        q.task_done()


# --- parity: the same body against multiprocessing and fastmp, fork and spawn ---


def test_fifo_and_types_round_trip_through_a_child(ctx):
    inq, outq = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_echo, args=(inq, outq))
    p.start()
    items = [
        0,
        -1,
        2**62,
        2**100,
        1.5,
        "",
        "héllo wörld",
        b"",
        b"\x00" * 3,
        None,
        True,
        False,
        (1, "a"),
        [1, [2]],
        {"k": {1, 2}},
        bytearray(b"xy"),
        3 + 4j,
    ]
    for it in items:
        inq.put(it)
    inq.put(STOP)
    got = [outq.get(timeout=30) for _ in items]
    p.join(30)
    assert got == items
    assert [type(x) for x in got] == [type(x) for x in items]
    assert p.exitcode == 0


def test_empty_full_and_timeouts(ctx):
    q = ctx.Queue(maxsize=2)
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get(False)
    q.put(1)
    q.put(2)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    assert q.get() == 1
    _wait_for(lambda: q.qsize() == 1)
    assert q.get() == 2
    _wait_for(q.empty)


def test_negative_timeout_means_do_not_wait(ctx):
    q = ctx.Queue(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)
    q.put(0)
    with pytest.raises(queue.Full):
        q.put(1, timeout=-1)
    q.get()


def test_closed_queue_raises_valueerror(ctx):
    q = ctx.Queue()
    q.put(1)
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put(2)
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    q.join_thread()


def _report_empty_after_close(q, out):
    q.close()  # this process never put: the stdlib's close() is a no-op here
    out.put(q.empty())


def test_empty_on_closed_queue(ctx):
    # As the stdlib (and 3.13's test suite): empty() on a closed queue this
    # process has put into raises OSError; on one it never put into it works.
    for make in (ctx.Queue, ctx.JoinableQueue):
        q = make()
        q.close()
        q.join_thread()
        assert q.empty()
        for used in (lambda q: q.put("foo"), lambda q: (q.put("foo"), q.get())):
            q = make()
            used(q)
            q.close()
            q.join_thread()
            with pytest.raises(OSError, match="is closed"):
                q.empty()
    q = ctx.SimpleQueue()
    q.close()
    with pytest.raises(OSError, match="is closed"):
        q.empty()
    # A child that did not put itself (fork copies the parent's handle).
    q, out = ctx.Queue(), ctx.Queue()
    q.put("foo")
    deadline = time.monotonic() + 30
    while q.empty() and time.monotonic() < deadline:  # the stdlib's feeder thread
        time.sleep(0.01)
    p = ctx.Process(target=_report_empty_after_close, args=(q, out))
    p.start()
    assert out.get(timeout=60) is False
    p.join()
    assert p.exitcode == 0
    assert q.get(timeout=60) == "foo"


def test_join_thread_requires_close(ctx):
    q = ctx.Queue()
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()
    q.cancel_join_thread()
    q.close()


def test_plain_queue_has_no_task_done(ctx):
    q = ctx.Queue()
    with pytest.raises(AttributeError):
        q.task_done()  # noqa: B018


def test_bad_arguments(ctx):
    with pytest.raises(TypeError):
        ctx.Queue("ten")
    q = ctx.Queue()
    with pytest.raises(TypeError):
        q.get(timeout="soon")
    q.put(1)
    assert q.get() == 1  # still usable


def test_queue_refuses_pickling_outside_process_start(ctx):
    q = ctx.Queue()
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(q)
    q.put(1)
    assert q.get() == 1


def test_many_producers_many_consumers(ctx):
    q, out = ctx.Queue(maxsize=50), ctx.Queue()
    n, producers, consumers = 3000, 3, 2
    total = producers * n
    ps = [ctx.Process(target=_produce, args=(q, k * n, n)) for k in range(producers)]
    cs = [
        ctx.Process(target=_consume_sum, args=(q, out, total // consumers))
        for _ in range(consumers)
    ]
    for p in ps + cs:
        p.start()
    sums = [out.get(timeout=60) for _ in cs]
    for p in ps + cs:
        p.join(30)
    assert sum(sums) == total * (total - 1) // 2
    assert all(p.exitcode == 0 for p in ps + cs)


def test_fifo_per_producer(ctx):
    q, out = ctx.Queue(), ctx.Queue()
    ps = [ctx.Process(target=_produce, args=(q, k * 1_000_000, 500)) for k in range(2)]
    for p in ps:
        p.start()
    seen = [q.get(timeout=30) for _ in range(1000)]
    for p in ps:
        p.join(30)
    for k in range(2):
        mine = [x for x in seen if x // 1_000_000 == k]
        assert mine == sorted(mine) and len(mine) == 500
    del out


def test_joinable_queue(ctx):
    q = ctx.JoinableQueue()
    for i in range(20):
        q.put(i)
    p = ctx.Process(target=_join_worker, args=(q, 20))
    p.start()
    q.join()  # returns only when the child has called task_done 20 times
    p.join(30)
    assert p.exitcode == 0
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def test_simple_queue(ctx):
    q = ctx.SimpleQueue()
    assert q.empty()
    q.put([1, 2])
    assert q.get() == [1, 2]
    assert q.empty()
    q.close()
    with pytest.raises(OSError, match="handle is closed"):
        q.put(1)
    with pytest.raises(OSError, match="handle is closed"):
        q.get()


# --- fastmp: what the stdlib cannot do, or does worse ---


def test_queue_empty_attribute_on_the_factory():
    assert fastmp.Queue.Empty is queue.Empty and fastmp.Queue.Full is queue.Full
    assert fastmp.queues.Empty is queue.Empty
    assert isinstance(fastmp.Queue(), fastmp.queues.Queue)


def test_each_start_method(fctx):
    inq, outq = fctx.Queue(), fctx.Queue()
    p = fctx.Process(target=_echo, args=(inq, outq))
    p.start()
    inq.put_many(range(100))
    inq.put(STOP)
    assert [outq.get(timeout=30) for _ in range(100)] == list(range(100))
    p.join(30)
    assert p.exitcode == 0


def test_million_items_before_any_consumer():
    q = fastmp.Queue()
    n = 1_000_000
    for i in range(n):
        q.put(i)  # never blocks: unbounded means unbounded
    assert q.qsize() == n
    assert q._capacity_bytes() > (1 << 20)
    out = fastmp.Queue()
    p = fastmp.Process(target=_consume_sum, args=(q, out, n))
    p.start()
    assert out.get(timeout=60) == n * (n - 1) // 2
    p.join(30)
    # Drained after growing: the ring shrank back and returned its pages.
    assert q._capacity_bytes() <= 32 << 20


def test_huge_single_message():
    q = fastmp.Queue()
    big = bytes(range(256)) * (64 * 4096 + 1)  # 64 MiB + 256 bytes
    q.put(big)
    q.put(bytearray(b"z") * (65 << 20))  # pickled path, also > 64 MiB
    assert q.get() == big
    got = q.get()
    assert isinstance(got, bytearray) and len(got) == 65 << 20


def test_unpicklable_raises_at_put_and_queue_stays_usable():
    import threading

    q = fastmp.Queue()
    with pytest.raises(TypeError):
        q.put(threading.Lock())
    q.put("after")
    assert q.get() == "after"


def test_lambdas_and_local_functions_go_through():
    factor = 3

    def local(x):
        return x * factor

    q = fastmp.Queue()
    q.put(lambda x: x + 1)
    q.put(local)
    assert q.get()(1) == 2
    assert q.get()(2) == 6


def test_put_many_get_many_order_and_bounds():
    q = fastmp.Queue()
    q.put_many(range(10))
    assert q.get_many(4) == [0, 1, 2, 3]
    assert q.get_many(100) == [4, 5, 6, 7, 8, 9]
    with pytest.raises(queue.Empty):
        q.get_many(3, timeout=0.05)
    with pytest.raises(ValueError):
        q.get_many(0)
    b = fastmp.Queue(maxsize=3)
    with pytest.raises(queue.Full):
        b.put_many(range(5), timeout=0.05)
    assert b.get_many(10) == [0, 1, 2]  # what fitted went in, in order


def test_put_many_whose_later_message_grows_the_ring_keeps_every_byte(tmp_path):
    # A batch whose later message had to grow the ring wrote the earlier ones
    # through pointers into the old mapping (SIGSEGV): run it in a fresh
    # interpreter, so a crash fails this test instead of killing pytest.
    out = run_script(
        """
        from fastmp import _fastmp

        def check(first, sizes):
            q = _fastmp.Queue()
            items = [b"x" * first] + [bytes([97 + i]) * n for i, n in enumerate(sizes)]
            q.put(items[0])
            q.put_many(items[1:])
            assert q.get_many(len(items) + 1) == items, (first, sizes)

        check(1_040_000, [100, 20_000])  # copy-slot path
        for n in range(1_047_000, 1_047_501, 20):  # copied under the lock
            check(n, [1000, 1000])
        print("ok")
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"


def test_stdlib_connection_is_pickled_the_stdlib_way():
    """The fast pickler honours ForkingPickler's reducers (a raw-fd pickle would be wrong)."""
    import multiprocessing
    from multiprocessing.reduction import ForkingPickler

    from fastmp import reduction

    a, b = multiprocessing.Pipe()
    try:
        assert type(a) in ForkingPickler._extra_reducers
        assert (
            reduction._current_dispatch_table()[type(a)] is ForkingPickler._extra_reducers[type(a)]
        )
    finally:
        a.close()
        b.close()


def _wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def _square(x):
    return x * x


def test_reader_handle_is_level_triggered_for_wait(fctx):
    from multiprocessing.connection import wait

    q = fctx.SimpleQueue()
    assert wait([q._reader], timeout=0.05) == []
    p = fctx.Process(target=_produce, args=(q, 7, 2))
    p.start()
    assert wait([q._reader], timeout=30) == [q._reader]
    assert q._reader.recv() == 7
    assert q._reader.poll(30)
    assert q.get() == 8
    p.join(30)
    assert wait([q._reader], timeout=0.05) == []
    assert not q._reader.poll(0)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_stdlib_executor_runs_on_a_fastmp_context(method):
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(2, mp_context=fastmp.get_context(method)) as ex:
        assert list(ex.map(_square, range(50))) == [x * x for x in range(50)]
        assert ex.submit(pow, 3, 4).result(timeout=60) == 81


def _echo_arrays(inq, outq):
    a = inq.get()
    a[0, 0] = -1.0  # arrays arrive writable, like after an in-band unpickle
    outq.put(a)


def test_numpy_arrays_travel_out_of_band(fctx):
    np = pytest.importorskip("numpy")
    a = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    assert fastmp._fastmp._encode_tag(a) == 9  # protocol-5 buffers beside the pickle
    inq, outq = fctx.Queue(), fctx.Queue()
    p = fctx.Process(target=_echo_arrays, args=(inq, outq))
    p.start()
    inq.put(a)
    b = outq.get(timeout=60)
    p.join(30)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert b[0, 0] == -1.0 and (b.ravel()[1:] == a.ravel()[1:]).all()
    assert a[0, 0] == 0.0  # the sender's array is untouched


def test_out_of_band_mixed_and_noncontiguous():
    np = pytest.importorskip("numpy")
    q = fastmp.Queue()
    a = np.arange(10_000, dtype=np.int32).reshape(100, 100)
    items = [
        np.asfortranarray(a),
        a[:, ::3],
        {"x": a, "rest": [a[:2], "s"]},
        pickle.PickleBuffer(b"raw"),
    ]
    q.put_many(items)
    f, strided, d, pb = q.get_many(4)
    assert (f == a).all() and f.flags.f_contiguous
    assert (strided == a[:, ::3]).all()
    assert (d["x"] == a).all() and (d["rest"][0] == a[:2]).all() and d["rest"][1] == "s"
    assert bytes(pb) == b"raw"


class _Unloadable:
    """Pickles fine, fails to unpickle on the other side."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild")


def test_get_many_loses_nothing_when_an_item_fails_to_unpickle():
    q = fastmp.Queue()
    q.put_many([1, _Unloadable(), 3, 4])
    assert q.get_many(10) == [1]  # stops before the bad item
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        q.get_many(10)  # the bad item's error, once
    assert q.get_many(10) == [3, 4]
    q.put_many([_Unloadable(), 5])
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        q.get()  # a single get loses only the bad item, as the stdlib's does
    assert q.get() == 5


def test_bad_block_argument_raises_and_loses_nothing():
    class NoBool:
        def __bool__(self):
            raise ValueError("no truth")

    q = fastmp.Queue()
    with pytest.raises(ValueError, match="no truth"):
        q.put(1, NoBool())
    q.put(2)
    with pytest.raises(ValueError, match="no truth"):
        q.get(NoBool())
    assert q.get() == 2
