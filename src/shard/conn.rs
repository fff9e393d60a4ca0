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

/// Bits of `Conn::flags`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnFlags(u8);

impl ConnFlags {
    const FLUSH_QUEUED: u8 = 1 << 0;
    const KEEPALIVE_DEFERRED: u8 = 1 << 1;

    #[inline]
    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    #[inline]
    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// Server → client aliases per connection are capped here (on top of the client's
/// Topic Alias Maximum) so the first-seen lookup stays a short linear scan.
pub(crate) const MAX_OUTBOUND_ALIASES: usize = 64;
// `Conn::client_alias_max` holds the client's maximum capped to this in one byte.
const _: () = assert!(MAX_OUTBOUND_ALIASES <= u8::MAX as usize);

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
    /// Client's Maximum Packet Size (MQTT 5), `u32::MAX` when not given.
    pub client_max_packet: u32,
    /// Our window towards the client: its Receive Maximum (MQTT 5) within
    /// `max_inflight` (a bridge's session: within 65535), set at CONNECT.
    pub client_receive_max: u16,
    /// The negotiated keepalive in seconds (0: none); the connection is closed
    /// after 1.5 × that (`keepalive_timeout_ms`). 2 bytes where the timeout in ms
    /// took 4: with `client_alias_max` and `flags` below, 120 bytes instead of 128.
    pub keepalive_s: u16,
    /// Client's Topic Alias Maximum (MQTT 5) as far as it is used: at most
    /// `MAX_OUTBOUND_ALIASES` (0 = no server → client aliases), so one byte.
    pub client_alias_max: u8,
    pub version: ProtocolVersion,
    pub state: ConnState,
    /// `FLUSH_QUEUED`, `KEEPALIVE_DEFERRED`: one byte for two bools.
    pub flags: ConnFlags,
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
            client_max_packet: u32::MAX,
            client_receive_max: u16::MAX,
            keepalive_s: 0,
            client_alias_max: 0,
            version: ProtocolVersion::V311,
            state: ConnState::AwaitConnect,
            flags: ConnFlags::default(),
            acl: Acl::AllowAll,
        }
    }

    /// 1.5 × the negotiated keepalive; 0 = no keepalive.
    #[inline]
    pub fn keepalive_timeout_ms(&self) -> u32 {
        u32::from(self.keepalive_s) * 1500
    }

    /// An `Action::Flush` was emitted and `take_tx` not yet called.
    #[inline]
    pub fn flush_queued(&self) -> bool {
        self.flags.has(ConnFlags::FLUSH_QUEUED)
    }

    #[inline]
    pub fn set_flush_queued(&mut self, on: bool) {
        self.flags.set(ConnFlags::FLUSH_QUEUED, on);
    }

    /// The keepalive check waits for this connection's `ConnectTimeout` entry, which
    /// fires first: one wheel entry per connection in its first `connect_timeout_ms`
    /// instead of two (`Shard::arm_keepalive`).
    #[inline]
    pub fn keepalive_deferred(&self) -> bool {
        self.flags.has(ConnFlags::KEEPALIVE_DEFERRED)
    }

    #[inline]
    pub fn set_keepalive_deferred(&mut self, on: bool) {
        self.flags.set(ConnFlags::KEEPALIVE_DEFERRED, on);
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
    fn flags_and_keepalive_read_back() {
        let peer = "127.0.0.1:1".parse().expect("addr");
        let mut c = Conn::new(peer, Instant::now(), 0, 1);
        assert!(!c.flush_queued() && !c.keepalive_deferred());
        c.set_flush_queued(true);
        assert!(c.flush_queued() && !c.keepalive_deferred());
        c.set_keepalive_deferred(true);
        c.set_flush_queued(false);
        assert!(!c.flush_queued() && c.keepalive_deferred());
        assert_eq!(c.keepalive_timeout_ms(), 0);
        c.keepalive_s = u16::MAX;
        assert_eq!(
            c.keepalive_timeout_ms(),
            98_302_500,
            "1.5 × 65,535 s fits a u32"
        );
    }

    #[test]
    fn connection_struct_stays_small() {
        // Part of issue #21's ≤ 300 B per idle connection, which perf/rss.sh
        // measures. 144 until session 10; 128 since `last_seen` became a 4-byte ms
        // stamp (an `Instant` is 16) and the accept-time state and topic aliases
        // share one box (`Rare`); 120 since session 11 (keepalive in s, the alias
        // maximum in a byte, two bools in `flags`).
        assert!(
            std::mem::size_of::<Conn>() <= 120,
            "{}",
            std::mem::size_of::<Conn>()
        );
        // The connection slab's entry (`slab::Entry`, mirrored: it is private)
        // keeps its tag in a niche of `Conn`.
        #[allow(dead_code)]
        enum SlabEntry<T> {
            Vacant(usize),
            Occupied(T),
        }
        assert_eq!(
            std::mem::size_of::<SlabEntry<Conn>>(),
            std::mem::size_of::<Conn>()
        );
    }
}
