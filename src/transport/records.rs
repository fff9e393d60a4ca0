//! Moving bytes through a rustls connection from byte slices, written once for both
//! sides: [`super::TlsSession`] (a client's connection to us) and
//! [`super::client::TlsClient`] (a bridge's connection to a remote broker).

use std::io::{self, Read, Write};

use bytes::Bytes;
use rustls::ConnectionCommon;

use super::TransportError;

/// Feeds received ciphertext; appends the plaintext it yields to `plain`. After an
/// error, [`take`] may hold the alert that tells the peer.
pub(super) fn feed<D>(
    conn: &mut ConnectionCommon<D>,
    mut ciphertext: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), TransportError> {
    // Bounded: each pass consumes at least one byte of `ciphertext` or stops.
    while !ciphertext.is_empty() {
        let n = match conn.read_tls(&mut ciphertext) {
            Ok(n) => n,
            // rustls refuses more when a handshake message or record outgrows its
            // buffer: the peer sent something no honest peer sends.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(TransportError::Oversized)
            }
            Err(_) => 0,
        };
        let state = conn.process_new_packets().map_err(TransportError::Tls)?;
        // Drained at once, so rustls's plaintext buffer is empty at every read.
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let start = plain.len();
            plain.resize(start + available, 0);
            let got = conn.reader().read(&mut plain[start..]).unwrap_or(0);
            plain.truncate(start + got);
        }
        if n == 0 {
            // close_notify received: rustls reads nothing more.
            break;
        }
    }
    Ok(())
}

/// Queues plaintext; before the handshake ends rustls holds it until the keys are
/// ready.
pub(super) fn queue<D>(conn: &mut ConnectionCommon<D>, plaintext: &[u8]) {
    // Unbounded buffer (both sides call `set_buffer_limit(None)`, bounded by what
    // their owner hands them): a write into it does not fail.
    let _ = conn.writer().write_all(plaintext);
}

/// Everything queued for the wire (handshake flights, records, alerts), or `None`.
pub(super) fn take<D>(conn: &mut ConnectionCommon<D>) -> Option<Bytes> {
    if !conn.wants_write() {
        return None;
    }
    let mut out = Vec::new();
    // Bounded: each pass moves at least one queued chunk into `out`.
    while conn.wants_write() {
        match conn.write_tls(&mut out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Some(Bytes::from(out))
}
