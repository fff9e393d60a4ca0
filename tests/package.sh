#!/usr/bin/env bash
# The Debian package as an operator meets it (issue #20): builds the .deb with
# cargo-deb from one release build of ringmq and loadgen, then checks
#   - its contents (dpkg-deb -c), conffiles, maintainer scripts and changelog version;
#   - lintian: no errors and no warnings that deploy/debian/lintian-overrides does
#     not explain;
#   - the systemd unit with `systemd-analyze verify` in a temp root (no running
#     systemd needed), plus a control showing that verify does report a bad unit;
#   - the extracted package (dpkg -x): its ringmq, with its shipped config rewritten
#     to the temp root and a free loopback port, passes check-config, refuses a
#     broken copy with the key named and exit 2, and carries a mosquitto_pub ->
#     mosquitto_sub round trip; ringmq-loadgen runs.
# Every tool it needs is installed by tests/install-deps.sh; a missing one fails.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package: FAIL: $*" >&2; exit 1; }
t0=$SECONDS
for tool in cargo-deb lintian dpkg-deb systemd-analyze mosquitto_pub mosquitto_sub; do
    command -v "$tool" >/dev/null \
        || fail "$tool is not installed (tests/install-deps.sh installs it)"
done

work=$(mktemp -d)
broker_pid=""
cleanup() {
    if [[ -n "$broker_pid" ]]; then kill -KILL "$broker_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- build ---------------------------------------------------------------------------
# Release profile, the binaries only: under run-all.sh both were built already, in
# the background beside the tests, so this finds them done.
cargo build --release -q -p ringmq --bin ringmq -p loadgen --bin loadgen
# --strip: the release profile keeps line tables, which a package does not ship.
deb=$(cargo deb --no-build --strip -q --output "$work/")
[[ -f "$deb" ]] || fail "cargo deb printed no package path (got '$deb')"
echo "package: built $(basename "$deb") ($(( $(stat -c %s "$deb") / 1024 )) KiB) in $(( SECONDS - t0 )) s"

# --- contents ------------------------------------------------------------------------
dpkg-deb -c "$deb" > "$work/contents"
# `-rwxr-xr-x root/root ... ./usr/bin/ringmq` -> "mode path"
awk '{ print $1, $6 }' "$work/contents" > "$work/modes"
expect_entry() { # mode path
    grep -qxF -- "$1 $2" "$work/modes" || { cat "$work/contents" >&2; fail "no '$1 $2' in the package"; }
}
expect_entry -rwxr-xr-x ./usr/bin/ringmq
expect_entry -rwxr-xr-x ./usr/bin/ringmq-loadgen
expect_entry -rw-r--r-- ./etc/ringmq/ringmq.toml
expect_entry -rw-r--r-- ./usr/lib/systemd/system/ringmq.service
expect_entry -rw-r--r-- ./usr/share/doc/ringmq/copyright
expect_entry -rw-r--r-- ./usr/share/doc/ringmq/changelog.Debian.gz
expect_entry -rw-r--r-- ./usr/share/lintian/overrides/ringmq
if awk '$2 != "0/0"' "$work/contents" | grep -q .; then
    fail "files not owned by root (uid/gid 0): $(awk '$2 != "0/0"' "$work/contents")"
fi

mkdir "$work/control"
dpkg-deb -e "$deb" "$work/control"
grep -qxF /etc/ringmq/ringmq.toml "$work/control/conffiles" || fail "ringmq.toml is not a conffile"
grep -Eq 'adduser --system --group .*ringmq' "$work/control/postinst" \
    || fail "postinst does not create the ringmq system user"
grep -qF 'install -d -o ringmq -g ringmq -m 0750 /var/lib/ringmq' "$work/control/postinst" \
    || fail "postinst does not create /var/lib/ringmq for the ringmq user"
grep -q 'deb-systemd-helper' "$work/control/postinst" || fail "postinst lacks the systemd snippet"
grep -q 'rm -rf /var/lib/ringmq' "$work/control/postrm" || fail "postrm does not purge the data dir"
for script in postinst prerm postrm; do
    sh -n "$work/control/$script" || fail "$script is not valid sh"
done
for dep in adduser procps; do
    dpkg-deb -f "$deb" Depends | grep -qw "$dep" || fail "Depends lacks $dep"
done
version=$(dpkg-deb -f "$deb" Version)
changelog_version=$(sed -n '1s/^ringmq (\([^)]*\)).*/\1/p' deploy/debian/changelog)
[[ "$version" == "$changelog_version" ]] \
    || fail "package version $version has no deploy/debian/changelog entry (top: $changelog_version)"

# --- lintian -------------------------------------------------------------------------
# --fail-on warning too: a warning is either fixed or explained in the overrides file.
lintian --fail-on error,warning --tag-display-limit 0 "$deb" > "$work/lintian" 2>&1 \
    || { cat "$work/lintian" >&2; fail "lintian"; }
cat "$work/lintian"
echo "package: lintian clean"

# --- the unit, verified in a root made of this machine's units and the package --------
# A merged-/usr root, as Debian's: /bin and /lib point into /usr.
root="$work/root"
mkdir -p "$root/usr/lib/systemd" "$root/usr/bin"
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"   # targets the unit orders against
dpkg -x "$deb" "$root"
cp /usr/bin/kill "$root/usr/bin/kill"                    # ExecReload's /bin/kill must exist
unit=/usr/lib/systemd/system/ringmq.service
verify() { systemd-analyze verify --root="$root" "$1" 2>&1; }
out=$(verify "$unit") || fail "systemd-analyze verify: $out"
[[ -z "$out" ]] || fail "systemd-analyze verify reported: $out"
# Control: verify only warns (exit 0) on a misspelt key, so the check above must
# treat any output as failure; prove that output appears for a broken copy.
broken_unit=/usr/lib/systemd/system/ringmq-broken.service
sed 's/^Type=notify$/Type=notifyy/' "$root$unit" > "$root$broken_unit"
out=$(verify "$broken_unit") || true
[[ "$out" == *notifyy* ]] || fail "systemd-analyze verify did not report a bad Type= ($out)"
rm "$root$broken_unit"
echo "package: systemd-analyze verify clean"

# --- the extracted package runs with its shipped config ------------------------------
bin="$root/usr/bin/ringmq"
cfg="$work/ringmq.toml"
# Paths that point into the system point into the temp root; listen on a free
# loopback port (0: the kernel picks, the broker prints it).
sed -e "s|\"/var/lib/ringmq|\"$root/var/lib/ringmq|g" -e "s|\"/etc/ringmq|\"$root/etc/ringmq|g" \
    -e 's|^#\?listen = .*|listen = ["127.0.0.1:0"]|' \
    -e "s|^#\\?data_dir = .*|data_dir = \"$root/var/lib/ringmq\"|" \
    "$root/etc/ringmq/ringmq.toml" > "$cfg"
grep -qx 'listen = \["127.0.0.1:0"\]' "$cfg" || fail "no listen line to rewrite in the shipped config"
# Durability on, in the package's data directory (the postinst creates it on a real
# install; dpkg -x runs no scripts).
grep -qxF "data_dir = \"$root/var/lib/ringmq\"" "$cfg" || fail "no data_dir line to rewrite in the shipped config"
mkdir -p "$root/var/lib/ringmq"

"$bin" check-config --config "$root/etc/ringmq/ringmq.toml" > /dev/null \
    || fail "check-config refused the shipped config"
"$bin" check-config --config "$cfg" > /dev/null || fail "check-config refused the rewritten config"
sed 's|^#max_inflight = .*|max_inflight = 0|' "$cfg" > "$work/broken.toml"
set +e
"$bin" check-config --config "$work/broken.toml" > /dev/null 2> "$work/broken.err"
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "check-config on a broken config exited $rc, not 2"
grep -qF 'key "max_inflight": expected an integer 1..=65535, got 0' "$work/broken.err" \
    || fail "check-config did not name the key and value: $(cat "$work/broken.err")"

"$root/usr/bin/ringmq-loadgen" --version > /dev/null || fail "ringmq-loadgen does not run"

"$bin" --config "$cfg" 2> "$work/broker.log" &
broker_pid=$!
port=""
for _ in $(seq 1 300); do   # up to 30 s on a loaded machine
    port=$(sed -n 's/^ringmq listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/broker.log")
    [[ -n "$port" ]] && break
    kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; fail "ringmq exited at start"; }
    sleep 0.1
done
[[ -n "$port" ]] || { cat "$work/broker.log" >&2; fail "ringmq printed no listening line"; }

payload="deb round trip $$"
mosquitto_sub -h 127.0.0.1 -p "$port" -t ringmq/package -q 1 -C 1 -W 20 > "$work/received" &
sub_pid=$!
# Publish until the subscriber has its message: it may not have subscribed yet.
for _ in $(seq 1 100); do
    kill -0 "$sub_pid" 2>/dev/null || break
    mosquitto_pub -h 127.0.0.1 -p "$port" -t ringmq/package -q 1 -m "$payload"
    sleep 0.2
done
wait "$sub_pid" || fail "mosquitto_sub got no message (exit $?)"
[[ "$(cat "$work/received")" == "$payload" ]] \
    || fail "mosquitto_sub received '$(cat "$work/received")', not '$payload'"

kill -TERM "$broker_pid"
for _ in $(seq 1 150); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$broker_pid" 2>/dev/null && fail "ringmq did not exit within 15 s of SIGTERM"
wait "$broker_pid" || fail "ringmq exited $? after SIGTERM"
broker_pid=""
for f in LOCK VERSION loop-0; do
    [[ -e "$root/var/lib/ringmq/$f" ]] || fail "no $f in the data directory /var/lib/ringmq: $(ls -A "$root/var/lib/ringmq")"
done
echo "package: extracted ringmq ran with the shipped config and /var/lib/ringmq as data_dir; mosquitto_pub/sub round trip ok"
echo "package: all checks passed in $(( SECONDS - t0 )) s"
