//! The gateway state machine driven with datagrams and a virtual clock, no sockets.
//! Tests are named by the spec section (MQTT-SN 1.2, chapter 6) they exercise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;

use super::*;

const DEV: u32 = 1;
const OTHER: u32 = 2;
/// Where `H::out` files broadcasts.
const BROADCAST: u32 = u32::MAX;

struct H {
    gw: Gateway<u32>,
    now: Instant,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl H {
    fn new() -> H {
        Self::with(GatewayLimits::default())
    }
    fn with(mut limits: GatewayLimits) -> H {
        let mut pre = AHashMap::new();
        pre.insert(7u16, b("pre/seven"));
        limits.predefined = Arc::new(pre);
        H {
            gw: Gateway::new(limits),
            now: Instant::now(),
        }
    }
    fn send(&mut self, from: u32, m: Message) {
        let wire = encode_to_bytes(&m).unwrap();
        self.gw.on_datagram(from, &wire, self.now);
    }
    /// The datagrams and upstream operations since the last call, datagrams decoded.
    fn out(&mut self) -> (Vec<(u32, Message)>, Vec<Upstream>) {
        let mut d = Vec::new();
        let mut u = Vec::new();
        for o in self.gw.poll_output() {
            match o {
                Output::Datagram { to, bytes } => d.push((to, decode(&bytes).unwrap())),
                Output::Broadcast { bytes } => d.push((BROADCAST, decode(&bytes).unwrap())),
                Output::Upstream(x) => u.push(x),
            }
        }
        (d, u)
    }
    fn replies(&mut self) -> Vec<Message> {
        self.out().0.into_iter().map(|(_, m)| m).collect()
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.gw.on_tick(self.now);
    }
    fn connect(&mut self, from: u32, id: &str, duration: u16) {
        self.send(
            from,
            Message::Connect {
                will: false,
                clean_session: true,
                duration,
                client_id: b(id),
            },
        );
        let (d, u) = self.out();
        assert_eq!(
            d,
            vec![(
                from,
                Message::ConnAck {
                    code: ReturnCode::Accepted
                }
            )]
        );
        assert_eq!(
            u,
            vec![Upstream::Connect {
                client_id: b(id),
                clean_session: true,
                keepalive_s: duration
            }]
        );
    }
    fn publish(&mut self, from: u32, qos: QoS, topic: TopicRef, msg_id: u16, data: &str) {
        self.send(
            from,
            Message::Publish {
                dup: false,
                qos,
                retain: false,
                topic,
                msg_id,
                data: b(data),
            },
        );
    }
    fn register(&mut self, from: u32, name: &str) -> u16 {
        self.send(
            from,
            Message::Register {
                topic_id: 0,
                msg_id: 9,
                topic_name: b(name),
            },
        );
        match self.replies().as_slice() {
            [Message::RegAck {
                topic_id,
                msg_id: 9,
                code: ReturnCode::Accepted,
            }] => *topic_id,
            other => panic!("REGACK expected, got {other:?}"),
        }
    }
}

#[test]
fn s6_1_searchgw_answered_with_gwinfo() {
    let mut h = H::new();
    h.send(DEV, Message::SearchGw { radius: 1 });
    assert_eq!(
        h.out().0,
        vec![(
            DEV,
            Message::GwInfo {
                gw_id: 1,
                gw_add: Bytes::new()
            }
        )]
    );
}

#[test]
fn s6_2_connect_without_will() {
    let mut h = H::new();
    h.connect(DEV, "dev", 60);
    assert_eq!(h.gw.client_count(), 1);
}

#[test]
fn s6_2_connect_refuses_bad_client_ids() {
    let mut h = H::new();
    for id in [
        Bytes::new(),
        Bytes::from(vec![b'x'; 24]),
        Bytes::from_static(&[0xff]),
    ] {
        h.send(
            DEV,
            Message::Connect {
                will: false,
                clean_session: true,
                duration: 5,
                client_id: id,
            },
        );
        assert_eq!(
            h.replies(),
            vec![Message::ConnAck {
                code: ReturnCode::NotSupported
            }]
        );
    }
    assert_eq!(h.gw.client_count(), 0);
}

#[test]
fn s6_3_connect_with_will_then_lost_client_publishes_it() {
    let mut h = H::new();
    h.send(
        DEV,
        Message::Connect {
            will: true,
            clean_session: true,
            duration: 10,
            client_id: b("w"),
        },
    );
    assert_eq!(h.replies(), vec![Message::WillTopicReq]);
    let wt = WillTopic {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: b("dead/w"),
    };
    h.send(DEV, Message::WillTopic(Some(wt)));
    assert_eq!(h.replies(), vec![Message::WillMsgReq]);
    h.send(DEV, Message::WillMsg { msg: b("gone") });
    let (d, u) = h.out();
    assert_eq!(
        d,
        vec![(
            DEV,
            Message::ConnAck {
                code: ReturnCode::Accepted
            }
        )]
    );
    assert!(matches!(u.as_slice(), [Upstream::Connect { .. }]));
    // Keepalive 10 s: lost after 1.5 × 10 s of silence.
    h.advance(Duration::from_secs(14));
    assert_eq!(h.out(), (vec![], vec![]));
    h.advance(Duration::from_secs(2));
    let (_, u) = h.out();
    assert_eq!(
        u,
        vec![
            Upstream::Publish {
                client_id: b("w"),
                topic: b("dead/w"),
                qos: 1,
                retain: true,
                payload: b("gone")
            },
            Upstream::Disconnect { client_id: b("w") },
        ]
    );
    assert_eq!(
        (h.gw.stats.clients_lost, h.gw.stats.wills_published),
        (1, 1)
    );
}

#[test]
fn s6_4_clean_disconnect_does_not_publish_the_will() {
    let mut h = H::new();
    h.send(
        DEV,
        Message::Connect {
            will: true,
            clean_session: true,
            duration: 10,
            client_id: b("w"),
        },
    );
    let wt = WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b("dead/w"),
    };
    h.send(DEV, Message::WillTopic(Some(wt)));
    h.send(DEV, Message::WillMsg { msg: b("gone") });
    h.out();
    h.send(DEV, Message::Disconnect { duration: None });
    let (d, u) = h.out();
    assert_eq!(d, vec![(DEV, Message::Disconnect { duration: None })]);
    assert_eq!(u, vec![Upstream::Disconnect { client_id: b("w") }]);
    assert_eq!(h.gw.client_count(), 0);
}

