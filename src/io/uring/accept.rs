//! Accepting connections into direct descriptors, in the two modes (single-shot with
//! the peer address, multishot without), each armed accept holding a reservation in
//! its ring's `RingRoom` so accepts and descriptors sent by other loops never overrun
//! a table together. See the backend's module doc for the policy.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::opcode;
use io_uring::types::{CancelBuilder, DestinationSlot, Fd};

use super::ring::TABLE_HEADROOM;
use super::{ud, SockState, UringLoop, K_ACCEPT, K_ACCEPT_MULTI, K_CANCEL, REPORTED};
use crate::io::{sockaddr_to_std, Completion, SockId};

/// Single-shot accepts kept armed per ring and listener.
const ACCEPTS_PER_RING: usize = 4;

/// At most this many slots of a ring are filled by single-shot accepts in multishot
/// mode (see `UringLoop::multi_accept_margin`): a whole listen backlog, which bounds
/// what one multishot takes before its completions are read, and some to spare.
const MULTI_ACCEPT_MARGIN: i64 = crate::io::LISTEN_BACKLOG as i64 + 256;

/// Where the kernel writes the peer address of a single-shot accept. It may write
/// there until the accept's completion, or until the ring is torn down, which the
/// kernel finishes asynchronously after the ring fd closes: a loop dropped with an
/// accept armed leaks it (see `UringLoop::drop`).
pub(super) struct AcceptAddr {
    pub(super) storage: libc::sockaddr_storage,
    pub(super) len: libc::socklen_t,
}

