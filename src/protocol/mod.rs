//! MQTT 3.1 / 3.1.1 / 5.0 wire codec. No state, no IO, no other broker module.
//!
//! Decoding is incremental over a `BytesMut`: an incomplete frame is `Ok(None)`,
//! never an error. Strings, topics and payloads are zero-copy `Bytes` slices of the
//! receive buffer, already validated (UTF-8, no U+0000) when a packet is returned.

mod decode;
mod encode;
mod error;
mod packet;
mod packet_type;
mod properties;
mod reason;

pub use decode::{decode_packet, peek_frame, FrameHeader};
pub use encode::{encode_packet, encode_to_bytes, encoded_len, remaining_length_len};
pub use error::DecodeError;
pub use packet::*;
pub use packet_type::PacketType;
pub use properties::{
    property_id, Properties, PropertySet, PropertyValues, PublishProperties, PublishRare, Sparse,
    SparseFields, UserProperty,
};
pub use reason::ReasonCode;

/// Largest value the variable-length "remaining length" can express (4 bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
