"""Threads of fastmp's own, which never take a signal meant for the process.

Linux hands a signal sent to a process (Ctrl-C, ``kill``) to any one of its
threads that does not block it, and CPython runs Python-level handlers only in
the main thread: when the signal lands on another thread the handler's flag is
set, but a main thread asleep in a lock (``AsyncResult.get()``,
``Event.wait()``) is not woken and sleeps on, Ctrl-C unanswered. A pool's
worker-handler thread, woken by a worker that the same Ctrl-C had just
killed, took the signal often enough to hang ``Pool.map`` under load (the
stdlib's pool thread polls on a timer instead and rarely wins that race).

So every thread fastmp starts blocks the asynchronous signals for its whole
life: they are blocked in the starting thread around ``start()`` (a new thread
inherits its creator's mask, so there is no moment at which the new thread
could take one), then the starter's mask is restored. A process started from
such a thread inherits the blocked mask too; whoever starts processes from a
helper thread hands them the mask they should have (see :func:`current_mask`
and the pool's workers).
"""

from __future__ import annotations

import signal
import threading

try:  # the C function: signal's wrapper makes an enum member of each signal
    # it returns, 60 of them when a helper thread's mask is undone (0.1 ms)
    from _signal import pthread_sigmask as _pthread_sigmask
except ImportError:  # pragma: no cover
    _pthread_sigmask = signal.pthread_sigmask

# Signals the kernel sends to the thread that caused them (a fault, abort())
# stay deliverable: blocking them would turn a crash into a hang or a silent
# kill. SIGKILL and SIGSTOP cannot be blocked.
_THREAD_DIRECTED = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGABRT,
    signal.SIGKILL,
    signal.SIGSTOP,
}
PROCESS_SIGNALS = frozenset(signal.valid_signals() - _THREAD_DIRECTED)


def current_mask():
    """The calling thread's signal mask (a set of signals)."""
    return _pthread_sigmask(signal.SIG_BLOCK, ())


def set_mask(mask):
    """Makes ``mask`` the calling thread's signal mask; a signal that was held
    pending and is now unblocked is delivered at once."""
    _pthread_sigmask(signal.SIG_SETMASK, mask)


class HelperThread(threading.Thread):
    """A daemon thread that never takes a process-directed signal."""

    def __init__(self, target, name, args=()):
        super().__init__(target=target, name=name, args=args, daemon=True)

    def start(self):
        previous = _pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)
        try:
            super().start()
        finally:
            set_mask(previous)