#[test]
fn s6_4_will_topic_and_message_updates() {
    let mut h = H::new();
    h.connect(DEV, "u", 30);
    // No will yet: WILLMSGUPD has nothing to attach to.
    h.send(DEV, Message::WillMsgUpd { msg: b("m") });
    assert_eq!(
        h.replies(),
        vec![Message::WillMsgResp {
            code: ReturnCode::NotSupported
        }]
    );
    let wt = WillTopic {
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: b("u/will"),
    };
    h.send(DEV, Message::WillTopicUpd(Some(wt)));
    assert_eq!(
        h.replies(),
        vec![Message::WillTopicResp {
            code: ReturnCode::Accepted
        }]
    );
    h.send(DEV, Message::WillMsgUpd { msg: b("bye") });
    assert_eq!(
        h.replies(),
        vec![Message::WillMsgResp {
            code: ReturnCode::Accepted
        }]
    );
    h.advance(Duration::from_secs(46));
    let (_, u) = h.out();
    assert_eq!(
        u[0],
        Upstream::Publish {
            client_id: b("u"),
            topic: b("u/will"),
            qos: 2,
            retain: false,
            payload: b("bye")
        }
    );
    // An empty WILLTOPICUPD deletes the will.
    h.connect(DEV, "v", 30);
    let wt = WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b("v/will"),
    };
    h.send(DEV, Message::WillTopicUpd(Some(wt)));
    h.send(DEV, Message::WillTopicUpd(None));
    h.out();
    h.advance(Duration::from_secs(46));
    assert_eq!(h.out().1, vec![Upstream::Disconnect { client_id: b("v") }]);
}

