//! Session ownership across nodes, the cluster thread's side (issue #17; the loops'
//! side is `shard/cluster_session.rs`).
//!
//! The JetStream KV bucket `ringmq_sessions` maps a client id (key: base64url of the
//! id) to `node\nepoch`. A CONNECT's claim reads the entry and writes this node with
//! the next epoch by compare-and-set on the revision it read; a lost race reads
//! again (bounded). When the entry named another node, that node is asked on its
//! takeover subject (`ringmq.node.<node>.takeover`, NATS request/reply) to close the
//! old connection and send the session; the claim's answer carries what came back.
//! The new owner confirms receipt (`confirm`) once it holds the session's interest; only
//! then does the old owner end the session, answering with what reached it meanwhile.
//!
//! The owner also keeps a persistent session's expiry and subscriptions in the
//! entry, after the `node\nepoch\nconnect_ms\noffline_ms\n` prefix (hand-over bytes
//! without will or copies), rewritten by compare-and-set after each SUBSCRIBE,
//! UNSUBSCRIBE and resume, with the wall time its client went when it goes
//! (`offline_ms`), and blanked when the session ends there (`state_writer`; review10
//! M4). A change NATS does not take is kept (the latest per id) and retried until
//! it lands; one of an id served without the cluster, which has no entry naming
//! this node until its reconcile, is kept with the id and written by the reconcile
//! (`LocalIds`). A claim keeps the saved state it found (a clean start blanks it), and
//! one that finds this node's own name in the entry answers with that state, which
//! the loop resumes only if it holds no session of the id: a node restarted without
//! its data directory under the same name gets its clients' sessions back as any
//! other node would (review10 L1).
//!
//! What is lost, and why: when the previous owner does not answer (killed, or cut
//! from NATS) within `FETCH_TIMEOUT`, the claim rebuilds the session from the entry
//! unless it expired (`saved_session_live`: its expiry counts from `offline_ms`, or
//! for a client connected when its node died from that node's last heartbeat): its
//! subscriptions come back (CONNACK session present 1), but its queued and
//! in-flight messages and open inbound QoS 2 ids were only in the dead node's memory
//! (and its own data directory) and are lost; so is a subscription whose SUBACK went
//! out just before the node died, before its entry was rewritten (for an id served
//! without the cluster: before its reconcile). When NATS or the bucket
//! cannot answer within `CLAIM_TIMEOUT`, the node serves the CONNECT from what it
//! holds itself (a node cut off from NATS keeps serving its own clients).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use tokio::sync::mpsc;

use super::bridge::ClusterStatus;
use super::subject::escape_token;
use crate::shard::{Handed, SessionClaim};

/// The session-ownership bucket.
pub const SESSIONS_BUCKET: &str = "ringmq_sessions";
/// Compare-and-set attempts of one claim before it goes on without the cluster.
const CLAIM_TRIES: usize = 4;
/// Bound on a whole claim (bucket read, CAS, fetch): past it the CONNECT goes on
/// with what this node holds. Below the connect timeout, so the client gets a CONNACK.
pub const CLAIM_TIMEOUT: Duration = Duration::from_millis(super::CLAIM_TIMEOUT_MS);
/// Bound on the previous owner's answer; a node that does not answer is taken as dead.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of one round of a hand-over's confirmation to its old node; a round
/// left unanswered is asked again after `confirm_backoff` (review10 M8).
const CONFIRM_TRIES: usize = 3;
/// Answers "busy" (`REPLY_BUSY`) one confirmation or takeover request may get
/// before it counts as unanswered, `BUSY_RETRY` apart: the old node's table of
/// requests waiting for their loop was full, and it did nothing with this one.
const BUSY_TRIES: usize = 8;
const BUSY_RETRY: Duration = Duration::from_millis(250);
/// Attempts of one session-state save, `STATE_RETRY` apart (the writer is one task
/// for every client: bounded so one entry cannot hold up the others for long).
const STATE_TRIES: usize = 10;
const STATE_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts of a session save that NATS did not take.
const STATE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Ids served locally during one partition that are reconciled when NATS returns;
/// past it they are not (counted as `sessions_local`, logged).
const LOCAL_MAX: usize = 65_536;
/// Ids whose claimed epoch is remembered (for refusing stale takeover requests);
/// the map starts over past it (an unknown id's request is accepted).
const EPOCHS_MAX: usize = 262_144;
/// How long after answering a takeover with the session the old node waits for the
/// confirmation before it may take the session back (review M1). A live asker ends
/// its first round of confirmation within about 11 s of loading it
/// (`CONFIRM_FLUSH_MAX` and `CONFIRM_GRACE` in link.rs, 3 s, then `CONFIRM_TRIES` x
/// `FETCH_TIMEOUT`, 6 s, and at most 10 "busy" answers `BUSY_RETRY` apart, 2.5 s;
/// it asks again after that, `confirm_backoff`); this leaves 4 s more for the
/// claim's own fetch bound and a loaded loop, and stays below the 30 s a
/// short-lived session is held for its confirmation (`HANDING_HOLD`).
pub const HANDOVER_LAPSE: Duration = Duration::from_secs(15);
/// While the asker still looks alive past `HANDOVER_LAPSE` (it may have the session
/// and only its confirmation failed), the old node looks again this often, for at
/// most `LAPSE_WATCH_MAX`; then it leaves the session to expire (as before M1).
const LAPSE_RECHECK: Duration = Duration::from_secs(5);
const LAPSE_WATCH_MAX: Duration = Duration::from_secs(300);
/// Reads of the entry right after a hand-over, to learn the asker's name (a
/// replica may not have applied its claim yet), `STATE_RETRY` apart.
const ASKER_READS: usize = 5;

/// The subject a node answers takeover requests on.
pub fn takeover_subject(node: &str) -> String {
    let mut s = String::from("ringmq.node.");
    escape_token(node.as_bytes(), &mut s);
    s.push_str(".takeover");
    s
}

/// A takeover request: the clean-start flag, the epoch the asking node claimed, then
/// the client id.
pub fn encode_request(client_id: &[u8], clean: bool, epoch: u64) -> Bytes {
    let mut b = Vec::with_capacity(client_id.len() + 9);
    b.push(u8::from(clean));
    b.extend_from_slice(&epoch.to_le_bytes());
    b.extend_from_slice(client_id);
    Bytes::from(b)
}

/// What `encode_merge` adds before the client id and the session: tag and length.
pub const MERGE_HEADER_BYTES: usize = 3;

/// A session the asking node gives up to this one (it lost a reconcile after a
/// partition): tag 3, then the client id's length (2 bytes), the id and hand-over
/// bytes whose copies join this node's session of that id.
pub fn encode_merge(client_id: &[u8], session: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(MERGE_HEADER_BYTES + client_id.len() + session.len());
    b.push(3);
    b.extend_from_slice(&(client_id.len() as u16).to_le_bytes());
    b.extend_from_slice(client_id);
    b.extend_from_slice(session);
    Bytes::from(b)
}

/// What `encode_hand_back` adds before the client id and the session: tag, token
/// and length.
pub const HAND_BACK_HEADER_BYTES: usize = 11;

