//! The bridge against the real shard, in memory: its local side a virtual MQTT 5
//! connection in the shard test `Cluster` (2 loops, the bridge on the loop that owns
//! `$bridge/edge`), its remote side scripted. Proves the seam before any socket: a
//! local client's message on the other loop reaches the bridge through the mesh, a
//! remote message reaches local subscribers, and No Local keeps it from going back.
//! With a persistent local session (what a data directory turns on), the shard
//! keeps a message until the remote acknowledged it, and a new bridge (a restart)
//! gets it again.

use bytes::{Bytes, BytesMut};

use super::client::BridgeClient;
use super::config::parse_bridges;
use super::link::LocalLink;
use crate::config::Config;
use crate::protocol::{
    decode_packet, encode_packet, encode_to_bytes, ConnAck, Packet, Properties, ProtocolVersion,
    PubResp, Publish, PublishProperties, QoS, ReasonCode,
};
use crate::shard::harness::{Cid, Cluster, ConnectOpts};

const LOCAL_ID: &str = "$bridge/edge";

struct Seam {
    cl: Cluster,
    cid: Cid,
    owner: usize,
    persistent: bool,
    link: LocalLink,
    client: BridgeClient,
    /// What the bridge sent the remote, decoded (CONNECT excepted).
    remote_rx: BytesMut,
}

fn bridge_client() -> BridgeClient {
    let t: toml::Table = "[[bridge]]\nname = \"edge\"\naddress = \"127.0.0.1:1883\"\n\
         topics = [\"up/# out 1 \\\"\\\" edge/\", \"down/# in 1\", \"both/# both 1\"]\n"
        .parse()
        .unwrap();
    let cfg = parse_bridges(t.get("bridge").unwrap()).unwrap().remove(0);
    let now = std::time::Instant::now();
    let mut client = BridgeClient::new(cfg, 1, now);
    // Bring the remote side up: CONNECT out, CONNACK in.
    client.on_timeout(now);
    client.poll_transport();
    client.on_connected(now);
    client.poll_transmit();
    client.on_bytes(
        &encode_to_bytes(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::Success,
                properties: Properties::default(),
            }),
            ProtocolVersion::V311,
        ),
        now,
    );
    assert!(client.is_up());
    client
}

impl Seam {
    fn new() -> Seam {
        Seam::with(false)
    }

    fn with(persistent: bool) -> Seam {
        let mut cl = Cluster::new(2, Config::default());
        let owner = crate::shard::owner_shard(0, LOCAL_ID.as_bytes(), 2);
        let cid = cl.open(owner, ProtocolVersion::V5);
        // As worker::bridges does: the virtual connection carries the bridge identity.
        let conn = cl.clients[cid].conn;
        cl.shards[owner].set_cert_username(conn, LOCAL_ID.to_string());
        let client = bridge_client();
        let mut s = Seam {
            cl,
            cid,
            owner,
            persistent,
            link: LocalLink::new(),
            client,
            remote_rx: BytesMut::new(),
        };
        let open = s
            .link
            .open(LOCAL_ID, &s.client.local_subscriptions(), persistent);
        s.cl.send_raw(cid, &open);
        s.step();
        assert!(s.link.is_up());
        s.remote_packets();
        s
    }

    /// ringmq restarts (in memory: the shard lives on, the bridge is new): the
    /// virtual connection breaks, a new one carries a new link and client.
    fn restart_bridge(&mut self) {
        self.cl.drop_connection(self.cid);
        self.cid = self.cl.open(self.owner, ProtocolVersion::V5);
        let conn = self.cl.clients[self.cid].conn;
        self.cl.shards[self.owner].set_cert_username(conn, LOCAL_ID.to_string());
        self.client = bridge_client();
        self.link = LocalLink::new();
        self.remote_rx.clear();
        let open = self.link.open(
            LOCAL_ID,
            &self.client.local_subscriptions(),
            self.persistent,
        );
        self.cl.send_raw(self.cid, &open);
        self.step();
        assert!(self.link.is_up());
    }

