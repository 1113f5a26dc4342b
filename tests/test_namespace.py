"""The multiprocessing namespace, contexts, start methods and Process behaviour.

fastmp must be importable wherever `multiprocessing` is: every public name of
the package and of its public submodules exists, contexts are the stdlib's
(subclassed), and Process -- subclassing, exit codes, daemons -- behaves as
the stdlib's under every start method. Global start-method state is only
touched in fresh interpreters (`run_script`).
"""

from __future__ import annotations

import ast
import importlib
import multiprocessing
import multiprocessing.context
import os
import queue
import re
import sys
import time
import types

import pytest

import fastmp
from _script import run_script

SUBMODULES = [
    "queues",
    "connection",
    "synchronize",
    "sharedctypes",
    "shared_memory",
    "managers",
    "pool",
    "context",
    "reduction",
]
START_METHODS = ["fork", "spawn", "forkserver"]
STDLIB_PROCESS = {
    "fork": multiprocessing.context.ForkProcess,
    "spawn": multiprocessing.context.SpawnProcess,
    "forkserver": multiprocessing.context.ForkServerProcess,
}


def public_api(module) -> set[str]:
    """Public names in dir(module), minus imported modules (os, sys, ...):
    those are implementation details of the stdlib module, not its API."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


def lib_of(ctx) -> str:
    return "fastmp" if type(ctx).__module__.startswith("fastmp") else "multiprocessing"


def run_lib_script(tmp_path, code, lib, *args, timeout=60):
    """Run `code` (written against `mp`) in a fresh interpreter with `mp` = lib."""
    workdir = tmp_path / lib
    workdir.mkdir(exist_ok=True)
    res = run_script(code, workdir, timeout=timeout, args=(lib, *args))
    assert res.returncode == 0 and "Traceback" not in res.stderr, (
        f"{lib}:\n{res.stdout}\n{res.stderr}"
    )
    return [ast.literal_eval(line) for line in res.stdout.splitlines()]


# --- names ---------------------------------------------------------------------------------


def test_package_has_every_public_name_of_multiprocessing(tmp_path):
    # In a fresh interpreter: dir(multiprocessing) grows as its submodules get
    # imported, so this process's state (after other tests) would not be the reference.
    code = """
        import multiprocessing, fastmp
        public = lambda m: {n for n in dir(m) if not n.startswith("_")}
        print(sorted(public(multiprocessing) - public(fastmp)))
        print(len(public(multiprocessing)))
    """
    res = run_script(code, tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    missing, total = map(ast.literal_eval, res.stdout.splitlines())
    assert total > 30
    assert missing == [], f"fastmp lacks {missing}"


def test_package_public_names_have_the_stdlib_signature_kind():
    for name in multiprocessing.__all__:
        ours, theirs = getattr(fastmp, name), getattr(multiprocessing, name)
        assert callable(ours) == callable(theirs), name
        if isinstance(theirs, type) and issubclass(theirs, BaseException):
            assert ours is theirs, (
                f"fastmp.{name} must be the stdlib exception so except clauses catch both"
            )


@pytest.mark.parametrize("name", SUBMODULES)
def test_submodule_has_every_public_name_of_the_stdlib_one(name):
    theirs = importlib.import_module(f"multiprocessing.{name}")
    ours = importlib.import_module(f"fastmp.{name}")
    assert getattr(fastmp, name) is ours
    missing = sorted(public_api(theirs) - set(dir(ours)))
    assert missing == [], f"fastmp.{name} lacks {missing}"
    for attr in getattr(theirs, "__all__", ()):
        assert hasattr(ours, attr), f"fastmp.{name}.{attr} (in the stdlib's __all__)"


def test_queues_exceptions_are_the_queue_modules():
    assert fastmp.queues.Empty is queue.Empty
    assert fastmp.queues.Full is queue.Full
    # ... and, unlike the stdlib, reachable without importing fastmp.queues first.
    assert fastmp.Queue.Empty is queue.Empty and fastmp.Queue.Full is queue.Full


def test_exceptions_are_the_stdlibs():
    for name in ("ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError"):
        assert getattr(fastmp, name) is getattr(multiprocessing, name)
        assert getattr(fastmp.context, name) is getattr(multiprocessing.context, name)


# --- contexts -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", START_METHODS)
def test_get_context_is_a_stdlib_context(method):
    ctx = fastmp.get_context(method)
    std = multiprocessing.get_context(method)
    assert isinstance(ctx, type(std))
    assert ctx.get_start_method() == method
    # The stdlib's Process class; under spawn and forkserver a subclass that
    # only adds the by-value fallback for targets (test_process_by_value.py).
    assert STDLIB_PROCESS[method] is std.Process
    assert ctx.Process is std.Process or (
        method != "fork" and ctx.Process.__bases__ == (std.Process,)
    )
    assert ctx.get_context() is ctx
    assert fastmp.get_context(method) is ctx
    # The context's own factories are fastmp's.
    q = ctx.Queue()
    try:
        assert isinstance(q, fastmp.queues.Queue)
    finally:
        q.close()


def test_get_context_unknown_method():
    with pytest.raises(ValueError) as std:
        multiprocessing.get_context("nope")
    with pytest.raises(ValueError) as ours:
        fastmp.get_context("nope")
    assert str(ours.value) == str(std.value) == "cannot find context for 'nope'"
    assert fastmp.get_context("fork").get_start_method() == "fork"  # still usable


def test_get_all_start_methods():
    assert fastmp.get_all_start_methods() == multiprocessing.get_all_start_methods()
    assert set(START_METHODS) <= set(fastmp.get_all_start_methods())


def test_current_process_and_friends_are_the_stdlibs():
    assert fastmp.current_process() is multiprocessing.current_process()
    assert fastmp.parent_process() is None is multiprocessing.parent_process()
    assert fastmp.cpu_count() == multiprocessing.cpu_count()
    assert issubclass(fastmp.Process, multiprocessing.Process)


START_METHOD_SCRIPT = """
    import importlib, sys
    mp = importlib.import_module(sys.argv[1])

    def attempt(f, *args, **kwargs):
        try:
            return ("ok", f(*args, **kwargs))
        except Exception as e:
            return (type(e).__name__, str(e))

    print(repr(attempt(mp.get_start_method, allow_none=True)))
    print(repr(attempt(mp.set_start_method, "spawn")))
    print(repr(attempt(mp.get_start_method)))
    print(repr(attempt(mp.set_start_method, "fork")))
    print(repr(attempt(mp.get_start_method)))
    print(repr(attempt(mp.set_start_method, "fork", force=True)))
    print(repr(attempt(mp.get_start_method)))
    print(repr(attempt(mp.get_context().get_start_method)))
    print(repr(attempt(mp.set_start_method, "nope", force=True)))
    print(repr(attempt(mp.set_start_method, None, force=True)))
    print(repr(attempt(mp.get_start_method, allow_none=True)))
    print(repr(attempt(mp.get_start_method)))
    print(repr(attempt(mp.set_start_method, "spawn")))
    print(repr(attempt(mp.get_all_start_methods)))