/// The session of a hand-over this node (the old one) took back, given up to it by
/// the asker its confirmation reached too late (review M1): tag 5, the hand-over's
/// id, the client id's length (2 bytes), the id and hand-over bytes. Only a node
/// that answered `REPLY_TAKEN_BACK` is sent one, so an older node never gets it.
pub fn encode_hand_back(client_id: &[u8], token: u64, session: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(client_id.len() + session.len() + HAND_BACK_HEADER_BYTES);
    b.push(5);
    b.extend_from_slice(&token.to_le_bytes());
    b.extend_from_slice(&(client_id.len() as u16).to_le_bytes());
    b.extend_from_slice(client_id);
    b.extend_from_slice(session);
    Bytes::from(b)
}

/// The confirmation of hand-over `token` (tag 2, the token, then the client id): the
/// new owner holds the session and its NATS interest.
pub fn encode_confirm(client_id: &[u8], token: u64) -> Bytes {
    let mut b = Vec::with_capacity(client_id.len() + 9);
    b.push(2);
    b.extend_from_slice(&token.to_le_bytes());
    b.extend_from_slice(client_id);
    Bytes::from(b)
}

/// What another node asks of this one on its takeover subject.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Takeover {
        client_id: Bytes,
        clean: bool,
        epoch: u64,
    },
    Confirm {
        client_id: Bytes,
        token: u64,
    },
    Merge {
        client_id: Bytes,
        session: Bytes,
    },
    HandBack {
        client_id: Bytes,
        token: u64,
        session: Bytes,
    },
}

pub fn decode_request(b: &[u8]) -> Option<Request> {
    let (&flag, rest) = b.split_first()?;
    match flag {
        0 | 1 if rest.len() > 8 => Some(Request::Takeover {
            epoch: u64::from_le_bytes(rest[..8].try_into().ok()?),
            client_id: Bytes::copy_from_slice(&rest[8..]),
            clean: flag == 1,
        }),
        3 if rest.len() > 2 => {
            let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let id = rest.get(2..2 + n).filter(|id| !id.is_empty())?;
            Some(Request::Merge {
                client_id: Bytes::copy_from_slice(id),
                session: Bytes::copy_from_slice(&rest[2 + n..]),
            })
        }
        5 if rest.len() > 10 => {
            let token = u64::from_le_bytes(rest[..8].try_into().ok()?);
            let n = usize::from(u16::from_le_bytes([rest[8], rest[9]]));
            let id = rest.get(10..10 + n).filter(|id| !id.is_empty())?;
            Some(Request::HandBack {
                client_id: Bytes::copy_from_slice(id),
                token,
                session: Bytes::copy_from_slice(&rest[10 + n..]),
            })
        }
        2 if rest.len() > 8 => Some(Request::Confirm {
            token: u64::from_le_bytes(rest[..8].try_into().ok()?),
            client_id: Bytes::copy_from_slice(&rest[8..]),
        }),
        _ => None,
    }
}

/// The takeover answer of a node that kept the session: too large for one NATS message.
pub const REPLY_TOO_LARGE: u8 = 2;
/// The answer of a node whose table of requests waiting for their loop is full
/// (review L1): it did nothing with this request, and the asker asks again shortly.
/// Not "no session" (`0`), which a confirmation takes as final.
pub const REPLY_BUSY: u8 = 3;
/// The answer to a confirmation of a hand-over the old node took back (review M1:
/// the asker looked dead past the lapse): the asker gives its session up to it.
pub const REPLY_TAKEN_BACK: u8 = 4;

/// What one answer on a takeover subject says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The hand-over's id on the answering node and the bytes.
    Session(u64, Bytes),
    /// No such session there (or a clean start, or a confirmation with no delta).
    Nothing,
    /// `REPLY_TOO_LARGE`.
    TooLarge,
    /// `REPLY_BUSY`: ask again.
    Busy,
    /// `REPLY_TAKEN_BACK`.
    TakenBack,
    Malformed,
}

pub fn decode_answer(b: &[u8]) -> Answer {
    match b {
        [REPLY_TOO_LARGE] => Answer::TooLarge,
        [REPLY_BUSY] => Answer::Busy,
        [REPLY_TAKEN_BACK] => Answer::TakenBack,
        _ => match decode_reply(b) {
            Some(Some((token, s))) => Answer::Session(token, s),
            Some(None) => Answer::Nothing,
            None => Answer::Malformed,
        },
    }
}

/// The wait before round `attempt + 1` of a confirmation whose round `attempt` (0:
/// the first) went unanswered: `AttemptWait`'s, 1 s, doubling, at most
/// `JS_REQUEST_MAX` (5 s), so a node back after a few seconds of NATS trouble is
/// asked again soon, and one gone for long costs a request every few seconds per
/// session, as long as the loop keeps asking (`DeltaDedup::retry`).
pub fn confirm_backoff(attempt: u32) -> Duration {
    super::health::AttemptWait::after(attempt).wait()
}

/// How a confirmation goes on after each answer (sans-IO, so its bounds are tested
/// without NATS): an answer ends it, "busy" or silence asks again, boundedly.
#[derive(Debug, Default)]
pub struct ConfirmTries {
    unanswered: usize,
    busy: usize,
}

/// See `ConfirmTries`.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfirmStep {
    /// The old node answered: its delta (`None`: nothing reached it, or no session).
    Done(Option<Bytes>),
    /// The old node took the session back (`REPLY_TAKEN_BACK`, review M1).
    TakenBack,
    /// Ask again after this wait.
    Again(Duration),
    /// The old node never answered: it keeps the session.
    GiveUp,
}

impl ConfirmTries {
    /// `answer`: what came back (`None`: no answer within `FETCH_TIMEOUT`).
    pub fn next(&mut self, answer: Option<Answer>) -> ConfirmStep {
        match answer {
            Some(Answer::Session(_, b)) => ConfirmStep::Done(Some(b)),
            Some(Answer::TakenBack) => ConfirmStep::TakenBack,
            Some(Answer::Nothing | Answer::TooLarge | Answer::Malformed) => ConfirmStep::Done(None),
            Some(Answer::Busy) if self.busy < BUSY_TRIES => {
                self.busy += 1;
                ConfirmStep::Again(BUSY_RETRY)
            }
            Some(Answer::Busy) | None => {
                self.unanswered += 1;
                // A busy node is not asked again at once even past `BUSY_TRIES`.
                let wait = if answer.is_some() {
                    BUSY_RETRY
                } else {
                    Duration::ZERO
                };
                if self.unanswered < CONFIRM_TRIES {
                    ConfirmStep::Again(wait)
                } else {
                    ConfirmStep::GiveUp
                }
            }
        }
    }
}

/// A takeover (or confirmation) answer: `0` (no session there) or `1`, the
/// hand-over's id on the answering node (`token`, what a confirmation names) and the
/// hand-over bytes (or `REPLY_TOO_LARGE` alone).
pub fn encode_reply(session: Option<&Bytes>, token: u64) -> Bytes {
    match session {
        None => Bytes::from_static(&[0]),
        Some(s) => {
            let mut b = Vec::with_capacity(s.len() + 9);
            b.push(1);
            b.extend_from_slice(&token.to_le_bytes());
            b.extend_from_slice(s);
            Bytes::from(b)
        }
    }
}

pub fn decode_reply(b: &[u8]) -> Option<Option<(u64, Bytes)>> {
    match b.split_first()? {
        (0, []) => Some(None),
        (1, rest) if rest.len() >= 8 => Some(Some((
            u64::from_le_bytes(rest[..8].try_into().ok()?),
            Bytes::copy_from_slice(&rest[8..]),
        ))),
        _ => None,
    }
}

