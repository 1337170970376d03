//! Write failures: after the backend fails a write, the log refuses further changes and hands
//! out a sync handle that fails, so nothing written after the failure is ever confirmed; reopening
//! recovers what is on disk.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{read_all, sync_log};
use warren_store::{AppendFile, Backend, LogConfig, MemBackend, SegmentLog, SyncHandle};

/// MemBackend whose appends fail while `fail` is set.
#[derive(Debug, Clone)]
struct Flaky {
    mem: MemBackend,
    fail: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FlakyFile {
    inner: Box<dyn AppendFile>,
    fail: Arc<AtomicBool>,
}

impl AppendFile for FlakyFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk full"));
        }
        self.inner.append(bytes)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn sync_handle(&self) -> Arc<dyn SyncHandle> {
        self.inner.sync_handle()
    }
}

impl Backend for Flaky {
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
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(FlakyFile { inner: self.mem.open_append(path)?, fail: Arc::clone(&self.fail) }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.mem.remove_file(path)
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
}

#[test]
fn a_failed_write_fails_the_log_until_reopened() {
    let flaky = Flaky { mem: MemBackend::new(), fail: Arc::new(AtomicBool::new(false)) };
    let open = || SegmentLog::open(Arc::new(flaky.clone()), Path::new("/q"), LogConfig::default()).expect("open");
    let (mut log, _) = open();
    for _ in 0..10 {
        log.append(b"confirmed", true).expect("append");
    }
    sync_log(&mut log);
    flaky.fail.store(true, Ordering::SeqCst);
    log.append(b"buffered, never written", true).expect("buffered append succeeds");
    let handles = log.pending_sync();
    assert_eq!(handles.len(), 1);
    let err = handles[0].sync().expect_err("the flush failed");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(log.append(b"more", true).is_err());
    assert!(log.settle(0).is_err());
    assert!(log.read(0, 1, 1).is_err());
    assert!(log.pending_sync()[0].sync().is_err(), "still failed");
    flaky.fail.store(false, Ordering::SeqCst);
    drop(log);
    let (mut log, rec) = open();
    assert_eq!(rec.unsettled, 10);
    assert_eq!(read_all(&mut log, 4).len(), 10);
}

#[test]
fn segment_log_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<SegmentLog>();
    fn share<T: Send + Sync>() {}
    share::<Arc<dyn SyncHandle>>();
    share::<Arc<dyn Backend>>();
    // Group commit: handles are synced on another thread while the log goes on.
    let mem = MemBackend::new();
    let (mut log, _) = SegmentLog::open(Arc::new(mem.clone()), Path::new("/q"), LogConfig::default()).expect("open");
    log.append(b"a", true).expect("append");
    let handles = log.pending_sync();
    let syncer = std::thread::spawn(move || handles.iter().try_for_each(|h| h.sync()));
    log.append(b"b", true).expect("append");
    syncer.join().expect("join").expect("sync");
    let path = Path::new("/q/00000000000000000000.seg");
    assert!(mem.durable_len(path) >= Some(16 + 17 + 1));
}
