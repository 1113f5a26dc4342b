"""Chaos soak: SIGKILL random producers, consumers, lock holders, pipe peers
and pool workers at random moments, then check that nothing hung, no message
was lost, duplicated or corrupted, the counters agree and nothing is left
behind (the autouse leak fixture checks processes, fds and /dev/shm).

Seeded: the seed is printed (and in every failure message); replay a run with
FASTMP_CHAOS_SEED=<seed>. Short by default (a few seconds per scenario);
FASTMP_CHAOS_SECONDS=<s> sets each scenario's length for a long soak, e.g.
FASTMP_CHAOS_SECONDS=600 python -m pytest tests/test_chaos.py
Killing a Pool's owner is behind the `chaos_pool_owner` marker, off by
default: run it with FASTMP_CHAOS_POOL_OWNER=1.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import zlib

import pytest

import fastmp

SECONDS = float(os.environ.get("FASTMP_CHAOS_SECONDS", "6"))
# conftest.py picks the seed when none is given and prints it in the header.
SEED = int(os.environ.get("FASTMP_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))

# Every scenario ends by itself after SECONDS; the rest is for draining and
# joining on a loaded machine.
pytestmark = pytest.mark.timeout(SECONDS + 240)


@pytest.fixture
def rng(request):
    seed = SEED ^ zlib.crc32(request.node.name.encode())
    print(f"chaos: {request.node.name} seed={seed} (FASTMP_CHAOS_SEED={SEED})", file=sys.stderr)
    return random.Random(seed), f"[FASTMP_CHAOS_SEED={SEED}]"


def _kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    assert p.exitcode is not None, f"pid {p.pid} did not die"


def _join_all(procs, timeout=120):
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p.pid for p in procs if p.exitcode is None]
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join(10)
    return hung


# --- queue: producers and consumers --------------------------------------

PER_PRODUCER = 1 << 22  # ids are producer * PER_PRODUCER + seq


def _payload(msg_id):
    r = random.Random(msg_id)
    return r.randbytes(r.choice((0, 8, 100, 5000, 70000)))


def _producer(q, sent, index, start, stop):
    # sent[index] = the next seq this producer puts (its puts are in order).
    for seq in range(start, PER_PRODUCER):
        if stop.value:
            return
        msg_id = index * PER_PRODUCER + seq
        data = _payload(msg_id)
        q.put((msg_id, zlib.crc32(data), data))
        sent[index] = seq + 1


def _consumer(q, seen, corrupt):
    while True:
        item = q.get()
        if item is None:
            return
        msg_id, crc, data = item
        if zlib.crc32(data) != crc or data != _payload(msg_id):
            corrupt.value += 1
        seen[msg_id] += 1


def test_chaos_queue_producers_and_consumers(rng):
    rnd, tag = rng
    ctx = fastmp.get_context("fork")
    n_prod, n_cons = 3, 3
    q = ctx.Queue(rnd.choice((0, 8, 64)))
    sent = ctx.RawArray("q", n_prod)
    seen = ctx.RawArray("b", n_prod * PER_PRODUCER)
    corrupt, stop = ctx.RawValue("i", 0), ctx.RawValue("i", 0)
    maybe = set()  # ids whose put may or may not have happened (killed inside it)
    consumer_kills = 0
    finished = []

    def start_producer(i, seq):
        p = ctx.Process(target=_producer, args=(q, sent, i, seq, stop))
        p.start()
        return p

    def start_consumer():
        c = ctx.Process(target=_consumer, args=(q, seen, corrupt))
        c.start()
        return c

    started_at = [0] * n_prod  # the seq each producer's current process started at
    producers = [start_producer(i, 0) for i in range(n_prod)]
    consumers = [start_consumer() for _ in range(n_cons)]
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        time.sleep(rnd.uniform(0, 0.05))
        if rnd.random() < 0.5:
            i = rnd.randrange(n_prod)
            _kill(producers[i])
            finished.append(producers[i])
            # The seq it was putting: after its last completed put, or its
            # first one if it completed none (sent[i] is then stale).
            in_flight = max(sent[i], started_at[i])
            maybe.add(i * PER_PRODUCER + in_flight)  # it may have died inside this put
            started_at[i] = in_flight + 1
            producers[i] = start_producer(i, started_at[i])
        else:
            j = rnd.randrange(n_cons)
            _kill(consumers[j])
            finished.append(consumers[j])
            consumer_kills += 1
            consumers[j] = start_consumer()
    stop.value = 1
    hung = _join_all(producers)
    assert not hung, f"producers hung: {hung} {tag}"
    for _ in consumers:
        q.put(None)
    hung = _join_all(consumers)
    assert not hung, f"consumers hung: {hung} {tag}"
    _join_all(finished, 30)
    assert q.qsize() == 0 and q.empty(), tag
    assert corrupt.value == 0, f"{corrupt.value} corrupt messages {tag}"
    counts = bytes(seen)
    if counts.translate(None, b"\x00\x01"):
        dups = [k for k in range(len(counts)) if counts[k] not in (0, 1)][:10]
        described = [
            (k // PER_PRODUCER, k % PER_PRODUCER, counts[k], k in maybe, sent[k // PER_PRODUCER])
            for k in dups
        ]
        pytest.fail(f"duplicated (producer, seq, count, maybe, reached): {described} {tag}")
    missing = 0
    for i in range(n_prod):
        base = i * PER_PRODUCER
        # Every seq below `reached` was put, or attempted by a killed process
        # (those are in `maybe`); the last process stopped between puts.
        reached = max(sent[i], started_at[i])
        maybe_here = [m for m in maybe if base <= m < base + reached]
        missing += counts[base : base + reached].count(0) - sum(counts[m] == 0 for m in maybe_here)
        tail = counts[base + reached : base + PER_PRODUCER]
        assert tail.count(0) == len(tail), f"phantom messages {tag}"
    # A consumer killed between taking a message and recording it loses that
    # one message (it was delivered, to the dead): at most one per kill.
    assert missing <= consumer_kills, f"lost {missing} > {consumer_kills} consumer kills {tag}"
    assert sum(sent) > 0, tag
    print(
        f"chaos queue: {sum(sent)} messages, {len(maybe)} producer kills, "
        f"{consumer_kills} consumer kills, {missing} taken by killed consumers",
        file=sys.stderr,
    )
    q.close()


# --- lock holders -----------------------------------------------------------


def _locker(lock, counter, done, index, inside):
    while True:
        with lock:
            inside.value = os.getpid()
            v = counter.value
            counter.value = v + 1
            inside.value = 0
        done[index] += 1


def test_chaos_lock_holders(rng):
    rnd, tag = rng
    ctx = fastmp.get_context("fork")
    n = 3
    lock = ctx.Lock()
    counter, inside = ctx.RawValue("q", 0), ctx.RawValue("i", 0)
    done = ctx.RawArray("q", 1 << 16)  # completed sections, per process ever started
    slots = list(range(n))
    procs = {}
    for k in range(n):
        procs[k] = ctx.Process(target=_locker, args=(lock, counter, done, slots[k], inside))
        procs[k].start()
    next_slot = n
    end = time.monotonic() + SECONDS
    while time.monotonic() < end and next_slot < len(done):
        k = rnd.randrange(n)
        victim = procs[k]
        if rnd.random() < 0.5:
            # Wait until the victim holds the lock, then kill it there.
            deadline = time.monotonic() + 10
            while inside.value != victim.pid and time.monotonic() < deadline:
                time.sleep(0.0002)
        else:
            time.sleep(rnd.uniform(0, 0.02))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(60)
        if inside.value == victim.pid:
            inside.value = 0
        procs[k] = ctx.Process(target=_locker, args=(lock, counter, done, next_slot, inside))
        next_slot += 1
        procs[k].start()
    for p in procs.values():
        _kill(p)
    # The lock is usable: a dead holder does not wedge it.
    assert lock.acquire(timeout=30), f"lock wedged {tag}"
    total_done = sum(done[:next_slot])
    value = counter.value
    lock.release()
    # Each completed section is counted; a holder killed inside its section
    # may or may not have incremented, and a kill between release and
    # `done += 1` leaves one more increment than recorded.
    assert total_done <= value <= total_done + next_slot, (
        f"counter {value} vs {total_done} completed sections {tag}"
    )
    print(f"chaos lock: {value} sections, {next_slot - n} holders killed", file=sys.stderr)


# --- pipe peers -------------------------------------------------------------


def _pipe_peer(conn):
    try:
        while True:
            msg = conn.recv()
            conn.send(msg)
    except EOFError:
        pass


def test_chaos_pipe_peers(rng):
    rnd, tag = rng
    ctx = fastmp.get_context("fork")
    end = time.monotonic() + SECONDS
    rounds = 0
    while time.monotonic() < end:
        a, b = ctx.Pipe()
        p = ctx.Process(target=_pipe_peer, args=(b,))
        p.start()
        b.close()
        n = rnd.randrange(1, 50)
        for i in range(n):
            data = os.urandom(rnd.choice((1, 100, 70000)))
            a.send((i, data))
            assert a.recv() == (i, data), tag
        a.send(("last", b""))  # the peer may die before, in, or after this
        time.sleep(rnd.uniform(0, 0.005))
        _kill(p)
        got = []
        try:
            while True:
                got.append(a.recv())  # must end in EOFError, never hang
        except EOFError:
            pass
        assert got in ([], [("last", b"")]), f"unexpected {got!r} {tag}"
        with pytest.raises((BrokenPipeError, OSError)):
            for _ in range(100):  # at most a few sends succeed before EPIPE
                a.send(b"x")
        a.close()
        rounds += 1
    assert rounds > 0
    print(f"chaos pipe: {rounds} peers killed", file=sys.stderr)


# --- pool workers -----------------------------------------------------------


def _task(x):
    time.sleep(0.001 * (x % 7))
    return x * x


def test_chaos_pool_workers(rng):
    rnd, tag = rng
    from fastmp.pool import WorkerLostError

    ctx = fastmp.get_context("fork")
    end = time.monotonic() + SECONDS
    lost = ok = 0
    with ctx.Pool(2) as pool:
        while time.monotonic() < end:
            results = [(x, pool.apply_async(_task, (x,))) for x in range(rnd.randrange(5, 60))]
            time.sleep(rnd.uniform(0, 0.02))
            victims = [p for p in list(pool._pool) if p is not None and p.is_alive()]
            if victims:
                try:
                    os.kill(rnd.choice(victims).pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for x, r in results:
                try:
                    assert r.get(timeout=120) == x * x, tag
                    ok += 1
                except WorkerLostError:
                    lost += 1
        assert pool.map(_task, range(100)) == [x * x for x in range(100)], tag
    pool.join()
    assert ok > 0
    print(f"chaos pool: {ok} tasks done, {lost} lost with their worker", file=sys.stderr)


# --- pool owners ------------------------------------------------------------


def _pool_owner(pids_out):
    pool = fastmp.get_context("fork").Pool(2)
    pool.map(_task, range(10))
    pids_out.put([p.pid for p in pool._pool])
    time.sleep(600)


@pytest.mark.chaos_pool_owner
@pytest.mark.skipif(
    os.environ.get("FASTMP_CHAOS_POOL_OWNER") != "1",
    reason="pool-owner kills: enable with FASTMP_CHAOS_POOL_OWNER=1",
)
def test_chaos_pool_owner_killed(rng):
    rnd, tag = rng
    ctx = fastmp.get_context("fork")
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        pids = ctx.Queue()
        owner = ctx.Process(target=_pool_owner, args=(pids,))
        owner.start()
        workers = pids.get(timeout=60)
        time.sleep(rnd.uniform(0, 0.05))
        _kill(owner)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = [w for w in workers if _alive(w)]
        for w in alive:
            os.kill(w, signal.SIGKILL)
        owner.close()
        pids.close()
        assert not alive, f"pool workers outlived their owner: {alive} {tag}"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False