/// An ownership entry: the owning node, the claim's epoch, when its CONNECT came
/// (wall clock, Unix ms: only compared when two nodes served one id during a
/// partition, `reconcile`), when its client went (Unix ms, 0: connected when last
/// saved) and the session's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub epoch: u64,
    pub connect_ms: u64,
    /// Where a session's expiry counts from when a claim recovers it from `state`
    /// (review10 M4). Written by the owner, so compared with another host's clock:
    /// a skew of seconds against expiries of seconds to days.
    pub offline_ms: u64,
    pub state: Bytes,
}

/// An ownership entry's value: `node\nepoch\nconnect_ms\noffline_ms\n` and the saved
/// state.
pub fn encode_owner(
    node: &str,
    epoch: u64,
    connect_ms: u64,
    offline_ms: u64,
    state: &[u8],
) -> Bytes {
    let mut b = format!("{node}\n{epoch}\n{connect_ms}\n{offline_ms}\n").into_bytes();
    b.extend_from_slice(state);
    Bytes::from(b)
}

pub fn decode_owner(b: &[u8]) -> Option<Owner> {
    let field = |from: usize| -> Option<(&[u8], usize)> {
        let end = from + b.get(from..)?.iter().position(|&c| c == b'\n')?;
        Some((&b[from..end], end + 1))
    };
    let (node, at) = field(0)?;
    let (epoch, at) = field(at)?;
    let (ms, at) = field(at)?;
    let (offline, at) = field(at)?;
    Some(Owner {
        node: std::str::from_utf8(node).ok()?.to_string(),
        epoch: std::str::from_utf8(epoch).ok()?.parse().ok()?,
        connect_ms: std::str::from_utf8(ms).ok()?.parse().ok()?,
        offline_ms: std::str::from_utf8(offline).ok()?.parse().ok()?,
        state: Bytes::copy_from_slice(&b[at..]),
    })
}

/// Whether a session saved in its entry may still be resumed at `now_ms` by a claim
/// whose previous owner did not answer (review10 M4: MQTT forbids "session present"
/// for a session that expired). Its expiry (the saved `SessionPut`) counts from
/// `offline_ms`, when its client went; 0 means it was connected when last saved,
/// so its node died with it: then from `owner_seen_ms`, that node's last heartbeat
/// (the connection went by then), and with neither known the session is taken as
/// live (as before). Empty or unreadable state: nothing to resume.
pub fn saved_session_live(
    state: &[u8],
    offline_ms: u64,
    owner_seen_ms: Option<u64>,
    now_ms: u64,
) -> bool {
    let Some(expiry_s) = saved_expiry_s(state) else {
        return false;
    };
    if expiry_s == u32::MAX {
        return true;
    }
    let since = if offline_ms != 0 {
        offline_ms
    } else if let Some(seen) = owner_seen_ms {
        seen
    } else {
        return true;
    };
    since.saturating_add(u64::from(expiry_s) * 1000) >= now_ms
}

/// What a claim that won the entry does about the session (sans-IO, review10 L1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimNext {
    /// Nothing to bring: no entry, or a clean start.
    Fresh,
    /// Ask this node, the previous owner, for the session (the saved state if it
    /// does not answer).
    Fetch(String),
    /// The entry names this node: the session its loop holds, if any; else the
    /// saved state, because this node lost it (restarted without a data directory
    /// under the same name). Without this a client that came back to the restarted
    /// node got session present 0 and lost its subscriptions, while one that went
    /// to another node got them.
    OwnOrSaved,
}

/// See `ClaimNext`: the entry named `prev` (`None`: none, or unreadable) and held
/// `saved`.
pub fn claim_next(prev: Option<&str>, me: &str, clean: bool, saved: &[u8]) -> ClaimNext {
    match prev {
        _ if clean => ClaimNext::Fresh,
        Some(p) if p != me => ClaimNext::Fetch(p.to_string()),
        Some(_) if !saved.is_empty() => ClaimNext::OwnOrSaved,
        _ => ClaimNext::Fresh,
    }
}

/// A claim's compare-and-set over `prev`'s entry, writing `epoch` (see
/// `Claims::attempts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub prev: String,
    pub epoch: u64,
}

/// The node a claim (or reconcile) that wins an entry naming `node` at `epoch` asks
/// for the session: `node` if it is another; if it is this one, the owner read by
/// this node's given-up claim whose compare-and-set wrote that entry (see
/// `reconcile_step`), so a CONNECT on this node before the reconcile asks it too.
pub fn owner_to_ask(
    node: Option<&str>,
    epoch: u64,
    me: &str,
    attempt: Option<&Attempt>,
) -> Option<String> {
    match node {
        Some(n) if n != me => Some(n.to_string()),
        Some(_) => attempt
            .filter(|a| a.epoch == epoch && a.prev != me)
            .map(|a| a.prev.clone()),
        None => None,
    }
}

/// The (offline time, state) a claim writes into the entry it wins: the saved
/// state as it was, so a node that dies between its claim and its first save of
/// the session (or restarts without a data directory) leaves it to the next claim
/// rather than blanking it (review10 L1); its offline time too, so a session whose
/// expiry passed is not made live again by the claim. A clean start keeps nothing.
pub fn claimed_state(clean: bool, offline_ms: u64, saved: &[u8]) -> (u64, &[u8]) {
    if clean {
        (0, &[])
    } else {
        (offline_ms, saved)
    }
}

/// Whether this node's own entry's saved state may be resumed at `now_ms` by a
/// claim whose loop holds no such session (`ClaimNext::OwnOrSaved`). A session with
/// no expiry of its own ended with its connection, and this node's last heartbeat
/// before the restart is not known any more (the new process beats under the same
/// key): a connected client's session counts from now, as `saved_session_live`
/// does with no heartbeat.
pub fn own_saved_live(state: &[u8], offline_ms: u64, now_ms: u64) -> bool {
    saved_expiry_s(state).is_some_and(|e| e > 0)
        && saved_session_live(state, offline_ms, None, now_ms)
}

/// The session expiry (seconds) in a saved state's `SessionPut`; `None`: empty or
/// unreadable state, or none there.
fn saved_expiry_s(state: &[u8]) -> Option<u32> {
    crate::shard::handover_records(state)?
        .iter()
        .find_map(|r| match r {
            crate::store::record::Record::SessionPut { expiry_s, .. } => Some(*expiry_s),
            _ => None,
        })
}

/// A won claim's session, for the claiming loop (`ClusterIn::Claimed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimAnswer {
    /// Hand-over bytes.
    pub session: Bytes,
    /// The node that sent them and its id for them, to confirm to.
    pub from: Option<Handed>,
    /// From this node's own entry (`ClaimNext::OwnOrSaved`): loaded only if the
    /// loop holds no session of the id (one it holds is newer, with its queue).
    pub own: bool,
}

/// The feed value (`WillFeed`) of a session save: the offline time (8 bytes LE, 0
/// while connected) then the state; `None` for an ended session (its state blanked).
pub fn stamp_save(save: crate::shard::SessionSave, now_ms: u64) -> Option<Bytes> {
    use crate::shard::SessionSave;
    let (offline_ms, state) = match save {
        SessionSave::Online(s) => (0, s),
        SessionSave::Offline(s) => (now_ms.max(1), s),
        SessionSave::Ended => return None,
    };
    let mut b = Vec::with_capacity(8 + state.len());
    b.extend_from_slice(&offline_ms.to_le_bytes());
    b.extend_from_slice(&state);
    Some(Bytes::from(b))
}

