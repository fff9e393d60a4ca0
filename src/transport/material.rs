//! TLS material: certificate chains, keys and client CAs read from PEM into a
//! `rustls::ServerConfig`, and the per-listener holder that SIGHUP swaps.
//!
//! Loading is pure over an injected file reader, so tests need no files and every
//! error names the file it came from. A reload that fails keeps the old config in
//! force ([`ListenerTls::reload`]); new handshakes take the config current at accept
//! ([`ListenerTls::current`]), established connections keep theirs.
//!
//! Session tickets (TLS 1.3 resumption, `tls_session_tickets`): one stateless
//! ticketer per listener, made when the listener is and kept by [`ListenerTls`]
//! across reloads, so a ticket issued before a SIGHUP still resumes after it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::identity::IdentitySource;

/// The files one TLS listener uses, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// Certificate chains (PEM, end entity first), one per name served; the first is
    /// the default when the client sends no SNI name or one no certificate covers.
    pub certs: Vec<PathBuf>,
    /// Private keys (PEM: PKCS#8, PKCS#1 or SEC1), same order as `certs`.
    pub keys: Vec<PathBuf>,
    /// CA certificates (PEM) client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate the client CA signed.
    pub require_certificate: bool,
    /// Which part of a client certificate becomes the username.
    pub identity: IdentitySource,
    /// Issue one stateless TLS 1.3 session ticket per full handshake, so a client
    /// that comes back resumes (no certificate signature, no chain sent).
    pub session_tickets: bool,
}

/// Why material could not be loaded; names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialError {
    pub file: PathBuf,
    pub reason: String,
}

impl fmt::Display for MaterialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

impl std::error::Error for MaterialError {}

fn err(file: &Path, reason: impl fmt::Display) -> MaterialError {
    MaterialError {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A loaded config, ready for handshakes.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    pub identity: IdentitySource,
}

/// The file an error about the listener as a whole names: its first certificate.
fn first_cert(files: &TlsFiles) -> &Path {
    files
        .certs
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("tls_cert"))
}

/// A fresh ticketer when `files` asks for tickets.
fn ticketer_for(files: &TlsFiles) -> Result<Option<Arc<dyn ProducesTickets>>, MaterialError> {
    if !files.session_tickets {
        return Ok(None);
    }
    super::ticketer()
        .map(Some)
        .map_err(|e| err(first_cert(files), format!("session ticket keys: {e}")))
}

impl TlsMaterial {
    /// Reads and checks every file of `files` through `read`; with
    /// `files.session_tickets`, tickets come from a ticketer of its own (a listener
    /// keeps one across reloads: [`ListenerTls::load`]).
    pub fn load(
        files: &TlsFiles,
        read: &dyn Fn(&Path) -> io::Result<Vec<u8>>,
    ) -> Result<TlsMaterial, MaterialError> {
        TlsMaterial::build(files, read, ticketer_for(files)?)
    }

