"""Draws a runner's JSON as PNG figures (matplotlib).

    python benchmarks/plot.py benchmarks/results/full.json [--outdir DIR]

Writes, next to the JSON unless --outdir says otherwise (STEM is the JSON's name):
  STEM-ratios.png       every scenario: times faster than multiprocessing, per library (log axis)
  STEM-ratios-busy.png  the same with every core busy (when the run had --busy)
  STEM-busy.png         fastmp's ratio on the quiet and on the busy machine, side by side
  STEM-curves.png       throughput against message size (queue, pipe) and against producers = consumers
The notebook calls the same functions (plot_ratios, plot_busy, plot_curves).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STDLIB = "multiprocessing"
# One colour and marker per library, the same in every figure.
STYLE = {
    "fastmp": ("#d62728", "o"),
    "multiprocess": ("#1f77b4", "s"),
    "billiard": ("#2ca02c", "^"),
    "faster-fifo": ("#9467bd", "D"),
    "loky": ("#8c564b", "v"),
    "mpire": ("#e377c2", "P"),
    "UltraDict": ("#17becf", "X"),
    "pickle.dumps": ("#7f7f7f", "*"),
    STDLIB: ("#000000", "."),
}


def _style(name):
    return STYLE.get(name, ("#bcbd22", "h"))


def load(path):
    return json.loads(Path(path).read_text())


def _subtitle(result, run="normal", rounds=None):
    m, r = result["machine"], result["runs"][run]
    busy = f", {r['busy_processes']} CPU-bound processes running" if run == "busy" else ""
    return (
        f"{result['mode']} run, {result['finished'][:16].replace('T', ' ')} UTC; {m['cpu_count']} CPUs "
        f"({m['cpu_model']}), Python {m['python']}\nload average {r['load_before'][0]:.1f} -> "
        f"{r['load_after'][0]:.1f}{busy}; medians of {rounds or result['settings']['rounds']} interleaved rounds"
    )


def _libs(result, rows):
    seen = []
    for e in rows:
        for name in e["ratio"]:
            if name != STDLIB and name not in seen:
                seen.append(name)
    order = list(STYLE)
    return sorted(seen, key=lambda n: order.index(n) if n in order else len(order))


def plot_ratios(result, run="normal", ax=None):
    """One row per scenario, one marker per library: its speed against multiprocessing."""
    import matplotlib.pyplot as plt

    rows = result["runs"][run]["rows"]
    libs = _libs(result, rows)
    n = len(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 0.32 * n + 2.2))
    else:
        fig = ax.figure
    labels, y = [], list(range(n))[::-1]
    ratios = [r for e in rows for r in e["ratio"].values() if r]
    lo, hi = min(ratios + [0.5]), max(ratios + [2.0])
    groups = [e["group"] for e in rows]
    for i, e in enumerate(rows):
        base = e["median"].get(STDLIB)
        unit = e["unit"]
        labels.append(f"{e['group']}: {e['name']}  ({_num(base)} {unit})")
        if i and groups[i] != groups[i - 1]:
            ax.axhline(y[i] + 0.5, color="#dddddd", lw=0.8)
    for k, name in enumerate(libs):
        color, marker = _style(name)
        xs, ys = [], []
        for i, e in enumerate(rows):
            r = e["ratio"].get(name)
            if r:
                xs.append(r)
                ys.append(y[i] + (k - (len(libs) - 1) / 2) * 0.06)
        big = name == "fastmp"
        ax.scatter(
            xs,
            ys,
            label=name,
            color=color,
            marker=marker,
            s=70 if big else 34,
            zorder=4 if big else 3,
            edgecolors="white" if big else "none",
            linewidths=0.6,
        )
    for i, e in enumerate(rows):  # fastmp's value printed at the right
        r = e["ratio"].get("fastmp")
        if r:
            ax.annotate(
                f"{r:.2g}x",
                (hi * 2.2, y[i]),
                va="center",
                ha="left",
                fontsize=8,
                color=_style("fastmp")[0],
            )
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.6, hi * 4.5)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="x", which="both", color="#eeeeee")
    ax.set_xlabel(
        "times faster than multiprocessing (log scale; right of the line: faster)\n"
        "in brackets: multiprocessing's median; at the right: fastmp's ratio"
    )
    where = "every core busy" if run == "busy" else "normal machine"
    ax.set_title(
        f"fastmp and peers against multiprocessing, {where}\n{_subtitle(result, run)}",
        fontsize=9,
        pad=24,
    )
    ax.legend(
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(libs),
        fontsize=8,
        frameon=False,
        handletextpad=0.1,
        columnspacing=0.8,
    )
    fig.tight_layout()
    return fig


def plot_busy(result, ax=None):
    """fastmp's ratio per scenario on the normal and on the busy machine."""
    import matplotlib.pyplot as plt

    normal = {(e["group"], e["name"]): e for e in result["runs"]["normal"]["rows"]}
    busy = result["runs"]["busy"]["rows"]
    n = len(busy)
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 0.3 * n + 2))
    else:
        fig = ax.figure
    y = list(range(n))[::-1]
    for i, e in enumerate(busy):
        a = normal.get((e["group"], e["name"]), {}).get("ratio", {}).get("fastmp")
        b = e["ratio"].get("fastmp")
        if a:
            ax.barh(
                y[i] + 0.2,
                a,
                height=0.38,
                color="#d62728",
                label="normal machine" if i == 0 else None,
            )
        if b:
            ax.barh(
                y[i] - 0.2,
                b,
                height=0.38,
                color="#ff9896",
                label="every core busy" if i == 0 else None,
            )
            ax.annotate(f"{b:.2g}x", (max(b, 1.0) * 1.1, y[i] - 0.2), va="center", fontsize=7)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{e['group']}: {e['name']}" for e in busy], fontsize=8)
    ax.set_xlabel("fastmp: times faster than multiprocessing (log scale)")
    ax.set_title(
        f"fastmp on a normal and on a busy machine\n{_subtitle(result, 'busy')}", fontsize=9
    )
    ax.set_xlabel(
        "fastmp: times faster than multiprocessing (log scale; right of the line: faster)"
    )
    ax.grid(axis="x", which="both", color="#eeeeee")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _bytes(x, _pos=None):
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= size:
            return f"{x / size:g} {unit}"
    return f"{x:g} B"