    /// What the worker does each turn, until nothing moves.
    fn step(&mut self) {
        let now = std::time::Instant::now();
        loop {
            let mut moved = false;
            while let Some(p) = self.cl.next(self.cid) {
                moved = true;
                let mut b = BytesMut::new();
                encode_packet(&p, ProtocolVersion::V5, &mut b);
                let client = &mut self.client;
                let answer = self
                    .link
                    .on_shard_bytes(&b, |d| {
                        client.forward(&d.topic, d.qos, d.retain, d.payload, d.token, now)
                    })
                    .expect("the shard speaks MQTT 5 on the virtual connection");
                if let Some(a) = answer {
                    self.cl.send_raw(self.cid, &a);
                }
            }
            while let Some(m) = self.client.poll_local() {
                if !self.link.can_publish() {
                    self.client.unpoll_local(m);
                    break;
                }
                moved = true;
                let b = self.link.publish(m);
                self.cl.send_raw(self.cid, &b);
            }
            while let Some(token) = self.link.poll_remote_done() {
                moved = true;
                self.client.local_acked(token, now);
            }
            self.client.read_on(now);
            while let Some(token) = self.client.poll_local_done() {
                moved = true;
                self.link.ack(token);
            }
            if let Some(b) = self.link.take() {
                self.cl.send_raw(self.cid, &b);
            }
            if !moved {
                return;
            }
        }
    }

    fn remote_packets(&mut self) -> Vec<Packet> {
        while let Some(b) = self.client.poll_transmit() {
            self.remote_rx.extend_from_slice(&b);
        }
        let mut out = Vec::new();
        while let Some(p) =
            decode_packet(&mut self.remote_rx, ProtocolVersion::V311, 1 << 20).unwrap()
        {
            out.push(p);
        }
        out
    }

    fn remote_publishes(&mut self, topic: &str, qos: QoS, id: u16, payload: &str) {
        self.remote_sends(topic, qos, id, payload, false);
        self.step();
    }

    /// The remote's PUBLISH reaches the bridge client; the worker's turn not yet run.
    fn remote_sends(&mut self, topic: &str, qos: QoS, id: u16, payload: &str, dup: bool) {
        let p = Packet::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            packet_id: id,
            properties: PublishProperties::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        });
        self.client.on_bytes(
            &encode_to_bytes(&p, ProtocolVersion::V311),
            std::time::Instant::now(),
        );
    }

    /// Half a worker turn: the client's messages go into the shard, whose answers
    /// (the local PUBACK / PUBREC) are not read yet.
    fn publish_locally_unanswered(&mut self) {
        while let Some(m) = self.client.poll_local() {
            let b = self.link.publish(m);
            self.cl.send_raw(self.cid, &b);
        }
    }
}