#[test]
fn s6_5_register_from_client_and_publish_qos0_1() {
    let mut h = H::new();
    h.connect(DEV, "p", 60);
    let t = h.register(DEV, "a/b");
    assert_eq!(h.register(DEV, "a/b"), t, "same name, same id");
    h.publish(DEV, QoS::AtMostOnce, TopicRef::Normal(t), 0, "zero");
    let (d, u) = h.out();
    assert!(d.is_empty());
    assert_eq!(
        u,
        vec![Upstream::Publish {
            client_id: b("p"),
            topic: b("a/b"),
            qos: 0,
            retain: false,
            payload: b("zero")
        }]
    );
    h.publish(DEV, QoS::AtLeastOnce, TopicRef::Normal(t), 5, "one");
    let (d, u) = h.out();
    assert_eq!(
        d,
        vec![(
            DEV,
            Message::PubAck {
                topic_id: t,
                msg_id: 5,
                code: ReturnCode::Accepted
            }
        )]
    );
    assert_eq!(u.len(), 1);
}

#[test]
fn s6_5_register_refuses_wildcards() {
    let mut h = H::new();
    h.connect(DEV, "p", 60);
    h.send(
        DEV,
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: b("a/+"),
        },
    );
    assert_eq!(
        h.replies(),
        vec![Message::RegAck {
            topic_id: 0,
            msg_id: 1,
            code: ReturnCode::NotSupported
        }]
    );
}

#[test]
fn s6_7_publish_qos2_exactly_once_and_unknown_topic_id() {
    let mut h = H::new();
    h.connect(DEV, "q", 60);
    let t = h.register(DEV, "x");
    h.publish(DEV, QoS::ExactlyOnce, TopicRef::Normal(t), 3, "two");
    let (d, u) = h.out();
    assert_eq!(d, vec![(DEV, Message::PubRec { msg_id: 3 })]);
    assert_eq!(u.len(), 1);
    // A retransmitted PUBLISH before PUBREL is acknowledged, not published again.
    h.publish(DEV, QoS::ExactlyOnce, TopicRef::Normal(t), 3, "two");
    let (d, u) = h.out();
    assert_eq!(d, vec![(DEV, Message::PubRec { msg_id: 3 })]);
    assert!(u.is_empty());
    h.send(DEV, Message::PubRel { msg_id: 3 });
    assert_eq!(h.replies(), vec![Message::PubComp { msg_id: 3 }]);
    h.publish(DEV, QoS::AtLeastOnce, TopicRef::Normal(999), 4, "?");
    assert_eq!(
        h.replies(),
        vec![Message::PubAck {
            topic_id: 999,
            msg_id: 4,
            code: ReturnCode::InvalidTopicId
        }]
    );
}

