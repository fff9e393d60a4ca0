//! A simulated disk for the store's tests and fuzzing: it runs [`DiskOp`]s and, at a
//! "crash", keeps only what the operation model says survives.
//!
//! Each file has the bytes the kernel holds (`current`) and the bytes on the medium
//! (`durable`); the directory has current and durable names too (a create or rename
//! is durable after a directory sync). A process crash (kill -9) keeps everything the
//! kernel holds. A power loss keeps only durable names and bytes, plus, optionally, a
//! prefix of the last write: a write torn at any byte.

use std::collections::BTreeMap;

use super::recover::DirView;
use super::wal::{DiskError, DiskOp};

#[derive(Debug, Clone, Default)]
struct File {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    files: Vec<File>,
    names: BTreeMap<String, usize>,
    durable_names: BTreeMap<String, usize>,
    /// The last write that was not synced: file, offset, bytes.
    last_write: Option<(usize, u64, Vec<u8>)>,
    /// Bytes a create may still reserve before it fails with ENOSPC.
    pub space_bytes: u64,
    /// The next write (or the sync of a linked write) fails with this.
    pub fail_next_write: Option<DiskError>,
    pub ops_run: u64,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk {
            space_bytes: u64::MAX,
            ..SimDisk::default()
        }
    }

    /// Runs one operation as the kernel would.
    pub fn run(&mut self, op: &DiskOp) -> Result<(), DiskError> {
        self.ops_run += 1;
        match op {
            DiskOp::Create { name, len } => {
                if *len > self.space_bytes {
                    return Err(DiskError::NoSpace);
                }
                self.space_bytes -= len;
                let zeros = vec![0; *len as usize];
                self.files.push(File {
                    current: zeros.clone(),
                    durable: zeros,
                });
                self.names.insert(name.clone(), self.files.len() - 1);
            }
            DiskOp::Write {
                name,
                offset,
                data,
                sync,
            } => {
                if let Some(e) = self.fail_next_write.take() {
                    if let DiskError::SyncFailed(_) = e {
                        self.write(name, *offset, data);
                    }
                    return Err(e);
                }
                let id = self.write(name, *offset, data);
                if *sync {
                    self.sync(id);
                } else {
                    self.last_write = Some((id, *offset, data.clone()));
                }
            }
            DiskOp::Sync { name } => {
                if let Some(&id) = self.names.get(name) {
                    self.sync(id);
                }
            }
            DiskOp::SyncDir => self.durable_names = self.names.clone(),
            DiskOp::Rename { from, to } => {
                if let Some(id) = self.names.remove(from) {
                    self.names.insert(to.clone(), id);
                }
            }
            DiskOp::Remove { name } => {
                self.names.remove(name);
            }
        }
        Ok(())
    }

    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> usize {
        let id = match self.names.get(name) {
            Some(&id) => id,
            None => {
                self.files.push(File::default());
                self.names.insert(name.to_string(), self.files.len() - 1);
                self.files.len() - 1
            }
        };
        let f = &mut self.files[id].current;
        let end = offset as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[offset as usize..end].copy_from_slice(data);
        id
    }

    fn sync(&mut self, id: usize) {
        self.files[id].durable = self.files[id].current.clone();
        if self.last_write.as_ref().is_some_and(|w| w.0 == id) {
            self.last_write = None;
        }
    }

    /// Runs a write only partly: its first `keep` bytes reach the kernel, and the
    /// power goes before any sync (the caller crashes next).
    pub fn run_torn(&mut self, op: &DiskOp, keep: usize) {
        if let DiskOp::Write {
            name, offset, data, ..
        } = op
        {
            let part = &data[..keep.min(data.len())];
            let id = self.write(name, *offset, part);
            self.last_write = Some((id, *offset, part.to_vec()));
        }
    }

    /// kill -9: the kernel keeps every completed write.
    pub fn crash_process(&self) -> SimDisk {
        let mut d = self.clone();
        for f in &mut d.files {
            f.durable = f.current.clone();
        }
        d.durable_names = d.names.clone();
        d.last_write = None;
        d
    }

    /// Power loss: durable names and bytes only, plus the first `torn` bytes of the
    /// last unsynced write when asked.
    pub fn crash_power(&self, torn: Option<usize>) -> SimDisk {
        let mut d = self.clone();
        if let (Some(keep), Some((id, offset, data))) = (torn, &self.last_write) {
            let f = &mut d.files[*id].durable;
            let part = &data[..keep.min(data.len())];
            let end = *offset as usize + part.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[*offset as usize..end].copy_from_slice(part);
        }
        for f in &mut d.files {
            f.current = f.durable.clone();
        }
        d.names = d.durable_names.clone();
        d.last_write = None;
        d
    }

    /// Flips one bit of a file's bytes (both views), as a medium error would.
    pub fn flip_bit(&mut self, name: &str, bit: usize) {
        if let Some(&id) = self.names.get(name) {
            let f = &mut self.files[id];
            if let Some(b) = f.current.get_mut(bit / 8) {
                *b ^= 1 << (bit % 8);
            }
            f.durable = f.current.clone();
        }
    }

    pub fn file_len(&self, name: &str) -> Option<usize> {
        self.names.get(name).map(|&id| self.files[id].current.len())
    }

    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
}

impl DirView for SimDisk {
    fn list(&self) -> Vec<String> {
        self.names()
    }
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        self.names
            .get(name)
            .map(|&id| self.files[id].current.clone())
    }
}
