//! Recovery (sans-IO): from the files of one loop's directory to the durable state,
//! the position the writer continues at, and the operations that tidy the directory
//! before it does.
//!
//! The newest snapshot is loaded (a damaged one is refused: the log behind it is
//! gone), then the log is replayed from the snapshot's position. Reading stops at the
//! first frame that is not whole, checked, at its position and decodable. What comes
//! before it is kept; where and why is reported; the bad tail is copied aside
//! (`<segment>.bad-at-<offset>`) and writing goes on in a new segment that starts at
//! that position, so the damaged bytes stay where they were and every later
//! recovery stops at the same place and, finding the next segment starting exactly
//! there, continues in it without reporting damage again. Segments after
//! a break are renamed aside (`.aside`), never deleted. A clean end (zero fill) is not
//! damage: writing simply continues there.

use super::frame::{frame_bytes, read_frame, Frame};
use super::record::Record;
use super::snapshot::{decode_snapshot, SnapshotError};
use super::state::StoreState;
use super::wal::{segment_name, snapshot_name, DiskOp};

/// Read access to one loop's directory (a real directory, or the simulated disk).
pub trait DirView {
    fn list(&self) -> Vec<String>;
    fn read(&self, name: &str) -> Option<Vec<u8>>;
}

/// Where the log stopped before its end, and what was done with the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: String,
    pub offset: u64,
    pub why: String,
    /// Where the bad bytes were set aside (empty when there were none to keep).
    pub aside: String,
}

#[derive(Debug)]
pub struct Recovered {
    pub state: StoreState,
    /// Where the writer continues.
    pub next_lsn: u64,
    /// Segment bases the writer knows, oldest first; the last one is written next.
    pub segments: Vec<u64>,
    /// Reserved size of the last segment.
    pub seg_len: u64,
    pub snapshot: Option<u64>,
    /// To run in order, at start-up, before the writer starts.
    pub ops: Vec<DiskOp>,
    pub damage: Option<Damage>,
    /// Records replayed from the log (not counting the snapshot's).
    pub replayed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoverError {
    /// The newest snapshot cannot be read.
    Snapshot { name: String, error: SnapshotError },
    /// No snapshot, and the log does not start at position 0: its head is gone.
    MissingLogHead { first_segment: String },
}

impl std::fmt::Display for RecoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoverError::Snapshot { name, error } => write!(f, "snapshot {name}: {error}"),
            RecoverError::MissingLogHead { first_segment } => {
                write!(
                    f,
                    "no snapshot and the log starts at {first_segment}, not at position 0"
                )
            }
        }
    }
}

