#!/usr/bin/env bash
# One command for the formatters and linters (pip install '.[dev]').
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check python tests benchmarks
ruff format --check python tests benchmarks
mypy
clang-format --dry-run --Werror cpp/include/fastmp/*.hpp cpp/src/*.cpp cpp/bindings/*.cpp cpp/bindings/*.hpp cpp/tests/*.cpp
