use bytes::BytesMut;

use super::packet::{Packet, ProtocolVersion};

/// Exact number of bytes `encode_packet` will write for this packet and version.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    todo!("codec")
}

/// Bytes needed to encode `remaining` as a variable byte integer (1..=4).
pub fn remaining_length_len(remaining: usize) -> usize {
    match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends the wire form of `packet` for `version` to `out`, reserving once.
/// Fields that do not exist in `version` (properties, reason codes before 5.0) are
/// left out; a 3.x CONNACK code is mapped with `ReasonCode::v3_connack_code`.
pub fn encode_packet(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    let _ = (packet, version, out);
    todo!("codec")
}
