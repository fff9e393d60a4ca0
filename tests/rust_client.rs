//! The real `ringmq` binary with `--shards 4`, on both IO backends, driven by a
//! third-party client: rumqttc (its MQTT 3.1.1 client and its `v5` client). Every other
//! Rust-side suite speaks to the broker with the broker's own codec or hand-written bytes,
//! so a codec bug symmetric in encode and decode would pass them; rumqttc has its own codec.
//!
//! Each client id is chosen so that its session lives on a given shard
//! ([`support::placed_id`]): the publisher on shard 0, subscribers on shards 1, 2 and 3,
//! so every delivery crosses the shard mesh.
//!
//! Every wait is bounded (a failing test fails, it does not hang) and nothing asserts how
//! fast anything happens. Each rumqttc event loop runs on its own thread and stops at its
//! first error: rumqttc would otherwise reconnect on its own, and a reconnect would make
//! QoS 1 duplicates legal, which these tests must not allow.

mod support;

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::v5 as r5;
use tokio::sync::oneshot;

use support::{placed_id, uniq, Launch, PLACED_SHARDS, QUIET};

/// How long any single expected event may take (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(30);
/// Requests a test may queue towards one client's event loop before `publish` blocks.
const REQUEST_CAP: usize = 64;
/// Messages per QoS in the volume test.
const VOLUME: usize = 1000;

// ---------------------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------------------

