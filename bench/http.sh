#!/usr/bin/env bash
# The HTTP send API next to SMTP on the same relay, alternately, fresh state each run.
#
#   bench/http.sh [target/release/smtp-relay]
#
# For every round: start the relay (config: bench/lib.sh, plus a plain-HTTP [send_api] on
# loopback), add a project and an RSA-2048 DKIM key, then run examples/loadgen.rs twice against
# it — SMTP (STARTTLS + AUTH, a new connection per message) and HTTP (`POST /emails`, bearer
# token, keep-alive) — same clients, messages, size, sender (DKIM-signed), same in-process sink
# as the upstream. Prints one line per run: end-to-end msg/s, submit p50 and p99.
#
# Knobs: ROUNDS (3) CLIENTS (16) MESSAGES (3000) SIZE (4096) FROM (bench@dkim.example)
# PER_CONN (1: SMTP messages per connection; HTTP always keeps its connections). No root.
set -euo pipefail

BIN=${1:-target/release/smtp-relay}
ROUNDS=${ROUNDS:-3}
FROM=${FROM:-bench@dkim.example}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
(cd "$REPO" && cargo build -q --release --example loadgen --bin smtp-relay)
LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen
SINK=127.0.0.1:29999 # ports below the ephemeral range, as in compare.sh

W=$(mktemp -d /tmp/smtp-http.XXXXXX)
RELAY_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

make_certs "$W"
write_relay_config "$W/smtp-relay.toml" "$W/state" "$W" 0 29587 29465 true "${SINK##*:}"
printf '\n[send_api]\naddress = "127.0.0.1:29080"\n' >>"$W/smtp-relay.toml"

report() {
    python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
e, p50, p99 = d["e2e_mps"], d["p50_ms"], d["p99_ms"]
ok, n, err = d["delivered"], d["messages"], d["errors"]
print(f"{sys.argv[1]:<5} round {sys.argv[2]}  e2e {e:7.1f} msg/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  delivered {ok}/{n}  errors {err}")
' "$1" "$2"
}

for round in $(seq "$ROUNDS"); do
    for proto in smtp http; do
        rm -rf "$W/state"
        relay_start "$BIN" "$W/smtp-relay.toml" "$W/state" "$W/server.log"
        relay_setup_project "$BIN" "$W/smtp-relay.toml"
        relay_setup_dkim "$BIN" "$W/smtp-relay.toml"
        if [ "$proto" = http ]; then
            target=(--addr 127.0.0.1:29080 --http)
        else
            target=(--addr 127.0.0.1:29587 --mode starttls --ca "$W/ca.pem" --user "$RELAY_USER"
                --per-conn "${PER_CONN:-1}")
        fi
        LOADGEN_PASS=$RELAY_PASS "$LOADGEN" run "${target[@]}" --clients "${CLIENTS:-16}" \
            --messages "${MESSAGES:-3000}" --size "${SIZE:-4096}" --from "$FROM" --sink "$SINK" \
            --max-secs 300 --label "$proto" 2>/dev/null | head -1 | report "$proto" "$round"
        kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=
    done
done
