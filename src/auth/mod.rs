//! Authentication and authorization (sans-IO): the password file and its hash schemes
//! (`password`), the ACL file and its per-connection compiled form (`acl`), the
//! CONNECT decision (`AuthPolicy::decide`), JWTs (`jwt`), the cache of verified passwords and the
//! per-address limit on failed attempts (`guard`). Nothing here reads files, clocks or
//! sockets: `main` reads the files, the worker runs slow hash checks on its verifier
//! pool, and the shard passes `now`.
//!
//! `AuthError` is this layer's one error enum; `reason_code` is its one mapping to the
//! wire.

pub mod acl;
pub mod guard;
pub mod jwt;
pub mod password;

use std::collections::HashMap;
use std::sync::Arc;

pub use acl::{Acl, AclFile, CompiledAcl};
pub use guard::{FailureLimiter, VerifyCache, VerifyKey};
pub use jwt::{JwtAuth, JwtSettings, TokenField};
pub use password::{PasswordFile, StoredHash};

use crate::protocol::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A password-file line that does not parse (1-based line number).
    PasswordFile { line: usize, reason: String },
    /// An ACL-file line that does not parse.
    AclFile { line: usize, reason: String },
    /// Unknown user, wrong or missing password, or too many recent failures.
    BadCredentials,
    /// Anonymous when not allowed, or a will the ACL does not let the client write.
    NotAuthorized,
}

impl AuthError {
    /// The CONNACK code; `ReasonCode` maps it to 3.x return codes 4 and 5.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            AuthError::BadCredentials => ReasonCode::BadUserNameOrPassword,
            AuthError::NotAuthorized => ReasonCode::NotAuthorized,
            // File errors never reach a client; refusing is the safe answer.
            AuthError::PasswordFile { .. } | AuthError::AclFile { .. } => ReasonCode::NotAuthorized,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::PasswordFile { line, reason } | AuthError::AclFile { line, reason } => {
                write!(f, "line {line}: {reason}")
            }
            AuthError::BadCredentials => f.write_str("bad user name or password"),
            AuthError::NotAuthorized => f.write_str("not authorized"),
        }
    }
}

/// What a client presented at CONNECT.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The hook for TLS client certificates (`use_identity_as_username`): an identity
    /// the transport has already verified. When set, it is the username and no
    /// password is asked.
    pub cert_identity: Option<&'a str>,
    /// The listener's own anonymous rule (`[[listener]]` `allow_anonymous`), in
    /// place of the policy's; `None`: the policy's.
    pub allow_anonymous: Option<bool>,
}

/// A check to run on the verifier pool: a slow password hash (with the key under
/// which the shard caches a success), or a JWT signature and its claims.
#[derive(Debug, Clone)]
pub enum VerifyJob {
    Password {
        hash: StoredHash,
        password: Vec<u8>,
        key: VerifyKey,
    },
    Token {
        token: Vec<u8>,
        client_id: String,
        jwt: Arc<JwtAuth>,
    },
}

/// What the pool found.
#[derive(Debug)]
pub enum Verified {
    /// The password did not match.
    Denied,
    Password,
    /// The token was refused: `BadCredentials` or `NotAuthorized`.
    TokenDenied(AuthError),
    /// A valid token: its username, and its own ACL when it carries an `acl` claim
    /// (compiled here, off the loop).
    Token {
        username: String,
        acl: Option<Acl>,
        /// Seconds until the token's `exp`: the connection ends then (0xA0).
        valid_for_s: u64,
    },
}

/// Password checks the verifier pool has passed, shared by its threads. A reconnect
/// storm of one credential queues many identical jobs before the first answer
/// reaches the shard's cache (5,000 CONNECTs made 512 hashes): the first to finish
/// puts its key here and the queued rest are answered without hashing. Keys are the
/// shard's (a keyed digest of user, password and stored hash), so a changed hash
/// misses; only successes are kept, so a failure is hashed (and counted) each time.
#[derive(Debug)]
pub struct PoolMemo(std::sync::Mutex<VerifyCache>);

/// Keys the pool memo holds at most (two generations, as `VerifyCache`).
pub const POOL_MEMO_MAX: usize = 4096;