/// See `stamp_save`: (offline time, state); a blanked entry for `None`.
fn unstamp_save(value: Option<&Bytes>) -> (u64, Bytes) {
    match value {
        Some(v) if v.len() >= 8 => (
            u64::from_le_bytes(v[..8].try_into().unwrap_or_default()),
            v.slice(8..),
        ),
        _ => (0, Bytes::new()),
    }
}

/// The ids this node served without the cluster (NATS away, or a claim the bucket
/// did not answer), each with its CONNECT's time, until a reconcile settles them
/// (`Claims::reconcile`); at most `LOCAL_MAX`. Each also keeps the latest change of
/// its session that found no entry naming this node to write (`keep`): such an id
/// has no entry, or another node's, until the reconcile, which writes the kept
/// state into the entry it wins (`reconcile_step`). Before, the save was dropped
/// after 1 s without an entry and the reconcile wrote the state it found (none), so
/// the session's subscriptions reached the bucket only at its next change, and a
/// node death before that lost them. One kept value per id, the latest: memory is
/// bounded by the ids and the size of one session's saved state.
#[derive(Debug, Default)]
pub struct LocalIds {
    ids: HashMap<Bytes, LocalId>,
}

#[derive(Debug, Clone)]
struct LocalId {
    connect_ms: u64,
    /// `stamp_save`'s value (`Some(None)`: the session ended); `None`: no change
    /// waits, and the reconcile keeps the entry's state as it found it.
    kept: Option<Option<Bytes>>,
}

/// One id a reconcile settles: its CONNECT's time and the change it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPending {
    pub client_id: Bytes,
    pub connect_ms: u64,
    pub kept: Option<Option<Bytes>>,
}

impl LocalIds {
    /// A CONNECT of `client_id` served here at `now_ms`; false when the table is
    /// full (the id is then not reconciled). A change kept from an earlier
    /// connection stays: the session it describes is the one served again.
    pub fn served(&mut self, client_id: &Bytes, now_ms: u64) -> bool {
        if let Some(l) = self.ids.get_mut(client_id) {
            l.connect_ms = now_ms;
            return true;
        }
        if self.ids.len() >= LOCAL_MAX {
            return false;
        }
        self.ids.insert(
            client_id.clone(),
            LocalId {
                connect_ms: now_ms,
                kept: None,
            },
        );
        true
    }

    /// Keeps `save` (`stamp_save`'s value) for the reconcile if `client_id` waits
    /// for one; false if it does not (the save is the state writer's alone).
    pub fn keep(&mut self, client_id: &[u8], save: Option<&Bytes>) -> bool {
        match self.ids.get_mut(client_id) {
            Some(l) => {
                l.kept = Some(save.cloned());
                true
            }
            None => false,
        }
    }

    /// `save` was written into an entry naming this node (a claim that timed out
    /// here may still have landed): an older kept change must not overwrite it at
    /// the reconcile, so it is replaced by this one.
    pub fn written(&mut self, client_id: &[u8], save: Option<&Bytes>) {
        if let Some(l) = self.ids.get_mut(client_id).filter(|l| l.kept.is_some()) {
            l.kept = Some(save.cloned());
        }
    }

    /// Claimed through the cluster since: nothing to reconcile (a kept change is
    /// superseded by the save the loop makes when it serves the claim's CONNECT).
    pub fn claimed(&mut self, client_id: &[u8]) {
        self.ids.remove(client_id);
    }

    pub fn served_since(&self, client_id: &[u8], since_ms: u64) -> bool {
        self.ids
            .get(client_id)
            .is_some_and(|l| l.connect_ms >= since_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// What a reconcile run settles now.
    pub fn pending(&self) -> Vec<LocalPending> {
        self.ids
            .iter()
            .map(|(k, l)| LocalPending {
                client_id: k.clone(),
                connect_ms: l.connect_ms,
                kept: l.kept.clone(),
            })
            .collect()
    }

    /// The reconcile settled `p` (wrote `p.kept`, or gave the id up): forgotten,
    /// unless a later CONNECT was served here meanwhile (the next run settles
    /// that). Returns whether a change newer than the one written came meanwhile:
    /// the caller has it saved again (`ClusterIn::Resave`), now that the entry
    /// names this node.
    pub fn settled(&mut self, p: &LocalPending) -> bool {
        match self.ids.get(&p.client_id) {
            Some(l) if l.connect_ms == p.connect_ms => {
                let newer = l.kept.is_some() && l.kept != p.kept;
                self.ids.remove(&p.client_id);
                newer
            }
            _ => false,
        }
    }
}

/// What a reconcile does with one id this node served on its own, given the entry
/// it found (sans-IO; `Claims::reconcile_one`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileStep {
    /// That node's CONNECT came later: it keeps the id, and nothing is written.
    Lost(String),
    /// Write `value` (this node at `epoch`) by compare-and-set on the revision
    /// read; `other`: the node the entry named before, asked for its copies.
    Write {
        value: Bytes,
        epoch: u64,
        other: Option<String>,
    },
}

/// See `ReconcileStep`. `found`: the entry (`None`: none, or unreadable);
/// `mine_ms`: this node's CONNECT; `kept`: the latest change of the session here
/// that found no entry to write (`LocalIds::keep`), written into the entry, else
/// the entry's saved state is kept as found; `attempt`: a claim of the id that did
/// not come back won, if any (review10 M3). An entry naming this node was written
/// by that claim if it carries the claim's epoch: its compare-and-set landed after
/// the claim was given up (JetStream committed it once it had a quorum again), so
/// the owner it read was never asked and still holds the session, and its client;
/// it is asked now (`other`). Any other entry naming this node is a claim of its
/// own that finished.
pub fn reconcile_step(
    me: &str,
    found: Option<Owner>,
    mine_ms: u64,
    kept: Option<&Option<Bytes>>,
    attempt: Option<&Attempt>,
) -> ReconcileStep {
    let (other, epoch, found_state) = match found {
        Some(o) if o.node != me && o.connect_ms > mine_ms => {
            return ReconcileStep::Lost(o.node);
        }
        Some(o) => (
            owner_to_ask(Some(&o.node), o.epoch, me, attempt),
            o.epoch,
            o.state,
        ),
        None => (None, 0, Bytes::new()),
    };
    // Served here: connected when the CONNECT came, and its session is this node's.
    let (offline_ms, state) = match kept {
        Some(save) => unstamp_save(save.as_ref()),
        None => (0, found_state),
    };
    ReconcileStep::Write {
        value: encode_owner(me, epoch + 1, mine_ms, offline_ms, &state),
        epoch: epoch + 1,
        other,
    }
}

/// How one session save went (`Claims::save_state`).
#[derive(Debug)]
enum Saved {
    /// Written, or nothing to write (the entry names another node, or is gone).
    Done,
    /// NATS or the bucket did not answer: the change is kept and tried again.
    Later,
}

/// Now, as Unix ms (a CONNECT's time in its ownership entry).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a claim task needs (cheap to clone: handles and `Arc`s).
#[derive(Clone)]
pub struct Claims {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub replicas: usize,
    pub node: String,
    pub status: Arc<ClusterStatus>,
    pub store: Arc<OnceLock<kv::Store>>,
    /// Ids this node served without the cluster (NATS away, claim unanswered),
    /// reconciled when NATS returns (`reconcile`), with their kept saves.
    pub local: Arc<Mutex<LocalIds>>,
    /// The epoch of each id this node last claimed: a takeover request with an epoch
    /// not above it is stale and refused (`is_stale`). Bounded by `EPOCHS_MAX`.
    pub epochs: Arc<Mutex<HashMap<Bytes, u64>>>,
    /// Claims whose compare-and-set went out over another node's entry and did not
    /// come back won (timed out, refused or abandoned): the owner read and the epoch
    /// written (`Attempt`), for the reconcile (`reconcile_step`). Bounded by
    /// `LOCAL_MAX`.
    pub attempts: Arc<Mutex<HashMap<Bytes, Attempt>>>,
    /// Hand-overs of this node (their tokens) whose confirmation arrived: their
    /// watch (`watch_handover`) ends. Bounded: starts over past `CONFIRMED_SEEN_MAX`
    /// (a watch then runs to its own bound).
    pub confirmed: Arc<Mutex<std::collections::HashSet<u64>>>,
}

/// See `Claims::confirmed`.
const CONFIRMED_SEEN_MAX: usize = 65_536;

/// What a reconcile decided for one id this node served during a partition.
#[derive(Debug)]
pub enum Reconciled {
    /// This node's CONNECT was the later one and it owns the id again; `session`:
    /// what the other node handed over (its copies join the session here).
    Won {
        client_id: Bytes,
        session: Option<(Bytes, Handed)>,
    },
    /// The other node's CONNECT was the later one: this node's connection goes
    /// (0x8E) and its session's copies go to `node`.
    Lost { client_id: Bytes, node: String },
}

impl Claims {
    pub(super) async fn bucket(&self) -> Option<kv::Store> {
        if let Some(s) = self.store.get() {
            return Some(s.clone());
        }
        let s = super::link::bucket(
            &self.js,
            SESSIONS_BUCKET,
            "ringmq session owners (key: base64url of the client id; value: node, epoch)",
            self.replicas,
            &self.status,
        )
        .await?;
        let _ = self.store.set(s.clone());
        Some(s)
    }

