//! Per-connection state. Kept small: this struct exists once per connected client
//! (100k+ per shard), so rarely used parts live behind `Option<Box<..>>`.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::limits::Refusal;
use crate::auth::Acl;
use crate::protocol::ProtocolVersion;
use crate::session::NONE;
use crate::tx::TxBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Accepted, CONNECT not yet processed.
    AwaitConnect,
    Connected,
    /// We emitted `Action::Close`; waiting for `release`.
    Closing,
    /// The IO side reported `on_closed`; waiting for `release`.
    Closed,
    /// Handed to another shard; waiting for `release`.
    Migrated,
    /// CONNECT read, its password being checked on the verifier pool
    /// (`Action::Verify`); input is buffered, not decoded, until `on_verified`.
    Verifying,
}

/// Until CONNECT: where the connection came from (needed for a handoff).
#[derive(Debug)]
pub(crate) struct Pending {
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    /// Set at accept when a connection limit is exceeded: the CONNECT is refused.
    pub refusal: Option<Refusal>,
    /// Handed over by the accepting shard, which already applied the limits.
    pub adopted: bool,
    /// Adopted: when the accepting shard read the CONNECT (`Handoff::connect_at`).
    pub connect_at: Option<Instant>,
    /// While `Verifying`: the CONNECT that waits for the verifier's answer.
    pub verifying: Option<Box<crate::protocol::Connect>>,
    /// The password check `Action::Verify` announced, until the IO side takes it.
    pub verify_job: Option<Box<crate::auth::VerifyJob>>,
    /// The username a verified TLS client certificate gives (`tls_identity_username`),
    /// for the authentication check at CONNECT. Set by the IO side once the handshake
    /// is done, before any CONNECT can arrive.
    pub cert_username: Option<String>,
    /// The accepting listener's own anonymous rule (`None`: the policy's).
    pub listener_anonymous: Option<bool>,
}

/// What few connections need, behind one pointer in `Conn`: the accept-time state
/// until CONNECT, and MQTT 5 topic aliases after it. One box instead of two saves
/// 8 bytes in every connection (issue #21: ≤ 300 B per idle connection); the box
/// is freed at CONNECT unless aliases are in use.
#[derive(Debug, Default)]
pub(crate) struct Rare {
    pub pending: Option<Pending>,
    pub aliases: Aliases,
}

/// MQTT 5 topic aliases of one network connection (they do not survive it).
#[derive(Debug, Default)]
pub(crate) struct Aliases {
    /// Client → server: index `alias - 1`; empty `Bytes` = not set.
    pub inbound: Vec<Bytes>,
    /// Server → client, in first-seen order: topic `i` has alias `i + 1`.
    pub outbound: Vec<Bytes>,
}

/// Server → client aliases per connection are capped here (on top of the client's
/// Topic Alias Maximum) so the first-seen lookup stays a short linear scan.
pub(crate) const MAX_OUTBOUND_ALIASES: usize = 64;

