//! Re-homing at start-up when the loop count changed: the states recovered from the
//! old loops' directories are merged and split by the new owner of each client id,
//! so a different `--shards` never refuses to start and no session is lost.
//!
//! Each session moves whole, with its subscriptions, inbound QoS 2 ids and copies;
//! the bodies its copies refer to go with it. Message ids are per loop, so two old
//! loops may have used the same id: every body gets a fresh id in its new loop.
//! Every shard keeps a full retained replica, so each new loop gets the merged
//! retained set (for one topic, the newest arrival wins). The owner function is
//! injected (the shard's `owner_shard`): this module imports no other broker module.
//!
//! The IO side then writes each new loop's state as its snapshot into a fresh
//! directory and switches directories only when all are durable (not built yet).

use std::collections::BTreeMap;

use super::state::{StoreState, StoredMsg};

/// Merges `old` and splits it over `n` loops by `owner(client_id)`. A client id found
/// in more than one old loop (never written by ringmq, but possible in a hand-edited
/// directory) keeps the session of the lowest old loop; the number dropped is returned.
pub fn rehome(
    old: &[StoreState],
    n: usize,
    owner: impl Fn(&[u8]) -> usize,
) -> (Vec<StoreState>, usize) {
    assert!(n > 0, "at least one loop");
    let mut out: Vec<StoreState> = (0..n).map(|_| StoreState::default()).collect();
    let mut dropped = 0;
    // (old loop, old id) -> new id, per new loop.
    let mut ids: Vec<BTreeMap<(usize, u64), u64>> = vec![BTreeMap::new(); n];
    for (from, st) in old.iter().enumerate() {
        for (client, s) in &st.sessions {
            let to = owner(client) % n;
            let dst = &mut out[to];
            if dst.sessions.contains_key(client) {
                dropped += 1;
                continue;
            }
            let mut s = s.clone();
            let mut copies = BTreeMap::new();
            for (id, copy) in std::mem::take(&mut s.copies) {
                let Some(body) = st.messages.get(&id) else {
                    continue; // `check` rules this out; stay total anyway
                };
                let new_id = *ids[to].entry((from, id)).or_insert_with(|| {
                    let new_id = dst.next_msg_id.max(1);
                    dst.next_msg_id = new_id + 1;
                    dst.messages.insert(
                        new_id,
                        StoredMsg {
                            msg: body.msg.clone(),
                            refs: 0,
                        },
                    );
                    new_id
                });
                if let Some(m) = dst.messages.get_mut(&new_id) {
                    m.refs += 1;
                }
                copies.insert(new_id, copy);
            }
            s.copies = copies;
            dst.sessions.insert(client.clone(), s);
        }
    }
    let mut retained: BTreeMap<_, super::record::MsgRec> = BTreeMap::new();
    for st in old {
        for (topic, m) in &st.retained {
            let older_or_same = matches!(
                retained.get(topic),
                Some(have) if have.arrived_unix_ms >= m.arrived_unix_ms
            );
            if !older_or_same {
                retained.insert(topic.clone(), m.clone());
            }
        }
    }
    for dst in &mut out {
        dst.retained = retained.clone();
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::record::{MsgRec, Record};

    fn owner(id: &[u8]) -> usize {
        id.iter().map(|&b| usize::from(b)).sum()
    }

    fn msg(t: &str, at: u64) -> MsgRec {
        MsgRec {
            topic: Bytes::copy_from_slice(t.as_bytes()),
            payload: Bytes::from(format!("{t}@{at}")),
            qos: 1,
            retain: false,
            props: Bytes::new(),
            arrived_unix_ms: at,
        }
    }

    /// Loop `l` of `n`: the sessions whose owner is `l`, each with two queued copies
    /// (ids overlap between loops on purpose) and one shared body.
    fn loop_state(l: usize, n: usize) -> StoreState {
        let mut st = StoreState::default();
        let clients: Vec<Bytes> = (0..40u32)
            .map(|i| Bytes::from(format!("dev-{i}")))
            .filter(|c| owner(c) % n == l)
            .collect();
        st.apply(&Record::MsgPut {
            id: 1,
            msg: msg("shared", 1),
        });
        for (k, c) in clients.iter().enumerate() {
            st.apply(&Record::SessionPut {
                client: c.clone(),
                expiry_s: 60,
                will: None,
            });
            st.apply(&Record::SubAdd {
                client: c.clone(),
                filter: Bytes::from_static(b"a/#"),
                options: 1,
                sub_id: 7,
            });
            st.apply(&Record::InboundQos2 {
                client: c.clone(),
                packet_id: 3,
            });
            let own = 10 + k as u64;
            st.apply(&Record::MsgPut {
                id: own,
                msg: msg(&format!("own/{c:?}"), own),
            });
            for id in [1, own] {
                st.apply(&Record::Enqueue {
                    client: c.clone(),
                    msg: id,
                    qos: 1,
                    retain: false,
                    sub_ids: vec![],
                });
            }
            st.apply(&Record::Sent {
                client: c.clone(),
                msg: own,
                packet_id: 9,
            });
        }
        st.apply(&Record::RetainSet {
            msg: msg("r/x", 100 + l as u64),
        });
        st.finish();
        st
    }

    /// Per client: subscriptions + inbound ids, and copies as (payload, packet id).
    type Contents = BTreeMap<Bytes, (usize, Vec<(Bytes, Option<u16>)>)>;

    /// What a session holds, with copies by body content (ids are renumbered).
    fn contents(states: &[StoreState]) -> Contents {
        let mut all = BTreeMap::new();
        for st in states {
            for (c, s) in &st.sessions {
                let copies = s
                    .copies
                    .iter()
                    .map(|(id, cp)| (st.messages[id].msg.payload.clone(), cp.packet_id))
                    .collect();
                all.insert(c.clone(), (s.subs.len() + s.inbound_qos2.len(), copies));
            }
        }
        all
    }

    #[test]
    fn three_loops_to_two_and_back_keep_every_session_at_its_owner() {
        let three: Vec<StoreState> = (0..3).map(|l| loop_state(l, 3)).collect();
        let (two, dropped) = rehome(&three, 2, owner);
        assert_eq!(dropped, 0);
        for (l, st) in two.iter().enumerate() {
            st.check().expect("valid");
            assert!(
                st.sessions.keys().all(|c| owner(c) % 2 == l),
                "a session on the wrong loop"
            );
            assert_eq!(
                st.retained[&Bytes::from_static(b"r/x")].arrived_unix_ms,
                102,
                "newest retained wins"
            );
            // Bodies from different old loops never share an id.
            let shared = st
                .messages
                .values()
                .filter(|m| m.msg.topic == "shared")
                .count();
            assert!(shared <= 3);
        }
        assert_eq!(contents(&two), contents(&three));
        let (back, _) = rehome(&two, 3, owner);
        assert_eq!(contents(&back), contents(&three));
        back.iter().for_each(|s| s.check().expect("valid"));
    }

    #[test]
    fn a_client_in_two_old_loops_keeps_the_first_and_says_so() {
        let a = loop_state(0, 1);
        let (out, dropped) = rehome(&[a.clone(), a.clone()], 1, owner);
        assert_eq!(dropped, a.sessions.len());
        assert_eq!(contents(&out), contents(&[a]));
        out[0].check().expect("valid");
    }
}
