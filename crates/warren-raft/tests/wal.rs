//! The node-wide WAL (`Wal`): several groups' logs in one sequence of segment files, group
//! commit, recovery, reclaiming segments, and three-member clusters running two groups per node
//! on one WAL per node, stopped and restarted from it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fast_config, List, WAIT};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, RaftLogReader};
use warren_raft::{
    AppliedRx, Entry, EntryPayload, Group, GroupConfig, LocalNet, LogId, ProposeError, Role, Vote, Wal, WalConfig,
    WalLog,
};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-raft-wal-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Group `group`'s entry at `index`: its command tells the group and the index apart.
fn entry(group: u64, term: u64, index: u64) -> Entry<List> {
    Entry::<List> { log_id: log_id(term, index), payload: EntryPayload::Normal(group * 1_000_000 + index) }
}

/// The (index, term, command) of every entry a log holds.
async fn entries(log: &mut WalLog<List>) -> Vec<(u64, u64, u64)> {
    let held = log.try_get_log_entries(..).await.expect("entries");
    held.iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(command) => (e.log_id.index, e.log_id.leader_id.term, command),
            _ => (e.log_id.index, e.log_id.leader_id.term, u64::MAX),
        })
        .collect()
}

/// The group's vote, committed id, purge point and last log id.
async fn pointers(log: &mut WalLog<List>) -> (Option<Vote>, Option<LogId>, Option<LogId>, Option<LogId>) {
    let state = log.get_log_state().await.expect("state");
    let vote = log.read_vote().await.expect("vote");
    let committed = log.read_committed().await.expect("committed");
    (vote, committed, state.last_purged_log_id, state.last_log_id)
}

