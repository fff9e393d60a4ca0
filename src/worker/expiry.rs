//! The worker's deadlines: hand-offs whose socket never came, connections that took
//! too long to drain or linger, and the forced closes when shutdown's grace ends.
//! Split out of `worker/mod.rs`, unchanged; the loop that calls it lives there.

use super::*;

impl<L: EventLoop> Worker<L> {
    /// Drops hand-offs whose socket did not come in time, and the loop's claims on
    /// them. The usual cause: the hand-off arrived after the loop had already closed
    /// the socket as unpaired (`adopt_pair_timeout_ms`), so it never will; without
    /// this the hand-off (with its buffered bytes) and the claim stayed forever.
    /// There is nothing to close: the socket is gone, its client saw the close, and
    /// the shard never saw the connection.
    pub(super) fn expire_handoffs(&mut self, now: Instant) {
        let Worker {
            id,
            io,
            waiting_handoffs,
            report,
            ..
        } = self;
        waiting_handoffs.expire(now, |transfer, (handoff, _)| {
            io.forget(transfer);
            report.handoffs_expired += 1;
            tracing::warn!(
                shard = *id,
                ?transfer,
                peer = %handoff.peer,
                expired = report.handoffs_expired,
                "hand-off whose socket never came: dropped"
            );
        });
    }

    /// Closes draining connections whose peer did not take the last bytes in time.
    pub(super) fn expire_drains(&mut self, now: Instant) {
        while let Some(&(deadline, conn, sock)) = self.draining.front() {
            if deadline > now {
                return;
            }
            self.draining.pop_front();
            let Some(Some(c)) = self.conns.get_mut(conn) else {
                continue;
            };
            // The entry may be stale: the connection closed and the id was reused.
            if c.sock == sock && c.state == State::Draining {
                self.report.drain_timeouts += 1;
                c.state = State::Closing;
                self.io.close(sock);
            }
        }
    }

    /// Closes lingering connections whose linger is over.
    pub(super) fn expire_lingers(&mut self, now: Instant) {
        let Worker {
            io, conns, linger, ..
        } = self;
        linger.expire(now, |conn, sock| {
            let Some(Some(c)) = conns.get_mut(conn) else {
                return;
            };
            // The entry may be stale: the peer closed first and the id was reused.
            if c.sock == sock && c.state == State::Lingering {
                c.state = State::Closing;
                io.close(sock);
            }
        });
    }

    /// Shutdown deadline passed: close what is still open, pending bytes or not.
    pub(super) fn force_close_all(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            if matches!(c.state, State::Open | State::Draining | State::Lingering) {
                self.report.forced_closes += 1;
                c.state = State::Closing;
                self.io.close(c.sock);
            }
        }
    }
}
