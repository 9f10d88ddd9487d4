#!/usr/bin/env bash
# Builds the Debian package and checks it on this machine, as an admin would use it:
#   install with dpkg -i (nothing enabled, nothing listening), files and permissions, the
#   generated server secret, `config check --skip-secrets` on the installed config, every man
#   page rendered by `man -l` without a warning, `smtp-relay serve` as the smtp-relay user
#   against the installed config with a test listener (and one mail sent through it with
#   Python's smtplib), an upgrade that keeps config, secret and state, a remove that keeps
#   them, and a purge that deletes them.
# `.ci/run` calls it after the tests. Needs root (or sudo): it installs a package. It refuses
# to run where smtp-relay is already installed, so it never purges a real installation.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
as_relay() {
  if [ -z "$SUDO" ]; then runuser -u smtp-relay -- "$@"; else sudo -u smtp-relay -- "$@"; fi
}
fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
ok() { echo "deb-check: ok: $*"; }

if [[ "$(dpkg-query -W -f '${Status}' smtp-relay 2>/dev/null || true)" == *" installed" ]]; then
  fail "smtp-relay is already installed here; deb-check installs and purges it (dpkg --purge smtp-relay first)"
fi
for cmd in man python3 systemd-sysusers; do
  command -v "$cmd" >/dev/null || fail "$cmd is missing (Debian packages man-db, python3, systemd)"
done

./scripts/build-deb.sh
deb=$(ls -t target/debian/smtp-relay_*.deb | head -n 1)
echo "== package $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

