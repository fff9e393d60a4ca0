//! The MQTT-SN 1.2 message codec: every message type of spec section 5, both length
//! forms (5.2.1), the flags octet (5.3.4) and the three topic id types. Decoding takes
//! a whole datagram; the codec's one error enum is [`SnDecodeError`] (a bad datagram is
//! counted and dropped by the gateway, MQTT-SN has no error reply to send).

use bytes::{BufMut, Bytes, BytesMut};

/// Largest message the 3-octet length form can express (5.2.1).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// The MsgType octet (5.2.2, table 3). Values not listed are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    Advertise = 0x00,
    SearchGw = 0x01,
    GwInfo = 0x02,
    Connect = 0x04,
    ConnAck = 0x05,
    WillTopicReq = 0x06,
    WillTopic = 0x07,
    WillMsgReq = 0x08,
    WillMsg = 0x09,
    Register = 0x0A,
    RegAck = 0x0B,
    Publish = 0x0C,
    PubAck = 0x0D,
    PubComp = 0x0E,
    PubRec = 0x0F,
    PubRel = 0x10,
    Subscribe = 0x12,
    SubAck = 0x13,
    Unsubscribe = 0x14,
    UnsubAck = 0x15,
    PingReq = 0x16,
    PingResp = 0x17,
    Disconnect = 0x18,
    WillTopicUpd = 0x1A,
    WillTopicResp = 0x1B,
    WillMsgUpd = 0x1C,
    WillMsgResp = 0x1D,
    Encapsulated = 0xFE,
}

impl MsgType {
    pub fn from_u8(v: u8) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0x00 => Advertise,
            0x01 => SearchGw,
            0x02 => GwInfo,
            0x04 => Connect,
            0x05 => ConnAck,
            0x06 => WillTopicReq,
            0x07 => WillTopic,
            0x08 => WillMsgReq,
            0x09 => WillMsg,
            0x0A => Register,
            0x0B => RegAck,
            0x0C => Publish,
            0x0D => PubAck,
            0x0E => PubComp,
            0x0F => PubRec,
            0x10 => PubRel,
            0x12 => Subscribe,
            0x13 => SubAck,
            0x14 => Unsubscribe,
            0x15 => UnsubAck,
            0x16 => PingReq,
            0x17 => PingResp,
            0x18 => Disconnect,
            0x1A => WillTopicUpd,
            0x1B => WillTopicResp,
            0x1C => WillMsgUpd,
            0x1D => WillMsgResp,
            0xFE => Encapsulated,
            _ => return None,
        })
    }
}

/// QoS of the flags octet (5.3.4); `MinusOne` (0b11) is "publish without connection".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
    MinusOne,
}

impl QoS {
    fn bits(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
            QoS::MinusOne => 3,
        }
    }
    fn from_bits(b: u8) -> QoS {
        match b & 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::MinusOne,
        }
    }
}

/// TopicIdType of the flags octet (5.3.4); 0b11 is reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicIdType {
    Normal,
    Predefined,
    Short,
}

/// The flags octet (5.3.4), for the messages that carry one. Each message uses only
/// some of the fields; the others are encoded as 0 and ignored on decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub will: bool,
    pub clean_session: bool,
    pub topic_id_type: TopicIdType,
}

impl Flags {
    fn to_u8(self) -> u8 {
        (u8::from(self.dup) << 7)
            | (self.qos.bits() << 5)
            | (u8::from(self.retain) << 4)
            | (u8::from(self.will) << 3)
            | (u8::from(self.clean_session) << 2)
            | match self.topic_id_type {
                TopicIdType::Normal => 0,
                TopicIdType::Predefined => 1,
                TopicIdType::Short => 2,
            }
    }

    /// Refuses only the reserved topic id type; which other bits matter is the
    /// message's business.
    fn from_u8(b: u8) -> Result<Flags, SnDecodeError> {
        let topic_id_type = match b & 3 {
            0 => TopicIdType::Normal,
            1 => TopicIdType::Predefined,
            2 => TopicIdType::Short,
            _ => return Err(SnDecodeError::ReservedTopicIdType),
        };
        Ok(Flags {
            dup: b & 0x80 != 0,
            qos: QoS::from_bits(b >> 5),
            retain: b & 0x10 != 0,
            will: b & 0x08 != 0,
            clean_session: b & 0x04 != 0,
            topic_id_type,
        })
    }

