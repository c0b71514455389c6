#!/usr/bin/env bash
# Benchmark `bitkv serve` against Redis 7 with redis-benchmark and write issue 14's rows as a
# Markdown table: bitkv --sync always vs Redis appendfsync always (SET, -P 1 and -P 16), and
# bitkv --sync interval vs Redis appendfsync everysec (GET and SET, -P 1 and -P 16).
# The work is done by scripts/bench_server.py (its docstring says how it measures).
#
#   scripts/bench_server.sh [OUT.md]        # default: bench_server.md
#
# Environment: PYTHON (interpreter with bitkv installed; default .venv/bin/python, else
# python3), N (requests per run, default 100000), ROUNDS (default 3; medians are reported),
# CLIENTS (redis-benchmark -c, default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" scripts/bench_server.py --rounds "${ROUNDS:-3}" --requests "${N:-100000}" \
    --clients "${CLIENTS:-50}" --python "$PYTHON" --out "${1:-bench_server.md}"
