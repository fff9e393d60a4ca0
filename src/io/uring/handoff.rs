//! Moving a connection to another loop: its direct descriptor goes over `MSG_RING`
//! into a slot reserved in the target's table, paired there with the worker's mesh
//! hand-off by a ticket; unpaired arrivals are closed after a timeout. A descriptor
//! the kernel installed without telling the target (EOVERFLOW) is reported to the
//! target, which sweeps its table for it and closes it, reclaiming the slot. Also the
//! `MSG_RING` doorbells that wake a parked loop, retried when transiently refused.

use std::time::Instant;

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{DestinationSlot, Fd, Fixed};

use super::{
    ud, SockState, UringLoop, K_ADOPT, K_DOORBELL, K_LOST, K_LOST_SENT, K_ORPHAN_CLOSE, K_PROBE,
    K_SEND_FD, REPORTED, SHUTDOWN_ON_CLOSE,
};
use crate::io::{Completion, RemoteKind, SockId, Transfer};

/// Capacity the hand-off tables may keep while empty (see `shrink_handoff_tables`).
const HANDOFF_TABLE_KEPT: usize = 64;

/// Sweep probes (and orphan closes) one ring keeps in flight while it looks for
/// descriptors installed unannounced (`sweep_for_orphans`).
const SWEEP_INFLIGHT_MAX: u32 = 256;
/// Attempts at one doorbell before giving up on it (each is one turn apart).
const DOORBELL_ATTEMPTS_MAX: u64 = 64;

/// Whether a failed doorbell `MSG_RING` is worth sending again: the target's CQE could
/// not be posted now (EOVERFLOW: no memory for the CQ overflow list; ENOMEM; EAGAIN,
/// EBUSY, EINTR), as opposed to a target ring that is gone or not a ring (EBADFD,
/// EBADF, EINVAL, ...), where a retry cannot help.
fn doorbell_retryable(errno: i32) -> bool {
    matches!(
        errno,
        libc::EOVERFLOW | libc::ENOMEM | libc::EAGAIN | libc::EBUSY | libc::EINTR
    )
}

/// A hand-off's ticket: the sending loop's id above bit 40, so tickets of different
/// loops never collide at a target, and the loop's sequence number below.
fn ticket(loop_id: usize, seq: u32) -> u64 {
    ((loop_id as u64) << 40) | u64::from(seq)
}

impl UringLoop {
    /// Continues a migration once the receive has stopped and no send is in flight.
    pub(super) fn maybe_send_fd(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let SockState::Migrating { to } = s.state else {
            return;
        };
        if s.recv_armed || s.tx.is_some() {
            return;
        }
        // Reserve the target slot before sending: a MSG_RING into a full table fails
        // (ENFILE) after the socket already left our receive path.
        let target = match self.peers.get(usize::from(to)) {
            None => Err(libc::EINVAL),
            Some(p) => p.reserve_adopt_slot().ok_or(libc::ENFILE),
        };
        let (ring_fd, target_ring) = match target {
            Ok(t) => t,
            Err(errno) => {
                if errno == libc::ENFILE {
                    self.stats.migrate_refused_full += 1;
                } else {
                    self.stats.migrate_failed += 1;
                }
                // The socket never left: it stays open (not receiving) so the
                // worker can answer the client before closing it.
                s.state = SockState::Open;
                self.pending.push(Completion::Migrated {
                    sock,
                    result: Err(errno),
                });
                return;
            }
        };
        let seq = self.next_ticket;
        self.next_ticket = seq.wrapping_add(1);
        let ticket = ticket(self.id, seq);
        s.state = SockState::SendingFd {
            seq,
            to,
            ring: target_ring as u8,
        };
        let (ring, slot) = (s.ring as usize, s.slot);
        // The ticket rides in the target's CQE user_data; the worker sends it along
        // with the handoff so the target can pair the two.
        let e = opcode::MsgRingSendFd::new(
            Fd(ring_fd),
            Fixed(slot),
            DestinationSlot::auto_target(),
            ud(K_ADOPT, ticket),
        )
        .build()
        .user_data(ud(K_SEND_FD, sock as u64));
        self.rings[ring].push(e);
    }

