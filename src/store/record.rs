//! The records of the log and of snapshots, and their byte codec.
//!
//! One record is one change to what must survive a restart: a session and its will,
//! a subscription, a QoS 1/2 message and each persistent session's copy of it (queued,
//! in flight, released), inbound QoS 2 packet ids, and retained messages. A message
//! body is written once (`MsgPut`) and each session's copy refers to it by id
//! (`Enqueue`), so a fan-out to many persistent sessions costs one body on disk.
//! Message properties travel as an opaque MQTT 5 property block: the store never
//! interprets them. Decoding checks every field's range, so a record that passes
//! the frame CRC but was written by a buggy or foreign writer is refused, not misread.

use bytes::Bytes;

/// A will as the session stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillRec {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub delay_s: u32,
    /// MQTT 5 property block of the will, as received.
    pub props: Bytes,
}

/// One application message body (QoS 1 or 2 for queued copies; any QoS retained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRec {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 property block (topic alias and subscription ids already removed).
    pub props: Bytes,
    /// Wall-clock arrival in Unix milliseconds, so Message Expiry keeps counting
    /// across a restart.
    pub arrived_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A persistent session was created or changed (expiry, will).
    SessionPut {
        client: Bytes,
        expiry_s: u32,
        will: Option<WillRec>,
    },
    /// The session ended (expired, clean start, or taken over with a clean start).
    SessionDel {
        client: Bytes,
    },
    /// `options` packs QoS (bits 0-1), No Local (2), Retain As Published (3) and
    /// Retain Handling (4-5), as on the wire; `sub_id` 0 is none.
    SubAdd {
        client: Bytes,
        filter: Bytes,
        options: u8,
        sub_id: u32,
    },
    SubDel {
        client: Bytes,
        filter: Bytes,
    },
    /// A message body that at least one persistent session holds a copy of.
    MsgPut {
        id: u64,
        msg: MsgRec,
    },
    /// A session's copy of message `msg`, queued (not yet sent).
    Enqueue {
        client: Bytes,
        msg: u64,
        qos: u8,
        retain: bool,
        sub_ids: Vec<u32>,
    },
    /// The copy went out with `packet_id` (waiting for PUBACK or PUBREC).
    Sent {
        client: Bytes,
        msg: u64,
        packet_id: u16,
    },
    /// PUBREC came and PUBREL went: only the packet id remains (waiting for PUBCOMP).
    Released {
        client: Bytes,
        msg: u64,
    },
    /// The copy is gone: PUBACK, PUBCOMP, or dropped (expired, over a bound).
    Ack {
        client: Bytes,
        msg: u64,
    },
    /// An inbound QoS 2 PUBLISH was received and answered with PUBREC.
    InboundQos2 {
        client: Bytes,
        packet_id: u16,
    },
    /// Its PUBREL came and PUBCOMP went.
    InboundDone {
        client: Bytes,
        packet_id: u16,
    },
    RetainSet {
        msg: MsgRec,
    },
    RetainClear {
        topic: Bytes,
    },
    /// Hand-overs between cluster nodes only (`shard/cluster_session.rs`; the log
    /// never writes it): message `msg` of the hand-over came from another node with
    /// identity `key` (`Message::cluster_key`), so the receiving node can drop a copy
    /// it already got directly.
    MsgOrigin {
        msg: u64,
        key: u64,
    },
}

/// Why a record payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    UnknownTag(u8),
    Truncated,
    TrailingBytes,
    BadField(&'static str),
}

mod tag {
    pub const SESSION_PUT: u8 = 1;
    pub const SESSION_DEL: u8 = 2;
    pub const SUB_ADD: u8 = 3;
    pub const SUB_DEL: u8 = 4;
    pub const MSG_PUT: u8 = 5;
    pub const ENQUEUE: u8 = 6;
    pub const SENT: u8 = 7;
    pub const RELEASED: u8 = 8;
    pub const ACK: u8 = 9;
    pub const INBOUND_QOS2: u8 = 10;
    pub const INBOUND_DONE: u8 = 11;
    pub const RETAIN_SET: u8 = 12;
    pub const RETAIN_CLEAR: u8 = 13;
    pub const MSG_ORIGIN: u8 = 14;
    /// Snapshot trailer only (see `snapshot.rs`).
    pub const END: u8 = 255;
}
pub(crate) use tag::END as END_TAG;

