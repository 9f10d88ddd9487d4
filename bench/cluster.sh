#!/usr/bin/env bash
# Cluster-mode overhead, end to end, on this machine:
#
#   bench/cluster.sh [BIN]        (default: target/release/smtp-relay, built if missing)
#
# Three set-ups under the same total load (examples/loadgen.rs: STARTTLS + AUTH, new connection
# per message, DKIM-signed, the generator's in-process sink as the upstream), alternated round
# by round with fresh state each run:
#   single   one node, no Redis (the embedded default)
#   redis1   one node with [cluster] on a local Redis (nodes = 1)
#   three    three nodes on 127.0.0.2/.3/.4 sharing that Redis, behind HAProxy on 127.0.0.1
#            (mode tcp, round robin, send-proxy-v2; the nodes take the PROXY header)
# Every set-up has the same project limits (high enough never to bind, so each message still
# pays for the shared rate check and each session for its lease). Prints per run: msg/s, p50,
# p99, and CPU per delivered message of the relays, of Redis and of HAProxy.
# On 2 shared cores the point is the overhead of sharing, not scaling: three nodes and the
# generator compete for the same two cores.
#
# Knobs: ROUNDS (3) CLIENTS (16) MESSAGES (3000) SIZE (4096). Needs redis-server and haproxy
# (scripts/test-packages.txt installs them). No root needed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$REPO/target/release/smtp-relay}
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
for cmd in redis-server haproxy; do
    command -v "$cmd" >/dev/null || { echo "bench/cluster.sh: $cmd missing: apt-get install redis-server haproxy" >&2; exit 1; }
done
[ -x "$BIN" ] || (cd "$REPO" && cargo build -q --release)
(cd "$REPO" && cargo build -q --release --example loadgen)
LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen
SINK=127.0.0.1:29999
FRONT=29587
REDIS_PORT=29379

W=$(mktemp -d /tmp/smtp-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

make_certs "$W"
head -c 48 /dev/urandom | base64 >"$W/server.secret"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }

# node_config FILE STATE IP CLUSTER(yes|no) NODE_ID PROXY(yes|no)
node_config() {
    local file=$1 state=$2 ip=$3 cluster=$4 id=$5 proxy=$6
    write_relay_config "$file" "$state" "$W" 0 29587 29465 true "${SINK##*:}"
    python3 - "$file" "$ip" "$proxy" <<'PY'
import sys
path, ip, proxy = sys.argv[1:]
text = open(path).read().replace('address = "127.0.0.1:', f'address = "{ip}:')
if proxy == "yes":
    for mode in ("starttls", "implicit"):
        text = text.replace(f'mode = "{mode}"\n',
                            f'mode = "{mode}"\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1"]\n')
# Limits that never bind, so every message pays for the rate check and every session for its
# lease, in all three set-ups.
text = text.replace("[limits]\nper_second = 0\nmax_connections = 0",
                    "[limits]\nper_second = 0\nper_minute = 10000000\nmax_connections = 100000")
open(path, "w").write(text)
PY
    # Every node the same server secret (token HMACs, sealed DKIM keys).
    sed -i "s|^state_dir = .*|&\nsecret_file = \"$W/server.secret\"|" "$file"
    if [ "$cluster" = yes ]; then
        cat >>"$file" <<CONF

[cluster]
redis_url = "redis://127.0.0.1:$REDIS_PORT"
node_id = "$id"
nodes = $NODES
heartbeat_secs = 1
reconcile_secs = 30
CONF
    fi
}

start_node() { # CONFIG STATE → pid in LAST_PID
    relay_start "$BIN" "$1" "$2" "$W/server.log"
    LAST_PID=$RELAY_PID
    PIDS+=("$LAST_PID")
}

start_redis() {
    rm -rf "$W/redis"; mkdir -p "$W/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$W/redis" --logfile "$W/redis/log" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT) 2>/dev/null && return; sleep 0.1; done
    echo "redis did not start" >&2; exit 1
}