    /// A connect storm grows the hand-off tables to the number of hand-offs in flight;
    /// once they are empty again, an idle loop gives that memory back.
    pub(super) fn shrink_handoff_tables(&mut self) {
        if self.arrived.is_empty() && self.arrived.capacity() > HANDOFF_TABLE_KEPT {
            self.arrived.shrink_to(0);
        }
        if self.claimed.is_empty() && self.claimed.capacity() > HANDOFF_TABLE_KEPT {
            self.claimed.shrink_to(0);
        }
        if self.arrived_due.is_empty() && self.arrived_due.capacity() > HANDOFF_TABLE_KEPT {
            self.arrived_due.shrink_to(0);
        }
    }

    /// `MSG_RING`s a doorbell to loop `to`; `attempt` rides in the user data so a
    /// failure knows how often it was tried.
    pub(super) fn send_doorbell(&mut self, to: usize, attempt: u64) {
        let Some(peer) = self.peers.get(to) else {
            return;
        };
        let RemoteKind::Uring { ring_fds, .. } = &peer.kind else {
            return;
        };
        let Some(&fd) = ring_fds.first() else { return };
        let e = opcode::MsgRingData::new(Fd(fd), 0, ud(K_DOORBELL, self.id as u64), None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(K_DOORBELL, (attempt << 16) | (to as u64 & 0xffff)));
        self.rings[0].push(e);
    }

    /// A doorbell did not reach loop `to`, which may be blocked with messages in its
    /// mesh ring: try again next turn, a bounded number of times.
    pub(super) fn on_doorbell_failed(&mut self, payload: u64, errno: i32) {
        let (to, attempt) = ((payload & 0xffff) as usize, payload >> 16);
        if doorbell_retryable(errno) && attempt + 1 < DOORBELL_ATTEMPTS_MAX {
            self.stats.doorbell_retried += 1;
            if !self.doorbell_retry.iter().any(|&(t, _)| t == to) {
                self.doorbell_retry.push((to, attempt + 1));
            }
            return;
        }
        self.stats.doorbell_failed += 1;
        tracing::error!(loop_id = self.id, to, errno, attempt, "doorbell lost");
    }

    /// Closes sockets sent to us whose hand-off did not come in time.
    pub(super) fn reap_unpaired(&mut self) {
        let Some(&(due, _)) = self.arrived_due.front() else {
            return;
        };
        let now = Instant::now();
        if due > now {
            return;
        }
        while let Some(&(due, ticket)) = self.arrived_due.front() {
            if due > now {
                break;
            }
            self.arrived_due.pop_front();
            // Claimed meanwhile (the usual case): nothing to do.
            let Some(sock) = self.arrived.remove(&ticket) else {
                continue;
            };
            self.stats.adopt_unpaired_reaped += 1;
            tracing::warn!(
                loop_id = self.id,
                ticket,
                "socket arrived without its hand-off: closed"
            );
            if let Some(s) = self.socks.get_mut(sock as usize) {
                // The worker never saw this id: no `Released` for it.
                s.flags.set(REPORTED, false);
                s.state = SockState::Closing;
            }
            self.close_slot(sock);
        }
    }

