"""fastmp's benchmark runner: every scenario, fastmp against multiprocessing and the peers.

    python -m benchmarks.run [--quick] [--busy] [--only GROUP] [--libs a,b] [--out FILE]

Run from a source checkout (``pip install '.[bench]'`` installs fastmp, the
plotting and notebook tools and the peers). Libraries alternate within each
round (the first one rotates), every value is a median over the rounds, and
every ratio is "times faster than multiprocessing" (> 1: faster, whatever the
unit). Peers are used when they import: multiprocess and billiard (the whole
multiprocessing API), faster-fifo (queue rows), loky and mpire (pool rows
where their APIs map), UltraDict (Manager dict rows); a peer that does not
import is listed with the reason in the JSON. ``--busy`` runs the rows again
while every core runs a CPU-bound process, and reports both. ``--quick``
takes about a minute (two on a loaded machine); the full run about 8 minutes on
the 2-core project machine under load, twice that with --busy.

The JSON (default benchmarks/results/{quick,full}.json) holds the machine's
description, the libraries' versions, every sample, the medians and ratios;
``python benchmarks/plot.py FILE`` draws it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"  # noqa: A001

from benchmarks.scenarios import Curve, Scenario, all_curves, all_scenarios  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 1
STDLIB = "multiprocessing"

# (name, import name, distribution name, uses multiprocessing's API, fast)
PEERS = [
    ("multiprocess", "multiprocess", "multiprocess", True, False),
    ("billiard", "billiard", "billiard", True, False),
    ("faster-fifo", "faster_fifo", "faster-fifo", False, True),
    ("loky", "loky", "loky", False, False),
    ("mpire", "mpire", "mpire", False, False),
    ("UltraDict", "UltraDict", "UltraDict", False, False),
]


class Lib:
    """A library under test; attributes not found here come from its module."""

    def __init__(self, name, module, version, mp_api, fast=False, reference=False):
        self.name, self.module, self.version = name, module, version
        self.mp_api, self.fast, self.reference = mp_api, fast, reference

    def __getattr__(self, attr):
        return getattr(self.module, attr)

    def __repr__(self):
        return f"Lib({self.name})"


class _FasterFifo:
    """faster-fifo's Queue with the stdlib's fork Process, Event, ...: enough
    for the queue scenarios, which only call ctx.Queue() and ctx.Process()."""

    def __init__(self, module):
        self.module = module
        self.buffer_bytes = 1 << 20  # faster-fifo's default; raised for big messages

    def get_context(self, method="fork"):
        import multiprocessing

        std = multiprocessing.get_context(method)
        ctx = SimpleNamespace(**{k: getattr(std, k) for k in ("Process", "Event", "Value")})
        ctx.Queue = lambda maxsize=0: self.module.Queue(max_size_bytes=self.buffer_bytes)
        return ctx


def _version(dist, module):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return getattr(module, "__version__", "?")


def discover_libs(wanted=None):
    """Returns (libs, notes): the libraries that import, and why the others are skipped."""
    import multiprocessing
    import pickle

    import fastmp

    libs = [
        Lib(STDLIB, multiprocessing, platform.python_version(), True),
        Lib("fastmp", fastmp, _version("fastmp", fastmp), True, fast=True),
    ]
    notes = {}
    for name, mod_name, dist, mp_api, fast in PEERS:
        if wanted is not None and name not in wanted:
            notes[name] = "not selected (--libs)"
            continue
        try:
            mod = importlib.import_module(mod_name)
            if name == "UltraDict":
                mod = importlib.import_module("UltraDict")
                importlib.import_module("atomics")  # its shared lock needs it
        except Exception as exc:  # noqa: BLE001
            notes[name] = (
                f"skipped: import failed ({type(exc).__name__}: {exc}); pip install {dist}"
            )
            continue
        lib = Lib(name, mod, _version(dist, mod), mp_api, fast)
        if name == "faster-fifo":
            lib.module = _FasterFifo(mod)
        libs.append(lib)
    libs.append(Lib("pickle.dumps", pickle, platform.python_version(), False, reference=True))
    return libs, notes


def _impl(item, lib):
    """The function that runs scenario/curve `item` for `lib`, or None."""
    if lib.name in item.peers:
        return item.peers[lib.name]
    if lib.mp_api and item.run is not None:
        if lib.name in (STDLIB, "fastmp") or getattr(item, "mp_peers", True):
            return item.run
    return None


# --- measuring, with a deadline and no leftovers ---


class _Deadline(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Deadline("measurement took longer than --timeout")


def _children():
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _kill_children(keep=()):
    for pid in _children():
        if pid in keep:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _reap():
    """Joins the stdlib's finished children, kills any still running. Pools of
    the peers (mpire, loky) are stdlib Process objects: left in the stdlib's
    list, a billiard child, whose exit handler is the stdlib's, would try to
    join them, fail, and exit before flushing its queue."""
    import multiprocessing

    for p in multiprocessing.active_children():
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def _measure(fn, args, timeout, keep):
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return float(fn(*args))
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _kill_children(keep)
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        _reap()


class Progress:
    def __init__(self, total, quiet=False):
        self.total, self.done, self.quiet, self.t0 = max(1, total), 0, quiet, time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, label):
        self.done += 1
        if self.quiet:
            return
        width = 30
        bar = "#" * int(self.done / self.total * width)
        line = (
            f"[{bar:<{width}}] {self.done}/{self.total} {time.monotonic() - self.t0:5.0f}s {label}"
        )
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150] + ("\n" if self.done == self.total else ""))
        elif self.done * 20 // self.total != (self.done - 1) * 20 // self.total:
            sys.stderr.write(line + "\n")  # a log or a notebook: one line per 5 %
        sys.stderr.flush()


def _rotated(seq, r):
    k = r % len(seq) if seq else 0
    return seq[k:] + seq[:k]


def _set_buffer(lib, item_bytes):
    if isinstance(lib.module, _FasterFifo):
        lib.module.buffer_bytes = max(1 << 20, 3 * item_bytes + (1 << 16))


def _summarise(entry, higher):
    med = {k: statistics.median(v) for k, v in entry["samples"].items() if v}
    entry["median"] = med
    base = med.get(STDLIB)
    entry["ratio"] = {
        k: (v / base if higher else base / v) if base and v else None for k, v in med.items()
    }


def run_rows(
    scenarios: list[Scenario], libs, rounds, scale, timeout, progress, keep=(), target=0.5
):
    """Every scenario for every library, `rounds` times, interleaved. A library
    whose measurement took more than twice `target` seconds does proportionally
    less work in the next rounds (the unit is a rate or a time per operation, so
    the value stays comparable; `work` in the JSON records what was done)."""
    plan = [(sc, [lib for lib in libs if _impl(sc, lib)]) for sc in scenarios]
    out = [
        {
            "group": sc.group,
            "name": sc.name,
            "unit": sc.unit,
            "higher_is_better": sc.higher_is_better,
            "samples": {lib.name: [] for lib in here},
            "work": {},
            "errors": {},
            "seconds": 0.0,
        }
        for sc, here in plan
    ]
    shrunk: list[dict] = [{} for _ in plan]
    for r in range(rounds):
        for (sc, here), entry, work in zip(plan, out, shrunk):
            for lib in _rotated(here, r):
                label = f"round {r + 1}/{rounds} {sc.group}: {sc.name} [{lib.name}]"
                if lib.name in entry["errors"]:
                    progress.step(label + " (skipped)")
                    continue
                count = work.get(lib.name) or max(
                    sc.min_n, int(sc.n * scale * (sc.fast if lib.fast else 1))
                )
                entry["work"].setdefault(lib.name, []).append(count)
                _set_buffer(lib, sc.item_bytes)
                t0 = time.monotonic()
                try:
                    entry["samples"][lib.name].append(
                        _measure(_impl(sc, lib), (lib, count), timeout, keep)
                    )
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001
                    entry["errors"][lib.name] = f"{type(exc).__name__}: {exc}"[:300]
                elapsed = time.monotonic() - t0
                entry["seconds"] += elapsed
                if sc.n and elapsed > 2 * target:  # slow library: less work next round
                    work[lib.name] = max(sc.min_n, int(count * target / elapsed))
                progress.step(label)
    for (sc, _here), entry in zip(plan, out):
        _summarise(entry, sc.higher_is_better)
    return out


def run_curves(
    curves: list[Curve], libs, rounds, scale, quick, timeout, progress, keep=(), target=0.5
):
    out = []
    shrink: dict[str, float] = {}  # a slow point gets a smaller scale in the next rounds
    for c in curves:
        xs = c.xs_quick if quick else c.xs_full
        here = [lib for lib in libs if _impl(c, lib)]
        out.append(
            {
                "name": c.name,
                "title": c.title,
                "x_label": c.x_label,
                "unit": c.unit,
                "x_log": c.x_log,
                "x": xs,
                "series": {lib.name: {"samples": [[] for _ in xs]} for lib in here},
                "errors": {},
                "_here": here,
            }
        )
    for r in range(rounds):
        for c, entry in zip(curves, out):
            for i, x in enumerate(entry["x"]):
                for lib in _rotated(entry["_here"], r):
                    label = f"round {r + 1}/{rounds} curve {c.name} x={x} [{lib.name}]"
                    key = f"{lib.name} x={x}"
                    if any(
                        k.startswith(lib.name + " x=") and int(k.split("=")[1]) <= x
                        for k in entry["errors"]
                    ):
                        progress.step(label + " (skipped)")
                        continue  # failed at a smaller x: larger ones will too
                    _set_buffer(lib, c.item_bytes(x))
                    t0 = time.monotonic()
                    try:
                        value = _measure(
                            _impl(c, lib), (lib, x, shrink.get(key, scale)), timeout, keep
                        )
                        entry["series"][lib.name]["samples"][i].append(value)
                        elapsed = time.monotonic() - t0
                        if elapsed > 2 * target:
                            shrink[key] = shrink.get(key, scale) * target / elapsed
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # noqa: BLE001
                        entry["errors"][key] = f"{type(exc).__name__}: {exc}"[:300]
                    progress.step(label)
    for entry in out:
        del entry["_here"]
        for s in entry["series"].values():
            s["median"] = [statistics.median(v) if v else None for v in s["samples"]]
    return out


@contextmanager
def busy_cores(n):
    """n CPU-bound processes (one per core), killed on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine():
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _select(items, only):
    """Items whose group is in `only`, or whose name contains an entry that is no group."""
    if not only:
        return items
    groups = {getattr(s, "group", None) for s in all_scenarios()}
    names = [o.lower() for o in only if o not in groups]
    return [
        s
        for s in items
        if getattr(s, "group", s.name.split("-")[0]) in only
        or any(o in s.name.lower() for o in names)
    ]


