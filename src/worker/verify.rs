//! The verifier pool: a few threads that run slow password hashes (argon2id costs
//! tens of MiB and milliseconds) so no event loop ever does, and the shared handle
//! through which a reload (SIGHUP) hands every loop a new `AuthPolicy`. JWT
//! signatures are checked here too, with the wall clock for `exp`/`nbf`.
//!
//! A loop sends a request with `try_send` into one bounded queue (full: the CONNECT
//! is refused as busy, never waited for) and gets the answer on its own bounded
//! reply channel, woken through its `Remote`; it drains replies every turn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use crate::auth::{AuthPolicy, PoolMemo, Verified, VerifyJob, POOL_MEMO_MAX};
use crate::io::Remote;
use crate::shard::ConnId;

/// Requests waiting for a verifier thread, all loops together.
pub const QUEUE_MAX: usize = 1024;

/// The current policy and a generation number bumped on each install, so a loop
/// checks one relaxed atomic per turn and takes the lock only after a reload.
#[derive(Debug)]
pub struct AuthShared {
    policy: RwLock<Arc<AuthPolicy>>,
    generation: AtomicU64,
}

impl AuthShared {
    pub fn new(policy: AuthPolicy) -> AuthShared {
        AuthShared {
            policy: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(1),
        }
    }

    pub fn install(&self, policy: AuthPolicy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<AuthPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Request {
    conn: ConnId,
    generation: u32,
    job: Box<VerifyJob>,
    reply: SyncSender<Reply>,
    wake: Arc<Remote>,
}

/// `(conn, generation, result)` for `Shard::on_verified`.
pub type Reply = (ConnId, u32, Verified);

/// The pool's threads; dropping the last sender (every loop's `Verifier`) ends them.
pub struct VerifierPool {
    tx: SyncSender<Request>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl VerifierPool {
    pub fn start(threads: usize) -> std::io::Result<VerifierPool> {
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let memo = Arc::new(PoolMemo::new(POOL_MEMO_MAX));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let memo = memo.clone();
            handles.push(
                thread::Builder::new()
                    .name(format!("ringmq-verify-{i}"))
                    .spawn(move || loop {
                        let req = {
                            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
                            match guard.recv() {
                                Ok(r) => r,
                                Err(_) => return,
                            }
                        };
                        // A clock before 1970 reads as 0: every token is then
                        // "not yet valid" rather than accepted.
                        let now_unix_s = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let (ok, _) = req.job.run_memo(now_unix_s, &memo);
                        // A loop that has exited dropped its receiver: nothing to tell.
                        if req.reply.send((req.conn, req.generation, ok)).is_ok() {
                            req.wake.wake();
                        }
                    })?,
            );
        }
        Ok(VerifierPool {
            tx,
            threads: handles,
        })
    }

    /// A loop's end of the pool.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            tx: self.tx.clone(),
            reply: None,
        }
    }

    /// Stops the threads once every `Verifier` is gone.
    pub fn join(self) {
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One loop's end: requests out, replies in.
pub struct Verifier {
    tx: SyncSender<Request>,
    reply: Option<(SyncSender<Reply>, Receiver<Reply>, Arc<Remote>)>,
}

impl Verifier {
    /// Binds the reply channel to the loop's wake-up handle (once the loop exists).
    pub fn bind(&mut self, wake: Arc<Remote>) {
        let (tx, rx) = mpsc::sync_channel(QUEUE_MAX);
        self.reply = Some((tx, rx, wake));
    }

    /// `false`: the queue is full (or the pool gone); the caller answers busy.
    pub fn submit(&self, conn: ConnId, generation: u32, job: Box<VerifyJob>) -> bool {
        let Some((reply, _, wake)) = &self.reply else {
            return false;
        };
        let req = Request {
            conn,
            generation,
            job,
            reply: reply.clone(),
            wake: wake.clone(),
        };
        match self.tx.try_send(req) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Replies ready now, at most `max` (the loop comes back next turn for more).
    pub fn drain(&self, max: usize, mut f: impl FnMut(Reply)) {
        let Some((_, rx, _)) = &self.reply else {
            return;
        };
        for _ in 0..max {
            match rx.try_recv() {
                Ok(r) => f(r),
                Err(_) => return,
            }
        }
    }
}

/// Reads the password and ACL files `cfg` names into a policy: at start-up and on
/// each reload. `Ok(None)`: nothing to check (no files, anonymous allowed). Errors
/// name the key and the file.
pub fn load_policy(cfg: &crate::config::Config) -> Result<Option<AuthPolicy>, String> {
    use crate::auth::{AclFile, PasswordFile};
    let read = |key: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("{key} {path}: {e}"))
    };
    let passwords = match &cfg.password_file {
        Some(p) => Some(
            PasswordFile::parse(&read("password_file", p)?)
                .map_err(|e| format!("password_file {p}: {e}"))?,
        ),
        None => None,
    };
    let acl = match &cfg.acl_file {
        Some(p) => {
            Some(AclFile::parse(&read("acl_file", p)?).map_err(|e| format!("acl_file {p}: {e}"))?)
        }
        None => None,
    };
    let policy = AuthPolicy::new(passwords, acl, cfg.anonymous_allowed()).with_jwt(load_jwt(cfg)?);
    Ok((!policy.is_open()).then_some(policy))
}

/// The JWT keys `cfg` names, `None` when none is set. Errors name the key and file.
fn load_jwt(cfg: &crate::config::Config) -> Result<Option<crate::auth::JwtAuth>, String> {
    use crate::auth::{JwtAuth, JwtSettings, TokenField};
    if !cfg.jwt_enabled() {
        return Ok(None);
    }
    let read =
        |key: &str, path: &str| std::fs::read(path).map_err(|e| format!("{key} {path}: {e}"));
    let secret = match &cfg.jwt_secret_file {
        Some(p) => {
            let mut s = read("jwt_secret_file", p)?;
            while s.last().is_some_and(u8::is_ascii_whitespace) {
                s.pop();
            }
            if s.is_empty() {
                return Err(format!("jwt_secret_file {p}: the file is empty"));
            }
            Some(s)
        }
        None => None,
    };
    let public = match &cfg.jwt_public_key_file {
        Some(p) => Some(read("jwt_public_key_file", p)?),
        None => None,
    };
    let settings = JwtSettings {
        from: match cfg.jwt_from.as_str() {
            "username" => TokenField::Username,
            _ => TokenField::Password,
        },
        username_claim: cfg.jwt_username_claim.clone(),
        issuer: cfg.jwt_issuer.clone(),
        audience: cfg.jwt_audience.clone(),
        leeway_s: cfg.jwt_leeway_s,
    };
    let jwt = JwtAuth::new(settings, secret.as_deref(), public.as_deref()).map_err(|e| {
        match (&cfg.jwt_public_key_file, &cfg.jwt_secret_file) {
            (Some(p), _) if e.contains("PEM") => format!("jwt_public_key_file {p}: {e}"),
            _ => format!("jwt: {e}"),
        }
    })?;
    Ok(Some(jwt))
}
