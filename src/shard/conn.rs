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
    /// Last time anything arrived: keepalive is checked lazily against it.
    pub last_seen: Instant,
    pub pending: Option<Box<Pending>>,
    pub aliases: Option<Box<Aliases>>,
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
    /// What this client may publish and read, compiled at CONNECT (`AllowAll`
    /// without an ACL file: a check is then one branch).
    pub acl: Acl,
}

impl Conn {
    pub fn new(peer: SocketAddr, accepted_at: Instant, now: Instant, generation: u32) -> Conn {
        Conn {
            rx: BytesMut::new(),
            tx: TxBuf::default(),
            last_seen: now,
            pending: Some(Box::new(Pending {
                peer,
                accepted_at,
                refusal: None,
                adopted: false,
                connect_at: None,
                verifying: None,
                verify_job: None,
                cert_username: None,
                listener_anonymous: None,
            })),
            aliases: None,
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

    pub fn aliases(&mut self) -> &mut Aliases {
        self.aliases.get_or_insert_with(Default::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_struct_stays_small() {
        // Part of the ≤ 600 B per idle connection budget (docs/ARCHITECTURE.md),
        // which perf/rss.sh measures. 136 since wave 2: the receive-buffer
        // accounting of the memory mark (`rx_counted`, 4 B) and the ACL compiled at
        // CONNECT (`acl`, 8 B, read on every publish and delivery) did not fit the
        // 5 B of padding left under 128. 144 with outbound segments (issue #24):
        // `tx` holds one more pointer, to the segments of shared payloads, so a
        // 300 KB payload to 1,000 subscribers is one copy instead of 1,000.
        assert!(
            std::mem::size_of::<Conn>() <= 144,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
