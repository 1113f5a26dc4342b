#!/usr/bin/env bash
# Executes benchmarks/fastmp_benchmarks.ipynb in quick mode with nbclient, so
# the notebook cannot rot (needs pip install '.[bench]'). The notebook file is
# left as it is unless --write is given (then it is saved with the outputs).
#   scripts/check_notebook.sh [--write] [TIMEOUT_SECONDS (default 900)]
set -euo pipefail
cd "$(dirname "$0")/.."
WRITE=0
if [ "${1:-}" = "--write" ]; then WRITE=1; shift; fi
LIMIT="${1:-900}"
PY="${PYTHON:-python}"
export FASTMP_BENCH_MODE="${FASTMP_BENCH_MODE:-quick}" FASTMP_BENCH_BUSY="${FASTMP_BENCH_BUSY:-0}" MPLBACKEND=Agg
timeout --kill-after=30 "$LIMIT" "$PY" - "$LIMIT" "$WRITE" <<'PY'
import sys
import time

import nbformat
from nbclient import NotebookClient

limit, write = int(sys.argv[1]), sys.argv[2] == "1"
path = "benchmarks/fastmp_benchmarks.ipynb"
nb = nbformat.read(path, as_version=4)
t0 = time.monotonic()
# Raises CellExecutionError (exit 1) on the first cell that fails.
NotebookClient(nb, timeout=limit, kernel_name="python3", resources={"metadata": {"path": "benchmarks"}}).execute()
ran = sum(1 for c in nb.cells if c.cell_type == "code")
images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
if images == 0:
    sys.exit("the notebook drew no figure")
if write:
    nbformat.write(nb, path)
print(f"notebook ok: {ran} code cells, {images} figures, {time.monotonic() - t0:.0f} s" + (f"; written to {path}" if write else ""))
PY
