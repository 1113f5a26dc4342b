"""Pickling policy (DESIGN.md, 8), and the stdlib's multiprocessing.reduction names.

fastmp pickles on the hot path with one persistent C pickler (protocol 5)
whose dispatch table is copyreg's reducers overlaid with ForkingPickler's, so
objects that multiprocessing reduces specially are reduced the same way. The
table is a plain dict (a ChainMap made every pickled object pay a Python-level
lookup), refilled before the next dump whenever a reducer was registered
(ForkingPickler.register, reduction.register, copyreg.pickle, or an assignment
into either table). When
that fails, :func:`_dumps_fallback` tries ForkingPickler itself and then
cloudpickle, which carries lambdas, local functions and closures by value.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import types
from multiprocessing import reduction as _std

globals().update({k: v for k, v in vars(_std).items() if not k.startswith("_")})

from multiprocessing.reduction import DupFd, ForkingPickler, register  # noqa: E402

from . import _fastmp  # noqa: E402

__all__ = list(getattr(_std, "__all__", []))

HIGHEST_PROTOCOL = 5


def _dumps_fallback(obj) -> bytes:
    """Pickles what the fast pickler refused, or raises the stdlib's error."""
    try:
        return bytes(ForkingPickler.dumps(obj, HIGHEST_PROTOCOL))
    except Exception as exc:  # noqa: BLE001  (any pickling failure)
        first = exc
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle is a dependency
        raise first from None
    try:
        return cloudpickle.dumps(obj, protocol=HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001
        pass
    raise first


def dumps(obj) -> bytes:
    """Pickles obj as fastmp's transports do (fast pickler, then fallbacks)."""
    _fastmp._sync_dispatch_table()
    buf = io.BytesIO()
    p = pickle.Pickler(buf, HIGHEST_PROTOCOL)
    p.dispatch_table = _dispatch_table
    try:
        p.dump(obj)
    except Exception:  # noqa: BLE001
        return _dumps_fallback(obj)
    return buf.getvalue()


loads = pickle.loads

# Refilled in place (the picklers hold this very dict) by the native side when
# copyreg.dispatch_table or ForkingPickler._extra_reducers changed since the
# last refill: it watches both (dict watchers, or their version tags < 3.12).
_dispatch_table: dict = {}


def _rebuild_dispatch_table() -> None:
    table = dict(copyreg.dispatch_table)
    table.update(ForkingPickler._extra_reducers)  # type: ignore[attr-defined]
    _dispatch_table.clear()
    _dispatch_table.update(table)


def _current_dispatch_table() -> dict:
    """The fast picklers' dispatch table, brought up to date first."""
    _fastmp._sync_dispatch_table()
    return _dispatch_table


# The native side keeps one C pickler whose output goes straight into a list
# (no BytesIO bookkeeping per message): it takes the chunks and clears the memo.
# Protocol-5 out-of-band buffers (numpy arrays, PickleBuffer) go to a second
# list and travel next to the pickle instead of being copied into it.
_chunks: list = []
_oob: list = []
_pickler = pickle.Pickler(
    types.SimpleNamespace(write=_chunks.append), HIGHEST_PROTOCOL, buffer_callback=_oob.append
)
_pickler.dispatch_table = _dispatch_table
_fastmp._install_pickling(
    _pickler,
    _chunks,
    _oob,
    _dumps_fallback,
    pickle.loads,
    _rebuild_dispatch_table,
    copyreg.dispatch_table,
    ForkingPickler._extra_reducers,  # type: ignore[attr-defined]
)


# --- Process targets by value (spawn and forkserver) -----------------------
#
# The stdlib's spawn and forkserver Popen pickle the Process object with
# ForkingPickler, which refuses lambdas and local functions ("Can't pickle
# local object"). fastmp's spawn/forkserver Process classes (context.py) retry
# such a start once with the target and its arguments carried by cloudpickle;
# the stdlib's pickling stays the first choice, so everything it can pickle is
# still pickled by reference, exactly as before.

# The errors a pickler raises for an object it cannot reduce (3.9-3.13 raise
# AttributeError for local objects, 3.14 PicklingError).
_PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def _by_value_pickler(file):
    """A cloudpickle Pickler that also applies ForkingPickler's reducers."""
    import cloudpickle

    p = cloudpickle.Pickler(file, protocol=HIGHEST_PROTOCOL)
    p.dispatch_table = collections.ChainMap(
        ForkingPickler._extra_reducers,  # type: ignore[attr-defined]
        getattr(cloudpickle.Pickler, "dispatch_table", copyreg.dispatch_table),
    )
    return p


class _TargetByValue:
    """A Process target with its arguments, pickled by value.

    Pickled while the child is being started (fds in the arguments are
    passed to it as the stdlib's own pickling would), rebuilt in the child.
    """

    __slots__ = ("target", "args", "kwargs")

    def __init__(self, target, args, kwargs):
        self.target, self.args, self.kwargs = target, args, kwargs

    def __call__(self):
        return self.target(*self.args, **self.kwargs)

    def __reduce__(self):
        buf = io.BytesIO()
        _by_value_pickler(buf).dump((self.target, self.args, self.kwargs))
        return _rebuild_target_by_value, (buf.getvalue(),)


def _rebuild_target_by_value(blob):
    return _TargetByValue(*pickle.loads(blob))


def _start_with_fallback(std_popen, process_obj):
    """std_popen(process_obj); if pickling the target or its arguments failed,
    once more with them by value. Raises the stdlib's error if that fails too."""
    try:
        return std_popen(process_obj)
    except _PICKLING_ERRORS as exc:
        first = exc
    saved = process_obj._target, process_obj._args, process_obj._kwargs
    if isinstance(saved[0], _TargetByValue):
        raise first
    process_obj._target = _TargetByValue(*saved)
    process_obj._args, process_obj._kwargs = (), {}
    try:
        return std_popen(process_obj)
    except Exception:  # noqa: BLE001  (report the stdlib's own error)
        process_obj._target, process_obj._args, process_obj._kwargs = saved
        raise first from None


def _fd_for_child(fd: int):
    """An fd to pickle for a child being started (stdlib DupFd: pass_fds under
    spawn, fd passing to the forkserver)."""
    return DupFd(fd)


def _detach_all(holders):
    """Detaches every fd holder (DupFd or None -> -1), in order: the received
    descriptors. If one fails, closes those already detached, then raises."""
    import os

    fds = []
    try:
        for h in holders:
            fds.append(-1 if h is None else h.detach())
    except BaseException:
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        raise
    return fds


__all__ += ["dumps", "loads", "register"]
