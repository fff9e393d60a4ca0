//! The HTTP/1.1 Upgrade that opens a WebSocket (RFC 6455 section 4.2), sans-IO:
//! request bytes in, the `101 Switching Protocols` answer (or the refusal) out.
//! Parsed with `httparse`; the accept key is tungstenite's `derive_accept_key`
//! (SHA-1 + base64 from maintained crates, not written here).

use super::{WsConfig, WsError};

/// Largest upgrade request buffered (request line and headers). Browsers send well
/// under 2 KiB; cookies for the site can add more, 8 KiB is what nginx allows.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Headers parsed at most; a request with more is refused (431).
const MAX_HEADERS: usize = 32;

/// The subprotocols MQTT over WebSocket uses (MQTT 3.1.1 section 6, MQTT 5.0 section
/// 6): `mqtt`, and `mqttv3.1` that MQTT 3.1 clients still offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A complete, accepted upgrade: how many bytes of the input it used, and the answer.
#[derive(Debug)]
pub struct Upgrade {
    pub consumed: usize,
    pub response: Vec<u8>,
}

/// Reads the upgrade request at the start of `input`. `Ok(None)`: incomplete, wait for
/// more (the caller bounds it with [`MAX_REQUEST_BYTES`]).
pub fn parse(input: &[u8], config: &WsConfig) -> Result<Option<Upgrade>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_REQUEST_BYTES => {
            return Err(WsError::RequestTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WsError::RequestTooLarge),
        Err(_) => return Err(WsError::BadRequest("not an HTTP/1.1 request")),
    };
    if consumed > MAX_REQUEST_BYTES {
        return Err(WsError::RequestTooLarge);
    }
    // Guard clauses in the order a client most likely fails them.
    if req.method != Some("GET") {
        return Err(WsError::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(WsError::BadRequest("a WebSocket upgrade needs HTTP/1.1"));
    }
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != config.path {
        return Err(WsError::NotFound);
    }
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(WsError::UpgradeRequired);
    }
    if !has_token("connection", "upgrade") {
        return Err(WsError::BadRequest("Connection: Upgrade missing"));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(WsError::UpgradeRequired);
    }
    let Some(key) = header("sec-websocket-key").next().map(str::trim) else {
        return Err(WsError::BadRequest("Sec-WebSocket-Key missing"));
    };
    // RFC 6455 4.1: the key is 16 random bytes in base64, which is 24 characters.
    if key.len() != 24 || !key.ends_with("==") {
        return Err(WsError::BadRequest(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    if !config.allowed_origins.is_empty() {
        // Browsers always send Origin; a client without one is not a browser page
        // another site could point at us, so the list does not apply to it.
        if let Some(origin) = header("origin").next() {
            let origin = origin.trim();
            if !config
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
            {
                return Err(WsError::ForbiddenOrigin);
            }
        }
    }
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // `mqtt` first when both are offered: the name both MQTT specifications give.
    let Some(subprotocol) = SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    else {
        return Err(WsError::NoMqttSubprotocol);
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
    )
    .into_bytes();
    Ok(Some(Upgrade { consumed, response }))
}

/// The HTTP answer to a refused upgrade: the status, and a body naming what was
/// wrong so a person with curl or a browser console sees why.
pub fn refusal(status: u16, reason: &str, detail: &str, config: &WsConfig) -> Vec<u8> {
    let body = match status {
        404 => format!(
            "{detail}: MQTT over WebSocket is served at {}\n",
            config.path
        ),
        _ => format!("{detail}\n"),
    };
    let extra = match status {
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        405 => "Allow: GET\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}
