//! Command line: one flat set of flags (accepted before or after the scenario name),
//! validated into a [`Config`]. Bad values are rejected naming the flag and the value.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ringmq::protocol::{ProtocolVersion, QoS};

use crate::payload::HEADER_LEN;

/// `--spin` of the message scenarios: a VM core's wake-up would count as broker latency.
const DEFAULT_SPIN: Duration = Duration::from_micros(100);
/// The range the kernel clamps a SCHED_OTHER thread's requested slice to.
const MIN_SCHED_SLICE: Duration = Duration::from_micros(100);
const MAX_SCHED_SLICE: Duration = Duration::from_millis(100);

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "MQTT load generator: connect storms, fan-in, fan-out, pairs and fleets over io_uring",
    after_help = "Without a scenario, `connect` runs: e.g. `loadgen --clients 100000`.\n\
Exit codes: 0 ok, 1 setup/IO error, 2 invalid flags, 3 connection failures above --max-failed-pct, 4 QoS>=1 messages lost."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Scenario {
    /// Connection storm: open --clients at --rate connects/s, hold them for --hold, disconnect.
    Connect,
    /// Reconnect storm: --clients connect with persistent sessions and subscribe
    /// lg/storm/<i>, disconnect, then all reconnect at once; measures the reconnect
    /// (time to the last CONNACK, CONNACK latency, sessions present, --broker-pid CPU).
    Storm,
    /// --publishers publishers on lg/fanin/<i> -> --subscribers subscribers on lg/fanin/+.
    Fanin,
    /// One publisher on lg/fanout -> --clients subscribers.
    Fanout,
    /// --clients publisher/subscriber pairs, each on its own topic lg/pairs/<i>.
    Pairs,
    /// --clients devices: subscribe dev/<id>/cmd, publish dev/<id>/telemetry every --interval;
    /// a collector subscribes dev/+/telemetry; a controller sends --cmd-rate commands/s that
    /// devices echo on dev/<id>/reply (round-trip latency).
    Fleet,
    /// --clients MQTT-SN clients over UDP to the gateway at --sn-port publish at
    /// --total-rate to a TCP collector (lg/sn/+); a TCP publisher sends --cmd-rate
    /// messages/s to lg/sncmd/<i>, which SN client i subscribed to. Latency both ways.
    Sn,
}

