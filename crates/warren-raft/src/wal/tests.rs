//! Unit tests of the WAL: failures, and a model check of replay and reclaiming against
//! `MemLog` through random histories of several groups on small segments.

use std::collections::BTreeMap;

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::test_machine::Nop;
use crate::MemLog;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<Nop> {
    openraft::Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(index * 10 + term) }
}

type Contents = (LogState<Types<Nop>>, Option<Vote>, Option<LogId>, Vec<(LogId, u64)>);

/// Everything a log holds, as openraft reads it.
async fn contents<L: RaftLogStorage<Types<Nop>>>(log: &mut L) -> Contents {
    let state = log.get_log_state().await.expect("state");
    let vote = log.read_vote().await.expect("vote");
    let committed = log.read_committed().await.expect("committed");
    let entries = log.get_log_reader().await.try_get_log_entries(..).await.expect("entries");
    let entries = entries
        .iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(v) => (e.log_id, v),
            _ => (e.log_id, u64::MAX),
        })
        .collect();
    (state, vote, committed, entries)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-raft-wal-unit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn a_failed_write_fails_its_waiters_stops_the_wal_and_keeps_what_was_synced() {
    let dir = temp("fail");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    let mut log = wal.log::<Nop>(1).expect("log");
    log.blocking_append((1..=3).map(|i| entry(1, i))).await.expect("append");
    log.save_vote(&Vote::new(1, 1)).await.expect("vote");
    let kept = contents(&mut log).await;

    wal.fail_writes(true);
    let err = log.blocking_append([entry(1, 4)]).await.expect_err("the callback carries the error");
    assert!(err.to_string().contains("injected write failure"), "{err}");
    let stats = wal.stats();
    assert_eq!(stats.failures, 1);
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("injected")), "{stats:?}");
    // Stopped: later writes fail too, even with the disk healthy again.
    wal.fail_writes(false);
    assert!(log.save_vote(&Vote::new(2, 1)).await.is_err(), "a stopped WAL saves no vote");
    assert!(log.blocking_append([entry(1, 5)]).await.is_err(), "nor appends");
    assert_eq!(wal.stats().segments_deleted, 0);
    drop(log);
    wal.close().await;
    drop(wal);

    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    let mut log = wal.log::<Nop>(1).expect("log");
    assert_eq!(contents(&mut log).await, kept, "what was acknowledged, and nothing else");
    drop(log);
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_wal_recovers_in_place_once_the_disk_takes_writes_again() {
    let dir = temp("recover");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    let mut one = wal.log::<Nop>(1).expect("log");
    let mut two = wal.log::<Nop>(2).expect("log");
    one.blocking_append((1..=3).map(|i| entry(1, i))).await.expect("append");
    one.save_vote(&Vote::new(1, 1)).await.expect("vote");
    two.blocking_append((1..=2).map(|i| entry(1, i))).await.expect("append");
    let (kept_one, kept_two) = (contents(&mut one).await, contents(&mut two).await);
    assert_eq!(wal.failure(), None);

    wal.fail_writes(true);
    assert!(one.blocking_append([entry(1, 4)]).await.is_err());
    assert!(wal.failure().is_some_and(|f| f.contains("injected")), "{:?}", wal.failure());
    // In memory, the failed append is there; on disk it is not.
    assert_eq!(contents(&mut one).await.3.len(), 4);
    // The disk still refuses: the WAL stays stopped, and may be asked again.
    let blocking = |wal: &Wal| {
        let wal = wal.clone();
        tokio::task::spawn_blocking(move || wal.recover())
    };
    assert!(blocking(&wal).await.expect("joined").is_err());
    assert!(wal.failure().is_some());
    assert!(two.blocking_append([entry(1, 3)]).await.is_err(), "still stopped");

    wal.fail_writes(false);
    blocking(&wal).await.expect("joined").expect("recovered");
    assert_eq!(wal.failure(), None);
    drop((one, two));
    // Each group's log is what the disk holds: what was acknowledged, not the failed append.
    let mut one = wal.log::<Nop>(1).expect("log");
    let mut two = wal.log::<Nop>(2).expect("log");
    assert_eq!(contents(&mut one).await, kept_one);
    assert_eq!(contents(&mut two).await, kept_two);
    // And the WAL goes on.
    one.blocking_append([entry(2, 4)]).await.expect("append after recovering");
    let after = contents(&mut one).await;
    drop((one, two));
    wal.close().await;
    drop(wal);
    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    let mut one = wal.log::<Nop>(1).expect("log");
    assert_eq!(contents(&mut one).await, after);
    drop((one, wal));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_directory_is_open_once_and_a_closed_wal_refuses_writes() {
    let dir = temp("once");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    let err = Wal::open(&dir, WalConfig::default()).err().expect("refused");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    let mut log = wal.log::<Nop>(5).expect("log");
    wal.close().await;
    assert!(log.save_vote(&Vote::new(1, 1)).await.is_err());
    // Closed: the directory may be opened again.
    let again = Wal::open(&dir, WalConfig::default()).expect("reopen");
    assert_eq!(again.groups(), Vec::<u64>::new());
    drop((log, wal, again));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One group as openraft would drive it: its model, its log on the WAL, and its term.
struct Driven {
    model: MemLog<Nop>,
    log: WalLog<Nop>,
    term: u64,
}

/// Random histories of four groups on segments of a few hundred bytes, reopened now and then:
/// after every reopen each group reads back exactly what its model (a `MemLog` that was given
/// the same calls) holds, and purges keep reclaiming segments.
#[tokio::test]
async fn random_histories_replay_to_what_a_memlog_holds() {
    for seed in 1..=12u64 {
        let dir = temp(&format!("model-{seed}"));
        let config = WalConfig { segment_bytes: 300 + seed * 50 };
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut wal = Wal::open(&dir, config.clone()).expect("open");
        let mut groups: BTreeMap<u64, Driven> = BTreeMap::new();
        for step in 0..400 {
            let id = 1 + rng.below(4);
            let g = match groups.entry(id) {
                std::collections::btree_map::Entry::Occupied(held) => held.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let log = wal.log::<Nop>(id).expect("log");
                    slot.insert(Driven { model: MemLog::new(), log, term: 1 })
                }
            };
            let (state, ..) = contents(&mut g.model).await;
            let last = state.last_log_id.map_or(0, |l| l.index);
            let purged = state.last_purged_log_id.map(|l| l.index);
            match rng.below(100) {
                0..=44 => {
                    let n = 1 + rng.below(4);
                    let next = state.last_log_id.map_or(1, |l| l.index + 1);
                    let batch: Vec<_> = (next..next + n).map(|i| entry(g.term, i)).collect();
                    g.model.blocking_append(batch.clone()).await.expect("model");
                    g.log.blocking_append(batch).await.expect("append");
                }
                45..=54 => {
                    // A new leader's log conflicts from some index on.
                    let first = purged.map_or(1, |p| p + 1);
                    if last >= first {
                        let at = first + rng.below(last - first + 1);
                        g.model.truncate(log_id(g.term, at)).await.expect("model");
                        g.log.truncate(log_id(g.term, at)).await.expect("truncate");
                        g.term += 1;
                    }
                }
                55..=69 => {
                    // A snapshot: purge up to somewhere in the log, now and then past its end.
                    let from = purged.map_or(1, |p| p + 1);
                    let to = last + if rng.below(8) == 0 { 3 } else { 0 };
                    if to >= from {
                        let index = from + rng.below(to - from + 1);
                        // The entry's own log id, or one past the log's end in the current term.
                        let held = g.model.try_get_log_entries(index..=index).await.expect("model");
                        let at = held.first().map_or(log_id(g.term, index), |e| e.log_id);
                        g.model.purge(at).await.expect("model");
                        g.log.purge(at).await.expect("purge");
                    }
                }
                70..=79 => {
                    g.term += 1;
                    let vote = Vote::new(g.term, 1 + rng.below(3));
                    g.model.save_vote(&vote).await.expect("model");
                    g.log.save_vote(&vote).await.expect("vote");
                }
                80..=89 => {
                    let committed = state.last_log_id;
                    g.model.save_committed(committed).await.expect("model");
                    g.log.save_committed(committed).await.expect("committed");
                }
                90..=92 => {
                    groups.remove(&id);
                    wal.forget(id).await.expect("forget");
                }
                _ => {
                    // Reopen: every group reads back what its model holds.
                    wal.close().await;
                    let fresh = Wal::open(&dir, config.clone()).expect("reopen");
                    for id in fresh.groups() {
                        assert!(groups.contains_key(&id), "seed {seed}, step {step}: forgotten group {id} came back");
                    }
                    for (id, g) in groups.iter_mut() {
                        g.log = fresh.log::<Nop>(*id).expect("log");
                        assert_eq!(
                            contents(&mut g.log).await,
                            contents(&mut g.model).await,
                            "seed {seed}, step {step}: group {id}"
                        );
                    }
                    wal = fresh;
                }
            }
        }
        // Every group snapshots and purges its whole log: after a reopen, only the new segment
        // is left, and every group still reads back its vote, committed id and purge point.
        for g in groups.values_mut() {
            let (state, ..) = contents(&mut g.model).await;
            if let Some(last) = state.last_log_id {
                g.model.purge(last).await.expect("model");
                g.log.purge(last).await.expect("purge");
            }
        }
        wal.close().await;
        wal = Wal::open(&dir, config.clone()).expect("reopen");
        assert_eq!(wal.stats().segments, 1, "seed {seed}: {:?}", wal.stats());
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1, "seed {seed}");
        for (id, g) in groups.iter_mut() {
            g.log = wal.log::<Nop>(*id).expect("log");
            assert_eq!(contents(&mut g.log).await, contents(&mut g.model).await, "seed {seed}, at the end: group {id}");
        }
        drop(groups);
        wal.close().await;
        drop(wal);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