#[test]
fn s6_6_predefined_and_short_topics() {
    let mut h = H::new();
    h.connect(DEV, "s", 60);
    h.publish(DEV, QoS::AtMostOnce, TopicRef::Predefined(7), 0, "p");
    h.publish(DEV, QoS::AtMostOnce, TopicRef::Short(*b"ab"), 0, "s");
    let topics: Vec<Bytes> = h
        .out()
        .1
        .into_iter()
        .map(|u| match u {
            Upstream::Publish { topic, .. } => topic,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, vec![b("pre/seven"), b("ab")]);
}

#[test]
fn s6_8_publish_minus_one_needs_no_connection() {
    let mut h = H::new();
    h.publish(OTHER, QoS::MinusOne, TopicRef::Predefined(7), 0, "anon");
    h.publish(OTHER, QoS::MinusOne, TopicRef::Short(*b"zz"), 0, "anon2");
    h.publish(OTHER, QoS::MinusOne, TopicRef::Normal(1), 0, "refused");
    let (d, u) = h.out();
    assert!(d.is_empty());
    assert_eq!(
        u,
        vec![
            Upstream::PublishAnonymous {
                topic: b("pre/seven"),
                retain: false,
                payload: b("anon")
            },
            Upstream::PublishAnonymous {
                topic: b("zz"),
                retain: false,
                payload: b("anon2")
            },
        ]
    );
    assert_eq!(h.gw.stats.unexpected_msgs, 1);
    assert_eq!(h.gw.client_count(), 0);
}

#[test]
fn s6_9_subscribe_by_name_returns_topic_id_and_delivery_uses_it() {
    let mut h = H::new();
    h.connect(DEV, "sub", 60);
    h.send(
        DEV,
        Message::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 1,
            topic: SubTopic::Name(b("t/1")),
        },
    );
    let (d, u) = h.out();
    let Message::SubAck {
        topic_id,
        code: ReturnCode::Accepted,
        msg_id: 1,
        ..
    } = d[0].1
    else {
        panic!("{d:?}")
    };
    assert_ne!(topic_id, 0);
    assert_eq!(
        u,
        vec![Upstream::Subscribe {
            client_id: b("sub"),
            filter: b("t/1"),
            qos: 1
        }]
    );
    h.gw.on_deliver(&b("sub"), b("t/1"), 1, false, b("hello"), h.now);
    let m = h.replies();
    let [Message::Publish {
        qos: QoS::AtLeastOnce,
        topic: TopicRef::Normal(t),
        msg_id,
        ref data,
        ..
    }] = m.as_slice()
    else {
        panic!("{m:?}")
    };
    assert_eq!((*t, data.clone()), (topic_id, b("hello")));
    h.send(
        DEV,
        Message::PubAck {
            topic_id,
            msg_id: *msg_id,
            code: ReturnCode::Accepted,
        },
    );
    assert_eq!(h.gw.in_flight_msg_id("sub".as_bytes()), None);
}

#[test]
fn s6_10_wildcard_subscription_registers_concrete_topic_before_publish() {
    let mut h = H::new();
    h.connect(DEV, "wc", 60);
    h.send(
        DEV,
        Message::Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 2,
            topic: SubTopic::Name(b("s/#")),
        },
    );
    let m = h.replies();
    assert!(matches!(
        m.as_slice(),
        [Message::SubAck {
            topic_id: 0,
            code: ReturnCode::Accepted,
            ..
        }]
    ));
    h.gw.on_deliver(&b("wc"), b("s/a/b"), 0, false, b("v1"), h.now);
    h.gw.on_deliver(&b("wc"), b("s/a/b"), 0, false, b("v2"), h.now);
    let m = h.replies();
    let [Message::Register {
        topic_id,
        msg_id,
        topic_name,
    }] = m.as_slice()
    else {
        panic!("{m:?}")
    };
    assert_eq!(topic_name, &b("s/a/b"));
    h.send(
        DEV,
        Message::RegAck {
            topic_id: *topic_id,
            msg_id: *msg_id,
            code: ReturnCode::Accepted,
        },
    );
    let m = h.replies();
    assert_eq!(
        m.len(),
        2,
        "both queued QoS 0 messages follow the REGACK: {m:?}"
    );
    for (m, want) in m.iter().zip(["v1", "v2"]) {
        assert!(
            matches!(m, Message::Publish { topic: TopicRef::Normal(t), data, .. } if t == topic_id && data == &b(want))
        );
    }
}

