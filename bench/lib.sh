# Shared by bench/compare.sh and bench/ab.sh (sourced, not run).

# make_certs DIR: a private CA (DIR/ca.pem) and a leaf for localhost/127.0.0.1 (DIR/cert.pem,
# DIR/key.pem). rustls refuses a self-signed CA certificate as a server certificate.
# CERT_ALG=rsa (default, RSA-2048) or ecdsa (P-256): the leaf's key, whose signature is the
# server's main cost in a full TLS handshake.
make_certs() {
    local w=$1 leaf_key
    case ${CERT_ALG:-rsa} in
    rsa) leaf_key=(-newkey rsa:2048) ;;
    ecdsa) leaf_key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    *) echo "make_certs: CERT_ALG must be rsa or ecdsa" >&2; return 2 ;;
    esac
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$w/ca-key.pem" -out "$w/ca.pem" -days 2 \
        -subj /CN=bench-ca 2>/dev/null
    openssl req "${leaf_key[@]}" -nodes -keyout "$w/key.pem" -out "$w/leaf.csr" -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$w/leaf.ext"
    openssl x509 -req -in "$w/leaf.csr" -CA "$w/ca.pem" -CAkey "$w/ca-key.pem" -CAcreateserial \
        -out "$w/cert.pem" -days 2 -extfile "$w/leaf.ext" 2>/dev/null
    chmod 644 "$w/key.pem"
}

# write_relay_config FILE STATE_DIR CERT_DIR PLAIN_PORT STARTTLS_PORT IMPLICIT_PORT DURABLE SINK_PORT
# The relay under test: durable ack unless DURABLE=false, 16 delivery workers, the upstream is the
# generator's sink without TLS. PLAIN_PORT 0: no plaintext listener.
write_relay_config() {
    local file=$1 state=$2 certs=$3 plain_port=$4 starttls=$5 implicit=$6 durable=$7 sink=$8
    local plain=""
    [ "$plain_port" != 0 ] && plain="[[listener]]
address = \"127.0.0.1:$plain_port\"
mode = \"plain\"
allow_plaintext_auth = true"
    cat >"$file" <<CONF
[server]
hostname = "relay.bench"
state_dir = "$state"
max_connections = 4000
max_message_size = 27262976
max_recipients = 10
durable_ack = $durable
min_free_space_mb = 64

[timeouts]
tls_handshake_secs = 10
command_secs = 300
data_secs = 300

[tls]
cert_file = "$certs/cert.pem"
key_file = "$certs/key.pem"

$plain

[[listener]]
address = "127.0.0.1:$starttls"
mode = "starttls"

[[listener]]
address = "127.0.0.1:$implicit"
mode = "implicit"

[queue]
workers = 16
retry_schedule_secs = [1, 2, 5]
max_age_secs = 3600
poll_interval_ms = 100

[delivery]
default_route = "sink"

[upstream.sink]
type = "smtp"
host = "127.0.0.1"
port = $sink
tls = "none"
auth = "none"

# The built-in per-project and per-IP protections would cap the load generator (one project,
# one IP, thousands of connections): off for the benchmarks.
[limits]
per_second = 0
max_connections = 0

[throttle]
max_connections_per_ip = 0
connections_per_ip_per_minute = 0

# No periodic domain re-check: it would ask the system resolver, off this machine.
[dns]
recheck_secs = 0
CONF
}

# relay_setup_project BIN CONFIG: adds the project `bench` (bench.example, dkim.example) to the
# running relay and sets RELAY_USER and RELAY_PASS.
relay_setup_project() {
    local json
    json=$("$1" --config "$2" project add bench --domain bench.example --domain dkim.example --json)
    RELAY_USER=$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["project"]["id"])')
    RELAY_PASS=$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
}

# relay_setup_dkim BIN CONFIG: an active RSA-2048 key for dkim.example (the DKIM case's sender).
# DKIM_ALG=ed25519 for an Ed25519 key instead (rsa by default, as receivers expect today).
relay_setup_dkim() {
    "$1" --config "$2" dkim keygen --domain dkim.example --selector bench --algorithm "${DKIM_ALG:-rsa}" \
        --activate --json >/dev/null
}

# relay_start BIN CONFIG STATE_DIR LOG: starts `BIN serve` in the background (warn-level log
# appended to LOG), sets RELAY_PID, and returns once its listeners are bound (listeners.json);
# exits with the log's tail if it never gets there.
relay_start() {
    SMTP_RELAY_LOG=warn "$1" --config "$2" serve 2>>"$4" &
    RELAY_PID=$!
    for _ in $(seq 100); do [ -f "$3/listeners.json" ] && return 0; sleep 0.1; done
    echo "the relay did not start; $4:" >&2
    tail -20 "$4" >&2
    exit 1
}
