//! The store's fuzz entry (`tests/fuzz`, target `store`) and the seeds `cargo test`
//! replays: arbitrary bytes as a log segment, as a snapshot, or as both must never
//! panic, and whatever recovery accepts must be a valid state that survives its own
//! snapshot and a second recovery unchanged.

use super::recover::recover;
use super::sim::SimDisk;
use super::snapshot::{decode_snapshot, encode_snapshot};
use super::state::StoreState;
use super::wal::{segment_name, snapshot_name, DiskOp};

/// Segment size used when recovery has to start a new segment.
const SEGMENT_BYTES: u64 = 4096;

/// First byte picks what the rest is: 0 a log segment at position 0, 1 a snapshot,
/// 2 a snapshot (its length in the next two bytes, little endian) and a segment (the
/// bytes after it).
pub fn fuzz_store(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut disk = SimDisk::new();
    match selector % 3 {
        0 => put(&mut disk, &segment_name(0), rest),
        1 => {
            if let Ok((state, _)) = decode_snapshot(rest) {
                check_state(&state);
            }
            put(&mut disk, &snapshot_name(0), rest);
        }
        _ => {
            let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let (a, b) = rest.split_at(usize::from(u16::from_le_bytes(*len)).min(rest.len()));
            put(&mut disk, &snapshot_name(0), a);
            put(&mut disk, &segment_name(0), b);
        }
    }
    let Ok(first) = recover(&disk, SEGMENT_BYTES) else {
        return;
    };
    check_state(&first.state);
    for op in &first.ops {
        disk.run(op).expect("simulated disk has room");
    }
    let again = recover(&disk, SEGMENT_BYTES).expect("a recovered directory recovers again");
    assert!(
        same_state(&first.state, &again.state),
        "second recovery changed the state"
    );
    assert_eq!(
        first.next_lsn, again.next_lsn,
        "second recovery moved the log end"
    );
    assert!(
        again.damage.is_none(),
        "damage was not set aside: {:?}",
        again.damage
    );
}

fn put(disk: &mut SimDisk, name: &str, bytes: &[u8]) {
    let op = DiskOp::Write {
        name: name.to_string(),
        offset: 0,
        data: bytes.to_vec(),
        sync: true,
    };
    disk.run(&op).expect("simulated disk has room");
    disk.run(&DiskOp::SyncDir).expect("simulated disk has room");
}

fn check_state(state: &StoreState) {
    if let Err(e) = state.check() {
        panic!("recovered an invalid state: {e}");
    }
    let (copy, lsn) = decode_snapshot(&encode_snapshot(state, 7)).expect("own snapshot reads back");
    assert_eq!(lsn, 7);
    assert!(
        same_state(state, &copy),
        "snapshot round trip changed the state"
    );
}

/// Equal in everything that is stored (`ignored` is a replay statistic).
pub fn same_state(a: &StoreState, b: &StoreState) -> bool {
    a.sessions == b.sessions
        && a.messages == b.messages
        && a.retained == b.retained
        && a.next_msg_id == b.next_msg_id
}

/// A valid log of a few records, for the seeds.
pub fn seed_inputs() -> Vec<(String, Vec<u8>)> {
    use super::frame::put_frame;
    use super::record::{MsgRec, Record};
    use bytes::Bytes;
    let c = Bytes::from_static(b"dev-1");
    let msg = MsgRec {
        topic: Bytes::from_static(b"a/b"),
        payload: Bytes::from_static(b"hello"),
        qos: 1,
        retain: false,
        props: Bytes::new(),
        arrived_unix_ms: 1_700_000_000_000,
    };
    let recs = vec![
        Record::SessionPut {
            client: c.clone(),
            expiry_s: 3600,
            will: None,
        },
        Record::SubAdd {
            client: c.clone(),
            filter: Bytes::from_static(b"a/#"),
            options: 1,
            sub_id: 0,
        },
        Record::MsgPut {
            id: 1,
            msg: msg.clone(),
        },
        Record::Enqueue {
            client: c.clone(),
            msg: 1,
            qos: 1,
            retain: false,
            sub_ids: vec![],
        },
        Record::Sent {
            client: c.clone(),
            msg: 1,
            packet_id: 1,
        },
        Record::InboundQos2 {
            client: c.clone(),
            packet_id: 9,
        },
        Record::RetainSet { msg },
    ];
    let mut log = Vec::new();
    let mut scratch = Vec::new();
    for r in &recs {
        scratch.clear();
        r.encode(&mut scratch);
        let lsn = log.len() as u64;
        put_frame(&mut log, lsn, &scratch);
    }
    let mut state = StoreState::default();
    recs.iter().for_each(|r| state.apply(r));
    let snap = encode_snapshot(&state, 0);
    // A snapshot at position 0 of the state so far, and a log that goes on from there.
    let more = Record::Ack { client: c, msg: 1 };
    scratch.clear();
    more.encode(&mut scratch);
    let mut tail = Vec::new();
    put_frame(&mut tail, 0, &scratch);
    let mut both = vec![2];
    both.extend_from_slice(&(snap.len() as u16).to_le_bytes());
    both.extend_from_slice(&snap);
    both.extend_from_slice(&tail);
    vec![
        ("log".into(), [&[0u8][..], &log].concat()),
        ("snapshot".into(), [&[1u8][..], &snap].concat()),
        ("snapshot_and_log".into(), both),
    ]
}