    /// Makes this node the owner of `c.client_id` and returns what the previous
    /// owner handed over, or the entry's saved state (`None`: nothing came; see the
    /// module doc for why).
    pub async fn claim(&self, c: &SessionClaim) -> Option<ClaimAnswer> {
        if !self.status.is_connected() {
            self.served_locally(&c.client_id);
            return None;
        }
        match tokio::time::timeout(CLAIM_TIMEOUT, self.claim_now(c)).await {
            Ok(r) => r,
            Err(_) => {
                self.served_locally(&c.client_id);
                tracing::warn!(
                    "cluster: claim of session {:?} timed out; served from this node",
                    String::from_utf8_lossy(&c.client_id)
                );
                None
            }
        }
    }

    /// `client_id` was served without the cluster: counted, and remembered for the
    /// reconcile when NATS returns.
    pub(super) fn served_locally(&self, client_id: &Bytes) {
        self.status.sessions_local.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.local.lock() {
            if !l.served(client_id, unix_ms()) {
                tracing::warn!("cluster: too many sessions served locally to reconcile them all");
            }
        }
    }

    /// The epoch this node last claimed `client_id` at (0: not known), stamped on a
    /// will it registers (`wills::will_entry`, review10 M9).
    pub fn epoch_of(&self, client_id: &[u8]) -> u64 {
        self.epochs
            .lock()
            .ok()
            .and_then(|e| e.get(client_id).copied())
            .unwrap_or(0)
    }

    /// Whether this node served a CONNECT of `client_id` on its own (no claim: NATS
    /// away) after `since_ms` (wall clock), not reconciled yet.
    pub fn served_locally_since(&self, client_id: &[u8], since_ms: u64) -> bool {
        self.local
            .lock()
            .is_ok_and(|l| l.served_since(client_id, since_ms))
    }

    /// `client_id`'s ownership entry now (`Some(None)`: none; `None`: the bucket
    /// did not answer).
    pub async fn owner(&self, client_id: &[u8]) -> Option<Option<Owner>> {
        let kv = self.bucket().await?;
        let key = super::headers::retained_key(client_id);
        match kv.entry(&key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Some(decode_owner(&e.value)),
            Ok(_) => Some(None),
            Err(_) => None,
        }
    }

    /// Whether a takeover request claiming `epoch` for `client_id` is older than this
    /// node's own claim of it (a request that crossed a later claim, e.g. this node's
    /// reconcile after a partition): then it is refused and the session stays.
    pub fn is_stale(&self, client_id: &[u8], epoch: u64) -> bool {
        self.epochs
            .lock()
            .ok()
            .and_then(|e| e.get(client_id).copied())
            .is_some_and(|mine| mine >= epoch)
    }

    fn attempted(&self, client_id: &Bytes, prev: &str, epoch: u64) {
        if let Ok(mut a) = self.attempts.lock() {
            if a.len() < LOCAL_MAX || a.contains_key(client_id) {
                let prev = prev.to_string();
                a.insert(client_id.clone(), Attempt { prev, epoch });
            }
        }
    }

    fn attempt_of(&self, client_id: &[u8]) -> Option<Attempt> {
        self.attempts
            .lock()
            .ok()
            .and_then(|a| a.get(client_id).cloned())
    }

    fn forget_attempt(&self, client_id: &[u8]) {
        if let Ok(mut a) = self.attempts.lock() {
            a.remove(client_id);
        }
    }

    fn claimed_epoch(&self, client_id: &Bytes, epoch: u64) {
        if let Ok(mut e) = self.epochs.lock() {
            if e.len() >= EPOCHS_MAX {
                e.clear();
            }
            e.insert(client_id.clone(), epoch);
        }
    }

