//! Three nodes in one process over a `LocalNet`: replication, leader failure, snapshot catch-up.

mod common;

use std::time::Duration;

use common::{commands, fast_config, Cluster, WAIT};
use warren_raft::{Applied, GroupConfig, ProposeError};

/// How long a proposal to a cut-off leader is given before it counts as not committed.
const STUCK: Duration = Duration::from_secs(2);

#[tokio::test]
async fn proposals_apply_on_every_node_in_the_same_order() {
    let mut cluster = Cluster::start(fast_config()).await;
    let leader = cluster.leader();
    let group = cluster.group(leader);

    let mut proposed = Vec::new();
    for value in 0..20 {
        proposed.push(group.propose(value).await.expect("leader accepts"));
    }
    // Concurrent proposals: the log picks an order; every node must apply that same order.
    let tasks: Vec<_> = (100..110)
        .map(|value| {
            let group = group.clone();
            tokio::spawn(async move { group.propose(value).await })
        })
        .collect();
    for task in tasks {
        proposed.push(task.await.expect("task").expect("leader accepts"));
    }
    proposed.sort();
    assert!(proposed.windows(2).all(|w| w[0].0 < w[1].0), "each proposal has its own index");
    let last = proposed.last().expect("proposals").0;
    cluster.wait_applied(&[1, 2, 3], last).await;

    let (values, digest) = cluster.state(leader);
    assert_eq!(values.len(), 30);
    assert_eq!(&values[..20], (0..20).collect::<Vec<_>>().as_slice());
    for id in 1..=3 {
        assert_eq!(cluster.state(id), (values.clone(), digest), "node {id} holds the leader's state");
        // Each node reported exactly the outputs the proposers got, at the same indexes.
        assert_eq!(commands(&cluster.drain(id)), proposed, "node {id}'s applied stream");
    }

    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let refused = cluster.group(follower).propose(7).await;
    assert_eq!(refused, Err(ProposeError::NotLeader { leader: Some(leader) }));

    cluster.shutdown(&[1, 2, 3]).await;
}

#[tokio::test]
async fn an_isolated_leader_is_replaced_and_catches_up_after_healing() {
    let cluster = Cluster::start(fast_config()).await;
    let old = cluster.leader();
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let mut last = 0;
    for value in 0..5 {
        last = cluster.group(old).propose(value).await.expect("committed").0;
    }
    cluster.wait_applied(&[1, 2, 3], last).await;
    let applied_before = last;

    cluster.net.isolate(old);
    // The old leader still believes it leads and takes the proposal, but cannot commit it.
    let stuck_deadline = tokio::time::Instant::now() + STUCK;
    let mut stuck = tokio::spawn({
        let group = cluster.group(old);
        async move { group.propose(999).await }
    });

    let status = cluster
        .group(others[0])
        .wait_until(WAIT, "a new leader", |s| s.leader.is_some_and(|l| l != old))
        .await
        .expect("the majority elects a new leader");
    let new = status.leader.expect("a leader");
    cluster.wait_all_know_leader(&others, new).await;
    for value in 5..10 {
        last = cluster.group(new).propose(value).await.expect("the majority commits").0;
    }
    cluster.wait_applied(&others, last).await;

    let outcome = tokio::time::timeout_at(stuck_deadline, &mut stuck).await;
    assert!(outcome.is_err(), "the isolated leader's proposal should still be pending: {outcome:?}");
    assert_eq!(cluster.group(old).status().applied_index, Some(applied_before), "the old leader applied nothing new");

    cluster.net.heal();
    cluster.wait_all_know_leader(&[old], new).await;
    cluster.wait_applied(&[old], last).await;
    // Once the old leader learns of the new term, its pending proposal fails and names whom to ask.
    let outcome = tokio::time::timeout(WAIT, stuck).await.expect("answered").expect("task");
    assert!(
        matches!(outcome, Err(ProposeError::NotLeader { leader }) if leader.is_none() || leader == Some(new)),
        "{outcome:?}"
    );
    let expected: Vec<u64> = (0..10).collect();
    for id in 1..=3 {
        let (values, _) = cluster.state(id);
        assert_eq!(values, expected, "node {id}: the uncommitted 999 was dropped everywhere");
        assert_eq!(cluster.state(id), cluster.state(new));
    }

    cluster.shutdown(&[1, 2, 3]).await;
}

#[tokio::test]
async fn a_follower_behind_the_purged_log_catches_up_by_snapshot() {
    let config = GroupConfig { snapshot_every_entries: 5, kept_after_snapshot_entries: 0, ..fast_config() };
    let mut cluster = Cluster::start(config).await;
    let leader = cluster.leader();
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let lagging_at = cluster.group(lagging).status().last_log_index.expect("the initial entries");
    cluster.drain(lagging);

    cluster.net.isolate(lagging);
    let mut last = 0;
    for value in 0..30 {
        last = cluster.group(leader).propose(value).await.expect("committed").0;
    }
    // The leader no longer has the entries the lagging node needs next.
    cluster
        .group(leader)
        .wait_until(WAIT, "purged past the lagging node", |s| s.purged_index.is_some_and(|p| p > lagging_at + 1))
        .await
        .expect("snapshot and purge");

    cluster.net.heal();
    cluster.wait_applied(&[lagging], last).await;
    let events = cluster.drain(lagging);
    assert!(
        matches!(events.first(), Some(Applied::Restored { index }) if *index > lagging_at),
        "the lagging node was restored from a snapshot first: {events:?}"
    );
    assert_eq!(cluster.state(lagging), cluster.state(leader));

    // The log goes on (perhaps under a new leader: the lagging node came back with a higher term) after the snapshot.
    let (index, _) = cluster.propose(1000).await;
    cluster.wait_applied(&[1, 2, 3], index).await;
    let (values, _) = cluster.state(lagging);
    assert_eq!(values, (0..30).chain([1000]).collect::<Vec<_>>());
    for id in 1..=3 {
        assert_eq!(cluster.state(id), cluster.state(leader), "node {id}");
    }

    cluster.shutdown(&[1, 2, 3]).await;
}