/// A ringmq spawned with `--io IO --shards 4 ARGS...`; checks the startup line names the
/// requested backend (so a silent fallback to the other backend would fail the test).
fn broker(io: &str, extra: &[&str]) -> support::Broker {
    let shards = PLACED_SHARDS.to_string();
    let mut args = vec!["--io", io, "--shards", &shards, "--log-level", "warn"];
    args.extend_from_slice(extra);
    let b = Launch::new(&args)
        .env(
            "RUST_LOG",
            &std::env::var("RINGMQ_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .echo_stderr()
        .spawn();
    let backend = match io {
        "uring" => "io_uring",
        other => other,
    };
    let line = b.listening_line().to_string();
    assert!(
        line.ends_with(&format!("({backend}, {PLACED_SHARDS} shards)")),
        "startup line {line:?} does not name {backend} with {PLACED_SHARDS} shards"
    );
    b
}

// ---------------------------------------------------------------------------------------
// A rumqttc client on its own thread
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ver {
    V311,
    V5,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// What a client's event loop reported, in the order it happened.
#[derive(Debug)]
enum Seen {
    ConnAck {
        session_present: bool,
        accepted: bool,
    },
    /// Granted QoS per filter; `None` for a refused filter.
    SubAck(Vec<Option<u8>>),
    Msg(Msg),
    /// PUBACK or PUBCOMP for one of our publishes (v5: with a success reason code).
    Published,
    /// PUBACK/PUBREC/PUBCOMP with a failure reason code (v5).
    PublishRefused(String),
    DisconnectSent,
    /// The connection ended (error, broker DISCONNECT or EOF); the event loop has stopped.
    Closed(String),
}

enum Handle {
    V311(rumqttc::Client),
    V5(r5::Client),
}

#[derive(Default)]
struct Opts {
    /// Persistent session: 3.1.1 clean_session=0; 5.0 clean_start=0 and expiry 300 s.
    persistent: bool,
    /// Will (topic, payload, QoS).
    will: Option<(String, Vec<u8>, u8)>,
}

struct Peer {
    id: String,
    handle: Handle,
    events: mpsc::Receiver<Seen>,
    stop: Option<oneshot::Sender<()>>,
    pump: Option<JoinHandle<()>>,
    session_present: bool,
    /// Every message received so far, in arrival order.
    msgs: Vec<Msg>,
    /// Publishes the broker acknowledged (PUBACK / PUBCOMP).
    published: usize,
    closed: Option<String>,
}

fn qos311(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> r5::mqttbytes::QoS {
    match q {
        0 => r5::mqttbytes::QoS::AtMostOnce,
        1 => r5::mqttbytes::QoS::AtLeastOnce,
        _ => r5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio current-thread runtime")
}

/// Drives a 3.1.1 event loop until its first error or `stop`. Dropping the event loop
/// closes the socket; without a DISCONNECT sent before, that is an abrupt close.
fn pump_v311(mut el: rumqttc::EventLoop, tx: mpsc::Sender<Seen>, mut stop: oneshot::Receiver<()>) {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    let rt = runtime();
    rt.block_on(async {
        loop {
            let ev = tokio::select! {
                _ = &mut stop => return,
                ev = el.poll() => ev,
            };
            let seen = match ev {
                Ok(Event::Incoming(p)) => match p {
                    Packet::ConnAck(c) => Some(Seen::ConnAck {
                        session_present: c.session_present,
                        accepted: c.code == rumqttc::ConnectReturnCode::Success,
                    }),
                    Packet::SubAck(s) => Some(Seen::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                SubscribeReasonCode::Success(q) => Some(*q as u8),
                                SubscribeReasonCode::Failure => None,
                            })
                            .collect(),
                    )),
                    Packet::Publish(p) => Some(Seen::Msg(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    })),
                    Packet::PubAck(_) | Packet::PubComp(_) => Some(Seen::Published),
                    Packet::Disconnect => Some(Seen::Closed("DISCONNECT from broker".into())),
                    _ => None,
                },
                Ok(Event::Outgoing(Outgoing::Disconnect)) => Some(Seen::DisconnectSent),
                Ok(Event::Outgoing(_)) => None,
                Err(e) => Some(Seen::Closed(format!("{e:?}"))),
            };
            if let Some(seen) = seen {
                let last = matches!(seen, Seen::Closed(_));
                if tx.send(seen).is_err() || last {
                    return;
                }
            }
        }
    });
    drop(el);
    drop(rt);
}

/// [`pump_v311`] for the MQTT 5 client.
fn pump_v5(mut el: r5::EventLoop, tx: mpsc::Sender<Seen>, mut stop: oneshot::Receiver<()>) {
    use r5::mqttbytes::v5::{
        ConnectReturnCode, Packet, PubAckReason, PubCompReason, PubRecReason, SubscribeReasonCode,
    };
    use r5::Event;
    use rumqttc::Outgoing;
    let rt = runtime();
    rt.block_on(async {
        loop {
            let ev = tokio::select! {
                _ = &mut stop => return,
                ev = el.poll() => ev,
            };
            let seen = match ev {
                Ok(Event::Incoming(p)) => match p {
                    Packet::ConnAck(c) => Some(Seen::ConnAck {
                        session_present: c.session_present,
                        accepted: c.code == ConnectReturnCode::Success,
                    }),
                    Packet::SubAck(s) => Some(Seen::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                SubscribeReasonCode::Success(q) => Some(*q as u8),
                                _ => None,
                            })
                            .collect(),
                    )),
                    Packet::Publish(p) => Some(Seen::Msg(Msg {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    })),
                    Packet::PubAck(a) => Some(match a.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            Seen::Published
                        }
                        r => Seen::PublishRefused(format!("PUBACK {r:?}")),
                    }),
                    Packet::PubRec(r) => match r.reason {
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers => None,
                        r => Some(Seen::PublishRefused(format!("PUBREC {r:?}"))),
                    },
                    Packet::PubComp(c) => Some(match c.reason {
                        PubCompReason::Success => Seen::Published,
                        r => Seen::PublishRefused(format!("PUBCOMP {r:?}")),
                    }),
                    Packet::Disconnect(d) => Some(Seen::Closed(format!(
                        "DISCONNECT from broker: {:?}",
                        d.reason_code
                    ))),
                    _ => None,
                },
                Ok(Event::Outgoing(Outgoing::Disconnect)) => Some(Seen::DisconnectSent),
                Ok(Event::Outgoing(_)) => None,
                Err(e) => Some(Seen::Closed(format!("{e:?}"))),
            };
            if let Some(seen) = seen {
                let last = matches!(seen, Seen::Closed(_));
                if tx.send(seen).is_err() || last {
                    return;
                }
            }
        }
    });
    drop(el);
    drop(rt);
}

