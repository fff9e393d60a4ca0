//! The password file in Mosquitto's format (`user:hash`, one a line) and checking a
//! password against one stored hash: `$7$` PBKDF2-HMAC-SHA512, `$6$` salted SHA-512
//! (legacy), `$argon2id$` PHC strings. Pure: parsing takes text, hashing takes the salt.
//!
//! The hashing itself comes from RustCrypto crates (`pbkdf2`, `sha2`, `argon2`) and the
//! comparison from `subtle`: nothing here is hand-rolled crypto, only the framing
//! Mosquitto puts around it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::AuthError;

/// `mosquitto_passwd`'s iteration count for `$7$` (Mosquitto 2.0 `PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt length `mosquitto_passwd` writes (12 bytes, 16 base64 characters).
pub const SALT_LEN: usize = 12;
/// Longest accepted `$7$` iteration count: bounds the CPU one check can cost.
const MAX_ITERATIONS: u32 = 10_000_000;

/// One stored password hash, parsed once at load so a check does no parsing.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredHash {
    /// `$6$salt$hash`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512, output as long as `hash`.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$argon2id$v=19$m=..,t=..,p=..$salt$hash`, kept as the PHC string.
    Argon2id(String),
}

impl std::fmt::Debug for StoredHash {
    // Never print hash material into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredHash::Sha512 { .. } => f.write_str("$6$"),
            StoredHash::Pbkdf2 { iterations, .. } => write!(f, "$7${iterations}$"),
            StoredHash::Argon2id(_) => f.write_str("$argon2id$"),
        }
    }
}

/// Why a stored hash or a password-file line is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashFormatError {
    UnknownScheme,
    BadBase64,
    BadIterations,
    EmptyHash,
    BadPhc,
}

impl std::fmt::Display for HashFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HashFormatError::UnknownScheme => {
                "unknown hash scheme (expected $7$, $6$ or $argon2id$; plain-text passwords are refused)"
            }
            HashFormatError::BadBase64 => "salt or hash is not valid base64",
            HashFormatError::BadIterations => "iteration count is not a number in 1..=10000000",
            HashFormatError::EmptyHash => "salt or hash is empty",
            HashFormatError::BadPhc => "not a valid argon2id PHC string",
        })
    }
}

fn b64(s: &str) -> Result<Vec<u8>, HashFormatError> {
    let v = B64.decode(s).map_err(|_| HashFormatError::BadBase64)?;
    if v.is_empty() {
        return Err(HashFormatError::EmptyHash);
    }
    Ok(v)
}

