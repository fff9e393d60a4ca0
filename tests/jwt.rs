//! JWT authentication against the real binary, with keys and tokens made here: an
//! HS256 secret file and an ES256 public key on one broker, an RS256 public key on
//! another; a token's `acl` claim ruling publish, subscribe and wildcard delivery;
//! expired, forged, wrongly-signed and malformed tokens with their exact CONNACK
//! codes (3.1.1 rc 4/5, MQTT 5 0x86/0x87), the password file still serving its users
//! beside the tokens, and the counters in the exit report.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{pkt, uniq, Launch, RawClient};

const SECRET: &str = "fleet-secret-0123456789";

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringmq-jwt-{}", uniq(tag)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_str().unwrap().to_owned()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A 3.1.1 CONNECT with the token in the password field.
fn with_token(client_id: &str, token: &str) -> pkt::Connect {
    let mut c = pkt::Connect::v311(client_id);
    c.username = Some(b"label".to_vec());
    c.password = Some(token.as_bytes().to_vec());
    c
}

fn connack_code(addr: &str, c: &pkt::Connect) -> u8 {
    let (_, f) = RawClient::connect_with(addr, c);
    f.body[1]
}

fn counter(tail: &str, name: &str) -> u64 {
    tail.split_whitespace()
        .filter_map(|w| w.strip_prefix(&format!("core.{name}=")))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

#[test]
fn hs256_and_es256_tokens_with_acl_claims_and_refusals() {
    let dir = tempdir("hs");
    let secret = write(&dir.join("secret"), format!("{SECRET}\n").as_bytes());
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = write(&dir.join("ec.pem"), ec.public_key_pem().as_bytes());
    // A password file beside the tokens (alice:wonderland, PBKDF2 made by ringmq).
    let passwd = dir.join("passwd");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "add", "--create"])
        .arg(&passwd)
        .args(["alice", "--password", "wonderland"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ringmq passwd");
    assert!(st.status.success(), "{st:?}");
    let mut b = Launch::new(&[
        "--shards",
        "2",
        "--jwt-secret-file",
        &secret,
        "--jwt-public-key-file",
        &public,
        "--jwt-issuer",
        "fleet-idp",
        "--password-file",
        passwd.to_str().unwrap(),
    ])
    .spawn();
    let addr = b.addr().to_string();
    let t = now();

    // A device token: publish only under up/<client id>, read down/#.
    let dev = hs256(&json!({
        "username": "dev-7", "iss": "fleet-idp", "exp": t + 300,
        "acl": {"pub": ["up/%c/#"], "sub": ["down/#"]},
    }));
    let sub_id = uniq("dev");
    let (mut dev_c, f) = RawClient::connect_with(&addr, &with_token(&sub_id, &dev));
    assert_eq!(f.body[1], 0, "{f:?}");
    let f = dev_c.subscribe(1, "#", 1);
    assert_eq!(f.body[2..], [1], "# overlaps down/#: granted {f:?}");
    let f = dev_c.subscribe(2, "secret/#", 1);
    assert_eq!(f.body[2..], [0x80], "{f:?}");

    // An ES256 operator token that may write everywhere.
    let key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let op = encode(
        &Header::new(Algorithm::ES256),
        &json!({"username": "ops", "iss": "fleet-idp", "exp": t + 300, "acl": {"all": ["#"]}}),
        &key,
    )
    .unwrap();
    let (mut ops, f) = RawClient::connect_with(&addr, &with_token(&uniq("ops"), &op));
    assert_eq!(f.body[1], 0, "{f:?}");
    ops.publish("other/x", 1, false, 1, b"hidden");
    ops.expect_ack(4, 1, false);
    ops.publish("down/x", 1, false, 2, b"shown");
    ops.expect_ack(4, 2, false);
    let m = dev_c.recv_publish();
    assert_eq!(m.topic, "down/x", "the wildcard subscriber got {m:?}");
    dev_c.ack_received(&m);
    dev_c.expect_silence_for(Duration::from_millis(300));

    // The device may not write outside up/<its client id>: MQTT 5 gets 0x87.
    let mut c5 = pkt::Connect::v5(&uniq("dev5"));
    c5.password = Some(dev.as_bytes().to_vec());
    let (mut d5, _) = RawClient::connect_v5_with(&addr, &c5);
    d5.publish("up/someone-else/t", 1, false, 3, b"no");
    let f = d5.recv_frame();
    assert_eq!((f.ptype(), f.body[2]), (4, 0x87), "{f:?}");

    // Refusals, each with its code.
    let expired =
        hs256(&json!({"username": "dev-7", "iss": "fleet-idp", "exp": t.saturating_sub(3600)}));
    assert_eq!(connack_code(&addr, &with_token(&uniq("e"), &expired)), 4);
    let wrong_iss = hs256(&json!({"username": "dev-7", "iss": "evil", "exp": t + 300}));
    assert_eq!(connack_code(&addr, &with_token(&uniq("i"), &wrong_iss)), 4);
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"username": "ops", "iss": "fleet-idp", "exp": t + 300, "acl": {"all": ["#"]}}),
        &EncodingKey::from_secret(b"guessed"),
    )
    .unwrap();
    assert_eq!(connack_code(&addr, &with_token(&uniq("f"), &forged)), 4);
    let mut v5 = pkt::Connect::v5(&uniq("f5"));
    v5.password = Some(forged.as_bytes().to_vec());
    assert_eq!(connack_code(&addr, &v5), 0x86);
    let malformed = hs256(&json!({
        "username": "u", "iss": "fleet-idp", "exp": t + 300, "acl": {"pub": "not-a-list"},
    }));
    assert_eq!(connack_code(&addr, &with_token(&uniq("m"), &malformed)), 5);
    // The password file still serves its users; a token-less wrong password is rc 4.
    let mut alice = pkt::Connect::v311(&uniq("a"));
    alice.username = Some(b"alice".to_vec());
    alice.password = Some(b"wonderland".to_vec());
    assert_eq!(connack_code(&addr, &alice), 0);
    alice.password = Some(b"nope".to_vec());
    assert_eq!(connack_code(&addr, &alice), 4);

    b.terminate(Duration::from_secs(10));
    let tail = b.stderr_tail();
    assert_eq!(counter(&tail, "auth_jwt_verified"), 3, "{tail}");
    assert_eq!(counter(&tail, "auth_jwt_refused"), 5, "{tail}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rs256_public_key_and_bad_key_files() {
    let dir = tempdir("rs");
    let kp = aws_lc::rsa::KeyPair::generate(aws_lc::rsa::KeySize::Rsa2048).unwrap();
    let private: Pkcs8V1Der = kp.as_der().unwrap();
    let public: PublicKeyX509Der = aws_lc::signature::KeyPair::public_key(&kp)
        .as_der()
        .unwrap();
    let public_file = write(
        &dir.join("rsa.pem"),
        pem("PUBLIC KEY", public.as_ref()).as_bytes(),
    );
    let mut b = Launch::new(&[
        "--shards",
        "1",
        "--jwt-public-key-file",
        &public_file,
        "--jwt-username-claim",
        "sub",
    ])
    .spawn();
    let key = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes()).unwrap();
    let t = now();
    let token = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "meter-1", "exp": t + 300}),
        &key,
    )
    .unwrap();
    assert_eq!(connack_code(b.addr(), &with_token(&uniq("r"), &token)), 0);
    // HS256 is not configured on this broker; the username claim is missing.
    assert_eq!(
        connack_code(
            b.addr(),
            &with_token(&uniq("h"), &hs256(&json!({"sub": "x", "exp": t + 300})))
        ),
        4
    );
    let no_sub = encode(
        &Header::new(Algorithm::RS256),
        &json!({"username": "meter-1", "exp": t + 300}),
        &key,
    )
    .unwrap();
    assert_eq!(connack_code(b.addr(), &with_token(&uniq("n"), &no_sub)), 4);
    // Without a token or a password file: not authorized (anonymous is off by
    // default once a JWT key is set).
    assert_eq!(
        connack_code(b.addr(), &pkt::Connect::v311(&uniq("anon"))),
        5
    );
    b.terminate(Duration::from_secs(10));

    // A key file that is not a key stops start-up naming the key and the file.
    let junk = write(&dir.join("junk.pem"), b"not a key\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--jwt-public-key-file", &junk, "check-config"])
        .output()
        .expect("run ringmq");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("jwt_public_key_file") && err.contains("junk.pem"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--jwt-from", "header", "check-config"])
        .output()
        .expect("run ringmq");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("jwt-from") && err.contains("header"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
