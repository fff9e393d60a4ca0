//! The gateway against the real shard, in memory: each SN client's session is a
//! virtual MQTT connection in the shard test `Cluster`, moved through `MqttLink`,
//! beside ordinary MQTT test clients. Proves an SN device and a TCP device exchange
//! messages both ways at QoS 0, 1 and 2 before any socket is involved.

use std::time::Duration;

use ahash::AHashMap;
use bytes::Bytes;

use super::*;
use crate::config::Config;
use crate::protocol::{Packet, ProtocolVersion, QoS as MqttQoS};
use crate::shard::harness::{pubp, Cid, Cluster, ConnectOpts};

const SN: u32 = 7;

struct Seam {
    cl: Cluster,
    gw: Gateway<u32>,
    links: AHashMap<Bytes, (Cid, MqttLink)>,
    sn_inbox: Vec<Message>,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn upstream_client(u: &Upstream) -> Bytes {
    match u {
        Upstream::Connect { client_id, .. }
        | Upstream::Publish { client_id, .. }
        | Upstream::Subscribe { client_id, .. }
        | Upstream::Unsubscribe { client_id, .. }
        | Upstream::Disconnect { client_id } => client_id.clone(),
        Upstream::PublishAnonymous { .. } => b("$sn-anonymous"),
    }
}

impl Seam {
    fn new(shards: usize) -> Seam {
        Seam {
            cl: Cluster::new(shards, Config::default()),
            gw: Gateway::new(GatewayLimits::default()),
            links: AHashMap::new(),
            sn_inbox: Vec::new(),
        }
    }

    /// What the worker will do each turn: gateway output to datagrams and virtual
    /// connections, shard output back through the links, until nothing moves.
    fn step(&mut self) {
        loop {
            let mut moved = false;
            for o in self.gw.poll_output() {
                moved = true;
                match o {
                    Output::Broadcast { .. } => panic!("no ADVERTISE configured"),
                    Output::Datagram { to, bytes } => {
                        assert_eq!(to, SN);
                        self.sn_inbox.push(decode(&bytes).unwrap());
                    }
                    Output::Upstream(u) => {
                        let id = upstream_client(&u);
                        let is_connect = matches!(u, Upstream::Connect { .. });
                        if is_connect || !self.links.contains_key(&id) {
                            let cid = self.cl.open(0, ProtocolVersion::V311);
                            self.links.insert(id.clone(), (cid, MqttLink::new()));
                        }
                        let (cid, link) = self.links.get_mut(&id).unwrap();
                        let p = link.to_packet(u);
                        let cid = *cid;
                        self.cl.send(cid, p);
                    }
                }
            }
            let ids: Vec<Bytes> = self.links.keys().cloned().collect();
            for id in ids {
                let (cid, mut link) = self.links.remove(&id).unwrap();
                while let Some(p) = self.cl.next(cid) {
                    moved = true;
                    if let Some(reply) = link.from_broker(&id, p, &mut self.gw, self.cl.now) {
                        self.cl.send(cid, reply);
                    }
                }
                self.links.insert(id, (cid, link));
            }
            if !moved {
                return;
            }
        }
    }

    fn sn(&mut self, m: Message) {
        let wire = encode_to_bytes(&m).unwrap();
        self.gw.on_datagram(SN, &wire, self.cl.now);
        self.step();
    }

    fn take_sn(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.sn_inbox)
    }

    fn sn_connect(&mut self, id: &str) {
        self.sn(Message::Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: b(id),
        });
        assert_eq!(
            self.take_sn(),
            vec![Message::ConnAck {
                code: ReturnCode::Accepted
            }]
        );
    }

    fn tcp(&mut self, id: &str) -> Cid {
        self.cl
            .connect_ok(ProtocolVersion::V311, id, ConnectOpts::default(), false)
    }
}