    async fn claim_now(&self, c: &SessionClaim) -> Option<ClaimAnswer> {
        let Some(kv) = self.bucket().await else {
            self.served_locally(&c.client_id);
            return None;
        };
        let key = super::headers::retained_key(&c.client_id);
        for _ in 0..CLAIM_TRIES {
            let (prev, epoch, saved, offline_ms, revision) = match kv.entry(&key).await {
                Ok(Some(e)) => match (e.operation, decode_owner(&e.value)) {
                    (kv::Operation::Put, Some(o)) => (
                        Some(o.node),
                        o.epoch,
                        o.state,
                        o.offline_ms,
                        Some(e.revision),
                    ),
                    _ => (None, 0, Bytes::new(), 0, Some(e.revision)),
                },
                Ok(None) => (None, 0, Bytes::new(), 0, None),
                Err(e) => {
                    tracing::debug!("cluster: session entry read failed: {e}");
                    self.served_locally(&c.client_id);
                    return None;
                }
            };
            let attempt = self.attempt_of(&c.client_id);
            let prev = owner_to_ask(prev.as_deref(), epoch, &self.node, attempt.as_ref()).or(prev);
            let (kept_offline_ms, kept) = claimed_state(c.clean, offline_ms, &saved);
            let value = encode_owner(&self.node, epoch + 1, unix_ms(), kept_offline_ms, kept);
            if let Some(p) = prev.as_deref().filter(|p| *p != self.node) {
                // Kept unless the claim comes back won: a CAS that times out (or whose
                // claim is given up) may still land (`reconcile_step`).
                self.attempted(&c.client_id, p, epoch + 1);
            }
            let won = match revision {
                Some(r) => kv.update(&key, value, r).await.is_ok(),
                None => kv.create(&key, value).await.is_ok(),
            };
            if !won {
                // Another node claimed it meanwhile: read again and ask that one.
                continue;
            }
            self.status.sessions_claimed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "cluster: claimed {:?} at epoch {} (previous owner {prev:?})",
                String::from_utf8_lossy(&c.client_id),
                epoch + 1
            );
            self.claimed_epoch(&c.client_id, epoch + 1);
            if let Ok(mut l) = self.local.lock() {
                // Claimed through the cluster now: nothing left to reconcile.
                l.claimed(&c.client_id);
            }
            let next = claim_next(prev.as_deref(), &self.node, c.clean, &saved);
            if !matches!(next, ClaimNext::Fetch(_)) {
                self.forget_attempt(&c.client_id);
            }
            let owner = match next {
                ClaimNext::Fresh => return None,
                ClaimNext::OwnOrSaved => {
                    let live = own_saved_live(&saved, offline_ms, unix_ms());
                    return self.recover_or_expire(saved, live, true);
                }
                ClaimNext::Fetch(owner) => owner,
            };
            let fetched = self.fetch(&owner, c, epoch + 1).await;
            // Asked: what the owner does with the request is its answer's (a claim
            // given up before this line leaves the attempt to the reconcile).
            self.forget_attempt(&c.client_id);
            return match fetched {
                Fetched::Session(token, s) => Some(ClaimAnswer {
                    session: s,
                    from: Some(Handed { node: owner, token }),
                    own: false,
                }),
                Fetched::Nothing => None,
                Fetched::NoAnswer if !saved.is_empty() && !c.clean => {
                    let seen = if offline_ms == 0 {
                        self.last_heartbeat_ms(&owner).await
                    } else {
                        None
                    };
                    let live = saved_session_live(&saved, offline_ms, seen, unix_ms());
                    if !live {
                        tracing::info!(
                            "cluster: the saved session of {:?} (owner {owner}) expired; \
                                 served fresh",
                            String::from_utf8_lossy(&c.client_id)
                        );
                    }
                    self.recover_or_expire(saved, live, false)
                }
                Fetched::NoAnswer => None,
            };
        }
        self.served_locally(&c.client_id);
        None
    }