    pub(super) fn on_send_fd(&mut self, sock: SockId, res: i32) {
        #[cfg(test)]
        let res = if res >= 0 && self.inject_send_fd_overflow > 0 {
            self.inject_send_fd_overflow -= 1;
            -libc::EOVERFLOW
        } else {
            res
        };
        tracing::debug!(loop_id = self.id, sock, res, "descriptor sent");
        let sent = match self.socks.get(sock as usize).map(|s| s.state) {
            Some(SockState::SendingFd { seq, to, ring }) => Some((ticket(self.id, seq), to, ring)),
            _ => None,
        };
        let result = match (res >= 0, sent) {
            (true, Some((ticket, _, _))) => Ok(Transfer(ticket)),
            (false, Some((ticket, to, ring))) if res == -libc::EOVERFLOW => {
                // The kernel installed the descriptor in the target's table but could
                // not post its CQE, and the slot number is lost with it: the target
                // cannot adopt that copy. Its reserved slot stays taken (it is in use)
                // until the target, told by a note, finds and closes the copy
                // (`on_lost_note`); our close shuts the connection down so the client
                // is not left hanging on it meanwhile.
                self.stats.migrate_descriptor_lost += 1;
                self.send_lost_note(usize::from(to), usize::from(ring), 0);
                self.stats.migrate_failed += 1;
                tracing::error!(
                    loop_id = self.id,
                    sock,
                    to,
                    ticket,
                    "socket handoff: descriptor installed unannounced (EOVERFLOW), connection refused"
                );
                Err(libc::EOVERFLOW)
            }
            (_, sent) => {
                // The descriptor did not arrive: its reserved slot is free again.
                if let Some((_, to, ring)) = sent {
                    if let Some(p) = self.peers.get(to as usize) {
                        p.release_adopt_slot(ring as usize);
                    }
                }
                self.stats.migrate_failed += 1;
                Err(if res < 0 { -res } else { libc::EINVAL })
            }
        };
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        s.flags.set(
            SHUTDOWN_ON_CLOSE,
            result == Err(libc::EOVERFLOW) && sent.is_some(),
        );
        if result.is_err() && sent.is_some() {
            // Our slot still holds the socket: it stays open (not receiving) so the
            // worker can answer the client before closing it.
            s.state = SockState::Open;
            self.pending.push(Completion::Migrated { sock, result });
            return;
        }
        s.state = SockState::Closing;
        self.pending.push(Completion::Migrated { sock, result });
        // The target holds its own reference now; drop ours.
        self.close_slot(sock);
    }

    pub(super) fn on_adopt(&mut self, ring: usize, ticket: u64, res: i32) {
        tracing::debug!(
            loop_id = self.id,
            ring,
            ticket,
            res,
            claimed = self.claimed.contains(&ticket),
            "descriptor arrived"
        );
        if res < 0 {
            tracing::warn!(ticket, errno = -res, "socket handoff arrived with an error");
            return;
        }
        #[cfg(test)]
        if self.inject_lose_adopt_cqe > 0 {
            self.inject_lose_adopt_cqe -= 1;
            return;
        }
        // The sender reserved this slot in our `RingRoom`; it is ours to give back.
        let sock = self.insert_open(ring, res as u32);
        if self.claimed.remove(&ticket) {
            self.pending.push(Completion::Adopted {
                transfer: Transfer(ticket),
                sock,
            });
        } else {
            self.arrived.insert(ticket, sock);
            self.arrived_due
                .push_back((Instant::now() + self.adopt_pair_timeout, ticket));
        }
    }

    /// Tells loop `to` that a descriptor we sent landed unannounced in its ring
    /// `ring` (`MSG_RING` data to its ring 0, retried like a doorbell).
    pub(super) fn send_lost_note(&mut self, to: usize, ring: usize, attempt: u64) {
        let Some(peer) = self.peers.get(to) else {
            return;
        };
        let RemoteKind::Uring { ring_fds, .. } = &peer.kind else {
            return;
        };
        let Some(&fd) = ring_fds.first() else { return };
        let payload = (attempt << 24) | ((ring as u64 & 0xff) << 16) | (to as u64 & 0xffff);
        let e = opcode::MsgRingData::new(Fd(fd), 0, ud(K_LOST, ring as u64), None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(K_LOST_SENT, payload));
        self.rings[0].push(e);
    }

    /// A note of ours did not reach its loop: again next turn, a bounded number of
    /// times; after that the slot stays taken there (logged).
    pub(super) fn on_lost_note_failed(&mut self, payload: u64, errno: i32) {
        let (to, ring, attempt) = (
            (payload & 0xffff) as usize,
            ((payload >> 16) & 0xff) as usize,
            payload >> 24,
        );
        if doorbell_retryable(errno) && attempt + 1 < DOORBELL_ATTEMPTS_MAX {
            self.lost_note_retry.push((to, ring, attempt + 1));
            return;
        }
        tracing::error!(
            loop_id = self.id,
            to,
            ring,
            errno,
            "note of an unannounced descriptor lost: its table slot stays taken"
        );
    }

    /// Another loop's descriptor sits unannounced in ring `ring`'s table. Its slot
    /// number is known to nobody, so the table is swept: every slot no socket of ours
    /// holds is probed, and the occupied one closed (`sweep_for_orphans`). Two passes
    /// may start from here, so a note that arrives in the middle of a pass still gets
    /// a whole one.
    pub(super) fn on_lost_note(&mut self, ring: usize) {
        let Some(r) = self.rings.get_mut(ring) else {
            return;
        };
        if r.lost == 0 && r.sweep_inflight == 0 {
            r.sweep_next = 0;
        }
        r.lost += 1;
        r.sweep_passes = 2;
    }

