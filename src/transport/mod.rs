//! Per-connection byte transforms between `io` and the shard's decoder (sans-IO):
//! plain bytes pass through untouched (the worker holds no transform at all for a
//! plain connection, so plaintext pays one `Option` test per receive), TLS runs a
//! rustls `ServerConnection` driven from byte slices ([`tls::TlsSession`]), and
//! WebSocket framing ([`ws::WsSession`]) runs alone or inside TLS.
//!
//! What this layer owns:
//! - `tls`: one connection's TLS state; received ciphertext in, plaintext out for the
//!   shard, shard output in, ciphertext out for `io`.
//! - `material`: certificates, keys and client CAs read from PEM into a shared
//!   `rustls::ServerConfig` (SNI over several certificates, ALPN `mqtt`, TLS 1.2 and
//!   1.3, stateless TLS 1.3 session tickets when enabled), and the reloadable holder
//!   SIGHUP swaps, which keeps the listener's ticket keys across reloads.
//! - `identity`: the username a client certificate gives (CN or a SAN).
//! - `ws`: MQTT over WebSocket, the upgrade and the framing (`ws/mod.rs`).
//! - `stack`: [`Transport`], the transforms one connection holds (TLS, WebSocket,
//!   or WebSocket inside TLS), as the worker sees them.
//! - `client`: the client side (a bridge's connection to a remote broker): a rustls
//!   `ClientConnection` from byte slices, and its config from a CA file.
//! - `testkit` (tests and the `testkit` feature): the `tls` fuzz target's checks.
//!
//! One error enum ([`TransportError`]); the worker maps every variant to a close.
//! WebSocket errors have their own ([`ws::WsError`]) because each is answered on the
//! wire first (an HTTP status or a close code) and the worker then closes.

pub mod client;
pub mod identity;
pub mod material;
mod records;
pub mod stack;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tls;
pub mod ws;

use std::fmt;

pub use material::{ListenerTls, TlsFiles, TlsMaterial};
pub use stack::Transport;
pub use tls::TlsSession;
pub use ws::{WsConfig, WsSession};

/// Why a transform gave up on a connection. Every variant closes it: TLS has no way to
/// resynchronise after a bad record, and a peer that sent one is not speaking TLS.
#[derive(Debug)]
pub enum TransportError {
    /// The peer broke the TLS protocol, or its certificate was refused; rustls has
    /// queued the alert that says so (the worker may flush it before closing).
    Tls(rustls::Error),
    /// More handshake or record bytes than rustls accepts buffered (64 KiB of
    /// handshake, one 16 KiB record otherwise).
    Oversized,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Tls(e) => write!(f, "tls: {e}"),
            TransportError::Oversized => write!(f, "tls: record or handshake too large"),
        }
    }
}

impl std::error::Error for TransportError {}

/// The rustls crypto provider this build uses: aws-lc-rs by default, `ring` with the
/// cargo feature of that name (and without the default one).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let p = rustls::crypto::aws_lc_rs::default_provider();
    // rustls 0.23.48 deprecates it (no post-quantum key exchange); still offered for
    // platforms aws-lc-rs does not build on, as the issue asks.
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    #[allow(deprecated)]
    let p = rustls::crypto::ring::default_provider();
    std::sync::Arc::new(p)
}

/// A stateless TLS session ticketer from the same provider: tickets are sealed with
/// a key only this process holds, and rustls rotates it every 6 hours (keeping the
/// previous one, so a ticket stays valid for up to 12), so resumption needs no
/// per-session state in the broker however many devices hold tickets.
pub fn ticketer() -> Result<std::sync::Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    let t = rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let t = rustls::crypto::ring::Ticketer::new();
    t
}

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!("ringmq needs a TLS crypto provider: the `aws-lc-rs` (default) or `ring` feature");

#[cfg(test)]
mod tests;
