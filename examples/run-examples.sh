#!/usr/bin/env bash
# Runs the SDK quickstarts (examples/python, examples/typescript) against a fresh daemon: what
# .ci/run does, and a way to try them by hand.
#
# Builds nothing: expects target/debug/airlock (or $AIRLOCK_BIN). Starts
# `airlock serve --listen 127.0.0.1:0` on a temporary AIRLOCK_HOME and gives each example its
# URL and token; installs the official Python SDK (PyPI `mcp`, $MCP_PIP_SPEC to pin) into a
# throwaway venv and the TypeScript SDK with `npm ci` in examples/typescript. Stops the daemon
# with SIGTERM afterwards. Exits non-zero if any example failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${AIRLOCK_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/airlock}
if [ ! -x "$bin" ]; then
    echo "run-examples: $bin not found; run 'cargo build' first" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/airlock-examples.XXXXXX")
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# The daemon prints `airlock listening on http://ADDR` once bound: read it through a FIFO.
mkfifo "$tmp/stdout"
AIRLOCK_HOME="$tmp/home" RUST_LOG="${RUST_LOG:-warn}" \
    "$bin" serve --listen 127.0.0.1:0 >"$tmp/stdout" &
daemon_pid=$!
exec 3<"$tmp/stdout"
if ! read -r -t 30 line <&3; then
    echo "run-examples: the daemon did not announce its address" >&2
    exit 1
fi
export AIRLOCK_URL="${line#airlock listening on }/mcp"
AIRLOCK_TOKEN=$(cat "$tmp/home/token")
export AIRLOCK_TOKEN

status=0

echo "== examples/python/handoff.py (PyPI ${MCP_PIP_SPEC:-mcp>=2})"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "${MCP_PIP_SPEC:-mcp>=2}"
"$tmp/venv/bin/pip" show mcp | sed -n 's/^Version: /mcp /p'
timeout 120 "$tmp/venv/bin/python" "$root/examples/python/handoff.py" || status=1

echo "== examples/typescript/handoff.mjs (npm @modelcontextprotocol/sdk, node $(node --version))"
(cd "$root/examples/typescript" && npm ci --no-audit --no-fund --loglevel=error)
node -p 'require("'"$root"'/examples/typescript/node_modules/@modelcontextprotocol/sdk/package.json").version' \
    | sed 's/^/@modelcontextprotocol\/sdk /'
timeout 120 node "$root/examples/typescript/handoff.mjs" || status=1

exit "$status"
