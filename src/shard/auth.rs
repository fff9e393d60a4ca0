//! Authentication and ACLs on this shard: the CONNECT decision (accept, refuse, or
//! hand the password to the verifier pool with `Action::Verify` and wait for
//! `on_verified`), the per-address failure limit, the cache of verified passwords, and
//! reloading a new `AuthPolicy` into live connections. The ACL checks themselves sit
//! in the packet handlers (`inbound.rs`) and in `deliver`, each one branch when no ACL
//! file is configured; the read check at delivery is skipped per shard
//! (`ShardAuth::acl_active`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::ConnState;
use super::connect::connack;
use super::timer::TimerKind;
use super::{Action, ConnId, Shard};
use crate::auth::{
    Acl, AuthError, AuthPolicy, Credentials, Decision, FailureLimiter, Verified, VerifyCache,
};
use crate::protocol::{Connect, ReasonCode};

/// Failed password attempts per source address per window before CONNECTs from it
/// are refused without a hash check (per shard: a client's CONNECT is checked on
/// the shard that owns its client id).
pub(crate) const FAILURES_PER_WINDOW: u32 = 10;
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked by the failure limiter per shard.
const FAILURE_ADDRS_MAX: usize = 65_536;
/// Verified (user, password, hash) keys cached per shard.
const VERIFY_CACHE_MAX: usize = 200_000;

/// The shard's part of authentication state.
pub(crate) struct ShardAuth {
    pub policy: Arc<AuthPolicy>,
    pub cache: VerifyCache,
    pub failures: FailureLimiter,
    /// Usernames of connected clients, kept only to recompile their ACLs on reload
    /// (connections without a username have no entry).
    pub usernames: hashbrown::HashMap<ConnId, Box<str>, ahash::RandomState>,
    /// Whether any connection of this shard may hold `Acl::Rules`. False (the
    /// broker without an ACL file) lets `deliver` and `pump` skip the read check
    /// with one test of a shard field instead of loading each subscriber's ACL.
    /// Set when a connection is given rules; recomputed on reload.
    pub acl_active: bool,
    /// ACLs that came in a JWT's `acl` claim, kept so a reload of the ACL file
    /// (`set_auth`) does not replace them.
    pub token_acls: hashbrown::HashMap<ConnId, Acl, ahash::RandomState>,
    /// When each JWT-authenticated connection's token reaches `exp`. A
    /// `ConnectTimeout` timer entry fires then (its kind is free once connected) and
    /// finds the deadline here; connections without a token have no entry.
    pub token_deadlines: hashbrown::HashMap<ConnId, Instant, ahash::RandomState>,
}