    fn none() -> Flags {
        Flags {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            will: false,
            clean_session: false,
            topic_id_type: TopicIdType::Normal,
        }
    }
}

/// ReturnCode (5.3.10). Other values are reserved; they decode as `Other` so a
/// client's reply is never dropped for a code the gateway only logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnCode {
    Accepted,
    Congestion,
    InvalidTopicId,
    NotSupported,
    Other(u8),
}

impl ReturnCode {
    pub fn to_u8(self) -> u8 {
        match self {
            ReturnCode::Accepted => 0,
            ReturnCode::Congestion => 1,
            ReturnCode::InvalidTopicId => 2,
            ReturnCode::NotSupported => 3,
            ReturnCode::Other(v) => v,
        }
    }
    pub fn from_u8(v: u8) -> ReturnCode {
        match v {
            0 => ReturnCode::Accepted,
            1 => ReturnCode::Congestion,
            2 => ReturnCode::InvalidTopicId,
            3 => ReturnCode::NotSupported,
            v => ReturnCode::Other(v),
        }
    }
}

/// The topic of a PUBLISH (5.4.12): a 2-octet field read by the flags' TopicIdType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef {
    /// An id from REGISTER/REGACK or SUBACK.
    Normal(u16),
    /// An id both sides know beforehand (the gateway's predefined-topics file).
    Predefined(u16),
    /// A two-character topic name carried in place of the id.
    Short([u8; 2]),
}

impl TopicRef {
    fn id_type(self) -> TopicIdType {
        match self {
            TopicRef::Normal(_) => TopicIdType::Normal,
            TopicRef::Predefined(_) => TopicIdType::Predefined,
            TopicRef::Short(_) => TopicIdType::Short,
        }
    }
    fn field(self) -> [u8; 2] {
        match self {
            TopicRef::Normal(id) | TopicRef::Predefined(id) => id.to_be_bytes(),
            TopicRef::Short(s) => s,
        }
    }
    fn from_field(t: TopicIdType, f: [u8; 2]) -> TopicRef {
        match t {
            TopicIdType::Normal => TopicRef::Normal(u16::from_be_bytes(f)),
            TopicIdType::Predefined => TopicRef::Predefined(u16::from_be_bytes(f)),
            TopicIdType::Short => TopicRef::Short(f),
        }
    }
}

/// The topic of a SUBSCRIBE/UNSUBSCRIBE (5.4.15, 5.4.17): a name (wildcards allowed)
/// for type normal, otherwise a predefined id or a short name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubTopic {
    Name(Bytes),
    Predefined(u16),
    Short([u8; 2]),
}

impl SubTopic {
    fn id_type(&self) -> TopicIdType {
        match self {
            SubTopic::Name(_) => TopicIdType::Normal,
            SubTopic::Predefined(_) => TopicIdType::Predefined,
            SubTopic::Short(_) => TopicIdType::Short,
        }
    }
    fn len(&self) -> usize {
        match self {
            SubTopic::Name(n) => n.len(),
            _ => 2,
        }
    }
}

/// The fields of a non-empty WILLTOPIC / WILLTOPICUPD: the will's QoS (0..2), retain
/// flag and topic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillTopic {
    pub qos: QoS,
    pub retain: bool,
    pub topic: Bytes,
}

