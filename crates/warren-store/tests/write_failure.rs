//! Write failures: ENOSPC and EIO injected at every write and sync point of a workload. A failure
//! is never fatal: the log refuses the append it could not take, fails the sync round that could
//! not write (so nothing it covers is confirmed), keeps settles it could not write owed, and heals
//! by itself once the backend works again. No confirmed record is lost, no settled record comes
//! back once healed, and nothing that was never appended appears.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{payload, read_all};
use warren_store::{AppendFile, Backend, LogConfig, MemBackend, SegmentLog, SyncHandle};

/// Which calls fail: every call to a fault point (open, append, sync, remove) is numbered; the
/// ones in `from..until` fail with `errno`.
#[derive(Debug)]
struct Faults {
    calls: AtomicU64,
    from: AtomicU64,
    until: AtomicU64,
    errno: i32,
    /// A sync failed (its file's unsynced bytes were dropped).
    sync_failed: AtomicBool,
}

impl Faults {
    fn new(from: u64, len: u64, errno: i32) -> Arc<Faults> {
        Arc::new(Faults {
            calls: AtomicU64::new(0),
            from: AtomicU64::new(from),
            until: AtomicU64::new(from + len),
            errno,
            sync_failed: AtomicBool::new(false),
        })
    }

    fn hit(&self) -> io::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n >= self.from.load(Ordering::SeqCst) && n < self.until.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        Ok(())
    }

    fn stop(&self) {
        self.until.store(0, Ordering::SeqCst);
    }
}

/// A MemBackend whose fault points fail as `faults` says. A failed sync drops the file's
/// unsynced bytes, as Linux may after a failed fsync (and then reports success to the next one).
#[derive(Debug, Clone)]
struct Flaky {
    mem: MemBackend,
    faults: Arc<Faults>,
}

#[derive(Debug)]
struct FlakyFile {
    inner: Box<dyn AppendFile>,
    path: PathBuf,
    flaky: Flaky,
}

impl AppendFile for FlakyFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.flaky.faults.hit()?;
        self.inner.append(bytes)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn sync_handle(&self) -> Arc<dyn SyncHandle> {
        Arc::new(FlakySync {
            inner: Some(self.inner.sync_handle()),
            path: self.path.clone(),
            flaky: self.flaky.clone(),
        })
    }
}

#[derive(Debug)]
struct FlakySync {
    /// None: a directory sync (nothing to drop).
    inner: Option<Arc<dyn SyncHandle>>,
    path: PathBuf,
    flaky: Flaky,
}

impl SyncHandle for FlakySync {
    fn sync(&self) -> io::Result<()> {
        if let Err(e) = self.flaky.faults.hit() {
            if self.inner.is_some() {
                self.flaky.mem.lose_unsynced(&self.path);
            }
            self.flaky.faults.sync_failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
        self.inner.as_ref().map_or(Ok(()), |h| h.sync())
    }
}

impl Backend for Flaky {
    pass_to_mem!();
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        self.faults.hit()?;
        Ok(Box::new(FlakyFile { inner: self.mem.open_append(path)?, path: path.to_path_buf(), flaky: self.clone() }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.hit()?;
        self.mem.remove_file(path)
    }
    fn dir_sync_handle(&self, dir: &Path) -> Arc<dyn SyncHandle> {
        Arc::new(FlakySync { inner: None, path: dir.to_path_buf(), flaky: self.clone() })
    }
}

const DIR: &str = "/q";
/// Small segments, so that rolls, deletions and ack files all happen within a short workload.
const SEGMENT_BYTES: u64 = 700;
const STEPS: usize = 160;

fn config() -> LogConfig {
    LogConfig { segment_bytes: SEGMENT_BYTES }
}

/// Syncs every handle (all of them, as the broker does); true when all succeeded.
fn round(log: &mut SegmentLog) -> bool {
    let handles = log.pending_sync();
    // Every handle is synced even after one failed, so no short-circuiting `all`.
    handles.iter().filter(|h| h.sync().is_err()).count() == 0
}

/// What the workload did and what it was promised.
#[derive(Default)]
struct Outcome {
    /// Appended (append returned Ok) and not settled: seq -> payload.
    unsettled: BTreeMap<u64, Vec<u8>>,
    /// Appends confirmed: the first round after them succeeded.
    confirmed: BTreeSet<u64>,
    settled: BTreeSet<u64>,
    refused_appends: usize,
    failed_rounds: usize,
}

/// A seeded workload of appends, settles and sync rounds against `backend`; faults stop after
/// `STEPS` steps, then the log must heal within two rounds.
fn workload(backend: Flaky, seed: u64) -> (SegmentLog, Outcome) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut log, _) = SegmentLog::open(Arc::new(backend.clone()), Path::new(DIR), config()).expect("open");
    let mut out = Outcome::default();
    // Appends since the last round started: they are confirmed by the next round's outcome.
    let mut since_round: Vec<u64> = Vec::new();
    for _ in 0..STEPS {
        match rng.u8(..100) {
            0..60 => {
                let n = log.next_seq();
                let p = payload(n, rng.usize(10..120));
                match log.append(&p, true) {
                    Ok(seq) => {
                        assert_eq!(seq, n, "seqs stay contiguous");
                        out.unsettled.insert(seq, p);
                        since_round.push(seq);
                    }
                    Err(_) => {
                        out.refused_appends += 1;
                        assert_eq!(log.next_seq(), n, "a refused append takes no seq");
                    }
                }
            }
            60..85 => {
                if let Some(&seq) = out.unsettled.keys().nth(rng.usize(..out.unsettled.len().max(1))) {
                    log.settle(seq).expect("a settle is never refused, only owed");
                    out.unsettled.remove(&seq);
                    out.settled.insert(seq);
                }
            }
            _ => {
                if round(&mut log) {
                    out.confirmed.extend(since_round.drain(..));
                } else {
                    out.failed_rounds += 1;
                    since_round.clear();
                }
            }
        }
    }
    backend.faults.stop();
    // The round after a failed sync fails too (its segment was sealed); the next one is clean.
    let first = round(&mut log);
    if first {
        out.confirmed.extend(since_round.drain(..));
    }
    assert!(round(&mut log), "a round after the faults stopped succeeds");
    assert!(log.trouble().is_none(), "healed: {:?}", log.trouble());
    (log, out)
}

