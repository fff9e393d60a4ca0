//! Drives the sans-IO shard core the way the worker does (bytes in with `on_read`,
//! `poll_action` drained, `take_tx` on every `Flush`, `ShardMsg`s carried by a real
//! `ring::mesh`), with no sockets and no clock reads inside the measured loop.
//!
//! Shared by the callgrind paths (`perf/src/main.rs`) and the divan benches
//! (`benches/shard.rs` includes this file with `#[path]`), so both measure the same
//! thing. Set-up problems panic with a message: these are measuring tools, and a
//! set-up that silently measured something else would be worse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ringmq::auth::{AclFile, AuthPolicy};
use ringmq::config::Config;
use ringmq::protocol::{
    encode_packet, Connect, Packet, ProtocolVersion, Publish, PublishProperties, QoS, Subscribe,
    SubscriptionOptions,
};
use ringmq::ring::{mesh, Endpoint};
use ringmq::shard::{owner_shard, Action, ConnId, Shard, ShardId, ShardMsg};

/// The topic every benchmark publishes on (37 bytes, 4 levels, like a fleet's telemetry).
pub const TOPIC: &str = "fleet/eu-west/device-000042/telemetry";

/// Mesh ring capacity and overflow bound for the cross-shard paths.
const MESH_CAPACITY: usize = 1024;
const MESH_OVERFLOW_MAX: usize = 1024;
/// Messages taken from the mesh per `recv_batch`, as a worker turn would.
const MESH_BATCH: usize = 64;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

/// A client id whose session `owner_shard` places on `shard` of `shards`, so the
/// connection stays where it was accepted (no migration during set-up). The
/// driver's configs set no placement seed: shards place with seed 0.
pub fn client_id_on(shard: ShardId, shards: usize, prefix: &str, n: usize) -> Bytes {
    (0..)
        .map(|i| format!("{prefix}-{n}-{i}"))
        .find(|id| owner_shard(0, id.as_bytes(), shards) == shard)
        .map(Bytes::from)
        .expect("the owner hash reaches every shard")
}

pub fn encode(packet: &Packet) -> Bytes {
    let mut buf = BytesMut::new();
    encode_packet(packet, ProtocolVersion::V311, &mut buf);
    buf.freeze()
}

pub fn connect_frame(client_id: Bytes) -> Bytes {
    connect_frame_clean(client_id, true)
}

/// A v3.1.1 CONNECT; `clean_start` false keeps the session after the connection.
pub fn connect_frame_clean(client_id: Bytes, clean_start: bool) -> Bytes {
    encode(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_start,
        keep_alive_s: 0,
        client_id,
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    })))
}

pub fn subscribe_frame(filter: &str, qos: QoS) -> Bytes {
    let mut filters = smallvec::SmallVec::new();
    filters.push((
        Bytes::copy_from_slice(filter.as_bytes()),
        SubscriptionOptions {
            qos,
            ..Default::default()
        },
    ));
    encode(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters,
        properties: Default::default(),
    }))
}

/// A v3.1.1 PUBLISH on [`TOPIC`] (packet id 1 when QoS > 0).
pub fn publish_frame(qos: QoS, payload_len: usize) -> Bytes {
    encode(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::from_static(TOPIC.as_bytes()),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0x5a; payload_len]),
    }))
}