impl Scenario {
    /// Scenarios whose measured phase is the connect storm itself (no messages).
    pub fn is_connect_storm(self) -> bool {
        matches!(self, Scenario::Connect | Scenario::Storm)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Storm => "storm",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Fleet => "fleet",
            Scenario::Sn => "sn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// MQTT straight on TCP.
    Tcp,
    /// MQTT over WebSocket (HTTP/1.1 upgrade at --ws-path, binary frames).
    Ws,
}

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Broker host (IPv4 address or "localhost").
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, global = true, default_value_t = 1883)]
    pub port: u16,
    /// sn: the broker's MQTT-SN gateway port (UDP, on --host).
    #[arg(long, global = true, default_value_t = 1884)]
    pub sn_port: u16,
    /// Several broker nodes of one cluster, HOST:PORT,... (replaces --host/--port).
    /// Publishers go to node (stream mod N), subscribers to node (index + 1 mod N), so
    /// with N >= 2 each pairs-scenario subscriber sits on another node than its
    /// publisher; clients that do both (fleet, connect) go to node (index mod N).
    #[arg(long, global = true)]
    pub hosts: Option<String>,
    /// connect: clients; fanout: subscribers; pairs: pairs; fleet: devices.
    #[arg(long, global = true, default_value_t = 100)]
    pub clients: u64,
    /// fanin: publishers.
    #[arg(long, global = true, default_value_t = 4)]
    pub publishers: u64,
    /// fanin: subscribers.
    #[arg(long, global = true, default_value_t = 1)]
    pub subscribers: u64,
    /// connect: connects/s (0 = as fast as --connect-inflight allows);
    /// others: messages/s per publisher (0 = as fast as --window allows).
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages/s over all publishers (split evenly); overrides --rate for publishers.
    #[arg(long, global = true)]
    pub total_rate: Option<f64>,
    /// QoS of publishes and subscriptions.
    #[arg(long, global = true, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 24: publisher id, sequence number, timestamp).
    #[arg(long, global = true, default_value_t = 64)]
    pub size: usize,
    /// Measured run time (e.g. 10s, 500ms, 2m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured traffic before the run.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// connect: how long established connections are held.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
    /// After the run, how long to wait for messages still in flight before counting them lost.
    #[arg(long, global = true, default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Give up on connections not established after this long.
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// MQTT protocol version.
    #[arg(long, global = true, value_enum, default_value = "3.1.1")]
    pub protocol: ProtocolArg,
    /// How MQTT reaches the broker: tcp, or ws (every scenario over WebSocket).
    #[arg(long, global = true, value_enum, default_value = "tcp")]
    pub transport: TransportArg,
    /// --transport ws: the request path of the upgrade.
    #[arg(long, global = true, default_value = "/mqtt")]
    pub ws_path: String,
    /// Source addresses to bind, e.g. 127.0.0.2-127.0.0.9 or 10.0.0.1,10.0.0.2 ("none": kernel
    /// chooses). Default: 127.0.0.2-127.0.0.9 for a loopback host, none otherwise.
    #[arg(long, global = true)]
    pub src_ips: Option<String>,
    /// Worker threads, each with its own io_uring (raised to fit RLIMIT_NOFILE slots per ring).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Closed loop: unacknowledged messages per publisher (QoS>=1: until PUBACK/PUBCOMP;
    /// QoS 0: until every subscriber received it). Default: QoS 1/2 as many as keep one
    /// subscriber's undelivered messages within 1,000 (ringmq's default
    /// max_queued_messages), 1..16; QoS 0 as many as keep them within 1 MiB (its
    /// max_outbound_bytes), 16..128. Fan-in 100 x 64 B: 10 and 128. The output says which.
    #[arg(long, global = true)]
    pub window: Option<u32>,
    /// Closed loop: a publisher with messages in flight sends again once its window has
    /// room for this many (default: half the window). Fewer, larger sends cost loadgen
    /// (and, on loopback, the broker's receive path it runs) less CPU per message;
    /// 1 sends as soon as any room appears.
    #[arg(long, global = true)]
    pub send_batch: Option<u32>,
    /// Send at --rate regardless of acknowledgements (needs --rate or --total-rate).
    #[arg(long, global = true)]
    pub open_loop: bool,
    /// Every client connects with a persistent session (3.1.1 clean session 0, MQTT 5
    /// Session Expiry 3600 s), e.g. to measure a broker's durability.
    #[arg(long, global = true)]
    pub persistent: bool,
    /// Before blocking, poll for completions (and for the next paced send) this long
    /// instead of sleeping: a sleeping core's wake-up (tens of µs in a VM) would count
    /// as broker latency. Spin time is left out of loadgen's CPU figures. 0 = never spin.
    /// Default 100us; connect and storm: 0 (a CONNACK takes milliseconds in a storm,
    /// and six threads spinning between completions cost more CPU than the storm's own
    /// work in loadgen's user space).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub spin: Option<Duration>,
    /// SCHED_FIFO priority 1..99 for the worker threads (needs CAP_SYS_NICE or
    /// RLIMIT_RTPRIO); 0 = normal scheduling. On a shared machine a subscriber's copy
    /// otherwise waits while other processes hold loadgen's core, and that wait is
    /// counted as the broker's latency.
    #[arg(long, global = true, default_value_t = 0)]
    pub rt_priority: u32,
    /// Time slice loadgen's threads ask the normal scheduler (EEVDF, Linux 6.12+) for,
    /// 100us..100ms; 0 = the kernel's default. With a slice shorter than the task
    /// running on its core, a woken worker preempts that task at once instead of
    /// waiting up to a scheduler tick: the wait would count as broker latency.
    #[arg(long, global = true, default_value = "100us", value_parser = parse_duration)]
    pub sched_slice: Duration,
    /// Connection attempts in flight per thread.
    #[arg(long, global = true, default_value_t = 1024)]
    pub connect_inflight: u32,
    /// fleet: telemetry interval per device.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// fleet: commands/s from the controller (round trips).
    #[arg(long, global = true, default_value_t = 100.0)]
    pub cmd_rate: f64,
    /// Exit with code 3 when more than this percentage of connections failed.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub max_failed_pct: f64,
    /// Print one JSON line with all results on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Write the latency percentile distribution (HdrHistogram .hgrm format, microseconds).
    #[arg(long, global = true)]
    pub hgrm: Option<std::path::PathBuf>,
    /// Write an SVG plot of the latency percentile curve.
    #[arg(long, global = true)]
    pub plot: Option<std::path::PathBuf>,
    /// Scrape this Prometheus endpoint of the broker (e.g.
    /// http://127.0.0.1:9883/metrics) before and after the run and print the
    /// broker-side deltas (messages, drops by reason, busy ratio) after the report.
    #[arg(long, global = true)]
    pub scrape: Option<String>,
    /// Connect over TLS (mqtts, rustls): every scenario then runs encrypted. Needs
    /// --ca-file.
    #[arg(long, global = true)]
    pub tls: bool,
    /// CA certificate(s), PEM, the broker's certificate is verified against (--tls).
    #[arg(long, global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Name the broker's certificate must carry, also sent as SNI (--tls).
    #[arg(long, global = true, default_value = "localhost")]
    pub server_name: String,
    /// CONNECT username of every client.
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// CONNECT password of every client.
    #[arg(long, global = true)]
    pub password: Option<String>,
    /// connect, storm: the broker's process id; its CPU time (/proc/PID/stat) over the
    /// measured storm is reported beside loadgen's.
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
}

