//! The send path: one send in flight per socket, resubmitted with the rest on a
//! short write; its completion tells the worker, or lets a closing or migrating
//! socket move on. A chain of one segment goes out as `SEND`; several segments
//! (headers and shared payloads) as one `SENDMSG` over an iovec array, so a shared
//! payload is written from its one copy. A short write advances the chain to the
//! byte the kernel stopped at (no copy) and sends the rest.

use io_uring::opcode;
use io_uring::types::Fixed;

use super::{ud, SockState, UringLoop, K_SEND};
use crate::io::{Completion, SockId};
use crate::tx::{TxChain, MAX_IOV};

/// The `msghdr` and iovec array of one `SENDMSG`: the kernel reads them until the
/// completion, so they live boxed in the socket, at a stable address, until then.
/// The array is sized to the chain (at most `MAX_IOV`), not to the limit: a header
/// and a payload take 32 bytes, which a thousand stalled subscribers each hold.
pub(super) struct IovBuf {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
}

/// A socket's send in flight, boxed in its `Sock` until the completion.
pub(super) struct InFlight {
    /// The rest of the chain being sent.
    chain: TxChain,
    /// The `SENDMSG` header and iovecs of a chain of several segments, kept (at a
    /// stable address) across its resubmissions.
    iov: Option<Box<IovBuf>>,
}

impl UringLoop {
    pub(super) fn submit_send(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let Some(f) = s.tx.as_mut() else { return };
        let tx = &f.chain;
        let e = if tx.segments() <= 1 {
            let first = tx.chunks().next().unwrap_or(&[]);
            let len = first.len().min(u32::MAX as usize) as u32;
            opcode::Send::new(Fixed(s.slot), first.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let b = f.iov.get_or_insert_with(|| {
                Box::new(IovBuf {
                    // SAFETY: msghdr is a plain C struct of integers and pointers, for
                    // which all-zero is a valid (empty) value.
                    hdr: unsafe { std::mem::zeroed() },
                    iov: Vec::new(),
                })
            });
            b.iov.clear();
            b.iov.reserve_exact(tx.segments().min(MAX_IOV));
            b.iov.extend(tx.chunks().take(MAX_IOV).map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            }));
            b.hdr.msg_iov = b.iov.as_mut_ptr();
            b.hdr.msg_iovlen = b.iov.len();
            opcode::SendMsg::new(Fixed(s.slot), &b.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        // The pointers above stay valid until the completion: the chain's segments
        // are reference-counted heap buffers held in `s.tx`, and the iovecs are boxed;
        // neither is touched before `on_send` (and `Drop` leaks both if the loop goes
        // first).
        let e = e.user_data(ud(K_SEND, sock as u64));
        let ring = s.ring as usize;
        self.rings[ring].push(e);
    }

    pub(super) fn on_send(&mut self, sock: SockId, res: i32) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let Some(tx) = s.tx.as_mut().map(|f| &mut f.chain) else {
            return;
        };
        if res >= 0 && (res as usize) < tx.len() && s.state == SockState::Open {
            // Short write, or a chain longer than one SENDMSG takes: send the rest.
            tx.advance(res as usize);
            self.stats.sends_resumed += 1;
            self.submit_send(sock);
            return;
        }
        let errno = if res < 0 { -res } else { 0 };
        // The iovecs go with it: kept only while a chain of several segments is sent.
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

    pub(super) fn queue_send(&mut self, sock: SockId, data: TxChain) {
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
        s.tx = Some(Box::new(InFlight {
            chain: data,
            iov: None,
        }));
        self.submit_send(sock);
    }
}