/// The most subscription identifiers one copy carries (one per matching
/// subscription of the session; bounded so a record stays small).
pub const MAX_SUB_IDS: usize = 1024;

impl Record {
    /// Appends the record's payload (no frame) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::SessionPut {
                client,
                expiry_s,
                will,
            } => {
                out.push(tag::SESSION_PUT);
                put16(out, client);
                out.extend_from_slice(&expiry_s.to_le_bytes());
                match will {
                    None => out.push(0),
                    Some(w) => {
                        out.push(1);
                        put16(out, &w.topic);
                        put32(out, &w.payload);
                        out.push(w.qos | (u8::from(w.retain) << 2));
                        out.extend_from_slice(&w.delay_s.to_le_bytes());
                        put32(out, &w.props);
                    }
                }
            }
            Record::SessionDel { client } => {
                out.push(tag::SESSION_DEL);
                put16(out, client);
            }
            Record::SubAdd {
                client,
                filter,
                options,
                sub_id,
            } => {
                out.push(tag::SUB_ADD);
                put16(out, client);
                put16(out, filter);
                out.push(*options);
                out.extend_from_slice(&sub_id.to_le_bytes());
            }
            Record::SubDel { client, filter } => {
                out.push(tag::SUB_DEL);
                put16(out, client);
                put16(out, filter);
            }
            Record::MsgPut { id, msg } => {
                out.push(tag::MSG_PUT);
                out.extend_from_slice(&id.to_le_bytes());
                put_msg(out, msg);
            }
            Record::Enqueue {
                client,
                msg,
                qos,
                retain,
                sub_ids,
            } => {
                out.push(tag::ENQUEUE);
                put16(out, client);
                out.extend_from_slice(&msg.to_le_bytes());
                out.push(qos | (u8::from(*retain) << 2));
                out.extend_from_slice(&(sub_ids.len() as u16).to_le_bytes());
                for id in sub_ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
            Record::Sent {
                client,
                msg,
                packet_id,
            } => {
                out.push(tag::SENT);
                put16(out, client);
                out.extend_from_slice(&msg.to_le_bytes());
                out.extend_from_slice(&packet_id.to_le_bytes());
            }
            Record::Released { client, msg } | Record::Ack { client, msg } => {
                out.push(if matches!(self, Record::Ack { .. }) {
                    tag::ACK
                } else {
                    tag::RELEASED
                });
                put16(out, client);
                out.extend_from_slice(&msg.to_le_bytes());
            }
            Record::InboundQos2 { client, packet_id }
            | Record::InboundDone { client, packet_id } => {
                out.push(if matches!(self, Record::InboundQos2 { .. }) {
                    tag::INBOUND_QOS2
                } else {
                    tag::INBOUND_DONE
                });
                put16(out, client);
                out.extend_from_slice(&packet_id.to_le_bytes());
            }
            Record::RetainSet { msg } => {
                out.push(tag::RETAIN_SET);
                put_msg(out, msg);
            }
            Record::RetainClear { topic } => {
                out.push(tag::RETAIN_CLEAR);
                put16(out, topic);
            }
            Record::MsgOrigin { msg, key } => {
                out.push(tag::MSG_ORIGIN);
                out.extend_from_slice(&msg.to_le_bytes());
                out.extend_from_slice(&key.to_le_bytes());
            }
        }
    }

    /// Decodes one record payload; every byte must belong to the record.
    pub fn decode(buf: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader { buf };
        let rec = match r.u8()? {
            tag::SESSION_PUT => {
                let client = r.client()?;
                let expiry_s = r.u32()?;
                let will = match r.u8()? {
                    0 => None,
                    1 => {
                        let topic = r.topic()?;
                        let payload = r.blob32()?;
                        let (qos, retain) = r.qos_retain(0)?;
                        let delay_s = r.u32()?;
                        let props = r.blob32()?;
                        Some(WillRec {
                            topic,
                            payload,
                            qos,
                            retain,
                            delay_s,
                            props,
                        })
                    }
                    _ => return Err(RecordError::BadField("will flag")),
                };
                Record::SessionPut {
                    client,
                    expiry_s,
                    will,
                }
            }
            tag::SESSION_DEL => Record::SessionDel {
                client: r.client()?,
            },
            tag::SUB_ADD => {
                let client = r.client()?;
                let filter = r.topic()?;
                let options = r.u8()?;
                if options & 0b11 > 2 || options >> 4 > 2 {
                    return Err(RecordError::BadField("subscription options"));
                }
                let sub_id = r.u32()?;
                if sub_id > 268_435_455 {
                    return Err(RecordError::BadField("subscription identifier"));
                }
                Record::SubAdd {
                    client,
                    filter,
                    options,
                    sub_id,
                }
            }
            tag::SUB_DEL => Record::SubDel {
                client: r.client()?,
                filter: r.topic()?,
            },
            tag::MSG_PUT => {
                let id = r.u64()?;
                let msg = r.msg()?;
                Record::MsgPut { id, msg }
            }
            tag::ENQUEUE => {
                let client = r.client()?;
                let msg = r.u64()?;
                let (qos, retain) = r.qos_retain(1)?;
                let n = usize::from(r.u16()?);
                if n > MAX_SUB_IDS {
                    return Err(RecordError::BadField("subscription identifier count"));
                }
                let mut sub_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    sub_ids.push(r.u32()?);
                }
                Record::Enqueue {
                    client,
                    msg,
                    qos,
                    retain,
                    sub_ids,
                }
            }
            tag::SENT => {
                let client = r.client()?;
                let msg = r.u64()?;
                let packet_id = r.u16()?;
                if packet_id == 0 {
                    return Err(RecordError::BadField("packet id"));
                }
                Record::Sent {
                    client,
                    msg,
                    packet_id,
                }
            }
            tag::RELEASED => Record::Released {
                client: r.client()?,
                msg: r.u64()?,
            },
            tag::ACK => Record::Ack {
                client: r.client()?,
                msg: r.u64()?,
            },
            t @ (tag::INBOUND_QOS2 | tag::INBOUND_DONE) => {
                let client = r.client()?;
                let packet_id = r.u16()?;
                if packet_id == 0 {
                    return Err(RecordError::BadField("packet id"));
                }
                if t == tag::INBOUND_QOS2 {
                    Record::InboundQos2 { client, packet_id }
                } else {
                    Record::InboundDone { client, packet_id }
                }
            }
            tag::RETAIN_SET => Record::RetainSet { msg: r.msg()? },
            tag::RETAIN_CLEAR => Record::RetainClear { topic: r.topic()? },
            tag::MSG_ORIGIN => Record::MsgOrigin {
                msg: r.u64()?,
                key: r.u64()?,
            },
            t => return Err(RecordError::UnknownTag(t)),
        };
        if !r.buf.is_empty() {
            return Err(RecordError::TrailingBytes);
        }
        Ok(rec)
    }

    /// Bytes of the encoded payload (to size a batch before encoding).
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        self.encode(&mut v);
        v.len()
    }
}

