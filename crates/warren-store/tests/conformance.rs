//! One suite, run against both backends: what every `Backend` must let `SegmentLog` do.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{assert_matches, payload, read_all, sync_log, Model, TempDir};
use warren_store::{Backend, FsBackend, LogConfig, MemBackend, SegmentLog};

/// A backend plus a directory for one test; for the file system the directory is a temp dir.
struct Env {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    _tmp: Option<TempDir>,
}

impl Env {
    fn mem() -> Env {
        Env { backend: Arc::new(MemBackend::new()), dir: PathBuf::from("/data/queue"), _tmp: None }
    }

    fn fs(name: &str) -> Env {
        let tmp = TempDir::new(name);
        Env { backend: Arc::new(FsBackend), dir: tmp.path().join("queue"), _tmp: Some(tmp) }
    }

    fn open(&self, segment_bytes: u64) -> (SegmentLog, warren_store::Recovered) {
        SegmentLog::open(Arc::clone(&self.backend), &self.dir, LogConfig { segment_bytes }).expect("open")
    }

    fn files(&self, suffix: &str) -> Vec<String> {
        self.backend.list(&self.dir).expect("list").into_iter().filter(|n| n.ends_with(suffix)).collect()
    }
}

fn append_then_read_in_order(env: Env) {
    let (mut log, rec) = env.open(1 << 20);
    assert_eq!((rec.unsettled, rec.delivered_through, rec.corrupt.len()), (0, None, 0));
    assert_eq!(log.next_seq(), 0);
    let mut model = Model::new();
    for seq in 0..100u64 {
        let p = payload(seq, (seq as usize * 7) % 50);
        assert_eq!(log.append(&p, true).expect("append"), seq);
        model.insert(seq, (true, p));
    }
    assert_eq!((log.unsettled(), log.next_seq()), (100, 100));
    assert_matches(&read_all(&mut log, 7), &model);
    // From the middle, and limits.
    let got = log.read(42, 3, usize::MAX).expect("read");
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![42, 43, 44]);
    let got = log.read(10, 100, 0).expect("read");
    assert_eq!(got.len(), 1, "max_bytes 0 still returns one record");
    let one = model[&10].1.len();
    let got = log.read(10, 100, one + 1).expect("read");
    assert_eq!(got.len(), 2, "stops once max_bytes is reached");
    assert!(log.read(100, 10, usize::MAX).expect("read").is_empty());
    assert!(log.read(0, 0, usize::MAX).expect("read").is_empty());
    // A reader at the end sees later appends.
    let p = payload(100, 3);
    log.append(&p, false).expect("append");
    let got = log.read(100, 10, usize::MAX).expect("read");
    assert_eq!((got.len(), got[0].persistent, &got[0].payload[..]), (1, false, &p[..]));
}

fn settled_records_are_skipped(env: Env) {
    let (mut log, _) = env.open(300);
    let mut model = Model::new();
    for seq in 0..60 {
        let p = payload(seq, 10);
        log.append(&p, true).expect("append");
        model.insert(seq, (true, p));
    }
    for seq in (0..60).filter(|s| s % 3 == 1) {
        log.settle(seq).expect("settle");
        log.settle(seq).expect("settle is idempotent");
        model.remove(&seq);
    }
    log.settle(1_000).expect("unknown seq is ignored");
    assert_eq!(log.unsettled(), model.len() as u64);
    assert_matches(&read_all(&mut log, 4), &model);
    assert_matches(&read_all(&mut log, 1000), &model);
}