def run(
    quick=False,
    busy=False,
    rounds=None,
    scale=None,
    only=None,
    libs=None,
    curves=True,
    timeout=None,
    out=None,
    quiet=False,
):
    """Runs the benchmark and returns the result dict (also written to `out` unless out is False)."""
    rounds = rounds or (3 if quick else 5)
    scale = scale or (0.04 if quick else 0.25)
    target = 0.08 if quick else 0.4
    curve_rounds = 1 if quick else 3
    curve_scale = scale / 2 if quick else scale
    timeout = timeout or (60 if quick else 90)
    lib_objs, notes = discover_libs(set(libs.split(",")) if isinstance(libs, str) else libs)
    scenarios = _select(all_scenarios(), only)
    curve_list = _select(all_curves(), only) if curves else []
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "quick" if quick else "full",
        "settings": {
            "rounds": rounds,
            "scale": scale,
            "curve_rounds": curve_rounds,
            "curve_scale": curve_scale,
            "busy": busy,
            "start_method": "fork",
            "timeout_s": timeout,
            "target_s": target,
        },
        "machine": machine(),
        "libraries": {
            lib.name: {"version": lib.version, "available": True, "reference": lib.reference}
            for lib in lib_objs
        },
        "skipped_libraries": notes,
        "started": _now(),
        "load_before": list(os.getloadavg()),
        "runs": {},
    }
    for name, note in notes.items():
        result["libraries"][name] = {"available": False, "note": note}

    def one(kind, keep=()):
        n_rows = sum(len([lib for lib in lib_objs if _impl(s, lib)]) for s in scenarios) * rounds
        n_curves = (
            sum(
                len(c.xs_quick if quick else c.xs_full)
                * len([lib for lib in lib_objs if _impl(c, lib)])
                for c in curve_list
            )
            * curve_rounds
            if kind == "normal"
            else 0
        )
        progress = Progress(n_rows + n_curves, quiet)
        t0, load0 = time.monotonic(), list(os.getloadavg())
        run_result = {
            "load_before": load0,
            "rows": run_rows(scenarios, lib_objs, rounds, scale, timeout, progress, keep, target),
        }
        if kind == "normal" and curve_list:
            run_result["curves"] = run_curves(
                curve_list,
                lib_objs,
                curve_rounds,
                curve_scale,
                quick,
                timeout,
                progress,
                keep,
                target,
            )
        run_result["load_after"] = list(os.getloadavg())
        run_result["seconds"] = round(time.monotonic() - t0, 1)
        return run_result

    result["runs"]["normal"] = one("normal")
    if busy:
        n = os.cpu_count() or 1
        with busy_cores(n) as pids:
            result["runs"]["busy"] = one("busy", keep=set(pids))
            result["runs"]["busy"]["busy_processes"] = n
    result["load_after"] = list(os.getloadavg())
    result["finished"] = _now()
    if out is not False:
        path = Path(out) if out else RESULTS / f"{result['mode']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        result["path"] = str(path)
    return result


