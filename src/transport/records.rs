//! Moving bytes through a rustls connection from byte slices, written once for both
//! sides: [`super::TlsSession`] (a client's connection to us) and
//! [`super::client::TlsClient`] (a bridge's connection to a remote broker).

use std::io::{self, BufRead, Write};

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
        // Drained at once, so rustls's plaintext buffer is empty at every read. Chunk
        // by chunk (one per record) straight from rustls's buffer: no zero-filled
        // staging. Bounded: each pass consumes one chunk; an empty one or
        // `WouldBlock` means nothing is left.
        if state.plaintext_bytes_to_read() > 0 {
            let mut reader = conn.reader();
            while let Ok(chunk) = reader.fill_buf() {
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                plain.extend_from_slice(chunk);
                reader.consume(n);
            }
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

/// Queues several plaintext slices as one write: rustls fragments across them, so
/// a flush of many segments becomes as few records as its length needs (one per
/// 16 KiB) instead of at least one record per segment, without joining them first.
pub(super) fn queue_chunks<D>(conn: &mut ConnectionCommon<D>, chunks: &[&[u8]]) {
    let slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    // Unbounded buffer (see `queue`): rustls takes the whole write at once. Should
    // it ever take less, the rest goes out slice by slice, in order.
    let mut taken = conn.writer().write_vectored(&slices).unwrap_or(0);
    if taken < total {
        for c in chunks {
            if taken >= c.len() {
                taken -= c.len();
                continue;
            }
            queue(conn, &c[taken..]);
            taken = 0;
        }
    }
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
