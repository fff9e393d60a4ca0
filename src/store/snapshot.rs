//! Snapshot files: a header, the records that rebuild the state (framed like the log,
//! each frame's position being its index), and a trailer with the record count.
//! A snapshot is written to a temporary name, synced, renamed and the directory
//! synced (see `wal.rs`), so a snapshot under its final name is whole; a reader still
//! checks everything and refuses a damaged one rather than misread it.

use super::frame::{frame_bytes, put_frame, read_frame, Frame};
use super::record::{Record, END_TAG};
use super::state::StoreState;
use super::FORMAT_VERSION;

const MAGIC: &[u8; 8] = b"RMQSNAP\0";
const HEADER_BYTES: usize = 8 + 4 + 8 + 8;

/// Why a snapshot was refused. Recovery refuses to start on one: the log behind a
/// snapshot is truncated, so a damaged snapshot cannot be replaced by replaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    NotASnapshot,
    /// Written by another on-disk format version.
    Version(u32),
    /// A bad frame or record at this record index.
    Damaged {
        index: u64,
        why: String,
    },
    /// No trailer, or a trailer with the wrong count.
    Incomplete,
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::NotASnapshot => write!(f, "not a ringmq snapshot"),
            SnapshotError::Version(v) => {
                write!(
                    f,
                    "snapshot format version {v}, this ringmq reads version {FORMAT_VERSION}"
                )
            }
            SnapshotError::Damaged { index, why } => write!(f, "damaged at record {index}: {why}"),
            SnapshotError::Incomplete => write!(f, "snapshot incomplete (no valid trailer)"),
        }
    }
}

/// Builds a snapshot in memory, one record at a time.
pub struct SnapshotWriter {
    buf: Vec<u8>,
    count: u64,
    scratch: Vec<u8>,
}

impl SnapshotWriter {
    /// `lsn`: the log position the snapshot covers up to (replay starts there);
    /// `next_msg_id`: the state's next message id.
    pub fn new(lsn: u64, next_msg_id: u64) -> SnapshotWriter {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&lsn.to_le_bytes());
        buf.extend_from_slice(&next_msg_id.to_le_bytes());
        SnapshotWriter {
            buf,
            count: 0,
            scratch: Vec::new(),
        }
    }

    pub fn push(&mut self, rec: &Record) {
        self.scratch.clear();
        rec.encode(&mut self.scratch);
        put_frame(&mut self.buf, self.count, &self.scratch);
        self.count += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        let mut trailer = vec![END_TAG];
        trailer.extend_from_slice(&self.count.to_le_bytes());
        put_frame(&mut self.buf, self.count, &trailer);
        self.buf
    }
}

/// Encodes a whole state (tests, and the shard's snapshot uses the writer directly).
pub fn encode_snapshot(state: &StoreState, lsn: u64) -> Vec<u8> {
    let mut w = SnapshotWriter::new(lsn, state.next_msg_id);
    state.to_records(|r| w.push(&r));
    w.finish()
}

/// Reads a snapshot: the state and the log position replay starts from.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(StoreState, u64), SnapshotError> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let version = le32(&bytes[8..12]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let lsn = le64(&bytes[12..20]);
    let next_msg_id = le64(&bytes[20..28]);
    let mut state = StoreState::default();
    let mut at = HEADER_BYTES;
    let mut index = 0u64;
    loop {
        let payload = match read_frame(&bytes[at..], index) {
            Frame::Record(p) => p,
            Frame::End => return Err(SnapshotError::Incomplete),
            Frame::Bad(b) => {
                return Err(SnapshotError::Damaged {
                    index,
                    why: b.as_str().into(),
                })
            }
        };
        at += frame_bytes(payload.len());
        if payload[0] == END_TAG {
            if payload.len() != 9 || le64(&payload[1..9]) != index || at != bytes.len() {
                return Err(SnapshotError::Incomplete);
            }
            break;
        }
        match Record::decode(payload) {
            Ok(rec) => state.apply_owned(rec),
            Err(e) => {
                return Err(SnapshotError::Damaged {
                    index,
                    why: format!("{e:?}"),
                })
            }
        }
        index += 1;
    }
    state.finish();
    state.next_msg_id = state.next_msg_id.max(next_msg_id);
    Ok((state, lsn))
}
