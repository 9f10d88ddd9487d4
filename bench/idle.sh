#!/usr/bin/env bash
# Resident memory of smtp-relay binaries holding idle TLS sessions, side by side.
#
#   bench/idle.sh target/release/smtp-relay /tmp/smtp-relay-before
#
# For every round and binary: start the relay on 127.0.0.1 high ports (bench/lib.sh's config),
# note its RSS, open CONNS implicit-TLS connections with examples/loadgen.rs `idle` (each gets as
# far as the post-TLS EHLO, then waits), note the RSS again, stop both. Prints the RSS before and
# with the connections, and the difference per connection. Loopback only, bounded, no root.
#
# Knobs: ROUNDS (2) CONNS (1000) CERT_ALG (rsa|ecdsa).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: bench/idle.sh BIN [BIN...]" >&2; exit 2; }
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-1000}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
LOADGEN=${LOADGEN:-$CARGO_TARGET_DIR/release/examples/loadgen}
[ -x "$LOADGEN" ] || (cd "$REPO" && cargo build -q --release --example loadgen)

W=$(mktemp -d /tmp/smtp-idle.XXXXXX)
RELAY_PID= IDLE_PID=
cleanup() {
    [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null && wait "$IDLE_PID" 2>/dev/null
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

make_certs "$W"
# 29xxx as in ab.sh (below the ephemeral range); the sink port is unused here.
write_relay_config "$W/smtp-relay.toml" "$W/state" "$W" 0 29588 29466 true 29998
rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }

for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        rm -rf "$W/state"
        relay_start "$bin" "$W/smtp-relay.toml" "$W/state" "$W/server.log"
        sleep 1
        base=$(rss_kib "$RELAY_PID")
        : >"$W/idle.out"
        "$LOADGEN" idle --addr 127.0.0.1:29466 --mode implicit --ca "$W/ca.pem" \
            --connections "$CONNS" --hold-secs 120 >"$W/idle.out" 2>/dev/null &
        IDLE_PID=$!
        for _ in $(seq 1200); do grep -q ready "$W/idle.out" && break; sleep 0.1; done
        sleep 2
        held=$(rss_kib "$RELAY_PID")
        open=$(cut -d' ' -f2 "$W/idle.out")
        kill "$IDLE_PID"; wait "$IDLE_PID" 2>/dev/null || true
        IDLE_PID=
        kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=
        printf '%-40s round %s  baseline %6d KiB  with %s idle TLS sessions %6d KiB (%.1f MiB)  %.1f KiB/session\n' \
            "$bin" "$round" "$base" "$open" "$held" "$(echo "$held / 1024" | bc -l)" \
            "$(echo "($held - $base) / ${open:-1}" | bc -l)"
    done
done