#[test]
fn s6_11_unsubscribe() {
    let mut h = H::new();
    h.connect(DEV, "un", 60);
    h.send(
        DEV,
        Message::Unsubscribe {
            msg_id: 4,
            topic: SubTopic::Name(b("a/+")),
        },
    );
    let (d, u) = h.out();
    assert_eq!(d, vec![(DEV, Message::UnsubAck { msg_id: 4 })]);
    assert_eq!(
        u,
        vec![Upstream::Unsubscribe {
            client_id: b("un"),
            filter: b("a/+")
        }]
    );
}

#[test]
fn s6_12_pingreq_keeps_the_client_alive() {
    let mut h = H::new();
    h.connect(DEV, "k", 10);
    for _ in 0..5 {
        h.advance(Duration::from_secs(9));
        h.send(DEV, Message::PingReq { client_id: None });
        assert_eq!(h.replies(), vec![Message::PingResp]);
    }
    assert_eq!(h.gw.stats.clients_lost, 0);
}

#[test]
fn s6_13_retransmission_with_dup_then_lost_after_nretry() {
    let mut h = H::with(GatewayLimits {
        retry_interval: Duration::from_secs(2),
        max_retries: 3,
        ..GatewayLimits::default()
    });
    h.connect(DEV, "r", 600);
    h.send(
        DEV,
        Message::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 1,
            topic: SubTopic::Short(*b"ab"),
        },
    );
    h.out();
    h.gw.on_deliver(&b("r"), b("ab"), 1, false, b("x"), h.now);
    let m = h.replies();
    assert!(matches!(
        m.as_slice(),
        [Message::Publish {
            dup: false,
            topic: TopicRef::Short(_),
            ..
        }]
    ));
    for _ in 0..3 {
        h.advance(Duration::from_secs(2));
        let m = h.replies();
        assert!(
            matches!(m.as_slice(), [Message::Publish { dup: true, .. }]),
            "{m:?}"
        );
    }
    h.advance(Duration::from_secs(2));
    assert_eq!(h.out().1, vec![Upstream::Disconnect { client_id: b("r") }]);
    assert_eq!((h.gw.stats.retransmits, h.gw.stats.clients_lost), (3, 1));
}

#[test]
fn s6_13_qos2_delivery_pubrec_pubrel_pubcomp() {
    let mut h = H::new();
    h.connect(DEV, "q2", 60);
    h.send(
        DEV,
        Message::Subscribe {
            dup: false,
            qos: QoS::ExactlyOnce,
            msg_id: 1,
            topic: SubTopic::Predefined(7),
        },
    );
    let m = h.replies();
    assert!(matches!(
        m.as_slice(),
        [Message::SubAck { topic_id: 7, .. }]
    ));
    h.gw.on_deliver(&b("q2"), b("pre/seven"), 2, false, b("x"), h.now);
    let m = h.replies();
    let [Message::Publish {
        qos: QoS::ExactlyOnce,
        topic: TopicRef::Predefined(7),
        msg_id,
        ..
    }] = m.as_slice()
    else {
        panic!("{m:?}")
    };
    let msg_id = *msg_id;
    h.send(DEV, Message::PubRec { msg_id });
    assert_eq!(h.replies(), vec![Message::PubRel { msg_id }]);
    h.send(DEV, Message::PubComp { msg_id });
    assert_eq!(h.gw.in_flight_msg_id("q2".as_bytes()), None);
}