fn sn_qos(q: MqttQoS) -> QoS {
    match q {
        MqttQoS::AtMostOnce => QoS::AtMostOnce,
        MqttQoS::AtLeastOnce => QoS::AtLeastOnce,
        MqttQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[test]
fn sn_publish_reaches_tcp_subscriber_at_each_qos() {
    for q in [
        MqttQoS::AtMostOnce,
        MqttQoS::AtLeastOnce,
        MqttQoS::ExactlyOnce,
    ] {
        let mut s = Seam::new(1);
        let tcp = s.tcp("tcp-sub");
        s.cl.subscribe(tcp, "sn/+/temp", q);
        s.sn_connect("sensor");
        s.sn(Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: b("sn/1/temp"),
        });
        let [Message::RegAck {
            topic_id,
            code: ReturnCode::Accepted,
            ..
        }] = s.take_sn()[..]
        else {
            panic!("no REGACK")
        };
        s.sn(Message::Publish {
            dup: false,
            qos: sn_qos(q),
            retain: false,
            topic: TopicRef::Normal(topic_id),
            msg_id: 5,
            data: b("21.5"),
        });
        match q {
            MqttQoS::AtMostOnce => assert!(s.take_sn().is_empty()),
            MqttQoS::AtLeastOnce => assert!(matches!(
                s.take_sn()[..],
                [Message::PubAck { msg_id: 5, .. }]
            )),
            MqttQoS::ExactlyOnce => {
                assert_eq!(s.take_sn(), vec![Message::PubRec { msg_id: 5 }]);
                s.sn(Message::PubRel { msg_id: 5 });
                assert_eq!(s.take_sn(), vec![Message::PubComp { msg_id: 5 }]);
            }
        }
        match s.cl.next(tcp) {
            Some(Packet::Publish(p)) => {
                assert_eq!((p.topic, p.payload, p.qos), (b("sn/1/temp"), b("21.5"), q));
            }
            other => panic!("{q:?}: TCP subscriber got {other:?}"),
        }
    }
}

#[test]
fn tcp_publish_reaches_sn_subscriber_at_each_qos() {
    for q in [
        MqttQoS::AtMostOnce,
        MqttQoS::AtLeastOnce,
        MqttQoS::ExactlyOnce,
    ] {
        let mut s = Seam::new(1);
        s.sn_connect("actuator");
        s.sn(Message::Subscribe {
            dup: false,
            qos: sn_qos(q),
            msg_id: 1,
            topic: SubTopic::Name(b("cmd/#")),
        });
        assert!(matches!(
            s.take_sn()[..],
            [Message::SubAck {
                code: ReturnCode::Accepted,
                topic_id: 0,
                ..
            }]
        ));
        let tcp = s.tcp("tcp-pub");
        s.cl.send(tcp, pubp("cmd/valve", "open", q, false, 9));
        s.step();
        // A wildcard match: REGISTER the concrete topic first.
        let m = s.take_sn();
        let [Message::Register {
            topic_id,
            msg_id,
            ref topic_name,
        }] = m[..]
        else {
            panic!("{m:?}")
        };
        assert_eq!(topic_name, &b("cmd/valve"));
        s.sn(Message::RegAck {
            topic_id,
            msg_id,
            code: ReturnCode::Accepted,
        });
        let m = s.take_sn();
        let [Message::Publish {
            qos,
            topic: TopicRef::Normal(t),
            msg_id,
            ref data,
            ..
        }] = m[..]
        else {
            panic!("{m:?}")
        };
        assert_eq!((qos, t, data.clone()), (sn_qos(q), topic_id, b("open")));
        match q {
            MqttQoS::AtMostOnce => {}
            MqttQoS::AtLeastOnce => s.sn(Message::PubAck {
                topic_id,
                msg_id,
                code: ReturnCode::Accepted,
            }),
            MqttQoS::ExactlyOnce => {
                s.sn(Message::PubRec { msg_id });
                assert_eq!(s.take_sn(), vec![Message::PubRel { msg_id }]);
                s.sn(Message::PubComp { msg_id });
            }
        }
        assert!(s.take_sn().is_empty());
        assert_eq!(s.gw.stats, GatewayStats::default(), "{q:?}");
    }
}

#[test]
fn lost_sn_client_will_reaches_tcp_subscriber() {
    let mut s = Seam::new(1);
    let tcp = s.tcp("watcher");
    s.cl.subscribe(tcp, "dead/#", MqttQoS::AtLeastOnce);
    s.sn(Message::Connect {
        will: true,
        clean_session: true,
        duration: 10,
        client_id: b("w"),
    });
    s.sn(Message::WillTopic(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: b("dead/w"),
    })));
    s.sn(Message::WillMsg { msg: b("lost") });
    s.take_sn();
    s.cl.now += Duration::from_secs(16);
    s.gw.on_tick(s.cl.now);
    s.step();
    match s.cl.next(tcp) {
        Some(Packet::Publish(p)) => assert_eq!((p.topic, p.payload), (b("dead/w"), b("lost"))),
        other => panic!("{other:?}"),
    }
}