impl ShardAuth {
    pub fn new(policy: Arc<AuthPolicy>, secret: [u8; 32]) -> ShardAuth {
        ShardAuth {
            policy,
            cache: VerifyCache::new(secret, VERIFY_CACHE_MAX),
            failures: FailureLimiter::new(FAILURES_PER_WINDOW, FAILURE_WINDOW, FAILURE_ADDRS_MAX),
            usernames: Default::default(),
            acl_active: false,
            token_acls: Default::default(),
            token_deadlines: Default::default(),
        }
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

impl Shard {
    /// Installs a policy (at start-up and on every reload). Connected clients keep
    /// their connections; their ACLs are compiled again from the new files.
    pub fn set_auth(&mut self, policy: Arc<AuthPolicy>) {
        self.auth.policy = policy;
        self.auth.acl_active = self.auth.policy.has_acl();
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Connected)
            .map(|(k, _)| k)
            .collect();
        for conn in ids {
            let Some(c) = self.conns.get(conn) else {
                continue;
            };
            let client_id = self
                .sessions
                .get(c.session)
                .map(|s| lossy(&s.client_id).into_owned())
                .unwrap_or_default();
            let user = self.auth.usernames.get(&conn).map(|u| &**u);
            let acl = match self.auth.token_acls.get(&conn) {
                Some(a) => a.clone(),
                None => self.auth.policy.acl_for(&client_id, user),
            };
            self.auth.acl_active |= matches!(acl, Acl::Rules(_));
            if let Some(c) = self.conns.get_mut(conn) {
                c.acl = acl;
            }
        }
    }

    /// Authenticates a CONNECT on the owner shard. `Some(connect)`: accepted, go on
    /// with it; `None`: refused (answered and closed) or waiting for the verifier.
    pub(super) fn authenticate(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        now: Instant,
    ) -> Option<Box<Connect>> {
        let listener_anonymous = self
            .conns
            .get(conn)
            .and_then(|c| c.pending())
            .and_then(|p| p.listener_anonymous);
        if self.auth.policy.is_open() && listener_anonymous != Some(false) {
            return Some(connect);
        }
        let client_id = lossy(&connect.client_id).into_owned();
        let username = connect
            .username
            .as_deref()
            .map(lossy)
            .map(|u| u.into_owned());
        // A verified client certificate's username stands in for the CONNECT's own
        // (set by the IO side when the TLS handshake ended).
        let cert_identity = self.cert_username(conn).map(str::to_owned);
        let cred = Credentials {
            client_id: &client_id,
            username: username.as_deref(),
            password: connect.password.as_deref(),
            cert_identity: cert_identity.as_deref(),
            allow_anonymous: listener_anonymous,
        };
        let peer_ip = self.peer_ip(conn);
        match self.auth.policy.decide(&cred, &self.auth.cache) {
            Decision::Accept { acl, username } => {
                if cred.cert_identity.is_none()
                    && cred.username.is_some()
                    && self.auth.policy.has_passwords()
                {
                    self.stats.auth_cache_hits += 1;
                }
                self.accept_identity(conn, acl, username);
                self.check_will(conn, connect)
            }
            Decision::Refuse(e) => {
                self.refuse_auth(conn, &e);
                None
            }
            Decision::Verify(job) => {
                if let Some(ip) = peer_ip {
                    if !self.auth.failures.allows(ip, now) {
                        self.stats.auth_rate_limited += 1;
                        self.refuse_auth(conn, &AuthError::BadCredentials);
                        return None;
                    }
                }
                let c = self.conns.get_mut(conn)?;
                c.state = ConnState::Verifying;
                let generation = c.generation;
                if let Some(p) = c.pending_mut() {
                    p.verifying = Some(connect);
                    p.verify_job = Some(Box::new(job));
                }
                self.actions.push_back(Action::Verify { conn, generation });
                None
            }
        }
    }

    /// The password check `Action::Verify` announced; `None` when the connection
    /// is gone (closed, or its slot reused) since.
    pub fn take_verify_job(
        &mut self,
        conn: ConnId,
        generation: u32,
    ) -> Option<Box<crate::auth::VerifyJob>> {
        let c = self.conns.get_mut(conn)?;
        if c.generation != generation || c.state != ConnState::Verifying {
            return None;
        }
        c.pending_mut()?.verify_job.take()
    }

    /// The verifier pool's answer for `conn`'s CONNECT (`None`: the pool's queue
    /// was full).
    pub fn on_verified(
        &mut self,
        conn: ConnId,
        generation: u32,
        ok: Option<Verified>,
        now: Instant,
    ) {
        self.last_now = Some(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        // A closed or reused slot: the answer is for a connection that is gone.
        if c.generation != generation || c.state != ConnState::Verifying {
            return;
        }
        let Some(connect) = c.pending_mut().and_then(|p| p.verifying.take()) else {
            return;
        };
        c.state = ConnState::AwaitConnect;
        let peer_ip = self.peer_ip(conn);
        let client_id = lossy(&connect.client_id).into_owned();
        let Some(ok) = ok else {
            self.stats.auth_pool_busy += 1;
            self.write_control(conn, &connack(ReasonCode::ServerBusy));
            self.close(conn);
            return;
        };
        let (acl, username) = match ok {
            Verified::Denied | Verified::TokenDenied(_) => {
                if let Some(ip) = peer_ip {
                    self.auth.failures.record_failure(ip, now);
                }
                let e = match ok {
                    Verified::TokenDenied(e) => {
                        self.stats.auth_jwt_refused += 1;
                        e
                    }
                    _ => AuthError::BadCredentials,
                };
                self.refuse_auth(conn, &e);
                return;
            }
            Verified::Password => {
                self.stats.auth_verified += 1;
                let user = lossy(connect.username.as_deref().unwrap_or_default()).into_owned();
                let password = connect.password.as_deref().unwrap_or_default();
                if let Some(h) = self.auth.policy.stored_hash(&user) {
                    let key = self.auth.cache.key(&user, password, h);
                    self.auth.cache.insert(key);
                }
                let Decision::Accept { acl, username } =
                    self.auth.policy.accept_verified(&client_id, &user)
                else {
                    return;
                };
                self.auth.token_acls.remove(&conn);
                self.auth.token_deadlines.remove(&conn);
                (acl, username)
            }
            Verified::Token {
                username,
                acl,
                valid_for_s,
            } => {
                self.stats.auth_jwt_verified += 1;
                let deadline = now + Duration::from_secs(valid_for_s);
                self.auth.token_deadlines.insert(conn, deadline);
                if let Some(c) = self.conns.get(conn) {
                    let g = c.generation;
                    self.timers
                        .push(now, deadline, TimerKind::ConnectTimeout, conn as u32, g);
                }
                // The token's own rules survive a reload of the ACL file.
                let acl = match acl {
                    Some(a) => {
                        self.auth.token_acls.insert(conn, a.clone());
                        a
                    }
                    None => {
                        self.auth.token_acls.remove(&conn);
                        self.auth.policy.acl_for(&client_id, Some(&username))
                    }
                };
                (acl, Some(username))
            }
        };
        self.accept_identity(conn, acl, username);
        if let Some(connect) = self.check_will(conn, connect) {
            self.finish_connect(conn, connect, now);
        }
    }

    /// The source address, when the IO side knows it: an unknown one (0.0.0.0) is not
    /// rate limited, or one client's failures would lock every client out.
    fn peer_ip(&self, conn: ConnId) -> Option<std::net::IpAddr> {
        let ip = self.conns.get(conn)?.pending()?.peer.ip();
        (!ip.is_unspecified()).then_some(ip)
    }

    fn accept_identity(&mut self, conn: ConnId, acl: Acl, user: Option<String>) {
        self.auth.acl_active |= matches!(acl, Acl::Rules(_));
        if let Some(c) = self.conns.get_mut(conn) {
            c.acl = acl;
        }
        match user {
            Some(u) => {
                self.auth.usernames.insert(conn, u.into_boxed_str());
            }
            None => {
                self.auth.usernames.remove(&conn);
            }
        }
    }

    /// Recomputes whether live delivery to `conn` may skip the read check: only
    /// when every subscription of `session` is readable in full. Called after a
    /// SUBSCRIBE changed the list; until then (a new connection, a reload) the
    /// check stays on.
    pub(super) fn refresh_read_grant(&mut self, conn: ConnId, session: u32) {
        let (Some(c), Some(s)) = (self.conns.get_mut(conn), self.sessions.get(session)) else {
            return;
        };
        if matches!(c.acl, Acl::AllowAll) {
            return;
        }
        c.acl.refresh_reads(s.subs.iter().map(|sub| {
            match crate::topic::parse_shared(&sub.filter) {
                Ok(Some(shared)) => shared.filter,
                _ => &sub.filter[..],
            }
        }));
    }

    /// Wills are checked against write permission at CONNECT (0x87 / rc 5).
    fn check_will(&mut self, conn: ConnId, connect: Box<Connect>) -> Option<Box<Connect>> {
        let denied = match (&connect.will, self.conns.get_mut(conn)) {
            (Some(w), Some(c)) => !c.acl.can_publish(&w.topic),
            _ => false,
        };
        if denied {
            self.refuse_auth(conn, &AuthError::NotAuthorized);
            return None;
        }
        Some(connect)
    }

    fn refuse_auth(&mut self, conn: ConnId, e: &AuthError) {
        match e {
            AuthError::BadCredentials => self.stats.auth_bad_credentials += 1,
            _ => self.stats.auth_not_authorized += 1,
        }
        self.auth.usernames.remove(&conn);
        self.auth.token_acls.remove(&conn);
        self.auth.token_deadlines.remove(&conn);
        self.write_control(conn, &connack(e.reason_code()));
        self.close(conn);
    }

    /// Forgets a released connection's identity.
    pub(super) fn forget_identity(&mut self, conn: ConnId) {
        if !self.auth.usernames.is_empty() {
            self.auth.usernames.remove(&conn);
        }
        if !self.auth.token_acls.is_empty() {
            self.auth.token_acls.remove(&conn);
        }
        if !self.auth.token_deadlines.is_empty() {
            self.auth.token_deadlines.remove(&conn);
        }
    }
}