/// One MQTT-SN message (5.4). Field names follow the spec; `duration`s are seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    SearchGw {
        radius: u8,
    },
    /// `gw_add` is present only when a client answers on a gateway's behalf.
    GwInfo {
        gw_id: u8,
        gw_add: Bytes,
    },
    Connect {
        will: bool,
        clean_session: bool,
        duration: u16,
        client_id: Bytes,
    },
    ConnAck {
        code: ReturnCode,
    },
    WillTopicReq,
    /// `None` is the empty WILLTOPIC (2 octets) that deletes the will (5.4.7).
    WillTopic(Option<WillTopic>),
    WillMsgReq,
    WillMsg {
        msg: Bytes,
    },
    Register {
        topic_id: u16,
        msg_id: u16,
        topic_name: Bytes,
    },
    RegAck {
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
    },
    Publish {
        dup: bool,
        qos: QoS,
        retain: bool,
        topic: TopicRef,
        msg_id: u16,
        data: Bytes,
    },
    PubAck {
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
    },
    PubRec {
        msg_id: u16,
    },
    PubRel {
        msg_id: u16,
    },
    PubComp {
        msg_id: u16,
    },
    /// `qos` is the requested QoS; −1 is refused on decode.
    Subscribe {
        dup: bool,
        qos: QoS,
        msg_id: u16,
        topic: SubTopic,
    },
    SubAck {
        qos: QoS,
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
    },
    Unsubscribe {
        msg_id: u16,
        topic: SubTopic,
    },
    UnsubAck {
        msg_id: u16,
    },
    /// `client_id` is present only on a sleeping client's wake-up PINGREQ (6.14).
    PingReq {
        client_id: Option<Bytes>,
    },
    PingResp,
    /// `duration` is present when the client goes to sleep (6.14).
    Disconnect {
        duration: Option<u16>,
    },
    WillTopicUpd(Option<WillTopic>),
    WillTopicResp {
        code: ReturnCode,
    },
    WillMsgUpd {
        msg: Bytes,
    },
    WillMsgResp {
        code: ReturnCode,
    },
    /// A forwarder's wrapper (5.5): `inner` is a whole MQTT-SN message, decoded on
    /// its own with [`decode`].
    Encapsulated {
        radius: u8,
        node_id: Bytes,
        inner: Bytes,
    },
}

/// Everything that can be wrong with a datagram. None of it has a wire reply: the
/// gateway counts the datagram as bad and drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnDecodeError {
    /// Fewer octets than the header needs (2, or 4 for the 3-octet length form).
    TooShort,
    /// The Length field disagrees with the datagram's size.
    LengthMismatch { declared: usize, actual: usize },
    /// A Length field smaller than its own header.
    InvalidLength(usize),
    /// A reserved MsgType.
    ReservedMsgType(u8),
    /// Fewer octets than a message's fixed fields need.
    UnexpectedEnd,
    /// Octets after a message whose size is fixed.
    TrailingBytes,
    /// CONNECT's ProtocolId is not 0x01.
    InvalidProtocolId(u8),
    /// Flags with TopicIdType 0b11.
    ReservedTopicIdType,
    /// QoS −1 where only 0..2 make sense (SUBSCRIBE, SUBACK, will).
    InvalidQoS,
    /// A topic name field that must not be empty is empty, or a short topic id type
    /// where the message allows none.
    InvalidTopic,
    /// An encapsulated message inside an encapsulated message.
    NestedEncapsulation,
}

/// The one thing encoding can refuse: a message over 65,535 octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnEncodeError {
    TooLong(usize),
}

/// Reads fields off a datagram body, every read bounds-checked.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, SnDecodeError> {
        if self.pos >= self.end {
            return Err(SnDecodeError::UnexpectedEnd);
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }
    fn u16(&mut self) -> Result<u16, SnDecodeError> {
        Ok(u16::from_be_bytes(self.two()?))
    }
    fn two(&mut self) -> Result<[u8; 2], SnDecodeError> {
        Ok([self.u8()?, self.u8()?])
    }
    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..self.end);
        self.pos = self.end;
        b
    }
    fn remaining(&self) -> usize {
        self.end - self.pos
    }
    fn done(&self) -> Result<(), SnDecodeError> {
        if self.pos == self.end {
            Ok(())
        } else {
            Err(SnDecodeError::TrailingBytes)
        }
    }
}

/// Decodes one datagram. The Length field must match the datagram's size (except for
/// an encapsulated message, whose Length covers only the wrapper, 5.5); the 3-octet
/// form is accepted for any length (the spec says short messages "may" use 1 octet).
pub fn decode(datagram: &Bytes) -> Result<Message, SnDecodeError> {
    decode_at(datagram, false)
}

