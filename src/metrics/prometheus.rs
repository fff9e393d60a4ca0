//! The Prometheus text exposition (format 0.0.4) of a [`NodeSnapshot`]: node-wide
//! counters summed over loops, per-loop gauges labelled `shard`, one `reason` label
//! per drop, refusal and close counter, `process_*` and `ringmq_build_info`. Names
//! follow Prometheus conventions: `ringmq_` prefix, base units, `_total` on counters.

use std::fmt::Write;

use super::families::families;
use super::{NodeSnapshot, ProcessInfo};

/// What the exposition says about the build and the process besides the loops.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub version: &'static str,
    /// `io_uring` or `epoll`.
    pub io_backend: &'static str,
    pub process: Option<ProcessInfo>,
    /// Seconds since the broker started.
    pub uptime_seconds: f64,
    /// HTTP connections closed at accept because the listener's bound was reached.
    pub http_refused: u64,
}

/// The content type a scrape answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: Kind, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per `reason`.
    fn reasons(&mut self, name: &str, kind: Kind, help: &str, label: &str, values: &[(&str, u64)]) {
        self.family(name, kind, help);
        for (reason, v) in values {
            self.sample(name, &[(label, reason)], v);
        }
    }

    /// A gauge family with one sample per loop.
    fn per_loop(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        node: &NodeSnapshot,
        f: impl Fn(&super::LoopSnapshot) -> String,
    ) {
        self.family(name, kind, help);
        for l in &node.loops {
            let shard = l.shard.to_string();
            self.sample(name, &[("shard", &shard)], f(l));
        }
    }
}

