//! Outbound connections (the MQTT bridge's links to remote brokers) on io_uring: a
//! `SOCKET` straight into ring 0's table as a direct descriptor (a slot reserved in
//! its `RingRoom` first, like an accept), then a `CONNECT` on that slot. Neither blocks
//! the loop. Until the connect succeeds the socket is not in the socket table: a
//! failure closes the slot and gives the reservation back, and the worker only sees
//! `Completion::Connected` with the errno.

use std::net::SocketAddr;

use io_uring::opcode;
use io_uring::types::{DestinationSlot, Fixed};

use super::{ud, UringLoop, K_CONNECT, K_CONNECT_CLOSE, K_SOCKET};
use crate::io::Completion;

/// One connect in progress.
pub(super) struct PendingConnect {
    token: u64,
    /// Boxed: `CONNECT` reads the address through a pointer until the kernel has
    /// copied it (at submission), so it must not move while the slab grows.
    addr: Box<socket2::SockAddr>,
    /// The slot `SOCKET` allocated, once it completed.
    slot: Option<u32>,
    /// The connect failed with this errno; reported once the slot is closed.
    failed: i32,
}

impl UringLoop {
    pub(super) fn start_connect(&mut self, addr: SocketAddr, token: u64) {
        if !self.room(0).try_take() {
            self.pending.push(Completion::Connected {
                token,
                result: Err(libc::ENFILE),
            });
            return;
        }
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let id = self.connects.insert(PendingConnect {
            token,
            addr: Box::new(socket2::SockAddr::from(addr)),
            slot: None,
            failed: 0,
        });
        // No SOCK_CLOEXEC: a direct descriptor has no fd to inherit, and the kernel
        // refuses the flag with a fixed slot (EINVAL).
        let e = opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
            .file_index(Some(DestinationSlot::auto_target()))
            .build()
            .user_data(ud(K_SOCKET, id as u64));
        self.rings[0].push(e);
    }

    /// `SOCKET` completed: `res` is the slot, or -errno.
    pub(super) fn on_socket(&mut self, id: usize, res: i32) {
        if res < 0 {
            self.fail_connect(id, -res);
            return;
        }
        let slot = res as u32;
        let Some(p) = self.connects.get_mut(id) else {
            return;
        };
        p.slot = Some(slot);
        // Held by us: a sweep for unannounced descriptors must not close it.
        self.rings[0].set_known(slot, true);
        let e = opcode::Connect::new(Fixed(slot), p.addr.as_ptr(), p.addr.len())
            .build()
            .user_data(ud(K_CONNECT, id as u64));
        self.rings[0].push(e);
    }

    /// `CONNECT` completed.
    pub(super) fn on_connect(&mut self, id: usize, res: i32) {
        if res < 0 {
            self.fail_connect(id, -res);
            return;
        }
        let Some(p) = self.connects.try_remove(id) else {
            return;
        };
        let Some(slot) = p.slot else {
            return;
        };
        // The reservation taken in `start_connect` is the socket's now (`room` = ring 0).
        let sock = self.insert_open(0, slot);
        self.pending.push(Completion::Connected {
            token: p.token,
            result: Ok(sock),
        });
    }

    /// Closes the slot (if `SOCKET` made one), then reports the failure.
    fn fail_connect(&mut self, id: usize, errno: i32) {
        let Some(p) = self.connects.get_mut(id) else {
            return;
        };
        p.failed = errno.max(1);
        match p.slot {
            Some(slot) => {
                let e = opcode::Close::new(Fixed(slot))
                    .build()
                    .user_data(ud(K_CONNECT_CLOSE, id as u64));
                self.rings[0].push(e);
            }
            None => self.on_connect_closed(id),
        }
    }

    /// A failed connect's slot is closed (or there was none): give its room back.
    pub(super) fn on_connect_closed(&mut self, id: usize) {
        let Some(p) = self.connects.try_remove(id) else {
            return;
        };
        if let Some(slot) = p.slot {
            self.rings[0].set_known(slot, false);
        }
        self.room(0).give_back();
        self.pending.push(Completion::Connected {
            token: p.token,
            result: Err(p.failed),
        });
    }
}
