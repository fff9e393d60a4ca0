//! MQTT over WebSocket for the load generator (`--transport ws`): the upgrade
//! request, client frames out (masked, as RFC 6455 requires of clients; one binary
//! frame per flush) and server frames in (their payloads appended to the MQTT input,
//! control frames skipped). Sans-IO: the engine feeds bytes and sends what it gets.

/// Largest upgrade answer accepted before it is called broken.
const MAX_ANSWER_BYTES: usize = 8 * 1024;
/// The masking key of every client frame. RFC 6455 wants it unpredictable so that
/// a browser's frames cannot be aimed at a proxy's cache; a load generator talking
/// to the broker under test has no such attacker, and the broker unmasks the same
/// way whatever the key is.
const MASK: [u8; 4] = [0x5a, 0xc3, 0x3c, 0xa5];

/// The HTTP/1.1 upgrade request for `path` on `host:port`, offering `mqtt`.
pub fn request(host: &str, port: u16, path: &str) -> Vec<u8> {
    // A fixed key (16 bytes, base64): the answer is checked for 101, not for the
    // accept hash.
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: bG9hZGdlbi1yaW5nbXEtdw==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .into_bytes()
}

/// Appends `payload` to `out` as one masked binary frame.
pub fn frame_into(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x82);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65_536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= MASK[i & 3];
    }
}

/// One connection's receive side.
#[derive(Debug, Default)]
pub struct WsClient {
    /// The upgrade was answered 101: bytes are frames now.
    pub open: bool,
    /// The answer so far (before `open`), or a frame header so far (after).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The current frame is a control frame: its payload is skipped.
    control: bool,
}

impl WsClient {
    /// Feeds received bytes; appends MQTT bytes to `out`. `Ok(true)`: the upgrade
    /// was accepted by these bytes (the CONNECT may go now).
    pub fn on_bytes(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        if self.open {
            self.deframe(data, out)?;
            return Ok(false);
        }
        self.head.extend_from_slice(data);
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.head.len() > MAX_ANSWER_BYTES {
                return Err("WebSocket upgrade answer too long".into());
            }
            return Ok(false);
        };
        let answer = std::mem::take(&mut self.head);
        if !answer.starts_with(b"HTTP/1.1 101") {
            let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(format!(
                "WebSocket upgrade refused: {}",
                String::from_utf8_lossy(line)
            ));
        }
        self.open = true;
        self.deframe(&answer[end + 4..], out)?;
        Ok(true)
    }

    fn deframe(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut i = 0;
        // Each pass takes payload bytes or one header byte: bounded by `data`.
        while i < data.len() {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                if !self.control {
                    out.extend_from_slice(&data[i..i + n]);
                }
                self.left -= n as u64;
                i += n;
                continue;
            }
            self.head.push(data[i]);
            i += 1;
            if let Some((len, control)) = parse_header(&self.head)? {
                self.head.clear();
                self.left = len;
                self.control = control;
            }
        }
        Ok(())
    }
}

/// A complete server frame header: (payload length, is a control frame).
fn parse_header(h: &[u8]) -> Result<Option<(u64, bool)>, String> {
    if h.len() < 2 {
        return Ok(None);
    }
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let extra = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + extra + if masked { 4 } else { 0 };
    if h.len() < need {
        return Ok(None);
    }
    let len = match extra {
        2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        8 => u64::from_be_bytes(h[2..10].try_into().unwrap_or([0; 8])),
        _ => u64::from(h[1] & 0x7f),
    };
    match opcode {
        0x0 | 0x2 => Ok(Some((len, false))),
        0x8..=0xa => Ok(Some((len, true))),
        op => Err(format!(
            "WebSocket frame with opcode {op:#x} from the broker"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_then_frames_split_anywhere() {
        let mut wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        wire.extend([0x82, 0x04, 0x20, 0x02, 0x00, 0x00]); // CONNACK
        wire.extend([0x89, 0x01, 0x07]); // a ping: skipped
        let big: Vec<u8> = (0..300).map(|i| i as u8).collect();
        wire.extend([0x82, 126, 0x01, 0x2c]);
        wire.extend(&big);
        let mut expect = vec![0x20, 0x02, 0x00, 0x00];
        expect.extend(&big);
        for cut in 0..wire.len() {
            let mut c = WsClient::default();
            let mut out = Vec::new();
            let a = c.on_bytes(&wire[..cut], &mut out).unwrap();
            let b = c.on_bytes(&wire[cut..], &mut out).unwrap();
            assert!(a ^ b, "opened once (cut {cut})");
            assert_eq!(out, expect, "cut {cut}");
        }
    }

    #[test]
    fn a_refusal_names_the_status() {
        let mut c = WsClient::default();
        let e = c
            .on_bytes(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(e, "WebSocket upgrade refused: HTTP/1.1 404 Not Found");
    }

    #[test]
    fn frames_are_masked_binary() {
        let mut out = Vec::new();
        frame_into(&[0xc0, 0x00], &mut out);
        assert_eq!(out[..2], [0x82, 0x82]);
        assert_eq!(out[2..6], MASK);
        assert_eq!(out[6..], [0xc0 ^ MASK[0], MASK[1]]);
    }
}
