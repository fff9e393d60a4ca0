//! The MQTT-SN gateway of the real binary (`--mqttsn-listen`), over UDP on loopback:
//! SN and TCP clients exchange messages both ways at QoS 0, 1, 2 and −1 (spec 6.8),
//! a wildcard delivery is REGISTERed first (6.10), a sleeping client's messages wait
//! for its wake-up PINGREQ (6.14), a lost client's will reaches a TCP subscriber
//! (6.3), and a flood of garbage and spoofed-address CONNECTs (127.0.0.x) is counted
//! and dropped while TCP clients carry on. Brokers run with two loops so that SN
//! clients owned by either loop (and datagrams forwarded between them) are covered.
//! Every read is bounded; nothing asserts a wall-clock duration.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use ringmq::gateway::mqttsn::{
    decode, encode_to_bytes, Message, QoS, ReturnCode, SubTopic, TopicRef, WillTopic,
};
use support::{id_on_shard, uniq, Broker, Launch, RawClient};

const RECV_TIMEOUT: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The gateway's address from the `ringmq mqttsn on ADDR` start-up line.
fn sn_addr(broker: &Broker) -> SocketAddr {
    broker
        .startup_lines()
        .iter()
        .find_map(|l| l.strip_prefix("ringmq mqttsn on ")?.split(' ').next())
        .expect("the broker printed its `ringmq mqttsn on` line")
        .parse()
        .expect("an address")
}

fn http_addr(broker: &Broker) -> String {
    broker.http_addr().expect("an HTTP listener")
}

/// Every sample of `/metrics`, `name{labels}` → value.
fn metrics(broker: &Broker) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(http_addr(broker)).expect("connect to /metrics");
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &HashMap<String, f64>, key: &str) -> u64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} not exported")) as u64
}

/// `/metrics` once `key` has reached `at_least`, or as last read after [`SETTLE`]
/// (the caller asserts on it either way). A datagram waits in the socket of whichever
/// loop the kernel picked, so the loop that counts it may not have read it yet when
/// the test's own quiet wait ends; on a loaded runner that can take longer than any
/// short wait.
fn metrics_when(broker: &Broker, key: &str, at_least: u64) -> HashMap<String, f64> {
    metrics_until(broker, |m| metric(m, key) >= at_least)
}

