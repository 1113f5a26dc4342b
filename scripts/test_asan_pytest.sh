#!/usr/bin/env bash
# The binding layer under AddressSanitizer + UndefinedBehaviorSanitizer: builds
# the extension with -fsanitize=address,undefined into a copy of the source
# tree (its own build dir, reused between runs), then runs a representative
# part of pytest against it with the sanitizer runtime preloaded (CPython
# itself is not instrumented, hence LD_PRELOAD). Any report, from the test
# process or from any child it starts, fails the run: reports go to log files
# that are checked at the end.
#
#   scripts/test_asan_pytest.sh [extra pytest args]      (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${FASTMP_ASAN_DIR:-$root/build/asan-pytest}
py=${PYTHON:-python}
mkdir -p "$work/logs"
rm -f "$work"/logs/*

# A fresh copy, so the in-place extension never lands in the real source tree
# (and deleted files are gone); cp -a keeps mtimes, so the reused build dir
# only recompiles what changed.
rm -rf "$work/src"
mkdir -p "$work/src"
cp -a "$root/cpp" "$root/python" "$root/tests" "$root/CMakeLists.txt" "$root/pyproject.toml" "$work/src/"
rm -f "$work"/src/python/fastmp/_fastmp*.so

cmake -S "$work/src" -B "$work/build" -DFASTMP_INPLACE=ON -DFASTMP_SANITIZE=address,undefined \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE="$(command -v "$py")" >/dev/null
cmake --build "$work/build" -j "$(nproc)" >/dev/null

asan_rt=$(g++ -print-file-name=libasan.so)
ubsan_rt=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan_rt:$ubsan_rt"
# CPython's own allocations are not freed at exit, so leak checking is off.
export ASAN_OPTIONS="detect_leaks=0:log_path=$work/logs/asan:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/logs/ubsan"
export PYTHONPATH="$work/src/python"
export PYTHONMALLOC=malloc  # let ASan see object buffers, not pymalloc arenas

cd "$work/src/tests"
# The tests must run the sanitized build, not an installed one.
"$py" - "$work/src/python" <<'PY'
import sys
import fastmp._fastmp as m
assert m.__file__.startswith(sys.argv[1]), m.__file__
assert "libasan" in open("/proc/self/maps").read(), "ASan runtime not loaded"
PY
status=0
time "$py" -m pytest -q -p no:cacheprovider -o addopts="" --timeout 300 \
  test_sync.py test_sync_robust.py test_sharedctypes.py test_queue.py test_connection.py "$@" || status=$?

if compgen -G "$work/logs/*" >/dev/null; then
  echo "== sanitizer reports:"
  cat "$work"/logs/*
  status=1
fi
exit $status
