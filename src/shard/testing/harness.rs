//! In-memory test harness: a `Cluster` of shards with a virtual clock, an
//! in-memory mesh, and test clients that speak real MQTT bytes through the codec.
//! Does what the worker does: routes `Send`, performs `Migrate` (through the
//! `Wiring` shared with the fuzz driver: adopt, refuse or hold in flight), drains
//! `take_tx` on `Flush`/`Close`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::wiring::{self, Moved, TestMesh, Wiring};
use crate::config::Config;
use crate::protocol::{
    decode_packet, encode_packet, ConnAck, Connect, Disconnect, LastWill, Packet, Properties,
    PropertyValues, ProtocolVersion, PubResp, Publish, PublishProperties, QoS, ReasonCode, SubAck,
    Subscribe, SubscriptionOptions, MAX_REMAINING_LENGTH,
};
use crate::shard::{Action, ConnId, Shard, ShardId, ShardMsg};

pub(crate) type Cid = usize;

pub(crate) struct Client {
    pub shard: ShardId,
    pub conn: ConnId,
    pub version: ProtocolVersion,
    /// Every byte the server sent, for exact-byte assertions.
    pub raw: Vec<u8>,
    undecoded: BytesMut,
    pub inbox: VecDeque<Packet>,
    /// The server emitted `Close` for this connection.
    pub closed: bool,
    /// We dropped the connection ourselves.
    pub dropped: bool,
    /// The socket is not writable: `Flush` is not followed by `take_tx`.
    pub stalled: bool,
}

pub(crate) struct Cluster {
    pub shards: Vec<Shard>,
    pub now: Instant,
    pub clients: Vec<Client>,
    /// Which client each connection id is, hand-offs (refused, held, adopted).
    pub wiring: Wiring,
    mesh: TestMesh,
    /// Shard messages carried so far, by kind: (publishes, route updates, the
    /// `Routes` messages that carried those updates).
    pub mesh_counts: (usize, usize, usize),
    /// While set, `pump` leaves shard-to-shard messages in flight (to test races).
    pub hold_mesh: bool,
    /// Messages one ordered pair of shards may have in flight, like the worker's ring
    /// plus overflow list; `None`: unbounded. A `Send` beyond it is dropped and
    /// counted in `mesh_dropped`, as the worker drops (and counts) it.
    pub mesh_room: Option<usize>,
    pub mesh_dropped: usize,
    /// Retained-store updates carried (`ShardMsg::Retain`).
    pub mesh_retained: usize,
    /// On a cluster node, `pump` answers every session claim as a cluster with no
    /// other owner would (`shard/cluster_session.rs`); off to drive claims by hand.
    pub auto_claim: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct ConnectOpts {
    pub clean: bool,
    pub keepalive_s: u16,
    pub will: Option<LastWill>,
    pub properties: Properties,
    /// Shard that accepts the TCP connection (the owner may differ).
    pub accept_on: ShardId,
    pub username: Option<Bytes>,
    pub password: Option<Bytes>,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            clean: true,
            keepalive_s: 0,
            will: None,
            properties: Properties::default(),
            accept_on: 0,
            username: None,
            password: None,
        }
    }
}

pub(crate) fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

impl Cluster {
    pub fn new(shards: usize, config: Config) -> Cluster {
        let config = Arc::new(config);
        Cluster {
            shards: (0..shards)
                .map(|i| Shard::new(i, shards, config.clone()))
                .collect(),
            now: Instant::now(),
            clients: Vec::new(),
            wiring: Wiring::default(),
            mesh: VecDeque::new(),
            mesh_counts: (0, 0, 0),
            hold_mesh: false,
            mesh_room: None,
            mesh_dropped: 0,
            mesh_retained: 0,
            auto_claim: true,
        }
    }

    /// Accepts a TCP connection on `shard`; the client's version is used to decode
    /// what the server sends.
    pub fn open(&mut self, shard: ShardId, version: ProtocolVersion) -> Cid {
        let conn = self.shards[shard].accept(peer(), self.now);
        let cid = self.clients.len();
        self.clients.push(Client {
            shard,
            conn,
            version,
            raw: Vec::new(),
            undecoded: BytesMut::new(),
            inbox: VecDeque::new(),
            closed: false,
            dropped: false,
            stalled: false,
        });
        self.wiring.bind(shard, conn, cid);
        self.pump();
        cid
    }