fn publishes(ps: &[Packet]) -> Vec<(String, String, QoS)> {
    ps.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_local_message_on_either_loop_reaches_the_remote() {
    let mut s = Seam::new();
    for accept_on in [0, 1] {
        let dev = s.cl.connect_ok(
            ProtocolVersion::V311,
            &format!("dev{accept_on}"),
            ConnectOpts {
                accept_on,
                ..Default::default()
            },
            false,
        );
        s.cl.publish(
            dev,
            "up/t",
            &format!("m{accept_on}"),
            QoS::AtLeastOnce,
            false,
            1,
        );
        s.cl.expect(dev, Packet::PubAck(PubResp::new(1)));
        s.step();
        assert_eq!(
            publishes(&s.remote_packets()),
            vec![(
                "edge/up/t".to_string(),
                format!("m{accept_on}"),
                QoS::AtLeastOnce
            )]
        );
    }
    // A topic no rule covers stays local.
    let dev =
        s.cl.connect_ok(ProtocolVersion::V311, "dev", ConnectOpts::default(), false);
    s.cl.publish(dev, "other/t", "x", QoS::AtMostOnce, false, 0);
    s.step();
    assert!(publishes(&s.remote_packets()).is_empty());
    // A network client asking for the bridge's client id is refused; the bridge's
    // session stays and still forwards.
    let thief =
        s.cl.connect(ProtocolVersion::V311, LOCAL_ID, ConnectOpts::default());
    match s.cl.next(thief) {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::ClientIdentifierNotValid),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    s.cl.publish(dev, "up/after", "y", QoS::AtMostOnce, false, 0);
    s.step();
    assert_eq!(publishes(&s.remote_packets()).len(), 1);
}

#[test]
fn a_remote_message_reaches_local_subscribers_and_is_not_sent_back() {
    let mut s = Seam::new();
    let mut subs = Vec::new();
    for accept_on in [0, 1] {
        let c = s.cl.connect_ok(
            ProtocolVersion::V311,
            &format!("sub{accept_on}"),
            ConnectOpts {
                accept_on,
                ..Default::default()
            },
            false,
        );
        s.cl.subscribe(c, "down/#", QoS::AtLeastOnce);
        s.cl.subscribe(c, "both/#", QoS::AtLeastOnce);
        subs.push(c);
    }
    s.step();
    s.remote_publishes("down/a", QoS::AtLeastOnce, 3, "d");
    s.remote_publishes("both/b", QoS::AtLeastOnce, 4, "b");
    for c in subs {
        for (topic, payload) in [("down/a", "d"), ("both/b", "b")] {
            match s.cl.next(c) {
                Some(Packet::Publish(p)) => {
                    assert_eq!(
                        (&p.topic[..], &p.payload[..]),
                        (topic.as_bytes(), payload.as_bytes())
                    );
                }
                other => panic!("subscriber {c}: expected {topic}, got {other:?}"),
            }
        }
    }
    // The remote got its PUBACKs and nothing else: `both/b` matched the bridge's own
    // `out` subscription, whose No Local kept the bridge's message from it.
    let back = s.remote_packets();
    assert_eq!(
        back,
        vec![
            Packet::PubAck(PubResp::new(3)),
            Packet::PubAck(PubResp::new(4))
        ]
    );
    assert_eq!(s.client.stats().out_queued, 0);
}

#[test]
fn a_persistent_session_keeps_a_message_until_the_remote_acknowledged_it() {
    let mut s = Seam::with(true);
    let dev =
        s.cl.connect_ok(ProtocolVersion::V311, "dev", ConnectOpts::default(), false);
    s.cl.publish(dev, "up/t", "m", QoS::AtLeastOnce, false, 1);
    s.cl.expect(dev, Packet::PubAck(PubResp::new(1)));
    s.step();
    let want = vec![("edge/up/t".to_string(), "m".to_string(), QoS::AtLeastOnce)];
    assert_eq!(publishes(&s.remote_packets()), want);
    // Sent, not acknowledged by the remote: the local session is still owed it.
    assert_eq!(s.link.held(), 1);

    // A restart before the remote's PUBACK: the new bridge gets it again.
    s.restart_bridge();
    let out = s.remote_packets();
    assert_eq!(publishes(&out), want);
    let id = out
        .iter()
        .find_map(|p| match p {
            Packet::Publish(p) => Some(p.packet_id),
            _ => None,
        })
        .expect("a PUBLISH");
    // The remote acknowledges it: the local ack follows and the session lets go.
    let ack = Packet::PubAck(PubResp::new(id));
    s.client.on_bytes(
        &encode_to_bytes(&ack, ProtocolVersion::V311),
        std::time::Instant::now(),
    );
    s.step();
    assert_eq!(s.link.held(), 0);
    s.restart_bridge();
    assert!(
        publishes(&s.remote_packets()).is_empty(),
        "sent again after the remote acknowledged it"
    );
}

#[test]
fn without_persistence_a_message_is_acknowledged_as_the_bridge_takes_it() {
    let mut s = Seam::new();
    let dev =
        s.cl.connect_ok(ProtocolVersion::V311, "dev", ConnectOpts::default(), false);
    s.cl.publish(dev, "up/t", "m", QoS::AtLeastOnce, false, 1);
    s.cl.expect(dev, Packet::PubAck(PubResp::new(1)));
    s.step();
    assert_eq!(publishes(&s.remote_packets()).len(), 1);
    assert_eq!(s.link.held(), 0);
    s.restart_bridge();
    assert!(publishes(&s.remote_packets()).is_empty());
}

#[test]
fn the_remote_ack_waits_for_the_local_ack_and_a_resend_is_forwarded_once() {
    for (qos, ack) in [
        (QoS::AtLeastOnce, Packet::PubAck(PubResp::new(7))),
        (QoS::ExactlyOnce, Packet::PubRec(PubResp::new(7))),
    ] {
        let mut s = Seam::new();
        let sub =
            s.cl.connect_ok(ProtocolVersion::V5, "sub", ConnectOpts::default(), false);
        s.cl.subscribe(sub, "down/#", QoS::AtMostOnce);
        s.step();
        s.remote_sends("down/a", qos, 7, "d", false);
        s.publish_locally_unanswered();
        // The shard has the PUBLISH, its ack not yet read by the bridge: nothing to
        // the remote (a kill -9 here leaves the remote holding the message).
        assert_eq!(s.remote_packets(), vec![], "{qos:?}");
        assert_eq!(s.link.pending(), 1);
        // The remote resends (DUP) while the local ack is owed: not forwarded again.
        s.remote_sends("down/a", qos, 7, "d", true);
        assert_eq!(s.client.poll_local(), None, "{qos:?}");
        s.step();
        // The local ack came: now the remote's.
        assert_eq!(s.remote_packets(), vec![ack.clone()], "{qos:?}");
        assert_eq!((s.link.pending(), s.client.in_waiting()), (0, 0));
        if qos == QoS::ExactlyOnce {
            // A resend after our PUBREC is answered, not delivered.
            s.remote_sends("down/a", qos, 7, "d", true);
            s.step();
            assert_eq!(s.remote_packets(), vec![ack]);
            s.client.on_bytes(
                &encode_to_bytes(&Packet::PubRel(PubResp::new(7)), ProtocolVersion::V311),
                std::time::Instant::now(),
            );
            s.step();
            assert_eq!(s.remote_packets(), vec![Packet::PubComp(PubResp::new(7))]);
        }
        match s.cl.next(sub) {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"d"),
            other => panic!("{qos:?}: expected the message, got {other:?}"),
        }
        assert_eq!(s.cl.next(sub), None, "{qos:?}: delivered twice");
    }
}