#[test]
fn s6_14_sleeping_client_buffers_bounded_and_delivers_on_wake_pingreq() {
    let mut h = H::with(GatewayLimits {
        max_buffered_msgs: 2,
        ..GatewayLimits::default()
    });
    h.connect(DEV, "zz", 60);
    h.send(
        DEV,
        Message::Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 1,
            topic: SubTopic::Short(*b"sl"),
        },
    );
    h.out();
    h.send(
        DEV,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    assert_eq!(h.replies(), vec![Message::Disconnect { duration: None }]);
    for v in ["1", "2", "3"] {
        h.gw.on_deliver(&b("zz"), b("sl"), 0, false, b(v), h.now);
    }
    assert!(
        h.replies().is_empty(),
        "nothing is sent to a sleeping client"
    );
    assert_eq!(h.gw.stats.buffered_dropped, 1);
    // Asleep for 600 s: still there after 10 minutes; wakes from a new address.
    h.advance(Duration::from_secs(600));
    h.send(
        OTHER,
        Message::PingReq {
            client_id: Some(b("zz")),
        },
    );
    let (d, _) = h.out();
    let data: Vec<_> = d
        .iter()
        .map(|(to, m)| {
            assert_eq!(*to, OTHER);
            m.clone()
        })
        .collect();
    assert!(matches!(&data[0], Message::Publish { data, .. } if data == &b("1")));
    assert!(matches!(&data[1], Message::Publish { data, .. } if data == &b("2")));
    assert_eq!(data[2], Message::PingResp);
    assert_eq!(data.len(), 3);
}

#[test]
fn s6_14_sleeper_that_never_wakes_is_lost() {
    let mut h = H::new();
    h.connect(DEV, "gone", 60);
    h.send(
        DEV,
        Message::Disconnect {
            duration: Some(100),
        },
    );
    h.out();
    h.advance(Duration::from_secs(149));
    assert_eq!(h.gw.stats.clients_lost, 0);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.gw.stats.clients_lost, 1);
}

#[test]
fn bounds_max_clients_topic_ids_and_datagram_size() {
    let mut h = H::with(GatewayLimits {
        max_clients: 2,
        max_topic_ids: 2,
        max_datagram_bytes: 64,
        ..GatewayLimits::default()
    });
    h.connect(1, "a", 60);
    h.connect(2, "b", 60);
    h.send(
        3,
        Message::Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: b("c"),
        },
    );
    assert_eq!(
        h.replies(),
        vec![Message::ConnAck {
            code: ReturnCode::Congestion
        }]
    );
    assert_eq!(h.gw.stats.connects_refused_full, 1);
    h.register(1, "t1");
    h.register(1, "t2");
    h.send(
        1,
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: b("t3"),
        },
    );
    assert_eq!(
        h.replies(),
        vec![Message::RegAck {
            topic_id: 0,
            msg_id: 1,
            code: ReturnCode::Congestion
        }]
    );
    assert_eq!(h.gw.stats.topic_ids_refused, 1);
    let big = Message::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicRef::Short(*b"ab"),
        msg_id: 0,
        data: Bytes::from(vec![0; 100]),
    };
    h.send(1, big);
    h.gw.on_datagram(1, &Bytes::from_static(&[9, 9, 9]), h.now);
    assert_eq!(h.gw.stats.bad_datagrams, 2);
    assert!(h.out().1.is_empty());
}

#[test]
fn messages_without_a_session_are_counted_and_dropped() {
    let mut h = H::new();
    h.send(DEV, Message::PingReq { client_id: None });
    h.publish(DEV, QoS::AtLeastOnce, TopicRef::Short(*b"ab"), 1, "x");
    assert_eq!(h.out(), (vec![], vec![]));
    assert_eq!(h.gw.stats.unexpected_msgs, 2);
}

#[test]
fn s6_3_reconnect_from_a_new_address_takes_over() {
    let mut h = H::new();
    h.connect(DEV, "mv", 60);
    h.connect(OTHER, "mv", 60);
    assert_eq!(h.gw.client_count(), 1);
    h.send(DEV, Message::PingReq { client_id: None });
    assert!(
        h.replies().is_empty(),
        "the old address no longer maps to the client"
    );
    h.send(OTHER, Message::PingReq { client_id: None });
    assert_eq!(h.replies(), vec![Message::PingResp]);
}

