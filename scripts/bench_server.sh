#!/usr/bin/env bash
# Benchmark `bitkv serve` against Redis 7 (appendonly yes, appendfsync everysec) with
# redis-benchmark, side by side on loopback, and write a Markdown table.
#
#   scripts/bench_server.sh [OUT.md]        # default: bench_server.md
#
# Environment: PYTHON (interpreter with bitkv installed; default .venv/bin/python, else
# python3), N (requests per run, default 100000), ROUNDS (default 3; the median is reported),
# BITKV_ARGS (extra `bitkv serve` options, e.g. "--sync always").
# Needs redis-server and redis-benchmark (Debian: apt-get install -y redis-server redis-tools).
# The two servers run one after the other in each round (interleaved), so a noisy machine
# affects both alike; the table also shows each server's CPU time per request, which noise
# disturbs much less than requests per second.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-bench_server.md}
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || {
        echo "$tool not found: apt-get install -y redis-server redis-tools" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/bitkv-bench-server.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_ready() {  # port
    for _ in $(seq 1 300); do
        redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2; exit 1
}
cpu_ticks() {  # pid -> utime + stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

BITKV_PORT=$(free_port)
# shellcheck disable=SC2086
"$PYTHON" -m bitkv.server --dir "$WORK/bitkv" --port "$BITKV_PORT" ${BITKV_ARGS:-} \
    >"$WORK/bitkv.log" 2>&1 &
BITKV_PID=$!
PIDS+=("$BITKV_PID")
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
    --save "" --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_ready "$BITKV_PORT"
wait_ready "$REDIS_PORT"

TICK=$(getconf CLK_TCK)
RESULTS="$WORK/results.csv"  # server,pipeline,round,test,rps,cpu_us_per_request
: >"$RESULTS"
run() {  # name port pid pipeline round test
    local before after csv cpu_us
    before=$(cpu_ticks "$3")
    csv=$(redis-benchmark -h 127.0.0.1 -p "$2" -t "$6" -n "$N" -d 100 -r 100000 -P "$4" \
        --csv 2>/dev/null)
    after=$(cpu_ticks "$3")
    cpu_us=$(awk -v a="$before" -v b="$after" -v t="$TICK" -v n="$N" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / t / n }')
    echo "$csv" | awk -F'"' -v s="$1" -v p="$4" -v r="$5" -v c="$cpu_us" \
        '$2 == "SET" || $2 == "GET" { print s "," p "," r "," $2 "," $4 "," c }' >>"$RESULTS"
}

echo "bitkv on :$BITKV_PORT, Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)" \
     "on :$REDIS_PORT;" \
     "$ROUNDS rounds of redis-benchmark -t set,get -n $N -d 100 -r 100000 -P 1 / -P 16" >&2
for round in $(seq 1 "$ROUNDS"); do
    for pipeline in 1 16; do
        for test in set get; do  # GET after SET, so most GETs find their key
            run bitkv "$BITKV_PORT" "$BITKV_PID" "$pipeline" "$round" "$test"
            run redis "$REDIS_PORT" "$REDIS_PID" "$pipeline" "$round" "$test"
        done
    done
    echo "  round $round done" >&2
done

"$PYTHON" - "$RESULTS" "$OUT" "$N" "$ROUNDS" "${BITKV_ARGS:-}" <<'EOF'
import csv, os, platform, statistics, subprocess, sys

results, out, n, rounds, bitkv_args = sys.argv[1:6]
rows = {}
for server, pipeline, _round, test, rps, cpu in csv.reader(open(results)):
    rows.setdefault((server, int(pipeline), test), []).append((float(rps), float(cpu)))

def median(server, pipeline, test, i):
    return statistics.median(v[i] for v in rows[(server, pipeline, test)])

target = {1: 0.5, 16: 0.3}
lines = [
    "| Test | Pipeline | bitkv req/s | Redis req/s | bitkv/Redis | Target | "
    "bitkv CPU µs/req | Redis CPU µs/req |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for pipeline in (1, 16):
    for test in ("SET", "GET"):
        b = median("bitkv", pipeline, test, 0)
        r = median("redis", pipeline, test, 0)
        ratio = b / r
        mark = "ok" if ratio >= target[pipeline] else "below"
        lines.append(
            f"| {test} | {pipeline} | {b:,.0f} | {r:,.0f} | {ratio:.2f} | "
            f">= {target[pipeline]} ({mark}) | {median('bitkv', pipeline, test, 1):.1f} | "
            f"{median('redis', pipeline, test, 1):.1f} |")
redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                               text=True).stdout.split()[2].removeprefix("v=")
header = (
    f"`redis-benchmark -t set,get -n {n} -d 100 -r 100000` with `-P 1` and `-P 16` "
    f"(50 clients), median of {rounds} interleaved rounds, loopback, "
    f"{os.cpu_count()} CPUs, Python {platform.python_version()}. bitkv: `bitkv serve "
    f"{bitkv_args or '--sync interval'}`; Redis {redis_version}: `appendonly yes`, "
    "`appendfsync everysec`. CPU µs/req: the server process's CPU time during the run "
    "divided by its requests (less sensitive to a busy machine than req/s).\n"
)
text = header + "\n" + "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
EOF