"""


def test_set_and_get_start_method_behave_as_the_stdlibs(tmp_path):
    std = run_lib_script(tmp_path, START_METHOD_SCRIPT, "multiprocessing")
    ours = run_lib_script(tmp_path, START_METHOD_SCRIPT, "fastmp")
    assert ours == std
    assert ours[:4] == [
        ("ok", None),
        ("ok", None),
        ("ok", "spawn"),
        ("RuntimeError", "context has already been set"),
    ]
    assert ours[-2] == (
        "RuntimeError",
        "context has already been set",
    )  # get_start_method() fixed it


CHILD_START_METHOD_SCRIPT = """
    import importlib, sys
    mp = importlib.import_module(sys.argv[1])

    def report(q):
        q.put((mp.get_start_method(), mp.get_context().get_start_method()))

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[2])
        q = mp.Queue()
        p = mp.Process(target=report, args=(q,))
        p.start()
        print(repr(q.get(timeout=30)))
        p.join()
        print(repr(p.exitcode))
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_child_sees_the_start_method_it_was_started_with(tmp_path, method):
    std = run_lib_script(tmp_path, CHILD_START_METHOD_SCRIPT, "multiprocessing", method)
    assert std == [(method, method), 0]
    assert run_lib_script(tmp_path, CHILD_START_METHOD_SCRIPT, "fastmp", method) == std