    /// A won claim's session from the saved state in its entry (no hand-over:
    /// `own`, the entry is this node's; else its owner did not answer), counted as
    /// recovered, or as expired when it is not `live` any more (served fresh).
    fn recover_or_expire(&self, saved: Bytes, live: bool, own: bool) -> Option<ClaimAnswer> {
        if !live {
            self.status.sessions_expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.status
            .sessions_recovered
            .fetch_add(1, Ordering::Relaxed);
        Some(ClaimAnswer {
            session: saved,
            from: None,
            own,
        })
    }

    /// Asks `owner` to give the session up (this node claimed it at `epoch`).
    async fn fetch(&self, owner: &str, c: &SessionClaim, epoch: u64) -> Fetched {
        let body = encode_request(&c.client_id, c.clean, epoch);
        let id = String::from_utf8_lossy(&c.client_id);
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        let mut answer = self.fetch_once(owner, &body, deadline).await;
        // A busy node did nothing with the request (review L1): asked again while
        // the fetch's own bound lasts, then taken as silent (the claim goes on from
        // the sessions bucket, as for a node that does not answer).
        while matches!(&answer, Ok(Ok(m)) if m.payload[..] == [REPLY_BUSY]) {
            if tokio::time::Instant::now() + BUSY_RETRY >= deadline {
                answer = Err(());
                break;
            }
            tokio::time::sleep(BUSY_RETRY).await;
            answer = self.fetch_once(owner, &body, deadline).await;
        }
        let why = match answer {
            Ok(Ok(m)) if m.payload[..] == [REPLY_TOO_LARGE] => {
                self.status.sessions_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: node {owner} kept session {id:?}: too large for one NATS \
                     message (max_payload); served fresh here"
                );
                return Fetched::Nothing;
            }
            Ok(Ok(m)) => {
                return match decode_reply(&m.payload) {
                    Some(Some((token, s))) => {
                        self.status
                            .sessions_received
                            .fetch_add(1, Ordering::Relaxed);
                        Fetched::Session(token, s)
                    }
                    Some(None) => Fetched::Nothing,
                    None => {
                        self.status.malformed.fetch_add(1, Ordering::Relaxed);
                        Fetched::Nothing
                    }
                };
            }
            Ok(Err(e)) => e.to_string(),
            Err(()) => "no answer".to_string(),
        };
        self.status.sessions_lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "cluster: node {owner} did not hand over session {id:?} ({why}); its queued \
             messages are lost, its subscriptions come from the sessions bucket"
        );
        Fetched::NoAnswer
    }

    /// One takeover request to `owner`, answered by `deadline` (`Err`: not).
    async fn fetch_once(
        &self,
        owner: &str,
        body: &Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Result<async_nats::Message, async_nats::RequestError>, ()> {
        let req = self.client.request(takeover_subject(owner), body.clone());
        tokio::time::timeout_at(deadline, req).await.map_err(|_| ())
    }

    /// Tells `c.from.node` this node holds the session and its interest (the caller
    /// has flushed the subscriptions to NATS) and returns the delta it answers with:
    /// the copies that reached the session there since the hand-over (`Some(None)`:
    /// none). Retried while the old node does not answer, for one bounded round;
    /// `None`: unanswered (the old node keeps the session, and the loop decides
    /// whether to ask again, `ClusterIn::ConfirmUnanswered`).
    pub async fn confirm(&self, c: &crate::shard::HandoverConfirm) -> Option<Confirmed> {
        let body = encode_confirm(&c.client_id, c.from.token);
        let mut tries = ConfirmTries::default();
        loop {
            let req = self
                .client
                .request(takeover_subject(&c.from.node), body.clone());
            let answer = match tokio::time::timeout(FETCH_TIMEOUT, req).await {
                Ok(Ok(m)) => Some(decode_answer(&m.payload)),
                Ok(Err(e)) => {
                    tracing::debug!("cluster: hand-over confirmation: {e}");
                    None
                }
                Err(_) => {
                    tracing::debug!("cluster: hand-over confirmation not answered");
                    None
                }
            };
            if answer == Some(Answer::Malformed) {
                self.status.malformed.fetch_add(1, Ordering::Relaxed);
            }
            if answer == Some(Answer::Busy) {
                tracing::debug!(
                    "cluster: node {} busy; confirmation asked again",
                    c.from.node
                );
            }
            match tries.next(answer) {
                ConfirmStep::Done(delta) => return Some(Confirmed::Delta(delta)),
                ConfirmStep::TakenBack => return Some(Confirmed::TakenBack),
                ConfirmStep::Again(wait) => tokio::time::sleep(wait).await,
                ConfirmStep::GiveUp => break,
            }
        }
        tracing::warn!(
            "cluster: node {} did not answer the hand-over confirmation of {:?} (round {})",
            c.from.node,
            String::from_utf8_lossy(&c.client_id),
            c.attempt + 1
        );
        None
    }

    /// NATS is back after this node served some ids on its own: one owner per id
    /// again, the later CONNECT winning (each node's CONNECT time, wall clock). For
    /// each id: an entry naming this node, or none, is (re)claimed; an entry naming
    /// another node whose CONNECT came earlier is claimed by compare-and-set and that
    /// node is asked to give the session up (its client gets 0x8E; its copies join
    /// the session here, `Won`); one whose CONNECT came later wins, and this node's
    /// client gets 0x8E (`Lost`). Ids that cannot be settled now (NATS away again)
    /// stay for the next return. The entry written holds the latest change of the
    /// session here that found no entry naming this node (`LocalIds::keep`).
    pub async fn reconcile(&self, done: &mpsc::Sender<Reconciled>) {
        let pending = match self.local.lock() {
            Ok(l) => l.pending(),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        let Some(kv) = self.bucket().await else {
            return;
        };
        tracing::info!(
            "cluster: reconciling {} sessions served during the partition",
            pending.len()
        );
        for p in pending {
            let Some(r) = self.reconcile_one(&kv, &p).await else {
                // The bucket does not answer (JetStream without a leader): the rest
                // wait for the next run (`health::ReconcileSchedule`) instead of each
                // waiting out its own timeout now.
                break;
            };
            let newer = self.local.lock().is_ok_and(|mut l| l.settled(&p));
            self.forget_attempt(&p.client_id);
            let r = match r {
                Some(r) => {
                    self.status
                        .sessions_reconciled
                        .fetch_add(1, Ordering::Relaxed);
                    Some(r)
                }
                // A change came after the one written: the loop saves the session
                // again (the entry names this node now, so the state writer takes it).
                None if newer => Some(Reconciled::Won {
                    client_id: p.client_id.clone(),
                    session: None,
                }),
                None => None,
            };
            if let Some(r) = r {
                if done.send(r).await.is_err() {
                    return;
                }
            }
        }
    }

    /// `None`: not settled (try again later); `Some(None)`: nothing to do.
    async fn reconcile_one(&self, kv: &kv::Store, p: &LocalPending) -> Option<Option<Reconciled>> {
        let client_id = &p.client_id;
        let key = super::headers::retained_key(client_id);
        for _ in 0..CLAIM_TRIES {
            let (owner, revision) = match kv.entry(&key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => {
                    (decode_owner(&e.value), Some(e.revision))
                }
                Ok(Some(e)) => (None, Some(e.revision)),
                Ok(None) => (None, None),
                Err(_) => return None,
            };
            let attempt = self.attempt_of(client_id);
            let (value, epoch, other) = match reconcile_step(
                &self.node,
                owner,
                p.connect_ms,
                p.kept.as_ref(),
                attempt.as_ref(),
            ) {
                ReconcileStep::Lost(node) => {
                    // The other node's CONNECT is the later one: it keeps the id.
                    return Some(Some(Reconciled::Lost {
                        client_id: client_id.clone(),
                        node,
                    }));
                }
                ReconcileStep::Write {
                    value,
                    epoch,
                    other,
                } => (value, epoch, other),
            };
            let won = match revision {
                Some(r) => kv.update(&key, value, r).await.is_ok(),
                None => kv.create(&key, value).await.is_ok(),
            };
            if !won {
                continue;
            }
            if p.kept.is_some() {
                // The change the state writer could not write landed with the claim.
                self.status.sessions_saved.fetch_add(1, Ordering::Relaxed);
            }
            self.claimed_epoch(client_id, epoch);
            let Some(other) = other else {
                return Some(None);
            };
            let c = SessionClaim {
                conn: 0,
                generation: 0,
                client_id: client_id.clone(),
                clean: false,
            };
            let session = match self.fetch(&other, &c, epoch).await {
                Fetched::Session(token, s) => Some((s, Handed { node: other, token })),
                _ => None,
            };
            return Some(Some(Reconciled::Won {
                client_id: client_id.clone(),
                session,
            }));
        }
        None
    }

    /// Keeps this node's persistent sessions' subscriptions in their entries, one
    /// change at a time in the loops' order; an entry another node claimed since is
    /// left alone (the session is no longer this node's). A change that cannot be
    /// written now (NATS or the bucket away) is kept, unless a later change of the
    /// same id replaced it, and tried again with a backoff until it lands (review10
    /// M4: a subscription made during an outage used to be dropped, and a node that
    /// took the session from this one after it died came back without it).
    pub async fn state_writer(self, feed: super::wills::WillFeed) {
        let mut backoff = STATE_RETRY;
        loop {
            let (client_id, save) = feed.next().await;
            match self.save_state(&client_id, save.as_ref()).await {
                Saved::Done => backoff = STATE_RETRY,
                Saved::Later => {
                    self.status
                        .sessions_save_retries
                        .fetch_add(1, Ordering::Relaxed);
                    feed.put_back(client_id, save);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(STATE_BACKOFF_MAX);
                }
            }
        }
    }

    /// Writes one change (`stamp_save`'s value; `None`: the session ended) into
    /// `client_id`'s entry if it names this node. The change of an id this node
    /// served on its own, not reconciled yet, that finds no entry naming this node
    /// (or no bucket) is kept for the reconcile, which writes it with its claim
    /// (`LocalIds`): it is never dropped, and it does not hold up the other ids'
    /// saves while the id has no entry.
    async fn save_state(&self, client_id: &Bytes, save: Option<&Bytes>) -> Saved {
        let Some(kv) = self.bucket().await else {
            return self.keep_or(client_id, save, Saved::Later);
        };
        let (offline_ms, state) = unstamp_save(save);
        let key = super::headers::retained_key(client_id);
        for _ in 0..STATE_TRIES {
            // A read can be served by a replica that has not applied this node's
            // claim yet (direct get): no entry, or a CAS on a stale revision, is
            // tried again shortly rather than dropped.
            let e = match kv.entry(&key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => e,
                Ok(_) => {
                    if self.kept_for_reconcile(client_id, save) {
                        return Saved::Done;
                    }
                    tokio::time::sleep(STATE_RETRY).await;
                    continue;
                }
                Err(_) => return self.keep_or(client_id, save, Saved::Later),
            };
            let Some(o) = decode_owner(&e.value).filter(|o| o.node == self.node) else {
                // Another node's entry (or unreadable): not this node's to write,
                // unless the reconcile settles the id for this node.
                return self.keep_or(client_id, save, Saved::Done);
            };
            if save.is_none() && o.state.is_empty() && o.offline_ms == 0 {
                // Ended, and nothing saved: nothing to blank.
                return Saved::Done;
            }
            let value = encode_owner(&self.node, o.epoch, o.connect_ms, offline_ms, &state);
            match kv.update(&key, value, e.revision).await {
                Ok(_) => {
                    self.status.sessions_saved.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = self.local.lock() {
                        l.written(client_id, save);
                    }
                    return Saved::Done;
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(STATE_RETRY).await;
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::InvalidKey => return Saved::Done,
                Err(_) => return self.keep_or(client_id, save, Saved::Later),
            }
        }
        // The entry stayed absent, or kept changing under the write: a claim
        // elsewhere, not this node's to save (an id served here is kept above).
        Saved::Done
    }

    /// `Done` when `client_id` waits for a reconcile, which now holds `save`
    /// (`kept_for_reconcile`); else `otherwise`.
    fn keep_or(&self, client_id: &Bytes, save: Option<&Bytes>, otherwise: Saved) -> Saved {
        if self.kept_for_reconcile(client_id, save) {
            Saved::Done
        } else {
            otherwise
        }
    }

    /// Whether `client_id` waits for a reconcile, which then holds `save`
    /// (`LocalIds::keep`).
    fn kept_for_reconcile(&self, client_id: &Bytes, save: Option<&Bytes>) -> bool {
        self.local.lock().is_ok_and(|mut l| l.keep(client_id, save))
    }

    /// When node `node`'s heartbeat last landed (server time, Unix ms; `None`: not
    /// known), read only for a claim recovering from a dead owner's entry.
    async fn last_heartbeat_ms(&self, node: &str) -> Option<u64> {
        let nodes = super::link::bucket(
            &self.js,
            super::wills::NODES_BUCKET,
            "ringmq node heartbeats (key: base64url of the node; value: incarnation)",
            self.replicas,
            &self.status,
        )
        .await?;
        let key = super::wills::node_key(node);
        let e = nodes.entry(&key).await.ok()??;
        u64::try_from(e.created.unix_timestamp_nanos() / 1_000_000).ok()
    }
}

/// What an old node does with a session it handed over and that was never
/// confirmed, given the ownership entry now (review M1; `Claims::reassert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassert {
    /// The entry still holds the asker's claim (`epoch`, handed over): this node
    /// writes itself with the next epoch by compare-and-set on that revision, so
    /// the next claim asks it, and it hands the session on whole.
    Take,
    /// A newer claim holds the entry (its claimer asked the silent asker, or
    /// rebuilt the session from the entry): the session's copies go to it, where
    /// they join its session (as after a partition, `Yield`).
    SendTo(String),
    /// This node owns it again already, or the entry is gone: nothing to do.
    Leave,
}

/// See `Reassert`. `epoch`: the asker's claim, the one this node handed over to.
pub fn reassert_step(entry: Option<&Owner>, me: &str, epoch: u64) -> Reassert {
    match entry {
        Some(o) if o.node == me => Reassert::Leave,
        Some(o) if o.epoch == epoch => Reassert::Take,
        Some(o) if o.epoch > epoch => Reassert::SendTo(o.node.clone()),
        _ => Reassert::Leave,
    }
}

impl Claims {
    /// A confirmation of this node's hand-over `token` arrived.
    pub fn note_confirmed(&self, token: u64) {
        if let Ok(mut c) = self.confirmed.lock() {
            if c.len() >= CONFIRMED_SEEN_MAX {
                c.clear();
            }
            c.insert(token);
        }
    }

    fn take_confirmed(&self, token: u64) -> bool {
        self.confirmed.lock().is_ok_and(|mut c| c.remove(&token))
    }

    /// Watches hand-over `token` of `client_id` (the asker claimed it at `epoch`):
    /// after `HANDOVER_LAPSE`, once the asker (named by the entry at that epoch)
    /// looks dead by its heartbeat, the loop `l` that holds the session is told
    /// (`HandoverLapsed`); it takes the session back only if it still holds it for
    /// this hand-over (a confirmation ends that). A live asker is never raced: it
    /// may hold the session with only its confirmation lost.
    pub async fn watch_handover(
        self,
        alive: super::wills::AliveNodes,
        client_id: Bytes,
        token: u64,
        epoch: u64,
        tx: mpsc::Sender<(usize, crate::shard::ClusterIn)>,
        l: usize,
    ) {
        let Some(kv) = self.bucket().await else {
            return;
        };
        let key = super::headers::retained_key(&client_id);
        let mut asker = None;
        for _ in 0..ASKER_READS {
            if let Ok(Some(e)) = kv.entry(&key).await {
                if let Some(o) = decode_owner(&e.value).filter(|o| o.epoch >= epoch) {
                    asker = (o.epoch == epoch).then_some(o.node);
                    break;
                }
            }
            tokio::time::sleep(STATE_RETRY).await;
        }
        let Some(asker) = asker else {
            // Unknown, or claimed again already: the session is not stranded here
            // by this hand-over's asker (or cannot be shown to be).
            return;
        };
        // Most hand-overs are confirmed within seconds: their watch ends then.
        let lapse = tokio::time::Instant::now() + HANDOVER_LAPSE;
        while tokio::time::Instant::now() < lapse {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.take_confirmed(token) {
                return;
            }
        }
        if super::wills::node_alive(&alive, &asker) {
            // It serves the client with its confirmation lost or late: the copy
            // held here stops taking messages it would only send again on the
            // client's return (review10 M8 item 2).
            let m = crate::shard::ClusterIn::HandoverUnconfirmed {
                client_id: client_id.clone(),
                token,
            };
            let _ = tx.send((l, m)).await;
        }
        let until = tokio::time::Instant::now() + LAPSE_WATCH_MAX;
        while super::wills::node_alive(&alive, &asker) {
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(LAPSE_RECHECK).await;
            if self.take_confirmed(token) {
                return;
            }
        }
        tracing::info!(
            "cluster: node {asker} never confirmed the hand-over of {:?} and looks dead; \
             taking the session back",
            String::from_utf8_lossy(&client_id)
        );
        let m = crate::shard::ClusterIn::HandoverLapsed {
            client_id,
            token,
            epoch,
        };
        let _ = tx.send((l, m)).await;
    }

    /// The loop took back a lapsed hand-over of `client_id` (the asker claimed it at
    /// `epoch`): this node becomes the owner again by compare-and-set on the exact
    /// revision that still holds that claim (never over a newer one). Returns where
    /// the session goes instead when a newer claim holds the entry (`SendTo`).
    pub async fn reassert(&self, client_id: &Bytes, epoch: u64) -> Reassert {
        let Some(kv) = self.bucket().await else {
            return Reassert::Leave;
        };
        let key = super::headers::retained_key(client_id);
        for _ in 0..CLAIM_TRIES {
            let e = match kv.entry(&key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => e,
                Ok(_) => return Reassert::Leave,
                Err(_) => {
                    tokio::time::sleep(STATE_RETRY).await;
                    continue;
                }
            };
            let o = decode_owner(&e.value);
            match reassert_step(o.as_ref(), &self.node, epoch) {
                Reassert::Take => {}
                other => return other,
            }
            let Some(o) = o else {
                return Reassert::Leave;
            };
            let value = encode_owner(&self.node, epoch + 1, o.connect_ms, o.offline_ms, &o.state);
            if kv.update(&key, value, e.revision).await.is_ok() {
                self.claimed_epoch(client_id, epoch + 1);
                self.status
                    .sessions_reasserted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "cluster: owner of {:?} again at epoch {} (hand-over never confirmed)",
                    String::from_utf8_lossy(client_id),
                    epoch + 1
                );
                return Reassert::Take;
            }
            // Changed meanwhile: read again (a newer claim is sent the session).
        }
        Reassert::Leave
    }
}

/// What the old node answered a confirmation with (`Claims::confirm`).
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// Its delta (`None`: nothing reached its copy, or it had none).
    Delta(Option<Bytes>),
    /// It took the session back (review M1): this node gives its own up to it.
    TakenBack,
}

/// What the previous owner said.
enum Fetched {
    /// The hand-over's id on the old node, and the bytes.
    Session(u64, Bytes),
    /// It had no such session (or the claim was a clean start).
    Nothing,
    /// It did not answer: dead, or cut from NATS.
    NoAnswer,
}
