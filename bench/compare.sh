#!/usr/bin/env bash
# smtp-relay vs Postfix, side by side, on this machine, in one run (see BENCHMARKS.md).
#
# Starts a private Postfix (config, queue and data under a temp dir, 127.0.0.1 high ports only,
# Cyrus SASL sasldb, STARTTLS / implicit TLS / plaintext listeners, relayhost = the sink, OpenDKIM
# milter over a Unix socket for the DKIM listener) and private smtp-relay instances, then runs the
# same load generator (examples/loadgen.rs, or bench/pygen.py with GENERATOR=aiosmtplib) against
# each, alternately, ROUNDS times per case, and prints medians and ratios — msg/s, p99 and the
# server's CPU per delivered message (utime+stime of the relay process, or of Postfix's whole
# process tree plus OpenDKIM, from the first connection until the sink holds every message: the
# figure that moves least with machine noise). Every process it starts is stopped by PID on exit.
#
# Must run as root (Postfix's master and OpenDKIM drop privileges themselves).
# Knobs (environment): ROUNDS CLIENTS MESSAGES SIZE CASES PER_CONNS EXTRAS KEEP
#   CASES:     plain starttls implicit dkim
#   PER_CONNS: messages per connection, e.g. "1 10"
#   EXTRAS:    durable idle bigmsg   (cost of fsync, RSS at 1,000 idle TLS, peak RSS at 20 x 25 MiB)
#   CERT_ALG:  rsa (default) or ecdsa: the key of the certificate both servers present
#   NO_RESUME: 1 = the generator never resumes TLS sessions (a full handshake per connection)
#   RELAY_BIN and LOADGEN (both): binaries built earlier, instead of building the tree now
#   GENERATOR: loadgen (default) or aiosmtplib: bench/pygen.py (Python asyncio + aiosmtplib, the
#              AIOSMTPLIB_VERSION below, pip-installed into BENCH_VENV=target/bench-venv) sends the
#              load instead, for every case and PER_CONNS (EXTRAS idle still opens its sessions with
#              loadgen); loadgen's sink runs as `loadgen sink --token` beside it. Python's ssl never
#              resumes a session here (a full handshake per connection): compare with NO_RESUME=1.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
MESSAGES=${MESSAGES:-1000}
SIZE=${SIZE:-4096}
CASES=${CASES:-"plain starttls implicit dkim"}
PER_CONNS=${PER_CONNS:-"1 10"}
EXTRAS=${EXTRAS:-"durable idle bigmsg"}
IDLE_CONNS=${IDLE_CONNS:-1000}
BIG_CLIENTS=${BIG_CLIENTS:-20}
BIG_SIZE=${BIG_SIZE:-26214400}
MAX_SECS=${MAX_SECS:-600}
GENERATOR=${GENERATOR:-loadgen}
AIOSMTPLIB_VERSION=5.1.3

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# Every fixed port is below 32768: Linux hands out 32768-60999 as ephemeral ports, and one of the
# generator's thousands of client connections (or its TIME_WAIT) can hold a port in that range.
SINK=127.0.0.1:31999
PF_PLAIN=31025 PF_STARTTLS=31587 PF_IMPLICIT=31465 PF_DKIM=31588
RL_PLAIN=32025 RL_STARTTLS=32587 RL_IMPLICIT=32465
RN_STARTTLS=30587 # the no-fsync relay (implicit TLS on the next port)
RM_IMPLICIT=30465 RM_STARTTLS=30466 # the relay used for memory figures

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (Postfix and OpenDKIM need it to drop privileges)"
case $GENERATOR in
loadgen | aiosmtplib) ;;
*) die "GENERATOR must be loadgen or aiosmtplib, not '$GENERATOR'" ;;
esac
BENCH_VENV=${BENCH_VENV:-$REPO/target/bench-venv}

