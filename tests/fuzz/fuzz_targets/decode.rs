//! Arbitrary bytes into the decoder, for every protocol version, in arbitrary chunks:
//! it must never panic, must consume only whole frames, and every packet it returns
//! must encode back to bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::protocol::{decode_packet, encode_packet, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let version = match selector % 3 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    };
    let chunk = usize::from(selector / 3).max(1);
    let mut rx = BytesMut::new();
    for piece in rest.chunks(chunk) {
        rx.extend_from_slice(piece);
        loop {
            let before = rx.len();
            match decode_packet(&mut rx, version, 4096) {
                Ok(Some(packet)) => {
                    assert!(rx.len() < before, "a packet was returned without consuming bytes");
                    let mut wire = BytesMut::new();
                    encode_packet(&packet, version, &mut wire);
                    let again = decode_packet(&mut wire, version, usize::MAX)
                        .expect("re-encoded packet decodes")
                        .expect("re-encoded packet is complete");
                    assert_eq!(again, packet, "encode/decode round trip changed the packet");
                    assert!(wire.is_empty(), "re-encoded packet left trailing bytes");
                }
                Ok(None) => {
                    assert_eq!(rx.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
