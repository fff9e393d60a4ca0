//! The TLS transform against a real rustls client, in memory: handshakes (1.2, 1.3,
//! ALPN, SNI), client certificates and the identity they give, bad input, reloads.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::identity::{self, IdentitySource};
use super::{ListenerTls, TlsFiles, TlsMaterial, TlsSession, TransportError};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf signed by `ca` for `names` (DNS SANs) with subject CN `cn`: (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, names: &[&str]) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Files in memory, read through the same injected reader the broker uses.
#[derive(Default)]
struct Files(HashMap<PathBuf, Vec<u8>>);

impl Files {
    fn put(&mut self, name: &str, text: &str) -> PathBuf {
        let p = PathBuf::from(name);
        self.0.insert(p.clone(), text.as_bytes().to_vec());
        p
    }

    fn reader(&self) -> impl Fn(&Path) -> io::Result<Vec<u8>> + '_ {
        |p| {
            self.0
                .get(p)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }
}

fn client_config(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: bool,
    auth: Option<(String, String)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let b = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match auth {
        Some((cert, key)) => {
            let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    if alpn {
        cfg.alpn_protocols = vec![b"mqtt".to_vec()];
    }
    Arc::new(cfg)
}

use rustls::pki_types::pem::PemObject;

/// Runs the handshake to its end or to the first error, both ways in memory.
/// Returns the server's error, if any.
fn pump(
    client: &mut ClientConnection,
    server: &mut TlsSession,
    plain: &mut Vec<u8>,
) -> Result<(), TransportError> {
    for _ in 0..20 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            server.on_recv(&wire, plain)?;
        }
        if let Some(back) = server.take_tls() {
            let mut rd = &back[..];
            while !rd.is_empty() {
                if client.read_tls(&mut rd).unwrap() == 0 {
                    break;
                }
                if client.process_new_packets().is_err() {
                    return Ok(());
                }
            }
        }
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            return Ok(());
        }
    }
    Ok(())
}

fn server_files(files: &mut Files, ca: &Ca, names: &[(&str, &[&str])]) -> TlsFiles {
    let mut tf = TlsFiles::default();
    for (i, (cn, sans)) in names.iter().enumerate() {
        let (c, k) = leaf(ca, cn, sans);
        tf.certs.push(files.put(&format!("cert{i}.pem"), &c));
        tf.keys.push(files.put(&format!("key{i}.pem"), &k));
    }
    tf
}

