//! JWT authentication (sans-IO): the configured keys and claim rules (`JwtAuth`), and
//! the check of one token presented at CONNECT in the password field (or the
//! username field, `jwt_from = "username"`, as EMQX's JWT authenticator allows).
//!
//! Signatures are verified by `jsonwebtoken` (HS256 with a shared secret, RS256 or
//! ES256 with a public key in PEM). `exp` is required, `nbf` honoured, `iss` and
//! `aud` checked when configured; times are compared here against the `now` the
//! caller passes (the verifier pool reads the clock), so tests control time. The
//! username comes from a configured claim (`username` by default) and never from
//! the CONNECT packet, so a token cannot be replayed under another user's ACL. An
//! `acl` claim in EMQX's shape (`{"pub": [...], "sub": [...], "all": [...]}`,
//! filters with `%c`/`%u`) becomes the connection's ACL instead of the ACL file's.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::acl::{AclFile, Rule, MAX_LEVELS, MAX_TOPIC, READ, WRITE};
use super::AuthError;

/// Which CONNECT field carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenField {
    #[default]
    Password,
    Username,
}

/// Rules from the configuration, before the key files are read.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    pub from: TokenField,
    pub username_claim: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
}

/// Rules in an `acl` claim at most; a token is not a place for a whole ACL file.
const CLAIM_RULES_MAX: usize = 256;
/// The longest token looked at (a CONNECT password may be 64 KiB).
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// The loaded keys and rules.
pub struct JwtAuth {
    settings: JwtSettings,
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("settings", &self.settings)
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("es256", &self.es256.is_some())
            .finish()
    }
}

/// Who a valid token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub username: String,
    /// The `acl` claim's rules (as `pattern` lines, so `%c`/`%u` apply); `None`: the
    /// token has no `acl` claim and the ACL file decides.
    pub rules: Option<AclFile>,
    /// Seconds from the check until `exp` (leeway included): the broker ends the
    /// connection then, so a token's lifetime bounds the session it opened.
    pub valid_for_s: u64,
}

impl JwtAuth {
    /// `secret`: the HS256 secret (the file's bytes, trailing whitespace trimmed by
    /// the caller); `public_pem`: an RSA (RS256) or EC P-256 (ES256) public key. The
    /// error names what is wrong with the key, for the caller to prefix with the file.
    pub fn new(
        settings: JwtSettings,
        secret: Option<&[u8]>,
        public_pem: Option<&[u8]>,
    ) -> Result<JwtAuth, String> {
        let hs256 = match secret {
            Some([]) => return Err("the HS256 secret is empty".into()),
            Some(s) => Some(DecodingKey::from_secret(s)),
            None => None,
        };
        let (mut rs256, mut es256) = (None, None);
        if let Some(pem) = public_pem {
            // The PEM's key type decides the algorithm; neither parse: not a key.
            match DecodingKey::from_ec_pem(pem) {
                Ok(k) => es256 = Some(k),
                Err(_) => match DecodingKey::from_rsa_pem(pem) {
                    Ok(k) => rs256 = Some(k),
                    Err(e) => {
                        return Err(format!("not an RSA or EC public key in PEM ({e})"));
                    }
                },
            }
        }
        if hs256.is_none() && rs256.is_none() && es256.is_none() {
            return Err("no key: set jwt_secret_file or jwt_public_key_file".into());
        }
        if settings.username_claim.is_empty() {
            return Err("jwt_username_claim is empty".into());
        }
        Ok(JwtAuth {
            settings,
            hs256,
            rs256,
            es256,
        })
    }

    pub fn from_field(&self) -> TokenField {
        self.settings.from
    }

    /// Whether `b` has a JWT's shape (three base64url parts, the header a JSON
    /// object): only such a password is checked as a token, so a password file can
    /// serve the other clients of the same listener.
    pub fn looks_like_token(b: &[u8]) -> bool {
        b.len() <= TOKEN_BYTES_MAX
            && b.starts_with(b"eyJ")
            && b.iter().filter(|&&c| c == b'.').count() == 2
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='))
    }

    /// Checks `token` at `now_unix_s`. `BadCredentials` (0x86 / rc 4): not a token,
    /// a bad signature, an unknown algorithm, expired, not yet valid, wrong issuer or
    /// audience, no username claim. `NotAuthorized` (0x87 / rc 5): a valid token
    /// whose `acl` claim is malformed.
    pub fn verify(&self, token: &[u8], now_unix_s: u64) -> Result<TokenIdentity, AuthError> {
        let bad = Err(AuthError::BadCredentials);
        if !Self::looks_like_token(token) {
            return bad;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return bad;
        };
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            Algorithm::ES256 => self.es256.as_ref(),
            _ => None,
        };
        let Some(key) = key else {
            return bad;
        };
        let mut v = Validation::new(header.alg);
        // Time is checked below against the caller's `now`, not the crate's clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        v.leeway = self.settings.leeway_s;
        match &self.settings.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.settings.issuer {
            v.set_issuer(&[i]);
            v.required_spec_claims.insert("iss".into());
        }
        if self.settings.audience.is_some() {
            v.required_spec_claims.insert("aud".into());
        }
        let Ok(data) = jsonwebtoken::decode::<Value>(token, key, &v) else {
            return bad;
        };
        let claims = data.claims;
        let leeway = self.settings.leeway_s;
        // `exp` is required: a token that never expires cannot be revoked.
        let valid_for_s = match claims.get("exp").and_then(Value::as_u64) {
            Some(exp) if now_unix_s <= exp.saturating_add(leeway) => {
                exp.saturating_add(leeway) - now_unix_s
            }
            _ => return bad,
        };
        match claims.get("nbf") {
            None => {}
            Some(n) => match n.as_u64() {
                Some(nbf) if now_unix_s.saturating_add(leeway) >= nbf => {}
                _ => return bad,
            },
        }
        let Some(username) = claims
            .get(&self.settings.username_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        else {
            return bad;
        };
        let rules = match claims.get("acl") {
            None => None,
            Some(acl) => Some(acl_claim(acl).ok_or(AuthError::NotAuthorized)?),
        };
        Ok(TokenIdentity {
            username: username.to_owned(),
            rules,
            valid_for_s,
        })
    }
}

/// The `acl` claim as pattern rules: `pub` → write, `sub` → read, `all` → both, in
/// that order. `None`: not an object of string lists, an invalid filter, or too many.
fn acl_claim(acl: &Value) -> Option<AclFile> {
    let obj = acl.as_object()?;
    let mut patterns = Vec::new();
    for (name, access) in [("pub", WRITE), ("sub", READ), ("all", READ | WRITE)] {
        let Some(list) = obj.get(name) else {
            continue;
        };
        for f in list.as_array()? {
            let filter = f.as_str()?;
            if crate::topic::validate_filter(filter.as_bytes(), MAX_TOPIC, MAX_LEVELS).is_err() {
                return None;
            }
            patterns.push(Rule {
                access,
                filter: filter.to_owned(),
            });
        }
    }
    if patterns.len() > CLAIM_RULES_MAX {
        return None;
    }
    Some(AclFile {
        patterns,
        ..AclFile::default()
    })
}

#[cfg(test)]
mod tests;
