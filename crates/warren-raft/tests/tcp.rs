//! Three nodes in one process on real sockets (127.0.0.1, ephemeral ports), each hosting two
//! groups (the list machine under group ids 1 and 2) over one `TcpNode` endpoint per node:
//! replication, a stopped leader's endpoint, a node with the wrong cookie, a node restarted at
//! the same address. The runtime has two worker threads, as a broker's would, so the endpoint's
//! tasks really run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use common::{commands, fast_config, List, WAIT};
use warren_raft::GroupConfig;
use warren_raft::{
    Applied, AppliedRx, Group, ProposeError, RpcError, TcpConfig, TcpNode, TcpStats, Transport, Vote, VoteRequest,
    DEFAULT_MAX_FRAME_BYTES,
};

const GROUPS: [u64; 2] = [1, 2];
const NODES: [u64; 3] = [1, 2, 3];

/// Leader changes a proposal may chase before the test gives up.
const PROPOSE_ATTEMPTS: usize = 10;

/// One node: its endpoint and its member of each group.
struct Member {
    node: TcpNode,
    groups: BTreeMap<u64, Group<List>>,
    applied: BTreeMap<u64, AppliedRx<u64>>,
}

impl Member {
    async fn start(id: u64, addr: SocketAddr, cookie: &[u8], config: &GroupConfig, max_frame: u32) -> Member {
        let tcp = TcpConfig { max_frame_bytes: max_frame, ..TcpConfig::new(id, cookie) };
        let node = TcpNode::bind(addr, tcp).await.expect("bind");
        let mut member = Member { node, groups: BTreeMap::new(), applied: BTreeMap::new() };
        for group in GROUPS {
            let (handle, applied) = member.node.start_group(group, config, List::default()).await.expect("start group");
            member.groups.insert(group, handle);
            member.applied.insert(group, applied);
        }
        member
    }