def plot_curves(result, run="normal"):
    """One panel per curve: every library's median against x."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    curves = result["runs"][run].get("curves", [])
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.6), squeeze=False)
    for ax, c in zip(axes[0], curves):
        order = list(STYLE)
        for name in sorted(c["series"], key=lambda n: order.index(n) if n in order else 99):
            s = c["series"][name]
            pts = [(x, v) for x, v in zip(c["x"], s["median"]) if v]
            if not pts:
                continue
            color, marker = _style(name)
            big = name in ("fastmp", STDLIB)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=marker,
                color=color,
                lw=2.2 if big else 1.2,
                ms=6 if big else 4,
                label=name,
                zorder=4 if name == "fastmp" else 3,
            )
        if c["x_log"]:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(_bytes))
            ax.set_xticks(c["x"])
            ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        else:
            ax.set_xticks(c["x"])
        ax.set_yscale("log")
        ax.set_xlabel(c["x_label"])
        ax.set_ylabel(f"{c['unit']} (log scale, higher is better)")
        ax.set_title(c["title"], fontsize=9)
        ax.grid(which="both", color="#eeeeee")
        ax.legend(fontsize=8)
    rounds = result["settings"]["curve_rounds"]
    fig.suptitle(f"Throughput curves\n{_subtitle(result, run, rounds)}", fontsize=9)
    fig.tight_layout()
    return fig


def _num(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e4:
        return f"{v / 1e3:.3g}k"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def write_all(json_path, outdir=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = load(json_path)
    json_path = Path(json_path)
    outdir = Path(outdir) if outdir else json_path.parent
    outdir.mkdir(parents=True, exist_ok=True)
    stem = json_path.stem
    written = []
    figs = [("ratios", plot_ratios(result)), ("curves", plot_curves(result))]
    if "busy" in result["runs"]:
        figs += [("ratios-busy", plot_ratios(result, "busy")), ("busy", plot_busy(result))]
    for name, fig in figs:
        if fig is None:
            continue
        path = outdir / f"{stem}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("json", help="a JSON written by python -m benchmarks.run")
    ap.add_argument("--outdir", help="where to write the PNGs (default: next to the JSON)")
    args = ap.parse_args(argv)
    for path in write_all(args.json, args.outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
