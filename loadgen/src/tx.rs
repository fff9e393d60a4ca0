//! The publisher's hot half: appends one PUBLISH to a connection's output from the
//! stream's pre-encoded frame (fixed header, topic, zero-padded payload), patching
//! only the packet id and the payload header. No `Packet`, no codec, no allocation
//! once the output has grown. Sans-IO: the engine passes the clock reading; the
//! callgrind budget (`loadgen_tx_100_*`) and the divan bench drive the same code.

use crate::payload::{self, Header, KIND_DATA};

/// One stream's pre-encoded PUBLISH.
#[derive(Debug, Clone, Default)]
pub struct Template {
    /// The whole frame, payload zeroed.
    pub frame: Vec<u8>,
    /// Offset of the packet id (QoS >= 1) in `frame`.
    pub pid_off: usize,
    /// Payload bytes at the end of `frame`.
    pub payload_len: usize,
    pub stream: u32,
}

/// Appends one PUBLISH of `t` to `out`: sequence `seq`, stamped `send_ns`, with
/// packet id `pid` (`None` at QoS 0).
#[inline]
pub fn append(out: &mut Vec<u8>, t: &Template, pid: Option<u16>, seq: u64, send_ns: u64) {
    let start = out.len();
    out.extend_from_slice(&t.frame);
    let frame = &mut out[start..];
    if let Some(pid) = pid {
        frame[t.pid_off..t.pid_off + 2].copy_from_slice(&pid.to_be_bytes());
    }
    let payload_at = frame.len() - t.payload_len;
    payload::write_header(
        &mut frame[payload_at..],
        &Header {
            kind: KIND_DATA,
            stream: t.stream,
            seq,
            send_ns,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use ringmq::protocol::{
        decode_packet, encode_packet, Packet, ProtocolVersion, Publish, PublishProperties, QoS,
    };

    fn template(qos: QoS, v: ProtocolVersion) -> Template {
        let topic = "lg/fanin/42";
        let p = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(topic.as_bytes()),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; 64]),
        });
        let mut b = BytesMut::new();
        encode_packet(&p, v, &mut b);
        // Fixed header (1 + 1 remaining-length byte here) + topic length + topic.
        Template {
            frame: b.to_vec(),
            pid_off: 2 + 2 + topic.len(),
            payload_len: 64,
            stream: 42,
        }
    }

    #[test]
    fn appended_frames_decode_as_the_codec_encodes_them() {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let t = template(qos, v);
                let mut out = Vec::new();
                for seq in 0..3u64 {
                    let pid = (qos != QoS::AtMostOnce).then_some(100 + seq as u16);
                    append(&mut out, &t, pid, seq, 1_000 + seq);
                }
                let mut buf = BytesMut::from(&out[..]);
                for seq in 0..3u64 {
                    let Some(Packet::Publish(p)) = decode_packet(&mut buf, v, 1 << 20).unwrap()
                    else {
                        panic!("not a PUBLISH: {v:?} {qos:?}");
                    };
                    assert_eq!(p.qos, qos);
                    assert_eq!(&p.topic[..], b"lg/fanin/42");
                    let want_pid = if qos == QoS::AtMostOnce {
                        0
                    } else {
                        100 + seq as u16
                    };
                    assert_eq!(p.packet_id, want_pid);
                    assert_eq!(p.payload.len(), 64);
                    let h = payload::decode(&p.payload).unwrap();
                    assert_eq!(
                        h,
                        Header {
                            kind: KIND_DATA,
                            stream: 42,
                            seq,
                            send_ns: 1_000 + seq
                        }
                    );
                }
                assert!(buf.is_empty());
            }
        }
    }
}
