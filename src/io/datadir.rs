//! The data directory on the real filesystem: opening it (created when missing), the
//! lock that keeps a second broker out, the store format version file, one directory
//! per loop, reading a loop's directory for recovery ([`DirView`]), and a blocking
//! runner of [`DiskOp`]s for start-up, before any loop runs (recovery's tidying
//! operations). At run time a loop's log writes go through its own ring instead: a
//! loop never blocks on the disk.
//!
//! Layout: `<data_dir>/LOCK` (flock, holder's pid inside), `<data_dir>/VERSION`
//! (`ringmq-store-format N`), `<data_dir>/PLACEMENT` (the placement seed sessions
//! were placed with), `<data_dir>/loop-<i>/` (segments and snapshots).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::{DirView, DiskError, DiskOp, FORMAT_VERSION};

const LOCK_FILE: &str = "LOCK";
const VERSION_FILE: &str = "VERSION";
const VERSION_PREFIX: &str = "ringmq-store-format ";
const PLACEMENT_FILE: &str = "PLACEMENT";

/// Why the data directory cannot be used. Each names the path; `main` prints it and
/// exits with status 2.
#[derive(Debug)]
pub enum DataDirError {
    /// Cannot create, open, read or write something in it (missing parent, read-only
    /// filesystem, permissions, full disk).
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
    /// Another process holds the lock.
    Locked { path: PathBuf, holder: String },
    /// Written by an incompatible store format.
    Version { path: PathBuf, found: String },
    /// Not empty and no VERSION file: not ours, never misread.
    Foreign { path: PathBuf },
    /// `PLACEMENT` does not hold one unsigned integer; never replaced, since the
    /// sessions logged here were placed with the key it held.
    Placement { path: PathBuf, found: String },
}

