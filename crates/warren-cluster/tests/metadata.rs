//! The metadata group on three nodes in one process (brokers behind warren-server's `Shared`,
//! the group over warren-raft's LocalNet): a change made on any node holds on all (topology,
//! vhosts, users, permissions, policies, limits), a change made where no majority is
//! reachable is refused and undone there, a node's definitions from before the cluster are
//! kept when it joins, and three fresh nodes end with one default user.

use std::sync::Arc;
use std::time::Duration;
use warren_amqp::FieldTable;
use warren_cluster::host::{Forward, HostOptions, MetaHost, ProposeFailure};
use warren_cluster::meta::{MetaCommand, Metadata};
use warren_core::definitions::Definitions;
use warren_core::{Broker, Caller, Config};
use warren_raft::{GroupConfig, LocalNet, ProposeError};
use warren_server::{Server, Shared};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> GroupConfig {
    GroupConfig { heartbeat_ms: 50, election_timeout_min_ms: 150, election_timeout_max_ms: 300, ..Default::default() }
}

struct Node {
    shared: Arc<Shared>,
    host: Arc<MetaHost>,
    _server: Server,
}

/// Hands a command to the leader's group directly: the in-process stand-in for the network's
/// forwarding, through the same LocalNet (so a cut node cannot reach it either).
fn forward(net: &LocalNet<Metadata>, from: u64) -> Forward {
    let net = net.clone();
    Arc::new(move |leader, command: MetaCommand| {
        let net = net.clone();
        Box::pin(async move {
            if net.is_cut(from, leader) {
                return Err(ProposeFailure::Failed(format!("node {leader} unreachable")));
            }
            let group = net.group(leader).ok_or(ProposeFailure::NoLeader)?;
            match group.propose(command).await {
                Ok((index, _)) => Ok(index),
                Err(ProposeError::NotLeader { .. }) => Err(ProposeFailure::NoLeader),
                Err(e) => Err(ProposeFailure::Failed(format!("{e:?}"))),
            }
        })
    })
}

async fn start(brokers: Vec<Broker>, commit_timeout: Duration) -> (LocalNet<Metadata>, Vec<Node>) {
    let net = LocalNet::new();
    let mut nodes = Vec::new();
    let mut groups = Vec::new();
    for (i, broker) in brokers.into_iter().enumerate() {
        let id = i as u64 + 1;
        let server = Server::new(broker);
        let (group, applied) = net.start(id, &config(), Metadata::default()).await.expect("start");
        groups.push(group.clone());
        let host = MetaHost::start(
            group,
            applied,
            server.shared(),
            forward(&net, id),
            HostOptions { fresh: true, commit_timeout },
        );
        nodes.push(Node { shared: server.shared(), host, _server: server });
    }
    let members = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
    groups[0].initialize(members).await.expect("initialize");
    groups[0].wait_for_leader(WAIT).await.expect("a leader");
    (net, nodes)
}

fn topology(node: &Node) -> Definitions {
    node.shared.broker().durable_topology()
}

/// Everything the group replicates, as `node`'s broker holds it.
fn state(node: &Node) -> Metadata {
    Metadata::from_definitions(&node.shared.broker().replicated_definitions())
}