/// Label values escape `\`, `"` and newlines (the format's rule).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Floats as Prometheus reads them (no exponent needed: Rust's `Display` writes
/// none, and `NaN`/`+Inf` are spelled as the format wants).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Renders the whole exposition.
pub fn render(node: &NodeSnapshot, ctx: &Context) -> String {
    use Kind::{Counter, Gauge};
    let mut o = Out(String::with_capacity(16 * 1024));
    let total = node.total();
    let c = &total.core;
    let io = &total.io;

    o.family(
        "ringmq_build_info",
        Gauge,
        "Build of the running broker (always 1).",
    );
    o.sample(
        "ringmq_build_info",
        &[("version", ctx.version), ("io_backend", ctx.io_backend)],
        1,
    );
    o.one(
        "ringmq_uptime_seconds",
        Gauge,
        "Seconds since the broker started.",
        float(ctx.uptime_seconds),
    );
    o.one(
        "ringmq_loops",
        Gauge,
        "Event loops that answered this scrape.",
        node.loops.len(),
    );
    o.one(
        "ringmq_scrape_missing_loops",
        Gauge,
        "Event loops that did not answer this scrape in time (their figures are missing).",
        node.missing_loops.len(),
    );

    // Connections.
    o.reasons(
        "ringmq_http_refused_total",
        Counter,
        "Connections to the HTTP listener closed at accept, by reason (max_connections: its bound of open connections was reached).",
        "reason",
        &[("max_connections", ctx.http_refused)],
    );
    o.one(
        "ringmq_connections",
        Gauge,
        "Client connections open now.",
        c.connections,
    );
    o.one(
        "ringmq_connections_accepted_total",
        Counter,
        "Client connections accepted.",
        c.accepted,
    );
    // Every labelled counter family, from the one table `/api/stats` and `$SYS`
    // read too.
    for f in families(&total) {
        o.reasons(f.name, Counter, f.help, f.label, &f.samples);
    }
    o.one(
        "ringmq_connections_lingered_total",
        Counter,
        "Closes that lingered (write side shut, reads discarded for close_linger_ms) so the client reads the reason.",
        total.lingered,
    );

    // Authentication and ACLs.
    o.one(
        "ringmq_auth_hashes_verified_total",
        Counter,
        "Password hashes checked on the verifier pool.",
        c.auth_verified,
    );
    o.one(
        "ringmq_auth_cache_hits_total",
        Counter,
        "CONNECTs authenticated from the verified-password cache.",
        c.auth_cache_hits,
    );

    // The MQTT-SN gateway (zero when `mqttsn_listen` is off).
    let sn = &c.sn;
    o.one(
        "ringmq_mqttsn_clients",
        Gauge,
        "MQTT-SN clients held by the gateway (awake, asleep or connecting).",
        sn.clients,
    );
    o.one(
        "ringmq_mqttsn_retransmits_total",
        Counter,
        "MQTT-SN REGISTERs and QoS 1/2 PUBLISHes sent again after Tretry.",
        sn.retransmits,
    );
    o.one(
        "ringmq_mqttsn_clients_lost_total",
        Counter,
        "MQTT-SN clients lost (keepalive, sleep or Nretry passed).",
        sn.clients_lost,
    );
    o.one(
        "ringmq_mqttsn_wills_published_total",
        Counter,
        "Wills the MQTT-SN gateway published for lost clients.",
        sn.wills_published,
    );
    o.one(
        "ringmq_mqttsn_forwarded_total",
        Counter,
        "MQTT-SN datagrams passed to the loop that owns their client.",
        sn.forwarded,
    );

    // Sessions and subscriptions.
    o.family(
        "ringmq_sessions",
        Gauge,
        "Sessions held, by state (online: a connection is attached).",
    );
    let offline = c.sessions.saturating_sub(c.sessions_online);
    o.sample("ringmq_sessions", &[("state", "online")], c.sessions_online);
    o.sample("ringmq_sessions", &[("state", "offline")], offline);
    o.one(
        "ringmq_sessions_expired_total",
        Counter,
        "Offline sessions ended by their Session Expiry Interval.",
        c.sessions_expired,
    );
    o.one(
        "ringmq_subscriptions",
        Gauge,
        "Subscriptions of the sessions held.",
        c.subscriptions,
    );

    // Retained.
    o.one(
        "ringmq_retained_messages",
        Gauge,
        "Retained messages stored.",
        c.retained,
    );
    o.one(
        "ringmq_retained_bytes",
        Gauge,
        "Bytes of the retained messages stored.",
        c.bytes_retained,
    );

    o.one(
        "ringmq_store_records_total",
        Counter,
        "Records appended to the write-ahead logs (durability on).",
        c.store_records,
    );

    o.one(
        "ringmq_retained_streamed_total",
        Counter,
        "Retained messages sent to new subscriptions by their streams.",
        c.retained_streamed,
    );

    // Routes: how long a subscription took to go live on the other loops.
    o.one(
        "ringmq_route_live_total",
        Counter,
        "Route adds of other loops applied here.",
        c.route_live_count,
    );
    o.one(
        "ringmq_route_live_seconds_total",
        Counter,
        "Time from the SUBSCRIBE read on one loop to its route applied on another, summed.",
        c.route_live_total_us as f64 / 1e6,
    );
    o.one(
        "ringmq_route_live_max_seconds",
        Gauge,
        "Longest time a route add took to go live on another loop, since start (max over loops).",
        float(c.route_live_max_us as f64 / 1e6),
    );
    o.one(
        "ringmq_route_live_slow_total",
        Counter,
        "Route adds that took longer than 100 µs to go live on another loop.",
        c.route_live_slow,
    );

    // Messages.
    o.family(
        "ringmq_messages_received_total",
        Counter,
        "PUBLISH packets received from clients (wills included), by QoS.",
    );
    for (q, v) in c.messages_in_qos.iter().enumerate() {
        let q = q.to_string();
        o.sample("ringmq_messages_received_total", &[("qos", &q)], v);
    }
    o.one(
        "ringmq_messages_unmatched_total",
        Counter,
        "Messages published here that matched no subscription on this node (in a cluster they may still reach other nodes).",
        c.unmatched,
    );
    o.one(
        "ringmq_messages_sent_total",
        Counter,
        "PUBLISH packets written for clients (resends included).",
        c.messages_out,
    );
    o.one(
        "ringmq_received_bytes_total",
        Counter,
        "Bytes read from client connections.",
        c.bytes_in,
    );
    o.one(
        "ringmq_sent_bytes_total",
        Counter,
        "Bytes handed to the kernel for client connections.",
        c.bytes_out,
    );
    o.one(
        "ringmq_messages_queued",
        Gauge,
        "Messages waiting in session queues.",
        c.messages_queued,
    );
    o.one(
        "ringmq_queued_bytes",
        Gauge,
        "Bytes of the messages waiting in session queues.",
        c.bytes_queued,
    );
    o.one(
        "ringmq_shared_payload_bytes",
        Gauge,
        "Bytes of large payloads held once for all their subscribers.",
        c.bytes_shared,
    );
    o.one(
        "ringmq_messages_inflight",
        Gauge,
        "Outbound QoS 1/2 messages sent and not yet acknowledged.",
        c.inflight,
    );

    // Mesh and hand-offs.
    o.one(
        "ringmq_mesh_messages_sent_total",
        Counter,
        "Messages published into the mesh between loops.",
        node.sum(|l| l.mesh.sent),
    );
    o.one(
        "ringmq_mesh_full_total",
        Counter,
        "Mesh sends that found the ring full (kept on the local overflow list).",
        node.sum(|l| l.mesh.overflowed),
    );
    o.one(
        "ringmq_mesh_rejected_total",
        Counter,
        "Mesh sends refused outright: ring and overflow list full.",
        total.mesh.rejected,
    );
    o.per_loop(
        "ringmq_mesh_inbound_messages",
        Gauge,
        "Messages waiting in a loop's inbound mesh rings.",
        node,
        |l| l.mesh_inbound_waiting.to_string(),
    );

    // IO.
    o.one(
        "ringmq_io_cq_overflow_total",
        Counter,
        "io_uring completions the kernel could not post at once (CQ overflow).",
        io.cq_overflow,
    );
    o.one(
        "ringmq_io_sq_full_total",
        Counter,
        "io_uring submissions that found the submission queue full.",
        io.sq_full,
    );
    o.one(
        "ringmq_io_sends_resumed_total",
        Counter,
        "Sends resubmitted with the rest of their bytes after a short write.",
        io.sends_resumed,
    );
    o.one(
        "ringmq_io_accepted_total",
        Counter,
        "Sockets the io backend accepted (MQTT and WebSocket listeners).",
        io.accepted,
    );
    o.one(
        "ringmq_io_accept_multishot_armed_total",
        Counter,
        "io_uring multishot accepts armed (each re-arm after its ring ran low).",
        io.accept_multi_armed,
    );
    o.one(
        "ringmq_io_send_busy_total",
        Counter,
        "Sends refused because one was already in flight on the socket (a bug: the bytes are lost).",
        io.send_refused_busy,
    );
    o.one(
        "ringmq_io_recv_nobufs_total",
        Counter,
        "Receives that ran out of provided buffers and were re-armed.",
        io.recv_nobufs,
    );

    // PUBLISH → kernel latency, every loop's histogram merged.
    let name = "ringmq_publish_to_kernel_seconds";
    o.family(
        name,
        Kind::Histogram,
        "Time from the loop turn that read a PUBLISH to the turn that reaped the completion of the send holding its delivery to a subscriber (bytes in the kernel's socket buffer), one sample per send of live deliveries, at loop-turn resolution.",
    );
    let h = &total.latency;
    let bucket = format!("{name}_bucket");
    for (le, n) in h.cumulative() {
        o.sample(&bucket, &[("le", &float(le))], n);
    }
    o.sample(&bucket, &[("le", "+Inf")], h.count);
    o.sample(&format!("{name}_sum"), &[], float(h.sum_us as f64 / 1e6));
    o.sample(&format!("{name}_count"), &[], h.count);

    // Loops.
    o.per_loop(
        "ringmq_loop_busy_ratio",
        Gauge,
        "CPU time of a loop's thread over wall time, since start.",
        node,
        |l| float(l.busy_ratio()),
    );
    o.per_loop(
        "ringmq_loop_busy_seconds_total",
        Counter,
        "CPU time of a loop's thread.",
        node,
        |l| float(l.busy_ns as f64 / 1e9),
    );
    o.per_loop(
        "ringmq_loop_turns_total",
        Counter,
        "Turns of a loop.",
        node,
        |l| l.turns.to_string(),
    );
    o.per_loop(
        "ringmq_loop_connections",
        Gauge,
        "Client connections a loop holds.",
        node,
        |l| l.core.connections.to_string(),
    );
    o.per_loop(
        "ringmq_memory_accounted_bytes",
        Gauge,
        "Message memory a loop accounts against memory_high_water_bytes (unsent output, queues, retained).",
        node,
        |l| l.core.memory_bytes().to_string(),
    );

    o.family(
        "ringmq_memory_part_bytes",
        Gauge,
        "Accounted message memory of all loops, by part: unsent output (tx), large payloads shared by their subscribers (shared), session queues (queued), the retained replica (retained, per loop), partial frames (rx), the filter trie and routes table (routes).",
    );
    for (part, v) in [
        ("tx", c.bytes_tx),
        ("shared", c.bytes_shared),
        ("queued", c.bytes_queued),
        (
            "retained",
            node.loops
                .iter()
                .map(|l| l.core.bytes_retained)
                .sum::<usize>(),
        ),
        ("rx", c.bytes_rx),
        ("routes", c.bytes_routes),
    ] {
        o.sample("ringmq_memory_part_bytes", &[("part", part)], v);
    }
    if let Some(p) = ctx.process {
        o.one(
            "process_resident_memory_bytes",
            Gauge,
            "Resident memory size in bytes.",
            p.resident_bytes,
        );
        o.one(
            "process_virtual_memory_bytes",
            Gauge,
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        );
        o.one(
            "process_cpu_seconds_total",
            Counter,
            "Total user and system CPU time spent in seconds.",
            float(p.cpu_seconds),
        );
        o.one(
            "process_start_time_seconds",
            Gauge,
            "Start time of the process since unix epoch in seconds.",
            float(p.start_time_seconds),
        );
        o.one(
            "process_open_fds",
            Gauge,
            "Number of open file descriptors.",
            p.open_fds,
        );
        o.one(
            "process_max_fds",
            Gauge,
            "Maximum number of open file descriptors.",
            p.max_fds,
        );
        o.one(
            "process_threads",
            Gauge,
            "Number of OS threads in the process.",
            p.threads,
        );
    }
    render_bridges(&mut o, node);
    o.0
}

