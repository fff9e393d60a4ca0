//! Listener keys: the addresses the broker accepts MQTT connections on, as URLs
//! (`[scheme://]host:port[/path]`; `mqtt` plain, `mqtts` TLS, `ws` MQTT over
//! WebSocket, `wss` over WebSocket inside TLS, the path for the last two), the TLS
//! flags every TLS listener uses, the WebSocket flags every WebSocket listener uses,
//! the TOML `[[listener]]` tables that override both (and `allow_anonymous`) per
//! listener, and the HTTP
//! listener of the metrics endpoints.

use std::net::SocketAddr;

use clap::Args;

use super::cli::with_default;
use super::value::{addr, boolean, int, list, one_of, push_list, push_text, text, Expect, Raw};
use super::{Config, Loaded};

#[derive(Args, Debug, Default, Clone)]
pub struct ListenerArgs {
    /// Listener URL (repeatable).
    #[arg(long, value_name = "URL", help = with_default("Listener URL [scheme://]host:port[/path], scheme mqtt (plain, the default), mqtts (TLS), ws (MQTT over WebSocket; the path defaults to /mqtt) or wss (WebSocket over TLS); repeatable", "mqtt://0.0.0.0:1883; mqtt://127.0.0.1:1883 while no password file is set and --allow-anonymous is not true"))]
    pub listen: Vec<String>,
    /// Certificate chain of TLS listeners (PEM, repeatable for SNI).
    #[arg(long, value_name = "FILE", help = with_default("Certificate chain (PEM, end entity first) of every mqtts listener; repeat with --tls-key for several names (SNI picks, the first is the fallback)", "none"))]
    pub tls_cert: Vec<String>,
    /// Private keys of the certificates, same order.
    #[arg(long, value_name = "FILE", help = with_default("Private key (PEM) of each --tls-cert, same order", "none"))]
    pub tls_key: Vec<String>,
    /// CA that client certificates are checked against.
    #[arg(long, value_name = "FILE", help = with_default("CA certificates (PEM) client certificates are verified against; clients may then present one", "none"))]
    pub tls_client_ca: Option<String>,
    /// Refuse TLS clients without a valid certificate.
    #[arg(long, value_name = "BOOL", help = with_default("Refuse TLS clients that present no certificate signed by --tls-client-ca", "false"))]
    pub tls_require_certificate: Option<String>,
    /// Username taken from a client certificate.
    #[arg(long, value_name = "FROM", help = with_default("Username taken from a verified client certificate: none, cn (subject common name) or san (first DNS name, e-mail or URI)", "none"))]
    pub tls_identity_username: Option<String>,
    /// TLS 1.3 resumption by stateless session tickets.
    #[arg(long, value_name = "BOOL", help = with_default("Give each TLS 1.3 client one stateless session ticket per full handshake, so it can resume (no certificate signature) when it reconnects; ticket keys rotate every 6 h and survive SIGHUP", DEFAULT_TLS_SESSION_TICKETS_STR))]
    pub tls_session_tickets: Option<String>,
    /// Origins browser pages may open WebSocket listeners from.
    #[arg(long, value_name = "ORIGIN", help = with_default("Origin a browser page may connect to a ws/wss listener from, e.g. https://app.example (repeatable; others get 403; clients sending no Origin are not browsers and are let in)", "any"))]
    pub ws_allowed_origins: Vec<String>,
    /// Largest WebSocket frame accepted.
    #[arg(long, value_name = "BYTES", help = with_default("Largest WebSocket frame payload a ws/wss client may send; a larger one is closed with 1009 (frames stream into the MQTT decoder, so this is no buffer size)", DEFAULT_WS_MAX_FRAME_BYTES))]
    pub ws_max_frame_bytes: Option<String>,
    #[arg(long, value_name = "ADDR", help = with_default("HTTP listener for /metrics (Prometheus), /healthz, /readyz, /api/stats and the status page at /; none turns it off", "127.0.0.1:9883"))]
    pub http_listen: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "listen",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_require_certificate",
    "tls_identity_username",
    "tls_session_tickets",
    "ws_allowed_origins",
    "ws_max_frame_bytes",
    "http_listen",
];

/// Default of `tls_session_tickets` (see `transport/material.rs` for what a ticket
/// costs a full handshake and saves a resumed one).
pub const DEFAULT_TLS_SESSION_TICKETS: bool = true;
const DEFAULT_TLS_SESSION_TICKETS_STR: &str = "true";

