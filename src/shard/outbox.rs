//! What the IO side takes from the shard: the queued [`Action`]s and each
//! connection's encoded bytes (`take_tx`), and how control replies are written
//! into a connection's buffer under its outbound bound plus the control allowance.

use bytes::{Bytes, BytesMut};

use super::conn::ConnState;
use super::{Action, ConnId, Shard};
use crate::protocol::{Packet, ProtocolVersion};
use crate::session::{SessionError, NONE};
use crate::tx::{TxBuf, TxChain};

/// Control packets (acks, SUBACK, PINGRESP) may take a connection's unread output
/// this far past `max_outbound_bytes` (which PUBLISH copies stop at), so a client
/// that reads a little late still gets its acks; beyond it the client is closed.
pub const CONTROL_ALLOWANCE_BYTES: usize = 64 * 1024;

/// The allowance for a given `max_outbound_bytes`: never more than the bound itself,
/// so small bounds stay small.
pub fn control_allowance(max_outbound_bytes: usize) -> usize {
    CONTROL_ALLOWANCE_BYTES.min(max_outbound_bytes)
}

impl Shard {
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes to write on `conn` now (everything encoded for it since the last
    /// call), as segments: headers and small packets coalesced, large payloads
    /// shared with every other subscriber of their fan-out.
    pub fn take_tx_chain(&mut self, conn: ConnId) -> Option<TxChain> {
        self.take_out(conn, TxBuf::take)
    }

    /// [`take_tx_chain`](Self::take_tx_chain) as one `Bytes` (a copy only when there
    /// are shared segments): for tests and in-memory drivers, which compare bytes;
    /// the worker sends the chain itself.
    pub fn take_tx(&mut self, conn: ConnId) -> Option<Bytes> {
        self.take_out(conn, TxBuf::take_bytes)
    }

    #[inline]
    fn take_out<T>(&mut self, conn: ConnId, take: impl FnOnce(&mut TxBuf) -> T) -> Option<T> {
        let c = self.conns.get_mut(conn)?;
        c.set_flush_queued(false);
        if c.tx.is_empty() {
            return None;
        }
        // A recorded QoS 2 PUBLISH waits for its record (`durable.rs`); the gate
        // flushes again when it opens.
        let c = if self.store.is_some() {
            let generation = c.generation;
            if self.tx_gated(conn, generation) {
                return None;
            }
            self.conns.get_mut(conn)?
        } else {
            c
        };
        let (len, own) = c.tx.lens();
        let out = take(&mut c.tx);
        self.taken_stamp = std::mem::take(&mut c.tx_read_at);
        self.stats.bytes_tx -= own;
        self.stats.bytes_out += len as u64;
        if c.state == ConnState::Connected && c.session != NONE {
            // Room was freed: messages waiting for it can be encoded now.
            let session = c.session;
            // Always set: `new_conn` gave the shard a time before any connection.
            if let Some(now) = self.last_now {
                self.pump(session, now);
            }
        }
        Some(out)
    }

    /// Appends a control packet to `conn`'s buffer. Control packets are never
    /// dropped, but they count against `max_outbound_bytes` (plus
    /// [`control_allowance`]): a client that floods PINGREQ or SUBSCRIBE
    /// without reading the replies is closed instead of growing the buffer.
    /// DISCONNECT is exempt: it ends the connection anyway.
    pub(super) fn write_control(&mut self, conn: ConnId, packet: &Packet) {
        self.write_control_with(
            conn,
            !matches!(packet, Packet::Disconnect(_)),
            |v| crate::protocol::encoded_len(packet, v),
            |tx, v| crate::protocol::encode_packet(packet, v, tx),
        );
    }

    /// A PUBACK with reason Success and no properties: 4 bytes in every version
    /// (MQTT 5 3.4.2.1 omits the code and properties), written without building and
    /// encoding a `Packet` (what `encode_packet` writes for `PubResp::new(packet_id)`).
    pub(super) fn write_puback(&mut self, conn: ConnId, packet_id: u16) {
        let [hi, lo] = packet_id.to_be_bytes();
        let frame = [0x40, 0x02, hi, lo];
        self.write_control_with(
            conn,
            true,
            |_| frame.len(),
            |tx, _| tx.extend_from_slice(&frame),
        );
    }

    /// `write_control` for any encoder: `bounded` packets count against the
    /// connection's outbound limit (plus the control allowance); a DISCONNECT does not.
    pub(super) fn write_control_with(
        &mut self,
        conn: ConnId,
        bounded: bool,
        len: impl FnOnce(ProtocolVersion) -> usize,
        write: impl FnOnce(&mut BytesMut, ProtocolVersion),
    ) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !matches!(
            c.state,
            ConnState::Connected | ConnState::AwaitConnect | ConnState::Closing
        ) {
            return;
        }
        if bounded {
            let len = len(c.version);
            let max = self.config.max_outbound_bytes;
            if c.tx.len() + len > max + control_allowance(max) {
                if !self.slow.iter().any(|(x, _)| *x == conn) {
                    self.slow.push((conn, SessionError::NotReading));
                }
                return;
            }
        }
        let before = c.tx.own_len();
        write(c.tx.tail_mut(), c.version);
        self.stats.bytes_tx += c.tx.own_len() - before;
        if !c.flush_queued() {
            c.set_flush_queued(true);
            self.actions.push_back(Action::Flush(conn));
        }
    }
}
