"""Threads of fastmp's own, which never take a signal meant for the process.

Linux hands a signal sent to a process (Ctrl-C, ``kill``) to any one of its
threads that does not block it, and CPython runs Python-level handlers only in
the main thread: when the signal lands on another thread the handler's flag is
set, but a main thread asleep in a lock (``AsyncResult.get()``,
``Event.wait()``) is not woken and sleeps on, Ctrl-C unanswered. A pool's
worker-handler thread, woken by a worker that the same Ctrl-C had just
killed, took the signal often enough to hang ``Pool.map`` under load (the
stdlib's pool thread polls on a timer instead and rarely wins that race).

So every thread fastmp starts blocks the asynchronous signals: they are
blocked in the starting thread around ``start()`` (a new thread inherits its
creator's mask, so there is no moment at which the new thread could take one),
then the starter's mask is restored. User code that such a thread runs (pool
and future callbacks, an imap's iterable), and whatever it starts (a
subprocess, a forkserver, the resource tracker), gets the starter's mask
instead, through :func:`as_user`, as it would in the stdlib; a signal can land
on the thread only in those moments. A replacement pool worker is started with
the helper's mask (the thread runs then because a worker died, often of the
very Ctrl-C the main thread has not taken yet: unblocking would take it) and
sets the pool creator's mask itself.
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
    """The signal mask user code gets on the calling thread: the thread's
    own, or on a fastmp helper thread the mask of the thread that started it."""
    t = threading.current_thread()
    if type(t) is HelperThread and t.user_mask is not None:
        return t.user_mask
    return _pthread_sigmask(signal.SIG_BLOCK, ())


def set_mask(mask):
    """Makes ``mask`` the calling thread's signal mask; a signal that was held
    pending and is now unblocked is delivered at once."""
    _pthread_sigmask(signal.SIG_SETMASK, mask)


def as_user(fn, *args):
    """fn(*args), run with the mask user code expects (see current_mask)."""
    t = threading.current_thread()
    if type(t) is not HelperThread:
        return fn(*args)
    _pthread_sigmask(signal.SIG_SETMASK, t.user_mask)
    try:
        return fn(*args)
    finally:
        _pthread_sigmask(signal.SIG_SETMASK, t.own_mask)


class HelperThread(threading.Thread):
    """A daemon thread that never takes a process-directed signal, except
    while it runs user code (see as_user)."""

    def __init__(self, target, name, args=()):
        super().__init__(target=target, name=name, args=args, daemon=True)
        self.user_mask = self.own_mask = None

    def start(self):
        self.user_mask = frozenset(current_mask())
        self.own_mask = self.user_mask | PROCESS_SIGNALS
        previous = _pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)
        try:
            super().start()
        finally:
            set_mask(previous)
