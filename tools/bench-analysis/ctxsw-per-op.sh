#!/bin/bash
# Context switches and daemon CPU per engine operation under one bench workload, for a daemon
# binary started here on tmpfs (BENCHMARKS.md, "Issue 16, third pass"). Less noisy than
# throughput on a shared machine: it counts what the daemon did, not how fast the host let it.
# usage: ctxsw-per-op.sh path/to/airlock [workload, default 1]
# prints: ops=N ctxsw/op=X cpu_us/op=Y
set -e
BIN=$1
BENCH=${BENCH:-$(dirname "$0")/../../target/release/airlock-bench}
H=$(mktemp -d /dev/shm/ctxsw.XXXXXX)
chmod 700 "$H"
AIRLOCK_HOME=$H/home "$BIN" serve --listen 127.0.0.1:0 > "$H/out" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$H"' EXIT
while ! grep -q listening "$H/out" 2>/dev/null; do sleep 0.1; done
URL=$(grep -o "http://[0-9.:]*/*" "$H/out" | head -1)
TOK=$(cat "$H/home/token")
snap() {
    local cs=0 v
    for t in /proc/$PID/task/*; do
        v=$(awk '/voluntary_ctxt_switches/{s+=$2} END{print s}' "$t/status")
        cs=$((cs + v))
    done
    local cpu ops
    cpu=$(awk '{print $14+$15}' /proc/$PID/stat)
    ops=$(curl -s -H "Authorization: Bearer $TOK" "${URL%/mcp}/status?limit=1" \
        | python3 -c "import sys,json; print(json.load(sys.stdin)['engine']['operations'])")
    echo "$cs $cpu $ops"
}
read -r cs0 cpu0 ops0 < <(snap)
"$BENCH" --url "$URL" --token "$TOK" --only "${2:-1}" --seconds 2 --reps 2 > /dev/null 2>&1
read -r cs1 cpu1 ops1 < <(snap)
python3 -c "print('ops=%d ctxsw/op=%.2f cpu_us/op=%.1f' % ($ops1-$ops0, ($cs1-$cs0)/($ops1-$ops0), ($cpu1-$cpu0)*1e6/100/($ops1-$ops0)))"