    pub fn send_raw(&mut self, c: Cid, bytes: &[u8]) {
        let cl = &self.clients[c];
        assert!(!cl.dropped, "client {c} was dropped");
        let (s, conn) = (cl.shard, cl.conn);
        if !cl.closed {
            self.shards[s].on_read(conn, bytes, self.now);
        }
        self.pump();
    }

    pub fn send(&mut self, c: Cid, packet: Packet) {
        let mut buf = BytesMut::new();
        encode_packet(&packet, self.clients[c].version, &mut buf);
        self.send_raw(c, &buf);
    }

    /// Opens a connection and sends CONNECT; the CONNACK stays in the inbox.
    pub fn connect(&mut self, version: ProtocolVersion, id: &str, opts: ConnectOpts) -> Cid {
        let c = self.open(opts.accept_on, version);
        self.send(c, connect_packet(version, id, &opts));
        c
    }

    /// Connects and expects a CONNACK accepting it (`session_present` as given).
    /// For MQTT 5 only the code and flag are checked; see `expect` for exact tests.
    pub fn connect_ok(
        &mut self,
        version: ProtocolVersion,
        id: &str,
        opts: ConnectOpts,
        present: bool,
    ) -> Cid {
        let c = self.connect(version, id, opts);
        match self.next(c) {
            Some(Packet::ConnAck(a)) => {
                assert_eq!(
                    (a.code, a.session_present),
                    (ReasonCode::Success, present),
                    "CONNACK for {id}"
                );
            }
            other => panic!("expected CONNACK for {id}, got {other:?}"),
        }
        c
    }

    pub fn next(&mut self, c: Cid) -> Option<Packet> {
        self.clients[c].inbox.pop_front()
    }

    #[track_caller]
    pub fn expect(&mut self, c: Cid, packet: Packet) {
        assert_eq!(self.next(c), Some(packet), "client {c}");
    }

    #[track_caller]
    pub fn expect_nothing(&mut self, c: Cid) {
        assert_eq!(self.next(c), None, "client {c} got an unexpected packet");
    }

    #[track_caller]
    pub fn expect_closed(&mut self, c: Cid) {
        assert!(self.clients[c].closed, "client {c} expected closed");
    }

    #[track_caller]
    pub fn expect_open(&mut self, c: Cid) {
        assert!(!self.clients[c].closed, "client {c} expected open");
    }

    pub fn publish(
        &mut self,
        c: Cid,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
        packet_id: u16,
    ) {
        self.send(
            c,
            Packet::Publish(publish(topic, payload, qos, retain, packet_id)),
        );
    }

    /// Subscribes to one filter and expects the SUBACK granting `qos`.
    pub fn subscribe(&mut self, c: Cid, filter: &str, qos: QoS) {
        let opts = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        self.subscribe_with(c, filter, opts, Properties::default());
        let code = granted(qos);
        self.expect(c, suback(1, &[code]));
    }