impl PoolMemo {
    pub fn new(cap: usize) -> PoolMemo {
        // The secret only feeds `VerifyCache::key`, which the memo never calls.
        PoolMemo(std::sync::Mutex::new(VerifyCache::new([0; 32], cap)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VerifyCache> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VerifyJob {
    /// [`run`](Self::run) through the pool's memo: a password job whose key it holds
    /// is answered `Password` at once. Also returns whether a password hash ran.
    pub fn run_memo(&self, now_unix_s: u64, memo: &PoolMemo) -> (Verified, bool) {
        let VerifyJob::Password { key, .. } = self else {
            return (self.run(now_unix_s), false);
        };
        if memo.lock().contains(key) {
            return (Verified::Password, false);
        }
        let ok = self.run(now_unix_s);
        if matches!(ok, Verified::Password) {
            memo.lock().insert(*key);
        }
        (ok, true)
    }

    /// The slow part; call it off the event loop. `now_unix_s` is checked against a
    /// token's `exp`/`nbf`.
    pub fn run(&self, now_unix_s: u64) -> Verified {
        match self {
            VerifyJob::Password { hash, password, .. } => match hash.verify(password) {
                true => Verified::Password,
                false => Verified::Denied,
            },
            VerifyJob::Token {
                token,
                client_id,
                jwt,
            } => match jwt.verify(token, now_unix_s) {
                Ok(id) => Verified::Token {
                    acl: id
                        .rules
                        .map(|r| Acl::rules(Arc::new(r.compile(client_id, Some(&id.username))))),
                    username: id.username,
                    valid_for_s: id.valid_for_s,
                },
                Err(e) => Verified::TokenDenied(e),
            },
        }
    }
}

#[derive(Debug)]
pub enum Decision {
    /// Authenticated (or anonymous and allowed): this ACL applies.
    Accept {
        acl: Acl,
        username: Option<String>,
    },
    Refuse(AuthError),
    /// Needs a slow hash check first; on success `accept_verified` gives the ACL.
    Verify(VerifyJob),
}

/// The loaded files and the anonymous rule: one immutable snapshot, swapped whole on
/// reload (SIGHUP), shared by every shard.
#[derive(Debug, Default)]
pub struct AuthPolicy {
    passwords: Option<PasswordFile>,
    acl: Option<AclFile>,
    allow_anonymous: bool,
    /// Compiled ACLs shared per user when the file has no patterns (the common case),
    /// so 100k clients of one user hold one copy.
    shared: HashMap<String, Arc<CompiledAcl>>,
    shared_anonymous: Option<Arc<CompiledAcl>>,
    jwt: Option<Arc<JwtAuth>>,
}

impl AuthPolicy {
    pub fn new(
        passwords: Option<PasswordFile>,
        acl: Option<AclFile>,
        allow_anonymous: bool,
    ) -> AuthPolicy {
        let mut shared = HashMap::new();
        let mut shared_anonymous = None;
        if let Some(a) = acl.as_ref().filter(|a| a.patterns.is_empty()) {
            for user in a.users.keys() {
                shared.insert(user.clone(), Arc::new(a.compile("", Some(user))));
            }
            shared_anonymous = Some(Arc::new(a.compile("", None)));
        }
        AuthPolicy {
            passwords,
            acl,
            allow_anonymous,
            shared,
            shared_anonymous,
            jwt: None,
        }
    }

    /// Also accepts JWTs (in the password or username field, as `jwt` says).
    pub fn with_jwt(mut self, jwt: Option<JwtAuth>) -> AuthPolicy {
        self.jwt = jwt.map(Arc::new);
        self
    }

    /// Anything to check at all? `false` keeps the broker as it was without auth.
    pub fn is_open(&self) -> bool {
        self.passwords.is_none() && self.acl.is_none() && self.jwt.is_none() && self.allow_anonymous
    }

    /// Whether a token alone can let a client in (for `secure_default`-style
    /// messages and for counting).
    pub fn has_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    pub fn has_passwords(&self) -> bool {
        self.passwords.is_some()
    }

    /// The stored hash of `user` (for the cache key after a successful check).
    pub fn stored_hash(&self, user: &str) -> Option<&StoredHash> {
        self.passwords.as_ref()?.get(user)
    }

    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// The compiled ACL of a client (`AllowAll` without an ACL file).
    pub fn acl_for(&self, client_id: &str, username: Option<&str>) -> Acl {
        let Some(a) = &self.acl else {
            return Acl::AllowAll;
        };
        if a.patterns.is_empty() {
            let c = match username {
                None => self.shared_anonymous.clone(),
                Some(u) => self.shared.get(u).cloned(),
            };
            // A user the file does not name has no rules: an empty list denies all.
            return Acl::rules(c.unwrap_or_default());
        }
        Acl::rules(Arc::new(a.compile(client_id, username)))
    }

    /// The CONNECT decision. `cache` holds earlier successes, so a reconnect storm
    /// does not hash again.
    pub fn decide(&self, cred: &Credentials<'_>, cache: &VerifyCache) -> Decision {
        if let Some(id) = cred.cert_identity {
            return self.accept(cred.client_id, Some(id));
        }
        if let Some(jwt) = &self.jwt {
            let field = match jwt.from_field() {
                TokenField::Password => cred.password,
                TokenField::Username => cred.username.map(str::as_bytes),
            };
            // Only a field shaped like a token is checked as one; anything else goes
            // on to the password file and the anonymous rule.
            if let Some(token) = field.filter(|t| JwtAuth::looks_like_token(t)) {
                return Decision::Verify(VerifyJob::Token {
                    token: token.to_vec(),
                    client_id: cred.client_id.to_owned(),
                    jwt: jwt.clone(),
                });
            }
        }
        let allow_anonymous = cred.allow_anonymous.unwrap_or(self.allow_anonymous);
        let Some(user) = cred.username else {
            if allow_anonymous {
                return self.accept(cred.client_id, None);
            }
            return Decision::Refuse(AuthError::NotAuthorized);
        };
        let Some(pw) = &self.passwords else {
            // No password file: a username is an unchecked label (Mosquitto), so the
            // client counts as anonymous for admission and the name picks its ACL.
            if allow_anonymous {
                return self.accept(cred.client_id, Some(user));
            }
            return Decision::Refuse(AuthError::NotAuthorized);
        };
        let (Some(hash), Some(password)) = (pw.get(user), cred.password) else {
            return Decision::Refuse(AuthError::BadCredentials);
        };
        let key = cache.key(user, password, hash);
        if cache.contains(&key) {
            return self.accept(cred.client_id, Some(user));
        }
        Decision::Verify(VerifyJob::Password {
            hash: hash.clone(),
            password: password.to_vec(),
            key,
        })
    }

    /// After the pool answered `true` for a `Verify`.
    pub fn accept_verified(&self, client_id: &str, username: &str) -> Decision {
        self.accept(client_id, Some(username))
    }

    fn accept(&self, client_id: &str, username: Option<&str>) -> Decision {
        Decision::Accept {
            acl: self.acl_for(client_id, username),
            username: username.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(acl: Option<&str>, anon: bool) -> AuthPolicy {
        let mut pw = PasswordFile::default();
        pw.upsert("alice", StoredHash::new_pbkdf2(b"pw", b"0123456789ab", 10));
        AuthPolicy::new(Some(pw), acl.map(|t| AclFile::parse(t).unwrap()), anon)
    }

    fn cred<'a>(user: Option<&'a str>, pw: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            client_id: "c",
            username: user,
            password: pw,
            cert_identity: None,
            allow_anonymous: None,
        }
    }

    #[test]
    fn connect_decisions() {
        let p = policy(None, false);
        let mut cache = VerifyCache::new([7; 32], 16);
        assert!(matches!(
            p.decide(&cred(None, None), &cache),
            Decision::Refuse(AuthError::NotAuthorized)
        ));
        assert!(matches!(
            p.decide(&cred(Some("bob"), Some(b"pw")), &cache),
            Decision::Refuse(AuthError::BadCredentials)
        ));
        assert!(matches!(
            p.decide(&cred(Some("alice"), None), &cache),
            Decision::Refuse(AuthError::BadCredentials)
        ));
        let Decision::Verify(job) = p.decide(&cred(Some("alice"), Some(b"pw")), &cache) else {
            panic!("expected a verify job");
        };
        assert!(matches!(job.run(0), Verified::Password));
        let VerifyJob::Password { key, .. } = job else {
            panic!("a password job");
        };
        cache.insert(key);
        // Cached: accepted at once, no second hash.
        assert!(matches!(
            p.decide(&cred(Some("alice"), Some(b"pw")), &cache),
            Decision::Accept { .. }
        ));
        // A wrong password is a different key: verified (and failing) again.
        let Decision::Verify(bad) = p.decide(&cred(Some("alice"), Some(b"px")), &cache) else {
            panic!("expected a verify job");
        };
        assert!(matches!(bad.run(0), Verified::Denied));
        assert!(matches!(
            policy(None, true).decide(&cred(None, None), &cache),
            Decision::Accept { .. }
        ));
    }

    /// Identical jobs queued together hash once: the rest are answered from the pool
    /// memo; a wrong password is hashed every time and never remembered.
    #[test]
    fn the_pool_memo_answers_identical_queued_checks_without_hashing() {
        let p = policy(None, false);
        let cache = VerifyCache::new([7; 32], 16);
        let memo = PoolMemo::new(16);
        let job = |pw: &[u8]| match p.decide(&cred(Some("alice"), Some(pw)), &cache) {
            Decision::Verify(j) => j,
            _ => panic!("expected a verify job"),
        };
        let jobs: Vec<VerifyJob> = (0..50).map(|_| job(b"pw")).collect();
        let mut hashed = 0;
        for j in &jobs {
            let (ok, h) = j.run_memo(0, &memo);
            assert!(matches!(ok, Verified::Password));
            hashed += usize::from(h);
        }
        assert_eq!(hashed, 1);
        for _ in 0..3 {
            let (ok, h) = job(b"px").run_memo(0, &memo);
            assert!(matches!(ok, Verified::Denied) && h);
        }
    }

    #[test]
    fn certificate_identity_is_the_username() {
        let p = policy(Some("user dev1\ntopic readwrite d/#\n"), false);
        let cache = VerifyCache::new([0; 32], 16);
        let c = Credentials {
            client_id: "x",
            username: None,
            password: None,
            cert_identity: Some("dev1"),
            allow_anonymous: None,
        };
        let Decision::Accept { mut acl, username } = p.decide(&c, &cache) else {
            panic!("certificate identity refused");
        };
        assert_eq!(username.as_deref(), Some("dev1"));
        assert!(acl.can_publish(b"d/1") && !acl.can_publish(b"e"));
    }

    #[test]
    fn a_listener_rule_replaces_the_policys_anonymous_rule() {
        let cache = VerifyCache::new([0; 32], 16);
        let anon = |allow: Option<bool>| Credentials {
            allow_anonymous: allow,
            ..cred(None, None)
        };
        let closed = policy(None, false);
        assert!(matches!(
            closed.decide(&anon(Some(true)), &cache),
            Decision::Accept { username: None, .. }
        ));
        assert!(matches!(
            closed.decide(&anon(None), &cache),
            Decision::Refuse(AuthError::NotAuthorized)
        ));
        let open = AuthPolicy::new(None, None, true);
        assert!(matches!(
            open.decide(&anon(Some(false)), &cache),
            Decision::Refuse(AuthError::NotAuthorized)
        ));
        // A password user is still checked on a listener that allows anonymous.
        let c = Credentials {
            allow_anonymous: Some(true),
            ..cred(Some("alice"), Some(b"pw"))
        };
        assert!(matches!(closed.decide(&c, &cache), Decision::Verify(_)));
    }

    #[test]
    fn wire_codes() {
        assert_eq!(AuthError::BadCredentials.reason_code() as u8, 0x86);
        assert_eq!(AuthError::NotAuthorized.reason_code() as u8, 0x87);
        assert_eq!(AuthError::BadCredentials.reason_code().v3_connack_code(), 4);
        assert_eq!(AuthError::NotAuthorized.reason_code().v3_connack_code(), 5);
    }

    #[test]
    fn shared_acl_per_user_without_patterns() {
        let p = policy(Some("user alice\ntopic read a/#\n"), false);
        let (a, b) = (p.acl_for("1", Some("alice")), p.acl_for("2", Some("alice")));
        let (Some(a), Some(b)) = (a.compiled(), b.compiled()) else {
            panic!("rules expected");
        };
        assert!(Arc::ptr_eq(a, b));
        let nobody = p.acl_for("1", Some("nobody"));
        let Some(n) = nobody.compiled() else {
            panic!("rules expected");
        };
        assert!(n.is_empty() && !n.check(b"a/x", acl::READ));
    }
}
