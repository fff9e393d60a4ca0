//! JWT checks with tokens minted here: each algorithm, every refusal and its code,
//! the username claim, the `acl` claim compiled with `%c`/`%u`, and the policy's
//! choice between a token and the password file.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::auth::{acl, AuthPolicy, Credentials, Decision, Verified, VerifyCache, VerifyJob};

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"a shared secret of the fleet";

fn settings() -> JwtSettings {
    JwtSettings {
        username_claim: "username".into(),
        ..JwtSettings::default()
    }
}

fn hs(claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn hs_auth(s: JwtSettings) -> JwtAuth {
    JwtAuth::new(s, Some(SECRET), None).unwrap()
}

#[test]
fn hs256_token_gives_its_username_claim() {
    let a = hs_auth(settings());
    let t = hs(&json!({"username": "dev-7", "exp": NOW + 60}));
    let id = a.verify(t.as_bytes(), NOW).unwrap();
    assert_eq!(id.username, "dev-7");
    assert_eq!(id.rules, None);
}

#[test]
fn es256_token_with_a_public_key() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let a = JwtAuth::new(settings(), None, Some(kp.public_key_pem().as_bytes())).unwrap();
    let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let claims = json!({"username": "u", "exp": NOW + 60});
    let t = encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    assert_eq!(a.verify(t.as_bytes(), NOW).unwrap().username, "u");
    // The same claims signed with the HS256 secret: no HS256 key is configured.
    assert_eq!(
        a.verify(hs(&claims).as_bytes(), NOW),
        Err(AuthError::BadCredentials)
    );
    // Another EC key's signature does not verify.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let t = encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    assert_eq!(a.verify(t.as_bytes(), NOW), Err(AuthError::BadCredentials));
}

#[test]
fn bad_keys_are_named_at_load() {
    let e = JwtAuth::new(
        settings(),
        None,
        Some(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
    )
    .unwrap_err();
    assert!(e.contains("not an RSA or EC public key in PEM"), "{e}");
    assert!(JwtAuth::new(settings(), Some(b""), None).is_err());
    assert!(JwtAuth::new(settings(), None, None).is_err());
}

#[test]
fn time_issuer_audience_and_signature_refusals() {
    let a = hs_auth(JwtSettings {
        issuer: Some("fleet-idp".into()),
        audience: Some("ringmq".into()),
        leeway_s: 5,
        ..settings()
    });
    let ok = json!({"username": "u", "exp": NOW, "iss": "fleet-idp", "aud": "ringmq"});
    assert!(
        a.verify(hs(&ok).as_bytes(), NOW + 5).is_ok(),
        "within the leeway"
    );
    let refused = |c: serde_json::Value, now: u64| a.verify(hs(&c).as_bytes(), now);
    let bad = Err(AuthError::BadCredentials);
    assert_eq!(refused(ok.clone(), NOW + 6), bad, "expired");
    let mut c = ok.clone();
    c["nbf"] = json!(NOW + 100);
    c["exp"] = json!(NOW + 200);
    assert_eq!(refused(c.clone(), NOW), bad, "not yet valid");
    assert!(refused(c, NOW + 96).is_ok(), "nbf within the leeway");
    let mut c = ok.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(refused(c, NOW), bad, "exp is required");
    let mut c = ok.clone();
    c["iss"] = json!("someone-else");
    assert_eq!(refused(c, NOW), bad, "issuer");
    let mut c = ok.clone();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(refused(c, NOW), bad, "audience required");
    let mut c = ok.clone();
    c["username"] = json!(7);
    assert_eq!(refused(c, NOW), bad, "username claim not a string");
    // A tampered payload (another token's claims under this signature).
    let t = hs(&ok);
    let forged = hs(&json!({"username": "admin", "exp": NOW, "iss": "fleet-idp", "aud": "ringmq"}));
    let part = |tok: &str, i: usize| tok.split('.').nth(i).unwrap().to_owned();
    let mixed = format!("{}.{}.{}", part(&t, 0), part(&forged, 1), part(&t, 2));
    assert_eq!(a.verify(mixed.as_bytes(), NOW), bad, "tampered");
    // "alg": "none" is never accepted.
    let none = format!(
        "{}.{}.",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","typ":"JWT"}"#
        ),
        part(&forged, 1)
    );
    assert_eq!(a.verify(none.as_bytes(), NOW), bad, "alg none");
    assert_eq!(a.verify(b"eyJ.not.atoken", NOW), bad, "garbage");
}

