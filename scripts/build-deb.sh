#!/usr/bin/env bash
# Builds the Debian package: target/debian/smtp-relay_<version>-1_<arch>.deb.
#
#   ./scripts/build-deb.sh            then   sudo apt install ./target/debian/smtp-relay_*.deb
#
# cargo-deb packages files that must exist first, so this builds the release binary, lets it
# generate its own man pages and shell completions (from the clap definitions: they cannot
# drift from the CLI) and the packaged unit (systemd/smtp-relay.service with /usr/bin paths)
# into target/assets/, then runs `cargo deb --no-build`. Installs cargo-deb if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

echo "== cargo build --release"
cargo build --release --locked
bin=target/release/smtp-relay

assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd"
"$bin" generate man --out "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" generate completions bash > "$assets/completions/smtp-relay.bash"
"$bin" generate completions zsh > "$assets/completions/_smtp-relay"
"$bin" generate completions fish > "$assets/completions/smtp-relay.fish"
# The repository's unit is for the from-source install (/usr/local); the package's lives in /usr.
sed -e 's|/usr/local/bin/smtp-relay|/usr/bin/smtp-relay|g' \
    -e 's|file:///usr/local/share/doc/smtp-relay/README.md|man:smtp-relay(1) file:///usr/share/doc/smtp-relay/README.md|' \
    systemd/smtp-relay.service > "$assets/systemd/smtp-relay.service"
cp systemd/smtp-relay.sysusers "$assets/systemd/smtp-relay.sysusers"

echo "== cargo deb --no-build"
# --strip: the release profile keeps line tables for backtraces (a 100+ MB binary); the
# package ships the stripped binary, as Debian does.
cargo deb --no-build --locked --strip "$@"
ls -1 target/debian/*.deb