impl Peer {
    /// Connects `id` and waits for an accepting CONNACK.
    fn connect(b: &support::Broker, ver: Ver, id: &str, opts: Opts) -> Peer {
        let (tx, events) = mpsc::channel();
        let (stop, stop_rx) = oneshot::channel();
        let (handle, pump) = match ver {
            Ver::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, b.host(), b.port());
                o.set_keep_alive(Duration::from_secs(60))
                    .set_clean_session(!opts.persistent);
                if let Some((t, p, q)) = &opts.will {
                    o.set_last_will(rumqttc::LastWill::new(t, p.clone(), qos311(*q), false));
                }
                let (client, connection) = rumqttc::Client::new(o, REQUEST_CAP);
                let el = connection.eventloop;
                let pump = std::thread::spawn(move || pump_v311(el, tx, stop_rx));
                (Handle::V311(client), pump)
            }
            Ver::V5 => {
                let mut o = r5::MqttOptions::new(id, b.host(), b.port());
                o.set_keep_alive(Duration::from_secs(60))
                    .set_clean_start(!opts.persistent);
                if opts.persistent {
                    o.set_session_expiry_interval(Some(300));
                }
                if let Some((t, p, q)) = &opts.will {
                    o.set_last_will(r5::mqttbytes::v5::LastWill::new(
                        t,
                        p.clone(),
                        qos5(*q),
                        false,
                        None,
                    ));
                }
                let (client, connection) = r5::Client::new(o, REQUEST_CAP);
                let el = connection.eventloop;
                let pump = std::thread::spawn(move || pump_v5(el, tx, stop_rx));
                (Handle::V5(client), pump)
            }
        };
        let mut peer = Peer {
            id: id.to_string(),
            handle,
            events,
            stop: Some(stop),
            pump: Some(pump),
            session_present: false,
            msgs: Vec::new(),
            published: 0,
            closed: None,
        };
        match peer.next_event("CONNACK") {
            Seen::ConnAck {
                session_present,
                accepted: true,
            } => peer.session_present = session_present,
            other => panic!("{id}: wanted an accepting CONNACK, got {other:?}"),
        }
        peer
    }

    /// The next event, recording messages and acknowledgements; panics after [`WAIT`].
    fn next_event(&mut self, what: &str) -> Seen {
        self.next_event_by(Instant::now() + WAIT, what)
            .unwrap_or_else(|| {
                panic!(
                    "{}: nothing within {WAIT:?} while waiting for {what}; {} messages so far",
                    self.id,
                    self.msgs.len()
                )
            })
    }

    /// The next event before `deadline`, or `None`.
    fn next_event_by(&mut self, deadline: Instant, what: &str) -> Option<Seen> {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = match self.events.recv_timeout(left) {
            Ok(seen) => seen,
            Err(mpsc::RecvTimeoutError::Timeout) => return None,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "{}: event loop ended while waiting for {what} (closed: {:?})",
                self.id, self.closed
            ),
        };
        match &seen {
            Seen::Msg(m) => self.msgs.push(m.clone()),
            Seen::Published => self.published += 1,
            Seen::PublishRefused(why) => panic!("{}: publish refused: {why}", self.id),
            Seen::Closed(why) => self.closed = Some(why.clone()),
            _ => {}
        }
        Some(seen)
    }

    /// Subscribes to `filters` (filter, QoS) in one SUBSCRIBE and asserts every one is
    /// granted at the requested QoS.
    fn subscribe(&mut self, filters: &[(&str, u8)]) {
        let sent = match &self.handle {
            Handle::V311(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| rumqttc::SubscribeFilter::new(f.to_string(), qos311(*q))),
                )
                .map_err(|e| format!("{e:?}")),
            Handle::V5(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| r5::mqttbytes::v5::Filter::new(*f, qos5(*q))),
                )
                .map_err(|e| format!("{e:?}")),
        };
        if let Err(e) = sent {
            panic!("{}: subscribe {filters:?} not queued: {e}", self.id);
        }
        let want: Vec<Option<u8>> = filters.iter().map(|(_, q)| Some(*q)).collect();
        loop {
            match self.next_event("SUBACK") {
                Seen::SubAck(granted) => {
                    assert_eq!(granted, want, "{}: SUBACK for {filters:?}", self.id);
                    return;
                }
                Seen::Closed(why) => panic!("{}: closed before SUBACK: {why}", self.id),
                _ => {}
            }
        }
    }

    fn publish(&self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        let sent = match &self.handle {
            Handle::V311(c) => c
                .publish(topic, qos311(qos), retain, payload.to_vec())
                .map_err(|e| format!("{e:?}")),
            Handle::V5(c) => c
                .publish(topic, qos5(qos), retain, payload.to_vec())
                .map_err(|e| format!("{e:?}")),
        };
        if let Err(e) = sent {
            panic!("{}: publish to {topic} not queued: {e}", self.id);
        }
    }

    /// Waits until the broker has acknowledged `n` QoS 1/2 publishes in total.
    fn wait_published(&mut self, n: usize) {
        while self.published < n {
            if let Seen::Closed(why) = self.next_event("publish acknowledgements") {
                panic!(
                    "{}: closed after {} of {n} acknowledgements: {why}",
                    self.id, self.published
                );
            }
        }
    }

    /// Waits until at least `n` messages arrived in total.
    fn wait_msgs(&mut self, n: usize) {
        while self.msgs.len() < n {
            let what = format!("message {} of {n}", self.msgs.len() + 1);
            if let Seen::Closed(why) = self.next_event(&what) {
                panic!(
                    "{}: closed after {} of {n} messages: {why}; last: {:?}",
                    self.id,
                    self.msgs.len(),
                    self.msgs.last()
                );
            }
        }
    }

    /// Keeps reading for [`QUIET`] and asserts that no message beyond the `n` expected
    /// arrived and the connection is still up.
    fn assert_settled(&mut self, n: usize) {
        let deadline = Instant::now() + QUIET;
        while self.next_event_by(deadline, "settle").is_some() {}
        assert_eq!(
            self.msgs.len(),
            n,
            "{}: extra messages after the settle period: {:?}",
            self.id,
            &self.msgs[n.min(self.msgs.len())..]
        );
        assert_eq!(self.closed, None, "{}: connection closed", self.id);
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection.
    fn disconnect(mut self) -> Vec<Msg> {
        let sent = match &self.handle {
            Handle::V311(c) => c.disconnect().map_err(|e| format!("{e:?}")),
            Handle::V5(c) => c.disconnect().map_err(|e| format!("{e:?}")),
        };
        if let Err(e) = sent {
            panic!("{}: DISCONNECT not queued: {e}", self.id);
        }
        while self.closed.is_none() {
            self.next_event("the broker to close after DISCONNECT");
        }
        self.join();
        std::mem::take(&mut self.msgs)
    }

    /// Closes the TCP connection without DISCONNECT.
    fn drop_abruptly(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.join();
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// QoS 0/1/2 from shard 0 to subscribers on shards 1 (`+`), 2 (`#`) and 3 (exact filters,
/// granted QoS 1 so the broker downgrades QoS 2). Each message arrives exactly once.
fn pubsub_qos012(io: &str, ver: Ver) {
    let b = broker(io, &[]);
    let t = format!("rc/{}", uniq("ps"));
    let mut plus = Peer::connect(&b, ver, &placed_id("s1", 1), Opts::default());
    let mut hash = Peer::connect(&b, ver, &placed_id("s2", 2), Opts::default());
    let mut exact = Peer::connect(&b, ver, &placed_id("s3", 3), Opts::default());
    let mut publ = Peer::connect(&b, ver, &placed_id("p0", 0), Opts::default());
    plus.subscribe(&[(&format!("{t}/+"), 2)]);
    hash.subscribe(&[(&format!("{t}/#"), 2)]);
    let exact_filters: Vec<String> = (0..3).map(|q| format!("{t}/{q}")).collect();
    exact.subscribe(&[
        (&exact_filters[0], 1),
        (&exact_filters[1], 1),
        (&exact_filters[2], 1),
    ]);
    for q in 0..=2u8 {
        publ.publish(&format!("{t}/{q}"), q, false, format!("m{q}").as_bytes());
    }
    publ.wait_published(2);
    let sent = |cap: u8| -> Vec<Msg> {
        (0..=2u8)
            .map(|q| Msg {
                topic: format!("{t}/{q}"),
                payload: format!("m{q}").into_bytes(),
                qos: q.min(cap),
                retain: false,
            })
            .collect()
    };
    for (sub, cap) in [(&mut plus, 2), (&mut hash, 2), (&mut exact, 1)] {
        sub.wait_msgs(3);
        sub.assert_settled(3);
        let mut got = sub.msgs.clone();
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(got, sent(cap), "{}", sub.id);
    }
    publ.assert_settled(0);
}

/// 1000 QoS 1 and 1000 QoS 2 messages, interleaved on two topics, from shard 0 to three
/// subscribers on shards 1-3: each receives every payload exactly once, in publish order
/// per topic, and nothing more after a settle period. No client reconnects, so a QoS 1
/// duplicate is a broker bug too.
fn volume_exactly_once(io: &str, ver: Ver) {
    // Room for every message even if a subscriber falls far behind: this test is about
    // exactly-once delivery, not about the (counted) slow-consumer drop policy.
    let b = broker(io, &["--max-queued-messages", "10000"]);
    let t = format!("rc/{}", uniq("vol"));
    let (t1, t2) = (format!("{t}/q1"), format!("{t}/q2"));
    let mut subs = [
        Peer::connect(&b, ver, &placed_id("v1", 1), Opts::default()),
        Peer::connect(&b, ver, &placed_id("v2", 2), Opts::default()),
        Peer::connect(&b, ver, &placed_id("v3", 3), Opts::default()),
    ];
    subs[0].subscribe(&[(&format!("{t}/+"), 2)]);
    subs[1].subscribe(&[(&format!("{t}/#"), 2)]);
    subs[2].subscribe(&[(&t1, 2), (&t2, 2)]);
    let mut publ = Peer::connect(&b, ver, &placed_id("vp", 0), Opts::default());
    for i in 0..VOLUME {
        publ.publish(&t1, 1, false, format!("{i}").as_bytes());
        publ.publish(&t2, 2, false, format!("{i}").as_bytes());
    }
    publ.wait_published(2 * VOLUME);
    for sub in subs.iter_mut() {
        sub.wait_msgs(2 * VOLUME);
        sub.assert_settled(2 * VOLUME);
        assert_sequence(sub, &t1, 1, VOLUME);
        assert_sequence(sub, &t2, 2, VOLUME);
    }
    publ.assert_settled(0);
}

/// The messages `sub` received on `topic` are exactly payloads "0".."n-1" in that order,
/// all at `qos` and without the retain flag.
#[track_caller]
fn assert_sequence(sub: &Peer, topic: &str, qos: u8, n: usize) {
    let got: Vec<&Msg> = sub.msgs.iter().filter(|m| m.topic == topic).collect();
    assert!(
        got.iter().all(|m| m.qos == qos && !m.retain),
        "{}: wrong QoS/retain on {topic} (want QoS {qos})",
        sub.id
    );
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    if payloads != want {
        let first_bad = payloads
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)
            .unwrap_or(payloads.len().min(want.len()));
        panic!(
            "{}: {topic}: {} messages, first difference at index {first_bad}: got {:?} want {:?}",
            sub.id,
            payloads.len(),
            payloads.get(first_bad..(first_bad + 5).min(payloads.len())),
            want.get(first_bad..(first_bad + 5).min(want.len())),
        );
    }
}

/// A 3.1.1 and a 5.0 publisher (shards 0 and 1) each send 300 QoS 1 and 300 QoS 2
/// messages; a 5.0 subscriber on shard 2 and a 3.1.1 subscriber on shard 3 each receive
/// all 1200 exactly once, in order per publisher and topic.
fn mixed_versions(io: &str) {
    const N: usize = 300;
    let b = broker(io, &[]);
    let t = format!("rc/{}", uniq("mix"));
    let mut subs = [
        Peer::connect(&b, Ver::V5, &placed_id("m5s", 2), Opts::default()),
        Peer::connect(&b, Ver::V311, &placed_id("m3s", 3), Opts::default()),
    ];
    for sub in subs.iter_mut() {
        sub.subscribe(&[(&format!("{t}/#"), 2)]);
    }
    let mut pubs = [
        (
            Peer::connect(&b, Ver::V311, &placed_id("m3p", 0), Opts::default()),
            format!("{t}/v311"),
        ),
        (
            Peer::connect(&b, Ver::V5, &placed_id("m5p", 1), Opts::default()),
            format!("{t}/v5"),
        ),
    ];
    for i in 0..N {
        for (p, topic) in &pubs {
            p.publish(&format!("{topic}/q1"), 1, false, i.to_string().as_bytes());
            p.publish(&format!("{topic}/q2"), 2, false, i.to_string().as_bytes());
        }
    }
    for (p, _) in pubs.iter_mut() {
        p.wait_published(2 * N);
    }
    for sub in subs.iter_mut() {
        sub.wait_msgs(4 * N);
        sub.assert_settled(4 * N);
        for (_, topic) in &pubs {
            assert_sequence(sub, &format!("{topic}/q1"), 1, N);
            assert_sequence(sub, &format!("{topic}/q2"), 2, N);
        }
    }
}

/// A persistent subscriber on shard 1 subscribes, disconnects; a publisher on shard 0
/// sends 200 QoS 1 and 200 QoS 2 messages; the subscriber reconnects (session present)
/// and receives every queued message exactly once, in order, and nothing more.
fn persistent_session(io: &str, ver: Ver) {
    const QUEUED: usize = 200;
    let b = broker(io, &[]);
    let t = format!("rc/{}", uniq("sess"));
    let id = placed_id("ps", 1);
    let persistent = || Opts {
        persistent: true,
        ..Opts::default()
    };
    let mut sub = Peer::connect(&b, ver, &id, persistent());
    assert!(!sub.session_present, "{id}: fresh session reported present");
    let (t1, t2) = (format!("{t}/q1"), format!("{t}/q2"));
    sub.subscribe(&[(&t1, 1), (&t2, 2)]);
    let early = sub.disconnect();
    assert_eq!(early, Vec::new(), "{id}: messages before any publish");
    let mut publ = Peer::connect(&b, ver, &placed_id("pp", 0), Opts::default());
    for i in 0..QUEUED {
        publ.publish(&t1, 1, false, format!("{i}").as_bytes());
        publ.publish(&t2, 2, false, format!("{i}").as_bytes());
    }
    publ.wait_published(2 * QUEUED);
    let mut again = Peer::connect(&b, ver, &id, persistent());
    assert!(again.session_present, "{id}: session not present on resume");
    again.wait_msgs(2 * QUEUED);
    again.assert_settled(2 * QUEUED);
    assert_sequence(&again, &t1, 1, QUEUED);
    assert_sequence(&again, &t2, 2, QUEUED);
    // A clean session on the way out, so nothing outlives the test on an external broker.
    drop(again.disconnect());
}

/// A retained message published on shard 0 reaches a later subscriber on shard 2 (with
/// the retain flag), and one on shard 3 after it was cleared gets nothing.
fn retained_across_shards(io: &str, ver: Ver) {
    let b = broker(io, &[]);
    let t = format!("rc/{}", uniq("ret"));
    let mut publ = Peer::connect(&b, ver, &placed_id("rp", 0), Opts::default());
    publ.publish(&t, 1, true, b"kept");
    publ.wait_published(1);
    let mut sub = Peer::connect(&b, ver, &placed_id("rs", 2), Opts::default());
    sub.subscribe(&[(&t, 1)]);
    sub.wait_msgs(1);
    sub.assert_settled(1);
    assert_eq!(
        sub.msgs,
        vec![Msg {
            topic: t.clone(),
            payload: b"kept".to_vec(),
            qos: 1,
            retain: true,
        }]
    );
    // Clearing it reaches the live subscriber as a normal (retain 0) empty message...
    publ.publish(&t, 1, true, b"");
    publ.wait_published(2);
    sub.wait_msgs(2);
    assert_eq!(
        sub.msgs[1],
        Msg {
            topic: t.clone(),
            payload: Vec::new(),
            qos: 1,
            retain: false,
        }
    );
    // ...and a later subscriber gets no retained message.
    let mut late = Peer::connect(&b, ver, &placed_id("rl", 3), Opts::default());
    late.subscribe(&[(&t, 1)]);
    late.assert_settled(0);
}

/// A client on shard 1 with a will drops its TCP connection without DISCONNECT; an
/// observer on shard 3 receives the will exactly once.
fn will_on_abrupt_close(io: &str, ver: Ver) {
    let b = broker(io, &[]);
    let wt = format!("rc/{}/will", uniq("will"));
    let mut watcher = Peer::connect(&b, ver, &placed_id("ww", 3), Opts::default());
    watcher.subscribe(&[(&wt, 1)]);
    let dying = Peer::connect(
        &b,
        ver,
        &placed_id("wd", 1),
        Opts {
            will: Some((wt.clone(), b"gone".to_vec(), 1)),
            ..Opts::default()
        },
    );
    dying.drop_abruptly();
    watcher.wait_msgs(1);
    watcher.assert_settled(1);
    assert_eq!(
        watcher.msgs,
        vec![Msg {
            topic: wt,
            payload: b"gone".to_vec(),
            qos: 1,
            retain: false,
        }]
    );
}

/// Session takeover mid-stream: a persistent subscriber on shard 1 receives a stream of
/// QoS 1 messages from shard 0 while a second connection with the same client id takes
/// the session over. The old connection is closed by the broker; between the two
/// connections every message arrives at least once (QoS 1 may repeat across the
/// takeover, so duplicates are allowed here, losses are not), and the new connection
/// stays up.
fn takeover_mid_stream(io: &str, ver: Ver) {
    const N: usize = 2000;
    let b = broker(io, &["--max-queued-messages", "10000"]);
    let t = format!("rc/{}", uniq("tko"));
    let id = placed_id("tk", 1);
    let persistent = || Opts {
        persistent: true,
        ..Opts::default()
    };
    let mut old = Peer::connect(&b, ver, &id, persistent());
    old.subscribe(&[(&t, 1)]);
    let mut publ = Peer::connect(&b, ver, &placed_id("tp", 0), Opts::default());
    for i in 0..N / 2 {
        publ.publish(&t, 1, false, i.to_string().as_bytes());
    }
    let mut new = Peer::connect(&b, ver, &id, persistent());
    assert!(new.session_present, "{id}: session not present on takeover");
    for i in N / 2..N {
        publ.publish(&t, 1, false, i.to_string().as_bytes());
    }
    publ.wait_published(N);
    while old.closed.is_none() {
        old.next_event("the broker to close the taken-over connection");
    }
    let mut seen = vec![false; N];
    for m in &old.msgs {
        assert_eq!((m.topic.as_str(), m.qos), (t.as_str(), 1), "{id} (old)");
        let i: usize = String::from_utf8_lossy(&m.payload)
            .parse()
            .expect("payload is a number");
        seen[i] = true;
    }
    let mut counted = 0;
    loop {
        for m in &new.msgs[counted..] {
            assert_eq!((m.topic.as_str(), m.qos), (t.as_str(), 1), "{id} (new)");
            let i: usize = String::from_utf8_lossy(&m.payload)
                .parse()
                .expect("payload is a number");
            seen[i] = true;
        }
        counted = new.msgs.len();
        let missing: Vec<usize> = (0..N).filter(|i| !seen[*i]).collect();
        if missing.is_empty() {
            break;
        }
        let what = format!(
            "{} missing messages (first {:?}; old got {}, new got {} so far)",
            missing.len(),
            &missing[..missing.len().min(5)],
            old.msgs.len(),
            new.msgs.len()
        );
        if let Seen::Closed(why) = new.next_event(&what) {
            panic!("{id}: new connection closed: {why}; {what}");
        }
    }
    let n = new.msgs.len();
    new.assert_settled(n);
    // Resent messages come first, in their original order, then the rest (MQTT 5
    // 4.6, 3.1.1 4.6): one publisher, one topic, so the new connection sees payloads in
    // strictly increasing order.
    let order: Vec<usize> = new
        .msgs
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.payload)
                .parse()
                .unwrap_or(usize::MAX)
        })
        .collect();
    if let Some(w) = order.windows(2).position(|w| w[0] >= w[1]) {
        panic!(
            "{id}: new connection out of order at index {w}: {:?}",
            &order[w.saturating_sub(3)..(w + 4).min(order.len())]
        );
    }
    drop(new.disconnect());
}

