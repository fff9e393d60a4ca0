//! [`RawClient`], a blocking TCP client with bounded read timeouts that speaks raw
//! bytes, and the [`Frame`]s it reads (fixed header, remaining length, body).

use super::*;

/// One complete MQTT frame as it came off the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    /// Everything after the remaining-length field.
    pub body: Vec<u8>,
    /// The whole frame, fixed header included.
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame[{}]", to_hex(&self.raw))
    }
}

impl Frame {
    pub fn ptype(&self) -> u8 {
        self.first >> 4
    }
    pub fn flags(&self) -> u8 {
        self.first & 0x0f
    }
    pub fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.body[i], self.body[i + 1]])
    }
}

/// Decodes a variable byte integer at the front of `b`: (value, bytes used).
pub fn read_varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for i in 0..4 {
        let byte = *b.get(i)?;
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub enum ReadOutcome {
    Frame(Frame),
    Closed,
    Timeout,
}

/// Blocking raw MQTT client. Every read is bounded by a timeout.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Frames read ahead (e.g. a retained PUBLISH that overtook its SUBACK).
    pending: std::collections::VecDeque<Frame>,
    pub version: ProtocolVersion,
    name: String,
}

impl RawClient {
    /// Opens a TCP connection; nothing is sent.
    pub fn connect(addr: &str) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_write_timeout(Some(RECV_TIMEOUT))
            .expect("write timeout");
        RawClient {
            stream,
            buf: Vec::new(),
            pending: Default::default(),
            version: V311,
            name: String::new(),
        }
    }

    /// Connects and completes a 3.1.1 CONNECT with clean session 1, keepalive 60.
    pub fn connect_v311(addr: &str, client_id: &str) -> RawClient {
        let mut c = RawClient::connect(addr);
        c.name = client_id.to_string();
        c.send(&pkt::Connect::v311(client_id).bytes());
        c.expect_hex("20 02 00 00");
        c
    }

    /// Connects with a 3.1.1 CONNECT of the caller's making and returns (client, CONNACK frame).
    pub fn connect_with(addr: &str, connect: &pkt::Connect) -> (RawClient, Frame) {
        RawClient::connect_with_within(addr, connect, RECV_TIMEOUT)
    }

    /// As `connect_with`, the CONNACK awaited up to `bound`: a cluster node answers a
    /// CONNECT once its claim is settled, which may take the claim's own bound (4 s)
    /// and the loops' turns around it, more than `RECV_TIMEOUT` on a loaded machine.
    pub fn connect_with_within(
        addr: &str,
        connect: &pkt::Connect,
        bound: Duration,
    ) -> (RawClient, Frame) {
        let mut c = RawClient::connect(addr);
        c.version = connect.version;
        c.name = String::from_utf8_lossy(&connect.client_id).into_owned();
        c.send(&connect.bytes());
        let f = match c.read_frame_within(bound) {
            ReadOutcome::Frame(f) => f,
            ReadOutcome::Closed => panic!("{}: connection closed before the CONNACK", c.name),
            ReadOutcome::Timeout => panic!("{}: no CONNACK within {bound:?}", c.name),
        };
        assert_eq!(f.ptype(), 2, "{}: expected CONNACK, got {f:?}", c.name);
        (c, f)
    }

    /// Connects with an MQTT 5 CONNECT (clean start 1, keepalive 60, no properties) and
    /// checks for a successful CONNACK; returns the parsed CONNACK.
    pub fn connect_v5(addr: &str, client_id: &str) -> (RawClient, ConnAckV5) {
        RawClient::connect_v5_with(addr, &pkt::Connect::v5(client_id))
    }

    pub fn connect_v5_with(addr: &str, connect: &pkt::Connect) -> (RawClient, ConnAckV5) {
        let (c, f) = RawClient::connect_with(addr, connect);
        let ack = ConnAckV5::parse(&f);
        assert_eq!(ack.code, 0, "{}: CONNACK refused: {f:?}", c.name);
        (c, ack)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: write of {} failed: {e}", self.name, to_hex(bytes));
        }
    }

    /// Writes and ignores errors (used when the broker may already have closed).
    pub fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send_hex(&mut self, h: &str) {
        self.send(&hex(h));
    }

    /// Encodes with the codec under test and sends.
    pub fn send_packet(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode_packet(packet, self.version, &mut out);
        self.send(&out);
    }

    /// Reads one frame or observes close/timeout, waiting at most `timeout`.
    pub fn read_frame_within(&mut self, timeout: Duration) -> ReadOutcome {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.take_frame() {
                return ReadOutcome::Frame(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return ReadOutcome::Timeout;
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut tmp = [0u8; 8192];
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    if self.buf.is_empty() {
                        return ReadOutcome::Closed;
                    }
                    panic!(
                        "{}: connection closed mid-frame with {} buffered: {}",
                        self.name,
                        self.buf.len(),
                        to_hex(&self.buf)
                    );
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return ReadOutcome::Timeout
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    return ReadOutcome::Closed
                }
                Err(e) => panic!("{}: read error {e}", self.name),
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        if self.buf.len() < 2 {
            return None;
        }
        let (rem, n) = match read_varint(&self.buf[1..]) {
            Some(x) => x,
            None => {
                assert!(
                    self.buf.len() < 5,
                    "{}: broker sent a malformed remaining length: {}",
                    self.name,
                    to_hex(&self.buf)
                );
                return None;
            }
        };
        let total = 1 + n + rem as usize;
        if self.buf.len() < total {
            return None;
        }
        let raw: Vec<u8> = self.buf.drain(..total).collect();
        Some(Frame {
            first: raw[0],
            body: raw[1 + n..].to_vec(),
            raw,
        })
    }

    /// Next frame; fails the test on close or after [`RECV_TIMEOUT`].
    pub fn recv_frame(&mut self) -> Frame {
        match self.read_frame_within(RECV_TIMEOUT) {
            ReadOutcome::Frame(f) => f,
            ReadOutcome::Closed => panic!(
                "{}: connection closed while a packet was expected",
                self.name
            ),
            ReadOutcome::Timeout => panic!("{}: no packet within {RECV_TIMEOUT:?}", self.name),
        }
    }

    /// Next frame, decoded with the codec under test for `version`.
    pub fn recv_packet(&mut self, version: ProtocolVersion) -> Packet {
        let f = self.recv_frame();
        let mut b = BytesMut::from(&f.raw[..]);
        match decode_packet(&mut b, version, usize::MAX >> 1) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("{}: codec says frame {f:?} is incomplete", self.name),
            Err(e) => panic!("{}: codec rejects frame {f:?}: {e}", self.name),
        }
    }

    /// The next frame must be exactly these bytes.
    pub fn expect_hex(&mut self, h: &str) {
        let want = hex(h);
        self.expect_bytes(&want);
    }

    pub fn expect_bytes(&mut self, want: &[u8]) {
        let f = self.recv_frame();
        assert_eq!(
            to_hex(&f.raw),
            to_hex(want),
            "{}: expected frame {} got {}",
            self.name,
            to_hex(want),
            to_hex(&f.raw)
        );
    }

    /// The broker must close the connection without sending anything (more).
    pub fn expect_closed(&mut self) {
        self.expect_closed_within(RECV_TIMEOUT)
    }

    pub fn expect_closed_within(&mut self, timeout: Duration) {
        match self.read_frame_within(timeout) {
            ReadOutcome::Closed => {}
            ReadOutcome::Frame(f) => panic!("{}: expected close, got packet {f:?}", self.name),
            ReadOutcome::Timeout => {
                panic!("{}: connection still open after {timeout:?}", self.name)
            }
        }
    }

    /// MQTT 5 server-side error after CONNACK: a DISCONNECT with one of `codes`, then close.
    pub fn expect_disconnect_v5(&mut self, codes: &[u8]) {
        self.expect_disconnect_v5_within(codes, RECV_TIMEOUT, String::new)
    }

    /// As `expect_disconnect_v5`, the DISCONNECT within `timeout` (a server that
    /// decides later, e.g. a cluster node's lease or reconcile); a failure also
    /// prints `context()`, e.g. the server's stderr, which says why it did not.
    pub fn expect_disconnect_v5_within(
        &mut self,
        codes: &[u8],
        timeout: Duration,
        context: impl Fn() -> String,
    ) {
        let f = match self.read_frame_within(timeout) {
            ReadOutcome::Frame(f) => f,
            other => panic!(
                "{}: expected DISCONNECT {codes:02x?} within {timeout:?}, got {other:?}\n{}",
                self.name,
                context()
            ),
        };
        assert_eq!(
            f.ptype(),
            14,
            "{}: expected DISCONNECT {codes:02x?}, got {f:?}\n{}",
            self.name,
            context()
        );
        assert_eq!(f.flags(), 0, "{}: DISCONNECT flags {f:?}", self.name);
        // Remaining length 0 means reason 0x00.
        let rc = f.body.first().copied().unwrap_or(0);
        assert!(
            codes.contains(&rc),
            "{}: DISCONNECT reason {rc:#04x}, expected one of {codes:02x?}: {f:?}\n{}",
            self.name,
            context()
        );
        self.expect_closed();
    }

    /// MQTT 5 error during CONNECT: the server MAY send a CONNACK with a reason code
    /// (then it must be one of `codes`), and MUST close.
    pub fn expect_connack_error_or_close_v5(&mut self, codes: &[u8]) {
        match self.read_frame_within(RECV_TIMEOUT) {
            ReadOutcome::Closed => {}
            ReadOutcome::Timeout => {
                panic!("{}: connection still open after a bad CONNECT", self.name)
            }
            ReadOutcome::Frame(f) => {
                assert_eq!(
                    f.ptype(),
                    2,
                    "{}: expected CONNACK or close, got {f:?}",
                    self.name
                );
                let ack = ConnAckV5::parse(&f);
                assert!(
                    codes.contains(&ack.code),
                    "{}: CONNACK reason {:#04x}, expected one of {codes:02x?}: {f:?}",
                    self.name,
                    ack.code
                );
                assert!(
                    !ack.session_present,
                    "MQTT-3.2.2-6: session present must be 0 on refusal"
                );
                self.expect_closed();
            }
        }
    }

    /// Nothing may arrive for [`QUIET`] (the connection must also stay open).
    pub fn expect_silence(&mut self) {
        self.expect_silence_for(QUIET)
    }

    pub fn expect_silence_for(&mut self, d: Duration) {
        match self.read_frame_within(d) {
            ReadOutcome::Timeout => {}
            ReadOutcome::Frame(f) => panic!("{}: expected nothing, got {f:?}", self.name),
            ReadOutcome::Closed => {
                panic!("{}: expected nothing, but the connection closed", self.name)
            }
        }
    }

    /// PINGREQ -> PINGRESP round trip: proves the connection is alive and that every
    /// packet the broker queued before the PINGRESP has been read.
    pub fn ping(&mut self) {
        self.send_hex("c0 00");
        self.expect_hex("d0 00");
    }

    /// Like [`RawClient::ping`], but returns the frames that arrived before the PINGRESP.
    pub fn ping_collect(&mut self) -> Vec<Frame> {
        self.send_hex("c0 00");
        let mut out = Vec::new();
        loop {
            let f = self.recv_frame();
            if f.raw == [0xd0, 0x00] {
                return out;
            }
            out.push(f);
        }
    }

    /// Sends a normal DISCONNECT and waits for the broker to close.
    pub fn disconnect(mut self) {
        // Same two bytes in 3.1.1 and 5.0 (reason 0x00, no properties).
        self.send_hex("e0 00");
        self.expect_closed();
    }

    /// Drops the TCP connection without DISCONNECT (will messages fire).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    // --- packet-level helpers (raw builders) ---

    pub fn subscribe(&mut self, pid: u16, filter: &str, opts: u8) -> Frame {
        let v = self.version;
        self.send(&pkt::subscribe(v, pid, &[], &[(filter, opts)]));
        self.recv_suback()
    }

    /// Next SUBACK. PUBLISHes that arrive first (the spec does not order retained
    /// messages against the SUBACK) are kept for later `recv_*` calls.
    pub fn recv_suback(&mut self) -> Frame {
        let f = self.recv_frame_skipping_publish();
        assert_eq!(f.ptype(), 9, "{}: expected SUBACK, got {f:?}", self.name);
        f
    }

    /// Next frame that is not a PUBLISH; PUBLISHes that arrive before it (acks and
    /// deliveries interleave freely) are kept, in order, for later `recv_*` calls.
    pub fn recv_frame_skipping_publish(&mut self) -> Frame {
        let mut early = Vec::new();
        // Frames already read ahead are not re-examined: they are PUBLISHes kept earlier.
        let mut kept: Vec<Frame> = self.pending.drain(..).collect();
        let f = loop {
            let f = self.recv_frame();
            if f.ptype() != 3 {
                break f;
            }
            early.push(f);
        };
        kept.extend(early);
        self.pending.extend(kept);
        f
    }

    /// Subscribes one filter and asserts the granted code.
    pub fn subscribe_ok(&mut self, pid: u16, filter: &str, opts: u8) {
        let f = self.subscribe(pid, filter, opts);
        let ack = SubAck::parse(self.version, &f);
        assert_eq!(ack.pid, pid);
        assert_eq!(
            ack.codes,
            vec![opts & 0x03],
            "{}: SUBACK for {filter}: {f:?}",
            self.name
        );
    }

    pub fn publish(&mut self, topic: &str, qos: u8, retain: bool, pid: u16, payload: &[u8]) {
        let v = self.version;
        self.send(&pkt::publish(
            v,
            topic,
            qos,
            retain,
            false,
            pid,
            &[],
            payload,
        ));
    }

    /// Publishes at QoS 0/1/2 and completes the flow from the publisher side
    /// (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub fn publish_complete(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        pid: u16,
        payload: &[u8],
    ) {
        self.publish(topic, qos, retain, pid, payload);
        self.complete_publish_flow(qos, pid);
    }

    pub fn complete_publish_flow(&mut self, qos: u8, pid: u16) {
        let v5 = self.version.is_v5();
        match qos {
            0 => {}
            1 => self.expect_ack(4, pid, v5),
            2 => {
                self.expect_ack(5, pid, v5);
                self.send(&pkt::ack(6, pid));
                self.expect_ack(7, pid, v5);
            }
            _ => unreachable!(),
        }
    }

    /// PUBACK/PUBREC/PUBREL/PUBCOMP `ptype` for `pid` with success. In 5.0 the reason
    /// code and properties may be omitted when the reason is 0x00 (3.4.2.1), so all
    /// three forms are accepted there.
    pub fn expect_ack(&mut self, ptype: u8, pid: u16, v5: bool) {
        let f = self.recv_frame_skipping_publish();
        let flags = if ptype == 6 { 2 } else { 0 };
        assert_eq!(
            f.first,
            (ptype << 4) | flags,
            "{}: expected ack type {ptype}, got {f:?}",
            self.name
        );
        assert_eq!(
            f.u16_at(0),
            pid,
            "{}: ack for wrong packet id: {f:?}",
            self.name
        );
        if v5 {
            let ack = PubAckV5::parse(&f);
            // 0x10 "No matching subscribers" is a success code for PUBACK and PUBREC.
            let ok = ack.code == 0 || (ack.code == 0x10 && (ptype == 4 || ptype == 5));
            assert!(ok, "{}: ack reason {:#04x}: {f:?}", self.name, ack.code);
        } else {
            assert_eq!(
                f.body.len(),
                2,
                "{}: 3.1.1 ack must be 4 bytes: {f:?}",
                self.name
            );
        }
    }

    /// Receives one PUBLISH and parses it (codec-independent).
    pub fn recv_publish(&mut self) -> PublishMsg {
        let f = self.recv_frame();
        assert_eq!(f.ptype(), 3, "{}: expected PUBLISH, got {f:?}", self.name);
        PublishMsg::parse(self.version, &f)
    }

    /// Receives one PUBLISH and acknowledges it as QoS requires (QoS 2: PUBREC, then
    /// expects PUBREL and sends PUBCOMP).
    pub fn recv_publish_ack(&mut self) -> PublishMsg {
        let m = self.recv_publish();
        self.ack_received(&m);
        m
    }

    pub fn ack_received(&mut self, m: &PublishMsg) {
        let v5 = self.version.is_v5();
        match m.qos {
            0 => {}
            1 => self.send(&pkt::ack(4, m.pid)),
            2 => {
                self.send(&pkt::ack(5, m.pid));
                self.expect_ack(6, m.pid, v5);
                self.send(&pkt::ack(7, m.pid));
            }
            q => panic!("{}: received PUBLISH with QoS {q}", self.name),
        }
    }
}
