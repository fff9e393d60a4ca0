//! Per-client `$SYS` events (`sys_client_events`, off by default):
//! `$SYS/broker/clients/<client id>/connected` when a CONNECT is accepted and
//! `.../disconnected` when its connection ends, QoS 0, not retained, with a small
//! JSON payload (`clientid`, `peer` when the accept learnt it, `protocol`,
//! `clean_start`, `keepalive_s`; `clientid`, `normal`). Published like any message of this shard, so subscribers on every
//! loop get them and the ACL's read check applies. A client id holding `/`, `+` or
//! `#` gets no event: it would not be one topic level.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::Shard;

/// What a `connected` event says about the client.
pub(super) struct Connected<'a> {
    pub client_id: &'a [u8],
    pub peer: Option<SocketAddr>,
    pub protocol: u8,
    pub clean_start: bool,
    pub keepalive_s: u16,
}

impl Shard {
    pub(super) fn event_connected(&mut self, e: Connected<'_>, now: Instant) {
        let Some(topic) = self.event_topic(e.client_id, "connected") else {
            return;
        };
        let mut p = String::with_capacity(128);
        let _ = write!(p, "{{\"clientid\":\"{}\"", json_escape(e.client_id));
        // A multishot accept (io_uring) does not learn the peer's address: the
        // field is left out rather than saying 0.0.0.0:0.
        if let Some(a) = e.peer.filter(|a| a.port() != 0) {
            let _ = write!(p, ",\"peer\":\"{a}\"");
        }
        let _ = write!(
            p,
            ",\"protocol\":{},\"clean_start\":{},\"keepalive_s\":{}}}",
            e.protocol, e.clean_start, e.keepalive_s,
        );
        self.publish_broker(topic, p.into(), false, now);
    }

    /// `normal`: the client sent DISCONNECT 0x00 first.
    pub(super) fn event_disconnected(&mut self, client_id: &[u8], normal: bool, now: Instant) {
        let Some(topic) = self.event_topic(client_id, "disconnected") else {
            return;
        };
        let p = format!(
            "{{\"clientid\":\"{}\",\"normal\":{normal}}}",
            json_escape(client_id)
        );
        self.publish_broker(topic, p.into(), false, now);
    }

    fn event_topic(&self, client_id: &[u8], what: &str) -> Option<Bytes> {
        if !self.config.sys_client_events
            || client_id.is_empty()
            || client_id.iter().any(|b| matches!(b, b'/' | b'+' | b'#'))
        {
            return None;
        }
        let mut t = Vec::with_capacity(client_id.len() + 40);
        t.extend_from_slice(b"$SYS/broker/clients/");
        t.extend_from_slice(client_id);
        t.push(b'/');
        t.extend_from_slice(what.as_bytes());
        Some(t.into())
    }
}

/// A client id as a JSON string's contents: quotes, backslashes and control
/// characters escaped (ids are UTF-8; anything else is replaced).
fn json_escape(id: &[u8]) -> String {
    let mut out = String::with_capacity(id.len());
    for ch in String::from_utf8_lossy(id).chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::json_escape;

    #[test]
    fn ids_are_escaped_for_json() {
        assert_eq!(json_escape(b"a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
