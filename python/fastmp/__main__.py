"""``python -m fastmp``: a quick side-by-side demo against multiprocessing."""

import sys

from ._bench import run

FULL = """
This was a short demo. The full benchmark (queues, pipes, locks, shared
ctypes, Pool, Manager, pickling; the peers multiprocess, billiard,
faster-fifo, loky, mpire and UltraDict when installed; throughput curves;
--busy for a loaded machine) is in a source checkout of fastmp:

    pip install '.[bench]'
    python -m benchmarks.run --quick          # about a minute; JSON in benchmarks/results/
    python benchmarks/plot.py benchmarks/results/quick.json
    scripts/check_notebook.sh --write    # runs benchmarks/fastmp_benchmarks.ipynb (figures, how to read them)
"""


def main() -> int:
    print("fastmp vs multiprocessing: queue throughput (higher is better), fork start method")
    print("(short demo run, 3 interleaved rounds; progress on stderr)\n", flush=True)
    run(rounds=3, scale=0.25)
    print(FULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
