#!/usr/bin/env bash
# Runs schemathesis (https://schemathesis.io) against the OpenAPI document of
# a fresh `weir serve`: every check, bounded in examples and time, once without
# a token and once with one. Exits non-zero on any server error or schema
# violation.
#
#   tests/schemathesis/run.sh [path/to/weir]
#
# Environment: ST_MAX_EXAMPLES (default 20), ST_MAX_TIME (seconds per run,
# default 60), ST_TIMEOUT (hard limit per run, default 300).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
weir=${1:-${WEIR_BIN:-$root/target/debug/weir}}
max_examples=${ST_MAX_EXAMPLES:-20}
max_time=${ST_MAX_TIME:-60}
hard_timeout=${ST_TIMEOUT:-300}

if ! command -v schemathesis >/dev/null 2>&1; then
    echo "installing schemathesis" >&2
    pip install --quiet schemathesis 2>/dev/null || pip install --quiet --break-system-packages schemathesis
fi
schemathesis --version >&2

run() {
    local token=$1
    local tmp pid url rc
    tmp=$(mktemp -d)
    WEIR_API_TOKEN=$token WEIR_LOG=warn "$weir" serve --data-dir "$tmp/data" --http 127.0.0.1:0 >"$tmp/out" 2>"$tmp/log" &
    pid=$!
    for _ in $(seq 1 600); do
        if grep -q '^listening ' "$tmp/out" 2>/dev/null; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then cat "$tmp/log" >&2; echo "weir serve did not start" >&2; return 1; fi
        sleep 0.1
    done
    url=$(sed -n 's/^listening //p' "$tmp/out" | head -1)
    [ -n "$url" ] || { cat "$tmp/log" >&2; echo "weir serve did not listen" >&2; kill "$pid"; return 1; }
    echo "schemathesis against $url (with a token: $([ -n "$token" ] && echo yes || echo no))" >&2
    local auth=()
    if [ -n "$token" ]; then auth=(--header "Authorization: Bearer $token"); fi
    set +e
    # From the temp dir: schemathesis keeps a cache (.schemathesis/) where it runs.
    (cd "$tmp" && timeout "$hard_timeout" schemathesis --config-file "$root/tests/schemathesis/schemathesis.toml" run "$url/v1/openapi.json" \
        --checks all \
        --max-examples "$max_examples" \
        --max-time "$max_time" \
        --request-timeout 30 \
        --seed 8 \
        --workers 1 \
        --suppress-health-check all \
        --warnings off \
        "${auth[@]}")
    rc=$?
    set -e
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        echo "--- weir serve log (last 40 lines)" >&2
        tail -40 "$tmp/log" >&2
    fi
    rm -rf "$tmp"
    return "$rc"
}

status=0
run "" || status=1
run "schemathesis-token" || status=1
exit "$status"