/// `/metrics` once `done` holds for it, or as last read after [`SETTLE`] (the caller
/// asserts on it either way); see [`metrics_when`].
fn metrics_until(
    broker: &Broker,
    mut done: impl FnMut(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let m = metrics(broker);
        if done(&m) || std::time::Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bound on waiting for a loop to count what it has not read yet.
const SETTLE: Duration = Duration::from_secs(30);

/// An MQTT-SN client on its own UDP socket; every read bounded by `RECV_TIMEOUT`.
struct Sn {
    sock: UdpSocket,
    id: String,
}

impl Sn {
    fn new(gw: SocketAddr, id: &str) -> Sn {
        Sn::bound(gw, id, "127.0.0.1:0")
    }

    fn bound(gw: SocketAddr, id: &str, local: &str) -> Sn {
        let sock = UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind {local}: {e}"));
        sock.connect(gw).expect("connect udp");
        sock.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        Sn {
            sock,
            id: id.to_string(),
        }
    }

    fn send(&self, m: &Message) {
        let wire = encode_to_bytes(m).expect("encodes");
        self.sock.send(&wire).expect("send datagram");
    }

    fn recv(&self) -> Message {
        let mut buf = [0u8; 2048];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{}: no datagram within {RECV_TIMEOUT:?}: {e}", self.id));
        decode(&Bytes::copy_from_slice(&buf[..n])).expect("the gateway sends valid MQTT-SN")
    }

    /// Spec 6.2: CONNECT (clean session, no will) → CONNACK accepted.
    fn connect(gw: SocketAddr, id: &str, duration: u16) -> Sn {
        let sn = Sn::new(gw, id);
        sn.send(&Message::Connect {
            will: false,
            clean_session: true,
            duration,
            client_id: b(id),
        });
        assert_eq!(
            sn.recv(),
            Message::ConnAck {
                code: ReturnCode::Accepted
            },
            "{id}"
        );
        sn
    }

    /// Spec 6.5: REGISTER → REGACK with the topic id.
    fn register(&self, topic: &str, msg_id: u16) -> u16 {
        self.send(&Message::Register {
            topic_id: 0,
            msg_id,
            topic_name: b(topic),
        });
        match self.recv() {
            Message::RegAck {
                topic_id,
                msg_id: m,
                code: ReturnCode::Accepted,
            } if m == msg_id => topic_id,
            other => panic!("{}: REGISTER {topic}: {other:?}", self.id),
        }
    }

    /// Spec 6.9: SUBSCRIBE → SUBACK; the topic id it carries (0 for a wildcard).
    fn subscribe(&self, filter: &str, qos: QoS, msg_id: u16) -> u16 {
        self.send(&Message::Subscribe {
            dup: false,
            qos,
            msg_id,
            topic: SubTopic::Name(b(filter)),
        });
        match self.recv() {
            Message::SubAck {
                msg_id: m,
                code: ReturnCode::Accepted,
                topic_id,
                ..
            } if m == msg_id => topic_id,
            other => panic!("{}: SUBSCRIBE {filter}: {other:?}", self.id),
        }
    }

    /// A delivery: REGISTER of the concrete topic first when the gateway has not
    /// told us its id yet (answered), then the PUBLISH, acknowledged as its QoS
    /// asks. Returns (topic id, qos, payload).
    fn deliver(&self, names: &mut HashMap<u16, String>) -> (String, QoS, Bytes) {
        loop {
            match self.recv() {
                Message::Register {
                    topic_id,
                    msg_id,
                    topic_name,
                } => {
                    names.insert(topic_id, String::from_utf8_lossy(&topic_name).into());
                    self.send(&Message::RegAck {
                        topic_id,
                        msg_id,
                        code: ReturnCode::Accepted,
                    });
                }
                Message::Publish {
                    qos,
                    topic: TopicRef::Normal(id),
                    msg_id,
                    data,
                    ..
                } => {
                    let topic = names
                        .get(&id)
                        .unwrap_or_else(|| panic!("{}: PUBLISH on unregistered id {id}", self.id))
                        .clone();
                    match qos {
                        QoS::AtLeastOnce => self.send(&Message::PubAck {
                            topic_id: id,
                            msg_id,
                            code: ReturnCode::Accepted,
                        }),
                        QoS::ExactlyOnce => {
                            self.send(&Message::PubRec { msg_id });
                            assert_eq!(self.recv(), Message::PubRel { msg_id });
                            self.send(&Message::PubComp { msg_id });
                        }
                        _ => {}
                    }
                    return (topic, qos, data);
                }
                other => panic!("{}: expected a delivery, got {other:?}", self.id),
            }
        }
    }
}

fn sn_broker(extra: &[&str]) -> Broker {
    let mut args = vec!["--shards", "2", "--mqttsn-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Launch::new(&args).spawn()
}

/// Short SN client ids (spec 5.3.1: at most 23 characters) owned by `shard` of 2.
fn sn_id(tag: &str, shard: usize) -> String {
    id_on_shard(&uniq(tag), shard, 2)
}

const QOS: [(QoS, u8); 3] = [
    (QoS::AtMostOnce, 0),
    (QoS::AtLeastOnce, 1),
    (QoS::ExactlyOnce, 2),
];

/// Spec 6.8 (client's PUBLISH at QoS 0, 1, 2) through the gateway to a TCP
/// subscriber, from SN clients owned by each loop.
#[test]
fn sn_publish_reaches_tcp_subscriber_at_qos_0_1_2() {
    let broker = sn_broker(&[]);
    let gw = sn_addr(&broker);
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("tcpsub"));
    sub.subscribe_ok(1, "sn/+/temp", 2);
    for shard in 0..2 {
        let id = sn_id("snpub", shard);
        let sn = Sn::connect(gw, &id, 60);
        let topic = format!("sn/{id}/temp");
        let topic_id = sn.register(&topic, 1);
        for (q, n) in QOS {
            let msg_id = 10 + u16::from(n);
            let payload = format!("{id} qos {n}");
            sn.send(&Message::Publish {
                dup: false,
                qos: q,
                retain: false,
                topic: TopicRef::Normal(topic_id),
                msg_id,
                data: b(&payload),
            });
            match q {
                QoS::AtLeastOnce => assert_eq!(
                    sn.recv(),
                    Message::PubAck {
                        topic_id,
                        msg_id,
                        code: ReturnCode::Accepted
                    }
                ),
                QoS::ExactlyOnce => {
                    assert_eq!(sn.recv(), Message::PubRec { msg_id });
                    sn.send(&Message::PubRel { msg_id });
                    assert_eq!(sn.recv(), Message::PubComp { msg_id });
                }
                _ => {}
            }
            let m = sub.recv_publish_ack();
            assert_eq!(
                (m.topic.as_str(), m.payload.as_slice(), m.qos),
                (topic.as_str(), payload.as_bytes(), n),
                "shard {shard}"
            );
        }
        sn.send(&Message::Disconnect { duration: None });
        assert_eq!(sn.recv(), Message::Disconnect { duration: None });
    }
}

/// Spec 6.8, QoS −1: a publish with no connection at all, on a predefined topic id
/// (from `--mqttsn-predefined-topics-file`) and on a short topic name.
#[test]
fn qos_minus_one_publish_without_connection_reaches_tcp_subscriber() {
    let dir = std::env::temp_dir().join(uniq("snpre"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("predefined");
    std::fs::write(&file, "# id topic\n7 plant/boiler/alarm\n").unwrap();
    let broker = sn_broker(&["--mqttsn-predefined-topics-file", file.to_str().unwrap()]);
    let gw = sn_addr(&broker);
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("tcpsub"));
    sub.subscribe_ok(1, "plant/#", 0);
    sub.subscribe_ok(2, "ab", 0);
    let sn = Sn::new(gw, "anonymous");
    sn.send(&Message::Publish {
        dup: false,
        qos: QoS::MinusOne,
        retain: false,
        topic: TopicRef::Predefined(7),
        msg_id: 0,
        data: b("overheat"),
    });
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("plant/boiler/alarm", &b"overheat"[..])
    );
    sn.send(&Message::Publish {
        dup: false,
        qos: QoS::MinusOne,
        retain: false,
        topic: TopicRef::Short(*b"ab"),
        msg_id: 0,
        data: b("short"),
    });
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("ab", &b"short"[..])
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// TCP publishes at QoS 0, 1, 2 reach SN subscribers of a wildcard filter, each
/// topic REGISTERed before its first PUBLISH (spec 6.10), and a retained message is
/// delivered on SUBSCRIBE; for SN clients owned by each loop.
#[test]
fn tcp_publish_reaches_sn_subscriber_registered_first() {
    let broker = sn_broker(&[]);
    let gw = sn_addr(&broker);
    let mut publisher = RawClient::connect_v311(broker.addr(), &uniq("tcppub"));
    publisher.publish_complete("cmd/retained", 1, true, 1, b"kept");
    for shard in 0..2 {
        let id = sn_id("snsub", shard);
        let sn = Sn::connect(gw, &id, 60);
        assert_eq!(sn.subscribe("cmd/#", QoS::ExactlyOnce, 1), 0);
        let mut names = HashMap::new();
        let (topic, _, data) = sn.deliver(&mut names);
        assert_eq!((topic.as_str(), &data[..]), ("cmd/retained", &b"kept"[..]));
        for (q, n) in QOS {
            let topic = format!("cmd/{id}/{n}");
            publisher.publish_complete(&topic, n, false, 10 + u16::from(n), b"go");
            let got = sn.deliver(&mut names);
            assert_eq!(got, (topic, q, b("go")), "shard {shard}");
        }
        assert_eq!(names.len(), 4, "one REGISTER per concrete topic: {names:?}");
    }
}

/// Spec 6.14: a client asleep (DISCONNECT with duration) gets nothing; its messages
/// are buffered and delivered after its wake-up PINGREQ, then PINGRESP.
#[test]
fn sleeping_client_gets_buffered_messages_on_wake_up() {
    let broker = sn_broker(&[]);
    let gw = sn_addr(&broker);
    let mut publisher = RawClient::connect_v311(broker.addr(), &uniq("tcppub"));
    for shard in 0..2 {
        let id = sn_id("sleep", shard);
        let sn = Sn::connect(gw, &id, 60);
        let topic = format!("sleep/{id}");
        let topic_id = sn.subscribe(&topic, QoS::AtLeastOnce, 1);
        assert_ne!(topic_id, 0, "a concrete topic's SUBACK carries its id");
        sn.send(&Message::Disconnect {
            duration: Some(600),
        });
        assert_eq!(sn.recv(), Message::Disconnect { duration: None });
        for i in 0..3u16 {
            publisher.publish_complete(&topic, 1, false, 20 + i, format!("m{i}").as_bytes());
        }
        // The publishes were acknowledged by the broker; none went to the sleeper.
        sn.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            sn.sock.recv(&mut buf).is_err(),
            "a sleeping client was sent a datagram"
        );
        sn.sock.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        sn.send(&Message::PingReq {
            client_id: Some(b(&id)),
        });
        let mut names = HashMap::from([(topic_id, topic.clone())]);
        for i in 0..3 {
            let (t, q, data) = sn.deliver(&mut names);
            assert_eq!(
                (t.as_str(), q, data),
                (topic.as_str(), QoS::AtLeastOnce, b(&format!("m{i}")))
            );
        }
        assert_eq!(sn.recv(), Message::PingResp);
    }
}

/// Spec 6.3 with 6.4's will: a client that falls silent past 1.5 × its keepalive is
/// lost, and its will reaches a TCP subscriber.
#[test]
fn lost_sn_client_will_reaches_tcp_subscriber() {
    let broker = sn_broker(&[]);
    let gw = sn_addr(&broker);
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("watch"));
    sub.subscribe_ok(1, "dead/#", 1);
    let id = sn_id("will", 1);
    let sn = Sn::new(gw, &id);
    sn.send(&Message::Connect {
        will: true,
        clean_session: true,
        duration: 1,
        client_id: b(&id),
    });
    assert_eq!(sn.recv(), Message::WillTopicReq);
    sn.send(&Message::WillTopic(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: b(&format!("dead/{id}")),
    })));
    assert_eq!(sn.recv(), Message::WillMsgReq);
    sn.send(&Message::WillMsg { msg: b("gone") });
    assert_eq!(
        sn.recv(),
        Message::ConnAck {
            code: ReturnCode::Accepted
        }
    );
    // Silence: the gateway's keepalive (1.5 s) ends the client.
    let m = sub.recv_publish_ack();
    assert_eq!(
        (m.topic, m.payload.as_slice()),
        (format!("dead/{id}"), &b"gone"[..])
    );
    let m = metrics(&broker);
    assert_eq!(metric(&m, "ringmq_mqttsn_clients_lost_total"), 1);
    assert_eq!(metric(&m, "ringmq_mqttsn_wills_published_total"), 1);
}