#[test]
fn tls13_and_tls12_carry_bytes_both_ways_with_alpn_mqtt() {
    let ca = ca("test ca");
    let mut files = Files::default();
    let tf = server_files(&mut files, &ca, &[("broker", &["localhost"])]);
    let material = TlsMaterial::load(&tf, &files.reader()).unwrap();
    for (version, alpn) in [
        (&rustls::version::TLS13, true),
        (&rustls::version::TLS12, false),
    ] {
        let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
        let mut client = ClientConnection::new(
            client_config(&ca, &[version], alpn, None),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut plain = Vec::new();
        client.writer().write_all(b"\x10\x0cconnect").unwrap();
        pump(&mut client, &mut server, &mut plain).unwrap();
        assert!(!server.is_handshaking());
        assert_eq!(server.protocol_version(), Some(version.version));
        assert_eq!(server.alpn(), if alpn { Some(&b"mqtt"[..]) } else { None });
        assert_eq!(plain, b"\x10\x0cconnect");
        // Server to client.
        server.encrypt(b"\x20\x02\x00\x00");
        let back = server.take_tls().expect("a record");
        let mut rd = &back[..];
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets().unwrap();
        let mut got = [0u8; 4];
        client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x20\x02\x00\x00");
    }
}

/// Counts the TLS 1.3 session tickets a client is given.
#[derive(Debug, Default)]
struct TicketCount(std::sync::atomic::AtomicUsize);

impl rustls::client::ClientSessionStore for TicketCount {
    fn set_kx_hint(&self, _: ServerName<'static>, _: rustls::NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// A full TLS 1.3 handshake ends without session tickets (each would cost the
/// handshake a key derivation and a record; see `material.rs`), and the connection
/// carries data as usual.
#[test]
fn tls13_handshakes_send_no_session_tickets() {
    let ca = ca("test ca");
    let mut files = Files::default();
    let tf = server_files(&mut files, &ca, &[("broker", &["localhost"])]);
    let material = TlsMaterial::load(&tf, &files.reader()).unwrap();
    let tickets = Arc::new(TicketCount::default());
    let mut cfg = (*client_config(&ca, &[&rustls::version::TLS13], true, None)).clone();
    cfg.resumption = rustls::client::Resumption::store(tickets.clone());
    let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
    let mut client =
        ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut plain = Vec::new();
    client.writer().write_all(b"\x10\x0cconnect").unwrap();
    pump(&mut client, &mut server, &mut plain).unwrap();
    assert!(!server.is_handshaking() && !client.is_handshaking());
    assert_eq!(plain, b"\x10\x0cconnect");
    server.encrypt(b"\x20\x02\x00\x00");
    let back = server.take_tls().expect("a record");
    let mut rd = &back[..];
    client.read_tls(&mut rd).unwrap();
    client.process_new_packets().unwrap();
    let mut got = [0u8; 4];
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x20\x02\x00\x00");
    assert_eq!(tickets.0.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// One handshake of `cfg` against `holder`'s current config, with a CONNECT and its
/// CONNACK through it (the client reads the ticket, which comes before the CONNACK):
/// how the client's handshake went.
fn handshake_kind(holder: &ListenerTls, cfg: &Arc<ClientConfig>) -> rustls::HandshakeKind {
    let material = holder.current();
    let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
    let mut client =
        ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut plain = Vec::new();
    client.writer().write_all(b"\x10\x0cconnect").unwrap();
    pump(&mut client, &mut server, &mut plain).unwrap();
    assert_eq!(plain, b"\x10\x0cconnect");
    server.encrypt(b"\x20\x02\x00\x00");
    let back = server.take_tls().expect("a record");
    let mut rd = &back[..];
    while !rd.is_empty() && client.read_tls(&mut rd).unwrap() > 0 {
        client.process_new_packets().unwrap();
    }
    let mut got = [0u8; 4];
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x20\x02\x00\x00");
    client.handshake_kind().expect("handshake done")
}

/// `session_tickets`: one ticket per full handshake (not rustls's two), a client that
/// comes back resumes, and tickets issued before a reload still resume after it (the
/// listener keeps its ticket keys); a reload with new certificates too.
#[test]
fn session_tickets_one_per_handshake_and_resumption_survives_reloads() {
    use rustls::HandshakeKind::{Full, Resumed};
    let ca = ca("test ca");
    let mut files = Files::default();
    let mut tf = server_files(&mut files, &ca, &[("broker", &["localhost"])]);
    tf.session_tickets = true;
    let holder = ListenerTls::load(tf.clone(), &files.reader()).unwrap();

    let counted = Arc::new(TicketCount::default());
    let mut cfg = (*client_config(&ca, &[&rustls::version::TLS13], true, None)).clone();
    cfg.resumption = rustls::client::Resumption::store(counted.clone());
    assert_eq!(handshake_kind(&holder, &Arc::new(cfg)), Full);
    assert_eq!(counted.0.load(std::sync::atomic::Ordering::Relaxed), 1);

    // The default client keeps its tickets in memory, as device libraries do.
    let device = client_config(&ca, &[&rustls::version::TLS13], true, None);
    assert_eq!(handshake_kind(&holder, &device), Full);
    assert_eq!(handshake_kind(&holder, &device), Resumed);
    holder.reload(&files.reader()).unwrap();
    assert_eq!(handshake_kind(&holder, &device), Resumed, "after a reload");
    let (c, k) = leaf(&ca, "broker2", &["localhost"]);
    files.put("cert0.pem", &c);
    files.put("key0.pem", &k);
    holder.reload(&files.reader()).unwrap();
    assert_eq!(
        handshake_kind(&holder, &device),
        Resumed,
        "after a reload with a new certificate"
    );

    // Tickets off (`tls_session_tickets = false`): every handshake is full.
    tf.session_tickets = false;
    let off = ListenerTls::load(tf, &files.reader()).unwrap();
    let device = client_config(&ca, &[&rustls::version::TLS13], true, None);
    assert_eq!(handshake_kind(&off, &device), Full);
    assert_eq!(handshake_kind(&off, &device), Full);
}

#[test]
fn sni_picks_the_certificate_that_covers_the_name() {
    let ca = ca("test ca");
    let mut files = Files::default();
    let tf = server_files(
        &mut files,
        &ca,
        &[("a", &["a.example"]), ("b", &["b.example"])],
    );
    let material = TlsMaterial::load(&tf, &files.reader()).unwrap();
    for name in ["a.example", "b.example"] {
        let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
        let mut client = ClientConnection::new(
            client_config(&ca, &[&rustls::version::TLS13], true, None),
            ServerName::try_from(name).unwrap(),
        )
        .unwrap();
        pump(&mut client, &mut server, &mut Vec::new()).unwrap();
        assert!(
            !client.is_handshaking(),
            "{name}: the client accepted the certificate it got"
        );
        assert_eq!(server.server_name(), Some(name));
    }
    // A name no certificate covers gets the first one, which the client refuses.
    let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
    let mut client = ClientConnection::new(
        client_config(&ca, &[&rustls::version::TLS13], true, None),
        ServerName::try_from("c.example").unwrap(),
    )
    .unwrap();
    let r = pump(&mut client, &mut server, &mut Vec::new());
    assert!(client.is_handshaking() || r.is_err());
}

#[test]
fn client_certificates_required_optional_and_their_identity() {
    let ca_srv = ca("server ca");
    let ca_cli = ca("client ca");
    let mut files = Files::default();
    let mut tf = server_files(&mut files, &ca_srv, &[("broker", &["localhost"])]);
    tf.client_ca = Some(files.put("clients.pem", &ca_cli.cert.pem()));
    tf.require_certificate = true;
    let required = TlsMaterial::load(&tf, &files.reader()).unwrap();
    tf.require_certificate = false;
    let optional = TlsMaterial::load(&tf, &files.reader()).unwrap();
    let device = leaf(&ca_cli, "device-17", &["dev17.fleet.example"]);
    let stranger = leaf(&ca("other ca"), "device-17", &["dev17.fleet.example"]);
    let name = ServerName::try_from("localhost").unwrap();
    let v13 = &[&rustls::version::TLS13];

    // Required, none given: the server refuses the handshake.
    let mut server = TlsSession::new(required.config.clone(), IdentitySource::CommonName).unwrap();
    let mut client =
        ClientConnection::new(client_config(&ca_srv, v13, false, None), name.clone()).unwrap();
    let r = pump(&mut client, &mut server, &mut Vec::new());
    assert!(
        matches!(
            r,
            Err(TransportError::Tls(rustls::Error::NoCertificatesPresented))
        ),
        "{r:?}"
    );

    // Required, signed by another CA: refused.
    let mut server = TlsSession::new(required.config.clone(), IdentitySource::CommonName).unwrap();
    let mut client = ClientConnection::new(
        client_config(&ca_srv, v13, false, Some(stranger)),
        name.clone(),
    )
    .unwrap();
    let r = pump(&mut client, &mut server, &mut Vec::new());
    assert!(
        matches!(
            r,
            Err(TransportError::Tls(rustls::Error::InvalidCertificate(_)))
        ),
        "{r:?}"
    );

    // Required and given: verified, and it names the user.
    let mut server = TlsSession::new(required.config.clone(), IdentitySource::CommonName).unwrap();
    let mut client = ClientConnection::new(
        client_config(&ca_srv, v13, false, Some(device.clone())),
        name.clone(),
    )
    .unwrap();
    pump(&mut client, &mut server, &mut Vec::new()).unwrap();
    let cert = server.peer_certificates().expect("verified chain")[0].clone();
    assert_eq!(
        identity::username(&cert, IdentitySource::CommonName).as_deref(),
        Some("device-17")
    );
    assert_eq!(
        identity::username(&cert, IdentitySource::SubjectAltName).as_deref(),
        Some("dev17.fleet.example")
    );
    assert_eq!(identity::username(&cert, IdentitySource::None), None);
    assert_eq!(server.username().as_deref(), Some("device-17"));

    // Optional and none given: accepted, no identity.
    let mut server = TlsSession::new(optional.config.clone(), IdentitySource::CommonName).unwrap();
    let mut client = ClientConnection::new(client_config(&ca_srv, v13, false, None), name).unwrap();
    pump(&mut client, &mut server, &mut Vec::new()).unwrap();
    assert!(!server.is_handshaking());
    assert!(server.peer_certificates().is_none());
}

#[test]
fn san_identity_prefers_dns_then_email_then_uri() {
    let ca = ca("ca");
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![
        SanType::URI("urn:dev:1".try_into().unwrap()),
        SanType::Rfc822Name("dev@fleet.example".try_into().unwrap()),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    assert_eq!(
        identity::username(cert.der(), IdentitySource::SubjectAltName).as_deref(),
        Some("dev@fleet.example")
    );
    // No CN in the subject: no name rather than a guess.
    assert_eq!(
        identity::username(cert.der(), IdentitySource::CommonName),
        None
    );
    // Truncated DER: no name, no panic.
    for cut in [0, 1, 10, cert.der().len() / 2] {
        assert_eq!(
            identity::username(&cert.der()[..cut], IdentitySource::SubjectAltName),
            None
        );
    }
}

#[test]
fn plaintext_mqtt_and_random_bytes_are_refused() {
    let ca = ca("ca");
    let mut files = Files::default();
    let tf = server_files(&mut files, &ca, &[("broker", &["localhost"])]);
    let material = TlsMaterial::load(&tf, &files.reader()).unwrap();
    // An MQTT 3.1.1 CONNECT sent to the TLS port.
    let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test";
    let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
    let r = server.on_recv(connect, &mut Vec::new());
    assert!(
        matches!(
            r,
            Err(TransportError::Tls(rustls::Error::InvalidMessage(_)))
        ),
        "{r:?}"
    );
    // Random bytes (a fixed xorshift sequence).
    let mut x = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
    let mut plain = Vec::new();
    assert!(server.on_recv(&noise, &mut plain).is_err());
    assert!(plain.is_empty());
}

#[test]
fn load_errors_name_the_file_and_reload_keeps_the_old_material() {
    let ca = ca("ca");
    let mut files = Files::default();
    let tf = server_files(&mut files, &ca, &[("broker", &["localhost"])]);
    let holder = ListenerTls::load(tf.clone(), &files.reader()).unwrap();
    let first = holder.current();

    // A key file that is not PEM.
    files.put("key0.pem", "garbage");
    let e = holder.reload(&files.reader()).unwrap_err();
    assert_eq!(e.file, PathBuf::from("key0.pem"));
    assert!(
        Arc::ptr_eq(&holder.current().config, &first.config),
        "old material stays in force"
    );

    // A key that does not belong to the certificate.
    let (_, other_key) = leaf(&ca, "x", &["x"]);
    files.put("key0.pem", &other_key);
    let e = holder.reload(&files.reader()).unwrap_err();
    assert_eq!(e.file, PathBuf::from("key0.pem"));
    assert!(e.reason.contains("does not fit"), "{e}");

    // A missing certificate file.
    files.0.remove(Path::new("cert0.pem"));
    let e = holder.reload(&files.reader()).unwrap_err();
    assert_eq!(e.file, PathBuf::from("cert0.pem"));

    // Good material again: new handshakes use it.
    let (c, k) = leaf(&ca, "broker2", &["localhost"]);
    files.put("cert0.pem", &c);
    files.put("key0.pem", &k);
    holder.reload(&files.reader()).unwrap();
    assert!(!Arc::ptr_eq(&holder.current().config, &first.config));

    // require_certificate without a client CA is refused at load.
    let mut bad = tf.clone();
    bad.require_certificate = true;
    let e = TlsMaterial::load(&bad, &files.reader()).unwrap_err();
    assert!(e.reason.contains("tls_client_ca"), "{e}");
}

/// The `tls` fuzz target's committed seeds and a spread of generated inputs, both
/// modes, replayed on every `cargo test`.
#[test]
fn tls_fuzz_seeds_replay() {
    for seed in super::testkit::tls_seeds() {
        super::testkit::fuzz_tls(&seed);
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..64usize {
        let input: Vec<u8> = (0..(n * 37) % 700)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        super::testkit::fuzz_tls(&input);
    }
}

/// The TLS record headers in `wire`: (content type, length) of each.
fn records(mut wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    while wire.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        out.push((wire[0], len));
        wire = &wire[(5 + len).min(wire.len())..];
    }
    out
}

/// A flush of many segments (small headers between shared payloads, as the shard
/// builds for large messages) is encrypted as one write: the records span the
/// segments, one per 16 KiB, and the client reads the bytes in order.
#[test]
fn a_flush_of_many_segments_becomes_as_few_records_as_its_length_needs() {
    use crate::transport::Transport;
    use bytes::Bytes;
    let ca = ca("test ca");
    let mut files = Files::default();
    let tf = server_files(&mut files, &ca, &[("broker", &["localhost"])]);
    let material = TlsMaterial::load(&tf, &files.reader()).unwrap();
    let mut server = TlsSession::new(material.config.clone(), material.identity).unwrap();
    let mut client = ClientConnection::new(
        client_config(&ca, &[&rustls::version::TLS13], true, None),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut plain = Vec::new();
    client.writer().write_all(b"\x10\x0cconnect").unwrap();
    pump(&mut client, &mut server, &mut plain).unwrap();
    assert!(!server.is_handshaking());
    // Tickets and anything else the handshake left are not part of the flush.
    while server.take_tls().is_some() {}
    let mut t = Transport::Tls(Box::new(server));
    // 40 segments: 7-byte headers around 2,500-byte payloads, 100,280 bytes.
    let mut segs = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20u8 {
        let head = Bytes::from(vec![0x30, i, 1, 2, 3, 4, 5]);
        let body = Bytes::from(vec![i; 2500]);
        expected.extend_from_slice(&head);
        expected.extend_from_slice(&body);
        segs.push(head);
        segs.push(body);
    }
    t.encode_chain(crate::tx::TxChain::from_segments(segs));
    let wire = t.take_wire().expect("records");
    let recs = records(&wire);
    // 100,280 bytes in 16 KiB records: 7 application-data records (type 23 on the
    // wire in TLS 1.3), not 40.
    assert_eq!(recs.len(), expected.len().div_ceil(16 * 1024), "{recs:?}");
    assert!(recs.iter().all(|&(ty, _)| ty == 23), "{recs:?}");
    let mut rd = &wire[..];
    let mut got = Vec::new();
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets().unwrap();
        let mut buf = Vec::new();
        let _ = client.reader().read_to_end(&mut buf);
        got.extend_from_slice(&buf);
    }
    assert_eq!(got, expected);
}