/// Default of `ws_max_frame_bytes`: the largest MQTT packet (256 MiB remaining
/// length and its 5-byte fixed header), so every packet fits one frame.
pub const DEFAULT_WS_MAX_FRAME_BYTES: u64 = 268_435_455 + 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            cert: Vec::new(),
            key: Vec::new(),
            client_ca: None,
            require_certificate: false,
            identity_username: IdentityUsername::None,
            session_tickets: DEFAULT_TLS_SESSION_TICKETS,
        }
    }
}

impl Scheme {
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

/// One `listen` entry or `[[listener]]` url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    pub scheme: Scheme,
    pub addr: SocketAddr,
    /// The WebSocket path (`/mqtt` unless given); empty for mqtt and mqtts.
    pub path: String,
}

impl std::fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        write!(f, "{s}://{}{}", self.addr, self.path)
    }
}

/// Which part of a verified client certificate becomes the username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityUsername {
    #[default]
    None,
    CommonName,
    SubjectAltName,
}

/// TLS settings: the `tls_*` keys, or a `[[listener]]` table's with those as fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Vec<String>,
    pub key: Vec<String>,
    pub client_ca: Option<String>,
    pub require_certificate: bool,
    pub identity_username: IdentityUsername,
    pub session_tickets: bool,
}

/// WebSocket settings: the `ws_*` keys, or a `[[listener]]` table's with those as
/// fallback, and the URL's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    pub path: String,
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: u64,
}

/// A `[[listener]]` table: a URL and the TLS and WebSocket keys it overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTable {
    pub url: ListenUrl,
    pub cert: Option<Vec<String>>,
    pub key: Option<Vec<String>>,
    pub client_ca: Option<String>,
    pub require_certificate: Option<bool>,
    pub identity_username: Option<IdentityUsername>,
    pub session_tickets: Option<bool>,
    pub ws_allowed_origins: Option<Vec<String>>,
    pub ws_max_frame_bytes: Option<u64>,
    /// Clients without credentials on this listener, whatever the global
    /// `allow_anonymous` says (Mosquitto's per-listener `allow_anonymous`).
    pub allow_anonymous: Option<bool>,
}

/// A listener to bind: where, its TLS settings (`None`: no TLS), its WebSocket
/// settings (`None`: MQTT straight on the socket or TLS) and its own anonymous
/// rule (`None`: the global one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub url: ListenUrl,
    pub tls: Option<TlsSettings>,
    pub ws: Option<WsSettings>,
    pub allow_anonymous: Option<bool>,
}

const URL_EXPECTED: &str = "a listener URL like mqtt://0.0.0.0:1883, mqtts://[::]:8883, ws://0.0.0.0:8080/mqtt or 0.0.0.0:1883 (schemes mqtt, mqtts, ws, wss)";

fn url(raw: &Raw) -> Result<ListenUrl, Expect> {
    let Raw::Text(s) = raw else {
        return Err(URL_EXPECTED.into());
    };
    let s = s.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("mqtt".to_string(), s),
    };
    let scheme = match scheme.as_str() {
        "mqtt" | "tcp" => Scheme::Mqtt,
        "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
        "ws" => Scheme::Ws,
        "wss" => Scheme::Wss,
        _ => return Err(URL_EXPECTED.into()),
    };
    let (rest, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = match (scheme.is_websocket(), path) {
        (false, "") => String::new(),
        (false, _) => {
            return Err(format!(
                "{URL_EXPECTED}; a path is only for ws:// and wss://"
            ))
        }
        (true, "") => "/mqtt".to_string(),
        (true, p) if p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace()) => {
            return Err(format!("{URL_EXPECTED}; the path is a plain /path"))
        }
        (true, p) => p.to_string(),
    };
    let addr = addr(&Raw::Text(rest.to_string())).map_err(|_| URL_EXPECTED.to_string())?;
    Ok(ListenUrl { scheme, addr, path })
}

fn paths(raw: &Raw) -> Result<Vec<String>, Expect> {
    list(raw)
        .iter()
        .map(|r| text(r).map_err(|_| "a file path or a list of them".to_string()))
        .collect()
}

/// A CA file, or `""` for none.
fn ca_path(raw: &Raw) -> Result<Option<String>, Expect> {
    let path = text(raw).map_err(|_| "a file path, or \"\" for none".to_string())?;
    Ok((!path.trim().is_empty()).then_some(path))
}

