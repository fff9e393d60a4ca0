# Shared by perf/profile.sh, perf/compare.sh and perf/rss.sh (sourced, not run).
#
# Brokers run pinned to BROKER_CORE, loadgen to LOADGEN_CORE, on 127.0.0.1 only.
# Every process started here is recorded and stopped by PID on exit.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/perf/out}"
BROKER_CORE="${BROKER_CORE:-0}"
LOADGEN_CORE="${LOADGEN_CORE:-1}"
DURATION="${DURATION:-10s}"
# tcp, ws: the broker listens on ws://127.0.0.1:PORT/mqtt (Mosquitto: `protocol
# websockets`) and loadgen runs with --transport ws, or tls: mqtts://127.0.0.1:PORT
# with a certificate generated here (ECDSA P-256, openssl; Mosquitto: certfile/keyfile)
# and loadgen runs with --tls.
TRANSPORT="${TRANSPORT:-tcp}"
[[ "$TRANSPORT" == tcp || "$TRANSPORT" == ws || "$TRANSPORT" == tls ]] \
  || { echo "error: TRANSPORT=$TRANSPORT: tcp, ws or tls" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Set RINGMQ/LOADGEN to use prebuilt binaries (then nothing is built).
PREBUILT=0
[[ -n "${RINGMQ:-}" || -n "${LOADGEN:-}" ]] && PREBUILT=1
RINGMQ="${RINGMQ:-$CARGO_TARGET_DIR/release/ringmq}"
LOADGEN="${LOADGEN:-$CARGO_TARGET_DIR/release/loadgen}"

mkdir -p "$OUT"

# TRANSPORT=tls: one self-signed ECDSA P-256 certificate for localhost/127.0.0.1,
# made once per $OUT (never committed), used by both brokers and trusted by loadgen
# (not a CA: webpki refuses a CA certificate as the server's own).
TLS_DIR="$OUT/tls"
TLS_CERT="$TLS_DIR/cert.pem"
TLS_KEY="$TLS_DIR/key.pem"
if [[ "$TRANSPORT" == tls && ! -s "$TLS_CERT" ]]; then
  command -v openssl >/dev/null || { echo "error: TRANSPORT=tls needs openssl" >&2; exit 1; }
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null \
    || { echo "error: openssl could not make $TLS_CERT" >&2; exit 1; }
fi
# loadgen's transport flags for $TRANSPORT.
loadgen_transport() {
  case "$TRANSPORT" in
    tls) echo "--transport tcp --tls --ca-file $TLS_CERT --server-name localhost" ;;
    *) echo "--transport $TRANSPORT" ;;
  esac
}

STARTED_PIDS=()

# PRIO=1: brokers and loadgen run in a session of their own (a new autogroup) at
# autogroup nice -20 and nice -20, as perf/loadgen_cpu.py's PRIO=1 does, so for a run's
# seconds they take their cores from other sessions' builds (with
# kernel.sched_autogroup_enabled plain `nice` does not). Latency tails on a shared
# machine are otherwise the scheduler's. Needs root. The PID stays the process's own.
PRIO_CMD=()
if [[ "${PRIO:-0}" == 1 ]]; then
  # shellcheck disable=SC2016 # $@ is the inner shell's
  PRIO_CMD=(setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio)
fi

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# Stops one process we started: SIGINT (brokers and perf finish cleanly on it),
# then SIGKILL if it is still there after 10 s.
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "pid $pid ignored SIGINT for 10 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
  STARTED_PIDS=()
}
trap cleanup EXIT

# Removes a PID from STARTED_PIDS once it has been stopped.
forget_pid() {
  local pid=$1 kept=() p
  for p in "${STARTED_PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
  STARTED_PIDS=("${kept[@]}")
}

build_release() {
  if ((PREBUILT)); then
    [[ -x "$RINGMQ" && -x "$LOADGEN" ]] || die "RINGMQ=$RINGMQ / LOADGEN=$LOADGEN: not executable"
    return 0
  fi
  log "building release ringmq and loadgen"
  (cd "$ROOT" && cargo build --release -q -p ringmq --bin ringmq -p loadgen --bin loadgen) \
    || die "release build failed"
  [[ -x "$RINGMQ" && -x "$LOADGEN" ]] || die "missing $RINGMQ or $LOADGEN after build"
}