fn segments_roll_and_are_deleted_once_settled(env: Env) {
    let (mut log, _) = env.open(256);
    for seq in 0..100 {
        log.append(&payload(seq, 20), true).expect("append");
    }
    let segments = env.files(".seg").len();
    assert!(segments > 5, "{segments} segments");
    assert_eq!(segments, log.segment_count());
    sync_log(&mut log);
    let full = log.disk_bytes();
    // Settle out of order; segments go as soon as they are fully settled.
    let mut order: Vec<u64> = (0..100).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    for (i, seq) in order.iter().enumerate() {
        log.settle(*seq).expect("settle");
        if i == 50 {
            assert!(log.segment_count() < segments);
        }
    }
    assert_eq!(log.unsettled(), 0);
    sync_log(&mut log);
    assert_eq!(env.files(".seg").len(), 1, "only the segment being written remains");
    assert!(env.files(".ack").len() <= 1);
    assert!(log.disk_bytes() < 600, "{} of {full} bytes left", log.disk_bytes());
    assert!(read_all(&mut log, 10).is_empty());
    // The next append rolls past the (full, settled) active segment, which is then deleted.
    let seq = log.append(b"next", true).expect("append");
    assert_eq!(seq, 100);
    assert_eq!(env.files(".seg").len(), 1);
    drop(log);
    let (mut log, rec) = env.open(256);
    assert_eq!((rec.unsettled, log.next_seq()), (1, 101));
    assert_eq!(read_all(&mut log, 10)[0].seq, 100);
}

fn settle_range_settles_a_span(env: Env) {
    let (mut log, _) = env.open(400);
    let mut model = Model::new();
    for seq in 0..80 {
        let p = payload(seq, 15);
        log.append(&p, true).expect("append");
        model.insert(seq, (true, p));
    }
    log.settle(12).expect("settle");
    log.settle_range(10, 55).expect("settle_range");
    log.settle_range(70, 70).expect("empty range");
    log.settle_range(78, u64::MAX).expect("range past the end");
    model.retain(|s, _| !(10..55).contains(s) && *s < 78);
    assert_eq!(log.unsettled(), model.len() as u64);
    assert_matches(&read_all(&mut log, 9), &model);
    sync_log(&mut log);
    drop(log);
    let (mut log, rec) = env.open(400);
    assert_eq!(rec.unsettled, model.len() as u64);
    assert_matches(&read_all(&mut log, 9), &model);
    log.settle_range(0, log.next_seq()).expect("purge");
    assert_eq!(log.unsettled(), 0);
    assert_eq!(env.files(".seg").len(), 1);
}

fn reopen_recovers_exactly_the_unsettled_persistent_records(env: Env) {
    let (mut log, _) = env.open(500);
    let mut model = Model::new();
    for seq in 0..120 {
        let persistent = seq % 4 != 0;
        let p = payload(seq, (seq % 40) as usize);
        log.append(&p, persistent).expect("append");
        if persistent {
            model.insert(seq, (true, p));
        }
    }
    for seq in (0..120).filter(|s| s % 5 == 0 || (30..40).contains(s)) {
        log.settle(seq).expect("settle");
        model.remove(&seq);
    }
    sync_log(&mut log);
    drop(log);
    let (mut log, rec) = env.open(500);
    assert_eq!(rec.unsettled, model.len() as u64);
    assert!(rec.corrupt.is_empty());
    assert_eq!(log.next_seq(), 120);
    assert_matches(&read_all(&mut log, 11), &model);
    // Appends continue after the highest seq, and survive the next reopen too.
    let p = payload(120, 5);
    assert_eq!(log.append(&p, true).expect("append"), 120);
    model.insert(120, (true, p));
    sync_log(&mut log);
    drop(log);
    let (mut log, rec) = env.open(500);
    assert_eq!(rec.unsettled, model.len() as u64);
    assert_matches(&read_all(&mut log, 11), &model);
}

fn transient_records_are_gone_after_reopen(env: Env) {
    let (mut log, _) = env.open(200);
    for seq in 0..30 {
        log.append(&payload(seq, 10), false).expect("append");
    }
    assert_eq!(log.unsettled(), 30);
    sync_log(&mut log);
    drop(log);
    let (mut log, rec) = env.open(200);
    assert_eq!(rec.unsettled, 0);
    assert!(read_all(&mut log, 10).is_empty());
    assert_eq!(log.next_seq(), 30);
    assert!(env.files(".seg").len() <= 1, "segments of transient records are deleted at recovery");
}