#[derive(Debug)]
pub(crate) struct Conn {
    /// Received bytes not yet decoded. Replaced by an empty `BytesMut` whenever it
    /// drains, so an idle connection holds no buffer.
    pub rx: BytesMut,
    /// Encoded bytes not yet taken by the IO side; PUBLISH copies are kept within
    /// `max_outbound_bytes` (control packets are not counted, see `write_control`).
    pub tx: TxBuf,
    /// Last time anything arrived, in ms from the shard's epoch, wrapping
    /// (`Shard::seen_ms`): keepalive is checked lazily against it. 4 bytes instead of
    /// an `Instant`'s 16; a wrapped difference is exact below 49 days, and keepalive
    /// looks at most 1.5 × 65,535 s (27 h) back.
    pub last_seen_ms: u32,
    /// `Pending` until CONNECT, topic aliases after: see `Rare`.
    pub rare: Option<Box<Rare>>,
    /// `rx.capacity()` as last added to `ShardStats::bytes_rx` (`Shard::sync_rx`).
    pub rx_counted: u32,
    /// Distinguishes reuses of this slab slot for timers.
    pub generation: u32,
    /// Latency stamp (`Shard::latency_stamp`) of the oldest live delivery written
    /// into `tx` since the last take; 0: none. Fits the struct's padding.
    pub tx_read_at: u32,
    pub session: u32,
    /// 1.5 × negotiated keepalive; 0 = no keepalive.
    pub keepalive_timeout_ms: u32,
    /// Client's Maximum Packet Size (MQTT 5), `u32::MAX` when not given.
    pub client_max_packet: u32,
    /// Our window towards the client: its Receive Maximum (MQTT 5) within
    /// `max_inflight` (a bridge's session: within 65535), set at CONNECT.
    pub client_receive_max: u16,
    /// Client's Topic Alias Maximum (MQTT 5): 0 = no server → client aliases.
    pub client_alias_max: u16,
    pub version: ProtocolVersion,
    pub state: ConnState,
    /// An `Action::Flush` was emitted and `take_tx` not yet called.
    pub flush_queued: bool,
    /// The keepalive check waits for this connection's `ConnectTimeout` entry, which
    /// fires first: one wheel entry per connection in its first `connect_timeout_ms`
    /// instead of two (`Shard::arm_keepalive`).
    pub keepalive_deferred: bool,
    /// What this client may publish and read, compiled at CONNECT (`AllowAll`
    /// without an ACL file: a check is then one branch).
    pub acl: Acl,
}

impl Conn {
    pub fn new(peer: SocketAddr, accepted_at: Instant, seen_ms: u32, generation: u32) -> Conn {
        let pending = Pending {
            peer,
            accepted_at,
            refusal: None,
            adopted: false,
            connect_at: None,
            verifying: None,
            verify_job: None,
            cert_username: None,
            listener_anonymous: None,
        };
        Conn {
            rx: BytesMut::new(),
            tx: TxBuf::default(),
            last_seen_ms: seen_ms,
            rare: Some(Box::new(Rare {
                pending: Some(pending),
                aliases: Aliases::default(),
            })),
            rx_counted: 0,
            generation,
            tx_read_at: 0,
            session: NONE,
            keepalive_timeout_ms: 0,
            client_max_packet: u32::MAX,
            client_receive_max: u16::MAX,
            client_alias_max: 0,
            version: ProtocolVersion::V311,
            state: ConnState::AwaitConnect,
            flush_queued: false,
            keepalive_deferred: false,
            acl: Acl::AllowAll,
        }
    }

    /// Whether input is still processed.
    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            ConnState::AwaitConnect | ConnState::Connected | ConnState::Verifying
        )
    }

    pub fn pending(&self) -> Option<&Pending> {
        self.rare.as_ref()?.pending.as_ref()
    }

    pub fn pending_mut(&mut self) -> Option<&mut Pending> {
        self.rare.as_mut()?.pending.as_mut()
    }

    /// Ends the accept-time state (at CONNECT or hand-off), freeing the box unless
    /// topic aliases live in it.
    pub fn take_pending(&mut self) -> Option<Pending> {
        let rare = self.rare.as_mut()?;
        let pending = rare.pending.take();
        if rare.aliases.inbound.is_empty() && rare.aliases.outbound.is_empty() {
            self.rare = None;
        }
        pending
    }

    /// The topic aliases set so far, if any.
    pub fn aliases_if_any(&self) -> Option<&Aliases> {
        self.rare.as_ref().map(|r| &r.aliases)
    }

    pub fn aliases(&mut self) -> &mut Aliases {
        &mut self.rare.get_or_insert_with(Default::default).aliases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_struct_stays_small() {
        // Part of issue #21's ≤ 300 B per idle connection, which perf/rss.sh
        // measures. 144 until session 10; 128 since `last_seen` became a 4-byte ms
        // stamp (an `Instant` is 16) and the accept-time state and topic aliases
        // share one box (`Rare`).
        assert!(
            std::mem::size_of::<Conn>() <= 128,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