# CPU time (user + system) PID has used so far, in milliseconds (/proc/PID/stat
# fields 14-15, in clock ticks): what a run costs the broker, steadier than msg/s on
# a machine other builds load.
cpu_ms() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' "/proc/$1/stat"
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until 127.0.0.1:PORT accepts a connection (at most 10 s).
wait_listening() {
  local port=$1 pid=$2
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || die "broker (pid $pid) exited during start-up"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listening on 127.0.0.1:$port after 10 s"
}

# VmRSS of PID in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# RssAnon of PID in KiB: VmRSS without file-backed pages (code and libraries the
# process touches, shared with the page cache) and shared memory.
rss_anon_kb() { awk '/^RssAnon:/ { print $2 }' "/proc/$1/status"; }

# Established TCP connections whose local port is PORT (the broker's side).
established_on() {
  ss -Htn state established "( sport = :$1 )" | wc -l
}

# Runs ringmq pinned to BROKER_CORE with BROKER_SHARDS loops (default 1); sets
# BROKER_PID. Extra args (e.g. queue limits) go to ringmq, and so do the words of
# RINGMQ_ARGS (e.g. RINGMQ_ARGS="--rt-priority 50").
start_ringmq() {
  local port=$1 logfile=$2; shift 2
  local extra=()
  read -r -a extra <<<"${RINGMQ_ARGS:-}"
  local url="127.0.0.1:$port"
  [[ "$TRANSPORT" == ws ]] && url="ws://127.0.0.1:$port/mqtt"
  if [[ "$TRANSPORT" == tls ]]; then
    url="mqtts://127.0.0.1:$port"
    extra+=(--tls-cert "$TLS_CERT" --tls-key "$TLS_KEY")
  fi
  "${PRIO_CMD[@]}" taskset -c "$BROKER_CORE" "$RINGMQ" --shards "${BROKER_SHARDS:-1}" --listen "$url" "${extra[@]}" "$@" >"$logfile" 2>&1 &
  BROKER_PID=$!
  STARTED_PIDS+=("$BROKER_PID")
  wait_listening "$port" "$BROKER_PID"
}

# Runs loadgen pinned to LOADGEN_CORE against PORT with --json; the JSON line goes
# to stdout, loadgen's table and messages to LOGFILE. Extra args: scenario and flags.
run_loadgen() {
  local port=$1 logfile=$2; shift 2
  local tr
  read -r -a tr <<<"$(loadgen_transport)"
  "${PRIO_CMD[@]}" taskset -c "$LOADGEN_CORE" "$LOADGEN" "$@" "${tr[@]}" --port "$port" --json 2>>"$logfile" | tail -n 1
}