fn delivered_through_survives(env: Env) {
    let (mut log, _) = env.open(200);
    for seq in 0..40 {
        log.append(&payload(seq, 10), true).expect("append");
    }
    log.mark_delivered(7);
    log.mark_delivered(25);
    log.mark_delivered(3);
    sync_log(&mut log);
    assert!(log.pending_sync().is_empty(), "nothing written since the last pending_sync");
    drop(log);
    let (mut log, rec) = env.open(200);
    assert_eq!(rec.delivered_through, Some(25));
    // Settling the segment that holds the watermark moves it, it is not lost.
    log.settle_range(0, 30).expect("settle_range");
    sync_log(&mut log);
    drop(log);
    let (_, rec) = env.open(200);
    assert_eq!(rec.delivered_through, Some(25));
    assert_eq!(rec.unsettled, 10);
}

fn destroy_removes_everything(env: Env) {
    let (mut log, _) = env.open(200);
    for seq in 0..30 {
        log.append(&payload(seq, 10), true).expect("append");
    }
    log.settle(3).expect("settle");
    sync_log(&mut log);
    assert!(!env.files("").is_empty());
    log.destroy().expect("destroy");
    assert!(env.files("").is_empty());
    let (_, rec) = env.open(200);
    assert_eq!(rec.unsettled, 0);
}

fn disk_bytes_counts_segments_and_acks(env: Env) {
    let (mut log, _) = env.open(300);
    for seq in 0..50 {
        log.append(&payload(seq, 12), true).expect("append");
    }
    log.settle(20).expect("settle");
    sync_log(&mut log);
    let on_disk: u64 =
        env.files("").iter().map(|n| env.backend.read(&env.dir.join(n)).expect("read").len() as u64).sum();
    assert_eq!(log.disk_bytes(), on_disk);
}

fn unknown_files_are_left_alone(env: Env) {
    env.backend.create_dir_all(&env.dir).expect("dir");
    let stray = env.dir.join("README");
    env.backend.replace_durably(&stray, b"not a segment").expect("write");
    let (mut log, rec) = env.open(200);
    assert!(rec.corrupt.is_empty());
    log.append(b"x", true).expect("append");
    drop(log);
    assert_eq!(env.backend.read(Path::new(&stray)).expect("read"), b"not a segment");
}

/// A log directory moved whole (recovery's quarantine) opens at its new place with every record.
fn rename_dir_moves_a_log_whole(env: Env) {
    let (mut log, _) = env.open(200);
    for i in 0..20 {
        log.append(&payload(i, 30), true).expect("append");
    }
    log.settle(3).expect("settle");
    sync_log(&mut log);
    drop(log);
    let aside = env.dir.with_file_name("aside");
    env.backend.create_dir_all(&aside).expect("dir");
    let to = aside.join("queue");
    env.backend.rename_dir(&env.dir, &to).expect("rename");
    assert!(env.backend.list(&env.dir).expect("list").is_empty(), "nothing left behind");
    assert_eq!(SegmentLog::inspect(&*env.backend, &to).expect("inspect").unsettled, 19);
    let again = env.backend.rename_dir(&to, &to).map_err(|e| e.kind());
    assert_eq!(again, Err(std::io::ErrorKind::AlreadyExists));
    let (mut log, rec) =
        SegmentLog::open(Arc::clone(&env.backend), &to, LogConfig { segment_bytes: 200 }).expect("open");
    assert_eq!(rec.unsettled, 19);
    assert_eq!(read_all(&mut log, 100).len(), 19);
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(#[test] fn $name() { super::$name(super::Env::mem()) })*
        }
        mod fs {
            $(#[test] fn $name() { super::$name(super::Env::fs(stringify!($name))) })*
        }
    };
}

both_backends!(
    append_then_read_in_order,
    settled_records_are_skipped,
    segments_roll_and_are_deleted_once_settled,
    settle_range_settles_a_span,
    reopen_recovers_exactly_the_unsettled_persistent_records,
    transient_records_are_gone_after_reopen,
    delivered_through_survives,
    destroy_removes_everything,
    disk_bytes_counts_segments_and_acks,
    unknown_files_are_left_alone,
    rename_dir_moves_a_log_whole,
);