# --- Process: subclassing, exit codes, daemons -----------------------------------------------


class _Squarer:
    """A Process subclass body: overrides __init__ and run(), as the tutorials do."""

    def __init__(self, q, x, name):
        super().__init__()
        self.name = name
        self.q = q
        self.x = x
        self.result = None

    def run(self):
        self.result = self.x * self.x  # set in the child only
        me = multiprocessing.current_process()
        self.q.put(
            (self.name, me.name, self.result, os.getpid(), multiprocessing.parent_process().pid)
        )
        return "ignored"


class ForkSquarer(_Squarer, fastmp.get_context("fork").Process):
    pass


class SpawnSquarer(_Squarer, fastmp.get_context("spawn").Process):
    pass


class ForkServerSquarer(_Squarer, fastmp.get_context("forkserver").Process):
    pass


SQUARERS = {"fork": ForkSquarer, "spawn": SpawnSquarer, "forkserver": ForkServerSquarer}


def test_process_subclass_run_override(fctx):
    method = fctx.get_start_method()
    q = fctx.Queue()
    workers = [SQUARERS[method](q, x, name=f"Squarer-{x}") for x in range(3)]
    for w in workers:
        w.start()
    got = sorted(q.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(30)
    q.close()
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert [(name, child_name, r) for name, child_name, r, _, _ in got] == [
        (f"Squarer-{x}", f"Squarer-{x}", x * x) for x in range(3)
    ]
    assert sorted(pid for _, _, _, pid, _ in got) == sorted(w.pid for w in workers)
    assert {ppid for *_, ppid in got} == {os.getpid()}
    assert [w.result for w in workers] == [None, None, None]  # the child's state stays there


SUBCLASS_SCRIPT = """
    import importlib, os, sys
    mp = importlib.import_module(sys.argv[1])

    class Worker(mp.Process):
        def __init__(self, q, n):
            super().__init__()
            self.q = q
            self.n = n

        def run(self):
            self.q.put((self.name, mp.current_process().name, self.n * 10, mp.get_start_method()))

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[2])
        q = mp.Queue()
        ws = [Worker(q, n) for n in range(3)]
        for w in ws:
            w.start()
        print(repr(sorted(q.get(timeout=30)[:3] for _ in ws)))
        for w in ws:
            w.join()
        print(repr([w.exitcode for w in ws]))
        print(repr(len({w.pid for w in ws} - {None, os.getpid()})))
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_subclass_of_package_process_under_each_start_method(tmp_path, method):
    """`class W(fastmp.Process)` (the tutorials' form) with set_start_method()."""
    std = run_lib_script(tmp_path, SUBCLASS_SCRIPT, "multiprocessing", method)
    ours = run_lib_script(tmp_path, SUBCLASS_SCRIPT, "fastmp", method)
    assert ours == std
    names, exitcodes, pids = ours
    assert [n for n, child_n, _ in names] == [child_n for _, child_n, _ in names]
    assert [v for _, _, v in names] == [0, 10, 20]
    assert exitcodes == [0, 0, 0] and pids == 3


def _return_normally():
    pass


def _raise_value_error():
    raise ValueError("boom from the child")


def _sys_exit(code):
    sys.exit(code)


def _sleep_long():
    time.sleep(60)


def _start_grandchild(lib, method, q):
    ctx = importlib.import_module(lib).get_context(method)
    try:
        ctx.Process(target=_return_normally).start()
    except AssertionError as e:
        q.put(str(e))
    else:
        q.put("started")


def _run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(60)
    return p.exitcode


@pytest.mark.parametrize(
    "target, args, expected",
    [
        (_return_normally, (), 0),
        (_raise_value_error, (), 1),
        (_sys_exit, (3,), 3),
        (_sys_exit, (0,), 0),
        (_sys_exit, (None,), 0),
        (_sys_exit, ("message",), 1),
    ],
    ids=["return", "exception", "exit-3", "exit-0", "exit-None", "exit-str"],
)
def test_exit_codes(ctx, capfd, target, args, expected):
    assert _run(ctx, target, *args) == expected
    err = capfd.readouterr().err
    if target is _raise_value_error:
        assert "ValueError: boom from the child" in err and "Process " in err
    if args == ("message",):
        assert "message" in err


@pytest.mark.parametrize("how, expected", [("terminate", -15), ("kill", -9)])
def test_exit_code_after_signal(ctx, how, expected):
    p = ctx.Process(target=_sleep_long)
    p.start()
    try:
        assert p.is_alive() and p.exitcode is None
        getattr(p, how)()
        p.join(30)
    finally:
        if p.is_alive():  # never leave it running
            p.kill()
            p.join(30)
    assert p.exitcode == expected
    assert not p.is_alive()


def test_join_timeout_returns_none_while_alive(ctx):
    p = ctx.Process(target=_sleep_long)
    p.start()
    try:
        assert p.join(0.05) is None
        assert p.is_alive()
    finally:
        p.kill()
        p.join(30)
    assert p.exitcode == -9


def test_process_before_start(ctx):
    p = ctx.Process(target=_return_normally, name="MyProcess")
    assert (p.name, p.pid, p.exitcode, p.is_alive(), p.daemon) == (
        "MyProcess",
        None,
        None,
        False,
        False,
    )
    assert re.fullmatch(r"\w*Process-\d+(:\d+)*", ctx.Process(target=_return_normally).name)


def test_daemon_flag_and_start_twice(ctx):
    p = ctx.Process(target=_return_normally)
    p.daemon = True
    p.start()
    with pytest.raises(AssertionError, match="process has already started"):
        p.daemon = False
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    p.join(30)
    assert p.daemon is True and p.exitcode == 0


def test_daemonic_process_cannot_have_children(ctx):
    q = ctx.Queue()
    p = ctx.Process(
        target=_start_grandchild, args=(lib_of(ctx), ctx.get_start_method(), q), daemon=True
    )
    p.start()
    try:
        assert q.get(timeout=60) == "daemonic processes are not allowed to have children"
    finally:
        p.join(30)
        q.close()
    assert p.exitcode == 0


DAEMON_AT_EXIT_SCRIPT = """
    import atexit, importlib, sys, time

    def report():
        # Registered before multiprocessing is imported, so it runs after
        # multiprocessing's own exit handler (atexit is LIFO).
        print(repr([(p.daemon, p.exitcode) for p in procs]), flush=True)

    if __name__ == "__main__":  # (a spawned child runs atexit handlers too)
        atexit.register(report)
    mp = importlib.import_module(sys.argv[1])

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[2])
        procs = [
            mp.Process(target=time.sleep, args=(60,), daemon=True),
            mp.Process(target=time.sleep, args=(0.2,)),
        ]
        for p in procs:
            p.start()
        print(repr([p.exitcode for p in procs]), flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_daemons_terminated_and_others_joined_at_exit(tmp_path, method):
    std = run_lib_script(tmp_path, DAEMON_AT_EXIT_SCRIPT, "multiprocessing", method)
    ours = run_lib_script(tmp_path, DAEMON_AT_EXIT_SCRIPT, "fastmp", method)
    # Both still running when the main block ends; at exit the daemon gets
    # SIGTERM and the other one is waited for.
    assert ours == std == [[None, None], [(True, -15), (False, 0)]]
