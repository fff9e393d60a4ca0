//! Message payload: who sent it, which sequence number, and when.
//!
//! Layout (little endian), padded with zeros to `--size` bytes:
//! `magic u16 | kind u8 | reserved u8 | stream u32 | seq u64 | send_ns u64`.
//! `stream` is the publisher stream id (a device's telemetry, a fanin publisher, or the
//! controller's command stream to one device); `seq` counts from 0 per stream;
//! `send_ns` is CLOCK_MONOTONIC in nanoseconds, so only comparable within this process.

/// Bytes the header takes; `--size` must be at least this.
pub const HEADER_LEN: usize = 24;
const MAGIC: u16 = 0x4C47; // "LG"

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub stream: u32,
    pub seq: u64,
    pub send_ns: u64,
}

/// Payload kinds: plain data, or a fleet command that the device echoes back.
pub const KIND_DATA: u8 = 0;
pub const KIND_COMMAND: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    TooShort(usize),
    BadMagic(u16),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::TooShort(n) => write!(
                f,
                "payload of {n} bytes is shorter than the {HEADER_LEN}-byte loadgen header"
            ),
            PayloadError::BadMagic(m) => {
                write!(f, "payload magic {m:#06x} is not a loadgen payload")
            }
        }
    }
}

/// Writes the header into the first `HEADER_LEN` bytes of `buf`; the rest is left as is
/// so a pre-zeroed template keeps its padding.
pub fn write_header(buf: &mut [u8], h: &Header) {
    debug_assert!(buf.len() >= HEADER_LEN);
    buf[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    buf[2] = h.kind;
    buf[3] = 0;
    buf[4..8].copy_from_slice(&h.stream.to_le_bytes());
    buf[8..16].copy_from_slice(&h.seq.to_le_bytes());
    buf[16..24].copy_from_slice(&h.send_ns.to_le_bytes());
}

/// A full payload of `size` bytes (`size >= HEADER_LEN`).
pub fn encode(h: &Header, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(HEADER_LEN)];
    write_header(&mut v, h);
    v
}

pub fn decode(buf: &[u8]) -> Result<Header, PayloadError> {
    if buf.len() < HEADER_LEN {
        return Err(PayloadError::TooShort(buf.len()));
    }
    let magic = u16::from_le_bytes([buf[0], buf[1]]);
    if magic != MAGIC {
        return Err(PayloadError::BadMagic(magic));
    }
    let mut s = [0u8; 4];
    s.copy_from_slice(&buf[4..8]);
    let mut q = [0u8; 8];
    q.copy_from_slice(&buf[8..16]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&buf[16..24]);
    Ok(Header {
        kind: buf[2],
        stream: u32::from_le_bytes(s),
        seq: u64::from_le_bytes(q),
        send_ns: u64::from_le_bytes(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding() {
        let h = Header {
            kind: KIND_COMMAND,
            stream: 0xDEAD_BEEF,
            seq: 1 << 40,
            send_ns: 123_456_789_012,
        };
        let v = encode(&h, 64);
        assert_eq!(v.len(), 64);
        assert_eq!(&v[24..], &[0u8; 40][..]);
        assert_eq!(decode(&v), Ok(h));
        assert_eq!(&v[0..4], &[0x47, 0x4C, 1, 0]);
        assert_eq!(&v[4..8], &[0xEF, 0xBE, 0xAD, 0xDE]);
    }

    #[test]
    fn minimum_size_is_header() {
        let h = Header {
            kind: KIND_DATA,
            stream: 7,
            seq: 3,
            send_ns: 9,
        };
        assert_eq!(encode(&h, 1).len(), HEADER_LEN);
        assert_eq!(decode(&encode(&h, HEADER_LEN)), Ok(h));
    }

    #[test]
    fn rejects_short_and_foreign() {
        assert_eq!(decode(&[0u8; 23]), Err(PayloadError::TooShort(23)));
        assert_eq!(decode(&[0u8; 24]), Err(PayloadError::BadMagic(0)));
    }
}