#[cfg(test)]
thread_local! {
    /// `AcceptAddr`s freed on this thread, so a test can tell a leak from a free.
    pub(super) static ACCEPT_ADDRS_FREED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
impl Drop for AcceptAddr {
    fn drop(&mut self) {
        ACCEPT_ADDRS_FREED.with(|n| n.set(n.get() + 1));
    }
}

pub(super) struct AcceptSlot {
    pub(super) ring: u8,
    pub(super) armed: bool,
    /// The armed accept reserved a slot in its ring's `RingRoom` (false: the one
    /// over-capacity accept of a full loop).
    pub(super) counted: bool,
    /// Boxed so the kernel's pointer stays valid while the slot vector grows.
    pub(super) addr: Box<AcceptAddr>,
}

/// The multishot accept of one listener (multishot mode).
#[derive(Default)]
pub(super) struct MultiAccept {
    pub(super) ring: u8,
    pub(super) armed: bool,
    /// Holds a reservation in its ring's `RingRoom` for the next connection (false: its
    /// ring ran out of room, or accepting stopped, and a cancel is on its way).
    pub(super) counted: bool,
    pub(super) cancel_sent: bool,
    /// Bumped at every arming, so a cancel names only the accept it was meant for.
    pub(super) generation: u16,
}

pub(super) struct Listener {
    pub(super) socket: Option<TcpListener>,
    pub(super) slots: Vec<AcceptSlot>,
    pub(super) multi: MultiAccept,
}

impl Listener {
    pub(super) fn any_armed(&self) -> bool {
        self.multi.armed || self.slots.iter().any(|s| s.armed)
    }
}

fn multi_payload(li: usize, generation: u16) -> u64 {
    (u64::from(generation) << 16) | li as u64
}

impl UringLoop {
    pub(super) fn arm_accepts(&mut self) {
        if !self.accepting {
            return;
        }
        // Rings fill in order (accepts go to the first ring with room only), so the
        // buffer pools of later rings stay untouched until they are needed. Each armed
        // accept holds a reservation in its ring's `RingRoom`, shared with the loops
        // that send us descriptors, so the two can never overrun a table together.
        let room_ring = (0..self.rings.len()).find(|&r| self.room(r).free() > 0);
        // Multishot on the first ring with more than the margin left, which is not
        // always `room_ring`: a ring down to its margin hands the multishot to the next
        // one at once. Filling its last slots with single-shot accepts first (a few per
        // turn) stalled the listener during a storm: 4,352 slots at a few hundred a
        // second overflowed the listen backlog (18,000-25,000 `ListenOverflows` in a
        // 100k reconnect storm, each a SYN retried 1, 3, 7 s later). The tails fill
        // with descriptors other loops hand over (`reserve_adopt_slot` takes the first
        // ring with room) and, once no ring is above its margin, single-shot accepts.
        let margin = self.multi_accept_margin();
        // Arming takes a reservation, and a multishot is cancelled once its ring is down
        // to the margin after taking its next one (`on_accept_multi`): a ring is armed
        // on only with more than that left, or it would flap by one slot.
        let multi_ring = (0..self.rings.len())
            .find(|&r| self.room(r).free() > margin + 1)
            .filter(|_| self.multishot_accept);
        for li in 0..self.listeners.len() {
            let Some(fd) = self.listeners[li].socket.as_ref().map(|l| l.as_raw_fd()) else {
                continue;
            };
            let m = &self.listeners[li].multi;
            // An armed multishot stays on its ring while that ring is above the margin,
            // unless an earlier ring has twice the margin free again: one close on a ring
            // at its margin must not move it back and forth.
            let on = m.ring as usize;
            let stays = m.armed
                && m.counted
                && !m.cancel_sent
                && self.room(on).free() > margin
                && multi_ring.map_or(true, |f| f >= on || self.room(f).free() <= 2 * margin);
            if m.armed {
                // On another ring than the one to fill now (an earlier one has room
                // again, or its own is down to the margin): cancelled there, armed
                // again after its last completion.
                if m.counted && !m.cancel_sent && !stays {
                    self.cancel_accept_multi(li);
                }
            } else if let Some(r) = multi_ring {
                if self.room(r).try_take() {
                    self.arm_accept_multi(li, r, fd);
                }
            }
            // Single-shot accepts only once no multishot is (or can be) armed.
            let single = multi_ring.is_none() && !stays;
            for si in 0..self.listeners[li].slots.len() {
                let slot = &self.listeners[li].slots[si];
                let ring = slot.ring as usize;
                if slot.armed && !slot.counted {
                    // The over-capacity accept becomes a normal one once its ring has
                    // room again (else it would drop the next connection while a
                    // counted accept armed beside it holds the room).
                    if self.room(ring).try_take() {
                        self.listeners[li].slots[si].counted = true;
                    }
                    continue;
                }
                if !single || slot.armed || room_ring != Some(ring) || !self.room(ring).try_take() {
                    continue;
                }
                self.arm_accept(li, si, fd, true);
            }
            // Nothing armed (every table is full, or other loops took the room first):
            // keep one accept armed anyway in the headroom. What it takes is kept if
            // room came back meanwhile, else closed at once and counted, rather than
            // left to time out in the backlog.
            if !self.listeners[li].any_armed() {
                let si = self.listeners[li]
                    .slots
                    .iter()
                    .position(|s| self.rings[s.ring as usize].physically_free());
                if let Some(si) = si {
                    self.arm_accept(li, si, fd, false);
                }
            }
        }
    }

    pub(super) fn arm_accept(&mut self, li: usize, si: usize, fd: RawFd, counted: bool) {
        let slot = &mut self.listeners[li].slots[si];
        let ring = slot.ring as usize;
        slot.armed = true;
        slot.counted = counted;
        slot.addr.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let addr_ptr =
            (&mut slot.addr.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
        let len_ptr = &mut slot.addr.len as *mut libc::socklen_t;
        let e = opcode::Accept::new(Fd(fd), addr_ptr, len_ptr)
            .file_index(Some(DestinationSlot::auto_target()))
            .build()
            .user_data(ud(K_ACCEPT, ((li as u64) << 16) | si as u64));
        self.rings[ring].accepts_armed += 1;
        self.rings[ring].push(e);
    }

    /// Slots of a ring left to single-shot accepts in multishot mode. A multishot accept
    /// takes the whole listen backlog in one go, before its completions are read: a
    /// burst larger than its ring's room lands in the headroom, over capacity, closed
    /// and counted (or ENFILE, dropped by the kernel and counted) although the next
    /// ring may have room. Stopping it a listen backlog before the end means a connect
    /// storm (100k devices reconnecting after a restart) cannot overrun a ring, and keeps
    /// a loop near full on exactly the single-shot path (one over-capacity accept at a
    /// time). Tables too small for that (tests) keep half for single-shot.
    pub(super) fn multi_accept_margin(&self) -> i64 {
        let per_ring = i64::from(self.rings[0].table_size.saturating_sub(TABLE_HEADROOM));
        (per_ring / 2).min(MULTI_ACCEPT_MARGIN)
    }

    /// Arms listener `li`'s multishot accept on `ring`, which reserved a slot for it.
    pub(super) fn arm_accept_multi(&mut self, li: usize, ring: usize, fd: RawFd) {
        let m = &mut self.listeners[li].multi;
        m.ring = ring as u8;
        m.armed = true;
        m.counted = true;
        m.cancel_sent = false;
        m.generation = m.generation.wrapping_add(1);
        let e = opcode::AcceptMulti::new(Fd(fd))
            .allocate_file_index(true)
            .build()
            .user_data(ud(K_ACCEPT_MULTI, multi_payload(li, m.generation)));
        self.rings[ring].accepts_armed += 1;
        self.rings[ring].push(e);
        self.stats.accept_multi_armed += 1;
    }

    /// Cancels listener `li`'s multishot accept (once); its last completion re-arms it.
    pub(super) fn cancel_accept_multi(&mut self, li: usize) {
        let m = &mut self.listeners[li].multi;
        if !m.armed || m.cancel_sent {
            return;
        }
        m.cancel_sent = true;
        let ring = m.ring as usize;
        let e = opcode::AsyncCancel::new(ud(K_ACCEPT_MULTI, multi_payload(li, m.generation)))
            .build()
            .user_data(ud(K_CANCEL, u64::from(u32::MAX)));
        self.rings[ring].push(e);
    }

    /// Makes a counted accept of listener `li` armed on `ring` uncounted, handing its
    /// reservation to the caller (a multishot accept giving it up is cancelled).
    pub(super) fn steal_accept_reservation(&mut self, li: usize, ring: usize) -> bool {
        let Some(listener) = self.listeners.get_mut(li) else {
            return false;
        };
        if let Some(s) = listener
            .slots
            .iter_mut()
            .find(|s| s.armed && s.counted && s.ring as usize == ring)
        {
            s.counted = false;
            return true;
        }
        let m = &mut listener.multi;
        if m.armed && m.counted && m.ring as usize == ring {
            m.counted = false;
            self.cancel_accept_multi(li);
            return true;
        }
        false
    }

    pub(super) fn on_accept(
        &mut self,
        ring: usize,
        li: usize,
        si: usize,
        res: i32,
        out: &mut Vec<Completion>,
    ) {
        self.rings[ring].accepts_armed = self.rings[ring].accepts_armed.saturating_sub(1);
        let Some(listener) = self.listeners.get_mut(li) else {
            return;
        };
        let Some(slot) = listener.slots.get_mut(si) else {
            return;
        };
        slot.armed = false;
        let counted = slot.counted;
        let peer =
            sockaddr_to_std(&slot.addr.storage).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        // A listener whose accepts have all ended may close once we stopped accepting.
        if !self.accepting && !listener.any_armed() {
            listener.socket = None;
        }
        if res < 0 {
            if counted {
                self.room(ring).give_back();
            }
            self.on_accept_error(ring, -res);
            return;
        }
        let sock = self.insert_open(ring, res as u32);
        // The over-capacity accept keeps its connection only if room came back, or by
        // taking over the reservation of a counted accept armed on the same ring.
        let keep = self.accepting
            && (counted || self.room(ring).try_take() || self.steal_accept_reservation(li, ring));
        self.settle_accepted(ring, li, sock, counted, keep, peer, out);
    }

    /// A completion of listener `li`'s multishot accept on `ring`; `more`: it stays armed.
    pub(super) fn on_accept_multi(
        &mut self,
        ring: usize,
        li: usize,
        res: i32,
        more: bool,
        out: &mut Vec<Completion>,
    ) {
        let Some(listener) = self.listeners.get_mut(li) else {
            return;
        };
        let m = &mut listener.multi;
        if !m.armed || m.ring as usize != ring {
            tracing::warn!(
                loop_id = self.id,
                ring,
                li,
                res,
                "stray multishot accept completion"
            );
            return;
        }
        let counted = m.counted;
        if !more {
            m.armed = false;
            m.counted = false;
            m.cancel_sent = false;
            self.rings[ring].accepts_armed = self.rings[ring].accepts_armed.saturating_sub(1);
            if !self.accepting && !listener.any_armed() {
                listener.socket = None;
            }
        }
        if res < 0 {
            // Errors always end a multishot accept: the spare reservation is unused.
            if counted {
                self.room(ring).give_back();
            }
            self.on_accept_error(ring, -res);
            return;
        }
        let sock = self.insert_open(ring, res as u32);
        // A counted accept's reservation goes to this connection. Still armed, it needs
        // one for the next; none left: cancelled, and until the cancel lands it is the
        // over-capacity accept.
        if counted && more {
            let refill = self.accepting && self.room(ring).try_take();
            if !refill {
                self.listeners[li].multi.counted = false;
            }
            if !refill || self.room(ring).free() <= self.multi_accept_margin() {
                self.cancel_accept_multi(li);
            }
        }
        let keep = self.accepting
            && (counted
                || self.room(ring).try_take()
                || self.steal_accept_reservation(li, ring)
                || self.borrow_room(ring, sock));
        self.settle_accepted(
            ring,
            li,
            sock,
            counted,
            keep,
            SocketAddr::from(([0, 0, 0, 0], 0)),
            out,
        );
    }

    /// Keeps `sock`, which a multishot accept took into `ring`'s headroom after the
    /// ring's room ran out (the tail of a burst, before the cancel landed), by charging
    /// it to another ring's room: the loop stays within its capacity, and `ring` keeps
    /// at least half its headroom for the over-capacity accept and accounting slips.
    pub(super) fn borrow_room(&mut self, ring: usize, sock: SockId) -> bool {
        if self.rings[ring].borrowed >= TABLE_HEADROOM / 2 {
            return false;
        }
        let Some(from) = (0..self.rings.len()).find(|&r| r != ring && self.room(r).try_take())
        else {
            return false;
        };
        if let Some(s) = self.socks.get_mut(sock as usize) {
            s.room = from as u8;
        }
        self.rings[ring].borrowed += 1;
        true
    }

    pub(super) fn on_accept_error(&mut self, ring: usize, errno: i32) {
        match errno {
            libc::ENFILE | libc::EMFILE => {
                // The table is full: the kernel already dropped this connection.
                self.stats.accept_dropped_full += 1;
                tracing::warn!(
                    loop_id = self.id,
                    ring,
                    "file table full: connection dropped"
                );
            }
            libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ECONNABORTED | libc::EPROTO => {}
            errno => {
                self.stats.accept_errors += 1;
                tracing::warn!(errno, "accept failed");
            }
        }
    }

    /// A connection accepted into `ring` as `sock`: reported, or (`keep` false) closed
    /// and counted. `counted`: its accept had reserved its slot.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn settle_accepted(
        &mut self,
        ring: usize,
        li: usize,
        sock: SockId,
        counted: bool,
        keep: bool,
        peer: SocketAddr,
        out: &mut Vec<Completion>,
    ) {
        if !counted && !keep {
            // Borrowed from the headroom; the release gives it back.
            self.room(ring).take_anyway();
        }
        if !keep {
            // Over capacity (the overflow accept), or accepted after shutdown began:
            // dropped and counted.
            self.stats.accept_dropped_full += 1;
            tracing::warn!(
                loop_id = self.id,
                "connection limit reached: connection dropped"
            );
            if let Some(s) = self.socks.get_mut(sock as usize) {
                s.flags.set(REPORTED, false);
                s.state = SockState::Closing;
            }
            self.close_slot(sock);
        } else {
            self.stats.accepted += 1;
            out.push(Completion::Accepted {
                sock,
                peer,
                listener: li as u8,
            });
        }
    }

    pub(super) fn listen_on(&mut self, listener: TcpListener) -> io::Result<()> {
        let mut slots = Vec::new();
        for ring in 0..self.rings.len() {
            for _ in 0..ACCEPTS_PER_RING {
                slots.push(AcceptSlot {
                    ring: ring as u8,
                    armed: false,
                    counted: false,
                    addr: Box::new(AcceptAddr {
                        // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
                        storage: unsafe { std::mem::zeroed() },
                        len: 0,
                    }),
                });
            }
        }
        self.listeners.push(Listener {
            socket: Some(listener),
            slots,
            multi: MultiAccept::default(),
        });
        Ok(())
    }

    pub(super) fn stop_accepts(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for li in 0..self.listeners.len() {
            let Some(fd) = self.listeners[li].socket.as_ref().map(|l| l.as_raw_fd()) else {
                continue;
            };
            if !self.listeners[li].any_armed() {
                self.listeners[li].socket = None;
                continue;
            }
            // The cancel by fd below ends it; it must not take a reservation meanwhile.
            let m = &mut self.listeners[li].multi;
            if m.armed && m.counted {
                m.counted = false;
                m.cancel_sent = true;
                let ring = m.ring as usize;
                self.room(ring).give_back();
            }
            for r in 0..self.rings.len() {
                let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                    .build()
                    .user_data(ud(K_CANCEL, u64::from(u32::MAX)));
                self.rings[r].push(e);
            }
        }
    }
}