/// The segment files in `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_groups_interleaved_read_back_after_reopening() {
    let dir = temp("interleaved");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    // Five groups append at once, each from its own task, with votes and committed ids between.
    let tasks: Vec<_> = (1..=5u64)
        .map(|group| {
            let mut log = wal.log::<List>(group).expect("log");
            tokio::spawn(async move {
                log.save_vote(&Vote::new(group, group)).await.expect("vote");
                for index in 1..=30 {
                    log.blocking_append([entry(group, 1, index)]).await.expect("append");
                    if index % 7 == 0 {
                        log.save_committed(Some(log_id(1, index - 2))).await.expect("committed");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let mut before = BTreeMap::new();
    for group in 1..=5 {
        let mut log = wal.log::<List>(group).expect("log");
        before.insert(group, (entries(&mut log).await, pointers(&mut log).await));
    }
    wal.close().await;
    drop(wal);

    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    assert_eq!(wal.groups(), vec![1, 2, 3, 4, 5]);
    for group in 1..=5 {
        let mut log = wal.log::<List>(group).expect("log");
        let after = (entries(&mut log).await, pointers(&mut log).await);
        assert_eq!(after, before[&group], "group {group}");
        let expected: Vec<_> = (1..=30).map(|i| (i, 1, group * 1_000_000 + i)).collect();
        assert_eq!(after.0, expected, "group {group}'s entries");
        assert_eq!(after.1 .0, Some(Vote::new(group, group)));
        assert_eq!(after.1 .1, Some(log_id(1, 26)));
        // It goes on where it was.
        log.blocking_append([entry(group, 2, 31)]).await.expect("append");
    }
    wal.close().await;
    drop(wal);
    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    for group in 1..=5 {
        let mut log = wal.log::<List>(group).expect("log");
        assert_eq!(entries(&mut log).await.last(), Some(&(31, 2, group * 1_000_000 + 31)));
    }
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_torn_tail_of_the_last_segment_is_cut_and_the_wal_goes_on() {
    let dir = temp("torn");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    let mut log = wal.log::<List>(1).expect("log");
    log.blocking_append((1..=5).map(|i| entry(1, 1, i))).await.expect("append");
    let expected = entries(&mut log).await;
    wal.close().await;
    drop((log, wal));

    // A crash part way through a record: a header promising 50 bytes and two of them.
    let last = segment_files(&dir).pop().expect("a segment");
    let whole = std::fs::metadata(&last).expect("meta").len();
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(&[0, 0, 0, 50, 1, 2, 3, 4, 0, 0]);
    std::fs::write(&last, &bytes).expect("write");
    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    assert_eq!(wal.stats().cut_bytes, 10);
    assert_eq!(std::fs::metadata(&last).expect("meta").len(), whole, "cut back to the last whole record");
    let mut log = wal.log::<List>(1).expect("log");
    assert_eq!(entries(&mut log).await, expected);
    log.blocking_append([entry(1, 1, 6)]).await.expect("the WAL goes on");
    wal.close().await;
    drop((log, wal));

    // A flipped byte in the last record (entry 6) fails its checksum: that record is cut.
    let last = segment_files(&dir).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    let end = bytes.len() - 1;
    bytes[end] ^= 0xff;
    std::fs::write(&last, &bytes).expect("write");
    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    assert!(wal.stats().cut_bytes > 0);
    let mut log = wal.log::<List>(1).expect("log");
    assert_eq!(entries(&mut log).await, expected);
    log.blocking_append([entry(1, 1, 6)]).await.expect("the WAL goes on");
    wal.close().await;
    drop((log, wal));
    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    assert_eq!(wal.stats().cut_bytes, 0);
    let mut log = wal.log::<List>(1).expect("log");
    assert_eq!(entries(&mut log).await.len(), 6);
    drop((log, wal));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn damage_in_an_earlier_segment_is_refused_and_nothing_is_cut() {
    let dir = temp("corrupt");
    let config = WalConfig { segment_bytes: 512 };
    let wal = Wal::open(&dir, config.clone()).expect("open");
    let mut log = wal.log::<List>(1).expect("log");
    for index in 1..=40 {
        log.blocking_append([entry(1, 1, index)]).await.expect("append");
    }
    wal.close().await;
    drop((log, wal));
    let files = segment_files(&dir);
    assert!(files.len() >= 3, "several segments: {files:?}");
    let first = &files[0];
    let mut bytes = std::fs::read(first).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(first, &bytes).expect("write");

    let err = Wal::open(&dir, config.clone()).err().expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let message = err.to_string();
    let name = first.file_name().expect("name").to_string_lossy().into_owned();
    assert!(message.contains(&name) && message.contains("at byte"), "names the file and the offset: {message}");
    assert_eq!(std::fs::read(first).expect("read"), bytes, "the damaged segment is left as it was");
    assert_eq!(segment_files(&dir), files, "no segment was added or removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn truncation_purge_and_committed_survive_reopening() {
    let dir = temp("truncate");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    let mut log = wal.log::<List>(9).expect("log");
    log.blocking_append((1..=10).map(|i| entry(9, 1, i))).await.expect("append");
    // A new leader's log conflicts from 7 on.
    log.truncate(log_id(1, 7)).await.expect("truncate");
    log.blocking_append((7..=8).map(|i| entry(9, 2, i))).await.expect("append");
    log.purge(log_id(1, 3)).await.expect("purge");
    log.save_committed(Some(log_id(2, 8))).await.expect("committed");
    let before = (entries(&mut log).await, pointers(&mut log).await);
    let expected: Vec<_> =
        (4..=6).map(|i| (i, 1, 9_000_000 + i)).chain((7..=8).map(|i| (i, 2, 9_000_000 + i))).collect();
    assert_eq!(before.0, expected);
    wal.close().await;
    drop((log, wal));

    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    let mut log = wal.log::<List>(9).expect("log");
    assert_eq!((entries(&mut log).await, pointers(&mut log).await), before);
    assert_eq!(pointers(&mut log).await.2, Some(log_id(1, 3)));
    drop((log, wal));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_vote_survives_reopening_after_its_segment_is_deleted() {
    let dir = temp("vote");
    let config = WalConfig { segment_bytes: 512 };
    let wal = Wal::open(&dir, config.clone()).expect("open");
    let mut voter = wal.log::<List>(1).expect("log");
    voter.save_vote(&Vote::new_committed(7, 3)).await.expect("vote");
    let first = segment_files(&dir).remove(0);
    // Another group writes and purges behind itself: segments roll and are deleted, among
    // them the one that holds group 1's vote.
    let mut busy = wal.log::<List>(2).expect("log");
    for index in 1..=60 {
        busy.blocking_append([entry(2, 1, index)]).await.expect("append");
        if index % 10 == 0 {
            busy.purge(log_id(1, index)).await.expect("purge");
        }
    }
    busy.blocking_append([entry(2, 1, 61)]).await.expect("append");
    wal.flush().await.expect("flush");
    assert!(!first.exists(), "the segment with the vote was deleted");
    assert!(wal.stats().segments_deleted >= 3, "{:?}", wal.stats());
    wal.close().await;
    drop((voter, busy, wal));

    let wal = Wal::open(&dir, config).expect("reopen");
    let mut voter = wal.log::<List>(1).expect("log");
    // Kept; read back, as every store reads a vote at startup, as a vote cast in term 7 for
    // node 3 (not as node 3's leadership: see `startup_vote`).
    assert_eq!(voter.read_vote().await.expect("vote"), Some(Vote::new(7, 3)));
    let mut busy = wal.log::<List>(2).expect("log");
    assert_eq!(entries(&mut busy).await, vec![(61, 1, 2_000_061)]);
    assert_eq!(pointers(&mut busy).await.2, Some(log_id(1, 60)));
    drop((voter, busy, wal));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_appending_at_once_share_fsyncs() {
    let dir = temp("group-commit");
    let wal = Wal::open(&dir, WalConfig::default()).expect("open");
    let before = wal.stats();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (1..=50u64)
        .map(|group| {
            let mut log = wal.log::<List>(group).expect("log");
            let start = std::sync::Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                for index in 1..=10 {
                    // Each waits for its entry to be on disk before appending the next.
                    log.blocking_append([entry(group, 1, index)]).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let stats = wal.stats();
    let appends = stats.appends - before.appends;
    let fsyncs = stats.fsyncs - before.fsyncs;
    assert_eq!(appends, 500);
    assert!(fsyncs <= appends / 4, "{fsyncs} fsyncs for {appends} appends: appends waiting together share one");
    eprintln!("group commit: {appends} appends, {fsyncs} fsyncs, {} writes", stats.writes - before.writes);
    wal.close().await;
    drop(wal);
    let wal = Wal::open(&dir, WalConfig::default()).expect("reopen");
    for group in [1, 25, 50] {
        let mut log = wal.log::<List>(group).expect("log");
        assert_eq!(entries(&mut log).await.len(), 10, "group {group}");
    }
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn segments_are_deleted_once_every_group_purged_past_them() {
    let dir = temp("reclaim");
    let config = WalConfig { segment_bytes: 1024 };
    let wal = Wal::open(&dir, config.clone()).expect("open");
    let mut a = wal.log::<List>(1).expect("log");
    let mut b = wal.log::<List>(2).expect("log");
    for index in 1..=100 {
        a.blocking_append([entry(1, 1, index)]).await.expect("append");
        b.blocking_append([entry(2, 1, index)]).await.expect("append");
    }
    let full = segment_files(&dir).len();
    assert!(full >= 8, "many segments: {full}");

    // Group 1 purges everything; group 2 still needs every segment.
    a.purge(log_id(1, 100)).await.expect("purge");
    wal.flush().await.expect("flush");
    assert_eq!(wal.stats().segments_deleted, 0, "group 2 still needs them");
    assert_eq!(segment_files(&dir).len(), full);

    // Group 2 purges its first half: the segments holding only entries up to 50 go.
    b.purge(log_id(1, 50)).await.expect("purge");
    wal.flush().await.expect("flush");
    let deleted = wal.stats().segments_deleted;
    assert!(deleted >= 3, "{:?}", wal.stats());
    let kept = segment_files(&dir).len();
    assert_eq!(kept as u64, full as u64 - deleted);
    wal.close().await;
    drop((a, b, wal));

    // Nothing still needed was deleted.
    let wal = Wal::open(&dir, config.clone()).expect("reopen");
    let mut a = wal.log::<List>(1).expect("log");
    let mut b = wal.log::<List>(2).expect("log");
    assert_eq!(entries(&mut a).await, vec![]);
    assert_eq!(pointers(&mut a).await.2, Some(log_id(1, 100)));
    assert_eq!(entries(&mut b).await, (51..=100).map(|i| (i, 1, 2_000_000 + i)).collect::<Vec<_>>());
    assert_eq!(pointers(&mut b).await.2, Some(log_id(1, 50)));

    // Group 2 purges the rest: what is left is the segment holding its entry 101 and the one
    // opened after it.
    b.purge(log_id(1, 100)).await.expect("purge");
    b.blocking_append([entry(2, 1, 101)]).await.expect("append");
    wal.close().await;
    drop((a, b, wal));
    let wal = Wal::open(&dir, config).expect("reopen");
    assert_eq!(segment_files(&dir).len(), 2, "{:?}", segment_files(&dir));
    let mut b = wal.log::<List>(2).expect("log");
    assert_eq!(entries(&mut b).await, vec![(101, 1, 2_000_101)]);
    drop((b, wal));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_forgotten_group_releases_its_segments_and_does_not_come_back() {
    let dir = temp("forget");
    let config = WalConfig { segment_bytes: 1024 };
    let wal = Wal::open(&dir, config.clone()).expect("open");
    let mut keeper = wal.log::<List>(1).expect("log");
    let mut gone = wal.log::<List>(2).expect("log");
    // The first segment holds entries of both; the rest only group 2's.
    keeper.blocking_append((1..=3).map(|i| entry(1, 1, i))).await.expect("append");
    gone.save_vote(&Vote::new(4, 2)).await.expect("vote");
    for index in 1..=150 {
        gone.blocking_append([entry(2, 1, index)]).await.expect("append");
    }
    let full = segment_files(&dir).len();
    assert!(full >= 6, "many segments: {full}");
    drop(gone);
    wal.forget(2).await.expect("forget");
    assert_eq!(wal.groups(), vec![1]);
    let left = segment_files(&dir);
    assert!(left.len() <= 2, "all but the first (group 1 needs it) and the current are deleted: {left:?}");
    wal.close().await;
    drop((keeper, wal));

    let wal = Wal::open(&dir, config.clone()).expect("reopen");
    assert_eq!(wal.groups(), vec![1], "group 2 is not replayed from the first segment");
    let mut keeper = wal.log::<List>(1).expect("log");
    assert_eq!(entries(&mut keeper).await.len(), 3);
    // A group of the same id starts empty, and stays what it became.
    let mut again = wal.log::<List>(2).expect("log");
    assert_eq!(pointers(&mut again).await, (None, None, None, None));
    again.blocking_append([entry(2, 5, 1)]).await.expect("append");
    wal.close().await;
    drop((keeper, again, wal));
    let wal = Wal::open(&dir, config).expect("reopen");
    let mut again = wal.log::<List>(2).expect("log");
    assert_eq!(entries(&mut again).await, vec![(1, 5, 2_000_001)]);
    assert_eq!(pointers(&mut again).await.0, None, "the old vote is gone");
    drop((again, wal));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- clusters: three nodes, two groups on each, one WAL per node ----

/// The groups every node runs.
const GROUPS: [u64; 2] = [1, 2];

/// Three nodes each running two groups on one WAL per node; a `LocalNet` per group.
struct Nodes {
    dir: PathBuf,
    config: GroupConfig,
    wal_config: WalConfig,
    nets: BTreeMap<u64, LocalNet<List>>,
    wals: BTreeMap<u64, Wal>,
    applied: BTreeMap<(u64, u64), AppliedRx<u64>>,
}

impl Nodes {
    async fn start(dir: &Path, config: GroupConfig, wal_config: WalConfig) -> Nodes {
        let nets = GROUPS.iter().map(|g| (*g, LocalNet::new())).collect();
        let mut nodes =
            Nodes { dir: dir.to_owned(), config, wal_config, nets, wals: BTreeMap::new(), applied: BTreeMap::new() };
        for node in 1..=3 {
            nodes.start_node(node).await;
        }
        for group in GROUPS {
            let members = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
            nodes.group(group, 1).initialize(members).await.expect("initialize");
            nodes.group(group, 1).wait_for_leader(WAIT).await.expect("a leader");
        }
        nodes
    }

    fn node_dir(&self, node: u64) -> PathBuf {
        self.dir.join(format!("node-{node}"))
    }

    /// Opens node `node`'s WAL (which may hold what an earlier run wrote) and starts its groups
    /// on it, each with its snapshot file.
    async fn start_node(&mut self, node: u64) {
        let wal = Wal::open(&self.node_dir(node).join("wal"), self.wal_config.clone()).expect("open the WAL");
        for group in GROUPS {
            let log = wal.log::<List>(group).expect("the group's log");
            let snapshot = self.node_dir(node).join(format!("group-{group}.snapshot"));
            let net = &self.nets[&group];
            let (handle, applied) =
                Group::start_durable(node, &self.config, List::default(), net.transport(node), log, snapshot)
                    .await
                    .expect("start");
            net.register(handle);
            self.applied.insert((group, node), applied);
        }
        self.wals.insert(node, wal);
    }

    /// Stops node `node` as a crash would leave it: its groups shut down and off the network,
    /// its WAL closed.
    async fn stop_node(&mut self, node: u64) {
        for group in GROUPS {
            let handle = self.nets[&group].unregister(node).expect("registered");
            handle.shutdown().await.expect("clean shutdown");
            self.applied.remove(&(group, node));
        }
        let wal = self.wals.remove(&node).expect("a WAL");
        wal.close().await;
    }

    fn group(&self, group: u64, node: u64) -> Group<List> {
        self.nets[&group].group(node).expect("registered node")
    }

    /// Proposes `value` to group `group`'s leader, following "not leader" answers.
    async fn propose(&self, group: u64, value: u64) -> u64 {
        let live = |id: u64| self.nets[&group].group(id).is_some();
        let mut target = (1..=3).find(|id| live(*id)).expect("a live node");
        for _ in 0..10 {
            let handle = self.group(group, target);
            match handle.propose(value).await {
                Ok((index, _)) => return index,
                Err(ProposeError::NotLeader { leader: Some(next) }) if live(next) => target = next,
                Err(ProposeError::NotLeader { .. }) => {
                    let next = handle.wait_for_leader(WAIT).await.expect("a leader");
                    target = if live(next) { next } else { target };
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("proposal failed: {e}"),
            }
        }
        panic!("no leader of group {group} accepted {value}");
    }

    async fn wait_applied(&self, group: u64, nodes: &[u64], index: u64) {
        for node in nodes {
            self.group(group, *node).wait_for_applied(index, WAIT).await.expect("applied");
        }
    }

    fn values(&self, group: u64, node: u64) -> Vec<u64> {
        self.group(group, node).with_machine(|m| m.values.clone())
    }

    async fn shutdown(&mut self) {
        for node in 1..=3 {
            if self.wals.contains_key(&node) {
                self.stop_node(node).await;
            }
        }
    }
}

fn no_snapshots() -> GroupConfig {
    GroupConfig { snapshot_every_entries: 0, ..fast_config() }
}

/// What group `group` is proposed, by round: distinct per group.
fn value(group: u64, round: u64) -> u64 {
    group * 1000 + round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_from_its_wal_rejoins_with_its_votes_and_entries() {
    let dir = temp("member");
    let mut nodes = Nodes::start(&dir, no_snapshots(), WalConfig::default()).await;
    let mut last = BTreeMap::new();
    for round in 0..10 {
        for group in GROUPS {
            last.insert(group, nodes.propose(group, value(group, round)).await);
        }
    }
    for group in GROUPS {
        nodes.wait_applied(group, &[1, 2, 3], last[&group]).await;
    }
    // A node that leads neither group, if there is one, else node 3.
    let leaders: Vec<u64> = GROUPS.iter().map(|g| nodes.group(*g, 1).leader().expect("leader")).collect();
    let stopped = (1..=3).rev().find(|n| !leaders.contains(n)).unwrap_or(3);
    let terms: Vec<u64> = GROUPS.iter().map(|g| nodes.group(*g, stopped).status().term).collect();
    nodes.stop_node(stopped).await;
    for round in 10..20 {
        for group in GROUPS {
            last.insert(group, nodes.propose(group, value(group, round)).await);
        }
    }

    // What it acknowledged is in its WAL before it hears from anyone, and so are its votes.
    {
        let wal = Wal::open(&nodes.node_dir(stopped).join("wal"), WalConfig::default()).expect("open");
        for (group, term) in GROUPS.iter().zip(&terms) {
            let mut log = wal.log::<List>(*group).expect("log");
            let (vote, _, _, last_log) = pointers(&mut log).await;
            assert!(last_log.is_some_and(|l| l.index >= 10), "group {group}: the first ten commands");
            assert!(vote.is_some_and(|v| v.leader_id().term >= *term), "group {group}: the vote is kept");
        }
        wal.close().await;
    }
    nodes.start_node(stopped).await;
    for group in GROUPS {
        nodes.wait_applied(group, &[stopped], last[&group]).await;
        let expected: Vec<u64> = (0..20).map(|round| value(group, round)).collect();
        for node in 1..=3 {
            assert_eq!(nodes.values(group, node), expected, "group {group} on node {node}");
        }
    }
    nodes.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_stopped_and_started_from_its_wals_keeps_what_it_committed() {
    let dir = temp("cluster");
    let mut nodes = Nodes::start(&dir, no_snapshots(), WalConfig::default()).await;
    for round in 0..15 {
        for group in GROUPS {
            nodes.propose(group, value(group, round)).await;
        }
    }
    nodes.shutdown().await;
    for node in 1..=3 {
        nodes.start_node(node).await;
    }
    // No initialize: the members know their groups from their WALs and elect leaders.
    for group in GROUPS {
        nodes.group(group, 1).wait_for_leader(WAIT).await.expect("a leader after the restart");
        let last = nodes.propose(group, value(group, 15)).await;
        nodes.wait_applied(group, &[1, 2, 3], last).await;
        let expected: Vec<u64> = (0..16).map(|round| value(group, round)).collect();
        for node in 1..=3 {
            assert_eq!(nodes.values(group, node), expected, "group {group} on node {node}");
        }
    }
    nodes.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_snapshots_reclaims_segments_and_restarts_with_everything() {
    let dir = temp("snapshots");
    // A snapshot every 5 entries, nothing kept behind it, and small segments: the WALs roll and
    // delete segments as the groups purge.
    let config = GroupConfig { snapshot_every_entries: 5, kept_after_snapshot_entries: 0, ..fast_config() };
    let wal_config = WalConfig { segment_bytes: 2048 };
    let mut nodes = Nodes::start(&dir, config, wal_config).await;
    for round in 0..40 {
        for group in GROUPS {
            nodes.propose(group, value(group, round)).await;
        }
    }
    for group in GROUPS {
        for node in 1..=3 {
            nodes
                .group(group, node)
                .wait_until(WAIT, "a purged log", |s| s.purged_index.is_some_and(|p| p >= 30))
                .await
                .expect("snapshot and purge");
        }
    }
    for node in 1..=3 {
        nodes.wals[&node].flush().await.expect("flush");
        let stats = nodes.wals[&node].stats();
        assert!(stats.segments_deleted > 0, "node {node} deleted segments: {stats:?}");
        assert!(stats.segments <= 4, "node {node} keeps few segments: {stats:?}");
    }
    nodes.shutdown().await;
    for node in 1..=3 {
        nodes.start_node(node).await;
    }
    for group in GROUPS {
        nodes.group(group, 1).wait_for_leader(WAIT).await.expect("a leader after the restart");
        let last = nodes.propose(group, value(group, 40)).await;
        nodes.wait_applied(group, &[1, 2, 3], last).await;
        let expected: Vec<u64> = (0..41).map(|round| value(group, round)).collect();
        for node in 1..=3 {
            assert_eq!(nodes.values(group, node), expected, "group {group} on node {node}: snapshot, then the WAL");
        }
    }
    nodes.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_cannot_write_a_snapshot_it_was_sent_keeps_its_log_and_starts_again() {
    let dir = temp("snapshot-unwritable");
    let config = GroupConfig { snapshot_every_entries: 5, kept_after_snapshot_entries: 0, ..fast_config() };
    let mut nodes = Nodes::start(&dir, config, WalConfig::default()).await;
    let group = 1;
    let mut last = nodes.propose(group, value(group, 0)).await;
    for round in 1..12 {
        last = nodes.propose(group, value(group, round)).await;
    }
    nodes.wait_applied(group, &[1, 2, 3], last).await;
    let leader = nodes.group(group, 1).leader().expect("a leader");
    let member = (1..=3).rev().find(|n| *n != leader).expect("a follower");
    let before = nodes
        .group(group, member)
        .wait_until(WAIT, "a snapshot with entries after it", |s| {
            s.snapshot_index.is_some() && s.last_log_index > s.snapshot_index
        })
        .await
        .expect("a snapshot and the log after it");
    nodes.stop_node(member).await;
    // The others go on, snapshot and purge past all the member holds: it must be sent a snapshot.
    for round in 12..40 {
        nodes.propose(group, value(group, round)).await;
    }
    for node in (1..=3).filter(|n| *n != member) {
        nodes
            .group(group, node)
            .wait_until(WAIT, "purged past the stopped member", |s| s.purged_index > before.last_log_index)
            .await
            .expect("purged");
    }

    // Its snapshot cannot be written (the temporary file's name is taken by a directory): the
    // member stops when it is sent the leader's.
    let blocker = nodes.node_dir(member).join(format!("group-{group}.tmp"));
    std::fs::create_dir_all(&blocker).expect("blocker");
    nodes.start_node(member).await;
    let handle = nodes.group(group, member);
    let stopped = handle.wait_until(WAIT, "stopped", |s| s.role == Role::Shutdown).await;
    assert!(
        stopped.is_ok() || handle.status().role == Role::Shutdown,
        "the member stops on the failed snapshot write: {:?}",
        handle.status()
    );
    for g in GROUPS {
        let handle = nodes.nets[&g].unregister(member).expect("registered");
        let _ = handle.shutdown().await;
        nodes.applied.remove(&(g, member));
    }
    nodes.wals.remove(&member).expect("a WAL").close().await;

    // What no snapshot on its disk covers is still in its log: openraft asked for it to be purged
    // up to the leader's snapshot, but that snapshot never reached the disk.
    {
        let wal = Wal::open(&nodes.node_dir(member).join("wal"), WalConfig::default()).expect("open");
        let mut log = wal.log::<List>(group).expect("log");
        let (_, _, purged, last_log) = pointers(&mut log).await;
        assert!(
            purged.map(|p| p.index) <= before.snapshot_index,
            "purged {purged:?}, past the snapshot on disk ({:?})",
            before.snapshot_index
        );
        assert!(last_log.map(|l| l.index) >= before.last_log_index, "the log is kept: {last_log:?} {before:?}");
        wal.close().await;
    }

    // Once the snapshot can be written, the member starts from its own snapshot and log, is sent
    // the leader's snapshot and catches up.
    std::fs::remove_dir(&blocker).expect("blocker removed");
    nodes.start_node(member).await;
    last = nodes.propose(group, value(group, 40)).await;
    nodes.wait_applied(group, &[1, 2, 3], last).await;
    let expected: Vec<u64> = (0..41).map(|round| value(group, round)).collect();
    for node in 1..=3 {
        assert_eq!(nodes.values(group, node), expected, "node {node}");
    }
    nodes.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
