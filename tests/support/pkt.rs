//! Raw packet builders: every MQTT packet assembled byte by byte, independent of
//! the codec under test.

use super::ProtocolVersion;

pub fn varint(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            break;
        }
    }
}

pub fn str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Fixed header + body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len() as u32, &mut out);
    out.extend_from_slice(body);
    out
}

/// Property block: length + concatenated properties.
pub fn props_block(props: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(props.len() as u32, &mut out);
    out.extend_from_slice(props);
    out
}

// Single properties, to concatenate.
pub fn p_u8(id: u8, v: u8) -> Vec<u8> {
    vec![id, v]
}
pub fn p_u16(id: u8, v: u16) -> Vec<u8> {
    let mut o = vec![id];
    o.extend_from_slice(&v.to_be_bytes());
    o
}
pub fn p_u32(id: u8, v: u32) -> Vec<u8> {
    let mut o = vec![id];
    o.extend_from_slice(&v.to_be_bytes());
    o
}
pub fn p_var(id: u8, v: u32) -> Vec<u8> {
    let mut o = vec![id];
    varint(v, &mut o);
    o
}
pub fn p_str(id: u8, s: &str) -> Vec<u8> {
    let mut o = vec![id];
    str(s.as_bytes(), &mut o);
    o
}
pub fn p_bin(id: u8, s: &[u8]) -> Vec<u8> {
    let mut o = vec![id];
    str(s, &mut o);
    o
}
pub fn p_pair(k: &str, v: &str) -> Vec<u8> {
    let mut o = vec![0x26];
    str(k.as_bytes(), &mut o);
    str(v.as_bytes(), &mut o);
    o
}

#[derive(Clone)]
pub struct Will {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 will properties, concatenated (no length).
    pub props: Vec<u8>,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Will {
        Will {
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
            props: Vec::new(),
        }
    }
}

/// CONNECT builder. `bytes()` encodes exactly what the fields say, so tests can make
/// it wrong on purpose (`protocol_name`, `level`, `reserved_flag`).
#[derive(Clone)]
pub struct Connect {
    pub version: ProtocolVersion,
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub clean: bool,
    pub reserved_flag: bool,
    pub keepalive_s: u16,
    pub client_id: Vec<u8>,
    pub will: Option<Will>,
    /// Will QoS / retain bits set without the will flag (a malformed CONNECT).
    pub stray_will_bits: u8,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// MQTT 5 CONNECT properties, concatenated (no length).
    pub props: Vec<u8>,
}

impl Connect {
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            version: ProtocolVersion::V311,
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            clean: true,
            reserved_flag: false,
            keepalive_s: 60,
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            stray_will_bits: 0,
            username: None,
            password: None,
            props: Vec::new(),
        }
    }

    pub fn v5(client_id: &str) -> Connect {
        Connect {
            version: ProtocolVersion::V5,
            level: 5,
            ..Connect::v311(client_id)
        }
    }

    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }
    pub fn keepalive(mut self, s: u16) -> Connect {
        self.keepalive_s = s;
        self
    }
    pub fn will(mut self, w: Will) -> Connect {
        self.will = Some(w);
        self
    }
    pub fn props(mut self, p: &[u8]) -> Connect {
        self.props.extend_from_slice(p);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        str(&self.protocol_name, &mut b);
        b.push(self.level);
        let mut flags = 0u8;
        if self.reserved_flag {
            flags |= 0x01;
        }
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        flags |= self.stray_will_bits;
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.push(flags);
        b.extend_from_slice(&self.keepalive_s.to_be_bytes());
        let v5 = self.level == 5;
        if v5 {
            b.extend_from_slice(&props_block(&self.props));
        }
        str(&self.client_id, &mut b);
        if let Some(w) = &self.will {
            if v5 {
                b.extend_from_slice(&props_block(&w.props));
            }
            str(&w.topic, &mut b);
            str(&w.payload, &mut b);
        }
        if let Some(u) = &self.username {
            str(u, &mut b);
        }
        if let Some(p) = &self.password {
            str(p, &mut b);
        }
        frame(0x10, &b)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn publish(
    v: ProtocolVersion,
    topic: &str,
    qos: u8,
    retain: bool,
    dup: bool,
    pid: u16,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    str(topic.as_bytes(), &mut b);
    if qos > 0 {
        b.extend_from_slice(&pid.to_be_bytes());
    }
    if v.is_v5() {
        b.extend_from_slice(&props_block(props));
    }
    b.extend_from_slice(payload);
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    frame(first, &b)
}

/// PUBLISH bytes as the broker must forward them to a plain subscriber: no retain,
/// no dup, no properties, with the broker's packet id `pid`.
pub fn forwarded(v: ProtocolVersion, topic: &str, qos: u8, pid: u16, payload: &[u8]) -> Vec<u8> {
    publish(v, topic, qos, false, false, pid, &[], payload)
}

/// SUBSCRIBE with (filter, options byte) pairs.
pub fn subscribe(v: ProtocolVersion, pid: u16, props: &[u8], filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v.is_v5() {
        b.extend_from_slice(&props_block(props));
    }
    for (f, o) in filters {
        str(f.as_bytes(), &mut b);
        b.push(*o);
    }
    frame(0x82, &b)
}

pub fn unsubscribe(v: ProtocolVersion, pid: u16, props: &[u8], filters: &[&str]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v.is_v5() {
        b.extend_from_slice(&props_block(props));
    }
    for f in filters {
        str(f.as_bytes(), &mut b);
    }
    frame(0xa2, &b)
}

/// PUBACK(4)/PUBREC(5)/PUBREL(6)/PUBCOMP(7) with success, shortest form.
pub fn ack(ptype: u8, pid: u16) -> Vec<u8> {
    let flags = if ptype == 6 { 2 } else { 0 };
    let mut b = vec![(ptype << 4) | flags, 2];
    b.extend_from_slice(&pid.to_be_bytes());
    b
}

/// MQTT 5 DISCONNECT with a reason code and properties.
pub fn disconnect_v5(rc: u8, props: &[u8]) -> Vec<u8> {
    let mut b = vec![rc];
    b.extend_from_slice(&props_block(props));
    frame(0xe0, &b)
}

/// Subscription options byte (MQTT 5 3.8.3.1; 3.1.1 uses only the QoS bits).
pub fn opts(qos: u8, no_local: bool, rap: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(rap) << 3) | (retain_handling << 4)
}
