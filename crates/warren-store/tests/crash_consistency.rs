//! Crash consistency: with `MemBackend`, sync after a prefix of the operations, keep going without
//! syncing, then crash keeping every possible length of each file's unsynced bytes. Recovery must
//! keep every record appended before the last completed sync unless it was settled, never return a
//! record whose settle was synced, never return a record twice or one that was not appended, and
//! keep working afterwards. An unsynced settle may be lost: the record returns (at-least-once).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{payload, read_all, sync_log};
use warren_store::{LogConfig, MemBackend, SegmentLog};

const SEGMENT_BYTES: u64 = 300;

fn dir() -> PathBuf {
    PathBuf::from("/q")
}

fn open(backend: &MemBackend) -> (SegmentLog, warren_store::Recovered) {
    SegmentLog::open(Arc::new(backend.clone()), &dir(), LogConfig { segment_bytes: SEGMENT_BYTES }).expect("open")
}

/// What the operations before the crash promise.
#[derive(Debug, Default)]
struct Promises {
    /// Every record ever appended: seq -> (persistent, payload).
    appended: BTreeMap<u64, (bool, Vec<u8>)>,
    /// Persistent, appended and synced, not settled at any time: must survive.
    must_survive: BTreeSet<u64>,
    /// Settled before the last completed sync: must not come back.
    settled_synced: BTreeSet<u64>,
    /// Highest seq passed to mark_delivered.
    delivered_max: Option<u64>,
}

/// Builds a log: a synced first phase, then an unsynced tail of appends and settles.
fn scenario(seed: u64) -> (MemBackend, Promises) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let backend = MemBackend::new();
    let (mut log, _) = open(&backend);
    let mut p = Promises::default();
    let mut settled_any = BTreeSet::new();
    // Phase 1: synced.
    for _ in 0..40 {
        let persistent = rng.u8(..10) != 0;
        let body = payload(log.next_seq(), rng.usize(0..30));
        let seq = log.append(&body, persistent).expect("append");
        p.appended.insert(seq, (persistent, body));
    }
    for _ in 0..12 {
        let seq = rng.u64(0..40);
        log.settle(seq).expect("settle");
        settled_any.insert(seq);
    }
    let from = rng.u64(0..35);
    log.settle_range(from, from + 4).expect("settle_range");
    settled_any.extend(from..from + 4);
    log.mark_delivered(20);
    p.delivered_max = Some(20);
    sync_log(&mut log);
    p.settled_synced = settled_any.clone();
    // Phase 2: appends and settles after the sync, some of them flushed by an untaken sync.
    for round in 0..2 {
        for _ in 0..3 {
            let persistent = rng.bool();
            let body = payload(log.next_seq(), rng.usize(0..25));
            let seq = log.append(&body, persistent).expect("append");
            p.appended.insert(seq, (persistent, body));
        }
        for _ in 0..3 {
            let seq = rng.u64(0..log.next_seq());
            log.settle(seq).expect("settle");
            settled_any.insert(seq);
        }
        log.mark_delivered(log.next_seq() - 1);
        p.delivered_max = Some(log.next_seq() - 1);
        if round == 0 {
            // Taken but never synced: flushed to the backend, not durable.
            drop(log.pending_sync());
        }
    }
    p.must_survive = p
        .appended
        .iter()
        .filter(|(s, (pers, _))| *pers && **s < 40 && !settled_any.contains(s))
        .map(|(s, _)| *s)
        .collect();
    drop(log);
    (backend, p)
}

/// Reopens a crashed copy and checks every promise; then keeps using it across another reopen.
fn check_recovery(backend: &MemBackend, p: &Promises, what: &str) {
    let (mut log, rec) = open(backend);
    assert!(rec.corrupt.is_empty(), "{what}: a torn tail is not corruption: {:?}", rec.corrupt);
    let got = read_all(&mut log, 5);
    assert_eq!(rec.unsettled, got.len() as u64, "{what}");
    assert_eq!(log.unsettled(), got.len() as u64, "{what}");
    let mut seen = BTreeSet::new();
    for r in &got {
        assert!(seen.insert(r.seq), "{what}: seq {} returned twice", r.seq);
        let (persistent, body) = p.appended.get(&r.seq).unwrap_or_else(|| panic!("{what}: invented seq {}", r.seq));
        assert!(persistent & r.persistent, "{what}: transient record {} survived", r.seq);
        assert_eq!(&r.payload[..], &body[..], "{what}: seq {}", r.seq);
        assert!(!p.settled_synced.contains(&r.seq), "{what}: seq {} was settled and synced", r.seq);
    }
    for s in &p.must_survive {
        assert!(seen.contains(s), "{what}: synced seq {s} lost");
    }
    if let Some(d) = rec.delivered_through {
        assert!(Some(d) <= p.delivered_max, "{what}: delivered_through {d} was never marked");
    }
    // The log keeps working: new records survive the next reopen and no stale ack settles them.
    assert!(log.next_seq() >= 40, "{what}: next_seq went back into synced seqs");
    let mut fresh = Vec::new();
    for i in 0..4 {
        let body = format!("after crash {i}").into_bytes();
        fresh.push((log.append(&body, true).expect("append"), body));
    }
    sync_log(&mut log);
    drop(log);
    let (mut log, rec) = open(backend);
    assert!(rec.corrupt.is_empty(), "{what}");
    let again = read_all(&mut log, 100);
    assert_eq!(again.len(), got.len() + fresh.len(), "{what}: records changed across a clean reopen");
    assert_eq!(&again[..got.len()], &got[..], "{what}");
    for (r, (seq, body)) in again[got.len()..].iter().zip(&fresh) {
        assert_eq!((r.seq, &r.payload[..]), (*seq, &body[..]), "{what}");
    }
}

