use bytes::BytesMut;

use super::error::DecodeError;
use super::packet::{Packet, ProtocolVersion};

/// Fixed header of one frame: the first byte, and the remaining length with the
/// number of bytes it took to encode, so the frame is `header_len + remaining_len` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_byte: u8,
    pub remaining_len: usize,
    pub header_len: usize,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header if enough bytes are present. `Ok(None)`: need more bytes.
/// A frame longer than `max_packet_size` is rejected here, before it is buffered.
pub fn peek_frame(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
    let _ = (buf, max_packet_size);
    todo!("codec")
}

/// Decodes one packet from the front of `buf`, consuming its bytes on success.
/// `Ok(None)`: the frame is incomplete; nothing is consumed. `version` is the
/// connection's negotiated version (CONNECT itself is decoded whatever it is).
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    todo!("codec")
}
