//! The receive path's hot half: reads PUBLISH and 2-byte acknowledgement frames in place
//! (in the provided buffer the kernel filled, no copy, no `Packet`), and accounts each
//! delivery (sequence tracking, latency, per-stream delivery counts) in plain per-thread
//! state. Everything else is left to the full decoder in `engine`. Sans-IO: the caller
//! passes the clock reading and the bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use ringmq::protocol::{peek_frame, DecodeError};

use crate::payload::{self, Header, PayloadError};
use crate::stats::{Arrival, SeqTracker};

/// Every latency histogram loadgen keeps: 1 ns .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One frame at the front of a buffer, as far as the fast path reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A PUBLISH: its first byte (QoS in bits 1-2), packet id (0 at QoS 0) and payload.
    /// The topic is skipped: the payload header says which stream the message is from.
    Publish {
        first: u8,
        packet_id: u16,
        payload: &'a [u8],
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP of remaining length 2: reason Success, no
    /// properties, the same 4 bytes in every version. `packet_type` is 4..=7.
    Ack { packet_type: u8, packet_id: u16 },
    /// Anything else: for the full decoder.
    Other,
}

/// Reads the frame at the front of `buf`. `Ok(None)`: the frame is incomplete.
/// Returns the frame and its length in bytes.
///
/// A PUBLISH is checked as the codec checks its framing (flags, remaining length,
/// topic and property lengths inside the frame, non-zero packet id), not its topic's
/// text: the tool reads no topic, and a foreign payload is caught by its header.
#[inline]
pub fn next_frame(
    buf: &[u8],
    v5: bool,
    max_packet_bytes: usize,
) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    // The commonest acknowledgement, whole, without a length decode.
    if let [first @ (0x40 | 0x50 | 0x62 | 0x70), 0x02, hi, lo, ..] = *buf {
        let packet_id = u16::from_be_bytes([hi, lo]);
        if packet_id == 0 {
            return Err(DecodeError::ZeroPacketId);
        }
        let packet_type = first >> 4;
        return Ok(Some((
            Frame::Ack {
                packet_type,
                packet_id,
            },
            4,
        )));
    }
    // Remaining lengths below 16 KiB (one or two bytes) are read here; longer ones
    // and every malformed or cut header by the codec's `peek_frame`.
    let (first, header_len, len) = match *buf {
        [first, b1, ..] if b1 < 0x80 => (first, 2, 2 + usize::from(b1)),
        [first, b1, b2, ..] if b2 < 0x80 && b2 != 0 => (
            first,
            3,
            3 + (usize::from(b2) << 7 | usize::from(b1 & 0x7F)),
        ),
        _ => {
            let Some(header) = peek_frame(buf, max_packet_bytes)? else {
                return Ok(None);
            };
            (buf[0], header.header_len, header.frame_len())
        }
    };
    if len > max_packet_bytes {
        return Err(DecodeError::PacketTooLarge {
            size: len,
            max: max_packet_bytes,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    if first >> 4 != 3 {
        return Ok(Some((Frame::Other, len)));
    }
    let qos = (first >> 1) & 0b11;
    if qos == 3 {
        return Err(DecodeError::InvalidQoS(3));
    }
    if qos == 0 && first & 0b1000 != 0 {
        return Err(DecodeError::DupOnQoS0);
    }
    let body = &buf[header_len..len];
    let [th, tl, ..] = *body else {
        return Err(DecodeError::UnexpectedEndOfFrame);
    };
    let topic_len = usize::from(u16::from_be_bytes([th, tl]));
    let mut pos = 2 + topic_len;
    if topic_len == 0 && !v5 {
        return Err(DecodeError::InvalidTopicName);
    }
    let mut packet_id = 0;
    if qos > 0 {
        let [hi, lo] = *body
            .get(pos..pos + 2)
            .ok_or(DecodeError::UnexpectedEndOfFrame)?
        else {
            unreachable!("a 2-byte range is 2 bytes");
        };
        packet_id = u16::from_be_bytes([hi, lo]);
        if packet_id == 0 {
            return Err(DecodeError::ZeroPacketId);
        }
        pos += 2;
    }
    if v5 {
        let (props_len, n) = vbi(body.get(pos..).ok_or(DecodeError::UnexpectedEndOfFrame)?)?;
        pos += n + props_len;
    }
    let payload = body.get(pos..).ok_or(DecodeError::UnexpectedEndOfFrame)?;
    Ok(Some((
        Frame::Publish {
            first,
            packet_id,
            payload,
        },
        len,
    )))
}

/// A variable byte integer (MQTT 5 property length): value and bytes it took.
fn vbi(b: &[u8]) -> Result<(usize, usize), DecodeError> {
    let mut v = 0usize;
    for i in 0..4 {
        let byte = *b.get(i).ok_or(DecodeError::UnexpectedEndOfFrame)?;
        v |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

/// The streams one subscriber expects (`lo..hi`), each with its sequence tracker.
/// Indexed by stream, not hashed: every stream in the range is expected, so a dense
/// vector wastes nothing, and it is only allocated at the first delivery (idle fleet
/// devices hold none).
#[derive(Debug, Default)]
pub struct Streams {
    lo: u32,
    hi: u32,
    trackers: Vec<SeqTracker>,
}

impl Streams {
    pub fn new((lo, hi): (u32, u32)) -> Streams {
        Streams {
            lo,
            hi,
            trackers: Vec::new(),
        }
    }

    pub fn trackers(&self) -> &[SeqTracker] {
        &self.trackers
    }
}

/// What one delivery turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From a stream this subscriber does not expect (counted in `unexpected`).
    Unexpected,
    /// Counted; `latency_ns` is set when it belongs to the measured window.
    Counted { latency_ns: Option<u64> },
}

/// One thread's delivery accounting. Plain counters: only the per-stream delivery
/// counts, which other threads' closed-loop publishers read, are shared, and they are
/// added once per receive batch (`publish_delivered`), not once per message.
pub struct RxStats {
    pub latency: Histogram<u64>,
    pub received_measure: u64,
    pub received_bytes_measure: u64,
    pub unexpected: u64,
    /// Unique deliveries not yet added to the shared total.
    pub unique_pending: u64,
    /// Whether the measured window is open, and when it opened: deliveries of
    /// messages sent before it are counted but not measured.
    pub measuring: bool,
    pub measure_start_ns: u64,
    /// Deliveries per stream (indexed by stream id) not yet added to the shared counts,
    /// and which streams have any.
    delivered_pending: Vec<u32>,
    touched: Vec<u32>,
}

impl RxStats {
    /// Accounting for `streams` streams in all (the shared per-stream counts' length).
    pub fn new(streams: usize, latency: Histogram<u64>) -> RxStats {
        RxStats {
            latency,
            received_measure: 0,
            received_bytes_measure: 0,
            unexpected: 0,
            unique_pending: 0,
            measuring: false,
            measure_start_ns: u64::MAX,
            delivered_pending: vec![0; streams],
            touched: Vec::new(),
        }
    }

    /// Accounts one received copy of `h` (a payload of `payload_len` bytes) at `now_ns`.
    #[inline]
    pub fn deliver(
        &mut self,
        streams: &mut Streams,
        h: &Header,
        payload_len: usize,
        now_ns: u64,
    ) -> Delivery {
        if h.stream < streams.lo || h.stream >= streams.hi {
            self.unexpected += 1;
            return Delivery::Unexpected;
        }
        if streams.trackers.is_empty() {
            streams
                .trackers
                .resize_with((streams.hi - streams.lo) as usize, SeqTracker::default);
        }
        let fresh =
            streams.trackers[(h.stream - streams.lo) as usize].record(h.seq) != Arrival::Duplicate;
        self.unique_pending += u64::from(fresh);
        if let Some(n) = self.delivered_pending.get_mut(h.stream as usize) {
            if *n == 0 {
                self.touched.push(h.stream);
            }
            *n += 1;
        }
        let latency_ns = if self.measuring && h.send_ns >= self.measure_start_ns {
            self.received_measure += 1;
            self.received_bytes_measure += payload_len as u64;
            Some(now_ns.saturating_sub(h.send_ns).max(1))
        } else {
            None
        };
        Delivery::Counted { latency_ns }
    }

    /// Adds the deliveries counted since the last call to the shared per-stream counts
    /// (what closed-loop publishers wait for).
    pub fn publish_delivered(&mut self, delivered: &[AtomicU64]) {
        for &s in &self.touched {
            let n = std::mem::take(&mut self.delivered_pending[s as usize]);
            delivered[s as usize].fetch_add(u64::from(n), Ordering::Relaxed);
        }
        self.touched.clear();
    }
}

/// Why `scan` stopped before the end of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every byte was consumed.
    End,
    /// The rest is the start of a frame that is not complete yet.
    Partial,
    /// The next frame needs the full decoder (or the connection's role handles
    /// PUBLISH itself).
    Slow,
}

/// What `scan` did, beyond writing acknowledgements and accounting deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    pub consumed: usize,
    pub stop: Stop,
    /// PUBACKs and PUBCOMPs read: this connection's publishes now acknowledged.
    pub acked: u32,
    /// Bytes were appended to `out` (acknowledgements to send).
    pub wrote: bool,
    /// A payload without the loadgen header (an error to report; scanning stopped
    /// after its frame).
    pub foreign: Option<PayloadError>,
}

/// Connection-side state `scan` needs.
pub struct Conn<'a> {
    pub v5: bool,
    /// PUBLISHes are accounted here; false for roles that answer them (fleet devices,
    /// the controller), whose PUBLISHes stop the scan with `Stop::Slow`.
    pub plain_subscriber: bool,
    pub streams: &'a mut Streams,
    /// Acknowledgements to send go here.
    pub out: &'a mut Vec<u8>,
}

