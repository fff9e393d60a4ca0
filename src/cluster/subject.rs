//! The reversible mapping between MQTT topics/filters and NATS subjects (sans-IO).
//!
//! A topic `l1/l2/…` published at QoS class `Q` is the subject `mq.Q.t1.t2.…`, one token
//! per level. NATS reserves `.` (token separator), whitespace, and `*`/`>` (wildcard
//! tokens), and has no empty tokens; MQTT allows all of them inside a level. So each
//! level is escaped: bytes outside `[A-Za-z0-9_-]`, and `%` itself, become `%HH`
//! (uppercase hex); an empty level becomes the token `%`, which the escaping never
//! produces on its own, so decoding is unambiguous. Escaping every non-ASCII byte too
//! keeps subjects plain ASCII whatever the NATS server version accepts.
//!
//! A filter maps level by level the same way, `+` → `*` and a final `#` → `>`. MQTT's
//! `a/#` also matches `a` (NATS's `a.>` does not), so it yields two subjects. The QoS
//! class token of a filter's subject is `*`, so one subscription sees both classes.
//! `$`-topics never cross nodes (`$SYS` is per node), so they have no subject.

use smallvec::SmallVec;

use super::ClusterError;

/// First token of every ringmq subject: keeps MQTT traffic apart from anything else
/// on the same NATS account.
pub const PREFIX: &str = "mq";

/// Which delivery class a message travels in: core NATS (QoS 0) or the subjects a
/// JetStream stream captures (QoS 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    AtMostOnce,
    AtLeastOnce,
}

impl QosClass {
    fn token(self) -> &'static str {
        match self {
            QosClass::AtMostOnce => "0",
            QosClass::AtLeastOnce => "1",
        }
    }

    pub fn of(qos: crate::protocol::QoS) -> QosClass {
        if qos == crate::protocol::QoS::AtMostOnce {
            QosClass::AtMostOnce
        } else {
            QosClass::AtLeastOnce
        }
    }
}

/// The longest subject (with its queue group, for a queue subscription) ringmq puts on
/// NATS (review10 H3). nats-server closes a connection whose control line
/// (`HPUB <subject> <reply> <hdr> <total>`, `SUB <subject> [queue] <sid>`) exceeds its
/// `max_control_line`, 4 KiB by default; escaping can triple a topic's length. The
/// rest of the line (a reply inbox, sizes, a subscription id) fits in what is left.
pub const SUBJECT_MAX_BYTES: usize = 3_800;

/// The longest client id whose KV keys stay within `SUBJECT_MAX_BYTES`: the longest
/// is its wills entry, `$KV.ringmq_wills.` (17) + base64url of the id + `.` + base64url
/// of a 64-byte node name (86) + `.` + the incarnation (16 hex).
pub const CLIENT_ID_MAX_BYTES: usize = (SUBJECT_MAX_BYTES - 17 - 1 - 86 - 1 - 16) * 3 / 4;

/// The token of an empty MQTT level.
const EMPTY_LEVEL: &str = "%";

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Appends the escaped form of one level (or of a queue-group name) to `out`.
pub fn escape_token(level: &[u8], out: &mut String) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in level {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The level a token stands for; `Err` for anything `escape_token` cannot produce.
pub fn unescape_token(token: &str, out: &mut Vec<u8>) -> Result<(), ClusterError> {
    if token == EMPTY_LEVEL {
        return Ok(());
    }
    if token.is_empty() {
        return Err(ClusterError::BadSubject);
    }
    let t = token.as_bytes();
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                t.get(i + 1).copied().and_then(hex_val),
                t.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(ClusterError::BadSubject);
            };
            let v = (h << 4) | l;
            // Canonical form only: a plain byte written as %HH would make two subjects
            // for one topic.
            if is_plain(v) {
                return Err(ClusterError::BadSubject);
            }
            out.push(v);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(ClusterError::BadSubject);
        }
    }
    Ok(())
}

/// The subject `topic` is published on; `None` for a `$`-topic, which stays local.
pub fn topic_subject(topic: &[u8], class: QosClass) -> Option<String> {
    if topic.first() == Some(&b'$') {
        return None;
    }
    let mut s = String::with_capacity(PREFIX.len() + 3 + topic.len() + 8);
    s.push_str(PREFIX);
    s.push('.');
    s.push_str(class.token());
    for level in topic.split(|&b| b == b'/') {
        s.push('.');
        escape_token(level, &mut s);
    }
    Some(s)
}