/// Validated settings for one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub scenario: Scenario,
    /// Where clients connect: `--hosts`, or `--host`/`--port` alone.
    pub targets: Vec<(Ipv4Addr, u16)>,
    pub clients: u64,
    pub publishers: u64,
    pub subscribers: u64,
    pub connect_rate: f64,
    /// Per publisher; 0 = unpaced (closed loop only).
    pub msg_rate: f64,
    pub qos: QoS,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub hold: Duration,
    pub drain: Duration,
    pub connect_timeout: Duration,
    pub protocol: ProtocolVersion,
    /// `--transport ws`: the upgrade path; `None`: plain TCP.
    pub ws_path: Option<String>,
    pub src_ips: Vec<Ipv4Addr>,
    pub threads: usize,
    pub window: u32,
    /// `--send-batch`; `None`: half the window.
    pub send_batch: Option<u32>,
    pub open_loop: bool,
    pub persistent: bool,
    pub spin: Duration,
    /// SCHED_FIFO priority of the worker threads; 0 = normal scheduling.
    pub rt_priority: u8,
    /// `--sched-slice`; zero: the kernel's default.
    pub sched_slice: Duration,
    pub connect_inflight: u32,
    pub cmd_rate: f64,
    pub max_failed_pct: f64,
    pub json: bool,
    pub hgrm: Option<std::path::PathBuf>,
    pub plot: Option<std::path::PathBuf>,
    /// `Some` with --tls: the client config (roots from --ca-file) and server name.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub broker_pid: Option<u32>,
}

/// The rustls client config of `--tls`: TLS 1.2 and 1.3, roots from `ca_file`, ALPN
/// `mqtt`. Errors name the flag and the file.
fn tls_client(
    ca_file: Option<&std::path::Path>,
    server_name: &str,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    ConfigError,
> {
    use rustls::pki_types::pem::PemObject;
    let Some(path) = ca_file else {
        return Err(bad(
            "tls",
            true,
            "needs --ca-file (the CA that signed the broker's certificate)",
        ));
    };
    let shown = path.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad("ca-file", &shown, &e.to_string()))?;
    for c in certs {
        let c = c.map_err(|e| bad("ca-file", &shown, &e.to_string()))?;
        roots
            .add(c)
            .map_err(|e| bad("ca-file", &shown, &e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("ca-file", &shown, "no certificate in the file"));
    }
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| bad("server-name", server_name, &e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("tls", true, &e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok((Arc::new(cfg), name))
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(flag: &str, value: impl std::fmt::Display, why: &str) -> ConfigError {
    ConfigError(format!("invalid value '{value}' for '--{flag}': {why}"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult_ns) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e9)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e9)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e9)
    } else {
        (s, 1e9)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' must be a non-negative duration"));
    }
    Ok(Duration::from_nanos((v * mult_ns) as u64))
}

fn parse_ip(flag: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| bad(flag, s, "not an IPv4 address"))
}