    /// Sends SUBSCRIBE (packet id 1) without consuming the SUBACK.
    pub fn subscribe_with(
        &mut self,
        c: Cid,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) {
        let mut filters = SmallVec::new();
        filters.push((Bytes::copy_from_slice(filter.as_bytes()), options));
        self.send(
            c,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters,
                properties,
            }),
        );
    }

    /// Stops (or resumes) taking bytes for `c`, like a socket whose send buffer is full.
    pub fn stall(&mut self, c: Cid, stalled: bool) {
        self.clients[c].stalled = stalled;
        if !stalled {
            let (s, conn) = (self.clients[c].shard, self.clients[c].conn);
            // Like the worker: take again after each completed send.
            while let Some(b) = self.shards[s].take_tx(conn) {
                self.receive(s, conn, &b);
                self.pump();
            }
            self.pump();
        }
    }

    /// Hand-offs held in flight (`wiring.hold_migrations`), oldest first unless
    /// `newest_first`: each is adopted by its owner.
    pub fn deliver_migrations(&mut self, newest_first: bool) {
        while let Some(m) = self
            .wiring
            .adopt_held(&mut self.shards, newest_first, self.now)
        {
            self.moved(m);
            self.pump();
        }
    }

    fn moved(&mut self, m: Moved) {
        self.clients[m.peer].shard = m.shard;
        self.clients[m.peer].conn = m.conn;
    }

    /// Moves virtual time forward and runs due timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        for s in 0..self.shards.len() {
            if self.shards[s]
                .next_deadline()
                .is_some_and(|t| t <= self.now)
            {
                self.shards[s].on_timer(self.now);
            }
        }
        self.pump();
    }

    /// The network connection breaks (the IO side reports `on_closed`, then `release`).
    pub fn drop_connection(&mut self, c: Cid) {
        let cl = &mut self.clients[c];
        cl.dropped = true;
        let (s, conn, closed) = (cl.shard, cl.conn, cl.closed);
        if !closed {
            self.shards[s].on_closed(conn, self.now);
            self.wiring.release(&mut self.shards, s, conn);
        }
        self.pump();
    }

    pub fn shutdown(&mut self) {
        for s in 0..self.shards.len() {
            self.shards[s].shutdown(self.now);
        }
        self.pump();
    }

    /// Runs the worker's job until nothing moves.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for s in 0..self.shards.len() {
                // Like the worker: retained streams run before the actions are taken.
                moved |= self.shards[s].streams_pending();
                self.shards[s].run_streams(self.now);
                while let Some(a) = self.shards[s].poll_action() {
                    moved = true;
                    self.perform(s, a);
                }
                moved |= self.take_control(s);
                if self.auto_claim {
                    for c in self.shards[s].take_cluster_claims() {
                        moved = true;
                        let m = crate::shard::ClusterIn::Claimed {
                            conn: c.conn,
                            generation: c.generation,
                            session: None,
                            from: None,
                            own: false,
                        };
                        self.shards[s].on_cluster_in(m, self.now);
                    }
                }
            }
            while let Some((from, to, msg)) = self.mesh.pop_front() {
                if self.hold_mesh {
                    self.mesh.push_front((from, to, msg));
                    break;
                }
                moved = true;
                self.carry(from, to, msg);
            }
            if !moved {
                return;
            }
        }
        panic!("cluster does not settle");
    }

    fn perform(&mut self, s: ShardId, a: Action) {
        match a {
            // The verifier pool, inline: the shard still sees the answer come later,
            // through `on_verified`, as from the worker.
            Action::Verify { conn, generation } => {
                if let Some(job) = self.shards[s].take_verify_job(conn, generation) {
                    let ok = job.run(crate::shard::testing::UNIX_NOW_S);
                    let now = self.now;
                    self.shards[s].on_verified(conn, generation, Some(ok), now);
                }
            }
            Action::Flush(conn) => {
                if self
                    .wiring
                    .peer(s, conn)
                    .is_some_and(|c| self.clients[c].stalled)
                {
                    return;
                }
                if let Some(b) = self.shards[s].take_tx(conn) {
                    self.receive(s, conn, &b);
                }
            }
            Action::Close(conn) => {
                while let Some(b) = self.shards[s].take_tx(conn) {
                    self.receive(s, conn, &b);
                }
                if let Some(c) = self.wiring.release(&mut self.shards, s, conn) {
                    self.clients[c].closed = true;
                }
            }
            Action::Migrate { conn, to, handoff } => {
                let now = self.now;
                if let Some(m) = self
                    .wiring
                    .migrate(&mut self.shards, s, conn, to, *handoff, now)
                {
                    self.moved(m);
                }
            }
            Action::Send { to, msg } => {
                assert_ne!(to, s, "a shard sent a message to itself");
                if self.mesh_full(s, to) {
                    self.mesh_dropped += 1;
                    if let ShardMsg::Publish { hold, .. } = msg {
                        let now = self.now;
                        self.shards[s].on_publish_dropped(to, hold, now);
                    }
                    return;
                }
                self.mesh.push_back((s, to, msg));
            }
        }
    }

    fn carry(&mut self, from: ShardId, to: ShardId, msg: ShardMsg) {
        match &msg {
            ShardMsg::Publish { .. } => self.mesh_counts.0 += 1,
            // Route updates, not messages: a batch carries several.
            ShardMsg::Routes(batch) => {
                self.mesh_counts.1 += batch.len();
                self.mesh_counts.2 += 1;
            }
            ShardMsg::RouteAck { .. }
            | ShardMsg::StoreAck { .. }
            | ShardMsg::StoreNack { .. }
            | ShardMsg::StoreProbe { .. } => {}
            ShardMsg::Retain(_) => self.mesh_retained += 1,
        }
        self.shards[to].on_message(from, msg, self.now);
    }

    fn take_control(&mut self, s: ShardId) -> bool {
        wiring::take_control(&mut self.shards, s, &mut self.mesh, self.mesh_room)
    }

    /// Whether the pair `from → to` has no room left (see `mesh_room`).
    fn mesh_full(&self, from: ShardId, to: ShardId) -> bool {
        wiring::pair_full(&self.mesh, self.mesh_room, from, to)
    }

    /// Delivers what is in flight from `from` to `to` (in order), leaving every other
    /// pair's messages in flight, then runs the shards' actions like `pump` with the
    /// mesh held.
    pub fn deliver_pair(&mut self, from: ShardId, to: ShardId) {
        let (now_due, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.mesh)
            .into_iter()
            .partition(|(f, t, _)| (*f, *t) == (from, to));
        self.mesh = rest;
        for (f, t, msg) in now_due {
            self.carry(f, t, msg);
        }
        let held = std::mem::replace(&mut self.hold_mesh, true);
        self.pump();
        self.hold_mesh = held;
    }

    fn receive(&mut self, s: ShardId, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.wiring.peer(s, conn) else {
            return;
        };
        let cl = &mut self.clients[c];
        cl.raw.extend_from_slice(bytes);
        cl.undecoded.extend_from_slice(bytes);
        loop {
            match decode_packet(&mut cl.undecoded, cl.version, MAX_REMAINING_LENGTH + 5) {
                Ok(Some(p)) => cl.inbox.push_back(p),
                Ok(None) => break,
                Err(e) => panic!("client {c} cannot decode server bytes: {e:?}"),
            }
        }
    }
}

