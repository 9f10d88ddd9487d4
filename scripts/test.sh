#!/usr/bin/env bash
# The README's test command. Installs the Debian packages that tests start as real servers
# or use as real clients (scripts/test-packages.txt: "<package> <command it provides>", or
# "<package> py:<module>" for a Python module), then
# runs `cargo test`. A test never skips because a server is missing: it fails and names the
# package, and this script is how it gets there. `.ci/run` calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg cmd _; do
  [[ -z "${pkg:-}" || "$pkg" == \#* ]] && continue
  if [[ "$cmd" == py:* ]]; then
    # A Python module rather than a command: "py:<module>".
    python3 -c "import ${cmd#py:}" >/dev/null 2>&1 || missing+=("$pkg")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done < scripts/test-packages.txt

if ((${#missing[@]})); then
  echo "== installing test packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tests/send_api.rs drives Resend's official Python SDK against the relay.
if ! python3 -c "import resend" >/dev/null 2>&1; then
  echo "== installing the resend Python package (tests/send_api.rs)"
  # Debian's Python is "externally managed" (PEP 668): allow the user-level install there.
  python3 -m pip install --quiet --user resend 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages resend \
    || python3 -m pip install --quiet resend
fi
# ... and Resend's Node SDK, pinned by tests/support/resend_node/package-lock.json.
if [ ! -d tests/support/resend_node/node_modules/resend ]; then
  echo "== installing Resend's Node SDK (tests/support/resend_node)"
  (cd tests/support/resend_node && npm ci --silent --no-audit --no-fund)
fi

exec cargo test --locked "$@"