start_haproxy() {
    cat >"$W/haproxy.cfg" <<CONF
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 2s
  timeout client 300s
  timeout server 300s
frontend f
  bind 127.0.0.1:$FRONT
  default_backend b
backend b
  balance roundrobin
  server n1 127.0.0.2:$FRONT send-proxy-v2
  server n2 127.0.0.3:$FRONT send-proxy-v2
  server n3 127.0.0.4:$FRONT send-proxy-v2
CONF
    haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=("$HAPROXY_PID")
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$FRONT) 2>/dev/null && return; sleep 0.1; done
    echo "haproxy did not start" >&2; cat "$W/haproxy.log" >&2; exit 1
}

stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

run_case() { # NAME ROUND
    local name=$1 round=$2 relays=() redis_pid="" haproxy_pid=""
    rm -rf "$W"/state* "$W"/*.toml
    case $name in
    single)
        NODES=1 node_config "$W/n1.toml" "$W/state1" 127.0.0.1 no n1 no
        start_node "$W/n1.toml" "$W/state1"; relays=("$LAST_PID")
        ;;
    redis1)
        start_redis; redis_pid=$REDIS_PID
        NODES=1 node_config "$W/n1.toml" "$W/state1" 127.0.0.1 yes n1 no
        start_node "$W/n1.toml" "$W/state1"; relays=("$LAST_PID")
        ;;
    three)
        start_redis; redis_pid=$REDIS_PID
        for i in 1 2 3; do
            NODES=3 node_config "$W/n$i.toml" "$W/state$i" "127.0.0.$((i + 1))" yes "n$i" yes
            start_node "$W/n$i.toml" "$W/state$i"; relays+=("$LAST_PID")
        done
        start_haproxy; haproxy_pid=$HAPROXY_PID
        ;;
    esac
    relay_setup_project "$BIN" "$W/n1.toml"
    relay_setup_dkim "$BIN" "$W/n1.toml"
    if [ "$name" = three ]; then
        # The project and the (sealed) DKIM key reach the other nodes through Redis.
        for i in 2 3; do
            for _ in $(seq 100); do [ -f "$W/state$i/dkim/dkim.example/bench.pem" ] && break; sleep 0.1; done
            [ -f "$W/state$i/dkim/dkim.example/bench.pem" ] || { echo "DKIM key never reached node $i" >&2; exit 1; }
        done
    fi
    local r0 x0=0 h0=0 r1 x1=0 h1=0 line
    r0=$(sum_ticks "${relays[@]}")
    [ -n "$redis_pid" ] && x0=$(cpu_ticks "$redis_pid")
    [ -n "$haproxy_pid" ] && h0=$(cpu_ticks "$haproxy_pid")
    line=$(LOADGEN_PASS=$RELAY_PASS "$LOADGEN" run --addr "127.0.0.1:$FRONT" --mode starttls \
        --ca "$W/ca.pem" --user "$RELAY_USER" --clients "${CLIENTS:-16}" --messages "${MESSAGES:-3000}" \
        --size "${SIZE:-4096}" --per-conn 1 --from bench@dkim.example --sink "$SINK" \
        --max-secs 300 --label "$name" 2>/dev/null | head -1)
    r1=$(sum_ticks "${relays[@]}")
    [ -n "$redis_pid" ] && x1=$(cpu_ticks "$redis_pid")
    [ -n "$haproxy_pid" ] && h1=$(cpu_ticks "$haproxy_pid")
    stop_all
    printf '%s\n' "$line" | python3 -c '
import json, sys, os
d = json.loads(sys.stdin.read())
name, rnd, r, x, h = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
hz = os.sysconf("SC_CLK_TCK")
n = max(d["delivered"], 1)
ms = lambda t: t * 1000 / hz / n
e2e, p50, p99 = d["e2e_mps"], d["p50_ms"], d["p99_ms"]
print(f"{name:<7} round {rnd}  delivered {n:5d}  e2e {e2e:7.1f} msg/s  p50 {p50:6.1f} ms  "
      f"p99 {p99:6.1f} ms  CPU/msg relays {ms(r):.3f} ms  redis {ms(x):.3f} ms  haproxy {ms(h):.3f} ms")
' "$name" "$round" "$((r1 - r0))" "$((x1 - x0))" "$((h1 - h0))"
}

echo "# bench/cluster.sh $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg) — $(nproc) cores"
for round in $(seq "$ROUNDS"); do
    for name in single redis1 three; do
        run_case "$name" "$round"
    done
done