/// Receive-queue drops of the broker's UDP sockets on `port` (/proc/net/udp, the
/// last column): datagrams the kernel dropped before the broker could read them.
fn kernel_udp_drops(port: u16) -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    let port = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&port))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Garbage datagrams and CONNECTs from spoofed addresses (127.0.0.2..=127.0.0.121)
/// are counted and dropped or refused at `mqttsn_max_clients`; TCP clients carry on
/// meanwhile, and an SN client that was connected before still works.
#[test]
fn flood_of_garbage_and_spoofed_connects_leaves_tcp_clients_unaffected() {
    let broker = sn_broker(&["--mqttsn-max-clients", "16"]);
    let gw = sn_addr(&broker);
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("fsub"));
    sub.subscribe_ok(1, "flood/tcp", 1);
    let mut publisher = RawClient::connect_v311(broker.addr(), &uniq("fpub"));
    let survivor = Sn::connect(gw, &sn_id("surv", 0), 600);
    let survivor_topic = survivor.register("flood/sn", 1);

    // Garbage: reserved types, bad lengths, truncated frames, random bytes.
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x02, 0x20],
        vec![0x05, 0x04, 0x00],
        vec![0x01, 0x00, 0x03, 0x04],
        vec![0x03, 0xfe, 0x00],
        vec![0xff; 40],
        vec![0x06, 0x0c, 0x60, 0x00, 0x01],
    ];
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent_garbage = 0u64;
    let mut sent_connects = 0u64;
    for round in 0..120u32 {
        for g in &garbage {
            flooder.send_to(g, gw).unwrap();
            sent_garbage += 1;
        }
        // A spoofed source: another loopback address, a client id of its own.
        let ip = format!("127.0.0.{}", 2 + round);
        let s = Sn::bound(gw, &format!("spoof{round}"), &format!("{ip}:0"));
        s.send(&Message::Connect {
            will: false,
            clean_session: true,
            duration: 600,
            client_id: b(&format!("spoof{round}")),
        });
        sent_connects += 1;
        // TCP traffic goes on during the flood.
        if round % 20 == 0 {
            publisher.publish_complete("flood/tcp", 1, false, 1 + round as u16, b"tcp");
            let m = sub.recv_publish_ack();
            assert_eq!(m.payload, b"tcp");
        }
    }
    // The connected SN client still publishes through the flood's aftermath.
    let mut sub_sn = RawClient::connect_v311(broker.addr(), &uniq("fsub2"));
    sub_sn.subscribe_ok(1, "flood/sn", 1);
    survivor.send(&Message::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicRef::Normal(survivor_topic),
        msg_id: 2,
        data: b("alive"),
    });
    assert!(matches!(survivor.recv(), Message::PubAck { msg_id: 2, .. }));
    assert_eq!(sub_sn.recv_publish_ack().payload, b"alive");

    // Counters: every garbage datagram the kernel delivered is a bad datagram, and
    // every spoofed CONNECT that arrived holds a client slot or was refused. The
    // survivor's round trip only shows that its own loop has read its queue: with
    // reuseport, the flooder's and the spoofers' datagrams may sit in another loop's
    // socket, or on the mesh, a little longer (`metrics_until`).
    let sent = sent_garbage + sent_connects;
    let bad = |m: &HashMap<String, f64>| {
        metric(m, "ringmq_mqttsn_dropped_total{reason=\"bad_datagram\"}")
    };
    let refused =
        |m: &HashMap<String, f64>| metric(m, "ringmq_mqttsn_dropped_total{reason=\"max_clients\"}");
    let spoofed = |m: &HashMap<String, f64>| metric(m, "ringmq_mqttsn_clients") - 1;
    let arrived = |m: &HashMap<String, f64>| {
        bad(m)
            + refused(m)
            + spoofed(m)
            + metric(m, "ringmq_mqttsn_dropped_total{reason=\"mesh_full\"}")
    };
    let m = metrics_until(&broker, |m| {
        arrived(m) + kernel_udp_drops(gw.port()) >= sent
    });
    let drops = kernel_udp_drops(gw.port());
    let clients = metric(&m, "ringmq_mqttsn_clients");
    assert!(clients <= 2 * 16, "at most 16 clients per loop: {clients}");
    assert!(refused(&m) > 0, "the bound refused some CONNECTs");
    let arrived = arrived(&m);
    assert_eq!(
        arrived + drops,
        sent,
        "bad {} + refused {} + spoofed clients {} + kernel drops {drops}",
        bad(&m),
        refused(&m),
        spoofed(&m)
    );
    assert!(
        metric(&m, "ringmq_mqttsn_datagrams_total{direction=\"in\"}") >= arrived,
        "{m:?}"
    );
}

