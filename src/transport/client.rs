//! The client side of TLS, for connections ringmq opens itself (a bridge's link to a
//! remote broker): a rustls `ClientConnection` driven from byte slices, as
//! [`super::TlsSession`] drives a server one, and the `ClientConfig` that verifies the
//! remote against a CA file. No sockets, no clocks.

use std::sync::Arc;

use bytes::Bytes;
use rustls::client::ClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::TransportError;

/// A client certificate chain and its private key (PEM), for a remote that asks.
pub struct ClientCertPem<'a> {
    pub chain: &'a [u8],
    pub key: &'a [u8],
}

/// What is wrong with a client certificate: in the chain's file or in the key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertError {
    Chain(String),
    Key(String),
}

/// A `ClientConfig` trusting exactly the CAs in `ca_pem` (PEM), TLS 1.2 and 1.3,
/// ALPN `mqtt`. `Err` says what is wrong with the file's content.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, String> {
    client_config_with(ca_pem, None).map_err(|e| match e {
        ClientCertError::Chain(e) | ClientCertError::Key(e) => e,
    })
}

/// [`client_config`], presenting `cert` when the remote asks for a client
/// certificate (a bridge to a Mosquitto with `require_certificate true`). A bad CA
/// file also comes back as `Chain`: callers that name files check it first with
/// [`client_config`].
pub fn client_config_with(
    ca_pem: &[u8],
    cert: Option<ClientCertPem<'_>>,
) -> Result<Arc<ClientConfig>, ClientCertError> {
    let builder = ca_builder(ca_pem).map_err(ClientCertError::Chain)?;
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientCertError::Chain(format!("not a PEM certificate chain: {e}")))?;
            if chain.is_empty() {
                return Err(ClientCertError::Chain("no CERTIFICATE in the file".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(c.key)
                .map_err(|e| ClientCertError::Key(format!("no private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientCertError::Key(format!("key does not fit the certificate: {e}"))
            })?
        }
    };
    cfg.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(cfg))
}

fn ca_builder(
    ca_pem: &[u8],
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
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
    Ok(ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots))
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
