#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks it: contents and
# modes, control fields, maintainer scripts, and an install, a purge and
# their effects in a throwaway root (an overlay of this machine's root in a
# private mount namespace, so the host is never touched).
#
# usage: packaging/build-deb.sh [--no-cargo-build | --no-build DEB]
#   --no-cargo-build packages the target/release/thoth-ingest already
#   built (the test suite's); --no-build checks a package built before.
#   Installs cargo-deb (pinned, from crates.io) when it is missing. Needs
#   root (for the throwaway install), dpkg, unshare and overlayfs.
# Prints the package's path on its last line; exits non-zero, naming the
# check, on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=2.9.2
fail() { echo "build-deb: FAILED: $*" >&2; exit 1; }

if [ "${1:-}" = "--no-build" ]; then
  deb=$2
else
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2 \
      || fail "cannot install cargo-deb $CARGO_DEB_VERSION (cargo install)"
  fi
  # The release profile keeps debug info (for benchmarks); the package
  # does not need it.
  build=(--strip)
  [ "${1:-}" = "--no-cargo-build" ] && build+=(--no-build)
  deb=$(cargo deb "${build[@]}" | tail -n 1) || fail "cargo deb"
fi
[ -f "$deb" ] || fail "no package at '$deb'"
for tool in dpkg dpkg-deb unshare; do
  command -v "$tool" >/dev/null || fail "$tool is needed"
done

# Contents and modes.
contents=$(dpkg-deb -c "$deb")
want_entry() { # mode path: owned by root
  echo "$contents" | awk -v m="$1" -v p="$2" \
    '$1 == m && ($2 == "root/root" || $2 == "0/0") && ($6 == p || $6 == "./" p) { found = 1 }
     END { exit !found }' \
    || fail "contents: no '$2' with mode $1 owned by root"
}
want_entry -rwxr-xr-x usr/bin/thoth-ingest
want_entry -rw-r----- etc/thoth-ingest/config.toml
unit=$(echo "$contents" | awk '$6 ~ /systemd\/system\/thoth-ingest\.service$/ { print $6 }')
[ -n "$unit" ] || fail "contents: no thoth-ingest.service"
want_entry -rw-r--r-- "$unit"

# Control fields and maintainer scripts.
[ "$(dpkg-deb -f "$deb" Package)" = thoth-ingest ] || fail "control: Package"
dpkg-deb -f "$deb" Depends | grep -q systemd || fail "control: Depends lacks systemd"
dpkg-deb -f "$deb" Depends | grep -q adduser || fail "control: Depends lacks adduser"
[ -n "$(dpkg-deb -f "$deb" Maintainer)" ] || fail "control: Maintainer"
control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb -e "$deb" "$control"
grep -qx /etc/thoth-ingest/config.toml "$control/conffiles" || fail "conffiles: config.toml"
grep -q "adduser --system" "$control/postinst" || fail "postinst: no system user"
grep -q "deb-systemd-helper" "$control/postinst" || fail "postinst: the unit is not enabled"
# A fresh install must not start it (an upgrade may restart a running one).
if grep -Eq "deb-systemd-invoke start|_dh_action=start" "$control/postinst"; then
  fail "postinst starts the service before it is configured"
fi
grep -q "rm -rf /var/lib/thoth-ingest" "$control/postrm" || fail "postrm: purge keeps the state"

# Install, check, purge, check: in a throwaway root.
work=$(mktemp -d)
trap 'rm -rf "$control" "$work"' EXIT
cp "$deb" "$work/pkg.deb"
unshare --mount --fork bash -euo pipefail -c '
  work=$1
  mkdir -p "$work/upper" "$work/work" "$work/root"
  mount -t tmpfs tmpfs "$work/upper"
  mkdir -p "$work/upper/u" "$work/upper/w"
  mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$work/upper/u,workdir=$work/upper/w" "$work/root"
  for fs in proc sys dev; do mount --rbind "/$fs" "$work/root/$fs"; done
  cp "$work/pkg.deb" "$work/root/tmp/pkg.deb"
  chroot "$work/root" sh -euc "
    fail() { echo \"build-deb: FAILED: install: \$*\" >&2; exit 1; }
    dpkg -i /tmp/pkg.deb > /tmp/install.log 2>&1 || { cat /tmp/install.log >&2; fail dpkg -i; }
    grep -q \"systemctl start thoth-ingest\" /tmp/install.log || fail \"no message on how to start\"
    getent passwd thoth-ingest > /dev/null || fail \"no user thoth-ingest\"
    [ \"\$(stat -c %a:%U:%G /etc/thoth-ingest)\" = 750:root:thoth-ingest ] || fail \"/etc/thoth-ingest: \$(stat -c %a:%U:%G /etc/thoth-ingest)\"
    [ \"\$(stat -c %a:%U:%G /etc/thoth-ingest/config.toml)\" = 640:root:thoth-ingest ] || fail \"config.toml mode\"
    [ \"\$(stat -c %a:%U /var/lib/thoth-ingest)\" = 700:thoth-ingest ] || fail \"/var/lib/thoth-ingest mode\"
    [ -L /etc/systemd/system/multi-user.target.wants/thoth-ingest.service ] || fail \"the unit is not enabled\"
    /usr/bin/thoth-ingest --version > /dev/null || fail \"the binary does not run\"
    # The shipped config loads; validate fails only for the missing key.
    out=\$(/usr/bin/thoth-ingest --config /etc/thoth-ingest/config.toml validate 2>&1 || true)
    echo \"\$out\" | grep -qi key || fail \"validate of the shipped config: \$out\"
    dpkg --purge thoth-ingest > /tmp/purge.log 2>&1 || { cat /tmp/purge.log >&2; fail purge; }
    ! getent passwd thoth-ingest > /dev/null || fail \"purge kept the user\"
    [ ! -e /var/lib/thoth-ingest ] || fail \"purge kept the state\"
    [ ! -e /etc/thoth-ingest/config.toml ] || fail \"purge kept the config\"
  "
' bash "$work" || fail "the throwaway install (see above)"
echo "build-deb: $deb: contents, control, scripts, install and purge checked" >&2
echo "$deb"