impl StoredHash {
    pub fn parse(s: &str) -> Result<StoredHash, HashFormatError> {
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut it = rest.splitn(3, '$');
            let (Some(iter), Some(salt), Some(hash)) = (it.next(), it.next(), it.next()) else {
                return Err(HashFormatError::EmptyHash);
            };
            let iterations: u32 = iter.parse().map_err(|_| HashFormatError::BadIterations)?;
            if !(1..=MAX_ITERATIONS).contains(&iterations) {
                return Err(HashFormatError::BadIterations);
            }
            return Ok(StoredHash::Pbkdf2 {
                iterations,
                salt: b64(salt)?,
                hash: b64(hash)?,
            });
        }
        if let Some(rest) = s.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err(HashFormatError::EmptyHash);
            };
            return Ok(StoredHash::Sha512 {
                salt: b64(salt)?,
                hash: b64(hash)?,
            });
        }
        if s.starts_with("$argon2id$") {
            let h = argon2::PasswordHash::new(s).map_err(|_| HashFormatError::BadPhc)?;
            if h.salt.is_none() || h.hash.is_none() {
                return Err(HashFormatError::BadPhc);
            }
            return Ok(StoredHash::Argon2id(s.to_owned()));
        }
        Err(HashFormatError::UnknownScheme)
    }

    /// The slow part: runs on the verifier pool, never on an event loop (argon2id
    /// costs tens of MiB and milliseconds).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                bool::from(d.finalize().as_slice().ct_eq(hash))
            }
            StoredHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.ct_eq(hash))
            }
            StoredHash::Argon2id(phc) => {
                use argon2::PasswordVerifier;
                match argon2::PasswordHash::new(phc) {
                    Ok(h) => argon2::Argon2::default()
                        .verify_password(password, &h)
                        .is_ok(),
                    Err(_) => false,
                }
            }
        }
    }

    /// `$7$`, as `mosquitto_passwd` writes it: 64-byte PBKDF2-HMAC-SHA512 output,
    /// standard base64 with padding.
    pub fn new_pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> StoredHash {
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
        StoredHash::Pbkdf2 {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// The text form, as it appears after `user:` in the file.
    pub fn encode(&self) -> String {
        match self {
            StoredHash::Sha512 { salt, hash } => {
                format!("$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            StoredHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
            StoredHash::Argon2id(s) => s.clone(),
        }
    }
}

/// A parsed password file: user → stored hash, in file order (the order `passwd`
/// writes back). Lookups happen once per CONNECT, off the per-message path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    entries: Vec<(String, StoredHash)>,
    index: std::collections::HashMap<String, usize>,
}

impl PasswordFile {
    /// Parses the file's text. Blank lines and `#` comments are skipped, as Mosquitto
    /// does; any other line must be `user:hash`. The error names the line.
    pub fn parse(text: &str) -> Result<PasswordFile, AuthError> {
        let mut f = PasswordFile::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches(['\r', ' ', '\t']);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| AuthError::PasswordFile {
                line: i + 1,
                reason,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("expected user:hash".into()));
            };
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            let h = StoredHash::parse(hash).map_err(|e| bad(e.to_string()))?;
            if f.index.contains_key(user) {
                return Err(bad(format!("user {user:?} appears twice")));
            }
            f.upsert(user, h);
        }
        Ok(f)
    }

    pub fn get(&self, user: &str) -> Option<&StoredHash> {
        self.index.get(user).map(|&i| &self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a user or replaces their hash in place.
    pub fn upsert(&mut self, user: &str, hash: StoredHash) {
        match self.index.get(user) {
            Some(&i) => self.entries[i].1 = hash,
            None => {
                self.index.insert(user.to_owned(), self.entries.len());
                self.entries.push((user.to_owned(), hash));
            }
        }
    }

    /// Removes a user; `false` if there was none.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(i) = self.index.remove(user) else {
            return false;
        };
        self.entries.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        true
    }

    /// The file's text, one `user:hash` a line, as Mosquitto reads it.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (u, h) in &self.entries {
            s.push_str(u);
            s.push(':');
            s.push_str(&h.encode());
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The framing only; tests/auth.rs checks files made by Debian's `mosquitto_passwd`
    // and checks that Mosquitto accepts ours.
    #[test]
    fn pbkdf2_round_trip_and_framing() {
        let h = StoredHash::new_pbkdf2(b"secret", b"0123456789ab", DEFAULT_ITERATIONS);
        let text = h.encode();
        assert!(text.starts_with("$7$101$MDEyMzQ1Njc4OWFi$"), "{text}");
        // 64 bytes of hash → 88 base64 characters with padding.
        assert_eq!(text.rsplit('$').next().unwrap().len(), 88);
        let parsed = StoredHash::parse(&text).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.verify(b"secret"));
        assert!(!parsed.verify(b"Secret"));
        assert!(!parsed.verify(b""));
    }

    #[test]
    fn sha512_legacy() {
        let salt = b"saltsaltsalt";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let line = format!("$6${}${}", B64.encode(salt), B64.encode(d.finalize()));
        let h = StoredHash::parse(&line).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pw2"));
        assert_eq!(h.encode(), line);
    }

    #[test]
    fn argon2id_phc() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        // Small parameters keep the test fast; the format is what is under test.
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = a.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let h = StoredHash::parse(&phc).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"px"));
    }

    #[test]
    fn refuses_bad_hashes() {
        for (s, e) in [
            ("secret", HashFormatError::UnknownScheme),
            ("$5$abc$def", HashFormatError::UnknownScheme),
            ("$7$x$AAAA$AAAA", HashFormatError::BadIterations),
            ("$7$0$AAAA$AAAA", HashFormatError::BadIterations),
            ("$7$101$!!!!$AAAA", HashFormatError::BadBase64),
            ("$7$101$AAAA", HashFormatError::EmptyHash),
            ("$6$AAAA$", HashFormatError::EmptyHash),
            ("$argon2id$nonsense", HashFormatError::BadPhc),
        ] {
            assert_eq!(StoredHash::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn file_parse_names_the_line() {
        let good = StoredHash::new_pbkdf2(b"a", b"0123456789ab", 1).encode();
        let text = format!("# comment\n\nalice:{good}\r\nbob:{good}\n");
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.get("alice").unwrap().verify(b"a"));
        assert!(f.get("carol").is_none());
        let err = PasswordFile::parse(&format!("alice:{good}\nbob\n")).unwrap_err();
        assert_eq!(
            err,
            AuthError::PasswordFile {
                line: 2,
                reason: "expected user:hash".into()
            }
        );
        let err = PasswordFile::parse(&format!("a:{good}\na:{good}\n")).unwrap_err();
        assert!(matches!(err, AuthError::PasswordFile { line: 2, .. }));
    }

    #[test]
    fn upsert_remove_and_text_round_trip() {
        let h = |p: &[u8]| StoredHash::new_pbkdf2(p, b"0123456789ab", 1);
        let mut f = PasswordFile::default();
        f.upsert("a", h(b"1"));
        f.upsert("b", h(b"2"));
        f.upsert("c", h(b"3"));
        f.upsert("a", h(b"4"));
        assert!(f.remove("b"));
        assert!(!f.remove("b"));
        assert!(f.get("c").unwrap().verify(b"3"));
        assert!(f.get("a").unwrap().verify(b"4"));
        let again = PasswordFile::parse(&f.to_text()).unwrap();
        assert_eq!(again, f);
        assert!(f.to_text().starts_with("a:$7$1$"));
    }
}