/// The independent client tests/install-deps.sh installs (PyPI `mqtt-sn-12`);
/// missing, the test fails and says how to install it.
fn mqttsn_py() -> std::path::PathBuf {
    let dir = support::repo_root().join("tests/interop/mqttsn-py");
    assert!(
        dir.join("mqttsn12/mqtt_sn_pub.py").is_file(),
        "{} has no mqtt-sn-12: run tests/install-deps.sh",
        dir.display()
    );
    dir
}

/// Runs one of mqtt-sn-12's tools (`mqtt_sn_pub`, `mqtt_sn_sub`) against the gateway
/// and returns its stdout; killed (and the test failed) if it has not ended within
/// 30 s.
fn run_mqttsn_py(tool: &str, gw: SocketAddr, args: &[&str]) -> String {
    let mut child = std::process::Command::new("/usr/bin/python3")
        .env("PYTHONPATH", mqttsn_py())
        .args(["-m", &format!("mqttsn12.{tool}")])
        .args(["-h", &gw.ip().to_string(), "-p", &gw.port().to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    let status = support::wait_or_kill(&mut child, Duration::from_secs(30));
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "{tool} {args:?}: {status:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// Interop with an independent MQTT-SN client (mqtt-sn-12's command-line tools):
/// its publishes at QoS 0, 1 and −1 (predefined id) reach a TCP subscriber, and its
/// subscriber receives a TCP client's retained message.
#[test]
fn interop_with_mqtt_sn_12_client() {
    let dir = std::env::temp_dir().join(uniq("snint"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("predefined");
    std::fs::write(&file, "42 interop/predefined\n").unwrap();
    let broker = sn_broker(&["--mqttsn-predefined-topics-file", file.to_str().unwrap()]);
    let gw = sn_addr(&broker);
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("isub"));
    sub.subscribe_ok(1, "interop/#", 1);
    for (qos, id) in [("0", "py-pub-0"), ("1", "py-pub-1")] {
        let payload = format!("from python qos {qos}");
        run_mqttsn_py(
            "mqtt_sn_pub",
            gw,
            &["-i", id, "-t", "interop/fromsn", "-q", qos, "-m", &payload],
        );
        let m = sub.recv_publish_ack();
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            ("interop/fromsn", payload.as_bytes())
        );
    }
    run_mqttsn_py(
        "mqtt_sn_pub",
        gw,
        &["-T", "42", "-q", "-1", "-m", "no connection"],
    );
    let m = sub.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("interop/predefined", &b"no connection"[..])
    );

    // Its subscriber, `-1`: print one message and leave. The retained message is
    // there before it subscribes, so no wait for its SUBSCRIBE is needed.
    let mut publisher = RawClient::connect_v311(broker.addr(), &uniq("ipub"));
    publisher.publish_complete("interop/tosn", 1, true, 1, b"retained for python");
    let out = run_mqttsn_py(
        "mqtt_sn_sub",
        gw,
        &["-i", "py-sub", "-t", "interop/tosn", "-q", "1", "-1"],
    );
    assert_eq!(out.trim(), "retained for python");
    let _ = std::fs::remove_dir_all(dir);
}

/// A TCP client that takes an SN client's id over ends the SN client's session: the
/// gateway tells the SN client with a DISCONNECT, and a publish from it afterwards
/// is not carried (no session).
#[test]
fn tcp_takeover_of_an_sn_client_id_disconnects_the_sn_client() {
    let broker = sn_broker(&[]);
    let gw = sn_addr(&broker);
    let id = sn_id("take", 1);
    let sn = Sn::connect(gw, &id, 600);
    let mut tcp = RawClient::connect_v311(broker.addr(), &id);
    assert_eq!(sn.recv(), Message::Disconnect { duration: None });
    tcp.subscribe_ok(1, "take/#", 0);
    sn.send(&Message::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicRef::Short(*b"ab"),
        msg_id: 1,
        data: b("after"),
    });
    // An SN client without a session gets nothing back for it (counted).
    sn.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        sn.sock.recv(&mut buf).is_err(),
        "answered without a session"
    );
    let unexpected = "ringmq_mqttsn_dropped_total{reason=\"unexpected\"}";
    let m = metrics_when(&broker, unexpected, 1);
    assert!(
        metric(&m, unexpected) >= 1,
        "the publish without a session is counted"
    );
}

