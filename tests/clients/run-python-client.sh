#!/usr/bin/env bash
# Drives the built daemon with the official Python MCP SDK (PyPI `mcp`).
#
# Builds nothing: expects target/debug/airlock (or $AIRLOCK_BIN). Creates a throw-away venv,
# installs `mcp` ($MCP_PIP_SPEC to pin, e.g. 'mcp==2.3.0' or 'mcp<2'), starts
# `airlock serve --listen 127.0.0.1:0` on a temporary AIRLOCK_HOME, runs
# tests/clients/python_client.py against it, stops the daemon (SIGTERM, expecting exit 0) and
# exits with the client's status (1 also if the daemon did not stop cleanly).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${AIRLOCK_BIN:-$root/target/debug/airlock}
if [ ! -x "$bin" ]; then
    echo "run-python-client: $bin not found; run 'cargo build' first" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/airlock-pyclient.XXXXXX")
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "run-python-client: installing ${MCP_PIP_SPEC:-mcp} into a venv under $tmp"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "${MCP_PIP_SPEC:-mcp}"

# The daemon prints `airlock listening on http://ADDR` once bound; read it through a FIFO that
# stays open for the daemon's life.
mkfifo "$tmp/stdout"
AIRLOCK_HOME="$tmp/home" RUST_LOG="${RUST_LOG:-warn}" \
    "$bin" serve --listen 127.0.0.1:0 >"$tmp/stdout" &
daemon_pid=$!
exec 3<"$tmp/stdout"
if ! read -r -t 30 line <&3; then
    echo "run-python-client: the daemon did not announce its address" >&2
    exit 1
fi
url=${line#airlock listening on }
if [ "$url" = "$line" ]; then
    echo "run-python-client: unexpected first line from the daemon: $line" >&2
    exit 1
fi

status=0
AIRLOCK_URL="$url" AIRLOCK_TOKEN="$(cat "$tmp/home/token")" \
    timeout 300 "$tmp/venv/bin/python" "$root/tests/clients/python_client.py" || status=$?

kill -TERM "$daemon_pid"
daemon_status=0
for _ in $(seq 1 100); do
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
wait "$daemon_pid" || daemon_status=$?
daemon_pid=""
if [ "$daemon_status" -ne 0 ]; then
    echo "run-python-client: the daemon exited with status $daemon_status after SIGTERM" >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