def _fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def report(result, stream=None):
    """Prints each run's table: the stdlib's median and every library's ratio."""
    stream = stream or sys.stdout
    libs = [n for n, d in result["libraries"].items() if d.get("available") and n != STDLIB]
    m = result["machine"]
    print(
        f"{result['mode']} run, {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"load {result['load_before'][0]:.2f} -> {result['load_after'][0]:.2f}",
        file=stream,
    )
    for kind, run_result in result["runs"].items():
        print(f"\n== {kind} machine ==  (ratio = times faster than multiprocessing)", file=stream)
        head = f"{'scenario':<42} {'multiprocessing':>18} " + " ".join(
            f"{n[:12]:>12}" for n in libs
        )
        print(head, file=stream)
        for e in run_result["rows"]:
            base = e["median"].get(STDLIB)
            cells = []
            for n in libs:
                r = e["ratio"].get(n)
                cells.append(
                    f"{('err' if n in e['errors'] else '') if r is None else f'{r:.2f}x':>12}"
                )
            print(
                f"{(e['group'] + ': ' + e['name'])[:42]:<42} {_fmt(base):>10} {e['unit']:<7} "
                + " ".join(cells),
                file=stream,
            )
        for e in run_result.get("curves", []):
            print(f"\n{e['title']} ({e['unit']}, medians)", file=stream)
            print(
                f"{e['x_label'][:20]:<20} " + " ".join(f"{n[:12]:>12}" for n in e["series"]),
                file=stream,
            )
            for i, x in enumerate(e["x"]):
                print(
                    f"{x:<20} "
                    + " ".join(f"{_fmt(s['median'][i]):>12}" for s in e["series"].values()),
                    file=stream,
                )
    if result.get("path"):
        print(f"\nJSON: {result['path']}", file=stream)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: fewer rounds, less work, fewer curve points",
    )
    ap.add_argument(
        "--busy", action="store_true", help="run the rows again with every core kept busy"
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 3)")
    ap.add_argument(
        "--scale", type=float, help="multiplies every scenario's work (default 0.25, quick 0.04)"
    )
    ap.add_argument(
        "--only",
        action="append",
        help="a group (queue, pipe, sync, sharedctypes, pool, manager, pickling) or part of a scenario or curve name; repeatable",
    )
    ap.add_argument("--libs", help="comma-separated peers to try (default: all that import)")
    ap.add_argument("--no-curves", action="store_true", help="rows only")
    ap.add_argument(
        "--timeout", type=float, help="seconds allowed for one measurement (default 90, quick 60)"
    )
    ap.add_argument("--out", help="JSON path (default benchmarks/results/{quick,full}.json)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    result = run(
        quick=args.quick,
        busy=args.busy,
        rounds=args.rounds,
        scale=args.scale,
        only=args.only,
        libs=args.libs,
        curves=not args.no_curves,
        timeout=args.timeout,
        out=args.out,
        quiet=args.quiet,
    )
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