/// The `mqttsn_*` bounds and Tretry/Nretry reach the gateway of the real binary, each
/// with its counter: SEARCHGW is answered (6.1); a REGISTER past
/// `--mqttsn-max-topic-ids` gets REGACK 0x01 (6.5); a datagram over
/// `--mqttsn-max-datagram-bytes` is dropped; a sleeping client's messages past
/// `--mqttsn-max-buffered-msgs` are dropped (6.14); an unacknowledged QoS 1 PUBLISH
/// is sent again with DUP after `--mqttsn-retry-interval-ms`, and after
/// `--mqttsn-max-retries` the client is lost (6.13).
#[test]
fn bounds_and_retransmission_follow_the_config() {
    let broker = sn_broker(&[
        "--mqttsn-max-topic-ids",
        "2",
        "--mqttsn-max-datagram-bytes",
        "64",
        "--mqttsn-max-buffered-msgs",
        "2",
        "--mqttsn-retry-interval-ms",
        "300",
        "--mqttsn-max-retries",
        "1",
    ]);
    let gw = sn_addr(&broker);
    let searcher = Sn::new(gw, "searcher");
    searcher.send(&Message::SearchGw { radius: 0 });
    assert!(matches!(searcher.recv(), Message::GwInfo { gw_id: 1, .. }));

    let reg = Sn::connect(gw, &sn_id("breg", 1), 600);
    reg.register("b/1", 1);
    reg.register("b/2", 2);
    reg.send(&Message::Register {
        topic_id: 0,
        msg_id: 3,
        topic_name: b("b/3"),
    });
    assert!(matches!(
        reg.recv(),
        Message::RegAck {
            msg_id: 3,
            code: ReturnCode::Congestion,
            ..
        }
    ));
    // 65 bytes: a well-formed PUBLISH one byte over the bound.
    reg.send(&Message::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicRef::Short(*b"ab"),
        msg_id: 0,
        data: Bytes::from(vec![b'x'; 65 - 7]),
    });

    // Asleep: 4 messages for a buffer of 2.
    let id = sn_id("bound", 0);
    let sn = Sn::connect(gw, &id, 600);
    let topic = format!("bound/{id}");
    let topic_id = sn.subscribe(&topic, QoS::AtLeastOnce, 4);
    sn.send(&Message::Disconnect {
        duration: Some(600),
    });
    assert_eq!(sn.recv(), Message::Disconnect { duration: None });
    let mut publisher = RawClient::connect_v311(broker.addr(), &uniq("bpub"));
    for i in 0..4u16 {
        publisher.publish_complete(&topic, 1, false, 1 + i, format!("m{i}").as_bytes());
    }
    publisher.publish_complete(&topic, 1, false, 9, b"sync");
    // Every copy reached the sleeping client's buffer before the wake-up: m2, m3 and
    // "sync" found it (m0, m1) full. Waiting on the counter, not on a TCP subscriber
    // of the same topic: the PUBACK and another subscriber's copy say nothing about
    // when the gateway took its own.
    let mut dropped = 0;
    for _ in 0..100 {
        dropped = metric(
            &metrics(&broker),
            "ringmq_mqttsn_dropped_total{reason=\"max_buffered\"}",
        );
        if dropped >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(dropped, 3, "m2, m3 and sync must find the buffer full");
    sn.send(&Message::PingReq {
        client_id: Some(b(&id)),
    });
    // m0 is sent and not acknowledged: sent again with DUP after Tretry, then the
    // client is lost after Nretry = 1.
    let first = sn.recv();
    let Message::Publish {
        dup: false,
        msg_id,
        topic: TopicRef::Normal(t),
        ref data,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!((t, &data[..]), (topic_id, &b"m0"[..]));
    match sn.recv() {
        Message::Publish {
            dup: true,
            msg_id: again,
            ..
        } => assert_eq!(again, msg_id),
        other => panic!("expected the retransmission, got {other:?}"),
    }
    // Lost: nothing more is sent; the counters say why.
    let mut lost = 0;
    for _ in 0..100 {
        let m = metrics(&broker);
        lost = metric(&m, "ringmq_mqttsn_clients_lost_total");
        if lost == 1 {
            assert_eq!(metric(&m, "ringmq_mqttsn_retransmits_total"), 1);
            assert_eq!(
                metric(&m, "ringmq_mqttsn_dropped_total{reason=\"max_topic_ids\"}"),
                1
            );
            assert_eq!(
                metric(&m, "ringmq_mqttsn_dropped_total{reason=\"bad_datagram\"}"),
                1
            );
            // m2, m3 and "sync" found the buffer (m0, m1) full.
            assert_eq!(
                metric(&m, "ringmq_mqttsn_dropped_total{reason=\"max_buffered\"}"),
                3
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lost, 1, "the client was not lost after Nretry");
}

/// A predefined-topics file that does not parse is a configuration error: start-up
/// and `check-config` exit 2 naming the file and the line.
#[test]
fn bad_predefined_topics_file_is_refused_naming_file_and_line() {
    let dir = std::env::temp_dir().join(uniq("snbad"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("predefined");
    std::fs::write(&file, "1 ok/topic\n2 bad/+/wildcard\n").unwrap();
    let path = file.to_str().unwrap();
    for check in [false, true] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "none",
            "--mqttsn-listen",
            "127.0.0.1:0",
            "--mqttsn-predefined-topics-file",
            path,
        ]);
        if check {
            cmd.arg("check-config");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ringmq");
        let status = support::wait_or_kill(&mut child, Duration::from_secs(20));
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "check {check}: {err}"
        );
        assert!(
            err.contains("mqttsn_predefined_topics_file")
                && err.contains(path)
                && err.contains("line 2"),
            "check {check}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Spec 5.4.5 / 6.2: the CONNACK carries the broker's own verdict. With
/// `--allow-anonymous false` (SN has no credentials) the client gets CONNACK 0x03
/// (rejected: not supported) and nothing after it: no CONNACK 0x00 first, no
/// DISCONNECT, and no session for what it sends next. Clients owned by either loop.
#[test]
fn connack_carries_the_brokers_auth_verdict() {
    let broker = sn_broker(&["--allow-anonymous", "false"]);
    let gw = sn_addr(&broker);
    for shard in 0..2 {
        let id = sn_id("snauth", shard);
        let sn = Sn::new(gw, &id);
        sn.send(&Message::Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: b(&id),
        });
        assert_eq!(
            sn.recv(),
            Message::ConnAck {
                code: ReturnCode::NotSupported
            },
            "{id}: refused by the broker's auth"
        );
        sn.send(&Message::PingReq { client_id: None });
        sn.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 64];
        match sn.sock.recv(&mut buf) {
            Err(_) => {}
            Ok(n) => panic!(
                "{id}: a refused client was sent {:?}",
                decode(&Bytes::copy_from_slice(&buf[..n]))
            ),
        }
    }
    let unexpected = "ringmq_mqttsn_dropped_total{reason=\"unexpected\"}";
    let m = metrics_when(&broker, unexpected, 2);
    assert!(
        metric(&m, unexpected) >= 2,
        "the PINGREQs without a session are counted"
    );
}

/// With `--keepalive-max-s` set, the 3.1.1 sessions the gateway opens declare that
/// keepalive (0 would be refused) and the gateway pings them: an SN client is
/// accepted, its session outlives 1.5 × the cap while the SN client is quiet, and
/// its publish still reaches a TCP subscriber.
#[test]
fn keepalive_cap_admits_sn_clients_and_keeps_their_sessions() {
    let broker = sn_broker(&["--keepalive-max-s", "2"]);
    let gw = sn_addr(&broker);
    let id = sn_id("snka", 1);
    let sn = Sn::connect(gw, &id, 600);
    let topic_id = sn.register("snka/t", 1);
    // Longer than the shard's 1.5 × 2 s keepalive window: a session the gateway did
    // not ping would be closed, and the SN client told with a DISCONNECT.
    sn.sock
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let mut buf = [0u8; 64];
    if let Ok(n) = sn.sock.recv(&mut buf) {
        panic!(
            "the quiet SN client was sent {:?}",
            decode(&Bytes::copy_from_slice(&buf[..n]))
        );
    }
    sn.sock.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let connect = support::pkt::Connect {
        keepalive_s: 2,
        ..support::pkt::Connect::v311(&uniq("kasub"))
    };
    let (mut sub, ack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(ack.raw, [0x20, 0x02, 0x00, 0x00], "TCP subscriber admitted");
    sub.subscribe_ok(1, "snka/t", 1);
    sn.send(&Message::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicRef::Normal(topic_id),
        msg_id: 2,
        data: b("still here"),
    });
    assert_eq!(
        sn.recv(),
        Message::PubAck {
            topic_id,
            msg_id: 2,
            code: ReturnCode::Accepted
        }
    );
    let m = sub.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("snka/t", &b"still here"[..])
    );
}

/// Spec 6.1: with `--mqttsn-advertise-interval-s` and `--mqttsn-advertise-address`
/// the gateway sends ADVERTISE (its GwId, Duration = the interval) to that address
/// from its own port, again each interval; here the "network" is one loopback
/// socket. One without the other is refused at start-up, the key named.
#[test]
fn advertise_goes_to_the_configured_address_every_interval() {
    let net = UdpSocket::bind("127.0.0.1:0").expect("bind");
    net.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let to = net.local_addr().unwrap().to_string();
    let broker = sn_broker(&[
        "--mqttsn-advertise-interval-s",
        "1",
        "--mqttsn-advertise-address",
        &to,
    ]);
    let gw = sn_addr(&broker);
    let mut buf = [0u8; 64];
    for n in 0..3 {
        let (len, from) = net
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("ADVERTISE {n}: none within {RECV_TIMEOUT:?}: {e}"));
        assert_eq!(from.port(), gw.port(), "sent from the gateway's port");
        assert_eq!(
            decode(&Bytes::copy_from_slice(&buf[..len])),
            Ok(Message::Advertise {
                gw_id: 1,
                duration: 1
            }),
            "ADVERTISE {n}"
        );
    }
    for (args, key) in [
        (
            &["--mqttsn-advertise-interval-s", "5"][..],
            "mqttsn_advertise_interval_s 5",
        ),
        (
            &["--mqttsn-advertise-address", &to][..],
            "mqttsn_advertise_address",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--mqttsn-listen", "127.0.0.1:0"])
            .args(args)
            .arg("check-config")
            .output()
            .expect("run ringmq check-config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

/// Spec 5.5: a forwarder encapsulates the messages of the wireless nodes behind it
/// (Ctrl, Wireless Node Id, the message). Two nodes share the forwarder's one UDP
/// address, their clients owned by different loops: each is connected, registers,
/// publishes at QoS 1 to a TCP subscriber, and every answer comes back encapsulated
/// with that node's id; a TCP publish reaches a node that subscribed, encapsulated.
#[test]
fn forwarder_encapsulated_nodes_are_served_through_the_forwarder() {
    let broker = sn_broker(&[]);
    let gw = sn_addr(&broker);
    let fwd = Sn::new(gw, "forwarder");
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("fwdsub"));
    sub.subscribe_ok(1, "fwd/+", 1);
    let send = |node: &[u8], m: Message| {
        fwd.send(&Message::Encapsulated {
            radius: 1,
            node_id: Bytes::copy_from_slice(node),
            inner: encode_to_bytes(&m).expect("encodes"),
        })
    };
    let recv = |node: &[u8]| match fwd.recv() {
        Message::Encapsulated { node_id, inner, .. } => {
            assert_eq!(&node_id[..], node, "answered to the node that asked");
            decode(&inner).expect("a valid encapsulated message")
        }
        other => panic!("expected an encapsulated message, got {other:?}"),
    };
    for (node, shard) in [(&[0x0a, 0x01][..], 0), (&[0x0a, 0x02][..], 1)] {
        let id = sn_id("fwd", shard);
        send(
            node,
            Message::Connect {
                will: false,
                clean_session: true,
                duration: 60,
                client_id: b(&id),
            },
        );
        assert_eq!(
            recv(node),
            Message::ConnAck {
                code: ReturnCode::Accepted
            },
            "{id}"
        );
        let topic = format!("fwd/{shard}");
        send(
            node,
            Message::Register {
                topic_id: 0,
                msg_id: 1,
                topic_name: b(&topic),
            },
        );
        let topic_id = match recv(node) {
            Message::RegAck {
                topic_id,
                msg_id: 1,
                code: ReturnCode::Accepted,
            } => topic_id,
            other => panic!("{id}: REGISTER: {other:?}"),
        };
        send(
            node,
            Message::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicRef::Normal(topic_id),
                msg_id: 2,
                data: b("via forwarder"),
            },
        );
        assert_eq!(
            recv(node),
            Message::PubAck {
                topic_id,
                msg_id: 2,
                code: ReturnCode::Accepted
            }
        );
        let m = sub.recv_publish_ack();
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            (topic.as_str(), &b"via forwarder"[..])
        );
    }
    // Downstream: node 2 subscribes; a TCP publish reaches it through the forwarder.
    let node = &[0x0a, 0x02][..];
    send(
        node,
        Message::Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 3,
            topic: SubTopic::Name(b("fwd/in")),
        },
    );
    let topic_id = match recv(node) {
        Message::SubAck {
            msg_id: 3,
            code: ReturnCode::Accepted,
            topic_id,
            ..
        } => topic_id,
        other => panic!("SUBSCRIBE: {other:?}"),
    };
    let mut tcp = RawClient::connect_v311(broker.addr(), &uniq("fwdpub"));
    tcp.publish("fwd/in", 0, false, 0, b"to the node");
    match recv(node) {
        Message::Publish {
            topic: TopicRef::Normal(t),
            data,
            ..
        } => assert_eq!((t, &data[..]), (topic_id, &b"to the node"[..])),
        other => panic!("expected the PUBLISH for the node, got {other:?}"),
    }
}
