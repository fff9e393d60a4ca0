//! Snapshots of a shard's durable state, built from memory on the loop: every
//! persistent session (expiry, will, subscriptions, inbound QoS 2 ids, queued and
//! in-flight copies with their bodies once) and the retained replica (not `$SYS`),
//! as records the writer puts in a snapshot file before removing the log behind it.

use std::collections::HashSet;

use bytes::Bytes;

use super::durable::{pack_options, props_bytes};
use super::Shard;
use crate::session::{Message, Outgoing, Phase, Session};
use crate::store::record::{MsgRec, Record, WillRec};
use crate::store::snapshot::SnapshotWriter;

impl Shard {
    /// Starts a snapshot of everything appended so far once enough log was written
    /// since the last one: the state as it is in memory, as records. Built on the
    /// loop (a walk of the persistent sessions and the retained replica); the
    /// writer puts it on disk, then removes the log behind it.
    pub(super) fn maybe_snapshot(&mut self) {
        let Some(s) = self.store.as_ref() else {
            return;
        };
        let written = s.wal.stats.bytes_written;
        if written - s.snapshot_at_bytes < s.snapshot_after_bytes
            || s.wal.snapshot_in_progress()
            || s.wal.is_stopped()
        {
            return;
        }
        let lsn = s.wal.next_lsn();
        let mut w = SnapshotWriter::new(lsn, s.next_msg_id);
        let mut bodies: HashSet<u64> = HashSet::new();
        for (_, sess) in self.sessions.iter().filter(|(_, x)| x.expiry_s > 0) {
            session_records(
                sess,
                true,
                |_, out| (out.store_id != 0).then(|| (out.store_id, bodies.insert(out.store_id))),
                |m| s.unix_ms(m.arrived_at),
                |rec| w.push(rec),
            );
        }
        self.retained.for_each(|topic, e| {
            if topic.starts_with(b"$SYS/") {
                return;
            }
            let m = e.body.to_message();
            w.push(&Record::RetainSet {
                msg: MsgRec {
                    topic: m.topic,
                    payload: m.payload,
                    qos: m.qos as u8,
                    retain: true,
                    props: props_bytes(&m.properties),
                    arrived_unix_ms: s.unix_ms(m.arrived_at),
                },
            });
        });
        let data = w.finish();
        if let Some(s) = self.store.as_mut() {
            if s.wal.start_snapshot(lsn, data) {
                s.snapshot_at_bytes = written;
            }
        }
    }
}

/// A persistent session as log records, in the order recovery applies them: the
/// session (with its will when `full`), its subscriptions and, when `full`, its
/// inbound QoS 2 ids and its copies (in flight, then queued). `copy_id` names a
/// copy's body from its position among the copies: `Some((id, first))` writes the
/// copy (`first`: the body's `MsgPut` too), `None` leaves it out. Snapshots and
/// cluster hand-overs share it, so both describe a session the same way.
pub(super) fn session_records(
    sess: &Session,
    full: bool,
    mut copy_id: impl FnMut(usize, &Outgoing) -> Option<(u64, bool)>,
    arrived_ms: impl Fn(&Message) -> u64,
    mut emit: impl FnMut(&Record),
) {
    let client = Bytes::copy_from_slice(&sess.client_id);
    emit(&Record::SessionPut {
        client: client.clone(),
        expiry_s: sess.expiry_s,
        will: sess.will.as_ref().filter(|_| full).map(|w| WillRec {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: w.delay_s,
            props: props_bytes(&w.properties),
        }),
    });
    for sub in &sess.subs {
        emit(&Record::SubAdd {
            client: client.clone(),
            filter: Bytes::copy_from_slice(&sub.filter),
            options: pack_options(&sub.options),
            sub_id: sub.sub_id,
        });
    }
    let Some(d) = sess.delivery.as_deref().filter(|_| full) else {
        return;
    };
    for id in &d.awaiting_pubrel {
        emit(&Record::InboundQos2 {
            client: client.clone(),
            packet_id: *id,
        });
    }
    let copies = d
        .inflight
        .iter()
        .map(|f| (&f.out, Some((f.packet_id, f.phase))))
        .chain(d.queue.iter().map(|o| (o, None)));
    for (n, (out, sent)) in copies.enumerate() {
        let Some((id, first)) = copy_id(n, out) else {
            continue;
        };
        if first {
            let m = &out.msg;
            emit(&Record::MsgPut {
                id,
                msg: MsgRec {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos as u8,
                    retain: m.retain,
                    props: props_bytes(&m.properties),
                    arrived_unix_ms: arrived_ms(m),
                },
            });
        }
        emit(&Record::Enqueue {
            client: client.clone(),
            msg: id,
            qos: out.qos as u8,
            retain: out.retain,
            sub_ids: out.sub_ids.to_vec(),
        });
        if let Some((packet_id, phase)) = sent {
            emit(&Record::Sent {
                client: client.clone(),
                msg: id,
                packet_id,
            });
            if phase == Phase::AwaitComp {
                emit(&Record::Released {
                    client: client.clone(),
                    msg: id,
                });
            }
        }
    }
}
