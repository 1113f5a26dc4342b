"""Native objects in reference cycles are collected (their fds closed)."""

import gc
import os

import fastmp


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_queues_and_pipes_in_cycles_are_collected():
    gc.collect()
    before = _fd_count()
    for _ in range(10):
        q, jq, sq = fastmp.Queue(), fastmp.JoinableQueue(), fastmp.SimpleQueue()
        q.me, jq.me, sq.reader = q, jq, sq._reader  # cycles through __dict__
        a, b = fastmp.Pipe()
        a.me, b.peer = a, a
        del q, jq, sq, a, b
    gc.collect()
    assert _fd_count() == before
