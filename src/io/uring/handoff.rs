//! Moving a connection to another loop: its direct descriptor goes over `MSG_RING`
//! into a slot reserved in the target's table, paired there with the worker's mesh
//! hand-off by a ticket; unpaired arrivals are closed after a timeout. Also the
//! `MSG_RING` doorbells that wake a parked loop, retried when transiently refused.

use std::time::Instant;

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{DestinationSlot, Fd, Fixed};

use super::{ud, SockState, UringLoop, K_ADOPT, K_DOORBELL, K_SEND_FD};
use crate::io::{Completion, RemoteKind, SockId, Transfer};

/// Capacity the hand-off tables may keep while empty (see `shrink_handoff_tables`).
const HANDOFF_TABLE_KEPT: usize = 64;

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
        let target = match self.peers.get(to) {
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
        let ticket = ((self.id as u64) << 40) | (self.next_ticket & ((1 << 40) - 1));
        self.next_ticket += 1;
        s.state = SockState::SendingFd {
            ticket,
            to: to as u16,
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
                s.reported = false;
                s.state = SockState::Closing;
            }
            self.close_slot(sock);
        }
    }

    pub(super) fn on_send_fd(&mut self, sock: SockId, res: i32) {
        tracing::debug!(loop_id = self.id, sock, res, "descriptor sent");
        let sent = match self.socks.get(sock as usize).map(|s| s.state) {
            Some(SockState::SendingFd { ticket, to, ring }) => Some((ticket, to, ring)),
            _ => None,
        };
        let result = match (res >= 0, sent) {
            (true, Some((ticket, _, _))) => Ok(Transfer(ticket)),
            (false, Some((ticket, to, _))) if res == -libc::EOVERFLOW => {
                // The kernel installed the descriptor in the target's table but could
                // not post its CQE, and the slot number is lost with it: nobody can
                // adopt or close that copy. Its reserved slot stays taken (it is in
                // use), and our close shuts the connection down so the client is not
                // left hanging on it. One table slot leaks per occurrence.
                self.stats.migrate_descriptor_lost += 1;
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
        s.shutdown_on_close = result == Err(libc::EOVERFLOW) && sent.is_some();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{EventLoop, LoopOptions, Remote, RingRoom};
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
}