/// One sample per `[[bridge]]`, labelled `bridge`, from the loop that owns it.
fn render_bridges(o: &mut Out, node: &NodeSnapshot) {
    use Kind::{Counter, Gauge};
    let bridges: Vec<&super::BridgeSnapshot> =
        node.loops.iter().flat_map(|l| l.bridges.iter()).collect();
    if bridges.is_empty() {
        return;
    }
    type Figure = fn(&super::BridgeSnapshot) -> u64;
    let families: [(&str, Kind, &str, Figure); 14] = [
        ("ringmq_bridge_up", Gauge, "1 while the bridge is connected to its remote broker.", |b| u64::from(b.up)),
        ("ringmq_bridge_held_messages", Gauge, "Outgoing messages held: queued while the remote is down, plus sent and unacknowledged.", |b| b.held),
        ("ringmq_bridge_connect_attempts_total", Counter, "Connection attempts towards the remote.", |b| b.stats.connect_attempts),
        ("ringmq_bridge_out_queued_total", Counter, "Local messages taken for the remote.", |b| b.stats.out_queued),
        ("ringmq_bridge_subscribe_refused_total", Counter, "Subscriptions the remote refused (SUBACK failure codes).", |b| b.stats.subscribe_refused),
        ("ringmq_bridge_connects_total", Counter, "Connections the remote accepted.", |b| b.stats.connects),
        ("ringmq_bridge_connect_failures_total", Counter, "Connection attempts that failed (refused, timed out, closed before CONNACK).", |b| b.stats.connect_failures),
        ("ringmq_bridge_disconnects_total", Counter, "Accepted connections that ended.", |b| b.stats.disconnects),
        ("ringmq_bridge_out_sent_total", Counter, "PUBLISHes sent to the remote, resends included.", |b| b.stats.out_sent),
        ("ringmq_bridge_out_acked_total", Counter, "QoS 1/2 messages the remote acknowledged.", |b| b.stats.out_acked),
        ("ringmq_bridge_out_dropped_total", Counter, "Local messages dropped because queue_max_messages were held.", |b| b.stats.out_dropped_queue_full),
        ("ringmq_bridge_in_received_total", Counter, "PUBLISHes received from the remote.", |b| b.stats.in_received),
        ("ringmq_bridge_in_dropped_total", Counter, "Remote messages dropped: no rule matched, or the local session was down.", |b| b.stats.in_unmatched + b.local_dropped),
        ("ringmq_bridge_protocol_errors_total", Counter, "Connections ended for a bad packet from the remote.", |b| b.stats.protocol_errors),
    ];
    for (name, kind, help, f) in families {
        o.family(name, kind, help);
        for b in &bridges {
            o.sample(name, &[("bridge", &b.name)], f(b));
        }
    }
}
