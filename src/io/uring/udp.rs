//! The loop's UDP socket (the MQTT-SN gateway's): one multishot `RECVMSG` into the
//! provided buffers of ring 0, and one `SENDMSG` per datagram.
//!
//! A received buffer holds the kernel's `io_uring_recvmsg_out` header, the peer
//! address (room for `msg_namelen` bytes) and the payload; `RecvMsgOut::parse` splits
//! it, and the `Datagram` completion's `BufRef` names the payload by offset, so the
//! bytes are not copied before the worker reads them. A datagram larger than what a
//! buffer has room for is passed on truncated, as `recv_from` would (an MQTT-SN
//! message then fails its length check and is counted as bad). Out of buffers, the receive
//! ends (`ENOBUFS`) and is armed again at the next turn, after the pool widened.
//! A send boxes its address, `iovec`, `msghdr` and data until its completion (the
//! kernel reads them then); at most `UDP_SENDS_MAX` are in flight.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use io_uring::types::{Fd, RecvMsgOut};
use io_uring::{cqueue, opcode};
use slab::Slab;

use super::{ud, UringLoop, K_UDP_RECV, K_UDP_SEND};
use crate::io::{BufRef, Completion};

/// Sends in flight at once; beyond, `send_to` drops (the gateway's Tretry covers
/// QoS 1/2, as for a full socket buffer).
const UDP_SENDS_MAX: usize = 4096;

pub(super) struct Udp {
    socket: UdpSocket,
    /// The template every completion of the multishot receive is laid out by (only
    /// `msg_namelen` and `msg_controllen` are read). Boxed: the kernel reads it for as
    /// long as the receive is armed.
    msghdr: Box<libc::msghdr>,
    armed: bool,
    /// The receive ended for want of buffers: armed again at the next turn.
    starved: bool,
    sends: Slab<Box<UdpSend>>,
}

/// One datagram being sent: everything the kernel reads until the completion.
struct UdpSend {
    addr: socket2::SockAddr,
    iov: libc::iovec,
    msg: libc::msghdr,
    data: Bytes,
}

impl UringLoop {
    pub(super) fn start_udp(&mut self, socket: UdpSocket) -> io::Result<()> {
        if self.udp.is_some() {
            return Err(io::Error::other("this loop already has a UDP socket"));
        }
        socket.set_nonblocking(true)?;
        // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths).
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        self.udp = Some(Udp {
            socket,
            msghdr,
            armed: false,
            starved: false,
            sends: Slab::new(),
        });
        self.arm_udp();
        Ok(())
    }

    fn arm_udp(&mut self) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        if u.armed {
            return;
        }
        u.armed = true;
        u.starved = false;
        // Buffer group 0 is ring 0's provided-buffer pool, as for TCP receives.
        let e = opcode::RecvMsgMulti::new(Fd(u.socket.as_raw_fd()), &*u.msghdr, 0)
            .build()
            .user_data(ud(K_UDP_RECV, 0));
        self.rings[0].push(e);
    }

    /// At the start of a turn: a receive that ran out of buffers is armed again.
    pub(super) fn rearm_udp(&mut self) {
        if self.udp.as_ref().is_some_and(|u| u.starved) {
            self.arm_udp();
        }
    }

    pub(super) fn on_udp_recv(&mut self, res: i32, flags: u32, out: &mut Vec<Completion>) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.rings[0].bufs.taken();
        }
        let Some(u) = self.udp.as_mut() else {
            if let Some(bid) = bid {
                self.rings[0].bufs.give_back(bid);
            }
            return;
        };
        if !more {
            u.armed = false;
        }
        let datagram = match (res, bid) {
            (n, Some(bid)) if n >= 0 => {
                let data = self.rings[0].bufs.slice(bid, n as usize);
                let parsed = RecvMsgOut::parse(data, &u.msghdr).ok().and_then(|m| {
                    if m.is_name_data_truncated() {
                        return None;
                    }
                    let from = peer(m.name_data())?;
                    let offset = m.payload_data().as_ptr() as usize - data.as_ptr() as usize;
                    Some((from, offset, m.payload_data().len()))
                });
                match parsed {
                    Some((from, offset, len)) => Some(Completion::Datagram {
                        from,
                        buf: BufRef {
                            group: 0,
                            bid,
                            offset: offset as u32,
                            len: len as u32,
                        },
                    }),
                    None => {
                        tracing::debug!("udp datagram without a parsable sender: dropped");
                        self.rings[0].bufs.give_back(bid);
                        None
                    }
                }
            }
            (_, Some(bid)) => {
                self.rings[0].bufs.give_back(bid);
                None
            }
            _ => None,
        };
        if let Some(d) = datagram {
            out.push(d);
        }
        if !more {
            if res == -libc::ENOBUFS {
                self.stats.recv_nobufs += 1;
                self.rings[0].bufs.widen();
                if let Some(u) = self.udp.as_mut() {
                    u.starved = true;
                }
            } else {
                if res < 0 && res != -libc::ECANCELED {
                    tracing::warn!(errno = -res, "udp receive ended");
                }
                self.arm_udp();
            }
        }
    }

    pub(super) fn udp_send_to(&mut self, to: SocketAddr, data: Bytes) -> bool {
        let Some(u) = self.udp.as_mut() else {
            return false;
        };
        if u.sends.len() >= UDP_SENDS_MAX {
            return false;
        }
        let entry = u.sends.vacant_entry();
        let key = entry.key();
        // SAFETY: an all-zero msghdr is a valid value; the pointers are set below.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut send = Box::new(UdpSend {
            addr: socket2::SockAddr::from(to),
            iov: libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            },
            msg,
            data,
        });
        send.msg.msg_name = send.addr.as_ptr() as *mut libc::c_void;
        send.msg.msg_namelen = send.addr.len();
        send.msg.msg_iov = &mut send.iov;
        send.msg.msg_iovlen = 1;
        // The box's heap address does not change when the box moves into the slab:
        // the pointers above stay valid until the entry is removed at the completion.
        let e = opcode::SendMsg::new(Fd(u.socket.as_raw_fd()), &send.msg)
            .build()
            .user_data(ud(K_UDP_SEND, key as u64));
        debug_assert_eq!(send.iov.iov_base as *const u8, send.data.as_ptr());
        entry.insert(send);
        self.rings[0].push(e);
        true
    }

    pub(super) fn on_udp_sent(&mut self, key: u64, res: i32, out: &mut Vec<Completion>) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        // The kernel is done with the header and the data.
        u.sends.try_remove(key as usize);
        if res < 0 {
            out.push(Completion::SendToFailed { errno: -res });
        }
    }
}

/// The peer address of a received datagram.
fn peer(name: &[u8]) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name
        .len()
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `n` bytes, at most the storage's size, from a live slice into a
    // local, properly aligned sockaddr_storage; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            name.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        );
    }
    crate::io::sockaddr_to_std(&storage)
}
