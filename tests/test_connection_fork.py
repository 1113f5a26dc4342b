"""Pipe ends after fork and fd passing (issue 9, item 5)."""

from __future__ import annotations

import ctypes
import os

import pytest

import fastmp
from fastmp.connection import _rebuild_connection

_SYS_KCMP, _KCMP_FILE = 312, 0  # x86_64


def _same_open_file(pid1, fd1, pid2, fd2):
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(_SYS_KCMP, pid1, pid2, _KCMP_FILE, fd1, fd2)
    if rc < 0:
        pytest.skip(f"kcmp unavailable: {os.strerror(ctypes.get_errno())}")
    return rc == 0


def _report_fileno(conn, w, go_r):
    os.write(w, str(conn.fileno()).encode())
    os.read(go_r, 1)  # stay alive while the parent compares


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="kcmp syscall number is x86_64's")
def test_forked_child_gets_its_own_epoll_and_eventfd():
    r, w = fastmp.Pipe(duplex=False)
    w.send("queued before fileno")  # the backlog eventfd gets armed
    parent_fd = r.fileno()
    rep_r, rep_w = os.pipe()
    go_r, go_w = os.pipe()
    p = fastmp.get_context("fork").Process(target=_report_fileno, args=(r, rep_w, go_r))
    p.start()
    os.close(rep_w)
    child_fd = int(os.read(rep_r, 20))
    try:
        assert not _same_open_file(os.getpid(), parent_fd, p.pid, child_fd)
    finally:
        os.write(go_w, b"x")
        p.join(30)
        for fd in (rep_r, go_r, go_w):
            os.close(fd)
    assert r.recv() == "queued before fileno"
    r.close()
    w.close()


class _Holder:
    def __init__(self, fd=None):
        self.fd = fd

    def detach(self):
        if self.fd is None:
            raise OSError("resource sharer went away")
        return self.fd


def test_rebuild_closes_descriptors_detached_before_a_failure():
    a, b = fastmp.Pipe()
    sock, header, tx, rx, side = a._fds()
    dups = [os.dup(sock), os.dup(header), os.dup(tx)]
    with pytest.raises(OSError, match="went away"):
        _rebuild_connection(
            _Holder(dups[0]), _Holder(dups[1]), _Holder(dups[2]), _Holder(None), side, True, True
        )
    for fd in dups:
        with pytest.raises(OSError):
            os.fstat(fd)
    a.close()
    b.close()
