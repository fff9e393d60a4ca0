//! One connection's TLS state: a rustls `ServerConnection` driven from byte slices.
//! `io` hands received ciphertext to [`TlsSession::on_recv`], which returns the
//! plaintext for the shard's decoder; the shard's output goes through
//! [`TlsSession::encrypt`], and [`TlsSession::take_tls`] gives `io` the bytes to send
//! (handshake flights, records, alerts). No sockets, no clocks: the connect timeout
//! of the shard bounds a handshake, because no CONNECT can arrive before it ends.
//!
//! Memory: rustls's receive buffer goes back to one 4 KiB read window whenever it
//! holds no partial record, and its send queue frees each chunk once written, so an
//! idle connection holds no 16 KiB record buffers (`tests/tls_memory.rs` measures it).

use std::sync::Arc;

use bytes::Bytes;
use rustls::server::ServerConnection;
use rustls::ServerConfig;

use super::identity::{self, IdentitySource};
use super::TransportError;

/// Boxed by the worker (one pointer per connection, `None` for plaintext) and moved
/// with the connection when it is handed to another loop.
#[derive(Debug)]
pub struct TlsSession {
    conn: ServerConnection,
    identity: IdentitySource,
}

impl TlsSession {
    /// `identity`: which part of a verified client certificate names the user.
    pub fn new(
        config: Arc<ServerConfig>,
        identity: IdentitySource,
    ) -> Result<TlsSession, TransportError> {
        let mut conn = ServerConnection::new(config).map_err(TransportError::Tls)?;
        // The shard bounds what it hands us (`max_outbound_bytes` plus the control
        // allowance) and a send is always in flight for it, so rustls need not refuse.
        conn.set_buffer_limit(None);
        Ok(TlsSession { conn, identity })
    }

    /// Feeds received ciphertext; appends the plaintext it yields to `plain`. After an
    /// error, [`take_tls`](Self::take_tls) may hold the alert that tells the peer.
    pub fn on_recv(
        &mut self,
        ciphertext: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        super::records::feed(&mut self.conn, ciphertext, plain)
    }

    /// Queues plaintext from the shard to be sent as TLS records. During the handshake
    /// rustls holds it until the keys are ready (the shard only answers a CONNECT,
    /// which cannot come before).
    pub fn encrypt(&mut self, plaintext: &[u8]) {
        super::records::queue(&mut self.conn, plaintext);
    }

    /// Queues one flush made of several slices, encrypted as if joined (as few
    /// records as its length needs), without joining them.
    pub fn encrypt_chunks(&mut self, chunks: &[&[u8]]) {
        super::records::queue_chunks(&mut self.conn, chunks);
    }

    /// Whether [`take_tls`](Self::take_tls) has bytes to give.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Everything queued for the wire (handshake flights, records, alerts), or `None`.
    pub fn take_tls(&mut self) -> Option<Bytes> {
        super::records::take(&mut self.conn)
    }

    /// A session with a listener's material in force (new handshakes take the
    /// current one; a reload does not touch established sessions).
    pub fn from_material(m: &super::TlsMaterial) -> Result<TlsSession, TransportError> {
        TlsSession::new(m.config.clone(), m.identity)
    }

    /// Queues a close_notify alert (a clean close the peer can tell from truncation).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The negotiated ALPN protocol (`b"mqtt"` when the client offered it).
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The SNI name the client sent.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The username the verified client certificate gives (`None`: no certificate,
    /// none asked for, or the certificate lacks the field).
    pub fn username(&self) -> Option<String> {
        let cert = self.conn.peer_certificates()?.first()?;
        identity::username(cert, self.identity)
    }

    /// The client's certificate (end entity first), once verified.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }
}