/// The packet id of a v3.1.1 QoS 1/2 PUBLISH frame at the start of `frame`
/// (fixed header, remaining length, topic, then the id).
fn publish_packet_id(frame: &[u8]) -> u16 {
    let mut i = 1;
    while frame.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    i += 1;
    let topic_len = usize::from(u16::from_be_bytes([frame[i], frame[i + 1]]));
    let at = i + 2 + topic_len;
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Runs every pending action of `shard`: `take_tx` on `Flush` (handing the bytes to
/// `on_tx`), `Send` to `on_send`. A `Close` or `Migrate` means the set-up is wrong.
pub fn drain(
    shard: &mut Shard,
    mut on_tx: impl FnMut(ConnId, Bytes),
    mut on_send: impl FnMut(ShardId, ShardMsg),
) {
    while let Some(action) = shard.poll_action() {
        match action {
            Action::Flush(conn) => {
                if let Some(bytes) = shard.take_tx(conn) {
                    on_tx(conn, bytes);
                }
            }
            Action::Send { to, msg } => on_send(to, msg),
            Action::Close(conn) => panic!("bench set-up: shard closed connection {conn}"),
            Action::Migrate { conn, to, .. } => {
                panic!("bench set-up: connection {conn} migrates to shard {to}")
            }
            Action::Verify { conn, .. } => {
                panic!("bench set-up: connection {conn} waits for a password check")
            }
        }
    }
}

/// Accepts a connection on `shard` and connects it as `client_id` (owned by `shard`).
pub fn connect(shard: &mut Shard, client_id: Bytes, now: Instant) -> ConnId {
    let conn = shard.accept(peer(), now);
    shard.on_read(conn, &connect_frame(client_id), now);
    conn
}

/// One shard with a publisher and `subscribers` v3.1.1 clients subscribed to
/// [`TOPIC`] at `qos`.
pub struct Fanout {
    shard: Shard,
    publisher: ConnId,
    subscribers: usize,
    qos: QoS,
    frame: Bytes,
    now: Instant,
    /// Subscriber PUBACKs owed this round (QoS 1), kept to avoid allocating per publish.
    acks: Vec<(ConnId, [u8; 4])>,
}

impl Fanout {
    pub fn new(subscribers: usize, qos: QoS, payload_len: usize) -> Fanout {
        Fanout::with_acl(subscribers, qos, payload_len, None)
    }

    /// As `new`, with an ACL file (in Mosquitto's syntax) in force: every PUBLISH is
    /// then checked for write and every copy for read. The clients are anonymous, so
    /// the rules before the first `user` line are theirs.
    pub fn with_acl(subscribers: usize, qos: QoS, payload_len: usize, acl: Option<&str>) -> Fanout {
        let now = Instant::now();
        let mut shard = Shard::new(0, 1, Arc::new(Config::default()));
        if let Some(text) = acl {
            let acl = AclFile::parse(text).expect("bench set-up: ACL parses");
            shard.set_auth(Arc::new(AuthPolicy::new(None, Some(acl), true)));
        }
        let publisher = connect(&mut shard, client_id_on(0, 1, "pub", 0), now);
        for n in 0..subscribers {
            let sub = connect(&mut shard, client_id_on(0, 1, "sub", n), now);
            shard.on_read(sub, &subscribe_frame(TOPIC, qos), now);
        }
        drain(
            &mut shard,
            |_, _| {},
            |_, _| panic!("one shard sends nothing"),
        );
        Fanout {
            shard,
            publisher,
            subscribers,
            qos,
            frame: publish_frame(qos, payload_len),
            now,
            acks: Vec::with_capacity(subscribers),
        }
    }

    /// One PUBLISH from the publisher through to every subscriber's `take_tx`; for
    /// QoS 1 also the PUBACK to the publisher and every subscriber's PUBACK back.
    /// Returns the bytes handed to subscribers and publisher.
    pub fn publish_once(&mut self) -> usize {
        let Fanout {
            shard,
            publisher,
            qos,
            frame,
            now,
            acks,
            ..
        } = self;
        let mut written = 0;
        shard.on_read(*publisher, frame, *now);
        drain(
            shard,
            |conn, bytes| {
                written += bytes.len();
                if *qos != QoS::AtMostOnce && conn != *publisher {
                    let [hi, lo] = publish_packet_id(&bytes).to_be_bytes();
                    acks.push((conn, [0x40, 0x02, hi, lo]));
                }
            },
            |_, _| panic!("one shard sends nothing"),
        );
        for (conn, ack) in acks.drain(..) {
            shard.on_read(conn, &ack, *now);
        }
        drain(shard, |_, _| {}, |_, _| panic!("one shard sends nothing"));
        written
    }

    /// Bytes one `publish_once` must return: one PUBLISH per subscriber (with a
    /// packet id at QoS 1) plus the publisher's PUBACK at QoS 1.
    pub fn expected_bytes(&self) -> usize {
        match self.qos {
            QoS::AtMostOnce => self.subscribers * self.frame.len(),
            _ => self.subscribers * self.frame.len() + 4,
        }
    }
}

/// One shard with a publisher and one offline persistent session subscribed to
/// [`TOPIC`] at QoS 1: every PUBLISH is queued for it. Every `OFFLINE_RESET`
/// messages the session is replaced by a fresh one, so a long benchmark run
/// neither fills the queue (drops are another path) nor grows without bound.
pub struct Offline {
    shard: Shard,
    publisher: ConnId,
    frame: Bytes,
    now: Instant,
    since_reset: usize,
    /// The shard has a log (durability `process`): each PUBLISH appends its
    /// records, and the "disk" completes the write at once (`complete_writes`).
    durable: bool,
}

/// Far above the 2,001 iterations of a callgrind measurement, so it never runs
/// there; amortised to nothing in a wall-clock benchmark.
const OFFLINE_RESET: usize = 4096;

impl Offline {
    pub fn new(payload_len: usize) -> Offline {
        let now = Instant::now();
        let config = Config {
            max_queued_messages: OFFLINE_RESET + 1,
            max_queued_bytes: 1 << 40,
            ..Config::default()
        };
        let mut shard = Shard::new(0, 1, Arc::new(config));
        Offline::park_subscriber(&mut shard, now);
        let publisher = connect(&mut shard, client_id_on(0, 1, "pub", 0), now);
        drain(
            &mut shard,
            |_, _| {},
            |_, _| panic!("one shard sends nothing"),
        );
        Offline {
            shard,
            publisher,
            frame: publish_frame(QoS::AtLeastOnce, payload_len),
            now,
            since_reset: 0,
            durable: false,
        }
    }

    /// As `new`, with a log: the publish's records (body and the session's copy)
    /// are encoded and framed, and its PUBACK waits for the write's completion.
    pub fn durable(payload_len: usize) -> Offline {
        let mut o = Offline::new(payload_len);
        // One segment far larger than any run: no segment creation in the path.
        let seg = 1 << 40;
        let wal =
            ringmq::store::Wal::new(ringmq::store::SyncMode::Process, seg, vec![0], seg, 0, None);
        o.shard.attach_store(wal, 1, o.now, 1_765_000_000_000);
        o.durable = true;
        o
    }

    /// The IO side with a disk that completes every write at once.
    fn complete_writes(&mut self) {
        while let Some(op) = self.shard.poll_store_op() {
            std::hint::black_box(&op);
            self.shard.on_store_done(Ok(()), self.now);
        }
    }

    /// Connects the subscriber (`clean`: ending its old session first), subscribes
    /// it (persistent) and leaves it offline.
    fn subscriber_session(shard: &mut Shard, clean: bool, now: Instant) {
        let sub = shard.accept(peer(), now);
        let id = client_id_on(0, 1, "offline", 0);
        shard.on_read(sub, &connect_frame_clean(id, clean), now);
        if !clean {
            shard.on_read(sub, &subscribe_frame(TOPIC, QoS::AtLeastOnce), now);
        }
        drain(shard, |_, _| {}, |_, _| panic!("one shard sends nothing"));
        shard.on_closed(sub, now);
        shard.release(sub);
    }

    fn park_subscriber(shard: &mut Shard, now: Instant) {
        Offline::subscriber_session(shard, false, now);
    }

    /// One QoS 1 PUBLISH read, queued for the offline session, PUBACK taken.
    /// Returns the bytes handed to the publisher (its PUBACK).
    pub fn publish_once(&mut self) -> usize {
        if self.since_reset == OFFLINE_RESET {
            // A clean start ends the session and its queue; then a fresh one.
            Offline::subscriber_session(&mut self.shard, true, self.now);
            Offline::park_subscriber(&mut self.shard, self.now);
            self.since_reset = 0;
        }
        self.since_reset += 1;
        let mut written = 0;
        self.shard.on_read(self.publisher, &self.frame, self.now);
        if self.durable {
            self.complete_writes();
        }
        drain(
            &mut self.shard,
            |_, bytes| written += bytes.len(),
            |_, _| panic!("one shard sends nothing"),
        );
        written
    }

    /// Bytes queued for the offline session (`bytes_queued`).
    pub fn queued(&self) -> usize {
        self.shard.stats().bytes_queued
    }
}

/// Two shards joined by a real mesh: a publisher on shard 0, one subscriber on
/// shard 1, so every PUBLISH crosses the mesh as a `ShardMsg`.
pub struct CrossShard {
    shards: [Shard; 2],
    ends: [Endpoint<ShardMsg>; 2],
    publisher: ConnId,
    frame: Bytes,
    now: Instant,
}

impl CrossShard {
    pub fn new(payload_len: usize) -> CrossShard {
        let now = Instant::now();
        let config = Arc::new(Config::default());
        let mut shards = [Shard::new(0, 2, config.clone()), Shard::new(1, 2, config)];
        let mut ends = mesh::<ShardMsg>(2, MESH_CAPACITY, MESH_OVERFLOW_MAX)
            .expect("2-shard mesh")
            .into_iter();
        let ends = [
            ends.next().expect("endpoint 0"),
            ends.next().expect("endpoint 1"),
        ];
        let publisher = connect(&mut shards[0], client_id_on(0, 2, "pub", 0), now);
        let sub = connect(&mut shards[1], client_id_on(1, 2, "sub", 0), now);
        shards[1].on_read(sub, &subscribe_frame(TOPIC, QoS::AtMostOnce), now);
        let mut x = CrossShard {
            shards,
            ends,
            publisher,
            frame: publish_frame(QoS::AtMostOnce, payload_len),
            now,
        };
        // Shard 1's route add goes to shard 0, shard 0's RouteAck comes back, and
        // only then does shard 1 release the SUBACK (route barrier).
        x.turn(1);
        x.turn(0);
        x.turn(1);
        x
    }

    /// One worker turn of shard `s`: its mesh inbox into `on_message`, then its
    /// actions (bytes out, messages into the mesh). Returns bytes written.
    fn turn(&mut self, s: usize) -> usize {
        let CrossShard {
            shards, ends, now, ..
        } = self;
        let shard = &mut shards[s];
        let end = &mut ends[s];
        end.recv_batch(MESH_BATCH, |from, msg| shard.on_message(from, msg, *now));
        let mut written = 0;
        drain(
            shard,
            |_, bytes| written += bytes.len(),
            |to, msg| {
                if end.send(to, msg).is_err() {
                    panic!("bench set-up: mesh to shard {to} is full");
                }
            },
        );
        // Route updates and acks, as the worker hands them over after the actions.
        let others = if shard.control_waiting() {
            0..shard.shard_count()
        } else {
            0..0
        };
        for to in others.filter(|&to| to != s) {
            while let Some(msg) = shard.poll_control(to) {
                if end.send(to, msg).is_err() {
                    panic!("bench set-up: mesh to shard {to} is full");
                }
            }
        }
        end.flush();
        written
    }

    /// PUBLISH read on shard 0 → `ShardMsg` through the mesh → shard 1 encodes it
    /// for its subscriber. Returns the bytes the subscriber got.
    pub fn hop_once(&mut self) -> usize {
        self.shards[0].on_read(self.publisher, &self.frame, self.now);
        let on_0 = self.turn(0);
        debug_assert_eq!(on_0, 0, "QoS 0 publisher gets no reply");
        self.turn(1)
    }

    pub fn expected_bytes(&self) -> usize {
        self.frame.len()
    }
}

/// A 100-rule ACL whose granting rule for [`TOPIC`] comes last: one `deny` (checked
/// first, as Mosquitto does), 98 rules for other topics, then `fleet/#`. The worst
/// case of a linear scan, so the budget shows what a large ACL costs per message.
pub fn acl_100_rules() -> String {
    let mut s = String::from("topic deny fleet/+/+/secret\n");
    for i in 0..98 {
        s.push_str(&format!("topic readwrite site-{i}/+/telemetry\n"));
    }
    s.push_str("topic readwrite fleet/#\n");
    s
}
