//! The io_uring receive path: arming and cancelling a socket's multishot receive,
//! turning its completions into `Completion::Recv`/`RecvEnd` (or a hand-off step for
//! a migrating socket), re-arming receives that ran out of provided buffers a
//! pool's share per turn, and an idle loop's recall of the buffers posted beyond a
//! pool's window.

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
                if !s.flags.has(STARVED) || s.ring as usize != r {
                    continue;
                }
                s.flags.set(STARVED, false);
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
                            if !s.flags.has(STARVED) {
                                s.flags.set(STARVED, true);
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

/// Enters that flush the kernel's overflow list during a recall before it gives up
/// on telling taken entries from untaken ones.
const RECALL_OVERFLOW_FLUSHES: usize = 8;

impl UringLoop {
    /// Takes back the buffers posted beyond each ring's narrowed window
    /// (`BufPool::recall`), called when the loop is idle. The ring's buffer
    /// registration is withdrawn first, so no receive can take an entry any more (one
    /// that tries ends with `ENOBUFS` and waits in `starved` as usual, its bytes still
    /// in the socket). Then every completion the ring holds is reported: each names
    /// the buffer it took, and the kernel takes entries in ring order, so the last
    /// `posted` entries were never taken. A receive copies into its buffer in this
    /// thread's task work (sockets are polled, never handed to io-wq: no
    /// `IOSQE_ASYNC` here) and posts the completion in the same run, so once the
    /// registration is gone no write into a recalled buffer is pending. Their pages
    /// are released and the ring registered again with the window. Returns whether
    /// completions went into `out`.
    pub(super) fn recall_posted_buffers(&mut self, out: &mut Vec<Completion>) -> io::Result<bool> {
        let mut withdrawn = Vec::new();
        for r in 0..self.rings.len() {
            let ring = &mut self.rings[r];
            if !ring.bufs.overposted() || ring.uring.submission().cq_overflow() {
                continue;
            }
            match ring.uring.submitter().unregister_buf_ring(0) {
                Ok(()) => withdrawn.push(r),
                Err(e) => {
                    tracing::debug!(ring = r, error = %e, "buffer ring not withdrawn; nothing recalled")
                }
            }
        }
        if withdrawn.is_empty() {
            return Ok(false);
        }
        let before = out.len();
        self.reap(out);
        // A completion the queue had no room for waits in the kernel's overflow list
        // until an enter flushes it.
        for _ in 0..RECALL_OVERFLOW_FLUSHES {
            let mut flushed = false;
            for &r in &withdrawn {
                let uring = &mut self.rings[r].uring;
                if uring.submission().cq_overflow() {
                    flushed = true;
                    if let Err(e) = uring.submit() {
                        if !transient(&e) {
                            return Err(e);
                        }
                    }
                }
            }
            if !flushed {
                break;
            }
            self.reap(out);
        }
        for &r in &withdrawn {
            let ring = &mut self.rings[r];
            if ring.uring.submission().cq_overflow() {
                // Taken entries whose completions still wait cannot be told from the
                // untaken ones: leave them all out of the pool (a taken one comes back
                // with its completion, an untaken one is lost to this pool) rather
                // than post a buffer the kernel may still be filling.
                let lost = ring.bufs.forget_posted();
                tracing::warn!(ring = r, lost, "completion overflow during a buffer recall");
            } else {
                let released = ring.bufs.recall();
                tracing::debug!(ring = r, released, "recalled posted receive buffers");
            }
            // SAFETY: as at `UringLoop::new`: the pool's mappings live in the same
            // `Ring` as the io_uring and are dropped after it, or leaked when
            // operations may remain; the ring memory is reset (tail 0) for the new
            // registration, which starts at head 0.
            unsafe {
                ring.uring.submitter().register_buf_ring_with_flags(
                    ring.bufs.ring_addr(),
                    ring.bufs.count,
                    0,
                    0,
                )?;
            }
            ring.bufs.refill();
        }
        Ok(out.len() > before)
    }
}

/// How many starved receives of a ring to re-arm this turn: a quarter of its pool
/// (the rest wait a turn, so a burst does not empty the pool at once), and at most
/// one per buffer posted now.
pub(super) fn rearm_budget(count: u16, posted: u16) -> usize {
    (usize::from(count) / 4).max(1).min(usize::from(posted))
}
