//! MQTT over WebSocket (RFC 6455; MQTT 3.1.1 and 5.0 section 6), sans-IO: the
//! upgrade handshake and the framing between the socket's bytes and the MQTT decoder.
//!
//! What this folder owns:
//! - `handshake`: the HTTP/1.1 Upgrade request (httparse) and its answer, `101` or a
//!   refusal with an HTTP status.
//! - `frame`: frames in, MQTT bytes out, in place; MQTT bytes out as one binary frame
//!   per flush. Headers are parsed and written by tungstenite's `FrameHeader` (the
//!   frame primitives of the most used Rust WebSocket crate, fuzzed upstream), so
//!   this code only decides what each frame means for MQTT.
//! - `session`: one connection's WebSocket state ([`WsSession`]).
//!
//! One error enum ([`WsError`]), mapped in one place ([`WsError::answer`]) to the
//! HTTP status or close code the peer is told before the connection closes.

pub mod frame;
pub mod handshake;
pub mod session;

use std::fmt;

pub use session::WsSession;

/// A WebSocket listener's settings (`ws://` and `wss://` listeners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// The request path upgrades are accepted on (`/mqtt` by default); any other is 404.
    pub path: String,
    /// `Origin` values a browser page may connect from; empty: any.
    pub allowed_origins: Vec<String>,
    /// Largest frame payload accepted; a larger one closes with 1009. Frames are
    /// streamed into the MQTT decoder, not buffered, so this bounds what a peer may
    /// announce rather than memory (the decoder's `max_packet_size` and the shard's
    /// memory mark bound that).
    pub max_frame_bytes: u64,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Default of `ws_max_frame_bytes`: the largest MQTT packet (256 MiB remaining length
/// plus its 5-byte fixed header), so any packet the decoder accepts fits one frame.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 268_435_455 + 5;

/// Why a WebSocket connection ends. Every variant closes it, after the answer that
/// [`answer`](WsError::answer) gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// Not a well-formed HTTP/1.1 upgrade; the text says what is missing.
    BadRequest(&'static str),
    /// The request line and headers outgrew `MAX_REQUEST_BYTES` or the header count.
    RequestTooLarge,
    MethodNotAllowed,
    /// A path other than the listener's.
    NotFound,
    /// No `Upgrade: websocket`, or a WebSocket version other than 13.
    UpgradeRequired,
    /// Neither `mqtt` nor `mqttv3.1` among the offered subprotocols.
    NoMqttSubprotocol,
    /// `Origin` is not among the allowed origins.
    ForbiddenOrigin,
    /// A client frame without a mask (RFC 6455 5.1: the server must close).
    Unmasked,
    /// RSV bits set (no extension was negotiated).
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    BadOpcode,
    /// A control frame fragmented or over 125 bytes.
    BadControlFrame,
    /// A continuation with no message open, or a new message inside one.
    BadFragmentation,
    /// A text frame: MQTT travels in binary frames only (MQTT 6.0).
    TextFrame,
    /// A frame whose payload is over `max_frame_bytes`.
    FrameTooLarge(u64),
    /// A close frame whose code is not one a peer may send.
    BadCloseCode,
}

/// What the peer is told before the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status (during the handshake) with its reason phrase.
    Http(u16, &'static str),
    /// A close frame with this code (after it).
    Close(u16),
}

/// Close codes (RFC 6455 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

impl WsError {
    /// The one mapping from errors to what the wire says.
    pub fn answer(&self) -> Answer {
        use close_code::*;
        match self {
            WsError::BadRequest(_) => Answer::Http(400, "Bad Request"),
            WsError::NoMqttSubprotocol => Answer::Http(400, "Bad Request"),
            WsError::RequestTooLarge => Answer::Http(431, "Request Header Fields Too Large"),
            WsError::MethodNotAllowed => Answer::Http(405, "Method Not Allowed"),
            WsError::NotFound => Answer::Http(404, "Not Found"),
            WsError::UpgradeRequired => Answer::Http(426, "Upgrade Required"),
            WsError::ForbiddenOrigin => Answer::Http(403, "Forbidden"),
            WsError::Unmasked
            | WsError::ReservedBits
            | WsError::BadOpcode
            | WsError::BadControlFrame
            | WsError::BadFragmentation
            | WsError::BadCloseCode => Answer::Close(PROTOCOL_ERROR),
            WsError::TextFrame => Answer::Close(UNSUPPORTED_DATA),
            WsError::FrameTooLarge(_) => Answer::Close(MESSAGE_TOO_BIG),
        }
    }
}

/// WebSocket connections refused or closed for an error, by the answer they got: one
/// counter per HTTP status of a refused upgrade, and per close code after it (the
/// exit log names them `ws_refused.<reason>`; `/metrics` as
/// `ringmq_websocket_refused_total{reason}`, the table in `metrics/families.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsRefused {
    /// 400: not a well-formed upgrade request.
    pub bad_request: u64,
    /// 400: no `mqtt` or `mqttv3.1` subprotocol offered.
    pub no_mqtt_subprotocol: u64,
    /// 431: request head too large.
    pub request_too_large: u64,
    /// 405: not a GET.
    pub method_not_allowed: u64,
    /// 404: another path than the listener's.
    pub not_found: u64,
    /// 426: not a WebSocket 13 upgrade.
    pub upgrade_required: u64,
    /// 403: `Origin` not allowed.
    pub forbidden_origin: u64,
    /// Close 1002: a frame breaking RFC 6455 (unmasked, RSV bits, reserved opcode,
    /// bad control frame or fragmentation, bad close code).
    pub protocol_error: u64,
    /// Close 1003: a text frame.
    pub text_frame: u64,
    /// Close 1009: a frame over `ws_max_frame_bytes`.
    pub frame_too_large: u64,
}

