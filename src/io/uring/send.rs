//! The send path: one `SEND` in flight per socket, resubmitted with the rest on a
//! short write; its completion tells the worker, or lets a closing or migrating
//! socket move on.

use bytes::Bytes;
use io_uring::opcode;
use io_uring::types::Fixed;

use super::{ud, SockState, UringLoop, K_SEND};
use crate::io::{Completion, SockId};

impl UringLoop {
    pub(super) fn submit_send(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        let Some(tx) = &s.tx else { return };
        let len = tx.len().min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(Fixed(s.slot), tx.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(K_SEND, sock as u64));
        let ring = s.ring as usize;
        self.rings[ring].push(e);
    }

    pub(super) fn on_send(&mut self, sock: SockId, res: i32) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let Some(tx) = s.tx.as_mut() else { return };
        if res >= 0 && (res as usize) < tx.len() && s.state == SockState::Open {
            // Short write: send the rest.
            let _ = tx.split_to(res as usize);
            self.submit_send(sock);
            return;
        }
        let errno = if res < 0 { -res } else { 0 };
        s.tx = None;
        match s.state {
            SockState::Open => self.pending.push(Completion::SendDone { sock, errno }),
            SockState::Migrating { .. } => {
                self.pending.push(Completion::SendDone { sock, errno });
                self.maybe_send_fd(sock);
            }
            SockState::Closing | SockState::SendingFd { .. } => self.maybe_release(sock),
        }
    }

    pub(super) fn queue_send(&mut self, sock: SockId, data: Bytes) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if data.is_empty() || s.state != SockState::Open {
            return;
        }
        if s.tx.is_some() {
            // The worker keeps one send in flight per socket; if that ever slips, the
            // bytes are lost, so say so loudly rather than silently.
            self.stats.send_refused_busy += 1;
            tracing::error!(
                loop_id = self.id,
                sock,
                "send while one is in flight: dropped"
            );
            return;
        }
        s.tx = Some(data);
        self.submit_send(sock);
    }
}
