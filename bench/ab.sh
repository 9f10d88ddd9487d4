#!/usr/bin/env bash
# A/B two (or more) smtp-relay binaries under the same load, alternately, fresh state each run.
#
#   bench/ab.sh target/release/smtp-relay /tmp/smtp-relay-before
#
# For every round and binary: start the relay on 127.0.0.1 high ports (same config as
# compare.sh: durable ack, 16 delivery workers, upstream = the generator's in-process sink), add a
# project and an RSA-2048 DKIM key, run examples/loadgen.rs, stop it (config: bench/lib.sh). Prints one line per run:
# binary, end-to-end msg/s, p50 ms, p99 ms, and the relay's CPU (utime+stime) per delivered
# message — the cost, which moves much less with machine noise than the rate does.
#
# Knobs: ROUNDS (3) MODE (starttls|implicit|plain) FROM (bench@dkim.example signs, bench@bench.example
# does not) CLIENTS (16) MESSAGES (3000) SIZE (4096) PER_CONN (1) CERT_ALG (rsa|ecdsa, the server
# certificate's key) NO_RESUME (1: the generator never resumes a TLS session, every connection is a
# full handshake) LOADGEN (a prebuilt examples/loadgen). No root needed.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: bench/ab.sh BIN [BIN...]" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
MODE=${MODE:-starttls}
FROM=${FROM:-bench@dkim.example}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# LOADGEN: a generator built earlier (say, while the tree is mid-change); else build it now.
if [ -z "${LOADGEN:-}" ]; then
    (cd "$REPO" && cargo build -q --release --example loadgen)
    LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen
fi
SINK=127.0.0.1:29999 # ports below the ephemeral range, as in compare.sh

W=$(mktemp -d /tmp/smtp-ab.XXXXXX)
RELAY_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

make_certs "$W"
write_relay_config "$W/smtp-relay.toml" "$W/state" "$W" 29025 29587 29465 true "${SINK##*:}"

port() { case $MODE in plain) echo 29025 ;; implicit) echo 29465 ;; *) echo 29587 ;; esac; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        rm -rf "$W/state"
        relay_start "$bin" "$W/smtp-relay.toml" "$W/state" "$W/server.log"
        relay_setup_project "$bin" "$W/smtp-relay.toml"
        relay_setup_dkim "$bin" "$W/smtp-relay.toml"
        c0=$(cpu_ticks "$RELAY_PID")
        line=$(LOADGEN_PASS=$RELAY_PASS "$LOADGEN" run --addr "127.0.0.1:$(port)" --mode "$MODE" \
            --ca "$W/ca.pem" --user "$RELAY_USER" --clients "${CLIENTS:-16}" --messages "${MESSAGES:-3000}" \
            --size "${SIZE:-4096}" --per-conn "${PER_CONN:-1}" --from "$FROM" --sink "$SINK" \
            --max-secs 300 --label ab ${NO_RESUME:+--no-resume} 2>/dev/null | head -1)
        c1=$(cpu_ticks "$RELAY_PID")
        kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=
        printf '%s\n' "$line" | python3 -c '
import json, sys, os
d = json.loads(sys.stdin.read())
ticks = int(sys.argv[2]) - int(sys.argv[1])
hz = os.sysconf("SC_CLK_TCK")
per = ticks * 1000 / hz / max(d["delivered"], 1)
print(f"{sys.argv[3]:<40} round {sys.argv[4]}  e2e {d['"'"'e2e_mps'"'"']:7.1f} msg/s  p50 {d['"'"'p50_ms'"'"']:6.1f} ms  p99 {d['"'"'p99_ms'"'"']:6.1f} ms  relay CPU {per:.3f} ms/msg")
' "$c0" "$c1" "$bin" "$round"
    done
done
