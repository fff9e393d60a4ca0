//! The `ringmq` binary: configuration (and `ringmq check-config`), listeners, one
//! worker thread per shard, signals, and systemd's readiness notification.
//!
//! Listener strategy: every shard accepts on its own `SO_REUSEPORT` listener bound to
//! the same address, so the kernel spreads connections across loops without a shared
//! accept queue. With port 0 the first listener is bound, its port read back, and the
//! other shards' listeners bind to that port. After CONNECT a connection moves to the
//! shard owning its client id anyway, so where it was accepted does not matter.

mod passwd;

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;

use clap::Parser;
use socket2::{Domain, Socket, Type};

use ringmq::config::{self, Cli, Command, Config, IdentityUsername, IoBackend};
use ringmq::gateway::mqttsn::{parse_predefined, GatewayLimits};
use ringmq::io::epoll::EpollLoop;
use ringmq::io::uring::{self, UringLoop};
use ringmq::io::{self as rio, LoopOptions, Remote};
use ringmq::ring;
use ringmq::transport::identity::IdentitySource;
use ringmq::transport::{ListenerTls, TlsFiles};
use ringmq::worker::verify::{self, AuthShared, VerifierPool};
use ringmq::worker::{self, SnSetup, WorkerMsg, WorkerReport, WorkerSetup};

/// `eprintln!` that ignores a failed write: with stderr closed, `eprintln!` panics,
/// and a panic in the signal thread would lose the shutdown.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per mesh ring, and per overflow list, between two shards.
const MESH_RING_CAPACITY: usize = 8192;
const MESH_OVERFLOW_MAX: usize = 65_536;

/// Fewest provided receive buffers in a loop's first ring.
const RECV_BUFS_MIN: usize = 128;