/// The length of `topic`'s subject (as `topic_subject` makes it) without making it.
pub fn topic_subject_len(topic: &[u8]) -> usize {
    let escaped: usize = topic
        .iter()
        .map(|&b| if is_plain(b) { 1 } else { 3 })
        .sum::<usize>();
    // "mq.Q" and one separator per level; a '/' is replaced by '.', not escaped, and an
    // empty level is one token byte.
    let slashes = topic.iter().filter(|&&b| b == b'/').count();
    let empty_levels = topic.split(|&b| b == b'/').filter(|l| l.is_empty()).count();
    PREFIX.len() + 2 + 1 + escaped - 2 * slashes + empty_levels
}

/// Whether `topic` can travel on NATS: its subject, and for a retained message its KV
/// key's subject (`$KV.<bucket>.` and base64 of the topic), are within
/// `SUBJECT_MAX_BYTES`.
pub fn topic_fits(topic: &[u8], retain: bool) -> bool {
    if topic_subject_len(topic) > SUBJECT_MAX_BYTES {
        return false;
    }
    // "$KV.ringmq_retained." is 20 bytes; base64 without padding is 4 per 3.
    !retain || 20 + topic.len().div_ceil(3) * 4 <= SUBJECT_MAX_BYTES
}

/// Whether a subscription to `filter` (in `group` when shared) can be made on NATS:
/// each of its subjects with the queue group within `SUBJECT_MAX_BYTES`.
pub fn filter_fits(filter: &[u8], group: Option<&[u8]>) -> bool {
    let queue = group.map_or(0, |g| queue_group(g).len() + 1);
    filter_subjects(filter)
        .iter()
        .all(|s| s.len() + queue <= SUBJECT_MAX_BYTES)
}

/// The topic and class a subject carries; `Err` for a subject ringmq did not make.
pub fn subject_topic(subject: &str) -> Result<(Vec<u8>, QosClass), ClusterError> {
    let mut tokens = subject.split('.');
    if tokens.next() != Some(PREFIX) {
        return Err(ClusterError::BadSubject);
    }
    let class = match tokens.next() {
        Some("0") => QosClass::AtMostOnce,
        Some("1") => QosClass::AtLeastOnce,
        _ => return Err(ClusterError::BadSubject),
    };
    let mut topic = Vec::with_capacity(subject.len());
    let mut any = false;
    for (i, t) in tokens.enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        unescape_token(t, &mut topic)?;
        any = true;
    }
    if !any || topic.first() == Some(&b'$') {
        return Err(ClusterError::BadSubject);
    }
    Ok((topic, class))
}

/// The subjects to subscribe for a (plain, inner) filter: one, or two for a filter
/// ending in `/#`. Empty for a filter starting with `$` (`$`-topics stay local) and for
/// a filter whose leading wildcard could match one anyway (never: `$`-topics have no
/// subject at all).
pub fn filter_subjects(filter: &[u8]) -> SmallVec<[String; 2]> {
    let mut out = SmallVec::new();
    if filter.is_empty() || filter.first() == Some(&b'$') {
        return out;
    }
    let mut s = String::with_capacity(PREFIX.len() + 3 + filter.len() + 8);
    s.push_str(PREFIX);
    s.push_str(".*");
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if last && level == b"#" {
            // `a/#` matches `a` too; `#` alone matches every topic (at least one level).
            if s.len() > PREFIX.len() + 2 {
                out.push(s.clone());
            }
            s.push_str(".>");
            out.push(s);
            return out;
        }
        s.push('.');
        if level == b"+" {
            s.push('*');
        } else {
            escape_token(level, &mut s);
        }
    }
    out.push(s);
    out
}

/// A shared subscription's group name as a NATS queue group (same escaping: a queue
/// name may not hold whitespace).
pub fn queue_group(group: &[u8]) -> String {
    let mut s = String::with_capacity(group.len() + 4);
    escape_token(group, &mut s);
    s
}

/// NATS's own subject matching (token-wise `*`, trailing `>` for one or more tokens),
/// written from the NATS subject-based-messaging rules for the tests that check the
/// mapping against MQTT matching.
pub fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.').peekable();
    let mut s = subject.split('.');
    while let Some(pt) = p.next() {
        if pt == ">" && p.peek().is_none() {
            return s.next().is_some();
        }
        match s.next() {
            Some(st) if pt == "*" || pt == st => {}
            _ => return false,
        }
    }
    s.next().is_none()
}
