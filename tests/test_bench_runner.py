"""Smoke test of the benchmark runner and its plots (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run as runner  # noqa: E402
from benchmarks.scenarios import Curve  # noqa: E402


def test_one_tiny_scenario_writes_the_documented_json(tmp_path):
    out = tmp_path / "r.json"
    result = runner.run(
        quick=True,
        rounds=2,
        scale=0.01,
        only=["pickling"],
        libs="",
        curves=False,
        out=out,
        quiet=True,
    )
    data = json.loads(out.read_text())
    assert result["schema"] == data["schema"] == runner.SCHEMA
    for key in ("cpu_count", "cpu_model", "python", "platform"):
        assert key in data["machine"]
    assert len(data["load_before"]) == len(data["load_after"]) == 3
    libs = data["libraries"]
    assert libs["multiprocessing"]["available"] and libs["fastmp"]["available"]
    assert libs["pickle.dumps"]["reference"]
    assert not libs["multiprocess"]["available"]  # not selected: listed with a note
    assert "note" in libs["multiprocess"]
    [row] = data["runs"]["normal"]["rows"]
    assert row["group"] == "pickling" and row["unit"] == "us" and not row["higher_is_better"]
    assert row["errors"] == {}
    assert set(row["samples"]) == {"multiprocessing", "fastmp", "pickle.dumps"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in row["samples"].values())
    assert row["ratio"]["multiprocessing"] == 1.0
    assert row["ratio"]["fastmp"] == pytest.approx(
        row["median"]["multiprocessing"] / row["median"]["fastmp"]
    )
    assert "busy" not in data["runs"]


def test_a_failing_library_is_recorded_and_skipped(monkeypatch):
    calls = []

    def boom(lib, n):
        calls.append(lib.name)
        if lib.name == "fastmp":
            raise RuntimeError("no")
        return 1.0

    sc = runner.Scenario("g", "s", "x/s", True, 10, boom)
    libs, _ = runner.discover_libs(wanted=set())
    rows = runner.run_rows([sc], libs, 3, 1.0, 30, runner.Progress(1, quiet=True))
    [row] = rows
    assert row["errors"]["fastmp"].startswith("RuntimeError")
    assert calls.count("fastmp") == 1 and calls.count("multiprocessing") == 3
    assert row["ratio"] == {"multiprocessing": 1.0}


def test_curves_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    curve = Curve("c", "a curve", "size", "MB/s", [8, 64], [8, 64], lambda lib, x, s: float(x))
    libs, _ = runner.discover_libs(wanted=set())
    curves = runner.run_curves([curve], libs, 2, 1.0, True, 30, runner.Progress(1, quiet=True))
    assert curves[0]["series"]["fastmp"]["median"] == [8.0, 64.0]
    result = runner.run(
        quick=True,
        rounds=1,
        scale=0.01,
        only=["pickling"],
        libs="",
        curves=False,
        out=False,
        quiet=True,
    )
    result["runs"]["normal"]["curves"] = curves
    result["settings"]["curve_rounds"] = 2
    result["runs"]["busy"] = dict(result["runs"]["normal"], busy_processes=2)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    # In a child: matplotlib keeps its font files open for the life of the process.
    plot = Path(runner.__file__).with_name("plot.py")
    done = subprocess.run(
        [sys.executable, str(plot), str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.split()]
    assert sorted(p.name for p in written) == [
        "r-busy.png",
        "r-curves.png",
        "r-ratios-busy.png",
        "r-ratios.png",
    ]
    assert all(p.stat().st_size > 1000 for p in written)


def test_python_m_fastmp_progress_bar_counts_to_the_total():
    import io

    from fastmp._bench import _Progress

    out = io.StringIO()
    bar = _Progress(2, stream=out, width=4)
    bar.step("a")
    bar.step("b")
    assert out.getvalue().splitlines() == ["[##  ] 1/2 a", "[####] 2/2 b"]


def test_floors_reports_both_libraries_and_the_floor(capsys):
    from benchmarks import floors

    floors.main(["--rounds", "1", "--scale", "0.05"])
    out = capsys.readouterr().out
    for needle in ("multiprocessing", "fastmp", "parent CPU", "a floor of", "array.tolist()"):
        assert needle in out, out
