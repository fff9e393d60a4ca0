#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently and non-interactively:
#   - mosquitto, mosquitto-clients   (interop tests; Mosquitto for validating expectations)
#   - python3-paho-mqtt 1.6.x        (tests/interop/paho_check.py, run by /usr/bin/python3)
#   - node + npm                     (kept as found if present; Debian's nodejs/npm otherwise)
#   - tests/interop/node: `npm ci`   (mqtt.js pinned by package-lock.json)
#   - valgrind                       (perf/budget.sh instruction counts)
#   - cargo-fuzz                     (perf/fuzz.sh; cargo install, built once)
#   - lintian, systemd, dpkg-dev, binutils, procps  (tests/package.sh: lintian, systemd-analyze
#     verify, dpkg-shlibdeps for the package's Depends, strip for cargo-deb, /bin/kill)
#   - cargo-deb from crates.io       (tests/package.sh builds the .deb with it)
#   - prometheus (for promtool), chromium  (tests/metrics_http.rs: `promtool check metrics` on
#     the real /metrics, the status page in headless Chromium)
#   - mqtt-sn-12 from PyPI, pinned, into tests/interop/mqttsn-py (tests/mqttsn.rs: interop
#     with an independent MQTT-SN client, its mqtt_sn_pub/mqtt_sn_sub)
#   - nats-server 2.10.27, pinned, into tests/interop/nats (tests/cluster.rs and
#     perf/cluster.sh: a 3-server JetStream cluster under the ringmq nodes). Debian
#     trixie's package, fetched by apt from deb.debian.org with a private apt state
#     (the system's sources and lists are not touched), signature-checked against
#     Debian's archive keyring, and unpacked (not installed). Bookworm's own
#     nats-server (2.9.10) is not used: its KV compare-and-set is not serialized on a
#     replicated bucket (nats-server#4320, fixed in 2.9.21), which session ownership
#     relies on. The binary needs only libc6 >= 2.34.
#   - util-linux                     (tests/durability.rs: nsenter grows the test's tmpfs)
# apt-get update runs only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in mosquitto mosquitto-clients python3-paho-mqtt python3-pip valgrind lintian systemd dpkg-dev binutils procps \
         prometheus chromium util-linux; do
    have_pkg "$p" || missing+=("$p")
done
# An existing node (e.g. NodeSource's nodejs 20, which bundles npm) is used as is:
# installing Debian's npm next to it would conflict.
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs)
fi
if ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-deps: apt packages present"
fi

# The packaged mosquitto service is not wanted: tests start their own servers on
# free loopback ports.
# (Containers without systemd never start it; nothing to do there.)

/usr/bin/python3 -c 'import paho.mqtt, sys; v = paho.mqtt.__version__; print("install-deps: paho-mqtt", v); sys.exit(0 if v.startswith("1.") else 1)' \
    || { echo "install-deps: paho_check.py is written for paho-mqtt 1.x (Debian bookworm's python3-paho-mqtt)" >&2; exit 1; }

# An independent MQTT-SN 1.2 client (pure Python, no dependencies), kept inside the
# tree (--target) rather than in the system's Python, which Debian manages.
MQTTSN_PY_VERSION=1.0.9
sn_dir=tests/interop/mqttsn-py
if [ ! -f "$sn_dir/mqtt_sn_12-$MQTTSN_PY_VERSION.dist-info/METADATA" ]; then
    echo "install-deps: pip install mqtt-sn-12==$MQTTSN_PY_VERSION into $sn_dir"
    rm -rf "$sn_dir"
    /usr/bin/python3 -m pip install --quiet --no-deps --target "$sn_dir" "mqtt-sn-12==$MQTTSN_PY_VERSION"
else
    echo "install-deps: mqtt-sn-12 $MQTTSN_PY_VERSION present"
fi

# nats-server for the cluster tests: Debian trixie's build, unpacked into the tree.
# tests/cluster.rs and perf/cluster.sh look for it at this path and refuse an older one.
NATS_VERSION=2.10.27
NATS_DEB_VERSION=2.10.27-1+b2
nats_dir=tests/interop/nats
if [ "$("$nats_dir/nats-server" --version 2>/dev/null)" != "nats-server: v$NATS_VERSION" ]; then
    echo "install-deps: nats-server $NATS_DEB_VERSION (Debian trixie) into $nats_dir"
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || { echo "install-deps: apt-get and dpkg-deb are needed to fetch nats-server" >&2; exit 1; }
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || { echo "install-deps: $keyring is missing (package debian-archive-keyring)" >&2; exit 1; }
    apt_dir=$(mktemp -d)
    trap 'rm -rf "$apt_dir"' EXIT
    mkdir -p "$apt_dir"/lists/partial "$apt_dir"/archives/partial "$apt_dir"/etc/sources.list.d \
        "$apt_dir"/etc/preferences.d
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" > "$apt_dir/etc/sources.list"
    # Every path apt reads or writes points into $apt_dir, except dpkg's status (read
    # only, for `download`'s dependency-free resolution). The sandbox user is this one:
    # _apt cannot write into a private mktemp directory.
    apt_opts=(-q -o Dir::Etc::SourceList="$apt_dir/etc/sources.list"
        -o Dir::Etc::SourceParts="$apt_dir/etc/sources.list.d"
        -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts="$apt_dir/etc/preferences.d"
        -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache::Archives="$apt_dir/archives"
        -o Dir::Cache="$apt_dir" -o Dir::State::status=/var/lib/dpkg/status
        -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User="$(id -un)")
    apt-get "${apt_opts[@]}" update
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" download "nats-server=$NATS_DEB_VERSION")
    dpkg-deb -x "$apt_dir"/nats-server_*.deb "$apt_dir/root"
    rm -rf "$nats_dir"
    mkdir -p "$nats_dir"
    cp "$apt_dir/root/usr/sbin/nats-server" "$nats_dir/nats-server"
    rm -rf "$apt_dir"
    trap - EXIT
    got=$("$nats_dir/nats-server" --version 2>&1) || true
    [ "$got" = "nats-server: v$NATS_VERSION" ] \
        || { echo "install-deps: $nats_dir/nats-server --version says '$got', not v$NATS_VERSION" >&2; exit 1; }
fi
echo "install-deps: $("$nats_dir/nats-server" --version) in $nats_dir"

# perf/fuzz.sh refuses to run without it rather than installing it mid-run.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "install-deps: cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked
else
    echo "install-deps: $(cargo fuzz --version 2>/dev/null || echo cargo-fuzz) present"
fi

node_dir=tests/interop/node
want=$(node -e 'console.log(require("./'"$node_dir"'/package-lock.json").packages["node_modules/mqtt"].version)')
have=$(node -e 'try{console.log(require("./'"$node_dir"'/node_modules/mqtt/package.json").version)}catch(e){console.log("none")}')
if [ "$want" != "$have" ]; then
    echo "install-deps: npm ci in $node_dir (mqtt $have -> $want)"
    (cd "$node_dir" && npm ci --no-audit --no-fund --ignore-scripts)
else
    echo "install-deps: mqtt.js $have present"
fi

echo "install-deps: node $(node --version), npm $(npm --version), $(mosquitto_sub --help 2>/dev/null | head -1)"

# cargo-deb for tests/package.sh: pinned, built from crates.io with its lock file
# (about 3 minutes on 2 cores, once per machine).
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "install-deps: cargo install cargo-deb $CARGO_DEB_VERSION"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
echo "install-deps: $(cargo deb --version)"
