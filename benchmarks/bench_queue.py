"""Queue throughput, fastmp vs multiprocessing, in one interleaved run.

    python benchmarks/bench_queue.py [--rounds 5] [--scale 1.0]

Scenarios: 1 -> 1 small ints, 1 KiB bytes, 1 MiB bytes; 2 producers -> 2
consumers small ints (fork start method). Prints medians and fastmp's ratio.
"""

import argparse

from fastmp._bench import SCENARIOS, run

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the message counts")
    ap.add_argument("--only", choices=list(SCENARIOS), action="append")
    a = ap.parse_args()
    run(rounds=a.rounds, scale=a.scale, scenarios=a.only)
