#!/usr/bin/env bash
# The whole test suite: C++ unit tests (normal, ASan+UBSan, TSan builds) and pytest.
# Assumes the package is installed (pip install '.[test]'); see README.
#   scripts/test.sh [pytest args]   everything
#   scripts/test.sh --cpp           only the C++ unit tests (CI runs them once)
#   scripts/test.sh --pytest [args] only pytest
# pytest gives itself a private /dev/shm when run as root (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
cpp=1 py=1
case "${1:-}" in
  --cpp) py=0; shift ;;
  --pytest) cpp=0; shift ;;
esac

run_ctest() {  # build dir, sanitizer list
  cmake -S . -B "$1" -DFASTMP_BUILD_PYTHON=OFF -DFASTMP_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DFASTMP_SANITIZE="$2" >/dev/null
  cmake --build "$1" -j "$jobs" >/dev/null
  ctest --test-dir "$1" --output-on-failure -j "$jobs"
}

if ((cpp)); then
  echo "== C++ tests"
  run_ctest build/ctest ""
  echo "== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer"
  UBSAN_OPTIONS=halt_on_error=1 run_ctest build/ctest-asan "address,undefined"
  echo "== C++ tests under ThreadSanitizer"
  TSAN_OPTIONS="halt_on_error=1" run_ctest build/ctest-tsan "thread"
fi

if ((cpp && py)); then
  # CI runs this step on its own (.ci/run), after --cpp.
  echo "== pytest against the extension built with ASan + UBSan (binding layer)"
  scripts/test_asan_pytest.sh
fi

if ((py)); then
  echo "== pytest"
  # Run from tests/ so `import fastmp` is the installed package, not a source tree.
  python -m pytest -q "$@"
fi