work=$(mktemp -d)
server_pid=""
installed=""
cleanup() {
  if [ -n "$server_pid" ]; then $SUDO kill "$server_pid" 2>/dev/null || true; sleep 1; fi
  # A failed check leaves no package behind (the next run would refuse to start).
  if [ -n "$installed" ]; then $SUDO dpkg --purge smtp-relay >/dev/null 2>&1 || true; fi
  $SUDO rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"

echo "== dpkg -i"
installed=1
$SUDO dpkg -i "$deb" | tee "$work/install.log"
grep -q "NOT enabled or started: nothing listens yet" "$work/install.log" \
  || fail "no post-install message saying nothing is enabled"

echo "== files and permissions"
check_mode() { # path mode owner:group
  local got
  got=$($SUDO stat -c '%a %U:%G' "$1") || fail "$1 is missing"
  [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
  ok "$1 $got"
}
getent passwd smtp-relay >/dev/null || fail "no smtp-relay user"
uid=$(id -u smtp-relay)
[ "$uid" -lt 1000 ] || fail "smtp-relay is not a system user (uid $uid)"
ok "system user smtp-relay (uid $uid)"
check_mode /usr/bin/smtp-relay 755 root:root
check_mode /etc/smtp-relay/smtp-relay.toml 644 root:root
check_mode /etc/smtp-relay/credentials 700 root:root
check_mode /etc/smtp-relay/credentials/server-secret 600 root:root
check_mode /etc/smtp-relay/tls 750 root:smtp-relay
check_mode /var/lib/smtp-relay 750 smtp-relay:smtp-relay
check_mode /usr/lib/sysusers.d/smtp-relay.conf 644 root:root
secret_len=$($SUDO cat /etc/smtp-relay/credentials/server-secret | tr -d '\n' | wc -c)
[ "$secret_len" -eq 64 ] || fail "server secret has $secret_len characters, expected 64 hex"
secret_sum=$($SUDO sha256sum /etc/smtp-relay/credentials/server-secret | cut -d' ' -f1)
grep -qx /etc/smtp-relay/smtp-relay.toml /var/lib/dpkg/info/smtp-relay.conffiles \
  || fail "/etc/smtp-relay/smtp-relay.toml is not a conffile"
ok "config is a conffile"
unit=$(dpkg -L smtp-relay | grep '/systemd/system/smtp-relay.service$') || fail "no unit installed"
grep -qx 'ExecStart=/usr/bin/smtp-relay --config /etc/smtp-relay/smtp-relay.toml serve' "$unit" \
  || fail "$unit does not start /usr/bin/smtp-relay"
if ls /etc/systemd/system/*.wants/smtp-relay.service >/dev/null 2>&1; then
  fail "the unit was enabled on install"
fi
ok "$unit installed, not enabled"
dpkg -L smtp-relay >"$work/files.txt"
for f in /usr/share/doc/smtp-relay/README.md /usr/share/doc/smtp-relay/copyright \
  /usr/share/doc/smtp-relay/examples/smtp-relay.toml \
  /usr/share/doc/smtp-relay/contrib/grafana-dashboard.json \
  /usr/share/doc/smtp-relay/contrib/prometheus-alerts.yml \
  /usr/share/bash-completion/completions/smtp-relay \
  /usr/share/zsh/vendor-completions/_smtp-relay \
  /usr/share/fish/vendor_completions.d/smtp-relay.fish; do
  # From a file: `dpkg -L | grep -q` can die of SIGPIPE when grep stops early (pipefail).
  grep -qx "$f" "$work/files.txt" || fail "$f is not in the package"
done
grep -q "License: MIT" /usr/share/doc/smtp-relay/copyright && grep -q "License: Apache-2.0" /usr/share/doc/smtp-relay/copyright \
  || fail "the copyright file does not carry both licences"
ok "docs, licence, examples, contrib and completions installed"
# Nothing started: no process runs the installed binary (test relays of a development machine
# run other copies, so look at each process's executable, not its name).
for pid in $(pgrep -x smtp-relay || true); do
  if [ "$($SUDO readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/smtp-relay ]; then
    fail "/usr/bin/smtp-relay runs after install (pid $pid)"
  fi
done
ok "nothing started by the install"

echo "== config check"
/usr/bin/smtp-relay config check /etc/smtp-relay/smtp-relay.toml --skip-secrets --quiet
ok "config check /etc/smtp-relay/smtp-relay.toml --skip-secrets"

echo "== man -l"
pages=$(dpkg -L smtp-relay | grep '^/usr/share/man/man1/.*\.1\.gz$')
[ -n "$pages" ] || fail "no man pages"
for page in $pages; do
  MANWIDTH=80 MANPAGER=cat man --warnings -l "$page" >"$work/page.txt" 2>"$work/warnings.txt" \
    || fail "man -l $page failed: $(cat "$work/warnings.txt")"
  [ ! -s "$work/warnings.txt" ] || fail "man -l $page warns: $(cat "$work/warnings.txt")"
  grep -q NAME "$work/page.txt" || fail "$page has no NAME section"
done
ok "$(echo "$pages" | wc -l) man pages render without warnings"

echo "== serve as smtp-relay with the installed config and a test listener"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The installed config, with its listeners, certificate, upstream and metrics tables replaced:
# a loopback plaintext listener on a free port, a generated certificate, the outbox upstream.
python3 - /etc/smtp-relay/smtp-relay.toml "$work/smtp-relay.toml" "$port" "$work" <<'PY'
import re, sys
src, dst, port, work = sys.argv[1:5]
drop = re.compile(r"^\[\[?(listener|tls|delivery|upstream\.[^\]]+|metrics)\]\]?\s*$")
out, skipping = [], False
for line in open(src):
    if re.match(r"^\[", line):
        skipping = bool(drop.match(line.strip()))
    if not skipping:
        out.append(line)
out.append(f"""
[tls]
cert_file = "{work}/tls/cert.pem"
key_file = "{work}/tls/key.pem"
generate_dev_cert = true

[[listener]]
address = "127.0.0.1:{port}"
mode = "plain"
allow_plaintext_auth = true

[delivery]
default_route = "outbox"

[upstream.outbox]
type = "outbox"
dir = "/var/lib/smtp-relay/outbox"
""")
open(dst, "w").write("".join(out))
PY
grep -q 'state_dir = "/var/lib/smtp-relay"' "$work/smtp-relay.toml" || fail "state_dir not kept"
$SUDO install -d -m 0700 -o smtp-relay -g smtp-relay "$work/tls" "$work/credentials"
# What systemd's LoadCredential= does: a copy of the secret only the service user can read.
$SUDO install -m 0400 -o smtp-relay -g smtp-relay /etc/smtp-relay/credentials/server-secret \
  "$work/credentials/server-secret"
chmod 0644 "$work/smtp-relay.toml"
cfg="$work/smtp-relay.toml"
# The server process itself (not the runuser/sudo in front of it): the installed binary.
installed_relay_pid() {
  local pid
  for pid in $(pgrep -x smtp-relay || true); do
    if [ "$($SUDO readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/smtp-relay ]; then echo "$pid"; fi
  done
}
if [ -z "$SUDO" ]; then
  runuser -u smtp-relay -- env CREDENTIALS_DIRECTORY="$work/credentials" SMTP_RELAY_LOG_FORMAT=text \
    /usr/bin/smtp-relay --config "$cfg" serve >"$work/serve.log" 2>&1 &
else
  sudo -u smtp-relay -- env CREDENTIALS_DIRECTORY="$work/credentials" SMTP_RELAY_LOG_FORMAT=text \
    /usr/bin/smtp-relay --config "$cfg" serve >"$work/serve.log" 2>&1 &
fi
launcher=$!
for _ in $(seq 1 100); do
  $SUDO test -e /var/lib/smtp-relay/listeners.json && break
  kill -0 "$launcher" 2>/dev/null || { cat "$work/serve.log"; fail "serve exited"; }
  sleep 0.1
done
$SUDO test -e /var/lib/smtp-relay/listeners.json || { cat "$work/serve.log"; fail "serve did not start"; }
server_pid=$(installed_relay_pid)
[ -n "$server_pid" ] || fail "no /usr/bin/smtp-relay process"
[ "$(ps -o uid= -p "$server_pid" | tr -d ' ')" = "$(id -u smtp-relay)" ] || fail "serve does not run as smtp-relay"
ok "serving on 127.0.0.1:$port as smtp-relay (pid $server_pid)"
project=$(as_relay env CREDENTIALS_DIRECTORY="$work/credentials" /usr/bin/smtp-relay --config "$cfg" --json \
  project add deb-check --domain example.com)
python3 - "$port" "$project" <<'PY'
import json, smtplib, sys
from email.message import EmailMessage
port, project = int(sys.argv[1]), json.loads(sys.argv[2])
msg = EmailMessage()
msg["From"] = "noreply@example.com"
msg["To"] = "someone@example.net"
msg["Subject"] = "deb-check"
msg.set_content("Sent through the installed package.\n")
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    s.login(project["project"]["id"], project["token"])
    s.send_message(msg)
PY
ok "one mail accepted"
for _ in $(seq 1 100); do
  $SUDO sh -c 'ls /var/lib/smtp-relay/outbox/*.eml' >/dev/null 2>&1 && break
  sleep 0.1
done
$SUDO sh -c 'grep -l "Subject: deb-check" /var/lib/smtp-relay/outbox/*.eml' >/dev/null \
  || { cat "$work/serve.log"; fail "the mail never reached the outbox"; }
ok "mail delivered to the outbox upstream"
as_relay /usr/bin/smtp-relay --config "$cfg" status | tee "$work/status.txt"
grep -q "plain 127.0.0.1:$port" "$work/status.txt" || fail "status does not show the listener"
$SUDO kill -TERM "$server_pid"
wait "$launcher" || fail "serve did not stop cleanly: $(cat "$work/serve.log")"
server_pid=""
grep -q "stopped" "$work/serve.log" || fail "no clean stop in the log"
ok "serve stopped cleanly"

echo "== upgrade (reinstall): config, secret and state stay"
echo "# edited by deb-check" | $SUDO tee -a /etc/smtp-relay/smtp-relay.toml >/dev/null
$SUDO dpkg -i "$deb" >"$work/upgrade.log"
grep -q "edited by deb-check" /etc/smtp-relay/smtp-relay.toml || fail "upgrade replaced the edited config"
[ "$($SUDO sha256sum /etc/smtp-relay/credentials/server-secret | cut -d' ' -f1)" = "$secret_sum" ] \
  || fail "upgrade changed the server secret"
$SUDO test -d /var/lib/smtp-relay/db || fail "upgrade lost the state"
ok "upgrade kept the edited config, the secret and the database"

echo "== remove: config and state stay"
$SUDO dpkg -r smtp-relay
[ ! -e /usr/bin/smtp-relay ] || fail "binary left after remove"
$SUDO test -d /var/lib/smtp-relay/db || fail "remove deleted the state"
[ -e /etc/smtp-relay/smtp-relay.toml ] || fail "remove deleted the config"
ok "remove kept config and state"

echo "== purge"
$SUDO dpkg --purge smtp-relay
installed=""
for p in /var/lib/smtp-relay /etc/smtp-relay /usr/lib/sysusers.d/smtp-relay.conf; do
  $SUDO test ! -e "$p" || fail "$p left after purge"
done
ok "purge removed state, config and secret"
echo "deb-check: all checks passed ($deb)"