# --- tools -------------------------------------------------------------------------------
need=()
command -v postfix >/dev/null || need+=(postfix)
command -v saslpasswd2 >/dev/null || need+=(sasl2-bin)
[ -e /usr/lib/x86_64-linux-gnu/sasl2/libsasldb.so ] || ls /usr/lib/*/sasl2/libplain.so >/dev/null 2>&1 || need+=(libsasl2-modules)
command -v opendkim >/dev/null || need+=(opendkim)
command -v opendkim-genkey >/dev/null || need+=(opendkim-tools)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
# Debian's python3 makes venvs only with python3-venv (ensurepip).
[ "$GENERATOR" = aiosmtplib ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null && need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" libsasl2-modules >/dev/null
fi

# The Python generator's one dependency, pinned, in a venv of its own (kept between runs).
if [ "$GENERATOR" = aiosmtplib ] && ! "$BENCH_VENV/bin/python" -c \
    "import sys, aiosmtplib; sys.exit(aiosmtplib.__version__ != '$AIOSMTPLIB_VERSION')" 2>/dev/null; then
    say "installing aiosmtplib==$AIOSMTPLIB_VERSION into $BENCH_VENV"
    python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check "aiosmtplib==$AIOSMTPLIB_VERSION"
    chown -R --reference="$REPO" "$BENCH_VENV" # not root's in the user's tree
fi

if [ -n "${RELAY_BIN:-}" ] && [ -n "${LOADGEN:-}" ]; then
    say "using $RELAY_BIN and $LOADGEN as built"
else
    say "building smtp-relay and the load generator (release)"
    (cd "$REPO" && cargo build -q --release --bin smtp-relay --example loadgen)
    RELAY_BIN=$CARGO_TARGET_DIR/release/smtp-relay
    LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen
fi

# --- scratch dir and cleanup -------------------------------------------------------------
W=$(mktemp -d /tmp/smtp-bench.XXXXXX)
chmod 755 "$W"
OUT=${OUT:-$W/results.jsonl}
PIDS=()
PF_CONF=$W/postfix
cleanup() {
    set +e
    if [ -f "$W/pf-queue/pid/master.pid" ]; then
        postfix -c "$PF_CONF" stop >/dev/null 2>&1
        local mp
        mp=$(tr -d ' ' <"$W/pf-queue/pid/master.pid")
        for _ in $(seq 50); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
        kill "$mp" 2>/dev/null
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$W"; else say "kept $W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One certificate for both servers, so TLS costs the same key operations on each side.
make_certs "$W"

PASS=bench-$(openssl rand -hex 12)

# --- Postfix -----------------------------------------------------------------------------
start_postfix() {
    # Debian's smtpd reads <config_directory>/sasl/smtpd.conf whatever cyrus_sasl_config_path says.
    mkdir -p "$PF_CONF/sasl" "$W/pf-queue" "$W/pf-data" "$W/opendkim"
    chown postfix "$W/pf-data"
    cat >"$PF_CONF/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $W/sasldb2
EOF
    printf '%s' "$PASS" | saslpasswd2 -p -c -f "$W/sasldb2" -u bench.example bench
    chown postfix "$W/sasldb2"
    local milter="unix:$W/opendkim/opendkim.sock"
    cat >"$PF_CONF/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $W/pf-queue
data_directory = $W/pf-data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydomain = bench
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks =
relayhost = [127.0.0.1]:${SINK##*:}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $PF_CONF/sasl
smtpd_tls_cert_file = $W/cert.pem
smtpd_tls_key_file = $W/key.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_session_cache_database = btree:\$data_directory/smtpd_scache
smtp_tls_security_level = none
maillog_file = $W/postfix.log
maillog_file_prefixes = $W
biff = no
default_process_limit = 200
EOF
    local opts="-o smtpd_sasl_auth_enable=yes"
    cat >"$PF_CONF/master.cf" <<EOF
127.0.0.1:$PF_PLAIN inet n - n - - smtpd $opts -o smtpd_tls_security_level=none -o smtpd_tls_auth_only=no
127.0.0.1:$PF_STARTTLS inet n - n - - smtpd $opts -o smtpd_tls_security_level=encrypt
127.0.0.1:$PF_IMPLICIT inet n - n - - smtpd $opts -o smtpd_tls_wrappermode=yes
127.0.0.1:$PF_DKIM inet n - n - - smtpd $opts -o smtpd_tls_security_level=encrypt -o smtpd_milters=$milter
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    # OpenDKIM: same key type and size as the relay's (RSA 2048), relaxed/simple like mail-auth.
    opendkim-genkey -b 2048 -d dkim.example -s bench -D "$W/opendkim"
    chown -R postfix "$W/opendkim"
    cat >"$W/opendkim/opendkim.conf" <<EOF
Syslog no
Mode s
Domain dkim.example
Selector bench
KeyFile $W/opendkim/bench.private
Socket local:$W/opendkim/opendkim.sock
UserID postfix
Canonicalization relaxed/simple
RequireSafeKeys false
EOF
    opendkim -f -x "$W/opendkim/opendkim.conf" 2>"$W/opendkim.log" &
    OPENDKIM_PID=$!
    PIDS+=("$OPENDKIM_PID")
    postfix -c "$PF_CONF" check
    postfix -c "$PF_CONF" start 2>"$W/postfix-start.log" || { cat "$W/postfix-start.log" >&2; die "postfix did not start"; }
    for _ in $(seq 100); do
        [ -S "$W/opendkim/opendkim.sock" ] && [ -f "$W/pf-queue/pid/master.pid" ] && return 0
        sleep 0.1
    done
    die "postfix or opendkim did not come up (see $W/postfix.log, $W/opendkim.log)"
}

# --- smtp-relay --------------------------------------------------------------------------
# relay_config NAME PLAIN_PORT STARTTLS_PORT IMPLICIT_PORT DURABLE
relay_config() {
    local d=$W/$1
    mkdir -p "$d"
    write_relay_config "$d/smtp-relay.toml" "$d/state" "$W" "$2" "$3" "$4" "$5" "${SINK##*:}"
}

# relay_start NAME  -> sets RELAY_PID
relay_start() {
    local d=$W/$1
    rm -f "$d/state/listeners.json"
    SMTP_RELAY_LOG=warn "$RELAY_BIN" --config "$d/smtp-relay.toml" serve 2>>"$d/server.log" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    for _ in $(seq 300); do
        [ -f "$d/state/listeners.json" ] && return 0
        kill -0 "$RELAY_PID" 2>/dev/null || { cat "$d/server.log" >&2; die "smtp-relay $1 exited"; }
        sleep 0.1
    done
    die "smtp-relay $1 did not start"
}

relay_stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# relay_project NAME -> sets RELAY_USER RELAY_PASS (runs the CLI against the running server)
relay_project() { relay_setup_project "$RELAY_BIN" "$W/$1/smtp-relay.toml"; }
relay_dkim() { relay_setup_dkim "$RELAY_BIN" "$W/$1/smtp-relay.toml"; }

rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# cpu_ticks PID... : utime+stime (clock ticks) of each PID and every live descendant, plus the
# children each of them has already reaped (cutime+cstime). Postfix's master reaps its smtpd,
# cleanup, qmgr and smtp children as they exit, so their CPU stays in the sum either way; the
# relay is one process (its threads are in its own stat). Taken before and after a load, the
# difference is what the server spent on it.
cpu_ticks() {
    python3 - "$@" <<'PY'
import os, sys
stat = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # after the comm field: state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        stat[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
children = {}
for pid, (ppid, _) in stat.items():
    children.setdefault(ppid, []).append(pid)
seen, todo, total = set(), [int(p) for p in sys.argv[1:]], 0
while todo:
    pid = todo.pop()
    if pid in seen or pid not in stat:
        continue
    seen.add(pid)
    total += stat[pid][1]
    todo.extend(children.get(pid, []))
print(total)
PY
}

# The processes whose CPU counts as the server's for SYSTEM: the relay instance under load, or
# Postfix's master (its whole tree: smtpd, cleanup, qmgr, smtp, tlsmgr, ...) plus OpenDKIM.
server_pids() {
    case $1 in
    postfix) echo "$(tr -d ' ' <"$W/pf-queue/pid/master.pid") $OPENDKIM_PID" ;;
    *) echo "$LOAD_RELAY_PID" ;;
    esac
}

# --- the load ----------------------------------------------------------------------------
# load SYSTEM CASE PER_CONN ROUND PORT USER PASS FROM [extra loadgen args]
load() {
    local system=$1 case=$2 per=$3 round=$4 port=$5 user=$6 pass=$7 from=$8
    shift 8
    local mode=starttls
    case $case in plain) mode=plain ;; implicit) mode=implicit ;; esac
    local line pids c0 c1 gen
    if [ "$GENERATOR" = aiosmtplib ]; then
        [ $# -eq 0 ] || die "GENERATOR=aiosmtplib does not take loadgen's arguments ($*)"
        gen=("$BENCH_VENV/bin/python" "$REPO/bench/pygen.py" --loadgen "$LOADGEN")
    else
        gen=("$LOADGEN" run)
        if [ -n "${NO_RESUME:-}" ]; then gen+=(--no-resume); fi
    fi
    # shellcheck disable=SC2086 # a list of PIDs
    pids=$(server_pids "$system")
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    line=$(LOADGEN_PASS=$pass "${gen[@]}" --addr "127.0.0.1:$port" --mode "$mode" \
        --ca "$W/ca.pem" --user "$user" --clients "$CLIENTS" --messages "$MESSAGES" \
        --size "$SIZE" --per-conn "$per" --from "$from" --sink "$SINK" --max-secs "$MAX_SECS" \
        --label "$system/$case/$per" "$@")
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    printf '%s\n' "$line" | python3 -c '
import json, os, sys
r = json.loads(sys.stdin.read())
r.update(system=sys.argv[1], case=sys.argv[2], round=int(sys.argv[3]))
# Server CPU (utime+stime) from the first connection until the sink held every message.
cpu_ms = (int(sys.argv[5]) - int(sys.argv[4])) * 1000 / os.sysconf("SC_CLK_TCK")
r.update(server_cpu_ms=cpu_ms, cpu_ms_per_msg=cpu_ms / max(r["delivered"], 1))
print(json.dumps(r))' "$system" "$case" "$round" "$c0" "$c1" >>"$OUT"
}

say "work dir $W; results in $OUT"
say "generator: $GENERATOR"
say "machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
start_postfix
relay_config relay "$RL_PLAIN" "$RL_STARTTLS" "$RL_IMPLICIT" true
relay_start relay
MAIN_RELAY=$RELAY_PID
relay_project relay
relay_dkim relay

pf_port() { case $1 in plain) echo $PF_PLAIN ;; starttls) echo $PF_STARTTLS ;; implicit) echo $PF_IMPLICIT ;; dkim) echo $PF_DKIM ;; esac; }
rl_port() { case $1 in plain) echo $RL_PLAIN ;; implicit) echo $RL_IMPLICIT ;; *) echo $RL_STARTTLS ;; esac; }
from_for() { [ "$1" = dkim ] && echo bench@dkim.example || echo bench@bench.example; }

for round in $(seq "$ROUNDS"); do
    for case in $CASES; do
        for per in $PER_CONNS; do
            from=$(from_for "$case")
            load postfix "$case" "$per" "$round" "$(pf_port "$case")" bench@bench.example "$PASS" "$from"
            LOAD_RELAY_PID=$MAIN_RELAY load smtp-relay "$case" "$per" "$round" "$(rl_port "$case")" "$RELAY_USER" "$RELAY_PASS" "$from"
        done
    done
done

if [[ " $EXTRAS " == *" durable "* ]]; then
    relay_config relay-nofsync 0 "$RN_STARTTLS" $((RN_STARTTLS + 1)) false
    relay_start relay-nofsync
    NOFSYNC=$RELAY_PID
    DURABLE_USER=$RELAY_USER DURABLE_PASS=$RELAY_PASS
    relay_project relay-nofsync
    for round in $(seq "$ROUNDS"); do
        LOAD_RELAY_PID=$MAIN_RELAY load smtp-relay "fsync:durable" 1 "$round" "$RL_STARTTLS" "$DURABLE_USER" "$DURABLE_PASS" bench@bench.example
        LOAD_RELAY_PID=$NOFSYNC load smtp-relay "fsync:no-fsync" 1 "$round" "$RN_STARTTLS" "$RELAY_USER" "$RELAY_PASS" bench@bench.example
    done
    relay_stop "$NOFSYNC"
fi
relay_stop "$MAIN_RELAY"

MEM=$W/memory.txt
: >"$MEM"
if [[ " $EXTRAS " == *" idle "* ]]; then
    relay_config relay-mem 0 "$RM_STARTTLS" "$RM_IMPLICIT" true
    relay_start relay-mem
    sleep 1
    base=$(rss_kib "$RELAY_PID" VmRSS)
    "$LOADGEN" idle --addr "127.0.0.1:$RM_IMPLICIT" --mode implicit --ca "$W/ca.pem" \
        --connections "$IDLE_CONNS" --hold-secs 600 >"$W/idle.out" &
    IDLE_PID=$!
    PIDS+=("$IDLE_PID")
    for _ in $(seq 1200); do grep -q ready "$W/idle.out" 2>/dev/null && break; sleep 0.1; done
    sleep 2
    held=$(rss_kib "$RELAY_PID" VmRSS)
    echo "idle: baseline ${base} KiB; with $(cut -d' ' -f2 "$W/idle.out") idle implicit-TLS connections after EHLO: ${held} KiB" | tee -a "$MEM" >&2
    kill "$IDLE_PID"; wait "$IDLE_PID" 2>/dev/null || true
    relay_stop "$RELAY_PID"
fi

if [[ " $EXTRAS " == *" bigmsg "* ]]; then
    relay_config relay-mem 0 "$RM_STARTTLS" "$RM_IMPLICIT" true
    rm -rf "$W/relay-mem/state"
    relay_start relay-mem
    relay_project relay-mem
    LOAD_RELAY_PID=$RELAY_PID CLIENTS=$BIG_CLIENTS MESSAGES=$BIG_CLIENTS SIZE=$((BIG_SIZE - 4096)) \
        load smtp-relay "bigmsg" 1 1 "$RM_STARTTLS" "$RELAY_USER" "$RELAY_PASS" bench@bench.example
    hwm=$(rss_kib "$RELAY_PID" VmHWM)
    sleep 1
    after=$(rss_kib "$RELAY_PID" VmRSS)
    echo "bigmsg: $BIG_CLIENTS clients x $((BIG_SIZE / 1048576)) MiB at once: relay peak RSS (VmHWM) ${hwm} KiB, ${after} KiB once delivered (message_memory_mb = 128)" | tee -a "$MEM" >&2
    relay_stop "$RELAY_PID"
fi

python3 "$REPO/bench/report.py" "$OUT" "$MEM"
[ -n "${KEEP:-}" ] || cp "$OUT" "${RESULTS_COPY:-/tmp/smtp-bench-results.jsonl}"