    /// Closes the endpoint (listener and connections), then shuts the groups down.
    async fn stop(self) {
        self.node.shutdown().await;
        for group in self.groups.values() {
            group.shutdown().await.expect("clean shutdown");
        }
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Cluster {
    members: BTreeMap<u64, Member>,
    addrs: BTreeMap<u64, String>,
    /// Drawn per cluster, so that tests running at once can never talk to each other's nodes
    /// (their node ids are the same) should a port be reused.
    cookie: Vec<u8>,
    config: GroupConfig,
    /// Every endpoint's frame limit.
    max_frame: u32,
}

impl Cluster {
    /// Nodes 1 to 3 on fresh ports with the test timeouts; see [`start_with`](Self::start_with).
    async fn start() -> Cluster {
        Cluster::start_with(fast_config()).await
    }

    async fn start_with(config: GroupConfig) -> Cluster {
        Cluster::start_framed(config, DEFAULT_MAX_FRAME_BYTES).await
    }

    /// Nodes 1 to 3 on fresh ports, their groups configured by `config` and their endpoints'
    /// frame limit `max_frame`; group 1 founded from node 1 and group 2 from node 2, each once
    /// all three members know its leader.
    async fn start_framed(config: GroupConfig, max_frame: u32) -> Cluster {
        let cookie = format!("warren-test-{:016x}", getrandom::u64().expect("random")).into_bytes();
        let mut members = BTreeMap::new();
        for id in NODES {
            members.insert(id, Member::start(id, any_port(), &cookie, &config, max_frame).await);
        }
        let addrs: BTreeMap<u64, String> =
            members.iter().map(|(id, m)| (*id, m.node.local_addr().to_string())).collect();
        let cluster = Cluster { members, addrs, cookie, config, max_frame };
        for group in GROUPS {
            cluster.group(group, group).initialize(cluster.addrs.clone()).await.expect("initialize");
            let leader = cluster.group(group, group).wait_for_leader(WAIT).await.expect("a leader");
            for id in NODES {
                cluster
                    .group(id, group)
                    .wait_until(WAIT, "the same leader", |s| s.leader == Some(leader))
                    .await
                    .expect("every member knows the leader");
            }
        }
        cluster
    }

    fn group(&self, id: u64, group: u64) -> Group<List> {
        self.members[&id].groups[&group].clone()
    }

    fn node(&self, id: u64) -> &TcpNode {
        &self.members[&id].node
    }

    fn live(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// The leader of `group` as the first live node knows it, once it knows one.
    async fn leader(&self, group: u64) -> u64 {
        let first = self.live()[0];
        self.group(first, group).wait_for_leader(WAIT).await.expect("a known leader")
    }

    /// Handles on every live member of `group`, for tasks that propose.
    fn handles(&self, group: u64) -> BTreeMap<u64, Group<List>> {
        self.members.iter().map(|(id, m)| (*id, m.groups[&group].clone())).collect()
    }

    async fn propose(&self, group: u64, value: u64) -> (u64, u64) {
        propose(&self.handles(group), value).await
    }

    async fn wait_applied(&self, ids: &[u64], group: u64, index: u64) {
        for id in ids {
            self.group(*id, group).wait_for_applied(index, WAIT).await.expect("applied");
        }
    }

    /// (values, digest) of node `id`'s machine in `group`.
    fn state(&self, id: u64, group: u64) -> (Vec<u64>, u64) {
        self.group(id, group).with_machine(|m| (m.values.clone(), m.digest))
    }

    fn drain(&mut self, id: u64, group: u64) -> Vec<Applied<u64>> {
        let rx = self.members.get_mut(&id).and_then(|m| m.applied.get_mut(&group)).expect("applied stream");
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    /// Stops node `id`: endpoint first, then its groups.
    async fn stop(&mut self, id: u64) {
        let member = self.members.remove(&id).expect("a live node");
        member.stop().await;
    }

    async fn shutdown(mut self) {
        for id in self.live() {
            self.stop(id).await;
        }
    }
}

/// Proposes `value` to whichever member of the group leads, following "not leader" answers as a
/// host would.
async fn propose(members: &BTreeMap<u64, Group<List>>, value: u64) -> (u64, u64) {
    let first = members.values().next().expect("a member");
    let mut target = first.wait_for_leader(WAIT).await.expect("a leader");
    for _ in 0..PROPOSE_ATTEMPTS {
        let Some(group) = members.get(&target) else {
            target = first
                .wait_until(WAIT, "a live leader", |s| s.leader != Some(target))
                .await
                .expect("a leader")
                .leader
                .expect("a leader");
            continue;
        };
        match group.propose(value).await {
            Ok(done) => return done,
            Err(ProposeError::NotLeader { leader: Some(next) }) => target = next,
            Err(ProposeError::NotLeader { leader: None }) => {
                target = group.wait_for_leader(WAIT).await.expect("a new leader");
            }
            Err(e) => panic!("proposal failed: {e}"),
        }
    }
    panic!("no leader accepted {value} in {PROPOSE_ATTEMPTS} attempts");
}

/// Waits until the endpoint's counters satisfy `condition`.
async fn wait_stats(node: &TcpNode, what: &str, condition: impl Fn(&TcpStats) -> bool) -> TcpStats {
    let mut stats = node.watch_stats();
    let seen = tokio::time::timeout(WAIT, stats.wait_for(|s| condition(s)))
        .await
        .unwrap_or_else(|_| panic!("node {}: no {what} within {WAIT:?}: {:?}", node.id(), node.stats()))
        .map(|s| *s);
    seen.expect("the endpoint's counters")
}

/// A value unique to `group`, so the groups' lists cannot be mistaken for each other.
fn value(group: u64, n: u64) -> u64 {
    group * 1_000 + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_shared_endpoints_replicate_in_the_same_order_everywhere() {
    let mut cluster = Cluster::start().await;

    // Twenty concurrent proposals per group: each log picks an order, which every node must apply.
    let mut tasks = Vec::new();
    for group in GROUPS {
        for n in 0..20 {
            let members = cluster.handles(group);
            tasks.push((group, tokio::spawn(async move { propose(&members, value(group, n)).await })));
        }
    }
    let mut proposed: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (group, task) in tasks {
        proposed.entry(group).or_default().push(task.await.expect("proposal task"));
    }

    for group in GROUPS {
        let done = proposed.get_mut(&group).expect("proposals");
        done.sort();
        assert!(done.windows(2).all(|w| w[0].0 < w[1].0), "each proposal has its own index");
        let last = done.last().expect("proposals").0;
        cluster.wait_applied(&NODES, group, last).await;

        let (values, digest) = cluster.state(1, group);
        let mut sorted = values.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).map(|n| value(group, n)).collect::<Vec<_>>(), "group {group} holds its own values");
        for id in NODES {
            assert_eq!(cluster.state(id, group), (values.clone(), digest), "node {id}, group {group}");
            assert_eq!(&commands(&cluster.drain(id, group)), done, "node {id}'s applied stream of group {group}");
        }
    }

    // Each leader reaches the others on one connection per peer, which carries both groups, and
    // nobody failed a handshake.
    let mut leaders = BTreeSet::new();
    for group in GROUPS {
        leaders.insert(cluster.leader(group).await);
    }
    for id in NODES {
        let others: Vec<u64> = NODES.into_iter().filter(|o| *o != id).collect();
        let peers = cluster.node(id).peers();
        if leaders.contains(&id) {
            assert_eq!(peers, others, "leader {id}'s connections");
        } else {
            assert!(peers.iter().all(|p| others.contains(p)), "node {id}'s connections: {peers:?}");
        }
        let stats = cluster.node(id).stats();
        assert_eq!((stats.auth_failures, stats.handshake_failures, stats.oversized_frames), (0, 0, 0), "{stats:?}");
    }

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leaders_endpoint_stops_the_others_elect_and_keep_committing() {
    let mut cluster = Cluster::start().await;
    for group in GROUPS {
        let mut last = 0;
        for n in 0..5 {
            last = cluster.propose(group, value(group, n)).await.0;
        }
        cluster.wait_applied(&NODES, group, last).await;
    }

    let old = cluster.leader(1).await;
    cluster.stop(old).await;
    let rest = cluster.live();
    assert_eq!(rest.len(), 2);

    for group in GROUPS {
        let status = cluster
            .group(rest[0], group)
            .wait_until(WAIT, "a leader other than the stopped node", |s| s.leader.is_some_and(|l| l != old))
            .await
            .expect("the two remaining nodes elect a leader");
        let new = status.leader.expect("a leader");
        assert!(rest.contains(&new));
        let mut last = 0;
        for n in 5..10 {
            last = cluster.propose(group, value(group, n)).await.0;
        }
        cluster.wait_applied(&rest, group, last).await;
        let expected: Vec<u64> = (0..10).map(|n| value(group, n)).collect();
        for id in &rest {
            assert_eq!(cluster.state(*id, group).0, expected, "node {id}, group {group}");
        }
    }

    // The stopped node's connections broke on both survivors, which now only hold each other.
    for id in &rest {
        wait_stats(cluster.node(*id), "lost connection", |s| s.lost >= 1).await;
        assert!(!cluster.node(*id).peers().contains(&old), "node {id} still connected to the stopped node");
    }

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cookie_cannot_take_part() {
    let cluster = Cluster::start().await;
    let intruder = Member::start(4, any_port(), b"not-the-cluster-cookie", &cluster.config, cluster.max_frame).await;
    let intruder_addr = intruder.node.local_addr().to_string();

    // Each group's leader adds node 4 and tries to replicate to it.
    let mut leaders = BTreeSet::new();
    for group in GROUPS {
        let leader = cluster.leader(group).await;
        leaders.insert(leader);
        cluster.group(leader, group).add_learner(4, intruder_addr.clone()).await.expect("learner added");
    }
    // The leaders find node 4's proof wrong; node 4 sees them hang up.
    for leader in &leaders {
        wait_stats(cluster.node(*leader), "authentication failure", |s| s.auth_failures >= 1).await;
    }
    wait_stats(&intruder.node, "failed handshake", |s| s.handshake_failures >= 1).await;

    let mut last = BTreeMap::new();
    for group in GROUPS {
        for n in 0..5 {
            last.insert(group, cluster.propose(group, value(group, n)).await.0);
        }
        cluster.wait_applied(&NODES, group, last[&group]).await;
    }
    for group in GROUPS {
        let status = intruder.groups[&group].status();
        assert_eq!(status.last_log_index, None, "group {group} reached node 4: {status:?}");
        assert_eq!(status.applied_index, None);
        assert!(intruder.groups[&group].with_machine(|m| m.values.is_empty()));
        let leader = cluster.leader(group).await;
        let matched = cluster.group(leader, group).status().matched;
        assert_eq!(matched.get(&4), Some(&None), "the leader never matched node 4 in group {group}");
    }
    assert!(intruder.node.peers().is_empty());

    // Node 4 calling a member directly is refused the same way, and the vote never arrives.
    let to_one = warren_raft::Peer { id: 1, addr: cluster.addrs[&1].clone() };
    let vote = VoteRequest::new(Vote::new(99, 4), None);
    let refused = intruder.node.transport::<List>(1).vote(&to_one, vote, WAIT).await;
    assert!(
        matches!(&refused, Err(RpcError::Unreachable { reason }) if reason.contains("authentication")),
        "{refused:?}"
    );
    assert!(intruder.node.stats().auth_failures >= 1);
    assert!(cluster.group(1, 1).status().term < 99, "node 4's vote request reached node 1");

    intruder.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_at_the_same_address_catches_up_by_snapshot() {
    // Frequent snapshots and nothing kept behind them: the leaders will have purged the log the
    // restarted node needs, so its catch-up carries a snapshot over the wire.
    let config = GroupConfig { snapshot_every_entries: 5, kept_after_snapshot_entries: 0, ..fast_config() };
    catch_up_by_snapshot(Cluster::start_with(config).await, 5).await;
}

/// A snapshot several times the endpoints' frame limit goes over in parts: before, it could not
/// be sent at all ("exceeds the frame limit"), and the restarted node never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_a_frame_goes_in_parts() {
    // Room in the applied streams for every value (nothing reads them until the end).
    let config = GroupConfig {
        snapshot_every_entries: 500,
        kept_after_snapshot_entries: 0,
        applied_capacity: 8_000,
        ..fast_config()
    };
    // About 3,000 values: a 24,000-byte snapshot, against 16 KiB frames (8 KiB parts; an
    // append of openraft's 300 entries at most still fits in one).
    catch_up_by_snapshot(Cluster::start_framed(config, 16 * 1024).await, 1_500).await;
}

/// Proposes `per_step` values to each group, stops a node and proposes as many again (the
/// leaders snapshot and purge), starts the node again empty at the same address and adds it
/// back: it must catch up from a snapshot over the wire and then replicate as the others.
async fn catch_up_by_snapshot(mut cluster: Cluster, per_step: u64) {
    for group in GROUPS {
        let mut last = 0;
        for n in 0..per_step {
            last = cluster.propose(group, value(group, n)).await.0;
        }
        cluster.wait_applied(&NODES, group, last).await;
    }

    // A node that leads neither group leaves both, then stops.
    let mut leaders = BTreeSet::new();
    for group in GROUPS {
        leaders.insert(cluster.leader(group).await);
    }
    let restarted = NODES.into_iter().find(|id| !leaders.contains(id)).expect("a node leading nothing");
    let rest: Vec<u64> = NODES.into_iter().filter(|id| *id != restarted).collect();
    let addr: SocketAddr = cluster.addrs[&restarted].parse().expect("an address");
    for group in GROUPS {
        let leader = cluster.leader(group).await;
        cluster.group(leader, group).change_membership(rest.iter().copied().collect()).await.expect("removed");
    }
    cluster.stop(restarted).await;

    for group in GROUPS {
        let mut last = 0;
        for n in per_step..2 * per_step {
            last = cluster.propose(group, value(group, n)).await.0;
        }
        cluster.wait_applied(&rest, group, last).await;
        let leader = cluster.leader(group).await;
        cluster
            .group(leader, group)
            .wait_until(WAIT, "a purged log", |s| s.purged_index.is_some())
            .await
            .expect("the leader snapshots and purges");
    }

    // Same id, same address, a new endpoint and empty groups.
    let member = Member::start(restarted, addr, &cluster.cookie, &cluster.config, cluster.max_frame).await;
    assert_eq!(member.node.local_addr(), addr);
    cluster.members.insert(restarted, member);
    for group in GROUPS {
        let leader = cluster.leader(group).await;
        let handle = cluster.group(leader, group);
        let added_at = handle.add_learner(restarted, addr.to_string()).await.expect("learner added");
        handle
            .wait_until(WAIT, "the restarted node caught up", |s| {
                s.matched.get(&restarted).is_some_and(|m| *m >= Some(added_at))
            })
            .await
            .expect("the learner catches up");
        handle.change_membership(NODES.into_iter().collect()).await.expect("a voter again");
    }

    for group in GROUPS {
        let mut last = 0;
        for n in 2 * per_step..2 * per_step + 5 {
            last = cluster.propose(group, value(group, n)).await.0;
        }
        cluster.wait_applied(&NODES, group, last).await;
        let expected: Vec<u64> = (0..2 * per_step + 5).map(|n| value(group, n)).collect();
        assert_eq!(cluster.state(restarted, group).0, expected, "group {group} on the restarted node");
        for id in NODES {
            assert_eq!(cluster.state(id, group), cluster.state(restarted, group), "node {id}, group {group}");
        }
        assert_eq!(cluster.group(restarted, group).status().voters, NODES.into_iter().collect());
        let events = cluster.drain(restarted, group);
        assert!(
            matches!(events.first(), Some(Applied::Restored { .. })),
            "group {group}: the restarted node began from a snapshot: {events:?}"
        );
    }

    cluster.shutdown().await;
}

/// Waits until `node`'s set of connected peers satisfies `condition`.
async fn wait_connected(node: &TcpNode, what: &str, condition: impl Fn(&BTreeSet<u64>) -> bool) {
    let mut connected = node.watch_connected();
    let seen = tokio::time::timeout(WAIT, connected.wait_for(|c| condition(c))).await;
    match seen {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("node {}: the endpoint is gone", node.id()),
        Err(_) => panic!("node {}: not {what} within {WAIT:?}: {:?}", node.id(), node.peer_status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_peers_stay_connected_without_any_group() {
    let cookie = format!("warren-test-{:016x}", getrandom::u64().expect("random")).into_bytes();
    let one = TcpNode::bind(any_port(), TcpConfig::new(1, cookie.clone())).await.expect("bind");
    let two = TcpNode::bind(any_port(), TcpConfig::new(2, cookie.clone())).await.expect("bind");
    let (addr_one, addr_two) = (one.local_addr(), two.local_addr());
    // By host name: the name is looked up at each dial.
    let by_name = |addr: SocketAddr| format!("localhost:{}", addr.port());
    // Each lists the whole cluster, itself included (left out by the endpoint).
    let cluster = BTreeMap::from([(1, by_name(addr_one)), (2, by_name(addr_two))]);
    one.watch_peers(cluster.clone());
    two.watch_peers(cluster.clone());
    wait_connected(&one, "connected to node 2", |c| c.contains(&2)).await;
    wait_connected(&two, "connected to node 1", |c| c.contains(&1)).await;
    assert_eq!(one.peer_status(), vec![(2, true)]);
    assert_eq!(two.peer_status(), vec![(1, true)]);

    // Node 2 stops: node 1 sees it down and keeps trying it.
    two.shutdown().await;
    wait_connected(&one, "without node 2", |c| !c.contains(&2)).await;
    assert_eq!(one.peer_status(), vec![(2, false)]);
    let failures = one.stats().dial_failures;
    wait_stats(&one, "redial of the stopped node", |s| s.dial_failures > failures).await;

    // Node 2 back on its address, watching nobody: node 1 dials it.
    let two = TcpNode::bind(addr_two, TcpConfig::new(2, cookie.clone())).await.expect("bind again");
    wait_connected(&two, "connected to node 1", |c| c.contains(&1)).await;
    // Waited for, not read once: on a loaded machine a first connection may close (its
    // handshake timed out on one side) and be dialed again (CI saw that once).
    wait_connected(&one, "connected to the restarted node 2", |c| c.contains(&2)).await;
    assert_eq!(one.peer_status().len(), 1, "node 1 watches node 2 alone");
    assert!(two.peer_status().is_empty(), "node 2 watches nobody");

    // A node at that address with another cookie is never counted as connected.
    two.shutdown().await;
    wait_connected(&one, "without node 2", |c| !c.contains(&2)).await;
    let stranger = TcpNode::bind(addr_two, TcpConfig::new(2, b"another-cookie".to_vec())).await.expect("bind");
    stranger.watch_peers(cluster.clone());
    wait_stats(&one, "authentication failures", |s| s.auth_failures >= 2).await;
    wait_stats(&stranger, "authentication failures", |s| s.auth_failures >= 2).await;
    assert_eq!(one.peer_status(), vec![(2, false)]);
    assert_eq!(stranger.peer_status(), vec![(1, false)]);
    assert!(one.peers().is_empty() && stranger.peers().is_empty());

    // A later list replaces the earlier one.
    one.watch_peers(BTreeMap::new());
    assert!(one.peer_status().is_empty());
    stranger.shutdown().await;
    one.shutdown().await;
    assert!(one.watch_connected().borrow().is_empty());
}

/// A node taken out of the cluster (`refuse`) is cut off both ways: its open connection
/// closes, it is no longer dialed, its dials are refused at the handshake's end (and it is
/// told why), and it is never counted as connected unless it says it holds no cluster state
/// (reset, to join again); refused no more, it connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_node_is_cut_off_both_ways_until_let_in_again() {
    let cookie = b"refuse-cookie".to_vec();
    let one = TcpNode::bind(any_port(), TcpConfig::new(1, cookie.clone())).await.expect("bind");
    let two = TcpNode::bind(any_port(), TcpConfig::new(2, cookie.clone())).await.expect("bind");
    let cluster = BTreeMap::from([(1, one.local_addr().to_string()), (2, two.local_addr().to_string())]);
    one.watch_peers(cluster.clone());
    two.watch_peers(cluster.clone());
    wait_connected(&one, "connected to node 2", |c| c.contains(&2)).await;

    one.refuse(BTreeSet::from([2]));
    wait_connected(&one, "node 2 cut off", |c| !c.contains(&2)).await;
    wait_connected(&two, "node 1 cut off", |c| !c.contains(&1)).await;
    // Node 1 no longer dials node 2; node 2 keeps dialing and is refused at each handshake.
    wait_stats(&one, "node 2's dials refused", |s| s.refused >= 4).await;
    // Node 2 is told why at its handshakes.
    wait_stats(&two, "dials refused by node 1", |s| s.refused_by_peers >= 2).await;
    let why = two.last_refusal().expect("a refusal");
    assert!(why.contains("node 1 refuses this node") && why.contains("taken out of the cluster"), "{why}");
    assert!(!one.watch_connected().borrow().contains(&2));
    assert!(!two.watch_connected().borrow().contains(&1));
    assert_eq!(one.peer_status(), vec![(2, false)]);

    // Node 2 says it holds no cluster state (reset, to join again): let in, though refused.
    two.set_fresh(true);
    wait_connected(&one, "the fresh node 2 let in", |c| c.contains(&2)).await;
    two.set_fresh(false);
    one.refuse(BTreeSet::from([2]));
    wait_connected(&one, "node 2 cut off again", |c| !c.contains(&2)).await;

    one.refuse(BTreeSet::new());
    wait_connected(&one, "connected to node 2 again", |c| c.contains(&2)).await;
    wait_connected(&two, "connected to node 1 again", |c| c.contains(&1)).await;
    one.shutdown().await;
    two.shutdown().await;
}

/// Commands forwarded from a follower one after another, without waiting for each answer, are
/// appended by the leader in the order they were sent: the leader's endpoint hands each to its
/// group as it reads it (a task per request would race). And commands submitted to the leader
/// one after another are appended in that order however their waits are awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_submitted_commands_keep_their_order() {
    let cluster = Cluster::start().await;
    let group = GROUPS[0];
    let leader = cluster.leader(group).await;
    let follower = *cluster.live().iter().find(|id| **id != leader).expect("a follower");
    let transport = cluster.node(follower).transport::<List>(group);
    let peer = warren_raft::Peer { id: leader, addr: cluster.addrs[&leader].clone() };
    let sent: Vec<u64> = (0..200).map(|n| value(group, n)).collect();
    let forwards: Vec<_> = sent.iter().map(|v| transport.propose(&peer, v, WAIT)).collect();
    let mut indexes = Vec::new();
    for answer in join_in_order(forwards).await {
        match answer.expect("forwarded") {
            warren_raft::Forwarded::Committed { index, .. } => indexes.push(index),
            other => panic!("the leader answered {other:?}"),
        }
    }
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "forwarded commands reordered: {indexes:?}");

    let lead = cluster.group(leader, group);
    let more: Vec<u64> = (200..300).map(|n| value(group, n)).collect();
    let waits: Vec<_> = more.iter().map(|v| lead.submit(*v).expect("submitted")).collect();
    let mut last = None;
    // Awaited last first: the order of the log is the order of submission all the same.
    let mut answered: Vec<(u64, u64)> = Vec::new();
    for wait in waits.into_iter().rev() {
        answered.push(wait.await.expect("committed"));
    }
    answered.reverse();
    for (index, _) in &answered {
        assert!(last < Some(*index), "submitted commands reordered: {answered:?}");
        last = Some(*index);
    }
    let end = answered.last().expect("answers").0;
    cluster.wait_applied(&cluster.live(), group, end).await;
    let values = cluster.state(follower, group).0;
    let tail: Vec<u64> = values.iter().copied().filter(|v| sent.contains(v) || more.contains(v)).collect();
    assert_eq!(tail, sent.iter().chain(&more).copied().collect::<Vec<_>>());
    cluster.shutdown().await;
}

/// Polls every future in order each time any may progress (so each sends its request on the
/// first sweep, in order) and returns their outputs in order.
async fn join_in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future is ready")).collect()
}
