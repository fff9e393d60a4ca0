//! The one table of every labelled counter family: its Prometheus name, help, label
//! and each label value with the counter it reads. `/metrics` (`prometheus.rs`),
//! `/api/stats` (`json.rs`), the `$SYS` topics (`sys.rs`) and the loops' summary
//! log line all read these tables, so a reason added here is exported everywhere at
//! once and a reason left out is left out everywhere (the tests in `tests.rs` set
//! every counter of every snapshot struct, one at a time, and fail when the
//! exposition does not move).

use super::LoopSnapshot;

/// One labelled counter family, with its samples for one snapshot.
#[derive(Debug, Clone)]
pub struct Family {
    /// The Prometheus name (`ringmq_..._total`).
    pub name: &'static str,
    pub help: &'static str,
    /// The label that tells the samples apart (`reason`, `result`, `kind`, ...).
    pub label: &'static str,
    /// Its short name in `/api/stats` (`"reasons": {"dropped": {..}}`) and under
    /// `$SYS/broker/ringmq/`.
    pub short: &'static str,
    pub samples: Vec<(&'static str, u64)>,
}

impl Family {
    pub fn total(&self) -> u64 {
        self.samples
            .iter()
            .map(|(_, v)| v)
            .fold(0, |a, b| a.wrapping_add(*b))
    }
}

fn family(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    short: &'static str,
    samples: Vec<(&'static str, u64)>,
) -> Family {
    Family {
        name,
        help,
        label,
        short,
        samples,
    }
}

/// Short names of the families the status page and `$SYS` sum.
pub const DROPPED: &str = "messages_dropped";
pub const REFUSED: &str = "connections_refused";
pub const CLOSED: &str = "connections_closed";

/// Every labelled counter family of `l`: one loop's counters, or the node's merged
/// ones (`NodeSnapshot::total`).
pub fn families(l: &LoopSnapshot) -> Vec<Family> {
    let c = &l.core;
    let io = &l.io;
    let sn = &c.sn;
    let ws = &l.ws_refused;
    vec![
        family(
            "ringmq_connections_refused_total",
            "CONNECTs refused, by reason.",
            "reason",
            REFUSED,
            vec![
                ("max_connections", c.refused_max_connections),
                ("max_connections_per_ip", c.refused_per_ip),
                ("connect_rate", c.refused_rate),
                ("memory", c.refused_busy),
                ("keepalive", c.refused_keepalive),
                ("handoff", c.refused_handoff),
                ("max_sessions", c.refused_max_sessions),
            ],
        ),
        family(
            "ringmq_connections_closed_total",
            "Connections closed by the broker, by reason.",
            "reason",
            CLOSED,
            vec![
                ("superseded", c.closed_superseded),
                ("connect_timeout", c.connect_timeouts),
                ("packet_too_large", c.closed_packet_too_large),
                ("protocol_error", c.closed_protocol_error),
                ("topic_invalid", c.closed_topic_invalid),
                ("receive_maximum", c.closed_receive_maximum),
                ("slow_consumer", c.closed_slow_consumer),
                ("not_reading", c.closed_not_reading),
                ("memory", c.closed_memory),
                ("drain_timeout", l.drain_timeouts),
                ("tls_error", l.tls_failed),
                ("websocket_error", ws_total(ws)),
                ("linger_full", l.linger_refused_full),
            ],
        ),
        family(
            "ringmq_websocket_refused_total",
            "WebSocket connections refused or closed for an error, by the answer they got \
             (HTTP 400 bad_request and no_mqtt_subprotocol, 431 request_too_large, 405 \
             method_not_allowed, 404 not_found, 426 upgrade_required, 403 \
             forbidden_origin; close 1002 protocol_error, 1003 text_frame, 1009 \
             frame_too_large).",
            "reason",
            "websocket_refused",
            vec![
                ("bad_request", ws.bad_request),
                ("no_mqtt_subprotocol", ws.no_mqtt_subprotocol),
                ("request_too_large", ws.request_too_large),
                ("method_not_allowed", ws.method_not_allowed),
                ("not_found", ws.not_found),
                ("upgrade_required", ws.upgrade_required),
                ("forbidden_origin", ws.forbidden_origin),
                ("protocol_error", ws.protocol_error),
                ("text_frame", ws.text_frame),
                ("frame_too_large", ws.frame_too_large),
            ],
        ),
        family(
            "ringmq_accept_failures_total",
            "Accepted sockets dropped before MQTT saw them, by reason.",
            "reason",
            "accept_failures",
            vec![
                ("table_full", io.accept_dropped_full),
                ("error", io.accept_errors),
            ],
        ),
        family(
            "ringmq_auth_refused_total",
            "CONNECTs refused by authentication, by reason.",
            "reason",
            "auth_refused",
            vec![
                ("bad_credentials", c.auth_bad_credentials),
                ("not_authorized", c.auth_not_authorized),
                ("rate_limited", c.auth_rate_limited),
                ("verifier_busy", c.auth_pool_busy),
            ],
        ),
        family(
            "ringmq_auth_jwt_total",
            "JWTs presented at CONNECT, by result; expired: connections ended at their token's exp.",
            "result",
            "auth_jwt",
            vec![
                ("verified", c.auth_jwt_verified),
                ("refused", c.auth_jwt_refused),
                ("expired", c.auth_jwt_expired),
            ],
        ),
        family(
            "ringmq_acl_denied_total",
            "Operations the ACL refused, by kind.",
            "kind",
            "acl_denied",
            vec![
                ("publish", c.acl_denied_publish),
                ("subscribe", c.acl_denied_subscribe),
                ("delivery", c.acl_denied_delivery),
            ],
        ),
        family(
            "ringmq_mqttsn_datagrams_total",
            "MQTT-SN datagrams received and sent.",
            "direction",
            "mqttsn_datagrams",
            vec![("in", sn.datagrams_in), ("out", sn.datagrams_out)],
        ),
        family(
            "ringmq_mqttsn_dropped_total",
            "MQTT-SN datagrams, messages and CONNECTs dropped or refused, by reason.",
            "reason",
            "mqttsn_dropped",
            vec![
                ("bad_datagram", sn.bad_datagrams),
                ("unexpected", sn.unexpected_msgs),
                ("max_clients", sn.connects_refused_full),
                ("max_topic_ids", sn.topic_ids_refused),
                ("max_buffered", sn.buffered_dropped),
                ("oversize", sn.oversize_dropped),
                ("send_buffer_full", sn.send_dropped),
                ("mesh_full", sn.forward_dropped),
            ],
        ),
        family(
            "ringmq_subscriptions_refused_total",
            "SUBSCRIBE filters refused, by reason.",
            "reason",
            "subscriptions_refused",
            vec![
                ("invalid_filter", c.refused_filters),
                ("max_subscriptions_per_client", c.refused_subscriptions),
            ],
        ),
        family(
            "ringmq_retained_refused_total",
            "Retained messages not stored, by reason.",
            "reason",
            "retained_refused",
            vec![
                ("max_retained_messages", c.dropped_retained_full),
                ("max_retained_bytes", c.dropped_retained_bytes),
                ("memory", c.dropped_retained_memory),
            ],
        ),
        family(
            "ringmq_store_errors_total",
            "Durability failures, by kind: log writes or syncs that failed (ENOSPC, EIO), \
             records the log refused (stopped after a failed fdatasync, or too large), \
             acknowledgements withheld or sent as 0x97 because their records were not written.",
            "reason",
            "store_errors",
            vec![
                ("write_failed", c.store_write_errors),
                ("record_refused", c.store_records_refused),
                ("ack_withheld", c.store_acks_refused),
            ],
        ),
        family(
            "ringmq_messages_dropped_total",
            "Message copies dropped, by reason.",
            "reason",
            DROPPED,
            vec![
                ("outbound_full", c.dropped_outbound_full),
                ("queue_full", c.dropped_queue_full),
                ("too_large", c.dropped_too_large),
                ("expired", c.dropped_expired),
                ("offline_qos0", c.dropped_offline_qos0),
                ("no_subscriber", c.dropped_no_subscriber),
                ("memory", c.dropped_memory_qos0),
                ("mesh_full", l.mesh_rejected),
            ],
        ),
        family(
            "ringmq_handoffs_total",
            "Connections handed to the loop that owns their session, by result (ok, failed \
             and expired counted by the sender, adopted by the receiver).",
            "result",
            "handoffs",
            vec![
                ("ok", l.migrations_out),
                ("failed", l.migrations_failed),
                ("expired", l.handoffs_expired),
                ("adopted", l.handoffs_in),
            ],
        ),
        family(
            "ringmq_io_handoff_failures_total",
            "Descriptor moves between loops that failed in the io backend, by reason.",
            "reason",
            "io_handoff_failures",
            vec![
                ("failed", io.migrate_failed),
                ("target_full", io.migrate_refused_full),
                ("unpaired_reaped", io.adopt_unpaired_reaped),
                ("descriptor_lost", io.migrate_descriptor_lost),
                ("slot_reclaimed", io.migrate_slot_reclaimed),
            ],
        ),
        family(
            "ringmq_io_doorbells_total",
            "Cross-loop doorbells that needed another try or were given up on.",
            "result",
            "io_doorbells",
            vec![
                ("retried", io.doorbell_retried),
                ("failed", io.doorbell_failed),
            ],
        ),
    ]
}

fn ws_total(ws: &crate::transport::ws::WsRefused) -> u64 {
    let crate::transport::ws::WsRefused {
        bad_request,
        no_mqtt_subprotocol,
        request_too_large,
        method_not_allowed,
        not_found,
        upgrade_required,
        forbidden_origin,
        protocol_error,
        text_frame,
        frame_too_large,
    } = *ws;
    bad_request
        + no_mqtt_subprotocol
        + request_too_large
        + method_not_allowed
        + not_found
        + upgrade_required
        + forbidden_origin
        + protocol_error
        + text_frame
        + frame_too_large
}

/// The total of the family `short` in `families`, 0 when there is none.
pub fn total(families: &[Family], short: &str) -> u64 {
    families
        .iter()
        .find(|f| f.short == short)
        .map_or(0, Family::total)
}
