//! The IO side's bookkeeping of connections, shared by the test harness
//! (`harness`, exact-packet tests) and the fuzz driver (`testkit`): which peer each
//! `(shard, ConnId)` is, and what `Action::Migrate` and a release do to it, as the
//! worker does them. Hand-offs can be refused (owner's table or the mesh full) or
//! held in flight (the source has released the connection, the owner has not
//! adopted it yet), so both drivers reach the races of the CONNECT path.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::shard::{ConnId, Handoff, Shard, ShardId, ShardMsg};

/// The driver's own name for a connection: stays the same across hand-offs.
pub(crate) type PeerId = usize;

/// A test driver's mesh: messages in flight as (from, to, message), in send order.
pub(crate) type TestMesh = VecDeque<(ShardId, ShardId, ShardMsg)>;

/// Whether the pair `from → to` has no room left: `room` messages may be in flight per
/// pair (`None`: unbounded).
pub(crate) fn pair_full(mesh: &TestMesh, room: Option<usize>, from: ShardId, to: ShardId) -> bool {
    room.is_some_and(|room| {
        let in_flight = mesh
            .iter()
            .filter(|(f, t, _)| (*f, *t) == (from, to))
            .count();
        in_flight >= room
    })
}

/// Like the worker: shard `s`'s control messages enter `mesh` while their pair has
/// room (see [`pair_full`]), the rest wait in the shard (never dropped). True if any
/// moved.
pub(crate) fn take_control(
    shards: &mut [Shard],
    s: ShardId,
    mesh: &mut TestMesh,
    room: Option<usize>,
) -> bool {
    let mut moved = false;
    if !shards[s].control_waiting() {
        return false;
    }
    for to in (0..shards.len()).filter(|&to| to != s) {
        while !pair_full(mesh, room, s, to) {
            let Some(msg) = shards[s].poll_control(to) else {
                break;
            };
            mesh.push_back((s, to, msg));
            moved = true;
        }
    }
    moved
}

/// Where a handed-over peer landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub peer: PeerId,
    pub shard: ShardId,
    pub conn: ConnId,
}

#[derive(Default)]
pub(crate) struct Wiring {
    /// Ids handed out by `accept`/`adopt` and not yet released → their peer.
    live: HashMap<(ShardId, ConnId), PeerId>,
    /// Hand-offs released by their source and not yet adopted, oldest first.
    in_flight: VecDeque<(PeerId, ShardId, Handoff)>,
    /// Refuse every hand-off, as the worker does when the owner's socket table or
    /// the mesh is full (`Shard::on_migrate_refused`; a `Close` follows).
    pub refuse_migrations: bool,
    /// Hold hand-offs in flight until `adopt_held`.
    pub hold_migrations: bool,
    /// Hand-offs adopted so far.
    pub migrations: usize,
}

impl Wiring {
    /// `conn` on `shard` was just handed out (accept or adopt) for `peer`.
    #[track_caller]
    pub fn bind(&mut self, shard: ShardId, conn: ConnId, peer: PeerId) {
        assert!(
            self.live.insert((shard, conn), peer).is_none(),
            "conn id {conn} on shard {shard} reused before release"
        );
    }

    pub fn peer(&self, shard: ShardId, conn: ConnId) -> Option<PeerId> {
        self.live.get(&(shard, conn)).copied()
    }

    /// Ids of `shard` not yet released.
    pub fn live_on(&self, shard: ShardId) -> usize {
        self.live.keys().filter(|(s, _)| *s == shard).count()
    }

    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The IO side is done with `conn`: `Shard::release`. Returns its peer.
    pub fn release(
        &mut self,
        shards: &mut [Shard],
        shard: ShardId,
        conn: ConnId,
    ) -> Option<PeerId> {
        shards[shard].release(conn);
        self.live.remove(&(shard, conn))
    }

    /// Performs `Action::Migrate` of `conn` from shard `from`. Returns where the peer
    /// landed when the owner adopted it now; `None` when refused (the source answers
    /// and emits `Close`) or held in flight.
    pub fn migrate(
        &mut self,
        shards: &mut [Shard],
        from: ShardId,
        conn: ConnId,
        to: ShardId,
        handoff: Handoff,
        now: Instant,
    ) -> Option<Moved> {
        if self.refuse_migrations {
            shards[from].on_migrate_refused(conn, now);
            return None;
        }
        let Some(peer) = self.peer(from, conn) else {
            panic!("Migrate of conn {conn} on shard {from}, which the IO side does not hold");
        };
        if self.hold_migrations {
            self.release(shards, from, conn);
            self.in_flight.push_back((peer, to, handoff));
            return None;
        }
        let moved = self.adopt(shards, peer, to, handoff, now);
        self.release(shards, from, conn);
        Some(moved)
    }

    /// Adopts one held hand-off, the oldest (or the newest), on its owner.
    pub fn adopt_held(
        &mut self,
        shards: &mut [Shard],
        newest_first: bool,
        now: Instant,
    ) -> Option<Moved> {
        let (peer, to, handoff) = if newest_first {
            self.in_flight.pop_back()?
        } else {
            self.in_flight.pop_front()?
        };
        Some(self.adopt(shards, peer, to, handoff, now))
    }

    fn adopt(
        &mut self,
        shards: &mut [Shard],
        peer: PeerId,
        to: ShardId,
        handoff: Handoff,
        now: Instant,
    ) -> Moved {
        self.migrations += 1;
        let conn = shards[to].adopt(handoff, now);
        self.bind(to, conn, peer);
        Moved {
            peer,
            shard: to,
            conn,
        }
    }
}
