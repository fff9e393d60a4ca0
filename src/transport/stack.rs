//! A connection's stack of byte transforms, as the worker holds it: TLS, WebSocket,
//! or WebSocket over TLS. The worker sees one type with one receive path and one
//! send path; plaintext TCP holds none (`Option::None`, one test per receive).

use bytes::Bytes;

use super::ws::{WsError, WsSession};
use super::{TlsSession, TransportError};
use crate::tx::TxChain;

/// Boxed by the worker (one pointer per connection) and moved with the connection
/// when it is handed to another loop. The TLS state is boxed again so that a plain
/// WebSocket connection's box is the size of its small `WsSession`, not of a rustls
/// connection (`size_of` is checked in `ws/tests.rs`).
#[derive(Debug)]
pub enum Transport {
    Tls(Box<TlsSession>),
    Ws(WsSession),
    /// WebSocket frames inside TLS records (`wss://`).
    Wss(Box<TlsSession>, WsSession),
}

impl Transport {
    /// Feeds received bytes; appends what the shard's decoder should read to `plain`.
    /// A WebSocket that ended (the peer's close, a protocol error, a refused upgrade)
    /// returns `Ok` with [`ended`](Self::ended) true: the bytes before a close frame
    /// still count, and its answer waits in [`take_wire`](Self::take_wire).
    pub fn on_recv(&mut self, input: &[u8], plain: &mut Vec<u8>) -> Result<(), TransportError> {
        match self {
            Transport::Tls(t) => t.on_recv(input, plain),
            Transport::Ws(w) => {
                let start = plain.len();
                w.restore_pending(plain);
                plain.extend_from_slice(input);
                w.on_recv(plain, start);
                Ok(())
            }
            Transport::Wss(t, w) => {
                let start = plain.len();
                w.restore_pending(plain);
                t.on_recv(input, plain)?;
                w.on_recv(plain, start);
                Ok(())
            }
        }
    }

    /// Queues the shard's output (one flush: one WebSocket frame).
    pub fn encode(&mut self, data: &[u8]) {
        match self {
            Transport::Tls(t) => t.encrypt(data),
            Transport::Ws(w) => w.write(data),
            Transport::Wss(t, w) => {
                w.write(data);
                t.encrypt(&w.take_out());
            }
        }
    }

    /// Feeds one flush of the shard's output: TLS encrypts its segments in order
    /// without joining them, as one write (records span segments, so small headers
    /// between shared payloads do not each cost a record); a WebSocket frames the
    /// whole flush as one frame, so a flush of several segments is joined first (the
    /// frame copies it anyway).
    pub fn encode_chain(&mut self, chain: TxChain) {
        match self {
            Transport::Tls(t) => {
                let chunks: smallvec::SmallVec<[&[u8]; 8]> = chain.chunks().collect();
                match chunks.as_slice() {
                    [] => {}
                    [one] => t.encrypt(one),
                    many => t.encrypt_chunks(many),
                }
            }
            Transport::Ws(_) | Transport::Wss(..) => self.encode(&chain.into_bytes()),
        }
    }

    /// Everything queued for the wire, or `None`.
    pub fn take_wire(&mut self) -> Option<Bytes> {
        match self {
            Transport::Tls(t) => t.take_tls(),
            Transport::Ws(w) => w.wants_write().then(|| Bytes::from(w.take_out())),
            Transport::Wss(t, w) => {
                if w.wants_write() {
                    t.encrypt(&w.take_out());
                }
                t.take_tls()
            }
        }
    }

    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tls(t) => t.wants_write(),
            Transport::Ws(w) => w.wants_write(),
            Transport::Wss(t, w) => t.wants_write() || w.wants_write(),
        }
    }

    /// Whether a WebSocket is part of the stack.
    pub fn is_websocket(&self) -> bool {
        !matches!(self, Transport::Tls(_))
    }

    /// The broker closes the connection: a WebSocket queues its close frame (or, not
    /// yet upgraded, an HTTP 503). TLS sends nothing more than before.
    pub fn close_websocket(&mut self) {
        if let Transport::Ws(w) | Transport::Wss(_, w) = self {
            w.close();
        }
    }

    /// The WebSocket is over: send [`take_wire`](Self::take_wire), then close.
    pub fn ended(&self) -> bool {
        match self {
            Transport::Tls(_) => false,
            Transport::Ws(w) | Transport::Wss(_, w) => w.ended(),
        }
    }

    /// The protocol error that ended the WebSocket, if one did.
    pub fn ws_error(&self) -> Option<&WsError> {
        match self {
            Transport::Tls(_) => None,
            Transport::Ws(w) | Transport::Wss(_, w) => w.error(),
        }
    }

    fn tls(&self) -> Option<&TlsSession> {
        match self {
            Transport::Tls(t) | Transport::Wss(t, _) => Some(&**t),
            Transport::Ws(_) => None,
        }
    }

    /// Whether a TLS handshake is under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls().is_some_and(TlsSession::is_handshaking)
    }

    /// The username a verified client certificate gives.
    pub fn username(&self) -> Option<String> {
        self.tls().and_then(TlsSession::username)
    }
}
