//! Log framing: how one record sits in a segment or a snapshot, and how a reader
//! decides where valid data ends.
//!
//! A frame is `len: u32 | crc: u32 | lsn: u64 | payload[len]`, little endian, with
//! `crc = CRC32C(len | lsn | payload)`. The `lsn` is the frame's own log position, so a
//! frame left behind in a reused file, or a frame copied to the wrong place, fails the
//! check even though its CRC is right. `len == 0` never occurs in a written frame: the
//! zero bytes of a preallocated segment read as a clean end of the log.

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 16;

/// The largest payload a reader accepts. Bounds what a corrupt length can make a
/// reader look at; records are far smaller (a payload is at most 256 MiB on the wire,
/// but the shard never persists more than `max_payload_bytes`).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 28;

/// Appends one frame holding `payload` at position `lsn` to `out`.
pub fn put_frame(out: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_PAYLOAD_BYTES);
    let len = (payload.len() as u32).to_le_bytes();
    let lsn_bytes = lsn.to_le_bytes();
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&len), &lsn_bytes),
        payload,
    );
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(payload);
}

/// Total bytes a frame with a payload of `payload_len` bytes takes.
pub fn frame_bytes(payload_len: usize) -> usize {
    HEADER_BYTES + payload_len
}

/// What a reader finds at one position.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, checked frame; the next one starts `frame_bytes(payload.len())` later.
    Record(&'a [u8]),
    /// The end of the written data: no bytes left, or a zero length (the untouched
    /// part of a preallocated segment).
    End,
    /// Not a valid frame: a torn write, flipped bits, or data from elsewhere.
    Bad(BadFrame),
}

/// Why the bytes at a position are not a frame (logged by recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// Fewer bytes than a header, not all zero.
    ShortHeader,
    /// A length past `MAX_PAYLOAD_BYTES`.
    Oversized,
    /// The header promises more bytes than there are.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the frame belongs at another log position.
    WrongPosition,
}

impl BadFrame {
    pub fn as_str(self) -> &'static str {
        match self {
            BadFrame::ShortHeader => "short header",
            BadFrame::Oversized => "length out of range",
            BadFrame::Truncated => "frame cut short",
            BadFrame::Checksum => "checksum mismatch",
            BadFrame::WrongPosition => "frame from another log position",
        }
    }
}

/// Reads the frame at the start of `buf`, expected at log position `lsn`.
pub fn read_frame(buf: &[u8], lsn: u64) -> Frame<'_> {
    if buf.is_empty() {
        return Frame::End;
    }
    if buf.len() < HEADER_BYTES {
        return if buf.iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Bad(BadFrame::ShortHeader)
        };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    if len == 0 {
        // A zero length with a non-zero rest of the header is not the zero fill.
        return if buf[..HEADER_BYTES].iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Bad(BadFrame::Checksum)
        };
    }
    if len > MAX_PAYLOAD_BYTES {
        return Frame::Bad(BadFrame::Oversized);
    }
    let Some(payload) = buf.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Frame::Bad(BadFrame::Truncated);
    };
    let want = crc32c::crc32c_append(crc32c::crc32c(&buf[0..4]), &buf[8..16]);
    if crc32c::crc32c_append(want, payload) != crc {
        return Frame::Bad(BadFrame::Checksum);
    }
    if u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()) != lsn {
        return Frame::Bad(BadFrame::WrongPosition);
    }
    Frame::Record(payload)
}
