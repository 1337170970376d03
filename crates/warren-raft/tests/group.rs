//! The rest of the group API: membership changes, the applied stream's bound, one-way cuts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{commands, fast_config, Cluster, List, WAIT};
use warren_raft::{AdminError, Applied, GroupConfig, LocalNet, Peer, RpcError, Transport, Vote, VoteRequest};

#[tokio::test]
async fn a_learner_joins_as_voter_and_a_voter_leaves() {
    let mut cluster = Cluster::start(fast_config()).await;
    let leader = cluster.leader();
    let group = cluster.group(leader);
    for value in 0..5 {
        group.propose(value).await.expect("committed");
    }

    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let refused = cluster.group(follower).add_learner(4, "local-4".into()).await;
    assert_eq!(refused, Err(AdminError::NotLeader { leader: Some(leader) }));
    let not_learner = group.change_membership(BTreeSet::from([leader, 9])).await;
    assert!(matches!(not_learner, Err(AdminError::Rejected { .. })), "{not_learner:?}");

    cluster.add_node(4).await;
    let added_at = group.add_learner(4, "local-4".into()).await.expect("learner added");
    group
        .wait_until(WAIT, "node 4 caught up", |s| s.matched.get(&4).is_some_and(|m| *m >= Some(added_at)))
        .await
        .expect("learner catches up");
    assert!(group.status().learners.contains(&4));

    let voters = BTreeSet::from([leader, follower, 4]);
    let removed = (1..=3).find(|id| !voters.contains(id)).expect("a voter to remove");
    let changed_at = group.change_membership(voters.clone()).await.expect("membership changed");
    let status = group
        .wait_until(WAIT, "replication to the removed voter stopped", |s| !s.matched.contains_key(&removed))
        .await
        .expect("the leader stops replicating to the removed voter");
    assert_eq!(status.voters, voters);
    assert!(status.learners.is_empty(), "a removed voter is gone, not a learner");

    let (index, _) = group.propose(100).await.expect("the new membership commits");
    assert!(index > changed_at);
    cluster.wait_applied(&[leader, follower, 4], index).await;
    let expected: Vec<u64> = (0..5).chain([100]).collect();
    assert_eq!(cluster.state(4).0, expected);
    assert_eq!(cluster.state(4), cluster.state(leader));
    // The learner's stream holds every command from the start, since it replayed the whole log.
    let indexes: Vec<u64> = commands(&cluster.drain(4)).iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes.len(), 6);
    assert_eq!(indexes.last(), Some(&index));

    cluster.shutdown(&[1, 2, 3, 4]).await;
}

#[tokio::test]
async fn a_voter_taken_out_as_learner_sees_it_and_is_then_dropped() {
    let cluster = Cluster::start(fast_config()).await;
    let leader = cluster.leader();
    let group = cluster.group(leader);
    group.propose(1).await.expect("committed");
    let out = (1..=3).find(|id| *id != leader).expect("a follower");
    let voters: BTreeSet<u64> = (1..=3).filter(|id| *id != out).collect();

    let changed_at = group.change_membership_retaining(voters.clone()).await.expect("membership changed");
    assert_eq!(group.status().voters, voters);
    assert_eq!(group.status().learners, BTreeSet::from([out]));
    // The member taken out goes on receiving the log, and sees its own removal.
    cluster
        .group(out)
        .wait_until(WAIT, "the member taken out sees it", move |s| {
            !s.voters.contains(&out) && s.applied_index >= Some(changed_at)
        })
        .await
        .expect("the learner learns it is out");
    let (index, _) = group.propose(2).await.expect("two voters of two commit");
    cluster.wait_applied(&[out], index).await;

    // Voters cannot be dropped as learners; the learner can.
    let refused = group.remove_learners(BTreeSet::from([leader])).await;
    assert!(matches!(refused, Err(AdminError::Rejected { .. })), "{refused:?}");
    group.remove_learners(BTreeSet::from([out])).await.expect("learner dropped");
    let status = group
        .wait_until(WAIT, "replication to the dropped learner stopped", move |s| !s.matched.contains_key(&out))
        .await
        .expect("the leader stops replicating to it");
    assert!(status.learners.is_empty());
    assert_eq!(status.voters, voters);
    cluster.shutdown(&[1, 2, 3]).await;
}

