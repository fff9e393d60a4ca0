//! The `tls` fuzz target's checks (`ringmq::testkit::fuzz_tls`), here so `cargo test`
//! replays its seeds too: arbitrary bytes into the server side of the TLS transform
//! never panic and never yield plaintext (no handshake can finish without a real
//! client's keys), and after a real handshake the client's records come out as
//! exactly its plaintext, with garbage after them refused without a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::identity::IdentitySource;
use super::{TlsFiles, TlsMaterial, TlsSession};

struct Fixture {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// One self-signed certificate for "localhost" per process (made once: key
/// generation would dominate every run).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let files = TlsFiles {
            certs: vec![PathBuf::from("cert.pem")],
            keys: vec![PathBuf::from("key.pem")],
            client_ca: None,
            require_certificate: false,
            identity: IdentitySource::None,
            session_tickets: false,
        };
        let read = |p: &Path| -> std::io::Result<Vec<u8>> {
            Ok(match p.to_str() {
                Some("cert.pem") => cert_pem.clone().into_bytes(),
                _ => key_pem.clone().into_bytes(),
            })
        };
        let material = TlsMaterial::load(&files, &read).expect("material");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .expect("root");
        let client = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Fixture {
            server: material.config,
            client: Arc::new(client),
        }
    })
}

/// Moves the client's pending records into the server; returns the plaintext.
fn client_to_server(client: &mut ClientConnection, server: &mut TlsSession) -> Vec<u8> {
    let mut wire = Vec::new();
    while client.wants_write() {
        if client.write_tls(&mut wire).unwrap_or(0) == 0 {
            break;
        }
    }
    let mut plain = Vec::new();
    server
        .on_recv(&wire, &mut plain)
        .expect("a real client's records are accepted");
    plain
}

/// The fuzz entry point. The first byte picks the mode: odd, a real handshake and
/// then the rest as the client's application data, then the rest again as raw bytes;
/// even, the rest as raw bytes in chunks of `1 + first / 2`.
pub fn fuzz_tls(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut server = TlsSession::new(f.server.clone(), IdentitySource::None).expect("session");
    let mut plain = Vec::new();
    if mode & 1 == 1 {
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(f.client.clone(), name).expect("client");
        // Bounded: a TLS 1.3 handshake takes two flights each way.
        for _ in 0..8 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            assert!(client_to_server(&mut client, &mut server).is_empty());
            if let Some(back) = server.take_tls() {
                client.read_tls(&mut &back[..]).expect("client reads");
                client
                    .process_new_packets()
                    .expect("server flight accepted");
            }
        }
        assert!(
            !client.is_handshaking() && !server.is_handshaking(),
            "handshake did not finish"
        );
        client.writer().write_all(rest).expect("client write");
        assert_eq!(client_to_server(&mut client, &mut server), rest);
        // The same bytes again, raw: not records of this session.
        let _ = server.on_recv(rest, &mut plain);
    } else {
        let chunk = 1 + usize::from(mode / 2);
        for c in rest.chunks(chunk) {
            if server.on_recv(c, &mut plain).is_err() {
                break;
            }
        }
        assert!(plain.is_empty(), "plaintext without a handshake");
    }
    // Whatever the state, output can be taken and the shard's output queued.
    let _ = server.take_tls();
    server.encrypt(&[0x20, 0x02, 0x00, 0x00]);
    server.close();
    let _ = server.take_tls();
}

/// The committed seeds of the `tls` target (tests/fuzz/seeds/tls), for replay.
pub fn tls_seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/seeds/tls");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        out.push(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
    }
    out
}
