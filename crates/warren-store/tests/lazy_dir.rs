//! A log makes its directory at its first write, not when it is opened, and the new directory's
//! entry becomes durable with that write's sync round (never with a sync of its own, which would
//! be an fsync wherever the log is opened: under the broker's lock, for every declare).

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::TempDir;
use warren_store::{AppendFile, Backend, FsBackend, LogConfig, MemBackend, SegmentLog, SyncHandle};

#[test]
fn a_log_opened_and_destroyed_without_a_write_never_touches_the_disk() {
    let tmp = TempDir::new("lazy");
    let dir = tmp.path().join("queues").join("q");
    let (log, recovered) = SegmentLog::open(Arc::new(FsBackend), &dir, LogConfig::default()).expect("open");
    assert_eq!(recovered.unsettled, 0);
    assert!(!tmp.path().exists(), "opening made a directory");
    log.destroy().expect("destroy");
    assert!(!tmp.path().exists());

    let (mut log, _) = SegmentLog::open(Arc::new(FsBackend), &dir, LogConfig::default()).expect("open");
    log.append(b"first", true).expect("append");
    assert!(dir.is_dir(), "the first write makes the directory");
    for h in log.pending_sync() {
        h.sync().expect("sync");
    }
    drop(log);
    let (_, recovered) = SegmentLog::open(Arc::new(FsBackend), &dir, LogConfig::default()).expect("reopen");
    assert_eq!(recovered.unsettled, 1);
}

/// MemBackend, telling which directories were synced, whose new directories' entries wait for a
/// sync of their parent (as on a real file system), and whose directory syncs fail on demand.
#[derive(Debug, Clone, Default)]
struct Watched {
    mem: MemBackend,
    made: Arc<Mutex<Vec<PathBuf>>>,
    synced: Arc<Mutex<Vec<PathBuf>>>,
    fail_dir_syncs: Arc<AtomicBool>,
}

#[derive(Debug)]
struct DirSync {
    dir: PathBuf,
    backend: Watched,
}

impl SyncHandle for DirSync {
    fn sync(&self) -> io::Result<()> {
        if self.backend.fail_dir_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected"));
        }
        self.backend.synced.lock().expect("lock").push(self.dir.clone());
        Ok(())
    }
}

impl Backend for Watched {
    pass_to_mem!();
    fn create_dir_all_deferred(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut made = self.made.lock().expect("lock");
        if made.iter().any(|d| d == dir) {
            return Ok(Vec::new());
        }
        made.push(dir.to_path_buf());
        self.mem.create_dir_all(dir)?;
        Ok(vec![dir.parent().expect("a parent").to_path_buf()])
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        self.mem.open_append(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.mem.remove_file(path)
    }
    fn dir_sync_handle(&self, dir: &Path) -> Arc<dyn SyncHandle> {
        Arc::new(DirSync { dir: dir.to_path_buf(), backend: self.clone() })
    }
}

/// Syncs a round's handles; true when all succeeded.
fn round(log: &mut SegmentLog) -> bool {
    log.pending_sync().iter().map(|h| h.sync()).fold(true, |ok, r| ok & r.is_ok())
}

#[test]
fn the_new_directory_is_synced_with_the_first_round_and_again_after_a_failure() {
    let backend = Watched::default();
    let dir = Path::new("/data/queues/q");
    let (mut log, _) = SegmentLog::open(Arc::new(backend.clone()), dir, LogConfig::default()).expect("open");
    assert!(backend.made.lock().expect("lock").is_empty(), "opening made a directory");
    assert!(!log.has_pending());

    log.append(b"one", true).expect("append");
    backend.fail_dir_syncs.store(true, Ordering::SeqCst);
    assert!(!round(&mut log), "the parent's sync failed, so the round fails");
    backend.fail_dir_syncs.store(false, Ordering::SeqCst);
    // The next round reports the failure (what it covered may not be durable) and owes the
    // parent's sync still; the one after makes it durable.
    let mut rounds = 0;
    while !backend.synced.lock().expect("lock").iter().any(|d| d == Path::new("/data/queues")) {
        rounds += 1;
        assert!(rounds <= 2, "the parent directory was never synced again");
        round(&mut log);
    }
    assert!(round(&mut log));
    backend.synced.lock().expect("lock").clear();
    log.append(b"two", true).expect("append");
    assert!(round(&mut log));
    assert!(
        !backend.synced.lock().expect("lock").iter().any(|d| d == Path::new("/data/queues")),
        "the parent is synced once, not with every round"
    );
    assert_eq!(backend.made.lock().expect("lock").len(), 1);
}
