//! Helpers shared by the integration tests: temp dirs that clean up after themselves, a model of
//! what a log should hold, and a whole-log reader.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use warren_store::{Record, SegmentLog, SyncHandle};

/// A directory under `std::env::temp_dir()`, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("warren-store-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every unsettled record of the log, read in batches of `batch` records.
pub fn read_all(log: &mut SegmentLog, batch: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    loop {
        let from = out.last().map_or(0, |r| r.seq + 1);
        let got = log.read(from, batch, usize::MAX).expect("read");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// Syncs every handle, as the broker's group commit would.
pub fn sync(handles: Vec<Arc<dyn SyncHandle>>) {
    for h in handles {
        h.sync().expect("sync");
    }
}

pub fn sync_log(log: &mut SegmentLog) {
    sync(log.pending_sync());
}

/// A payload that names its seq, so a record returned under the wrong seq is caught.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut p = format!("m{seq}:").into_bytes();
    p.resize(len.max(p.len()), b'a' + (seq % 26) as u8);
    p
}

/// The reference: unsettled seq -> (persistent, payload).
pub type Model = BTreeMap<u64, (bool, Vec<u8>)>;

pub fn assert_matches(records: &[Record], model: &Model) {
    let got: Vec<(u64, bool, &[u8])> = records.iter().map(|r| (r.seq, r.persistent, &r.payload[..])).collect();
    let want: Vec<(u64, bool, &[u8])> = model.iter().map(|(&s, (p, b))| (s, *p, &b[..])).collect();
    assert_eq!(got, want);
}

/// The `Backend` methods a test backend wrapping a `MemBackend` (its field `mem`) passes
/// straight through; the backend writes the others itself (those it watches or breaks).
#[macro_export]
macro_rules! pass_to_mem {
    () => {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.mem.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.mem.list(dir)
        }
        fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.mem.list_dirs(dir)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.mem.read(path)
        }
        fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.mem.remove_dir_all(dir)
        }
        fn replace_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            self.mem.replace_durably(path, bytes)
        }
        fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
            self.mem.truncate(path, len)
        }
    };
}