fn parse(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn recover(dir: &dyn DirView, segment_bytes: u64) -> Result<Recovered, RecoverError> {
    let names = dir.list();
    let mut ops = Vec::new();
    let mut snaps: Vec<u64> = names
        .iter()
        .filter_map(|n| parse(n, "snap-", ".snap"))
        .collect();
    let mut segs: Vec<u64> = names
        .iter()
        .filter_map(|n| parse(n, "wal-", ".log"))
        .collect();
    snaps.sort_unstable();
    segs.sort_unstable();
    for n in &names {
        if parse(n, "snap-", ".tmp").is_some() {
            ops.push(DiskOp::Remove { name: n.clone() });
        }
    }

    let (mut state, start, snapshot) = match snaps.last() {
        Some(&lsn) => {
            let name = snapshot_name(lsn);
            let bytes = dir.read(&name).unwrap_or_default();
            let (state, at) = decode_snapshot(&bytes).map_err(|error| RecoverError::Snapshot {
                name: name.clone(),
                error,
            })?;
            if at != lsn {
                let error = SnapshotError::Damaged {
                    index: 0,
                    why: format!("header says position {at}"),
                };
                return Err(RecoverError::Snapshot { name, error });
            }
            for old in &snaps[..snaps.len() - 1] {
                ops.push(DiskOp::Remove {
                    name: snapshot_name(*old),
                });
            }
            (state, lsn, Some(lsn))
        }
        None => {
            if let Some(&first) = segs.first() {
                if first != 0 {
                    return Err(RecoverError::MissingLogHead {
                        first_segment: segment_name(first),
                    });
                }
            }
            (StoreState::default(), 0, None)
        }
    };

    // Segments wholly behind the start are covered by the snapshot.
    let first_live = segs.iter().rposition(|&b| b <= start).unwrap_or(0);
    for &base in &segs[..first_live] {
        ops.push(DiskOp::Remove {
            name: segment_name(base),
        });
    }
    let mut live: Vec<u64> = segs[first_live..].to_vec();
    if live.first().is_some_and(|&b| b > start) {
        // The log resumes after a gap behind the snapshot: nothing there can be replayed.
        for &base in &live {
            let name = segment_name(base);
            ops.push(DiskOp::Rename {
                to: format!("{name}.aside"),
                from: name,
            });
        }
        live.clear();
    }

    let mut pos = start;
    let mut replayed = 0u64;
    let mut damage = None;
    // Index in `live` of the segment reading stopped in, and that segment's bytes.
    let mut stopped_in = None;
    for (i, &base) in live.iter().enumerate() {
        // The first segment holds the start; each later one must begin where the
        // one before it ended cleanly.
        if (i == 0 && base > pos) || (i > 0 && base != pos) {
            let name = segment_name(base);
            damage = Some(Damage {
                aside: format!("{name}.aside"),
                segment: name,
                offset: 0,
                why: format!("segment starts at {base}, the log before it ends at {pos}"),
            });
            break;
        }
        let bytes = dir.read(&segment_name(base)).unwrap_or_default();
        let mut off = (pos - base) as usize;
        let mut bad = None;
        loop {
            let Some(rest) = bytes.get(off..) else {
                bad = Some("segment shorter than the snapshot position".to_string());
                break;
            };
            match read_frame(rest, pos) {
                Frame::End => {
                    // Anything but zeros after the end is data the log did not put
                    // there in order (an unsynced write that reached the medium before
                    // an earlier one, a failed write): it could read as frames at the
                    // positions the next records take, so it goes aside too.
                    if rest.iter().any(|&b| b != 0) {
                        bad = Some("data after the end of the log".to_string());
                    }
                    break;
                }
                Frame::Bad(b) => {
                    bad = Some(b.as_str().to_string());
                    break;
                }
                Frame::Record(payload) => match Record::decode(payload) {
                    Ok(rec) => {
                        state.apply_owned(rec);
                        replayed += 1;
                        let n = frame_bytes(payload.len());
                        off += n;
                        pos += n as u64;
                    }
                    Err(e) => {
                        bad = Some(format!("undecodable record: {e:?}"));
                        break;
                    }
                },
            }
        }
        stopped_in = Some((i, bytes.len() as u64));
        if bad.is_some() && live.get(i + 1) == Some(&pos) {
            // An earlier recovery stopped here, set the tail aside and started the next
            // segment at this position: the log simply goes on there.
            continue;
        }
        if let Some(why) = bad {
            let name = segment_name(base);
            let offset = pos - base;
            let aside = format!("{name}.bad-at-{offset}");
            let tail = bytes.get(off..).unwrap_or_default();
            let keep = tail.len() - tail.iter().rev().take_while(|&&b| b == 0).count();
            damage = Some(Damage {
                segment: name,
                offset,
                why,
                aside,
            });
            if offset == 0 {
                stopped_in = None;
            } else if keep > 0 {
                let aside = damage.as_ref().map(|d| d.aside.clone()).unwrap_or_default();
                ops.push(DiskOp::Write {
                    name: aside,
                    offset: 0,
                    data: tail[..keep].to_vec(),
                    sync: true,
                });
            }
            break;
        }
    }

    // Decide where the writer goes. Continue in place only after a clean end in the
    // last segment; otherwise everything after the stopping point goes aside and a new
    // segment starts at `pos`.
    let (keep_upto, continue_in_place) = match (&damage, stopped_in) {
        (None, Some((i, len))) => (i + 1, Some(len)),
        (Some(_), Some((i, _))) => (i + 1, None),
        (Some(d), None) => (
            live.iter()
                .position(|&b| segment_name(b) == d.segment)
                .unwrap_or(live.len()),
            None,
        ),
        (None, None) => (live.len(), None),
    };
    for &base in &live[keep_upto..] {
        let name = segment_name(base);
        let to = match &damage {
            Some(d) if d.segment == name && d.offset == 0 => d.aside.clone(),
            _ => format!("{name}.aside"),
        };
        ops.push(DiskOp::Rename { from: name, to });
    }
    let mut segments: Vec<u64> = live[..keep_upto].to_vec();
    let seg_len = match continue_in_place {
        Some(len) => len,
        None => {
            ops.push(DiskOp::Create {
                name: segment_name(pos),
                len: segment_bytes,
            });
            segments.push(pos);
            segment_bytes
        }
    };
    ops.push(DiskOp::SyncDir);
    state.finish();
    Ok(Recovered {
        state,
        next_lsn: pos,
        segments,
        seg_len,
        snapshot,
        ops,
        damage,
        replayed,
    })
}
