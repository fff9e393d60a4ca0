//! The durable image: what the records of a log add up to. Recovery builds it from a
//! snapshot plus the log, the shard loads its sessions from it, and tests compare it
//! with a model. At run time the shard's own sessions are the state; this image
//! exists only while recovering (no second copy of queued messages in memory).
//!
//! Applying a record never fails: a record that refers to something absent (an ack
//! for a copy that a later-deleted session held, a subscription of an unknown session)
//! changes nothing and is counted in `ignored`. So arbitrary valid records always
//! yield a state that passes [`StoreState::check`].

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::record::{MsgRec, Record, WillRec};

/// One session's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyState {
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// Set once sent: the packet id the client must acknowledge.
    pub packet_id: Option<u16>,
    /// QoS 2 after PUBREC: waiting for PUBCOMP, never sent again as a PUBLISH.
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionState {
    pub expiry_s: u32,
    pub will: Option<WillRec>,
    /// Filter → (packed options, subscription identifier).
    pub subs: BTreeMap<Bytes, (u8, u32)>,
    /// Message id → copy, in arrival order (ids grow with arrival).
    pub copies: BTreeMap<u64, CopyState>,
    /// Inbound QoS 2 packet ids answered with PUBREC and not yet released.
    pub inbound_qos2: BTreeSet<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub msg: MsgRec,
    /// How many session copies refer to it; the body goes with the last one.
    pub refs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreState {
    pub sessions: BTreeMap<Bytes, SessionState>,
    pub messages: BTreeMap<u64, StoredMsg>,
    pub retained: BTreeMap<Bytes, MsgRec>,
    /// One past the largest message id ever seen, so ids are never reused.
    pub next_msg_id: u64,
    /// Records that referred to something absent (not an error; see the module doc).
    pub ignored: u64,
}

impl StoreState {
    pub fn apply(&mut self, rec: &Record) {
        self.apply_owned(rec.clone());
    }

    /// [`StoreState::apply`] taking the record: recovery moves each decoded
    /// record's bodies into the state instead of cloning them (a `Bytes` made from a
    /// `Vec` allocates on its first clone), over a million times per restart.
    pub fn apply_owned(&mut self, rec: Record) {
        if !self.try_apply(rec) {
            self.ignored += 1;
        }
    }

    fn try_apply(&mut self, rec: Record) -> bool {
        match rec {
            Record::SessionPut {
                client,
                expiry_s,
                will,
            } => {
                let s = self.sessions.entry(client).or_default();
                s.expiry_s = expiry_s;
                s.will = will;
            }
            Record::SessionDel { client } => {
                let Some(s) = self.sessions.remove(&client) else {
                    return false;
                };
                for id in s.copies.keys() {
                    self.unref(*id);
                }
            }
            Record::SubAdd {
                client,
                filter,
                options,
                sub_id,
            } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return false;
                };
                s.subs.insert(filter, (options, sub_id));
            }
            Record::SubDel { client, filter } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return false;
                };
                return s.subs.remove(&filter).is_some();
            }
            Record::MsgPut { id, msg } => {
                self.next_msg_id = self.next_msg_id.max(id.saturating_add(1));
                if self.messages.contains_key(&id) {
                    return false;
                }
                self.messages.insert(id, StoredMsg { msg, refs: 0 });
            }
            Record::Enqueue {
                client,
                msg,
                qos,
                retain,
                sub_ids,
            } => {
                let (Some(s), Some(m)) =
                    (self.sessions.get_mut(&client), self.messages.get_mut(&msg))
                else {
                    return false;
                };
                if s.copies.contains_key(&msg) {
                    return false;
                }
                m.refs += 1;
                let copy = CopyState {
                    qos,
                    retain,
                    sub_ids,
                    packet_id: None,
                    released: false,
                };
                s.copies.insert(msg, copy);
            }
            Record::Sent {
                client,
                msg,
                packet_id,
            } => {
                let Some(c) = self.copy_mut(&client, msg) else {
                    return false;
                };
                if c.released {
                    return false;
                }
                c.packet_id = Some(packet_id);
            }
            Record::Released { client, msg } => {
                let Some(c) = self.copy_mut(&client, msg) else {
                    return false;
                };
                if c.qos != 2 || c.packet_id.is_none() {
                    return false;
                }
                c.released = true;
            }
            Record::Ack { client, msg } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return false;
                };
                if s.copies.remove(&msg).is_none() {
                    return false;
                }
                self.unref(msg);
            }
            Record::InboundQos2 { client, packet_id } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return false;
                };
                s.inbound_qos2.insert(packet_id);
            }
            Record::InboundDone { client, packet_id } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return false;
                };
                return s.inbound_qos2.remove(&packet_id);
            }
            Record::RetainSet { msg } => {
                self.retained.insert(msg.topic.clone(), msg);
            }
            Record::RetainClear { topic } => {
                return self.retained.remove(&topic).is_some();
            }
            // Hand-overs only: their receiver reads it (`shard/cluster_session.rs`).
            Record::MsgOrigin { .. } => return false,
        }
        true
    }

    fn copy_mut(&mut self, client: &Bytes, msg: u64) -> Option<&mut CopyState> {
        self.sessions.get_mut(client)?.copies.get_mut(&msg)
    }

    fn unref(&mut self, id: u64) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.refs = m.refs.saturating_sub(1);
            if m.refs == 0 {
                self.messages.remove(&id);
            }
        }
    }

    /// Drops bodies no copy refers to: a log cut between a `MsgPut` and its first
    /// `Enqueue` leaves one. Called at the end of recovery.
    pub fn finish(&mut self) {
        self.messages.retain(|_, m| m.refs > 0);
    }

    /// The state's invariants; `Err` names the first one broken. Used by tests and
    /// the fuzz target after every recovery.
    pub fn check(&self) -> Result<(), String> {
        let mut refs: BTreeMap<u64, u32> = BTreeMap::new();
        for (client, s) in &self.sessions {
            if client.is_empty() {
                return Err("empty client id".into());
            }
            for (id, c) in &s.copies {
                if !self.messages.contains_key(id) {
                    return Err(format!("copy of missing message {id}"));
                }
                if c.released && (c.qos != 2 || c.packet_id.is_none()) {
                    return Err(format!("released copy {id} without QoS 2 packet id"));
                }
                if *id >= self.next_msg_id {
                    return Err(format!("message id {id} not below next id"));
                }
                *refs.entry(*id).or_default() += 1;
            }
        }
        for (id, m) in &self.messages {
            if refs.get(id).copied().unwrap_or(0) != m.refs {
                return Err(format!("message {id} refcount {} is wrong", m.refs));
            }
            if m.refs == 0 {
                return Err(format!("message {id} has no copy"));
            }
        }
        for (topic, m) in &self.retained {
            if *topic != m.topic {
                return Err("retained entry under another topic".into());
            }
        }
        Ok(())
    }

    /// The records that rebuild this state from nothing (a snapshot's body): bodies
    /// first, then each session with its subscriptions and copies, then retained.
    pub fn to_records(&self, mut emit: impl FnMut(Record)) {
        for (id, m) in &self.messages {
            emit(Record::MsgPut {
                id: *id,
                msg: m.msg.clone(),
            });
        }
        for (client, s) in &self.sessions {
            let client = client.clone();
            emit(Record::SessionPut {
                client: client.clone(),
                expiry_s: s.expiry_s,
                will: s.will.clone(),
            });
            for (filter, (options, sub_id)) in &s.subs {
                emit(Record::SubAdd {
                    client: client.clone(),
                    filter: filter.clone(),
                    options: *options,
                    sub_id: *sub_id,
                });
            }
            for (id, c) in &s.copies {
                emit(Record::Enqueue {
                    client: client.clone(),
                    msg: *id,
                    qos: c.qos,
                    retain: c.retain,
                    sub_ids: c.sub_ids.clone(),
                });
                if let Some(packet_id) = c.packet_id {
                    emit(Record::Sent {
                        client: client.clone(),
                        msg: *id,
                        packet_id,
                    });
                }
                if c.released {
                    emit(Record::Released {
                        client: client.clone(),
                        msg: *id,
                    });
                }
            }
            for packet_id in &s.inbound_qos2 {
                emit(Record::InboundQos2 {
                    client: client.clone(),
                    packet_id: *packet_id,
                });
            }
        }
        for m in self.retained.values() {
            emit(Record::RetainSet { msg: m.clone() });
        }
    }
}
