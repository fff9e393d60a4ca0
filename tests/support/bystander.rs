//! [`Bystander`]: two well-behaved clients that prove a misbehaving client did not
//! disturb anyone else.

use super::*;

/// Two well-behaved clients (a subscriber and a publisher with different client ids, so
/// on a multi-shard broker they likely live on different shards) connected before a
/// bad client misbehaves; [`Bystander::check`] proves they still work afterwards.
pub struct Bystander {
    sub: RawClient,
    publ: RawClient,
    topic: String,
    next_pid: u16,
}

impl Bystander {
    pub fn new(addr: &str, version: ProtocolVersion) -> Bystander {
        let topic = format!("by/{}", uniq("t"));
        let (mut sub, mut publ) = if version.is_v5() {
            (
                RawClient::connect_v5(addr, &uniq("bys")).0,
                RawClient::connect_v5(addr, &uniq("byp")).0,
            )
        } else {
            (
                RawClient::connect_v311(addr, &uniq("bys")),
                RawClient::connect_v311(addr, &uniq("byp")),
            )
        };
        sub.version = version;
        publ.version = version;
        sub.subscribe_ok(1, &topic, 1);
        Bystander {
            sub,
            publ,
            topic,
            next_pid: 1,
        }
    }

    /// Publishes QoS 0 and QoS 1 and checks both arrive, then pings both.
    pub fn check(&mut self) {
        self.next_pid += 1;
        let pid = self.next_pid;
        let t = self.topic.clone();
        self.publ.publish_complete(&t, 0, false, 0, b"q0");
        self.publ.publish_complete(&t, 1, false, pid, b"q1");
        let m0 = self.sub.recv_publish();
        assert_eq!(
            (m0.topic.as_str(), m0.qos, &m0.payload[..]),
            (t.as_str(), 0, &b"q0"[..])
        );
        let m1 = self.sub.recv_publish_ack();
        assert_eq!(
            (m1.topic.as_str(), m1.qos, &m1.payload[..]),
            (t.as_str(), 1, &b"q1"[..])
        );
        self.sub.ping();
        self.publ.ping();
    }
}
