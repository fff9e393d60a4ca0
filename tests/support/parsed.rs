//! Server packets parsed by hand (codec-independent, so tests do not rely on the code
//! under test): MQTT 5 [`Props`], CONNACK, PUBACK, SUBACK and PUBLISH.

use super::*;

/// A property value as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropVal {
    Byte(u8),
    Two(u16),
    Four(u32),
    Var(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// Properties in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, PropVal)>);

impl Props {
    /// Parses a property block (after its length). Panics on anything malformed:
    /// the broker must never send such a thing.
    pub fn parse(b: &[u8]) -> Props {
        let mut out = Vec::new();
        let mut i = 0;
        let str_at = |i: usize| -> (String, usize) {
            let n = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
            let s = std::str::from_utf8(&b[i + 2..i + 2 + n]).expect("property string is UTF-8");
            (s.to_string(), 2 + n)
        };
        while i < b.len() {
            let (id, n) = read_varint(&b[i..]).expect("property id");
            i += n;
            let id = id as u8;
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    i += 1;
                    PropVal::Byte(b[i - 1])
                }
                0x13 | 0x21 | 0x22 | 0x23 => {
                    i += 2;
                    PropVal::Two(u16::from_be_bytes([b[i - 2], b[i - 1]]))
                }
                0x02 | 0x11 | 0x18 | 0x27 => {
                    i += 4;
                    PropVal::Four(u32::from_be_bytes([b[i - 4], b[i - 3], b[i - 2], b[i - 1]]))
                }
                0x0B => {
                    let (v, n) = read_varint(&b[i..]).expect("varint property");
                    i += n;
                    PropVal::Var(v)
                }
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                    let (s, n) = str_at(i);
                    i += n;
                    PropVal::Str(s)
                }
                0x09 | 0x16 => {
                    let n = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                    let v = b[i + 2..i + 2 + n].to_vec();
                    i += 2 + n;
                    PropVal::Bin(v)
                }
                0x26 => {
                    let (k, n) = str_at(i);
                    i += n;
                    let (v, n) = str_at(i);
                    i += n;
                    PropVal::Pair(k, v)
                }
                other => panic!(
                    "broker sent unknown property id {other:#04x} in {}",
                    to_hex(b)
                ),
            };
            out.push((id, v));
        }
        assert_eq!(i, b.len(), "property block overran: {}", to_hex(b));
        Props(out)
    }

    pub fn get(&self, id: u8) -> Option<&PropVal> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    pub fn all(&self, id: u8) -> Vec<&PropVal> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .collect()
    }

    pub fn byte(&self, id: u8) -> Option<u8> {
        match self.get(id) {
            Some(PropVal::Byte(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn two(&self, id: u8) -> Option<u16> {
        match self.get(id) {
            Some(PropVal::Two(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn four(&self, id: u8) -> Option<u32> {
        match self.get(id) {
            Some(PropVal::Four(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn str(&self, id: u8) -> Option<&str> {
        match self.get(id) {
            Some(PropVal::Str(v)) => Some(v),
            _ => None,
        }
    }
    pub fn bin(&self, id: u8) -> Option<&[u8]> {
        match self.get(id) {
            Some(PropVal::Bin(v)) => Some(v),
            _ => None,
        }
    }
    pub fn sub_ids(&self) -> Vec<u32> {
        self.all(0x0B)
            .into_iter()
            .map(|v| match v {
                PropVal::Var(x) => *x,
                _ => unreachable!(),
            })
            .collect()
    }
    pub fn user_props(&self) -> Vec<(String, String)> {
        self.all(0x26)
            .into_iter()
            .map(|v| match v {
                PropVal::Pair(k, v) => (k.clone(), v.clone()),
                _ => unreachable!(),
            })
            .collect()
    }
}

/// Reads a property block (length + properties) at `b[i..]`: (props, bytes used).
pub fn props_at(b: &[u8], i: usize) -> (Props, usize) {
    let (len, n) = read_varint(&b[i..]).expect("property length");
    let end = i + n + len as usize;
    assert!(
        end <= b.len(),
        "property length {len} overruns packet {}",
        to_hex(b)
    );
    (Props::parse(&b[i + n..end]), n + len as usize)
}

#[derive(Debug, Clone)]
pub struct ConnAckV5 {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

impl ConnAckV5 {
    pub fn parse(f: &Frame) -> ConnAckV5 {
        assert_eq!(f.first, 0x20, "CONNACK first byte: {f:?}");
        assert!(f.body.len() >= 2, "CONNACK too short: {f:?}");
        assert_eq!(
            f.body[0] & 0xfe,
            0,
            "MQTT-3.2.2-1: CONNACK reserved flags: {f:?}"
        );
        // A 3.x-style 2-byte CONNACK (e.g. to a CONNECT whose version is unknown) has no properties.
        let props = if f.body.len() > 2 {
            props_at(&f.body, 2).0
        } else {
            Props::default()
        };
        ConnAckV5 {
            session_present: f.body[0] & 1 == 1,
            code: f.body[1],
            props,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubAckV5 {
    pub pid: u16,
    pub code: u8,
    pub props: Props,
}

impl PubAckV5 {
    pub fn parse(f: &Frame) -> PubAckV5 {
        let pid = f.u16_at(0);
        let code = f.body.get(2).copied().unwrap_or(0);
        let props = if f.body.len() > 3 {
            props_at(&f.body, 3).0
        } else {
            Props::default()
        };
        PubAckV5 { pid, code, props }
    }
}

/// SUBACK or UNSUBACK.
#[derive(Debug, Clone)]
pub struct SubAck {
    pub pid: u16,
    pub codes: Vec<u8>,
    pub props: Props,
}

impl SubAck {
    pub fn parse(version: ProtocolVersion, f: &Frame) -> SubAck {
        let pid = f.u16_at(0);
        if version.is_v5() {
            let (props, n) = props_at(&f.body, 2);
            SubAck {
                pid,
                codes: f.body[2 + n..].to_vec(),
                props,
            }
        } else {
            SubAck {
                pid,
                codes: f.body[2..].to_vec(),
                props: Props::default(),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct PublishMsg {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
    pub raw: Vec<u8>,
}

impl PublishMsg {
    pub fn parse(version: ProtocolVersion, f: &Frame) -> PublishMsg {
        let b = &f.body;
        let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
        let topic = std::str::from_utf8(&b[2..2 + tl])
            .expect("topic is UTF-8")
            .to_string();
        let mut i = 2 + tl;
        let qos = (f.first >> 1) & 3;
        let pid = if qos > 0 {
            i += 2;
            u16::from_be_bytes([b[i - 2], b[i - 1]])
        } else {
            0
        };
        let props = if version.is_v5() {
            let (p, n) = props_at(b, i);
            i += n;
            p
        } else {
            Props::default()
        };
        PublishMsg {
            dup: f.first & 0x08 != 0,
            qos,
            retain: f.first & 1 == 1,
            topic,
            pid,
            props,
            payload: b[i..].to_vec(),
            raw: f.raw.clone(),
        }
    }
}