fn check(seed: u64, from: u64, len: u64, errno: i32) {
    let mem = MemBackend::new();
    let flaky = Flaky { mem: mem.clone(), faults: Faults::new(from, len, errno) };
    let (mut log, out) = workload(flaky.clone(), seed);
    let ctx = format!("seed {seed}, fault at call {from} for {len} calls, errno {errno}");
    // Publishing resumes: a new append is confirmed.
    let p = payload(log.next_seq(), 40);
    let seq = log.append(&p, true).unwrap_or_else(|e| panic!("{ctx}: append after healing: {e}"));
    assert!(round(&mut log), "{ctx}");
    let mut unsettled = out.unsettled.clone();
    unsettled.insert(seq, p);
    let mut confirmed = out.confirmed.clone();
    confirmed.insert(seq);
    if !flaky.faults.sync_failed.load(Ordering::SeqCst) {
        // Without a lost page, the live log still serves everything it took.
        let live: Vec<u64> = read_all(&mut log, 7).iter().map(|r| r.seq).collect();
        assert_eq!(live, unsettled.keys().copied().collect::<Vec<_>>(), "{ctx}: live reads");
    }
    drop(log);
    // A power cut now keeps only what was synced.
    mem.crash(&mut |_, durable, _| durable);
    let (mut log, _) = SegmentLog::open(Arc::new(mem.clone()), Path::new(DIR), config()).expect("reopen");
    let back = read_all(&mut log, 5);
    let got: BTreeSet<u64> = back.iter().map(|r| r.seq).collect();
    for seq in confirmed.iter().filter(|s| unsettled.contains_key(s)) {
        assert!(got.contains(seq), "{ctx}: confirmed seq {seq} lost; recovered {got:?}");
    }
    for r in &back {
        assert!(!out.settled.contains(&r.seq), "{ctx}: settled seq {} came back after healing", r.seq);
        let want = unsettled.get(&r.seq).unwrap_or_else(|| panic!("{ctx}: seq {} was never appended", r.seq));
        assert_eq!(&r.payload[..], &want[..], "{ctx}: payload of seq {}", r.seq);
    }
}

/// How many fault points the workload passes with no fault.
fn fault_points(seed: u64) -> u64 {
    let flaky = Flaky { mem: MemBackend::new(), faults: Faults::new(u64::MAX, 0, 28) };
    let _ = workload(flaky.clone(), seed);
    flaky.faults.calls.load(Ordering::SeqCst)
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[test]
fn enospc_and_eio_at_every_fault_point_lose_no_confirmed_record_and_heal() {
    for seed in [1, 2, 3] {
        let points = fault_points(seed);
        assert!(points > 50, "the workload reaches many fault points ({points})");
        for from in 0..points {
            for (len, errno) in [(1, EIO), (1, ENOSPC), (25, ENOSPC), (u64::MAX / 2, EIO)] {
                check(seed, from, len, errno);
            }
        }
    }
}

#[test]
fn a_full_disk_refuses_appends_then_publishing_resumes() {
    let mem = MemBackend::new();
    let faults = Faults::new(u64::MAX, 0, ENOSPC);
    let flaky = Flaky { mem: mem.clone(), faults: faults.clone() };
    let (mut log, _) = SegmentLog::open(Arc::new(flaky), Path::new(DIR), config()).expect("open");
    for i in 0..5 {
        log.append(&payload(i, 50), true).expect("append");
    }
    assert!(round(&mut log));
    // The disk fills: from now on every write fails.
    faults.from.store(faults.calls.load(Ordering::SeqCst), Ordering::SeqCst);
    faults.until.store(u64::MAX, Ordering::SeqCst);
    let mut taken = 0;
    for i in 5..40 {
        if log.append(&payload(i, 50), true).is_ok() {
            taken += 1;
        }
    }
    assert!(taken < 35, "a full disk refuses appends once the segment must be written");
    assert!(!round(&mut log), "the round that could not write fails");
    assert!(log.trouble().is_some_and(|t| t.contains("No space left")), "{:?}", log.trouble());
    log.settle(0).expect("settles are owed, not refused");
    assert!(!round(&mut log));
    // Space comes back.
    faults.stop();
    assert!(round(&mut log), "the log writes what it held and syncs");
    assert!(log.trouble().is_none());
    let seq = log.append(b"after", true).expect("publishing resumes");
    assert!(round(&mut log));
    drop(log);
    mem.crash(&mut |_, durable, _| durable);
    let (mut log, rec) = SegmentLog::open(Arc::new(mem), Path::new(DIR), config()).expect("reopen");
    assert_eq!(rec.unsettled, 4 + taken + 1, "what the log took survives, the owed settle held");
    let seqs: Vec<u64> = read_all(&mut log, 100).iter().map(|r| r.seq).collect();
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(seqs.last(), Some(&seq));
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