/// Reads frames from `buf` while they need nothing but `conn` and `rx`: PUBLISHes of a
/// plain subscriber (acknowledged at QoS 1 and 2, then accounted) and 2-byte acks.
/// `now_ns` is when this batch of bytes was seen; it is the receive time of every
/// message in it. A malformed frame stops the scan (`Stop::Slow`) in front of it, so
/// the full decoder reports it and nothing read before it is read twice.
pub fn scan(
    buf: &[u8],
    conn: &mut Conn<'_>,
    rx: &mut RxStats,
    max_packet_bytes: usize,
    now_ns: u64,
) -> Scanned {
    let mut done = Scanned {
        consumed: 0,
        stop: Stop::End,
        acked: 0,
        wrote: false,
        foreign: None,
    };
    while done.consumed < buf.len() {
        let (frame, len) = match next_frame(&buf[done.consumed..], conn.v5, max_packet_bytes) {
            Ok(Some(f)) => f,
            Ok(None) => {
                done.stop = Stop::Partial;
                return done;
            }
            Err(_) => {
                done.stop = Stop::Slow;
                return done;
            }
        };
        match frame {
            Frame::Publish {
                first,
                packet_id,
                payload,
            } if conn.plain_subscriber => {
                let [hi, lo] = packet_id.to_be_bytes();
                match (first >> 1) & 0b11 {
                    0 => {}
                    // PUBACK / PUBREC, Success, no properties: 4 bytes in every version.
                    1 => conn.out.extend_from_slice(&[0x40, 0x02, hi, lo]),
                    _ => conn.out.extend_from_slice(&[0x50, 0x02, hi, lo]),
                }
                done.wrote |= first & 0b0110 != 0;
                done.consumed += len;
                match payload::decode(payload) {
                    Ok(h) => {
                        if let Delivery::Counted {
                            latency_ns: Some(ns),
                        } = rx.deliver(conn.streams, &h, payload.len(), now_ns)
                        {
                            let _ = rx.latency.record(ns);
                        }
                    }
                    Err(e) => {
                        rx.unexpected += 1;
                        done.foreign = Some(e);
                        done.stop = Stop::Slow;
                        return done;
                    }
                }
            }
            Frame::Ack {
                packet_type: 4 | 7, ..
            } => {
                done.acked += 1;
                done.consumed += len;
            }
            // PUBREC -> PUBREL; PUBREL -> PUBCOMP (reason Success, 4 bytes).
            Frame::Ack {
                packet_type: 5,
                packet_id,
            } => {
                let [hi, lo] = packet_id.to_be_bytes();
                conn.out.extend_from_slice(&[0x62, 0x02, hi, lo]);
                done.wrote = true;
                done.consumed += len;
            }
            Frame::Ack {
                packet_type: 6,
                packet_id,
            } => {
                let [hi, lo] = packet_id.to_be_bytes();
                conn.out.extend_from_slice(&[0x70, 0x02, hi, lo]);
                done.wrote = true;
                done.consumed += len;
            }
            _ => {
                done.stop = Stop::Slow;
                return done;
            }
        }
    }
    done
}