    /// Issues the next probes of every ring with unannounced descriptors: an `FSYNC`
    /// on the fixed slot, which fails with EBADF on an empty slot and touches nothing
    /// on a socket. At most `SWEEP_INFLIGHT_MAX` per ring in flight.
    ///
    /// Why the probe can be trusted: a slot is marked known when the CQE of the accept
    /// or adoption that filled it is dispatched, and unmarked when its close completes.
    /// The kernel installs a descriptor and posts that CQE under the ring's lock, the
    /// lock the probe's slot lookup takes too, and this ring's CQEs are dispatched in
    /// order. So when a probe's CQE is dispatched, any socket that was in the slot
    /// at probe time and is ours is already marked: an occupied slot still unmarked
    /// holds the unannounced copy.
    pub(super) fn sweep_for_orphans(&mut self) {
        for ri in 0..self.rings.len() {
            let r = &mut self.rings[ri];
            if r.lost == 0 {
                continue;
            }
            while r.sweep_inflight < SWEEP_INFLIGHT_MAX && r.sweep_next < r.table_size {
                let slot = r.sweep_next;
                r.sweep_next += 1;
                if r.is_known(slot) {
                    continue;
                }
                let e = opcode::Fsync::new(Fixed(slot))
                    .build()
                    .user_data(ud(K_PROBE, ((ri as u64) << 32) | u64::from(slot)));
                r.sweep_inflight += 1;
                r.push(e);
            }
            if r.sweep_next >= r.table_size && r.sweep_inflight == 0 {
                // A pass ended without finding every unannounced descriptor.
                r.sweep_passes = r.sweep_passes.saturating_sub(1);
                if r.sweep_passes > 0 {
                    r.sweep_next = 0;
                } else {
                    tracing::error!(
                        loop_id = self.id,
                        ring = ri,
                        missing = r.lost,
                        "sweep found no unannounced descriptor to close"
                    );
                    r.lost = 0;
                }
            }
        }
    }

    /// A sweep probe's answer: EBADF is an empty slot; an occupied slot that no
    /// socket of ours holds is the unannounced copy, closed.
    pub(super) fn on_probe(&mut self, payload: u64, res: i32) {
        let (ri, slot) = ((payload >> 32) as usize, payload as u32);
        let Some(r) = self.rings.get_mut(ri) else {
            return;
        };
        r.sweep_inflight = r.sweep_inflight.saturating_sub(1);
        if res == -libc::EBADF || r.lost == 0 || r.is_known(slot) {
            return;
        }
        r.lost -= 1;
        r.sweep_inflight += 1;
        let e = opcode::Close::new(Fixed(slot))
            .build()
            .user_data(ud(K_ORPHAN_CLOSE, payload));
        r.push(e);
    }

