//! Large payloads as shared segments (issue #24): exact bytes on the wire for every
//! kind of subscriber (3.1.1 and 5, QoS 0/1/2, topic aliases, subscription
//! identifiers, properties, per-subscriber packet ids) across two shards, and the
//! accounting rule (a shared payload counted once per node, each connection's
//! bound counting what it holds alive).

use bytes::{Bytes, BytesMut};

use super::cfg;
use crate::protocol::{
    encode_packet, Packet, Properties, PropertyValues, ProtocolVersion, PublishProperties,
    PublishRare, QoS, SubscriptionOptions,
};
use crate::shard::harness::*;
use crate::tx::SHARE_MIN_BYTES;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;
const TOPIC: &str = "fw/chunk";

fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// One subscriber of the wire test and what it must receive.
struct Sub {
    c: Cid,
    version: ProtocolVersion,
    qos: QoS,
    alias_max: u16,
    sub_id: Option<u32>,
}

#[test]
fn every_subscriber_gets_exact_bytes() {
    let mut cl = Cluster::new(2, cfg());
    let mut subs = Vec::new();
    let kinds: [(ProtocolVersion, QoS, u16, Option<u32>); 8] = [
        (V311, Q1, 0, None),
        (V311, Q1, 0, None),
        (V311, Q0, 0, None),
        (V311, Q2, 0, None),
        (V5, Q1, 5, None),
        (V5, Q2, 0, Some(7)),
        (V5, Q1, 0, None),
        (V5, Q1, 0, None),
    ];
    for (i, (version, qos, alias_max, sub_id)) in kinds.into_iter().enumerate() {
        let opts = ConnectOpts {
            properties: Properties::from(PropertyValues {
                topic_alias_maximum: (alias_max > 0).then_some(alias_max),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = cl.connect_ok(version, &format!("sub-{i}"), opts, false);
        let sub_opts = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        let props = Properties::from(PropertyValues {
            subscription_identifier: sub_id,
            ..Default::default()
        });
        cl.subscribe_with(c, TOPIC, sub_opts, props);
        assert!(matches!(cl.next(c), Some(Packet::SubAck(_))), "sub {i}");
        subs.push(Sub {
            c,
            version,
            qos,
            alias_max,
            sub_id,
        });
    }
    let p = cl.connect_ok(V5, "publisher", ConnectOpts::default(), false);
    let starts: Vec<usize> = subs.iter().map(|s| cl.clients[s.c].raw.len()).collect();
    // Around the threshold and far above it, with properties, at each QoS.
    let sent = [
        (SHARE_MIN_BYTES - 1, Q1),
        (SHARE_MIN_BYTES, Q2),
        (300 * 1024, Q1),
        (70_000, Q0),
    ];
    let mut props = PublishProperties {
        rare: PublishRare {
            content_type: Some(Bytes::from_static(b"application/octet-stream")),
            correlation_data: Some(Bytes::from_static(b"fw-17")),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let mut want: Vec<BytesMut> = subs.iter().map(|_| BytesMut::new()).collect();
    let mut ids = vec![0u16; subs.len()];
    for (n, &(len, qos)) in sent.iter().enumerate() {
        props.payload_format_indicator = (n % 2 == 1).then_some(0);
        let body = payload(len, n as u8);
        let mut m = publish(TOPIC, "", qos, false, 10 + n as u16);
        m.payload = body.clone();
        m.properties = props.clone();
        cl.send(p, Packet::Publish(m));
        if qos == Q2 {
            cl.expect(p, pubrec(10 + n as u16));
            cl.send(p, pubrel(10 + n as u16));
            cl.expect(p, pubcomp(10 + n as u16));
        } else if qos == Q1 {
            cl.expect(p, puback(10 + n as u16));
        }
        for (i, s) in subs.iter().enumerate() {
            let q = qos.min(s.qos);
            let mut e = publish(TOPIC, "", q, false, 0);
            e.payload = body.clone();
            if q != Q0 {
                ids[i] += 1;
                e.packet_id = ids[i];
            }
            if s.version == V5 {
                e.properties = props.clone();
                e.properties.rare.to_mut().subscription_identifiers =
                    s.sub_id.into_iter().collect();
                if s.alias_max > 0 {
                    // First use sets alias 1 with the topic; later ones send the alias alone.
                    e.properties.topic_alias = Some(1);
                    if n > 0 {
                        e.topic = Bytes::new();
                    }
                }
            }
            encode_packet(&Packet::Publish(e), s.version, &mut want[i]);
        }
    }
    for (i, s) in subs.iter().enumerate() {
        let got = &cl.clients[s.c].raw[starts[i]..];
        assert_eq!(got.len(), want[i].len(), "subscriber {i}: length");
        assert!(got == &want[i][..], "subscriber {i}: bytes differ");
    }
    // Same version, QoS and options: byte-identical streams.
    assert_eq!(
        cl.clients[subs[0].c].raw[starts[0]..],
        cl.clients[subs[1].c].raw[starts[1]..]
    );
    assert_eq!(
        cl.clients[subs[6].c].raw[starts[6]..],
        cl.clients[subs[7].c].raw[starts[7]..]
    );
}

/// Stalled subscribers on two shards: one shared copy of the payload on the node
/// (the memory mark's `bytes_shared`), headers only in `bytes_tx`, each connection
/// holding the payload alive within its own bound; all of it goes once delivered
/// and acknowledged.
#[test]
fn a_shared_payload_is_counted_once_per_node() {
    let mut cl = Cluster::new(2, cfg());
    let n = 40;
    let len = 300 * 1024;
    let subs: Vec<Cid> = (0..n)
        .map(|i| {
            let c = cl.connect_ok(V311, &format!("dev-{i}"), ConnectOpts::default(), false);
            cl.subscribe(c, TOPIC, Q1);
            cl.stall(c, true);
            c
        })
        .collect();
    let on: Vec<usize> = subs.iter().map(|&c| cl.clients[c].shard).collect();
    assert!(
        on.contains(&0) && on.contains(&1),
        "subscribers on both shards"
    );
    let p = cl.connect_ok(V311, "publisher", ConnectOpts::default(), false);
    let body = payload(len, 3);
    let mut m = publish(TOPIC, "", Q1, false, 1);
    m.payload = body.clone();
    cl.send(p, Packet::Publish(m));
    cl.expect(p, puback(1));
    let snaps: Vec<_> = cl.shards.iter_mut().map(|s| s.stats_snapshot()).collect();
    let shared: usize = snaps.iter().map(|s| s.bytes_shared).sum();
    let own: usize = snaps.iter().map(|s| s.bytes_tx).sum();
    assert_eq!(shared, len, "one copy for {n} subscribers on 2 shards");
    assert!(own <= n * 16, "headers only: {own} bytes");
    let memory: usize = snaps.iter().map(|s| s.memory_bytes()).sum();
    assert!(memory < 2 * len, "memory mark {memory}");
    for &c in &subs {
        let (s, conn) = (cl.clients[c].shard, cl.clients[c].conn);
        let tx = &cl.shards[s].conns.get(conn).expect("conn").tx;
        // The connection's own bound sees what it keeps alive.
        assert!(tx.len() >= len && tx.shared_len() == len, "{}", tx.len());
    }
    for (i, &c) in subs.iter().enumerate() {
        cl.stall(c, false);
        let mut want = publish(TOPIC, "", Q1, false, 1);
        want.payload = body.clone();
        cl.expect(c, Packet::Publish(want));
        cl.send(c, puback(1));
        let _ = i;
    }
    let shared: usize = cl
        .shards
        .iter_mut()
        .map(|s| s.stats_snapshot().bytes_shared)
        .sum();
    assert_eq!(shared, 0, "released once delivered and acknowledged");
    let own: usize = cl.shards.iter().map(|s| s.stats().bytes_tx).sum();
    assert_eq!(own, 0);
}

/// A large retained payload streamed to new subscribers is the stored body itself:
/// no counted shared copy is made per subscriber (nor per stream), each stalled
/// subscriber's output references the one stored payload, and every subscriber still
/// gets the exact packet.
#[test]
fn a_streamed_retained_payload_is_the_stored_one() {
    let mut cl = Cluster::new(2, cfg());
    let len = 64 * 1024;
    let body = payload(len, 9);
    let p = cl.connect_ok(V311, "publisher", ConnectOpts::default(), false);
    let mut m = publish(TOPIC, "", Q1, true, 1);
    m.payload = body.clone();
    cl.send(p, Packet::Publish(m));
    cl.expect(p, puback(1));
    let n = 20;
    let subs: Vec<Cid> = (0..n)
        .map(|i| {
            let c = cl.connect_ok(V311, &format!("late-{i}"), ConnectOpts::default(), false);
            cl.stall(c, true);
            let opts = SubscriptionOptions {
                qos: Q1,
                ..Default::default()
            };
            cl.subscribe_with(c, TOPIC, opts, Properties::default());
            c
        })
        .collect();
    let on: Vec<usize> = subs.iter().map(|&c| cl.clients[c].shard).collect();
    assert!(
        on.contains(&0) && on.contains(&1),
        "subscribers on both shards"
    );
    let snaps: Vec<_> = cl.shards.iter_mut().map(|s| s.stats_snapshot()).collect();
    assert_eq!(
        snaps.iter().map(|s| s.retained_streamed).sum::<u64>(),
        n as u64,
        "every subscriber got its copy written"
    );
    let shared: usize = snaps.iter().map(|s| s.bytes_shared).sum();
    assert_eq!(shared, 0, "no payload copy made for a streamed copy");
    let own: usize = snaps.iter().map(|s| s.bytes_tx).sum();
    assert!(own <= n * 64, "SUBACKs and headers only: {own} bytes");
    for &c in &subs {
        let (s, conn) = (cl.clients[c].shard, cl.clients[c].conn);
        let tx = &cl.shards[s].conns.get(conn).expect("conn").tx;
        assert_eq!(tx.shared_len(), len, "the copy references the payload");
    }
    // The segment is the stored body's payload, not a copy of it.
    let (s, conn) = (cl.clients[subs[0]].shard, cl.clients[subs[0]].conn);
    let stored = cl.shards[s]
        .retained
        .get(TOPIC.as_bytes())
        .expect("stored")
        .body
        .payload()
        .as_ptr();
    let chain = cl.shards[s].conns.get_mut(conn).expect("conn").tx.take();
    assert!(
        chain
            .chunks()
            .any(|c| c.len() == len && c.as_ptr() == stored),
        "a segment over the stored payload"
    );
    // Put the same bytes back, the payload again as a shared segment, so the
    // accounting of what is taken below stays as it was.
    cl.shards[s].conns.get_mut(conn).expect("conn").tx = {
        let mut t = crate::tx::TxBuf::default();
        for c in chain.chunks() {
            if c.as_ptr() == stored {
                t.push_shared(Bytes::copy_from_slice(c));
            } else {
                t.tail_mut().extend_from_slice(c);
            }
        }
        t
    };
    for &c in &subs {
        cl.stall(c, false);
        assert!(matches!(cl.next(c), Some(Packet::SubAck(_))));
        let mut want = publish(TOPIC, "", Q1, true, 1);
        want.payload = body.clone();
        cl.expect(c, Packet::Publish(want));
        cl.send(c, puback(1));
    }
    let own: usize = cl.shards.iter().map(|s| s.stats().bytes_tx).sum();
    assert_eq!(own, 0, "nothing left once sent and acknowledged");
}

/// `bytes_tx` is exactly the connections' own output on every encode path: cached
/// variants (3.1.1, plain 5) and per-copy encodings (a topic alias, a subscription
/// identifier), shared and copied payloads, while subscribers are stalled, and zero
/// once everything is delivered and acknowledged. The encoders report the bytes
/// they append instead of the gauge reading `own_len` around each copy.
#[test]
fn bytes_tx_is_the_own_output_on_every_encode_path() {
    let mut cl = Cluster::new(2, cfg());
    let kinds: [(ProtocolVersion, u16, Option<u32>); 4] = [
        (V311, 0, None),
        (V5, 0, None),
        (V5, 5, None),
        (V5, 0, Some(7)),
    ];
    let mut subs = Vec::new();
    for (i, (version, alias_max, sub_id)) in kinds.into_iter().enumerate() {
        let opts = ConnectOpts {
            properties: Properties::from(PropertyValues {
                topic_alias_maximum: (alias_max > 0).then_some(alias_max),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = cl.connect_ok(version, &format!("acct-{i}"), opts, false);
        let props = Properties::from(PropertyValues {
            subscription_identifier: sub_id,
            ..Default::default()
        });
        let sub_opts = SubscriptionOptions {
            qos: Q1,
            ..Default::default()
        };
        cl.subscribe_with(c, TOPIC, sub_opts, props);
        assert!(matches!(cl.next(c), Some(Packet::SubAck(_))), "sub {i}");
        cl.stall(c, true);
        subs.push(c);
    }
    let p = cl.connect_ok(V5, "publisher", ConnectOpts::default(), false);
    let sent = [(70_000, Q1), (100, Q0), (SHARE_MIN_BYTES, Q0), (300, Q1)];
    for (n, &(len, qos)) in sent.iter().enumerate() {
        let mut m = publish(TOPIC, "", qos, false, 20 + n as u16);
        m.payload = payload(len, n as u8);
        cl.send(p, Packet::Publish(m));
        if qos == Q1 {
            cl.expect(p, puback(20 + n as u16));
        }
        for (s, shard) in cl.shards.iter().enumerate() {
            let own: usize = shard.conns.iter().map(|(_, c)| c.tx.own_len()).sum();
            assert_eq!(shard.stats().bytes_tx, own, "shard {s} after publish {n}");
        }
    }
    let total: usize = cl.shards.iter().map(|s| s.stats().bytes_tx).sum();
    assert!(total > 0, "stalled subscribers hold output");
    for &c in &subs {
        cl.stall(c, false);
        let mut got = 0;
        while let Some(packet) = cl.next(c) {
            if let Packet::Publish(m) = packet {
                got += 1;
                if m.qos == Q1 {
                    cl.send(c, puback(m.packet_id));
                }
            }
        }
        assert_eq!(got, sent.len(), "every publish delivered");
    }
    for (s, shard) in cl.shards.iter().enumerate() {
        assert_eq!(shard.stats().bytes_tx, 0, "shard {s}: all output taken");
    }
}
