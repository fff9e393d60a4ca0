//! Session ownership across nodes, the cluster thread's side (issue #17; the loops'
//! side is `shard/cluster_session.rs`).
//!
//! The JetStream KV bucket `ringmq_sessions` maps a client id (key: base64url of the
//! id) to `node\nepoch`. A CONNECT's claim reads the entry and writes this node with
//! the next epoch by compare-and-set on the revision it read; a lost race reads
//! again (bounded). When the entry named another node, that node is asked on its
//! takeover subject (`ringmq.node.<node>.takeover`, NATS request/reply) to close the
//! old connection and send the session; the claim's answer carries what came back.
//!
//! What is lost, and why: when the previous owner does not answer (killed, or cut
//! from NATS) within `FETCH_TIMEOUT`, its sessions' subscriptions and queued
//! messages were only in its memory (and its own data directory): the claim goes on
//! without them and the CONNACK says session present 0. When NATS or the bucket
//! cannot answer within `CLAIM_TIMEOUT`, the node serves the CONNECT from what it
//! holds itself (a node cut off from NATS keeps serving its own clients).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::bridge::ClusterStatus;
use super::subject::escape_token;
use crate::shard::SessionClaim;

/// The session-ownership bucket.
pub const SESSIONS_BUCKET: &str = "ringmq_sessions";
/// Compare-and-set attempts of one claim before it goes on without the cluster.
const CLAIM_TRIES: usize = 4;
/// Bound on a whole claim (bucket read, CAS, fetch): past it the CONNECT goes on
/// with what this node holds. Below the connect timeout, so the client gets a CONNACK.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(4);
/// Bound on the previous owner's answer; a node that does not answer is taken as dead.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The subject a node answers takeover requests on.
pub fn takeover_subject(node: &str) -> String {
    let mut s = String::from("ringmq.node.");
    escape_token(node.as_bytes(), &mut s);
    s.push_str(".takeover");
    s
}

/// A takeover request: the clean-start flag, then the client id.
pub fn encode_request(client_id: &[u8], clean: bool) -> Bytes {
    let mut b = Vec::with_capacity(client_id.len() + 1);
    b.push(u8::from(clean));
    b.extend_from_slice(client_id);
    Bytes::from(b)
}

pub fn decode_request(b: &[u8]) -> Option<(Bytes, bool)> {
    let (&flag, id) = b.split_first()?;
    (flag <= 1 && !id.is_empty()).then(|| (Bytes::copy_from_slice(id), flag == 1))
}

/// The takeover answer of a node that kept the session: too large for one NATS message.
pub const REPLY_TOO_LARGE: u8 = 2;

/// A takeover answer: `0` (no session there) or `1` and the hand-over bytes (or
/// `REPLY_TOO_LARGE` alone).
pub fn encode_reply(session: Option<&Bytes>) -> Bytes {
    match session {
        None => Bytes::from_static(&[0]),
        Some(s) => {
            let mut b = Vec::with_capacity(s.len() + 1);
            b.push(1);
            b.extend_from_slice(s);
            Bytes::from(b)
        }
    }
}

pub fn decode_reply(b: &[u8]) -> Option<Option<Bytes>> {
    match b.split_first()? {
        (0, []) => Some(None),
        (1, rest) => Some(Some(Bytes::copy_from_slice(rest))),
        _ => None,
    }
}

/// An ownership entry's value: `node\nepoch`.
pub fn encode_owner(node: &str, epoch: u64) -> Bytes {
    Bytes::from(format!("{node}\n{epoch}"))
}

pub fn decode_owner(b: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (node, epoch) = s.split_once('\n')?;
    Some((node.to_string(), epoch.parse().ok()?))
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
}

impl Claims {
    async fn bucket(&self) -> Option<kv::Store> {
        if let Some(s) = self.store.get() {
            return Some(s.clone());
        }
        let s = super::link::bucket(
            &self.js,
            SESSIONS_BUCKET,
            "ringmq session owners (key: base64url of the client id; value: node, epoch)",
            self.replicas,
        )
        .await?;
        let _ = self.store.set(s.clone());
        Some(s)
    }

    /// Makes this node the owner of `c.client_id` and returns what the previous
    /// owner handed over (`None`: nothing came; see the module doc for why).
    pub async fn claim(&self, c: &SessionClaim) -> Option<Bytes> {
        if !self.status.is_connected() {
            self.status.sessions_local.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match tokio::time::timeout(CLAIM_TIMEOUT, self.claim_now(c)).await {
            Ok(r) => r,
            Err(_) => {
                self.status.sessions_local.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: claim of session {:?} timed out; served from this node",
                    String::from_utf8_lossy(&c.client_id)
                );
                None
            }
        }
    }

    async fn claim_now(&self, c: &SessionClaim) -> Option<Bytes> {
        let Some(kv) = self.bucket().await else {
            self.status.sessions_local.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let key = super::headers::retained_key(&c.client_id);
        for _ in 0..CLAIM_TRIES {
            let (prev, epoch, revision) = match kv.entry(&key).await {
                Ok(Some(e)) => match (e.operation, decode_owner(&e.value)) {
                    (kv::Operation::Put, Some((node, epoch))) => {
                        (Some(node), epoch, Some(e.revision))
                    }
                    _ => (None, 0, Some(e.revision)),
                },
                Ok(None) => (None, 0, None),
                Err(e) => {
                    tracing::debug!("cluster: session entry read failed: {e}");
                    self.status.sessions_local.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            let value = encode_owner(&self.node, epoch + 1);
            let won = match revision {
                Some(r) => kv.update(&key, value, r).await.is_ok(),
                None => kv.create(&key, value).await.is_ok(),
            };
            if !won {
                // Another node claimed it meanwhile: read again and ask that one.
                continue;
            }
            self.status.sessions_claimed.fetch_add(1, Ordering::Relaxed);
            return match prev {
                Some(owner) if owner != self.node => self.fetch(&owner, c).await,
                _ => None,
            };
        }
        self.status.sessions_local.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Asks `owner` to give the session up.
    async fn fetch(&self, owner: &str, c: &SessionClaim) -> Option<Bytes> {
        let req = self.client.request(
            takeover_subject(owner),
            encode_request(&c.client_id, c.clean),
        );
        let id = String::from_utf8_lossy(&c.client_id);
        match tokio::time::timeout(FETCH_TIMEOUT, req).await {
            Ok(Ok(m)) if m.payload[..] == [REPLY_TOO_LARGE] => {
                self.status.sessions_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: node {owner} kept session {id:?}: too large for one NATS \
                     message (max_payload); served fresh here"
                );
                None
            }
            Ok(Ok(m)) => match decode_reply(&m.payload) {
                Some(Some(s)) => {
                    self.status
                        .sessions_received
                        .fetch_add(1, Ordering::Relaxed);
                    Some(s)
                }
                Some(None) => None,
                None => {
                    self.status.malformed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            Ok(Err(e)) => {
                self.status.sessions_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: node {owner} did not hand over session {id:?} ({e}); \
                     its subscriptions and queued messages are lost"
                );
                None
            }
            Err(_) => {
                self.status.sessions_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: node {owner} did not answer for session {id:?}; \
                     its subscriptions and queued messages are lost"
                );
                None
            }
        }
    }
}