/// Waits until every node's broker holds the same definitions (topology, vhosts, users,
/// permissions, policies, limits); returns them.
async fn converged(nodes: &[Node], what: &str) -> Definitions {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let first = state(&nodes[0]);
        if nodes.iter().all(|n| state(n) == first) {
            return first.definitions();
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes did not converge on {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes a change on `node` as the management API would, and commits it.
async fn change(node: &Node, f: impl FnOnce(&mut Broker)) -> Result<(), String> {
    let ops = {
        let mut core = node.shared.broker();
        f(&mut core);
        core.take_replication(None).expect("a change to replicate")
    };
    node.host.replicate(ops).await
}

fn args() -> FieldTable {
    FieldTable::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_on_any_node_holds_on_all() {
    let (_net, nodes) = start((0..3).map(|_| Broker::new(Config::default())).collect(), WAIT).await;
    let user = Caller::User("guest");
    change(&nodes[0], |b| {
        let mut out = Vec::new();
        b.declare_exchange(user, "/", "logs", "fanout", true, false, false, args(), 0, &mut out).expect("exchange");
        b.declare_queue(user, "/", "jobs", true, false, args(), 0, &mut out).expect("queue");
        b.set_binding(user, true, "/", "logs", "jobs", true, "", args(), 0, &mut out).expect("bind");
    })
    .await
    .expect("committed");
    let t = converged(&nodes, "the declarations").await;
    assert_eq!((t.exchanges.len(), t.queues.len(), t.bindings.len()), (1, 1, 1), "{t:?}");

    // A deletion through another node (a follower or the leader: the host follows it).
    change(&nodes[2], |b| {
        b.delete_queue_checked(user, "/", "jobs", false, false, 0, &mut Vec::new()).expect("delete");
    })
    .await
    .expect("committed");
    let t = converged(&nodes, "the deletion").await;
    assert!(t.queues.is_empty() && t.bindings.is_empty(), "{t:?}");
    assert!(nodes.iter().all(|n| !n.shared.broker().has_queue("/", "jobs")));
    assert_eq!(t.exchanges.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_a_node_cut_off_is_refused_and_undone_there() {
    let (net, nodes) =
        start((0..3).map(|_| Broker::new(Config::default())).collect(), Duration::from_millis(800)).await;
    let user = Caller::User("guest");
    // Cut off a node that does not lead.
    let leader = nodes[0].host.group().wait_for_leader(WAIT).await.expect("leader");
    let lost = (1..=3).find(|&id| id != leader).expect("a follower");
    net.isolate(lost);
    let lost_node = &nodes[lost as usize - 1];
    let refused = change(lost_node, |b| {
        let mut out = Vec::new();
        b.declare_exchange(user, "/", "x", "topic", true, false, false, args(), 0, &mut out).expect("exchange");
    })
    .await
    .expect_err("committed without a majority");
    assert!(
        refused.contains("no leader") || refused.contains("unreachable") || refused.contains("not applied"),
        "{refused}"
    );
    // Undone on the node that made it.
    assert!(topology(lost_node).exchanges.is_empty(), "the refused exchange stayed");

    // Meanwhile the majority takes "x" as another type.
    let other = (1..=3).find(|&id| id != lost).expect("a member of the majority");
    change(&nodes[other as usize - 1], |b| {
        b.declare_exchange(user, "/", "x", "direct", true, false, false, args(), 0, &mut Vec::new()).expect("exchange");
    })
    .await
    .expect("committed by the majority");
    net.heal();
    let t = converged(&nodes, "the majority's exchange after healing").await;
    assert_eq!(t.exchanges.iter().map(|x| x.kind.as_str()).collect::<Vec<_>>(), ["direct"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_node_held_before_the_cluster_is_kept() {
    let mut first = Broker::new(Config::default());
    let mut out = Vec::new();
    first.declare_queue(Caller::Broker, "/", "old", true, false, args(), 0, &mut out).expect("queue");
    first.declare_exchange(Caller::Broker, "/", "ex", "topic", true, false, false, args(), 0, &mut out).expect("x");
    first.set_binding(Caller::Broker, true, "/", "ex", "old", true, "a.#", args(), 0, &mut out).expect("bind");
    let (_net, nodes) =
        start(std::iter::once(first).chain((0..2).map(|_| Broker::new(Config::default()))).collect(), WAIT).await;
    let t = converged(&nodes, "the first node's topology").await;
    assert_eq!((t.exchanges.len(), t.queues.len(), t.bindings.len()), (1, 1, 1), "{t:?}");
    let group = nodes[1].host.group().with_machine(Metadata::definitions);
    assert_eq!(Metadata::from_definitions(&group), Metadata::from_definitions(&t));
}

fn ttl_policy(ms: i64) -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("message-ttl", warren_amqp::FieldValue::I64(ms));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_nodes_end_with_one_default_user() {
    let (_net, nodes) = start((0..3).map(|_| Broker::new(Config::default())).collect(), WAIT).await;
    // Each had its own guest (its password salted its own way): all hold the first joiner's.
    let d = converged(&nodes, "the default user").await;
    let users = d.users.expect("users");
    assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["guest"]);
    assert_eq!(d.vhosts, ["/"]);
    assert_eq!(d.permissions.len(), 1);
    for node in &nodes {
        assert!(node.shared.broker().authenticate_basic("guest", "guest", true).is_ok());
    }
    let group = nodes[0].host.group().with_machine(|m| m.user("guest").cloned()).expect("guest in the group");
    assert_eq!(users[0], group);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_users_permissions_policies_and_limits_hold_on_every_node() {
    let (_net, nodes) = start((0..3).map(|_| Broker::new(Config::default())).collect(), WAIT).await;
    converged(&nodes, "the joins").await;
    change(&nodes[0], |b| {
        let mut out = Vec::new();
        b.add_vhost("prod").expect("vhost");
        b.put_user("alice", warren_core::auth::Password::Clear("wonder".into()), vec!["management".into()])
            .expect("user");
        b.set_permissions("alice", "prod", ".*", ".*", ".*").expect("permissions");
        b.set_topic_permissions("alice", "prod", "amq.topic", "^alice", ".*").expect("topic permissions");
        b.set_vhost_limit("prod", warren_core::VhostLimit::MaxQueues, 7).expect("vhost limit");
        b.set_user_limit("alice", warren_core::UserLimit::MaxConnections, 3).expect("user limit");
        b.declare_queue(Caller::Broker, "prod", "t.jobs", true, false, args(), 0, &mut out).expect("queue");
        b.set_policy(
            "prod",
            "ttl",
            "^t\\.",
            warren_core::policy::ApplyTo::Queues,
            0,
            ttl_policy(100),
            false,
            0,
            &mut out,
        )
        .expect("policy");
        b.set_policy("prod", "cap", ".*", warren_core::policy::ApplyTo::Queues, 0, ttl_policy(50), true, 0, &mut out)
            .expect("operator policy");
    })
    .await
    .expect("committed");
    let d = converged(&nodes, "the access changes").await;
    assert_eq!(d.vhosts, ["/", "prod"]);
    assert_eq!((d.permissions.len(), d.topic_permissions.len(), d.policies.len()), (2, 1, 2), "{d:?}");
    assert_eq!((d.vhost_limits.len(), d.user_limits.len()), (1, 1), "{d:?}");
    for node in &nodes {
        let core = node.shared.broker();
        assert!(core.authenticate_basic("alice", "wonder", true).is_ok(), "alice cannot log in");
        let q = core.queue_details(&[("prod".into(), "t.jobs".into())]);
        assert_eq!(q[0].0.policy.as_deref(), Some("ttl"), "the policy does not apply");
    }

    // Changed through another node, then the user and the vhost deleted through a third.
    change(&nodes[1], |b| {
        b.put_user("alice", warren_core::auth::Password::Clear("land".into()), vec![]).expect("user");
        b.clear_policy("prod", "cap", true, 0, &mut Vec::new()).expect("clear");
    })
    .await
    .expect("committed");
    converged(&nodes, "the password change").await;
    for node in &nodes {
        let core = node.shared.broker();
        assert!(
            core.authenticate_basic("alice", "land", true).is_ok()
                && core.authenticate_basic("alice", "wonder", true).is_err()
        );
    }
    change(&nodes[2], |b| {
        let mut out = Vec::new();
        b.delete_user("alice", 0, &mut out).expect("delete user");
        b.delete_vhost("prod", 0, &mut out).expect("delete vhost");
    })
    .await
    .expect("committed");
    let d = converged(&nodes, "the deletions").await;
    assert_eq!(d.vhosts, ["/"]);
    assert!(d.queues.is_empty() && d.policies.is_empty() && d.vhost_limits.is_empty() && d.user_limits.is_empty());
    for node in &nodes {
        let core = node.shared.broker();
        assert!(!core.has_vhost("prod") && core.user("alice").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_broker_makes_on_its_own_are_proposed_by_the_host() {
    let (_net, nodes) = start((0..3).map(|_| Broker::new(Config::default())).collect(), WAIT).await;
    // Not taken by anyone (as a queue's expiry, or definitions loaded at boot).
    nodes[0].shared.broker().add_vhost("own").expect("vhost");
    converged(&nodes, "the broker's own change").await;
    assert!(nodes.iter().all(|n| n.shared.broker().has_vhost("own")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_change_on_a_node_cut_off_is_refused_and_undone_there() {
    let (net, nodes) =
        start((0..3).map(|_| Broker::new(Config::default())).collect(), Duration::from_millis(800)).await;
    converged(&nodes, "the joins").await;
    change(&nodes[0], |b| {
        b.add_vhost("prod").expect("vhost");
        b.declare_queue(Caller::Broker, "prod", "q", true, false, args(), 0, &mut Vec::new()).expect("queue");
        b.put_user("bob", warren_core::auth::Password::Clear("b".into()), vec![]).expect("user");
        b.set_permissions("bob", "prod", ".*", ".*", ".*").expect("permissions");
    })
    .await
    .expect("committed");
    let before = converged(&nodes, "the vhost").await;
    let leader = nodes[0].host.group().wait_for_leader(WAIT).await.expect("leader");
    let lost = (1..=3).find(|&id| id != leader).expect("a follower");
    net.isolate(lost);
    let lost_node = &nodes[lost as usize - 1];
    for what in ["a new user", "a deleted vhost", "a deleted user", "a policy"] {
        let refused = change(lost_node, |b| {
            let mut out = Vec::new();
            match what {
                "a new user" => {
                    b.put_user("mallory", warren_core::auth::Password::Clear("m".into()), vec![]).expect("user")
                }
                "a deleted vhost" => drop(b.delete_vhost("prod", 0, &mut out).expect("delete vhost")),
                "a deleted user" => drop(b.delete_user("bob", 0, &mut out).expect("delete user")),
                _ => b
                    .set_policy("/", "p", ".*", warren_core::policy::ApplyTo::All, 0, ttl_policy(1), false, 0, &mut out)
                    .expect("policy"),
            }
        })
        .await
        .expect_err("committed without a majority");
        assert!(refused.contains("no leader") || refused.contains("unreachable"), "{what}: {refused}");
        // Undone: the node holds what it held before.
        assert_eq!(state(lost_node), Metadata::from_definitions(&before), "{what} was not undone");
    }
    net.heal();
    let after = converged(&nodes, "healing").await;
    assert_eq!(Metadata::from_definitions(&after), Metadata::from_definitions(&before));
}