impl WsRefused {
    /// Counts `e` under its answer (the same split as [`WsError::answer`]).
    pub fn count(&mut self, e: &WsError) {
        let n = match e {
            WsError::BadRequest(_) => &mut self.bad_request,
            WsError::NoMqttSubprotocol => &mut self.no_mqtt_subprotocol,
            WsError::RequestTooLarge => &mut self.request_too_large,
            WsError::MethodNotAllowed => &mut self.method_not_allowed,
            WsError::NotFound => &mut self.not_found,
            WsError::UpgradeRequired => &mut self.upgrade_required,
            WsError::ForbiddenOrigin => &mut self.forbidden_origin,
            WsError::Unmasked
            | WsError::ReservedBits
            | WsError::BadOpcode
            | WsError::BadControlFrame
            | WsError::BadFragmentation
            | WsError::BadCloseCode => &mut self.protocol_error,
            WsError::TextFrame => &mut self.text_frame,
            WsError::FrameTooLarge(_) => &mut self.frame_too_large,
        };
        *n += 1;
    }

    /// Adds `b` into `self`, field by field (destructured without `..`, so a new
    /// reason does not compile until it is merged).
    pub fn add(&mut self, b: &WsRefused) {
        let WsRefused {
            bad_request,
            no_mqtt_subprotocol,
            request_too_large,
            method_not_allowed,
            not_found,
            upgrade_required,
            forbidden_origin,
            protocol_error,
            text_frame,
            frame_too_large,
        } = b;
        self.bad_request += bad_request;
        self.no_mqtt_subprotocol += no_mqtt_subprotocol;
        self.request_too_large += request_too_large;
        self.method_not_allowed += method_not_allowed;
        self.not_found += not_found;
        self.upgrade_required += upgrade_required;
        self.forbidden_origin += forbidden_origin;
        self.protocol_error += protocol_error;
        self.text_frame += text_frame;
        self.frame_too_large += frame_too_large;
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::BadRequest(why) => write!(f, "bad upgrade request: {why}"),
            WsError::RequestTooLarge => write!(
                f,
                "upgrade request over {} bytes or {} headers",
                handshake::MAX_REQUEST_BYTES,
                32
            ),
            WsError::MethodNotAllowed => write!(f, "upgrade request is not a GET"),
            WsError::NotFound => write!(f, "no WebSocket endpoint at that path"),
            WsError::UpgradeRequired => {
                write!(
                    f,
                    "not a WebSocket 13 upgrade (Upgrade: websocket, Sec-WebSocket-Version: 13)"
                )
            }
            WsError::NoMqttSubprotocol => {
                write!(f, "Sec-WebSocket-Protocol offers neither mqtt nor mqttv3.1")
            }
            WsError::ForbiddenOrigin => write!(f, "Origin not in ws_allowed_origins"),
            WsError::Unmasked => write!(f, "client frame not masked"),
            WsError::ReservedBits => write!(f, "frame with RSV bits set"),
            WsError::BadOpcode => write!(f, "frame with a reserved opcode"),
            WsError::BadControlFrame => write!(f, "control frame fragmented or over 125 bytes"),
            WsError::BadFragmentation => write!(f, "continuation frame out of place"),
            WsError::TextFrame => write!(f, "text frame (MQTT needs binary frames)"),
            WsError::FrameTooLarge(n) => write!(f, "frame of {n} bytes over ws_max_frame_bytes"),
            WsError::BadCloseCode => write!(f, "close frame with an invalid code"),
        }
    }
}

impl std::error::Error for WsError {}

/// The fuzz target `ws_frame` (and `cargo test`, over its seeds): a WebSocket session
/// fed `data` cut into reads. With the first byte odd, a valid upgrade request comes
/// first so the framing path is reached; the first byte's high bits pick the read
/// sizes. Nothing may panic, the MQTT bytes never outgrow the input, bytes held back
/// between reads stay within their bound, and nothing is read after the end.
pub fn check_session(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let config = WsConfig {
        max_frame_bytes: 4096,
        ..WsConfig::default()
    };
    let mut session = WsSession::new(std::sync::Arc::new(config));
    let mut input = Vec::new();
    if first & 1 == 1 {
        input.extend_from_slice(
            b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        );
    }
    input.extend_from_slice(rest);
    let step = usize::from(first >> 1) + 1;
    let mut total_in = 0;
    let mut total_out = 0;
    for chunk in input.chunks(step) {
        let was_ended = session.ended();
        let mut buf = Vec::new();
        session.restore_pending(&mut buf);
        let held = buf.len();
        assert!(
            held <= handshake::MAX_REQUEST_BYTES + step,
            "held back {held} bytes"
        );
        buf.extend_from_slice(chunk);
        session.on_recv(&mut buf, 0);
        total_in += chunk.len();
        total_out += buf.len();
        assert!(total_out <= total_in, "more MQTT bytes than were received");
        if was_ended {
            assert!(buf.is_empty(), "bytes read after the end");
        }
        session.write(chunk);
        let _ = session.take_out();
    }
}

#[cfg(test)]
mod tests;