// ---- packet builders ---------------------------------------------------------

pub(crate) fn connect_packet(version: ProtocolVersion, id: &str, opts: &ConnectOpts) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: opts.clean,
        keep_alive_s: opts.keepalive_s,
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        will: opts.will.clone(),
        username: opts.username.clone(),
        password: opts.password.clone(),
        properties: opts.properties.clone(),
    }))
}

pub(crate) fn publish(
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    packet_id: u16,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

pub(crate) fn pubp(topic: &str, payload: &str, qos: QoS, retain: bool, packet_id: u16) -> Packet {
    Packet::Publish(publish(topic, payload, qos, retain, packet_id))
}

pub(crate) fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

pub(crate) fn suback(packet_id: u16, codes: &[ReasonCode]) -> Packet {
    Packet::SubAck(SubAck {
        packet_id,
        codes: SmallVec::from_slice(codes),
        properties: Properties::default(),
    })
}

pub(crate) fn connack(present: bool, code: ReasonCode, properties: Properties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: present,
        code,
        properties,
    })
}

/// The CONNACK properties a default-config shard sends to MQTT 5 clients.
pub(crate) fn v5_connack_props(config: &Config) -> Properties {
    Properties::from(PropertyValues {
        receive_maximum: Some(config.receive_maximum),
        maximum_packet_size: Some(config.max_packet_size),
        topic_alias_maximum: Some(config.topic_alias_maximum),
        ..Default::default()
    })
}

pub(crate) fn disconnect(code: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        code,
        properties: Properties::default(),
    })
}

pub(crate) fn puback(id: u16) -> Packet {
    Packet::PubAck(PubResp::new(id))
}
pub(crate) fn pubrec(id: u16) -> Packet {
    Packet::PubRec(PubResp::new(id))
}
pub(crate) fn pubrel(id: u16) -> Packet {
    Packet::PubRel(PubResp::new(id))
}
pub(crate) fn pubcomp(id: u16) -> Packet {
    Packet::PubComp(PubResp::new(id))
}

pub(crate) fn will(
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    properties: Properties,
) -> LastWill {
    LastWill {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties,
    }
}

/// What one filter row (a filter with no siblings, e.g. `t` or `r/#`) with one
/// local subscriber adds to the `bytes_routes` of shard 0 of 1, which counts
/// against the memory mark: for tests that set a mark in bytes.
pub(crate) fn filter_row_bytes(filter: &str) -> usize {
    use crate::shard::subs::{FilterEntry, FilterTrie, LocalSub, PackedRow};
    let mut trie = FilterTrie::with_pack(PackedRow { me: 0 });
    let sub = LocalSub {
        session: 0,
        options: SubscriptionOptions::default(),
        sub_id: 0,
    };
    trie.upsert(filter.as_bytes(), FilterEntry::default, |e| {
        e.plain.push(sub);
        e.shards.insert(0);
    });
    trie.approx_bytes()
}

/// A client id that the owner hash puts on `shard` of `n` (deterministic search;
/// harness configs set no placement seed, so shards place with seed 0).
pub(crate) fn id_on(shard: ShardId, n: usize, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| crate::shard::owner_shard(0, id.as_bytes(), n) == shard)
        .unwrap_or_else(|| panic!("no id for shard {shard}"))
}

pub(crate) use ProtocolVersion::{V31, V311, V5};
