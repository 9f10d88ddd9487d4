#!/usr/bin/env bash
# Where the relay's CPU goes under load: a perf profile and a flamegraph.
#
#   bench/profile.sh                     # STARTTLS+AUTH+DKIM, 16 clients, 4,000 messages
#   MODE=plain FROM=bench@bench.example bench/profile.sh
#
# Builds smtp-relay with frame pointers (so perf's call stacks are complete; its own target dir,
# FP_TARGET_DIR, default target/fp), starts it on 127.0.0.1 with compare.sh's config (bench/lib.sh:
# durable ack, 16 delivery workers, the generator's in-process sink as upstream), adds a project
# and an RSA-2048 DKIM key, then runs examples/loadgen.rs while `perf record -F 1999 -g -p <relay>`
# samples the relay only. The profiler slows the run; compare shares, not rates.
#
# Writes to OUT (default /tmp/smtp-relay-profile): perf.data, top.txt (self time by symbol),
# callers.txt (inclusive time by symbol), flamegraph.svg (inferno; installed into
# target/tools with `cargo install` if missing — set FLAMEGRAPH=0 to skip), loadgen.json.
#
# Knobs: MODE (starttls|implicit|plain) FROM (bench@dkim.example signs, bench@bench.example does not)
# CLIENTS (16) MESSAGES (4000) SIZE (4096) PER_CONN (1). Needs perf (Debian: linux-perf) and
# permission to profile another process (root, or kernel.perf_event_paranoid <= 1).
set -euo pipefail

MODE=${MODE:-starttls}
FROM=${FROM:-bench@dkim.example}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/smtp-relay-profile}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

die() { printf 'profile.sh: %s\n' "$*" >&2; exit 1; }
if ! command -v perf >/dev/null; then
    [ "$(id -u)" = 0 ] || die "perf is missing (Debian: apt-get install linux-perf)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
FP_TARGET_DIR=${FP_TARGET_DIR:-$REPO/target/fp}
(cd "$REPO" && cargo build -q --release --example loadgen)
(cd "$REPO" && CARGO_TARGET_DIR=$FP_TARGET_DIR RUSTFLAGS="-C force-frame-pointers=yes" \
    cargo build -q --release --bin smtp-relay)
LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen
RELAY=$FP_TARGET_DIR/release/smtp-relay

mkdir -p "$OUT"
W=$(mktemp -d /tmp/smtp-profile.XXXXXX)
RELAY_PID=
PERF_PID=
cleanup() {
    [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null && wait "$PERF_PID" 2>/dev/null
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

# Ports below the ephemeral range, distinct from compare.sh's and ab.sh's.
SINK=127.0.0.1:28999
make_certs "$W"
write_relay_config "$W/smtp-relay.toml" "$W/state" "$W" 28025 28587 28465 true "${SINK##*:}"
case $MODE in plain) PORT=28025 ;; implicit) PORT=28465 ;; *) PORT=28587 ;; esac

SMTP_RELAY_LOG=warn "$RELAY" --config "$W/smtp-relay.toml" serve 2>>"$W/server.log" &
RELAY_PID=$!
for _ in $(seq 100); do [ -f "$W/state/listeners.json" ] && break; sleep 0.1; done
[ -f "$W/state/listeners.json" ] || die "the relay did not start: $(tail -3 "$W/server.log")"
relay_setup_project "$RELAY" "$W/smtp-relay.toml"
relay_setup_dkim "$RELAY" "$W/smtp-relay.toml"

perf record -q -F 1999 -g -o "$OUT/perf.data" -p "$RELAY_PID" 2>>"$W/perf.log" &
PERF_PID=$!
sleep 1
LOADGEN_PASS=$RELAY_PASS "$LOADGEN" run --addr "127.0.0.1:$PORT" --mode "$MODE" \
    --ca "$W/ca.pem" --user "$RELAY_USER" --clients "${CLIENTS:-16}" --messages "${MESSAGES:-4000}" \
    --size "${SIZE:-4096}" --per-conn "${PER_CONN:-1}" --from "$FROM" --sink "$SINK" \
    --max-secs 300 --label profile 2>/dev/null | head -1 >"$OUT/loadgen.json"
kill -INT "$PERF_PID"
wait "$PERF_PID" 2>/dev/null || true
PERF_PID=

perf report -i "$OUT/perf.data" --no-children --sort sym -q -g none 2>/dev/null | sed -n 1,60p >"$OUT/top.txt"
perf report -i "$OUT/perf.data" --children --sort sym -q -g none 2>/dev/null | sed -n 1,150p >"$OUT/callers.txt"

if [ "${FLAMEGRAPH:-1}" != 0 ]; then
    TOOLS=$CARGO_TARGET_DIR/tools
    if ! [ -x "$TOOLS/bin/inferno-flamegraph" ]; then
        cargo install -q --locked inferno --version 0.12.8 --root "$TOOLS"
    fi
    perf script -i "$OUT/perf.data" 2>/dev/null | "$TOOLS/bin/inferno-collapse-perf" \
        | "$TOOLS/bin/inferno-flamegraph" --title "smtp-relay, $MODE, from $FROM" >"$OUT/flamegraph.svg"
fi

python3 - "$OUT/loadgen.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"run under the profiler: {d['delivered']}/{d['messages']} delivered, "
      f"{d['e2e_mps']:.1f} msg/s, p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms")
PY
echo "self time by symbol (top 15; all in $OUT/top.txt, inclusive in $OUT/callers.txt):"
head -15 "$OUT/top.txt"
[ -f "$OUT/flamegraph.svg" ] && echo "flamegraph: $OUT/flamegraph.svg"