fn decode_at(buf: &Bytes, nested: bool) -> Result<Message, SnDecodeError> {
    let (declared, hdr) = match buf.first() {
        None => return Err(SnDecodeError::TooShort),
        Some(0x01) => {
            if buf.len() < 4 {
                return Err(SnDecodeError::TooShort);
            }
            (usize::from(u16::from_be_bytes([buf[1], buf[2]])), 3)
        }
        Some(&l) => {
            if buf.len() < 2 {
                return Err(SnDecodeError::TooShort);
            }
            (usize::from(l), 1)
        }
    };
    if declared < hdr + 1 {
        return Err(SnDecodeError::InvalidLength(declared));
    }
    let raw_type = buf[hdr];
    let ty = MsgType::from_u8(raw_type).ok_or(SnDecodeError::ReservedMsgType(raw_type))?;
    if ty == MsgType::Encapsulated {
        if nested {
            return Err(SnDecodeError::NestedEncapsulation);
        }
        // The wrapper's Length covers Length, MsgType, Ctrl and the node id only.
        if declared > buf.len() {
            return Err(SnDecodeError::LengthMismatch {
                declared,
                actual: buf.len(),
            });
        }
        let mut r = Reader {
            buf,
            pos: hdr + 1,
            end: declared,
        };
        let ctrl = r.u8()?;
        let node_id = r.rest();
        let inner = buf.slice(declared..);
        // The inner message must itself decode, so a forwarder cannot smuggle garbage
        // past the bad-datagram counter.
        decode_at(&inner, true)?;
        return Ok(Message::Encapsulated {
            radius: ctrl & 3,
            node_id,
            inner,
        });
    }
    if declared != buf.len() {
        return Err(SnDecodeError::LengthMismatch {
            declared,
            actual: buf.len(),
        });
    }
    let mut r = Reader {
        buf,
        pos: hdr + 1,
        end: declared,
    };
    let msg = decode_body(ty, &mut r)?;
    r.done()?;
    Ok(msg)
}