/// Provided receive buffers in each loop's first ring: the default pool is split
/// between the loops, since each receives its share of the traffic. A connect storm
/// cycles through every buffer of a pool, so each loop's whole pool stays resident
/// until traffic moves it along (2 MiB per loop at the default 512 × 4 KiB).
fn loop_recv_bufs(shards: usize) -> usize {
    (LoopOptions::default().recv_bufs_per_ring / shards.max(1)).max(RECV_BUFS_MIN)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { .. }) = cli.command {
        return check_config(&cli.for_check());
    }
    if let Some(Command::Passwd { action }) = &cli.command {
        return passwd::main(action);
    }
    let mut loaded = match config::load_tracked(&cli) {
        Ok(l) => l,
        Err(e) => {
            say!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&loaded.config.log_level, loaded.config.log_json);
    if let Err(e) = bridges_runnable(&loaded.config) {
        say!("ringmq: {e}");
        return ExitCode::from(2);
    }
    if let Some(line) = config::secure_default(&mut loaded) {
        say!("{line}");
    }
    // A file that does not parse is a configuration error: exit 2, file named.
    let auth = match verify::load_policy(&loaded.config) {
        Ok(a) => a,
        Err(e) => {
            say!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    // TLS files are part of the configuration: one that does not load is refused like
    // a bad key (exit 2), naming the file.
    let tls = match load_tls(&loaded.config) {
        Ok(t) => t,
        Err(e) => {
            say!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    // The predefined-topics file too: exit 2, file and line named.
    let sn = match load_sn(&loaded.config) {
        Ok(s) => s,
        Err(e) => {
            say!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    // The data directory is part of the configuration too: one that cannot be used
    // (missing parent, read-only, locked by another broker, another store format)
    // is refused before anything listens, exit 2, directory named.
    let data_dir = match open_data_dir(&loaded.config) {
        Ok(d) => d,
        Err(e) => {
            say!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    let max_connections_explicit = loaded.is_explicit("max_connections");
    match run(
        loaded.config,
        tls,
        max_connections_explicit,
        auth,
        sn,
        data_dir,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            say!("ringmq: {e}");
            ExitCode::from(1)
        }
    }
}

/// The CA file (and client certificate, if any) of every `mqtts://` bridge loads
/// (exit 2 naming the bridge and the file otherwise, as a bad TLS listener file is).
fn bridges_runnable(config: &Config) -> Result<(), String> {
    for b in &config.bridge {
        if let Some(t) = &b.tls {
            ringmq::worker::bridges::load_tls(&b.name, t).map_err(|e| format!("config: {e}"))?;
        }
    }
    Ok(())
}

/// The locked, version-checked data directory when durability is on (the lock is
/// held as long as the returned value lives).
fn open_data_dir(
    config: &Config,
) -> Result<Option<Arc<ringmq::io::datadir::DataDir>>, ringmq::io::datadir::DataDirError> {
    if config.store_mode() == config::Durability::None {
        return Ok(None);
    }
    let Some(path) = config.data_dir.as_deref() else {
        return Ok(None);
    };
    let dir = ringmq::io::datadir::DataDir::open(std::path::Path::new(path))?;
    tracing::info!(
        "data directory {path}: locked, durability {}",
        config.durability.name()
    );
    Ok(Some(Arc::new(dir)))
}

/// `ringmq check-config`: loads the configuration as a start would, and stops there.
/// The unit's `ExecStartPre` runs it, so the exit code is the contract: 0 valid, 2
/// invalid (the same code a start with that configuration exits with).
fn check_config(cli: &Cli) -> ExitCode {
    let what = match &cli.config {
        Some(path) => format!("config {path}"),
        None => "configuration (built-in defaults and options)".to_string(),
    };
    match config::load(cli).map_err(|e| e.to_string()).and_then(|c| {
        bridges_runnable(&c)?;
        verify::load_policy(&c)?;
        load_tls(&c)?;
        load_sn(&c)?;
        Ok(c)
    }) {
        Ok(_) => {
            println!("ringmq: {what} is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            say!("ringmq: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads every TLS listener's files (in `config.listeners()` order; `None` for a
/// plain listener). Errors name the listener and the file.
/// The MQTT-SN gateway's bounds and predefined topics; `None` when it is off.
fn load_sn(config: &Config) -> Result<Option<GatewayLimits>, String> {
    if config.mqttsn_listen.is_none() {
        return Ok(None);
    }
    let predefined = match &config.mqttsn_predefined_topics_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("mqttsn_predefined_topics_file {path}: {e}"))?;
            parse_predefined(&text)
                .map_err(|e| format!("mqttsn_predefined_topics_file {path}: {e}"))?
        }
        None => Default::default(),
    };
    // ADVERTISE needs both its period and its destination: one alone is a mistake.
    let advertise_interval = match (
        config.mqttsn_advertise_interval_s,
        config.mqttsn_advertise_address,
    ) {
        (0, None) => None,
        (s, Some(_)) if s > 0 => Some(std::time::Duration::from_secs(s)),
        (0, Some(a)) => {
            return Err(format!(
                "mqttsn_advertise_address {a}: needs mqttsn_advertise_interval_s above 0"
            ))
        }
        (s, _) => {
            return Err(format!(
                "mqttsn_advertise_interval_s {s}: needs mqttsn_advertise_address"
            ))
        }
    };
    Ok(Some(GatewayLimits {
        advertise_interval,
        max_clients: config.mqttsn_max_clients,
        max_topic_ids: config.mqttsn_max_topic_ids,
        max_buffered_msgs: config.mqttsn_max_buffered_msgs,
        max_datagram_bytes: config.mqttsn_max_datagram_bytes,
        retry_interval: std::time::Duration::from_millis(config.mqttsn_retry_interval_ms),
        max_retries: config.mqttsn_max_retries,
        predefined: Arc::new(predefined),
        ..GatewayLimits::default()
    }))
}

/// Binds one UDP socket per loop for the MQTT-SN gateway, all on one port
/// (`SO_REUSEPORT`: the kernel keeps each peer address on one socket).
fn bind_udp_group(
    addr: SocketAddr,
    shards: usize,
) -> std::io::Result<(SocketAddr, Vec<UdpSocket>)> {
    let mut sockets = Vec::with_capacity(shards);
    let mut bound = addr;
    for i in 0..shards {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        // ADVERTISE may go to a broadcast address (spec 6.1).
        socket.set_broadcast(true)?;
        let s: UdpSocket = socket.into();
        if i == 0 {
            bound = s.local_addr()?;
        }
        sockets.push(s);
    }
    Ok((bound, sockets))
}

fn load_tls(config: &Config) -> Result<Vec<Option<Arc<ListenerTls>>>, String> {
    let read = |p: &std::path::Path| std::fs::read(p);
    config
        .listeners()
        .iter()
        .map(|l| {
            let Some(t) = &l.tls else { return Ok(None) };
            let files = TlsFiles {
                certs: t.cert.iter().map(Into::into).collect(),
                keys: t.key.iter().map(Into::into).collect(),
                client_ca: t.client_ca.as_ref().map(Into::into),
                require_certificate: t.require_certificate,
                identity: match t.identity_username {
                    IdentityUsername::None => IdentitySource::None,
                    IdentityUsername::CommonName => IdentitySource::CommonName,
                    IdentityUsername::SubjectAltName => IdentitySource::SubjectAltName,
                },
                session_tickets: t.session_tickets,
            };
            let tls =
                ListenerTls::load(files, &read).map_err(|e| format!("listener {}: {e}", l.url))?;
            Ok(Some(Arc::new(tls)))
        })
        .collect()
}

/// SIGHUP: every TLS listener reads its files again. One that fails keeps its old
/// material, and the error names the file; connections are not touched.
fn reload_tls(tls: &[Option<Arc<ListenerTls>>]) {
    let read = |p: &std::path::Path| std::fs::read(p);
    let mut reloaded = 0;
    for lt in tls.iter().flatten() {
        match lt.reload(&read) {
            Ok(()) => reloaded += 1,
            Err(e) => tracing::error!("SIGHUP: TLS reload failed, old certificate kept: {e}"),
        }
    }
    tracing::info!("SIGHUP: reloaded TLS material of {reloaded} listener(s)");
}

/// Tells systemd (sd_notify(3)) about a state change, e.g. `READY=1`, when it started
/// us as `Type=notify`: one datagram to the unix socket named by `NOTIFY_SOCKET`
/// (`@name`: the abstract namespace). Written by hand: the protocol is one `sendto`.
/// Without `NOTIFY_SOCKET` (not under systemd) there is nothing to do. A failure is
/// logged, not fatal: systemd then times the start out and says why.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&path, state) {
        tracing::warn!("sd_notify {state:?} to NOTIFY_SOCKET {path:?}: {e}");
    }
}

fn send_notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    let sent = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            socket.send_to_addr(state.as_bytes(), &UnixAddr::from_abstract_name(name)?)?
        }
        None => socket.send_to(state.as_bytes(), path)?,
    };
    if sent != state.len() {
        return Err(std::io::Error::other(format!(
            "sent {sent} of {} bytes",
            state.len()
        )));
    }
    Ok(())
}

// mimalloc's C API (`mimalloc.h`), linked through `libmimalloc-sys` for the global
// allocator. Declared here rather than through that crate's `extended` feature, which
// would add a dependency (`cty`) for this one function.
extern "C" {
    fn mi_collect(force: bool);
}

/// Given to every loop as `WorkerSetup::allocator_collect`: frees this thread's
/// empty mimalloc pages and purges those whose purge delay has passed. Not forced:
/// a forced collect also visits full pages and purges at once, which is for exit.
fn collect_allocator() {
    // SAFETY: `mi_collect` takes a plain bool and only touches the calling thread's
    // heap and mimalloc's arenas (under mimalloc's own synchronisation); mimalloc is
    // this process's global allocator, so its state is initialised.
    unsafe { mi_collect(false) }
}

/// mimalloc asks for transparent huge pages on its arenas: every first touch of a
/// 2 MiB region then makes all of it resident. Measured here: an idle default broker
/// held 30 MB instead of 9 MB, and growing per-connection tables cost RSS in 2 MiB
/// steps. Memory per connection is what this broker is sized by, so THP is off for
/// the process (the kernel checks the flag at each fault). `MIMALLOC_ALLOW_THP` set
/// in the environment leaves the choice to mimalloc.
fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument (the rest must be 0) and
    // only changes this process's memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Logging is not set up yet; the broker works either way.
        say!(
            "ringmq: PR_SET_THP_DISABLE failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `RUST_LOG`, when set, overrides `log_level`. `log_level` was parsed by the config
/// layer (a bad one exits 2); an unparsable `RUST_LOG` is not the broker's config,
/// so it does not stop the start, but it is named in a warning and `log_level` used.
fn init_logging(level: &str, json: bool) {
    use std::env::VarError;
    use tracing_subscriber::EnvFilter;
    let (from_env, bad_env) = match std::env::var("RUST_LOG") {
        Err(VarError::NotPresent) => (None, None),
        Err(VarError::NotUnicode(v)) => (None, Some(format!("{v:?} (not UTF-8)"))),
        Ok(v) => match EnvFilter::try_new(&v) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(format!("{v:?} ({e})"))),
        },
    };
    // `new` skips a directive it cannot parse instead of failing; `level` has none.
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    // Colour codes only for a terminal: in files and CI logs they are noise.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !json)
        // A closed stderr (the supervisor's pipe went away) must not turn every log
        // line into a panic: the signal thread logs before it sets the shutdown flag.
        .log_internal_errors(false);
    if json {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.init();
    }
    if let Some(bad) = bad_env {
        let text = format!("RUST_LOG={bad} ignored; using log_level {level:?}");
        // Shown even when `level` filters warnings out: it explains what is logged.
        if tracing::enabled!(tracing::Level::WARN) {
            tracing::warn!("{text}");
        } else {
            say!("ringmq: {text}");
        }
    }
}

fn choose_backend(wanted: IoBackend) -> Result<Backend, String> {
    let probe = uring::probe_support();
    match (wanted, probe) {
        (IoBackend::Epoll, _) => Ok(Backend::Epoll),
        (_, Ok(features)) => {
            tracing::info!("io_uring available: {features}");
            Ok(Backend::Uring)
        }
        (IoBackend::Uring, Err(e)) => Err(format!("--io uring: io_uring unusable here: {e}")),
        (IoBackend::Auto, Err(e)) => {
            tracing::warn!("io_uring unusable ({e}); falling back to epoll");
            Ok(Backend::Epoll)
        }
    }
}

/// Binds one listener per shard for `addr`, all on the same port (`SO_REUSEPORT`).
/// Accepted sockets inherit `timers` from their listener.
fn bind_group(
    addr: SocketAddr,
    shards: usize,
    timers: &ringmq::io::TcpTimers,
) -> std::io::Result<(SocketAddr, Vec<TcpListener>)> {
    let mut listeners = Vec::with_capacity(shards);
    let mut bound = addr;
    for i in 0..shards {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        ringmq::io::set_tcp_timers(&socket, timers)?;
        socket.bind(&bound.into())?;
        socket.listen(ringmq::io::LISTEN_BACKLOG)?;
        let listener: TcpListener = socket.into();
        if i == 0 {
            bound = listener.local_addr()?;
        }
        listeners.push(listener);
    }
    Ok((bound, listeners))
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and threads spawned after), so
/// only the signal thread's `sigwait` sees them. SIGHUP's default action would kill
/// the broker, and the unit's `ExecReload` sends it.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local, zero-initialised set; pthread_sigmask
    // changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for the next SIGINT or SIGTERM in `set`; a SIGHUP on the way runs
/// `on_reload`. `None`: sigwait failed.
fn wait_shutdown_signal(set: &libc::sigset_t, on_reload: &dyn Fn()) -> Option<libc::c_int> {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on a set blocked in every thread; writes the signal number.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            return None;
        }
        if sig != libc::SIGHUP {
            return Some(sig);
        }
        on_reload();
    }
}