#[tokio::test]
async fn a_full_applied_stream_holds_back_applying_until_the_host_reads() {
    const CAPACITY: usize = 4;
    let config = GroupConfig { applied_capacity: CAPACITY, ..fast_config() };
    let net = LocalNet::new();
    let (group, mut applied) = net.start(1, &config, List::default()).await.expect("start");
    group.initialize(BTreeMap::from([(1, "local-1".to_owned())])).await.expect("initialize");
    group.wait_for_leader(WAIT).await.expect("leader");

    // At the limit: every proposal completes though nobody reads.
    for value in 0..CAPACITY as u64 {
        group.propose(value).await.expect("committed");
    }
    // One past it: applying waits for room, and the proposal with it.
    let mut blocked = tokio::spawn({
        let group = group.clone();
        async move { group.propose(99).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut blocked).await;
    assert!(early.is_err(), "the proposal completed with the stream full: {early:?}");

    let first = applied.recv().await.expect("an event");
    assert!(matches!(first, Applied::Command { output, .. } if output == 0));
    let (index, _) =
        tokio::time::timeout(WAIT, blocked).await.expect("room frees the apply").expect("task").expect("committed");
    let mut rest = Vec::new();
    while let Ok(event) = applied.try_recv() {
        rest.push(event);
    }
    assert_eq!(rest.len(), CAPACITY);
    assert_eq!(rest.last().map(Applied::index), Some(index));

    group.shutdown().await.expect("shutdown");
}

/// Nodes 1 and 2 on a LocalNet, not a group yet (votes between them are plain RPCs); node 2's
/// group.
async fn two_nodes() -> (LocalNet<List>, warren_raft::Group<List>) {
    let net = LocalNet::<List>::new();
    let config = fast_config();
    net.start(1, &config, List::default()).await.expect("start");
    let (two, _) = net.start(2, &config, List::default()).await.expect("start");
    (net, two)
}

/// A vote request from node 1 in `term`.
fn ask(term: u64) -> VoteRequest {
    VoteRequest::new(Vote::new(term, 1), None)
}

#[tokio::test]
async fn a_one_way_cut_loses_requests_or_replies_in_that_direction_only() {
    let (net, two) = two_nodes().await;
    let to_two = Peer { id: 2, addr: "local-2".into() };

    net.cut(1, 2);
    let lost = net.transport(1).vote(&to_two, ask(5), WAIT).await;
    assert!(matches!(lost, Err(RpcError::Unreachable { .. })), "{lost:?}");
    assert_eq!(two.status().term, 0, "the request never arrived");

    net.heal();
    net.cut(2, 1);
    let lost = net.transport(1).vote(&to_two, ask(6), WAIT).await;
    assert!(matches!(lost, Err(RpcError::Unreachable { .. })), "{lost:?}");
    two.wait_until(WAIT, "term 6", |s| s.term == 6).await.expect("the request arrived, only the reply was lost");

    net.heal();
    let granted = net.transport(1).vote(&to_two, ask(7), WAIT).await.expect("delivered both ways");
    assert!(granted.vote_granted);
    two.wait_until(WAIT, "term 7", |s| s.term == 7).await.expect("vote recorded");

    net.isolate(2);
    let lost = net.transport(1).vote(&to_two, ask(8), WAIT).await;
    assert!(matches!(lost, Err(RpcError::Unreachable { .. })), "{lost:?}");
    assert_eq!(two.status().term, 7);

    let to_nowhere = Peer { id: 9, addr: "local-9".into() };
    let lost = net.transport(1).vote(&to_nowhere, ask(9), WAIT).await;
    assert!(matches!(lost, Err(RpcError::Unreachable { .. })), "{lost:?}");
}

#[tokio::test]
async fn message_faults_lose_and_delay_messages_until_cleared() {
    let (net, two) = two_nodes().await;
    let to_two = Peer { id: 2, addr: "local-2".into() };

    // Everything lost: the request never arrives.
    net.set_message_faults(7, 1.0, Duration::ZERO);
    let lost = net.transport(1).vote(&to_two, ask(5), WAIT).await;
    assert!(matches!(lost, Err(RpcError::Unreachable { .. })), "{lost:?}");
    assert_eq!(two.status().term, 0, "the request never arrived");

    // Nothing lost, every message held back up to 30 ms: delivered, each way after its delay.
    net.set_message_faults(7, 0.0, Duration::from_millis(30));
    let granted = net.transport(1).vote(&to_two, ask(6), WAIT).await.expect("delivered");
    assert!(granted.vote_granted);
    assert_eq!(two.status().term, 6);

    // Half lost, from one seed: the same seed gives the same fates to the same sequence.
    let fates = |seed| {
        let net = net.clone();
        let to_two = to_two.clone();
        async move {
            net.set_message_faults(seed, 0.5, Duration::ZERO);
            let mut fates = Vec::new();
            for term in 10..40 {
                fates.push(net.transport(1).vote(&to_two, ask(term), WAIT).await.is_ok());
            }
            fates
        }
    };
    let first = fates(11).await;
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
    assert_eq!(fates(11).await, first);

    net.clear_message_faults();
    for term in 50..60 {
        net.transport(1).vote(&to_two, ask(term), WAIT).await.expect("nothing lost once cleared");
    }
}

/// Quiet members keep their group as it is with no heartbeats: followers call no election
/// however long the leader is silent; a proposal wakes the leader and commits; a follower
/// that knows its leader stays quiet when handed a command; and once the leader is gone, a
/// member woken and told to campaign takes over.
#[tokio::test]
async fn quiet_members_hold_their_leader_until_woken() {
    let mut cluster = Cluster::start(fast_config()).await;
    // A quiet leader sends no heartbeats: followers that are not quiet elect another.
    let first = cluster.leader();
    let first_term = cluster.group(first).status().term;
    cluster.group(first).set_quiet(true);
    let other = [1, 2, 3].into_iter().find(|id| *id != first).expect("a follower");
    cluster
        .group(other)
        .wait_until(WAIT, "a new term", move |s| s.term > first_term && s.leader.is_some())
        .await
        .expect("the followers elected a leader without heartbeats");
    cluster.group(first).set_quiet(false);
    let leader = cluster.group(other).wait_for_leader(WAIT).await.expect("a leader");
    cluster.wait_all_know_leader(&[1, 2, 3], leader).await;

    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let term = cluster.group(leader).status().term;
    for id in followers.iter().chain([&leader]) {
        cluster.group(*id).set_quiet(true);
    }
    // Ten election timeouts without a heartbeat: nobody calls an election.
    let churn =
        cluster.group(followers[0]).wait_until(Duration::from_secs(3), "a new term", move |s| s.term > term).await;
    assert!(churn.is_err(), "a quiet follower called an election: {churn:?}");
    assert_eq!(cluster.group(followers[1]).status().term, term);

    // A follower handed a command stays quiet (it knows the leader); the leader wakes.
    let refused = cluster.group(followers[0]).propose(1).await;
    assert!(matches!(refused, Err(warren_raft::ProposeError::NotLeader { leader: Some(l) }) if l == leader));
    assert!(cluster.group(followers[0]).is_quiet());
    let (index, _) = cluster.group(leader).propose(2).await.expect("committed");
    assert!(!cluster.group(leader).is_quiet(), "the leader woke to propose");
    cluster.wait_applied(&[1, 2, 3], index).await;

    // The leader gone: a quiet follower woken and told to campaign is elected.
    cluster.group(leader).set_quiet(true);
    cluster.stop(leader).await;
    let next = cluster.group(followers[0]);
    next.set_quiet(false);
    next.campaign().await.expect("campaign");
    let status = next.wait_until(WAIT, "a new leader", move |s| s.leader.is_some_and(|l| l != leader)).await;
    assert!(status.is_ok(), "{status:?}");
}

/// A list whose machine panics applying `POISON`: a bug in a machine, as a member meets it.
#[derive(Debug, Default)]
struct Fragile(List);

const POISON: u64 = 666;

impl warren_raft::Machine for Fragile {
    type Command = u64;
    type Output = u64;
    fn apply(&mut self, index: u64, value: &u64) -> u64 {
        assert_ne!(*value, POISON, "the poison command");
        self.0.apply(index, value)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
    fn restore(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.restore(bytes)
    }
    fn encode_command(value: &u64, out: &mut Vec<u8>) {
        List::encode_command(value, out)
    }
    fn decode_command(bytes: &[u8]) -> std::io::Result<u64> {
        List::decode_command(bytes)
    }
}

#[tokio::test]
async fn a_member_whose_machine_panicked_stops_rather_than_going_on_half_alive() {
    let net = LocalNet::<Fragile>::new();
    let (group, _applied) = net.start(1, &fast_config(), Fragile::default()).await.expect("start");
    group.initialize(BTreeMap::from([(1, "local-1".to_owned())])).await.expect("initialize");
    group.wait_for_leader(WAIT).await.expect("leader");
    group.propose(1).await.expect("committed");
    assert_eq!(group.status().role, warren_raft::Role::Leader);

    // Applying the poison panics. The proposals after it are never applied: one of them finds
    // the member stopped (a host then starts it again from its log), as soon as the core
    // hands the dead machine something to apply; never a member that goes on taking commands
    // it does not apply.
    let poisoned = group.submit(POISON).expect("handed over");
    let deadline = tokio::time::Instant::now() + WAIT;
    for value in 2.. {
        match tokio::time::timeout(Duration::from_millis(200), group.propose(value)).await {
            Ok(Err(_)) => break,
            Ok(Ok(applied)) => panic!("{value} applied after the poison: {applied:?}"),
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "the member never stopped"),
        }
    }
    assert_eq!(group.status().role, warren_raft::Role::Shutdown);
    assert_eq!(group.status().applied_index, Some(2), "nothing applied from the poison on");
    assert!(tokio::time::timeout(WAIT, poisoned).await.expect("an answer").is_err());
}

/// A member told its votes need a log (a node reset and joined again under its name) refuses
/// every candidate while its log is empty, and answers as any member once the leader has sent
/// it the log.
#[tokio::test]
async fn a_member_whose_votes_need_a_log_refuses_them_until_it_has_one() {
    let mut cluster = Cluster::start(fast_config()).await;
    let leader = cluster.leader();
    let group = cluster.group(leader);
    for value in 0..3 {
        group.propose(value).await.expect("committed");
    }
    let fresh = cluster.add_node(4).await;
    fresh.set_votes_need_log(true);
    let term = group.status().term + 10;
    let refused = fresh.handle_vote(VoteRequest::new(Vote::new(term, 9), None)).await.expect("answered");
    assert!(!refused.vote_granted, "an empty member with the flag granted a vote: {refused:?}");
    // The same request to a fresh member without the flag is granted (what the flag prevents).
    let other = cluster.add_node(5).await;
    let granted = other.handle_vote(VoteRequest::new(Vote::new(term, 9), None)).await.expect("answered");
    assert!(granted.vote_granted, "{granted:?}");

    let added_at = group.add_learner(4, "local-4".into()).await.expect("learner added");
    group
        .wait_until(WAIT, "node 4 caught up", |s| s.matched.get(&4).is_some_and(|m| *m >= Some(added_at)))
        .await
        .expect("learner catches up");
    // With a log, the request goes to Raft itself, whose answer names that log (it may
    // still refuse: the leader's lease holds).
    let last = fresh.status().last_log_index;
    let ahead = warren_raft::LogId::new(warren_raft::LeaderId::new(term + 1, 9), 1_000);
    let answer = fresh.handle_vote(VoteRequest::new(Vote::new(term + 1, 9), Some(ahead))).await.expect("answered");
    assert_eq!(answer.last_log_id.map(|id| id.index), last, "{answer:?}");
    assert!(refused.last_log_id.is_none());
}