fn decode_body(ty: MsgType, r: &mut Reader<'_>) -> Result<Message, SnDecodeError> {
    use Message as M;
    Ok(match ty {
        MsgType::Advertise => M::Advertise {
            gw_id: r.u8()?,
            duration: r.u16()?,
        },
        MsgType::SearchGw => M::SearchGw { radius: r.u8()? },
        MsgType::GwInfo => M::GwInfo {
            gw_id: r.u8()?,
            gw_add: r.rest(),
        },
        MsgType::Connect => {
            let flags = Flags::from_u8(r.u8()?)?;
            let protocol_id = r.u8()?;
            if protocol_id != 0x01 {
                return Err(SnDecodeError::InvalidProtocolId(protocol_id));
            }
            M::Connect {
                will: flags.will,
                clean_session: flags.clean_session,
                duration: r.u16()?,
                client_id: r.rest(),
            }
        }
        MsgType::ConnAck => M::ConnAck {
            code: ReturnCode::from_u8(r.u8()?),
        },
        MsgType::WillTopicReq => M::WillTopicReq,
        MsgType::WillTopic | MsgType::WillTopicUpd => {
            let will = will_topic(r)?;
            if ty == MsgType::WillTopic {
                M::WillTopic(will)
            } else {
                M::WillTopicUpd(will)
            }
        }
        MsgType::WillMsgReq => M::WillMsgReq,
        MsgType::WillMsg => M::WillMsg { msg: r.rest() },
        MsgType::Register => M::Register {
            topic_id: r.u16()?,
            msg_id: r.u16()?,
            topic_name: non_empty(r.rest())?,
        },
        MsgType::RegAck => M::RegAck {
            topic_id: r.u16()?,
            msg_id: r.u16()?,
            code: ReturnCode::from_u8(r.u8()?),
        },
        MsgType::Publish => {
            let flags = Flags::from_u8(r.u8()?)?;
            M::Publish {
                dup: flags.dup,
                qos: flags.qos,
                retain: flags.retain,
                topic: TopicRef::from_field(flags.topic_id_type, r.two()?),
                msg_id: r.u16()?,
                data: r.rest(),
            }
        }
        MsgType::PubAck => M::PubAck {
            topic_id: r.u16()?,
            msg_id: r.u16()?,
            code: ReturnCode::from_u8(r.u8()?),
        },
        MsgType::PubRec => M::PubRec { msg_id: r.u16()? },
        MsgType::PubRel => M::PubRel { msg_id: r.u16()? },
        MsgType::PubComp => M::PubComp { msg_id: r.u16()? },
        MsgType::Subscribe => {
            let flags = Flags::from_u8(r.u8()?)?;
            if flags.qos == QoS::MinusOne {
                return Err(SnDecodeError::InvalidQoS);
            }
            let msg_id = r.u16()?;
            M::Subscribe {
                dup: flags.dup,
                qos: flags.qos,
                msg_id,
                topic: sub_topic(flags.topic_id_type, r)?,
            }
        }
        MsgType::SubAck => {
            let flags = Flags::from_u8(r.u8()?)?;
            if flags.qos == QoS::MinusOne {
                return Err(SnDecodeError::InvalidQoS);
            }
            M::SubAck {
                qos: flags.qos,
                topic_id: r.u16()?,
                msg_id: r.u16()?,
                code: ReturnCode::from_u8(r.u8()?),
            }
        }
        MsgType::Unsubscribe => {
            let flags = Flags::from_u8(r.u8()?)?;
            let msg_id = r.u16()?;
            M::Unsubscribe {
                msg_id,
                topic: sub_topic(flags.topic_id_type, r)?,
            }
        }
        MsgType::UnsubAck => M::UnsubAck { msg_id: r.u16()? },
        MsgType::PingReq => M::PingReq {
            client_id: (r.remaining() > 0).then(|| r.rest()),
        },
        MsgType::PingResp => M::PingResp,
        MsgType::Disconnect => M::Disconnect {
            duration: if r.remaining() > 0 {
                Some(r.u16()?)
            } else {
                None
            },
        },
        MsgType::WillTopicResp => M::WillTopicResp {
            code: ReturnCode::from_u8(r.u8()?),
        },
        MsgType::WillMsgUpd => M::WillMsgUpd { msg: r.rest() },
        MsgType::WillMsgResp => M::WillMsgResp {
            code: ReturnCode::from_u8(r.u8()?),
        },
        MsgType::Encapsulated => unreachable!("handled by decode_at"),
    })
}

fn non_empty(b: Bytes) -> Result<Bytes, SnDecodeError> {
    if b.is_empty() {
        Err(SnDecodeError::InvalidTopic)
    } else {
        Ok(b)
    }
}

/// WILLTOPIC / WILLTOPICUPD (5.4.7, 5.4.22): empty (2 octets) deletes the will;
/// otherwise Flags (QoS, Retain) then a non-empty topic.
fn will_topic(r: &mut Reader<'_>) -> Result<Option<WillTopic>, SnDecodeError> {
    if r.remaining() == 0 {
        return Ok(None);
    }
    let flags = Flags::from_u8(r.u8()?)?;
    if flags.qos == QoS::MinusOne {
        return Err(SnDecodeError::InvalidQoS);
    }
    Ok(Some(WillTopic {
        qos: flags.qos,
        retain: flags.retain,
        topic: non_empty(r.rest())?,
    }))
}

fn sub_topic(t: TopicIdType, r: &mut Reader<'_>) -> Result<SubTopic, SnDecodeError> {
    Ok(match t {
        TopicIdType::Normal => SubTopic::Name(non_empty(r.rest())?),
        TopicIdType::Predefined => SubTopic::Predefined(r.u16()?),
        TopicIdType::Short => SubTopic::Short(r.two()?),
    })
}