fn unsynced_files(backend: &MemBackend) -> Vec<(PathBuf, u64, u64)> {
    backend
        .paths()
        .into_iter()
        .filter_map(|path| {
            let durable = backend.durable_len(&path)?;
            let written = backend.file_len(&path)?;
            (durable < written).then_some((path, durable, written))
        })
        .collect()
}

#[test]
fn every_cut_of_every_unsynced_file_recovers() {
    for seed in 1..=3 {
        let (backend, promises) = scenario(seed);
        let files = unsynced_files(&backend);
        assert!(files.len() >= 2, "the scenario leaves several files with unsynced bytes");
        let mut cases = 0;
        for (victim, durable, written) in &files {
            for cut in *durable..=*written {
                // The other files keep either all or none of their unsynced bytes.
                for others_keep_all in [false, true] {
                    let copy = backend.snapshot();
                    copy.crash(&mut |path: &Path, d, w| {
                        if path == victim {
                            cut
                        } else if others_keep_all {
                            w
                        } else {
                            d
                        }
                    });
                    let what =
                        format!("seed {seed}, {} cut at {cut}, others keep all: {others_keep_all}", victim.display());
                    check_recovery(&copy, &promises, &what);
                    cases += 1;
                }
            }
        }
        assert!(cases > 200, "{cases} cases");
    }
}

#[test]
fn random_cuts_recover() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for seed in 10..20 {
        let (backend, promises) = scenario(seed);
        for round in 0..40 {
            let copy = backend.snapshot();
            copy.crash(&mut |_, d, w| rng.u64(d..=w));
            check_recovery(&copy, &promises, &format!("seed {seed}, round {round}"));
        }
    }
}

#[test]
fn crash_with_nothing_synced_leaves_an_openable_empty_log() {
    let backend = MemBackend::new();
    let (mut log, _) = open(&backend);
    for seq in 0..30 {
        log.append(&payload(seq, 9), true).expect("append");
    }
    log.settle(2).expect("settle");
    drop(log);
    for keep_all in [false, true] {
        let copy = backend.snapshot();
        copy.crash(&mut |_, d, w| if keep_all { w } else { d });
        let (mut log, rec) = open(&copy);
        assert!(rec.corrupt.is_empty());
        assert_eq!(rec.unsettled, if keep_all { 29 } else { 0 });
        assert_eq!(read_all(&mut log, 7).len() as u64, rec.unsettled);
    }
}

#[test]
fn repeated_crashes_never_reuse_a_settled_seq() {
    // Settles outlive their records (the ack file is synced, the segment tail is not): the seqs
    // they name must not be handed out again, or the stale settle would drop a new record.
    let backend = MemBackend::new();
    let (mut log, _) = open(&backend);
    for seq in 0..5 {
        log.append(&payload(seq, 4), true).expect("append");
    }
    sync_log(&mut log);
    for seq in 5..9 {
        log.append(&payload(seq, 4), true).expect("append");
    }
    log.settle(7).expect("settle");
    drop(log);
    let seg = dir().join("00000000000000000000.seg");
    backend.crash(&mut |path, d, w| if path == seg { d } else { w });
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.unsettled, 5);
    let seq = log.append(b"new", true).expect("append");
    assert!(seq > 7, "seq {seq} reuses a seq named by a surviving settle");
    sync_log(&mut log);
    drop(log);
    let (mut log, _) = open(&backend);
    assert_eq!(read_all(&mut log, 10).last().map(|r| r.seq), Some(seq));
}
