//! A loop's disk worker: one small thread per loop that runs the store's
//! [`DiskOp`]s on the loop's directory, so the loop itself never blocks on the disk.
//! The writer keeps at most one operation in flight, so both channels hold one
//! entry: nothing queues here. After each result the thread calls the loop's wake-up
//! (`Remote::wake` in the worker) so a parked loop picks it up.
//!
//! This is the epoll backend's path for every operation (a blocking write is not
//! allowed on the loop). On io_uring the loop writes its segments through its own
//! ring and this thread runs the rarer steps (creating a segment, which it also
//! opens for the ring, snapshots, directory syncs, removals): `worker/store.rs`
//! `DiskRoute`.

use std::fs::File;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use super::datadir::LoopDir;
use crate::store::{DiskError, DiskOp};

/// An operation's result, and for a segment it created, that segment opened for
/// writing (named), so the loop can write it through its own ring.
pub type Done = (Result<(), DiskError>, Option<(String, File)>);

pub struct StoreThread {
    ops: Option<SyncSender<DiskOp>>,
    results: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl StoreThread {
    /// Starts the thread for `dir`; `wake` runs on it after every result.
    pub fn spawn(
        dir: LoopDir,
        name: String,
        wake: Box<dyn Fn() + Send>,
    ) -> std::io::Result<StoreThread> {
        let (op_tx, op_rx) = sync_channel::<DiskOp>(1);
        let (res_tx, res_rx) = sync_channel(1);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // Ends when the loop drops its sender.
            while let Ok(op) = op_rx.recv() {
                let res = dir.run(&op);
                let opened = match (&op, &res) {
                    // Opened here, not on the loop: opening may wait on the disk too.
                    (DiskOp::Create { name, .. }, Ok(())) => {
                        dir.open_segment(name).ok().map(|f| (name.clone(), f))
                    }
                    _ => None,
                };
                if res_tx.send((res, opened)).is_err() {
                    return;
                }
                wake();
            }
        })?;
        Ok(StoreThread {
            ops: Some(op_tx),
            results: res_rx,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Hands one operation to the thread. The writer never has two out; a second
    /// one is a bug in the caller, refused rather than queued.
    pub fn submit(&mut self, op: DiskOp) -> Result<(), DiskOp> {
        if self.in_flight {
            return Err(op);
        }
        match self.ops.as_ref().map(|tx| tx.try_send(op)) {
            Some(Ok(())) => {
                self.in_flight = true;
                Ok(())
            }
            Some(Err(TrySendError::Full(op) | TrySendError::Disconnected(op))) => Err(op),
            None => unreachable!("sender lives until drop"),
        }
    }

    /// The result of the operation in flight, if it has come.
    pub fn poll(&mut self) -> Option<Done> {
        if !self.in_flight {
            return None;
        }
        match self.results.try_recv() {
            Ok(r) => {
                self.in_flight = false;
                Some(r)
            }
            Err(TryRecvError::Empty) => None,
            // The thread died (it only exits when we drop the sender): report EIO so
            // the writer fails what it carried instead of waiting forever.
            Err(TryRecvError::Disconnected) => {
                self.in_flight = false;
                Some((Err(DiskError::Io(libc::EIO)), None))
            }
        }
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the operation it is running.
        self.ops.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::io::datadir::DataDir;
    use crate::store::wal::{SyncMode, Wal, WalEvent};
    use crate::store::{recover, Record};

    /// A loop's view: append records every "turn", hand the writer's operation to
    /// the thread, and only wait (on the wake-up, as a parked loop would) when the
    /// thread has work. Every record comes back durable and recovers.
    #[test]
    fn the_writer_runs_through_the_disk_thread_and_is_woken() {
        let p = std::env::temp_dir().join(format!("ringmq-store-thread-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let data = DataDir::open(&p).expect("open");
        let dir = data.loop_dir(0).expect("loop dir");
        let r = recover(&dir, 1 << 16).expect("recover");
        r.ops.iter().for_each(|op| dir.run(op).expect("op"));
        let mut wal = Wal::new(
            SyncMode::Fsync,
            1 << 16,
            r.segments,
            r.seg_len,
            r.next_lsn,
            r.snapshot,
        );
        let wakes = Arc::new((Mutex::new(0u64), Condvar::new()));
        let w = wakes.clone();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let wake = Box::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
            *w.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            w.1.notify_all();
        });
        let mut io = StoreThread::spawn(data.loop_dir(0).expect("dir"), "store-test".into(), wake)
            .expect("spawn");
        let mut last = 0;
        let mut durable = 0;
        for turn in 0..50u32 {
            for i in 0..10u32 {
                let client = Bytes::from(format!("c{turn}-{i}"));
                last = wal
                    .append(&Record::SessionPut {
                        client,
                        expiry_s: 60,
                        will: None,
                    })
                    .expect("append");
            }
            if let Some(op) = wal.poll_op() {
                io.submit(op).expect("one at a time");
            }
            if let Some((res, _)) = io.poll() {
                wal.on_done(res);
            }
        }
        // Drain: wait on the wake-up only while an operation is out.
        let mut seen_wakes = 0;
        loop {
            if let Some((res, _)) = io.poll() {
                wal.on_done(res);
            }
            while let Some(ev) = wal.poll_event() {
                if let WalEvent::Durable(n) = ev {
                    durable = n;
                }
            }
            if !io.in_flight() {
                match wal.poll_op() {
                    Some(op) => io.submit(op).expect("idle"),
                    None => break,
                }
            }
            let g = wakes.0.lock().unwrap_or_else(|e| e.into_inner());
            let (g, _) = wakes
                .1
                .wait_timeout_while(g, Duration::from_secs(10), |n| {
                    *n == seen_wakes && io.in_flight()
                })
                .unwrap_or_else(|e| e.into_inner());
            seen_wakes = *g;
        }
        assert_eq!(durable, last, "every record durable");
        assert!(
            count.load(Ordering::Relaxed) >= wal.stats.writes,
            "woken after each write"
        );
        assert!(
            wal.stats.writes < 50 + 10,
            "group commit: {} writes for 50 turns",
            wal.stats.writes
        );
        drop(io);
        let back = recover(&dir, 1 << 16).expect("recover");
        assert_eq!(back.state.sessions.len(), 500);
        drop(data);
        let _ = std::fs::remove_dir_all(&p);
    }
}