/// The body's size (everything after Length and MsgType).
fn body_len(m: &Message) -> usize {
    use Message as M;
    match m {
        M::Advertise { .. } => 3,
        M::SearchGw { .. } => 1,
        M::GwInfo { gw_add, .. } => 1 + gw_add.len(),
        M::Connect { client_id, .. } => 4 + client_id.len(),
        M::ConnAck { .. } | M::WillTopicResp { .. } | M::WillMsgResp { .. } => 1,
        M::WillTopicReq | M::WillMsgReq | M::PingResp => 0,
        M::WillTopic(w) | M::WillTopicUpd(w) => w.as_ref().map_or(0, |w| 1 + w.topic.len()),
        M::WillMsg { msg } | M::WillMsgUpd { msg } => msg.len(),
        M::Register { topic_name, .. } => 4 + topic_name.len(),
        M::RegAck { .. } | M::PubAck { .. } => 5,
        M::Publish { data, .. } => 5 + data.len(),
        M::PubRec { .. } | M::PubRel { .. } | M::PubComp { .. } | M::UnsubAck { .. } => 2,
        M::Subscribe { topic, .. } | M::Unsubscribe { topic, .. } => 3 + topic.len(),
        M::SubAck { .. } => 6,
        M::PingReq { client_id } => client_id.as_ref().map_or(0, Bytes::len),
        M::Disconnect { duration } => duration.map_or(0, |_| 2),
        M::Encapsulated { node_id, .. } => 1 + node_id.len(),
    }
}

/// The encoded size of `m`, Length field included (an encapsulated message's inner
/// bytes included too).
pub fn encoded_len(m: &Message) -> usize {
    let n = 1 + body_len(m);
    let own = if n < 255 { n + 1 } else { n + 3 };
    match m {
        Message::Encapsulated { inner, .. } => own + inner.len(),
        _ => own,
    }
}

fn msg_type(m: &Message) -> MsgType {
    use Message as M;
    match m {
        M::Advertise { .. } => MsgType::Advertise,
        M::SearchGw { .. } => MsgType::SearchGw,
        M::GwInfo { .. } => MsgType::GwInfo,
        M::Connect { .. } => MsgType::Connect,
        M::ConnAck { .. } => MsgType::ConnAck,
        M::WillTopicReq => MsgType::WillTopicReq,
        M::WillTopic(_) => MsgType::WillTopic,
        M::WillMsgReq => MsgType::WillMsgReq,
        M::WillMsg { .. } => MsgType::WillMsg,
        M::Register { .. } => MsgType::Register,
        M::RegAck { .. } => MsgType::RegAck,
        M::Publish { .. } => MsgType::Publish,
        M::PubAck { .. } => MsgType::PubAck,
        M::PubRec { .. } => MsgType::PubRec,
        M::PubRel { .. } => MsgType::PubRel,
        M::PubComp { .. } => MsgType::PubComp,
        M::Subscribe { .. } => MsgType::Subscribe,
        M::SubAck { .. } => MsgType::SubAck,
        M::Unsubscribe { .. } => MsgType::Unsubscribe,
        M::UnsubAck { .. } => MsgType::UnsubAck,
        M::PingReq { .. } => MsgType::PingReq,
        M::PingResp => MsgType::PingResp,
        M::Disconnect { .. } => MsgType::Disconnect,
        M::WillTopicUpd(_) => MsgType::WillTopicUpd,
        M::WillTopicResp { .. } => MsgType::WillTopicResp,
        M::WillMsgUpd { .. } => MsgType::WillMsgUpd,
        M::WillMsgResp { .. } => MsgType::WillMsgResp,
        M::Encapsulated { .. } => MsgType::Encapsulated,
    }
}