fn origins(raw: &Raw) -> Result<Vec<String>, Expect> {
    let expected = || "origins like https://app.example, or [] for any".to_string();
    list(raw)
        .iter()
        .map(|r| {
            let o = text(r).map_err(|_| expected())?;
            let o = o.trim().trim_end_matches('/').to_string();
            if o.is_empty() || !o.contains("://") {
                return Err(expected());
            }
            Ok(o)
        })
        .collect()
}

fn max_frame(raw: &Raw) -> Result<u64, Expect> {
    int(raw, 2, DEFAULT_WS_MAX_FRAME_BYTES)
}

fn identity(raw: &Raw) -> Result<IdentityUsername, Expect> {
    Ok(match one_of(raw, &["none", "cn", "san"])? {
        "cn" => IdentityUsername::CommonName,
        "san" => IdentityUsername::SubjectAltName,
        _ => IdentityUsername::None,
    })
}

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "listen" => {
            let urls = list(raw).iter().map(url).collect::<Result<Vec<_>, _>>()?;
            cfg.listen = urls;
        }
        "http_listen" => {
            let off = matches!(raw, Raw::Text(s) if s.trim().eq_ignore_ascii_case("none"));
            cfg.http_listen = if off {
                None
            } else {
                Some(addr(raw).map_err(|e| format!("{e}, or none"))?)
            };
        }
        "tls_cert" => cfg.tls.cert = paths(raw)?,
        "tls_key" => cfg.tls.key = paths(raw)?,
        "tls_client_ca" => cfg.tls.client_ca = ca_path(raw)?,
        "tls_require_certificate" => cfg.tls.require_certificate = boolean(raw)?,
        "tls_identity_username" => cfg.tls.identity_username = identity(raw)?,
        "tls_session_tickets" => cfg.tls.session_tickets = boolean(raw)?,
        "ws_allowed_origins" => cfg.ws_allowed_origins = origins(raw)?,
        "ws_max_frame_bytes" => cfg.ws_max_frame_bytes = max_frame(raw)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Keys a `[[listener]]` table may hold.
const TABLE_KEYS: &[&str] = &[
    "url",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_require_certificate",
    "tls_identity_username",
    "tls_session_tickets",
    "ws_allowed_origins",
    "ws_max_frame_bytes",
    "allow_anonymous",
];

/// Parses one `[[listener]]` table. `Err((key, expected))` names the bad key.
pub(super) fn table(t: &[(String, Raw)]) -> Result<ListenerTable, (String, Expect)> {
    let mut out = ListenerTable {
        url: ListenUrl {
            scheme: Scheme::Mqtt,
            addr: SocketAddr::from(([0, 0, 0, 0], 1883)),
            path: String::new(),
        },
        cert: None,
        key: None,
        client_ca: None,
        require_certificate: None,
        identity_username: None,
        session_tickets: None,
        ws_allowed_origins: None,
        ws_max_frame_bytes: None,
        allow_anonymous: None,
    };
    let mut has_url = false;
    for (key, raw) in t {
        let k = key.as_str();
        let r = match k {
            "url" => url(raw).map(|u| {
                out.url = u;
                has_url = true;
            }),
            "tls_cert" => paths(raw).map(|v| out.cert = Some(v)),
            "tls_key" => paths(raw).map(|v| out.key = Some(v)),
            "tls_client_ca" => ca_path(raw).map(|v| out.client_ca = v),
            "tls_require_certificate" => boolean(raw).map(|v| out.require_certificate = Some(v)),
            "tls_identity_username" => identity(raw).map(|v| out.identity_username = Some(v)),
            "tls_session_tickets" => boolean(raw).map(|v| out.session_tickets = Some(v)),
            "ws_allowed_origins" => origins(raw).map(|v| out.ws_allowed_origins = Some(v)),
            "ws_max_frame_bytes" => max_frame(raw).map(|v| out.ws_max_frame_bytes = Some(v)),
            "allow_anonymous" => boolean(raw).map(|v| out.allow_anonymous = Some(v)),
            _ => Err(format!("one of {}", TABLE_KEYS.join(", "))),
        };
        r.map_err(|e| (k.to_string(), e))?;
    }
    if !has_url {
        return Err(("url".into(), URL_EXPECTED.into()));
    }
    Ok(out)
}

