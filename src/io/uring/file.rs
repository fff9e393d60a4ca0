//! The loop's own file write: a durability log's group commit submitted on ring 0
//! (`EventLoop::write_file`), so a commit costs the loop no thread hand-off and no
//! wake-up. One at a time (the log keeps one operation in flight).
//!
//! In `fsync` mode the write is linked (`IOSQE_IO_LINK`) to an `FSYNC` with
//! `IORING_FSYNC_DATASYNC`: one submission, one kernel entry for both. The pair goes
//! into the submission queue together or not at all (`Ring::push_linked`); when the
//! queue has no room for both, the write goes alone and the fdatasync follows its
//! completion, so a sync never runs before the bytes it must cover.
//!
//! A short write breaks the link (the kernel fails the rest of the chain with
//! ECANCELED): once both completions are in, the rest is written again, linked to a
//! new fdatasync. A write that writes nothing is EIO (as `write_all` reports it). The
//! worker hears of the operation once, after its last completion (`FileWritten`), so
//! no completion of it can be mistaken for the next operation's.

use std::os::fd::RawFd;

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{Fd, FsyncFlags};

use super::{ud, UringLoop, K_FILE_SYNC, K_FILE_WRITE};
use crate::io::Completion;

/// Most bytes one `WRITE` carries (its length is 32 bits); a longer buffer goes
/// out as successive writes, like a short write.
const WRITE_CHUNK_BYTES: usize = 1 << 30;

/// The one file write in flight. `data` is read by the kernel until the write's
/// completion: it is dropped only after it (or leaked with the ring, see `Drop`).
pub(super) struct FileWrite {
    fd: RawFd,
    offset: u64,
    pub(super) data: Vec<u8>,
    /// Bytes the kernel reported written so far.
    done: usize,
    datasync: bool,
    synced: bool,
    write_out: bool,
    sync_out: bool,
    errno: i32,
    sync_errno: i32,
}

impl FileWrite {
    /// Nothing of it is left with the kernel.
    pub(super) fn idle(&self) -> bool {
        !self.write_out && !self.sync_out
    }
}

impl UringLoop {
    pub(super) fn start_file_write(
        &mut self,
        fd: RawFd,
        offset: u64,
        data: Vec<u8>,
        datasync: bool,
    ) -> Result<(), Vec<u8>> {
        if self.file.is_some() {
            return Err(data);
        }
        self.file = Some(FileWrite {
            fd,
            offset,
            data,
            done: 0,
            datasync,
            synced: false,
            write_out: false,
            sync_out: false,
            errno: 0,
            sync_errno: 0,
        });
        self.step_file_write();
        Ok(())
    }

    /// A completion of the write (`sync` false) or of its fdatasync.
    pub(super) fn on_file_cqe(&mut self, sync: bool, res: i32) {
        let Some(f) = self.file.as_mut() else {
            tracing::warn!(res, "file completion without a file write");
            return;
        };
        if sync {
            f.sync_out = false;
            match res {
                0.. => f.synced = true,
                // The link broke on a short or failed write: decided below.
                r if r == -libc::ECANCELED => {}
                r => f.sync_errno = -r,
            }
        } else {
            f.write_out = false;
            let asked = (f.data.len() - f.done).min(WRITE_CHUNK_BYTES);
            match res {
                r if r < 0 => f.errno = -r,
                0 if asked > 0 => f.errno = libc::EIO,
                n => {
                    f.done += n as usize;
                    if (n as usize) < asked {
                        tracing::debug!(written = n, asked, "short file write: writing the rest");
                    }
                }
            }
        }
        self.step_file_write();
    }

    /// Submits what the write still needs, or reports it once nothing is out.
    fn step_file_write(&mut self) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        if !f.idle() {
            return;
        }
        let failed = f.errno != 0 || f.sync_errno != 0;
        if !failed && f.done < f.data.len() {
            let rest = &f.data[f.done..];
            let len = rest.len().min(WRITE_CHUNK_BYTES) as u32;
            let write = opcode::Write::new(Fd(f.fd), rest.as_ptr(), len)
                .offset(f.offset + f.done as u64)
                .build()
                .user_data(ud(K_FILE_WRITE, 0));
            f.write_out = true;
            // The sync is linked only behind the write that finishes the buffer.
            if f.datasync && f.done + len as usize == f.data.len() {
                let sync = fdatasync(f.fd);
                let linked = write.clone().flags(squeue::Flags::IO_LINK);
                if self.rings[0].push_linked(linked, sync) {
                    f.sync_out = true;
                    return;
                }
            }
            self.rings[0].push(write);
            return;
        }
        if !failed && f.datasync && !f.synced {
            f.sync_out = true;
            self.rings[0].push(fdatasync(f.fd));
            return;
        }
        let (errno, sync_errno) = (f.errno, f.sync_errno);
        self.file = None;
        self.pending
            .push(Completion::FileWritten { errno, sync_errno });
    }
}

fn fdatasync(fd: RawFd) -> squeue::Entry {
    opcode::Fsync::new(Fd(fd))
        .flags(FsyncFlags::DATASYNC)
        .build()
        .user_data(ud(K_FILE_SYNC, 0))
}