impl fmt::Display for DataDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirError::Io { path, what, error } => {
                write!(
                    f,
                    "data directory {}: cannot {what}: {error}",
                    path.display()
                )
            }
            DataDirError::Locked { path, holder } => write!(
                f,
                "data directory {} is locked by another ringmq (pid {holder}); \
                 two brokers must not share one data directory",
                path.display()
            ),
            DataDirError::Version { path, found } => write!(
                f,
                "data directory {} holds store format {found}; this ringmq reads \
                 {VERSION_PREFIX}{FORMAT_VERSION} only (use the ringmq that wrote it, or \
                 another data directory)",
                path.display()
            ),
            DataDirError::Foreign { path } => write!(
                f,
                "data directory {} is not empty and has no {VERSION_FILE} file: not a \
                 ringmq data directory",
                path.display()
            ),
            DataDirError::Placement { path, found } => write!(
                f,
                "{} holds {found:?}, not a placement key (one unsigned integer, the key \
                 the sessions here were placed with); restore it, or remove it only if \
                 the data directory holds no sessions",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DataDirError {}

/// An open, locked, version-checked data directory. The lock lasts as long as this.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io_err = |what, error| DataDirError::Io {
            path: path.to_path_buf(),
            what,
            error,
        };
        fs::create_dir_all(path).map_err(|e| io_err("create the directory", e))?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(|e| io_err("open its LOCK file", e))?;
        // SAFETY: flock on a file descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim().to_string();
                return Err(DataDirError::Locked {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder
                    },
                });
            }
            return Err(io_err("lock it", error));
        }
        lock.set_len(0)
            .map_err(|e| io_err("write its LOCK file", e))?;
        lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
            .map_err(|e| io_err("write its LOCK file", e))?;
        check_version(path)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The placement seed the sessions in this directory were placed with (see
    /// `shard::Placement`): read from `PLACEMENT`, or `fresh` written there durably
    /// the first time, so a restart finds each session on the loop that logged it.
    pub fn placement_seed(&self, fresh: u64) -> Result<u64, DataDirError> {
        let path = self.path.join(PLACEMENT_FILE);
        let io_err = |what, error| DataDirError::Io {
            path: path.clone(),
            what,
            error,
        };
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| DataDirError::Placement {
                    path: path.clone(),
                    found: text.chars().take(40).collect(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let tmp = self.path.join(format!("{PLACEMENT_FILE}.tmp"));
                let mut f = File::create(&tmp).map_err(|e| io_err("write it", e))?;
                f.write_all(format!("{fresh}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .and_then(|()| fs::rename(&tmp, &path))
                    .and_then(|()| sync_dir(&self.path))
                    .map_err(|e| io_err("write it", e))?;
                Ok(fresh)
            }
            Err(e) => Err(io_err("read it", e)),
        }
    }

    /// The directory of loop `index`, created when missing.
    pub fn loop_dir(&self, index: usize) -> Result<LoopDir, DataDirError> {
        let path = self.path.join(format!("loop-{index}"));
        let io_err = |what, error| DataDirError::Io {
            path: path.clone(),
            what,
            error,
        };
        fs::create_dir_all(&path).map_err(|e| io_err("create the loop directory", e))?;
        let dir = File::open(&path).map_err(|e| io_err("open the loop directory", e))?;
        sync_dir(&self.path).map_err(|e| io_err("sync the data directory", e))?;
        Ok(LoopDir { path, dir })
    }
}

fn check_version(path: &Path) -> Result<(), DataDirError> {
    let io_err = |what, error| DataDirError::Io {
        path: path.to_path_buf(),
        what,
        error,
    };
    let want = format!("{VERSION_PREFIX}{FORMAT_VERSION}");
    match fs::read_to_string(path.join(VERSION_FILE)) {
        Ok(found) => {
            let found = found.trim();
            if found == want {
                return Ok(());
            }
            let found = found.chars().take(80).collect::<String>();
            Err(DataDirError::Version {
                path: path.to_path_buf(),
                found,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let others = fs::read_dir(path)
                .map_err(|e| io_err("list it", e))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != LOCK_FILE);
            if others {
                return Err(DataDirError::Foreign {
                    path: path.to_path_buf(),
                });
            }
            // New directory: write the version durably (temp, sync, rename, dir sync).
            let tmp = path.join(format!("{VERSION_FILE}.tmp"));
            let mut f = File::create(&tmp).map_err(|e| io_err("write its VERSION file", e))?;
            f.write_all(format!("{want}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .and_then(|()| fs::rename(&tmp, path.join(VERSION_FILE)))
                .and_then(|()| sync_dir(path))
                .map_err(|e| io_err("write its VERSION file", e))
        }
        Err(e) => Err(io_err("read its VERSION file", e)),
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// One loop's directory.
#[derive(Debug)]
pub struct LoopDir {
    path: PathBuf,
    dir: File,
}

impl LoopDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` for writing in place (a segment the log writes through the loop's
    /// ring); never creates it.
    pub fn open_segment(&self, name: &str) -> io::Result<File> {
        OpenOptions::new().write(true).open(self.path.join(name))
    }

    /// Runs one operation, blocking (start-up only).
    pub fn run(&self, op: &DiskOp) -> Result<(), DiskError> {
        let p = |name: &str| self.path.join(name);
        match op {
            DiskOp::Create { name, len } => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(p(name))
                    .map_err(|e| disk_error(&e))?;
                let len = i64::try_from(*len).map_err(|_| DiskError::NoSpace)?;
                // SAFETY: fallocate on a descriptor owned by `f`; no memory is passed.
                if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } != 0 {
                    let e = io::Error::last_os_error();
                    let _ = fs::remove_file(p(name));
                    return Err(disk_error(&e));
                }
                f.sync_all().map_err(|e| sync_error(&e))
            }
            DiskOp::Write {
                name,
                offset,
                data,
                sync,
            } => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p(name))
                    .map_err(|e| disk_error(&e))?;
                f.write_all_at(data, *offset).map_err(|e| disk_error(&e))?;
                if *sync {
                    f.sync_data().map_err(|e| sync_error(&e))?;
                }
                Ok(())
            }
            DiskOp::Sync { name } => File::open(p(name))
                .and_then(|f| f.sync_data())
                .map_err(|e| sync_error(&e)),
            DiskOp::SyncDir => self.dir.sync_all().map_err(|e| sync_error(&e)),
            DiskOp::Rename { from, to } => fs::rename(p(from), p(to)).map_err(|e| disk_error(&e)),
            DiskOp::Remove { name } => match fs::remove_file(p(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(disk_error(&e)),
                _ => Ok(()),
            },
        }
    }
}

impl DirView for LoopDir {
    fn list(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path.join(name)).ok()
    }
}

/// errno of a failed write, create, rename or remove, as the store sees it.
pub fn disk_error(e: &io::Error) -> DiskError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => DiskError::NoSpace,
        Some(errno) => DiskError::Io(errno),
        None => DiskError::Io(libc::EIO),
    }
}

/// errno of a failed fsync/fdatasync: the page state is unknown afterwards.
pub fn sync_error(e: &io::Error) -> DiskError {
    DiskError::SyncFailed(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::store::wal::{segment_name, SyncMode, Wal, WalEvent};
    use crate::store::{recover, Record, StoreState};

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("ringmq-datadir-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_missing_directory_is_created_with_its_version_and_reopens() {
        let p = temp_dir("new").join("nested");
        let d = DataDir::open(&p).expect("created");
        let v = fs::read_to_string(p.join(VERSION_FILE)).expect("version written");
        assert_eq!(v.trim(), format!("ringmq-store-format {FORMAT_VERSION}"));
        drop(d);
        DataDir::open(&p).expect("reopens after the lock is released");
        let _ = fs::remove_dir_all(p.parent().unwrap_or(&p));
    }

    #[test]
    fn a_second_broker_on_the_same_directory_is_refused_by_the_lock() {
        let p = temp_dir("locked");
        let _held = DataDir::open(&p).expect("first");
        let err = DataDir::open(&p).expect_err("second refused");
        let msg = err.to_string();
        assert!(matches!(err, DataDirError::Locked { .. }), "{msg}");
        assert!(
            msg.contains("locked by another ringmq")
                && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        let _ = fs::remove_dir_all(&p);
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let p = temp_dir("version");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join(VERSION_FILE), "ringmq-store-format 2\n").unwrap();
        let msg = DataDir::open(&p).expect_err("refused").to_string();
        assert!(
            msg.contains("ringmq-store-format 2")
                && msg.contains(&format!("format {FORMAT_VERSION}")),
            "{msg}"
        );
        let _ = fs::remove_dir_all(&p);
    }

    #[test]
    fn a_foreign_directory_or_a_file_is_refused() {
        let p = temp_dir("foreign");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("notes.txt"), "mine").unwrap();
        let msg = DataDir::open(&p).expect_err("refused").to_string();
        assert!(msg.contains("not a ringmq data directory"), "{msg}");
        let file = p.join("notes.txt");
        let msg = DataDir::open(&file)
            .expect_err("a file is no directory")
            .to_string();
        assert!(msg.contains("cannot create the directory"), "{msg}");
        let _ = fs::remove_dir_all(&p);
    }

    #[test]
    fn the_placement_seed_is_written_once_and_kept_across_reopens() {
        let p = temp_dir("placement");
        let d = DataDir::open(&p).expect("open");
        assert_eq!(d.placement_seed(5).expect("written"), 5);
        assert_eq!(d.placement_seed(9).expect("read"), 5, "the first key stays");
        drop(d);
        let d = DataDir::open(&p).expect("reopen");
        assert_eq!(d.placement_seed(11).expect("read after reopen"), 5);
        assert_eq!(fs::read_to_string(p.join(PLACEMENT_FILE)).unwrap(), "5\n");
        assert!(!p.join(format!("{PLACEMENT_FILE}.tmp")).exists());
        // A file that is not a key is refused by name, never replaced.
        fs::write(p.join(PLACEMENT_FILE), "seven\n").unwrap();
        let err = d.placement_seed(3).expect_err("refused");
        assert!(matches!(err, DataDirError::Placement { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(PLACEMENT_FILE)
                && msg.contains("\"seven\\n\"")
                && msg.contains("not a placement key"),
            "{msg}"
        );
        drop(d);
        let _ = fs::remove_dir_all(&p);
    }

    /// The writer and recovery on a real directory: records written through the
    /// blocking runner come back after the process "dies" (everything dropped), a
    /// corrupted byte stops recovery at that record and the tail is set aside.
    #[test]
    fn the_store_core_round_trips_through_a_real_directory() {
        let p = temp_dir("wal");
        let data = DataDir::open(&p).expect("open");
        let dir = data.loop_dir(0).expect("loop dir");
        let r = recover(&dir, 4096).expect("empty recovers");
        r.ops.iter().for_each(|op| dir.run(op).expect("op"));
        let mut wal = Wal::new(
            SyncMode::Fsync,
            4096,
            r.segments,
            r.seg_len,
            r.next_lsn,
            r.snapshot,
        );
        let mut model = StoreState::default();
        let mut ends = Vec::new();
        for i in 0..100u32 {
            let rec = Record::SessionPut {
                client: Bytes::from(format!("c{i}")),
                expiry_s: i,
                will: None,
            };
            model.apply(&rec);
            ends.push(wal.append(&rec).expect("append"));
            if i % 7 == 0 {
                while let Some(op) = wal.poll_op() {
                    let res = dir.run(&op);
                    wal.on_done(res);
                }
            }
        }
        while let Some(op) = wal.poll_op() {
            let res = dir.run(&op);
            wal.on_done(res);
        }
        let mut durable = 0;
        while let Some(ev) = wal.poll_event() {
            assert!(matches!(ev, WalEvent::Durable(_)), "{ev:?}");
            if let WalEvent::Durable(n) = ev {
                durable = n;
            }
        }
        assert_eq!(durable, ends[99]);
        drop(wal);
        let back = recover(&dir, 4096).expect("recovers");
        assert_eq!(back.state.sessions, model.sessions);
        assert_eq!(back.replayed, 100);
        // Corrupt record 50; recovery keeps 0..50.
        let seg0 = fs::read(dir.path().join(segment_name(0))).expect("segment");
        let at = ends[49] as usize + 20;
        assert!(at < seg0.len(), "record 50 is in the first segment");
        let mut bad = seg0.clone();
        bad[at] ^= 0xFF;
        fs::write(dir.path().join(segment_name(0)), &bad).unwrap();
        let r = recover(&dir, 4096).expect("recovers");
        assert_eq!(r.state.sessions.len(), 50);
        let damage = r.damage.clone().expect("damage");
        r.ops.iter().for_each(|op| dir.run(op).expect("op"));
        assert!(
            dir.path().join(&damage.aside).exists(),
            "tail set aside as {}",
            damage.aside
        );
        let again = recover(&dir, 4096).expect("recovers again");
        assert_eq!(again.state.sessions.len(), 50);
        assert_eq!(again.damage, None);
        drop(data);
        let _ = fs::remove_dir_all(&p);
    }
}