/// Appends to `partial` (the start of one frame) the bytes of `data` that complete
/// that frame, or all of `data` if it does not; returns how many it took. A frame cut
/// by the end of one receive buffer is finished this way without copying the next
/// buffer's other frames.
pub fn complete_frame(
    partial: &mut BytesMut,
    data: &[u8],
    max_packet_bytes: usize,
) -> Result<usize, DecodeError> {
    let mut used = 0;
    loop {
        match peek_frame(partial, max_packet_bytes)? {
            Some(h) => {
                let take = h
                    .frame_len()
                    .saturating_sub(partial.len())
                    .min(data.len() - used);
                partial.extend_from_slice(&data[used..used + take]);
                return Ok(used + take);
            }
            // The fixed header itself is cut: at most 4 more bytes, one at a time.
            None if used < data.len() => {
                partial.extend_from_slice(&data[used..used + 1]);
                used += 1;
            }
            None => return Ok(used),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringmq::protocol::{
        decode_packet, encode_packet, ConnAck, Packet, Properties, ProtocolVersion, PubResp,
        Publish, PublishProperties, QoS, ReasonCode,
    };

    const MAX: usize = 1 << 20;

    fn publish(v: ProtocolVersion, qos: QoS, pid: u16, stream: u32, seq: u64) -> Vec<u8> {
        let mut properties = PublishProperties::default();
        if v.is_v5() {
            properties.message_expiry_interval_s = Some(60);
            properties.rare.to_mut().subscription_identifiers.push(300);
        }
        let h = Header {
            kind: payload::KIND_DATA,
            stream,
            seq,
            send_ns: 1_000 + seq,
        };
        let p = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(b"lg/fanin/7"),
            packet_id: pid,
            properties,
            payload: Bytes::from(payload::encode(&h, 64)),
        });
        let mut b = BytesMut::new();
        encode_packet(&p, v, &mut b);
        b.to_vec()
    }

    fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_packet(p, v, &mut b);
        b.to_vec()
    }

    struct Sub {
        streams: Streams,
        out: Vec<u8>,
        rx: RxStats,
    }

    impl Sub {
        fn new(expect: (u32, u32)) -> Sub {
            let mut rx = RxStats::new(8, new_histogram());
            rx.measuring = true;
            rx.measure_start_ns = 0;
            Sub {
                streams: Streams::new(expect),
                out: Vec::new(),
                rx,
            }
        }

        fn scan(&mut self, buf: &[u8], v5: bool) -> Scanned {
            let mut conn = Conn {
                v5,
                plain_subscriber: true,
                streams: &mut self.streams,
                out: &mut self.out,
            };
            scan(buf, &mut conn, &mut self.rx, MAX, 5_000)
        }
    }

    /// The fast path reads what the full decoder reads: packet id, flags and payload.
    #[test]
    fn publish_frames_match_the_codec() {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for (qos, pid) in [
                (QoS::AtMostOnce, 0),
                (QoS::AtLeastOnce, 9),
                (QoS::ExactlyOnce, 513),
            ] {
                let wire = publish(v, qos, pid, 3, 42);
                let Some((
                    Frame::Publish {
                        first,
                        packet_id,
                        payload,
                    },
                    len,
                )) = next_frame(&wire, v.is_v5(), MAX).unwrap()
                else {
                    panic!("not a PUBLISH frame");
                };
                let Some(Packet::Publish(p)) =
                    decode_packet(&mut BytesMut::from(&wire[..]), v, MAX).unwrap()
                else {
                    panic!("codec did not decode a PUBLISH");
                };
                assert_eq!(len, wire.len());
                assert_eq!((first >> 1) & 3, p.qos as u8);
                assert_eq!(packet_id, p.packet_id);
                assert_eq!(payload, &p.payload[..]);
            }
        }
    }

    #[test]
    fn acks_are_read_in_place_and_answered() {
        let v = ProtocolVersion::V311;
        let mut wire = Vec::new();
        wire.extend(encode(&Packet::PubAck(PubResp::new(1)), v));
        wire.extend(encode(&Packet::PubComp(PubResp::new(2)), v));
        wire.extend(encode(&Packet::PubRec(PubResp::new(3)), v));
        wire.extend(encode(&Packet::PubRel(PubResp::new(4)), v));
        let mut s = Sub::new((0, 1));
        let got = s.scan(&wire, false);
        assert_eq!(
            (got.consumed, got.stop, got.acked, got.wrote),
            (16, Stop::End, 2, true)
        );
        let mut want = encode(&Packet::PubRel(PubResp::new(3)), v);
        want.extend(encode(&Packet::PubComp(PubResp::new(4)), v));
        assert_eq!(s.out, want);
    }

    #[test]
    fn deliveries_are_tracked_acknowledged_and_measured() {
        let delivered: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut s = Sub::new((2, 4));
            let mut wire = Vec::new();
            wire.extend(publish(v, QoS::AtLeastOnce, 7, 2, 0));
            wire.extend(publish(v, QoS::AtMostOnce, 0, 3, 0));
            wire.extend(publish(v, QoS::AtMostOnce, 0, 2, 2)); // gap: 1 missing
            wire.extend(publish(v, QoS::AtMostOnce, 0, 2, 1)); // late
            wire.extend(publish(v, QoS::ExactlyOnce, 8, 3, 0)); // duplicate
            wire.extend(publish(v, QoS::AtMostOnce, 0, 5, 0)); // not expected
            let got = s.scan(&wire, v.is_v5());
            assert_eq!(
                (got.consumed, got.stop, got.acked),
                (wire.len(), Stop::End, 0)
            );
            assert!(got.wrote);
            assert_eq!(s.out, [0x40, 0x02, 0, 7, 0x50, 0x02, 0, 8]);
            let t = s.streams.trackers();
            assert_eq!((t[0].unique, t[0].out_of_order, t[0].duplicates), (3, 1, 0));
            assert_eq!((t[1].unique, t[1].duplicates), (1, 1));
            assert_eq!((s.rx.unique_pending, s.rx.unexpected), (4, 1));
            // Every counted copy is measured, duplicates included (as the codec path did).
            assert_eq!(s.rx.received_measure, 5);
            assert_eq!(s.rx.latency.len(), 5);
            // now 5_000 - sent 1_000: the latency from the embedded timestamp.
            assert!(s.rx.latency.equivalent(s.rx.latency.max(), 4_000));
            s.rx.publish_delivered(&delivered);
            s.rx.publish_delivered(&delivered);
        }
        let counts: Vec<u64> = delivered
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [0, 0, 6, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn outside_the_measured_window_nothing_is_measured() {
        let mut s = Sub::new((0, 1));
        s.rx.measure_start_ns = 1_001; // the message was sent at 1_000
        let wire = publish(ProtocolVersion::V311, QoS::AtMostOnce, 0, 0, 0);
        s.scan(&wire, false);
        assert_eq!((s.rx.unique_pending, s.rx.received_measure), (1, 0));
        assert!(s.rx.latency.is_empty());
    }

    /// Cut anywhere, two buffers (the first's tail completed from the second, as the
    /// engine does) account exactly what one buffer does.
    #[test]
    fn a_frame_cut_by_a_buffer_end_is_completed_from_the_next() {
        let v = ProtocolVersion::V5;
        let mut wire = Vec::new();
        for seq in 0..3 {
            wire.extend(publish(v, QoS::AtLeastOnce, 1 + seq as u16, 0, seq));
        }
        wire.extend(encode(&Packet::PubAck(PubResp::new(9)), v));
        for cut in 0..=wire.len() {
            let mut s = Sub::new((0, 1));
            let (a, b) = wire.split_at(cut);
            let first = s.scan(a, true);
            let mut inbuf = BytesMut::from(&a[first.consumed..]);
            let mut acked = first.acked;
            let mut rest = b;
            if !inbuf.is_empty() {
                assert_eq!(first.stop, Stop::Partial, "cut {cut}");
                let used = complete_frame(&mut inbuf, b, MAX).unwrap();
                let mid = s.scan(&inbuf, true);
                assert_eq!(
                    (mid.consumed, mid.stop),
                    (inbuf.len(), Stop::End),
                    "cut {cut}"
                );
                acked += mid.acked;
                rest = &b[used..];
            }
            let last = s.scan(rest, true);
            assert_eq!(
                (last.consumed, last.stop),
                (rest.len(), Stop::End),
                "cut {cut}"
            );
            acked += last.acked;
            assert_eq!(acked, 1, "cut {cut}");
            assert_eq!(s.streams.trackers()[0].unique, 3, "cut {cut}");
            assert_eq!(
                s.out,
                [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn other_packets_and_other_roles_go_to_the_full_decoder() {
        let v = ProtocolVersion::V311;
        let connack = encode(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::Success,
                properties: Properties::default(),
            }),
            v,
        );
        let mut wire = encode(&Packet::PubAck(PubResp::new(1)), v);
        wire.extend(&connack);
        let mut s = Sub::new((0, 1));
        let got = s.scan(&wire, false);
        assert_eq!((got.consumed, got.stop, got.acked), (4, Stop::Slow, 1));

        let wire = publish(v, QoS::AtLeastOnce, 1, 0, 0);
        let mut conn = Conn {
            v5: false,
            plain_subscriber: false,
            streams: &mut s.streams,
            out: &mut s.out,
        };
        let got = scan(&wire, &mut conn, &mut s.rx, MAX, 0);
        assert_eq!((got.consumed, got.stop, got.wrote), (0, Stop::Slow, false));
    }

    #[test]
    fn foreign_payload_stops_after_its_frame() {
        let v = ProtocolVersion::V311;
        let foreign = encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: Bytes::from_static(b"x"),
                packet_id: 0,
                properties: PublishProperties::default(),
                payload: Bytes::from_static(b"hello"),
            }),
            v,
        );
        let mut wire = foreign.clone();
        wire.extend(publish(v, QoS::AtMostOnce, 0, 0, 0));
        let mut s = Sub::new((0, 1));
        let got = s.scan(&wire, false);
        assert_eq!(got.consumed, foreign.len());
        assert_eq!(got.foreign, Some(PayloadError::TooShort(5)));
        assert_eq!(s.rx.unexpected, 1);
    }

    /// What precedes a malformed frame is read once; the bad frame is left in place
    /// for the full decoder to report.
    #[test]
    fn a_scan_stops_in_front_of_a_malformed_frame() {
        let mut wire = publish(ProtocolVersion::V311, QoS::AtMostOnce, 0, 0, 0);
        let good = wire.len();
        wire.extend([0x36, 0x00]); // QoS 3
        let mut s = Sub::new((0, 1));
        let got = s.scan(&wire, false);
        assert_eq!((got.consumed, got.stop), (good, Stop::Slow));
        assert_eq!(s.rx.unique_pending, 1);
        assert!(decode_packet(
            &mut BytesMut::from(&wire[good..]),
            ProtocolVersion::V311,
            MAX
        )
        .is_err());
    }

    #[test]
    fn malformed_frames_are_errors() {
        // QoS 3.
        assert_eq!(
            next_frame(&[0x36, 0x00], false, MAX),
            Err(DecodeError::InvalidQoS(3))
        );
        // Topic length past the end of the frame.
        assert_eq!(
            next_frame(&[0x30, 0x03, 0x00, 0x09, b'a'], false, MAX),
            Err(DecodeError::UnexpectedEndOfFrame)
        );
        // QoS 1 without room for a packet id; and packet id 0.
        assert_eq!(
            next_frame(&[0x32, 0x03, 0x00, 0x01, b'a'], false, MAX),
            Err(DecodeError::UnexpectedEndOfFrame)
        );
        assert_eq!(
            next_frame(&[0x32, 0x05, 0x00, 0x01, b'a', 0, 0], false, MAX),
            Err(DecodeError::ZeroPacketId)
        );
        assert_eq!(
            next_frame(&[0x40, 0x02, 0, 0], false, MAX),
            Err(DecodeError::ZeroPacketId)
        );
        // Empty topic without MQTT 5 (no topic alias possible).
        assert_eq!(
            next_frame(&[0x30, 0x02, 0x00, 0x00], false, MAX),
            Err(DecodeError::InvalidTopicName)
        );
        // Incomplete: not an error.
        assert_eq!(next_frame(&[0x30, 0x05, 0x00], false, MAX), Ok(None));
        assert_eq!(next_frame(&[0x30], false, MAX), Ok(None));
    }
}