impl Config {
    /// Every listener to bind: the `listen` URLs with the `tls_*` and `ws_*` keys,
    /// then the `[[listener]]` tables with theirs (falling back to the global keys).
    pub fn listeners(&self) -> Vec<Listener> {
        let ws = |u: &ListenUrl, origins: Option<&Vec<String>>, max: Option<u64>| {
            u.scheme.is_websocket().then(|| WsSettings {
                path: u.path.clone(),
                allowed_origins: origins.unwrap_or(&self.ws_allowed_origins).clone(),
                max_frame_bytes: max.unwrap_or(self.ws_max_frame_bytes),
            })
        };
        let global = |u: &ListenUrl| Listener {
            url: u.clone(),
            tls: u.scheme.is_tls().then(|| self.tls.clone()),
            ws: ws(u, None, None),
            allow_anonymous: None,
        };
        let mut out: Vec<Listener> = self.listen.iter().map(global).collect();
        for t in &self.listener {
            let tls = t.url.scheme.is_tls().then(|| TlsSettings {
                cert: t.cert.clone().unwrap_or_else(|| self.tls.cert.clone()),
                key: t.key.clone().unwrap_or_else(|| self.tls.key.clone()),
                client_ca: t.client_ca.clone().or_else(|| self.tls.client_ca.clone()),
                require_certificate: t
                    .require_certificate
                    .unwrap_or(self.tls.require_certificate),
                identity_username: t.identity_username.unwrap_or(self.tls.identity_username),
                session_tickets: t.session_tickets.unwrap_or(self.tls.session_tickets),
            });
            out.push(Listener {
                url: t.url.clone(),
                tls,
                ws: ws(&t.url, t.ws_allowed_origins.as_ref(), t.ws_max_frame_bytes),
                allow_anonymous: t.allow_anonymous,
            });
        }
        out
    }
}

/// Checks across keys, once everything is set: `(key, expected, got)` on failure.
pub(super) fn check(cfg: &Config) -> Result<(), (String, Expect, String)> {
    let listeners = cfg.listeners();
    if listeners.is_empty() {
        return Err((
            "listen".into(),
            "at least one listener (listen or [[listener]])".into(),
            "none".into(),
        ));
    }
    for l in &listeners {
        let Some(tls) = &l.tls else { continue };
        if tls.cert.is_empty() {
            return Err((
                "tls_cert".into(),
                format!("a certificate file for the TLS listener {}", l.url),
                "none".into(),
            ));
        }
        if tls.cert.len() != tls.key.len() {
            return Err((
                "tls_key".into(),
                format!(
                    "one key file per certificate file ({}) for the TLS listener {}",
                    tls.cert.len(),
                    l.url
                ),
                format!("{} key file(s)", tls.key.len()),
            ));
        }
        if tls.require_certificate && tls.client_ca.is_none() {
            return Err((
                "tls_client_ca".into(),
                format!(
                    "a CA file, since tls_require_certificate is true for the TLS listener {}",
                    l.url
                ),
                "none".into(),
            ));
        }
    }
    Ok(())
}

impl ListenerArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_list(v, "listen", &self.listen);
        push_list(v, "tls_cert", &self.tls_cert);
        push_list(v, "tls_key", &self.tls_key);
        push_text(v, "tls_client_ca", &self.tls_client_ca);
        push_text(v, "tls_require_certificate", &self.tls_require_certificate);
        push_text(v, "tls_identity_username", &self.tls_identity_username);
        push_text(v, "tls_session_tickets", &self.tls_session_tickets);
        push_list(v, "ws_allowed_origins", &self.ws_allowed_origins);
        push_text(v, "ws_max_frame_bytes", &self.ws_max_frame_bytes);
        push_text(v, "http_listen", &self.http_listen);
    }
}

/// The loopback address the default listener falls back to without authentication.
pub const LOOPBACK_DEFAULT: &str = "127.0.0.1:1883";

/// Secure by default, as Mosquitto 2: with no password file, no explicit
/// `allow_anonymous = true` and no `listen` given, the default listener binds
/// loopback only. Returns the one line start-up prints saying how to open it.
pub fn secure_default(loaded: &mut Loaded) -> Option<String> {
    let c = &mut loaded.config;
    if loaded.explicit.iter().any(|k| k == "listen")
        || c.password_file.is_some()
        || c.jwt_enabled()
        || c.allow_anonymous == Some(true)
    {
        return None;
    }
    c.listen = vec![ListenUrl {
        scheme: Scheme::Mqtt,
        addr: LOOPBACK_DEFAULT.parse().expect("a valid address"),
        path: String::new(),
    }];
    Some(format!(
        "ringmq: no authentication configured, so only {LOOPBACK_DEFAULT} (this machine) is served; \
         to serve the network set --password-file FILE (see `ringmq passwd`) or \
         --allow-anonymous true, or name the addresses with --listen"
    ))
}
