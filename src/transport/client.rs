//! The client side of TLS, for connections ringmq opens itself (a bridge's link to a
//! remote broker): a rustls `ClientConnection` driven from byte slices, as
//! [`super::TlsSession`] drives a server one, and the `ClientConfig` that verifies the
//! remote against a CA file. No sockets, no clocks.

use std::sync::Arc;

use bytes::Bytes;
use rustls::client::ClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::TransportError;

/// A `ClientConfig` trusting exactly the CAs in `ca_pem` (PEM), TLS 1.2 and 1.3,
/// ALPN `mqtt`. `Err` says what is wrong with the file's content.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    let mut cfg = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(cfg))
}

/// One outbound connection's TLS state.
#[derive(Debug)]
pub struct TlsClient {
    conn: ClientConnection,
}

impl TlsClient {
    /// Starts a handshake with `server_name` (checked against the remote's
    /// certificate); the ClientHello is in [`take_tls`](Self::take_tls).
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<TlsClient, TransportError> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            TransportError::Tls(rustls::Error::General(format!(
                "invalid server name {server_name:?}"
            )))
        })?;
        let mut conn = ClientConnection::new(config, name).map_err(TransportError::Tls)?;
        // What is written is bounded by the bridge (one send in flight, its encode
        // bound): rustls need not refuse.
        conn.set_buffer_limit(None);
        Ok(TlsClient { conn })
    }

    /// Feeds received ciphertext; appends the plaintext it yields to `plain`.
    pub fn on_recv(
        &mut self,
        ciphertext: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        super::records::feed(&mut self.conn, ciphertext, plain)
    }

    /// Queues plaintext; before the handshake ends rustls holds it until the keys are
    /// ready.
    pub fn encrypt(&mut self, plaintext: &[u8]) {
        super::records::queue(&mut self.conn, plaintext);
    }

    /// Everything queued for the wire, or `None`.
    pub fn take_tls(&mut self) -> Option<Bytes> {
        super::records::take(&mut self.conn)
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}
