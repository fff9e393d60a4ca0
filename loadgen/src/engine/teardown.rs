//! A loadgen client's teardown after DISCONNECT: who closes the TCP connection first,
//! and how long loadgen waits for the broker to do it.
//!
//! MQTT has the server close the connection once it read DISCONNECT. On loopback
//! each side's sends run the other side's TCP receive path in the sender's thread, so
//! the order decides what loadgen's CPU figure carries: when loadgen closes first it
//! runs the broker socket's FIN handling and ends up holding the TIME_WAIT. So a
//! plain TCP client waits for the broker's end of stream (its multishot receive ends
//! with 0, nothing left to cancel) and then closes with SO_LINGER {1, 0}: an RST, which
//! the broker's already closed socket drops without a second FIN/ACK exchange or a
//! TIME_WAIT on either side. Connections a broker keeps open once a thread's teardown
//! made no progress for `EOF_WAIT_NS` get the ordinary close (cancel the receive,
//! close, FIN) and are counted in `ThreadResult::closed_before_broker`.

use super::*;

/// How long loadgen waits for the broker to close while none of this thread's
/// connections makes progress (a DISCONNECT sent or a broker close seen). Progress,
/// not a deadline per client: at load ~20 a one-loop ringmq took over 2 s to read and
/// close 16k DISCONNECTs, closing steadily all along. A server that never closes (the
/// test hold server) costs the run this much, well inside `CLOSE_GRACE_NS`.
pub(super) const EOF_WAIT_NS: u64 = 1_000_000_000;
const _: () = assert!(EOF_WAIT_NS < CLOSE_GRACE_NS);

/// SO_LINGER {on, 0 s}: close sends RST and frees the socket at once. Set only once
/// the broker's FIN arrived: before that an RST could discard unread bytes at the
/// broker (the DISCONNECT itself).
static LINGER_ABORT: libc::linger = libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

/// Clients whose DISCONNECT was sent and whose broker has not closed yet, and when
/// this thread last saw teardown progress. Bounded: a client is pushed at most once
/// (`Client::awaiting_eof`), so never more than the thread's clients.
#[derive(Default)]
pub(super) struct EofWaits {
    waiting: Vec<usize>,
    progress_ns: u64,
}

impl EofWaits {
    /// A DISCONNECT was sent at `now`: wait for its broker's close.
    pub(super) fn push(&mut self, now: u64, idx: usize) {
        self.waiting.push(idx);
        self.progress_ns = self.progress_ns.max(now);
    }

    /// A broker closed one of this thread's connections at `now`.
    pub(super) fn progressed(&mut self, now: u64) {
        self.progress_ns = self.progress_ns.max(now);
    }

    /// Every client still listed once nothing progressed for `EOF_WAIT_NS`, and none
    /// before. Clients that closed meanwhile come out too; the caller skips them.
    pub(super) fn take_expired(&mut self, now: u64) -> Vec<usize> {
        if self.waiting.is_empty() || now.saturating_sub(self.progress_ns) <= EOF_WAIT_NS {
            return Vec::new();
        }
        std::mem::take(&mut self.waiting)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl Worker {
    /// Whether this client, its DISCONNECT sent, waits for the broker to close first.
    /// TLS and WebSocket keep the ordinary close: after DISCONNECT their brokers may
    /// still send (close_notify, a close frame) and the byte paths would have to
    /// expect it.
    pub(super) fn waits_for_broker_close(&self, idx: usize) -> bool {
        let c = &self.clients[idx];
        c.disconnect_queued && c.tls.is_none() && c.ws.is_none()
    }

    /// DISCONNECT is out: keep the receive armed and wait for the broker's FIN.
    pub(super) fn await_broker_close(&mut self, idx: usize, now: u64) {
        let c = &mut self.clients[idx];
        if c.awaiting_eof || c.close_submitted {
            return;
        }
        c.awaiting_eof = true;
        self.eof_waits.push(now, idx);
    }

    /// Clients whose broker did not close while this thread's teardown stalled for
    /// `EOF_WAIT_NS`: loadgen closes them (FIN) as it would without the wait. Still a
    /// clean close (DISCONNECT was sent).
    pub(super) fn expire_eof_waits(&mut self, now: u64) {
        for idx in self.eof_waits.take_expired(now) {
            let c = &self.clients[idx];
            if c.awaiting_eof && !c.close_submitted {
                self.result.closed_before_broker += 1;
                self.submit_close(idx);
            }
        }
    }

    /// Ends `idx`'s attempt and marks it closing; false when its close was already
    /// submitted (the broker's close and loadgen's own can both reach it).
    fn mark_closing(&mut self, idx: usize) -> bool {
        self.end_attempt(idx);
        let c = &mut self.clients[idx];
        if c.close_submitted {
            return false;
        }
        c.close_submitted = true;
        c.state = St::Dead;
        true
    }

    /// The broker closed (end of stream on the receive, which is over): close with an
    /// RST, no cancel needed.
    pub(super) fn close_after_broker(&mut self, idx: usize) {
        if !self.mark_closing(idx) {
            return;
        }
        self.eof_waits.progressed(now_ns());
        let fixed = types::Fixed(idx as u32);
        let linger = &LINGER_ABORT as *const libc::linger as *const libc::c_void;
        // Hard link: the close runs even if the option failed (then it sends a FIN).
        let so = opcode::SetSockOpt::new(
            fixed,
            libc::SOL_SOCKET as u32,
            libc::SO_LINGER as u32,
            linger,
            std::mem::size_of::<libc::linger>() as u32,
        )
        .build()
        .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS)
        .user_data(ud(OP_LINGER, idx));
        let cl = opcode::Close::new(fixed)
            .build()
            .user_data(ud(OP_CLOSE, idx));
        self.push(&[so, cl]);
    }

    /// Loadgen closes first: cancel the multishot receive (it holds a reference to
    /// the socket), then close the slot: the last reference goes and the kernel sends
    /// FIN. Both run inline; SHUTDOWN would be punted to io-wq threads and crawl at
    /// 100k connections.
    pub(super) fn submit_close(&mut self, idx: usize) {
        if !self.mark_closing(idx) {
            return;
        }
        let fixed = types::Fixed(idx as u32);
        let sh = opcode::AsyncCancel::new(ud(OP_RECV, idx))
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(ud(OP_CANCEL, idx));
        let cl = opcode::Close::new(fixed)
            .build()
            .user_data(ud(OP_CLOSE, idx));
        self.push(&[sh, cl]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_expires_while_teardown_progresses() {
        let mut w = EofWaits::default();
        assert!(w.take_expired(u64::MAX).is_empty());
        w.push(100, 7);
        w.push(200, 3);
        assert!(w.take_expired(200 + EOF_WAIT_NS).is_empty());
        // A broker close seen later moves the point the wait counts from.
        w.progressed(200 + EOF_WAIT_NS);
        assert!(w.take_expired(200 + 2 * EOF_WAIT_NS).is_empty());
        assert_eq!(w.take_expired(201 + 2 * EOF_WAIT_NS), vec![7, 3]);
        assert!(w.is_empty());
        assert!(w.take_expired(u64::MAX).is_empty());
    }

    #[test]
    fn progress_from_the_past_does_not_move_the_wait_back() {
        let mut w = EofWaits::default();
        w.push(1_000, 1);
        w.progressed(10);
        assert!(w.take_expired(1_000 + EOF_WAIT_NS).is_empty());
        assert_eq!(w.take_expired(1_001 + EOF_WAIT_NS), vec![1]);
    }
}
