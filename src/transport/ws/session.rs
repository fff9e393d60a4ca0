//! One connection's WebSocket state: the upgrade, then framing, then closed. Bytes
//! in through [`WsSession::on_recv`] (in place, in the caller's buffer), MQTT output
//! in through [`WsSession::write`], wire bytes out through [`WsSession::take_out`].

use std::sync::Arc;

use super::frame::{self, Deframer};
use super::{handshake, Answer, WsConfig, WsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the complete upgrade request.
    Upgrade,
    Open,
    /// A close frame or refusal was queued: nothing more is read or framed.
    Closed,
}

/// Boxed with the connection's transport; an idle open one allocates nothing beyond
/// this struct (`pending` and `out` are empty).
#[derive(Debug)]
pub struct WsSession {
    config: Arc<WsConfig>,
    phase: Phase,
    deframer: Deframer,
    /// An incomplete upgrade request, frame header or control frame, put back in
    /// front of the next read. Bounded: `MAX_REQUEST_BYTES`, then 139 bytes.
    pending: Vec<u8>,
    /// Wire bytes waiting to be sent: the 101 or refusal, pongs, frames, the close.
    out: Vec<u8>,
    /// Why the session ended (`None` while open or after a clean close).
    error: Option<WsError>,
}

impl WsSession {
    pub fn new(config: Arc<WsConfig>) -> WsSession {
        WsSession {
            config,
            phase: Phase::Upgrade,
            deframer: Deframer::default(),
            pending: Vec::new(),
            out: Vec::new(),
            error: None,
        }
    }

    /// Puts bytes held back by the last read at the end of `buf`; the caller then
    /// appends the new bytes and calls [`on_recv`](Self::on_recv) from the same `start`.
    pub fn restore_pending(&mut self, buf: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            buf.extend_from_slice(&self.pending);
            self.pending = Vec::new();
        }
    }

    /// Turns the received bytes `buf[start..]` into MQTT bytes in place (`buf` is
    /// truncated to them). After an error or the peer's close frame, [`ended`]
    /// (Self::ended) is true and [`take_out`](Self::take_out) holds the answer;
    /// the MQTT bytes before a close frame are still given.
    pub fn on_recv(&mut self, buf: &mut Vec<u8>, start: usize) {
        let result = self.recv(buf, start);
        if let Err(e) = result {
            buf.truncate(start);
            self.fail(e);
        }
    }

    fn recv(&mut self, buf: &mut Vec<u8>, mut start: usize) -> Result<(), WsError> {
        let mut payload_start = start;
        if self.phase == Phase::Upgrade {
            let Some(up) = handshake::parse(&buf[start..], &self.config)? else {
                self.pending = buf[start..].to_vec();
                buf.truncate(start);
                return Ok(());
            };
            self.out.extend_from_slice(&up.response);
            self.phase = Phase::Open;
            // Frames sent right behind the request (no wait for the 101) follow it.
            start += up.consumed;
        }
        if self.phase != Phase::Open {
            buf.truncate(payload_start);
            return Ok(());
        }
        let d = self.deframer.deframe(
            &mut buf[..],
            start,
            self.config.max_frame_bytes,
            &mut self.out,
        )?;
        if !d.tail.is_empty() {
            self.pending = buf[d.tail].to_vec();
        }
        // The payload was written from `start`; the request before it goes.
        if start != payload_start {
            buf.copy_within(start..d.payload_end, payload_start);
            payload_start += d.payload_end - start;
        } else {
            payload_start = d.payload_end;
        }
        buf.truncate(payload_start);
        if let Some(code) = d.close {
            frame::write_close(code, &mut self.out);
            self.phase = Phase::Closed;
        }
        Ok(())
    }

    /// Queues what tells the peer about `e`, and stops reading and framing.
    fn fail(&mut self, e: WsError) {
        match e.answer() {
            Answer::Http(status, reason) => {
                let detail = e.to_string();
                self.out = handshake::refusal(status, reason, &detail, &self.config);
            }
            Answer::Close(code) => frame::write_close(code, &mut self.out),
        }
        self.pending = Vec::new();
        self.phase = Phase::Closed;
        self.error = Some(e);
    }

    /// Frames the shard's output as one binary frame. Dropped after a close (RFC
    /// 6455 5.5.1: no data frames after a close frame) and before the upgrade (the
    /// shard has nothing to say before a CONNECT, which cannot come earlier).
    pub fn write(&mut self, mqtt: &[u8]) {
        if self.phase == Phase::Open && !mqtt.is_empty() {
            frame::write_binary(mqtt, &mut self.out);
        }
    }

    /// The broker ends the connection (after the shard's last output was framed):
    /// a close frame (1000) once upgraded, or before the upgrade finished an HTTP 503
    /// naming why it can be (the connect timeout, a limit, shutdown), so the peer
    /// sees a clear end either way.
    pub fn close(&mut self) {
        match self.phase {
            Phase::Open => frame::write_close(super::close_code::NORMAL, &mut self.out),
            Phase::Upgrade => {
                self.out = handshake::refusal(
                    503,
                    "Service Unavailable",
                    "closed by the broker before the WebSocket upgrade and MQTT CONNECT \
                     completed (connect_timeout_ms, a connection limit, or shutdown)",
                    &self.config,
                );
            }
            Phase::Closed => return,
        }
        self.pending = Vec::new();
        self.phase = Phase::Closed;
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Everything queued for the wire.
    pub fn take_out(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The session is over (close frame received or sent, or the upgrade refused):
    /// once [`take_out`](Self::take_out) is sent, the connection closes.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the upgrade is still awaited.
    pub fn upgrading(&self) -> bool {
        self.phase == Phase::Upgrade
    }

    /// Why it ended, when the peer broke the protocol.
    pub fn error(&self) -> Option<&WsError> {
        self.error.as_ref()
    }
}
