//! The io_uring receive path: arming and cancelling a socket's multishot receive,
//! turning its completions into `Completion::Recv`/`RecvEnd` (or a hand-off step for
//! a migrating socket), and re-arming receives that ran out of provided buffers a
//! pool's share per turn. Split out of `io/uring/mod.rs`, unchanged.

use super::*;

impl UringLoop {
    pub(super) fn arm_recv(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.recv_armed || s.state != SockState::Open {
            return;
        }
        s.recv_armed = true;
        let (ring, slot) = (s.ring as usize, s.slot);
        let e = opcode::RecvMulti::new(Fixed(slot), 0)
            .build()
            .user_data(ud(K_RECV, sock as u64));
        self.rings[ring].push(e);
    }
    pub(super) fn cancel_recv(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        if !s.recv_armed {
            return;
        }
        let e = opcode::AsyncCancel::new(ud(K_RECV, sock as u64))
            .build()
            .user_data(ud(K_CANCEL, sock as u64));
        let ring = s.ring as usize;
        self.rings[ring].push(e);
    }
    /// Re-arms receives that ran out of buffers, at most a quarter of each ring's pool
    /// per turn, and no more than the buffers posted to the kernel right now: a
    /// multishot receive picks its buffer when it is armed, so one armed into an
    /// empty pool ends at once with `ENOBUFS` again, data or not (a wasted round
    /// trip, counted again). The buffers used last turn were given back during its
    /// dispatch, so the pool is posted again by the next turn.
    pub(super) fn rearm_starved(&mut self) {
        for r in 0..self.rings.len() {
            let bufs = &self.rings[r].bufs;
            let mut budget = rearm_budget(bufs.count, bufs.posted());
            while budget > 0 {
                let Some(sock) = self.rings[r].starved.pop_front() else {
                    break;
                };
                let Some(s) = self.socks.get_mut(sock as usize) else {
                    continue;
                };
                if !s.starved || s.ring as usize != r {
                    continue;
                }
                s.starved = false;
                budget -= 1;
                self.arm_recv(sock);
            }
        }
    }
    pub(super) fn on_recv(
        &mut self,
        ring: usize,
        sock: SockId,
        res: i32,
        flags: u32,
        out: &mut Vec<Completion>,
    ) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.rings[ring].bufs.taken();
        }
        let Some(s) = self.socks.get_mut(sock as usize) else {
            // Cannot happen: a socket is released only after its receive ended. Keep the
            // buffer anyway.
            if let Some(bid) = bid {
                self.rings[ring].bufs.give_back(bid);
            }
            return;
        };
        if !more {
            s.recv_armed = false;
        }
        let state = s.state;
        if res > 0 {
            match bid {
                Some(bid) => out.push(Completion::Recv {
                    sock,
                    buf: BufRef {
                        group: ring as u16,
                        bid,
                        offset: 0,
                        len: res as u32,
                    },
                }),
                None => tracing::warn!(sock, res, "recv completion without a buffer"),
            }
            if !more {
                match state {
                    SockState::Open => self.arm_recv(sock),
                    SockState::Migrating { .. } => self.maybe_send_fd(sock),
                    _ => self.maybe_release(sock),
                }
            }
            return;
        }
        if let Some(bid) = bid {
            self.rings[ring].bufs.give_back(bid);
        }
        match state {
            SockState::Open => {
                if res == -libc::ENOBUFS {
                    // Out of provided buffers. Re-arming at once would send every
                    // starved socket of a burst back into the same empty pool (a storm
                    // of 100k connects made a million ENOBUFS completions); they wait
                    // in `starved` and are re-armed a pool's share per turn.
                    self.stats.recv_nobufs += 1;
                    self.rings[ring].bufs.widen();
                    if !more {
                        if let Some(s) = self.socks.get_mut(sock as usize) {
                            if !s.starved {
                                s.starved = true;
                                self.rings[ring].starved.push_back(sock);
                            }
                        }
                    }
                } else if !more {
                    out.push(Completion::RecvEnd { sock, errno: -res });
                }
            }
            SockState::Migrating { .. } => self.maybe_send_fd(sock),
            SockState::Closing | SockState::SendingFd { .. } => self.maybe_release(sock),
        }
    }
}

/// How many starved receives of a ring to re-arm this turn: a quarter of its pool
/// (the rest wait a turn, so a burst does not empty the pool at once), and at most
/// one per buffer posted now.
pub(super) fn rearm_budget(count: u16, posted: u16) -> usize {
    (usize::from(count) / 4).max(1).min(usize::from(posted))
}