#[test]
fn acl_claim_becomes_the_connection_rules() {
    let a = hs_auth(settings());
    let t = hs(&json!({
        "username": "dev-7",
        "exp": NOW + 60,
        "acl": {"pub": ["up/%c/#"], "sub": ["down/%u/#"], "all": ["shared/#"]},
    }));
    let id = a.verify(t.as_bytes(), NOW).unwrap();
    let rules = id.rules.expect("the acl claim");
    let c = rules.compile("client-1", Some(&id.username));
    assert!(c.check(b"up/client-1/t", acl::WRITE));
    assert!(!c.check(b"up/client-1/t", acl::READ));
    assert!(!c.check(b"up/client-2/t", acl::WRITE));
    assert!(c.check(b"down/dev-7/x", acl::READ));
    assert!(!c.check(b"down/dev-7/x", acl::WRITE));
    assert!(c.check(b"shared/a", acl::READ) && c.check(b"shared/a", acl::WRITE));
    assert!(!c.check(b"other", acl::READ));
    // A malformed claim refuses the client as not authorized (0x87 / rc 5).
    for bad in [
        json!({"pub": "up/#"}),
        json!({"sub": ["a/#/b"]}),
        json!(["x"]),
    ] {
        let t = hs(&json!({"username": "u", "exp": NOW + 60, "acl": bad}));
        assert_eq!(a.verify(t.as_bytes(), NOW), Err(AuthError::NotAuthorized));
    }
}

fn cred<'a>(user: Option<&'a str>, pw: Option<&'a [u8]>) -> Credentials<'a> {
    Credentials {
        client_id: "c1",
        username: user,
        password: pw,
        cert_identity: None,
        allow_anonymous: None,
    }
}

#[test]
fn policy_checks_tokens_on_the_pool_and_passwords_as_before() {
    let mut pw = crate::auth::PasswordFile::default();
    pw.upsert(
        "alice",
        crate::auth::StoredHash::new_pbkdf2(b"pw", b"0123456789ab", 1),
    );
    let p = AuthPolicy::new(Some(pw), None, false).with_jwt(Some(hs_auth(settings())));
    assert!(!p.is_open());
    let cache = VerifyCache::new([1; 32], 16);
    let t = hs(&json!({"username": "dev-7", "exp": NOW + 60}));
    // The CONNECT username is a label: the claim decides.
    let Decision::Verify(job) = p.decide(&cred(Some("alice"), Some(t.as_bytes())), &cache) else {
        panic!("a token is checked on the pool");
    };
    assert!(matches!(job, VerifyJob::Token { .. }));
    match job.run(NOW) {
        Verified::Token { username, acl, .. } => {
            assert_eq!(username, "dev-7");
            assert!(acl.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        job.run(NOW + 3600),
        Verified::TokenDenied(AuthError::BadCredentials)
    ));
    // Not shaped like a token: the password file.
    let Decision::Verify(job) = p.decide(&cred(Some("alice"), Some(b"pw")), &cache) else {
        panic!("a password check");
    };
    assert!(matches!(job.run(NOW), Verified::Password));
    // jwt_from = username: the token is the username, the password is ignored.
    let p = AuthPolicy::new(None, None, false).with_jwt(Some(hs_auth(JwtSettings {
        from: TokenField::Username,
        ..settings()
    })));
    assert!(matches!(
        p.decide(&cred(Some(&t), None), &cache),
        Decision::Verify(VerifyJob::Token { .. })
    ));
    assert!(matches!(
        p.decide(&cred(Some("x"), Some(t.as_bytes())), &cache),
        Decision::Refuse(AuthError::NotAuthorized)
    ));
}