macro_rules! matrix {
    ($($name:ident => $scenario:ident;)*) => {
        mod uring {
            use super::*;
            mod v311 {
                use super::*;
                $(#[test] fn $name() { $scenario("uring", Ver::V311) })*
            }
            mod v5 {
                use super::*;
                $(#[test] fn $name() { $scenario("uring", Ver::V5) })*
            }
        }
        mod epoll {
            use super::*;
            mod v311 {
                use super::*;
                $(#[test] fn $name() { $scenario("epoll", Ver::V311) })*
            }
            mod v5 {
                use super::*;
                $(#[test] fn $name() { $scenario("epoll", Ver::V5) })*
            }
        }
    };
}

matrix! {
    pubsub_qos012_across_shards => pubsub_qos012;
    volume_qos1_qos2_exactly_once_in_order => volume_exactly_once;
    persistent_session_queued_qos1_qos2_exactly_once => persistent_session;
    retained_reaches_later_subscriber_on_other_shard => retained_across_shards;
    will_on_abrupt_close_reaches_other_shard => will_on_abrupt_close;
    takeover_mid_stream_loses_no_qos1 => takeover_mid_stream;
}

#[test]
fn uring_mixed_versions_exactly_once_in_order() {
    mixed_versions("uring");
}

#[test]
fn epoll_mixed_versions_exactly_once_in_order() {
    mixed_versions("epoll");
}
