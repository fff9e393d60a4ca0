//! One held PUBACK/PUBREC with two conditions, on a cluster node with a data
//! directory: JetStream has the message (`cluster.rs`, `ClusterIn::Ack`) *and* this
//! node's logs have the copies it queued for persistent sessions (`durable.rs`,
//! `durable_remote.rs`). Whichever answers first is noted; the reply goes when the
//! second does. Without a data directory (or when the log needs nothing for the
//! message) the cluster's ack alone sends it, as before.
//!
//! A reply whose records failed waits for the cluster's ack too before its refusal
//! goes out: the client may reuse a packet id once it is answered, and the late ack
//! of the old message must not then be taken for the new one's.

use std::collections::HashMap;

use super::cluster::AckToken;
use super::{ConnId, Shard};
use crate::protocol::{Packet, PubResp, QoS, ReasonCode};

/// Where a reply with both conditions stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Both {
    /// Neither answered yet.
    Waiting,
    /// JetStream answered; the log has not.
    ClusterDone,
    /// The log is durable; JetStream has not answered.
    LogDone,
    /// The log failed; the refusal goes once JetStream answers.
    LogFailed,
    /// JetStream did not store the message (`refuse_unstored` once the log answers,
    /// so a packet id is never answered while its records may still land).
    ClusterFailed,
}

/// (connection, generation, packet id) of a reply held for both.
pub(crate) type BothKey = (ConnId, u32, u16);

/// The replies held for both conditions.
pub(crate) type BothHolds = HashMap<BothKey, Both>;

impl Shard {
    /// Right after `cluster_hold_ack` took a client publish's reply for JetStream:
    /// when the log must also have its records (appended since `mark`, or copies on
    /// other loops), the reply waits for both.
    pub(super) fn store_hold_with_cluster(
        &mut self,
        conn: ConnId,
        packet_id: u16,
        qos2: bool,
        mark: u64,
    ) {
        let Some(generation) = self.conns.get(conn).map(|c| c.generation) else {
            return;
        };
        if self.hold_publish(conn, packet_id, qos2, mark, true) {
            if let Some(s) = self.store.as_deref_mut() {
                s.both.insert((conn, generation, packet_id), Both::Waiting);
            }
        }
    }

    /// JetStream answered for `t`. Returns `true` when this module took the answer
    /// (the log still holds the reply, or the refusal went now); `false`: send the
    /// reply as usual.
    pub(super) fn store_cluster_acked(&mut self, t: &AckToken, stored: bool) -> bool {
        let Some(s) = self.store.as_deref_mut() else {
            return false;
        };
        let key = (t.conn, t.generation, t.packet_id);
        match s.both.get(&key).copied() {
            None => false,
            Some(Both::Waiting) => {
                let next = if stored {
                    Both::ClusterDone
                } else {
                    Both::ClusterFailed
                };
                s.both.insert(key, next);
                true
            }
            Some(Both::LogDone) => {
                s.both.remove(&key);
                false
            }
            Some(Both::ClusterDone | Both::ClusterFailed) => true,
            Some(Both::LogFailed) => {
                s.both.remove(&key);
                self.refuse_publish(t.conn, t.generation, t.packet_id, t.qos == QoS::ExactlyOnce);
                true
            }
        }
    }

    /// The log released (`ok`) or refused a reply that was held for both: whether
    /// it goes now (`true`) or waits for JetStream.
    pub(super) fn store_both_log_done(&mut self, key: BothKey, ok: bool, qos2: bool) -> bool {
        let Some(s) = self.store.as_deref_mut() else {
            return true;
        };
        match s.both.get(&key).copied() {
            Some(Both::ClusterDone) | None => {
                s.both.remove(&key);
                true
            }
            Some(Both::ClusterFailed) => {
                s.both.remove(&key);
                let (conn, generation, packet_id) = key;
                let qos = if qos2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                if let Some(now) = self.last_now {
                    self.refuse_unstored(conn, generation, packet_id, qos, now);
                }
                false
            }
            Some(_) => {
                s.both
                    .insert(key, if ok { Both::LogDone } else { Both::LogFailed });
                false
            }
        }
    }

    /// A publish's records will never be durable: MQTT 5 gets 0x97 (a QoS 2 flow
    /// ends there), 3.x no acknowledgement (it resends after reconnecting).
    pub(super) fn refuse_publish(
        &mut self,
        conn: ConnId,
        generation: u32,
        packet_id: u16,
        qos2: bool,
    ) {
        let Some(c) = self.conns.get(conn).filter(|c| c.generation == generation) else {
            return;
        };
        let (v5, session) = (c.version.is_v5(), c.session);
        if qos2 {
            // A PUBREC of 0x80 or more ends the flow: no PUBREL follows.
            if let Some(d) = self.sessions.get_mut(session).map(|s| s.delivery()) {
                d.awaiting_pubrel.retain(|x| *x != packet_id);
            }
        }
        if v5 {
            let mut resp = PubResp::new(packet_id);
            resp.code = ReasonCode::QuotaExceeded;
            let p = if qos2 {
                Packet::PubRec(resp)
            } else {
                Packet::PubAck(resp)
            };
            self.write_control(conn, &p);
        }
    }
}
