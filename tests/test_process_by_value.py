"""Process targets and arguments that plain pickle refuses go by value under
spawn and forkserver (cloudpickle), only when the stdlib's pickling fails."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

import fastmp

METHODS = ["spawn", "forkserver"]


def _report_target_kind(out, *extra):
    out.put(type(multiprocessing.current_process()._target).__name__)


def _run(ctx, target, args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


@pytest.mark.parametrize("method", METHODS)
def test_lambda_target(method):
    ctx = fastmp.get_context(method)
    out = ctx.Queue()
    base = 40
    p = _run(ctx, lambda q, n: q.put(base + n), (out, 2))
    assert out.get(timeout=60) == 42
    p.join(60)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_local_function_and_closure_arguments(method):
    ctx = fastmp.get_context(method)
    out, lock = ctx.Queue(), ctx.Lock()
    scale = 3

    def work(f, q, lk, items):  # a local function, taking a lambda
        with lk:
            q.put([f(x) for x in items])

    p = _run(ctx, work, (lambda x: x * scale, out, lock, [1, 2, 3]))
    assert out.get(timeout=60) == [3, 6, 9]
    p.join(60)
    assert p.exitcode == 0
    assert lock.acquire(timeout=10)  # the child's release reached us
    lock.release()


@pytest.mark.parametrize("method", METHODS)
def test_by_value_only_when_the_stdlib_refuses(method):
    ctx = fastmp.get_context(method)
    out = ctx.Queue()
    p = _run(ctx, _report_target_kind, (out,))
    assert out.get(timeout=60) == "function"  # by reference, as the stdlib does
    p.join(60)
    p = _run(ctx, _report_target_kind, (out, lambda: None))
    assert out.get(timeout=60) == "_TargetByValue"
    p.join(60)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_unpicklable_argument_raises_the_stdlibs_error(method):
    ctx = fastmp.get_context(method)
    std = multiprocessing.get_context(method).Process(target=print, args=(threading.Lock(),))
    with pytest.raises(TypeError) as std_err:
        std.start()
    p = ctx.Process(target=print, args=(threading.Lock(),))
    with pytest.raises(TypeError) as err:
        p.start()
    assert str(err.value) == str(std_err.value)
    assert p._target is print and isinstance(p._args[0], type(threading.Lock()))


@pytest.mark.parametrize("method", METHODS)
def test_the_stdlib_refuses_a_lambda(method):
    # The difference fastmp documents: the stdlib cannot start this at all.
    p = multiprocessing.get_context(method).Process(target=lambda: None)
    with pytest.raises((AttributeError, multiprocessing.reduction.pickle.PicklingError)):
        p.start()