fn put16(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_msg(out: &mut Vec<u8>, m: &MsgRec) {
    put16(out, &m.topic);
    put32(out, &m.payload);
    out.push(m.qos | (u8::from(m.retain) << 2));
    put32(out, &m.props);
    out.extend_from_slice(&m.arrived_unix_ms.to_le_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn blob16(&mut self) -> Result<Bytes, RecordError> {
        let n = usize::from(self.u16()?);
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    fn blob32(&mut self) -> Result<Bytes, RecordError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    /// A client id: never empty (the broker assigns one before a session exists).
    fn client(&mut self) -> Result<Bytes, RecordError> {
        let c = self.blob16()?;
        if c.is_empty() {
            return Err(RecordError::BadField("client id"));
        }
        Ok(c)
    }
    /// A topic or filter: never empty.
    fn topic(&mut self) -> Result<Bytes, RecordError> {
        let t = self.blob16()?;
        if t.is_empty() {
            return Err(RecordError::BadField("topic"));
        }
        Ok(t)
    }
    /// QoS in bits 0-1 (at least `min_qos`), retain in bit 2, nothing else.
    fn qos_retain(&mut self, min_qos: u8) -> Result<(u8, bool), RecordError> {
        let b = self.u8()?;
        let qos = b & 0b11;
        if b >> 3 != 0 || qos > 2 || qos < min_qos {
            return Err(RecordError::BadField("qos/retain"));
        }
        Ok((qos, b & 0b100 != 0))
    }
    fn msg(&mut self) -> Result<MsgRec, RecordError> {
        let topic = self.topic()?;
        let payload = self.blob32()?;
        let (qos, retain) = self.qos_retain(0)?;
        let props = self.blob32()?;
        let arrived_unix_ms = self.u64()?;
        Ok(MsgRec {
            topic,
            payload,
            qos,
            retain,
            props,
            arrived_unix_ms,
        })
    }
}