proptest::proptest! {
    /// The `sn_gateway` fuzz property over random scripts, with valid messages mixed
    /// in so sessions get past CONNECT.
    #[test]
    fn random_scripts_keep_the_invariants(
        steps in proptest::collection::vec((0u8..8, 0u8..=255, 0usize..6), 0..80)
    ) {
        let valid = [
            encode_to_bytes(&Message::Connect { will: false, clean_session: true, duration: 1, client_id: b("a") }).unwrap(),
            encode_to_bytes(&Message::Subscribe { dup: false, qos: QoS::AtLeastOnce, msg_id: 1, topic: SubTopic::Name(b("t/#")) }).unwrap(),
            encode_to_bytes(&Message::Register { topic_id: 0, msg_id: 2, topic_name: b("t/9") }).unwrap(),
            encode_to_bytes(&Message::Disconnect { duration: Some(2) }).unwrap(),
            encode_to_bytes(&Message::PingReq { client_id: Some(b("a")) }).unwrap(),
            encode_to_bytes(&Message::RegAck { topic_id: 1, msg_id: 1, code: ReturnCode::Accepted }).unwrap(),
        ];
        let mut script = Vec::new();
        for (op, arg, pick) in steps {
            if op == 0 {
                // A datagram op: length then the bytes of one valid message.
                let m = &valid[pick];
                script.extend([0, m.len() as u8]);
                script.extend_from_slice(m);
            } else {
                script.extend([op, arg]);
            }
        }
        check_gateway_ops(&script);
    }
}

#[test]
fn fuzz_seeds_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/sn_gateway");
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut n = 0;
    for e in entries {
        check_gateway_ops(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 4, "only {n} seeds in {dir}");
}

#[test]
fn s6_14_each_return_to_sleep_restarts_the_sleep_deadline() {
    let mut h = H::new();
    h.connect(DEV, "nap", 10);
    h.send(
        DEV,
        Message::Disconnect {
            duration: Some(300),
        },
    );
    h.out();
    for _ in 0..3 {
        h.advance(Duration::from_secs(299));
        h.send(
            DEV,
            Message::PingReq {
                client_id: Some(b("nap")),
            },
        );
        assert_eq!(h.replies(), vec![Message::PingResp]);
    }
    assert_eq!(
        h.gw.stats.clients_lost, 0,
        "keepalive 10 s does not apply while asleep"
    );
}

#[test]
fn s6_2_keepalive_zero_means_no_keepalive() {
    let mut h = H::new();
    h.connect(DEV, "forever", 0);
    h.advance(Duration::from_secs(100_000));
    assert_eq!(h.gw.stats.clients_lost, 0);
    assert_eq!(h.gw.next_deadline(), None);
}

#[test]
fn s6_14_wake_from_an_address_another_client_holds_replaces_it() {
    let mut h = H::new();
    h.connect(DEV, "sleeper", 60);
    h.send(
        DEV,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    h.out();
    h.connect(OTHER, "holder", 60);
    h.out();
    h.send(
        OTHER,
        Message::PingReq {
            client_id: Some(b("sleeper")),
        },
    );
    let (d, u) = h.out();
    assert_eq!(d, vec![(OTHER, Message::PingResp)]);
    assert_eq!(
        u,
        vec![Upstream::Disconnect {
            client_id: b("holder")
        }]
    );
    assert_eq!(h.gw.client_count(), 1);
    h.gw.check_invariants();
}

#[test]
fn s6_1_advertise_every_interval_with_that_duration() {
    let mut h = H::with(GatewayLimits {
        advertise_interval: Some(Duration::from_secs(900)),
        gw_id: 4,
        ..GatewayLimits::default()
    });
    let adv = (
        BROADCAST,
        Message::Advertise {
            gw_id: 4,
            duration: 900,
        },
    );
    h.advance(Duration::ZERO);
    assert_eq!(h.out().0, vec![adv.clone()], "the first tick advertises");
    h.advance(Duration::from_secs(899));
    assert!(h.out().0.is_empty());
    assert_eq!(h.gw.next_deadline(), Some(h.now + Duration::from_secs(1)));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.out().0, vec![adv]);
}