#[test]
fn a_message_published_while_the_local_session_broke_goes_in_again() {
    let mut s = Seam::with(true);
    let sub =
        s.cl.connect_ok(ProtocolVersion::V5, "sub", ConnectOpts::default(), false);
    s.cl.subscribe(sub, "down/#", QoS::AtMostOnce);
    s.step();
    s.remote_sends("down/a", QoS::ExactlyOnce, 9, "d", false);
    s.publish_locally_unanswered();
    // The virtual connection breaks before the shard's PUBREC is read; the same link
    // (the process lives on) reopens and publishes it again with DUP.
    s.cl.drop_connection(s.cid);
    s.link.on_closed();
    s.cid = s.cl.open(s.owner, ProtocolVersion::V5);
    let conn = s.cl.clients[s.cid].conn;
    s.cl.shards[s.owner].set_cert_username(conn, LOCAL_ID.to_string());
    let open = s.link.open(LOCAL_ID, &s.client.local_subscriptions(), true);
    s.cl.send_raw(s.cid, &open);
    s.step();
    assert_eq!(s.remote_packets(), vec![Packet::PubRec(PubResp::new(9))]);
    match s.cl.next(sub) {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"d"),
        other => panic!("expected the message, got {other:?}"),
    }
    assert_eq!(s.cl.next(sub), None, "delivered twice");
}
