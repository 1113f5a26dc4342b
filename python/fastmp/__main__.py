"""``python -m fastmp``: a quick side-by-side demo against multiprocessing."""

import sys

from ._bench import run


def main() -> int:
    print("fastmp vs multiprocessing: queue throughput (higher is better), fork start method")
    print("(short demo run; benchmarks/bench_queue.py does the full measurement)\n")
    run(rounds=3, scale=0.25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
