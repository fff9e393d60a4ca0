//! The MQTT-SN gateway's IO on one loop: the routing of each datagram to the loop
//! that owns its client, and the datagrams the gateway sends.
//!
//! Every loop binds its own UDP socket on the gateway's port (`SO_REUSEPORT`, in
//! `main`), so the kernel keeps each peer address on one loop, and hands it to its
//! backend (`EventLoop::add_udp`: io_uring multishot `RECVMSG` into provided buffers
//! and `SENDMSG`, or epoll `recv_from`/`send_to`). A CONNECT (and the wake-up
//! PINGREQ, which names its client) goes to the loop that owns the client id, over
//! the mesh when that is another loop, and the address is remembered so its later
//! datagrams follow; the owner answers from its own socket, bound to the same
//! address. A datagram the socket will not take is dropped and counted (the
//! gateway's Tretry covers QoS 1/2). Behind a forwarder (spec 5.5) one address
//! carries many clients: the route is then kept per (address, wireless node id), and
//! the CONNECT inside the encapsulation decides it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use ahash::AHashMap;
use bytes::Bytes;

use super::WorkerMsg;
use crate::gateway::mqttsn::{decode, GatewayLimits, Message, SnNode, SnPeer};
use crate::io::EventLoop;
use crate::ring::{Endpoint, SendError, SendOutcome, WakeSet};
use crate::shard::Shard;

/// What `main` gives a loop when the gateway is on.
pub struct SnSetup {
    /// Bound (the group shares one port through `SO_REUSEPORT`).
    pub socket: UdpSocket,
    pub limits: GatewayLimits,
    /// Where this loop's ADVERTISE broadcasts go (only loop 0 has an interval).
    pub advertise_to: Option<SocketAddr>,
}

pub(super) struct SnIo {
    pub(super) node: SnNode,
    /// Peer (address, forwarded node) → the other loop that owns its client;
    /// bounded by `routes_max`.
    routes: AHashMap<SnPeer, usize>,
    routes_max: usize,
    advertise_to: Option<SocketAddr>,
}

impl SnIo {
    pub(super) fn new<L: EventLoop>(
        setup: SnSetup,
        shard: &Shard,
        io: &mut L,
        now: Instant,
    ) -> io::Result<SnIo> {
        let SnSetup {
            socket,
            limits,
            advertise_to,
        } = setup;
        let local = socket.local_addr()?;
        io.add_udp(socket)?;
        let routes_max = limits.max_clients.saturating_mul(4).max(1024);
        Ok(SnIo {
            node: SnNode::new(limits, shard, local, now),
            routes: AHashMap::new(),
            routes_max,
            advertise_to,
        })
    }

    /// One datagram received on this loop's socket: handled here or passed to the
    /// loop that owns its client.
    pub(super) fn on_datagram(
        &mut self,
        shard: &mut Shard,
        mesh: &mut Endpoint<WorkerMsg>,
        wake: &mut WakeSet,
        from: SocketAddr,
        data: Bytes,
        now: Instant,
    ) {
        shard.sn_stats_mut().datagrams_in += 1;
        let me = shard.id();
        let to = if mesh.shard_count() == 1 {
            me
        } else {
            let (peer, msg) = SnPeer::of(from, &data);
            if let Some(id) = names_client(&msg) {
                let owner = shard.owner_of(&id);
                if owner == me {
                    self.routes.remove(&peer);
                } else {
                    if self.routes.len() >= self.routes_max {
                        // Forgotten addresses are relearned from their next CONNECT.
                        self.routes.clear();
                    }
                    self.routes.insert(peer, owner);
                }
                owner
            } else if self.node.knows(from, &data) {
                me
            } else {
                self.routes.get(&peer).copied().unwrap_or(me)
            }
        };
        if to == me {
            self.node.on_datagram(shard, from, &data, now);
            return;
        }
        let stats = shard.sn_stats_mut();
        match mesh.send(to, WorkerMsg::SnDatagram(Box::new((from, data)))) {
            Ok(SendOutcome::QueuedWake) => {
                stats.forwarded += 1;
                wake.insert(to);
            }
            Ok(_) => stats.forwarded += 1,
            Err(SendError::Rejected(_)) | Err(SendError::NoSuchShard(_)) => {
                stats.forward_dropped += 1
            }
        }
    }

    /// Sends what the gateway wrote and brings the loop's counters up to date.
    pub(super) fn flush<L: EventLoop>(&mut self, io: &mut L, shard: &mut Shard) {
        let broadcasts = self.node.take_broadcasts();
        let advertised = self
            .advertise_to
            .into_iter()
            .flat_map(|to| broadcasts.iter().map(move |b| (to, b.clone())));
        for (to, bytes) in self.node.take_datagrams().into_iter().chain(advertised) {
            let stats = shard.sn_stats_mut();
            if io.send_to(to, bytes) {
                stats.datagrams_out += 1;
            } else {
                stats.send_dropped += 1;
            }
        }
        self.node.sync_stats(shard);
    }
}

/// The client id a CONNECT or a wake-up PINGREQ names: the messages that decide
/// which loop a peer address belongs to. Only those two types are decoded.
fn names_client(data: &Bytes) -> Option<Bytes> {
    // The type follows a 1-byte length, or 0x01 and a 2-byte length (spec 5.2.1).
    let t = if data.first() == Some(&0x01) {
        data.get(3)
    } else {
        data.get(1)
    };
    const CONNECT: u8 = 0x04;
    const PINGREQ: u8 = 0x16;
    if !matches!(t, Some(&CONNECT) | Some(&PINGREQ)) {
        return None;
    }
    match decode(data).ok()? {
        Message::Connect { client_id, .. } => Some(client_id),
        Message::PingReq { client_id } => client_id,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::mqttsn::{encode_to_bytes, QoS, TopicRef};

    fn wire(m: &Message) -> Bytes {
        encode_to_bytes(m).expect("encodes")
    }

    /// Only CONNECT and the wake-up PINGREQ decide a peer's loop; everything else,
    /// garbage included, follows the address.
    #[test]
    fn names_client_reads_connect_and_wake_up_pingreq_only() {
        let id = Bytes::from_static(b"sensor-1");
        let connect = Message::Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: id.clone(),
        };
        assert_eq!(names_client(&wire(&connect)), Some(id.clone()));
        let wake = Message::PingReq {
            client_id: Some(id.clone()),
        };
        assert_eq!(names_client(&wire(&wake)), Some(id.clone()));
        assert_eq!(
            names_client(&wire(&Message::PingReq { client_id: None })),
            None
        );
        let publish = Message::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicRef::Normal(1),
            msg_id: 0,
            data: Bytes::from_static(b"x"),
        };
        assert_eq!(names_client(&wire(&publish)), None);
        // The 3-byte length form (0x01, length) of a CONNECT.
        let long = Bytes::from(
            [
                &[0x01, 0x00, 0x10, 0x04, 0x04, 0x01, 0x00, 0x3c][..],
                b"sensor-1",
            ]
            .concat(),
        );
        assert_eq!(names_client(&long), Some(id));
        for garbage in [&[][..], &[0x04], &[0x02, 0x04], &[0x01, 0x00], &[0xff; 9]] {
            assert_eq!(names_client(&Bytes::copy_from_slice(garbage)), None);
        }
    }
}
