//! Topic mapping of one bridge's rules: which rule a topic crossing in either
//! direction falls under, and its name on the other side (one prefix swapped for the
//! other, as Mosquitto does). The first matching rule in file order wins.

use bytes::Bytes;

use super::config::TopicRule;
use crate::protocol::QoS;
use crate::topic::matches;

#[derive(Debug, Clone)]
struct Compiled {
    local_filter: Vec<u8>,
    remote_filter: Vec<u8>,
    local_prefix: Vec<u8>,
    remote_prefix: Vec<u8>,
    qos: QoS,
    is_in: bool,
    is_out: bool,
}

/// A bridge's rules, with the filters built once.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Compiled>,
}

impl Rules {
    pub fn new(rules: &[TopicRule]) -> Rules {
        Rules {
            rules: rules
                .iter()
                .map(|r| Compiled {
                    local_filter: r.local_filter().into_bytes(),
                    remote_filter: r.remote_filter().into_bytes(),
                    local_prefix: r.local_prefix.clone().into_bytes(),
                    remote_prefix: r.remote_prefix.clone().into_bytes(),
                    qos: QoS::from_u8(r.qos).unwrap_or_default(),
                    is_in: r.direction.is_in(),
                    is_out: r.direction.is_out(),
                })
                .collect(),
        }
    }

    /// A local topic's remote name and the rule's QoS, if an `out` rule matches.
    pub fn outbound(&self, local: &[u8]) -> Option<(Bytes, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.is_out && matches(&r.local_filter, local))
            .find_map(|r| {
                let rest = local.strip_prefix(r.local_prefix.as_slice())?;
                Some((swap(&r.remote_prefix, rest), r.qos))
            })
    }

    /// A remote topic's local name, if an `in` rule matches.
    pub fn inbound(&self, remote: &[u8]) -> Option<Bytes> {
        self.rules
            .iter()
            .filter(|r| r.is_in && matches(&r.remote_filter, remote))
            .find_map(|r| {
                let rest = remote.strip_prefix(r.remote_prefix.as_slice())?;
                Some(swap(&r.local_prefix, rest))
            })
    }
}

fn swap(prefix: &[u8], rest: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(prefix.len() + rest.len());
    v.extend_from_slice(prefix);
    v.extend_from_slice(rest);
    Bytes::from(v)
}