    /// `ticketer`: `None`, no TLS 1.3 tickets.
    fn build(
        files: &TlsFiles,
        read: &dyn Fn(&Path) -> io::Result<Vec<u8>>,
        ticketer: Option<Arc<dyn ProducesTickets>>,
    ) -> Result<TlsMaterial, MaterialError> {
        let provider = super::provider();
        let first = first_cert(files);
        if files.certs.is_empty() {
            return Err(err(first, "a TLS listener needs tls_cert and tls_key"));
        }
        if files.certs.len() != files.keys.len() {
            return Err(err(
                first,
                format!(
                    "{} certificate file(s) but {} key file(s): give one key per certificate",
                    files.certs.len(),
                    files.keys.len()
                ),
            ));
        }
        let mut keys = Vec::with_capacity(files.certs.len());
        for (cert_path, key_path) in files.certs.iter().zip(&files.keys) {
            keys.push(Arc::new(certified_key(
                cert_path, key_path, read, &provider,
            )?));
        }
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| err(first, e))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let pem = read(ca).map_err(|e| err(ca, e))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| err(ca, format!("not a PEM certificate: {e}")))?;
                    roots.add(cert).map_err(|e| err(ca, e))?;
                }
                if roots.is_empty() {
                    return Err(err(ca, "no CERTIFICATE in the file"));
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if files.require_certificate {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| err(ca, e))?)
            }
            None if files.require_certificate => {
                return Err(err(
                    first,
                    "tls_require_certificate needs tls_client_ca (the CA client certificates are checked against)",
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver { keys }));
        // Offered by a client that speaks ALPN: MQTT's registered protocol id.
        config.alpn_protocols = vec![b"mqtt".to_vec()];
        // rustls's default is two TLS 1.3 tickets per full handshake into an
        // in-memory cache of 256 sessions, which a fleet's reconnects would rarely
        // find again. Instead: none, or one stateless ticket (sealed with the
        // listener's rotating key, nothing kept per session), which any later
        // connection can resume from; one is enough for a device that reconnects
        // with a single session at a time, and each costs the full handshake a key
        // derivation and an encrypted record. TLS 1.2 clients still resume by
        // session id (or by a TLS 1.2 ticket from the same ticketer).
        match ticketer {
            Some(t) => {
                config.ticketer = t;
                config.send_tls13_tickets = 1;
            }
            None => config.send_tls13_tickets = 0,
        }
        Ok(TlsMaterial {
            config: Arc::new(config),
            identity: files.identity,
        })
    }
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    read: &dyn Fn(&Path) -> io::Result<Vec<u8>>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, MaterialError> {
    let pem = read(cert_path).map_err(|e| err(cert_path, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(cert_path, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(err(cert_path, "no CERTIFICATE in the file"));
    }
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| err(cert_path, format!("not an X.509 certificate: {e}")))?;
    let pem = read(key_path).map_err(|e| err(key_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| err(key_path, format!("no private key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        err(
            key_path,
            format!("key does not fit {}: {e}", cert_path.display()),
        )
    })
}

/// Picks the certificate for the client's SNI name: the first whose names cover it,
/// else the first one. Parsing is lazy in webpki: a check costs a name comparison or a
/// few, against the cost of the handshake's signature.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.keys.len() > 1 {
            if let Some(name) = hello
                .server_name()
                .and_then(|n| ServerName::try_from(n).ok())
            {
                let found = self.keys.iter().find(|k| {
                    k.end_entity_cert()
                        .ok()
                        .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
                        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                });
                if let Some(k) = found {
                    return Some(k.clone());
                }
            }
        }
        self.keys.first().cloned()
    }
}

/// One TLS listener's files and the config in force. Shared by every loop (an `Arc`);
/// the lock is taken once per accepted TLS connection and once per reload, never per
/// message.
#[derive(Debug)]
pub struct ListenerTls {
    pub files: TlsFiles,
    current: Mutex<TlsMaterial>,
    /// The ticket keys every config of this listener seals with, reloads included.
    ticketer: Option<Arc<dyn ProducesTickets>>,
}

impl ListenerTls {
    /// Loads a listener's files, with its ticketer when `files` asks for tickets.
    pub fn load(
        files: TlsFiles,
        read: &dyn Fn(&Path) -> io::Result<Vec<u8>>,
    ) -> Result<ListenerTls, MaterialError> {
        let ticketer = ticketer_for(&files)?;
        let material = TlsMaterial::build(&files, read, ticketer.clone())?;
        Ok(ListenerTls {
            files,
            current: Mutex::new(material),
            ticketer,
        })
    }

    /// The config new handshakes use.
    pub fn current(&self) -> TlsMaterial {
        match self.current.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on success new handshakes use them, on failure the old
    /// material stays in force and the error names the file.
    pub fn reload(&self, read: &dyn Fn(&Path) -> io::Result<Vec<u8>>) -> Result<(), MaterialError> {
        let fresh = TlsMaterial::build(&self.files, read, self.ticketer.clone())?;
        match self.current.lock() {
            Ok(mut m) => *m = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}