    /// The unannounced copy in `payload`'s slot is closed: the slot, and the room the
    /// sender reserved for it, are free again.
    pub(super) fn on_orphan_closed(&mut self, payload: u64, res: i32) {
        let (ri, slot) = ((payload >> 32) as usize, payload as u32);
        let Some(r) = self.rings.get_mut(ri) else {
            return;
        };
        r.sweep_inflight = r.sweep_inflight.saturating_sub(1);
        if res < 0 {
            tracing::warn!(
                loop_id = self.id,
                ring = ri,
                slot,
                errno = -res,
                "closing an unannounced descriptor failed"
            );
            return;
        }
        self.room(ri).give_back();
        self.stats.migrate_slot_reclaimed += 1;
        tracing::warn!(
            loop_id = self.id,
            ring = ri,
            slot,
            "unannounced descriptor closed: slot reclaimed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Completion, EventLoop, LoopOptions, Remote, RingRoom};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn doorbell_errors_worth_a_retry() {
        for errno in [
            libc::EOVERFLOW,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::EBUSY,
            libc::EINTR,
        ] {
            assert!(doorbell_retryable(errno), "{errno}");
        }
        for errno in [libc::EBADFD, libc::EBADF, libc::EINVAL, libc::EOWNERDEAD] {
            assert!(!doorbell_retryable(errno), "{errno}");
        }
    }

    /// A doorbell that failed transiently is sent again on the next turn (and reaches
    /// the peer); after `DOORBELL_ATTEMPTS_MAX` attempts it is given up and counted.
    #[test]
    fn a_transiently_failed_doorbell_is_sent_again_next_turn() {
        let opts = LoopOptions {
            max_connections: 100,
            ..LoopOptions::default()
        };
        let mut lp = UringLoop::new(0, &opts).expect("loop");
        let mut peer = UringLoop::new(1, &opts).expect("peer loop");
        lp.set_peers(vec![lp.remote(), peer.remote()]);
        lp.on_doorbell_failed(1, libc::EOVERFLOW);
        lp.on_doorbell_failed(1, libc::EOVERFLOW);
        assert_eq!(lp.doorbell_retry, [(1, 1)], "one retry per target");
        assert_eq!(lp.stats.doorbell_retried, 2);
        assert!(!peer.poll_ready());
        let mut out = Vec::new();
        lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        assert!(lp.doorbell_retry.is_empty());
        assert!(peer.poll_ready(), "the retried doorbell rang");
        peer.turn(Some(Duration::ZERO), &mut out)
            .expect("peer turn");
        // The last attempt is not retried.
        lp.on_doorbell_failed(((DOORBELL_ATTEMPTS_MAX - 1) << 16) | 1, libc::EOVERFLOW);
        assert!(lp.doorbell_retry.is_empty());
        assert_eq!(lp.stats.doorbell_failed, 1);
    }

    /// A doorbell to something that is not a ring fails with EBADFD: counted, not
    /// retried.
    #[test]
    fn a_doorbell_that_cannot_arrive_is_counted() {
        let opts = LoopOptions {
            max_connections: 100,
            ..LoopOptions::default()
        };
        let mut lp = UringLoop::new(0, &opts).expect("loop");
        // SAFETY: eventfd takes no pointers; the result is checked.
        let not_a_ring = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(not_a_ring >= 0);
        let bogus = Arc::new(Remote {
            kind: RemoteKind::Uring {
                ring_fds: vec![not_a_ring],
                room: vec![RingRoom::new(0)],
                // SAFETY: the remote owns the eventfd from here (closed when it drops);
                // `ring_fds` only names it.
                eventfd: unsafe { OwnedFd::from_raw_fd(not_a_ring) },
            },
        });
        lp.set_peers(vec![lp.remote(), bogus]);
        lp.doorbell(1);
        let mut out = Vec::new();
        for _ in 0..3 {
            lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        }
        assert_eq!(
            (lp.stats.doorbell_failed, lp.stats.doorbell_retried),
            (1, 0)
        );
        assert!(lp.doorbell_retry.is_empty());
    }

    /// Hand-off tables grown by a connect storm are given back once empty, at the
    /// first idle trim.
    #[test]
    fn idle_loop_shrinks_emptied_handoff_tables() {
        let opts = LoopOptions {
            max_connections: 100,
            ..LoopOptions::default()
        };
        let mut lp = UringLoop::new(0, &opts).expect("loop");
        let now = Instant::now();
        for t in 0..1000u64 {
            lp.arrived.insert(t, t as SockId);
            lp.claimed.insert(t);
            lp.arrived_due.push_back((now, t));
        }
        lp.shrink_handoff_tables();
        assert_eq!(lp.arrived.len(), 1000, "tables in use are kept");
        lp.arrived.clear();
        lp.claimed.clear();
        lp.arrived_due.clear();
        assert!(lp.arrived.capacity() >= 1000);
        lp.shrink_handoff_tables();
        assert_eq!(
            (
                lp.arrived.capacity(),
                lp.claimed.capacity(),
                lp.arrived_due.capacity()
            ),
            (0, 0, 0)
        );
    }

    /// The kernel installs a sent descriptor but cannot post its CQE (EOVERFLOW,
    /// injected on both sides): the target never learns the slot. The sender's note
    /// makes the target sweep its table, close the copy, and give back the room the
    /// sender reserved, so capacity does not shrink with each occurrence.
    #[test]
    fn an_unannounced_descriptor_is_found_and_its_slot_reclaimed() {
        let opts = LoopOptions {
            max_connections: 8,
            table_slots_max: 8 + 64,
            ..LoopOptions::default()
        };
        let mut a = UringLoop::new(0, &opts).expect("loop 0");
        let mut b = UringLoop::new(1, &opts).expect("loop 1");
        let peers = vec![a.remote(), b.remote()];
        a.set_peers(peers.clone());
        b.set_peers(peers);
        assert_eq!(b.remote().ring_room(), [8]);
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        a.add_listener(l).expect("listen");
        // A first connection moves to `b` normally: the sweep must leave it alone.
        let mut kept_client = std::net::TcpStream::connect(addr).expect("connect");
        let first = accept_one(&mut a);
        a.migrate(first, 1);
        let mut moved = None;
        for _ in 0..1000 {
            let mut out = Vec::new();
            a.turn(Some(Duration::from_millis(1)), &mut out)
                .expect("turn");
            b.turn(Some(Duration::ZERO), &mut Vec::new()).expect("turn");
            moved = out.iter().find_map(|c| match c {
                Completion::Migrated { result, .. } => Some(*result),
                _ => None,
            });
            if moved.is_some() {
                break;
            }
        }
        let transfer = moved.expect("migrated").expect("hand-off accepted");
        let mut kept = b.adopt(transfer);
        for _ in 0..1000 {
            if kept.is_some() {
                break;
            }
            let mut out = Vec::new();
            b.turn(Some(Duration::from_millis(1)), &mut out)
                .expect("turn");
            kept = out.iter().find_map(|c| match c {
                Completion::Adopted { sock, .. } => Some(*sock),
                _ => None,
            });
        }
        let kept = kept.expect("adopted");
        let room = b.remote().ring_room();
        assert_eq!(room, [7], "the kept socket holds one slot");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let mut out = Vec::new();
        let sock = accept_one(&mut a);
        a.inject_send_fd_overflow = 1;
        b.inject_lose_adopt_cqe = 1;
        a.migrate(sock, 1);
        let mut refused = None;
        for _ in 0..1000 {
            out.clear();
            a.turn(Some(Duration::from_millis(1)), &mut out)
                .expect("turn");
            b.turn(Some(Duration::ZERO), &mut Vec::new()).expect("turn");
            refused = out.iter().find_map(|c| match c {
                Completion::Migrated { result, .. } => Some(*result),
                _ => None,
            });
            if refused.is_some() {
                break;
            }
        }
        assert_eq!(refused, Some(Err(libc::EOVERFLOW)));
        assert_eq!(a.stats.migrate_descriptor_lost, 1);
        // The worker closes a refused socket.
        a.close(sock);
        for _ in 0..1000 {
            a.turn(Some(Duration::from_millis(1)), &mut Vec::new())
                .expect("turn");
            b.turn(Some(Duration::from_millis(1)), &mut Vec::new())
                .expect("turn");
            if b.stats.migrate_slot_reclaimed > 0 && b.remote().ring_room() == room {
                break;
            }
        }
        assert_eq!(b.stats.migrate_slot_reclaimed, 1, "the copy was closed");
        assert_eq!(
            b.remote().ring_room(),
            room,
            "the sender's reservation is back"
        );
        assert_eq!(b.rings[0].lost, 0);
        // The socket the sweep had to skip still works.
        b.send(kept, bytes::Bytes::from_static(b"still here").into());
        let mut got = [0u8; 10];
        for _ in 0..100 {
            b.turn(Some(Duration::from_millis(1)), &mut Vec::new())
                .expect("turn");
        }
        std::io::Read::read_exact(&mut kept_client, &mut got).expect("read");
        assert_eq!(&got, b"still here");
        drop(client);
    }

    /// Turns `lp` until it accepts a connection.
    fn accept_one(lp: &mut UringLoop) -> SockId {
        for _ in 0..1000 {
            let mut out = Vec::new();
            lp.turn(Some(Duration::from_millis(10)), &mut out)
                .expect("turn");
            if let Some(sock) = out.iter().find_map(|c| match c {
                Completion::Accepted { sock, .. } => Some(*sock),
                _ => None,
            }) {
                return sock;
            }
        }
        panic!("nothing accepted");
    }
}