# Scenario name -> loadgen arguments. The idle ones hold connections for the
# whole run so RSS can be read while they are established.
IDLE_CLIENTS="${IDLE_CLIENTS:-10000}"
# loadgen's closed-loop window per publisher in the fan-in scenarios; unset: loadgen's
# default (QoS 0: 128 here, which leaves the broker the limit; QoS 1: 16, what ringmq's
# default queues hold for 100 publishers) (#22).
FANIN_WINDOW="${FANIN_WINDOW:-}"
scenario_args() {
  case "$1" in
    fanin_qos0)   echo "fanin --publishers 100 --subscribers 1 --qos 0 --size 64 ${FANIN_WINDOW:+--window $FANIN_WINDOW} --duration $DURATION" ;;
    fanin_qos1)   echo "fanin --publishers 100 --subscribers 1 --qos 1 --size 64 ${FANIN_WINDOW:+--window $FANIN_WINDOW} --duration $DURATION" ;;
    # fanin_qos1 measures throughput (closed loop: loadgen's window counts a message
    # until PUBACK and delivery); this one compares latency at a fixed, modest rate.
    fanin_qos1_5k) echo "fanin --publishers 100 --subscribers 1 --qos 1 --size 64 --total-rate 5000 --open-loop --duration $DURATION" ;;
    pairs_20k)    echo "pairs --clients 1000 --total-rate 20000 --open-loop --qos 0 --size 64 --duration $DURATION" ;;
    idle_10k)     echo "connect --clients $IDLE_CLIENTS --hold $DURATION" ;;
    idle_10k_sub) echo "fleet --clients $IDLE_CLIENTS --interval 1h --cmd-rate 0 --duration $DURATION --warmup 0s" ;;
    # Reconnect storms (#21): persistent sessions with one subscription each, a clean
    # disconnect, then every client reconnects at once; compare.sh adds --broker-pid.
    storm_10k)    echo "storm --clients 10000 --hold 0s" ;;
    storm_100k)   echo "storm --clients 100000 --hold 0s" ;;
    # Fan-out (#21): one publisher on lg/fanout, 64 B, to 1,000 or 10,000 subscribers;
    # _100k paces it open loop at 100,000 deliveries/s (100 or 10 msg/s), _max runs
    # closed loop at loadgen's default window. msg/s is deliveries/s.
    fanout_1k_qos0_100k)  echo "fanout --clients 1000 --qos 0 --size 64 --total-rate 100 --open-loop --duration $DURATION" ;;
    fanout_1k_qos1_100k)  echo "fanout --clients 1000 --qos 1 --size 64 --total-rate 100 --open-loop --duration $DURATION" ;;
    fanout_1k_qos0_max)   echo "fanout --clients 1000 --qos 0 --size 64 --duration $DURATION" ;;
    fanout_1k_qos1_max)   echo "fanout --clients 1000 --qos 1 --size 64 --duration $DURATION" ;;
    fanout_10k_qos0_100k) echo "fanout --clients 10000 --qos 0 --size 64 --total-rate 10 --open-loop --duration $DURATION" ;;
    fanout_10k_qos1_100k) echo "fanout --clients 10000 --qos 1 --size 64 --total-rate 10 --open-loop --duration $DURATION" ;;
    fanout_10k_qos0_max)  echo "fanout --clients 10000 --qos 0 --size 64 --duration $DURATION" ;;
    fanout_10k_qos1_max)  echo "fanout --clients 10000 --qos 1 --size 64 --duration $DURATION" ;;
    *) return 1 ;;
  esac
}
ALL_SCENARIOS=(fanin_qos0 fanin_qos1 fanin_qos1_5k pairs_20k idle_10k idle_10k_sub storm_10k storm_100k
  fanout_1k_qos0_100k fanout_1k_qos1_100k fanout_1k_qos0_max fanout_1k_qos1_max
  fanout_10k_qos0_100k fanout_10k_qos1_100k fanout_10k_qos0_max fanout_10k_qos1_max)

# Connections an idle scenario holds open at the broker (fleet adds a collector
# and a controller connection).
scenario_connections() {
  case "$1" in
    idle_10k) echo "$IDLE_CLIENTS" ;;
    idle_10k_sub) echo $((IDLE_CLIENTS + 2)) ;;
    *) echo 0 ;;
  esac
}

# SAVE_RESULTS=1 keeps a run's small results (loadgen JSON lines, tables, the run's
# settings) in perf/results/<UTC date>/<kind>-<UTC time>/, which is committed, so the
# figures in README.md and perf/README.md can be checked against raw data. Logs and
# profiles stay in perf/out/ (gitignored, too large). Called before the first
# measurement (the load average it records is the one the run started under) with the
# script's kind, its settings as one line, and its arguments; prints the folder.
results_dir() {
  local kind=$1 settings=$2 dir; shift 2
  dir="$ROOT/perf/results/$(date -u +%Y-%m-%d)/$kind-$(date -u +%H%M%S)"
  mkdir -p "$dir"
  {
    echo "command: perf/$kind.sh $*"
    echo "settings: $settings"
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src loadgen perf/src Cargo.lock || echo ' (with uncommitted changes)')"
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc) ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "load_average_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "broker_core: $BROKER_CORE loadgen_core: $LOADGEN_CORE"
    echo "duration: $DURATION"
    echo "transport: $TRANSPORT"
    echo "prio: ${PRIO:-0}"
    echo "ringmq: $RINGMQ ${RINGMQ_ARGS:-}"
    echo "loadgen: $LOADGEN"
    if command -v mosquitto >/dev/null; then
      echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1)"
    fi
  } >"$dir/run.txt"
  echo "$dir"
}
