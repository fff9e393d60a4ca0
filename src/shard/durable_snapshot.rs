//! Snapshots of a shard's durable state, built from memory on the loop: every
//! persistent session (expiry, will, subscriptions, inbound QoS 2 ids, queued and
//! in-flight copies with their bodies once) and the retained replica (not `$SYS`),
//! as records the writer puts in a snapshot file before removing the log behind it.

use std::collections::HashSet;

use bytes::Bytes;

use super::durable::{pack_options, props_bytes};
use super::Shard;
use crate::session::Phase;
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
            let client = Bytes::copy_from_slice(&sess.client_id);
            w.push(&Record::SessionPut {
                client: client.clone(),
                expiry_s: sess.expiry_s,
                will: sess.will.as_ref().map(|w| WillRec {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: w.qos as u8,
                    retain: w.retain,
                    delay_s: w.delay_s,
                    props: props_bytes(&w.properties),
                }),
            });
            for sub in &sess.subs {
                w.push(&Record::SubAdd {
                    client: client.clone(),
                    filter: Bytes::copy_from_slice(&sub.filter),
                    options: pack_options(&sub.options),
                    sub_id: sub.sub_id,
                });
            }
            let Some(d) = sess.delivery.as_deref() else {
                continue;
            };
            for id in &d.awaiting_pubrel {
                w.push(&Record::InboundQos2 {
                    client: client.clone(),
                    packet_id: *id,
                });
            }
            let copies = d
                .inflight
                .iter()
                .map(|f| (&f.out, Some((f.packet_id, f.phase))))
                .chain(d.queue.iter().map(|o| (o, None)));
            for (out, sent) in copies.filter(|(o, _)| o.store_id != 0) {
                if bodies.insert(out.store_id) {
                    let m = &out.msg;
                    w.push(&Record::MsgPut {
                        id: out.store_id,
                        msg: MsgRec {
                            topic: m.topic.clone(),
                            payload: m.payload.clone(),
                            qos: m.qos as u8,
                            retain: m.retain,
                            props: props_bytes(&m.properties),
                            arrived_unix_ms: s.unix_ms(m.arrived_at),
                        },
                    });
                }
                w.push(&Record::Enqueue {
                    client: client.clone(),
                    msg: out.store_id,
                    qos: out.qos as u8,
                    retain: out.retain,
                    sub_ids: out.sub_ids.to_vec(),
                });
                if let Some((packet_id, phase)) = sent {
                    w.push(&Record::Sent {
                        client: client.clone(),
                        msg: out.store_id,
                        packet_id,
                    });
                    if phase == Phase::AwaitComp {
                        w.push(&Record::Released {
                            client: client.clone(),
                            msg: out.store_id,
                        });
                    }
                }
            }
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
