//! The shard's side of the cluster (issue #17; `src/cluster`): what a loop hands the
//! cluster thread once per turn (this shard's client publishes and wills, and its
//! interest changes), and the messages from NATS coming in. Off unless
//! `enable_cluster` was called: single-node mode pays one `Option` test per publish
//! and per route change.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::retained::RetainedBody;
use super::{Shard, ShardMsg};
use crate::session::Message;

/// Publishes kept for the cluster thread per turn; a turn that reads more drops the
/// rest for the cluster (still delivered locally), counted in `ClusterOut::dropped`.
const CLUSTER_OUT_MAX: usize = 65_536;

/// One interest change: this shard's local count for `filter` (or `group` on it) went
/// 0 → 1 (`add`) or 1 → 0.
#[derive(Debug, Clone)]
pub struct ClusterInterest {
    pub filter: Bytes,
    pub group: Option<Bytes>,
    pub add: bool,
}

/// What a turn of this shard gives the cluster thread.
#[derive(Debug, Default)]
pub struct ClusterOut {
    pub publishes: Vec<Arc<Message>>,
    pub interest: Vec<ClusterInterest>,
    /// Publishes past `CLUSTER_OUT_MAX` this turn, not forwarded.
    pub dropped: u64,
}

impl ClusterOut {
    fn is_empty(&self) -> bool {
        self.publishes.is_empty() && self.interest.is_empty() && self.dropped == 0
    }
}

impl RetainedBody {
    /// A retained entry from the cluster's KV bucket.
    pub fn from_cluster(m: &Message) -> RetainedBody {
        RetainedBody::new(m)
    }
}

impl Shard {
    /// Turns the cluster side on, before the shard has any subscription:
    /// publishes and interest changes are kept from now on for `take_cluster_out`.
    pub fn enable_cluster(&mut self) {
        self.cluster = Some(Box::default());
    }

    /// This turn's publishes and interest changes, when there are any.
    pub fn take_cluster_out(&mut self) -> Option<ClusterOut> {
        let c = self.cluster.as_deref_mut()?;
        if c.is_empty() {
            return None;
        }
        Some(std::mem::take(c))
    }

    /// A message this shard's client (or will) published: forwarded to NATS unless it
    /// is a `$`-topic (those stay on their node). `arc` is the fan-out's shared copy
    /// when it made one.
    #[inline]
    pub(super) fn cluster_forward(&mut self, msg: &Message, arc: &mut Option<Arc<Message>>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if msg.topic.first() == Some(&b'$') {
            return;
        }
        if c.publishes.len() >= CLUSTER_OUT_MAX {
            c.dropped += 1;
            return;
        }
        // Its own bytes: the cluster thread may hold it past this receive buffer.
        let a = arc.get_or_insert_with(|| Arc::new(msg.compacted())).clone();
        c.publishes.push(a);
    }

    #[inline]
    pub(super) fn cluster_interest(&mut self, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.interest.push(ClusterInterest {
                filter: filter.clone(),
                group: group.cloned(),
                add,
            });
        }
    }

    /// A message the cluster thread hands this shard: a publish from another node
    /// (delivered to local subscribers, never forwarded again) or a retained entry
    /// from the bucket (applied under this node's own retained bounds and memory
    /// mark: the publishing node's bounds say nothing about this one's).
    pub fn on_cluster_message(&mut self, msg: ShardMsg, now: Instant) {
        self.last_now = Some(now);
        match msg {
            ShardMsg::Publish { msg, plain, shared } => {
                self.on_remote_publish(msg, plain, shared, now);
                self.drop_slow_consumers(now);
            }
            ShardMsg::Retain(body) => {
                self.apply_retained(&body, true, now);
            }
            // The cluster thread sends neither; a loop's routes stay between loops.
            ShardMsg::Route(_) | ShardMsg::RouteAck { .. } => {}
        }
    }
}