/// `max_connections_explicit`: the user set `max_connections`; when they did not, the
/// default is lowered to what this machine's tables hold instead of warning.
fn run(
    mut config: Config,
    tls: Vec<Option<Arc<ListenerTls>>>,
    max_connections_explicit: bool,
    auth: Option<ringmq::auth::AuthPolicy>,
    sn: Option<GatewayLimits>,
    // Held (locked) until the broker exits; the loops open their directories in it.
    data_dir: Option<Arc<ringmq::io::datadir::DataDir>>,
) -> Result<(), String> {
    let nofile = rio::raise_nofile_limit().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let backend = choose_backend(config.io)?;
    let cpus = worker::allowed_cpus();
    let cores = if cpus.is_empty() {
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cpus.len()
    };
    let shards = config.shards.unwrap_or(cores).max(1);
    let pin = shards <= cpus.len();

    // Durability: the sessions in the data directory were placed with its seed, and
    // every loop's log is recovered (re-homed for another loop count) before any
    // socket is bound, so nothing is served, /readyz included, before recovery.
    if let (Some(d), None) = (&data_dir, config.placement_seed) {
        let seed = d
            .placement_seed(ringmq::shard::random_placement_seed())
            .map_err(|e| e.to_string())?;
        config.placement_seed = Some(seed);
    }
    let mut stores = match &data_dir {
        Some(d) => worker::store::recover_loops(d, &config, shards)?,
        None => Vec::new(),
    }
    .into_iter();

    // Each loop holds its share of max_connections plus room to accept connections
    // over the limit (and an uneven spread between loops) long enough for the shard
    // to refuse them with a CONNACK instead of a reset: 1/8 of the share, at least 64.
    let loop_slots = |share: usize| share.saturating_add((share / 8).max(64));
    let share = config.max_connections.div_ceil(shards);
    let mut loop_options = LoopOptions {
        max_connections: loop_slots(share),
        recv_bufs_per_ring: loop_recv_bufs(shards),
        // The per-IP limit, and the failed-password limit per source address, need
        // peer addresses (single-shot accepts).
        accept_peer_addr: config.max_connections_per_ip > 0 || config.password_file.is_some(),
        ..LoopOptions::default()
    };
    match backend {
        Backend::Uring => {
            let (rings, table) = uring::plan_rings(&loop_options).map_err(|e| e.to_string())?;
            let capacity = uring::planned_capacity(rings, table);
            if capacity < loop_options.max_connections {
                if max_connections_explicit {
                    tracing::warn!(
                        "max_connections {} needs {} per loop, above the {capacity} that {} rings of \
                         {table} slots hold",
                        config.max_connections,
                        loop_options.max_connections,
                        uring::MAX_RINGS
                    );
                } else {
                    // The largest share whose loop (share plus refusal room) fits.
                    let share = (capacity / 9 * 8).min(capacity.saturating_sub(64)).max(1);
                    tracing::info!(
                        "max_connections defaults to {}; lowered to {} ({share} per loop, \
                         {capacity} with the room to refuse more: RLIMIT_NOFILE {nofile} \
                         bounds each ring's table)",
                        config.max_connections,
                        share * shards
                    );
                    config.max_connections = share * shards;
                    loop_options.max_connections = loop_slots(share);
                }
            }
            let accept = if loop_options.accept_peer_addr {
                "single-shot accepts with peer address (max_connections_per_ip is set)"
            } else {
                "multishot accept, peer address not collected"
            };
            tracing::info!(
                "io_uring: {rings} ring(s) per loop, {table} direct-descriptor slots each \
                 (RLIMIT_NOFILE {nofile}), {capacity} connections per loop; {accept}"
            );
        }
        Backend::Epoll => {
            tracing::info!(
                "epoll: connections are plain fds, bounded by RLIMIT_NOFILE {nofile} for the whole process"
            );
            if config.max_connections as u64 > nofile {
                if max_connections_explicit {
                    tracing::warn!(
                        "max_connections {} is above RLIMIT_NOFILE {nofile}: epoll holds fewer",
                        config.max_connections
                    );
                } else {
                    tracing::info!(
                        "max_connections defaults to {}; lowered to RLIMIT_NOFILE {nofile}",
                        config.max_connections
                    );
                    config.max_connections = usize::try_from(nofile).unwrap_or(usize::MAX);
                    loop_options.max_connections =
                        loop_slots(config.max_connections.div_ceil(shards));
                }
            }
        }
    }

    // Listeners: per address, one SO_REUSEPORT listener per shard.
    let mut per_shard: Vec<Vec<TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound_addrs = Vec::new();
    let timers = ringmq::io::TcpTimers {
        keepalive_idle_s: config.tcp_keepalive_idle_s,
        keepalive_interval_s: config.tcp_keepalive_interval_s,
        keepalive_count: config.tcp_keepalive_count,
        user_timeout_ms: config.tcp_user_timeout_ms,
    };
    for listener in config.listeners() {
        let addr = listener.url.addr;
        let (bound, group) = bind_group(addr, shards, &timers)
            .map_err(|e| format!("listen on {}: {e}", listener.url))?;
        bound_addrs.push(ringmq::config::ListenUrl {
            scheme: listener.url.scheme,
            addr: bound,
            path: listener.url.path.clone(),
        });
        for (i, l) in group.into_iter().enumerate() {
            per_shard[i].push(l);
        }
    }

    // The HTTP listener (metrics, health, status page): one socket, owned by loop 0.
    let mut http_listener = match config.http_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(|e| format!("http_listen on {addr}: {e}"))?;
            Some(l)
        }
        None => None,
    };
    // The MQTT-SN gateway: one UDP socket per loop on one port.
    let mut sn_sockets: Vec<Option<UdpSocket>> = (0..shards).map(|_| None).collect();
    let mut sn_addr = None;
    if let (Some(addr), Some(_)) = (config.mqttsn_listen, &sn) {
        let (bound, group) =
            bind_udp_group(addr, shards).map_err(|e| format!("mqttsn_listen on {addr}: {e}"))?;
        sn_addr = Some(bound);
        for (slot, s) in sn_sockets.iter_mut().zip(group) {
            *slot = Some(s);
        }
    }
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr().map_err(|e| format!("http_listen: {e}"))?),
        None => None,
    };
    let started = std::time::Instant::now();

    let endpoints = ring::mesh::<WorkerMsg>(shards, MESH_RING_CAPACITY, MESH_OVERFLOW_MAX)
        .map_err(|e| format!("mesh: {e}"))?;
    // One key for every loop of the process: they must agree on each session's owner.
    config
        .placement_seed
        .get_or_insert_with(ringmq::shard::random_placement_seed);
    let config = Arc::new(config);
    let shutdown = Arc::new(AtomicBool::new(false));
    let exit_barrier = Arc::new(Barrier::new(shards));
    let sigset = block_shutdown_signals();

    let (remote_tx, remote_rx) = mpsc::channel::<(usize, Arc<Remote>)>();
    let mut peer_txs = Vec::with_capacity(shards);
    let mut handles = Vec::with_capacity(shards);
    let node = ringmq::shard::NodeCounters::new();
    // Slow hashes run here, never on a loop: one thread per two loops, at least one.
    let auth = match auth {
        Some(policy) => {
            let pool = VerifierPool::start(shards.div_ceil(2))
                .map_err(|e| format!("starting the verifier pool: {e}"))?;
            Some((Arc::new(AuthShared::new(policy)), pool))
        }
        None => None,
    };
    // WebSocket settings per listener, in `config.listeners()` order like `tls`.
    let ws: Vec<Option<Arc<ringmq::transport::WsConfig>>> = config
        .listeners()
        .into_iter()
        .map(|l| {
            l.ws.map(|w| {
                Arc::new(ringmq::transport::WsConfig {
                    path: w.path,
                    allowed_origins: w.allowed_origins,
                    max_frame_bytes: w.max_frame_bytes,
                })
            })
        })
        .collect();
    // The cluster thread (issue #17): only with `cluster_nats`; a node that cannot
    // reach NATS yet starts anyway and serves its own clients.
    let (cluster, mut cluster_links) = if config.cluster_nats.is_empty() {
        (None, Vec::new())
    } else {
        let (t, links) = ringmq::cluster::link::start(&config, shards)
            .map_err(|e| format!("starting the cluster thread: {e}"))?;
        say!(
            "ringmq cluster node {} via {}",
            t.status.node,
            config.cluster_nats.join(",")
        );
        (Some(t), links)
    };
    let mut cluster_links = cluster_links.drain(..);
    for (id, (endpoint, listeners)) in endpoints.into_iter().zip(per_shard).enumerate() {
        let (peers_tx, peers_rx) = mpsc::channel();
        peer_txs.push(peers_tx);
        let setup = WorkerSetup {
            id,
            config: config.clone(),
            endpoint,
            listeners,
            listener_tls: tls.clone(),
            listener_ws: ws.clone(),
            loop_options: loop_options.clone(),
            pin_cpu: if pin { cpus.get(id).copied() } else { None },
            shutdown: shutdown.clone(),
            remote_tx: remote_tx.clone(),
            peers_rx,
            exit_barrier: exit_barrier.clone(),
            node: node.clone(),
            http_listener: if id == 0 { http_listener.take() } else { None },
            allocator_collect: Some(collect_allocator),
            started,
            auth: auth
                .as_ref()
                .map(|(shared, pool)| (shared.clone(), pool.verifier())),
            mqttsn: sn_sockets[id]
                .take()
                .zip(sn.clone())
                .map(|(socket, mut limits)| {
                    // One loop broadcasts ADVERTISE, not one per loop.
                    if id != 0 {
                        limits.advertise_interval = None;
                    }
                    SnSetup {
                        socket,
                        limits,
                        advertise_to: config.mqttsn_advertise_address,
                    }
                }),
            cluster: cluster_links.next(),
            store: stores.next(),
        };
        let h = thread::Builder::new()
            .name(format!("ringmq-shard-{id}"))
            .spawn(move || -> std::io::Result<WorkerReport> {
                match backend {
                    Backend::Uring => worker::run(setup, UringLoop::new),
                    Backend::Epoll => worker::run(setup, EpollLoop::new),
                }
            })
            .map_err(|e| format!("spawning shard {id}: {e}"))?;
        handles.push(h);
    }
    drop(remote_tx);

    let mut remotes: Vec<Option<Arc<Remote>>> = vec![None; shards];
    for _ in 0..shards {
        match remote_rx.recv() {
            Ok((id, r)) => remotes[id] = Some(r),
            Err(_) => break,
        }
    }
    let remotes: Option<Vec<Arc<Remote>>> = remotes.into_iter().collect();
    let Some(remotes) = remotes else {
        // A worker failed to build its loop: the others stop when their peers
        // channel closes. Report the first error.
        drop(peer_txs);
        let mut errors: Vec<String> = handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Err(e)) => Some(e.to_string()),
                _ => None,
            })
            .collect();
        // Loops refused for the same reason (e.g. rt_priority) say it once.
        errors.dedup();
        return Err(format!(
            "starting {} loops: {}",
            backend.name(),
            errors.join("; ")
        ));
    };
    for tx in peer_txs {
        let _ = tx.send(remotes.clone());
    }

    // Plain listeners as bare addresses (the form scripts have always parsed).
    let addrs: Vec<String> = bound_addrs
        .iter()
        .map(|u| match u.scheme {
            ringmq::config::Scheme::Mqtt => u.addr.to_string(),
            _ => u.to_string(),
        })
        .collect();
    if let Some(addr) = http_addr {
        say!("ringmq http on {addr} (/metrics, /healthz, /readyz, /api/stats, /)");
    }
    if let Some(addr) = sn_addr {
        say!("ringmq mqttsn on {addr} (udp, MQTT-SN 1.2)");
    }
    say!(
        "ringmq listening on {} ({}, {} shard{})",
        addrs.join(", "),
        backend.name(),
        shards,
        if shards == 1 { "" } else { "s" }
    );
    // Every listener is bound and listening and every loop has built its rings, so a
    // connection made from now on is accepted.
    sd_notify("READY=1");

    {
        let shutdown = shutdown.clone();
        let remotes = remotes.clone();
        let reload_config = config.clone();
        let shared = auth.as_ref().map(|(s, _)| s.clone());
        // SIGHUP reloads the password file, the ACL and the TLS material.
        let on_reload = move || {
            reload_auth(&reload_config, shared.as_deref());
            reload_tls(&tls);
        };
        thread::Builder::new()
            .name("ringmq-signals".into())
            .spawn(move || {
                if let Some(sig) = wait_shutdown_signal(&sigset, &on_reload) {
                    tracing::info!(signal = sig, "shutdown requested");
                }
                sd_notify("STOPPING=1");
                shutdown.store(true, Ordering::SeqCst);
                for r in &remotes {
                    r.wake();
                }
                // A second signal: stop waiting for clients.
                if let Some(sig) = wait_shutdown_signal(&sigset, &on_reload) {
                    say!("ringmq: second signal {sig}, exiting now");
                    std::process::exit(130);
                }
            })
            .map_err(|e| format!("spawning signal thread: {e}"))?;
    }

    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(report)) => tracing::info!("shard stopped: {report}"),
            Ok(Err(e)) => {
                tracing::error!("shard failed: {e}");
                first_error.get_or_insert(e.to_string());
                // One loop failing stops the broker.
                shutdown.store(true, Ordering::SeqCst);
                for r in &remotes {
                    r.wake();
                }
            }
            Err(_) => {
                first_error.get_or_insert("a shard thread panicked".to_string());
            }
        }
    }
    if let Some((_, pool)) = auth {
        pool.join();
    }
    if let Some(c) = cluster {
        c.stop();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// SIGHUP: re-reads the password and ACL files. Connections stay; each loop installs
/// the new policy on its next turn. A file that fails to parse leaves the old policy
/// in force, and the error names the file.
fn reload_auth(config: &Config, shared: Option<&AuthShared>) {
    let Some(shared) = shared else {
        tracing::info!("SIGHUP: no password or ACL file configured, nothing to reload");
        return;
    };
    match verify::load_policy(config) {
        Ok(Some(policy)) => {
            shared.install(policy);
            tracing::info!("SIGHUP: password and ACL files reloaded");
        }
        Ok(None) => {
            tracing::warn!("SIGHUP: the files are now empty of rules; keeping the old ones")
        }
        Err(e) => {
            tracing::error!("SIGHUP: reload failed, the old files stay in force: {e}");
            say!("ringmq: reload failed, the old files stay in force: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_split_the_receive_buffer_pool() {
        assert_eq!(loop_recv_bufs(1), LoopOptions::default().recv_bufs_per_ring);
        assert_eq!(loop_recv_bufs(1), 512);
        assert_eq!(loop_recv_bufs(2), 256);
        assert_eq!(loop_recv_bufs(4), RECV_BUFS_MIN);
        assert_eq!(loop_recv_bufs(64), RECV_BUFS_MIN);
    }
}