/// `--hosts`: `HOST:PORT,...` with IPv4 hosts or `localhost`.
pub fn parse_hosts(s: &str) -> Result<Vec<(Ipv4Addr, u16)>, ConfigError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (h, p) = part
            .rsplit_once(':')
            .ok_or_else(|| bad("hosts", part, "expected HOST:PORT"))?;
        let ip = if h == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            parse_ip("hosts", h)?
        };
        let port: u16 = p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("hosts", part, "port must be 1..65535"))?;
        out.push((ip, port));
    }
    if out.is_empty() {
        return Err(bad("hosts", s, "no HOST:PORT given"));
    }
    Ok(out)
}

pub fn parse_src_ips(s: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
    let s = s.trim();
    if s == "none" || s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let a = u32::from(parse_ip("src-ips", a)?);
            let b = u32::from(parse_ip("src-ips", b)?);
            if b < a {
                return Err(bad("src-ips", s, "range end is below its start"));
            }
            if b - a >= 65_536 {
                return Err(bad("src-ips", s, "range holds more than 65536 addresses"));
            }
            out.extend((a..=b).map(Ipv4Addr::from));
        } else {
            out.push(parse_ip("src-ips", part)?);
        }
    }
    Ok(out)
}

impl Opts {
    pub fn validate(&self, scenario: Scenario) -> Result<Config, ConfigError> {
        let host: Ipv4Addr = if self.host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            parse_ip("host", &self.host)?
        };
        if self.port == 0 {
            return Err(bad("port", 0, "must be 1..65535"));
        }
        let needs_clients = scenario != Scenario::Fanin;
        if needs_clients && self.clients == 0 {
            return Err(bad("clients", 0, "must be at least 1"));
        }
        if self.clients > 10_000_000 {
            return Err(bad("clients", self.clients, "at most 10000000"));
        }
        if scenario == Scenario::Fanin {
            if self.publishers == 0 || self.publishers > 1_000_000 {
                return Err(bad("publishers", self.publishers, "must be 1..1000000"));
            }
            if self.subscribers == 0 || self.subscribers > 1_000_000 {
                return Err(bad("subscribers", self.subscribers, "must be 1..1000000"));
            }
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(bad("rate", self.rate, "must be a non-negative number"));
        }
        if let Some(t) = self.total_rate {
            if !t.is_finite() || t <= 0.0 {
                return Err(bad("total-rate", t, "must be a positive number"));
            }
        }
        if self.size < HEADER_LEN {
            return Err(bad(
                "size",
                self.size,
                "must be at least 24 (publisher id, sequence number, timestamp)",
            ));
        }
        if self.size > 16 * 1024 * 1024 {
            return Err(bad("size", self.size, "at most 16777216"));
        }
        let spin = self.spin.unwrap_or(if scenario.is_connect_storm() {
            Duration::ZERO
        } else {
            DEFAULT_SPIN
        });
        if spin > std::time::Duration::from_millis(10) {
            return Err(bad("spin", format!("{spin:?}"), "at most 10ms"));
        }
        if !self.sched_slice.is_zero()
            && (self.sched_slice < MIN_SCHED_SLICE || self.sched_slice > MAX_SCHED_SLICE)
        {
            return Err(bad(
                "sched-slice",
                format!("{:?}", self.sched_slice),
                "0 (the kernel's default) or 100us..100ms (the kernel would clamp it)",
            ));
        }
        if let Some(w @ (0 | 65_536..)) = self.window {
            return Err(bad(
                "window",
                w,
                "must be 1..65535 (MQTT packet identifiers)",
            ));
        }
        let qos = QoS::from_u8(self.qos).unwrap_or_default();
        let senders_per_subscriber = if scenario == Scenario::Fanin {
            self.publishers
        } else {
            1
        };
        let window = self.window.unwrap_or_else(|| {
            crate::batch::default_window(qos, senders_per_subscriber, self.size)
        });
        if let Some(b) = self.send_batch {
            if b == 0 || b > window {
                return Err(bad(
                    "send-batch",
                    b,
                    &format!("must be 1..{window} (--window)"),
                ));
            }
        }
        if self.rt_priority > 99 {
            return Err(bad(
                "rt-priority",
                self.rt_priority,
                "must be 0..99 (0 = normal scheduling)",
            ));
        }
        if self.threads == 0 || self.threads > 1024 {
            return Err(bad("threads", self.threads, "must be 1..1024"));
        }
        if self.connect_inflight == 0 {
            return Err(bad("connect-inflight", 0, "must be at least 1"));
        }
        if !self.cmd_rate.is_finite() || self.cmd_rate < 0.0 {
            return Err(bad(
                "cmd-rate",
                self.cmd_rate,
                "must be a non-negative number",
            ));
        }
        if !(0.0..=100.0).contains(&self.max_failed_pct) {
            return Err(bad("max-failed-pct", self.max_failed_pct, "must be 0..100"));
        }
        if scenario == Scenario::Fleet && self.interval.is_zero() {
            return Err(bad("interval", "0s", "must be positive"));
        }
        if let Some(pid) = self.broker_pid {
            if !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
                return Err(bad("broker-pid", pid, "no such process"));
            }
        }
        if !scenario.is_connect_storm() && self.duration.is_zero() {
            return Err(bad("duration", "0s", "must be positive"));
        }
        let publishers = match scenario {
            Scenario::Connect | Scenario::Storm => 0,
            Scenario::Fanin => self.publishers,
            Scenario::Fanout => 1,
            Scenario::Pairs | Scenario::Fleet | Scenario::Sn => self.clients,
        };
        let msg_rate = match (scenario, self.total_rate) {
            (Scenario::Fleet, _) => 1e9 / self.interval.as_nanos().max(1) as f64,
            (_, Some(t)) => t / publishers.max(1) as f64,
            (_, None) => self.rate,
        };
        if self.open_loop && msg_rate == 0.0 {
            return Err(bad(
                "open-loop",
                true,
                "needs --rate or --total-rate: an unpaced open loop would only fill kernel buffers",
            ));
        }
        if self.transport == TransportArg::Ws && !self.ws_path.starts_with('/') {
            return Err(bad("ws-path", &self.ws_path, "must start with /"));
        }
        let src_ips = match &self.src_ips {
            Some(s) => parse_src_ips(s)?,
            None if host.is_loopback() => parse_src_ips("127.0.0.2-127.0.0.9")?,
            None => Vec::new(),
        };
        let targets = match &self.hosts {
            Some(list) => parse_hosts(list)?,
            None => vec![(host, self.port)],
        };
        Ok(Config {
            scenario,
            targets,
            clients: self.clients,
            publishers: self.publishers,
            subscribers: self.subscribers,
            connect_rate: if scenario.is_connect_storm() {
                self.rate
            } else {
                0.0
            },
            msg_rate,
            qos: QoS::from_u8(self.qos).unwrap_or_default(),
            size: self.size,
            duration: self.duration,
            warmup: self.warmup,
            hold: self.hold,
            drain: self.drain,
            connect_timeout: self.connect_timeout,
            protocol: match self.protocol {
                ProtocolArg::V311 => ProtocolVersion::V311,
                ProtocolArg::V5 => ProtocolVersion::V5,
            },
            ws_path: match self.transport {
                TransportArg::Tcp => None,
                TransportArg::Ws => Some(self.ws_path.clone()),
            },
            src_ips,
            threads: self.threads,
            window,
            send_batch: self.send_batch,
            open_loop: self.open_loop,
            // A storm resumes sessions: both rounds connect with persistent ones.
            persistent: self.persistent || scenario == Scenario::Storm,
            spin,
            rt_priority: self.rt_priority as u8,
            sched_slice: self.sched_slice,
            connect_inflight: self.connect_inflight,
            cmd_rate: self.cmd_rate,
            max_failed_pct: self.max_failed_pct,
            json: self.json,
            hgrm: self.hgrm.clone(),
            plot: self.plot.clone(),
            tls: match self.tls {
                true => Some(tls_client(self.ca_file.as_deref(), &self.server_name)?),
                false => None,
            },
            username: self.username.clone(),
            password: self.password.clone(),
            broker_pid: self.broker_pid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        cli.opts
            .validate(cli.scenario.unwrap_or(Scenario::Connect))
            .map_err(|e| e.0)
    }

    #[test]
    fn sched_slice_is_zero_or_what_the_kernel_takes_unclamped() {
        let slice = |args: &[&str]| parse(args).map(|c| c.sched_slice);
        assert_eq!(slice(&["loadgen", "pairs"]), Ok(Duration::from_micros(100)));
        assert_eq!(
            slice(&["loadgen", "pairs", "--sched-slice", "0"]),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            slice(&["loadgen", "pairs", "--sched-slice", "3ms"]),
            Ok(Duration::from_millis(3))
        );
        assert_eq!(
            slice(&["loadgen", "pairs", "--sched-slice", "100ms"]),
            Ok(Duration::from_millis(100))
        );
        for bad in ["99us", "101ms", "1s"] {
            let e = slice(&["loadgen", "pairs", "--sched-slice", bad]).unwrap_err();
            assert!(
                e.contains("--sched-slice") && e.contains("100us..100ms"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn spin_defaults_per_scenario_and_an_explicit_one_wins() {
        let spin = |args: &[&str]| parse(args).unwrap().spin;
        assert_eq!(spin(&["loadgen", "connect"]), Duration::ZERO);
        assert_eq!(spin(&["loadgen", "storm"]), Duration::ZERO);
        assert_eq!(spin(&["loadgen", "fanin"]), DEFAULT_SPIN);
        assert_eq!(spin(&["loadgen", "pairs"]), DEFAULT_SPIN);
        assert_eq!(
            spin(&["loadgen", "connect", "--spin", "50us"]),
            Duration::from_micros(50)
        );
        assert_eq!(spin(&["loadgen", "fanin", "--spin", "0"]), Duration::ZERO);
        let e = parse(&["loadgen", "connect", "--spin", "11ms"]).unwrap_err();
        assert!(e.contains("spin") && e.contains("11ms"), "{e}");
    }

    #[test]
    fn rt_priority_defaults_to_normal_scheduling_and_is_bounded() {
        assert_eq!(parse(&["loadgen", "fanout"]).unwrap().rt_priority, 0);
        assert_eq!(
            parse(&["loadgen", "fanout", "--rt-priority", "50"])
                .unwrap()
                .rt_priority,
            50
        );
        let e = parse(&["loadgen", "fanout", "--rt-priority", "100"]).unwrap_err();
        assert!(e.contains("rt-priority") && e.contains("100"), "{e}");
    }

    #[test]
    fn default_scenario_is_connect() {
        let c = parse(&["loadgen", "--clients", "100000"]).unwrap();
        assert_eq!(c.scenario, Scenario::Connect);
        assert_eq!(c.clients, 100_000);
        assert_eq!(c.hold, Duration::from_secs(10));
        assert_eq!(c.src_ips.len(), 8);
        assert_eq!(c.src_ips[0], Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn hosts_list_replaces_host_and_port() {
        let c = parse(&[
            "loadgen",
            "pairs",
            "--hosts",
            "127.0.0.1:1883, localhost:1884",
        ])
        .unwrap();
        assert_eq!(
            c.targets,
            [
                (Ipv4Addr::LOCALHOST, 1883),
                (Ipv4Addr::new(127, 0, 0, 1), 1884)
            ]
        );
        let c = parse(&["loadgen", "--port", "1999"]).unwrap();
        assert_eq!(c.targets, [(Ipv4Addr::LOCALHOST, 1999)]);
        for bad in ["127.0.0.1", "127.0.0.1:0", "host:1883", ","] {
            let e = parse(&["loadgen", "--hosts", bad]).unwrap_err();
            assert!(e.contains("--hosts"), "{bad}: {e}");
        }
    }

    #[test]
    fn flags_after_scenario() {
        let c = parse(&[
            "loadgen",
            "fanin",
            "--publishers",
            "3",
            "--qos",
            "1",
            "--total-rate",
            "300",
        ])
        .unwrap();
        assert_eq!(c.scenario, Scenario::Fanin);
        assert_eq!(c.publishers, 3);
        assert_eq!(c.qos, QoS::AtLeastOnce);
        assert_eq!(c.msg_rate, 100.0);
    }

    #[test]
    fn errors_name_flag_and_value() {
        let e = parse(&["loadgen", "pairs", "--size", "10"]).unwrap_err();
        assert!(e.contains("'--size'") && e.contains("'10'"), "{e}");
        let e = parse(&["loadgen", "--qos", "3"]).unwrap_err();
        assert!(e.contains("--qos") && e.contains('3'), "{e}");
        let e = parse(&["loadgen", "--duration", "abc"]).unwrap_err();
        assert!(e.contains("--duration") && e.contains("abc"), "{e}");
        let e = parse(&["loadgen", "--src-ips", "127.0.0.9-127.0.0.2"]).unwrap_err();
        assert!(
            e.contains("--src-ips") && e.contains("127.0.0.9-127.0.0.2"),
            "{e}"
        );
        let e = parse(&["loadgen", "fanout", "--open-loop"]).unwrap_err();
        assert!(e.contains("--open-loop"), "{e}");
        let e = parse(&["loadgen", "--window", "0"]).unwrap_err();
        assert!(e.contains("'--window'") && e.contains("'0'"), "{e}");
        let e = parse(&["loadgen", "fanin", "--window", "8", "--send-batch", "9"]).unwrap_err();
        assert!(e.contains("'--send-batch'") && e.contains("'9'"), "{e}");
        let e = parse(&["loadgen", "fanin", "--send-batch", "0"]).unwrap_err();
        assert!(e.contains("'--send-batch'") && e.contains("'0'"), "{e}");
        let c = parse(&["loadgen", "fanin", "--window", "8", "--send-batch", "8"]).unwrap();
        assert_eq!(c.send_batch, Some(8));
        let e = parse(&["loadgen", "--window", "65536"]).unwrap_err();
        assert!(e.contains("'--window'") && e.contains("'65536'"), "{e}");
    }

    #[test]
    fn default_window_follows_qos_and_fan_in() {
        let c = parse(&["loadgen", "fanin", "--publishers", "100"]).unwrap();
        assert_eq!(c.window, 128);
        let c = parse(&["loadgen", "fanin", "--publishers", "100", "--qos", "1"]).unwrap();
        assert_eq!(c.window, 10);
        let c = parse(&["loadgen", "fanin", "--publishers", "100", "--size", "4096"]).unwrap();
        assert_eq!(c.window, 16);
        let c = parse(&["loadgen", "fanin", "--publishers", "100", "--window", "7"]).unwrap();
        assert_eq!(c.window, 7);
        // --send-batch is checked against the window the run will use.
        let e = parse(&["loadgen", "pairs", "--qos", "1", "--send-batch", "17"]).unwrap_err();
        assert!(e.contains("'--send-batch'") && e.contains("1..16"), "{e}");
    }

    #[test]
    fn durations_and_ranges() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_src_ips("10.0.0.1,10.0.0.3-10.0.0.4").unwrap().len(),
            3
        );
        assert_eq!(parse_src_ips("none").unwrap(), Vec::<Ipv4Addr>::new());
    }
}
