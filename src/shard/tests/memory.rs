//! Memory a client can make the shard hold, counted against `memory_high_water_bytes`
//! (issue #15): receive buffers (partial frames, the CONNECT bound), session counts
//! and route rows, and what queued messages keep alive.

use bytes::BytesMut;

use super::cfg;
use crate::config::Config;
use crate::protocol::{encode_packet, Packet, Properties, ReasonCode};
use crate::shard::harness::*;
use crate::shard::lifecycle::RX_OVER_MARK_BYTES;

const Q0: crate::protocol::QoS = crate::protocol::QoS::AtMostOnce;

fn wire(packet: &Packet, version: crate::protocol::ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_packet(packet, version, &mut buf);
    buf.to_vec()
}

#[test]
fn receive_buffers_count_against_the_mark() {
    let config = Config {
        memory_high_water_bytes: 100_000,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    let big = wire(&pubp("t", &"x".repeat(200_000), Q0, false, 0), V5);
    // Part of a frame: its buffer is the shard's only memory.
    cl.send_raw(a, &big[..10_000]);
    let st = cl.shards[0].stats();
    assert!((10_000..=20_000).contains(&st.bytes_rx), "{st:?}");
    assert_eq!(st.memory_bytes(), st.bytes_rx);
    // The rest: decoded, nothing held.
    cl.send_raw(a, &big[10_000..]);
    assert_eq!(cl.shards[0].stats().bytes_rx, 0);

    // Under the mark a partial frame may grow; once the shard is over it, the
    // connection whose frame is past the allowance is closed with 0x89.
    let b = cl.connect_ok(V5, "b", ConnectOpts::default(), false);
    cl.send_raw(a, &big[..60_000]);
    cl.expect_open(a);
    let held_by_a = cl.shards[0].stats().bytes_rx;
    assert!(held_by_a >= 60_000);
    cl.send_raw(b, &big[..RX_OVER_MARK_BYTES]);
    cl.expect_open(b);
    cl.send_raw(b, &big[RX_OVER_MARK_BYTES..60_000]);
    cl.expect(b, disconnect(ReasonCode::ServerBusy));
    cl.expect_closed(b);
    let st = cl.shards[0].stats();
    assert_eq!((st.closed_memory, st.bytes_rx), (1, held_by_a), "{st:?}");
    // Closing `b` took the shard back under the mark: new clients are admitted,
    // and `a` completes its frame.
    cl.connect_ok(V5, "n", ConnectOpts::default(), false);
    cl.send_raw(a, &big[60_000..]);
    cl.expect_open(a);
    assert_eq!(cl.shards[0].stats().bytes_rx, 0);
    // Released connections give everything back.
    cl.send_raw(a, &big[..5_000]);
    assert!(cl.shards[0].stats().bytes_rx >= 5_000);
    cl.drop_connection(a);
    assert_eq!(cl.shards[0].stats().bytes_rx, 0);
}

/// A CONNECT header announcing `remaining` bytes, with the protocol name and level
/// so that a refusal can be answered in the client's version.
fn connect_head(level: u8, remaining: usize) -> Vec<u8> {
    let mut b = vec![0x10];
    let mut n = remaining;
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        b.push(byte);
        if n == 0 {
            break;
        }
    }
    b.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60]);
    b
}

#[test]
fn before_connect_only_a_connect_sized_packet_is_read() {
    let config = cfg();
    let bound = config.max_connect_packet_bytes;
    assert_eq!(bound, 64 * 1024);
    let mut cl = Cluster::new(1, config);
    // Half of a CONNECT within the bound: held, and counted.
    let ok = cl.open(0, V5);
    let mut head = connect_head(5, bound - 5);
    head.resize(bound / 2, 0);
    cl.send_raw(ok, &head);
    cl.expect_open(ok);
    assert!(cl.shards[0].stats().bytes_rx >= bound / 2);
    // A CONNECT (or anything) announcing more is refused from its header, long
    // before max_packet_size (1 MiB): MQTT 5 gets CONNACK 0x95, 3.1.1 a close.
    let v5 = cl.open(0, V5);
    cl.send_raw(v5, &connect_head(5, bound));
    cl.expect(
        v5,
        connack(false, ReasonCode::PacketTooLarge, Properties::default()),
    );
    cl.expect_closed(v5);
    let v3 = cl.open(0, V311);
    cl.send_raw(v3, &connect_head(4, bound));
    assert!(cl.clients[v3].raw.is_empty());
    cl.expect_closed(v3);
    assert_eq!(cl.shards[0].stats().closed_packet_too_large, 2);
    // After CONNECT, max_packet_size applies again.
    let c = cl.connect_ok(V311, "c", ConnectOpts::default(), false);
    let big = wire(&pubp("t", &"x".repeat(2 * bound), Q0, false, 0), V311);
    cl.send_raw(c, &big);
    cl.expect_open(c);
    assert_eq!(cl.shards[0].stats().closed_packet_too_large, 2);
}
