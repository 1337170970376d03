//! Members on durable logs (`FileLog`): a member restarted from its file comes back with its
//! vote and every entry it acknowledged, and a whole cluster stopped and started again keeps
//! everything it committed.

mod common;

use common::{fast_config, Cluster, WAIT};
use warren_raft::GroupConfig;

fn durable_config() -> GroupConfig {
    // No snapshots: the machine is rebuilt from the log alone.
    GroupConfig { snapshot_every_entries: 0, ..fast_config() }
}

fn snapshotting_config() -> GroupConfig {
    // A snapshot every 5 entries and nothing kept behind it: a restart needs the snapshot.
    GroupConfig { snapshot_every_entries: 5, kept_after_snapshot_entries: 0, ..fast_config() }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-raft-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A durable cluster in `dir` with the values 0 to 9 proposed and applied on every member; the
/// index of the last.
async fn durable_with_ten_values(dir: &std::path::Path) -> (Cluster, u64) {
    let cluster = Cluster::start_durable(durable_config(), dir).await;
    let mut last = 0;
    for value in 0..10 {
        last = cluster.propose(value).await.0;
    }
    cluster.wait_applied(&[1, 2, 3], last).await;
    (cluster, last)
}

#[tokio::test]
async fn a_member_restarted_from_its_log_rejoins_with_its_vote_and_entries() {
    let dir = temp("member");
    let (mut cluster, mut last) = durable_with_ten_values(&dir).await;
    let leader = cluster.leader();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let term = cluster.group(follower).status().term;
    cluster.stop(follower).await;
    for value in 10..20 {
        last = cluster.propose(value).await.0;
    }

    // What it acknowledged is in its file before it hears from anyone, and so is its vote.
    {
        use warren_raft::FileLog;
        let mut log = FileLog::<common::List>::open(&dir.join(format!("node-{follower}.log"))).expect("open");
        let (last_index, voted_term) = stored(&mut log).await;
        assert!(last_index >= 10, "the follower's log holds the first ten commands (last index {last_index})");
        assert!(voted_term >= term, "its vote is kept: term {voted_term} against {term} before it stopped");
    }
    cluster.start_from_file(follower, &dir).await;
    cluster.wait_applied(&[follower], last).await;
    let (values, _) = cluster.state(follower);
    assert_eq!(values, (0..20).collect::<Vec<_>>());
    assert_eq!(cluster.state(follower), cluster.state(leader));
    cluster.shutdown(&[1, 2, 3]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_whole_cluster_stopped_and_started_keeps_what_it_committed() {
    let dir = temp("cluster");
    let mut cluster = Cluster::start_durable(durable_config(), &dir).await;
    for value in 0..15 {
        cluster.propose(value).await;
    }
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.start_from_file(id, &dir).await;
    }
    // No initialize: the members know the group from their logs and elect a leader.
    cluster.group(1).wait_for_leader(WAIT).await.expect("a leader after the restart");
    let (last, _) = cluster.propose(15).await;
    cluster.wait_applied(&[1, 2, 3], last).await;
    for id in 1..=3 {
        let (values, _) = cluster.state(id);
        assert_eq!(values, (0..16).collect::<Vec<_>>(), "node {id}");
    }
    cluster.shutdown(&[1, 2, 3]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_leader_that_lost_the_tail_of_its_log_comes_back_as_a_follower() {
    // A leader sends entries to its followers before its own copy is durable: a crash (or a
    // failed write) can leave it without entries they hold. Before the fix it came back as the
    // leader of the same term (openraft 0.9 restores a member whose stored vote is its own
    // committed one) and appended other commands at those indexes under the same log ids, which
    // the followers took for the ones they had: the machines diverged (seen in the disk-fault
    // runs of warren-chaos: one node's copy of a quorum queue with 100 messages the others had
    // not).
    use openraft::storage::RaftLogStorage;
    let dir = temp("lost-tail");
    let (mut cluster, last) = durable_with_ten_values(&dir).await;
    let leader = cluster.leader();
    let term = cluster.group(leader).status().term;
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    {
        // The leader's last three entries (and the commit point past them) never reached its disk.
        let mut log =
            warren_raft::FileLog::<common::List>::open(&dir.join(format!("node-{leader}.log"))).expect("open");
        let kept = log.get_log_state().await.expect("state").last_log_id.expect("entries");
        assert_eq!(kept.index, last);
        let cut = openraft::LogId::new(kept.leader_id, last - 2);
        log.truncate(cut).await.expect("truncate");
        log.save_committed(Some(openraft::LogId::new(kept.leader_id, last - 3))).await.expect("committed");
    }
    // It starts first, as a node that restarts at once would, before the others.
    cluster.start_from_file(leader, &dir).await;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.start_from_file(id, &dir).await;
    }
    cluster.group(1).wait_for_leader(WAIT).await.expect("a leader after the restart");
    let (at, _) = cluster.propose(100).await;
    assert!(at > last, "the new command goes after what the followers held (at {at}, they held {last})");
    cluster.wait_applied(&[1, 2, 3], at).await;
    let expected: Vec<u64> = (0..10).chain([100]).collect();
    for id in 1..=3 {
        assert_eq!(cluster.state(id).0, expected, "node {id}");
        assert!(cluster.group(id).status().term > term, "node {id} is in a later term");
    }
    assert_eq!(cluster.state(1), cluster.state(2));
    assert_eq!(cluster.state(2), cluster.state(3));
    cluster.shutdown(&[1, 2, 3]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The index of the last entry a log holds and the term of its vote, as openraft reads them.
async fn stored(log: &mut warren_raft::FileLog<common::List>) -> (u64, u64) {
    use openraft::storage::RaftLogStorage;
    let state = log.get_log_state().await.expect("log state");
    let vote = log.read_vote().await.expect("vote");
    (state.last_log_id.map_or(0, |id| id.index), vote.map_or(0, |v| v.leader_id().term))
}

#[tokio::test]
async fn members_restart_from_their_snapshot_and_the_log_after_it() {
    let dir = temp("snapshots");
    let mut cluster = Cluster::start_durable(snapshotting_config(), &dir).await;
    for value in 0..23 {
        cluster.propose(value).await;
    }
    // Every member has snapshotted and purged its log behind the snapshot.
    for id in 1..=3 {
        cluster
            .group(id)
            .wait_until(WAIT, "a purged log", |s| s.purged_index.is_some_and(|p| p >= 15))
            .await
            .expect("snapshot and purge");
    }
    for id in 1..=3 {
        cluster.stop(id).await;
        assert!(dir.join(format!("node-{id}.snapshot")).exists(), "node {id} kept its snapshot");
    }
    for id in 1..=3 {
        cluster.start_from_file(id, &dir).await;
    }
    cluster.group(1).wait_for_leader(WAIT).await.expect("a leader after the restart");
    let (last, _) = cluster.propose(23).await;
    cluster.wait_applied(&[1, 2, 3], last).await;
    for id in 1..=3 {
        let (values, _) = cluster.state(id);
        assert_eq!(values, (0..24).collect::<Vec<_>>(), "node {id}: the snapshot, then the log after it");
    }
    cluster.shutdown(&[1, 2, 3]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_log_longer_than_the_applied_stream_replays_at_start_as_one_restored_event() {
    // Before the fix, a member restarting on more entries than its applied stream holds waited
    // for a reader that could not exist yet: its start never returned.
    let dir = temp("long-replay");
    let config = GroupConfig { applied_capacity: 4, ..durable_config() };
    let mut cluster = Cluster::start_durable(config, &dir).await;
    let mut last = 0;
    for value in 0..20 {
        last = cluster.propose(value).await.0;
        for id in 1..=3 {
            cluster.drain(id);
        }
    }
    cluster.wait_applied(&[1, 2, 3], last).await;
    for id in 1..=3 {
        cluster.drain(id);
    }
    let leader = cluster.leader();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(follower).await;
    tokio::time::timeout(WAIT, cluster.start_from_file(follower, &dir)).await.expect("the member started");
    let (values, _) = cluster.state(follower);
    assert_eq!(values, (0..20).collect::<Vec<_>>(), "the replayed machine");
    // The replay is one event, and what comes after it is reported one by one.
    let events = cluster.drain(follower);
    assert!(matches!(events.first(), Some(warren_raft::Applied::Restored { index }) if *index >= last), "{events:?}");
    let (next, _) = cluster.propose(20).await;
    cluster.wait_applied(&[follower], next).await;
    let events = cluster.drain(follower);
    assert!(matches!(events.as_slice(), [warren_raft::Applied::Command { index, .. }] if *index == next), "{events:?}");
    cluster.shutdown(&[1, 2, 3]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
