//! WebSocket framing for MQTT (RFC 6455 section 5), sans-IO. Inbound: frames are
//! turned into MQTT bytes in place in the receive buffer (payloads moved down over
//! their headers and unmasked there), so a data frame's payload is streamed to the
//! decoder as it arrives and never held whole: MQTT packets may span frames and a
//! frame may hold several packets (MQTT 6.0). Only an incomplete frame header, or an
//! incomplete control frame (at most 2 + 8 + 4 + 125 bytes), waits for more bytes.
//! Outbound: one unmasked binary frame per flush.

use std::io::Cursor;
use std::ops::Range;

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::{close_code, WsError};

/// Largest control frame payload (RFC 6455 5.5).
const MAX_CONTROL_BYTES: u64 = 125;

/// Receive-side framing state between reads.
#[derive(Debug, Default)]
pub struct Deframer {
    /// Payload bytes of the current data frame not yet received.
    left: u64,
    mask: [u8; 4],
    /// Index into `mask` of the next payload byte.
    mask_pos: u8,
    /// A binary message began without FIN: continuations belong to it.
    in_message: bool,
}

/// What one pass over the received bytes left.
#[derive(Debug, PartialEq, Eq)]
pub struct Deframed {
    /// MQTT bytes, in place at the start of the region given.
    pub payload_end: usize,
    /// Bytes of an incomplete header or control frame, to be put before the next read.
    pub tail: Range<usize>,
    /// The peer sent a close frame: the code to echo (later bytes are ignored).
    pub close: Option<u16>,
}

impl Deframer {
    /// Deframes `buf[start..]` in place. Pongs answering pings, and nothing else, are
    /// appended to `out`. Bounded: each pass consumes a header or payload bytes.
    pub fn deframe(
        &mut self,
        buf: &mut [u8],
        start: usize,
        max_frame_bytes: u64,
        out: &mut Vec<u8>,
    ) -> Result<Deframed, WsError> {
        let end = buf.len();
        let mut read = start;
        let mut write = start;
        loop {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(end - read);
                if n == 0 {
                    break;
                }
                buf.copy_within(read..read + n, write);
                unmask(
                    &mut buf[write..write + n],
                    self.mask,
                    usize::from(self.mask_pos),
                );
                self.mask_pos = ((usize::from(self.mask_pos) + n) % 4) as u8;
                self.left -= n as u64;
                read += n;
                write += n;
                continue;
            }
            if read == end {
                break;
            }
            let mut cursor = Cursor::new(&buf[read..end]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    return Ok(Deframed {
                        payload_end: write,
                        tail: read..end,
                        close: None,
                    })
                }
                // tungstenite refuses only reserved opcodes here.
                Err(_) => return Err(WsError::BadOpcode),
            };
            let header_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(WsError::ReservedBits);
            }
            let Some(mask) = header.mask else {
                return Err(WsError::Unmasked);
            };
            match header.opcode {
                OpCode::Data(Data::Text) => return Err(WsError::TextFrame),
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                    return Err(WsError::BadOpcode)
                }
                OpCode::Data(d) => {
                    let continuation = d == Data::Continue;
                    if continuation != self.in_message {
                        return Err(WsError::BadFragmentation);
                    }
                    if len > max_frame_bytes {
                        return Err(WsError::FrameTooLarge(len));
                    }
                    self.in_message = !header.is_final;
                    self.left = len;
                    self.mask = mask;
                    self.mask_pos = 0;
                    read += header_len;
                }
                OpCode::Control(c) => {
                    if !header.is_final || len > MAX_CONTROL_BYTES {
                        return Err(WsError::BadControlFrame);
                    }
                    let len = len as usize;
                    if end - read - header_len < len {
                        // Whole control frames only: they are small, and a ping's
                        // payload is echoed.
                        return Ok(Deframed {
                            payload_end: write,
                            tail: read..end,
                            close: None,
                        });
                    }
                    let body = read + header_len..read + header_len + len;
                    unmask(&mut buf[body.clone()], mask, 0);
                    read = body.end;
                    match c {
                        Control::Ping => {
                            write_frame(OpCode::Control(Control::Pong), &buf[body], out)
                        }
                        Control::Pong => {}
                        Control::Close => {
                            let code = close_reply(&buf[body])?;
                            return Ok(Deframed {
                                payload_end: write,
                                tail: end..end,
                                close: Some(code),
                            });
                        }
                        Control::Reserved(_) => return Err(WsError::BadOpcode),
                    }
                }
            }
        }
        Ok(Deframed {
            payload_end: write,
            tail: end..end,
            close: None,
        })
    }
}

/// The code to echo for a received close frame's payload (RFC 6455 5.5.1, 7.4).
fn close_reply(body: &[u8]) -> Result<u16, WsError> {
    match body {
        [] => Ok(close_code::NORMAL),
        [_] => Err(WsError::BadCloseCode),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() || std::str::from_utf8(reason).is_err() {
                return Err(WsError::BadCloseCode);
            }
            Ok(code)
        }
    }
}

/// XORs `buf` with `mask`, starting at `mask[offset % 4]` (a frame's payload may
/// arrive over several reads).
pub fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 8];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    let wide = u64::from_ne_bytes(m);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i];
    }
}

/// Appends one unmasked, final frame (servers do not mask, RFC 6455 5.1).
pub fn write_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    out.reserve(header.len(payload.len() as u64) + payload.len());
    // Writing into a Vec does not fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends `payload` as one binary frame: one per flush of the shard's output.
pub fn write_binary(payload: &[u8], out: &mut Vec<u8>) {
    write_frame(OpCode::Data(Data::Binary), payload, out);
}

/// Appends a close frame with `code`.
pub fn write_close(code: u16, out: &mut Vec<u8>) {
    write_frame(OpCode::Control(Control::Close), &code.to_be_bytes(), out);
}