/// Appends `m` to `out`, with the 1-octet length form whenever it fits.
pub fn encode(m: &Message, out: &mut BytesMut) -> Result<(), SnEncodeError> {
    use Message as M;
    let total = encoded_len(m);
    let own = match m {
        M::Encapsulated { inner, .. } => total - inner.len(),
        _ => total,
    };
    if total > MAX_MESSAGE_LEN {
        return Err(SnEncodeError::TooLong(total));
    }
    out.reserve(total);
    if own <= 255 {
        out.put_u8(own as u8);
    } else {
        out.put_u8(0x01);
        out.put_u16(own as u16);
    }
    out.put_u8(msg_type(m) as u8);
    let flags = |qos, retain, t| {
        Flags {
            qos,
            retain,
            topic_id_type: t,
            ..Flags::none()
        }
        .to_u8()
    };
    match m {
        M::Advertise { gw_id, duration } => {
            out.put_u8(*gw_id);
            out.put_u16(*duration);
        }
        M::SearchGw { radius } => out.put_u8(*radius),
        M::GwInfo { gw_id, gw_add } => {
            out.put_u8(*gw_id);
            out.put_slice(gw_add);
        }
        M::Connect {
            will,
            clean_session,
            duration,
            client_id,
        } => {
            let f = Flags {
                will: *will,
                clean_session: *clean_session,
                ..Flags::none()
            };
            out.put_u8(f.to_u8());
            out.put_u8(0x01);
            out.put_u16(*duration);
            out.put_slice(client_id);
        }
        M::ConnAck { code } | M::WillTopicResp { code } | M::WillMsgResp { code } => {
            out.put_u8(code.to_u8())
        }
        M::WillTopicReq | M::WillMsgReq | M::PingResp => {}
        M::WillTopic(w) | M::WillTopicUpd(w) => {
            if let Some(w) = w {
                out.put_u8(flags(w.qos, w.retain, TopicIdType::Normal));
                out.put_slice(&w.topic);
            }
        }
        M::WillMsg { msg } | M::WillMsgUpd { msg } => out.put_slice(msg),
        M::Register {
            topic_id,
            msg_id,
            topic_name,
        } => {
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_slice(topic_name);
        }
        M::RegAck {
            topic_id,
            msg_id,
            code,
        }
        | M::PubAck {
            topic_id,
            msg_id,
            code,
        } => {
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_u8(code.to_u8());
        }
        M::Publish {
            dup,
            qos,
            retain,
            topic,
            msg_id,
            data,
        } => {
            let f = Flags {
                dup: *dup,
                qos: *qos,
                retain: *retain,
                topic_id_type: topic.id_type(),
                ..Flags::none()
            };
            out.put_u8(f.to_u8());
            out.put_slice(&topic.field());
            out.put_u16(*msg_id);
            out.put_slice(data);
        }
        M::PubRec { msg_id }
        | M::PubRel { msg_id }
        | M::PubComp { msg_id }
        | M::UnsubAck { msg_id } => out.put_u16(*msg_id),
        M::Subscribe {
            dup,
            qos,
            msg_id,
            topic,
        } => {
            let f = Flags {
                dup: *dup,
                qos: *qos,
                topic_id_type: topic.id_type(),
                ..Flags::none()
            };
            out.put_u8(f.to_u8());
            out.put_u16(*msg_id);
            put_sub_topic(topic, out);
        }
        M::SubAck {
            qos,
            topic_id,
            msg_id,
            code,
        } => {
            out.put_u8(flags(*qos, false, TopicIdType::Normal));
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_u8(code.to_u8());
        }
        M::Unsubscribe { msg_id, topic } => {
            out.put_u8(flags(QoS::AtMostOnce, false, topic.id_type()));
            out.put_u16(*msg_id);
            put_sub_topic(topic, out);
        }
        M::PingReq { client_id } => {
            if let Some(c) = client_id {
                out.put_slice(c);
            }
        }
        M::Disconnect { duration } => {
            if let Some(d) = duration {
                out.put_u16(*d);
            }
        }
        M::Encapsulated {
            radius,
            node_id,
            inner,
        } => {
            out.put_u8(radius & 3);
            out.put_slice(node_id);
            out.put_slice(inner);
        }
    }
    Ok(())
}

fn put_sub_topic(t: &SubTopic, out: &mut BytesMut) {
    match t {
        SubTopic::Name(n) => out.put_slice(n),
        SubTopic::Predefined(id) => out.put_u16(*id),
        SubTopic::Short(s) => out.put_slice(s),
    }
}

/// [`encode`] into a fresh buffer.
pub fn encode_to_bytes(m: &Message) -> Result<Bytes, SnEncodeError> {
    let mut out = BytesMut::with_capacity(encoded_len(m));
    encode(m, &mut out)?;
    Ok(out.freeze())
}
